"""The halo term of B_MI (docs/theory.md 4.8, parconv.bounds.halo) by brute force: the class
profile's DP against every subset of small boxes, the window sum's bound against every pair of
sets of small planes and against compact and random sets of larger ones, the pixels it charges
against real iteration sets, and B_MI with it against assignments of small layers."""

from __future__ import annotations


import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from parconv.bounds import parallel_bounds
from parconv.bounds.halo import (applies, centre_box, class_profile, halo_pixels, halo_term,
                                 plane_bound, window_sum_bound, _min_plus, _window_table)
from parconv.layers import get_layer
from parconv.plan import make_plan
from parconv.spec import ConvSpec
from test_bounds import SETTINGS, effective_iterations
from test_bounds_bruteforce import busiest_volume

TAPS = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]
KING = ((1, 0), (0, 1), (1, 1), (1, -1))


def all_subsets(rows: int, cols: int) -> np.ndarray:
    """Every subset of a rows x cols box, as a (2^(rows cols), rows, cols) boolean array."""
    cells = rows * cols
    masks = np.arange(1 << cells)[:, None]
    return ((masks >> np.arange(cells)) & 1).astype(bool).reshape(-1, rows, cols)


def shifted(Z: np.ndarray, d) -> np.ndarray:
    """Sets moved by d in a frame of zeros (the last two axes; nothing wraps: Z is framed)."""
    return np.roll(Z, d, axis=(-2, -1))


def framed(Z: np.ndarray, pad: int = 2) -> np.ndarray:
    return np.pad(Z, [(0, 0)] * (Z.ndim - 2) + [(pad, pad), (pad, pad)])


def window_sum(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """sum_t |Y ^ (X - t)| of framed sets (broadcast over leading axes)."""
    return sum((Y ^ shifted(X, (-a, -b))).sum(axis=(-2, -1)) for a, b in TAPS)


def pairs(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    return sum((Y & shifted(X, (-a, -b))).sum(axis=(-2, -1)) for a, b in TAPS)


@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 6), (2, 2), (3, 3), (2, 5), (4, 3), (4, 4)])
def test_class_profile_is_the_least_cut_over_every_subset(rows, cols):
    Z = framed(all_subsets(rows, cols))
    cut = sum((Z ^ shifted(Z, d)).sum(axis=(1, 2)) for d in KING)
    size = Z.sum(axis=(1, 2))
    exact = [int(cut[size == w].min()) for w in range(rows * cols + 1)]
    assert class_profile(rows, cols).tolist() == exact


