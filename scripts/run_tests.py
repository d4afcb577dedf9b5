"""Run the serial suite and the MPI suite at several process counts; add the results up.

Usage: python scripts/run_tests.py [--mpirun PATH] [--sizes 1,2,3,4,6,8] [--timeout S] [--quick]
                                   [--openmpi-python PY] [--openmpi-sizes 2,3]
(called by test.sh).  Exits non-zero if any run fails, collects nothing, or times out; the last
line reads ``total: N passed, N failed, N skipped in S s`` (S: the wall time of all runs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def junit_counts(path: str) -> dict[str, int]:
    """passed / failed / skipped from a pytest JUnit XML file (all zero if missing)."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    if not os.path.exists(path):
        return counts
    root = ET.parse(path).getroot()
    for suite in root.iter("testsuite"):
        tests, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
        failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        counts["passed"] += tests - skipped - failed
        counts["failed"] += failed
        counts["skipped"] += skipped
    return counts


def run(label: str, cmd: list[str], xml: str, timeout: float,
        env: dict[str, str] | None = None) -> dict[str, int]:
    shown = " ".join(f"{k}={v}" for k, v in (env or {}).items())
    print(f"\n=== {label}: {shown + ' ' if shown else ''}{' '.join(cmd)}", flush=True)
    started = time.time()
    try:
        code = subprocess.run(cmd, cwd=REPO, timeout=timeout,
                              env={**os.environ, **(env or {})}).returncode
    except subprocess.TimeoutExpired:
        print(f"=== {label}: TIMED OUT after {timeout:.0f} s", flush=True)
        code = -1
    counts = junit_counts(xml)
    if code != 0 and counts["failed"] == 0:
        counts["failed"] = 1   # a crash, a hang or nothing collected counts as a failure
    print(f"=== {label}: exit {code}, {counts['passed']} passed, {counts['failed']} failed, "
          f"{counts['skipped']} skipped in {time.time() - started:.0f} s", flush=True)
    return counts


def blas_threads(n: int) -> dict[str, str]:
    """BLAS threads per rank for ``n`` ranks on this machine: cores // n, at least 1 (n ranks of
    all-core pools oversubscribe the cores and their spinning threads slow every collective).
    An OMP_NUM_THREADS already set is kept."""
    if "OMP_NUM_THREADS" in os.environ:
        return {}
    threads = str(max(1, (os.cpu_count() or 1) // n))
    return {k: threads for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def mpi_runs(label: str, launcher: list[str], python: str, sizes: str, tmp: str) -> list:
    """(label, command, JUnit file, environment) of the MPI suite at each process count in
    ``sizes``."""
    runs = []
    for n in [int(v) for v in sizes.split(",") if v]:
        xml = os.path.join(tmp, f"{label}{n}.xml")
        runs.append((f"{label} n={n}", [*launcher, "-n", str(n), python, "-m", "mpi4py",
                                         "scripts/mpi_pytest.py", xml, "-q", "tests/mpi"], xml,
                     blas_threads(n)))
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mpirun", default=shutil.which("mpirun") or "mpirun")
    parser.add_argument("--sizes", default="1,2,3,4,6,8",
                        help="process counts of the MPI suite (default 1,2,3,4,6,8)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run")
    parser.add_argument("--quick", action="store_true",
                        help="serial tests not marked slow, MPI suite at 1 and 3 processes")
    parser.add_argument("--openmpi-python", metavar="PY",
                        help="an interpreter whose mpi4py uses Open MPI (its mpirun beside it): "
                             "run the MPI suite there too")
    parser.add_argument("--openmpi-sizes", default="2,3",
                        help="process counts of the Open MPI runs (default 2,3)")
    args = parser.parse_args()
    if args.quick:
        args.sizes = "1,3"
    env_py = sys.executable
    total = {"passed": 0, "failed": 0, "skipped": 0}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="parconv-tests-") as tmp:
        serial = [env_py, "-m", "pytest", "-q", "tests", "--ignore=tests/mpi",
                  "--junitxml", os.path.join(tmp, "serial.xml")]
        if args.quick:
            serial += ["-m", "not slow"]
        runs = [("serial", serial, os.path.join(tmp, "serial.xml"), None)]
        runs += mpi_runs("mpi", [args.mpirun], env_py, args.sizes, tmp)
        if args.openmpi_python:
            ompi = os.path.join(os.path.dirname(args.openmpi_python), "mpirun")
            flags = ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
            runs += mpi_runs("openmpi", [ompi, *flags], args.openmpi_python,
                             args.openmpi_sizes, tmp)
        for label, cmd, xml, env in runs:
            for key, value in run(label, cmd, xml, args.timeout, env).items():
                total[key] += value
    print(f"total: {total['passed']} passed, {total['failed']} failed, "
          f"{total['skipped']} skipped in {time.time() - started:.0f} s")
    return 1 if total["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
