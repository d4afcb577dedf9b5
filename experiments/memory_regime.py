# python experiments/memory_regime.py [--quick] [--no-measure] [--force] [--out DIR]
"""Memory-dependent regime: where B_MD overtakes B_MI, and what a small --memory does to the plan.

Predicted (no MPI), batch 32:
* memory sweep at fixed P (64, 512, 4096): the exact frontier of parconv's plans -- start with
  1 TiB per rank, plan, then plan again with one byte less than the chosen grid's footprint,
  until no grid fits -- so every grid the planner can be forced onto by --memory appears, with
  its busiest rank's bytes and footprint; and B_MI, B_MD(M) on a log grid of M (4 points per
  octave).  M* is the largest M of that grid where B_MD > B_MI; M_min the smallest footprint
  any grid needs (below it parconv refuses the layer with a one-line error).
* P sweep at fixed memory (256 KiB, 1 MiB, 16 MiB): B_MI(P), B_MD(P) and parconv's plan where
  its blocks fit; P* is the smallest P with B_MI >= B_MD.

Measured (mpirun, oversubscribed): resnet50.layer2.0.downsample.0, the catalogue layer whose
frontier has two grids at every P >= 8, at P = 8 and 64 with the default memory and with a memory
between the two footprints (the planner takes the second grid; bytes checked against the
prediction), and once with a memory below M_min (the run must refuse with exit status 2).

Writes into experiments/results/memory_regime/ (refuses to replace a recorded result unless
--force): frontier.{csv,json}, memory_sweep.{csv,json}, rank_sweep.{csv,json},
crossover.{csv,json}, measured.{csv,json}, measured/reports/, memory_regime.png and
manifest.json.  --quick: 2 layers, P = 64 only, one fixed memory, measured at P = 8.
--check-recorded: no planning and nothing written; the current bound against the planned volumes
already recorded (a few seconds: for a change of the bound, whose plans stay the same).
"""

from __future__ import annotations

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402
import _peers as PE  # noqa: E402
import _plots as PL  # noqa: E402
import _report as R  # noqa: E402
from parconv.bounds import parallel_bounds  # noqa: E402
from parconv.layers import get_layer  # noqa: E402
from parconv.plan import make_plan  # noqa: E402

STUDY = "memory_regime"
LAYERS = C.REPRESENTATIVE
FIXED_P = [64, 512, 4096]
FIXED_MEMORY = {"256KiB": 256 << 10, "1MiB": 1 << 20, "16MiB": 16 << 20}
MEASURED_LAYER = "resnet50.layer2.0.downsample.0"
QUICK = {"layers": ["resnet50.layer2.0.downsample.0", "resnet50.layer3.0.conv2"],
         "fixed_p": [64], "fixed_memory": {"1MiB": 1 << 20}, "measured_ranks": [8],
         "ranks": [1, 4, 16, 64, 256, 1024]}
#: memory grid of the bound curves: 1 KiB .. 1 TiB, 4 points per octave
MEMORY_GRID = [int(2 ** (e / 4)) for e in range(40, 161)]


def frontier(spec, P: int) -> list[dict]:
    """Every plan that some --memory forces, from the unconstrained optimum down to M_min."""
    rows, memory = [], 1 << 40
    while True:
        try:
            plan = make_plan(spec, P, memory=memory)
        except Exception as exc:  # noqa: BLE001 - the planner's "memory too small" ends it
            if "memory too small" not in str(exc):
                raise
            return rows
        footprint = plan.to_dict()["footprint_max"]
        rows.append({"layer": spec.name, "P": P, "memory_from": footprint,
                     "memory_to": memory, "grid": C.grid_text(plan.dims.as_tuple()),
                     "max_volume": plan.max_volume, "footprint": footprint,
                     "B_MI": plan.bound.B_MI, "B_MD": plan.bound.B_MD,
                     "bound": plan.bound.value, "binding": plan.bound.binding,
                     "ratio_to_bound": plan.ratio_to_bound})
        memory = footprint - 1


