# python experiments/constant_gap.py
"""Item 3 of issue 8: how far the sequential bound's small-filter constant is from the best tiling.

The segment bound of theory.md 3.3 proves W >= M (ceil(G_eff / F(3M)) - 1), whose small-filter form
is G_eff (p_I p_F p_O / (rho M))^(1/2) - M: constant 1 in front of G_eff (ppp / (rho M))^(1/2).
For matrix multiply the tight constant is 2 (Smith, Lowery, Langou, van de Geijn 2017).  This
prints, for layers where the small-filter term binds (small M), the best traffic found by
parconv.tiling's optimiser and by exhaustive search on tiny layers, divided by the bound's
small-filter leading term, for 1x1 (the matmul analogue) and 3x3 layers.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from parconv.bounds import sequential_bound  # noqa: E402
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


def main() -> int:
    print(f"{'layer':<28} {'M':>8} {'binding':<13} {'best tiling':>13} {'bound':>13} "
          f"{'tiling/bound':>12} {'tiling/lead':>11}")
    for name, spec in CASES:
        ppp = spec.p_in * spec.p_weight * output_bytes(spec)
        for M in (2 ** 12, 2 ** 14, 2 ** 16):
            bound = sequential_bound(spec, M)
            lead = spec.G_eff * np.sqrt(ppp / (spec.rho * M))
            best = optimise(spec, SingleMemory(M), keep_window=False).traffic.total
            print(f"{name:<28} {M:>8} {bound.binding:<13} {best:>13} {bound.value:>13.0f} "
                  f"{best / bound.value:>12.3f} {best / lead:>11.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
