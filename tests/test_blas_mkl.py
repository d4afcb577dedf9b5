"""MKL's sequential GEMM under the CPU kernel (parconv.blas_mkl): the CBLAS calls against numpy
on every operand layout the kernel passes, the fall-backs, the ``$PARCONV_BLAS`` choice, and the
kernel's results with the products on MKL against the same kernel on numpy's BLAS."""

import os
import subprocess
import sys

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

from parconv import blas, blas_mkl, blas_mkl_int, blasconv
from parconv.bench import _operands
from parconv.errors import ParconvError
from parconv.kernels import NumpyKernel, reference_conv2d
from parconv.spec import spec_for_dtype

def _loaded():
    return blas_mkl._library() is not None


needs_mkl = pytest.mark.skipif(not _loaded(), reason="MKL (the mkl wheel) does not load here")


def _rng():
    return np.random.default_rng(7)


@needs_mkl
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_matches_numpy_on_transposed_and_strided_operands(dtype, ta, tb):
    rng = _rng()
    m, k, n = 37, 29, 23
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    a, b = (a.T if ta else a), (b.T if tb else b)
    # a column slice of a wider matrix: leading dimension larger than the row
    wide = np.zeros((m, n + 5), dtype=dtype)
    out = wide[:, 2:2 + n]
    assert blas_mkl.gemm(a, b, out)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, a @ b, rtol=tol, atol=tol * k)
    assert not wide[:, :2].any() and not wide[:, 2 + n:].any()
    before = out.copy()
    assert blas_mkl.gemm(a, b, out, beta=1.0)
    np.testing.assert_allclose(out, before + a @ b, rtol=tol, atol=tol * k)


