"""launch.collect: a sweep's reports into one table; refusals; the git revision of a report."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import pytest

from launch import collect
from parconv.provenance import git_revision

pytestmark = pytest.mark.mpi_skip

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fake_report(layer="resnet50.layer1.0.conv1", ranks=2, volumes=(10, 30), revision="a" * 40,
                **extra) -> dict:
    """The keys of a parconv.run report that collect reads, with distinct values per run."""
    report = {
        "spec": {"name": layer, "batch": 1, "dtype_in": "int8"},
        "ranks": ranks, "memory": 1 << 30,
        "grid": {"N": 1, "K": 1, "C": 1, "H": 1, "W": ranks},
        "bytes": {"bound_volume": list(volumes), "predicted_bound_volume": list(volumes)},
        "bound": {"B_MI": 20.5, "B_MD": 0.0, "binding": "memory-independent", "value": 20.5,
                  "M": float(1 << 30)},
        "ratio_to_bound": max(volumes) / 20.5,
        "node": {"kernel": "numpy"},
        "time_s": {"plan": 0.001, "kernel": 0.25 * ranks},
        "run": {"node": "numpy", "wall_time_s": 1.5},
        "git_revision": revision,
    }
    report.update(extra)
    return report


def write_sweep(folder, reports: dict, manifest=None) -> None:
    os.makedirs(folder / "reports", exist_ok=True)
    for name, report in reports.items():
        (folder / "reports" / name).write_text(
            report if isinstance(report, str) else json.dumps(report))
    if manifest is not None:
        (folder / "sweep.json").write_text(json.dumps(
            {"jobs": [{"report": f"reports/{name}"} for name in manifest]}))


def run_collect(folder, *options) -> int:
    return collect.main([str(folder), *options])


def test_table_matches_the_reports(tmp_path):
    reports = {"a-P1.json": fake_report(ranks=1, volumes=(0,)),
               "a-P2.json": fake_report(ranks=2, volumes=(10, 30)),
               "b-P4.json": fake_report(layer="vgg16.features.0", ranks=4, volumes=(5, 7, 40, 1),
                                        memory={"peak_rss_bytes": [100, 300, 200, 50]})}
    write_sweep(tmp_path, reports, manifest=list(reports))
    assert run_collect(tmp_path) == 0
    with open(tmp_path / "results.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    table = json.loads((tmp_path / "results.json").read_text())
    assert [r["report"] for r in table["rows"]] == [f"reports/{n}" for n in reports]
    assert len(rows) == len(table["rows"]) == 3
    for row, json_row in zip(rows, table["rows"]):
        report = reports[os.path.basename(json_row["report"])]
        assert json_row["busiest_volume"] == max(report["bytes"]["bound_volume"])
        assert int(row["busiest_volume"]) == json_row["busiest_volume"]
        assert json_row["P"] == report["ranks"] == int(row["P"])
        assert json_row["grid"] == f"1x1x1x1x{report['ranks']}" == row["grid"]
        assert json_row["bound_value"] == report["bound"]["value"]
        assert json_row["binding"] == "memory-independent"
        assert json_row["ratio_to_bound"] == pytest.approx(report["ratio_to_bound"])
        assert json_row["time_kernel_s"] == report["time_s"]["kernel"]
        assert json_row["git_revision"] == "a" * 40
    assert table["rows"][2]["peak_memory_bytes"] == 300   # the largest rank's peak
    # --memory: the number under "memory", or bound.M where "memory" holds the peaks
    assert [r["memory"] for r in table["rows"]] == [1 << 30] * 3
    assert rows[0]["peak_memory_bytes"] == "" and table["rows"][0]["peak_memory_bytes"] is None


def test_missing_and_malformed_reports_are_named(tmp_path, capsys):
    write_sweep(tmp_path, {"ok-P1.json": fake_report(ranks=1, volumes=(0,)),
                           "cut-P2.json": '{"spec": {',
                           "nokey-P4.json": json.dumps({"spec": {"name": "x"}})},
                manifest=["ok-P1.json", "cut-P2.json", "gone-P8.json"])
    assert run_collect(tmp_path) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1
    assert "gone-P8.json" in error and "cut-P2.json" in error and "nokey-P4.json" in error
    assert not os.path.exists(tmp_path / "results.csv")
    assert run_collect(tmp_path, "--allow-incomplete") == 0
    table = json.loads((tmp_path / "results.json").read_text())
    assert [r["report"] for r in table["rows"]] == ["reports/ok-P1.json"]


def test_mixed_revisions_are_refused_unless_allowed(tmp_path, capsys):
    write_sweep(tmp_path, {"a-P1.json": fake_report(ranks=1, volumes=(0,)),
                           "a-P2.json": fake_report(revision="b" * 40),
                           "a-P4.json": fake_report(ranks=4, volumes=(1, 2, 3, 4), revision=None)})
    assert run_collect(tmp_path) == 2
    error = capsys.readouterr().err
    assert "3 git revisions" in error and "unknown" in error and "--allow-mixed-revisions" in error
    assert run_collect(tmp_path, "--allow-mixed-revisions") == 0
    table = json.loads((tmp_path / "results.json").read_text())
    assert {r["git_revision"] for r in table["rows"]} == {"a" * 40, "b" * 40, None}


def test_existing_tables_are_kept_unless_forced(tmp_path, capsys):
    write_sweep(tmp_path, {"a-P1.json": fake_report(ranks=1, volumes=(0,))})
    (tmp_path / "results.json").write_text("keep me")
    assert run_collect(tmp_path) == 2
    assert "results.json exists" in capsys.readouterr().err
    assert (tmp_path / "results.json").read_text() == "keep me"
    assert not os.path.exists(tmp_path / "results.csv")      # refused before writing either
    assert run_collect(tmp_path, "--force") == 0
    assert json.loads((tmp_path / "results.json").read_text())["rows"][0]["P"] == 1
    assert [f for f in os.listdir(tmp_path) if ".tmp-" in f] == []


def test_reports_without_reports_folder_and_rerun(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps(fake_report()))
    out = tmp_path / "table"
    assert run_collect(tmp_path) == 0
    # the JSON table written into the same folder is not read back as a malformed report
    assert run_collect(tmp_path, "--force", "--csv", str(out) + ".csv") == 0
    assert run_collect(tmp_path / "nowhere") == 2


def test_git_revision_of_this_checkout_and_of_a_plain_folder(tmp_path):
    revision = git_revision()
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    if head.returncode != 0:
        pytest.skip("the repository is not a git checkout here")
    assert revision == head.stdout.strip() and re.fullmatch(r"[0-9a-f]{40}", revision)
    assert git_revision(str(tmp_path)) is None


def test_a_real_report_carries_the_revision_and_is_collected(tmp_path):
    report = tmp_path / "reports" / "r-P1.json"
    report.parent.mkdir()
    command = [sys.executable, "-m", "parconv.run", "--batch", "1", "--in-channels", "4",
               "--out-channels", "3", "--size", "6", "--kernel-size", "3", "--node", "numpy",
               "--quiet", "--report", str(report)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    assert json.loads(report.read_text())["git_revision"] == git_revision()
    assert run_collect(tmp_path) == 0
    row = json.loads((tmp_path / "results.json").read_text())["rows"][0]
    assert row["P"] == 1 and row["git_revision"] == git_revision()