def bound_row(spec, P: int, M: int, label: str | None = None) -> dict:
    b = parallel_bounds(spec, P, M)
    return {"layer": spec.name, "P": P, "memory": M, "memory_label": label, "B_MI": b.B_MI,
            "B_MD": b.B_MD, "bound": b.value, "binding": b.binding}


def crossover(spec, P: int, curve: list[dict], front: list[dict]) -> dict:
    over = [r["memory"] for r in curve if r["B_MD"] > r["B_MI"]]
    m_star = max(over) if over else None
    m_min = min(r["footprint"] for r in front) if front else None
    return {"layer": spec.name, "P": P, "M_star": m_star, "M_min": m_min,
            "M_min_over_M_star": m_min / m_star if m_star and m_min else None,
            "grids_on_frontier": len(front),
            "optimum_volume": front[0]["max_volume"] if front else None,
            "smallest_memory_volume": front[-1]["max_volume"] if front else None}


def rank_sweep(spec, ranks, memories) -> list[dict]:
    rows = []
    for label, M in memories.items():
        for P in ranks:
            row = bound_row(spec, P, M, label)
            try:
                plan = make_plan(spec, P, memory=M)
                row.update(grid=C.grid_text(plan.dims.as_tuple()), max_volume=plan.max_volume)
            except Exception as exc:  # noqa: BLE001
                if "memory too small" not in str(exc):
                    raise
                row.update(grid=None, max_volume=None)
            rows.append(row)
    return rows


def measure(args, out, ranks) -> tuple[list[dict], list[str], dict]:
    """Default memory, a memory between the two frontier grids, and one below M_min."""
    spec = get_layer(MEASURED_LAYER, batch=32)
    reports = C.fresh_reports(out, "measured")
    rows, commands, refusal = [], [], {}
    for P in C.progress(ranks, "mpirun"):
        front = frontier(spec, P)
        memories = [None] + [(f["memory_from"] + f["memory_to"]) // 2 for f in front[1:]]
        for memory in memories:
            plan = make_plan(spec, P, memory=memory)
            path = os.path.join(reports, f"{spec.name}-P{P}-M{plan.memory}.json")
            report, cmd = C.run_measured(args.mpirun, spec, P, path, memory=plan.memory)
            rows.append({**C.measured_row(report, plan), "memory": plan.memory,
                         "footprint": plan.to_dict()["footprint_max"]})
            commands.append(cmd)
        small = front[-1]["footprint"] // 2
        cmd = [args.mpirun, "-n", str(P), sys.executable, "-m", "parconv.run", "--layer",
               spec.name, "--batch", "32", "--node", "numpy", "--quiet", "--memory", str(small)]
        done = subprocess.run(cmd, cwd=C.REPO, capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, PYTHONPATH=C.REPO, **C.THREAD_ENV))
        if done.returncode != 2 or "memory too small" not in done.stderr:
            raise C.StudyError(f"--memory {small} on P={P} should be refused with status 2, got "
                               f"{done.returncode}: {done.stderr.strip()}")
        refusal[f"P{P}"] = {"memory": small, "status": done.returncode,
                            "message": done.stderr.strip()}
        commands.append(" ".join(cmd))
    return rows, commands, refusal


