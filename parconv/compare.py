"""Comparing an output with its reference when either may hold NaN or infinities.  Pure, no MPI.

``numpy.max(abs(ref - out))`` is NaN as soon as both hold NaN at the same place and NaN again for
``inf - inf``, so a check built on it fails on outputs that match their reference exactly.  Here
a NaN where the reference has NaN, and an infinity of the same sign where the reference has it,
count as no error; a NaN against a number, a number against an infinity and ``+inf`` against
``-inf`` count as an infinite error.
"""

from __future__ import annotations

import numpy as np

from .errors import ParconvError


def max_abs_error(reference, output) -> float:
    """Largest absolute difference between `reference` and `output`, NaN and Inf aware.  Local.

    Parameters
    ----------
    reference, output : array_like
        Arrays of the same shape (integer or floating point).

    Returns
    -------
    float
        0.0 for empty arrays.  Positions where both are NaN, or both are the same infinity,
        contribute 0; positions where exactly one is NaN, or where the values differ and one of
        them is infinite, contribute ``inf``; elsewhere ``abs(reference - output)`` computed in
        float64 (integers are compared exactly first, so equal integers give exactly 0).

    Raises
    ------
    ParconvError
        If the shapes differ.

    Examples
    --------
    >>> max_abs_error([1.0, np.nan, np.inf], [1.5, np.nan, np.inf])
    0.5
    >>> max_abs_error([np.inf], [-np.inf])
    inf
    >>> max_abs_error([np.nan], [0.0])
    inf
    """
    ref, out = np.asarray(reference), np.asarray(output)
    if ref.shape != out.shape:
        raise ParconvError(f"cannot compare arrays of shapes {ref.shape} and {out.shape}")
    if ref.size == 0:
        return 0.0
    if not (np.issubdtype(ref.dtype, np.inexact) or np.issubdtype(out.dtype, np.inexact)):
        # integers: exact differences (int64 - int64 can overflow, Python ints cannot)
        unequal = ref != out
        if not unequal.any():
            return 0.0
        if max(ref.dtype.itemsize, out.dtype.itemsize) <= 4:  # exact in int64, vectorised
            return float(np.max(np.abs(ref[unequal].astype(np.int64)
                                       - out[unequal].astype(np.int64))))
        return float(max(abs(int(a) - int(b)) for a, b in zip(ref[unequal].tolist(),
                                                                out[unequal].tolist())))
    ref, out = ref.astype(np.float64), out.astype(np.float64)
    same = (ref == out) | (np.isnan(ref) & np.isnan(out))  # covers equal infinities too
    if same.all():
        return 0.0
    ref, out = ref[~same], out[~same]
    if np.isnan(ref).any() or np.isnan(out).any() or np.isinf(ref).any() or np.isinf(out).any():
        return float("inf")
    with np.errstate(over="ignore"):  # huge finite values of opposite sign may overflow: inf
        return float(np.max(np.abs(ref - out)))


def finite_max_abs(values) -> float:
    """Largest ``|value|`` over the finite entries of `values` (0.0 if there are none).  Local.

    The scale of a relative tolerance: ``max(|reference|)`` is NaN or inf as soon as the
    reference holds one, which makes every comparison fail.

    Examples
    --------
    >>> finite_max_abs([1.0, -3.0, np.nan, np.inf])
    3.0
    """
    values = np.asarray(values)
    if values.size == 0:
        return 0.0
    if np.issubdtype(values.dtype, np.inexact):
        values = values[np.isfinite(values)]
        if values.size == 0:
            return 0.0
    return float(np.max(np.abs(values.astype(np.float64))))
