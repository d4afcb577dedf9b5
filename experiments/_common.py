"""Shared helpers of the scaling studies (strong_scaling, weak_scaling, im2col_matmul,
memory_regime): provenance, result folders that are never overwritten silently, mpirun runs
checked against the planner, the peers' decompositions, tables and plot styling.

Not part of parconv: the studies only use parconv's public entry points (ConvSpec, the layer
catalogue, make_plan, the bounds and ``python -m parconv.run``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from parconv.plan import make_plan  # noqa: E402

#: the P of the predicted sweeps: every power of 2 from 1 to 65536
PREDICTED_RANKS = [2 ** i for i in range(17)]
#: the P measured with mpirun (oversubscribed on this machine)
MEASURED_RANKS = [1, 2, 4, 8, 16, 32, 64]
#: peer decompositions (the keys of Plan.baselines) and how the tables and plots name them
PEERS = {"batch": "batch only (data parallel)", "spatial": "spatial only (DTensor / VAE)",
         "input-channel": "input-channel only", "output-channel": "output-channel (filter) only"}
#: a small representative set: stem, 3x3 at every stage, 1x1 and strided projections, VGG
REPRESENTATIVE = ["resnet50.conv1", "resnet50.layer1.0.conv2", "resnet50.layer2.0.downsample.0",
                  "resnet50.layer3.0.conv2", "resnet50.layer4.0.conv2", "vgg16.conv1_2",
                  "vgg16.conv3_1", "vgg16.conv5_1"]
#: BLAS threads per rank: the ranks are oversubscribed already
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class StudyError(Exception):
    """A refusal or a failed check; the message is one line."""


# ---- command line, folders, provenance -------------------------------------------------------

def parser(doc: str, study: str) -> argparse.ArgumentParser:
    """The options every study has: --out, --force, --quick, --no-measure, --mpirun."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help=f"result folder (default experiments/results/{study}, or "
                                 f"experiments/results/quick/{study} with --quick)")
    p.add_argument("--force", action="store_true",
                   help="replace results already recorded in the folder")
    p.add_argument("--quick", action="store_true",
                   help="a small version that finishes in a few minutes on 2 cores (tests)")
    p.add_argument("--no-measure", action="store_true",
                   help="planner predictions only, no mpirun runs")
    p.add_argument("--mpirun", default=shutil.which("mpirun", path=os.path.dirname(
        sys.executable)) or shutil.which("mpirun") or "mpirun", help="mpirun to launch with")
    return p


def result_folder(args, study: str) -> str:
    """The folder to write into; refuses one holding a recorded study unless --force."""
    out = args.out or os.path.join(RESULTS, "quick" if args.quick else "", study)
    manifest = os.path.join(out, "manifest.json")
    if os.path.exists(manifest) and not args.force:
        raise StudyError(f"{out} already holds a recorded result ({manifest}); pass --force to "
                         f"replace it or --out NEW_FOLDER to keep it")
    os.makedirs(out, exist_ok=True)
    return out


