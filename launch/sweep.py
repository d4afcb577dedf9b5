# Run: python -m launch.sweep --layers resnet50.layer3 --ranks 1-64:x2 --format sbatch --ntasks-per-node 32 --time 00:20:00 --out sweep/r50-layer3
"""Write the scripts of a sweep of parconv runs over layers and P (nothing is run here).

For every (layer, P), one run of ``python -m parconv.run`` writes its JSON report to
``OUT/reports/<layer>-P<P>.json`` and its output to ``OUT/logs/``.  ``--format commands``
writes ``OUT/run_all.sh`` (every run in turn through ``launch/mpirun.sh``, with progress);
``--format sbatch`` writes one Slurm batch script per run, ``OUT/<layer>-P<P>.sbatch``, and
``OUT/submit_all.sh`` (``--wait`` to wait for every job and see each one end).  Each batch
script fixes the python, the launcher and the repository, then runs ``launch/slurm.sbatch``,
whose first output lines name the python, the MPI library and the launcher.  Every generated
script starts with the exact command that runs or submits it.  ``OUT/sweep.json`` lists the
runs; ``python -m launch.collect OUT`` gathers the reports into one table.

Python (default): $PARCONV_PYTHON, else the repository's .venv/bin/python (made by run.sh or
test.sh), else python3 on PATH; it must import mpi4py.  Launcher (sbatch): ``srun --mpi=pmi2``
by default (MPICH, also the mpich wheel; ``--srun-mpi pmix`` for Open MPI with PMIx), or
``--launcher mpirun`` (the MPI's own mpirun inside the allocation).  An existing, non-empty OUT
is refused unless ``--force``, which replaces the previous sweep's scripts, reports and logs.
Bad options are refused before anything is written (exit status 2, one line).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from parconv.layers import layer_names  # noqa: E402  (needs the repository on sys.path)

from launch.scripts import commands_text, quote, sbatch_text, submit_text  # noqa: E402

MANIFEST = "sweep.json"
_TIME = re.compile(r"(\d+(:\d\d?){0,2}|\d+-\d\d?(:\d\d?){0,2}|UNLIMITED|INFINITE)")
_NAME = re.compile(r"[A-Za-z0-9_.,+-]+")
#: parconv.run options the sweep sets itself
_OWN_OPTIONS = ("--layer", "--batch", "--report", "--node", "--dtype", "--memory")


class SweepError(Exception):
    """A refused option; the message is one line."""


def parse_ranks(text: str) -> list[int]:
    """``"1,2,4"`` or ``"1-64:x2"`` (doubling; ``:x4`` quadruples) -> sorted distinct P."""
    ranks: set[int] = set()
    try:
        for part in (p.strip() for p in text.split(",")):
            if "-" in part:
                span, _, factor = part.partition(":x")
                lo, hi = (int(v) for v in span.split("-"))
                step = int(factor or 2)
                if lo < 1 or step < 2 or hi < lo:
                    raise ValueError
                value = lo
                while value <= hi:
                    ranks.add(value)
                    value *= step
            elif part:
                ranks.add(int(part))
    except ValueError:
        raise SweepError(f"--ranks: cannot read {text!r} (give '1,2,4' or '1-64:x2')") from None
    if not ranks or min(ranks) < 1:
        raise SweepError(f"--ranks must list positive integers, got {text!r}")
    return sorted(ranks)


def select_layers(patterns: list[str]) -> list[str]:
    """Catalogue names matching each prefix, in catalogue order, without repeats."""
    chosen: list[str] = []
    for pattern in patterns:
        names = layer_names(pattern)
        if not names:
            raise SweepError(f"--layers: no catalogue layer starts with {pattern!r} "
                             f"(see python -m parconv.plan --list-layers)")
        chosen += [n for n in names if n not in chosen]
    return chosen


def resolve_python(explicit: str | None) -> tuple[str, str]:
    """(interpreter, where it came from): --python, $PARCONV_PYTHON, .venv, python3."""
    venv = os.path.join(REPO, ".venv", "bin", "python")
    if explicit:
        python, source = explicit, "--python"
    elif os.environ.get("PARCONV_PYTHON"):
        python, source = os.environ["PARCONV_PYTHON"], "PARCONV_PYTHON"
    elif os.access(venv, os.X_OK):
        python, source = venv, "the repository's .venv"
    else:
        python, source = shutil.which("python3") or "python3", "python3 on PATH"
    python = shutil.which(python) or python
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise SweepError(f"python {python!r} ({source}) is not an executable file")
    # keep a venv's own path (not realpath): the venv is what makes its packages importable
    python = os.path.abspath(python)
    probe = subprocess.run([python, "-c", "import mpi4py, numpy"], capture_output=True,
                           text=True, timeout=120)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        raise SweepError(f"python {python} ({source}) cannot import mpi4py and numpy: {last}")
    return python, source


def check_options(args, ranks: list[int]) -> None:
    """Refuse inconsistent or malformed options (SweepError)."""
    if args.batch < 1:
        raise SweepError(f"--batch must be >= 1, got {args.batch}")
    slurm_only = {"--nodes": args.nodes, "--ntasks-per-node": args.ntasks_per_node,
                  "--partition": args.partition, "--account": args.account,
                  "--time": args.time, "--launcher": args.launcher, "--srun-mpi": args.srun_mpi,
                  "--cpus-per-task": args.cpus_per_task, "--sbatch": args.sbatch or None}
    if args.format == "commands":
        given = [flag for flag, value in slurm_only.items() if value is not None]
        if given:
            raise SweepError(f"{', '.join(given)}: Slurm option(s) need --format sbatch")
        return
    if args.time is not None and not _TIME.fullmatch(args.time):
        raise SweepError(f"--time {args.time!r}: give minutes, MM:SS, HH:MM:SS or D-HH:MM:SS")
    for flag, value in (("--partition", args.partition), ("--account", args.account)):
        if value is not None and not _NAME.fullmatch(value):
            raise SweepError(f"{flag} {value!r}: not a Slurm name")
    if args.srun_mpi is not None and not re.fullmatch(r"[A-Za-z0-9_]+", args.srun_mpi):
        raise SweepError(f"--srun-mpi {args.srun_mpi!r}: not a plugin name (see srun --mpi=list)")
    if args.srun_mpi is not None and args.launcher == "mpirun":
        raise SweepError("--srun-mpi applies to --launcher srun only")
    for flag, value in (("--nodes", args.nodes), ("--ntasks-per-node", args.ntasks_per_node),
                        ("--cpus-per-task", args.cpus_per_task)):
        if value is not None and value < 1:
            raise SweepError(f"{flag} must be >= 1, got {value}")
    if args.nodes is not None and args.nodes > ranks[0]:
        raise SweepError(f"--nodes {args.nodes} is more than the smallest P ({ranks[0]})")
    if args.nodes and args.ntasks_per_node and args.nodes * args.ntasks_per_node < ranks[-1]:
        raise SweepError(f"--nodes {args.nodes} x --ntasks-per-node {args.ntasks_per_node} "
                         f"cannot hold P = {ranks[-1]}")
    for option in args.sbatch:
        if not option.startswith("--") or any(c in option for c in "\n\r"):
            raise SweepError(f"--sbatch {option!r}: give one sbatch option such as --qos=debug")


def check_extra(extra: str) -> list[str]:
    try:
        words = shlex.split(extra)
    except ValueError as error:
        raise SweepError(f"--extra {extra!r}: {error}") from None
    clash = [w for w in words if w.split("=")[0] in _OWN_OPTIONS]
    if clash:
        raise SweepError(f"--extra: {', '.join(clash)} is set by the sweep itself")
    return words


def check_out(out: str, force: bool) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise SweepError(f"--out {out} is a file")
    if os.path.isdir(out) and os.listdir(out) and not force:
        raise SweepError(f"--out {out} exists and is not empty; pass --force to replace the "
                         f"sweep there, or choose a new folder")


def clear_previous(out: str) -> int:
    """--force: remove the previous sweep's generated files, reports, logs and tables."""
    doomed = set(glob.glob(os.path.join(out, "reports", "*.json")))
    doomed |= set(glob.glob(os.path.join(out, "logs", "*")))
    doomed |= {os.path.join(out, name) for name in (MANIFEST, "results.csv", "results.json",
                                                    "jobs.txt")}
    try:
        with open(os.path.join(out, MANIFEST), encoding="utf-8") as handle:
            doomed |= {os.path.join(out, f) for f in json.load(handle).get("files", [])}
    except (OSError, ValueError, AttributeError):
        pass
    removed = 0
    for path in doomed:
        if os.path.isfile(path):
            os.remove(path)
            removed += 1
    return removed


