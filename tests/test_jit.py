"""parconv.jit: when the numba-fused Winograd transforms run, and where numba caches them."""

from pathlib import Path

import numpy as np
import pytest

from parconv import jit
from parconv.cache_folders import CACHE_ENV
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
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert jit.numba_cache_dir() == Path.home() / ".cache" / "parconv" / "numba"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert jit.numba_cache_dir() == tmp_path / "numba"
    monkeypatch.setenv(CACHE_ENV, "off")
    assert jit.numba_cache_dir() is None
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert jit.numba_cache_dir() == tmp_path / "mine"


def test_no_cache_folder_means_numpy_transforms(monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv(CACHE_ENV, "off")
    monkeypatch.setenv(jit.JIT_ENV, "on")
    jit._load.cache_clear()
    try:
        assert not jit.preload() and jit.fused_winograd(SPEC, 2, 2) is None
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


@pytest.fixture
def fresh(monkeypatch):
    """A process that has not loaded the fused kernels nor spent time in Winograd blocks."""
    monkeypatch.setattr(jit, "_state", {"spent": 0.0, "loaded": False})
    monkeypatch.delenv(jit.JIT_ENV, raising=False)


def test_eligible(monkeypatch):
    from parconv import blas_mkl
    monkeypatch.delenv(jit.JIT_ENV, raising=False)
    monkeypatch.setattr(blas_mkl, "active", lambda: False)
    assert jit.eligible(SPEC, 1, 1) and jit.eligible(SPEC, 2, 2)   # no thread floor
    assert not jit.eligible(SPEC, 2, 1)                       # products on 2 OpenBLAS threads
    monkeypatch.setattr(blas_mkl, "active", lambda: True)
    assert jit.eligible(SPEC, 2, 1)                           # products in shares on MKL
    monkeypatch.setattr(blas_mkl, "active", lambda: False)
    assert not jit.eligible(SPEC.replace(stride=(2, 2)), 2, 2)
    assert not jit.eligible(spec_for_dtype("int8", **{
        k: getattr(SPEC, k) for k in ("batch", "in_channels", "out_channels", "in_size",
                                      "kernel_size", "padding")}), 2, 2)
    monkeypatch.setenv(jit.JIT_ENV, "off")
    assert not jit.eligible(SPEC, 4, 4)
    monkeypatch.setenv(jit.JIT_ENV, "on")
    assert jit.eligible(SPEC, 1, 1) and not jit.eligible(SPEC, 2, 1)


def test_auto_loads_after_enough_numpy_time(fresh, numba_present):
    from parconv import blas_mkl
    assert jit.fused_winograd(SPEC, 2, 2) is None
    jit.record(jit.AFTER_SECONDS / 2)
    assert jit.fused_winograd(SPEC, 2, 2) is None
    jit.record(jit.AFTER_SECONDS / 2)
    assert jit.fused_winograd(SPEC, 2, 2) is not None
    assert jit.fused_winograd(SPEC, 1, 1) is not None         # one thread too, once loaded
    assert (jit.fused_winograd(SPEC, 2, 1) is None) != blas_mkl.active()   # 2 OpenBLAS threads


def test_preload_and_on(fresh, numba_present, monkeypatch):
    assert jit.preload() and jit.fused_winograd(SPEC, 2, 2) is not None
    monkeypatch.setattr(jit, "_state", {"spent": 0.0, "loaded": False})
    monkeypatch.setenv(jit.JIT_ENV, "on")
    assert jit.fused_winograd(SPEC, 1, 1) is not None


#: large enough for the threaded split at 2 threads (blasconv.split_workers)
BIG = SPEC.replace(batch=4, in_channels=32, out_channels=32, in_size=(32, 32))


def test_kernel_reports_the_transforms_and_records_its_time(fresh, numba_present):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(BIG.input_shape).astype(np.float32)
    w = rng.standard_normal(BIG.weight_shape).astype(np.float32)
    ref = reference_conv2d(BIG, x, w)
    kernels = {t: NumpyKernel(threads=t, method="winograd") for t in (1, 2)}
    for threads, transforms, workers in [(1, "numpy", 1), (2, "numpy", 2)]:
        y, stats = kernels[threads].run(BIG, x, w)
        assert (stats["transforms"], stats["workers"]) == (transforms, workers)
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=2e-3)
    assert 0 < jit._state["spent"] < jit.AFTER_SECONDS   # both calls, below the load point
    jit.preload()
    y, stats = kernels[2].run(BIG, x, w)
    assert (stats["transforms"], stats["workers"]) == ("numba", 2)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=2e-3)
