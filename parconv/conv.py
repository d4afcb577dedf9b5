"""distributed_conv2d: one convolution layer on an MPI communicator, every byte counted.

Wires the plan (parconv.plan, made once on the root and broadcast), the grid
(parconv.mpi.procgrid), the planned exchanges (parconv.mpi.exchange), one run of the layer with
overlap (parconv.mpi.pipeline) and the node kernel (parconv.nodes) into the grid algorithm of
theory.md section 5; `parconv.layer_run.LayerRun` then runs it, holds the counted bytes against
the plan's prediction (they must be equal on every rank and phase, and on every repeat) and the
measured volume against the lower bound (it may never be below).

Data: by default every rank reads or makes its part of the balanced initial layout through a data
source (``seed=`` or ``source=``, parconv.data) and the counted phases "balance" / "balance_bias"
(parconv.mpi.balance) hand every worker its work piece; after the layer "balance_out"
(parconv.mpi.balance_out) moves the surplus of every output piece larger than ceil(|O| / P) to
ranks with room.  So the run is held against the problem's bound (every rank, idle ones included,
owning at most ceil(|A_j| / P) of each array at the start and of the output at the end).  Global
arrays on a root (``x, w, bias``) are scattered as that initial layout and balanced the same way.
Per-rank ``blocks`` are work pieces already: no balance phase runs, each rank keeps its output
piece, and the run is held against the bound of that layout (``plan.layout_bound``).  Nothing
is gathered unless ``gather=True``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import numpy as np

from .blas import warm_up
from .data import SeededLayer
from .errors import ParconvError, ParconvRuntimeError
from .layer_run import (MIN_CHUNK_BUDGET, ONCE, SPLITTABLE_KERNELS, ConvResult, LayerRun,
                        peak_rss_bytes)
from .mpi import distribute
from .mpi.agree import collectively, patient_allgather_flags, patient_bcast
from .mpi.balance import BalanceExchange
from .mpi.balance_out import OutputBalanceExchange
from .mpi.exchange import LayerExchange, LayerTypes
from .mpi.node_setup import share_node_setup
from .mpi.pipeline import KernelChunks
from .mpi.procgrid import ProcGrid
from .nodes import get_kernel
from .plan import Plan, make_plan
from .spec import ConvSpec

def shared_plan(comm, spec, memory=None, grid=None, root: int = 0, node="numpy",
                ownership="auto") -> Plan:
    """The plan for ``spec`` on ``comm``: made on ``root`` alone and broadcast (it is pure
    data), so the other ranks never search grids or solve bounds.  Collective over ``comm``.

    ``node`` (a name or kernel object) chooses the footprint model the memory is checked with;
    ``ownership`` is make_plan's (input rows and columns aligned, centred or auto).
    Raises the root's ParconvError (bad grid, memory too small) on every rank."""
    made, problem = None, None
    if comm.Get_rank() == root:
        try:
            made = make_plan(spec, comm.Get_size(), memory=memory, grid=grid, node=node,
                             ownership=ownership)
        except ParconvError as exc:
            problem = ("input", str(exc))
        except Exception as exc:  # noqa: BLE001 - every rank must learn of it
            problem = ("runtime", f"planning failed: {type(exc).__name__}: {exc}")
    # meta: the plan is pure data; the other ranks sleep while the root plans
    made, problem = patient_bcast(comm, (made, problem), root=root)
    if problem is not None:
        raise (ParconvError if problem[0] == "input" else ParconvRuntimeError)(problem[1])
    return made


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


@dataclasses.dataclass
class _Data:
    """Where the data comes from: ``mode`` "source", "blocks" or "root" (global arrays)."""

    mode: str
    source: object = None
    pieces: list | None = None
    globals_: tuple = (None, None, None)


