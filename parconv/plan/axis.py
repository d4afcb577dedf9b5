"""Geometry of one spatial axis split into ``p`` blocks: owned input rows, needed rows, halos.

Pure integers, no MPI.  A layout holds only O(p) boundaries (cached per (layer axis, p)); what
one block needs (its needed rows, its halo peers) is computed for that block alone, in time
that grows with the block and its few neighbours, never with ``p``.  The planner's per-block
counts over the whole axis (``needed_counts``, ``halo_sent``, ...) are vectorised over the
(block, needed position) pairs of the axis, never over a (p, p) matrix.

For output block ``d`` (half-open ``out(d)``):

* ``own(d)``: input positions the block owns (``blocks.input_starts`` for the layout's
  ``ownership``, aligned or centred);
* ``needed(d)``: sorted input positions its output positions read (only positions really read);
* ``span(d)``: ``[needed(d)[0], needed(d)[-1] + 1)``, the extent of the local kernel's input;
* ``buf(d)``: hull of ``own(d)`` and ``span(d)``, the extent of the local work buffer;
* ``touched_own(d)``: mask over ``own(d)`` of positions some output position of the layer reads;
* ``halo_peers(d)``: the other blocks ``d`` exchanges halo positions with: what it sends each
  (positions of ``own(d)`` the peer needs) and receives from each (positions of ``needed(d)``
  the peer owns).  The peers are the few neighbouring blocks whose windows meet ``own(d)`` or
  whose owned positions meet ``span(d)``, found by binary search on the block boundaries.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property, lru_cache

import numpy as np

from .blocks import block_starts, input_starts, local_padding, needed_positions

_EMPTY = np.zeros(0, dtype=np.int64)
_EMPTY.flags.writeable = False


@dataclasses.dataclass(frozen=True, eq=False)
class AxisHalo:
    """The halo exchange of one block along one axis, naming only the real peers.

    ``peers[i]`` (sorted block indices, never the block itself) receives the global positions
    ``send[i]`` from this block and sends it ``recv[i]`` (either may be empty, not both).
    """

    block: int
    p: int
    peers: np.ndarray
    send: tuple
    recv: tuple

    @cached_property
    def send_counts(self) -> np.ndarray:
        return np.array([s.size for s in self.send], dtype=np.int64)

    @cached_property
    def recv_counts(self) -> np.ndarray:
        return np.array([r.size for r in self.recv], dtype=np.int64)

    def as_list(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The dense form: for every block ``d2`` of the axis (send, receive) positions, both
        empty for ``d2`` equal to the block and for blocks that are not peers.  O(p)."""
        out = [(_EMPTY, _EMPTY)] * self.p
        for peer, send, recv in zip(self.peers.tolist(), self.send, self.recv):
            out[peer] = (send, recv)
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class AxisLayout:
    """The O(p) boundaries of one axis split ``p`` ways, and per-block geometry on demand."""

    p: int
    n_in: int
    n_out: int
    kernel: int
    stride: int
    pad: int
    dil: int
    out_starts: np.ndarray          # p + 1 boundaries of output blocks
    own_starts: np.ndarray          # p + 1 boundaries of owned input positions
    touched: np.ndarray             # mask over all input positions (read by some output)
    ownership: str = "aligned"      # how own_starts were cut (blocks.OWNERSHIPS)

    # ---- per-block ranges ------------------------------------------------------------------------
    def out(self, d: int) -> tuple[int, int]:
        return int(self.out_starts[d]), int(self.out_starts[d + 1])

    def own(self, d: int) -> tuple[int, int]:
        return int(self.own_starts[d]), int(self.own_starts[d + 1])

    def needed(self, d: int) -> np.ndarray:
        """Sorted input positions output block ``d`` reads (read-only, cached)."""
        return _needed(self.n_in, self.n_out, self.kernel, self.stride, self.pad, self.dil,
                       self.p, d)

    def span(self, d: int) -> tuple[int, int]:
        rows = self.needed(d)
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

    def halo_peers(self, d: int) -> AxisHalo:
        """The halo exchange of block ``d`` with its real peers only (see `AxisHalo`)."""
        own_lo, own_hi = self.own(d)
        mine = self.needed(d)
        peers: dict[int, list] = {}
        # receive: the owners of the needed positions (the owned ranges partition the axis)
        owners = np.searchsorted(self.own_starts, mine, side="right") - 1
        for peer in np.unique(owners).tolist():
            if peer != d:
                peers[peer] = [_EMPTY, mine[owners == peer]]
        # send: blocks whose window [raw_lo, raw_hi) meets own(d); both bounds are monotone
        if own_hi > own_lo:
            first = int(np.searchsorted(self.raw_hi, own_lo, side="right"))
            stop = int(np.searchsorted(self.raw_lo, own_hi, side="left"))
            for peer in range(first, stop):
                if peer == d:
                    continue
                theirs = self.needed(peer)
                send = theirs[(theirs >= own_lo) & (theirs < own_hi)]
                if send.size:
                    peers.setdefault(peer, [_EMPTY, _EMPTY])[0] = send
        order = sorted(peers)
        return AxisHalo(d, self.p, np.array(order, dtype=np.int64),
                        tuple(peers[q][0] for q in order), tuple(peers[q][1] for q in order))

    def halo(self, d: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per block ``d2`` of the axis: (positions ``d`` sends to ``d2``, positions ``d``
        receives from ``d2``); empty for ``d2 == d`` and non-peers.  O(p): the dense form of
        `halo_peers`."""
        return self.halo_peers(d).as_list()

    # ---- O(p) window bounds, for the peer search ---------------------------------------------
    @cached_property
    def raw_lo(self) -> np.ndarray:
        """First input position (unclipped) of each block's window."""
        return self.stride * self.out_starts[:-1] - self.pad

    @cached_property
    def raw_hi(self) -> np.ndarray:
        """One past the last input position (unclipped) of each block's window."""
        return self.stride * (self.out_starts[1:] - 1) + self.dil * (self.kernel - 1) - self.pad + 1

    # ---- vectorised per-block counts over the whole axis (arrays of length p), for predict ---
    @cached_property
    def _pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(block, position, owner of position) of every needed position of every block, sorted
        by (block, position): O(n_out kernel) pairs, independent of p."""
        j = np.arange(self.n_out, dtype=np.int64)
        pos = self.stride * j[:, None] + self.dil * np.arange(self.kernel) - self.pad
        blk = np.broadcast_to(np.repeat(np.arange(self.p), self.out_sizes)[:, None], pos.shape)
        inside = (pos >= 0) & (pos < self.n_in)
        keys = np.unique(blk[inside] * max(self.n_in, 1) + pos[inside])
        blk, pos = np.divmod(keys, max(self.n_in, 1))
        owner = np.searchsorted(self.own_starts, pos, side="right") - 1
        return blk, pos, owner

    @cached_property
    def out_sizes(self) -> np.ndarray:
        return np.diff(self.out_starts)

    @cached_property
    def own_sizes(self) -> np.ndarray:
        return np.diff(self.own_starts)

    @cached_property
    def needed_counts(self) -> np.ndarray:
        return np.bincount(self._pairs[0], minlength=self.p).astype(np.int64)

    @cached_property
    def touched_own_counts(self) -> np.ndarray:
        cum = np.concatenate(([0], np.cumsum(self.touched, dtype=np.int64)))
        return cum[self.own_starts[1:]] - cum[self.own_starts[:-1]]

    @cached_property
    def span_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) of every block's span; (0, 0) for blocks that read only padding."""
        _, pos, _ = self._pairs
        counts = self.needed_counts
        first = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
        has = counts > 0
        lo, hi = np.zeros(self.p, dtype=np.int64), np.zeros(self.p, dtype=np.int64)
        lo[has] = pos[first[has]]
        hi[has] = pos[first[has] + counts[has] - 1] + 1
        return lo, hi

    @cached_property
    def buf_sizes(self) -> np.ndarray:
        lo, hi = self.span_bounds
        own_lo, own_hi = self.own_starts[:-1], self.own_starts[1:]
        hull = np.maximum(own_hi, hi) - np.minimum(own_lo, lo)
        return np.where(hi <= lo, own_hi - own_lo,
                        np.where(own_hi <= own_lo, hi - lo, hull)).astype(np.int64)

    @cached_property
    def span_sizes(self) -> np.ndarray:
        lo, hi = self.span_bounds
        return hi - lo

    @cached_property
    def halo_received(self) -> np.ndarray:
        """Positions each block receives from others: needed minus what it owns itself."""
        blk, _, owner = self._pairs
        return np.bincount(blk[owner != blk], minlength=self.p).astype(np.int64)

    @cached_property
    def halo_sent(self) -> np.ndarray:
        """Positions each block sends to all others together."""
        blk, _, owner = self._pairs
        return np.bincount(owner[owner != blk], minlength=self.p).astype(np.int64)

    @cached_property
    def halo_messages(self) -> np.ndarray:
        """Number of other blocks each block sends a non-empty halo to."""
        blk, _, owner = self._pairs
        other = owner != blk
        links = np.unique(owner[other] * self.p + blk[other])
        return np.bincount(links // self.p, minlength=self.p).astype(np.int64)

    @cached_property
    def own_prefix_touched(self) -> tuple[np.ndarray, np.ndarray]:
        """Padded (p, max_own + 1) arrays: touched-count prefix and touched mask over each own
        range, used to count touched elements in flat pieces without building planes."""
        width = int(self.own_sizes.max()) + 1 if self.p else 1
        offset = np.arange(width)
        inside = offset[None, :] < self.own_sizes[:, None]
        index = np.minimum(self.own_starts[:-1, None] + offset[None, :], max(self.n_in - 1, 0))
        mask = (self.touched[index] & inside).astype(np.int64) if self.n_in else \
            np.zeros((self.p, width), dtype=np.int64)
        prefix = np.zeros((self.p, width), dtype=np.int64)
        prefix[:, 1:] = np.cumsum(mask[:, :-1], axis=1)
        prefix[offset[None, :] > self.own_sizes[:, None]] = 0
        return prefix, mask


@lru_cache(maxsize=1024)
def _touched(n_in: int, n_out: int, kernel: int, stride: int, pad: int, dil: int) -> np.ndarray:
    """Mask over the input positions read by some output position (independent of the split)."""
    pos = stride * np.arange(n_out)[:, None] + dil * np.arange(kernel)[None, :] - pad
    touched = np.zeros(n_in, dtype=bool)
    touched[pos[(pos >= 0) & (pos < n_in)]] = True
    touched.flags.writeable = False
    return touched


@lru_cache(maxsize=65536)
def _needed(n_in: int, n_out: int, kernel: int, stride: int, pad: int, dil: int, p: int,
            d: int) -> np.ndarray:
    lo, hi = (int(v) for v in block_starts(n_out, p)[[d, d + 1]])
    rows = needed_positions((lo, hi), n_in, kernel, stride, pad, dil).astype(np.int64)
    rows.flags.writeable = False
    return rows


@lru_cache(maxsize=4096)
def _layout(n_in: int, n_out: int, kernel: int, stride: int, pad: int, dil: int,
            p: int, ownership: str = "aligned") -> AxisLayout:
    out_starts = block_starts(n_out, p)
    own_starts = input_starts(n_in, n_out, kernel, stride, pad, dil, p, ownership)
    for array in (out_starts, own_starts):
        array.flags.writeable = False
    return AxisLayout(p, n_in, n_out, kernel, stride, pad, dil, out_starts, own_starts,
                      _touched(n_in, n_out, kernel, stride, pad, dil), ownership)


def axis_layout(spec, which: int, p: int, ownership: str = "aligned") -> AxisLayout:
    """The cached layout of axis ``which`` (0 = height, 1 = width) of ``spec`` split ``p`` ways,
    its input positions owned the ``ownership`` way (``blocks.OWNERSHIPS``)."""
    n_in, n_out, kernel, stride, pad, dil = spec.axis(which)
    return _layout(n_in, n_out, kernel, stride, pad, dil, p, ownership)