def _output(cmd, cwd=REPO) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def provenance(argv: list[str], mpirun: str) -> dict:
    """Exact command, git revision (and whether the tree had edits), machine and MPI library."""
    mpi = _output([sys.executable, "-c", "from mpi4py import MPI; "
                   "print(MPI.Get_library_version().strip())"])
    status = _output(["git", "status", "--porcelain", "--untracked-files=no"])
    return {"command": " ".join(shlex.quote(a) for a in [sys.executable, *argv]),
            "git_revision": _output(["git", "rev-parse", "HEAD"]),
            "git_dirty": bool(status) if status is not None else None,
            "hostname": socket.gethostname(), "cores": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(),
            "mpi_library": " ".join(mpi.splitlines()[0].split()) if mpi else None, "mpirun": mpirun,
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_manifest(out: str, meta: dict, runs: list[str], checks: dict, files: list[str]) -> None:
    """manifest.json: provenance, every mpirun command, the checks made and the files written."""
    meta = dict(meta, finished_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                mpirun_commands=runs, checks=checks, files=sorted(files))
    write_text(os.path.join(out, "manifest.json"), json.dumps(meta, indent=1) + "\n")


# ---- files --------------------------------------------------------------------------------------

def write_text(path: str, text: str) -> None:
    """Write atomically: a temporary file beside `path`, then rename."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_table(out: str, stem: str, rows: list[dict]) -> list[str]:
    """``stem.csv`` and ``stem.json`` (a list of rows); returns the file names."""
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    tmp = os.path.join(out, f"{stem}.csv.tmp-{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if row.get(k) is None else row[k]) for k in fields}
                         for row in rows)
    os.replace(tmp, os.path.join(out, f"{stem}.csv"))
    write_text(os.path.join(out, f"{stem}.json"), json.dumps(rows, indent=1) + "\n")
    return [f"{stem}.csv", f"{stem}.json"]


def markdown(rows: list[dict], fields: list[str]) -> str:
    head = "| " + " | ".join(fields) + " |\n|" + "---|" * len(fields) + "\n"
    return head + "".join("| " + " | ".join(_cell(r.get(f)) for f in fields) + " |\n"
                          for r in rows)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def grid_text(grid) -> str:
    if isinstance(grid, dict):
        return "x".join(str(grid[a]) for a in "NKCHW")
    return "x".join(str(v) for v in grid)


# ---- the planner and the peers -----------------------------------------------------------------

def _largest_grid(family: str, caps, P: int) -> list[tuple]:
    """Pure grids of `family` using as many ranks as that decomposition can, at most P."""
    n, k, c, h, w = caps
    if family == "batch":
        return [(min(P, n), 1, 1, 1, 1)]
    if family == "output-channel":
        return [(1, min(P, k), 1, 1, 1)]
    if family == "input-channel":
        return [(1, 1, min(P, c), 1, 1)]
    pairs = [(a, min(w, P // a)) for a in range(1, min(h, P) + 1)]
    most = max(a * b for a, b in pairs)
    return [(1, 1, 1, a, b) for a, b in pairs if a * b == most]


def peer_volumes(spec, plan, memory) -> dict:
    """Busiest rank's volume of each peer decomposition on ``plan.ranks`` ranks.

    Where the pure decomposition exists on all P ranks it is ``plan.baselines`` (the planner's
    own evaluation).  Where it cannot use P ranks (batch only with P > N, spatial only with
    P > H W, ...) the peer runs on the most ranks it can use and the others idle, as data
    parallelism beyond the batch does; ``ranks`` then says how many it used.  None when no
    grid of that family fits in `memory`.
    """
    caps = (spec.batch, spec.out_channels, spec.in_channels, *spec.out_size)
    out = {}
    for family in PEERS:
        base = plan.baselines.get(family)
        if base is not None:
            out[family] = {"grid": grid_text(base["grid"]), "ranks": plan.ranks,
                           "max_volume": int(base["max_volume"])}
            continue
        best = None
        for grid in _largest_grid(family, caps, plan.ranks):
            used = 1
            for g in grid:
                used *= g
            try:
                peer = make_plan(spec, used, memory=memory, grid=grid)
            except Exception as exc:  # noqa: BLE001 - a grid that does not fit is no peer
                if "memory too small" in str(exc):
                    continue
                raise
            if best is None or peer.max_volume < best["max_volume"]:
                best = {"grid": grid_text(grid), "ranks": used, "max_volume": peer.max_volume}
        out[family] = best
    return out


def plan_row(spec, P: int, memory=None) -> dict:
    """One predicted row: parconv's grid and busiest volume, the bound and every peer."""
    plan = make_plan(spec, P, memory=memory)
    row = {"layer": spec.name, "batch": spec.batch, "P": P, "grid": grid_text(plan.dims.as_tuple()),
           "active": plan.active, "max_volume": plan.max_volume,
           "B_MI": plan.bound.B_MI, "B_MD": plan.bound.B_MD, "bound": plan.bound.value,
           "binding": plan.bound.binding, "ratio_to_bound": plan.ratio_to_bound}
    peers = peer_volumes(spec, plan, plan.memory)
    for family, peer in peers.items():
        row[f"{family}_volume"] = None if peer is None else peer["max_volume"]
        row[f"{family}_ranks"] = None if peer is None else peer["ranks"]
        row[f"{family}_grid"] = None if peer is None else peer["grid"]
    for prefix, usable in (
            ("best_peer", {f: p for f, p in peers.items() if p is not None and p["ranks"] == P}),
            ("best_idle_peer", {f: p for f, p in peers.items() if p is not None})):
        best = min(usable, key=lambda f: (usable[f]["max_volume"], -usable[f]["ranks"]),
                   default=None)
        row[prefix] = best
        row[f"{prefix}_ranks"] = usable[best]["ranks"] if best else None
        row[f"{prefix}_volume"] = usable[best]["max_volume"] if best else None
        row[f"{prefix}_over_parconv"] = (usable[best]["max_volume"] / plan.max_volume
                                         if best and plan.max_volume > 0 else None)
    return row


def headline(rows: list[dict], ranks=(64, 512, 4096)) -> list[dict]:
    """Per layer and P in `ranks`: best peer volume / parconv's, on all P ranks and with idle
    ranks allowed (the peer on as many ranks as it can use)."""
    out = {}
    for r in rows:
        if r["P"] not in ranks:
            continue
        line = out.setdefault(r["layer"], {"layer": r["layer"]})
        line[f"P{r['P']}_peer"] = r["best_peer"]
        line[f"P{r['P']}_factor"] = r["best_peer_over_parconv"]
        line[f"P{r['P']}_idle_peer"] = (f"{r['best_idle_peer']}@{r['best_idle_peer_ranks']}"
                                        if r["best_idle_peer"] else None)
        line[f"P{r['P']}_idle_factor"] = r["best_idle_peer_over_parconv"]
    return list(out.values())


def headline_markdown(lines: list[dict], ranks=(64, 512, 4096)) -> str:
    """The headline table: 'factor (peer)' per P, and the idle-allowed factor after a slash."""
    head = ("| layer | " + " | ".join(f"P = {P}" for P in ranks) + " |\n|---|"
            + "---|" * len(ranks) + "\n")
    body = ""
    for line in lines:
        cells = []
        for P in ranks:
            f, peer = line.get(f"P{P}_factor"), line.get(f"P{P}_peer")
            fi, idle = line.get(f"P{P}_idle_factor"), line.get(f"P{P}_idle_peer")
            same = f"{f:.2f} ({peer})" if f is not None else "none on all P"
            other = f" / {fi:.2f} ({idle})" if fi is not None and idle and \
                not idle.endswith(f"@{P}") else ""
            cells.append(same + other)
        body += f"| {line['layer']} | " + " | ".join(cells) + " |\n"
    return head + body


def check_bound(rows: list[dict]) -> int:
    """bound <= parconv's busiest volume on every row (the bound is a lower bound)."""
    bad = [r for r in rows if r["bound"] > r["max_volume"] * (1 + 1e-9) + 1e-6]
    if bad:
        r = bad[0]
        raise StudyError(f"bound above the volume: {r['layer']} P={r['P']}: bound {r['bound']} "
                         f"> busiest volume {r['max_volume']}")
    return len(rows)


# ---- measured runs -----------------------------------------------------------------------------

def run_measured(mpirun: str, spec, P: int, report: str, memory=None, extra=()) -> tuple[dict, str]:
    """``mpirun -n P python -m parconv.run`` on `spec` (a catalogue layer at spec.batch, int8,
    numpy node kernel); returns (the parsed report, the command line)."""
    cmd = [mpirun, "-n", str(P), sys.executable, "-m", "parconv.run", "--layer",
           spec.name.split("@")[0], "--batch", str(spec.batch), "--node", "numpy", "--quiet",
           "--report", os.path.relpath(report, REPO), *(["--memory", str(memory)] if memory is not None else []),
           *extra]
    env = dict(os.environ, PYTHONPATH=REPO, **THREAD_ENV)
    if P > (os.cpu_count() or 1):  # hydra oversubscribes by itself; Open MPI must be told
        env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise StudyError(f"{' '.join(cmd)} failed with status {done.returncode}: {tail[0]}")
    with open(report, encoding="utf-8") as fh:
        return json.load(fh), " ".join(shlex.quote(a) for a in cmd)


def measured_row(report: dict, plan) -> dict:
    """The busiest rank's measured volume next to the planner's prediction made here, checked:
    every rank's measured bound volume and every phase's sent/received bytes must equal the
    prediction of ``plan`` (made in this process, independently of the run)."""
    volume = [int(v) for v in report["bytes"]["bound_volume"]]
    predicted = [int(v) for v in plan.predicted_bound_volume]
    name = f"{report['spec']['name']} P={report['ranks']}"
    if grid_text(report["grid"]) != grid_text(plan.dims.as_tuple()):
        raise StudyError(f"{name}: the run chose grid {grid_text(report['grid'])}, the planner "
                         f"here {plan.dims}")
    if volume != predicted:
        worst = max(range(len(volume)), key=lambda r: abs(volume[r] - predicted[r]))
        raise StudyError(f"{name}: measured bound volume differs from the prediction on rank "
                         f"{worst}: {volume[worst]} != {predicted[worst]}")
    phases = 0
    for phase, counts in (report["bytes"].get("per_phase") or {}).items():
        if phase not in plan.predicted:
            continue
        for key in ("sent", "received"):
            if [int(v) for v in counts[key]] != [int(v) for v in plan.predicted[phase][key]]:
                raise StudyError(f"{name}: measured {phase} {key} bytes differ from the "
                                 f"prediction")
        phases += 1
    busiest = max(range(len(volume)), key=volume.__getitem__)
    times = report.get("time_s") or {}
    return {"layer": report["spec"]["name"], "batch": report["spec"]["batch"],
            "P": report["ranks"], "grid": grid_text(report["grid"]), "busiest_rank": busiest,
            "measured_volume": volume[busiest], "predicted_volume": predicted[busiest],
            "bytes_match": True, "phases_checked": phases,
            "bound": report["bound"]["value"], "binding": report["bound"]["binding"],
            "ratio_to_bound": report.get("ratio_to_bound"),
            "wall_time_s": (report.get("run") or {}).get("wall_time_s"),
            **{f"t_{k}_s": v for k, v in times.items()}}


def collect_reports(out: str, folder: str) -> list[str]:
    """Gather the run reports of ``out/folder/reports`` with ``python -m launch.collect``."""
    target = os.path.join(out, folder)
    cmd = [sys.executable, "-m", "launch.collect", target, "--force",
           "--csv", os.path.join(target, "reports.csv"),
           "--json", os.path.join(target, "reports_table.json")]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=REPO))
    if done.returncode != 0:
        raise StudyError(f"launch.collect failed: {done.stderr.strip()}")
    return [os.path.join(folder, "reports.csv"), os.path.join(folder, "reports_table.json")]


