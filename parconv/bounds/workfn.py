"""The two small geometric programs behind the bounds (theory.md sections 2 and 4), solved in log
variables and certified by Lagrangian duality.  Pure, no MPI.

With u = (log x_I, log x_F, log x_O) and T = log |V|, every inequality of theory.md section 2 is
linear, ``T <= a_i . u + b_i`` (one row per inequality, see `layer_program`), the caps are
``u_j <= U_j = log |A_j|`` and the byte budget ``sum_j p_j exp(u_j) <= X`` is convex.

* The work function F(X) maximises T (a convex program).  The primal (SLSQP) gives a feasible
  point, hence a value that may be slightly LOW; the value returned is the dual value
  ``min_{lambda, nu} g(lambda, nu)``, which by weak duality is never below the true maximum
  whatever lambda and nu are, so a bound built on it stays valid even if the optimiser stops early.
* The busy processor's minimum traffic (the memory-independent bound) is the second program,
  on the same rows: `parconv.bounds.traffic`.

Both return the primal point as well, and the gap between primal and dual (a few 1e-12 relative in
practice) tells how tight the certificate is.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from functools import lru_cache

import numpy as np

from ..spec import ConvSpec
from .border import reuse_constant, reuse_witness


def minimize(*args, **kwargs):
    """scipy.optimize.minimize, imported on first use: importing scipy.optimize costs every
    process about 0.4 CPU-s and 48 MiB, and most ranks of a run never solve a bound."""
    from scipy.optimize import minimize as scipy_minimize
    return scipy_minimize(*args, **kwargs)

#: relative tolerance on the duality gap before the dual is polished further
GAP_TOL = 1e-10
#: safety margin (absolute, in log space) that absorbs floating-point rounding of the dual value
LOG_PAD = 1e-12
#: lower limit of the primal log variables (x_j >= exp(-40)); the dual needs no such limit
_U_FLOOR = -40.0


@dataclasses.dataclass(frozen=True)
class LayerProgram:
    """The data of the section-2 inequalities of one layer, in log variables.

    rows (m, 3) and offsets (m,) encode ``T <= rows @ u + offsets``; `families` labels each row
    ('P', 'H2', 'H1', 'L' or 'G' for |V| <= G_eff); `caps` = log |A_j|; `bytes_per` = p_j.
    """

    rows: np.ndarray
    offsets: np.ndarray
    families: tuple[str, ...]
    sizes: np.ndarray
    bytes_per: np.ndarray

    @property
    def caps(self) -> np.ndarray:
        return np.log(self.sizes)

    def index(self, family: str) -> np.ndarray:
        return np.array([f == family for f in self.families])


def output_bytes(spec: ConvSpec) -> int:
    """p_O of the bounds: min(p_acc, p_out).

    A partial sum costs p_acc bytes, but an output completed inside a segment (or on a processor
    that does not own it) may be moved as its final value at p_out bytes; the smaller of the two
    keeps the segment and ownership arguments valid when ``dtype_out`` is narrower than the
    accumulator (e.g. int8 outputs of an int32 accumulator).
    """
    return min(spec.p_acc, spec.p_out)


def _axis_used_taps(n_in: int, n_out: int, kernel: int, stride: int, pad: int, dil: int) -> int:
    idx = stride * np.arange(n_out)[:, None] + dil * np.arange(kernel)[None, :] - pad
    return int(np.count_nonzero(((idx >= 0) & (idx < n_in)).any(axis=0)))


def used_filter_size(spec: ConvSpec) -> int:
    """Filter elements some effective iteration reads: K C (used rows r) (used columns s).

    Equal to |F| for every catalogue layer; smaller when a tap only ever meets padding (a thin
    local block at the border, a degenerate layer).  Such elements need never be moved, so they
    count neither in the compulsory traffic nor in the cap on x_F.
    """
    taps = [_axis_used_taps(*spec.axis(i)) for i in (0, 1)]
    return spec.out_channels * spec.in_channels * taps[0] * taps[1]


@lru_cache(maxsize=1024)
def layer_program(spec: ConvSpec) -> LayerProgram:
    """The rows of (P), (H2), (H1), (L) and |V| <= G_eff of theory.md section 2.  Local.

    (H1) uses the border-aware reuse constant kappa <= rho (theory.md 2.3.1,
    `parconv.bounds.border`); the input loop bound (L) keeps rho, the most taps one pixel meets.
    Needs G_eff >= 1 (then every array size and loop bound is positive)."""
    return _layer_program(spec, reuse_constant(spec))


@lru_cache(maxsize=1024)
def witness_program(spec: ConvSpec) -> LayerProgram:
    """`layer_program` with `parconv.bounds.border.reuse_witness` (<= kappa) in (H1), which
    needs no search.  Its rows are never above those of `layer_program`, so a feasible value of
    it never exceeds F(X): what `feasible_log_work` needs to show a term small.  Local."""
    return _layer_program(spec, reuse_witness(spec))


def _layer_program(spec: ConvSpec, reuse: float) -> LayerProgram:
    n = spec.batch
    h, w = spec.out_size
    r, s = spec.kernel_size
    c, k, rho = spec.in_channels, spec.out_channels, spec.rho
    third = 2.0 / 3.0
    table = [  # (a_I, a_F, a_O, b, family)
        (0, 1, 1, 0.0, "P"), (1, 0, 1, 0.0, "P"), (1, 1, 0, 0.0, "P"),
        (third, third, third, 0.0, "H2"),
        (0.5, 0.5, 0.5, 0.5 * math.log(reuse), "H1"),
        (0, 0, 1, math.log(c * r * s), "L"), (0, 1, 0, math.log(n * h * w), "L"),
        (1, 0, 0, math.log(k * rho), "L"),
        (0, 0, 0, math.log(spec.G_eff), "G"),
    ]
    rows = np.array([t[:3] for t in table], dtype=float)
    offsets = np.array([t[3] for t in table])
    sizes = np.array([spec.size_input_touched, used_filter_size(spec), spec.size_output],
                     dtype=float)
    p = np.array([spec.p_in, spec.p_weight, output_bytes(spec)], dtype=float)
    return LayerProgram(rows, offsets, tuple(t[4] for t in table), sizes, p)


def logsumexp(v: np.ndarray) -> float:
    """log sum exp(v) of a short vector (scipy's version costs far more than the solve needs)."""
    top = float(np.max(v))
    return top + math.log(float(np.sum(np.exp(v - top))))


def softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - np.max(v))
    return e / e.sum()


