"""The launchers on a real Slurm: a one-node cluster on localhost, started and stopped here.

The fixture installs Debian's ``slurm-wlm`` and ``munge`` when they are missing (root and
apt-get needed; it skips, saying why, only where they cannot be installed), then starts
``munged``, ``slurmctld`` and one ``slurmd`` with a minimal configuration in a temporary folder
(8 CPUs on the one node, whatever the hardware has; free ports, its own munge socket and key,
so that it touches nothing of the machine's).  The tests submit sweeps written by
``launch.sweep`` with ``sbatch --wait``, through srun and through mpirun, and gather them with
``launch.collect``.  The daemons are stopped and the folder removed whatever happens.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from parconv.provenance import git_revision

pytestmark = [pytest.mark.slow, pytest.mark.mpi_skip]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYER = "resnet50.layer1.0.conv1"
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "sinfo", "squeue", "scancel")
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin"])
TIMEOUT = 300   # seconds for any one command (the machine may be busy); longer = hung

CONF = """\
ClusterName=parconvtest
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge.socket
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
NodeName=localhost NodeAddr=127.0.0.1 CPUs=8 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


def program(name: str) -> str | None:
    return shutil.which(name, path=SEARCH_PATH)


def ensure_slurm() -> None:
    """Install slurm-wlm and munge with apt-get when a program is missing (skip if we cannot)."""
    missing = [name for name in PROGRAMS if program(name) is None]
    if not missing:
        return
    reason = (f"Slurm programs missing ({', '.join(missing)}) and slurm-wlm/munge cannot be "
              f"installed")
    if os.geteuid() != 0:
        pytest.skip(f"{reason}: not root")
    if program("apt-get") is None:
        pytest.skip(f"{reason}: no apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", PATH=SEARCH_PATH)
    for command in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
        if done.returncode != 0:
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])
            pytest.fail(f"{' '.join(command)} failed (exit {done.returncode}): {tail}")
    still = [name for name in PROGRAMS if program(name) is None]
    assert not still, f"still missing after apt-get install slurm-wlm munge: {still}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Cluster:
    """The running daemons of one temporary Slurm cluster and the environment to talk to it."""

    def __init__(self, folder: str) -> None:
        self.folder, self.daemons = folder, []
        self.env = dict(os.environ, SLURM_CONF=os.path.join(folder, "slurm.conf"),
                        PATH=SEARCH_PATH, OMP_NUM_THREADS="1")
        self.env.pop("PARCONV_PYTHON", None)   # the generated scripts fix the python

    def start(self, *command: str) -> None:
        log = open(os.path.join(self.folder, f"{os.path.basename(command[0])}.stdout"), "w")
        self.daemons.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                             env=self.env, start_new_session=True))
        log.close()

    def run(self, *command: str, check=True, timeout=TIMEOUT) -> subprocess.CompletedProcess:
        done = subprocess.run(command, capture_output=True, text=True, env=self.env,
                              timeout=timeout, cwd=REPO)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(command)}: exit {done.returncode}\n{done.stdout}"
                                 f"\n{done.stderr}\n{self.logs()}")
        return done

    def logs(self) -> str:
        text = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            path = os.path.join(self.folder, name)
            if os.path.exists(path):
                with open(path, encoding="utf-8", errors="replace") as handle:
                    text.append(f"--- {name} (end)\n" + "".join(handle.readlines()[-15:]))
        return "\n".join(text)

    def wait_for(self, what: str, test, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            dead = [d.args[0] for d in self.daemons if d.poll() is not None]
            if dead:
                raise AssertionError(f"{dead} exited while waiting for {what}\n{self.logs()}")
            if test():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}\n{self.logs()}")

    def stop(self) -> None:
        """Cancel every job, then end the daemons this cluster started (newest first)."""
        if self.daemons and self.daemons[0].poll() is None and len(self.daemons) > 1:
            self.run("scancel", "--user", "root", check=False, timeout=30)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                queue = self.run("squeue", "-h", check=False, timeout=30)
                if queue.returncode != 0 or not queue.stdout.strip():
                    break
                time.sleep(0.5)
        for daemon in reversed(self.daemons):
            if daemon.poll() is None:
                daemon.terminate()
                try:
                    daemon.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait(timeout=15)


