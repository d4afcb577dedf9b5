"""Exact bytes per rank and phase of the grid algorithm, for every rank of a grid at once.  Pure.

The arithmetic follows theory.md section 5 and the counting rule of the engine: bytes are the
logical point-to-point payload between distinct ranks (self-copies excluded), messages are the
number of distinct destinations with a non-empty payload.  All arrays are indexed by rank, in the
row-major order of (N, K, C, H, W) grid coordinates, and broadcast over a 5-D grid so that one call
predicts every rank of a grid with thousands of ranks.

Phases: ``filter`` and ``bias`` (all-gather over the N-H-W group), ``input`` (all-gather of the
touched input elements over the K group), ``halo_h`` and ``halo_w`` (halo exchange, height first so
that corners come along), ``reduce`` (reduce-scatter of partial sums over the C group).  A run that
starts from the balanced layout (parconv.plan.balance) first runs ``balance`` (surplus input and
filter elements to their workers) and ``balance_bias``, and ends with ``balance_out`` (surplus
finished outputs from their workers to ranks with room); their prediction is
`GridPrediction.balance` (arrays over all P ranks: idle ranks hold and move surpluses too).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .axis import axis_layout
from .balance import make_balance, make_output_balance, predict_balance, predict_output_balance
from .blocks import OWNERSHIPS, block_sizes
from .footprint import Footprint, footprint_terms

PHASES = ("filter", "bias", "input", "halo_h", "halo_w", "reduce")
#: run when the run starts from the balanced layout: input + filter surpluses, then bias, before
#: the layer (START_PHASES); the output surpluses after it (END_PHASES, the balanced final layout)
START_PHASES = ("balance", "balance_bias")
END_PHASES = ("balance_out",)
BALANCE_PHASES = START_PHASES + END_PHASES
#: received bytes of these phases plus the sent bytes of SENT_BOUND_PHASES are the
#: bound-comparable volume (bias bytes, in "bias" and "balance_bias", stay out of it)
RECEIVED_BOUND_PHASES = ("balance", "filter", "input", "halo_h", "halo_w")
#: partial sums (reduce) and finished outputs (balance_out) a rank sends
SENT_BOUND_PHASES = ("reduce", "balance_out")
#: input ownership of the (H, W) axes when none is given (parconv.plan.blocks.OWNERSHIPS)
ALIGNED = ("aligned", "aligned")


def _shape(axis: int, values) -> np.ndarray:
    """Put a per-block vector on grid axis ``axis`` (0..4) of a 5-D broadcast."""
    shape = [1] * 5
    values = np.asarray(values, dtype=np.int64)
    shape[axis] = values.size
    return values.reshape(shape)


def _piece(total: np.ndarray, parts: int, index: np.ndarray) -> np.ndarray:
    """Size of balanced flat piece ``index`` of ``total`` elements split ``parts`` ways."""
    return total // parts + (index < total % parts)


def _piece_start(total: np.ndarray, parts: int, index: np.ndarray) -> np.ndarray:
    return index * (total // parts) + np.minimum(index, total % parts)


def _nonzero_others(total: np.ndarray, parts: int, mine: np.ndarray) -> np.ndarray:
    """How many of the other ``parts - 1`` balanced pieces are non-empty."""
    nonempty = np.where(total // parts > 0, parts, total % parts)
    return nonempty - (mine > 0)


@dataclasses.dataclass(frozen=True)
class GridPrediction:
    """Predicted traffic of one grid: ``phases[name] = {"sent", "received", "messages"}`` (bytes,
    bytes, count; arrays over the active ranks), the memory footprint per rank (bytes; its named
    terms in ``memory``, a `Footprint`) and the largest owned share of each array (elements:
    touched input, filter, output)."""

    dims: tuple
    phases: dict
    footprint: np.ndarray
    owned: tuple
    memory: Footprint = None
    #: touched elements of every active rank's work piece of input, filter, bias
    work_touched: dict = None
    #: ``{phase: {"sent", "received", "messages"}}`` of BALANCE_PHASES, arrays over all P ranks
    balance: dict = None
    #: how the input positions of the H and W axes are owned (parconv.plan.blocks.OWNERSHIPS)
    ownership: tuple = ALIGNED

    @property
    def unbalanced_bound_volume(self) -> np.ndarray:
        """Bound-comparable volume of a run that starts from the work pieces (no balance)."""
        vol = sum(self.phases[p]["received"] for p in RECEIVED_BOUND_PHASES if p in self.phases)
        return vol + self.phases["reduce"]["sent"]

    @property
    def bound_volume(self) -> np.ndarray:
        """Per active rank: received input and filter bytes (balance phase included) plus sent
        partial sums and sent surplus outputs (balance_out)."""
        vol = self.unbalanced_bound_volume
        return (vol + self.balance["balance"]["received"][:vol.size]
                + self.balance["balance_out"]["sent"][:vol.size])

    @property
    def max_volume(self) -> int:
        return int(self.bound_volume.max())


def _touched_prefix(x, hl, wl, d_idx, e_idx, tr, tc, or_, oc):
    """Touched input elements among the first ``x`` elements (C order) of each input block
    (rows ``or_`` x columns ``oc`` per plane), without building the planes."""
    row_prefix, row_mask = hl.own_prefix_touched
    col_prefix, _ = wl.own_prefix_touched
    plane = np.maximum(or_ * oc, 1)
    full, rem = np.divmod(x, plane)
    i, j = np.divmod(rem, np.maximum(oc, 1))
    return (full * tr * tc + row_prefix[d_idx, i] * tc
            + row_mask[d_idx, i] * col_prefix[e_idx, j])


class _Grid:
    """The 5-D broadcast of a grid: block sizes per axis, coordinates, the two spatial layouts,
    and ``full``, a zero array of the grid's shape that broadcasts sums to every rank."""

    def __init__(self, spec, dims: tuple[int, int, int, int, int], ownership=ALIGNED):
        PN, PK, PC, PH, PW = dims
        self.hl = axis_layout(spec, 0, PH, ownership[0])
        self.wl = axis_layout(spec, 1, PW, ownership[1])
        self.nN = _shape(0, block_sizes(spec.batch, PN))
        self.nK = _shape(1, block_sizes(spec.out_channels, PK))
        self.nC = _shape(2, block_sizes(spec.in_channels, PC))
        self.nH, self.nW = _shape(3, self.hl.out_sizes), _shape(4, self.wl.out_sizes)
        self.a, self.b, self.c, self.d, self.e = (_shape(i, np.arange(n))
                                                  for i, n in enumerate(dims))
        self.full = np.zeros(dims, dtype=np.int64)
        self.filter_group = PN * PH * PW
        self.q = (self.a * PH + self.d) * PW + self.e   # index in the N-H-W group