@needs_mkl
def test_stacks_broadcast_overlapping_and_interleaved():
    rng = _rng()
    # the row bands: one filter matrix, overlapping strided views of gathered rows, outputs
    # interleaved in NCHW rows (one call per matrix) and one after another (one batch call)
    K, D, W, rows, sh = 8, 12, 10, 5, 2
    g = rng.standard_normal(((rows - 1) * sh + 3, D // 3, W)).astype(np.float32)
    views = as_strided(g, shape=(rows, D, W), strides=(sh * g.strides[0], W * 4, 4),
                       writeable=False)
    wm = rng.standard_normal((K, D)).astype(np.float32)
    y = np.full((1, K, rows, W), np.nan, dtype=np.float32)
    target = y[0].transpose(1, 0, 2)
    assert blas_mkl.gemm(wm, views, target)
    np.testing.assert_allclose(target, np.matmul(wm, views), rtol=1e-5, atol=1e-5)
    stacked = np.empty((rows, K, W), dtype=np.float32)
    assert blas_mkl.gemm(wm, views, stacked)
    np.testing.assert_allclose(stacked, np.matmul(wm, views), rtol=1e-5, atol=1e-5)
    # the Winograd coefficients: 16 stacks with the second operand transposed in place
    v = rng.standard_normal((16, 30, 6)).astype(np.float32)
    u = rng.standard_normal((16, 4, 6)).astype(np.float32)
    m = np.empty((16, 30, 4), dtype=np.float32)
    assert blas_mkl.gemm(v, u.transpose(0, 2, 1), m)
    np.testing.assert_allclose(m, np.matmul(v, u.transpose(0, 2, 1)), rtol=1e-5, atol=1e-5)


@needs_mkl
def test_what_mkl_declines_is_left_untouched():
    rng = _rng()
    a = rng.standard_normal((6, 5)).astype(np.float32)
    b = rng.standard_normal((5, 4)).astype(np.float32)
    out = np.full((6, 4), 3.0, dtype=np.float32)
    assert not blas_mkl.gemm(a.astype(np.int32), b.astype(np.int32), out.astype(np.int32))
    assert not blas_mkl.gemm(a, b.astype(np.float64), out)            # mixed types
    assert not blas_mkl.gemm(a[::2, ::2], b[:3], out[:3, :])          # no contiguous axis
    assert not blas_mkl.gemm(a, b, np.full((4, 6), 3.0, np.float32).T)  # output by columns
    overlap = np.zeros((6, 6), dtype=np.float32)
    assert not blas_mkl.gemm(overlap[:, :5], b, overlap[:, 2:6])      # output overlaps a
    assert (out == 3.0).all()
    # stacked outputs that overlap each other
    assert not blas_mkl.gemm(a, np.stack([b, b]), as_strided(out, (2, 6, 4), (4 * 4, 16, 4)))


def test_choice_parses_and_rejects(monkeypatch):
    assert blas_mkl.choice("") == "auto"
    assert blas_mkl.choice(" MKL ") == "mkl"
    assert blas_mkl.choice("numpy") == "numpy"
    with pytest.raises(ParconvError, match="PARCONV_BLAS"):
        blas_mkl.choice("openblas64")
    monkeypatch.setenv(blas_mkl.BLAS_ENV, "numpy")
    assert not blas_mkl.enabled()
    monkeypatch.setenv(blas_mkl.BLAS_ENV, "fast")
    with pytest.raises(ParconvError, match="expected auto, mkl or numpy"):
        blas_mkl.enabled()


def test_forcing_mkl_where_it_does_not_load_says_so(monkeypatch):
    monkeypatch.setenv(blas_mkl.BLAS_ENV, "mkl")
    monkeypatch.setattr(blas_mkl, "_library", lambda: None)
    blas_mkl._enabled.cache_clear()
    try:
        with pytest.raises(ParconvError, match="does not load"):
            blas_mkl.enabled()
    finally:
        blas_mkl._enabled.cache_clear()


_SPECS = [
    # (spec, method): one of each method, awkward padding and strides included
    (spec_for_dtype("float32", batch=3, in_channels=24, out_channels=20, in_size=(9, 11),
                    kernel_size=(1, 1)), "gemm"),
    (spec_for_dtype("float32", batch=2, in_channels=16, out_channels=12, in_size=(10, 9),
                    kernel_size=(3, 3), padding=(1, 1), padding_end=(2, 0)), "taps"),
    (spec_for_dtype("float32", batch=2, in_channels=3, out_channels=8, in_size=(40, 70),
                    kernel_size=(7, 7), stride=(2, 2), padding=(3, 3)), "im2col"),
    (spec_for_dtype("float64", batch=2, in_channels=8, out_channels=6, in_size=(12, 10),
                    kernel_size=(3, 3), padding=(1, 1)), "winograd"),
    (spec_for_dtype("float32", batch=2, in_channels=8, out_channels=6, in_size=(13, 12),
                    kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)), "winograd"),
    (spec_for_dtype("int8", batch=2, in_channels=5, out_channels=7, in_size=(9, 40),
                    kernel_size=(3, 5), padding=(1, 2)), "im2col"),
]


@needs_mkl
@pytest.mark.parametrize("spec, method", _SPECS, ids=[f"{m}-{s.dtype_in}" for s, m in _SPECS])
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_on_mkl_matches_numpy_blas(monkeypatch, mkl_calls, spec, method, threads):
    x, w = _operands(spec)
    calls = mkl_calls
    monkeypatch.setenv(blas_mkl.BLAS_ENV, "mkl")
    on_mkl, stats = NumpyKernel(threads=threads, method=method).run(spec, x, w)
    assert stats["method"] == method
    # MKL runs one thread's products: a call on one BLAS thread, or the pieces of the split;
    # int8 products (blas_mkl_int) on any thread count
    single = threads == 1 or stats["workers"] > 1 or (spec.dtype_in == "int8"
                                                      and blas_mkl_int.ready())
    assert any(calls) == single and stats["products"] == ("mkl" if single else "numpy")
    monkeypatch.setenv(blas_mkl.BLAS_ENV, "numpy")
    calls.clear()
    on_numpy, stats = NumpyKernel(threads=threads, method=method).run(spec, x, w)
    assert not calls and stats["products"] == "numpy"
    if spec.dtype_in == "int8":
        np.testing.assert_array_equal(on_mkl, on_numpy)
        np.testing.assert_array_equal(on_mkl, reference_conv2d(spec, x, w))
    else:
        tol = 1e-4 if spec.dtype_in == "float32" else 1e-11
        np.testing.assert_allclose(on_mkl, on_numpy, rtol=tol, atol=tol)


@needs_mkl
def test_float_gemm_splits_only_where_mkl_runs_the_pieces(monkeypatch):
    spec = spec_for_dtype("float32", batch=8, in_channels=256, out_channels=128,
                          in_size=(56, 56), kernel_size=(1, 1))
    monkeypatch.setenv(blas_mkl.BLAS_ENV, "mkl")
    assert blasconv.split_workers(spec, "gemm", 2) == 2
    monkeypatch.setenv(blas_mkl.BLAS_ENV, "numpy")
    assert blasconv.split_workers(spec, "gemm", 2) == 1


@needs_mkl
def test_small_products_on_several_threads_stay_on_numpy(monkeypatch):
    monkeypatch.setenv(blas_mkl.BLAS_ENV, "mkl")
    a = np.ones((64, 64), dtype=np.float32)      # below 2 MIN_SHARE_MACS: not worth shares
    out = np.empty_like(a)
    calls = []
    monkeypatch.setattr(blas_mkl, "gemm", lambda *args, **kw: calls.append(1) or False)
    with blas.limit_threads(2):
        blas.matmul(a, a, out)
    assert not calls
    with blas.limit_threads(1):
        blas.matmul(a, a, out)
    assert calls
    np.testing.assert_array_equal(out, a @ a)


_SHARE_CASES = {
    # (a shape, b shape): a stack of 16 (the Winograd products), one wide product (the filter
    # transform: columns), one tall product (rows), a stack with a shared 2-d operand
    "stack": ((16, 96, 128), (16, 128, 160)),
    "columns": ((16, 9), (9, 80000)),
    "rows": ((3000, 128), (128, 64)),
    "shared filters": ((64, 128), (6, 128, 2000)),
}


@needs_mkl
@pytest.mark.parametrize("case", list(_SHARE_CASES))
@pytest.mark.parametrize("accumulate", [False, True])
def test_products_on_several_threads_run_in_shares_on_mkl(monkeypatch, mkl_calls, case,
                                                           accumulate):
    monkeypatch.setenv(blas_mkl.BLAS_ENV, "mkl")
    monkeypatch.setattr(blas, "MIN_SHARE_MACS", 1 << 16)
    rng = _rng()
    sa, sb = _SHARE_CASES[case]
    a, b = (rng.standard_normal(s).astype(np.float32) for s in (sa, sb))
    expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
    out = rng.standard_normal(expected.shape).astype(np.float32)
    before = out.astype(np.float64)
    with blas.limit_threads(2):
        if accumulate and out.ndim == 2:
            blas.matmul_into(out, a, b, accumulate=True)
            expected = expected + before
        else:
            blas.matmul(a, b, out)
    assert len(mkl_calls) == 2 and all(mkl_calls)     # one share per thread, both on MKL
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@needs_mkl
def test_a_share_mkl_refuses_is_computed_by_numpy(monkeypatch):
    monkeypatch.setenv(blas_mkl.BLAS_ENV, "mkl")
    monkeypatch.setattr(blas, "MIN_SHARE_MACS", 1 << 16)
    real = blas_mkl.gemm
    seen = []

    def refuse_second(a, b, out, beta=0.0):
        seen.append(out.shape)
        return False if len(seen) == 2 else real(a, b, out, beta=beta)

    monkeypatch.setattr(blas_mkl, "gemm", refuse_second)
    a, b = (_rng().standard_normal(s).astype(np.float32) for s in _SHARE_CASES["stack"])
    out = np.zeros((16, 96, 160), dtype=np.float32)
    with blas.limit_threads(2):
        blas.matmul(a, b, out)
    np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-4)


