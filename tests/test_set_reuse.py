"""The set constant sigma of one axis (docs/theory.md 2.3.1, step 1) against brute force: the
scan's value equals the maximum of N^2 / (|X| |T| |S|) over every set of outputs S and taps T
(with the best rows X for them, the most-read first), on random small axes and polyphase classes;
sigma never exceeds the axis's kappa; on same-padded 3-tap axes sets do best with the whole axis."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from parconv.bounds.border import axis_reuse, axis_sigma, combine, reuse_constant
from parconv.bounds.set_reuse import axis_set_reuse, densest, used_rows
from parconv.spec import ConvSpec
from test_bounds import SETTINGS


@st.composite
def axes(draw, max_in=12):
    """(n_in, n_out, kernel, stride, pad, dil) of a small axis with at least one output."""
    n_in, kernel, stride = draw(st.integers(1, max_in)), draw(st.integers(1, 3)), \
        draw(st.integers(1, 3))
    pad, dil = draw(st.integers(0, 2)), draw(st.integers(1, 2))
    n_out = (n_in + 2 * pad - dil * (kernel - 1) - 1) // stride + 1
    assume(n_out >= 1)
    return n_in, n_out, kernel, stride, pad, dil


def brute_sigma(n_in, n_out, kernel, stride, pad, dil, residue=None):
    """max over every output set S and tap set T, with the |X| most-read rows for each |X|."""
    h = np.arange(n_out)
    taps = used_rows(n_in, n_out, kernel, stride, pad, dil, residue)
    best = 1.0
    for size in range(1, len(taps) + 1):
        for chosen in itertools.combinations(taps, size):
            incidence = np.zeros((n_out, n_in), dtype=int)
            for x in chosen:
                inside = x >= 0
                incidence[h[inside], x[inside]] = 1
            for mask in range(1, 2 ** n_out):
                rows = incidence[[j for j in range(n_out) if mask >> j & 1]]
                reads = np.cumsum(np.sort(rows.sum(axis=0))[::-1])
                best = max(best, float((reads ** 2 / np.arange(1, n_in + 1)).max()
                                       / (len(rows) * size)))
    return best


@settings(SETTINGS, max_examples=80)
@given(axis=axes(max_in=11), pick=st.integers(0, 3))
def test_scan_equals_brute_force(axis, pick):
    assume(axis[1] <= 9)
    residue = None if pick == 0 or axis[3] == 1 else pick % axis[3]
    value = axis_set_reuse(*axis, residue)
    exact = brute_sigma(*axis, residue)
    assert exact <= value <= exact * (1 + 1e-11)
    assert axis_sigma(*axis, residue) <= axis_reuse(*axis, residue)


@pytest.mark.parametrize("n", [2, 7, 14, 28, 56])
def test_same_padded_3_tap_axis_is_best_whole(n):
    # the whole axis has 3n - 2 effective pairs on n rows and n outputs
    assert axis_set_reuse(n, n, 3, 1, 1, 1) == pytest.approx((3 * n - 2) ** 2 / (3 * n * n),
                                                             rel=1e-11)
    assert axis_set_reuse(n, n, 3, 1, 1, 1) < axis_reuse(n, n, 3, 1, 1, 1)


def test_densest_counts_incidences():
    # a path: output h reads rows h and h + 1
    best = densest([[0, 1], [1, 2], [2, 3]])
    assert best[4, 3] == 6 and best[2, 1] == 2 and best[3, 2] == 4 and best[1, 1] == 1
    assert best[0, 0] == 0 and best[0, 1] == 0


def test_layer_constant_takes_the_better_assignment():
    assert combine((3.0, 2.0), (2.5, 2.4)) == min(2.0 * 2.5, 3.0 * 2.4)
    spec = ConvSpec(batch=1, in_channels=1, out_channels=1, in_size=(7, 14), kernel_size=3,
                    padding=1)
    kh, kw = axis_reuse(*spec.axis(0), None), axis_reuse(*spec.axis(1), None)
    sh, sw = axis_set_reuse(*spec.axis(0), None), axis_set_reuse(*spec.axis(1), None)
    assert reuse_constant(spec) == pytest.approx(min(sh * kw, kh * sw))
    assert reuse_constant(spec) < kh * kw
    assert math.isclose(reuse_constant(spec), sh * kw)  # sets on the short axis gain more


@settings(SETTINGS, max_examples=40)
@given(axis=axes(max_in=30))
def test_witness_is_attained_so_never_above_sigma(axis):
    assert axis_sigma(*axis, witness=True) <= axis_sigma(*axis) <= axis_reuse(*axis)
