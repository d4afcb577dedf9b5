"""parconv.jit: when the numba-fused Winograd transforms run, and where numba caches them."""

from pathlib import Path

import numpy as np
import pytest

from parconv import jit
from parconv.kernels import NumpyKernel, reference_conv2d
from parconv.spec import spec_for_dtype

SPEC = spec_for_dtype("float32", batch=2, in_channels=8, out_channels=8, in_size=(12, 12),
                      kernel_size=(3, 3), padding=(1, 1))


@pytest.fixture
def numba_present():
    if jit._load() is None:
        pytest.skip("numba is not installed")


def test_cache_folder_follows_the_project_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.delenv(jit.CACHE_ENV, raising=False)
    assert jit.numba_cache_dir() == Path.home() / ".cache" / "parconv" / "numba"
    monkeypatch.setenv(jit.CACHE_ENV, str(tmp_path))
    assert jit.numba_cache_dir() == tmp_path / "numba"
    monkeypatch.setenv(jit.CACHE_ENV, "off")
    assert jit.numba_cache_dir() is None
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert jit.numba_cache_dir() == tmp_path / "mine"


def test_no_cache_folder_means_numpy_transforms(monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv(jit.CACHE_ENV, "off")
    monkeypatch.setenv(jit.JIT_ENV, "on")
    jit._load.cache_clear()
    try:
        assert jit.fused_winograd(SPEC, 2, 2) is None
    finally:
        jit._load.cache_clear()


@pytest.mark.parametrize("value, expected", [(None, "auto"), ("auto", "auto"), ("0", "off"),
                                             ("off", "off"), ("1", "on"), ("ON", "on")])
def test_mode(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(jit.JIT_ENV, raising=False)
    else:
        monkeypatch.setenv(jit.JIT_ENV, value)
    assert jit.mode() == expected


def test_gate(monkeypatch, numba_present):
    monkeypatch.delenv(jit.JIT_ENV, raising=False)
    assert jit.fused_winograd(SPEC, 1, 1) is None              # below MIN_THREADS
    assert jit.fused_winograd(SPEC, jit.MIN_THREADS, jit.MIN_THREADS) is not None
    assert jit.fused_winograd(SPEC, 2, 1) is None              # products on 2 BLAS threads
    assert jit.fused_winograd(SPEC.replace(stride=(2, 2)), 2, 2) is None
    assert jit.fused_winograd(spec_for_dtype("int8", **{
        k: getattr(SPEC, k) for k in ("batch", "in_channels", "out_channels", "in_size",
                                      "kernel_size", "padding")}), 2, 2) is None
    monkeypatch.setenv(jit.JIT_ENV, "off")
    assert jit.fused_winograd(SPEC, 4, 4) is None
    monkeypatch.setenv(jit.JIT_ENV, "on")
    assert jit.fused_winograd(SPEC, 1, 1) is not None
    assert jit.fused_winograd(SPEC, 2, 1) is None


#: large enough for the threaded split at 2 threads (blasconv.split_workers)
BIG = SPEC.replace(batch=4, in_channels=32, out_channels=32, in_size=(32, 32))


@pytest.mark.parametrize("threads, transforms, workers", [(1, "numpy", 1), (2, "numba", 2)])
def test_kernel_reports_the_transforms(monkeypatch, numba_present, threads, transforms,
                                       workers):
    monkeypatch.delenv(jit.JIT_ENV, raising=False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(BIG.input_shape).astype(np.float32)
    w = rng.standard_normal(BIG.weight_shape).astype(np.float32)
    y, stats = NumpyKernel(threads=threads, method="winograd").run(BIG, x, w)
    assert stats["transforms"] == transforms and stats["workers"] == workers
    np.testing.assert_allclose(y, reference_conv2d(BIG, x, w), rtol=1e-4, atol=2e-3)