def _fmt_bytes(v: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if v < 1024:
            return f"{v:.0f} {unit}"
        v /= 1024
    return f"{v:.0f} PiB"


def plot(out, sweep, fronts, ranks_rows, layers) -> str:
    plt = PL.pyplot()
    shown = layers[:4]
    P0 = 64 if any(r["P"] == 64 for r in sweep) else sweep[0]["P"]
    label0 = "1MiB" if any(r["memory_label"] == "1MiB" for r in ranks_rows) else \
        ranks_rows[0]["memory_label"]
    fig, axes = plt.subplots(2, len(shown), squeeze=False, figsize=(3.7 * len(shown), 6.6))
    for col, name in enumerate(shown):
        ax = axes[0][col]
        curve = [r for r in sweep if r["layer"] == name and r["P"] == P0]
        ax.plot([r["memory"] for r in curve], [r["B_MI"] for r in curve], color="tab:gray",
                lw=2.5, alpha=0.6, label="B_MI")
        md = [(r["memory"], r["B_MD"]) for r in curve if r["B_MD"] > 0]
        if md:
            ax.plot(*zip(*md), color="tab:red", lw=1.2, marker=".", ms=4, label="B_MD(M)")
        ax.plot([r["memory"] for r in curve], [r["bound"] for r in curve], **PL.STYLE["bound"])
        front = [f for f in fronts if f["layer"] == name and f["P"] == P0]
        xs, ys = [], []
        for f in front:
            xs += [min(f["memory_to"], MEMORY_GRID[-1]), f["memory_from"]]
            ys += [f["max_volume"]] * 2
        if xs:
            ax.plot(xs, ys, **PL.STYLE["parconv"])
            ax.axvline(front[-1]["footprint"], color="tab:blue", lw=0.8, ls=":",
                       label="smallest footprint (M_min)")
        ax.set(xscale="log", yscale="log", title=f"{name}, P = {P0}",
               xlabel="memory per rank M (bytes)", ylabel="busiest rank's bytes")
        ax.grid(True, alpha=0.3)
        ax = axes[1][col]
        rows = [r for r in ranks_rows if r["layer"] == name and r["memory_label"] == label0]
        mi = [(r["P"], r["B_MI"]) for r in rows if r["B_MI"] > 0]
        if mi:
            ax.plot(*zip(*mi), color="tab:gray", lw=2.5, alpha=0.6, label="B_MI")
        md = [(r["P"], r["B_MD"]) for r in rows if r["B_MD"] > 0]
        if md:
            ax.plot(*zip(*md), color="tab:red", lw=1.2, marker=".", ms=4, label="B_MD(M)")
        fit = [(r["P"], r["max_volume"]) for r in rows if r["max_volume"]]
        if fit:
            ax.plot(*zip(*fit), **PL.STYLE["parconv"])
        PL.log2_axis(ax, sorted({r["P"] for r in rows}))
        ax.set(title=f"{name}, M = {label0} per rank", xlabel="P (ranks)",
               ylabel="busiest rank's bytes")
    PL.figure_legend(fig, axes.flat)
    fig.suptitle(f"Memory-dependent regime, batch 32. Top: memory sweep at P = {P0}; bottom: "
                 f"P sweep at M = {label0}.\nB_MD overtakes B_MI only where no grid's blocks "
                 f"fit in M (parconv refuses there)", fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    name = PL.save(fig, os.path.join(out, "memory_regime.png"))
    plt.close(fig)
    return name


def readme_text(cross: list[dict], measured: list[dict], meta: dict) -> str:
    """The README's generated section: the crossover table and the measured runs."""
    text = R.provenance_line(meta) + "\n\n"
    text += ("| layer | P | M* (B_MD > B_MI below) | M_min (smallest footprint) | M_min / M* | "
             "grids on the frontier | bytes: optimum -> smallest memory |\n"
             "|---|---|---|---|---|---|---|\n")
    for c in cross:
        ratio = f"{c['M_min_over_M_star']:.1f}" if c["M_min_over_M_star"] else "-"
        text += (f"| {c['layer']} | {c['P']} | {R.human_bytes(c['M_star'])} | "
                 f"{R.human_bytes(c['M_min'])} | {ratio} | {c['grids_on_frontier']} | "
                 f"{c['optimum_volume']} -> {c['smallest_memory_volume']} |\n")
    if measured:
        text += ("\nMeasured (mpirun): " + "; ".join(
            f"P = {m['P']}, --memory {m['memory']}: grid {m['grid']}, {m['measured_volume']} B "
            f"(= predicted)" for m in measured) + ".\n")
    return text


def check_recorded(folder: str) -> int:
    """The current bound against every planned volume recorded in `folder` (frontier.csv,
    rank_sweep.csv): the plans do not depend on the bound, so a sharper bound can be checked
    against them without planning again.  Prints the count and any volume below the bound."""
    import csv
    checked = above = 0
    for name, key in (("frontier.csv", "memory_from"), ("rank_sweep.csv", "memory")):
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            print(f"{STUDY}: no {path}", file=sys.stderr)
            return 2
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if not row.get("max_volume"):
                    continue
                spec = get_layer(row["layer"], batch=32)
                bound = parallel_bounds(spec, int(row["P"]), int(row[key])).value
                checked += 1
                if bound > float(row["max_volume"]) * (1 + 1e-9) + 1e-6:
                    above += 1
                    print(f"{name}: {row['layer']} P={row['P']} M={row[key]}: bound {bound:.0f} "
                          f"above the planned {row['max_volume']}")
    print(f"{STUDY}: {checked} recorded planned volumes, {above} below the current bound")
    return 1 if above else 0


def main(argv=None) -> int:
    p = C.parser(__doc__, STUDY)
    p.add_argument("--layers", help=f"comma-separated (default {','.join(LAYERS)})")
    p.add_argument("--check-recorded", action="store_true",
                   help="no planning: hold the current bound against the planned volumes "
                        "recorded in the result folder, and exit")
    args = p.parse_args(argv)
    if args.check_recorded:
        return check_recorded(args.out or os.path.join(C.RESULTS, "quick" if args.quick else "",
                                                       STUDY))
    q = QUICK if args.quick else {}
    layers = args.layers.split(",") if args.layers else q.get("layers", LAYERS)
    fixed_p, memories = q.get("fixed_p", FIXED_P), q.get("fixed_memory", FIXED_MEMORY)
    ranks = q.get("ranks", C.PREDICTED_RANKS)
    try:
        out = C.result_folder(args, STUDY)
        meta = C.provenance([os.path.relpath(__file__, C.REPO), *(argv or sys.argv[1:])],
                            args.mpirun)
        fronts, sweep, cross, by_rank = [], [], [], []
        for name in C.progress(layers, "layers"):
            spec = get_layer(name, batch=32)
            for P in fixed_p:
                front = frontier(spec, P)
                curve = [bound_row(spec, P, M) for M in MEMORY_GRID]
                fronts += front
                sweep += curve
                cross.append(crossover(spec, P, curve, front))
            by_rank += rank_sweep(spec, ranks, memories)
        checks = {"bound_le_volume_frontier": PE.check_bound(fronts),
                  "bound_le_volume_rank_sweep": PE.check_bound(
                      [{**r, "bound": r["bound"]} for r in by_rank if r["max_volume"]])}
        files = C.write_table(out, "frontier", fronts)
        files += C.write_table(out, "memory_sweep", sweep)
        files += C.write_table(out, "rank_sweep", by_rank)
        files += C.write_table(out, "crossover", cross)
        commands, measured = [], []
        if not args.no_measure:
            measured, commands, refusal = measure(args, out, q.get("measured_ranks", [8, 64]))
            checks.update(measured_equals_predicted_runs=len(measured), refused=refusal)
            files += C.write_table(out, "measured", measured)
            files += C.collect_reports(out, "measured")
        files.append(plot(out, sweep, fronts, by_rank, layers))
        C.write_manifest(out, meta, commands, checks, files)
        R.update_readme(args, "memory-headline", readme_text(cross, measured, meta))
    except C.StudyError as exc:
        print(f"{STUDY}: {exc}", file=sys.stderr)
        return 2
    print(C.markdown(cross, list(cross[0])))
    for c in cross:
        if c["M_star"] and c["M_min"]:
            print(f"{c['layer']} P={c['P']}: B_MD > B_MI below M* = {_fmt_bytes(c['M_star'])}; "
                  f"smallest footprint {_fmt_bytes(c['M_min'])} "
                  f"({c['M_min_over_M_star']:.1f}x M*); {c['grids_on_frontier']} grid(s)")
    print(f"{STUDY}: results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
