# python experiments/strong_scaling.py [--quick] [--no-measure] [--force] [--out DIR]
"""Strong scaling: every ResNet-50 and VGG-16 layer at batch 32, P = 1 .. 65536.

Predicted (the planner, no MPI): for every layer and every power of two P from 1 to 65536, the
busiest rank's bytes on parconv's grid, the lower bound max(B_MI, B_MD) and the busiest rank's
bytes of each decomposition the peers use: batch only (data parallelism), spatial only (DTensor
sharding of H and W, spatial-parallel VAE decoders), input-channel only and output-channel
(filter) only.  A peer that cannot use P ranks (batch only with P > 32) runs on as many as it
can and the rest idle.

Measured (mpirun, oversubscribed on this machine: bytes are exact, times only indicative): six
representative layers at P = 1, 2, 4, 8, 16, 32, 64 with ``python -m parconv.run --node numpy``
(int8, OMP_NUM_THREADS=1).  Every rank's measured bytes must equal the planner's prediction made
in this process (the script stops otherwise); the check is recorded in manifest.json.

Writes into experiments/results/strong_scaling/ (refuses to replace a recorded result unless
--force): predicted.{csv,json}, measured.{csv,json}, measured/reports/*.json (the run reports,
gathered by launch.collect into measured/reports.csv), headline.{md,json} (the factor by which
the best peer moves more bytes than parconv at P = 64, 512, 4096), strong_scaling.png,
strong_scaling_peer_factor.png and manifest.json (command, git revision, machine, MPI library,
every mpirun command).  --quick: 3 layers, P up to 4096, measured at P = 1, 2, 4 on one
layer (about a minute).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402
import _peers as PE  # noqa: E402
import _plots as PL  # noqa: E402
import _report as R  # noqa: E402
from parconv.errors import ParconvError  # noqa: E402
from parconv.layers import get_layer, layer_names  # noqa: E402
from parconv.plan import make_plan  # noqa: E402

STUDY = "strong_scaling"
MEASURED_LAYERS = ["resnet50.conv1", "resnet50.layer1.0.conv2", "resnet50.layer2.0.downsample.0",
                   "resnet50.layer4.0.conv2", "vgg16.conv3_1", "vgg16.conv5_1"]
QUICK = {"layers": ["resnet50.layer1.0.conv2", "resnet50.layer4.0.conv2", "vgg16.conv5_1"],
         "ranks": [1, 2, 4, 16, 64, 512, 4096], "measured_layers": ["resnet50.layer4.0.conv2"],
         "measured_ranks": [1, 2, 4]}


def _list(text: str, kind=str) -> list:
    return [kind(v) for v in text.split(",") if v]


def predicted_rows(layers, ranks, batch_of, memory) -> tuple[list[dict], list[str]]:
    """plan_row of every (layer, P) with batch ``batch_of(P)``, and the (layer, P) the planner
    refuses because no grid fits the memory per rank (e.g. vgg16.conv1_1 at batch 32 on one
    rank): those have no row, and the manifest and README name them."""
    rows, refused = [], []
    for name, P in C.progress([(name, P) for name in layers for P in ranks], "planning"):
        try:
            rows.append(PE.plan_row(get_layer(name, batch=batch_of(P)), P, memory))
        except ParconvError as exc:
            if "memory too small" not in str(exc):
                raise
            refused.append(f"{name} batch {batch_of(P)} at P = {P}: {exc}")
    return rows, refused


def measure(args, out, layers, ranks, batch_of) -> tuple[list[dict], list[str]]:
    """mpirun every (layer, P) at batch ``batch_of(P)``; each run checked against the planner
    here."""
    reports = C.fresh_reports(out, "measured")
    rows, commands = [], []
    for name, P in C.progress([(n, P) for n in layers for P in ranks], "mpirun"):
        spec = get_layer(name, batch=batch_of(P))
        path = os.path.join(reports, f"{name}-P{P}.json")
        report, cmd = C.run_measured(args.mpirun, spec, P, path, memory=args.memory)
        rows.append(C.measured_row(report, make_plan(spec, P, memory=args.memory)))
        commands.append(cmd)
    return rows, commands


def plot(out: str, rows: list[dict], measured: list[dict], layers: list[str],
         title: str, stem: str = STUDY) -> list[str]:
    """stem.png: busiest rank's bytes against P for up to 8 layers; peer_factor.png: the
    factor of the best peer over parconv for every layer."""
    plt = PL.pyplot()
    shown = [n for n in C.REPRESENTATIVE if n in layers] or layers[:8]
    cols = min(4, len(shown))
    fig, axes = plt.subplots((len(shown) + cols - 1) // cols, cols, squeeze=False,
                             figsize=(3.6 * cols, 3.1 * ((len(shown) + cols - 1) // cols) + 0.8))
    ranks = sorted({r["P"] for r in rows})
    for ax, name in zip(axes.flat, shown):
        PL.draw_volumes(ax, [r for r in rows if r["layer"] == name],
                       [m for m in measured if m["layer"] == name])
        PL.log2_axis(ax, ranks)
        ax.set_title(name)
        ax.set_xlabel("P (ranks)")
        ax.set_ylabel("busiest rank's bytes")
    for ax in list(axes.flat)[len(shown):]:
        ax.set_visible(False)
    PL.figure_legend(fig, axes.flat)
    fig.suptitle(f"{title}: busiest rank's bytes against P (dotted: the peer cannot use all P "
                 f"ranks, the rest idle)")
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    files = [PL.save(fig, os.path.join(out, f"{stem}.png"))]
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, title in ((axes[0], "best_peer_over_parconv", "best peer on all P ranks"),
                           (axes[1], "best_idle_peer_over_parconv",
                            "best peer on as many ranks as it can use (<= P)")):
        for name in layers:
            pts = [(r["P"], r[key]) for r in rows if r["layer"] == name and r[key]]
            if pts:
                ax.plot(*zip(*pts), color="tab:blue" if name.startswith("resnet") else "tab:red",
                        lw=0.8, alpha=0.6)
        ax.plot([], [], color="tab:blue", label="ResNet-50 layer")
        ax.plot([], [], color="tab:red", label="VGG-16 layer")
        ax.axhline(1, color="black", lw=0.8)
        PL.log2_axis(ax, ranks)
        PL.factor_axis(ax)
        ax.set(xlabel="P (ranks)", title=title)
        ax.legend()
    axes[0].set_ylabel("peer's busiest-rank bytes / parconv's")
    fig.suptitle("How many times more bytes the best peer decomposition moves, every layer")
    fig.tight_layout()
    files.append(PL.save(fig, os.path.join(out, f"{stem}_peer_factor.png")))
    plt.close(fig)
    return files


def readme_text(lines, measured, meta, study: str = STUDY, refused=()) -> str:
    """The README's generated section: provenance, measured runs, the headline tables."""
    text = R.provenance_line(meta) + "\n\n"
    if refused:
        text += ("Not planned (no grid fits the memory per rank): "
                 + "; ".join(r.split(":")[0] for r in refused) + ".\n\n")
    if measured:
        layers = sorted({m["layer"] for m in measured})
        ranks = sorted({m["P"] for m in measured})
        text += (f"Measured: {len(measured)} mpirun runs ({', '.join(layers)}; P = "
                 f"{', '.join(map(str, ranks))}); on every one, every rank's bytes equal the "
                 f"planner's prediction ([measured.csv](results/{study}/measured.csv)).\n\n")
    shown = [l for l in lines if l["layer"] in C.REPRESENTATIVE] or lines[:8]
    text += ("Best peer's busiest-rank bytes / parconv's, as `factor (peer)` with the peer on "
             "all P ranks, then `/ factor (peer@ranks)` for the best peer on as many ranks as "
             "it can use when that is fewer than P:\n\n" + R.headline_markdown(shown) +
             f"\nOver every layer (full table: [headline.md](results/{study}/headline.md)):\n\n"
             + R.headline_summary(lines))
    return text


