# python experiments/halo_centred.py [--batch 32] [--grids 12] [--out experiments/results/planner/halo_centred.txt]
"""Input ownership, aligned against centred, on every sampled grid (issue 8, "the algorithm's gap").

An H (or W) block owns its input rows either *aligned* (from where its own output block starts
reading: one side of each pair of neighbours receives all the rows both read) or *centred* (the
cut in the middle of the rows both read; parconv.plan.blocks.centred_input_starts).  The planner
predicts every grid with both on each split axis and keeps the cheaper (design.md 3).  This
measures, with the planner's exact predictions (balanced start included), how often each is the
cheaper one: for every ResNet-50 and VGG-16 layer at ``--batch`` and every layer of
tests/test_plan.py::AWKWARD, on P = 4, 6, 8, 12, 64, 512, up to ``--grids`` grids per (layer, P)
that split H or W (a fixed random sample, seed 0), the busiest rank's bound-comparable volume
with both axes aligned and with both centred.  Prints the counts and every grid where centred
moves more, and writes the same to ``--out``.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import numpy as np  # noqa: E402

from parconv.layers import get_layer, layer_names  # noqa: E402
from parconv.plan.dims import dimension_caps, factorizations  # noqa: E402
from parconv.plan.predict import predict_grid  # noqa: E402
from test_plan import AWKWARD  # noqa: E402

RANKS = (4, 6, 8, 12, 64, 512)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--grids", type=int, default=12)
    parser.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "planner",
                                                      "halo_centred.txt"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    specs = [(n, get_layer(n, batch=args.batch))
             for n in layer_names("resnet50.") + layer_names("vgg16.")]
    specs += [(f"AWKWARD[{i}] {s.describe()[:60]}", s) for i, s in enumerate(AWKWARD)]
    counts, worse, gains = collections.Counter(), [], []
    for name, spec in specs:
        for P in RANKS:
            grids = [g for g in factorizations(P, dimension_caps(spec)) if g[3] > 1 or g[4] > 1]
            if len(grids) > args.grids:
                grids = [grids[i] for i in sorted(rng.choice(len(grids), args.grids,
                                                             replace=False))]
            for g in grids:
                aligned = predict_grid(spec, g, ranks=P).max_volume
                centred = predict_grid(spec, g, ranks=P,
                                       ownership=("centred", "centred")).max_volume
                counts["grids"] += 1
                counts["centred below" if centred < aligned else
                       "centred above" if centred > aligned else "equal"] += 1
                if centred > aligned:
                    worse.append((name, P, g, aligned, centred))
                elif centred < aligned:
                    gains.append(centred / aligned)
    lines = [f"{counts['grids']} grids splitting H or W ({len(specs)} layers, P in "
             f"{', '.join(map(str, RANKS))}, at most {args.grids} per layer and P): busiest "
             f"volume with both axes centred below the aligned one on {counts['centred below']}, "
             f"equal on {counts['equal']}, above on {counts['centred above']}",
             f"where below: centred / aligned median {np.median(gains):.4f}, smallest "
             f"{min(gains):.4f}" if gains else "never below",
             "", "grids where centred moves more (layer, P, grid, aligned, centred, ratio):"]
    lines += [f"  {name}  P={P}  {'x'.join(map(str, g))}  {a}  {c}  {c / a:.4f}"
              for name, P, g, a, c in worse]
    by_layer = collections.Counter(w[0] for w in worse)
    lines += ["", "per layer: " + "; ".join(f"{k}: {v}" for k, v in by_layer.items())]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    with open(args.out + ".tmp", "w") as fh:
        fh.write(f"# python experiments/halo_centred.py --batch {args.batch} --grids "
                 f"{args.grids}\n" + text)
    os.replace(args.out + ".tmp", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