@pytest.fixture(scope="module")
def slurm():
    ensure_slurm()
    started = time.monotonic()
    folder = tempfile.mkdtemp(prefix="parconv-slurm-")
    cluster = Cluster(folder)
    try:
        os.chmod(folder, 0o755)   # munged wants its socket's folder searchable by all
        os.makedirs(os.path.join(folder, "state"))
        os.makedirs(os.path.join(folder, "spool"))
        key = os.path.join(folder, "munge.key")
        with open(key, "wb") as handle:
            handle.write(os.urandom(1024))
        os.chmod(key, 0o400)
        with open(cluster.env["SLURM_CONF"], "w", encoding="utf-8") as handle:
            handle.write(CONF.format(folder=folder, ctld_port=free_port(),
                                     slurmd_port=free_port()))
        cluster.start(program("munged"), "--foreground", f"--socket={folder}/munge.socket",
                      f"--key-file={key}", f"--log-file={folder}/munged.log",
                      f"--pid-file={folder}/munged.pid", f"--seed-file={folder}/munged.seed")
        cluster.wait_for("munged", lambda: os.path.exists(f"{folder}/munge.socket"))
        cluster.start(program("slurmctld"), "-D", "-f", cluster.env["SLURM_CONF"])
        cluster.start(program("slurmd"), "-D", "-f", cluster.env["SLURM_CONF"], "-N", "localhost")
        cluster.wait_for("the node to be idle", seconds=60, test=lambda: cluster.run(
            "sinfo", "-h", "-o", "%t", check=False, timeout=30).stdout.strip() == "idle")
        print(f"\nSlurm cluster up in {time.monotonic() - started:.1f} s", file=sys.stderr)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


def mpi_library() -> str:
    import mpi4py
    mpi4py.rc.initialize = False
    from mpi4py import MPI
    return " ".join(MPI.Get_library_version().splitlines()[0].split())


def make_sweep(slurm, name, ranks, *options) -> str:
    out = os.path.join(slurm.folder, name)
    slurm.run(sys.executable, "-m", "launch.sweep", "--layers", LAYER, "--batch", "1",
              "--node", "numpy", "--ranks", ranks, "--format", "sbatch", "--out", out,
              "--time", "00:05:00", "--partition", "debug", "--python", sys.executable,
              *options)
    return out


def check_sweep(slurm, out, submit, launcher_line) -> None:
    """Every job ended well and wrote its report; the gathered table matches the reports."""
    jobs = json.load(open(os.path.join(out, "sweep.json"), encoding="utf-8"))["jobs"]
    assert submit.returncode == 0, f"{submit.stdout}\n{submit.stderr}\n{slurm.logs()}"
    progress = [line for line in submit.stdout.splitlines() if line.startswith("[")]
    assert len(progress) == len(jobs) and all(line.endswith(": ok") for line in progress)
    revision = git_revision()
    for job in jobs:
        logs = [f for f in os.listdir(os.path.join(out, "logs"))
                if f.startswith(f"{LAYER}-P{job['P']}-") and f.endswith(".out")]
        assert len(logs) == 1, logs
        with open(os.path.join(out, "logs", logs[0]), encoding="utf-8") as handle:
            head = handle.read().splitlines()[:4]
        assert head[0] == f"parconv: python {sys.executable} (--python when the sweep was written)"
        assert head[1] == f"parconv: MPI {mpi_library()}"
        assert head[2] == f"parconv: launcher {launcher_line(job['P'])}"
        assert head[3].startswith("parconv: job ") and f"{job['P']} ranks on 1 node" in head[3]
        with open(os.path.join(out, job["report"]), encoding="utf-8") as handle:
            report = json.load(handle)
        assert report["ranks"] == job["P"] == len(report["bytes"]["bound_volume"])
        assert report["bytes"]["bound_volume"] == report["bytes"]["predicted_bound_volume"]
        assert report["git_revision"] == revision
    slurm.run(sys.executable, "-m", "launch.collect", out)
    with open(os.path.join(out, "results.json"), encoding="utf-8") as handle:
        rows = json.load(handle)["rows"]
    assert sorted((r["layer"], r["P"]) for r in rows) == sorted((LAYER, j["P"]) for j in jobs)
    with open(os.path.join(out, "results.csv"), encoding="utf-8") as handle:
        assert len(handle.read().strip().splitlines()) == 1 + len(jobs)
    for row in rows:
        with open(os.path.join(out, row["report"]), encoding="utf-8") as handle:
            report = json.load(handle)
        grid = "x".join(str(report["grid"][a]) for a in "NKCHW")
        assert (row["grid"], row["busiest_volume"], row["bound_value"], row["binding"],
                row["ratio_to_bound"], row["git_revision"]) == (
            grid, max(report["bytes"]["bound_volume"]), report["bound"]["value"],
            report["bound"]["binding"], report["ratio_to_bound"], revision)
        assert row["time_kernel_s"] == report["time_s"]["kernel"]


