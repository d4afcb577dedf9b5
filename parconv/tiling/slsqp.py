"""A lean driver of scipy's SLSQP for the small relaxations of `parconv.tiling.relax`.  Pure data,
no MPI.

``scipy.optimize.minimize(method="SLSQP")`` wraps every evaluation in several layers
(``ScalarFunction``, ``MemoizeJac``, copies, array-API checks): on a problem of five variables
and two constraints those cost several times the solver itself, about two thirds of a
relaxation's time.  `minimize_slsqp` calls the same solver routine
(``scipy.optimize._slsqplib.slsqp``) with the same state, workspace and evaluation sequence as
scipy 1.17's ``_minimize_slsqp`` (the objective and constraints at the points the solver asks
for; the gradient from the evaluation at the same point), so it returns the same iterates bit
for bit (tests/test_tiling_slsqp.py compares the two).  Where the private routine is missing or
its signature differs (another scipy), it falls back to ``scipy.optimize.minimize``.
"""

from __future__ import annotations

import numpy as np

from ..bounds.workfn import minimize


def _routine():
    """scipy's SLSQP step routine, or None when this scipy has no such private routine."""
    try:
        from scipy.optimize._slsqplib import slsqp
    except ImportError:
        return None
    return slsqp


_SLSQP = None
_CHECKED = False


def minimize_slsqp(fun, x0: np.ndarray, lower: np.ndarray, upper: np.ndarray, constraint: dict,
                   maxiter: int, ftol: float) -> tuple[np.ndarray, bool]:
    """Minimise ``fun`` (returning (value, gradient)) from ``x0`` within finite bounds
    ``[lower, upper]`` subject to one inequality ``constraint`` (a dict with ``fun`` and ``jac``,
    as scipy's: values >= 0; None: no constraint, scipy's own path).  Local.

    Returns
    -------
    x : ndarray
        The last iterate (as ``scipy.optimize.minimize(...).x``).
    success : bool
        Whether SLSQP stopped on its convergence test (exit mode 0).
    """
    global _SLSQP, _CHECKED
    if not _CHECKED:
        _SLSQP, _CHECKED = _routine(), True
    if _SLSQP is not None and constraint is not None:
        try:
            return _drive(_SLSQP, fun, x0, lower, upper, constraint, maxiter, ftol)
        except TypeError:          # another signature: scipy's own path from now on
            _SLSQP = None
    result = minimize(fun, x0, jac=True, method="SLSQP",
                      constraints=[constraint] if constraint is not None else [],
                      bounds=list(zip(lower, upper)),
                      options={"maxiter": maxiter, "ftol": ftol})
    return result.x, bool(result.success)


def _drive(slsqp, fun, x0, lower, upper, constraint, maxiter, ftol):
    """scipy 1.17's ``_minimize_slsqp`` loop for finite bounds and inequality constraints only,
    without its wrappers (the same calls of ``slsqp`` with the same arguments)."""
    x = np.clip(np.asarray(x0, dtype=np.float64).reshape(-1), lower, upper)
    con_fun, con_jac = constraint["fun"], constraint["jac"]
    m, n = len(np.atleast_1d(con_fun(x))), len(x)
    bounds = np.array([(float(lo), float(hi)) for lo, hi in zip(lower, upper)], float)
    xl, xu = bounds[:, 0].copy(), bounds[:, 1].copy()
    state = {"acc": ftol, "alpha": 0.0, "f0": 0.0, "gs": 0.0, "h1": 0.0, "h2": 0.0, "h3": 0.0,
             "h4": 0.0, "t": 0.0, "t0": 0.0, "tol": 10.0 * ftol, "exact": 0, "inconsistent": 0,
             "reset": 0, "iter": 0, "itermax": int(maxiter), "line": 0, "m": m, "meq": 0,
             "mode": 0, "n": n}
    indices = np.zeros([max(m + 2 * n + 2, 1)], dtype=np.int32)
    # scipy's worst-case workspace with no equality constraints
    size = n * (n + 1) // 2 + 3 * m * n + 9 * m + 8 * n * n + 35 * n + 28
    if m == 0:
        size += 2 * n * (n + 1)
    buffer = np.zeros(max(size, 1), dtype=np.float64)
    # the objective and its gradient come from one evaluation; scipy memoises it per point
    # (the same numbers: the evaluations are deterministic, the memo only skips repeats)
    at, (value, grad) = x.tobytes(), fun(x.copy())
    fx, g = value, np.atleast_1d(grad)
    mult = np.zeros([max(1, m + 2 * n + 2)], dtype=np.float64)
    C = np.zeros([max(1, m), n], dtype=np.float64, order="F")
    d = np.zeros([max(1, m)], dtype=np.float64)
    C[:m, :] = np.atleast_2d(con_jac(x))
    d[:m] = np.atleast_1d(con_fun(x)).ravel()
    while True:
        slsqp(state, fx, g, C, d, x, mult, xl, xu, buffer, indices)
        mode = state["mode"]
        if mode == 1:
            if x.tobytes() != at:
                at, (value, grad) = x.tobytes(), fun(x.copy())
            fx = value
            d[:m] = np.atleast_1d(con_fun(x)).ravel()
        elif mode == -1:
            if x.tobytes() != at:      # (scipy keeps the value of the last mode 1)
                at, (_, grad) = x.tobytes(), fun(x.copy())
            g = np.atleast_1d(grad)
            C[:m, :] = np.atleast_2d(con_jac(x))
        else:
            break
    return x, state["mode"] == 0
