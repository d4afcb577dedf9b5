"""The busy processor's minimum traffic (theory.md 4.3, the memory-independent bound): the
second of the two geometric programs of the bounds (the first, F(X), and the rows they share
are in `parconv.bounds.workfn`), certified the same way.  Pure, no MPI.

With u = log x and the section-2 rows of `workfn.layer_program` at |V| = work, minimise
``sum_j p_j exp(u_j)`` under ``a_i . u + b_i >= log work`` and ``log o_j <= u_j <= U_j``.  Its
Lagrangian dual ``h(lambda)`` is C^1 and concave, and every lambda >= 0 gives a value that is
never above the true minimum: the value returned is that dual, the primal point beside it.
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache

import numpy as np

from ..spec import ConvSpec
from .workfn import GAP_TOL, LOG_PAD, layer_program, logsumexp, minimize, multipliers, softmax

__all__ = ["TrafficSolution", "traffic_program", "solve_traffic", "minimum_traffic",
           "certify_traffic", "traffic_dual", "traffic_primal", "make_feasible",
           "polish_traffic_dual"]


@dataclasses.dataclass(frozen=True)
class TrafficSolution:
    """min sum_j p_j x_j: `value` certified (never above the minimum), `primal_value` attained at
    the feasible point `x`."""

    value: float
    primal_value: float
    x: tuple[float, float, float]


def traffic_dual(prog, lam, rhs, lower, upper) -> tuple[float, np.ndarray]:
    """h(lambda) and its gradient: a lower bound on min sum p_j x_j for any lambda >= 0.

    ``h = lambda . rhs + sum_j min_{lower_j <= u_j <= upper_j} (p_j e^{u_j} - s_j u_j)`` with
    s = rows^T lambda and rhs_i = T0 - b_i; the inner minimiser is ``clip(log(s_j/p_j))``.
    """
    s = prog.rows.T @ lam
    p = prog.bytes_per
    with np.errstate(divide="ignore"):
        u = np.clip(np.log(s / p), lower, upper)
    value = float(lam @ rhs + np.sum(p * np.exp(u) - s * u))
    return value, rhs - prog.rows @ u


def traffic_primal(prog, rhs, lower, upper) -> tuple[np.ndarray, np.ndarray]:
    """SLSQP on u minimising log sum p e^u; returns u and the row multipliers, rescaled to the
    objective sum p e^u.

    The start balances bytes (p_j x_j equal, the AM-GM optimum of the H1 row) and is raised to
    feasibility, which is usually close to the optimum.
    """
    rows, logp = prog.rows, np.log(prog.bytes_per)
    h1 = prog.families.index("H1")
    level = (2.0 * rhs[h1] + logp.sum()) / 3.0  # log of the equal byte share
    start = make_feasible(rows, rhs, np.clip(level - logp, lower, upper), upper)
    constraints = [{"type": "ineq", "fun": lambda u: rows @ u - rhs, "jac": lambda u: rows}]
    res = minimize(lambda u: logsumexp(u + logp), start,
                   jac=lambda u: softmax(u + logp), method="SLSQP",
                   bounds=list(zip(lower, upper)), constraints=constraints,
                   options={"ftol": 1e-12, "maxiter": 100})
    u = np.clip(res.x, lower, upper)
    return u, multipliers(res, len(rhs)) * math.exp(logsumexp(u + logp))


def traffic_program(spec: ConvSpec, work: int, owned: tuple[int, int, int]):
    """(program without the G_eff row, rhs_i = log(work) - b_i, lower = log o_j, upper = log |A_j|)
    of the busy processor's problem; needs work >= 1 and G_eff >= 1.  Local."""
    prog = layer_program(spec)
    keep = ~prog.index("G")  # |V| <= G_eff holds for every work <= G_eff
    sub = dataclasses.replace(prog, rows=prog.rows[keep], offsets=prog.offsets[keep],
                              families=tuple(f for f, k in zip(prog.families, keep) if k))
    rhs = math.log(work) - sub.offsets
    lower = np.log(np.clip(np.asarray(owned, float), 1.0, prog.sizes))
    return sub, rhs, lower, prog.caps


@lru_cache(maxsize=8192)
def solve_traffic(spec: ConvSpec, work: int, owned: tuple[int, int, int]) -> TrafficSolution:
    """min p_I x_I + p_F x_F + p_O x_O over the section-2 inequalities at |V| = work and
    owned_j <= x_j <= |A_j| (theory.md section 4).  Local.

    The primal point is made feasible by raising it (every inequality is monotone in x) up to the
    caps; the certified value is the dual at the SLSQP multipliers, or after an L-BFGS-B polish of
    the concave dual when the gap to the primal exceeds `GAP_TOL`.
    """
    if work <= 0 or spec.G_eff == 0:
        return TrafficSolution(0.0, 0.0, (0.0, 0.0, 0.0))
    return minimum_traffic(*traffic_program(spec, work, owned))


def minimum_traffic(prog, rhs, lower, upper) -> TrafficSolution:
    """`solve_traffic` on a given program (its prices ``prog.bytes_per``, all positive): the
    SLSQP point raised to feasibility and the dual certificate at its multipliers.  Local."""
    u, lam = traffic_primal(prog, rhs, lower, upper)
    u = make_feasible(prog.rows, rhs, u, upper)
    primal = float(prog.bytes_per @ np.exp(u))
    return TrafficSolution(certify_traffic(prog, lam, rhs, lower, upper, primal), primal,
                           tuple(float(v) for v in np.exp(u)))


def certify_traffic(prog, lam, rhs, lower, upper, primal: float) -> float:
    """A value never above the program's minimum: its dual at the multipliers ``lam``, polished
    with L-BFGS-B when the gap to ``primal`` exceeds `GAP_TOL`, less a margin against rounding,
    and at most ``primal``."""
    best = traffic_dual(prog, lam, rhs, lower, upper)[0]
    if primal - best > GAP_TOL * primal:
        best = max(best, polish_traffic_dual(prog, lam, rhs, lower, upper))
    return min(best * math.exp(-LOG_PAD) - LOG_PAD, primal)


def make_feasible(rows, rhs, u, upper) -> np.ndarray:
    """Raise u uniformly (not past the caps) until every row holds; the caps themselves are
    feasible, so this ends.  Overshooting twice the shortfall makes rows whose free coefficients
    sum to at least 1/2 hold in one step (a solver's point is off by ~1e-12 at most)."""
    for _ in range(60):
        short = float(np.max(rhs - rows @ u))
        if short <= 0:
            return u
        u = np.minimum(upper, u + max(2.0 * short, 1e-12))
    return upper.copy()


def polish_traffic_dual(prog, lam0, rhs, lower, upper) -> float:
    """Maximise h over lambda >= 0 with L-BFGS-B (h is C^1 and concave); scaled so that the
    variables are O(1).  Returns the largest value seen (each is a valid lower bound)."""
    scale = max(float(lam0.max()), 1.0)
    seen = [traffic_dual(prog, lam0, rhs, lower, upper)[0]]

    def negative(mu):
        value, grad = traffic_dual(prog, mu * scale, rhs, lower, upper)
        seen.append(value)
        return -value / scale, -grad

    minimize(negative, lam0 / scale, jac=True, method="L-BFGS-B",
             bounds=[(0.0, None)] * len(lam0), options={"ftol": 1e-15, "gtol": 1e-12,
                                                        "maxiter": 500})
    return max(seen)
