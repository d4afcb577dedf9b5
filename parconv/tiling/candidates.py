"""Candidate block sizes of the tiling optimiser (`parconv.tiling.search`, steps 2 and 3).
Pure data, no MPI.

* `near_sizes`: integer sizes around one continuous optimum of the relaxation;
* `ladder`: every size that is the smallest with its trip count, and granularity multiples (the
  values a pairwise move tries; also the Gemmini screen's, `parconv.gemmini.tiled.search`);
* `grid`: every combination of per-loop value sets, one row each;
* `ladder_pairs`: the `grid` of two ladders, once per pair of (extent, granularity).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


def near_sizes(extent: int, t: float, granularity: int, all_below: int = 8) -> set[int]:
    """Integer block sizes around a continuous one (module docstring, step 2)."""
    values = {1, extent, math.floor(t), math.ceil(t)}
    for blocks in {math.floor(extent / t), math.ceil(extent / t)}:
        if blocks >= 1:
            values.add(-(-extent // blocks))
    if granularity > 1:
        values |= {math.floor(t / granularity) * granularity,
                   math.ceil(t / granularity) * granularity}
    if extent <= all_below:
        values |= set(range(1, extent + 1))
    return {v for v in values if 1 <= v <= extent}


def ladder(extent: int, granularity: int) -> np.ndarray:
    """Every block size that is the smallest with its trip count, and granularity multiples."""
    values = np.unique(-(-extent // np.arange(1, extent + 1)))
    if granularity > 1:
        values = np.union1d(values, np.arange(granularity, extent + 1, granularity))
    return values


def grid(values: list) -> np.ndarray:
    """Every combination of the value sets (one column each), the last varying fastest."""
    columns = [np.asarray(sorted(v), dtype=np.int64) for v in values]
    sizes = [len(c) for c in columns]
    total = math.prod(sizes)
    out = np.empty((total, len(columns)), dtype=np.int64)
    inner = total
    for j, column in enumerate(columns):
        inner //= sizes[j]
        out[:, j] = np.tile(np.repeat(column, inner), total // (inner * sizes[j]))
    return out


@lru_cache(maxsize=256)
def ladder_pairs(extent_a: int, granularity_a: int, extent_b: int, granularity_b: int
                 ) -> np.ndarray:
    """``grid([ladder(extent_a, granularity_a), ladder(extent_b, granularity_b)])``, built once
    per layer shape (the optimiser's pairwise moves and the Gemmini screen's share most of
    them); read-only."""
    pairs = grid([ladder(extent_a, granularity_a), ladder(extent_b, granularity_b)])
    pairs.setflags(write=False)
    return pairs
