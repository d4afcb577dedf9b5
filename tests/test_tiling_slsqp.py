"""The lean SLSQP driver of the relaxation (parconv.tiling.slsqp) against scipy's own minimize."""

import numpy as np
import pytest

from parconv.gemmini.config import DEFAULT_CONFIG
from parconv.gemmini.tiled.choose import GemminiMemory
from parconv.layers import get_layer, layer_names
from parconv.tiling import relax as relax_module
from parconv.tiling import slsqp
from parconv.tiling.search import CANONICAL_ORDERS
from parconv.tiling.slsqp import minimize_slsqp


def _relax_calls():
    memory = GemminiMemory(DEFAULT_CONFIG)
    for name in layer_names()[::3]:
        spec = get_layer(name, batch=4, dtype="int8")
        for order in CANONICAL_ORDERS.values():
            yield spec, order, memory.budgets(), "NKCHW"
            yield spec, order, memory.budgets(), "NKCHWRS"


def _scipy_path(monkeypatch):
    monkeypatch.setattr(slsqp, "_SLSQP", None)
    monkeypatch.setattr(slsqp, "_CHECKED", True)


def test_relaxation_points_equal_scipy_bit_for_bit(monkeypatch):
    calls = list(_relax_calls())
    ours = [relax_module.relax(*call) for call in calls]
    _scipy_path(monkeypatch)
    theirs = [relax_module.relax(*call) for call in calls]
    assert len(calls) > 20
    for call, a, b in zip(calls, ours, theirs):
        assert np.array_equal(a, b), (call[0].name, call[1], a, b)


@pytest.mark.parametrize("start", [0.0, 0.7, 3.0])
def test_iterates_and_status_equal_scipy(monkeypatch, start):
    # a small nonconvex problem whose solve takes line searches: both paths, same bits
    def fun(x):
        value = np.sum((x - 1.5) ** 4) + np.sin(3 * x).sum()
        return value, 4 * (x - 1.5) ** 3 + 3 * np.cos(3 * x)

    constraint = {"type": "ineq", "fun": lambda x: np.array([4.0 - x.sum(), x[0] - 0.1 * x[1]]),
                  "jac": lambda x: np.array([[-1.0, -1.0, -1.0], [1.0, -0.1, 0.0]])}
    lower, upper = np.zeros(3), np.full(3, 2.5)
    x0 = np.full(3, start)
    # a converged solve, and one stopped by the iteration limit
    ours = [minimize_slsqp(fun, x0, lower, upper, constraint, maxiter=limit, ftol=1e-10)
            for limit in (50, 1)]
    _scipy_path(monkeypatch)
    theirs = [minimize_slsqp(fun, x0, lower, upper, constraint, maxiter=limit, ftol=1e-10)
              for limit in (50, 1)]
    for (x, ok), (y, their_ok) in zip(ours, theirs):
        assert np.array_equal(x, y) and ok == their_ok
    assert ours[0][1] and not ours[1][1]


def test_falls_back_to_scipy_without_the_routine(monkeypatch):
    _scipy_path(monkeypatch)
    x, ok = minimize_slsqp(lambda x: (float(x @ x), 2 * x), np.ones(2), np.full(2, -1.0),
                           np.full(2, 1.0), None, maxiter=20, ftol=1e-12)
    assert ok and np.allclose(x, 0.0)
