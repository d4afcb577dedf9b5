"""One rank's schedule: the blocks it holds, the pieces it owns, the peers it exchanges with.

Pure data, no MPI.  `rank_schedule` builds it from the layer, the grid dims and the rank's
coordinates; see the module doc of parconv.plan.axis for the terms.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..spec import ConvSpec
from .axis import axis_layout
from .blocks import block_range, flat_piece, flat_range_boxes
from .dims import GridDims


def _offset(boxes, origin):
    return [tuple((lo + o, hi + o) for (lo, hi), o in zip(box, origin)) for box in boxes]


@dataclasses.dataclass(frozen=True)
class RankSchedule:
    """Everything one rank holds and exchanges; see the module doc of parconv.plan.axis for the terms.

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


def rank_schedule(spec: ConvSpec, dims: GridDims, rank: int, coords) -> RankSchedule:
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
    return RankSchedule(
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
