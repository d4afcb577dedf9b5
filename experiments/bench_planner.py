# python experiments/bench_planner.py [--batch 32] [--ranks 8,64,512,4096] [--nets resnet50,vgg16]
"""Planner benchmark: every ResNet-50 and VGG-16 layer at batch 32 on P in {8, 64, 512, 4096}.

Run:  python experiments/bench_planner.py [--batch 32] [--ranks 8,64,512,4096] [--out DIR]

Prints, per layer and P: the chosen grid, the busiest rank's bound-comparable volume, the problem's
bound (balanced shares, idle ranks included) before the polyphase and halo terms ("old": section 4
only) and after ("new": the largest of section 4, the polyphase bound and the halo term), which
term binds (``MI-halo``: theory.md 4.8), both ratios,
and for every row whose new ratio is above 1.15 the reason and the best alternative found.  The
plan is the automatic one (every grid with both input ownerships, aligned and centred, on each
split axis; ``ownership`` gives the chosen H,W pair); ``aligned_*`` is the same planner held to
the aligned ownership (the planner before centred ownership), planned in the same run:

* ``ideal`` is the grid algorithm with REAL factors and no halo (parconv.bounds.alternatives),
  ``ideal+halo`` the same with halos (both on every row); the reason is "bound or algorithm" when
  even ``ideal`` is above 1.15 x the bound, "halo" when ``ideal`` is within it but ``ideal+halo``
  is not, and "integrality" when ``ideal+halo`` is within it but the integer grid is not;
  ``kind_1.03`` sorts every plan the same way against the median target 1.03;
* the alternative is the best of two grids side by side (P1 + P2 ranks, each planned by
  make_plan on its part of the batch or of the output channels, charged the balanced-start
  surcharge, see `two_grids`).

Writes CSV, Markdown and a plot to experiments/results/planner/.  Every figure is computed.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from parconv.bounds.alternatives import ideal_grid  # noqa: E402
from parconv.bounds.workfn import output_bytes  # noqa: E402
from parconv.layers import get_layer, layer_names  # noqa: E402
from parconv.plan import make_plan  # noqa: E402

FIELDS = ["layer", "P", "grid", "active", "ownership", "max_volume", "halo_bytes", "bound_old",
          "bound_new", "binding_new", "layout_bound", "ratio_old", "ratio_new", "ideal",
          "ideal_halo", "kind_1.03", "reason", "alternative", "alt_volume", "alt_ratio",
          "plan_time_s", "aligned_grid", "aligned_volume", "ratio_aligned", "aligned_time_s"]
THRESHOLD = 1.15
#: the issue's target for the median ratio: every plan above it is sorted too (``kind_1.03``)
MEDIAN_TARGET = 1.03


def gap_kind(ratio: float, ideal: float, with_halo: float, threshold: float) -> str:
    """Why a plan is above `threshold` times the bound (module docstring), or "within"."""
    if round(ratio, 4) <= threshold:
        return "within"
    if ideal > threshold:
        return "bound or algorithm"
    return "halo" if with_halo > threshold else "integrality"


def two_grids(spec, P: int, memory=None) -> dict:
    """Best split of the batch or the output channels between P1 + P2 = P ranks running their own
    plans side by side.  A rank of a sub-plan owns more than ceil(|A_j| / P) elements of an array
    there; receiving the difference from the balanced start is charged to it in full (an upper
    estimate, so an alternative found below the grid's volume is really better).  P1 runs over
    every value for P <= 64 and over P/8, 2P/8, ..., 7P/8 above."""
    owned = np.array([-(-a // P) for a in (spec.size_input_touched, spec.size_filter,
                                           spec.size_output)], dtype=float)
    p = np.array([spec.p_in, spec.p_weight, output_bytes(spec)], dtype=float)
    best, cache = {"volume": math.inf}, {}

    def volume(part, ranks):
        if (part, ranks) not in cache:
            plan = make_plan(part, ranks, memory=memory)
            extra = float(p @ np.maximum(np.array(plan.prediction.owned, float) - owned, 0.0))
            cache[(part, ranks)] = (plan.max_volume + extra, str(plan.dims))
        return cache[(part, ranks)]

    firsts = range(1, P) if P <= 64 else sorted({P * i // 8 for i in range(1, 8)})
    for axis in ("batch", "out_channels"):
        total = getattr(spec, axis)
        for P1 in firsts:
            mid = round(total * P1 / P)
            for n1 in sorted({mid - 1, mid, mid + 1}):
                if not 1 <= n1 < total:
                    continue
                a = volume(spec.replace(**{axis: n1}), P1)
                b = volume(spec.replace(**{axis: total - n1}), P - P1)
                if max(a[0], b[0]) < best["volume"]:
                    best = {"volume": max(a[0], b[0]),
                            "what": f"{axis} {n1}+{total - n1} on {P1}+{P - P1} ranks "
                                    f"({a[1]} | {b[1]})"}
    return best


def row_for(name: str, batch: int, P: int) -> dict:
    spec = get_layer(name, batch=batch)
    started = time.perf_counter()
    plan = make_plan(spec, P)
    elapsed = time.perf_counter() - started
    bound = plan.bound
    old = max(bound.B_MI_plain, bound.B_MD_plain)
    busiest = int(np.argmax(plan.predicted_bound_volume))
    halo = int(sum(plan.predicted[ph]["received"][busiest] for ph in ("halo_h", "halo_w")))
    kind = "MI" if bound.B_MI >= bound.B_MD else "MD"
    term = (bound.B_MI_term if kind == "MI"
            else "polyphase" if bound.B_MD_polyphase > bound.B_MD_plain else "section 4")
    ratio = plan.max_volume / bound.value if bound.value > 0 else None
    started = time.perf_counter()
    aligned = make_plan(spec, P, ownership="aligned")
    aligned_time = time.perf_counter() - started
    row = {"layer": name, "P": P, "grid": str(plan.dims), "active": plan.active,
           "ownership": ",".join(plan.ownership), "max_volume": plan.max_volume,
           "halo_bytes": halo, "bound_old": round(old),
           "bound_new": round(bound.value),
           "binding_new": f"{kind}-{term.replace(' ', '')}",
           "layout_bound": round(plan.layout_bound.value),
           "ratio_old": round(plan.max_volume / old, 4) if old > 0 else "n/a",
           "ratio_new": round(ratio, 4) if ratio is not None else "n/a",
           "ideal": "", "ideal_halo": "", "reason": "", "alternative": "", "alt_volume": "",
           "alt_ratio": "", "plan_time_s": round(elapsed, 4),
           "aligned_grid": str(aligned.dims), "aligned_volume": aligned.max_volume,
           "ratio_aligned": (round(aligned.max_volume / bound.value, 4) if bound.value > 0
                             else "n/a"),
           "aligned_time_s": round(aligned_time, 4)}
    if ratio is None:
        return row
    ideal = ideal_grid(spec, P)[0] / bound.value
    with_halo = ideal_grid(spec, P, halo=True)[0] / bound.value
    row.update({"ideal": round(ideal, 4), "ideal_halo": round(with_halo, 4),
                "kind_1.03": gap_kind(ratio, ideal, with_halo, MEDIAN_TARGET)})
    # the reason is given where the printed (4-digit) ratio is above the threshold, as counted
    reason = gap_kind(ratio, ideal, with_halo, THRESHOLD)
    if reason != "within":
        if reason == "bound or algorithm":
            reason += f" ({row['binding_new']} binds)"
        alt = two_grids(spec, P)
        row.update(reason=reason, alternative=alt.get("what", "none"),
                   alt_volume=round(alt["volume"]), alt_ratio=round(alt["volume"] / bound.value, 4))
    return row


def plot(rows: list[dict], path: str) -> None:
    """Ratio to the problem's bound of every layer against P, old bound and new."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ranks = sorted({r["P"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, title in ((axes[0], "ratio_old", "section-4 bound (old)"),
                           (axes[1], "ratio_new", "with the polyphase and halo terms (new)")):
        for i, P in enumerate(ranks):
            vals = [r[key] for r in rows if r["P"] == P and r[key] != "n/a"]
            ax.scatter(np.full(len(vals), i) + np.random.default_rng(i).uniform(-.15, .15,
                                                                                  len(vals)),
                       vals, s=10, alpha=0.6)
        ax.set_xticks(range(len(ranks)), [str(P) for P in ranks])
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(1.3, color="r", lw=0.6, ls="--")
        ax.set(xlabel="P", title=title)
    axes[0].set_ylabel("busiest rank / problem's bound")
    fig.suptitle("ResNet-50 and VGG-16 layers, batch 32")
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=120)
    os.replace(path + ".tmp.png", path)


