"""Run the serial suite and the MPI suite at several process counts; add the results up.

Usage: python scripts/run_tests.py [--mpirun PATH] [--sizes 1,2,3,4,6,8] [--timeout S]
(called by test.sh).  Exits non-zero if any run fails, collects nothing, or times out; the last
line reads ``total: N passed, N failed, N skipped``.
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


def run(label: str, cmd: list[str], xml: str, timeout: float) -> dict[str, int]:
    print(f"\n=== {label}: {' '.join(cmd)}", flush=True)
    started = time.time()
    try:
        code = subprocess.run(cmd, cwd=REPO, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        print(f"=== {label}: TIMED OUT after {timeout:.0f} s", flush=True)
        code = -1
    counts = junit_counts(xml)
    if code != 0 and counts["failed"] == 0:
        counts["failed"] = 1   # a crash, a hang or nothing collected counts as a failure
    print(f"=== {label}: exit {code}, {counts['passed']} passed, {counts['failed']} failed, "
          f"{counts['skipped']} skipped in {time.time() - started:.0f} s", flush=True)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mpirun", default=shutil.which("mpirun") or "mpirun")
    parser.add_argument("--sizes", default="1,2,3,4,6,8",
                        help="process counts of the MPI suite (default 1,2,3,4,6,8)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run")
    args = parser.parse_args()
    env_py = sys.executable
    total = {"passed": 0, "failed": 0, "skipped": 0}
    with tempfile.TemporaryDirectory(prefix="parconv-tests-") as tmp:
        runs = [("serial", [env_py, "-m", "pytest", "-q", "tests", "--ignore=tests/mpi",
                            "--junitxml", os.path.join(tmp, "serial.xml")],
                 os.path.join(tmp, "serial.xml"))]
        for n in [int(s) for s in args.sizes.split(",") if s]:
            xml = os.path.join(tmp, f"mpi{n}.xml")
            runs.append((f"mpi n={n}", [args.mpirun, "-n", str(n), env_py, "-m", "mpi4py",
                                        "scripts/mpi_pytest.py", xml, "-q", "tests/mpi"], xml))
        for label, cmd, xml in runs:
            for key, value in run(label, cmd, xml, args.timeout).items():
                total[key] += value
    print(f"total: {total['passed']} passed, {total['failed']} failed, "
          f"{total['skipped']} skipped")
    return 1 if total["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