@pytest.mark.parametrize("rows,cols", [(5, 7), (12, 11), (30, 29)])
def test_class_profile_is_nondecreasing_so_truncation_is_exact(rows, cols):
    full = class_profile(rows, cols)
    assert np.all(np.diff(full) >= 0)
    for wmax in (0, 7, rows * cols // 3):
        assert np.array_equal(class_profile(rows, cols, wmax), full[:wmax + 1])


@pytest.mark.parametrize("rows,cols", [(2, 3), (3, 3), (2, 4)])
def test_plane_bound_is_below_every_pair_of_sets_of_a_small_plane(rows, cols):
    """Every (X, Y) of the plane: sum_t |Y ^ (X - t)| >= plane_bound at the larger set's size,
    and the identity 2 pairs = 9 (|X| + |Y|) - sum_t."""
    sets = framed(all_subsets(rows, cols))
    X, Y = sets[:, None], sets[None, :]
    total = window_sum(X, Y)
    size_x, size_y = sets.sum(axis=(1, 2))[:, None], sets.sum(axis=(1, 2))[None, :]
    assert np.array_equal(2 * pairs(X, Y), 9 * (size_x + size_y) - total)
    larger = np.maximum(size_x, size_y)
    bound = plane_bound(rows, cols, rows * cols)
    assert np.all(total >= bound[larger])
    # and the bound is not empty: somewhere it is above the trivial 0
    assert bound[rows * cols] > 0


def compact_sets(rows: int, cols: int, rng) -> list[np.ndarray]:
    """Rectangles, octagons (cut corners), half planes, strips and random blobs of the plane."""
    out = []
    r, c = np.mgrid[:rows, :cols]
    for _ in range(12):
        top, left = rng.integers(0, rows), rng.integers(0, cols)
        h, w = rng.integers(1, rows - top + 1), rng.integers(1, cols - left + 1)
        box = (r >= top) & (r < top + h) & (c >= left) & (c < left + w)
        cut = rng.integers(0, max(1, min(h, w) // 2))
        up, down, west, east = r - top, top + h - 1 - r, c - left, left + w - 1 - c
        corner = ((up + west >= cut) & (up + east >= cut) & (down + west >= cut)
                  & (down + east >= cut))
        out += [box, box & corner]
    blob = np.zeros((rows, cols), bool)
    blob[rows // 2, cols // 2] = True
    for _ in range(rows * cols // 3):
        grown = np.zeros_like(blob)
        grown[1:] |= blob[:-1]
        grown[:-1] |= blob[1:]
        grown[:, 1:] |= blob[:, :-1]
        grown[:, :-1] |= blob[:, 1:]
        edge = np.flatnonzero(grown & ~blob)
        blob.flat[rng.choice(edge)] = True
        if rng.random() < 0.05:
            out.append(blob.copy())
    return out


def dilated(Z: np.ndarray) -> np.ndarray:
    """Every pixel a position of Z reads (3x3 window, clipped to the plane)."""
    F = framed(Z[None], 1)[0]
    return np.logical_or.reduce([shifted(F, t) for t in TAPS])[1:-1, 1:-1]


@settings(SETTINGS, max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(6, 20), cols=st.integers(6, 20))
def test_window_sum_bound_holds_on_compact_and_random_sets_over_planes(seed, rows, cols):
    rng = np.random.default_rng(seed)
    shapes = compact_sets(rows, cols, rng)
    planes = []
    for _ in range(rng.integers(1, 4)):
        Y = shapes[rng.integers(len(shapes))]
        X = [Y, dilated(Y), Y | (dilated(Y) & (rng.random(Y.shape) < 0.5)),
             rng.random(Y.shape) < 0.5][rng.integers(4)]
        planes.append((X, Y))
    total = sum(int(window_sum(framed(X[None])[0], framed(Y[None])[0])) for X, Y in planes)
    z = sum(max(int(X.sum()), int(Y.sum())) for X, Y in planes)
    assert total >= window_sum_bound(rows, cols, min(z, rows * cols))


def test_window_sum_bound_is_subadditive_and_below_the_plane_bound():
    table = _window_table(9, 8, 72)
    bound = plane_bound(9, 8, 72)
    assert np.all(table <= bound) and np.all(np.diff(table) >= 0)
    assert all(table[u] + table[v] >= table[u + v] for u in range(73) for v in range(73 - u))
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 50, 12), rng.integers(0, 50, 9)
    c = _min_plus(a, b, 15)
    assert all(c[z] == min(a[u] + b[z - u] for u in range(12) if 0 <= z - u < 9)
               for z in range(16))
    with pytest.raises(ValueError):
        window_sum_bound(3, 3, 10)


def halo_spec(N, C, K, rows, cols, pad=1, dtype="float32"):
    return ConvSpec(batch=N, in_channels=C, out_channels=K, in_size=(rows, cols),
                    kernel_size=(3, 3), padding=pad, dtype_in=dtype,
                    dtype_out="int32" if dtype == "int8" else dtype)


@settings(SETTINGS, max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(8, 28), cols=st.integers(8, 28),
       pad=st.integers(0, 2), N=st.integers(1, 2))
def test_halo_pixels_never_exceed_what_a_real_iteration_set_holds(seed, rows, cols, pad, N):
    """C = K = 1: a processor's iterations are (image, position, tap) triples; with Y its
    positions and X its pixels per image, it does at most pairs(X, Y) of them and holds
    |X| + |Y| = x_I / C + x_O / K."""
    spec = halo_spec(N, 1, 1, rows, cols, pad)
    rng = np.random.default_rng(seed)
    H, W = spec.out_size
    box_rows, box_cols = centre_box(spec)
    held = work = 0
    for _ in range(N):
        shapes = compact_sets(H, W, rng)
        Y = shapes[rng.integers(len(shapes))]
        # outputs in Z^2: centres at (h - pad + 1, w - pad + 1), inside the box from its origin
        origin = (min(0, 1 - spec.padding[0]), min(0, 1 - spec.padding[1]))
        Yz = np.zeros((box_rows, box_cols), bool)
        top, left = 1 - pad - origin[0], 1 - pad - origin[1]
        Yz[top:top + H, left:left + W] = Y
        plane = np.zeros_like(Yz)
        plane[-origin[0]:-origin[0] + rows, -origin[1]:-origin[1] + cols] = True
        X = [dilated(Yz) & plane, Yz & plane, (dilated(Yz) & plane & (rng.random(Yz.shape) < 0.7))
             | (Yz & plane)][rng.integers(3)]
        work += int(pairs(framed(X[None])[0], framed(Yz[None])[0]))
        held += int(X.sum()) + int(Y.sum())
    if work == 0 or -(-work // 9) > box_rows * box_cols:
        return
    assert held >= halo_pixels(spec, work)


TINY = [halo_spec(1, 1, 1, 32, 32), halo_spec(1, 2, 1, 24, 20, dtype="int8"),
        halo_spec(2, 1, 2, 16, 24), halo_spec(1, 1, 1, 20, 20, pad=0)]


@pytest.mark.parametrize("spec,P", [(s, P) for s in TINY for P in (2, 3, 4) if P > s.batch],
                         ids=lambda v: f"{v.batch}x{v.in_channels}x{v.out_channels}x"
                         f"{v.in_size[0]}x{v.in_size[1]}p{v.padding[0]}"
                         if isinstance(v, ConvSpec) else f"P{v}")
def test_no_assignment_of_a_small_layer_beats_B_MI_with_the_halo(spec, P):
    # P above the batch: a processor holds part of a plane, where the halo term charges
    it, x, y = effective_iterations(spec)
    bound = parallel_bounds(spec, P)
    rng = np.random.default_rng(P)
    n, k, c, h, w, r, s = it.T
    H, W = spec.out_size
    candidates = [np.minimum(h * P // H, P - 1), np.minimum(w * P // W, P - 1),
                  (np.minimum(h * 2 // H, 1) * 2 + np.minimum(w * 2 // W, 1)) % P,
                  (n * P // spec.batch + np.minimum(h * (P // spec.batch) // H, P - 1)) % P,
                  np.minimum((h + w) * P // (H + W - 1), P - 1), rng.integers(0, P, len(it)),
                  k % P, c % P]
    best = min(busiest_volume(spec, it, x, y, a, P) for a in candidates)
    assert best >= bound.B_MI * (1 - 1e-9)
    assert bound.B_MI >= bound.B_MI_plain


def test_the_halo_raises_B_MI_on_small_and_catalogue_layers_and_only_where_it_applies():
    raised = [parallel_bounds(s, 4) for s in TINY]
    assert all(b.B_MI_halo > 1.2 * b.B_MI_plain for b in raised[:1])
    spec = get_layer("vgg16.conv1_1", batch=32)
    plan = make_plan(spec, 64)
    assert plan.bound.B_MI_halo > 1.05 * plan.bound.B_MI_plain
    assert plan.bound.value == plan.bound.B_MI_halo <= plan.max_volume
    # stride 2, a 1x1 and a 7x7 layer: no halo term; whole planes per processor: none either
    for name in ("resnet50.layer2.0.conv2", "resnet50.layer1.0.conv1", "resnet50.conv1"):
        layer = get_layer(name, batch=32)
        assert not applies(layer) and parallel_bounds(layer, 64).B_MI_halo == 0.0
    assert halo_term(spec, -(-spec.G_eff // 16), (1, 1, 1)) == 0.0


def test_planes_whose_tables_cost_too_much_are_left_out():
    """A 600x600 plane at P = 2N: its tables would take minutes, the term is 0 (still a bound)."""
    from parconv.bounds.halo import TABLE_BUDGET, table_cost
    spec = halo_spec(4, 8, 8, 600, 600)
    work = -(-spec.G_eff // 8)
    assert table_cost(*centre_box(spec), -(-work // (9 * 64))) > TABLE_BUDGET
    assert halo_term(spec, work, (1, 1, 1)) == 0.0
    assert table_cost(224, 224, 24939) <= TABLE_BUDGET      # the catalogue's largest plane
