"""MKL's int8 GEMM under the int8 path (parconv.blas_mkl_int): exact against numpy's int64
products on every operand form the kernel passes and on the extremes, the refusals, the guards
that keep it off where it could saturate, and the kernel's int8 methods on it, bit for bit."""

import numpy as np
import pytest

from parconv import blas, blas_mkl, blas_mkl_int, blasconv
from parconv.bench import _operands
from parconv.blas_exact import INTEGER, arithmetic
from parconv.kernels import NumpyKernel, reference_conv2d
from parconv.layers import get_layer
from parconv.spec import spec_for_dtype


def _ready():
    NumpyKernel(threads=1)          # loads MKL where it can (as the numpy node does)
    return blas_mkl_int.ready()


needs_int8_gemm = pytest.mark.skipif(not _ready(), reason="MKL's int8 GEMM is not usable here")


def _int8(rng, shape):
    return rng.integers(-128, 128, shape).astype(np.int8)


def _exact(a, b):
    left = a.astype(np.int64) - (128 if a.dtype == np.uint8 else 0)
    return left @ b.astype(np.int64)


@needs_int8_gemm
@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("pre_shifted", [False, True])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_gemm_is_exact_on_transposed_strided_and_shifted_operands(ta, tb, pre_shifted, beta):
    rng = np.random.default_rng(3)
    m, k, n = 37, 1500, 23
    a = _int8(rng, (k, m) if ta else (m, k))
    b = _int8(rng, (n, k) if tb else (k, n))
    a, b = (a.T if ta else a), (b.T if tb else b)
    if pre_shifted:
        a = blas_mkl_int.shifted(a)
    # a column slice of a wider matrix: leading dimension larger than the row
    wide = np.full((m, n + 5), 7, dtype=np.int32)
    start = rng.integers(-(1 << 28), 1 << 28, (m, n)).astype(np.int32)
    wide[:, 2:2 + n] = start
    out = wide[:, 2:2 + n]
    assert blas_mkl_int.gemm(a, b, out, beta=beta)
    np.testing.assert_array_equal(out, _exact(a, b) + (start if beta else 0))
    assert (wide[:, :2] == 7).all() and (wide[:, 2 + n:] == 7).all()


@needs_int8_gemm
@pytest.mark.parametrize("a_value, b_value", [(-128, -128), (127, -128), (-128, 127)])
def test_gemm_is_exact_on_the_extremes_past_two_to_the_24(a_value, b_value):
    # sums of 3000 products of 2^14: 4.9e7 > 2^24, where a float32 sum would round
    a = np.full((8, 3000), a_value, dtype=np.int8)
    b = np.full((3000, 9), b_value, dtype=np.int8)
    b[::7] = -b_value - 1 if b_value < 0 else -b_value      # odd sums
    out = np.empty((8, 9), dtype=np.int32)
    assert blas_mkl_int.gemm(a, b, out)
    np.testing.assert_array_equal(out, _exact(a, b))


@needs_int8_gemm
@pytest.mark.parametrize("shared", ["none", "a", "b"])
def test_stacks_with_a_shared_operand(shared):
    rng = np.random.default_rng(5)
    a = _int8(rng, (12, 40) if shared == "a" else (4, 12, 40))
    b = _int8(rng, (40, 30) if shared == "b" else (4, 40, 30))
    out = np.empty((4, 12, 30), dtype=np.int32)
    assert blas_mkl_int.gemm(a, b, out)
    np.testing.assert_array_equal(out, np.matmul(a.astype(np.int64), b.astype(np.int64)))


@needs_int8_gemm
def test_refusals_leave_the_output_untouched():
    rng = np.random.default_rng(1)
    a, b = _int8(rng, (6, 8)), _int8(rng, (8, 5))
    out = np.full((6, 5), 3, dtype=np.int32)
    assert not blas_mkl_int.gemm(a.astype(np.int16), b, out)            # other types
    assert not blas_mkl_int.gemm(a, b, out.astype(np.int64))
    assert not blas_mkl_int.gemm(a, b, np.full((5, 6), 3, np.int32).T)  # output columns
    strided = _int8(rng, (12, 16))[::2, ::2]                              # no contiguous axis
    assert not blas_mkl_int.gemm(strided, b, out)
    assert not blas_mkl_int.gemm(a, b, out, beta=0.5)
    assert (out == 3).all()


def test_not_ready_without_non_saturating_dot_products(monkeypatch):
    monkeypatch.setattr(blas_mkl_int, "_cpu_has_dot_products", lambda: False)
    blas_mkl_int._checked.cache_clear()
    try:
        assert not blas_mkl_int.ready()
    finally:
        blas_mkl_int._checked.cache_clear()


