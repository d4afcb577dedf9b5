# python experiments/halo_profile.py [--layer vgg16.conv1_2] [--batch 32] [--ranks 64]
"""The halo term of B_MI on one layer, step by step (issue 8, docs/theory.md 4.8 and 5.7).

For a 3x3, stride-1, dilation-1 layer, with X the input pixels and Y the output positions a
processor holds in one image plane (all channels; the vertex reduction of theory.md 4.8), the
(output, tap) pairs are exactly

    2 pairs(X, Y) = 9 (|X| + |Y|) - sum_t |Y ^ (X - t)|          (^: symmetric difference)

and the triangle inequality on the taps t, -t gives

    sum_t |Y ^ (X - t)| >= Phi(Z) + | |X| - |Y| |,   Z = X or Y,
    Phi(Z) = sum over d in (2,0), (0,2), (2,2), (2,-2) of |Z ^ (Z + d)|,

Phi being the king's-graph cut on the four parity classes of 2Z^2.  parconv.bounds.halo turns
that into a bound (`class_profile`, `plane_bound`, `window_sum_bound`, `halo_pixels`,
`halo_traffic`); this script checks the identity and the inequalities on random sets, the class
profile against exhaustion on a small box, and prints for the layer at P ranks what each step
charges: the class profile with equal classes, any class split on one plane, any number of
planes, the pixels beyond the processor's shares, and B_MI before and after the halo term next
to the plan's busiest volume.
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

from parconv.bounds import parallel_bounds  # noqa: E402
from parconv.bounds.halo import (applies, class_profile, halo_pixels, plane_bound,  # noqa: E402
                                 window_sum_bound)
from parconv.errors import ParconvError  # noqa: E402
from parconv.layers import get_layer  # noqa: E402
from parconv.plan import make_plan  # noqa: E402

TAPS = [(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)]
#: the doubled tap differences of Phi (one of each pair t, -t)
PHI_SHIFTS = ((2, 0), (0, 2), (2, 2), (2, -2))


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", default="vgg16.conv1_2")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--ranks", type=int, default=64)
    args = parser.parse_args()
    spec = get_layer(args.layer, batch=args.batch)
    if not applies(spec) or spec.padding != (1, 1) or spec.padding_end != (1, 1):
        raise ParconvError(f"{args.layer}: the figures are written for 3x3 stride-1 layers padded "
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
    H, W = spec.in_size
    A = H * W
    F = (3 * H - 2) * (3 * W - 2)
    # a busy processor does at least ceil(G_eff / P) iterations, at least N F / P pairs of
    # whole-channel pixels and positions (a share 1/f of a plane, f = P / N, maybe fractional)
    f = args.ranks / spec.batch
    share = math.ceil(A / f)
    work = -(-spec.G_eff // args.ranks)
    z0 = math.ceil(work / (spec.in_channels * spec.out_channels) / 9)
    print(f"{args.layer}: plane {H}x{W}, A = {A} pixels, F = {F} effective pairs, 9 A - F = "
          f"{9 * A - F}; P = {args.ranks}: a busy processor's share 1/{f:g} of a plane, "
          f"{share} pixels; its larger sets hold z0 >= {z0} points")
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
    item = np.dtype(spec.dtype_in).itemsize
    slack = 2 * (9 * A - F) / f

    def charged(value: float) -> str:
        delta = (value - slack) / 9
        return f"delta >= {delta:.1f} pixels = {delta * spec.in_channels * item:.0f} input bytes"

    started = time.perf_counter()
    boxes = sorted({(len(range(p, H, 2)), len(range(q, W, 2))) for p in (0, 1) for q in (0, 1)})
    per_class = -(-share // 4)
    least = min(int(class_profile(r, c)[min(per_class, r * c)]) for r, c in boxes)
    print(f"  class profile at {per_class} points in the {boxes} class boxes: {least} "
          f"({time.perf_counter() - started:.1f} s); with equal classes LB = {4 * least}, "
          f"{charged(4 * least)}")
    one = int(plane_bound(H, W, z0)[z0])
    planes = window_sum_bound(H, W, z0)
    print(f"  any class split, one plane: sum_t >= {one}, {charged(one)}")
    print(f"  any class split, any number of planes: sum_t >= {planes}, {charged(planes)}")
    bound = parallel_bounds(spec, args.ranks)
    plan = make_plan(spec, args.ranks)
    busiest = int(np.argmax(plan.predicted_bound_volume))
    halo = int(sum(plan.predicted[ph]["received"][busiest] for ph in ("halo_h", "halo_w")))
    base = max(bound.B_MI_plain, bound.B_MI_polyphase)
    print(f"  the planner's halo {halo} bytes; B_MI without the halo term {base:.0f} bytes, the "
          f"plan's {plan.max_volume} (ratio {plan.max_volume / base:.4f}; ratio 1.3 needs "
          f"{plan.max_volume / 1.3 - base:.0f} bytes more)")
    print(f"  with the halo term (x_I / C + x_O / K >= {halo_pixels(spec, work):.1f}, by weak "
          f"duality over B_MI's program): {base:.0f} -> {bound.B_MI_halo:.0f} bytes, the plan's "
          f"ratio {plan.max_volume / bound.value:.4f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ParconvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