def _validate_call(comm, spec, root, blocks, source, seed, repeat) -> tuple:
    """Checks every rank makes alike; the data mode flags agreed over ``comm``."""
    flags = patient_allgather_flags(comm, (blocks is not None, source is not None,
                                           seed is not None))
    with collectively(comm):
        if not isinstance(spec, ConvSpec):
            raise ParconvError(f"spec must be a ConvSpec, got {type(spec).__name__}")
        size = comm.Get_size()
        if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or \
                not 0 <= root < size:
            raise ParconvError(f"root must be a rank in [0, {size}), got {root!r}")
        if isinstance(repeat, bool) or not isinstance(repeat, (int, np.integer)) or repeat < 1:
            raise ParconvError(f"repeat must be an integer >= 1, got {repeat!r}")
        if len(set(flags)) != 1:
            raise ParconvError("blocks, source and seed must be given on every rank or on none")
        if flags[0][1] and flags[0][2]:
            raise ParconvError("give either source or seed, not both")
    return flags[0]


def _plan_and_kernel(comm, spec, plan, grid, memory, root, node):
    """The plan (made on the root, or the one given, checked) and the kernel object, with one
    agreement.  Collective over ``comm``."""
    given = plan is not None
    if not given:
        plan = shared_plan(comm, spec, memory, grid, root, node)
    with collectively(comm):
        if given and (grid is not None or memory is not None):
            raise ParconvError("give either plan or grid/memory, not both")
        if given and (plan.spec != spec or plan.ranks != comm.Get_size()):
            raise ParconvError(f"plan is for {plan.ranks} ranks and {plan.spec.describe()}; "
                               f"the run has {comm.Get_size()} ranks and {spec.describe()}")
        kernel = _kernel_object(node)
    return plan, kernel


def _kernel_object(node):
    """A node kernel object from a name or an object with ``run``.  Local."""
    if isinstance(node, str):
        return get_kernel(node)
    if not callable(getattr(node, "run", None)):
        raise ParconvError(f"node must be a kernel name or an object with run(), got {node!r}")
    return node


def _checked_blocks(plan, local, blocks) -> list | None:
    """This rank's pieces as typed flat arrays, checked against the plan.  Local."""
    spec = plan.spec
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
        pieces.append(_checked_global(f"blocks.{field} of rank {local.rank}",
                                      None if value is None else np.asarray(value).reshape(-1),
                                      (count,), dtype))
    return pieces


def _data(comm, plan, local, flags, x, w, bias, blocks, source, seed, root) -> _Data:
    """The validated data of this rank, or a ParconvError (local: the caller agrees)."""
    spec, rank = plan.spec, comm.Get_rank()
    use_blocks, use_source, use_seed = flags
    given = any(v is not None for v in (x, w, bias))
    if (use_blocks or use_source or use_seed) and rank == root and given:
        raise ParconvError("give either the global arrays x, w, bias or blocks / source / "
                           "seed, not both")
    if use_seed:
        source = SeededLayer(spec, seed)
    if use_blocks:
        data = _Data("blocks", source, _checked_blocks(plan, local, blocks))
    elif source is not None:
        if not callable(getattr(source, "read", None)):
            raise ParconvError(f"source must have read(name, boxes), got {source!r}")
        data = _Data("source", source, None)   # the balance phase makes the pieces
    else:
        globals_ = (None, None, None)
        if rank == root:
            globals_ = (_checked_global("x", x, spec.input_shape, spec.dtype_in),
                        _checked_global("w", w, spec.weight_shape, spec.dtype_weight), None)
            if spec.bias:
                globals_ = globals_[:2] + (_checked_global("bias", bias, (spec.out_channels,),
                                                           spec.dtype_acc),)
            elif bias is not None:
                raise ParconvError("bias given but spec.bias is False")
        data = _Data("root", None, None, globals_)
    return data


