"""distributed_conv2d: one convolution layer on an MPI communicator, every byte counted.

Wires the plan (parconv.plan), the grid (parconv.mpi.procgrid), the exchanges (parconv.mpi.exchange) and the
node kernel (parconv.kernels) into the grid algorithm of theory.md section 5, then holds the
counted bytes against the plan's prediction (they must be equal on every rank and phase) and the
measured volume against the lower bound (it may never be below).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import numpy as np

from .audit import build_report, compare_with_reference, gather_counts, verify_bound, verify_counts
from .errors import ParconvError, ParconvRuntimeError
from .mpi import distribute, exchange
from .mpi.agree import collectively
from .mpi.procgrid import ProcGrid
from .nodes import get_kernel
from .plan import Plan, make_plan
from .spec import ConvSpec

#: phases timed, in order (the report's ``time_s``); "kernel" is the node kernel
TIMED = ("plan", "setup", "scatter", "filter", "bias", "input", "halo_h", "halo_w", "kernel",
         "reduce", "gather", "check")


@dataclasses.dataclass
class ConvResult:
    """What `distributed_conv2d` returns on every rank.

    output_piece : flat ndarray of dtype_out (None on idle ranks), this rank's owned output
    output_boxes : global (N, K, H, W) boxes the piece covers, in order
    output : the whole output on the root when ``gather=True`` (None elsewhere)
    plan : the Plan that ran
    report : the run report (design.md "Report (JSON)"), identical on every rank
    """

    output_piece: np.ndarray | None
    output_boxes: list
    output: np.ndarray | None
    plan: Plan
    report: dict


class _Timer:
    """Wall time per phase on this rank.  Local."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(TIMED, 0.0)

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start


def _prepare(comm, spec, plan, grid, memory, root, node, data, blocks):
    """The plan, the kernel object and the validated data sources, or the same ParconvError on
    every rank.  Collective over ``comm`` (two small agreements)."""
    use_blocks = comm.allgather(blocks is not None)  # meta: one flag per rank
    with collectively(comm):
        if len(set(use_blocks)) != 1:
            raise ParconvError("blocks must be given on every rank or on none")
        plan = _local_plan(comm.Get_size(), spec, plan, grid, memory, root)
        kernel = _kernel_object(node)
        globals_, pieces = _local_sources(comm.Get_rank(), plan, *data,
                                          blocks if use_blocks[0] else None, root)
    return plan, kernel, (globals_, pieces, use_blocks[0])


def _local_plan(size: int, spec, plan, grid, memory, root) -> Plan:
    """The plan for ``size`` ranks (made, or checked when given).  Local."""
    if not isinstance(spec, ConvSpec):
        raise ParconvError(f"spec must be a ConvSpec, got {type(spec).__name__}")
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or not 0 <= root < size:
        raise ParconvError(f"root must be a rank in [0, {size}), got {root!r}")
    if plan is None:
        return make_plan(spec, size, memory=memory, grid=grid)
    if grid is not None or memory is not None:
        raise ParconvError("give either plan or grid/memory, not both")
    if plan.spec != spec or plan.ranks != size:
        raise ParconvError(f"plan is for {plan.ranks} ranks and {plan.spec.describe()}; "
                           f"the run has {size} ranks and {spec.describe()}")
    return plan


def _kernel_object(node):
    """A node kernel object from a name or an object with ``run``.  Local."""
    if isinstance(node, str):
        return get_kernel(node)
    if not callable(getattr(node, "run", None)):
        raise ParconvError(f"node must be a kernel name or an object with run(), got {node!r}")
    return node


def _checked_global(name: str, value, shape, dtype) -> np.ndarray:
    """A global array of the right shape, cast to ``dtype`` when that is safe.  Local."""
    if value is None:
        raise ParconvError(f"{name} is required on the root (shape {tuple(shape)})")
    value = np.asarray(value)
    if value.shape != tuple(shape):
        raise ParconvError(f"{name} must have shape {tuple(shape)}, got {value.shape}")
    if value.dtype != np.dtype(dtype):
        if not np.can_cast(value.dtype, dtype, casting="safe"):
            raise ParconvError(f"{name} must be {dtype} (or safely castable), got {value.dtype}")
        value = value.astype(dtype)
    return np.ascontiguousarray(value)