# ---- the work function F(X) -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WorkSolution:
    """F(X) = exp(log_upper) (certified, never below the maximum) and the primal point x."""

    value: float
    primal_value: float
    x: tuple[float, float, float]
    slack: dict  # family -> smallest log slack of its rows at the primal point


def work_dual(prog: LayerProgram, lam: np.ndarray, X: float) -> float:
    """min over nu > 0 of the Lagrangian dual g(lambda, nu) of the work function, for lambda on
    the simplex: an upper bound on log F(X).  Exact in nu.

    ``g = lambda.b + nu X + sum_j sup_{u_j <= U_j} (s_j u_j - nu p_j e^{u_j})`` with s = rows^T
    lambda.  The inner sup sits at ``u_j = min(U_j, log(s_j / (nu p_j)))``; g is convex in nu
    and stationary where ``X = sum_j min(p_j |A_j|, s_j / nu)``; each choice of capped set gives a
    candidate nu, every candidate is a valid bound, and the minimum among them is exact.
    """
    s = prog.rows.T @ lam
    base = float(lam @ prog.offsets)
    caps, p, sizes = prog.caps, prog.bytes_per, prog.sizes
    best = base + float(s @ caps)  # the limit nu -> 0 (every variable at its cap)
    for capped in itertools.product((False, True), repeat=3):
        capped = np.array(capped)
        free = ~capped & (s > 0)
        room = X - float(p[capped] @ sizes[capped])
        if room <= 0 or not free.any():
            continue
        nu = float(s[free].sum()) / room
        with np.errstate(divide="ignore", invalid="ignore"):
            u = np.minimum(caps, np.log(s / (nu * p)))
            inner = np.where(s > 0, s * u - nu * p * np.exp(u), 0.0)
        best = min(best, base + nu * X + float(inner.sum()))
    return best


