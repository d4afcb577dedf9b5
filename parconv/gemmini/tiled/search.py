"""Refinement of parconv's tiling for Gemmini's cycle model.  Pure numpy, no MPI.

`parconv.tiling.optimise` finds the (tiling, order) that moves the fewest bytes.  On Gemmini the
bytes are only one of the two terms of the cycle model: a tile whose output width is not a
multiple of the array side (a pass of I < 16 pixels) or whose channel blocks are ragged wastes
array passes, and a byte-optimal tile can be several times slower on a compute-bound layer.  This
module searches the neighbourhood of the optimiser's answer (and of the vendor tile) for tilings
that are fast *and* frugal:

* candidate sizes per loop are the "ladder" values (every size that is the smallest with its
  number of blocks) plus multiples of ``dim`` for K, C and W (the array's granularity);
* each candidate is screened with a closed-form approximation of the calibrated cycle model
  (`parconv.gemmini.cycles`): ``max(c_call tiles, max(L, X) + alpha min(L, X))`` summed as if
  every tile were alike, with ``X = exec_total + p_pass passes`` (`exec_totals`, in closed form:
  the pass model is a product of per-loop factors) and ``L = bytes (inv_bw + t_hit / 64)``
  (``bytes`` = exact traffic of `parconv.tiling.traffic_totals` plus the bias stream);
* pairwise coordinate search (every pair of free loops over their candidate values) from the
  best seed until nothing improves; ranking key = (screened cycles in steps of `CYCLE_SLACK` of
  the ideal ``G / dim^2``, then bytes), so among equally fast tilings the one moving fewer bytes
  wins.  The fastest and the most frugal candidates of every sweep are remembered.  As in
  `parconv.tiling.scorer`, the sweeps are taken in turn but screened a few at a time in one
  vectorised call, and a sweep already taken around the same point is not repeated.

The best few candidates are then costed exactly by `parconv.gemmini.tiled.cost.tiling_cost` by the
caller (`parconv.gemmini.tiled.choose.choose_tiling`).
"""

from __future__ import annotations

import itertools
import math
import operator

import numpy as np

from ...spec import ConvSpec
from ...tiling import LOOPS, clip_array, extents
from ...tiling.candidates import ladder_pairs
from ...tiling.totals import traffic_totals_clipped, trip_counts
from .. import call_rules as rules
from ..cycles import LINE_BYTES, load_constants

_I = {loop: i for i, loop in enumerate(LOOPS)}
#: cycle slack: tilings within this fraction of the fastest count as equally fast, and the one
#: moving the fewest bytes among them wins (also the width of the ranking key's cycle bins, as a
#: fraction of the ideal cycles G / dim^2)
CYCLE_SLACK = 0.02
#: pairwise moves screened in one vectorised call (`refine`)
MOVES_AT_ONCE = 4