def run_study(args, argv, study, script, layers, ranks, m_layers, m_ranks, batch_of, title,
              readme_key) -> int:
    """Predict (or, with --replot, read back) and measure one scaling study, write its tables,
    headline, plots, manifest and README section; the exit status of the script."""
    try:
        if args.replot:
            out, meta, rec = C.recorded(args, study, ("predicted", "measured"))
            rows, measured = rec["predicted"], rec["measured"] or []
            refused = meta.get("checks", {}).get("refused_by_memory", [])
            layers = list(dict.fromkeys(r["layer"] for r in rows))
        else:
            out = C.result_folder(args, study)
            meta = C.provenance([os.path.relpath(script, C.REPO), *(argv or sys.argv[1:])],
                                args.mpirun)
            rows, refused = predicted_rows(layers, ranks, batch_of, args.memory)
            checks = {"bound_le_volume_rows": PE.check_bound(rows), "refused_by_memory": refused}
            files = C.write_table(out, "predicted", rows)
            measured, commands = ([], []) if args.no_measure else measure(
                args, out, m_layers, m_ranks, batch_of)
            if measured:
                checks["measured_equals_predicted_runs"] = len(measured)
                checks["measured_phases_checked"] = sum(m["phases_checked"] for m in measured)
                checks["measured_equals_predicted_table"] = PE.check_measured(rows, measured)
                files += C.write_table(out, "measured", measured)
                files += C.collect_reports(out, "measured")
        lines = R.headline(rows)
        files = ([] if args.replot else files) + C.write_table(out, "headline", lines)
        C.write_text(os.path.join(out, "headline.md"), R.headline_markdown(lines))
        files += ["headline.md", *plot(out, rows, measured, layers, title, study)]
        if not args.replot:
            C.write_manifest(out, meta, commands, checks, files)
        R.update_readme(args, readme_key, readme_text(lines, measured, meta, study, refused))
    except C.StudyError as exc:
        print(f"{study}: {exc}", file=sys.stderr)
        return 2
    print(R.headline_markdown(lines))
    print(f"{study}: {len(rows)} predicted rows, {len(measured)} measured runs (bytes equal to "
          f"the prediction on every rank), results in {out}")
    return 0


