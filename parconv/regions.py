"""Parts of one rank's output block: the interior that needs no remote input, the boundary that
needs halos, and workspace-sized chunks of either.  Pure integers, no MPI.

A *region* is ``(n0, n1, h0, h1, w0, w1)``: half-open image, output-row and output-column ranges,
relative to the rank's output block.  `sub_spec` gives the local convolution of a region
(the input span it reads and its padding), so the engine can run the node kernel on a region as
soon as the input rows and columns it reads have arrived, and the check can recompute any part of
the output from the input region it reads.
"""

from __future__ import annotations

import numpy as np

from .plan.blocks import local_padding, needed_positions


def _axis_reads(spec, which: int, lo: int, hi: int):
    """(smallest, largest) input position inside the image read by each output position in
    ``[lo, hi)`` of axis ``which``; (n_in, -1) where a position reads only padding."""
    n_in, _, kernel, stride, pad, dil = spec.axis(which)
    pos = stride * np.arange(lo, hi)[:, None] + dil * np.arange(kernel)[None, :] - pad
    inside = (pos >= 0) & (pos < n_in)
    first = np.where(inside, pos, n_in).min(axis=1, initial=n_in)
    last = np.where(inside, pos, -1).max(axis=1, initial=-1)
    return first, last


def interior_range(spec, which: int, out_range, own_range) -> tuple[int, int]:
    """The longest run of output positions of ``out_range`` (global) whose reads along axis
    ``which`` all fall in ``own_range``, relative to ``out_range[0]`` (empty: (0, 0))."""
    lo, hi = out_range
    first, last = _axis_reads(spec, which, lo, hi)
    inside = (last < 0) | ((first >= own_range[0]) & (last < own_range[1]))
    best, start = (0, 0), None
    for j, ok in enumerate(np.append(inside, False)):
        if ok and start is None:
            start = j
        elif not ok and start is not None:
            if j - start > best[1] - best[0]:
                best = (start, j)
            start = None
    return best


def split_interior(block, rows_in, cols_in) -> tuple[list, list]:
    """(interior regions, boundary regions) of an (nN, nH, nW) output block given the interior
    row and column ranges: the interior rectangle, then the strips above, below, left, right."""
    nN, nH, nW = block
    (i0, i1), (j0, j1) = rows_in, cols_in
    if i1 <= i0 or j1 <= j0:
        return [], [(0, nN, 0, nH, 0, nW)]
    boundary = [(0, nN, 0, i0, 0, nW), (0, nN, i1, nH, 0, nW),
                (0, nN, i0, i1, 0, j0), (0, nN, i0, i1, j1, nW)]
    return [(0, nN, i0, i1, j0, j1)], [r for r in boundary if r[1] > r[0] and r[3] > r[2]
                                       and r[5] > r[4]]


def _in_extent(spec, which: int, rows: int) -> int:
    _, _, kernel, stride, _, dil = spec.axis(which)
    return stride * (rows - 1) + dil * (kernel - 1) + 1


def chunk_regions(regions, spec, channels: tuple[int, int], itemsize: int,
                  budget: int) -> list:
    """Cut regions into chunks whose kernel workspace (about three copies of the input window and
    three of the output in the kernel's compute type of ``itemsize`` bytes) stays within
    ``budget`` bytes: whole images first, then bands of output rows.  ``channels`` = (C, K) of
    the block."""
    C, K = channels
    out = []
    for n0, n1, h0, h1, w0, w1 in regions:
        cols = w1 - w0
        in_cols = _in_extent(spec, 1, cols)

        def cost(images, rows):
            return itemsize * images * 3 * (C * _in_extent(spec, 0, rows) * in_cols
                                             + K * rows * cols)

        rows = h1 - h0
        images = max(1, min(n1 - n0, budget // max(cost(1, rows), 1)))
        if images == 1:
            while rows > 1 and cost(1, rows) > budget:
                rows = (rows + 1) // 2
        for a in range(n0, n1, images):
            for b in range(h0, h1, rows):
                out.append((a, min(n1, a + images), b, min(h1, b + rows), w0, w1))
    return out


def channel_chunks(spec, channels: tuple[int, int], itemsize: int, budget: int) -> list:
    """Output-channel ranges (relative to the block) whose filter copy in the kernel's compute
    type (``itemsize`` bytes) takes at most half of ``budget``: a float64 copy of an int8 filter
    block is 8 times its size.  ``channels`` = (C, K) of the block."""
    C, K = channels
    R, S = spec.kernel_size
    step = max(1, min(K, (budget // 2) // max(itemsize * C * R * S, 1)))
    return [(k, min(K, k + step)) for k in range(0, K, step)] or [(0, 0)]


def sub_spec(spec, images: int, channels: tuple[int, int], out_rows, out_cols, name: str):
    """The local convolution of output rows ``out_rows`` x columns ``out_cols`` (global ranges)
    over ``channels`` = (C block size, K block size) and ``images`` images.

    Returns ``(local spec, rows span, cols span)`` with the global input spans it reads, or
    ``(None, None, None)`` when the region reads only padding (its output is zero)."""
    spans, pads = [], []
    for which, out_range in ((0, out_rows), (1, out_cols)):
        n_in, _, kernel, stride, pad, dil = spec.axis(which)
        needed = needed_positions(tuple(out_range), n_in, kernel, stride, pad, dil)
        if needed.size == 0:
            return None, None, None
        span = (int(needed[0]), int(needed[-1]) + 1)
        spans.append(span)
        pads.append(local_padding(tuple(out_range), span, kernel, stride, pad, dil))
    (pt, pb), (pl, pr) = pads
    local = spec.replace(batch=images, in_channels=channels[0], out_channels=channels[1],
                         in_size=(spans[0][1] - spans[0][0], spans[1][1] - spans[1][0]),
                         padding=(pt, pl), padding_end=(pb, pr), bias=False, name=name)
    return local, spans[0], spans[1]
