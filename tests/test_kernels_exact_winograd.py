"""The exact integer Winograd form (parconv.winograd_exact): bit-identical to the reference where
its bound holds, the direct methods where it does not, the memory model's budget."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from parconv import jit, winograd_exact
from parconv.blas import limit_threads
from parconv.blas_workspace import workspace_bytes
from parconv.blasconv import choose_method, conv2d_blas, direct_method, exact_winograd_applies
from parconv.errors import ParconvError
from parconv.kernels import NumpyKernel, reference_conv2d
from parconv.layers import get_layer
from parconv.spec import spec_for_dtype


@pytest.fixture
def numba_on(monkeypatch):
    """numba's transforms from the first eligible block (skipped without numba), on one BLAS
    thread unless a test sets its own (the transforms' rule: one thread per product)."""
    if jit._load() is None:
        pytest.skip("numba is not installed")
    monkeypatch.setenv(jit.JIT_ENV, "on")
    with limit_threads(1):
        yield


def int8_operands(spec, seed=0, low=-128, high=128):
    rng = np.random.default_rng(seed)
    return (rng.integers(low, high, spec.input_shape).astype(np.int8),
            rng.integers(low, high, spec.weight_shape).astype(np.int8))


def spec3x3(**kwargs):
    base = dict(batch=2, in_channels=16, out_channels=5, in_size=(9, 8), kernel_size=(3, 3),
                padding=(1, 1))
    return spec_for_dtype("int8", **{**base, **kwargs})


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 12), w=st.integers(1, 12), c=st.integers(1, 40), k=st.integers(1, 9),
       n=st.integers(1, 3), pads=st.tuples(*[st.integers(0, 2)] * 4), seed=st.integers(0, 99))
def test_exact_winograd_is_bit_identical_on_any_shape(numba_on, h, w, c, k, n, pads, seed):
    try:
        spec = spec3x3(batch=n, in_channels=c, out_channels=k, in_size=(h, w),
                       padding=pads[:2], padding_end=pads[2:])
    except ParconvError:        # no output
        return
    x, f = int8_operands(spec, seed)
    assert winograd_exact.exact_bound(winograd_exact.filters(f), 128)   # C <= 40 at -128..127
    y, how = conv2d_blas(spec, x, f, "winograd", workers=1)
    assert (how["method"], how["transforms"], how["compute_dtype"]) == ("winograd", "numba",
                                                                        "float32")
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, reference_conv2d(spec, x, f))


@pytest.mark.parametrize("threads", [1, 2])
def test_a_layer_takes_it_by_itself_at_one_and_two_threads(float_int8_path, numba_on, threads):
    spec = get_layer("resnet50.layer1.0.conv2", batch=4).replace(in_size=(20, 18))
    x, f = int8_operands(spec, 3)
    with limit_threads(threads):
        y, how = conv2d_blas(spec, x, f)
    assert how["method"] == "winograd" and how["workers"] == threads
    np.testing.assert_array_equal(y, reference_conv2d(spec, x, f))


def test_at_the_bound_it_is_still_exact(numba_on):
    # w = -128 everywhere: sum_c |U| = 288 C at the centre coefficient; with C = 32 the bound
    # 288 * 32 * 4 max|x| <= 2^22 allows max|x| = 113 and refuses 114
    spec = spec3x3(in_channels=32, out_channels=3, in_size=(10, 10))
    f = np.full(spec.weight_shape, -128, np.int8)
    u = winograd_exact.filters(f)
    assert winograd_exact.exact_bound(u, 113) and not winograd_exact.exact_bound(u, 114)
    rng = np.random.default_rng(5)
    # +-113 in a checkerboard of random signs: the input transform reaches 4 * 113
    x = (113 * rng.choice([-1, 1], spec.input_shape)).astype(np.int8)
    y, how = conv2d_blas(spec, x, f, "winograd", workers=1)
    assert how["method"] == "winograd"
    np.testing.assert_array_equal(y, reference_conv2d(spec, x, f))


def wide(**kwargs):
    """A block the cost model gives to Winograd."""
    spec = spec3x3(**{"in_channels": 32, "out_channels": 32, "in_size": (16, 16), **kwargs})
    assert choose_method(spec) == "winograd" and direct_method(spec) != "winograd"
    return spec


