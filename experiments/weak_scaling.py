# python experiments/weak_scaling.py [--quick] [--no-measure] [--force] [--out DIR]
"""Weak scaling: the batch grows with P (batch = 4 P), every ResNet-50 and VGG-16 layer.

Predicted (the planner, no MPI) for every power of two P from 1 to 65536 (batch up to 262144):
the busiest rank's bytes on parconv's grid, max(B_MI, B_MD) and each peer decomposition (batch
only, spatial only, input-channel only, output-channel only; with batch = 4 P data parallelism
always has a sample per rank).  Measured with mpirun (oversubscribed: bytes exact, times
indicative) on two layers at P = 1, 2, 4, 8, 16, 32, 64 (batch 4 .. 256), every rank's bytes
checked against the planner's prediction made here.

Writes into experiments/results/weak_scaling/ (refuses to replace a recorded result unless
--force): predicted.{csv,json}, measured.{csv,json}, measured/reports/ (+ launch.collect's
reports.csv), headline.{md,json} (best peer over parconv at P = 64, 512, 4096),
weak_scaling.png, weak_scaling_peer_factor.png and manifest.json.  --quick: 2 layers, P up to
4096, measured at P = 1, 2, 4 on one layer.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402
from strong_scaling import add_study_arguments, run_study, study_lists  # noqa: E402

STUDY = "weak_scaling"
MEASURED_LAYERS = ["resnet50.layer1.0.conv2", "resnet50.layer4.0.conv2"]
QUICK = {"layers": ["resnet50.layer1.0.conv2", "resnet50.layer4.0.conv2"],
         "ranks": [1, 2, 4, 64, 512, 4096], "measured_layers": ["resnet50.layer4.0.conv2"],
         "measured_ranks": [1, 2, 4]}


def main(argv=None) -> int:
    p = C.parser(__doc__, STUDY)
    p.add_argument("--per-rank", type=int, default=4, help="samples per rank: batch = this x P "
                                                           "(default 4)")
    add_study_arguments(p, MEASURED_LAYERS)
    args = p.parse_args(argv)
    layers, ranks, m_layers, m_ranks = study_lists(args, QUICK, MEASURED_LAYERS)
    batch_of = lambda P: args.per_rank * P  # noqa: E731
    return run_study(args, argv, STUDY, __file__, layers, ranks, m_layers, m_ranks, batch_of,
                     f"Weak scaling, batch = {args.per_rank} P", "weak-headline")


if __name__ == "__main__":
    sys.exit(main())
