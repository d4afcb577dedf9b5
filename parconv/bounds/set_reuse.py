"""The set constant sigma of one axis: the largest ``N^2 / (|X| |T| |S|)`` over sets of input
rows X, taps T and output rows S, N the effective (output, tap) pairs among them whose row lies
in X (theory.md 2.3.1, step 1).  Exact, by dynamic programming.  Pure.

Step 1 of Theorem 2.3.1 needs the axis inequality only for sets, so it holds with sigma, which
sets attain, in place of the spectral constant kappa (a supremum over weights, which sets do not
reach: 2.456 against 2.707 on a same-padded 7-row axis).  The other axis of the proof still needs
its kappa; `border.reuse_constant` takes the better of the two assignments.

For fixed T and sizes a = |X|, c = |S| the best N is a densest-subgraph problem on the bipartite
(output, row) graph of the taps T; that graph is a band (output h reads rows s h + d r - p), so a
scan over the outputs that remembers which of the rows shared with later outputs were chosen
solves it exactly for every (a, c) at once.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np

#: marks an unreachable (|X|, |S|) entry of the scan's tables
_NONE = np.iinfo(np.int64).min // 4
#: relative pad on the returned float: the exact rational value must never be rounded down
SET_PAD = 1e-12


def used_rows(n_in: int, n_out: int, kernel: int, stride: int, pad: int, dil: int,
              residue: int | None) -> list[np.ndarray]:
    """Per used tap (one that reads some row; of class `residue` if given): the row each output
    reads, -1 where that falls in the padding (rows of one array, all taps at once)."""
    r = np.arange(kernel)
    if residue is not None:
        r = r[(dil * r - pad) % stride == residue]
    x = stride * np.arange(n_out)[None, :] + dil * r[:, None] - pad
    inside = (x >= 0) & (x < n_in)
    x = np.where(inside, x, -1)
    return list(x[inside.any(axis=1)])


def densest(reads: list[list[int]]) -> np.ndarray:
    """``best[a, c]``: the most (output, row) incidences between c outputs and a rows, where
    output h is incident to the rows ``reads[h]`` (distinct); `_NONE` where no such sets exist.

    The scan visits the outputs in order; a row is decided when its first reader is visited and
    forgotten after its last, so the state is the set of chosen rows still to be read."""
    first, last = {}, {}
    for h, rows in enumerate(reads):
        for x in rows:
            first.setdefault(x, h)
            last[x] = h
    n_rows, n_out = len(first), len(reads)
    start = np.full((n_rows + 1, n_out + 1), _NONE, dtype=np.int64)
    start[0, 0] = 0
    states = {frozenset(): start}
    for h, rows in enumerate(reads):
        new = [x for x in rows if first[x] == h]
        nxt: dict[frozenset, np.ndarray] = {}
        for chosen, table in states.items():
            for bits in itertools.product((0, 1), repeat=len(new)):
                picked = chosen | {x for x, b in zip(new, bits) if b}
                add = sum(bits)
                t = np.full_like(table, _NONE)
                t[add:] = table[:n_rows + 1 - add]
                count = sum(x in picked for x in rows)
                with_h = np.full_like(t, _NONE)
                with_h[:, 1:] = np.where(t[:, :-1] > _NONE, t[:, :-1] + count, _NONE)
                t = np.maximum(t, with_h)
                key = frozenset(x for x in picked if last[x] > h)
                nxt[key] = np.maximum(nxt[key], t) if key in nxt else t
        states = nxt
    return np.maximum.reduce(list(states.values()))


def _subsets(taps: list[np.ndarray]):
    for size in range(1, len(taps) + 1):
        yield from itertools.combinations(taps, size)


@lru_cache(maxsize=4096)
def axis_set_witness(n_in: int, n_out: int, kernel: int, stride: int, pad: int, dil: int,
                     residue: int | None = None) -> float:
    """A value sigma is never below, in O(n_out) per tap subset: the whole axis (every output,
    every row the subset reads) for each subset of the used taps, sets that attain it.  Local."""
    best = 1.0
    for subset in _subsets(used_rows(n_in, n_out, kernel, stride, pad, dil, residue)):
        rows = np.concatenate(subset)
        pairs, n_rows = int((rows >= 0).sum()), np.unique(rows[rows >= 0]).size
        best = max(best, pairs * pairs / (n_rows * n_out * len(subset)))
    return best


@lru_cache(maxsize=4096)
def axis_set_reuse(n_in: int, n_out: int, kernel: int, stride: int, pad: int, dil: int,
                   residue: int | None = None) -> float:
    """sigma of one axis (or of one polyphase class of its taps, `residue`): the exact maximum
    over sets, padded by `SET_PAD`.  1 for an axis with no used tap.  The caller bounds the cost
    (the scan is exponential in the rows shared by consecutive outputs and visits every subset of
    the used taps).  Local."""
    best = 1.0
    for subset in _subsets(used_rows(n_in, n_out, kernel, stride, pad, dil, residue)):
        reads = [[int(t[h]) for t in subset if t[h] >= 0] for h in range(n_out)]
        table = densest(reads).astype(float)
        a = np.arange(table.shape[0])[:, None]
        c = np.arange(table.shape[1])[None, :]
        ok = (table > _NONE) & (a > 0) & (c > 0)
        if ok.any():
            best = max(best, float((table[ok] ** 2 / (a * c * len(subset))[ok]).max()))
    return best * (1.0 + SET_PAD)
