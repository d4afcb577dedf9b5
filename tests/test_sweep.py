"""launch.sweep: refusals before anything is written, the scripts it writes, a local sweep run.

The same scripts run on a real Slurm in tests/test_slurm.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


pytestmark = pytest.mark.mpi_skip

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYER = "resnet50.layer1.0.conv1"
BASE = ["--layers", LAYER, "--batch", "1", "--node", "numpy", "--python", sys.executable]


def run_sweep(*options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.sweep", *BASE, *options], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("options, words", [
    (["--ranks", "0,2"], "--ranks"),
    (["--ranks", "1-x"], "--ranks"),
    (["--layers", "nosuchnet"], "--layers"),
    (["--batch", "0"], "--batch"),
    (["--format", "sbatch", "--time", "1 hour"], "--time"),
    (["--format", "sbatch", "--partition", "a b"], "--partition"),
    (["--format", "sbatch", "--account", "x;rm"], "--account"),
    (["--format", "sbatch", "--launcher", "mpiexec"], "--launcher"),
    (["--format", "sbatch", "--srun-mpi", "pmi2;ls"], "--srun-mpi"),
    (["--format", "sbatch", "--launcher", "mpirun", "--srun-mpi", "pmi2"], "--srun-mpi"),
    (["--format", "sbatch", "--ranks", "1,4", "--nodes", "2"], "--nodes"),
    (["--format", "sbatch", "--ranks", "8", "--nodes", "1", "--ntasks-per-node", "4"], "--nodes"),
    (["--format", "sbatch", "--sbatch", "qos=debug"], "--sbatch"),
    (["--partition", "debug"], "--format sbatch"),
    (["--extra", "--report x.json"], "--extra"),
    (["--python", "/nonexistent/python"], "python"),
    (["--python", "/bin/sh"], "cannot import mpi4py"),
])
def test_bad_options_are_refused_before_anything_is_written(tmp_path, options, words):
    out = tmp_path / "sweep"
    done = run_sweep("--out", str(out), *options)
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and words in done.stderr
    assert done.stderr.startswith("launch.sweep: ")
    assert not out.exists()


def test_an_existing_sweep_is_kept_unless_forced(tmp_path):
    out = tmp_path / "sweep"
    assert run_sweep("--out", str(out), "--ranks", "1,2").returncode == 0
    (out / "reports" / f"{LAYER}-P2.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    before = sorted(os.listdir(out))
    done = run_sweep("--out", str(out), "--ranks", "4")
    assert done.returncode == 2 and "--force" in done.stderr
    assert sorted(os.listdir(out)) == before
    done = run_sweep("--out", str(out), "--ranks", "4", "--force")
    assert done.returncode == 0, done.stderr
    assert "replaced" in done.stdout
    assert os.listdir(out / "reports") == []                  # the stale report is gone
    assert (out / "notes.txt").read_text() == "mine"          # files not the sweep's are kept
    jobs = json.loads((out / "sweep.json").read_text())["jobs"]
    assert [job["P"] for job in jobs] == [4]


def test_sbatch_scripts_carry_the_slurm_options(tmp_path):
    out = tmp_path / "sweep"
    done = run_sweep("--out", str(out), "--ranks", "1,8,64", "--format", "sbatch",
                     "--ntasks-per-node", "32", "--time", "1-00:30:00", "--partition", "gpu,cpu",
                     "--account", "proj_1", "--sbatch=--qos=debug", "--cpus-per-task", "2")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "sweep.json").read_text())
    assert [(j["P"], j["report"]) for j in manifest["jobs"]] == [
        (p, f"reports/{LAYER}-P{p}.json") for p in (1, 8, 64)]
    script = (out / f"{LAYER}-P64.sbatch").read_text().splitlines()
    assert script[0] == "#!/bin/bash"
    assert script[1] == f"# Submit: sbatch {out / f'{LAYER}-P64.sbatch'}"
    for option in ("--ntasks=64", "--nodes=2", "--ntasks-per-node=32", "--time=1-00:30:00",
                   "--partition=gpu,cpu", "--account=proj_1", "--qos=debug",
                   "--cpus-per-task=2"):
        assert f"#SBATCH {option}" in script
    assert "#SBATCH --nodes=1" in (out / f"{LAYER}-P8.sbatch").read_text()
    assert f"export PARCONV_PYTHON={sys.executable}" in script
    assert "export PARCONV_LAUNCHER=srun" in script and "export PARCONV_SRUN_MPI=pmi2" in script
    assert script[-1].startswith('exec bash "$PARCONV_REPO/launch/slurm.sbatch" --layer ')
    assert f"--report {out}/reports/{LAYER}-P64.json" in script[-1]
    submit = (out / "submit_all.sh").read_text().splitlines()
    assert submit[1] == f"# Run: bash {out / 'submit_all.sh'} [--wait]"
    for path in (out / "submit_all.sh", out / f"{LAYER}-P1.sbatch"):
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
        assert os.access(path, os.X_OK)


def test_mpirun_launcher_scripts(tmp_path):
    out = tmp_path / "sweep"
    done = run_sweep("--out", str(out), "--ranks", "2", "--format", "sbatch",
                     "--launcher", "mpirun")
    assert done.returncode == 0, done.stderr
    script = (out / f"{LAYER}-P2.sbatch").read_text()
    assert "export PARCONV_LAUNCHER=mpirun" in script and "PARCONV_SRUN_MPI" not in script


def test_the_slurm_template_refuses_bad_settings_outside_and_inside_a_job(tmp_path):
    template = os.path.join(REPO, "launch", "slurm.sbatch")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    done = subprocess.run(["bash", template], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "not inside a Slurm job" in done.stderr
    env.update(SLURM_NTASKS="2", PARCONV_LAUNCHER="mpiexec", PARCONV_PYTHON=sys.executable)
    done = subprocess.run(["bash", template], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == ("launch/slurm.sbatch: PARCONV_LAUNCHER must be srun or "
                                   "mpirun, got 'mpiexec'")


def test_a_local_sweep_runs_and_is_collected(tmp_path):
    out = tmp_path / "sweep"
    assert run_sweep("--out", str(out), "--ranks", "1,2").returncode == 0
    script = (out / "run_all.sh").read_text().splitlines()
    assert script[1] == f"# Run: bash {out / 'run_all.sh'}"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PARCONV_PYTHON", None)   # the script fixes the python itself
    done = subprocess.run(["bash", str(out / "run_all.sh")], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[:2] == [f"[1/2] {LAYER}-P1", f"[2/2] {LAYER}-P2"]
    done = subprocess.run([sys.executable, "-m", "launch.collect", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["layer"], r["P"]) for r in rows] == [(LAYER, 1), (LAYER, 2)]
    for row in rows:
        report = json.loads((out / row["report"]).read_text())
        assert row["busiest_volume"] == max(report["bytes"]["bound_volume"])
        assert report["ranks"] == row["P"]
