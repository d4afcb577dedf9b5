"""The products of a Gemmini tile schedule: tiles that tile a rectangle become one product.

Integer tile products are exact, so their order changes no bit and the executor
(`parconv.gemmini.executor`) may multiply the tiles of one (C, R, S) block whose (N, H, W, K)
blocks are every combination of contiguous ranges as one rectangle.  Pure numpy, no MPI.
"""

from __future__ import annotations

import math

import numpy as np

from .schedule_check import TileSchedule

__all__ = ["rectangles", "schedule_rectangles"]


def rectangles(blocks: list) -> list[tuple]:
    """The products of a schedule's tiles (``blocks``: their (n, h, w, k, c, r, s) ranges):
    the tiles of one (C, R, S) block whose (N, H, W, K) blocks are every combination of
    contiguous ranges form one rectangle; any other tile is its own."""
    groups: dict[tuple, list] = {}
    for n, h, w, k, c, r, s in blocks:
        groups.setdefault((c, r, s), []).append((n, h, w, k))
    out = []
    for (c, r, s), group in groups.items():
        axes = [sorted(set(b[i] for b in group)) for i in range(4)]
        whole = len(set(group)) == len(group) == math.prod(len(a) for a in axes) and all(
            lo[1] == hi[0] for a in axes for lo, hi in zip(a, a[1:]))
        if whole:
            out.append((*((a[0][0], a[-1][1]) for a in axes), c, r, s))
        else:
            out.extend((*b, c, r, s) for b in group)
    return out


def schedule_rectangles(calls: TileSchedule) -> list[tuple]:
    """`rectangles` of a `TileSchedule`, on its arrays (the groups in order of appearance).

    A range is compared as one integer, ``lo * base + hi`` (``base`` above every ``hi``: the
    same order as (lo, hi)), instead of row by row: the same groups, axes and rectangles."""
    t = calls.table
    if not len(t):
        return []
    # the (lo, hi) columns of n, h, w, k, then of c, r, s
    pairs = [(0, 1), (6, 7), (8, 9), (2, 3), (4, 5), (10, 11), (12, 13)]
    bases = [int(t[:, b].max()) + 1 for _, b in pairs]
    keys = [t[:, a] * base + t[:, b] for (a, b), base in zip(pairs, bases)]
    radix = [int(k.max()) + 1 for k in keys[4:]]
    crs = (keys[4] * radix[1] + keys[5]) * radix[2] + keys[6] if math.prod(radix) < 2 ** 62 \
        else np.unique(np.column_stack(keys[4:]), axis=0, return_inverse=True)[1].reshape(-1)
    _, first, group = np.unique(crs, return_index=True, return_inverse=True)
    group = group.reshape(-1)
    members = np.argsort(group, kind="stable")            # the tiles of each group, in order
    bounds = np.searchsorted(group[members], np.arange(len(first) + 1))
    out = []
    for g in np.argsort(first).tolist():
        rows = members[bounds[g]:bounds[g + 1]]
        c, r, s = ((int(t[first[g], a]), int(t[first[g], b])) for a, b in pairs[4:])
        axes, cell = [], np.zeros(len(rows), dtype=np.int64)
        for key, base in zip(keys[:4], bases[:4]):
            values, inverse = np.unique(key[rows], return_inverse=True)
            axes.append((values // base, values % base))
            cell = cell * len(values) + inverse.reshape(-1)
        # every combination of the axes' ranges once (distinct cells, as many as tiles), and
        # the ranges of every axis contiguous
        whole = math.prod(len(lo) for lo, _ in axes) == len(rows) \
            and np.unique(cell).size == len(rows) \
            and all((lo[1:] == hi[:-1]).all() for lo, hi in axes)
        if whole:
            out.append((*((int(lo[0]), int(hi[-1])) for lo, hi in axes), c, r, s))
        else:
            out.extend(((n0, n1), (h0, h1), (w0, w1), (k0, k1), c, r, s) for
                       n0, n1, h0, h1, w0, w1, k0, k1 in
                       t[rows][:, [0, 1, 6, 7, 8, 9, 2, 3]].tolist())
    return out
