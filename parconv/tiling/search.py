"""The tiling optimiser of theory.md section 6: relaxation, integer search, exact scoring.

Pure data, no MPI.

Why three loop orders suffice
-----------------------------
Under the one-buffer-per-array model of `parconv.tiling` every loop is a reuse loop of exactly one
array (K of the input; N, H, W of the filter; C, R, S of the output) and a dependency of the other
two.  Take the innermost loop with more than one block: it belongs to the reuse set of one array X,
so the other two arrays depend on it and are reloaded on every tile change of their own loops -
each pays the full product of the trip counts of its reuse loops.  Only X can save, and it saves
most when all of its reuse loops are innermost.  Hence, for every tiling, the cheapest of all
5040 orders costs the same as the cheapest of the three `CANONICAL_ORDERS` (output-, weight- and
input-stationary; the order of the outer loops does not change the traffic).  The tests check this
against all 5040 orders.  Output-stationary orders never spill; the other two trade partial-sum
spills (``2 p_acc |O|`` per extra pass over C, R, S) for filter or input reuse.

The search
----------
1. Relaxation (`parconv.tiling.relax.relax`): one smooth problem per order in log block sizes,
   minimising modelled traffic under every memory budget.
2. Integer neighbourhood: floor, ceil, the balanced size with the same trip count, multiples of the
   hardware granularity (K and C) and the full extent around each continuous optimum; the product
   of those values is scored exactly.
3. Pairwise local search: for every pair of loops, every "ladder" value of both (every size
   ceil(E / n), every multiple of the granularity), until nothing improves.  The moves are taken
   in turn (coordinate descent) but scored a few at a time in one vectorised call, and a move
   already scored around the same other five block sizes is not scored again: the same answer
   as scoring one move at a time, with fewer numpy calls.
Candidates are scored by `traffic_totals` (the exact model, vectorised) and ranked by traffic,
then by the number of tiles; the winner is re-scored with `parconv.tiling.traffic`.
By default (``keep_window=True``) ``t_R = R`` and ``t_S = S`` whenever that window fits, as
theory.md section 6 asks.  That rule is a heuristic, not a theorem: when the memory barely holds
the window, splitting it can move fewer bytes (tests/test_tiling.py has tiny examples), so
``keep_window=False`` searches R and S like the other loops.  On the ResNet-50 layers with
Gemmini's memories it changes nothing.  Tiny layers (at most ``full_search_limit`` tilings) are
searched exhaustively.

What the memory object must provide: ``fits(spec, tiling)`` and ``capacity()``.  Optional:
``fits_array(spec, tiles)`` (vectorised fits over an (m, 7) array; without it the search calls
``fits`` per candidate and is slower) or ``fits_clipped(spec, tiles)`` (the same for rows
already capped at the loop bounds, preferred), ``budgets()`` (constraints of the relaxation;
default one memory of ``capacity()`` bytes holding all three arrays), ``granularity`` (default
for the ``granularity`` argument) and ``bound(spec)`` (a SequentialBound; default
``bounds.sequential_bound(spec, capacity())``) or ``bound_value(spec)`` (its value in bytes
only, preferred when present).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import operator
from functools import lru_cache
from typing import Iterator

import numpy as np

from ..bounds import sequential_bound
from ..errors import ParconvError
from ..spec import ConvSpec
from .model import (DEPENDS, LOOPS, REUSE_LOOPS, Tiling, Traffic, check_order,
                    clip_array, extents, traffic)
from .relax import relax

#: one loop order per reuse pattern; together they attain the best of all 5040 orders
CANONICAL_ORDERS = {"output-stationary": "NHWKRSC",
                    "weight-stationary": "KRSCNHW",
                    "input-stationary": "NHWRSCK"}
ALL_ORDERS = tuple("".join(p) for p in itertools.permutations(LOOPS))
_I = {loop: i for i, loop in enumerate(LOOPS)}
#: pairwise moves scored in one vectorised call (`_local_search`; the later ones of a call are
#: wasted when an earlier one improves, so not all of a round at once)
MOVES_AT_ONCE = 4


@dataclasses.dataclass(frozen=True)
class TilingResult:
    """The optimiser's answer: tiling, loop order, exact traffic and the sequential bound.

    ``bound`` is in bytes (sequential bound with M = ``memory.capacity()``), ``ratio`` is
    ``traffic.total / bound``, ``evaluated`` the number of (candidate, order) pairs scored.
    """

    tiling: Tiling
    order: str
    traffic: Traffic
    bound: float
    ratio: float
    evaluated: int = 0

    def to_dict(self) -> dict:
        return {"tiling": self.tiling.to_dict(), "tile": list(self.tiling.as_tuple()),
                "order": self.order, "traffic": self.traffic.to_dict(), "bound": self.bound,
                "ratio": self.ratio, "evaluated": self.evaluated}


# ---- vectorised exact model --------------------------------------------------------------------
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
    mask meets ``code`` (all orders at once: one operation per reuse loop)."""
    out = []
    for loops, masks in _mask_table(orders):
        result = np.ones((len(orders), len(code)), dtype=np.int64)
        for loop, mask in zip(loops, masks):
            result *= np.where(code[None, :] & mask[:, None], trips[None, :, loop], 1)
        out.append(result)
    return out


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


