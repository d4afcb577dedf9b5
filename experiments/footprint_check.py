# mpirun -n 4 python experiments/footprint_check.py --layer vgg16.conv1_2 --batch 8 [--dtype int8] [--node numpy] [--grid NxKxCxHxW] [--out FILE]
"""Predicted footprint against measured peak memory, per rank, of one distributed layer.

Run:  mpirun -n P python experiments/footprint_check.py --layer NAME --batch N
      [--dtype int8] [--node numpy|gemmini] [--grid NxKxCxHxW] [--out FILE.jsonl]
      python experiments/footprint_check.py --summarize FILE.jsonl   (the Markdown table)

Every rank plans (with ``--memory 1TiB`` so that nothing is refused), records its resident set
(``VmRSS``) as the baseline, resets its peak (``/proc/self/clear_refs``, Linux), makes its own
owned pieces (random, integers over their whole range, no root), runs ``distributed_conv2d`` on them and reads its peak
(``VmHWM``).  Rank 0 prints per rank: the plan's footprint (parconv.plan.footprint), its largest
stage, the measured peak minus the baseline, and their ratio (target of issue 7: within 1.3x).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from parconv.conv import distributed_conv2d  # noqa: E402
from parconv.layers import get_layer  # noqa: E402
from parconv.mpi.distribute import OwnedBlocks  # noqa: E402
from parconv.plan import make_plan  # noqa: E402


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def random_piece(rng, count: int, dtype, full: bool = True) -> np.ndarray:
    """Random values; integers over their whole range (``full``: the data the footprint budgets
    for, whose extremes need the most exact groups in the numpy kernel) or in [-8, 8)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        low, high = (int(info.min), int(info.max) + 1) if full else (-8, 8)
        return rng.integers(low, high, size=count, dtype=dtype)
    return rng.standard_normal(count).astype(dtype)


def own_blocks(plan, rank: int) -> OwnedBlocks:
    spec, local = plan.spec, plan.schedule(rank)
    rng = np.random.default_rng(rank)
    if local is None:
        return OwnedBlocks(np.zeros(0, spec.dtype_in), np.zeros(0, spec.dtype_weight), None)
    count = lambda boxes: sum(int(np.prod([hi - lo for lo, hi in b])) for b in boxes)  # noqa
    bias = local.bias_piece_range()
    return OwnedBlocks(random_piece(rng, count(local.input_piece_boxes()), spec.dtype_in),
                       random_piece(rng, count(local.filter_piece_boxes()), spec.dtype_weight),
                       None if bias is None else random_piece(rng, bias[1] - bias[0],
                                                              spec.dtype_acc, full=False))


def summarize(path: str) -> str:
    """A Markdown table of the JSON-lines rows in ``path``: one line per run, the largest
    ratio over its ranks."""
    runs = {}
    for line in open(path):
        row = json.loads(line)
        key = (row["layer"], row["batch"], row["dtype"], row["node"], row["P"], row["grid"])
        runs.setdefault(key, []).append(row)
    lines = ["| layer | batch | dtype | node | P | grid | predicted MiB (max rank) | stage | "
             "measured peak - baseline MiB (max rank) | baseline MiB | predicted / measured "
             "(range over ranks) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (layer, batch, dtype, node, P, grid), rows in runs.items():
        rows = [r for r in rows if r["predicted"]]
        ratios = [r["predicted"] / r["measured"] for r in rows if r["measured"]]
        lines.append(f"| {layer} | {batch} | {dtype} | {node} | {P} | {grid} | "
                     f"{max(r['predicted'] for r in rows) / 2**20:.1f} | {rows[0]['stage']} | "
                     f"{max(r['measured'] for r in rows) / 2**20:.1f} | "
                     f"{rows[0]['baseline_bytes'] / 2**20:.1f} | "
                     f"{min(ratios):.2f} - {max(ratios):.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summarize", metavar="FILE.jsonl",
                        help="print the Markdown table of earlier runs and exit (serial)")
    parser.add_argument("--layer")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="int8")
    parser.add_argument("--node", default="numpy")
    parser.add_argument("--grid", default=None)
    parser.add_argument("--out", default=None, help="append the rows to this JSON-lines file")
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize), end="")
        return 0
    if not args.layer:
        parser.error("--layer is required")
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    spec = get_layer(args.layer, batch=args.batch, dtype=args.dtype)
    plan = make_plan(spec, size, memory="1TiB", grid=args.grid, node=args.node)
    comm.Barrier()
    baseline = status_kib("VmRSS")
    reset_peak()
    blocks = own_blocks(plan, rank)
    distributed_conv2d(comm, spec, blocks=blocks, plan=plan, node=args.node)
    del blocks
    peak = status_kib("VmHWM")
    measured = max(peak - baseline, 0) * 1024
    fp = plan.footprint(rank)
    rows = comm.gather({"layer": args.layer, "batch": args.batch, "dtype": args.dtype,
                        "node": args.node, "P": size, "grid": str(plan.dims), "rank": rank,
                        "predicted": None if fp is None else fp["total"],
                        "stage": None if fp is None else fp["stage"],
                        "terms": None if fp is None else fp["terms"],
                        "baseline_bytes": baseline * 1024, "measured": measured}, root=0)
    if rank == 0:
        print(f"{args.layer} batch {args.batch} {args.dtype} node {args.node} P={size} "
              f"grid {plan.dims}")
        print(f"{'rank':>4} {'predicted MiB':>14} {'stage':>7} {'measured MiB':>13} "
              f"{'baseline MiB':>13} {'pred/meas':>9}")
        for r in rows:
            ratio = r["predicted"] / r["measured"] if r["predicted"] and r["measured"] else None
            r["ratio"] = ratio
            print(f"{r['rank']:>4} {(r['predicted'] or 0) / 2**20:>14.1f} {r['stage'] or '-':>7} "
                  f"{r['measured'] / 2**20:>13.1f} {r['baseline_bytes'] / 2**20:>13.1f} "
                  f"{'-' if ratio is None else f'{ratio:.2f}':>9}")
        if args.out:
            with open(args.out, "a") as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
