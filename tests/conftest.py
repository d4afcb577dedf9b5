"""Fixtures shared by the serial test modules."""

import pytest


@pytest.fixture
def float_int8_path(monkeypatch):
    """The int8 path on float BLAS products in exact groups (parconv.blas_exact), as on a machine
    without MKL's int8 GEMM: ``$PARCONV_BLAS=numpy`` keeps MKL, and so its int8 products
    (parconv.blas_mkl_int), out of the kernel while the test runs."""
    monkeypatch.setenv("PARCONV_BLAS", "numpy")