def test_data_beyond_the_bound_take_the_direct_method(float_int8_path, numba_on):
    spec = wide(in_channels=64)
    x = np.full(spec.input_shape, -128, np.int8)
    f = np.full(spec.weight_shape, -128, np.int8)
    assert not winograd_exact.exact_bound(winograd_exact.filters(f), 128)
    y, how = conv2d_blas(spec, x, f)
    assert how["method"] == direct_method(spec) != "winograd"
    np.testing.assert_array_equal(y, reference_conv2d(spec, x, f))
    with pytest.raises(ParconvError, match="exact float32 bound"):
        conv2d_blas(spec, x, f, "winograd")


def test_without_numba_it_is_refused_or_skipped(float_int8_path, monkeypatch):
    monkeypatch.setenv(jit.JIT_ENV, "off")
    spec = wide()
    x, f = int8_operands(spec)
    y, how = NumpyKernel(threads=1).run(spec, x, f)
    assert how["method"] == direct_method(spec)
    np.testing.assert_array_equal(y, reference_conv2d(spec, x, f))
    with pytest.raises(ParconvError, match="numba"):
        conv2d_blas(spec, x, f, "winograd")


def test_which_integer_blocks_may_take_it():
    assert exact_winograd_applies(spec3x3())
    assert not exact_winograd_applies(spec3x3(stride=(2, 2)))
    assert not exact_winograd_applies(spec3x3(dilation=(2, 1)))
    assert not exact_winograd_applies(spec3x3(kernel_size=(3, 2)))
    assert not exact_winograd_applies(spec3x3().replace(dtype_in="float32",
                                                        dtype_weight="float32",
                                                        dtype_acc="float32"))


def _peak(spec, x, f) -> int:
    import tracemalloc
    tracemalloc.start()
    try:
        conv2d_blas(spec, x, f, workers=1)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("batch, size", [(2, 56), (1, 20)])
def test_the_memory_model_budgets_both_forms(float_int8_path, numba_on, monkeypatch, batch, size):
    spec = get_layer("resnet50.layer1.0.conv2", batch=batch).replace(in_size=(size, size))
    x, f = int8_operands(spec)
    budget = int(workspace_bytes(spec, batch, 64, 64, size, size, padded=True))
    with limit_threads(1):
        conv2d_blas(spec, x, f, workers=1)          # compiled outside the measurement
        winograd_peak = _peak(spec, x, f)
        monkeypatch.setenv(jit.JIT_ENV, "off")
        direct_peak = _peak(spec, x, f)
    assert max(winograd_peak, direct_peak) <= budget + 16384
    assert budget <= 1.3 * max(winograd_peak, direct_peak) + 16384


def test_the_quick_refusal_agrees_with_the_bound():
    rng = np.random.default_rng(2)
    for channels in (8, 64, 128, 512):
        f = rng.integers(-128, 128, (4, channels, 3, 3)).astype(np.int8)
        for magnitude in (1, 30, 128):
            u = winograd_exact.exact_filters(f, magnitude)
            assert (u is not None) == winograd_exact.exact_bound(winograd_exact.filters(f),
                                                                 magnitude)


def test_direct_runs_of_eligible_blocks_count_towards_loading(float_int8_path, monkeypatch):
    # "auto": the integer blocks that would take the exact form once numba is loaded record
    # their time as the float Winograd blocks do (parconv.jit.record)
    monkeypatch.setattr(jit, "_state", {"spent": 0.0, "loaded": False})
    monkeypatch.delenv(jit.JIT_ENV, raising=False)
    spec = wide()
    x, f = int8_operands(spec)
    with limit_threads(1):
        y, how = conv2d_blas(spec, x, f)
    assert how["method"] == direct_method(spec) and jit._state["spent"] > 0
    np.testing.assert_array_equal(y, reference_conv2d(spec, x, f))
    stride2 = spec3x3(in_channels=32, out_channels=32, in_size=(16, 16), stride=(2, 2))
    before = jit._state["spent"]
    conv2d_blas(stride2, *int8_operands(stride2))
    assert jit._state["spent"] == before


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("workers", [2, 3, 7])
def test_split_pieces_are_bit_identical(numba_on, batch, workers):
    # odd batches and row counts, cuts inside images on even rows, more workers than tile rows
    spec = spec3x3(batch=batch, in_channels=24, out_channels=7, in_size=(13, 11),
                   padding=(1, 2), padding_end=(0, 1))
    x, f = int8_operands(spec, batch)
    ref = reference_conv2d(spec, x, f)
    with limit_threads(workers):
        y, how = conv2d_blas(spec, x, f, "winograd", workers=workers)
    assert how["method"] == "winograd" and 1 < how["workers"] <= workers
    np.testing.assert_array_equal(y, ref)