def test_sweeps_through_srun_and_mpirun(slurm):
    """srun --mpi=pmi2 at P = 1, 2, 4 and the mpich wheel's mpirun at P = 3, submitted together."""
    by_srun = make_sweep(slurm, "srun", "1,2,4")
    by_mpirun = make_sweep(slurm, "mpirun", "3", "--launcher", "mpirun")
    started = time.monotonic()
    submits = [subprocess.Popen(["bash", os.path.join(out, "submit_all.sh"), "--wait"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=slurm.env) for out in (by_srun, by_mpirun)]
    results = []
    for submit in submits:
        stdout, stderr = submit.communicate(timeout=TIMEOUT)
        results.append(subprocess.CompletedProcess(submit.args, submit.returncode, stdout,
                                                   stderr))
    print(f"\n4 jobs submitted and ended in {time.monotonic() - started:.1f} s", file=sys.stderr)
    check_sweep(slurm, by_srun, results[0],
                lambda p: f"srun --mpi=pmi2 --kill-on-bad-exit=1 -n {p}")
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    check_sweep(slurm, by_mpirun, results[1], lambda p: f"{mpirun} -n {p}")


def test_a_wrong_srun_mpi_plugin_is_caught_before_the_run(slurm):
    """--mpi=none starts P one-rank MPI jobs: the probe step refuses, no report is written.

    Once by hand (sbatch launch/slurm.sbatch, settings from the environment), once in a sweep
    (its submit_all.sh fails and launch.collect names the missing report); both at once.
    """
    report = os.path.join(slurm.folder, "none.json")
    log = os.path.join(slurm.folder, "none-%j.out")
    env = dict(slurm.env, PARCONV_SRUN_MPI="none", PARCONV_PYTHON=sys.executable)
    by_hand = subprocess.Popen(["sbatch", "--wait", "--ntasks=2", f"--output={log}",
                                "launch/slurm.sbatch", "--layer", LAYER, "--batch", "1",
                                "--node", "numpy", "--report", report], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = make_sweep(slurm, "none", "2", "--srun-mpi", "none")
    submit = slurm.run("bash", os.path.join(out, "submit_all.sh"), "--wait", check=False)
    stdout, _ = by_hand.communicate(timeout=TIMEOUT)
    assert by_hand.returncode != 0
    with open(log.replace("%j", stdout.split()[-1]), encoding="utf-8") as handle:
        text = handle.read()
    assert f"parconv: python {sys.executable} (PARCONV_PYTHON)" in text
    assert "srun --mpi=none did not start one MPI job of 2 ranks" in text
    assert not os.path.exists(report)
    assert submit.returncode == 1 and f"{LAYER}-P2.sbatch: FAILED" in submit.stdout
    assert "0 of 1 jobs ok" in submit.stdout
    collect = slurm.run(sys.executable, "-m", "launch.collect", out, check=False)
    assert collect.returncode == 2 and f"1 missing: reports/{LAYER}-P2.json" in collect.stderr
