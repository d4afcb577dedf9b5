# python experiments/constant_gap.py
"""Item 3 of issue 8: how far the sequential bound's small-filter constant is from the best tiling.

The segment bound of theory.md 3.3 proves W >= S (ceil(G_eff / F(2M + S)) - 1) for every segment
length S; at S = 4M its small-filter form is 2^(1/2) G_eff (p_I p_F p_O / (rho M))^(1/2) - 4M:
constant 2^(1/2) in front of G_eff (ppp / (rho M))^(1/2) (the classical S = M gives 1).  For matrix
multiply the tight constant is 2 (Smith, Lowery, Langou, van de Geijn 2017).  This prints, for
layers where the small-filter term binds (small M), the best traffic found by parconv.tiling's
optimiser divided by the bound (with the rule and length of its segment term: segments of S
transfers or weighted segments of L units, theory.md 3.3), by the bound with the classical S = M,
and by the proved leading term, for 1x1 (the matmul analogue) and 3x3 layers.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from parconv.bounds import sequential_bound  # noqa: E402
from parconv.bounds.polyphase import WEIGHT_EXPONENTS, is_strided, polyphase_work  # noqa: E402
from parconv.bounds.sequential import segments  # noqa: E402
from parconv.bounds.workfn import solve_work  # noqa: E402
from parconv.bounds.workfn import output_bytes  # noqa: E402
from parconv.spec import ConvSpec  # noqa: E402
from parconv.tiling import SingleMemory, optimise  # noqa: E402

CASES = [("1x1 256->256 28x28 fp32", ConvSpec(batch=1, in_channels=256, out_channels=256,
                                               in_size=28, kernel_size=1, dtype_in="float32")),
         ("3x3 64->64 56x56 fp32", ConvSpec(batch=1, in_channels=64, out_channels=64, in_size=56,
                                            kernel_size=3, padding=1, dtype_in="float32")),
         ("3x3 s2 128->128 56x56 fp32", ConvSpec(batch=1, in_channels=128, out_channels=128,
                                                 in_size=56, kernel_size=3, stride=2, padding=1,
                                                 dtype_in="float32"))]


def classical(spec: ConvSpec, M: int, compulsory: float) -> float:
    """The bound with segments of S = M transfers only (data worth 3M per segment)."""
    value = max(compulsory, segments(spec.G_eff, M, solve_work(spec, 3.0 * M).value))
    if is_strided(spec):
        for e in WEIGHT_EXPONENTS:
            per_segment, total = polyphase_work(spec, e, 3.0 * M)
            value = max(value, segments(total, M, per_segment))
    return value


def main() -> int:
    print(f"{'layer':<28} {'M':>8} {'binding':<13} {'rule':<9} {'n/M':>5} {'best tiling':>13} "
          f"{'bound':>13} "
          f"{'tiling/bound':>12} {'(S = M)':>8} {'tiling/lead':>11}")
    for name, spec in CASES:
        ppp = spec.p_in * spec.p_weight * output_bytes(spec)
        for M in (2 ** 12, 2 ** 14, 2 ** 16):
            bound = sequential_bound(spec, M)
            old = classical(spec, M, bound.compulsory)
            lead = np.sqrt(2.0) * spec.G_eff * np.sqrt(ppp / (spec.rho * M))
            best = optimise(spec, SingleMemory(M), keep_window=False).traffic.total
            poly = bound.binding == "polyphase"
            length = bound.polyphase_length if poly else bound.segment_length
            weighted = bound.polyphase_weighted if poly else bound.segment_weighted
            rule = "weighted" if weighted else "transfers"
            print(f"{name:<28} {M:>8} {bound.binding:<13} {rule:<9} {length / M:>5.2f} {best:>13} "
                  f"{bound.value:>13.0f} {best / bound.value:>12.3f} {best / old:>8.3f} "
                  f"{best / lead:>11.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