# ---- candidate sets ----------------------------------------------------------------------------
def _near(extent: int, t: float, granularity: int, all_below: int = 8) -> set[int]:
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


def _ladder(extent: int, granularity: int) -> np.ndarray:
    """Every block size that is the smallest with its trip count, and granularity multiples."""
    values = np.unique(-(-extent // np.arange(1, extent + 1)))
    if granularity > 1:
        values = np.union1d(values, np.arange(granularity, extent + 1, granularity))
    return values


def _grid(values: list) -> np.ndarray:
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


# ---- scoring -----------------------------------------------------------------------------------
class _Scorer:
    """Ranks candidate tilings by exact traffic (best order), then by number of tiles."""

    def __init__(self, spec: ConvSpec, memory, orders: list[str]):
        self.spec, self.memory, self.orders = spec, memory, orders
        self.extents = np.asarray(extents(spec), dtype=np.int64)
        self.evaluated = 0
        self.best: tuple | None = None          # (total, tiles, tile tuple, order)
        self.moves: dict = {}                   # pairwise move -> best of its grid
        self._pairs: dict = {}                  # (free loops, granularity) -> pair grids

    def pair_grids(self, free: str, granularity: int) -> list:
        """((a, b), every combination of the two ladders) for each pair of free loops, built
        once per search (every local search of one search uses the same)."""
        key = (free, granularity)
        if key not in self._pairs:
            ladders = {l: _ladder(int(self.extents[_I[l]]), granularity if l in "KC" else 1)
                       for l in free}
            self._pairs[key] = [((a, b), _grid([ladders[a], ladders[b]]))
                                for a, b in itertools.combinations(free, 2)]
        return self._pairs[key]

    def fits(self, tiles: np.ndarray) -> np.ndarray:
        """Whether each row of clipped ``tiles`` fits the memory."""
        if hasattr(self.memory, "fits_clipped"):
            return np.asarray(self.memory.fits_clipped(self.spec, tiles), dtype=bool)
        if hasattr(self.memory, "fits_array"):
            return np.asarray(self.memory.fits_array(self.spec, tiles), dtype=bool)
        return np.fromiter((self.memory.fits(self.spec, Tiling(*map(int, row))) for row in tiles),
                           dtype=bool, count=len(tiles))

    def offer(self, tiles: np.ndarray) -> tuple | None:
        """Score the fitting rows of `tiles` and return the best as (total, tiles, tile, order).

        The overall best is kept in ``self.best``.  None if no row fits.
        """
        return self.consume(self.best_of_groups([tiles])[0])

    def consume(self, candidate: tuple | None) -> tuple | None:
        """Count ``candidate`` (a grid's best, or None) towards the overall best; returns it."""
        if candidate is not None and (self.best is None or candidate[:2] < self.best[:2]):
            self.best = candidate
        return candidate

    def best_of_groups(self, groups: list) -> list:
        """The best fitting row of each array of `groups` as (total, tiles, tile, order), or
        None; one vectorised evaluation for all of them, ``self.best`` untouched."""
        label = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
        tiles = clip_array(self.spec, np.concatenate([np.atleast_2d(g) for g in groups]))
        fits = self.fits(tiles)
        tiles, label = tiles[fits], label[fits]
        out = [None] * len(groups)
        if not len(tiles):
            return out
        trips = -(-self.extents // tiles)
        totals = traffic_totals_clipped(self.spec, tiles, trips, self.orders)
        self.evaluated += totals.size
        which = totals.argmin(axis=0)
        total = totals[which, np.arange(len(which))]
        count = trips[:, 0]
        for j in range(1, trips.shape[1]):
            count = count * trips[:, j]
        # by group, then traffic, then tiles; stable, so a tie keeps the first row
        if len(groups) == 1:
            heads = np.lexsort((count, total))[:1]
        else:
            ranked = np.lexsort((count, total, label))
            heads = ranked[np.r_[True, label[ranked][1:] != label[ranked][:-1]]]
        for i in heads.tolist():
            out[label[i]] = (int(total[i]), int(count[i]), tuple(int(v) for v in tiles[i]),
                             self.orders[which[i]])
        return out


def _local_search(scorer: _Scorer, start: tuple, free: str, granularity: int,
                  max_rounds: int = 8) -> None:
    """Pairwise moves over the ladders of the free loops from `start` until nothing improves.

    The moves of a round are tried in turn, each from the best point so far (coordinate
    descent).  They are evaluated together: every move not yet scored is scored around the
    current point in one vectorised call, and the moves are then taken in turn up to the first
    that improves (the later ones were scored around a point that is no longer current, so they
    are scored again around the new one).  A move's grid depends only on the pair and on the
    other five block sizes, so the best of a grid already scored (in this search or an earlier
    one from another start) is reused.
    """
    pairs = scorer.pair_grids(free, granularity)

    # the other five block sizes of a tile, per pair (itemgetter of five items: a tuple)
    others = [operator.itemgetter(*(i for i in range(len(LOOPS)) if i not in (_I[a], _I[b])))
              for (a, b), _ in pairs]

    def key(j: int, tile: tuple) -> tuple:
        (a, b), _ = pairs[j]
        return (a, b, others[j](tile))

    current = start
    for _ in range(max_rounds):
        before = current
        j = 0
        while j < len(pairs):
            missing = [m for m in range(j, len(pairs))
                       if key(m, current[2]) not in scorer.moves][:MOVES_AT_ONCE]
            if missing:
                grids = []
                for m in missing:
                    (a, b), pair = pairs[m]
                    tiles = np.empty((len(pair), len(LOOPS)), dtype=np.int64)
                    tiles[:] = current[2]
                    tiles[:, _I[a]], tiles[:, _I[b]] = pair[:, 0], pair[:, 1]
                    grids.append(tiles)
                for m, found in zip(missing, scorer.best_of_groups(grids)):
                    scorer.moves[key(m, current[2])] = found
            while j < len(pairs):
                if key(j, current[2]) not in scorer.moves:    # not scored yet: score the next
                    break
                found = scorer.consume(scorer.moves[key(j, current[2])])
                j += 1
                if found is not None and found[:2] < current[:2]:
                    current = found
                    break
        if current == before:
            return


def optimise(spec: ConvSpec, memory, orders=None, granularity: int | None = None, *,
             keep_window: bool = True, full_search_limit: int = 4096) -> TilingResult:
    """The tiling and loop order that move the fewest bytes and fit in `memory`.

    Parameters
    ----------
    spec : ConvSpec
        The layer (or a rank's local block).
    memory : SingleMemory, ScratchAccMemory or any object with ``fits`` and ``capacity``
        (see the module docstring for the optional methods it may provide).
    orders : iterable of str, optional
        Loop orders to consider; default `CANONICAL_ORDERS`, which attain the best of all orders.
    granularity : int, optional
        Candidate tK and tC include multiples of this; default ``memory.granularity`` or 1.
    keep_window : bool
        Keep ``t_R = R`` and ``t_S = S`` whenever that window fits (theory.md section 6); with
        False the filter window is searched like the other loops (this can win when the memory
        barely holds the window).
    full_search_limit : int
        Layers with at most this many tilings are searched exhaustively.

    Returns
    -------
    TilingResult

    Raises
    ------
    ParconvError
        If no tiling fits (even all block sizes 1), or for a bad order.
    """
    orders = [check_order(o) for o in (orders or CANONICAL_ORDERS.values())]
    g = int(granularity or getattr(memory, "granularity", 1) or 1)
    ext = extents(spec)
    if not memory.fits(spec, Tiling(1, 1, 1, 1, 1, 1, 1)):
        raise ParconvError(f"memory {memory!r} is too small for the layer: even the smallest tile "
                           f"(every block size 1) does not fit")
    whole = keep_window and memory.fits(spec, Tiling(1, 1, 1, 1, 1, ext[5], ext[6]))
    free = "NKCHW" if whole else LOOPS
    scorer = _Scorer(spec, memory, orders)
    if math.prod(ext) <= full_search_limit:
        scorer.offer(_grid([range(1, e + 1) if l in free else {e} for l, e in zip(LOOPS, ext)]))
    else:
        _search(scorer, memory, free, g)
    total, _, tile, _ = scorer.best
    tiling = Tiling(*tile)
    best_traffic, best_order = min(((traffic(spec, tiling, o), o) for o in orders),
                                   key=lambda pair: pair[0].total)
    if best_traffic.total != total:
        raise AssertionError(f"vectorised and scalar traffic disagree for {tiling}: "
                             f"{total} != {best_traffic.total}")
    bound = _bound_value(spec, memory)
    return TilingResult(tiling=tiling, order=best_order, traffic=best_traffic, bound=bound,
                        ratio=best_traffic.total / bound, evaluated=scorer.evaluated)


def _search(scorer: _Scorer, memory, free: str, granularity: int,
            max_grid: int = 300_000) -> None:
    """Relaxation, integer neighbourhood and local search (module docstring, steps 1-3)."""
    spec, ext = scorer.spec, extents(scorer.spec)
    smallest = [1 if l in free else e for l, e in zip(LOOPS, ext)]
    starts = [scorer.offer(np.array([smallest]))]
    budgets = memory.budgets() if hasattr(memory, "budgets") else \
        [(("input", "filter", "output"), memory.capacity())]
    for order in scorer.orders:
        point = relax(spec, order, budgets, free)
        values = [_near(e, t, granularity if l in "KC" else 1) if l in free else {e}
                  for l, e, t in zip(LOOPS, ext, point)]
        if math.prod(len(v) for v in values) > max_grid:
            values = [{min(max(math.floor(t), 1), e), min(math.ceil(t), e), e} if l in free
                      else {e} for l, e, t in zip(LOOPS, ext, point)]
        starts.append(scorer.offer(_grid(values)))
    # one local search from every distinct start: different reuse patterns end in different local
    # optima of the pairwise moves
    for start in sorted({s for s in starts if s is not None}):
        _local_search(scorer, start, free, granularity)


def _bound_value(spec: ConvSpec, memory) -> float:
    if hasattr(memory, "bound_value"):
        return float(memory.bound_value(spec))
    if hasattr(memory, "bound"):
        return float(memory.bound(spec).value)
    return float(sequential_bound(spec, memory.capacity()).value)


def enumerate_tilings(spec: ConvSpec, memory=None, distinct_orders: bool = False
                      ) -> Iterator[tuple[Tiling, str]]:
    """Every tiling (block sizes 1..extent on each loop) and loop order, for tiny layers.

    With `memory`, only tilings that fit.  With ``distinct_orders``, only one order per relative
    order of the loops that have more than one block (loops with one block never change an index,
    so where they sit changes nothing): the others are put outermost.
    """
    ext = extents(spec)
    for sizes in itertools.product(*(range(1, e + 1) for e in ext)):
        tiling = Tiling(*sizes)
        if memory is not None and not memory.fits(spec, tiling):
            continue
        if not distinct_orders:
            for order in ALL_ORDERS:
                yield tiling, order
            continue
        trips = tiling.trips(spec)
        single = "".join(l for l, n in zip(LOOPS, trips) if n == 1)
        several = [l for l, n in zip(LOOPS, trips) if n > 1]
        for perm in itertools.permutations(several):
            yield tiling, single + "".join(perm)