def work_primal(prog: LayerProgram, X: float) -> tuple[np.ndarray, float, np.ndarray]:
    """SLSQP on (T, u); returns a FEASIBLE u, its T, and the inequality multipliers."""
    caps, logp, log_x = prog.caps, np.log(prog.bytes_per), math.log(X)
    u0 = np.minimum(caps, np.log(X / (3.0 * prog.bytes_per)))
    z0 = np.concatenate([[np.min(prog.rows @ u0 + prog.offsets)], u0])
    m = len(prog.offsets)
    constraints = [
        {"type": "ineq", "fun": lambda z: prog.rows @ z[1:] + prog.offsets - z[0],
         "jac": lambda z: np.hstack([-np.ones((m, 1)), prog.rows])},
        {"type": "ineq", "fun": lambda z: np.array([log_x - logsumexp(z[1:] + logp)]),
         "jac": lambda z: np.concatenate([[0.0], -softmax(z[1:] + logp)])[None, :]},
    ]
    bounds = [(None, None)] + [(min(_U_FLOOR, cap), cap) for cap in caps]
    res = minimize(lambda z: -z[0], z0, jac=lambda z: np.eye(4)[0] * -1.0, method="SLSQP",
                   bounds=bounds, constraints=constraints,
                   options={"ftol": 1e-12, "maxiter": 100})
    u = np.minimum(caps, res.x[1:])
    excess = logsumexp(u + logp) - log_x
    if excess > 0:  # shifting every u by -excess meets the budget exactly
        u = u - excess
    lam = multipliers(res, m)
    return u, float(np.min(prog.rows @ u + prog.offsets)), np.clip(lam, 0.0, None)


def multipliers(res, m: int) -> np.ndarray:
    """The first m inequality multipliers of an SLSQP result (zeros if SciPy gives none); they
    only seed the dual, whose value is valid for any non-negative lambda."""
    lam = np.asarray(getattr(res, "multipliers", np.zeros(m)), dtype=float).ravel()[:m]
    if lam.shape != (m,) or not np.all(np.isfinite(lam)):
        return np.zeros(m)
    return np.clip(lam, 0.0, None)


def polish_work_dual(prog: LayerProgram, lam0: np.ndarray, X: float) -> tuple[float, np.ndarray]:
    """Minimise the (convex) dual over the simplex from lam0; every point tried is a valid bound,
    so the smallest value seen is returned."""
    seen = [(work_dual(prog, lam0, X), lam0)]

    def objective(lam):
        lam = np.clip(lam, 0.0, None)
        lam = lam / lam.sum() if lam.sum() > 0 else np.full_like(lam, 1.0 / len(lam))
        value = work_dual(prog, lam, X)
        seen.append((value, lam))
        return value

    m = len(lam0)
    minimize(objective, lam0, method="SLSQP", bounds=[(0.0, 1.0)] * m,
             constraints=[{"type": "eq", "fun": lambda lam: lam.sum() - 1.0}],
             options={"ftol": 1e-15, "maxiter": 200})
    return min(seen, key=lambda t: t[0])


def _closed_form_duals(prog: LayerProgram) -> list[np.ndarray]:
    """The dual points whose values are the closed forms (H1, H2 alone) and |V| <= G_eff."""
    return [prog.index(f).astype(float) for f in ("H1", "H2", "G")]


def output_weighted(prog: LayerProgram, output_weight: int) -> LayerProgram:
    """``prog`` with its output bytes counted ``output_weight`` times in the budget (theory.md
    3.3, weighted segments: an output byte a segment writes out is read back or is final)."""
    if output_weight == 1:
        return prog
    p = prog.bytes_per.copy()
    p[2] *= output_weight
    return dataclasses.replace(prog, bytes_per=p)


