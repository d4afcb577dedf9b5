"""``mpirun -n P python -m parconv.run [options]``: one distributed convolution, end to end.

With no options it runs the default layer (``resnet50.layer3.0.conv2``, batch 8, int8, the Gemmini
node model) on random seeded data, on the grid the bound analysis picks for P ranks, and prints
a summary on rank 0.  ``--help`` lists every option with its default and units.

Exit status: 0 on success, 2 for bad input (a ParconvError, including bad options and input
files that cannot be read: missing, truncated, corrupt chunks), 1 for a failure while running
(a rank's kernel, a full disk, a quota, ``ulimit -f``).  Every rank exits with the same status
and the error is printed once, as one line on stderr.  Errors that the engine agrees on
(errors.agree) end all ranks together.  An error seen by one rank alone while the others wait
elsewhere ends the job through ``MPI_Abort(9)`` after a grace period (``PARCONV_ERROR_GRACE_S``,
default 10 s); so do SIGINT and SIGTERM (which mpirun forwards to every rank), after rank 0
removed the temporary files it was writing.  9 is the status hydra's mpirun reports for the
ranks it kills with SIGKILL after an abort, so the job's status is 9 whichever rank aborted and
whether or not the others were still running (with any other code hydra returns that code or 9
at random); Open MPI's mpirun returns the abort code, 9 as well.  A rank killed by a signal is
noticed by the process manager (mpirun/hydra, srun), which ends the other ranks; the temporary
files it leaves are removed by the next run that writes to the same folder, which says so.

Test hook: ``PARCONV_FAIL_KERNEL_RANK=r`` makes the node kernel of world rank ``r`` raise, to test
that a failure inside one rank's kernel ends all ranks promptly (exit status 1).

This is the only module of parconv that touches ``MPI.COMM_WORLD``.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback

import numpy as np

from . import blas_mkl
from .cli import list_layers
from .conv import distributed_conv2d, shared_plan
from .errors import ParconvError, ParconvRuntimeError
from .mpi.agree import collectively
from .mpi.h5write import WRITE_FAILED
from .mpi.hdf5 import FileLayer, read_layer_meta
from .mpi.interrupts import ABORT_STATUS, abort_job, install_signal_handlers
from .mpi.outputs import prepare_outputs, write_outputs
from .nodes import get_kernel
from .provenance import git_revision
from .report import human_bytes, summary_table
from .run_args import EarlyExit, build_parser, build_spec

FAIL_KERNEL_ENV = "PARCONV_FAIL_KERNEL_RANK"
ERROR_GRACE_ENV = "PARCONV_ERROR_GRACE_S"
DEBUG_ENV = "PARCONV_DEBUG"


# ---- helpers of the run ------------------------------------------------------------------------

def _output_targets(comm, args, spec) -> dict:
    """Check --output/--report (paths, sizes, not the input) before any work.  Collective."""
    need = math.prod(spec.output_shape) * np.dtype(spec.dtype_out).itemsize
    return prepare_outputs(comm, {"--output": args.output, "--report": args.report},
                           {"--input": args.input}, {"--output": need})


class _FailingKernel:
    """Test hook (PARCONV_FAIL_KERNEL_RANK): a node kernel that raises on this rank."""

    def __init__(self, inner, rank: int) -> None:
        self.name, self.rank = getattr(inner, "name", "kernel"), rank

    def run(self, spec, x, w):
        raise RuntimeError(f"node kernel failure injected on rank {self.rank} by the test hook "
                           f"{FAIL_KERNEL_ENV}")


def _node_kernel(name: str, rank: int):
    try:
        kernel = get_kernel(name)
    except ImportError as exc:
        raise ParconvError(f"--node {name} is not available here ({exc}); use --node numpy") \
            from exc
    hook = os.environ.get(FAIL_KERNEL_ENV)
    if hook is not None and hook.strip() == str(rank):
        return _FailingKernel(kernel, rank)
    return kernel


def _plan_line(plan) -> str:
    bound, ratio = plan.bound, plan.ratio_to_bound
    ratio_text = "n/a (bound 0)" if ratio is None else f"{ratio:.3f}"
    return (f"plan: grid NxKxCxHxW = {plan.dims} ({plan.active} of {plan.ranks} ranks active, "
            f"input rows owned {plan.ownership[0]}, columns {plan.ownership[1]}), "
            f"busiest rank {human_bytes(plan.max_volume)}, bound {human_bytes(bound.value)} "
            f"({bound.binding}), ratio {ratio_text}")


def _execute(comm, args, argv, say) -> int:
    """Everything after option parsing.  Collective over `comm`."""
    rank, size = comm.Get_rank(), comm.Get_size()
    started = time.perf_counter()
    if args.seed < 0:
        raise ParconvError(f"--seed must be >= 0, got {args.seed}")
    if args.repeat < 1:
        raise ParconvError(f"--repeat must be >= 1, got {args.repeat}")
    blas_mkl.choice()       # a bad $PARCONV_BLAS is bad input, refused before any work
    meta = read_layer_meta(comm, args.input) if args.input else None
    spec = build_spec(args, meta)
    targets = _output_targets(comm, args, spec)
    say(f"MPI: {size} ranks, {_mpi_library()}")
    say(f"layer: {spec.describe()}")
    plan = shared_plan(comm, spec, memory=args.memory, grid=args.grid, node=args.node,
                       ownership=args.ownership)
    say(_plan_line(plan))
    kernel = _node_kernel(args.node, rank)
    if args.input:
        # every rank reads the hyperslabs of its balanced initial layout (parconv.mpi.balance)
        say(f"reading {args.input} (every rank its part of the balanced initial layout)")
        data = {"source": FileLayer(args.input, spec)}
    else:
        data = {"seed": args.seed}   # every rank makes its own pieces: nothing is scattered
    say(f"running on {size} rank{'s' if size > 1 else ''}, node kernel {args.node}"
        + (f", {args.repeat} times" if args.repeat > 1 else "")
        + (", then checking against the serial reference" if args.check else ""))
    result = distributed_conv2d(comm, spec, plan=plan, node=kernel, check=args.check,
                                gather=args.gather, repeat=args.repeat,
                                overlap=not args.no_overlap, **data)
    report = result.report
    check = report.get("check") or {}
    if args.check and not check.get("ok"):  # the engine raises first; this guards its contract
        raise ParconvRuntimeError(f"check failed: the output differs from the serial reference "
                                  f"(max abs error {check.get('max_abs_err')})")
    report["run"] = {"argv": list(argv), "node": args.node, "seed": args.seed,
                     "input": args.input, "output": args.output,
                     "wall_time_s": time.perf_counter() - started}
    with collectively(comm):
        if args.report and rank == 0:
            report["git_revision"] = git_revision()
    if targets:
        say(f"writing {' and '.join(t.path for t in targets.values())}")
        write_outputs(comm, targets, plan, result, report)
    if rank == 0 and not args.quiet:
        print(summary_table(report), flush=True)
    return 0


# ---- ending every rank the same way ------------------------------------------------------------

def _print_error(message: str) -> None:
    sys.stderr.write(f"parconv: error: {' '.join(str(message).split())}\n")
    sys.stderr.flush()


def _finish(errcomm, status: int, message: str | None) -> int:
    """Agree on the exit status of all ranks; print the error once.  Collective over `errcomm`.

    A rank that failed waits at most the grace period for the others; if they do not come (they
    are stuck waiting for it elsewhere) it prints its error and aborts the job.
    """
    statuses = np.zeros(errcomm.Get_size(), dtype=np.int32)
    request = errcomm.Iallgather(np.array([status], dtype=np.int32), statuses)
    if status == 0:
        request.Wait()
    else:
        deadline = time.monotonic() + float(os.environ.get(ERROR_GRACE_ENV, "10"))
        while not request.Test():
            if time.monotonic() > deadline:
                _print_error(f"rank {errcomm.Get_rank()}: {message} (other ranks did not "
                             f"respond; aborting the job, exit status {ABORT_STATUS})")
                abort_job(errcomm)
            time.sleep(0.005)
    failing = np.flatnonzero(statuses)
    if failing.size == 0:
        return 0
    if errcomm.Get_rank() == failing[0]:
        _print_error(message)
    return int(statuses[failing[0]])


def _mpi_library() -> str:
    """The first line of the MPI library's version string (which MPI this run uses)."""
    from mpi4py import MPI
    return " ".join(MPI.Get_library_version().splitlines()[0].split())


