# python experiments/bench_planner.py [--batch 32] [--ranks 8,64,512,4096]
"""Planner benchmark: every ResNet-50 layer at batch 32 on P in {8, 64, 512, 4096}.

Run:  python experiments/bench_planner.py [--batch 32] [--ranks 8,64,512,4096] [--out DIR]

Prints, per layer and P, the chosen grid, its ratio to the parallel lower bound max(B_MI, B_MD),
its advantage over the best baseline (batch / spatial / input- or output-channel only) and the
planning time; writes the same as CSV and Markdown, and a plot, to experiments/results/planner/.  Every figure is
computed by parconv.plan; nothing is assumed.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tqdm import tqdm  # noqa: E402

from parconv.layers import get_layer, layer_names  # noqa: E402
from parconv.plan import make_plan  # noqa: E402

FIELDS = ["layer", "P", "grid", "active", "max_volume", "B_MI", "B_MD", "binding",
          "ratio_to_bound", "best_baseline", "baseline_volume", "baseline_over_ours",
          "plan_time_s"]


def row_for(name: str, batch: int, P: int) -> dict:
    spec = get_layer(name, batch=batch)
    started = time.perf_counter()
    plan = make_plan(spec, P)
    elapsed = time.perf_counter() - started
    bases = {k: v for k, v in plan.baselines.items() if v is not None}
    best = min(bases, key=lambda k: bases[k]["max_volume"]) if bases else None
    return {"layer": name, "P": P, "grid": str(plan.dims), "active": plan.active,
            "max_volume": plan.max_volume, "B_MI": round(plan.bound.B_MI),
            "B_MD": round(plan.bound.B_MD), "binding": plan.bound.binding,
            "ratio_to_bound": (round(plan.ratio_to_bound, 4) if plan.ratio_to_bound is not None
                               else "n/a"), "best_baseline": best or "-",
            "baseline_volume": bases[best]["max_volume"] if best else "",
            "baseline_over_ours": (round(bases[best]["max_volume"] / plan.max_volume, 3)
                                   if best else ""),
            "plan_time_s": round(elapsed, 4)}


def plot(rows: list[dict], path: str) -> None:
    """Two panels: ratio to the bound of every layer against P, and the busiest rank's volume of
    the chosen grid against the best baseline, summed over the layers where a baseline exists."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ranks = sorted({r["P"] for r in rows})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, P in enumerate(ranks):
        ratios = [r["ratio_to_bound"] for r in rows if r["P"] == P and r["ratio_to_bound"] != "n/a"]
        left.scatter([i] * len(ratios), ratios, s=12, alpha=0.6)
    left.set_xticks(range(len(ranks)), [str(P) for P in ranks])
    left.axhline(1.0, color="k", lw=0.8)
    left.set(xlabel="P", ylabel="busiest rank / max(B_MI, B_MD)",
             title="ratio to the lower bound, every ResNet-50 layer")
    ours, base = [], []
    for P in ranks:
        both = [r for r in rows if r["P"] == P and r["baseline_volume"] != ""]
        ours.append(sum(r["max_volume"] for r in both) / 2**20)
        base.append(sum(r["baseline_volume"] for r in both) / 2**20)
    x = range(len(ranks))
    right.bar([i - 0.2 for i in x], ours, 0.4, label="chosen grid")
    right.bar([i + 0.2 for i in x], base, 0.4, label="best baseline")
    right.set_xticks(list(x), [str(P) for P in ranks])
    right.set(xlabel="P", ylabel="MiB (sum over layers with a baseline)",
              title="busiest rank's volume: planner vs best baseline")
    right.legend()
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=120)
    os.replace(path + ".tmp.png", path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--ranks", default="8,64,512,4096")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "planner"))
    args = parser.parse_args()
    ranks = [int(p) for p in args.ranks.split(",")]
    jobs = [(name, P) for name in layer_names("resnet50") for P in ranks]
    rows = [row_for(name, args.batch, P) for name, P in tqdm(jobs, desc="planning",
                                                              file=sys.stderr)]
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"resnet50_b{args.batch}")
    with open(stem + ".csv.tmp", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(stem + ".csv.tmp", stem + ".csv")
    header = "| " + " | ".join(FIELDS) + " |\n|" + "---|" * len(FIELDS) + "\n"
    body = "".join("| " + " | ".join(str(r[f]) for f in FIELDS) + " |\n" for r in rows)
    with open(stem + ".md.tmp", "w") as fh:
        fh.write(header + body)
    os.replace(stem + ".md.tmp", stem + ".md")
    print(f"{'layer':<32} {'P':>5} {'grid':<16} {'ratio':>6} {'vs best baseline':>17} "
          f"{'time':>7}")
    for r in rows:
        base = (f"{r['baseline_over_ours']}x {r['best_baseline']}" if r["baseline_volume"] != ""
                else "none possible")
        print(f"{r['layer']:<32} {r['P']:>5} {r['grid']:<16} {r['ratio_to_bound']:>6} "
              f"{base:>17} {r['plan_time_s']:>6.3f}s")
    worst = max(rows, key=lambda r: r["plan_time_s"])
    ratios = [r["ratio_to_bound"] for r in rows if r["ratio_to_bound"] != "n/a"]
    above = [r for r in rows if r["ratio_to_bound"] != "n/a" and r["ratio_to_bound"] > 1.3]
    print(f"\nslowest planning: {worst['plan_time_s']:.3f} s ({worst['layer']}, P={worst['P']})")
    print(f"ratio to bound: min {min(ratios):.3f}, max {max(ratios):.3f}; {len(above)} of "
          f"{len(rows)} above 1.3, {len(rows) - len(ratios)} with a zero bound")
    plot(rows, stem + ".png")
    print(f"wrote {stem}.csv, {stem}.md and {stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