def _local_sources(rank: int, plan, x, w, bias, blocks, root: int):
    """The validated global (x, w, bias) on the root (None elsewhere) and this rank's pieces
    [input, filter, bias] when ``blocks`` are given and the rank is active (else None).  Local."""
    spec = plan.spec
    if blocks is not None:
        if rank == root and x is not None:
            raise ParconvError("give either blocks or the global arrays x, w, bias, not both")
        return (None, None, None), _checked_blocks(plan, rank, blocks)
    if rank == root:
        x = _checked_global("x", x, spec.input_shape, spec.dtype_in)
        w = _checked_global("w", w, spec.weight_shape, spec.dtype_weight)
        if spec.bias:
            bias = _checked_global("bias", bias, (spec.out_channels,), spec.dtype_acc)
        elif bias is not None:
            raise ParconvError("bias given but spec.bias is False")
    return (x, w, bias), None


def _checked_blocks(plan, rank: int, blocks) -> list | None:
    """This rank's pieces as typed flat arrays, checked against the plan.  Local."""
    local, spec = plan.schedule(rank), plan.spec
    if local is None:
        return None
    bias_range = local.bias_piece_range()
    expected = [("input_piece", spec.dtype_in, local.input_piece_boxes()),
                ("filter_piece", spec.dtype_weight, local.filter_piece_boxes()),
                ("bias_piece", spec.dtype_acc, [] if bias_range is None else [(bias_range,)])]
    pieces = []
    for field, dtype, boxes in expected:
        value = getattr(blocks, field)
        count = sum(int(np.prod([hi - lo for lo, hi in box])) for box in boxes)
        if value is None and count == 0:
            value = np.zeros(0, dtype=dtype)
        pieces.append(_checked_global(f"blocks.{field} of rank {rank}",
                                      None if value is None else np.asarray(value).reshape(-1),
                                      (count,), dtype))
    return pieces


def _local_step(grid, local, pieces, timer):
    """Phases 1-4 on an active rank: gathers, halos, node kernel (+ bias on c == 0)."""
    with timer("filter"):
        filters = exchange.allgather_filter(grid, local, pieces[1])
    with timer("bias"):
        bias = exchange.allgather_bias(grid, local, pieces[2])
    with timer("input"):
        buffer = exchange.allgather_input(grid, local, pieces[0])
    with timer("halo_h"):
        exchange.exchange_halo_rows(grid, local, buffer)
    with timer("halo_w"):
        exchange.exchange_halo_cols(grid, local, buffer)
    return filters, bias, buffer


def _run_kernel(spec, local, kernel, filters, bias, buffer):
    """The node kernel on the span of the buffer; zeros when the block reads only padding."""
    if local.local_spec is None:
        partial = np.zeros(local.output_block, dtype=spec.dtype_acc)
        stats = {"kernel": getattr(kernel, "name", type(kernel).__name__), "macs": 0}
    else:
        rows = slice(local.rows_span[0] - local.rows_buf[0], local.rows_span[1] - local.rows_buf[0])
        cols = slice(local.cols_span[0] - local.cols_buf[0], local.cols_span[1] - local.cols_buf[0])
        window = np.ascontiguousarray(buffer[:, :, rows, cols])
        partial, stats = kernel.run(local.local_spec, window, filters)
        partial = np.asarray(partial)
        if partial.shape != tuple(local.output_block) or partial.dtype != np.dtype(spec.dtype_acc):
            raise ParconvRuntimeError(
                f"node kernel returned {partial.dtype} {partial.shape}, expected "
                f"{spec.dtype_acc} {tuple(local.output_block)}")
    if bias is not None:
        partial = np.add(partial, bias.reshape(1, -1, 1, 1), dtype=spec.dtype_acc)
    return partial, stats


