"""Balanced half-open blocks and the input rows an output block reads.  Pure integers, no MPI.

Conventions (design.md):

* ``block_range(n, p, i)`` splits ``[0, n)`` into ``p`` contiguous blocks whose sizes differ by at
  most one; the first ``n % p`` blocks are the larger ones.
* Along the height (and likewise the width) the *input* rows are owned in contiguous blocks, one
  per output block, in one of two ways (``OWNERSHIPS``; the planner picks per axis):

  - ``aligned``: H-block ``d`` owns input rows ``[sh * h_start(d) - ph, sh * h_start(d+1) - ph)``,
    clipped to the image, the first block from row 0 and the last to ``H_in``.  For every layer
    with ``sh <= dh (R - 1) + 1`` (every catalogue layer) the rows a block owns are a subset of
    the rows it reads, so its halo is one-sided: the rows two neighbours both read are all owned
    by the second, and the first receives all of them.
  - ``centred``: where two neighbours' spans overlap, the cut between them is the middle of the
    overlap, so each receives about half of the rows both read (``centred_input_starts``).
* A block of an array that several ranks share is split again into balanced *flat* pieces of its
  C-order elements (``flat_piece``), and ``flat_range_boxes`` turns such a piece back into
  rectangular boxes for HDF5 hyperslabs.

Example: 10 output rows on 3 ranks, 3x3 kernel, stride 1, padding 1 (H_in = 10)::

    output blocks  [0,4) [4,7) [7,10)
    needed rows    [0,5) [3,8) [6,10)
    owned rows     [0,3) [3,6) [6,10)   aligned: block 0 receives 2 rows, block 1 receives 2
    owned rows     [0,4) [4,7) [7,10)   centred: block 0 receives 1, block 1 receives 2, block 2 1
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import ParconvError, ParconvRuntimeError


def block_range(n: int, p: int, i: int) -> tuple[int, int]:
    """Half-open range of block ``i`` when ``[0, n)`` is split into ``p`` balanced blocks."""
    if not 0 <= i < p:
        raise ParconvError(f"block index {i} outside [0, {p})")
    base, extra = divmod(n, p)
    start = i * base + min(i, extra)
    return start, start + base + (1 if i < extra else 0)


def block_starts(n: int, p: int) -> np.ndarray:
    """The ``p + 1`` boundaries of the balanced split of ``[0, n)`` (vectorised block_range)."""
    base, extra = divmod(n, p)
    i = np.arange(p + 1, dtype=np.int64)
    return i * base + np.minimum(i, extra)


def block_sizes(n: int, p: int) -> np.ndarray:
    """Sizes of the ``p`` balanced blocks of ``[0, n)``."""
    return np.diff(block_starts(n, p))


flat_piece = block_range
"""Half-open flat range of piece ``i`` when a block of ``n`` elements is shared by ``p`` ranks."""


@dataclasses.dataclass(frozen=True)
class FlatSplit:
    """The balanced flat pieces of a block of ``total`` elements shared by ``parts`` ranks: the
    compact form of ``[flat_piece(total, parts, i) for i in range(parts)]``.

    ``piece(i)`` is O(1); ``starts``, ``sizes`` and ``bounds`` are O(parts) arrays.
    """

    total: int
    parts: int

    def piece(self, i: int) -> tuple[int, int]:
        return flat_piece(self.total, self.parts, int(i))

    @property
    def starts(self) -> np.ndarray:
        """The ``parts + 1`` piece boundaries."""
        return block_starts(self.total, self.parts)

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.starts)

    @property
    def bounds(self) -> np.ndarray:
        """(parts, 2) array of [start, stop) per piece."""
        starts = self.starts
        return np.stack([starts[:-1], starts[1:]], axis=1)

    def as_list(self) -> list[tuple[int, int]]:
        """The pieces as a list of (start, stop) tuples of Python ints.  O(parts)."""
        starts = self.starts.tolist()
        return list(zip(starts[:-1], starts[1:]))

    def __len__(self) -> int:
        return self.parts


def owned_input_starts(n_in: int, n_out: int, stride: int, pad: int, p: int) -> np.ndarray:
    """Boundaries (``p + 1`` of them) of the input positions owned by each of ``p`` output blocks.

    Block ``d`` owns ``[starts[d], starts[d+1])``: aligned with the first input position its output
    block reads, clipped to ``[0, n_in)``.  Together they partition ``[0, n_in)``.
    """
    out_starts = block_starts(n_out, p)
    starts = np.clip(stride * out_starts - pad, 0, n_in)
    starts[0], starts[-1] = 0, n_in
    return starts


#: the ways the input positions of one spatial axis are owned by its blocks (module doc)
OWNERSHIPS = ("aligned", "centred")


def read_spans(n_in: int, n_out: int, kernel: int, stride: int, pad: int, dil: int,
               p: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi): per output block of the balanced split into ``p``, the first input position
    inside the image its outputs read and one past the last (``lo = n_in, hi = 0`` for a block
    that reads only padding or has no outputs).

    O(p kernel): for each tap r, the first output j of a block whose position
    ``stride j + dil r - pad`` is >= 0 and the last whose position is < n_in."""
    starts = block_starts(n_out, p)
    first, last = starts[:-1, None], starts[1:, None] - 1
    base = dil * np.arange(kernel, dtype=np.int64)[None, :] - pad
    j_lo = np.maximum(first, -(base // stride))          # ceil(-base / stride)
    at_lo = stride * j_lo + base
    ok_lo = (j_lo <= last) & (at_lo < n_in)
    j_hi = np.minimum(last, (n_in - 1 - base) // stride)
    at_hi = stride * j_hi + base
    ok_hi = (j_hi >= first) & (at_hi >= 0)
    lo = np.where(ok_lo, at_lo, n_in).min(axis=1, initial=n_in)
    hi = np.where(ok_hi, at_hi, -1).max(axis=1, initial=-1) + 1
    empty = hi <= lo
    lo[empty], hi[empty] = n_in, 0
    return lo.astype(np.int64), hi.astype(np.int64)


def centred_input_starts(n_in: int, n_out: int, kernel: int, stride: int, pad: int, dil: int,
                         p: int) -> np.ndarray:
    """Boundaries (``p + 1``) of the input positions owned by each of ``p`` output blocks, with
    every cut between neighbours whose spans overlap in the middle of the overlap.

    Where the spans of blocks ``d - 1`` and ``d`` share ``[lo, hi)``, the cut is
    ``(lo + hi + 1) // 2`` (``d - 1`` owns the first half, rounded up); elsewhere it is the aligned
    cut of `owned_input_starts`.  The cuts are then made non-decreasing (blocks thinner than the
    halo) and clipped, so the owned ranges still partition ``[0, n_in)``.  O(p).
    """
    starts = owned_input_starts(n_in, n_out, stride, pad, p)
    lo, hi = read_spans(n_in, n_out, kernel, stride, pad, dil, p)
    shared = hi[:-1] > lo[1:]           # spans of d - 1 and d overlap (both non-empty then)
    cuts = np.where(shared, (lo[1:] + hi[:-1] + 1) // 2, starts[1:-1])
    starts[1:-1] = np.maximum.accumulate(np.clip(cuts, 0, n_in))
    starts[0], starts[-1] = 0, n_in
    return starts


def input_starts(n_in: int, n_out: int, kernel: int, stride: int, pad: int, dil: int, p: int,
                 ownership: str = "aligned") -> np.ndarray:
    """The owned boundaries of one axis for ``ownership`` in `OWNERSHIPS`."""
    if ownership == "aligned":
        return owned_input_starts(n_in, n_out, stride, pad, p)
    if ownership == "centred":
        return centred_input_starts(n_in, n_out, kernel, stride, pad, dil, p)
    raise ParconvError(f"ownership must be one of {', '.join(OWNERSHIPS)}, got {ownership!r}")


def needed_positions(out_range: tuple[int, int], n_in: int, kernel: int, stride: int,
                     pad: int, dil: int) -> np.ndarray:
    """Sorted input positions (inside the image) that output positions ``out_range`` read."""
    lo, hi = out_range
    idx = stride * np.arange(lo, hi)[:, None] + dil * np.arange(kernel)[None, :] - pad
    idx = idx[(idx >= 0) & (idx < n_in)]
    return np.unique(idx)


def local_padding(out_range: tuple[int, int], span: tuple[int, int], kernel: int, stride: int,
                  pad: int, dil: int) -> tuple[int, int]:
    """(before, after) zero padding that makes a local buffer covering ``span`` act as the full
    padded input for the output positions ``out_range``.

    With this padding, local output ``j`` reads local (padded) position ``stride * j + dil * r``.
    """
    lo, hi = out_range
    before = span[0] - (stride * lo - pad)
    needed_end = stride * (hi - 1) + dil * (kernel - 1) - pad + 1
    after = needed_end - span[1]
    return int(before), int(after)


def flat_range_boxes(shape: tuple[int, ...], start: int,
                     stop: int) -> list[tuple[tuple[int, int], ...]]:
    """Rectangular boxes (tuples of half-open ranges per axis) covering flat range
    ``[start, stop)`` of a C-order array of ``shape``, in flat order.

    At most ``2 * len(shape) - 1`` boxes.  Example: shape (2, 3), range [2, 5) gives
    ``[((0, 1), (2, 3)), ((1, 2), (0, 2))]``.
    """
    shape = tuple(int(s) for s in shape)
    total = int(np.prod(shape)) if shape else 1
    if not 0 <= start <= stop <= total:
        raise ParconvError(f"flat range [{start}, {stop}) outside [0, {total})")
    if start == stop:
        return []
    if len(shape) == 1:
        return [((start, stop),)]
    inner = int(np.prod(shape[1:]))
    first, last = start // inner, (stop - 1) // inner
    if first == last:
        return [((first, first + 1),) + box for box in
                flat_range_boxes(shape[1:], start - first * inner, stop - first * inner)]
    boxes = []
    head_end = first + 1 if start % inner else first
    if start % inner:
        boxes += [((first, first + 1),) + box for box in
                  flat_range_boxes(shape[1:], start % inner, inner)]
    tail_start = last if stop % inner else last + 1
    if tail_start > head_end:
        boxes.append(((head_end, tail_start),) + tuple((0, s) for s in shape[1:]))
    if stop % inner:
        boxes += [((last, last + 1),) + box for box in
                  flat_range_boxes(shape[1:], 0, stop % inner)]
    return boxes


def read_boxes(source, boxes, dtype=None) -> np.ndarray:
    """The elements of ``source`` (a numpy array or an h5py dataset) in ``boxes`` (tuples of
    global half-open ranges), flattened in box order: the inverse of `write_boxes`."""
    parts = [np.asarray(source[tuple(slice(lo, hi) for lo, hi in box)]).reshape(-1)
             for box in boxes]
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype or source.dtype)
    return flat.astype(dtype, copy=False) if dtype is not None else flat


def write_boxes(target, boxes, flat: np.ndarray) -> None:
    """Store ``flat`` into ``boxes`` of ``target`` (a numpy array or an h5py dataset), consuming
    it in box order.

    Raises
    ------
    ParconvRuntimeError
        If ``flat`` does not have exactly as many elements as the boxes (a failure of the run,
        not of the user's input).
    """
    sizes = [int(np.prod([hi - lo for lo, hi in box])) for box in boxes]
    if sum(sizes) != flat.size:
        raise ParconvRuntimeError(f"a piece of {flat.size} elements does not fill its boxes of "
                           f"{sum(sizes)} elements")
    offset = 0
    for box, count in zip(boxes, sizes):
        shape = tuple(hi - lo for lo, hi in box)
        target[tuple(slice(lo, hi) for lo, hi in box)] = flat[offset:offset + count].reshape(shape)
        offset += count


def count_masked(row_mask: np.ndarray, col_mask: np.ndarray, starts: np.ndarray,
                 stops: np.ndarray) -> np.ndarray:
    """Number of elements with ``row_mask[h] & col_mask[w]`` in each flat range of a C-order
    array of shape ``(..., len(row_mask), len(col_mask))``; vectorised over the ranges
    ``[starts[i], stops[i])`` (the leading axes only repeat the (h, w) plane)."""
    plane = np.outer(row_mask, col_mask).ravel()
    cum = np.concatenate(([0], np.cumsum(plane, dtype=np.int64)))
    per_plane, plane_total = plane.size, int(cum[-1])

    def upto(x):
        x = np.asarray(x, dtype=np.int64)
        if per_plane == 0:
            return np.zeros_like(x)
        return (x // per_plane) * plane_total + cum[x % per_plane]

    return upto(stops) - upto(starts)
