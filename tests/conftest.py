"""Fixtures shared by the serial test modules."""

import pytest

from parconv import blas_mkl, blas_mkl_int


@pytest.fixture
def float_int8_path(monkeypatch):
    """The int8 path on float BLAS products in exact groups (parconv.blas_exact), as on a machine
    without MKL's int8 GEMM: ``$PARCONV_BLAS=numpy`` keeps MKL, and so its int8 products
    (parconv.blas_mkl_int), out of the kernel while the test runs."""
    monkeypatch.setenv("PARCONV_BLAS", "numpy")


@pytest.fixture
def mkl_calls(monkeypatch):
    """The outcomes of `blas_mkl.gemm` and `blas_mkl_int.gemm` while the test runs (True: MKL
    ran the product)."""
    calls = []

    def spy(real):
        def run(*args, **kwargs):
            done = real(*args, **kwargs)
            calls.append(done)
            return done
        return run

    monkeypatch.setattr(blas_mkl, "gemm", spy(blas_mkl.gemm))
    monkeypatch.setattr(blas_mkl_int, "gemm", spy(blas_mkl_int.gemm))
    return calls
