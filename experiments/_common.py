"""Shared helpers of the scaling studies (strong_scaling, weak_scaling, im2col_matmul,
memory_regime): provenance, result folders that are never overwritten silently, tables, and
mpirun runs checked against the planner.  The peers are in _peers, plots in _plots, the
headline tables and the README's generated sections in _report.

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

#: the P of the predicted sweeps: every power of 2 from 1 to 65536
PREDICTED_RANKS = [2 ** i for i in range(17)]
#: the P measured with mpirun (oversubscribed on this machine)
MEASURED_RANKS = [1, 2, 4, 8, 16, 32, 64]
#: peer decompositions (the keys of Plan.baselines) and how the tables and plots name them
PEERS = {"batch": "batch only (data parallel)", "spatial": "spatial only (DTensor / VAE)",
         "input-channel": "input-channel only", "output-channel": "output-channel (filter) only"}
#: a small representative set: stem, 3x3 at every stage, 1x1 and strided projections, VGG
REPRESENTATIVE = ["resnet50.conv1", "resnet50.layer1.0.conv2",
                  "resnet50.layer2.0.downsample.0", "resnet50.layer3.0.conv2",
                  "resnet50.layer4.0.conv2", "vgg16.conv1_2", "vgg16.conv3_1", "vgg16.conv5_1"]
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


def add_replot(p: argparse.ArgumentParser) -> None:
    p.add_argument("--replot", action="store_true",
                   help="redraw the plots and regenerate the headline and README section from "
                        "the results recorded in the folder (no planning, no runs)")


def recorded(args, study: str, names) -> tuple[str, dict, dict]:
    """(folder, its manifest, {name: the recorded name.json or None}) for --replot."""
    out = args.out or os.path.join(RESULTS, "quick" if args.quick else "", study)
    path = os.path.join(out, "manifest.json")
    if not os.path.exists(path):
        raise StudyError(f"--replot: {out} holds no recorded result ({path} is missing)")
    with open(path, encoding="utf-8") as fh:
        meta = json.load(fh)
    tables = {}
    for name in names:
        table = os.path.join(out, f"{name}.json")
        if os.path.exists(table):
            with open(table, encoding="utf-8") as fh:
                tables[name] = json.load(fh)
        else:
            tables[name] = None
    return out, meta, tables


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
    # edits to the code count; the studies' own outputs (results, README sections) do not
    status = _output(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                      ":!experiments/README.md", ":!experiments/results"])
    return {"command": " ".join(shlex.quote(a) for a in [sys.executable, *argv]),
            "git_revision": _output(["git", "rev-parse", "HEAD"]),
            "git_dirty_code": bool(status) if status is not None else None,
            "hostname": socket.gethostname(), "cores": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(),
            "mpi_library": " ".join(mpi.splitlines()[0].split()) if mpi else None, "mpirun": mpirun,
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_manifest(out: str, meta: dict, runs: list[str], checks: dict,
                   files: list[str]) -> None:
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


# ---- measured runs -----------------------------------------------------------------------------

def run_measured(mpirun: str, spec, P: int, report: str, memory=None,
                 extra=()) -> tuple[dict, str]:
    """``mpirun -n P python -m parconv.run`` on `spec` (a catalogue layer at spec.batch, int8,
    numpy node kernel); returns (the parsed report, the command line)."""
    cmd = [mpirun, "-n", str(P), sys.executable, "-m", "parconv.run", "--layer",
           spec.name.split("@")[0], "--batch", str(spec.batch), "--node", "numpy", "--quiet",
           "--report", os.path.relpath(report, REPO),
           *(["--memory", str(memory)] if memory is not None else []), *extra]
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


def fresh_reports(out: str, folder: str) -> str:
    """An empty ``out/folder/reports`` for this run's reports.  The reports of an earlier run
    are moved, not deleted, to ``out/folder/superseded/<UTC time>/`` (outside what
    `collect_reports` reads), so the table gathers exactly this run's reports: stale ones of
    shapes or memories the study no longer runs, or of another revision, would make
    launch.collect refuse the mixed revisions."""
    reports = os.path.join(out, folder, "reports")
    old = [f for f in os.listdir(reports)] if os.path.isdir(reports) else []
    if old:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = os.path.join(out, folder, "superseded", stamp)
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        os.replace(reports, aside)
        print(f"moved the {len(old)} files of an earlier run's reports to "
              f"{os.path.relpath(aside, REPO)}", file=sys.stderr)
    os.makedirs(reports, exist_ok=True)
    return reports


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


def progress(items, desc: str):
    from tqdm import tqdm
    return tqdm(items, desc=desc, file=sys.stderr, leave=False,
                disable=os.environ.get("PARCONV_NO_PROGRESS") == "1")
