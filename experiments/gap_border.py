# python experiments/gap_border.py [--csv experiments/results/planner/resnet50_vgg16_b32.csv]
"""The rows of the planner benchmark whose gap is not the halo's: where B_MI's busy processor sits.

For every row of ``bench_planner.py``'s CSV whose reason is "bound or algorithm" or
"integrality", this prints the problem's busy processor at B_MI's optimum
(`parconv.bounds.parallel.busy_processor_footprint`: x_I input, x_F filter, x_O output elements)
against what a block of the grid family can have.  For a rank doing the work W = G_eff / P, write

    xi = x_I x_F / (C W)

(C the input channels).  A block of whole images (N_r images, K_r filters, C_r channels, every
row and column, every tap) has x_I = N_r C_r T, x_F = K_r C_r R S and W = N_r K_r C_r A, so
xi_block = (C_r / C) T R S / A, with T the touched pixels of one image plane and A = A_h A_w
the in-image (output, tap) pairs of one plane (``spec.effective_pairs``); with C_r = C it is
T R S / A.  The script prints x_O P / |O| (1: the optimum needs no partial sums, the busy
processor's outputs are its own share, and xi compares like with like), xi at the bound's
optimum, xi_block for C_r = C, their ratio, and G / G_eff = H W R S / A (all (output, tap)
pairs over the in-image ones).
Nothing here is a bound: it shows where the optimum of B_MI's program lies compared with the
blocks the planner can use.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from parconv.bounds.parallel import busy_processor_footprint  # noqa: E402
from parconv.layers import get_layer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "planner", "resnet50_vgg16_b32.csv"))
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    rows = [r for r in csv.DictReader(open(args.csv))
            if r["reason"].startswith(("bound or algorithm", "integrality"))]
    print(f"{'layer':<26} {'P':>4} {'grid':<12} {'ratio':>6} {'ideal':>6} {'x_I':>8} {'x_F':>8} "
          f"{'x_O':>8} {'xO P/O':>6} {'xi_bound':>8} {'xi_block':>8} {'xi ratio':>8} "
          f"{'G/G_eff':>7}  reason")
    for r in rows:
        spec, P = get_layer(r["layer"], batch=args.batch), int(r["P"])
        x_i, x_f, x_o = busy_processor_footprint(spec, P)
        work = spec.G_eff / P
        a_h, a_w = spec.effective_pairs
        R, S = spec.kernel_size
        plane = spec.size_input_touched / (spec.batch * spec.in_channels)
        xi_bound = x_i * x_f / (spec.in_channels * work)
        xi_block = plane * R * S / (a_h * a_w)
        print(f"{r['layer']:<26} {P:>4} {r['grid']:<12} {float(r['ratio_new']):>6.3f} "
              f"{float(r['ideal']):>6.3f} {x_i:>8.0f} {x_f:>8.0f} {x_o:>8.0f} "
              f"{x_o * P / spec.size_output:>6.3f} {xi_bound:>8.4f} "
              f"{xi_block:>8.4f} {xi_block / xi_bound:>8.4f} {spec.G / spec.G_eff:>7.4f}  "
              f"{r['reason'].split(' (')[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
