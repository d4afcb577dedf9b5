"""parconv.compare.max_abs_error: NaN for NaN and Inf for Inf are no error."""

import numpy as np
import pytest

from parconv.compare import max_abs_error
from parconv.errors import ParconvError

NAN, INF = np.nan, np.inf


@pytest.mark.parametrize("reference, output, expected", [
    ([1.0, 2.0], [1.0, 2.5], 0.5),
    ([NAN, 1.0], [NAN, 1.0], 0.0),
    ([INF, -INF, NAN], [INF, -INF, NAN], 0.0),
    ([INF, 1.0], [-INF, 1.0], INF),
    ([NAN], [0.0], INF),
    ([0.0], [NAN], INF),
    ([1.0], [INF], INF),
    ([INF], [1e308], INF),
    ([1e308], [-1e308], INF),  # the difference overflows float64
    ([], [], 0.0),
])
def test_float_cases(reference, output, expected):
    assert max_abs_error(np.array(reference), np.array(output)) == expected


def test_dtypes_and_shapes():
    ref = np.array([[1, -2], [3, 4]], dtype=np.int32)
    assert max_abs_error(ref, ref.copy()) == 0.0
    assert max_abs_error(ref, ref + np.array([[0, 7], [0, 0]], dtype=np.int32)) == 7.0
    big = np.array([np.iinfo(np.int64).max], dtype=np.int64)
    assert max_abs_error(big, -big) == 2.0 * float(np.iinfo(np.int64).max)  # no wrap-around
    half = np.array([NAN, 1.0, INF], dtype=np.float16)
    assert max_abs_error(half, half.astype(np.float32)) == 0.0
    with pytest.raises(ParconvError, match="shapes"):
        max_abs_error(np.zeros(3), np.zeros(4))


def test_matches_numpy_where_there_is_no_nan_or_inf():
    rng = np.random.default_rng(3)
    ref, out = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    assert max_abs_error(ref, out) == np.max(np.abs(ref - out))
    out[1, 2] = NAN
    assert max_abs_error(ref, out) == INF


def test_finite_max_abs_ignores_nan_and_inf():
    from parconv.compare import finite_max_abs
    assert finite_max_abs(np.array([1.0, -3.0, NAN, -INF])) == 3.0
    assert finite_max_abs(np.array([NAN, INF])) == 0.0 and finite_max_abs(np.array([])) == 0.0
    assert finite_max_abs(np.array([-7, 2], dtype=np.int8)) == 7.0