# ---- plots --------------------------------------------------------------------------------------

STYLE = {"parconv": dict(color="tab:blue", lw=2.2, marker="o", ms=3, label="parconv grid",
                        zorder=3),
         "bound": dict(color="black", lw=1.2, ls="--", label="max(B_MI, B_MD)"),
         "batch": dict(color="tab:orange", lw=1.2, ls="-", marker="v", ms=3),
         "spatial": dict(color="tab:green", lw=1.2, ls="-", marker="s", ms=3),
         "input-channel": dict(color="tab:purple", lw=1.2, ls="-", marker="^", ms=3),
         "output-channel": dict(color="tab:red", lw=1.2, ls="-", marker="D", ms=3),
         "measured": dict(color="tab:blue", marker="o", ms=9, mfc="none", mew=1.5, ls="none",
                          label="measured (mpirun)", zorder=4)}


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 9, "axes.titlesize": 9, "legend.fontsize": 8})
    return plt


def log2_axis(ax, ranks) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ticks = [P for P in ranks if P in (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)]
    ax.set_xticks(ticks, [f"{P}" if P < 1024 else f"{P // 1024}K" for P in ticks])
    ax.grid(True, which="major", alpha=0.3)


def draw_volumes(ax, rows: list[dict], measured: list[dict] = ()) -> None:
    """parconv, the bound and every peer against P; a peer that cannot use all P ranks is
    continued as a dotted line (it runs on fewer ranks, the rest idle).  Zero volumes (P = 1)
    are not drawn on log axes."""
    for key, style in (("max_volume", STYLE["parconv"]), ("bound", STYLE["bound"])):
        xs = [(r["P"], r[key]) for r in rows if r.get(key)]
        if xs:
            ax.plot(*zip(*xs), **style)
    for family, label in PEERS.items():
        full = [(r["P"], r[f"{family}_volume"]) for r in rows
                if r.get(f"{family}_volume") and r[f"{family}_ranks"] == r["P"]]
        idle = [(r["P"], r[f"{family}_volume"]) for r in rows
                if r.get(f"{family}_volume") and r[f"{family}_ranks"] < r["P"]]
        style = dict(STYLE[family])
        if full:
            ax.plot(*zip(*full), label=label, **style)
        if idle:
            start = [full[-1]] if full and full[-1][0] < idle[0][0] else []
            style.update(ls=":", marker=None, alpha=0.8)
            ax.plot(*zip(*(start + idle)), label=None if full else label, **style)
    xs = [(m["P"], m["measured_volume"]) for m in measured if m["measured_volume"] > 0]
    if xs:
        ax.plot(*zip(*xs), **STYLE["measured"])


