"""The halo term of B_MI for 3x3, stride-1, dilation-1 layers (docs/theory.md 4.8).  Pure, no MPI.

A processor doing part of a plane's work holds more pixels and output positions than that part
of the plane: the boundary of its set in the window graph.  With X the pixels and Y the output
centres it holds in one plane (after the vertex reduction of 4.8, whole channels),

    2 pairs(X, Y) = 9 (|X| + |Y|) - sum_t |Y ^ (X - t)|          (^: symmetric difference),

and the sum is at least the king's-graph cut of the larger set on the four parity classes
(`class_profile`) or a multiple of the spread of its class counts.  Over any number of planes
(`window_sum_bound`) that gives `halo_pixels`, a lower bound on x_I / C + x_O / K, which joins
B_MI's program by weak duality (`halo_traffic`); `halo_term` is what `parallel_bounds` adds.
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache

import numpy as np

from ..spec import ConvSpec
from .traffic import minimum_traffic, traffic_program
from .workfn import output_bytes

__all__ = ["applies", "centre_box", "class_profile", "plane_bound", "window_sum_bound",
           "halo_pixels", "halo_traffic", "halo_term", "table_cost", "TABLE_BUDGET"]

_INF = np.iinfo(np.int64).max // 4
#: the largest tables computed (`table_cost`: DP cells of the class profile and pairs of the
#: minorant): a 224x224 plane at P = 2N costs 4.3e8 (about 3-4 s and 60 MB, once per process),
#: a 300x300 one 1.6e9 (its term is left out)
TABLE_BUDGET = 6 * 10 ** 8
#: evaluations of the concave dual function in mu (golden section; every one is a valid bound)
MU_STEPS = 24


def applies(spec: ConvSpec) -> bool:
    """A 3x3 window at stride 1 and dilation 1 (any padding): the taps are {-1, 0, 1}^2."""
    return spec.kernel_size == (3, 3) and spec.stride == (1, 1) and spec.dilation == (1, 1)


def centre_box(spec: ConvSpec) -> tuple[int, int]:
    """Rows and columns of the smallest box of Z^2 holding every pixel and every output centre.

    Output h reads pixels h - pad + 1 + t, t in {-1, 0, 1}: its centres run over
    [1 - pad, n + pad_end - 2], the pixels over [0, n - 1] (the plane itself for paddings <= 1)."""
    return tuple(max(n - 1, n + end - 2) - min(0, 1 - pad) + 1
                 for n, pad, end in zip(spec.in_size, spec.padding, spec.padding_end))


def class_profile(rows: int, cols: int, wmax: int | None = None) -> np.ndarray:
    """Least king's-graph cut (every edge between the set and the rest of Z^2, so edges leaving
    the box count) of w points of a rows x cols box, for w = 0 .. wmax (default rows cols).
    Local; the array is read-only.

    Centring every row of a set never raises the cut (docs/theory.md 4.8), so the least cut is a
    DP over row lengths: the top and bottom rows cost 3 l against the outside, a non-empty row 2,
    and consecutive rows of lengths u, v cost 3 |u - v| more, and 4 more if u = v >= 1, 2 more if
    |u - v| = 1 and both >= 1.  The minimum over the previous length is a distance transform
    (two running minima), so a row costs O(cols x rows cols), not O(cols^2 x rows cols).
    The profile is nondecreasing (removing the last point of a set in row-major order, which has
    at most 4 of its 8 neighbours in the set, never raises the cut), so truncating at wmax is
    exact.
    """
    wmax = rows * cols if wmax is None else min(wmax, rows * cols)
    return _longest(_stored("profile", rows, cols), wmax, lambda: _class_profile(rows, cols, wmax))


@lru_cache(maxsize=128)
def _stored(what: str, rows: int, cols: int) -> dict:
    """The longest table of ``what`` computed so far for a box (its prefixes are the shorter
    tables: every entry depends only on smaller sizes).  `cache_clear` forgets them all."""
    return {}


def _longest(store: dict, size: int, compute) -> np.ndarray:
    """The table for sizes 0 .. size, sliced from the longest one stored or computed."""
    table = store.get("table")
    if table is None or len(table) <= size:
        table = store["table"] = compute()
    return table[:size + 1]


def _class_profile(rows: int, cols: int, wmax: int) -> np.ndarray:
    width = wmax + 1
    length = np.arange(cols + 1)
    cost = np.full((cols + 1, width), _INF, np.int64)
    first = length[length < width]
    cost[first, first] = 3 * first + 2 * (first > 0)
    for done in range(1, rows):
        lim = min(width, (done + 1) * cols + 1)    # no more points than the rows so far hold
        cur = cost[:, :lim]
        forward = cur.copy()           # min over u <= x of cost[u] + 3 (x - u)
        for x in range(1, cols + 1):
            np.minimum(forward[x], forward[x - 1] + 3, out=forward[x])
        backward = cur.copy()          # min over u >= x of cost[u] + 3 (u - x)
        for x in range(cols - 1, -1, -1):
            np.minimum(backward[x], backward[x + 1] + 3, out=backward[x])
        best = np.full_like(cost, _INF)
        best[0, :lim] = (cur + 3 * length[:, None]).min(axis=0)     # an empty row
        # a row of length v >= 1 after one of length u: 3 |u - v| + 2, and 4 more if u = v,
        # 2 more if |u - v| = 1 (u >= 1): the forward / backward minima give |u - v| >= 2
        for v in range(1, min(cols, lim - 1) + 1):
            far = [cur[0] + 3 * v + 2]                               # after an empty row
            if v >= 3:
                far.append(forward[v - 2] + 6 + 2)
            if v + 2 <= cols:
                far.append(backward[v + 2] + 6 + 2)
            near = [cur[v] + 6] + ([cur[v - 1] + 7] if v >= 2 else []) \
                + ([cur[v + 1] + 7] if v < cols else [])
            row = np.minimum.reduce(far + near)
            best[v, v:lim] = row[:lim - v]
        cost = np.minimum(best, _INF)
    out = (cost + 3 * length[:, None]).min(axis=0)
    out.flags.writeable = False
    return out


def _min_plus(a: np.ndarray, b: np.ndarray, zmax: int) -> np.ndarray:
    """c(z) = min over u of a(u) + b(z - u), z = 0 .. zmax (u over both domains).  With a and b
    the same array only u <= z / 2 is needed."""
    out = np.full(zmax + 1, _INF, np.int64)
    rev = np.ascontiguousarray(b[::-1])       # b(z - u) for increasing u is a slice of it
    same = a is b
    for z in range(zmax + 1):
        lo, hi = max(0, z - len(b) + 1), min(z, len(a) - 1) + 1
        if same:
            hi = min(hi, z // 2 + 1)
        if lo < hi:
            start = len(b) - 1 - z
            out[z] = (a[lo:hi] + rev[start + lo:start + hi]).min()
    return out


def _split_bound(least: np.ndarray, zmax: int) -> np.ndarray:
    """For z = 0 .. zmax, a lower bound on sum_t |Y ^ (X - t)| when the larger set has z points in
    any split over the classes: max over E of min(6 E, 4 least(ceil(z / 4 - 3 E / 4))) (a spread
    of at least E, or every class at least that floor); the two terms cross once, found by
    bisection for every z at once."""
    z = np.arange(zmax + 1, dtype=np.float64)
    top = len(least) - 1

    def second(E):
        return 4 * least[np.clip(np.ceil(z / 4 - 0.75 * E).astype(np.int64), 0, top)]

    low, high = np.zeros(zmax + 1, np.int64), np.full(zmax + 1, zmax + 1, np.int64)
    while np.any(high - low > 1):          # the largest E with 6 E <= second(E)
        mid = (low + high) // 2
        ok = 6 * mid <= second(mid)
        low, high = np.where(ok, mid, low), np.where(ok, high, mid)
    return np.maximum(np.minimum(6 * low, second(low)), np.minimum(6 * high, second(high)))


def window_sum_bound(rows: int, cols: int, z0: int) -> int:
    """A lower bound on sum_n sum_t |Y_n ^ (X_n - t)| over planes n of a rows x cols box whose
    larger sets z_n = max(|X_n|, |Y_n|) <= rows cols have sum_n z_n >= z0 (0 <= z0 <= rows cols).
    Local.

    Per plane: the larger of the class counts' bound (`_split_bound`) and the least sum of the
    four class profiles over every split of z_n (a min-plus product), nondecreasing in z_n; over
    planes, its largest subadditive minorant at z0.  Tabulated per box up to a power of two
    (`_window_table`), so that other z0 of the same box cost nothing.
    """
    if not 0 <= z0 <= rows * cols:
        raise ValueError(f"z0 = {z0} outside [0, {rows * cols}]")
    if z0 == 0:
        return 0
    zmax = min(rows * cols, 1 << (z0 - 1).bit_length())
    return int(_longest(_stored("window", rows, cols), zmax,
                        lambda: _window_table(rows, cols, zmax))[z0])


def plane_bound(rows: int, cols: int, zmax: int) -> np.ndarray:
    """For z = 0 .. zmax (<= rows cols), a lower bound on sum_t |Y ^ (X - t)| over sets of one
    rows x cols box whose larger set has z points, nondecreasing in z.  Local.

    The larger of the class counts' bound (`_split_bound`) and the least sum of the four class
    profiles over every split of z (a min-plus product)."""
    boxes = [(len(range(p, rows, 2)), len(range(q, cols, 2))) for p in (0, 1) for q in (0, 1)]
    # class profiles are nondecreasing, so none needs more than zmax points
    classes = [class_profile(*box, min(zmax, box[0] * box[1])) for box in boxes
               if box[0] and box[1]]
    if len(classes) == 4 and len(set(boxes)) == 1:      # an even plane: square the class twice
        pair = _min_plus(classes[0], classes[0], zmax)
        every = _min_plus(pair, pair, zmax)
    else:
        every = classes[0][:zmax + 1]
        for other in classes[1:]:
            every = _min_plus(every, other, zmax)
    smallest = min(len(c) for c in classes)
    least = np.minimum.reduce([c[:smallest] for c in classes])
    if len(classes) < 4:                     # an empty class holds 0 points: no floor on the rest
        least = np.zeros_like(least)
    return np.maximum(_split_bound(least, zmax), every)


def _window_table(rows: int, cols: int, zmax: int) -> np.ndarray:
    """`window_sum_bound` for z0 = 0 .. zmax: the largest subadditive minorant of `plane_bound`
    (a processor's planes have sum_n plane_bound(z_n) >= it at sum_n z_n).  Read-only."""
    hull = plane_bound(rows, cols, zmax)
    for z in range(2, zmax + 1):
        u = np.arange(1, z // 2 + 1)
        hull[z] = min(hull[z], int((hull[u] + hull[z - u]).min()))
    hull.flags.writeable = False
    return hull


def halo_term(spec: ConvSpec, work: int, usable: tuple[int, int, int]) -> float:
    """`halo_traffic` where the argument has something to charge, else 0.  Local.

    It applies to 3x3 stride-1 layers whose busy processor's larger sets fit one plane (at most
    rows cols points in all, z0 of `halo_pixels`): a processor holding whole planes has no halo
    to charge, and beyond one plane the minorant would need every split of z0 over the planes.
    Planes whose tables would cost more than `TABLE_BUDGET` (`table_cost`) are left out too (0
    is a bound as well), so the planner never spends more than seconds on it.
    """
    if work <= 0 or spec.G_eff == 0 or not applies(spec):
        return 0.0
    rows, cols = centre_box(spec)
    z0 = _larger_sets(spec, work)
    if z0 > rows * cols or table_cost(rows, cols, z0) > TABLE_BUDGET:
        return 0.0
    return halo_traffic(spec, work, usable)


def table_cost(rows: int, cols: int, z0: int) -> int:
    """The work of `window_sum_bound`'s tables at z0 on a rows x cols box: the class profile's
    DP cells (rows x cols x points, per class box) and the minorant's pairs (zmax^2 / 4)."""
    zmax = min(rows * cols, 1 << max(z0 - 1, 0).bit_length())
    half_rows, half_cols = -(-rows // 2), -(-cols // 2)
    points = min(zmax, half_rows * half_cols)
    return half_rows * (half_cols + 1) * (points + 1) + zmax * zmax // 4


def _larger_sets(spec: ConvSpec, work: int) -> int:
    """z0: the least sum over planes of max(|X_n|, |Y_n|) for ``work`` iterations (a plane's
    (output, tap) pairs are at most 9 min(|X_n|, |Y_n|))."""
    return math.ceil(work / (spec.in_channels * spec.out_channels) / 9 * (1 - 1e-12))


def halo_pixels(spec: ConvSpec, work: int) -> float:
    """A lower bound on x_I / C + x_O / K for any processor doing at least ``work`` effective
    iterations of a layer that `applies` (docs/theory.md 4.8).  Local.

    The processor's (output, tap) pairs per input and output channel, at least work / (C K),
    need 9 (|X| + |Y|) >= 2 work / (C K) + the window sum; the vertex reduction's fractional
    pixel and position cost 2.
    """
    pairs = work / (spec.in_channels * spec.out_channels)
    z0 = _larger_sets(spec, work)
    # the factor keeps rounding from ever lifting the value above the exact one
    return ((2 * pairs + window_sum_bound(*centre_box(spec), z0)) / 9 - 2) * (1 - 1e-12)


@lru_cache(maxsize=4096)
def halo_traffic(spec: ConvSpec, work: int, usable: tuple[int, int, int]) -> float:
    """A certified lower bound on p_I x_I + p_F x_F + p_O x_O over B_MI's program at ``work``
    with the added constraint x_I / C + x_O / K >= `halo_pixels` (docs/theory.md 4.8).  Local.

    The constraint is linear, not a row of the log-convex program, so it enters by weak
    duality: for every mu >= 0, mu pixels + B_MI's program at prices p_I - mu / C, p_F,
    p_O - mu / K is a lower bound; that function of mu is concave (a minimum of affine
    functions), maximised by golden section below the largest mu keeping the prices positive.
    Returns the largest value evaluated (mu = 0 is B_MI's own program).
    """
    pixels = halo_pixels(spec, work)
    prog, rhs, lower, upper = traffic_program(spec, work, usable)
    prices = np.array([spec.p_in, spec.p_weight, output_bytes(spec)], float)
    C, K = spec.in_channels, spec.out_channels
    slope = np.array([1.0 / C, 0.0, 1.0 / K])

    def value(mu: float) -> float:
        sub = dataclasses.replace(prog, bytes_per=prices - mu * slope)
        return mu * pixels + minimum_traffic(sub, rhs, lower, upper).value

    top = 0.999 * min(prices[0] * C, prices[2] * K)
    seen = {0.0: value(0.0)}
    a, b = 0.0, top
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    seen[c], seen[d] = value(c), value(d)
    for _ in range(MU_STEPS):
        if seen[c] >= seen[d]:
            b, d = d, c
            c = b - ratio * (b - a)
            seen[c] = value(c)
        else:
            a, c = c, d
            d = a + ratio * (b - a)
            seen[d] = value(d)
    return max(seen.values())
