# python experiments/halo_centred.py [--csv experiments/results/planner/resnet50_vgg16_b32.csv]
"""Item 5 of issue 8: halos taken from centred owners instead of one-sided ones (analysis only).

Today an H (or W) block owns the input rows starting where its own output block starts reading
(`blocks.owned_input_starts`), so its whole halo comes from the next block: one side pays all of
it (e.g. 2 columns of a 3x3 layer, 5 of the 7x7 stem).  Cutting the ownership of every pair of
neighbours in the middle of the rows both read splits the halo between the two sides.  For every
row of the planner benchmark whose reason is "halo", this prints the planned busiest volume and an
estimate of the same grid with centred cuts:

    max over (H block, W block) of [input all-gather + halo_h + halo_w] with the centred ownership
    + the largest filter all-gather + the largest partial-sum reduce of the plan
    + p_I * max(0, largest owned touched-input piece - ceil(|I| / P))   (balanced-start surcharge)

The input all-gather of a block of B touched elements over P_K ranks is charged B - floor(B/P_K).
Every term is at least what the centred layout would pay, so an estimate below the planned volume
means the centred layout really moves fewer bytes.  Implementing it is the engine's (axis.py).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from parconv.bounds import parallel_bounds  # noqa: E402
from parconv.layers import get_layer  # noqa: E402
from parconv.plan import GridDims, make_plan  # noqa: E402
from parconv.plan.axis import axis_layout  # noqa: E402
from parconv.plan.blocks import block_sizes  # noqa: E402


def centred(layout, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(received halo positions, touched owned positions, needed positions) per block with every
    cut between neighbours in the middle of the positions both read."""
    p = layout.p
    spans = [layout.span(d) for d in range(p)]
    starts = np.array(layout.own_starts, dtype=np.int64)
    for d in range(1, p):
        lo, hi = spans[d][0], spans[d - 1][1]
        if hi > lo:  # the two blocks read [lo, hi) both
            starts[d] = (lo + hi + 1) // 2
    starts = np.maximum.accumulate(np.clip(starts, 0, n_in))
    starts[0], starts[-1] = 0, n_in
    touched = layout.touched
    recv, own_t = [], []
    for d in range(p):
        a, b = starts[d], starts[d + 1]
        need = layout.needed[d]
        recv.append(int(np.count_nonzero((need < a) | (need >= b))))
        own_t.append(int(touched[a:b].sum()))
    return np.array(recv), np.array(own_t), layout.needed_counts


def estimate(spec, plan) -> int:
    PN, PK, PC, PH, PW = plan.dims.as_tuple()
    nN, nC = int(block_sizes(spec.batch, PN).max()), int(block_sizes(spec.in_channels, PC).max())
    rh, th, need_h = centred(axis_layout(spec, 0, PH), spec.in_size[0])
    rw, tw, _ = centred(axis_layout(spec, 1, PW), spec.in_size[1])
    block = nN * nC * th[:, None] * tw[None, :]
    gather = block - block // PK
    halo_h = nN * nC * rh[:, None] * tw[None, :]
    halo_w = nN * nC * need_h[:, None] * rw[None, :]
    spatial = int(((gather + halo_h + halo_w) * spec.p_in).max())
    piece = int(-(-block.max() // PK))
    surcharge = spec.p_in * max(0, piece - -(-spec.size_input_touched // plan.ranks))
    return (spatial + int(plan.predicted["filter"]["received"].max())
            + int(plan.predicted["reduce"]["sent"].max()) + surcharge)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "planner", "resnet50_vgg16_b32.csv"))
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    rows = [r for r in csv.DictReader(open(args.csv)) if r["reason"] == "halo"]
    print(f"{'layer':<28} {'P':>5} {'grid':<13} {'planned':>9} {'centred':>9} {'bound':>9} "
          f"{'r_planned':>9} {'r_centred':>9}")
    better = 0
    for r in rows:
        spec, P = get_layer(r["layer"], batch=args.batch), int(r["P"])
        plan = make_plan(spec, P, grid=GridDims.parse(r["grid"])) if int(r["active"]) == P \
            else make_plan(spec, P)
        bound = parallel_bounds(spec, P, plan.memory).value
        est = estimate(spec, plan)
        better += est < plan.max_volume
        print(f"{r['layer']:<28} {P:>5} {r['grid']:<13} {plan.max_volume:>9} {est:>9} "
              f"{bound:>9.0f} {plan.max_volume / bound:>9.3f} {est / bound:>9.3f}")
    print(f"\ncentred cuts estimated below the planned volume on {better} of {len(rows)} halo rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