def _write_script(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


# ---- the command line -------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        self.exit(2, f"launch.sweep: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    head, _, rest = __doc__.partition("\n\n")
    parser = _Parser(prog="python -m launch.sweep", description=head, epilog=rest,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    runs = parser.add_argument_group("the runs")
    runs.add_argument("--layers", nargs="+", default=["resnet50.layer3.0.conv2"],
                      metavar="NAME", help="catalogue names or prefixes (resnet50.layer3 = all "
                      "of stage 3; default resnet50.layer3.0.conv2)")
    runs.add_argument("--ranks", default="1-64:x2",
                      help="P values: '1,2,4' or doubling range '1-64:x2' (default)")
    runs.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    runs.add_argument("--node", default="gemmini", choices=("gemmini", "numpy"))
    runs.add_argument("--dtype", default="int8", choices=("int8", "float32", "float64"))
    runs.add_argument("--memory", help="--memory of every run (default: parconv.run's)")
    runs.add_argument("--extra", default="", help="more parconv.run options, one string")
    runs.add_argument("--python", help="interpreter with mpi4py (default: $PARCONV_PYTHON, "
                      "else the repository's .venv, else python3)")
    runs.add_argument("--mpirun", help="mpirun to use (commands, or --launcher mpirun; default "
                      "the one next to the python, else PATH's)")
    parser.add_argument("--format", choices=("commands", "sbatch"), default="commands",
                        help="commands: OUT/run_all.sh here; sbatch: one Slurm job per run")
    parser.add_argument("--out", default="sweep", help="folder of the sweep (default sweep)")
    parser.add_argument("--force", action="store_true",
                        help="replace the sweep (scripts, reports, logs) already in OUT")
    slurm = parser.add_argument_group("Slurm (--format sbatch)")
    slurm.add_argument("--nodes", type=int, help="nodes per job (default: from "
                       "--ntasks-per-node, else Slurm's choice)")
    slurm.add_argument("--ntasks-per-node", type=int, help="ranks per node; nodes = "
                       "ceil(P / this)")
    slurm.add_argument("--cpus-per-task", type=int, help="CPUs (= BLAS threads) per rank "
                       "(default 1)")
    slurm.add_argument("--time", help="time limit per job (default 00:20:00)")
    slurm.add_argument("--partition", help="partition (default: the cluster's)")
    slurm.add_argument("--account", help="account to charge")
    slurm.add_argument("--launcher", choices=("srun", "mpirun"),
                       help="srun (default) or the MPI's mpirun inside the allocation")
    slurm.add_argument("--srun-mpi", help="srun --mpi plugin (default pmi2: MPICH and the "
                       "mpich wheel; pmix for Open MPI)")
    slurm.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                       help="one more sbatch option, e.g. --sbatch=--qos=debug (repeatable)")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        ranks = parse_ranks(args.ranks)
        layers = select_layers(args.layers)
        check_options(args, ranks)
        args.extra_words = check_extra(args.extra)
        if args.mpirun and not os.access(args.mpirun, os.X_OK):
            raise SweepError(f"--mpirun {args.mpirun} is not executable")
        out = os.path.abspath(args.out)
        check_out(out, args.force)
        python, source = resolve_python(args.python)
    except SweepError as error:
        print(f"launch.sweep: {error}", file=sys.stderr)
        return 2
    removed = clear_previous(out) if os.path.isdir(out) else 0
    os.makedirs(os.path.join(out, "reports"), exist_ok=True)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    generated_by = (f"cd {shlex.quote(os.getcwd())} && "
                    f"{quote([sys.executable, os.path.join(REPO, 'launch', 'sweep.py')] + argv)}")
    jobs = []
    for layer in layers:
        for p in ranks:
            stem = f"{layer}-P{p}"
            jobs.append({"layer": layer, "P": p, "stem": stem,
                         "report": os.path.join("reports", f"{stem}.json"),
                         "log": os.path.join("logs", f"{stem}.out"),
                         "script": f"{stem}.sbatch" if args.format == "sbatch" else None})
    if args.format == "sbatch":
        for job in jobs:
            job["log"] = os.path.join("logs", f"{job['stem']}-%j.out")
            _write_script(os.path.join(out, job["script"]),
                          sbatch_text(job, args, python, source, out, generated_by))
        _write_script(os.path.join(out, "submit_all.sh"), submit_text(jobs, out))
        files = [j["script"] for j in jobs] + ["submit_all.sh"]
        run = f"bash {shlex.quote(os.path.join(out, 'submit_all.sh'))} [--wait]"
    else:
        _write_script(os.path.join(out, "run_all.sh"),
                      commands_text(jobs, args, python, out, generated_by))
        files, run = ["run_all.sh"], f"bash {shlex.quote(os.path.join(out, 'run_all.sh'))}"
    manifest = {"generated_by": generated_by, "format": args.format, "python": python,
                "python_from": source, "launcher": args.launcher or "srun",
                "files": files, "jobs": [{k: j[k] for k in ("layer", "P", "report", "script")}
                                         for j in jobs]}
    with open(os.path.join(out, MANIFEST), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1)
        handle.write("\n")
    print(f"launch.sweep: {len(jobs)} runs ({len(layers)} layer(s) x P in {ranks}) in {out}"
          + (f" (replaced {removed} files of the previous sweep)" if removed else "")
          + f"; python {python} ({source}); run: {run}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
