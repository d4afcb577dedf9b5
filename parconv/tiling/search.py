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
then by the number of tiles; the winner is re-scored with `parconv.tiling.traffic`.  The pieces
live in their own modules: `parconv.tiling.candidates` (the sizes of steps 2 and 3),
`parconv.tiling.scorer` (scoring and the local search of step 3) and `parconv.tiling.totals`
(the vectorised model); this module holds the optimiser itself.
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
from typing import Iterator

import numpy as np

from ..bounds import sequential_bound
from ..errors import ParconvError
from ..spec import ConvSpec
from .candidates import grid, near_sizes
from .model import LOOPS, Tiling, Traffic, check_order, extents, traffic
from .relax import relax
from .scorer import Scorer, local_search

#: one loop order per reuse pattern; together they attain the best of all 5040 orders
CANONICAL_ORDERS = {"output-stationary": "NHWKRSC",
                    "weight-stationary": "KRSCNHW",
                    "input-stationary": "NHWRSCK"}
ALL_ORDERS = tuple("".join(p) for p in itertools.permutations(LOOPS))


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
    scorer = Scorer(spec, memory, orders)
    if math.prod(ext) <= full_search_limit:
        scorer.offer(grid([range(1, e + 1) if l in free else {e} for l, e in zip(LOOPS, ext)]))
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


def _search(scorer: Scorer, memory, free: str, granularity: int,
            max_grid: int = 300_000) -> None:
    """Relaxation, integer neighbourhood and local search (module docstring, steps 1-3)."""
    spec, ext = scorer.spec, extents(scorer.spec)
    smallest = [1 if l in free else e for l, e in zip(LOOPS, ext)]
    grids = [np.array([smallest])]
    budgets = memory.budgets() if hasattr(memory, "budgets") else \
        [(("input", "filter", "output"), memory.capacity())]
    for order in scorer.orders:
        point = relax(spec, order, budgets, free)
        values = [near_sizes(e, t, granularity if l in "KC" else 1) if l in free else {e}
                  for l, e, t in zip(LOOPS, ext, point)]
        if math.prod(len(v) for v in values) > max_grid:
            values = [{min(max(math.floor(t), 1), e), min(math.ceil(t), e), e} if l in free
                      else {e} for l, e, t in zip(LOOPS, ext, point)]
        grids.append(grid(values))
    # the smallest tile and the three neighbourhoods scored in one call, offered in turn
    starts = [scorer.consume(best) for best in scorer.best_of_groups(grids)]
    # one local search from every distinct start: different reuse patterns end in different local
    # optima of the pairwise moves
    for start in sorted({s for s in starts if s is not None}):
        local_search(scorer, start, free, granularity)


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