def _compute(grid, plan, pieces, kernel, timer):
    """Phases 1-5 (all ranks call it; idle ranks only join the kernel agreement)."""
    local, spec = plan.schedule(grid.rank), plan.spec
    partial, stats = None, None
    if local is not None:
        filters, bias, buffer = _local_step(grid, local, pieces, timer)
    with timer("kernel"), collectively(grid.world.comm):
        if local is not None:
            partial, stats = _run_kernel(spec, local, kernel, filters, bias, buffer)
    if local is None:
        return None, stats
    with timer("reduce"):
        piece = exchange.reduce_scatter_output(grid, local, partial)
    return piece.astype(spec.dtype_out), stats


def distributed_conv2d(comm, spec: ConvSpec, *, x=None, w=None, bias=None, blocks=None,
                       plan: Plan | None = None, grid=None, memory=None, node="numpy",
                       gather: bool = False, root: int = 0, check: bool = False) -> ConvResult:
    """Run one convolution layer on ``comm`` with the grid algorithm; count and verify bytes.

    Collective over ``comm`` (which is duplicated, never used directly for data).

    Parameters
    ----------
    comm : mpi4py communicator
    spec : ConvSpec
        The layer (same on every rank).
    x, w, bias : ndarray, optional
        Global input (N, C, H_in, W_in), filters (K, C, R, S) and bias (K,) (dtype_acc), on the
        root only; scattered in the counted phase "scatter".  Alternatively:
    blocks : OwnedBlocks, optional
        This rank's owned pieces (e.g. from parconv.mpi.hdf5.read_owned_blocks), on every rank.
    plan : Plan, optional
        A plan for ``spec`` on ``comm.Get_size()`` ranks; otherwise ``make_plan(spec, P,
        memory, grid)``.
    node : str or kernel object
        "numpy", "gemmini" or any object with ``run(spec, x, w) -> (y, stats)``.
    gather : bool
        Assemble the whole output on the root (phase "gather") and return it.
    check : bool
        Compare the output with a serial reference on the root (exact for integers, see
        `conv_report.compare_with_reference` for the float tolerance).

    Returns
    -------
    ConvResult

    Raises
    ------
    ParconvError
        Bad input (same error on every rank).
    ParconvRuntimeError
        On every rank: a kernel failed somewhere, the counted bytes differ from the prediction,
        the measured volume is below the lower bound, or (``check``) the output is wrong; in the
        last case the exception carries the run report as ``.report``.
    """
    timer = _Timer()
    with timer("plan"):
        plan, kernel, sources = _prepare(comm, spec, plan, grid, memory, root, node,
                                         (x, w, bias), blocks)
    with timer("setup"):
        proc_grid = ProcGrid(comm, plan)
    with proc_grid:
        return _run(proc_grid, plan, kernel, sources, gather, root, check, timer)


def _run(grid, plan, kernel, sources, gather, root, check, timer) -> ConvResult:
    """Everything after the grid exists: distribute, compute, gather, check, verify, report."""
    globals_, pieces, from_blocks = sources
    performed = []
    if not from_blocks:
        performed.append("scatter")
        with timer("scatter"):
            pieces = distribute.scatter_owned(grid, *globals_, root)
    piece, stats = _compute(grid, plan, pieces, kernel, timer)
    output, verdict = None, None
    if gather or check:
        performed.append("gather")
        with timer("gather"):
            output = distribute.gather_output(grid, piece, root)
    if check:
        performed += ["check"] if from_blocks else []
        with timer("check"):
            verdict = compare_with_reference(grid, plan, globals_, pieces, output, root,
                                             from_blocks)
    counts = gather_counts(grid)
    report = build_report(grid, plan, counts, performed, stats, timer.seconds, verdict,
                          getattr(kernel, "combine", None))
    try:
        verify_counts(plan, counts, performed, root)
        verify_bound(plan, counts)
        if verdict is not None and not verdict["ok"]:
            raise ParconvRuntimeError(
                f"output differs from the serial reference: max abs error "
                f"{verdict['max_abs_err']} > tolerance {verdict['tolerance']}")
    except ParconvRuntimeError as error:
        error.report = report
        raise
    local = plan.schedule(grid.rank)
    boxes = local.output_piece_boxes() if local is not None else []
    return ConvResult(piece, boxes, output if gather else None, plan, report)
