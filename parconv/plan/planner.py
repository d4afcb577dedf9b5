"""The plan of a distributed convolution: grid, every rank's blocks, predicted bytes, the bound.

Pure data, no MPI: a plan takes rank numbers, never communicators, so one serial test can check
every rank of a grid with thousands of ranks.  ``make_plan`` enumerates the ordered factorisations
of P (and of P - i for a few idle ranks i) into P_N x P_K x P_C x P_H x P_W, predicts each grid's
per-rank bytes exactly (parconv.plan.predict) for each way of owning the input rows and columns
(aligned or centred, parconv.plan.blocks.OWNERSHIPS, per split axis), drops grids whose blocks do
not fit in the per-rank memory and keeps the grid and ownership whose busiest rank moves the fewest
bound-comparable bytes (theory.md section 5).

Command line: ``python -m parconv.plan --help`` (parconv.plan.cli).
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..bounds import parallel_bounds
from ..errors import ParconvError
from ..spec import ConvSpec
from .blocks import OWNERSHIPS
from .dims import AXES, GridDims, dimension_caps, factorizations, validate_grid
from .footprint import node_name
from .predict import PHASES, mean_volume_lower_bound, owned_piece_sizes, predict_grid
from .result import BOUND_PHASES, Plan
from .schedule import RankSchedule

__all__ = ["make_plan", "Plan", "RankSchedule", "GridDims", "PHASES", "BOUND_PHASES",
           "DEFAULT_MEMORY"]

#: per-rank memory assumed when none is given (bytes)
DEFAULT_MEMORY = 1 << 30
#: the largest per-rank memory accepted (bytes): footprints stay exact in int64
MAX_MEMORY = 1 << 60
#: the grids peers use, each a function of P
BASELINES = {"batch": lambda P: [(P, 1, 1, 1, 1)],
             "output-channel": lambda P: [(1, P, 1, 1, 1)],
             "input-channel": lambda P: [(1, 1, P, 1, 1)],
             "spatial": lambda P: [(1, 1, 1, h, P // h) for h in range(1, P + 1) if P % h == 0]}


def parse_memory(value) -> int:
    """Bytes from an int or a string such as ``64MiB``, ``2GB``, ``1e9``."""
    if value is None:
        return DEFAULT_MEMORY
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        amount = int(value)
    else:
        text = str(value).strip()
        units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
                 "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "b": 1, "": 1}
        number = text.rstrip("KMGTBkmgtbiI")
        unit = text[len(number):].lower()
        try:
            scaled = float(number) * units[unit]
            if not math.isfinite(scaled):
                raise ValueError(scaled)
            amount = int(scaled)
        except (ValueError, KeyError, OverflowError):
            raise ParconvError(f"--memory must be a finite number of bytes such as 1073741824, "
                               f"512MiB or 2GB, got {value!r}") from None
    if amount < 1:
        raise ParconvError(f"--memory must be positive, got {value!r}")
    if amount > MAX_MEMORY:
        raise ParconvError(f"--memory must be at most {MAX_MEMORY} bytes (1 EiB), got {value!r}")
    return amount


def _max_work(spec: ConvSpec, grids: np.ndarray) -> np.ndarray:
    """Iterations of the busiest rank of each grid (the product of the largest blocks)."""
    caps = np.array(dimension_caps(spec), dtype=np.int64)
    R, S = spec.kernel_size
    return np.prod(-(-caps // grids), axis=1) * R * S


def _candidates(spec: ConvSpec, P: int, max_idle: int) -> np.ndarray:
    """Grids using all P ranks, plus grids leaving up to ``max_idle`` ranks idle that give their
    busiest rank no more work than the best full grid does: idling ranks always shrinks the
    bytes moved, so it may only be chosen when it costs no compute (theory.md section 5).
    A layer too small for P ranks runs on the largest number of ranks its dimensions allow."""
    caps = dimension_caps(spec)
    full = np.array(factorizations(P, caps), dtype=np.int64).reshape(-1, 5)
    idle = np.array([g for used in range(P - 1, max(P - max_idle, 1) - 1, -1)
                     for g in factorizations(used, caps)], dtype=np.int64).reshape(-1, 5)
    if len(full) and len(idle):
        idle = idle[_max_work(spec, idle) <= _max_work(spec, full).min()]
    used = min(P, int(np.prod(caps)))
    while not len(full) and not len(idle):
        idle = np.array(factorizations(used, caps), dtype=np.int64).reshape(-1, 5)
        used -= 1
    if not len(full):
        # no grid uses all P ranks: keep as many busy as the least-loaded busiest rank allows,
        # so the plan does not move fewer bytes than the problem's bound only by owning
        # everything on fewer ranks
        idle = idle[_max_work(spec, idle) <= _max_work(spec, idle).min()]
    return np.concatenate([full, idle])


def _ownerships(dims, ownership) -> list[tuple[str, str]]:
    """The (H, W) ownerships to evaluate for grid ``dims``: ``ownership`` itself when it is a
    pair; for "auto" every combination on the split axes (an axis in one block owns all of it
    either way), aligned first so that it wins ties."""
    if ownership != "auto":
        return [tuple(ownership)]
    ways = [OWNERSHIPS if int(dims[axis]) > 1 else OWNERSHIPS[:1] for axis in (3, 4)]
    return [(h, w) for h in ways[0] for w in ways[1]]


def _best_grid(spec, grids: np.ndarray, memory: int, node="numpy", ranks: int | None = None,
               ownership="auto"):
    """Exact evaluation in increasing order of the mean-volume lower bound, with early stop;
    each grid with every ownership of `_ownerships`.

    Returns (best prediction or None, grids evaluated, smallest footprint seen)."""
    lower = mean_volume_lower_bound(spec, grids)
    order = np.lexsort((-grids.prod(axis=1), lower))
    best, best_key, evaluated, smallest = None, None, 0, None
    for i in order:
        if best is not None and lower[i] > best_key[0]:
            break
        dims = tuple(int(v) for v in grids[i])
        evaluated += 1
        for way in _ownerships(dims, ownership):
            pred = predict_grid(spec, dims, node, ranks, way,
                                stop_above=None if best is None else best_key[0])
            if pred is None:   # moves more than the best even before its balance phase
                continue
            need = int(pred.footprint.max())
            smallest = need if smallest is None else min(smallest, need)
            if need > memory:
                continue
            vol = pred.bound_volume
            key = (int(vol.max()), int(vol.sum()), -int(grids[i].prod()))
            if best is None or key < best_key:
                best, best_key = pred, key
    return best, evaluated, smallest


def parse_ownership(value) -> str | tuple[str, str]:
    """"auto", or the (H, W) pair of ownerships from "aligned", "centred" (both axes) or
    "aligned,centred" / a pair (H then W)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return "auto"
    if isinstance(value, str):
        parts = [v.strip().lower() for v in value.split(",")]
    elif isinstance(value, (tuple, list)):
        parts = [str(v).lower() for v in value]
    else:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or any(v not in OWNERSHIPS for v in parts):
        raise ParconvError(f"ownership must be auto, one of {', '.join(OWNERSHIPS)} or an H,W "
                           f"pair of them, got {value!r}")
    return tuple(parts)


