"""One rank's schedule: the blocks it holds, the pieces it owns, the peers it exchanges with.

Pure data, no MPI.  `rank_schedule` builds it from the layer, the grid dims and the rank's
coordinates alone, in time and memory that grow with the rank's own blocks and its few halo
neighbours, never with the number of ranks: pieces are kept as `FlatSplit` (two integers per
group) and halos as `AxisHalo` (the real peers only).  The dense list forms the engine used
before (``input_pieces``, ``halo_h``, ...) remain as properties, built on first use in time
linear in the size of that one group.  See the module doc of parconv.plan.axis for the terms.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property

import numpy as np

from ..spec import ConvSpec
from .axis import AxisHalo, axis_layout
from .blocks import FlatSplit, block_range, count_masked, flat_range_boxes
from .dims import GridDims


def _offset(boxes, origin):
    return [tuple((lo + o, hi + o) for (lo, hi), o in zip(box, origin)) for box in boxes]


def _elements(shape) -> int:
    out = 1
    for v in shape:
        out *= int(v)
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class RankSchedule:
    """Everything one rank holds and exchanges; see parconv.plan.axis's module doc for the terms.

    Ranges are half-open and global; pieces are flat (C-order) ranges within their block.

    Compact forms (what an exchange object should consume):

    * ``input_split`` / ``filter_split`` / ``bias_split`` / ``output_split``: `FlatSplit` of the
      block over its group (K group, N-H-W group, N-H-W group on c == 0 only, C group);
      ``*.sizes`` are the Allgatherv / Alltoallv counts, ``*.piece(i)`` member i's range;
    * ``halo_rows`` / ``halo_cols``: `AxisHalo` along H (index in the H group) and W.

    Dense forms kept for existing callers: ``input_pieces`` etc. (lists of (start, stop)) and
    ``halo_h`` / ``halo_w`` (one (send, receive) pair per member of the H / W group).
    """

    rank: int
    coords: tuple
    dims: tuple
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
    input_split: FlatSplit
    filter_block: tuple
    filter_split: FlatSplit
    bias_split: FlatSplit | None
    output_block: tuple
    output_split: FlatSplit
    halo_rows: AxisHalo
    halo_cols: AxisHalo

    # ---- group indices --------------------------------------------------------------------------
    @property
    def filter_index(self) -> int:
        """Index q = (a P_H + d) P_W + e of this rank in its N-H-W (filter) group."""
        a, _, _, d, e = self.coords
        _, _, _, PH, PW = self.dims
        return (a * PH + d) * PW + e

    _filter_index = filter_index

    # ---- own pieces -----------------------------------------------------------------------------
    @property
    def input_piece(self) -> tuple[int, int]:
        return self.input_split.piece(self.coords[1])

    @property
    def filter_piece(self) -> tuple[int, int]:
        return self.filter_split.piece(self.filter_index)

    @property
    def output_piece(self) -> tuple[int, int]:
        return self.output_split.piece(self.coords[2])

    # ---- dense forms (O(group size), built on first use) ----------------------------------------
    @cached_property
    def input_pieces(self) -> list[tuple[int, int]]:
        return self.input_split.as_list()

    @cached_property
    def filter_pieces(self) -> list[tuple[int, int]]:
        return self.filter_split.as_list()

    @cached_property
    def bias_pieces(self) -> list[tuple[int, int]] | None:
        return None if self.bias_split is None else self.bias_split.as_list()

    @cached_property
    def output_pieces(self) -> list[tuple[int, int]]:
        return self.output_split.as_list()

    @cached_property
    def halo_h(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return self.halo_rows.as_list()

    @cached_property
    def halo_w(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return self.halo_cols.as_list()

    # ---- global boxes ---------------------------------------------------------------------------
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
        if self.bias_split is None:
            return None
        lo, hi = self.bias_split.piece(self.filter_index)
        return (self.k[0] + lo, self.k[0] + hi)

    # ---- touched elements and flat ranges of the work pieces (the balanced layout) -----------
    def piece_flat_of_touched(self, array: str, k) -> np.ndarray:
        """Flat positions, within this rank's ``array`` block ("input", "filter" or "bias"), of
        the touched elements ``k`` (indices counted from 0 within its work piece, in flat
        order); ``k`` equal to the piece's touched count maps to the piece's end."""
        k = np.asarray(k, dtype=np.int64)
        if array != "input":
            split = self.bias_split if array == "bias" else self.filter_split
            lo, _ = split.piece(self.filter_index)
            return lo + k
        lo, hi = self.input_piece
        rows = np.flatnonzero(self.rows_touched_own)
        cols = np.flatnonzero(self.cols_touched_own)
        plane = self.input_block[2] * self.input_block[3]
        per_plane = rows.size * cols.size
        before = count_masked(self.rows_touched_own, self.cols_touched_own, [0], [lo])[0]
        total = count_masked(self.rows_touched_own, self.cols_touched_own, [lo], [hi])[0]
        g = before + np.minimum(k, max(total - 1, 0))
        if per_plane == 0:
            return np.full(k.shape, hi, dtype=np.int64)
        p, rem = np.divmod(g, per_plane)
        i, j = np.divmod(rem, cols.size)
        flat = p * plane + rows[i] * self.input_block[3] + cols[j]
        return np.where(k >= total, hi, flat).astype(np.int64)

    def block_boxes(self, array: str, lo: int, hi: int) -> list[tuple]:
        """Global boxes of flat range [lo, hi) of this rank's ``array`` block ("input" (N, C,
        H_in, W_in), "filter" (K, C, R, S), "bias" (K,) or "output" (N, K, H, W))."""
        if array == "input":
            return _offset(flat_range_boxes(self.input_block, lo, hi),
                           (self.n[0], self.c[0], self.rows_own[0], self.cols_own[0]))
        if array == "filter":
            return _offset(flat_range_boxes(self.filter_block, lo, hi),
                           (self.k[0], self.c[0], 0, 0))
        if array == "bias":
            return _offset(flat_range_boxes((self.k[1] - self.k[0],), lo, hi), (self.k[0],))
        return _offset(flat_range_boxes(self.output_block, lo, hi),
                       (self.n[0], self.k[0], self.h[0], self.w[0]))

    def output_piece_boxes(self) -> list[tuple]:
        """Global (N, K, H, W) boxes of the output elements this rank owns at the end."""
        return _offset(flat_range_boxes(self.output_block, *self.output_piece),
                       (self.n[0], self.k[0], self.h[0], self.w[0]))


def rank_schedule(spec: ConvSpec, dims: GridDims, rank: int, coords,
                  ownership: tuple = ("aligned", "aligned")) -> RankSchedule:
    """The schedule of the active rank at grid ``coords`` (a, b, c, d, e), the input of the H and
    W axes owned the ``ownership`` ways (parconv.plan.blocks.OWNERSHIPS).  Local, pure.

    Costs O(own block + halo neighbours): nothing here iterates over the ranks or the blocks of
    an axis (the axis layouts are cached O(p) boundaries).
    """
    a, b, c, d, e = (int(v) for v in coords)
    PN, PK, PC, PH, PW = dims.as_tuple()
    hl, wl = axis_layout(spec, 0, PH, ownership[0]), axis_layout(spec, 1, PW, ownership[1])
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
    return RankSchedule(
        rank=rank, coords=(a, b, c, d, e), dims=(PN, PK, PC, PH, PW), n=n, k=k, c=cc, h=h, w=w,
        rows_own=rows_own, cols_own=cols_own, rows_span=rows_span, cols_span=cols_span,
        rows_buf=hl.buf(d), cols_buf=wl.buf(e),
        rows_needed=hl.needed(d), cols_needed=wl.needed(e),
        rows_touched_own=hl.touched_own(d), cols_touched_own=wl.touched_own(e),
        local_spec=local_spec,
        input_block=input_block, input_split=FlatSplit(_elements(input_block), PK),
        filter_block=filter_block, filter_split=FlatSplit(_elements(filter_block), group),
        bias_split=FlatSplit(nK, group) if spec.bias and c == 0 else None,
        output_block=output_block, output_split=FlatSplit(_elements(output_block), PC),
        halo_rows=hl.halo_peers(d), halo_cols=wl.halo_peers(e))
