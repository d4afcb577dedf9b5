"""The plan of a distributed convolution: grid, every rank's blocks, predicted bytes, the bound.

Pure data, no MPI: a plan takes rank numbers, never communicators, so one serial test can check
every rank of a grid with thousands of ranks.  ``make_plan`` enumerates the ordered factorisations
of P (and of P - i for a few idle ranks i) into P_N x P_K x P_C x P_H x P_W, predicts each grid's
per-rank bytes exactly (parconv.predict), drops grids whose blocks do not fit in the per-rank memory
and keeps the grid whose busiest rank moves the fewest bound-comparable bytes (theory.md section 5).

Command line: ``python -m parconv.plan --help`` (parconv.plan_cli).
"""

from __future__ import annotations

import dataclasses
import time
from functools import cached_property

import numpy as np

from .axis import axis_layout
from .blocks import block_range, flat_piece, flat_range_boxes
from .bounds import parallel_bounds
from .errors import ParconvError
from .grid import AXES, GridDims, dimension_caps, factorizations, validate_grid
from .predict import (PHASES, RECEIVED_BOUND_PHASES, GridPrediction, mean_volume_lower_bound,
                      owned_piece_sizes, predict_grid)
from .spec import ConvSpec

__all__ = ["make_plan", "Plan", "RankLocal", "GridDims", "PHASES", "BOUND_PHASES",
           "DEFAULT_MEMORY"]