def _baselines(spec: ConvSpec, P: int, memory: int, node="numpy") -> dict:
    caps = dimension_caps(spec)
    out = {}
    for name, make in BASELINES.items():
        grids = np.array([g for g in make(P) if all(f <= cap for f, cap in zip(g, caps))],
                         dtype=np.int64).reshape(-1, 5)
        best = _best_grid(spec, grids, memory, node, P)[0] if len(grids) else None
        out[name] = None if best is None else {
            "grid": dict(zip(AXES, (int(v) for v in best.dims))), "max_volume": best.max_volume}
    return out


def make_plan(spec: ConvSpec, P: int, memory=None, grid=None, max_idle: int = 3,
              node="numpy", ownership="auto") -> Plan:
    """Choose the grid for ``spec`` on ``P`` ranks and predict every rank's bytes.  Pure.

    Parameters
    ----------
    spec : ConvSpec
    P : int
        Number of ranks (processes).
    memory : int or str, optional
        Bytes per rank for the footprint check (every rank's `Footprint` total must fit: what
        it really allocates, parconv.plan.footprint) and the memory-dependent bound (default
        1 GiB).
    grid : None, 'auto', GridDims, 5-tuple or "NxKxCxHxW", optional
        Force a grid instead of choosing one; it must multiply to ``P`` and fit every dimension.
    max_idle : int
        The automatic choice also considers leaving up to this many ranks idle.
    node : str or kernel object
        The node kernel whose workspace the footprint counts (parconv.plan.footprint;
        "numpy" or "gemmini", other objects are budgeted as "numpy").
    ownership : "auto", "aligned", "centred", "H,W" string or (H, W) pair
        How the input rows and columns are owned (parconv.plan.blocks.OWNERSHIPS); "auto"
        (default) evaluates every grid with each ownership of its split axes and keeps the one
        whose busiest rank moves the fewest bytes.

    Raises
    ------
    ParconvError
        P < 1, a bad forced grid or ownership, or no grid whose blocks fit in ``memory``.
    """
    started = time.perf_counter()
    if isinstance(P, bool) or not isinstance(P, (int, np.integer)) or P < 1:
        raise ParconvError(f"the number of processes P must be an integer >= 1, got {P!r}")
    P, memory, ownership = int(P), parse_memory(memory), parse_ownership(ownership)
    forced = grid is not None and not (isinstance(grid, str) and grid.lower() == "auto")
    if forced:
        dims = GridDims.parse(grid)
        validate_grid(dims, spec, P)
        grids = np.array([dims.as_tuple()], dtype=np.int64)
    else:
        grids = _candidates(spec, P, max_idle)
    best, evaluated, smallest = _best_grid(spec, grids, memory, node, P, ownership)
    if best is None:
        what = f"grid {dims}" if forced else "any grid"
        raise ParconvError(f"memory too small: {what} needs at least {smallest} bytes per rank "
                           f"(its blocks, exchange buffers and kernel workspace), but --memory "
                           f"is {memory} bytes")
    bound = parallel_bounds(spec, P, memory)  # the problem's bound: balanced shares
    layout_bound = parallel_bounds(spec, P, memory, owned=best.owned)
    dims = GridDims(*best.dims)
    baselines = _baselines(spec, P, memory, node)
    owned = owned_piece_sizes(spec, dims.as_tuple(), best.ownership)
    plan = Plan(spec=spec, ranks=P, dims=dims, memory=memory, prediction=best, bound=bound,
                baselines=baselines, forced=forced, grids_evaluated=evaluated,
                planning_time_s=time.perf_counter() - started, owned_elements=owned,
                node=node_name(node), layout_bound=layout_bound, ownership=best.ownership)
    plan.predicted_gather   # made with the plan: the audit only compares (scatter: on first use)
    return plan
