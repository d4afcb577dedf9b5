# Run: python -m launch.collect sweep/r50-layer3
"""Gather every run report of a sweep into one CSV and one JSON table.

Reads ``RESULTS_DIR/reports/*.json`` (or ``RESULTS_DIR/*.json`` when there is no ``reports``
folder) and, when ``RESULTS_DIR/sweep.json`` (written by ``launch.sweep``) lists the runs of the
sweep, names every run whose report is missing.  One row per report: layer, batch, P, grid, the
busiest rank's volume (max of ``bytes.bound_volume``), the bound, the binding term, the ratio to
the bound, the time of each phase (``time_s``), the peak memory (largest rank's
``memory.peak_rss_bytes``, empty when the report has none) and the git revision.  Reports
from different git revisions are refused unless ``--allow-mixed-revisions``.  Both tables
are written atomically (temporary file + rename) and never replace an existing file unless
``--force``.

Exit status: 0 written; 2 refused (missing or malformed reports, mixed revisions, outputs exist,
bad options), with a message naming the problem.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys

#: the fixed columns, in order; ``time_<phase>_s`` columns follow ``ratio_to_bound``
HEAD_COLUMNS = ("layer", "batch", "P", "grid", "node", "dtype", "memory", "busiest_volume",
                "predicted_busiest_volume", "bound_value", "binding", "B_MI", "B_MD",
                "ratio_to_bound")
TAIL_COLUMNS = ("wall_time_s", "peak_memory_bytes", "git_revision", "report")
#: where a report may hold per-rank peak memory, as (section or None, key): a number or a
#: per-rank list (the column is its maximum); the first present is used, none leaves it empty
PEAK_MEMORY_KEYS = (("memory", "peak_rss_bytes"), (None, "peak_rss_bytes"),
                    (None, "peak_memory_bytes"))
MANIFEST = "sweep.json"


class CollectError(Exception):
    """A refusal: the message is one line naming the problem (exit status 2)."""


# ---- reading ----------------------------------------------------------------------------------

def report_folder(results_dir: str) -> str:
    """The folder holding the reports: ``RESULTS_DIR/reports`` if it exists, else RESULTS_DIR."""
    if not os.path.isdir(results_dir):
        raise CollectError(f"{results_dir}: no such folder")
    reports = os.path.join(results_dir, "reports")
    return reports if os.path.isdir(reports) else results_dir


def expected_reports(results_dir: str) -> list[str] | None:
    """Report paths (relative to RESULTS_DIR) that the sweep manifest lists, or None."""
    path = os.path.join(results_dir, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            jobs = json.load(handle)["jobs"]
        return [str(job["report"]) for job in jobs]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CollectError(f"{path}: not a sweep manifest ({error})") from None


def _peak_memory(report: dict):
    for section, key in PEAK_MEMORY_KEYS:
        holder = report.get(section) if section else report
        value = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(value, list):
            value = max((v for v in value if v is not None), default=None)
        if isinstance(value, (int, float)):
            return value
    return None


def _memory_limit(report: dict):
    """The per-rank --memory of the run: ``memory_limit``, else ``memory`` when a number (older
    reports), else ``bound.M``."""
    for memory in (report.get("memory_limit"), report.get("memory")):
        if isinstance(memory, (int, float)):
            return memory
    return (report.get("bound") or {}).get("M")


def _number(value):
    """Numbers pass; the strings to_jsonable writes for infinities become floats."""
    if isinstance(value, str) and value in ("inf", "-inf"):
        return float(value)
    return value


def row_of(report: dict, name: str) -> dict:
    """One table row from one parsed report; KeyError/TypeError/ValueError if it is malformed."""
    spec, grid, volumes = report["spec"], report["grid"], report["bytes"]["bound_volume"]
    bound = report["bound"]
    if not volumes:
        raise ValueError("bytes.bound_volume is empty")
    predicted = report["bytes"].get("predicted_bound_volume")
    row = {
        "layer": spec.get("name") or os.path.splitext(os.path.basename(name))[0],
        "batch": int(spec["batch"]),
        "P": int(report["ranks"]),
        "grid": "x".join(str(int(grid[axis])) for axis in "NKCHW"),
        "node": (report.get("run") or {}).get("node") or (report.get("node") or {}).get("kernel"),
        "dtype": spec.get("dtype_in"),
        "memory": _memory_limit(report),
        "busiest_volume": max(int(v) for v in volumes),
        "predicted_busiest_volume": max(int(v) for v in predicted) if predicted else None,
        "bound_value": _number(bound["value"]),
        "binding": bound["binding"],
        "B_MI": _number(bound.get("B_MI")),
        "B_MD": _number(bound.get("B_MD")),
        "ratio_to_bound": _number(report.get("ratio_to_bound")),
        "wall_time_s": (report.get("run") or {}).get("wall_time_s"),
        "peak_memory_bytes": _peak_memory(report),
        "git_revision": report.get("git_revision"),
        "report": name,
    }
    for phase, seconds in (report.get("time_s") or {}).items():
        row[f"time_{phase}_s"] = seconds
    return row


def read_reports(results_dir: str, exclude=()) -> tuple[list[dict], list[str], list[str]]:
    """(rows, missing, malformed): rows of the readable reports; names of the others.

    Files in `exclude` (e.g. the JSON table itself) and the manifest are not reports.
    """
    folder = report_folder(results_dir)
    skip = {os.path.abspath(p) for p in exclude} | {os.path.abspath(
        os.path.join(results_dir, MANIFEST))}
    found = sorted(os.path.relpath(os.path.join(folder, f), results_dir)
                   for f in os.listdir(folder) if f.endswith(".json") and not f.startswith(".")
                   and os.path.abspath(os.path.join(folder, f)) not in skip)
    expected = expected_reports(results_dir)
    names = list(expected) if expected is not None else []
    names += [f for f in found if os.path.normpath(f) not in map(os.path.normpath, names)]
    rows, missing, malformed = [], [], []
    for name in names:
        path = os.path.join(results_dir, name)
        if not os.path.exists(path):
            missing.append(name)
            continue
        try:
            with open(path, encoding="utf-8") as handle:
                report = json.load(handle)
            if not isinstance(report, dict):
                raise ValueError("not a JSON object")
            rows.append(row_of(report, name))
        except (OSError, ValueError, KeyError, TypeError) as error:
            what = f"no key {error}" if isinstance(error, KeyError) else str(error).splitlines()[0]
            malformed.append(f"{name} ({what})")
    return rows, missing, malformed


def check_revisions(rows: list[dict]) -> None:
    """Refuse rows from more than one git revision (a missing revision counts as one)."""
    counts: dict = {}
    for row in rows:
        counts[row["git_revision"]] = counts.get(row["git_revision"], 0) + 1
    if len(counts) > 1:
        parts = ", ".join(f"{rev[:12] if rev else 'unknown'} ({n} report{'s' * (n > 1)})"
                          for rev, n in counts.items())
        raise CollectError(f"reports come from {len(counts)} git revisions: {parts}; "
                           f"pass --allow-mixed-revisions to gather them anyway")


# ---- writing ----------------------------------------------------------------------------------

def columns_of(rows: list[dict]) -> list[str]:
    """Fixed head columns, then every ``time_*`` column in first-seen order, then the tail."""
    times: list[str] = []
    for row in rows:
        times += [k for k in row if k.startswith("time_") and k not in times]
    return list(HEAD_COLUMNS) + times + list(TAIL_COLUMNS)


def csv_text(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row[c] for c in columns})
    return buffer.getvalue()


def json_text(rows: list[dict], columns: list[str], results_dir: str) -> str:
    table = {"source": os.path.abspath(results_dir), "columns": columns,
             "rows": [{c: row.get(c) for c in columns} for row in rows]}
    return json.dumps(table, indent=1) + "\n"


def write_atomically(path: str, text: str, force: bool) -> None:
    """Write `text` to a temporary file beside `path`, then move it into place.

    Without `force` an existing `path` is never replaced, not even by a concurrent writer:
    the temporary file is hard-linked to `path`, which fails if `path` exists.
    """
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        if force:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise CollectError(f"{path} exists; pass --force to replace it") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def sort_key(row: dict):
    return (row["layer"], row["batch"], row["P"], row["report"])


def collect(results_dir: str, csv_path: str, json_path: str, force: bool = False,
            allow_mixed_revisions: bool = False, allow_incomplete: bool = False) -> list[dict]:
    """Read, check and write; return the rows.  Raises CollectError on a refusal."""
    rows, missing, malformed = read_reports(results_dir, exclude=(json_path,))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {', '.join(missing)}")
    if malformed:
        problems.append(f"{len(malformed)} malformed: {', '.join(malformed)}")
    if problems and not allow_incomplete:
        raise CollectError(f"{results_dir}: reports {'; '.join(problems)} "
                           f"(pass --allow-incomplete to gather the others)")
    if problems:
        print(f"collect: skipping reports {'; '.join(problems)}", file=sys.stderr)
    if not rows:
        raise CollectError(f"{results_dir}: no report to gather")
    if not allow_mixed_revisions:
        check_revisions(rows)
    if not force:
        for path in (csv_path, json_path):
            if os.path.exists(path):
                raise CollectError(f"{path} exists; pass --force to replace it")
    rows.sort(key=sort_key)
    columns = columns_of(rows)
    write_atomically(csv_path, csv_text(rows, columns), force)
    write_atomically(json_path, json_text(rows, columns, results_dir), force)
    return rows


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        self.exit(2, f"launch.collect: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m launch.collect", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dir", metavar="RESULTS_DIR",
                        help="the sweep's folder (launch.sweep --out), or a folder of reports")
    parser.add_argument("--csv", help="CSV table to write (default RESULTS_DIR/results.csv)")
    parser.add_argument("--json", help="JSON table to write (default RESULTS_DIR/results.json)")
    parser.add_argument("--force", action="store_true", help="replace existing tables")
    parser.add_argument("--allow-mixed-revisions", action="store_true",
                        help="gather reports from different git revisions")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="gather the readable reports even if some are missing or malformed")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    csv_path = args.csv or os.path.join(args.results_dir, "results.csv")
    json_path = args.json or os.path.join(args.results_dir, "results.json")
    try:
        rows = collect(args.results_dir, csv_path, json_path, force=args.force,
                       allow_mixed_revisions=args.allow_mixed_revisions,
                       allow_incomplete=args.allow_incomplete)
    except CollectError as error:
        print(f"launch.collect: {error}", file=sys.stderr)
        return 2
    revisions = sorted({str(r["git_revision"])[:12] for r in rows})
    print(f"collect: {len(rows)} reports -> {csv_path}, {json_path} "
          f"(git revision {', '.join(revisions)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
