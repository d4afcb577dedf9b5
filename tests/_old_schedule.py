"""The all-ranks schedule of parconv before issue 7, kept verbatim as the reference of
tests/test_schedule.py: `old_rank_schedule` builds one rank's schedule from axis layouts that
hold every block of the axis (a (p, p) overlap matrix and the needed rows of every block).
Test-only code; the library no longer uses it."""

from __future__ import annotations

import dataclasses
from functools import cached_property, lru_cache

import numpy as np

from parconv.plan.blocks import (block_range, block_starts, flat_piece, flat_range_boxes,
                                 local_padding, needed_positions, owned_input_starts)


@dataclasses.dataclass(frozen=True)
class AxisLayout:
    p: int
    out_starts: np.ndarray          # p + 1 boundaries of output blocks
    own_starts: np.ndarray          # p + 1 boundaries of owned input positions
    needed: tuple                   # p sorted arrays of needed input positions
    touched: np.ndarray             # mask over all input positions (read by some output)
    overlap: np.ndarray             # (p, p): |own[d] ∩ needed[d2]|
    kernel: int
    stride: int
    pad: int
    dil: int

    # ---- per-block ranges ------------------------------------------------------------------------
    def out(self, d: int) -> tuple[int, int]:
        return int(self.out_starts[d]), int(self.out_starts[d + 1])

    def own(self, d: int) -> tuple[int, int]:
        return int(self.own_starts[d]), int(self.own_starts[d + 1])

    def span(self, d: int) -> tuple[int, int]:
        rows = self.needed[d]
        if rows.size == 0:
            return (0, 0)
        return int(rows[0]), int(rows[-1]) + 1

    def buf(self, d: int) -> tuple[int, int]:
        own, span = self.own(d), self.span(d)
        if span[1] <= span[0]:
            return own
        if own[1] <= own[0]:
            return span
        return min(own[0], span[0]), max(own[1], span[1])

    def touched_own(self, d: int) -> np.ndarray:
        lo, hi = self.own(d)
        return self.touched[lo:hi]

    def padding(self, d: int) -> tuple[int, int]:
        """(before, after) padding of the local convolution of block ``d``."""
        return local_padding(self.out(d), self.span(d), self.kernel, self.stride, self.pad,
                             self.dil)

    def halo(self, d: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per peer ``d2``: (positions ``d`` sends to ``d2``, positions ``d`` receives from ``d2``);
        empty for ``d2 == d``."""
        own_lo, own_hi = self.own(d)
        mine = self.needed[d]
        out = []
        for d2 in range(self.p):
            if d2 == d:
                empty = np.zeros(0, dtype=np.int64)
                out.append((empty, empty))
                continue
            theirs = self.needed[d2]
            send = theirs[(theirs >= own_lo) & (theirs < own_hi)]
            lo2, hi2 = self.own(d2)
            recv = mine[(mine >= lo2) & (mine < hi2)]
            out.append((send.astype(np.int64), recv.astype(np.int64)))
        return out

    # ---- vectorised per-block counts (arrays of length p) -----------------------------------
    @cached_property
    def out_sizes(self) -> np.ndarray:
        return np.diff(self.out_starts)

    @cached_property
    def own_sizes(self) -> np.ndarray:
        return np.diff(self.own_starts)

    @cached_property
    def needed_counts(self) -> np.ndarray:
        return np.array([len(n) for n in self.needed], dtype=np.int64)

    @cached_property
    def touched_own_counts(self) -> np.ndarray:
        cum = np.concatenate(([0], np.cumsum(self.touched, dtype=np.int64)))
        return cum[self.own_starts[1:]] - cum[self.own_starts[:-1]]

    @cached_property
    def buf_sizes(self) -> np.ndarray:
        return np.array([b - a for a, b in (self.buf(d) for d in range(self.p))], dtype=np.int64)

    @cached_property
    def halo_received(self) -> np.ndarray:
        """Positions each block receives from others: needed minus what it owns itself."""
        return self.needed_counts - np.diagonal(self.overlap)

    @cached_property
    def halo_sent(self) -> np.ndarray:
        """Positions each block sends to all others together."""
        return self.overlap.sum(axis=1) - np.diagonal(self.overlap)

    @cached_property
    def halo_messages(self) -> np.ndarray:
        """Number of other blocks each block sends a non-empty halo to."""
        nonzero = self.overlap > 0
        return nonzero.sum(axis=1) - np.diagonal(nonzero)

    @cached_property
    def own_prefix_touched(self) -> tuple[np.ndarray, np.ndarray]:
        """Padded (p, max_own + 1) arrays: touched-count prefix and touched mask over each own
        range, used to count touched elements in flat pieces without building planes."""
        width = int(self.own_sizes.max()) + 1 if self.p else 1
        prefix = np.zeros((self.p, width), dtype=np.int64)
        mask = np.zeros((self.p, width), dtype=np.int64)
        for d in range(self.p):
            t = self.touched_own(d).astype(np.int64)
            prefix[d, 1:t.size + 1] = np.cumsum(t)
            mask[d, :t.size] = t
        return prefix, mask


@lru_cache(maxsize=4096)
def _layout(n_in: int, n_out: int, kernel: int, stride: int, pad: int, dil: int,
            p: int) -> AxisLayout:
    out_starts = block_starts(n_out, p)
    own_starts = owned_input_starts(n_in, n_out, stride, pad, p)
    needed = tuple(needed_positions((int(out_starts[d]), int(out_starts[d + 1])), n_in, kernel,
                                    stride, pad, dil) for d in range(p))
    owner = np.repeat(np.arange(p), np.diff(own_starts))
    overlap = np.zeros((p, p), dtype=np.int64)
    for d2, rows in enumerate(needed):
        overlap[:, d2] = np.bincount(owner[rows], minlength=p)
    touched = np.zeros(n_in, dtype=bool)
    for rows in needed:
        touched[rows] = True
    for array in (out_starts, own_starts, overlap, touched, *needed):
        array.flags.writeable = False
    return AxisLayout(p, out_starts, own_starts, needed, touched, overlap, kernel, stride, pad,
                      dil)


def axis_layout(spec, which: int, p: int) -> AxisLayout:
    """The cached layout of axis ``which`` (0 = height, 1 = width) of ``spec`` split ``p`` ways."""
    n_in, n_out, kernel, stride, pad, dil = spec.axis(which)
    return _layout(n_in, n_out, kernel, stride, pad, dil, p)


# ---- the old parconv/plan/schedule.py --------------------------------------------------------


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
    local_spec: object
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


def old_rank_schedule(spec, dims, rank: int, coords) -> "RankSchedule":
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
