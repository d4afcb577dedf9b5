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

import argparse
import math
import os
import sys
import time
import traceback

import numpy as np

from .cli import add_layer_arguments, list_layers, parse_pair, spec_from_args
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
from .spec import INPUT_DTYPES

DEFAULT_LAYER = "resnet50.layer3.0.conv2"
DEFAULT_BATCH = 8
DEFAULT_NODE = "gemmini"
FAIL_KERNEL_ENV = "PARCONV_FAIL_KERNEL_RANK"
ERROR_GRACE_ENV = "PARCONV_ERROR_GRACE_S"
DEBUG_ENV = "PARCONV_DEBUG"
SHAPE_FLAGS = ("in_channels", "out_channels", "size")
PROG = "python -m parconv.run"


class _EarlyExit(Exception):
    """--help or --list-layers: leave with this status, nothing else to do."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting (so every rank ends the same way) and prints
    help on rank 0 only."""

    def __init__(self, *args, rank: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rank = rank

    def error(self, message: str):
        raise ParconvError(f"{message} (see {PROG} --help)")

    def print_help(self, file=None) -> None:
        if self.rank == 0:
            super().print_help(file)

    def exit(self, status: int = 0, message: str | None = None):
        if message and self.rank == 0:
            sys.stderr.write(message)
        raise _EarlyExit(status)


def _set_help(parser: argparse.ArgumentParser, dest: str, text: str) -> None:
    for action in parser._actions:  # argparse has no public way to edit a shared flag's help
        if action.dest == dest:
            action.help = text


def build_parser(rank: int = 0) -> argparse.ArgumentParser:
    """The command line of ``python -m parconv.run`` (layer flags shared with parconv.plan)."""
    parser = _Parser(
        prog=PROG, rank=rank,
        description="Run one convolution layer on all MPI ranks: choose the processor grid from "
                    "the communication lower bound, distribute the data, exchange (counting "
                    "every byte), run each rank's block through the node kernel, reduce, and "
                    "report bytes against the prediction and the bound.",
        epilog=f"Example: mpirun -n 8 {PROG} --layer resnet50.layer2.0.conv2 --batch 4 "
               f"--node numpy --check.  Exit status: 0 ok, 2 bad input, 1 failure while running.")
    add_layer_arguments(parser)
    parser.set_defaults(dtype=None, batch=None)
    _set_help(parser, "layer", f"a catalogue layer (see --list-layers); default {DEFAULT_LAYER} "
              f"unless --input or --in-channels/--out-channels/--size describe another layer; "
              f"shape flags given as well override its fields")
    _set_help(parser, "batch", f"batch size N (default {DEFAULT_BATCH}, or the input file's)")
    for dest, what, fallback in (
            ("in_channels", "input channels C", ""), ("out_channels", "output channels K", ""),
            ("size", "input height and width in pixels, H or HxW", ""),
            ("kernel_size", "filter height and width, R or RxS", ", else 3"),
            ("stride", "stride, S or SxS", ", else 1"), ("padding", "zero padding, P or PxP",
                                                           ", else 0"),
            ("dilation", "dilation, D or DxD", ", else 1")):
        _set_help(parser, dest, f"{what} (default: the layer's{fallback})")
    _set_help(parser, "dtype", "element type of inputs and weights; int8 and int16 accumulate "
              "and output int32, int32 int64, float16 float32 (default int8, or the input "
              "file's type)")
    _set_help(parser, "bias", "add a random bias per output channel (int32 for int8); with "
              "--input the bias is used whenever the file has one")
    node = parser.add_argument_group("node and distribution")
    node.add_argument("--node", choices=("gemmini", "numpy"), default=DEFAULT_NODE,
                      help=f"node kernel: the Gemmini accelerator model or the numpy CPU kernel "
                           f"(default {DEFAULT_NODE})")
    node.add_argument("--grid", default="auto", metavar="auto|NxKxCxHxW",
                      help="processor grid; auto = chosen from the bound; a forced grid must "
                           "multiply to the number of ranks (default auto)")
    node.add_argument("--ownership", default="auto", metavar="auto|aligned|centred|H,W",
                      help="how the input rows and columns are owned: aligned with the output "
                           "blocks, or centred (cut in the middle of the rows two neighbours "
                           "both read); auto keeps whichever moves fewer bytes; 'aligned,centred' "
                           "gives H then W (default auto)")
    node.add_argument("--memory", metavar="BYTES", default="1GiB",
                      help="memory per rank for the planner and the memory-dependent bound; "
                           "plain bytes or with a unit: KB/MB/GB (10^3..) or KiB/MiB/GiB (2^10..) "
                           "(default 1GiB)")
    data = parser.add_argument_group("data and output")
    data.add_argument("--input", metavar="FILE.h5", help="read 'input' (N,C,H,W), 'weight' "
                      "(K,C,R,S) and optional 'bias' (K,) from HDF5; its stride/padding/"
                      "dilation attributes are used unless given as flags (default: random data)")
    data.add_argument("--output", metavar="FILE.h5",
                      help="write 'output' (N,K,H,W) to HDF5, atomically (default: not written)")
    data.add_argument("--report", metavar="FILE.json", help="write the JSON run report "
                      "(default: not written)")
    data.add_argument("--check", action="store_true",
                      help="every rank recomputes its own output piece with the serial kernel "
                           "from the data (seeded or the input file) and the ranks agree on the "
                           "largest error; nothing is gathered; mismatch = exit 1")
    data.add_argument("--gather", action="store_true",
                      help="also assemble the whole output on rank 0 (counted phase 'gather'; "
                           "default: the output stays distributed)")
    data.add_argument("--repeat", type=int, default=1, metavar="N",
                      help="run the layer N times on the same planned exchanges and report the "
                           "median time per phase (default 1)")
    data.add_argument("--no-overlap", action="store_true",
                      help="run every exchange to completion before the kernel (default: halos "
                           "travel while the kernel computes the interior of the block)")
    data.add_argument("--seed", type=int, default=0,
                      help="seed of the random data, >= 0 (default 0)")
    data.add_argument("--quiet", action="store_true",
                      help="print nothing but errors (no progress lines, no summary)")
    return parser


# ---- the layer ----------------------------------------------------------------------------------

def _file_fields(meta, args) -> dict:
    """Layer fields fixed by an input file; explicit flags that contradict them are errors."""
    (n, c, h, w), (k, _, r, s) = meta.input_shape, meta.weight_shape
    fields = {"batch": n, "in_channels": c, "out_channels": k, "in_size": (h, w),
              "kernel_size": (r, s)}
    given = {"batch": args.batch, "in_channels": args.in_channels,
             "out_channels": args.out_channels,
             "in_size": args.size and parse_pair(args.size, "size"),
             "kernel_size": args.kernel_size and parse_pair(args.kernel_size, "kernel-size")}
    for key, value in given.items():
        if value is not None and value != fields[key]:
            raise ParconvError(f"--{key.replace('_', '-').replace('in-size', 'size')} "
                               f"{value} disagrees with input file {meta.path} "
                               f"({key} = {fields[key]})")
    fields.update({name: meta.attributes[name] for name in ("stride", "padding", "dilation")
                   if name in meta.attributes})
    if not args.layer:
        fields["name"] = meta.name or os.path.splitext(os.path.basename(meta.path))[0]
    return fields


def _file_dtype(meta, args) -> str:
    if meta.input_dtype not in INPUT_DTYPES:
        raise ParconvError(f"input file {meta.path}: dataset 'input' has type "
                           f"{meta.input_dtype}; it must be one of {', '.join(INPUT_DTYPES)}")
    if args.dtype is not None and args.dtype != meta.input_dtype:
        raise ParconvError(f"--dtype {args.dtype} disagrees with input file {meta.path} "
                           f"('input' is {meta.input_dtype})")
    return meta.input_dtype


def build_spec(args, meta=None):
    """The ConvSpec from the flags and, if given, the input file's metadata.  Pure.

    Precedence: explicit flags > file attributes and shapes (shape flags must agree with the
    file) > the catalogue layer (``--layer``, or the default layer when nothing else describes
    one) > defaults.
    """
    args = argparse.Namespace(**vars(args))
    overrides = None
    if meta is not None:
        args.dtype = _file_dtype(meta, args)
        overrides = _file_fields(meta, args)
        if args.bias and meta.bias_shape is None:
            raise ParconvError(f"--bias given but input file {meta.path} has no dataset 'bias'")
        args.bias = args.bias or meta.bias_shape is not None
    elif not args.layer and all(getattr(args, f) is None for f in SHAPE_FLAGS):
        args.layer = DEFAULT_LAYER
    args.dtype = args.dtype or "int8"
    return spec_from_args(args, default_batch=DEFAULT_BATCH, overrides=overrides)


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
    except _EarlyExit as exc:
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