def add_study_arguments(p, measured_layers) -> None:
    """The options both scaling studies take besides their batch option."""
    p.add_argument("--layers", help="predicted layers, comma-separated (default: every "
                                    "ResNet-50 and VGG-16 layer)")
    p.add_argument("--ranks", help="predicted P, comma-separated (default 1,2,4,..,65536)")
    p.add_argument("--measured-layers", help=f"default {','.join(measured_layers)}")
    p.add_argument("--measured-ranks", help="default 1,2,4,8,16,32,64")
    p.add_argument("--memory", default=None, help="bytes per rank (default: the planner's 1GiB)")
    C.add_replot(p)


def study_lists(args, quick: dict, measured_layers) -> tuple[list, list, list, list]:
    """(layers, P, measured layers, measured P) from the options, else the --quick set, else the
    defaults."""
    q = quick if args.quick else {}
    layers = _list(args.layers) if args.layers else q.get(
        "layers", layer_names("resnet50") + layer_names("vgg16"))
    ranks = _list(args.ranks, int) if args.ranks else q.get("ranks", C.PREDICTED_RANKS)
    m_layers = _list(args.measured_layers) if args.measured_layers else q.get(
        "measured_layers", measured_layers)
    m_ranks = _list(args.measured_ranks, int) if args.measured_ranks else q.get(
        "measured_ranks", C.MEASURED_RANKS)
    return layers, ranks, m_layers, m_ranks


def main(argv=None) -> int:
    p = C.parser(__doc__, STUDY)
    p.add_argument("--batch", type=int, default=32)
    add_study_arguments(p, MEASURED_LAYERS)
    args = p.parse_args(argv)
    layers, ranks, m_layers, m_ranks = study_lists(args, QUICK, MEASURED_LAYERS)
    return run_study(args, argv, STUDY, __file__, layers, ranks, m_layers, m_ranks,
                     lambda P: args.batch, f"Strong scaling at batch {args.batch}",
                     "strong-headline")


if __name__ == "__main__":
    sys.exit(main())
