# python experiments/halo_profile.py [--layer vgg16.conv1_2] [--batch 32] [--ranks 64] [--check-box 4]
"""The halo an isoperimetric argument charges, and the bound it gives (issue 8, theory.md 5.7).

For a 3x3, stride-1, dilation-1 layer padded by 1, with X the input pixels and Y the output
positions a processor holds in one image plane (all channels; the vertex reduction of 5.7), the
effective (output, tap) pairs are exactly

    2 pairs(X, Y) = 9 (|X| + |Y|) - sum_t |Y ^ (X - t)|          (^: symmetric difference)

and the triangle inequality on the taps t, -t gives

    sum_t |Y ^ (X - t)| >= Phi(Z) + | |X| - |Y| |,   Z = X or Y,
    Phi(Z) = sum over d in (2,0), (0,2), (2,2), (2,-2) of |Z ^ (Z + d)|.

Phi splits over the four classes of 2Z^2 (row and column parity); on each it is the cut of the
king's graph with the plane's outside counted.  Its least value for w points in a B_h x B_w box
is exact over sets whose rows are centred intervals, which lose nothing (centring a row never
raises the cut, `class_profile`), by a DP over the row lengths, and checked by exhaustion on
small boxes.

The script prints its checks and, for the layer at P ranks (each busy processor holding 1/f
of an image plane, f = P / N), what the argument would charge: if a processor's pairs must reach its share
of a plane's pairs, F / f, then |X| + |Y| >= (2 F / f + LB) / 9 with LB = sum of the four class
profiles, so beyond its share of inputs and outputs it holds delta = (LB - 2 (9 A - F) / f) / 9
pixels, C delta input elements: first with the four classes holding equal numbers of points
(the case of every grid block), then for any split, where the class counts bound the sum too
(`median_term`: at least 6 times their spread), and last over any number of planes (the
bound's subadditive minorant), and finally what that does to the bound itself: the constraint
x_I / C + x_O / K >= pixels joined to B_MI's program by weak duality (`joint_bound`).  Nothing
here enters parconv's reported bounds yet (theory.md 5.7).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from parconv.errors import ParconvError  # noqa: E402
from parconv.layers import get_layer  # noqa: E402
from parconv.plan import make_plan  # noqa: E402

TAPS = [(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)]
#: the doubled tap differences of Phi (one of each pair t, -t)
PHI_SHIFTS = ((2, 0), (0, 2), (2, 2), (2, -2))
#: the king's graph directions on one parity class (PHI_SHIFTS halved)
KING = ((1, 0), (0, 1), (1, 1), (1, -1))


def _shifted(Z: np.ndarray, d) -> np.ndarray:
    """Z moved by d inside its zero frame (the frame is wide enough that nothing wraps)."""
    return np.roll(Z, d, axis=(0, 1))


def window_terms(X: np.ndarray, Y: np.ndarray) -> tuple[int, int, int]:
    """(pairs, sum_t |Y ^ (X - t)|, Phi(Y)) of two framed boolean planes."""
    pairs = sum(int((Y & _shifted(X, (-a, -b))).sum()) for a, b in TAPS)
    sym = sum(int((Y ^ _shifted(X, (-a, -b))).sum()) for a, b in TAPS)
    phi = sum(int((Y ^ _shifted(Y, d)).sum()) for d in PHI_SHIFTS)
    return pairs, sym, phi


def framed(block: np.ndarray, pad: int = 3) -> np.ndarray:
    return np.pad(block.astype(bool), pad)


def class_counts(Z: np.ndarray) -> np.ndarray:
    """Points of Z in each parity class (row parity, column parity), as a 2x2 array."""
    return np.array([[int(Z[p::2, q::2].sum()) for q in (0, 1)] for p in (0, 1)])


def count_term(y: np.ndarray, x: np.ndarray) -> int:
    """sum_t sum_c | y_c - x_(c + t) |, the classes' share of sum_t |Y ^ (X - t)| (taps t mod 2:
    (0,0) once, (1,0) and (0,1) twice, (1,1) four times)."""
    return sum(int(np.abs(y - np.roll(x, (-a, -b), axis=(0, 1))).sum()) for a, b in TAPS)


def median_term(z: np.ndarray) -> float:
    """The least count_term over the other set's class counts, given this set's: per class e of
    the other set, the weighted L1 distance of the four counts from their weighted median."""
    total = 0.0
    for e in itertools.product((0, 1), repeat=2):
        values, weights = [], []
        for c in itertools.product((0, 1), repeat=2):
            sigma = ((e[0] - c[0]) % 2, (e[1] - c[1]) % 2)
            values.append(z[c])
            weights.append(sum(1 for a, b in TAPS if (a % 2, b % 2) == sigma))
        total += min(sum(w * abs(v - m) for v, w in zip(values, weights)) for m in values)
    return total


def check_identity(trials: int, rng) -> None:
    """The identity and the three inequalities on random sets (fails loudly)."""
    for _ in range(trials):
        h, w = rng.integers(2, 9, 2)
        X = framed(rng.random((h, w)) < rng.random())
        Y = framed(rng.random((h, w)) < rng.random())
        pairs, sym, phi_y = window_terms(X, Y)
        phi_x = window_terms(Y, X)[2]
        gap = abs(int(X.sum()) - int(Y.sum()))
        assert 2 * pairs == 9 * (int(X.sum()) + int(Y.sum())) - sym
        assert sym >= phi_y + gap and sym >= phi_x + gap, (sym, phi_x, phi_y, gap)
        cy, cx = class_counts(Y), class_counts(X)
        assert sym >= count_term(cy, cx) >= max(median_term(cy), median_term(cx))
        assert median_term(cy) >= 6 * (cy.max() - cy.min())


def class_profile(rows: int, cols: int, wmax: int) -> np.ndarray:
    """Least king's-graph cut (outside counted) of w points, w = 0..wmax, in a rows x cols box.

    Centring every row of a set (a centred interval of the same length) never raises the cut: a
    row's own cut becomes 2, its least, and between consecutive rows of lengths u, v the cut is
    3 (u + v) - 2 sum_t |A ∩ (B - t)| (t in {-1, 0, 1}), where the sum is at most 3 min(u, v)
    less 2 if u = v (at most one t makes A = B - t) and less 1 if |u - v| = 1 (the shorter set
    cannot lie in all three translates of the longer: their common part is the longer set's points
    with both neighbours in it, at most its length less 2), which centred intervals attain.  So the least cut is a DP
    over row lengths (any sequence, empty rows included): a row costs 2 if non-empty, consecutive
    rows 3 |u - v| + 2 if u = v >= 1, + 1 if |u - v| = 1 and both >= 1, the outside rows 3 l."""
    inf = np.iinfo(np.int64).max // 4
    length = np.arange(cols + 1)
    u, v = length[:, None], length[None, :]
    both = np.minimum(u, v) >= 1
    step = (3 * np.abs(u - v) + 2 * (v > 0)
            + np.where(both & (u == v), 4, np.where(both & (np.abs(u - v) == 1), 2, 0)))
    width = wmax + 1
    cost = np.full((cols + 1, width), inf, np.int64)
    for size in range(0, min(cols, wmax) + 1):
        cost[size, size] = 3 * size + 2 * (size > 0)
    for _ in range(1, rows):
        new = np.full_like(cost, inf)
        for size in range(0, min(cols, wmax) + 1):
            new[size, size:] = (cost[:, :width - size] + step[:, size][:, None]).min(axis=0)
        cost = np.minimum(new, inf)
    return (cost + 3 * length[:, None]).min(axis=0)


def exhaustive_profile(rows: int, cols: int) -> list[int]:
    """The same least cut over every subset of a rows x cols box (2^(rows cols) sets)."""
    cells = rows * cols
    best = [None] * (cells + 1)
    for mask in range(1 << cells):
        bits = np.array([(mask >> k) & 1 for k in range(cells)], bool).reshape(rows, cols)
        Z = framed(bits, 2)
        cut = sum(int((Z ^ _shifted(Z, d)).sum()) for d in KING)
        w = int(bits.sum())
        best[w] = cut if best[w] is None else min(best[w], cut)
    return best


def split_bound(least: np.ndarray, zmax: int) -> np.ndarray:
    """For z = 0..zmax, a lower bound on sum_t |Y ^ (X - t)| when the larger of X and Y has z
    points in any split over the classes: max over E of min(6 E, 4 least(ceil(z / 4 - 3 E / 4)))
    (a spread of at least E, or every class above that floor).  ``least``: the monotone class
    profile.  The first term rises with E and the second falls, so the best E is where they
    cross, found by bisection for every z at once."""
    z = np.arange(zmax + 1, dtype=np.float64)
    top = len(least) - 1

    def second(E):
        return 4 * least[np.clip(np.ceil(z / 4 - 0.75 * E).astype(np.int64), 0, top)]

    low, high = np.zeros(zmax + 1, np.int64), np.full(zmax + 1, zmax + 1, np.int64)
    while np.any(high - low > 1):           # largest E with 6 E <= second(E)
        mid = (low + high) // 2
        ok = 6 * mid <= second(mid)
        low, high = np.where(ok, mid, low), np.where(ok, high, mid)
    return np.maximum(np.minimum(6 * low, second(low)), np.minimum(6 * high, second(high)))


def min_plus(a: np.ndarray, b: np.ndarray, zmax: int) -> np.ndarray:
    """c(z) = min over u of a(u) + b(z - u), z = 0..zmax (a, b defined on 0..len - 1)."""
    big = np.iinfo(np.int64).max // 4
    out = np.full(zmax + 1, big, np.int64)
    for z in range(zmax + 1):
        u = np.arange(max(0, z - len(b) + 1), min(z, len(a) - 1) + 1)
        if u.size:
            out[z] = int((a[u] + b[z - u]).min())
    return out


def subadditive_hull(bound: np.ndarray) -> np.ndarray:
    """The largest subadditive function below ``bound``: hull(z) = min(bound(z), min over
    0 < u <= z / 2 of hull(u) + hull(z - u)).  A processor whose larger sets in several planes
    have z_n points, sum z_n >= z, has sum_n bound(z_n) >= hull(z) (``bound`` is nondecreasing:
    shrink the z_n to sum z, then apply subadditivity)."""
    hull = bound.astype(np.int64).copy()
    for z in range(2, len(hull)):
        u = np.arange(1, z // 2 + 1)
        hull[z] = min(hull[z], int((hull[u] + hull[z - u]).min()))
    return hull


def joint_bound(spec, P: int, pixels: float, steps: int = 40) -> tuple[float, float]:
    """(B_MI, the halo-joint value) in bytes for the busy processor of ``spec`` on P ranks, given
    that its inputs and outputs must cover ``pixels`` pixels (x_I / C + x_O / K >= pixels).

    B_MI's convex program cannot take that constraint as a row, so it enters by weak duality:
    for every mu >= 0, mu pixels + min over B_MI's feasible set of (p_I - mu / C) x_I + p_F x_F +
    (p_O - mu / K) x_O is a lower bound on the traffic (the added term is <= 0 wherever the
    constraint holds); the inner minimum is B_MI's own program at shifted prices, certified by
    its dual.  The best mu of a grid below the largest that keeps every price positive."""
    import dataclasses

    from parconv.bounds.parallel import parallel_bounds
    from parconv.bounds.traffic import minimum_traffic, traffic_program
    from parconv.bounds.workfn import output_bytes, used_filter_size
    owned = parallel_bounds(spec, P).owned
    usable = (owned[0], min(owned[1], used_filter_size(spec)), owned[2])
    prices = np.array([spec.p_in, spec.p_weight, output_bytes(spec)], float)
    owned_bytes = float(prices @ np.asarray(usable, float))
    work = -(-spec.G_eff // P)
    prog, rhs, lower, upper = traffic_program(spec, work, usable)
    C, K = spec.in_channels, spec.out_channels
    top = min(prices[0] * C, prices[2] * K)
    values = []
    for mu in np.linspace(0.0, top, steps, endpoint=False):
        shifted = prices - mu * np.array([1.0 / C, 0.0, 1.0 / K])
        sub = dataclasses.replace(prog, bytes_per=shifted)
        values.append(mu * pixels + minimum_traffic(sub, rhs, lower, upper).value - owned_bytes)
    return values[0], max(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", default="vgg16.conv1_2")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--ranks", type=int, default=64)
    parser.add_argument("--check-box", type=int, default=4,
                        help="side of the box checked by exhaustion (2^(side^2) sets; default 4)")
    args = parser.parse_args()
    spec = get_layer(args.layer, batch=args.batch)
    if (spec.kernel_size, spec.stride, spec.dilation, spec.padding) != ((3, 3), (1, 1), (1, 1),
                                                                       (1, 1)):
        raise ParconvError(f"{args.layer}: the argument is written for 3x3 stride-1 layers padded "
                           f"by 1 (got kernel {spec.kernel_size}, stride {spec.stride}, padding "
                           f"{spec.padding}, dilation {spec.dilation})")
    if args.ranks <= spec.batch:
        raise ParconvError(f"--ranks {args.ranks} <= batch {spec.batch}: a processor can hold "
                           f"whole planes, there is no halo to charge")
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    check_identity(2000, rng)
    print(f"identity and tap-pair inequality: 2000 random pairs of sets, all hold "
          f"({time.perf_counter() - started:.1f} s)")
    side = args.check_box
    exact = exhaustive_profile(side, side)
    dp = class_profile(side, side, side * side)
    mismatch = [w for w in range(side * side + 1) if exact[w] != dp[w]]
    print(f"class profile, {side}x{side} box: DP equals exhaustion at every size"
          if not mismatch else f"class profile, {side}x{side} box: DP differs at sizes {mismatch}")
    H, W = spec.in_size
    A = H * W
    F = (3 * H - 2) * (3 * W - 2)
    # a busy processor does at least ceil(G_eff / P) iterations: N F / P pairs of whole-channel
    # pixels and positions (a share 1/f of a plane, f = P / N, not necessarily an integer)
    f = args.ranks / spec.batch
    share = math.ceil(A / f)
    print(f"{args.layer}: plane {H}x{W}, A = {A} pixels, F = {F} effective pairs, 9 A - F = "
          f"{9 * A - F}; P = {args.ranks}: a busy processor's share 1/{f:g} of a plane, "
          f"{share} pixels")
    if args.ranks == 2 * spec.batch:
        P = framed(np.ones((H, W), bool))
        plane = window_terms(P, P)
        half = np.zeros((H, W), bool)
        half[:, : W // 2] = True
        Yh = framed(half)
        Xh = framed(np.pad(np.ones((H, W // 2 + 1), bool), ((0, 0), (0, W // 2 - 1))))
        print(f"  whole plane X = Y: pairs {plane[0]}, sum_t {plane[1]}, Phi {plane[2]}")
        print(f"  half plane Y, X one column wider (the planner's block): "
              f"{window_terms(Xh, Yh)}  (pairs, sum_t, Phi(Y))")
    per_class = -(-share // 4)
    class_boxes = [(len(range(p, H, 2)), len(range(q, W, 2))) for p in (0, 1) for q in (0, 1)]
    boxes = sorted(set(class_boxes))
    started = time.perf_counter()
    profiles = [class_profile(r, c, r * c) for r, c in boxes]
    by_box = dict(zip(boxes, profiles))
    # the least cut of at least w points in any class box (suffix minimum: monotone in w)
    size = min(r * c for r, c in boxes) + 1
    least = np.minimum.accumulate(np.min([p[:size] for p in profiles], axis=0)[::-1])[::-1]
    lb = 4 * int(least[per_class])
    print(f"  class profile at {per_class} points in the {boxes} class boxes: "
          f"{int(least[per_class])} ({time.perf_counter() - started:.1f} s); with equal classes "
          f"LB = {lb}")
    delta = (lb - 2 * (9 * A - F) / f) / 9
    # any class split: the larger of X and Y has z >= z0 points; a spread of at least E between
    # its class counts gives sum_t >= 6 E (median_term), a smaller one leaves every class at least
    # z0 / 4 - 3 E / 4 points, hence sum_t >= 4 least(...)
    z0 = math.ceil(F / (9 * f))
    item = np.dtype(spec.dtype_in).itemsize
    # Phi >= sum of the classes' least cuts whatever the split: its minimum over splits (a
    # min-plus power of the class profiles), with the counts' bound beside it
    classes = [np.minimum.accumulate(by_box[box][::-1])[::-1] for box in class_boxes]
    every = classes[0]
    for other in classes[1:4]:
        every = min_plus(every, other, z0)
    bound = np.maximum(split_bound(least, z0), every[: z0 + 1])
    assert np.all(np.diff(bound) >= 0)
    planes = int(subadditive_hull(bound)[z0])
    for what, value in (("any class split, one plane", int(bound[z0])),
                        ("any class split, any number of planes", planes)):
        delta_any = (value - 2 * (9 * A - F) / f) / 9
        print(f"  {what} (the larger sets hold >= {z0} points): sum_t >= {value}, delta >= "
              f"{delta_any:.1f} pixels = {delta_any * spec.in_channels * item:.0f} input bytes")
    # the pixels its inputs and outputs must cover, 2 less for the vertex reduction's fractional
    # pixel and position
    pixels = (2 * F / f + planes) / 9 - 2
    base, joint = joint_bound(spec, args.ranks, pixels)
    plan = make_plan(spec, args.ranks)
    busiest = int(np.argmax(plan.predicted_bound_volume))
    halo = int(sum(plan.predicted[ph]["received"][busiest] for ph in ("halo_h", "halo_w")))
    need = plan.max_volume / 1.3 - plan.bound.value
    print(f"  delta = {delta:.1f} pixels = {delta * spec.in_channels * item:.0f} input bytes "
          f"(balanced classes); the planner's halo {halo} bytes; the bound is "
          f"{plan.bound.value:.0f} against the plan's {plan.max_volume} (ratio "
          f"{plan.max_volume / plan.bound.value:.4f}): ratio 1.3 needs {need:.0f} bytes more")
    print(f"  with the filter (x_I / C + x_O / K >= {pixels:.1f}, by weak duality over B_MI's "
          f"program): {base:.0f} -> {joint:.0f} bytes, the plan's ratio "
          f"{plan.max_volume / max(joint, plan.bound.value):.4f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ParconvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
