"""Continuous relaxation of the tiling problem (theory.md section 6).  Pure data, no MPI.

In log variables ``y = log t`` every quantity of the traffic model is a signomial: a sum of
``coef * exp(a . y)`` terms.  Trip counts become ``E / t``, the window of ``t_H`` outputs and
``t_R`` taps ``sh t_H + dh t_R + 1 - sh - dh``, and an array's reload multiplier the product of
the ``E / t`` of its reuse loops that lie outside its innermost loop in the order (every loop is
assumed to have several blocks).  `relax` minimises the logarithm of that modelled traffic subject
to ``log(footprint) <= log(capacity)`` for each memory budget with SLSQP.  Without the negative
constants the problem is a geometric program (convex in ``y``); with them it is a nearby smooth
problem whose local optimum is only a starting point: the integer search in `parconv.tiling.search` scores
every candidate with the exact model.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..spec import ConvSpec
from .model import DEPENDS, LOOPS, REUSE_LOOPS, extents
from .slsqp import minimize_slsqp


class Signomial:
    """``sum_i coef_i exp(exps_i . y)`` over the seven log block sizes (in `LOOPS` order)."""

    def __init__(self, coefs, exps):
        self.coefs = np.asarray(coefs, dtype=float)
        self.exps = np.asarray(exps, dtype=float).reshape(len(self.coefs), len(LOOPS))

    @classmethod
    def monomial(cls, coef: float, **powers: float) -> "Signomial":
        """``coef * prod t_X ** powers[X]``, e.g. ``monomial(2.0, H=1, R=-1)``."""
        exps = np.zeros(len(LOOPS))
        for loop, power in powers.items():
            exps[LOOPS.index(loop)] = power
        return cls([coef], exps)

    def __add__(self, other: "Signomial") -> "Signomial":
        return Signomial(np.concatenate([self.coefs, other.coefs]),
                         np.vstack([self.exps, other.exps]))

    def __mul__(self, other: "Signomial") -> "Signomial":
        coefs = np.outer(self.coefs, other.coefs).ravel()
        exps = (self.exps[:, None, :] + other.exps[None, :, :]).reshape(-1, len(LOOPS))
        return Signomial(coefs, exps)

    def value_grad(self, y: np.ndarray) -> tuple[float, np.ndarray]:
        terms = self.coefs * np.exp(self.exps @ y)
        return float(terms.sum()), self.exps.T @ terms


def _window(stride: int, dil: int, out_loop: str, tap_loop: str) -> Signomial:
    # stride (t_out - 1) + dil (t_tap - 1) + 1, which is >= 1 for t >= 1
    return (Signomial.monomial(stride, **{out_loop: 1}) + Signomial.monomial(dil, **{tap_loop: 1})
            + Signomial.monomial(1 - stride - dil))


@lru_cache(maxsize=64)
def footprints(spec: ConvSpec) -> dict[str, Signomial]:
    """Bytes of one block of each array as signomials (halo included, no granularity); once
    per layer shape (the relaxations of its loop orders share them; never modified)."""
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    return {"input": Signomial.monomial(spec.p_in, N=1, C=1) * _window(sh, dh, "H", "R")
            * _window(sw, dw, "W", "S"),
            "filter": Signomial.monomial(spec.p_weight, K=1, C=1, R=1, S=1),
            "output": Signomial.monomial(spec.p_acc, N=1, K=1, H=1, W=1)}


def _trips(spec: ConvSpec, loops: str) -> Signomial:
    """prod over `loops` of E / t (continuous trip counts)."""
    ext = dict(zip(LOOPS, extents(spec)))
    return Signomial.monomial(float(np.prod([ext[l] for l in loops])), **{l: -1 for l in loops})


@lru_cache(maxsize=64)
def _input_windows(spec: ConvSpec) -> Signomial:
    """The input bytes of `modelled_traffic` before the reloads of its order (every order's
    first factors, the same products once per layer shape)."""
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    n, c = spec.batch, spec.in_channels
    return (Signomial.monomial(spec.p_in * n * c) * _trips(spec, "HR") * _window(sh, dh, "H", "R")
            * _trips(spec, "WS") * _window(sw, dw, "W", "S"))


def modelled_traffic(spec: ConvSpec, order: str) -> Signomial:
    """Continuous traffic (bytes) of the loop order `order` as a signomial in the block sizes."""
    def outside(array: str) -> str:
        innermost = max(order.index(l) for l in DEPENDS[array])
        return "".join(l for l in REUSE_LOOPS[array] if order.index(l) < innermost)

    inputs = _input_windows(spec) * _trips(spec, outside("input"))
    filters = Signomial.monomial(spec.p_weight * spec.size_filter) * _trips(spec, outside("filter"))
    out = spec.size_output
    total = inputs + filters + Signomial.monomial(spec.p_out * out)
    spills = outside("output")
    if spills:
        total = total + Signomial.monomial(2 * spec.p_acc * out) * _trips(spec, spills) \
            + Signomial.monomial(-2 * spec.p_acc * out)
    return total


def relax(spec: ConvSpec, order: str, budgets, free: str) -> np.ndarray:
    """Continuous block sizes (float, 7 in `LOOPS` order) minimising `modelled_traffic`.

    Parameters
    ----------
    spec : ConvSpec
    order : str
        Loop order whose reuse pattern the objective models.
    budgets : list of (tuple of array names, bytes)
        Each entry constrains the summed footprint of the named arrays.
    free : str
        Loops whose block size is a variable; the others (and loops of extent 1) are fixed at
        their full extent.

    Returns
    -------
    numpy.ndarray
        Block sizes in ``[1, extent]``; the starting point (all free sizes 1) if SLSQP fails.
    """
    ext = np.asarray(extents(spec), dtype=float)
    mask = np.array([l in free for l in LOOPS]) & (ext > 1)
    base = np.where(mask, 0.0, np.log(ext))
    objective = modelled_traffic(spec, order)
    feet = footprints(spec)
    uses = [(sum((feet[name] for name in names[1:]), feet[names[0]]), cap)
            for names, cap in budgets]
    # the objective and every budget at one point from one y (SLSQP asks for all of them at
    # each point it visits)
    values = _point_values([objective, *(use for use, _ in uses)], base, mask)
    # one constraint of len(budgets) rows: the rows SLSQP stacks from one constraint per
    # budget, with one call per point instead of one per budget
    constraint = _log_constraints(values, [cap for _, cap in uses], mask) if uses else None

    def fun(z):
        value, grad = values(z)[0]
        return np.log(value), grad[mask] / value

    z0 = np.zeros(int(mask.sum()))
    if not z0.size:
        return np.exp(base)
    x, success = minimize_slsqp(fun, z0, np.zeros(z0.size), np.log(ext[mask]), constraint,
                                maxiter=200, ftol=1e-10)
    z = x if success and np.all(np.isfinite(x)) else z0
    return np.clip(np.exp(_full(base, mask, z)), 1.0, ext)


def _full(base: np.ndarray, mask: np.ndarray, z: np.ndarray) -> np.ndarray:
    y = base.copy()
    y[mask] = z
    return y


def _point_values(signomials: list, base: np.ndarray, mask: np.ndarray):
    """``values(z)``: the (value, gradient) of each signomial at the block sizes of ``z``, the
    last point's kept."""
    last = {}

    def values(z):
        key = z.tobytes()
        if key not in last:
            last.clear()
            y = _full(base, mask, z)
            last[key] = [signomial.value_grad(y) for signomial in signomials]
        return last[key]

    return values


def _log_constraints(values, caps: list, mask: np.ndarray) -> dict:
    """``log(cap) - log(use) >= 0`` for each cap of ``caps`` and use (``values(z)[1:]``), as one
    SLSQP constraint."""
    log_caps = [np.log(cap) for cap in caps]

    def fun(z):
        return np.array([log_cap - np.log(value)
                         for log_cap, (value, _) in zip(log_caps, values(z)[1:])])

    def jac(z):
        return np.array([-grad[mask] / value for value, grad in values(z)[1:]])

    return {"type": "ineq", "fun": fun, "jac": jac}