@lru_cache(maxsize=8192)
def solve_work(spec: ConvSpec, X: float, output_weight: int = 1) -> WorkSolution:
    """F(X) of theory.md section 2 with its primal point.  Local.

    With ``output_weight`` w the budget is ``p_I x_I + p_F x_F + w p_O x_O <= X`` (w = 2: the
    work function of the weighted segments of theory.md 3.3).  When every array fits in X bytes
    the maximum is G_eff exactly (the whole iteration space satisfies every inequality).
    Otherwise the certified value is the smallest of the dual values at the SLSQP multipliers and
    at the closed-form dual points, polished when the gap to the primal exceeds `GAP_TOL`.
    """
    if spec.G_eff == 0:  # every iteration reads padding: there is no work and no data
        return WorkSolution(0.0, 0.0, (0.0, 0.0, 0.0), {})
    prog = output_weighted(layer_program(spec), output_weight)
    if float(prog.bytes_per @ prog.sizes) <= X:
        x = tuple(float(v) for v in prog.sizes)
        slack = _slacks(prog, prog.caps, math.log(spec.G_eff))
        return WorkSolution(float(spec.G_eff), float(spec.G_eff), x, slack)
    u, t_primal, lam = work_primal(prog, X)
    candidates = _closed_form_duals(prog)
    if lam.sum() > 0:
        candidates.append(lam / lam.sum())
    best, best_lam = min(((work_dual(prog, c, X), c) for c in candidates), key=lambda t: t[0])
    if best - t_primal > GAP_TOL * max(1.0, abs(t_primal)):
        best, best_lam = polish_work_dual(prog, best_lam, X)
    log_upper = min(best, math.log(spec.G_eff)) + LOG_PAD
    return WorkSolution(math.exp(log_upper), math.exp(t_primal),
                        tuple(float(v) for v in np.exp(u)), _slacks(prog, u, t_primal))


def _slacks(prog: LayerProgram, u: np.ndarray, t: float) -> dict:
    values = prog.rows @ u + prog.offsets - t
    return {f: float(values[prog.index(f)].min()) for f in sorted(set(prog.families))}


# ---- a cheap lower bound on F(X) --------------------------------------------------------------
#: the byte shares of `feasible_log_work`: every split of the budget in steps of 1/SHARE_STEPS
SHARE_STEPS = 16
#: absolute margin (log space) taken off `feasible_log_work` against rounding
_FEASIBLE_PAD = 1e-9


@lru_cache(maxsize=4)
def _shares(steps: int) -> np.ndarray:
    """(points, 3) byte shares i / steps, all positive, summing to 1."""
    points = [(i, j, steps - i - j) for i in range(1, steps - 1) for j in range(1, steps - i)]
    return np.array(points, dtype=float) / steps


def feasible_log_work(prog: LayerProgram, X: float, steps: int = SHARE_STEPS) -> float:
    """A lower bound on the log of the maximum of ``prog`` within X bytes (of F(X) for the
    layer program), from feasible points only: for each split of the X bytes among the three
    arrays (`_shares`, each array at most its cap), the smallest row.  Any such point meets the
    budget and the caps, so its value is attained and the maximum is at least as large; a margin
    absorbs rounding.  Local.  Cheap (no solve): it certifies that a term built on F(X) is small
    without solving for F(X).  A coarser grid (fewer `steps`) is cheaper and its value lower; a
    divisor of `SHARE_STEPS` gives a subset of its points, so never a higher value."""
    x = np.minimum(prog.sizes, _shares(steps) * (X * (1.0 - 1e-12)) / prog.bytes_per)
    values = (np.log(x) @ prog.rows.T + prog.offsets).min(axis=1)
    return float(values.max()) - _FEASIBLE_PAD


def feasible_log_works(prog: LayerProgram, budgets, steps: int = SHARE_STEPS) -> np.ndarray:
    """`feasible_log_work` of each of ``budgets`` (bytes) from one vectorised evaluation."""
    X = np.asarray(budgets, dtype=float)[:, None, None]
    x = np.minimum(prog.sizes, _shares(steps) * (X * (1.0 - 1e-12)) / prog.bytes_per)
    values = (np.log(x) @ prog.rows.T + prog.offsets).min(axis=2)
    return values.max(axis=1) - _FEASIBLE_PAD
