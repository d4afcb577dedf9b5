"""`mpirun -n P python -m parconv.run ...` end to end, launched from a serial pytest process.

These tests start mpirun themselves (every call with a timeout, so a hung job fails the test
instead of the suite), hence they run in the serial suite and are skipped under ``--with-mpi``.
They check exit statuses (0 ok, 2 bad input, 1 runtime failure), that the error is one line
printed once, that no output file (nor temporary file) is left after a failure, and that a rank
that dies or fails ends every rank.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from parconv.kernels import reference_conv2d
from parconv.mpi.hdf5 import write_layer_file
from parconv.paths import is_temporary
from parconv.spec import spec_for_dtype

pytestmark = pytest.mark.mpi_skip

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIRUN = os.path.join(os.path.dirname(sys.executable), "mpirun")
TIMEOUT = 120  # seconds; a job that takes longer has hung
SMALL = ["--in-channels", "6", "--out-channels", "5", "--size", "9x8", "--kernel-size", "3",
         "--padding", "1", "--batch", "2", "--node", "numpy"]


def run_cli(args, n=2, env=None, python_args=("-m", "parconv.run")):
    """Run parconv.run on `n` ranks; return (exit status, stdout, stderr)."""
    environment = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1",
                       PARCONV_ERROR_GRACE_S="5")
    environment.update(env or {})
    command = [MPIRUN if os.path.exists(MPIRUN) else "mpirun", "-n", str(n), sys.executable,
               *python_args, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT,
                          env=environment, cwd=REPO)
    return done.returncode, done.stdout, done.stderr


def leftovers(folder) -> list[str]:
    """Temporary files (parconv's, or any other *.tmp*) left in `folder`."""
    return [name for name in os.listdir(folder) if is_temporary(name) or ".tmp" in name]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def assert_fails(args, status, words, tmp_path, n=2, env=None):
    """The job fails with `status`, one error line naming `words`, and leaves no output."""
    output = tmp_path / "out.h5"
    code, stdout, stderr = run_cli([*args, "--output", str(output), "--quiet"], n=n, env=env)
    lines = error_lines(stderr)
    assert code == status, (code, stdout, stderr)
    assert len(lines) == 1 and lines[0].startswith("parconv: error:"), stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not output.exists()
    assert not leftovers(tmp_path)


# ---- runs that work ------------------------------------------------------------------------

def test_small_run_with_check_and_report(tmp_path):
    report_path = tmp_path / "report.json"
    code, stdout, stderr = run_cli([*SMALL, "--stride", "2", "--dilation", "1x2", "--check",
                                    "--report", str(report_path), "--grid", "1x1x1x2x1"], n=2)
    assert code == 0, stderr
    assert "grid NxKxCxHxW = 1x1x1x2x1" in stdout and "check" in stdout and "OK" in stdout
    report = json.loads(report_path.read_text())
    assert report["ranks"] == 2 and report["grid"] == {"N": 1, "K": 1, "C": 1, "H": 2, "W": 1}
    assert report["check"]["ok"] is True
    assert report["bytes"]["bound_volume"] == report["bytes"]["predicted_bound_volume"]
    assert report["spec"]["stride"] == [2, 2] and report["spec"]["dilation"] == [1, 2]
    assert set(report["bound"]) >= {"B_MI", "B_MD", "binding", "value"}


def test_hdf5_round_trip(tmp_path):
    spec = spec_for_dtype("int8", batch=2, in_channels=4, out_channels=6, in_size=(11, 7),
                          kernel_size=(3, 2), stride=(2, 1), padding=(1, 1), dilation=(1, 2),
                          bias=True, name="file")
    rng = np.random.default_rng(5)
    x = rng.integers(-128, 128, spec.input_shape, dtype=np.int8)
    w = rng.integers(-128, 128, spec.weight_shape, dtype=np.int8)
    bias = rng.integers(-99, 99, spec.out_channels).astype(np.int32)
    source, target = tmp_path / "in.h5", tmp_path / "out.h5"
    write_layer_file(str(source), spec, x, w, bias)
    # C split three ways: every rank owns (and writes) a third of the output
    code, stdout, stderr = run_cli(["--input", str(source), "--output", str(target), "--check",
                                    "--node", "numpy", "--quiet", "--grid", "1x1x3x1x1"], n=3)
    assert code == 0, stderr
    assert stdout == ""  # --quiet
    with h5py.File(target) as handle:
        out = handle["output"][...]
        assert tuple(handle.attrs["stride"]) == (2, 1)
    np.testing.assert_array_equal(out, reference_conv2d(spec, x, w, bias))
    assert not leftovers(tmp_path)


def test_default_run_without_arguments():
    code, stdout, stderr = run_cli([], n=4)
    assert code == 0, stderr
    assert "resnet50.layer3.0.conv2" in stdout and "gemmini" in stdout


def test_help_and_list_print_once():
    code, stdout, _ = run_cli(["--help"], n=2)
    assert code == 0 and stdout.count("usage:") == 1 and "--memory" in stdout
    code, stdout, _ = run_cli(["--list-layers"], n=2)
    assert code == 0 and stdout.count("resnet50.layer3.0.conv2 ") == 1


# ---- bad input: exit status 2 on every rank -------------------------------------------------

def write_file(path, **datasets):
    with h5py.File(path, "w") as handle:
        for name, value in datasets.items():
            handle.create_dataset(name, data=value)
    return str(path)


def test_missing_input_file(tmp_path):
    assert_fails(["--input", str(tmp_path / "absent.h5")], 2, ["absent.h5", "no such file"],
                 tmp_path)


def test_unknown_blas_choice_is_bad_input(tmp_path):
    assert_fails([*SMALL, "--node", "numpy"], 2, ["PARCONV_BLAS='openblas'", "auto, mkl or numpy"],
                 tmp_path, env={"PARCONV_BLAS": "openblas"})


def test_channel_mismatch(tmp_path):
    path = write_file(tmp_path / "mismatch.h5", input=np.zeros((1, 2, 5, 5), np.int8),
                      weight=np.zeros((3, 4, 3, 3), np.int8))
    assert_fails(["--input", path], 2, ["mismatch.h5", "input channels disagree"], tmp_path)


@pytest.mark.parametrize("args, words, n", [
    (["--grid", "2x1x1x1x1"], ["grid", "multiply"], 3),
    (["--batch", "1", "--grid", "2x1x1x1x1"], ["N=2", "exceeds"], 2),
    (["--memory", "1KiB"], ["memory too small"], 2),
    (["--layer", "resnet50.layer9.conv2"], ["unknown layer"], 2),
])
def test_bad_input_on_several_ranks(tmp_path, args, words, n):
    assert_fails([*SMALL, *args], 2, words, tmp_path, n=n)


# the same checks on one rank, in this process (fast): main() returns the exit status
def main_fails(args, status, words, tmp_path, capsys):
    from parconv.run import main
    output = tmp_path / "out.h5"
    assert main([*args, "--output", str(output), "--quiet"]) == status
    captured = capsys.readouterr()
    lines = error_lines(captured.err)
    assert captured.out == "" and len(lines) == 1 and lines[0].startswith("parconv: error:")
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not output.exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("args, words", [
    (["--size", "0"], ["in_size", ">= 1"]),
    (["--batch", "-1"], ["batch", "positive"]),
    (["--size", "9x1", "--kernel-size", "3x1", "--grid", "1x1x1x1x1", "--stride", "0"],
     ["stride", ">= 1"]),
    (["--memory", "lots"], ["--memory"]),
    (["--bogus"], ["unrecognized arguments: --bogus"]),
    (["--kernel-size", "3x"], ["--kernel-size", "NxM"]),
    (["--seed", "-3"], ["--seed", ">= 0"]),
])
def test_bad_options_in_process(tmp_path, capsys, args, words):
    main_fails([*SMALL, *args], 2, words, tmp_path, capsys)


def test_bad_files_in_process(tmp_path, capsys):
    text = tmp_path / "text.h5"
    text.write_text("this is not HDF5")
    main_fails(["--input", str(text)], 2, ["text.h5", "HDF5"], tmp_path, capsys)
    path = write_file(tmp_path / "noweight.h5", input=np.zeros((1, 2, 5, 5), np.int8))
    main_fails(["--input", path], 2, ["noweight.h5", "missing dataset 'weight'"], tmp_path,
               capsys)
    good = write_file(tmp_path / "good.h5", input=np.zeros((1, 2, 5, 5), np.int8),
                      weight=np.zeros((3, 2, 3, 3), np.int8))
    main_fails(["--input", good, "--dtype", "float32"], 2, ["--dtype float32", "int8"],
               tmp_path, capsys)
    main_fails(["--input", good, "--bias"], 2, ["--bias", "no dataset 'bias'"], tmp_path, capsys)
    main_fails(["--input", good, "--in-channels", "3"], 2, ["--in-channels 3", "disagrees"],
               tmp_path, capsys)
    main_fails(["--input", good, "--report", str(tmp_path / "no" / "r.json")], 2,
               ["--report", "does not exist"], tmp_path, capsys)


# ---- runtime failures: exit status 1, or the job ends through MPI ----------------------------

def test_kernel_failure_on_one_rank_ends_all(tmp_path):
    assert_fails([*SMALL, "--grid", "1x1x1x3x1"], 1, ["rank 1", "node kernel failure injected"],
                 tmp_path, n=3,
                 env={"PARCONV_FAIL_KERNEL_RANK": "1"})


KILL_RANK_1_IN_KERNEL = """
import os, signal, sys
from mpi4py import MPI
import parconv.kernels as kernels
original = kernels.NumpyKernel.run
def run(self, spec, x, w):
    if MPI.COMM_WORLD.Get_rank() == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, spec, x, w)
kernels.NumpyKernel.run = run
from parconv.run import main
sys.exit(main(sys.argv[1:]))
"""


def test_rank_killed_by_a_signal_ends_the_job(tmp_path):
    output = tmp_path / "out.h5"
    code, _, _ = run_cli([*SMALL, "--grid", "1x1x1x3x1", "--output", str(output)], n=3,
                         python_args=("-c", KILL_RANK_1_IN_KERNEL))
    assert code != 0
    assert not output.exists()


# ---- pure parts of the command line ------------------------------------------------------------

def test_default_layer_uses_at_least_three_grid_dimensions_at_64_ranks():
    from parconv.plan import make_plan
    from parconv.run_args import DEFAULT_LAYER, build_parser, build_spec
    spec = build_spec(build_parser().parse_args([]))
    assert spec.name == DEFAULT_LAYER and spec.batch == 8 and spec.dtype_in == "int8"
    plan = make_plan(spec, 64)
    assert sum(f > 1 for f in plan.dims.as_tuple()) >= 3, plan.dims


def test_flags_override_the_layer_and_the_file(tmp_path):
    from mpi4py import MPI

    from parconv.mpi.hdf5 import read_layer_meta
    from parconv.run_args import build_parser, build_spec
    parse = build_parser().parse_args
    spec = build_spec(parse(["--layer", "resnet50.conv1", "--batch", "3", "--stride", "1x2"]))
    assert (spec.batch, spec.in_channels, spec.stride, spec.kernel_size) == (3, 3, (1, 2), (7, 7))
    custom = build_spec(parse(["--in-channels", "4", "--out-channels", "2", "--size", "5x6"]))
    assert custom.name == "custom" and custom.kernel_size == (3, 3) and custom.batch == 8
    layer = spec_for_dtype("float32", batch=1, in_channels=2, out_channels=3, in_size=(6, 5),
                           kernel_size=(3, 1), stride=(2, 1), padding=(1, 0), name="f")
    path = str(tmp_path / "layer.h5")
    write_layer_file(path, layer, np.zeros(layer.input_shape), np.zeros(layer.weight_shape))
    meta = read_layer_meta(MPI.COMM_SELF, path)
    from_file = build_spec(parse(["--input", path]), meta)
    assert from_file.replace(name="f") == layer
    padded = build_spec(parse(["--input", path, "--padding", "2"]), meta)
    assert padded.padding == (2, 2) and padded.stride == (2, 1)


def test_report_json_and_summary(tmp_path):
    from parconv.report import summary_table, write_json
    report = {"spec": {"name": "x", "batch": 1, "in_size": [4, 4], "kernel_size": [3, 3],
                       "stride": [1, 1], "dtype_in": "int8"},
              "ranks": 2, "grid": {"N": 1, "K": 1, "C": 2, "H": 1, "W": 1},
              "bytes": {"bound_volume": np.array([10, 20]), "predicted_bound_volume": [10, 20],
                        "per_phase": {"reduce": {"sent": [10, 20], "received": [20, 10],
                                                 "messages": [1, 1]}}},
              "bound": {"B_MI": np.float64(15.0), "B_MD": 0, "binding": "memory-independent",
                        "value": 15.0},
              "ratio_to_bound": np.float64(4 / 3), "check": {"ok": np.bool_(True),
                                                              "max_abs_err": np.int64(0)},
              "node": {"kernel": "gemmini", "per_rank": [
                  {"kernel": "gemmini", "macs": 100, "compute_dtype": "int8", "products": "mkl",
                   "parconv": {"dram_bytes": {"total": 7}, "cycles": 2},
                   "vendor": {"dram_bytes": {"total": 9}, "cycles": 3}}, None]}}
    path = tmp_path / "r.json"
    write_json(report, str(path))
    loaded = json.loads(path.read_text())
    assert loaded["bytes"]["bound_volume"] == [10, 20] and loaded["check"]["ok"] is True
    assert os.listdir(tmp_path) == ["r.json"]
    text = summary_table(report)
    assert "busiest rank 1" in text and "maximum over ranks" in text
    assert "measured == predicted" in text
    assert "1.333" in text and "parconv tiling" in text and "vendor tiling" in text
    assert "100 MACs; tiles' products in int8, on mkl; DRAM traffic" in text


RANK_1_FAILS_ALONE = """
import sys
from mpi4py import MPI
import parconv.run as run
original = run._output_targets
def check(comm, args, spec):
    if MPI.COMM_WORLD.Get_rank() == 1:
        raise RuntimeError("rank 1 alone fails before a collective")
    return original(comm, args, spec)
run._output_targets = check
sys.exit(run.main(sys.argv[1:]))
"""


def test_error_on_one_rank_alone_aborts_the_job(tmp_path):
    # rank 0 waits in a broadcast that rank 1 never joins: rank 1 must end the job (MPI_Abort)
    output = tmp_path / "out.h5"
    code, _, stderr = run_cli([*SMALL, "--output", str(output)], n=2,
                              env={"PARCONV_ERROR_GRACE_S": "1"},
                              python_args=("-c", RANK_1_FAILS_ALONE))
    assert code == 9, stderr
    assert stderr.count("parconv: error: rank 1: RuntimeError: rank 1 alone fails") == 1
    assert not output.exists()