@needs_int8_gemm
def test_not_ready_when_the_self_check_disagrees(monkeypatch):
    real = blas_mkl_int.gemm

    def saturating(a, b, out, beta=0.0):
        done = real(a, b, out, beta=beta)
        np.clip(out, -(1 << 15), (1 << 15) - 1, out=out)     # what int16 saturation would do
        return done

    monkeypatch.setattr(blas_mkl_int, "gemm", saturating)
    assert not blas_mkl_int.self_check()
    blas_mkl_int._checked.cache_clear()
    try:
        assert not blas_mkl_int.ready()
    finally:
        monkeypatch.undo()
        blas_mkl_int._checked.cache_clear()
    assert blas_mkl_int.ready()


def test_numpy_blas_keeps_the_float_path(float_int8_path):
    spec = get_layer("resnet50.layer2.0.conv1", batch=1)
    x, w = _operands(spec)
    assert not blas_mkl_int.ready() and arithmetic(spec, x, w) != INTEGER


_SPECS = [
    # (spec, method): each direct method on int8 products, awkward shapes included
    (spec_for_dtype("int8", batch=3, in_channels=24, out_channels=20, in_size=(12, 11),
                    kernel_size=(1, 1)), "gemm"),
    (spec_for_dtype("int8", batch=3, in_channels=24, out_channels=20, in_size=(12, 11),
                    kernel_size=(1, 1), stride=(2, 2)).replace(dtype_acc="int64",
                                                               dtype_out="int64"), "gemm"),
    (spec_for_dtype("int8", batch=2, in_channels=16, out_channels=12, in_size=(10, 9),
                    kernel_size=(3, 3), padding=(1, 1), padding_end=(2, 0)), "taps"),
    (spec_for_dtype("int8", batch=2, in_channels=3, out_channels=8, in_size=(40, 70),
                    kernel_size=(7, 7), stride=(2, 2), padding=(3, 3)), "im2col"),
    (spec_for_dtype("int8", batch=2, in_channels=40, out_channels=6, in_size=(11, 13),
                    kernel_size=(5, 7), stride=(1, 2), dilation=(2, 1), padding=(1, 0),
                    padding_end=(0, 2)), "im2col"),
    (spec_for_dtype("int8", batch=2, in_channels=64, out_channels=16, in_size=(14, 14),
                    kernel_size=(3, 3), padding=(1, 1)), None),
]


@needs_int8_gemm
@pytest.mark.parametrize("spec, method", _SPECS, ids=[f"{m}-{i}" for i, (s, m) in
                                                       enumerate(_SPECS)])
@pytest.mark.parametrize("threads, workers", [(1, 1), (2, 2)])
@pytest.mark.parametrize("extreme", [False, True])
def test_int8_methods_on_int8_products_are_bit_identical(mkl_calls, spec, method, threads,
                                                        workers, extreme):
    x, w = _operands(spec)
    if extreme:
        x[...], w[...] = -128, -128
        w[:, ::3] = 127
    with blas.limit_threads(threads):
        y, how = blasconv.conv2d_blas(spec, x, w, method, workers=workers)
    assert how["compute_dtype"] == "int8" and how["exact_group"] is None
    assert mkl_calls and all(mkl_calls)          # every product on MKL's int8 GEMM
    np.testing.assert_array_equal(y, reference_conv2d(spec, x, w))


@needs_int8_gemm
def test_int8_products_choose_their_own_methods():
    # one product of depth 9 C beats nine of depth C on the int8 GEMM (blasconv._SHORT_COST_INT),
    # and the exact Winograd form (float32 products) is not taken
    for name in ("resnet50.layer1.0.conv2", "resnet50.layer3.0.conv2", "resnet50.layer4.1.conv2",
                 "resnet50.conv1"):
        assert blasconv.choose_method(get_layer(name, batch=8)) == "im2col", name
    assert blasconv.choose_method(get_layer("resnet50.layer2.0.conv1", batch=8)) == "gemm"
    from parconv import jit
    if not jit.preload():
        return
    spec = get_layer("resnet50.layer1.0.conv2", batch=2)
    x, w = _operands(spec)
    x //= 8                       # within the exact form's bound (winograd_exact.exact_bound)
    with blas.limit_threads(1):
        y, how = blasconv.conv2d_blas(spec, x, w, "winograd")   # forced: the exact form runs
    assert how["compute_dtype"] == "float32"
    np.testing.assert_array_equal(y, reference_conv2d(spec, x, w))


@needs_int8_gemm
def test_im2col_on_int8_products_splits_at_two_threads():
    spec = get_layer("resnet50.layer3.0.conv2", batch=8)
    assert blasconv.split_workers(spec, "im2col", 2) == 2
    assert blas_mkl.active()