def summary(rows: list[dict], key: str) -> str:
    vals = [r[key] for r in rows if r[key] != "n/a"]
    above = sum(v > 1.3 for v in vals)
    over = sum(v > THRESHOLD for v in vals)
    return (f"{key}: median {statistics.median(vals):.4f}, max {max(vals):.4f}, "
            f"{over} of {len(vals)} above {THRESHOLD}, {above} above 1.3")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--ranks", default="8,64,512,4096")
    parser.add_argument("--nets", default="resnet50,vgg16")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "planner"))
    args = parser.parse_args()
    ranks = [int(p) for p in args.ranks.split(",")]
    jobs = [(name, P) for net in args.nets.split(",") for name in layer_names(net + ".")
            for P in ranks]
    rows = [row_for(name, args.batch, P) for name, P in tqdm(jobs, desc="planning",
                                                              file=sys.stderr)]
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"{'_'.join(args.nets.split(','))}_b{args.batch}")
    with open(stem + ".csv.tmp", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(stem + ".csv.tmp", stem + ".csv")
    lines = [summary(rows, "ratio_old"), summary(rows, "ratio_new"),
             summary(rows, "ratio_aligned") + " (aligned ownership only, problem's bound)"]
    sorted_ = [r for r in rows if r["kind_1.03"]]
    kinds = {k: sum(r["kind_1.03"] == k for r in sorted_)
             for k in ("within", "integrality", "halo", "bound or algorithm")}
    ideal = statistics.median(r["ideal"] for r in sorted_)
    with_halo = statistics.median(r["ideal_halo"] for r in sorted_)
    lines.append(f"against the median target {MEDIAN_TARGET}: {kinds.pop('within')} of "
                 f"{len(sorted_)} plans within; above it "
                 + ", ".join(f"{v} {k}" for k, v in kinds.items())
                 + f"; median ratio of the real-factor grid {ideal:.4f} without halos, "
                 f"{with_halo:.4f} with")
    centred = [r for r in rows if "centred" in r["ownership"]]
    lines.append(f"centred ownership chosen on {len(centred)} of {len(rows)} rows; busiest "
                 f"volume below the aligned plan's on "
                 f"{sum(r['max_volume'] < r['aligned_volume'] for r in rows)}, above on "
                 f"{sum(r['max_volume'] > r['aligned_volume'] for r in rows)}")
    for key, what in (("plan_time_s", "slowest planning"),
                      ("aligned_time_s", "slowest planning, aligned only")):
        worst = max(rows, key=lambda r: r[key])
        lines.append(f"{what}: {worst[key]:.3f} s ({worst['layer']}, P={worst['P']}); total "
                     f"{sum(r[key] for r in rows):.1f} s")
    header = "| " + " | ".join(FIELDS) + " |\n|" + "---|" * len(FIELDS) + "\n"
    body = "".join("| " + " | ".join(str(r[f]) for f in FIELDS) + " |\n" for r in rows)
    with open(stem + ".md.tmp", "w") as fh:
        fh.write("# Planner against the problem's bound\n\n" + "".join(f"* {x}\n" for x in lines)
                 + "\n" + header + body)
    os.replace(stem + ".md.tmp", stem + ".md")
    print(f"{'layer':<32} {'P':>5} {'grid':<14} {'own H,W':<15} {'volume':>10} {'old':>10} "
          f"{'new':>10} {'binds':<13} {'r_old':>6} {'r_new':>6} {'r_alig':>6}  "
          f"reason / alternative")
    for r in rows:
        extra = ""
        if r["reason"]:
            extra = (f"{r['reason']}; ideal {r['ideal']}, ideal+halo {r['ideal_halo']}; best "
                     f"alternative {r['alt_ratio']} ({r['alternative']})")
        print(f"{r['layer']:<32} {r['P']:>5} {r['grid']:<14} {r['ownership']:<15} "
              f"{r['max_volume']:>10} {r['bound_old']:>10} {r['bound_new']:>10} "
              f"{r['binding_new']:<13} {r['ratio_old']:>6} {r['ratio_new']:>6} "
              f"{r['ratio_aligned']:>6}  {extra}")
    print()
    for line in lines:
        print(line)
    plot(rows, stem + ".png")
    print(f"wrote {stem}.csv, {stem}.md and {stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
