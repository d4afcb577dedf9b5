"""``python -m parconv.plan``: print the plan of one layer on P ranks (no MPI needed).

Examples::

    python -m parconv.plan --layer resnet50.layer3.0.conv2 --batch 32 -P 64
    python -m parconv.plan --batch 8 --in-channels 64 --out-channels 128 --size 56 \\
        --kernel-size 3 --padding 1 -P 16 --grid 2x2x1x2x2 --json
    python -m parconv.plan --list-layers
"""

from __future__ import annotations

import argparse
import json
import sys

from ..cli import add_layer_arguments, list_layers, spec_from_args
from ..errors import ParconvError
from .footprint import NODES
from .planner import make_plan


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m parconv.plan",
        description="Choose the processor grid for a convolution layer on P processes, predict "
                    "every rank's bytes per phase exactly, and compare with the parallel lower "
                    "bound and the baselines peers use. Pure computation: no MPI is started.",
        epilog="Example: python -m parconv.plan --layer resnet50.layer3.0.conv2 --batch 32 -P 64")
    add_layer_arguments(parser)
    g = parser.add_argument_group("distribution")
    g.add_argument("-P", "--processes", type=int, default=64, metavar="P",
                   help="number of MPI processes (default 64)")
    g.add_argument("--memory", metavar="BYTES", help="memory per process for the footprint "
                   "check and the memory-dependent bound, e.g. 512MiB (default 1GiB)")
    g.add_argument("--grid", default="auto", metavar="auto|NxKxCxHxW",
                   help="force a grid instead of choosing one (default auto)")
    g.add_argument("--ownership", default="auto", metavar="auto|aligned|centred|H,W",
                   help="how the input rows and columns are owned: aligned with the output "
                        "blocks, or centred (cut in the middle of the rows two neighbours both "
                        "read); auto (default) keeps whichever moves fewer bytes per grid; "
                        "'aligned,centred' gives H then W")
    g.add_argument("--node", default="numpy", choices=NODES,
                   help="node kernel whose workspace the memory footprint counts (default numpy)")
    parser.add_argument("--json", action="store_true",
                        help="print the plan as JSON (the run report's keys where they apply)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_layers:
        print(list_layers())
        return 0
    try:
        spec = spec_from_args(args, default_batch=1)
        plan = make_plan(spec, args.processes, memory=args.memory, grid=args.grid,
                         node=args.node, ownership=args.ownership)
    except ParconvError as exc:
        print(f"parconv.plan: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(plan.to_dict(), sys.stdout)
        print()
    else:
        print(plan.table())
    return 0