def main(argv=None) -> int:
    """Entry point of ``python -m parconv.run``; returns the exit status (same on every rank)."""
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    errcomm = world.Dup()
    rank = world.Get_rank()
    status, message = 0, None
    try:
        args = build_parser(rank).parse_args(argv)
        quiet = args.quiet

        def say(text: str) -> None:
            if rank == 0 and not quiet:
                print(f"parconv: {text}", flush=True)

        if args.list_layers:
            if rank == 0:
                print(list_layers())
        else:
            comm = world.Dup()
            status = _execute(comm, args, sys.argv[1:] if argv is None else argv, say)
            comm.Free()  # only on success: after a failure a peer may never reach a collective
    except EarlyExit as exc:
        status = exc.status
    except ParconvError as exc:
        status, message = 2, str(exc)
    except Exception as exc:  # noqa: BLE001 - every failure must end all ranks the same way
        status = 1
        message = str(exc) if isinstance(exc, ParconvRuntimeError) else \
            f"{type(exc).__name__}: {exc}"
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
    code = _finish(errcomm, status, message)
    errcomm.Free()
    return code


def main_or_abort() -> int:
    """`main` with the signal handlers of parconv.mpi.interrupts installed, and if anything
    escapes it (a failure while agreeing), abort the job like ``python -m mpi4py`` instead of
    leaving other ranks waiting."""
    from mpi4py import MPI
    install_signal_handlers(MPI.COMM_WORLD, _print_error)
    try:
        code = main()
    except BaseException:  # noqa: BLE001 - the last line of defence against a hung job
        traceback.print_exc()
        abort_job(MPI.COMM_WORLD)
        return ABORT_STATUS
    if WRITE_FAILED["hdf5"]:
        # the HDF5 library may crash closing a file whose write failed (a segmentation fault at
        # interpreter exit, seen with a full disk): finish MPI and leave without its atexit
        sys.stdout.flush()
        sys.stderr.flush()
        MPI.Finalize()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main_or_abort())