def _per_loop(t: np.ndarray, ext: int):
    """(full size, number of full blocks, ragged size) of one loop for each candidate; the
    ragged block is the last one (it equals the full size when the extent divides evenly)."""
    trips = -(-ext // t)
    return t, trips - 1, ext - (trips - 1) * t


def _loop_sum(t: np.ndarray, ext: int, f) -> np.ndarray:
    full, n_full, ragged = _per_loop(t, ext)
    return n_full * f(full) + f(ragged)


def exec_totals(spec: ConvSpec, tiles: np.ndarray, config, strided: bool = False,
                passes_only: bool = False) -> np.ndarray:
    """Execute-model cycles (gemmini.md 4.7) summed over all tiles, for each row of an (m, 7)
    array of block sizes, in closed form (with ``passes_only``: the number of array passes).

    A tile's cycles are ``blocks(K, R, S, C) * passes(N, H, W)`` with ``passes = n h F(w) +
    G(w)``, so the sum over tiles factorises into sums over each loop's blocks (the (S, C) pair
    jointly, because of the first-layer packing).
    """
    cycles, passes = exec_and_passes(spec, tiles, config, strided)
    return passes if passes_only else cycles


def exec_and_passes(spec: ConvSpec, tiles: np.ndarray, config, strided: bool = False
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(`exec_totals`, `exec_totals` with ``passes_only``) of each row, sharing the work."""
    t = clip_array(spec, np.atleast_2d(tiles)).T
    return _combine(_loop_sums(spec, list(t), config, strided))


def _loop_sums(spec: ConvSpec, t: list, config, strided: bool) -> dict:
    """The factors of `exec_and_passes`, each a sum over the blocks of one loop (``sc``: of the
    S and C loops jointly) for the block sizes ``t[j]`` of loop j (arrays that broadcast)."""
    ext = extents(spec)
    d = config.dim
    dilated = max(spec.dilation) > 1
    loops = [_per_loop(t[j], ext[j]) for j in range(7)]

    def over(j, f):
        # sum of f over the blocks of loop j: the full ones and the ragged last one
        full, n_full, ragged = loops[j]
        return n_full * f(full) + f(ragged)

    def last_pass(w):
        return np.maximum(w - d * (_ceil_div(w, d) - 1), rules.MIN_PASS_CYCLES)

    sum_passes = over(4, lambda w: _ceil_div(w, d))
    (s_full, s_n, s_rag), (c_full, c_n, c_rag) = loops[6], loops[2]
    sum_sc = 0
    for (s, ns), (c, nc) in itertools.product(((s_full, s_n), (s_rag, 1)),
                                              ((c_full, c_n), (c_rag, 1))):
        mpp = rules.max_pixels_per_row(config, c, s, strided, dilated)
        sum_sc = sum_sc + ns * nc * rules.ceil_div(s, mpp) * _ceil_div(c, d)
    return {"n": over(0, lambda v: v), "h": over(3, lambda v: v),
            "trips_n": loops[0][1] + 1, "trips_h": loops[3][1] + 1, "passes": sum_passes,
            "f": d * (sum_passes - loops[4][1] - 1) + over(4, last_pass),
            "g": over(4, lambda w: d - last_pass(w)), "k": over(1, lambda k: _ceil_div(k, d)),
            "r": over(5, lambda r: r), "sc": sum_sc}


def _combine(sums: dict) -> tuple[np.ndarray, np.ndarray]:
    """(execute cycles, passes) from the loop sums: a tile's cycles are ``blocks(K, R, S, C) *
    passes(N, H, W)``, so the sum over tiles is the product of per-loop sums."""
    sum_nh = sums["n"] * sums["h"]
    trips_nh = sums["trips_n"] * sums["trips_h"]
    blocks = sums["k"] * sums["r"] * sums["sc"]
    return (blocks * (sum_nh * sums["f"] + trips_nh * sums["g"]),
            blocks * (sum_nh * sums["passes"]))


class _LoopSumTables:
    """`_loop_sums` of every block size of each loop (``sc``: of every (S, C) pair), computed
    once per search, so that `exec_and_passes` of many tiles is a few table lookups (the same
    integers)."""

    _LOOP = {"n": 0, "h": 3, "trips_n": 0, "trips_h": 3, "passes": 4, "f": 4, "g": 4, "k": 1,
             "r": 5}

    def __init__(self, spec: ConvSpec, config, strided: bool):
        ext = extents(spec)
        sizes = [np.arange(1, e + 1, dtype=np.int64) for e in ext]
        sizes[6], sizes[2] = sizes[6][:, None], sizes[2][None, :]
        self.tables = {k: np.asarray(v, dtype=np.int64)
                       for k, v in _loop_sums(spec, sizes, config, strided).items()}

    def exec_and_passes(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`exec_and_passes` of clipped tiles (an (m, 7) int64 array)."""
        at = np.ascontiguousarray(tiles.T) - 1          # one contiguous row per loop
        sums = {k: self.tables[k][at[j]] for k, j in self._LOOP.items()}
        sums["sc"] = self.tables["sc"][at[6], at[2]]
        return _combine(sums)


def _ceil_div(a: np.ndarray, d: int) -> np.ndarray:
    """ceil(a / d) of a positive integer array (a shift when d is a power of two)."""
    return (a + (d - 1)) >> (d.bit_length() - 1) if d & (d - 1) == 0 else -(-a // d)


def bias_totals(spec: ConvSpec, tiles: np.ndarray, config) -> np.ndarray:
    """Bias bytes of each row of an (m, 7) array: one ``dim``-wide row per ``dim`` output pixels
    of a row, per output channel, on the first visit of every output block."""
    if not config.has_bias:
        return np.zeros(len(np.atleast_2d(tiles)), dtype=np.int64)
    ext = extents(spec)
    t = clip_array(spec, np.atleast_2d(tiles)).T
    return (_loop_sum(t[0], ext[0], lambda v: v) * _loop_sum(t[3], ext[3], lambda v: v)
            * _loop_sum(t[4], ext[4], lambda w: rules.ceil_div(w, config.dim))
            * ext[1] * config.bias_bytes)


def _sorted_by(*keys: np.ndarray) -> np.ndarray:
    """``np.lexsort(keys[::-1])`` (first key first, stable) for non-negative integer keys, as
    one stable sort of a mixed-radix key when it fits in int64."""
    radix = [int(k.max()) + 1 if len(k) else 1 for k in keys]
    if math.prod(radix) >= 2 ** 62:
        return np.lexsort(keys[::-1])
    combined = keys[0].astype(np.int64)
    for key, base in zip(keys[1:], radix[1:]):
        combined = combined * base + key
    return np.argsort(combined, kind="stable")


def _ranked_by(*keys: np.ndarray) -> np.ndarray:
    """`_sorted_by` of each row of the (orders, m) keys (a 1-d key is shared by every row):
    one stable sort of a mixed-radix key per row when it fits in int64."""
    rows = max(k.shape[0] for k in keys if k.ndim == 2)
    radix = [int(k.max()) + 1 if k.size else 1 for k in keys]
    if math.prod(radix) >= 2 ** 62:
        return np.stack([_sorted_by(*(k if k.ndim == 1 else k[o] for k in keys))
                         for o in range(rows)])
    combined = np.broadcast_to(keys[0], (rows, keys[0].shape[-1])).astype(np.int64)
    for key, base in zip(keys[1:], radix[1:]):
        combined = combined * base + key
    return np.argsort(combined, axis=1, kind="stable")


def _unique_rows(rows: np.ndarray, radix: list | None = None) -> np.ndarray:
    """``np.unique(rows, axis=0)`` for non-negative integer rows, on one mixed-radix key per row
    (a 1-d sort) when the key fits in int64.  ``radix``: a bound above every value of each
    column, when known (else the column maxima + 1)."""
    if not len(rows):
        return np.unique(rows, axis=0)
    radix = radix or [int(v) + 1 for v in rows.max(axis=0)]
    if math.prod(radix) >= 2 ** 62:
        return np.unique(rows, axis=0)
    weights = np.array([math.prod(radix[j + 1:]) for j in range(len(radix))], dtype=np.int64)
    key = rows @ weights
    if np.all(key[1:] > key[:-1]):        # already distinct and sorted (a pair grid)
        return rows
    _, first = np.unique(key, return_index=True)
    return rows[first]


class Screen:
    """Screens and ranks candidate (tiling, order) pairs; remembers the best ones.  Local."""

    def __init__(self, spec: ConvSpec, memory, config, orders, strided: bool = False,
                 keep: int = 16):
        self.spec, self.memory, self.config = spec, memory, config
        self.orders, self.strided, self.keep = list(orders), strided, keep
        self.constants = load_constants()
        self.bin = max(CYCLE_SLACK * spec.G / config.dim ** 2, 1.0)
        # every entry consumed, in turn: (bins, bytes, tiles, order index) arrays
        self.log: list[tuple] = []
        self.extents = np.asarray(extents(spec))
        self.best: tuple | None = None          # (key, tile, order)
        self._exec = _LoopSumTables(spec, config, strided)
        self._trips = trip_counts(tuple(extents(spec)))

    def offer(self, tiles: np.ndarray) -> bool:
        """Score the fitting rows of ``tiles`` under every order; True if the best improved."""
        return self.consume(self.entries_of_groups([tiles])[0])

    def consume(self, entries: tuple | None) -> bool:
        """Remember a grid's entries (`entries_of_groups`); True if the best improved (the
        first entry of the smallest key (bins, bytes), if it beats the best so far)."""
        if entries is None:
            return False
        self.log.append(entries)
        bins, moved, tiles, orders = entries
        # the first entry of the smallest (bins, bytes): the head of the stable sort
        i = int(np.argmin(bins * (int(moved.max()) + 1) + moved)) \
            if (int(bins.max()) + 1) * (int(moved.max()) + 1) < 2 ** 62 \
            else int(_sorted_by(bins, moved)[0])
        key = (int(bins[i]), int(moved[i]))
        if self.best is None or key < self.best[0]:
            self.best = (key, tuple(int(v) for v in tiles[i]), self.orders[orders[i]])
            return True
        return False

    def entries_of_groups(self, groups: list) -> list:
        """For each array of ``groups``: the entries it contributes, per order the `keep`
        fastest (screened cycles bin, then bytes) and the `keep` most frugal of its distinct
        fitting rows, as (bins, bytes, tiles, order index) arrays (None: no row fits).  One
        vectorised evaluation for all groups; nothing is remembered (`consume` does that)."""
        label = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
        rows = np.concatenate([np.atleast_2d(g) for g in groups])
        # distinct rows of each group, sorted within it (np.unique of each group alone)
        rows = _unique_rows(np.column_stack((label, clip_array(self.spec, rows))),
                            [len(groups), *(int(e) + 1 for e in self.extents)])
        fits = getattr(self.memory, "fits_clipped", self.memory.fits_array)
        rows = rows[np.asarray(fits(self.spec, rows[:, 1:]), dtype=bool)]
        if not len(rows):
            return [None] * len(groups)
        label, tiles = rows[:, 0], np.ascontiguousarray(rows[:, 1:])
        exec_total, passes = self._exec.exec_and_passes(tiles)
        bias = bias_totals(self.spec, tiles, self.config)
        trips = self._trips(tiles)
        n_tiles = trips[:, 0]
        for j in range(1, trips.shape[1]):
            n_tiles = n_tiles * trips[:, j]
        c = self.constants
        x = exec_total + c.p_pass * passes
        moved_all = traffic_totals_clipped(self.spec, tiles, trips, self.orders) + bias
        # the screened cycles of every order at once (elementwise: the same numbers per order)
        load = moved_all * (c.inv_bw + c.t_hit / LINE_BYTES)
        score = np.maximum(c.c_call * n_tiles, np.maximum(load, x) + c.alpha * np.minimum(load, x))
        bins_all = np.floor(score / self.bin).astype(np.int64)
        # stable sorts within each group, every order at once: its first `keep` fastest, then
        # its `keep` most frugal (a group has the same rows, hence as many picks, in every order)
        fast, frugal = _ranked_by(label, bins_all, moved_all), _ranked_by(label, moved_all)
        sizes = np.bincount(label, minlength=len(groups))
        start = np.r_[0, np.cumsum(sizes)[:-1]]
        # a group keeps its positions in every sorted row (label is the first key)
        head = np.arange(len(label)) - start[label] < self.keep
        fast, frugal = fast[:, head], frugal[:, head]
        bounds = np.r_[0, np.cumsum(np.minimum(sizes, self.keep))].tolist()
        out = []
        for g in range(len(groups)):
            if bounds[g] == bounds[g + 1]:
                out.append(None)
                continue
            picks = np.stack((fast[:, bounds[g]:bounds[g + 1]],
                              frugal[:, bounds[g]:bounds[g + 1]]), axis=1)
            index = picks.reshape(-1)            # per order: its fastest, then its most frugal
            order = np.repeat(np.arange(len(self.orders)), picks.shape[1] * picks.shape[2])
            out.append((bins_all[order, index], moved_all[order, index], tiles[index], order))
        return out

    def top(self, count: int) -> list[tuple[tuple, str]]:
        """The ``count`` best (tile, order) pairs seen, best first (a tie: the one seen
        first)."""
        if not self.log:
            return []
        bins, moved, tiles, orders = (np.concatenate(part) for part in zip(*self.log))
        pairs = np.column_stack((tiles, orders))
        # the first time each pair was seen (it has the same key every time)
        first = np.sort(np.unique(_pair_keys(pairs), return_index=True)[1])
        ranked = first[_sorted_by(bins[first], moved[first])][:count]
        return [(tuple(int(v) for v in tiles[i]), self.orders[int(orders[i])])
                for i in ranked]


def _pair_keys(rows: np.ndarray) -> np.ndarray:
    """One int64 per row of non-negative integers (mixed radix), equal iff the rows are."""
    radix = [int(v) + 1 for v in rows.max(axis=0)]
    if math.prod(radix) >= 2 ** 62:
        return np.unique(rows, axis=0, return_inverse=True)[1].ravel()
    weights = np.array([math.prod(radix[j + 1:]) for j in range(len(radix))], dtype=np.int64)
    return rows @ weights


def refine(spec: ConvSpec, memory, config, seeds, orders, strided: bool = False,
           max_rounds: int = 6) -> Screen:
    """Pairwise coordinate search from the best of ``seeds`` (tile tuples).  Local.

    Returns the `Screen` holding the best candidates seen.
    """
    ext = extents(spec)
    screen = Screen(spec, memory, config, orders, strided)
    screen.offer(np.asarray(list(seeds), dtype=np.int64))
    if screen.best is None:
        return screen
    window = (ext[5], ext[6])
    free = "NKCHW" if screen.best[1][5:] == window else LOOPS
    granular = {"K": config.dim, "C": config.dim, "W": config.dim}
    steps = {loop: (int(ext[_I[loop]]), granular.get(loop, 1)) for loop in free}
    pairs = [((a, b), ladder_pairs(*steps[a], *steps[b]))
             for a, b in itertools.combinations(free, 2)]

    # the other five block sizes of a tile, per pair (itemgetter of five items: a tuple)
    others = [operator.itemgetter(*(i for i in range(len(LOOPS)) if i not in (_I[a], _I[b])))
              for (a, b), _ in pairs]

    def key(j: int, tile: tuple) -> tuple:
        (a, b), _ = pairs[j]
        return (a, b, others[j](tile))

    # the pairs are taken in turn from the best so far; the grids not yet scored are scored
    # together around the current best, and taken in turn up to the first that improves it
    # (the later ones are then scored again around the new best).  A grid consumed before
    # changes nothing (its candidates are remembered).
    scored, consumed = {}, set()
    for _ in range(max_rounds):
        improved = False
        j = 0
        while j < len(pairs):
            center = screen.best[1]
            missing = [m for m in range(j, len(pairs)) if key(m, center) not in scored
                       and key(m, center) not in consumed][:MOVES_AT_ONCE]
            if missing:
                grids = []
                for m in missing:
                    (a, b), pair = pairs[m]
                    tiles = np.empty((len(pair), len(LOOPS)), dtype=np.int64)
                    tiles[:] = center
                    tiles[:, _I[a]], tiles[:, _I[b]] = pair[:, 0], pair[:, 1]
                    grids.append(tiles)
                for m, entries in zip(missing, screen.entries_of_groups(grids)):
                    scored[key(m, center)] = entries
            while j < len(pairs):
                k = key(j, center)
                if k in consumed:
                    j += 1
                    continue
                if k not in scored:          # not screened yet: screen the next ones
                    break
                j += 1
                consumed.add(k)
                if screen.consume(scored.pop(k)):
                    improved = True
                    break
        if not improved:
            break
    return screen
