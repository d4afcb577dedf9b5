"""Geometry of one spatial axis split into ``p`` blocks: owned input rows, needed rows, halos.

Pure integers, no MPI.  Everything the planner and the engine need about the height (or width)
split lives here, computed once per (layer, axis, p) and cached.

For output block ``d`` (half-open ``out[d]``):

* ``own[d]``: input positions the block owns (``blocks.owned_input_starts``);
* ``needed[d]``: sorted input positions its output positions read (only positions really read);
* ``span[d]``: ``[needed[d][0], needed[d][-1] + 1)``, the extent of the local kernel's input;
* ``buf[d]``: hull of ``own[d]`` and ``span[d]``, the extent of the local work buffer;
* ``touched_own[d]``: mask over ``own[d]`` of positions some output position of the layer reads;
* ``overlap[d, d2]``: number of positions ``own[d]`` holds that ``needed[d2]`` reads, i.e. what
  block ``d`` sends to block ``d2`` in a halo exchange (the diagonal is kept: self-copies).
"""

from __future__ import annotations

import dataclasses
from functools import cached_property, lru_cache

import numpy as np

from .blocks import block_starts, local_padding, needed_positions, owned_input_starts


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