def distributed_conv2d(comm, spec: ConvSpec, *, x=None, w=None, bias=None, blocks=None,
                       source=None, seed=None, plan: Plan | None = None, grid=None, memory=None,
                       node="numpy", gather: bool = False, root: int = 0, check: bool = False,
                       repeat: int = 1, overlap: bool = True) -> ConvResult:
    """Run one convolution layer on ``comm`` with the grid algorithm; count and verify bytes.

    Collective over ``comm`` (which is duplicated, never used directly for data).

    Parameters
    ----------
    comm : mpi4py communicator
    spec : ConvSpec
        The layer (same on every rank).
    seed : int, optional
        Every rank makes its own pieces of the seeded data (parconv.data): the same values for
        every P and grid; nothing is scattered.  Or:
    source : object with ``read(name, boxes)``, optional
        Every rank reads its own pieces from it (e.g. parconv.mpi.hdf5.FileLayer).  Or:
    blocks : OwnedBlocks, optional
        This rank's owned pieces, on every rank (a ``source`` may come along for ``check``).  Or:
    x, w, bias : ndarray, optional
        Global input (N, C, H_in, W_in), filters (K, C, R, S) and bias (K,) (dtype_acc), on the
        root only; scattered in the counted phase "scatter".
    plan : Plan, optional
        A plan for ``spec`` on ``comm.Get_size()`` ranks; otherwise ``make_plan(spec, P,
        memory, grid)`` on the root, broadcast.
    node : str or kernel object
        "numpy", "gemmini" or any object with ``run(spec, x, w) -> (y, stats)``.
    gather : bool
        Assemble the whole output on the root (phase "gather") and return it.
    check : bool
        Compare the output with a serial reference (exact for integers, see
        `audit.tolerance`): with a source (or seed) every rank recomputes its own piece, nothing
        is gathered; with global arrays on the root the output is gathered there.
    repeat : int
        Run the layer this many times on the same planned exchanges; the report's ``time_s``
        holds the median per phase and ``time_s_all`` every repeat.
    overlap : bool
        Start the exchanges early and run the kernel on the interior while halos travel.

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
    once = dict.fromkeys(ONCE, 0.0)
    started = time.perf_counter()
    flags = _validate_call(comm, spec, root, blocks, source, seed, repeat)
    plan, kernel = _plan_and_kernel(comm, spec, plan, grid, memory, root, node)
    # BLAS packing buffers (and MKL's int8 GEMM for int8 layers): the runtime, not the layer
    warm_up(int8=np.dtype(spec.dtype_in) == np.int8)
    baseline = peak_rss_bytes()   # after the imports planning needs (scipy on the root)
    once["plan"] = time.perf_counter() - started
    started = time.perf_counter()
    with ProcGrid(comm, plan.dims) as proc_grid, contextlib.ExitStack() as stack:
        local = plan.schedule(comm.Get_rank())
        exchange, chunks = None, None

        def planned_exchange():
            if local is None:
                return None, None
            made = stack.enter_context(LayerExchange(proc_grid, local, LayerTypes.of(spec)))
            split = getattr(kernel, "name", None) in SPLITTABLE_KERNELS
            return made, KernelChunks(spec, local, split, max(MIN_CHUNK_BUDGET, made.nbytes // 2))

        balancer, finisher = None, None
        with collectively(comm):   # one agreement for the data and the exchanges (no root)
            data = _data(comm, plan, local, flags, x, w, bias, blocks, source, seed, root)
            if data.mode != "blocks":
                balancer = BalanceExchange(proc_grid.world, plan, comm.Get_rank())
                finisher = OutputBalanceExchange(proc_grid.world, plan, comm.Get_rank())
            if data.mode == "source":
                balancer.load_source(data.source)   # exactly this rank's initial layout
            exchange, chunks = planned_exchange()
        share_node_setup(comm, kernel, local.local_spec if local is not None else None)
        if data.mode == "root":
            scatter_start = time.perf_counter()
            values = distribute.scatter_initial(proc_grid, plan, balancer.parts,
                                                *data.globals_, root)
            once["scatter"] = time.perf_counter() - scatter_start
            with collectively(comm):
                balancer.load(values)
        if balancer is not None:
            balance_start = time.perf_counter()
            data.pieces = balancer.run()
            once["balance"] = time.perf_counter() - balance_start
        once["setup"] = (time.perf_counter() - started - once["scatter"] - once["balance"])
        run = LayerRun(proc_grid, plan, local, kernel, data, root, baseline, once)
        return run.execute(exchange, chunks, repeat, overlap, gather, check, finisher)