#: per-rank memory assumed when none is given (bytes)
DEFAULT_MEMORY = 1 << 30
BOUND_PHASES = RECEIVED_BOUND_PHASES + ("reduce",)
#: the grids peers use, each a function of P
BASELINES = {"batch": lambda P: [(P, 1, 1, 1, 1)],
             "output-channel": lambda P: [(1, P, 1, 1, 1)],
             "input-channel": lambda P: [(1, 1, P, 1, 1)],
             "spatial": lambda P: [(1, 1, 1, h, P // h) for h in range(1, P + 1) if P % h == 0]}


def _offset(boxes, origin):
    return [tuple((lo + o, hi + o) for (lo, hi), o in zip(box, origin)) for box in boxes]


@dataclasses.dataclass(frozen=True)
class RankLocal:
    """Everything one rank holds and exchanges; see the module doc of parconv.axis for the terms.

    Ranges are half-open and global; pieces are flat (C-order) ranges within their block.
    """

    rank: int
    coords: tuple
    n: tuple
    k: tuple
    c: tuple
    h: tuple
    w: tuple
    rows_own: tuple
    cols_own: tuple
    rows_span: tuple
    cols_span: tuple
    rows_buf: tuple
    cols_buf: tuple
    rows_needed: np.ndarray
    cols_needed: np.ndarray
    rows_touched_own: np.ndarray
    cols_touched_own: np.ndarray
    local_spec: ConvSpec | None
    input_block: tuple
    input_pieces: list
    filter_block: tuple
    filter_pieces: list
    bias_pieces: list | None
    output_block: tuple
    output_pieces: list
    halo_h: list
    halo_w: list

    @property
    def input_piece(self) -> tuple[int, int]:
        return self.input_pieces[self.coords[1]]

    @property
    def filter_piece(self) -> tuple[int, int]:
        return self.filter_pieces[self._filter_index]

    @property
    def output_piece(self) -> tuple[int, int]:
        return self.output_pieces[self.coords[2]]

    def input_piece_boxes(self) -> list[tuple]:
        """Global (N, C, H_in, W_in) boxes of the input elements this rank owns at the start."""
        origin = (self.n[0], self.c[0], self.rows_own[0], self.cols_own[0])
        return _offset(flat_range_boxes(self.input_block, *self.input_piece), origin)

    def filter_piece_boxes(self) -> list[tuple]:
        """Global (K, C, R, S) boxes of the filter elements this rank owns at the start."""
        return _offset(flat_range_boxes(self.filter_block, *self.filter_piece),
                       (self.k[0], self.c[0], 0, 0))

    def bias_piece_range(self) -> tuple[int, int] | None:
        """Global range of the bias elements this rank owns, or None."""
        if self.bias_pieces is None:
            return None
        lo, hi = self.bias_pieces[self._filter_index]
        return (self.k[0] + lo, self.k[0] + hi)

    def output_piece_boxes(self) -> list[tuple]:
        """Global (N, K, H, W) boxes of the output elements this rank owns at the end."""
        return _offset(flat_range_boxes(self.output_block, *self.output_piece),
                       (self.n[0], self.k[0], self.h[0], self.w[0]))

    @property
    def _filter_index(self) -> int:
        a, _, _, d, e = self.coords
        PH, PW = len(self.halo_h), len(self.halo_w)
        return (a * PH + d) * PW + e


@dataclasses.dataclass(frozen=True)
class Plan:
    """A chosen grid with every rank's predicted bytes and the parallel lower bound."""

    spec: ConvSpec
    ranks: int
    dims: GridDims
    memory: int
    prediction: GridPrediction
    bound: object
    baselines: dict
    forced: bool
    grids_evaluated: int
    planning_time_s: float

    # ---- ranks ------------------------------------------------------------------------------
    @property
    def active(self) -> int:
        return self.dims.size

    def is_active(self, rank: int) -> bool:
        return 0 <= rank < self.active

    def coords(self, rank: int) -> tuple[int, int, int, int, int]:
        """Grid coordinates (a, b, c, d, e) of an active rank (row-major over N, K, C, H, W)."""
        if not self.is_active(rank):
            raise ParconvError(f"rank {rank} is idle in a plan with {self.active} active ranks")
        return tuple(int(v) for v in np.unravel_index(rank, self.dims.as_tuple()))

    def rank_of(self, coords) -> int:
        return int(np.ravel_multi_index(tuple(coords), self.dims.as_tuple()))

    def local(self, rank: int) -> RankLocal | None:
        """The blocks, pieces and exchange schedules of ``rank`` (None when idle)."""
        if not self.is_active(rank):
            return None
        return _rank_local(self.spec, self.dims, rank, self.coords(rank))

    # ---- predictions ------------------------------------------------------------------------
    def _pad(self, values: np.ndarray) -> np.ndarray:
        out = np.zeros(self.ranks, dtype=np.int64)
        out[:self.active] = values
        return out

    @cached_property
    def predicted(self) -> dict:
        """``predicted[phase][key]``: bytes sent / received and messages per rank (length P)."""
        return {phase: {key: self._pad(v) for key, v in self.prediction.phases[phase].items()}
                for phase in PHASES}

    @cached_property
    def predicted_bound_volume(self) -> np.ndarray:
        return self._pad(self.prediction.bound_volume)

    @property
    def max_volume(self) -> int:
        return int(self.predicted_bound_volume.max())

    @property
    def ratio_to_bound(self) -> float | None:
        """Largest bound-comparable volume over max(B_MI, B_MD); None when the bound is 0."""
        return self.max_volume / self.bound.value if self.bound.value > 0 else None

    def predict_scatter(self, root: int = 0) -> dict:
        """Bytes of handing every rank its owned input, filter and bias pieces from ``root``."""
        sizes = owned_piece_sizes(self.spec, self.dims.as_tuple())
        weights = {"input": self.spec.p_in, "filter": self.spec.p_weight,
                   "bias": self.spec.p_bias}
        return self._root_phase(root, {k: sizes[k] for k in weights}, weights, outward=True)

    def predict_gather(self, root: int = 0) -> dict:
        """Bytes of collecting every rank's owned output piece (stored type) on ``root``."""
        sizes = owned_piece_sizes(self.spec, self.dims.as_tuple())
        return self._root_phase(root, {"output": sizes["output"]},
                                {"output": self.spec.p_out}, outward=False)

    def _root_phase(self, root, sizes, weights, outward):
        """Root-to-all (``outward``) or all-to-root traffic: one message per peer and phase."""
        per_peer = sum(self._pad(elems) * weights[name] for name, elems in sizes.items())
        per_peer[root] = 0
        sent, received, messages = (np.zeros(self.ranks, dtype=np.int64) for _ in range(3))
        if outward:
            sent[root], received[:] = per_peer.sum(), per_peer
            messages[root] = np.count_nonzero(per_peer)
        else:
            received[root], sent[:] = per_peer.sum(), per_peer
            messages[:] = per_peer > 0
        return {"sent": sent, "received": received, "messages": messages}

    # ---- presentation -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready, with the run report's keys where they apply."""
        busiest = int(np.argmax(self.predicted_bound_volume))
        return {
            "spec": self.spec.to_dict(), "ranks": self.ranks, "active_ranks": self.active,
            "grid": self.dims.as_dict(), "grid_forced": self.forced, "memory": self.memory,
            "bound": self.bound.to_dict(),
            "predicted_bound_volume": self.predicted_bound_volume.tolist(),
            "max_volume": self.max_volume, "busiest_rank": busiest,
            "ratio_to_bound": self.ratio_to_bound,
            "predicted_bytes": {phase: {k: v.tolist() for k, v in d.items()}
                                for phase, d in self.predicted.items()},
            "footprint_max": int(self.prediction.footprint.max()),
            "owned_max": dict(zip(("input", "filter", "output"), self.prediction.owned)),
            "baselines": self.baselines,
            "grids_evaluated": self.grids_evaluated,
            "planning_time_s": self.planning_time_s,
        }

    def table(self) -> str:
        from .plan_text import plan_table
        return plan_table(self)


def _rank_local(spec: ConvSpec, dims: GridDims, rank: int, coords) -> RankLocal:
    a, b, c, d, e = coords
    PN, PK, PC, PH, PW = dims.as_tuple()
    hl, wl = axis_layout(spec, 0, PH), axis_layout(spec, 1, PW)
    n, k = block_range(spec.batch, PN, a), block_range(spec.out_channels, PK, b)
    cc = block_range(spec.in_channels, PC, c)
    nN, nK, nC = n[1] - n[0], k[1] - k[0], cc[1] - cc[0]
    h, w = hl.out(d), wl.out(e)
    rows_own, cols_own = hl.own(d), wl.own(e)
    rows_span, cols_span = hl.span(d), wl.span(e)
    R, S = spec.kernel_size
    local_spec = None
    if rows_span[1] > rows_span[0] and cols_span[1] > cols_span[0]:
        (pt, pb), (pl, pr) = hl.padding(d), wl.padding(e)
        local_spec = spec.replace(batch=nN, in_channels=nC, out_channels=nK,
                                  in_size=(rows_span[1] - rows_span[0],
                                           cols_span[1] - cols_span[0]),
                                  padding=(pt, pl), padding_end=(pb, pr), bias=False,
                                  name=f"{spec.name}@rank{rank}")
    input_block = (nN, nC, rows_own[1] - rows_own[0], cols_own[1] - cols_own[0])
    filter_block = (nK, nC, R, S)
    output_block = (nN, nK, h[1] - h[0], w[1] - w[0])
    group = PN * PH * PW
    bias_pieces = ([flat_piece(nK, group, i) for i in range(group)]
                   if spec.bias and c == 0 else None)
    return RankLocal(
        rank=rank, coords=tuple(coords), n=n, k=k, c=cc, h=h, w=w,
        rows_own=rows_own, cols_own=cols_own, rows_span=rows_span, cols_span=cols_span,
        rows_buf=hl.buf(d), cols_buf=wl.buf(e),
        rows_needed=hl.needed[d], cols_needed=wl.needed[e],
        rows_touched_own=hl.touched_own(d), cols_touched_own=wl.touched_own(e),
        local_spec=local_spec,
        input_block=input_block,
        input_pieces=[flat_piece(int(np.prod(input_block)), PK, i) for i in range(PK)],
        filter_block=filter_block,
        filter_pieces=[flat_piece(int(np.prod(filter_block)), group, i) for i in range(group)],
        bias_pieces=bias_pieces,
        output_block=output_block,
        output_pieces=[flat_piece(int(np.prod(output_block)), PC, i) for i in range(PC)],
        halo_h=hl.halo(d), halo_w=wl.halo(e))


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
            amount = int(float(number) * units[unit])
        except (ValueError, KeyError):
            raise ParconvError(f"--memory must be bytes such as 1073741824, 512MiB or 2GB, "
                               f"got {value!r}") from None
    if amount < 1:
        raise ParconvError(f"--memory must be positive, got {value!r}")
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
    return np.concatenate([full, idle])


def _best_grid(spec, grids: np.ndarray, memory: int):
    """Exact evaluation in increasing order of the mean-volume lower bound, with early stop.

    Returns (best prediction or None, grids evaluated, smallest footprint seen)."""
    lower = mean_volume_lower_bound(spec, grids)
    order = np.lexsort((-grids.prod(axis=1), lower))
    best, best_key, evaluated, smallest = None, None, 0, None
    for i in order:
        if best is not None and lower[i] > best_key[0]:
            break
        pred = predict_grid(spec, tuple(int(v) for v in grids[i]))
        evaluated += 1
        need = int(pred.footprint.max())
        smallest = need if smallest is None else min(smallest, need)
        if need > memory:
            continue
        vol = pred.bound_volume
        key = (int(vol.max()), int(vol.sum()), -int(grids[i].prod()))
        if best is None or key < best_key:
            best, best_key = pred, key
    return best, evaluated, smallest


def _baselines(spec: ConvSpec, P: int, memory: int) -> dict:
    caps = dimension_caps(spec)
    out = {}
    for name, make in BASELINES.items():
        grids = np.array([g for g in make(P) if all(f <= cap for f, cap in zip(g, caps))],
                         dtype=np.int64).reshape(-1, 5)
        best = _best_grid(spec, grids, memory)[0] if len(grids) else None
        out[name] = None if best is None else {
            "grid": dict(zip(AXES, (int(v) for v in best.dims))), "max_volume": best.max_volume}
    return out


def make_plan(spec: ConvSpec, P: int, memory=None, grid=None, max_idle: int = 3) -> Plan:
    """Choose the grid for ``spec`` on ``P`` ranks and predict every rank's bytes.  Pure.

    Parameters
    ----------
    spec : ConvSpec
    P : int
        Number of ranks (processes).
    memory : int or str, optional
        Bytes per rank for the footprint check and the memory-dependent bound (default 1 GiB).
    grid : None, 'auto', GridDims, 5-tuple or "NxKxCxHxW", optional
        Force a grid instead of choosing one; it must multiply to ``P`` and fit every dimension.
    max_idle : int
        The automatic choice also considers leaving up to this many ranks idle.

    Raises
    ------
    ParconvError
        P < 1, a bad forced grid, or no grid whose blocks fit in ``memory``.
    """
    started = time.perf_counter()
    if isinstance(P, bool) or not isinstance(P, (int, np.integer)) or P < 1:
        raise ParconvError(f"the number of processes P must be an integer >= 1, got {P!r}")
    P, memory = int(P), parse_memory(memory)
    forced = grid is not None and not (isinstance(grid, str) and grid.lower() == "auto")
    if forced:
        dims = GridDims.parse(grid)
        validate_grid(dims, spec, P)
        grids = np.array([dims.as_tuple()], dtype=np.int64)
    else:
        grids = _candidates(spec, P, max_idle)
    best, evaluated, smallest = _best_grid(spec, grids, memory)
    if best is None:
        what = f"grid {dims}" if forced else "any grid"
        raise ParconvError(f"memory too small: {what} needs at least {smallest} bytes per rank "
                           f"for its blocks, but --memory is {memory} bytes")
    bound = parallel_bounds(spec, P, memory, owned=best.owned)
    return Plan(spec=spec, ranks=P, dims=GridDims(*best.dims), memory=memory, prediction=best,
                bound=bound, baselines=_baselines(spec, P, memory), forced=forced,
                grids_evaluated=evaluated, planning_time_s=time.perf_counter() - started)


if __name__ == "__main__":  # python -m parconv.plan
    import sys

    from parconv.plan_cli import main
    sys.exit(main())