def balance_phases(balances: dict, output) -> dict:
    """BALANCE_PHASES predicted from the `Balance` of each array and of the output: input and
    filter travel together in "balance", the bias in "balance_bias" (like "filter" and "bias"),
    the output's surplus in "balance_out"."""
    return {"balance": predict_balance({k: balances[k] for k in ("input", "filter")}),
            "balance_bias": predict_balance({"bias": balances["bias"]}),
            "balance_out": predict_output_balance(output)}


def predict_grid(spec, dims: tuple[int, int, int, int, int], node="numpy",
                 ranks: int | None = None, ownership: tuple = ALIGNED,
                 stop_above: int | None = None) -> GridPrediction | None:
    """Predict every active rank's bytes per phase for grid ``dims`` (exact) and its memory
    footprint with node kernel ``node`` (parconv.plan.footprint); the balance phases over
    ``ranks`` ranks (default: the grid's, no idle rank); the input of the H and W axes owned
    the ``ownership`` ways (parconv.plan.blocks.OWNERSHIPS).  Local, pure; O(P) for the
    balance.

    With ``stop_above``, returns None as soon as some rank's volume without the balance phase
    exceeds it: its bound-comparable volume only grows with them, so the grid cannot beat a
    best volume of ``stop_above`` (the planner's search skips it, footprint and balance
    unmade)."""
    PN, PK, PC, PH, PW = dims
    R, S = spec.kernel_size
    ownership = tuple(ownership)
    g = _Grid(spec, dims, ownership)
    hl, wl, nN, nK, nC, nH, nW = g.hl, g.wl, g.nN, g.nK, g.nC, g.nH, g.nW
    b, c, d, e, full, group, q = g.b, g.c, g.d, g.e, g.full, g.filter_group, g.q
    phases = {}

    # (1) filter block (b, c) all-gathered over the P_N P_H P_W ranks that share it
    n_f = nK * nC * R * S + full
    mine = _piece(n_f, group, q)
    phases["filter"] = dict(sent=mine * (group - 1) * spec.p_weight,
                            received=(n_f - mine) * spec.p_weight,
                            messages=(group - 1) * (mine > 0))
    n_b = (nK + full) * (c == 0) * spec.bias
    mine_b = _piece(n_b, group, q)
    phases["bias"] = dict(sent=mine_b * (group - 1) * spec.p_bias,
                          received=(n_b - mine_b) * spec.p_bias,
                          messages=(group - 1) * (mine_b > 0))

    # (2) touched elements of input block (a, c, d, e) all-gathered over the P_K ranks
    or_, oc = _shape(3, hl.own_sizes), _shape(4, wl.own_sizes)
    tr, tc = _shape(3, hl.touched_own_counts), _shape(4, wl.touched_own_counts)
    block = nN * nC * or_ * oc + full
    start, stop = _piece_start(block, PK, b), _piece_start(block, PK, b + 1)
    d_idx, e_idx = np.broadcast_to(d, dims), np.broadcast_to(e, dims)
    args = (hl, wl, d_idx, e_idx, tr, tc, or_, oc)
    touched_mine = _touched_prefix(stop, *args) - _touched_prefix(start, *args)
    touched_block = nN * nC * tr * tc + full
    phases["input"] = dict(sent=touched_mine * (PK - 1) * spec.p_in,
                           received=(touched_block - touched_mine) * spec.p_in,
                           messages=(PK - 1) * (touched_mine > 0))

    # (3) halos: rows x touched own columns along H, then all needed rows x columns along W
    nc_ = nN * nC
    phases["halo_h"] = dict(
        sent=nc_ * _shape(3, hl.halo_sent) * tc * spec.p_in + full,
        received=nc_ * _shape(3, hl.halo_received) * tc * spec.p_in + full,
        messages=_shape(3, hl.halo_messages) * (tc > 0) + full)
    needed_rows = _shape(3, hl.needed_counts)
    phases["halo_w"] = dict(
        sent=nc_ * needed_rows * _shape(4, wl.halo_sent) * spec.p_in + full,
        received=nc_ * needed_rows * _shape(4, wl.halo_received) * spec.p_in + full,
        messages=_shape(4, wl.halo_messages) * (needed_rows > 0) + full)

    # (5) partial sums of output block (a, b, d, e) reduce-scattered over the P_C ranks
    n_o = nN * nK * nH * nW + full
    mine_o = _piece(n_o, PC, c)
    phases["reduce"] = dict(sent=(n_o - mine_o) * spec.p_acc,
                            received=mine_o * (PC - 1) * spec.p_acc,
                            messages=_nonzero_others(n_o, PC, mine_o))

    if stop_above is not None:
        unbalanced = sum(phases[p]["received"] for p in RECEIVED_BOUND_PHASES if p in phases)
        if int((unbalanced + phases["reduce"]["sent"] + full).max()) > stop_above:
            return None
    ranks = int(np.prod(dims)) if ranks is None else int(ranks)
    sizes = dict(input_piece=_piece(block, PK, b), filter_piece=mine, bias_piece=mine_b,
                 input_block=block, touched_piece=touched_mine, touched_block=touched_block,
                 output_piece=mine_o, output_cap=-(-spec.size_output // ranks),
                 span_rows=_shape(3, hl.span_sizes),
                 span_cols=_shape(4, wl.span_sizes), buf_rows=_shape(3, hl.buf_sizes),
                 buf_cols=_shape(4, wl.buf_sizes))
    memory = footprint_terms(spec, g, sizes, phases, node)
    flat = {name: {key: np.ascontiguousarray(v).reshape(-1).astype(np.int64)
                   for key, v in ph.items()} for name, ph in phases.items()}
    owned = (int(touched_mine.max()), int(mine.max()), int(mine_o.max()))
    work = {name: np.ascontiguousarray(v + full).reshape(-1).astype(np.int64)
            for name, v in (("input", touched_mine), ("filter", mine), ("bias", mine_b))}
    balance = balance_phases(make_balance(spec, work, ranks),
                             make_output_balance(spec, (mine_o + full).reshape(-1), ranks))
    return GridPrediction(tuple(dims), flat, memory.total, owned, memory, work, balance,
                          ownership)


def mean_volume_lower_bound(spec, grids: np.ndarray) -> np.ndarray:
    """Average bound-comparable volume over the ranks of each grid, halos included.

    The busiest rank moves at least the average, so this is a lower bound on each grid's largest
    volume: the planner evaluates grids exactly in increasing order of it and stops once it
    exceeds the best exact volume found.  Every term is a product of per-axis means because the
    blocks of different axes are independent.  ``grids`` is an (n, 5) integer array.  Each
    per-axis mean is the smallest over the ownerships (`OWNERSHIPS`), so the value is a lower
    bound for every ownership of the grid.
    """
    g = np.asarray(grids, dtype=np.int64)
    PN, PK, PC, PH, PW = (g[:, i].astype(np.float64) for i in range(5))
    P = PN * PK * PC * PH * PW
    filt = spec.p_weight * spec.size_filter * (PN * PH * PW - 1) / P
    inp = spec.p_in * spec.size_input_touched * (PK - 1) / P
    out = spec.p_acc * spec.size_output * (PC - 1) / P

    def per_axis(which, column, attr):
        values = {p: min(float(getattr(axis_layout(spec, which, int(p), way), attr).mean())
                         for way in OWNERSHIPS)
                  for p in np.unique(g[:, column])}
        return np.array([values[p] for p in g[:, column]])

    nc = spec.batch / PN * spec.in_channels / PC
    halo = spec.p_in * nc * (per_axis(0, 3, "halo_received") * per_axis(1, 4, "touched_own_counts")
                             + per_axis(0, 3, "needed_counts") * per_axis(1, 4, "halo_received"))
    return filt + inp + out + halo


def owned_piece_sizes(spec, dims: tuple[int, int, int, int, int],
                      ownership: tuple = ALIGNED) -> dict[str, np.ndarray]:
    """Elements each active rank owns at the start (``input`` (all, touched or not), ``filter``,
    ``bias``) and at the end (``output``), in rank order.  Used for the scatter/gather phases."""
    _, PK, PC, _, _ = dims
    R, S = spec.kernel_size
    g = _Grid(spec, dims, tuple(ownership))
    hl, wl, nN, nK, nC, full = g.hl, g.wl, g.nN, g.nK, g.nC, g.full
    b, c, group, q = g.b, g.c, g.filter_group, g.q
    sizes = {
        "input": _piece(nN * nC * _shape(3, hl.own_sizes) * _shape(4, wl.own_sizes) + full, PK, b),
        "filter": _piece(nK * nC * R * S + full, group, q),
        "bias": _piece((nK + full) * (c == 0) * spec.bias, group, q),
        "output": _piece(nN * nK * g.nH * g.nW + full, PC, c),
    }
    return {k: v.reshape(-1).astype(np.int64) for k, v in sizes.items()}
