"""The --quick variants of the scaling studies (experiments/), run into a temporary folder.

Each study is started as the user would start it (a subprocess, with its own mpirun runs); the
tests check that every output is there and complete, and that the figures are consistent:
measured bytes equal the planner's prediction, every bound is at most the volume it bounds, the
matmul's best 3-D grid is never worse than its best 2-D grid, a recorded result is not replaced
without --force.  Skipped under --with-mpi (they launch mpirun themselves).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = [pytest.mark.mpi_skip, pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 600
sys.path.insert(0, os.path.join(REPO, "experiments"))

import _common as C  # noqa: E402
import _matmul as MM  # noqa: E402


def run_study(name: str, out, *extra):
    env = dict(os.environ, PYTHONPATH=REPO, PARCONV_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(REPO, "experiments", f"{name}.py"),
                           "--quick", "--out", str(out), *extra], capture_output=True,
                          text=True, timeout=TIMEOUT, cwd=REPO, env=env)


def rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def manifest(out) -> dict:
    with open(os.path.join(out, "manifest.json"), encoding="utf-8") as fh:
        meta = json.load(fh)
    for key in ("command", "git_revision", "hostname", "cores", "mpi_library", "files"):
        assert meta.get(key) is not None, key
    for name in meta["files"]:
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    return meta


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """Run every quick study once, two at a time (each is mostly one process planning, so two
    keep both cores of a CI machine busy; their mpirun runs use one BLAS thread per rank);
    (name -> (folder, completed process))."""
    names = ("strong_scaling", "weak_scaling", "im2col_matmul", "memory_regime")
    outs = {name: tmp_path_factory.mktemp(name) for name in names}
    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = dict(zip(names, pool.map(lambda name: run_study(name, outs[name]), names)))
    return {name: (outs[name], procs[name]) for name in names}


@pytest.mark.parametrize("name", ["strong_scaling", "weak_scaling"])
def test_scaling_outputs_complete_and_consistent(done, name):
    out, proc = done[name]
    assert proc.returncode == 0, proc.stderr
    meta = manifest(out)
    study = __import__(name)
    predicted = rows(out / "predicted.csv")
    assert {(r["layer"], int(r["P"])) for r in predicted} == {
        (n, P) for n in study.QUICK["layers"] for P in study.QUICK["ranks"]}
    for r in predicted:
        assert float(r["bound"]) <= int(r["max_volume"]) * (1 + 1e-9) + 1e-6, r
        if r["best_peer_volume"]:
            # the peers are grids parconv's planner also considers on the same P ranks
            assert int(r["best_peer_volume"]) >= int(r["max_volume"]), r
    measured = rows(out / "measured.csv")
    assert {(r["layer"], int(r["P"])) for r in measured} == {
        (n, P) for n in study.QUICK["measured_layers"] for P in study.QUICK["measured_ranks"]}
    by_key = {(r["layer"], int(r["P"])): r for r in predicted}
    for r in measured:
        assert r["bytes_match"] == "True" and r["measured_volume"] == r["predicted_volume"]
        both = by_key.get((r["layer"], int(r["P"])))
        if both is not None:
            assert int(r["measured_volume"]) == int(both["max_volume"]), (r, both)
    assert meta["checks"]["measured_equals_predicted_runs"] == len(measured)
    assert meta["checks"]["measured_equals_predicted_table"] == len(measured)
    assert len(meta["mpirun_commands"]) == len(measured)
    assert len(rows(out / "measured" / "reports.csv")) == len(measured)
    assert os.path.getsize(out / "headline.md") > 0
    assert os.path.getsize(out / f"{name}.png") > 10_000
    headline = (out / "headline.md").read_text()
    os.remove(out / f"{name}.png")
    replot = run_study(name, out, "--replot")
    assert replot.returncode == 0, replot.stderr
    assert (out / "headline.md").read_text() == headline
    assert os.path.getsize(out / f"{name}.png") > 10_000


def test_recorded_result_is_not_replaced_without_force(done):
    out, _ = done["im2col_matmul"]
    before = (out / "manifest.json").read_text()
    proc = run_study("im2col_matmul", out, "--no-measure")
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert (out / "manifest.json").read_text() == before


def test_im2col_matmul_outputs(done):
    out, proc = done["im2col_matmul"]
    assert proc.returncode == 0, proc.stderr
    meta = manifest(out)
    table = rows(out / "im2col.csv")
    assert len(table) == 12 and meta["checks"]["grid_equal"] == len(table)
    for r in table:
        volume, bound = int(r["matmul_volume"]), float(r["matmul_bound"])
        assert bound <= volume * (1 + 1e-9) + 1e-6, r
        if r["matmul_2d_volume"]:
            assert int(r["matmul_2d_volume"]) >= volume, r
        assert float(r["direct_bound"]) <= int(r["direct_volume"]) * (1 + 1e-9) + 1e-6, r
    assert len(rows(out / "sequential.csv")) == 3


def test_memory_regime_outputs(done):
    out, proc = done["memory_regime"]
    assert proc.returncode == 0, proc.stderr
    meta = manifest(out)
    front = rows(out / "frontier.csv")
    for layer in {r["layer"] for r in front}:
        mine = [r for r in front if r["layer"] == layer]
        footprints = [int(r["footprint"]) for r in mine]
        assert footprints == sorted(footprints, reverse=True) and len(set(footprints)) == \
            len(footprints)
        assert all(int(r["footprint"]) <= int(r["memory_to"]) for r in mine)
    measured = rows(out / "measured.csv")
    # one run per frontier grid at P = 8 (one grid since the planner counts the balance phase:
    # 1x1x1x2x4 now wins at the default memory too); every run a different grid
    assert len(measured) >= 1 and len({r["grid"] for r in measured}) == len(measured)
    assert all(r["measured_volume"] == r["predicted_volume"] for r in measured)
    assert all(v["status"] == 2 for v in meta["checks"]["refused"].values())


def test_matmul_grid_volume_by_hand():
    """2 x 2 x 1 grid of a 4 x 4 x 2 matmul, one byte per element: every rank needs a 2 x 2
    block of A shared with one other rank (receives 2) and of B likewise (2); no reduction."""
    volumes = MM.grid_volumes(4, 4, 2, (2, 2, 1), (1, 1, 1))
    assert volumes.shape == (2, 2, 1) and (volumes == 4).all()
    # 1 x 1 x 2: each rank holds half of k; sends its partial 4 x 4 output minus its own half
    volumes = MM.grid_volumes(4, 4, 2, (1, 1, 2), (1, 1, 4))
    assert (volumes == 4 * 8).all()


def test_matmul_grid_volume_uneven_blocks_own_at_most_the_cap():
    """3 x 1 x 1 grid of a 4 x 1 x 1 matmul (m = 4 over 3 ranks: A and Y blocks of 2, 1, 1 rows,
    within the cap ceil(4 / 3) = 2): only the single B element moves, to the two ranks that do
    not own it.  1 x 1 x 2 on m = 3, n = 1, k = 3 (k blocks 2, 1; caps: A ceil(9 / 2) = 5, Y
    ceil(3 / 2) = 2): the first rank's A block of 6 elements exceeds the cap, so it owns 5 and
    receives 1 from a holder."""
    assert MM.grid_volumes(4, 1, 1, (3, 1, 1), (1, 1, 1)).ravel().tolist() == [0, 1, 1]
    volumes = MM.grid_volumes(3, 1, 3, (1, 1, 2), (1, 1, 4), p_final=4)
    # rank l=0: A 3x2 = 6 > cap 5 -> receives 1; B 2x1 piece of its own (p1 = 1): 0;
    # Y (3 x 1) split in 2 pieces (2, 1): sends 3 - 2 = 1 partial sum at 4 B
    assert volumes[0, 0, 0] == 1 + 4 * 1
    # rank l=1: A 3x1 = 3 <= 5; sends 3 - 1 = 2 partial sums
    assert volumes[0, 0, 1] == 4 * 2


def test_matmul_bound_equal_weights_closed_form():
    """Al Daas et al.'s three cases for m >= n >= k, equal element sizes."""
    def closed(m, n, k, P):
        d1, d2, d3 = sorted((m, n, k), reverse=True)
        if P <= d1 / d2:
            D = d2 * d3 + (d1 * d3 + d1 * d2) / P
        elif P <= d1 * d2 / d3 ** 2:
            D = 2 * (d1 * d2 * d3 ** 2 / P) ** 0.5 + d1 * d2 / P
        else:
            D = 3 * (d1 * d2 * d3 / P) ** (2 / 3)
        return D - (m * n + m * k + n * k) / P
    for m, n, k, P in [(4096, 64, 64, 8), (4096, 64, 64, 512), (4096, 512, 64, 4096),
                       (1000, 1000, 1000, 64)]:
        assert MM.tight_bound(m, n, k, P, (1, 1, 1)) == pytest.approx(closed(m, n, k, P),
                                                                       rel=1e-9)


def test_fresh_reports_moves_an_earlier_runs_reports_aside(tmp_path, capsys):
    """A rerun gathers only its own reports: the old ones are moved (never deleted) out of the
    folder launch.collect reads."""
    old = tmp_path / "measured" / "reports"
    old.mkdir(parents=True)
    (old / "stale-P8.json").write_text("{}")
    reports = C.fresh_reports(str(tmp_path), "measured")
    assert os.listdir(reports) == []
    moved = list((tmp_path / "measured" / "superseded").glob("*/stale-P8.json"))
    assert len(moved) == 1 and moved[0].read_text() == "{}"
    assert "moved the 1 files" in capsys.readouterr().err
    assert C.fresh_reports(str(tmp_path), "measured") == reports   # empty: nothing to move


def test_halo_profile_identity_and_inequalities_hold():
    import numpy as np
    import halo_profile as HP
    HP.check_identity(200, np.random.default_rng(1))
