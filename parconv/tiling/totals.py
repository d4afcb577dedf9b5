"""The exact traffic model of `parconv.tiling.model.traffic`, vectorised over many tilings.
Pure data, no MPI.

`traffic_totals` gives the total bytes of every row of an (m, 7) array of block sizes for one or
several loop orders at once; `traffic_totals_clipped` is the same for rows already capped at the
loop bounds, with their trip counts (the optimiser's and the Gemmini screen's inner loop).  Per
axis, the in-image window lengths of every (output block, tap block) size pair are one table
(`_axis_table`, kept per axis shape); an array's reload multiplier is the product of the trip
counts of its reuse loops outside its innermost multi-block loop, as bit masks per order.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..spec import ConvSpec
from .model import DEPENDS, LOOPS, REUSE_LOOPS, check_order, clip_array, extents

_I = {loop: i for i, loop in enumerate(LOOPS)}


class TripCounts:
    """``ceil(E / t)`` of clipped block sizes by lookup: one table per loop (index t), laid end
    to end, so that the trip counts of an (m, 7) array are one gather instead of an integer
    division of every row."""

    def __init__(self, ext) -> None:
        ext = [int(e) for e in ext]
        self._at = np.cumsum([0] + [e + 1 for e in ext[:-1]]).astype(np.int64)
        self._table = np.concatenate([np.r_[0, -(-e // np.arange(1, e + 1))]
                                      for e in ext]).astype(np.int64)

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        return self._table[tiles + self._at]


@lru_cache(maxsize=64)
def trip_counts(ext: tuple) -> TripCounts:
    """The `TripCounts` of the loop extents ``ext`` (a tuple), built once per layer shape (the
    optimiser's scorer and the Gemmini screen of one search share it; never modified)."""
    return TripCounts(ext)


def _all_blocks(extent: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every block of every block size 1..extent of one loop: (starts, ends, index of the first
    block of each size)."""
    sizes = np.arange(1, extent + 1)
    counts = -(-extent // sizes)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    size = np.repeat(sizes, counts)
    lo = (np.arange(int(counts.sum())) - np.repeat(first, counts)) * size
    return lo, np.minimum(lo + size, extent), first


@lru_cache(maxsize=256)
def _axis_table(n_in: int, n_out: int, kernel: int, stride: int, pad: int, dil: int) -> np.ndarray:
    """``table[t_out, t_k]`` = `axis_window_sum` for every block size pair of one axis: the
    in-image window length of every (output block, tap block) pair, for all sizes at once."""
    h0, h1, h_first = _all_blocks(n_out)
    r0, r1, r_first = _all_blocks(kernel)
    first = np.maximum(stride * h0[:, None] + dil * r0[None, :] - pad, 0)
    last = np.minimum(stride * (h1 - 1)[:, None] + dil * (r1 - 1)[None, :] - pad, n_in - 1)
    lengths = np.clip(last - first + 1, 0, None)
    table = np.zeros((n_out + 1, kernel + 1), dtype=np.int64)
    table[1:, 1:] = np.add.reduceat(np.add.reduceat(lengths, h_first, axis=0), r_first, axis=1)
    return table


def traffic_totals(spec: ConvSpec, tiles: np.ndarray, order) -> np.ndarray:
    """Exact total traffic (bytes, int64) of each row of an (m, 7) array of block sizes.

    The same model as `parconv.tiling.traffic`, vectorised over tilings for one loop order
    (shape (m,)), or for each of a sequence of orders (shape (len(order), m)).
    """
    if isinstance(order, str):
        return _totals(spec, tiles, [check_order(order)])[0]
    return _totals(spec, tiles, [check_order(o) for o in order])


_BITS = 1 << np.arange(len(LOOPS), dtype=np.int64)


@lru_cache(maxsize=64)
def _reuse_masks(orders: tuple) -> tuple:
    """Per array and order: (reuse loop, bit mask of the array's loops inside it) pairs.

    A reuse loop multiplies the array's bytes by its trip count exactly when one of the
    array's own loops inside it has more than one block (`parconv.tiling.traffic`: the loops
    outside the array's innermost multi-block loop)."""
    return tuple(tuple(tuple((_I[loop], sum(1 << _I[d] for d in DEPENDS[array]
                                            if order.index(d) > order.index(loop)))
                             for loop in REUSE_LOOPS[array])
                       for order in orders)
                 for array in ("input", "filter", "output"))


def _totals(spec: ConvSpec, tiles: np.ndarray, orders: list[str]) -> np.ndarray:
    """`traffic_totals` for several orders at once: a (len(orders), m) array."""
    t = clip_array(spec, np.atleast_2d(tiles))
    trips = -(-np.asarray(extents(spec), dtype=np.int64) // t)
    return traffic_totals_clipped(spec, t, trips, orders)


def traffic_totals_clipped(spec: ConvSpec, t: np.ndarray, trips: np.ndarray,
                           orders: list[str]) -> np.ndarray:
    """`traffic_totals` (a (len(orders), m) array) of block sizes ``t`` already capped at the
    loop bounds (int64, (m, 7)), with their trip counts ``trips`` (the callers have both)."""
    code = (trips > 1) @ _BITS                    # bit i: loop i has more than one block
    rows = _axis_table(*spec.axis(0))[t[:, 3], t[:, 5]]
    cols = _axis_table(*spec.axis(1))[t[:, 4], t[:, 6]]
    per_input = spec.p_in * spec.batch * spec.in_channels * rows * cols
    spill = 2 * spec.p_acc * spec.size_output
    base = spec.size_output * (spec.p_out - 2 * spec.p_acc)
    filters_bytes = spec.p_weight * spec.size_filter
    inputs, filters, outputs = _multipliers(trips, code, tuple(orders))
    return per_input * inputs + filters_bytes * filters + spill * outputs + base


def _multipliers(trips: np.ndarray, code: np.ndarray, orders: tuple) -> list:
    """Per array, the (len(orders), m) products of the trip counts of its reuse loops whose
    mask meets ``code``.  Reuse loops with the same mask in an order multiply together or not
    at all, so their trip counts are multiplied first (once for every mask and order that
    shares the loops) and one selection per distinct mask follows (exact integers)."""
    out = []
    for groups in _factor_plan(orders):
        result = np.ones((len(orders), len(code)), dtype=np.int64)
        for loops, shared in groups:
            column = trips[:, loops[0]]
            for loop in loops[1:]:
                column = column * trips[:, loop]
            for bits, users in shared:
                factor = np.where(code & bits, column, 1)
                for o in users:
                    result[o] *= factor
        out.append(result)
    return out


@lru_cache(maxsize=64)
def _factor_plan(orders: tuple) -> tuple:
    """`_mask_table` as, per array, ((reuse loops with one mask), ((mask, orders), ...)) groups:
    in each order the loops of one nonzero mask, grouped over the orders by the same loops
    (their product is shared) and then by the same mask (the selection is shared)."""
    plan = []
    for loops, masks in _mask_table(orders):
        groups: dict = {}
        for o in range(len(orders)):
            by_mask: dict = {}
            for loop, mask in zip(loops, masks):
                if int(mask[o]):
                    by_mask.setdefault(int(mask[o]), []).append(loop)
            for bits, members in by_mask.items():
                groups.setdefault(tuple(members), {}).setdefault(bits, []).append(o)
        plan.append(tuple((members, tuple((bits, tuple(users)) for bits, users in shared.items()))
                          for members, shared in groups.items()))
    return tuple(plan)


@lru_cache(maxsize=64)
def _mask_table(orders: tuple) -> tuple:
    """`_reuse_masks` as, per array, its reuse loops and one (len(orders),) mask array each
    (loops whose mask is 0 in every order are left out: they never multiply)."""
    table = []
    for per_order in _reuse_masks(orders):
        loops = [loop for loop, _ in per_order[0]]
        masks = np.array([[mask for _, mask in pairs] for pairs in per_order],
                         dtype=np.int64).reshape(len(orders), len(loops))
        used = [j for j in range(len(loops)) if masks[:, j].any()]
        table.append((tuple(loops[j] for j in used), tuple(masks[:, j] for j in used)))
    return tuple(table)
