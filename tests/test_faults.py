"""Bad input and faults: nothing lost, nothing half-done (docs/design.md 4.6-4.9).

Each case ends with one clear error line and exit status 2 (bad input), 1 (a failure while
running) or 9 (the job ended through MPI_Abort: one rank failed alone, or an interrupt), and
leaves every existing file as it was.  Multi-rank cases start mpirun themselves (see
test_run_cli.py); single-rank cases call ``parconv.run.main`` in this process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from test_run_cli import MPIRUN, REPO, SMALL, TIMEOUT, error_lines, leftovers, run_cli

from parconv import paths
from parconv.errors import ParconvError
from parconv.kernels import reference_conv2d
from parconv.mpi.hdf5 import write_layer_file
from parconv.spec import spec_for_dtype

pytestmark = pytest.mark.mpi_skip

LAYER = spec_for_dtype("float32", batch=2, in_channels=3, out_channels=4, in_size=(8, 7),
                       kernel_size=(3, 3), padding=(1, 1), name="faults")


def layer_file(path, spec=LAYER, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(spec.input_shape).astype(spec.dtype_in)
    w = rng.standard_normal(spec.weight_shape).astype(spec.dtype_weight)
    write_layer_file(str(path), spec, x, w)
    return str(path), x, w


def run_main(args, capsys):
    """parconv.run.main on one rank here; returns (status, stdout, the stderr lines)."""
    from parconv.run import main
    status = main([*args, "--node", "numpy", "--quiet"])
    captured = capsys.readouterr()
    return status, captured.out, error_lines(captured.err)


def snapshot(folder):
    """{name: bytes} of the regular files in `folder` (symlinks by their target's content)."""
    return {name: open(os.path.join(folder, name), "rb").read()
            for name in sorted(os.listdir(folder)) if os.path.isfile(os.path.join(folder, name))}


def assert_refused(status, lines, code, *words):
    assert status == code, lines
    assert len(lines) == 1 and lines[0].startswith("parconv: error:"), lines
    for word in words:
        assert word in lines[0], (word, lines[0])


# ---- 1. outputs naming the input or each other ----------------------------------------------

@pytest.mark.parametrize("how", ["same path", "symlink", "hard link", "relative path"])
def test_report_naming_the_input_is_refused(tmp_path, capsys, how):
    source, _, _ = layer_file(tmp_path / "in.h5")
    other = {"same path": source, "symlink": str(tmp_path / "link.json"),
             "hard link": str(tmp_path / "hard.json"),
             "relative path": os.path.relpath(source)}[how]
    if how == "symlink":
        os.symlink(source, other)
    elif how == "hard link":
        os.link(source, other)
    before = snapshot(tmp_path)
    status, _, lines = run_main(["--input", source, "--report", other], capsys)
    assert_refused(status, lines, 2, "--report", "--input", "same file")
    assert snapshot(tmp_path) == before and not leftovers(tmp_path)


def test_output_naming_the_input_or_the_report_is_refused(tmp_path, capsys):
    source, _, _ = layer_file(tmp_path / "in.h5")
    before = snapshot(tmp_path)
    status, _, lines = run_main(["--input", source, "--output", source], capsys)
    assert_refused(status, lines, 2, "--output", "--input", "same file")
    both = str(tmp_path / "both")
    status, _, lines = run_main(["--input", source, "--output", both, "--report", both], capsys)
    assert_refused(status, lines, 2, "--output", "--report", "same file")
    assert snapshot(tmp_path) == before and not leftovers(tmp_path)


def test_report_naming_the_input_on_three_ranks(tmp_path):
    source, _, _ = layer_file(tmp_path / "in.h5")
    before = snapshot(tmp_path)
    code, _, stderr = run_cli(["--input", source, "--report", source, "--node", "numpy"], n=3)
    lines = error_lines(stderr)
    assert code == 2 and len(lines) == 1 and "same file" in lines[0], stderr
    assert snapshot(tmp_path) == before and not leftovers(tmp_path)


# ---- 1. long names, symlinks, and the order of the final renames -----------------------------

def test_longest_legal_name_is_written_and_one_more_is_refused_before_work(tmp_path, capsys):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    longest = str(tmp_path / ("o" * (limit - 3) + ".h5"))
    code, _, stderr = run_cli([*SMALL, "--output", longest, "--quiet"], n=2)
    assert code == 0, stderr
    with h5py.File(longest) as handle:
        assert handle["output"].shape == (2, 5, 9, 8)
    assert not leftovers(tmp_path)
    started = time.perf_counter()
    status, _, lines = run_main([*SMALL[:-2], "--output", longest + "x"], capsys)
    assert_refused(status, lines, 2, "--output", "NAME_MAX")
    assert time.perf_counter() - started < 5  # before any work


def test_name_and_path_limits_from_pathconf(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "pathconf", lambda folder, name: {"PC_NAME_MAX": 30,
                                                              "PC_PATH_MAX": 4096}[name])
    with pytest.raises(ParconvError, match="temporary file name is .*NAME_MAX"):
        # the temporary name has 29 characters + the pid's digits
        paths.check_outputs({"--output": str(tmp_path / "short.h5")})
    monkeypatch.setattr(os, "pathconf", lambda folder, name: {"PC_NAME_MAX": 255,
                                                              "PC_PATH_MAX": 20}[name])
    with pytest.raises(ParconvError, match="PATH_MAX"):
        paths.check_outputs({"--output": str(tmp_path / "short.h5")})


def test_other_bad_output_paths(tmp_path):
    with pytest.raises(ParconvError, match="is a directory"):
        paths.check_outputs({"--output": str(tmp_path)})
    with pytest.raises(ParconvError, match="does not exist"):
        paths.check_outputs({"--report": str(tmp_path / "no" / "r.json")})
    with pytest.raises(ParconvError, match="not a regular file"):
        paths.check_outputs({"--report": "/dev/null"})
    with pytest.raises(ParconvError, match="empty file name"):
        paths.check_outputs({"--output": ""})
    assert not os.listdir(tmp_path)


def test_symlinks_are_written_through(tmp_path, capsys):
    real = tmp_path / "data"
    real.mkdir()
    (real / "out.h5").write_bytes(b"old output")
    os.symlink(real / "out.h5", tmp_path / "out.h5")
    os.symlink(real / "new.json", tmp_path / "report.json")  # dangling: the target is created
    status, _, lines = run_main([*SMALL[:-2], "--output", str(tmp_path / "out.h5"),
                                 "--report", str(tmp_path / "report.json")], capsys)
    assert status == 0, lines
    assert os.path.islink(tmp_path / "out.h5") and os.path.islink(tmp_path / "report.json")
    with h5py.File(real / "out.h5") as handle:
        assert handle["output"].shape == (2, 5, 9, 8)
    assert (real / "new.json").read_text().startswith("{")
    assert not leftovers(tmp_path) and not leftovers(real)


def test_replaced_files_keep_their_permissions(tmp_path, capsys):
    out = tmp_path / "out.h5"
    out.write_bytes(b"old")
    os.chmod(out, 0o640)
    status, _, lines = run_main([*SMALL[:-2], "--output", str(out)], capsys)
    assert status == 0, lines
    assert os.stat(out).st_mode & 0o777 == 0o640


FAILING_REPORT = """
import errno, sys
import parconv.mpi.outputs as outputs
def full_disk(*args, **kwargs):  # the report's temporary file is opened, then the disk is full
    raise OSError(errno.ENOSPC, "No space left on device")
outputs.json.dump = full_disk
from parconv.run import main_or_abort
sys.exit(main_or_abort())
"""


def test_a_failing_report_leaves_the_old_output_and_report(tmp_path):
    (tmp_path / "out.h5").write_bytes(b"old output")
    (tmp_path / "r.json").write_bytes(b"old report")
    code, _, stderr = run_cli([*SMALL, "--output", str(tmp_path / "out.h5"), "--report",
                               str(tmp_path / "r.json"), "--quiet"], n=2,
                              python_args=("-c", FAILING_REPORT))
    lines = error_lines(stderr)
    assert code == 1 and len(lines) == 1 and "No space left" in lines[0], stderr
    assert snapshot(tmp_path) == {"out.h5": b"old output", "r.json": b"old report"}
    assert not leftovers(tmp_path)


def test_a_failing_output_rename_puts_the_old_report_back(tmp_path):
    from parconv.errors import ParconvRuntimeError
    from parconv.mpi.outputs import _put_in_place
    (tmp_path / "out.h5").write_bytes(b"old output")
    (tmp_path / "r.json").write_bytes(b"old report")
    targets = paths.check_outputs({"--output": str(tmp_path / "out.h5"),
                                   "--report": str(tmp_path / "r.json")})
    with open(targets["--report"].temporary, "w") as handle:
        handle.write("new report")
    # the output's temporary file is missing: its rename fails after the report's succeeded
    with pytest.raises(ParconvRuntimeError, match="old report was put back"):
        _put_in_place(targets["--output"], targets["--report"])
    assert snapshot(tmp_path) == {"out.h5": b"old output", "r.json": b"old report"}
    # and without an old report the new one is removed again
    os.remove(tmp_path / "r.json")
    with open(targets["--report"].temporary, "w") as handle:
        handle.write("new report")
    with pytest.raises(ParconvRuntimeError):
        _put_in_place(targets["--output"], targets["--report"])
    assert snapshot(tmp_path) == {"out.h5": b"old output"} and not leftovers(tmp_path)


# ---- 4. leftovers of dead runs ----------------------------------------------------------------

def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_next_run_removes_temporaries_of_dead_runs_and_says_so(tmp_path, capsys):
    stale = paths.temporary_name(str(tmp_path / "out.h5"), "output", pid=dead_pid())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        alive = paths.temporary_name(str(tmp_path / "out.h5"), "output", pid=sleeper.pid)
        elsewhere = str(tmp_path / f".parconv-ffffff-{dead_pid()}-0123abcd.tmp")
        for name in (stale, alive, elsewhere):
            open(name, "w").close()
        status, _, lines = run_main([*SMALL[:-2], "--output", str(tmp_path / "out.h5")],
                                    capsys)
        assert status == 0
        assert not os.path.exists(stale) and os.path.exists(alive) and os.path.exists(elsewhere)
        assert len(lines) == 1 and "removed" in lines[0] and stale in lines[0], lines
    finally:
        sleeper.kill()
        sleeper.wait()


# ---- 3. full disk, file size limit, corrupt and truncated inputs ------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 128 KiB tmpfs (needs root; skipped otherwise)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


BIG = ["--in-channels", "3", "--out-channels", "8", "--size", "66", "--kernel-size", "3",
       "--batch", "2", "--node", "numpy", "--quiet"]  # output 2x8x64x64 int32 = 256 KiB
TINY = ["--in-channels", "3", "--out-channels", "4", "--size", "12", "--kernel-size", "3",
        "--batch", "2", "--node", "numpy", "--quiet"]  # output 3.2 KB

FILL_DISK_BEFORE_WRITING = """
import errno, os, sys
from mpi4py import MPI
import parconv.mpi.outputs as outputs
import parconv.mpi.h5write as hdf5
original = outputs.write_output_temporary
def fill_then_write(comm, tmp, plan, result):
    if comm.Get_rank() == 0:  # another program fills the disk while parconv computes
        with open(os.path.join(os.path.dirname(tmp), "filler"), "wb", buffering=0) as handle:
            try:
                while True:
                    handle.write(b"x" * 1024)
            except OSError:
                pass
    comm.Barrier()
    return original(comm, tmp, plan, result)
outputs.write_output_temporary = fill_then_write
if os.environ.get("NO_RESERVE"):  # let HDF5 itself meet the full disk
    hdf5.reserve_space = lambda path: None
from parconv.run import main_or_abort
sys.exit(main_or_abort())
"""


def test_full_disk_is_refused_before_work(small_disk):
    code, _, stderr = run_cli([*BIG, "--output", str(small_disk / "out.h5")], n=2)
    lines = error_lines(stderr)
    assert code == 1 and len(lines) == 1 and "bytes free" in lines[0], stderr
    assert os.listdir(small_disk) == []


@pytest.mark.parametrize("reserve", [True, False])
def test_disk_full_while_writing_is_a_clean_error(small_disk, reserve):
    (small_disk / "out.h5").write_bytes(b"old output")
    code, _, stderr = run_cli([*TINY, "--output", str(small_disk / "out.h5")], n=2,
                              env={} if reserve else {"NO_RESERVE": "1"},
                              python_args=("-c", FILL_DISK_BEFORE_WRITING))
    lines = [line for line in error_lines(stderr) if line.startswith("parconv:")]
    assert code == 1, stderr  # not 11 (segmentation fault)
    assert len(lines) == 1 and "No space left on device" in lines[0], stderr
    if reserve:
        assert len(error_lines(stderr)) == 1, stderr
    os.remove(small_disk / "filler")
    assert snapshot(small_disk) == {"out.h5": b"old output"} and not leftovers(small_disk)


FILE_SIZE_LIMIT = """
import os, resource, sys
from mpi4py import MPI  # MPI starts first: its shared-memory files need more than the limit
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
if os.environ.get("NO_PRECHECK"):
    import parconv.paths as paths
    paths.check_space = lambda target, need: None
from parconv.run import main_or_abort
sys.exit(main_or_abort())
"""


@pytest.mark.parametrize("precheck", [True, False])
def test_file_size_limit(tmp_path, precheck):
    out = tmp_path / "out.h5"
    code, _, stderr = run_cli([*BIG, "--output", str(out)], n=2,
                              env={} if precheck else {"NO_PRECHECK": "1"},
                              python_args=("-c", FILE_SIZE_LIMIT))
    lines = error_lines(stderr)
    assert code == 1 and len(lines) == 1, stderr
    assert ("ulimit -f" if precheck else "File too large") in lines[0], lines
    assert not out.exists() and not leftovers(tmp_path)


def corrupt_chunked_file(path):
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("input", data=rng.standard_normal(LAYER.input_shape)
                              .astype(np.float32), chunks=(1, 3, 8, 7), compression="gzip")
        handle.create_dataset("weight", data=np.ones(LAYER.weight_shape, np.float32))
        info = handle["input"].id.get_chunk_info(0)
    with open(path, "r+b") as handle:
        handle.seek(info.byte_offset + 2)
        handle.write(b"\xff" * 16)


def test_corrupt_chunks_and_truncated_files_are_bad_input(tmp_path, capsys):
    corrupt = str(tmp_path / "corrupt.h5")
    corrupt_chunked_file(corrupt)
    code, _, stderr = run_cli(["--input", corrupt, "--node", "numpy", "--quiet"], n=2)
    lines = error_lines(stderr)
    assert code == 2 and len(lines) == 1 and "cannot be read" in lines[0], stderr
    truncated, _, _ = layer_file(tmp_path / "truncated.h5")
    with open(truncated, "r+b") as handle:
        handle.truncate(os.path.getsize(truncated) // 2)
    status, _, lines = run_main(["--input", truncated], capsys)
    assert_refused(status, lines, 2, "truncated.h5")


# ---- 2. attributes and dtypes of input files ---------------------------------------------------

@pytest.mark.parametrize("name, value, words", [
    ("stride", np.uint64(2**63), ["'stride'", "2147483647", "9223372036854775808"]),
    ("padding", np.array([1, 2**40], np.int64), ["'padding'", "1099511627776"]),
    ("dilation", np.int8(-1), ["'dilation'", "-1"]),
    ("stride", np.float64(2.0), ["'stride'", "integers"]),
])
def test_overflowing_attributes_are_refused_like_flags(tmp_path, capsys, name, value, words):
    path, _, _ = layer_file(tmp_path / "in.h5")
    with h5py.File(path, "r+") as handle:
        handle.attrs[name] = value
    status, _, lines = run_main(["--input", path], capsys)
    assert_refused(status, lines, 2, "in.h5", *words)


def test_overflowing_attribute_on_two_ranks(tmp_path):
    path, _, _ = layer_file(tmp_path / "in.h5")
    with h5py.File(path, "r+") as handle:
        handle.attrs["stride"] = np.uint64(2**63)
    code, _, stderr = run_cli(["--input", path, "--node", "numpy"], n=2)
    lines = error_lines(stderr)
    assert code == 2 and len(lines) == 1 and "'stride'" in lines[0], stderr


@pytest.mark.parametrize("stored", ["float16", ">f8", ">f4", ">i1", "<f4"])
def test_dtypes_and_byte_orders_are_read(tmp_path, capsys, stored):
    dtype = np.dtype(stored).newbyteorder("=").name
    spec = LAYER.replace(dtype_in=dtype, dtype_weight=dtype,
                         dtype_acc=spec_for_dtype(dtype, **_fields()).dtype_acc,
                         dtype_out=spec_for_dtype(dtype, **_fields()).dtype_out)
    rng = np.random.default_rng(2)
    x = rng.integers(-5, 5, spec.input_shape).astype(stored)
    w = rng.integers(-5, 5, spec.weight_shape).astype(stored)
    path, out = str(tmp_path / "in.h5"), str(tmp_path / "out.h5")
    with h5py.File(path, "w") as handle:
        handle.create_dataset("input", data=x)
        handle.create_dataset("weight", data=w)
        handle.attrs["padding"] = np.array([1, 1], np.dtype(">i8"))
        assert handle["input"].dtype == np.dtype(stored)
    status, _, lines = run_main(["--input", path, "--output", out, "--check"], capsys)
    assert status == 0, lines
    with h5py.File(out) as handle:
        result = handle["output"][...]
    expected = reference_conv2d(spec, x.astype(dtype), w.astype(dtype))
    np.testing.assert_allclose(result, expected, rtol=1e-3)


def _fields():
    return dict(batch=1, in_channels=1, out_channels=1, in_size=(3, 3), kernel_size=(1, 1))


def test_api_and_file_dtypes_agree(tmp_path, capsys):
    from parconv.spec import INPUT_DTYPES
    assert "float16" in INPUT_DTYPES
    for dtype in INPUT_DTYPES:
        spec_for_dtype(dtype, **_fields())  # the command line's types are the engine's
    path = str(tmp_path / "in.h5")
    with h5py.File(path, "w") as handle:
        handle.create_dataset("input", data=np.zeros((1, 1, 3, 3), np.int64))
        handle.create_dataset("weight", data=np.zeros((1, 1, 1, 1), np.int64))
    status, _, lines = run_main(["--input", path], capsys)
    assert_refused(status, lines, 2, "int64", ", ".join(INPUT_DTYPES))
    with pytest.raises(ParconvError, match=", ".join(INPUT_DTYPES)):
        spec_for_dtype("int64", **_fields())


# ---- 4. one rank failing alone, and interrupts during the write -----------------------------

RANK_FAILS_ALONE_OTHERS_BUSY = """
import os, sys, time
from mpi4py import MPI
import parconv.run as run
original = run._output_targets
def check(comm, args, spec):
    if MPI.COMM_WORLD.Get_rank() == int(os.environ["FAILING_RANK"]):
        raise RuntimeError("this rank alone fails")
    started = time.time()
    while time.time() - started < 60:  # busy, not waiting in MPI: hydra must SIGKILL it
        sum(range(1000))
    return original(comm, args, spec)
run._output_targets = check
sys.exit(run.main_or_abort())
"""


@pytest.mark.parametrize("failing_rank", [0, 2, 1])
def test_rank_failing_alone_ends_the_job_with_status_9(tmp_path, failing_rank):
    # with MPI_Abort(1) hydra's mpirun returned 1 or 9 at random here (9 when it had to kill a
    # busy rank); MPI_Abort(9) makes it 9 either way
    code, _, stderr = run_cli([*SMALL, "--quiet"], n=3,
                              env={"PARCONV_ERROR_GRACE_S": "1",
                                   "FAILING_RANK": str(failing_rank)},
                              python_args=("-c", RANK_FAILS_ALONE_OTHERS_BUSY))
    assert code == 9, stderr
    assert stderr.count(f"parconv: error: rank {failing_rank}: RuntimeError: this rank alone "
                        f"fails") == 1


PAUSE_IN_WRITE = """
import os, sys, time
from mpi4py import MPI
import parconv.mpi.h5write as hdf5
original = hdf5._write_in_turn
def paused(comm, tmp, boxes, piece):
    if comm.Get_rank() == 1:  # rank 0 has created the temporary file and waits for rank 1
        open(os.environ["MARKER"], "w").write(str(os.getppid()))
        time.sleep(60)
    return original(comm, tmp, boxes, piece)
hdf5._write_in_turn = paused
from parconv.run import main_or_abort
sys.exit(main_or_abort())
"""


def start_paused_write(tmp_path, output):
    marker = tmp_path / "marker"
    environment = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", MARKER=str(marker))
    mpirun = MPIRUN if os.path.exists(MPIRUN) else "mpirun"
    job = subprocess.Popen([mpirun, "-n", "2", sys.executable, "-c", PAUSE_IN_WRITE, *SMALL,
                            "--output", str(output), "--quiet"], env=environment, cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT
    while not (marker.exists() and [n for n in os.listdir(tmp_path) if paths.is_temporary(n)]):
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()
        time.sleep(0.1)
    return job, [n for n in os.listdir(tmp_path) if paths.is_temporary(n)][0]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_interrupt_during_the_write_leaves_no_temporary_file(tmp_path, signum):
    output = tmp_path / "out.h5"
    output.write_bytes(b"old output")
    job, _ = start_paused_write(tmp_path, output)
    job.send_signal(signum)
    _, stderr = job.communicate(timeout=TIMEOUT)
    assert job.returncode == 9, stderr
    assert f"interrupted by {signal.Signals(signum).name}" in stderr
    assert output.read_bytes() == b"old output"
    assert not leftovers(tmp_path), os.listdir(tmp_path)


def test_sigkill_during_the_write_is_cleaned_up_by_the_next_run(tmp_path, capsys):
    output = tmp_path / "out.h5"
    output.write_bytes(b"old output")
    job, temporary = start_paused_write(tmp_path, output)
    rank0 = int(temporary.split("-")[2])  # the pid in the temporary name is rank 0's
    os.kill(rank0, signal.SIGKILL)
    job.communicate(timeout=TIMEOUT)
    assert job.returncode != 0
    assert output.read_bytes() == b"old output" and temporary in os.listdir(tmp_path)
    status, _, lines = run_main([*SMALL[:-2], "--output", str(output)], capsys)
    assert status == 0 and len(lines) == 1 and "removed" in lines[0] and temporary in lines[0]
    assert not leftovers(tmp_path)


# ---- 5. NaN and Inf in float inputs ---------------------------------------------------------

def test_check_compares_nan_for_nan_and_inf_for_inf(tmp_path, capsys):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(LAYER.input_shape).astype(np.float32)
    x[0, 0, 2, 3], x[1, 2, 5, 1], x[1, 1, 0, 0] = np.nan, np.inf, -np.inf
    w = rng.standard_normal(LAYER.weight_shape).astype(np.float32)
    path = str(tmp_path / "in.h5")
    write_layer_file(path, LAYER, x, w)
    status, _, lines = run_main(["--input", path, "--check", "--grid", "1x1x1x1x1"], capsys)
    assert status == 0, lines