def figure_legend(fig, axes) -> None:
    """One legend for all panels, below them, with every label once."""
    handles, labels = {}, []
    for ax in axes:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in handles:
                handles[l] = h
                labels.append(l)
    fig.legend([handles[l] for l in labels], labels, loc="lower center",
               ncol=min(4, len(labels)), frameon=False)


def save(fig, path: str) -> str:
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return os.path.basename(path)


def progress(items, desc: str):
    from tqdm import tqdm
    return tqdm(items, desc=desc, file=sys.stderr, leave=False,
                disable=os.environ.get("PARCONV_NO_PROGRESS") == "1")


# ---- the README's generated sections ------------------------------------------------------------

README = os.path.join(HERE, "README.md")


def _stats(values: list[float]) -> str:
    if not values:
        return "-"
    values = sorted(values)
    return f"{values[0]:.2f} / {values[len(values) // 2]:.2f} / {values[-1]:.2f}"


def headline_summary(lines: list[dict], ranks=(64, 512, 4096)) -> str:
    """Min / median / max over all layers of both headline factors, per P."""
    text = ("| P | layers | best peer on all P ranks: min / median / max (layers where one "
            "exists) | best peer, idle ranks allowed: min / median / max |\n|---|---|---|---|\n")
    for P in ranks:
        same = [l[f"P{P}_factor"] for l in lines if l.get(f"P{P}_factor") is not None]
        idle = [l[f"P{P}_idle_factor"] for l in lines if l.get(f"P{P}_idle_factor") is not None]
        text += f"| {P} | {len(lines)} | {_stats(same)} ({len(same)}) | {_stats(idle)} |\n"
    return text


def human_bytes(v) -> str:
    if v is None:
        return "-"
    v = float(v)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if v < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} TiB"  # pragma: no cover


def provenance_line(meta: dict) -> str:
    return (f"Recorded at git revision `{(meta['git_revision'] or '?')[:12]}` on "
            f"`{meta['hostname']}` ({meta['cores']} cores, {meta['mpi_library']}), "
            f"{meta['started_utc']}.")


def update_readme(args, section: str, text: str) -> bool:
    """Replace the text between ``<!-- begin SECTION -->`` and ``<!-- end SECTION -->`` in
    experiments/README.md, only for a full run into the default folder (so the README always
    shows the recorded results).  Returns whether it did."""
    if args.quick or args.out or not os.path.exists(README):
        return False
    with open(README, encoding="utf-8") as fh:
        readme = fh.read()
    begin, end = f"<!-- begin {section} -->", f"<!-- end {section} -->"
    if begin not in readme or end not in readme:
        return False
    head, rest = readme.split(begin, 1)
    _, tail = rest.split(end, 1)
    write_text(README, f"{head}{begin}\n{text.rstrip()}\n{end}{tail}")
    return True
