"""Scoring of candidate tilings and the pairwise local search of the optimiser
(`parconv.tiling.search`, steps 2 and 3).  Pure data, no MPI.

`Scorer` ranks candidate tilings by exact traffic under the best of its loop orders
(`parconv.tiling.totals.traffic_totals_clipped`), then by their number of tiles, keeping the
best seen; `local_search` runs the pairwise moves over the ladders of the free loops from one
start until nothing improves (coordinate descent, moves scored a few at a time in one vectorised
call, a move already scored around the same other five block sizes not scored again).
"""

from __future__ import annotations

import itertools
import operator

import numpy as np

from ..spec import ConvSpec
from .candidates import ladder_pairs
from .model import LOOPS, Tiling, clip_array, extents
from .totals import trip_counts, traffic_totals_clipped

_I = {loop: i for i, loop in enumerate(LOOPS)}
#: pairwise moves scored in one vectorised call (`local_search`; the later ones of a call are
#: wasted when an earlier one improves, so not all of a round at once)
MOVES_AT_ONCE = 4


class Scorer:
    """Ranks candidate tilings by exact traffic (best order), then by number of tiles."""

    def __init__(self, spec: ConvSpec, memory, orders: list[str]):
        self.spec, self.memory, self.orders = spec, memory, orders
        self.extents = np.asarray(extents(spec), dtype=np.int64)
        self.evaluated = 0
        self.best: tuple | None = None          # (total, tiles, tile tuple, order)
        self.moves: dict = {}                   # pairwise move -> best of its grid
        self._pairs: dict = {}                  # (free loops, granularity) -> pair grids
        self.trips = trip_counts(tuple(extents(spec)))   # of clipped tiles

    def pair_grids(self, free: str, granularity: int) -> list:
        """((a, b), every combination of the two ladders) for each pair of free loops, built
        once per search (every local search of one search uses the same)."""
        key = (free, granularity)
        if key not in self._pairs:
            steps = {l: (int(self.extents[_I[l]]), granularity if l in "KC" else 1) for l in free}
            self._pairs[key] = [((a, b), ladder_pairs(*steps[a], *steps[b]))
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

    def best_of_groups(self, groups: list, clipped: bool = False) -> list:
        """The best fitting row of each array of `groups` as (total, tiles, tile, order), or
        None; one vectorised evaluation for all of them, ``self.best`` untouched.  With
        ``clipped`` the rows are int64 block sizes already capped at the loop bounds."""
        out = [None] * len(groups)
        label = None if len(groups) == 1 else \
            np.repeat(np.arange(len(groups)), [len(g) for g in groups])
        tiles = np.atleast_2d(groups[0]) if label is None else \
            np.concatenate([np.atleast_2d(g) for g in groups])
        if not clipped:
            tiles = clip_array(self.spec, tiles)
        fits = self.fits(tiles)
        tiles = tiles[fits]
        if not len(tiles):
            return out
        trips = self.trips(tiles)
        totals = traffic_totals_clipped(self.spec, tiles, trips, self.orders)
        self.evaluated += totals.size
        total = totals.min(axis=0)
        count = trips[:, 0]
        for j in range(1, trips.shape[1]):
            count = count * trips[:, j]
        # the first row of the smallest (traffic, tiles) of each group (a stable sort's head):
        # the argmin of one integer key when (traffic, tiles) fit in it
        spread = int(count.max()) + 1
        key = total * spread + count if int(total.max()) * spread + spread < 2 ** 63 else None
        if label is None:
            spans = [(0, 0, len(tiles))]
        else:
            bounds = np.searchsorted(label[fits], np.arange(len(groups) + 1)).tolist()
            spans = [(g, bounds[g], bounds[g + 1]) for g in range(len(groups))
                     if bounds[g] < bounds[g + 1]]
        for g, lo, hi in spans:
            i = lo + int(np.argmin(key[lo:hi]) if key is not None
                         else np.lexsort((count[lo:hi], total[lo:hi]))[0])
            out[g] = (int(total[i]), int(count[i]), tuple(int(v) for v in tiles[i]),
                      self.orders[int(np.argmin(totals[:, i]))])
        return out


def local_search(scorer: Scorer, start: tuple, free: str, granularity: int,
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
                # the current tile is clipped and the ladders stay within the extents
                for m, found in zip(missing, scorer.best_of_groups(grids, clipped=True)):
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