@needs_mkl
@pytest.mark.parametrize("spec, method", _SPECS, ids=[f"{m}-{s.dtype_in}" for s, m in _SPECS])
def test_split_pieces_run_their_products_on_mkl(monkeypatch, mkl_calls, spec, method):
    x, w = _operands(spec)
    calls = mkl_calls
    monkeypatch.setenv(blas_mkl.BLAS_ENV, "mkl")
    with blas.limit_threads(2):
        y, how = blasconv.conv2d_blas(spec, x, w, method, workers=2)
    assert how["workers"] == 2 and calls
    expected = reference_conv2d(spec, x, w)
    if spec.dtype_in == "int8":
        np.testing.assert_array_equal(y, expected)
    else:
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@needs_mkl
@pytest.mark.parametrize("node", ["gemmini", "numpy"])
@pytest.mark.parametrize("setting", ["mkl", "numpy"])
def test_only_the_node_kernels_load_mkl(node, setting):
    # a fresh process: planning and the warm-up leave MKL out; making either node kernel loads
    # it (the Gemmini executor runs int8 tiles on its int8 GEMM), unless $PARCONV_BLAS=numpy
    script = (
        "from parconv.blas import warm_up\n"
        "from parconv.layers import get_layer\n"
        "from parconv.nodes import get_kernel\n"
        "from parconv.plan import make_plan\n"
        "def mapped():\n"
        "    return any('libmkl' in line for line in open('/proc/self/maps'))\n"
        "make_plan(get_layer('resnet50.layer3.0.conv2'), 4); warm_up(int8=True)\n"
        "print(mapped())\n"
        f"get_kernel({node!r}); warm_up(int8=True)\n"
        "print(mapped())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, blas_mkl.BLAS_ENV: setting}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", str(setting == "mkl")]
