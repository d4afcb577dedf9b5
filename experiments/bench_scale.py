# python experiments/bench_scale.py [--full] [--batch 32] [--out experiments/results/scale]
"""Scale benchmark: the set-up of ONE rank at P = 64, 4096 and 65536, serially, without MPI.

Run:  python experiments/bench_scale.py [--full] [--batch 32] [--repeat 25] [--out DIR]

For ``resnet50.layer3.0.conv2`` and ``vgg16.conv4_2`` (batch 32) and each P, prints

* ``make_plan``: time and tracemalloc peak of the grid search (done once, by one rank, and
  broadcast by the engine), after one warm-up plan that loads the bound solver;
* for a few ranks including the busiest (largest predicted bound volume), the first and the
  last: time and tracemalloc peak of ``rank_schedule`` (what a rank derives from the broadcast
  plan) with COLD caches (every axis cache cleared before each build, as on a rank that did
  not plan), the best of ``--repeat`` builds, and the same plus the dense list forms
  (``halo_h``, ``filter_pieces``, ... that today's exchanges read);
* the ratio of each P's schedule time to its time at P = 64 (target: <= 3) and the targets
  < 1 s and < 300 MB at P = 65536.

``--full`` adds P = 512, 16384 and 262144 and more ranks.  The real runs (times per phase at
P = 1..64, memory per rank, overlap gain, start-up) are experiments/bench_runs.py's.  Writes JSON
and Markdown to experiments/results/scale/.  Every figure is measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from parconv.layers import get_layer  # noqa: E402
from parconv.plan import axis as axis_module  # noqa: E402
from parconv.plan import make_plan  # noqa: E402
from parconv.plan.schedule import rank_schedule  # noqa: E402

LAYERS = ("resnet50.layer3.0.conv2", "vgg16.conv4_2")
QUICK_P = (64, 4096, 65536)
FULL_P = (64, 512, 4096, 16384, 65536, 262144)
TARGET_TIME_S, TARGET_BYTES, TARGET_RATIO = 1.0, 300 * 10**6, 3.0
DENSE = ("input_pieces", "filter_pieces", "bias_pieces", "output_pieces", "halo_h", "halo_w")


def clear_caches() -> None:
    """Forget every cached axis layout, needed-row array and touched mask (a cold rank)."""
    for cached in (axis_module._layout, axis_module._needed, axis_module._touched):
        cached.cache_clear()


def measure(build, repeat: int) -> tuple[float, int]:
    """(best wall time in s, largest tracemalloc peak in bytes) of ``build()`` over ``repeat``
    cold runs; the time is taken without tracemalloc, which slows allocations down."""
    best = float("inf")
    for _ in range(repeat):
        clear_caches()
        started = time.perf_counter()
        build()
        best = min(best, time.perf_counter() - started)
    clear_caches()
    tracemalloc.start()
    build()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return best, peak


def sampled_ranks(plan, full: bool) -> dict[str, int]:
    volume = plan.predicted_bound_volume[:plan.active]
    ranks = {"busiest": int(np.argmax(volume)), "first": 0, "last": plan.active - 1}
    if full:
        ranks["middle"] = plan.active // 2
        ranks["quietest"] = int(np.argmin(volume))
    return ranks


def schedule_rows(name: str, batch: int, ranks_list, repeat: int, full: bool) -> list[dict]:
    spec = get_layer(name, batch=batch)
    make_plan(spec, 2)   # warm-up: the first plan imports and initialises the bound solver
    rows = []
    for P in ranks_list:
        clear_caches()
        tracemalloc.start()
        started = time.perf_counter()
        plan = make_plan(spec, P)
        plan_time = time.perf_counter() - started
        plan_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        for label, rank in sampled_ranks(plan, full).items():
            coords = plan.coords(rank)

            def compact():
                return rank_schedule(spec, plan.dims, rank, coords, plan.ownership)

            def dense():
                local = compact()
                return [getattr(local, field) for field in DENSE]

            t_compact, m_compact = measure(compact, repeat)
            t_dense, m_dense = measure(dense, repeat)
            local = compact()
            rows.append({
                "layer": name, "batch": batch, "P": P, "grid": str(plan.dims), "rank": rank,
                "which": label, "halo_peers_h": int(local.halo_rows.peers.size),
                "halo_peers_w": int(local.halo_cols.peers.size),
                "filter_group": int(local.filter_split.parts),
                "schedule_s": t_compact, "schedule_peak_bytes": m_compact,
                "with_dense_s": t_dense, "with_dense_peak_bytes": m_dense,
                "make_plan_s": plan_time, "make_plan_peak_bytes": plan_peak,
                "grids_evaluated": plan.grids_evaluated})
    for row in rows:
        base = [r["schedule_s"] for r in rows
                if r["P"] == ranks_list[0] and r["which"] == row["which"]]
        row["time_over_first_P"] = row["schedule_s"] / base[0] if base else None
    return rows


def markdown(rows: list[dict], command: str) -> str:
    lines = ["# One rank's schedule at scale\n", f"Command: `{command}`\n",
             "Cold caches (each build starts from nothing but the spec and the grid); best of "
             "the repeats; peak = tracemalloc peak of one build.\n",
             "| layer | P | grid | rank (which) | H/W peers | filter group | schedule ms | "
             "peak KiB | + dense ms | + dense peak KiB | / P=first | make_plan s | "
             "make_plan peak MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['P']} | {r['grid']} | {r['rank']} ({r['which']}) | "
            f"{r['halo_peers_h']}/{r['halo_peers_w']} | {r['filter_group']} | "
            f"{r['schedule_s'] * 1e3:.2f} | {r['schedule_peak_bytes'] / 1024:.1f} | "
            f"{r['with_dense_s'] * 1e3:.2f} | {r['with_dense_peak_bytes'] / 1024:.1f} | "
            f"{r['time_over_first_P']:.2f} | {r['make_plan_s']:.3f} | "
            f"{r['make_plan_peak_bytes'] / 2**20:.1f} |")
    return "\n".join(lines) + "\n"


def verdict(rows: list[dict], biggest: int) -> list[str]:
    top = [r for r in rows if r["P"] == biggest]
    worst_t = max(r["with_dense_s"] for r in top)
    worst_m = max(r["with_dense_peak_bytes"] for r in top)
    worst_ratio = max(r["time_over_first_P"] for r in rows)
    return [f"P = {biggest}: slowest schedule (with dense forms) {worst_t * 1e3:.2f} ms "
            f"(target < {TARGET_TIME_S * 1e3:.0f} ms): {'met' if worst_t < TARGET_TIME_S else 'MISSED'}",
            f"P = {biggest}: largest peak {worst_m / 1e6:.3f} MB (target < "
            f"{TARGET_BYTES / 1e6:.0f} MB): {'met' if worst_m < TARGET_BYTES else 'MISSED'}",
            f"largest time ratio to P = {rows[0]['P']}: {worst_ratio:.2f} (target <= "
            f"{TARGET_RATIO:.0f}): {'met' if worst_ratio <= TARGET_RATIO else 'MISSED'}"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="more P and more ranks")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=25, help="cold builds per rank (best)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "results", "scale"))
    args = parser.parse_args(argv)
    ranks_list = FULL_P if args.full else QUICK_P
    command = "python experiments/bench_scale.py" + (" --full" if args.full else "") + \
        (f" --batch {args.batch}" if args.batch != 32 else "")
    rows = []
    for name in LAYERS:
        rows += schedule_rows(name, args.batch, ranks_list, args.repeat, args.full)
    text = markdown(rows, command)
    lines = verdict(rows, 65536)
    text += "\n" + "\n".join(f"- {line}" for line in lines) + "\n"
    print(text)
    print("real runs (time per phase, memory, overlap, start-up): python experiments/bench_runs.py")
    os.makedirs(args.out, exist_ok=True)
    stem = "full" if args.full else "quick"
    with open(os.path.join(args.out, f"schedule_{stem}.json"), "w") as f:
        json.dump({"command": command, "schedule": rows, "verdict": lines}, f, indent=1)
    with open(os.path.join(args.out, f"schedule_{stem}.md"), "w") as f:
        f.write(text)
    print(f"wrote {args.out}/schedule_{stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
