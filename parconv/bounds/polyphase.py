"""The polyphase bound of strided layers (docs/theory.md 3.9 and 4.7).  Pure, no MPI.

Split the taps r of an axis by the residue (d r - p) mod s.  Taps of one class read input rows of
one residue only, classes read disjoint rows, and inside a class one input row is read by at most
rho_phi taps.  A 2-D phase phi is a pair of classes: the layer is a sum of phases with disjoint
inputs and disjoint filter taps and a shared output.  For weights y_phi in (0, 1] the weighted
work T_y(V) = sum_phi y_phi |V_phi| of any iteration set V satisfies, for every convex
combination theta of the per-phase inequalities ("atoms", each a monomial in (|I_phi|, |F_phi|,
|O_V|) with |I_phi|, |F_phi| replaced by their phase totals where an atom says so) whose exponents
alpha on inputs and beta on filters have alpha + beta <= 1, the Hoelder row

    T_y  <=  |I_V|^alpha |F_V|^beta |O_V|^gamma ( sum_phi c_phi^(1/delta) )^delta,  delta = 1-alpha-beta,

with c_phi = y_phi prod_r (atom constant)^theta_r (max_phi c_phi when delta = 0).  Together with
y_max times the section-2 rows these are the rows of a geometric program of the same form as
`parconv.bounds.workfn.layer_program`, solved with the same dual certificates; the weighted work
function F_y(X) then bounds the sequential traffic by M (ceil(sum_phi y_phi G_phi / F_y(3M)) - 1),
and the busiest of P processors does weighted work >= sum_phi y_phi G_phi / P.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from functools import lru_cache

import numpy as np

from ..spec import ConvSpec
from .border import axis_reuse, axis_sigma, combine
from .traffic import certify_traffic, make_feasible, traffic_primal
from .workfn import (GAP_TOL, LOG_PAD, LayerProgram, layer_program, output_weighted,
                     polish_work_dual, witness_program, work_dual, work_primal)

__all__ = ["Phase", "phases", "polyphase_program", "polyphase_work", "polyphase_traffic",
           "WEIGHT_EXPONENTS"]

#: the weight families y_phi = rho_phi^(-e) tried (normalised to max 1); e = 0 is the plain work
WEIGHT_EXPONENTS = (0.0, 0.5, 1.0)
#: convex weights tried for each pair of atoms
PAIR_WEIGHTS = (0.125, 0.25, 0.5, 0.75, 0.875)
#: rows whose log slack at the primal point is below this are kept for the certificate
ACTIVE_SLACK = 1e-3


@dataclasses.dataclass(frozen=True)
class Phase:
    """One polyphase component: `taps` used filter taps (per (k, c)), `rho` the largest number of
    its taps reading one input pixel, `reuse` its border-aware constant
    min(sigma_h kappa_w, kappa_h sigma_w) <= rho (theory.md 2.3.1, 3.9.2), `G` its effective
    iterations, `size_in` its touched input elements and `size_filter` its used filter
    elements."""

    taps: int
    rho: int
    G: int
    size_in: int
    size_filter: int
    reuse: float


def _axis_taps(n_in: int, n_out: int, k: int, stride: int, pad: int, dil: int):
    """(input row of every (output, tap) pair, which pairs lie in the image, every tap's class
    (dil r - pad) mod stride) of one axis."""
    x = stride * np.arange(n_out)[:, None] + dil * np.arange(k)[None, :] - pad
    return x, (x >= 0) & (x < n_in), (dil * np.arange(k) - pad) % stride


def _class_count(*axis) -> int:
    """The number of non-empty tap classes of one axis."""
    _, valid, key = _axis_taps(*axis)
    return int(np.unique(key[valid.any(axis=0)]).size)


def _axis_classes(n_in: int, n_out: int, k: int, stride: int, pad: int, dil: int) -> list:
    """Per residue class of (dil r - pad) mod stride on one axis: (used taps, effective (h, r)
    pairs, touched rows, largest number of the class's taps reading one row, the class's
    (kappa, sigma)).  Empty classes are dropped."""
    x, valid, key = _axis_taps(n_in, n_out, k, stride, pad, dil)
    single = _class_count(n_in, n_out, k, stride, pad, dil) == 1  # kappa of the whole axis
    out = []
    for residue in np.unique(key):
        cols = key == residue
        sub, ok = x[:, cols], valid[:, cols]
        pairs = int(ok.sum())
        if pairs == 0:
            continue
        rows = sub[ok]
        cls = None if single else int(residue)
        # for a fixed row and tap the output row is fixed, so pairs per row = taps per row
        out.append((int(ok.any(axis=0).sum()), pairs, int(np.unique(rows).size),
                    int(np.bincount(rows).max()),
                    (axis_reuse(n_in, n_out, k, stride, pad, dil, cls),
                     axis_sigma(n_in, n_out, k, stride, pad, dil, cls))))
    return out


@lru_cache(maxsize=1024)
def phases(spec: ConvSpec) -> tuple[Phase, ...]:
    """The 2-D phases of a layer (one for stride 1 and dilation 1).  Local.

    Their G, size_in and size_filter sum to G_eff, |I_touched| and |F_used|."""
    n, c, k = spec.batch, spec.in_channels, spec.out_channels
    rows, cols = (_axis_classes(*spec.axis(i)) for i in (0, 1))
    return tuple(Phase(taps=th * tw, rho=rh * rw, G=n * k * c * ph * pw, size_in=n * c * xh * xw,
                       size_filter=k * c * th * tw, reuse=combine(kh, kw))
                 for (th, ph, xh, rh, kh), (tw, pw, xw, rw, kw)
                 in itertools.product(rows, cols))


def _atoms(spec: ConvSpec, phase: Phase) -> dict:
    """name -> ((alpha, beta, gamma), log constant): the per-phase inequalities |V_phi| <=
    const * |I_phi|^alpha |F_phi|^beta |O_V|^gamma with alpha + beta <= 1 (an array replaced by
    its phase total where the name says ``cap``)."""
    h, w = spec.out_size
    # the (H1) atoms take the phase's kappa (theory.md 2.3.1 on the phase's taps); (L-I) its rho
    lr, li, lf = math.log(phase.reuse), math.log(phase.size_in), math.log(phase.size_filter)
    return {
        "H1": ((0.5, 0.5, 0.5), 0.5 * lr),
        "H1-capF": ((0.5, 0.0, 0.5), 0.5 * (lr + lf)),
        "H1-capI": ((0.0, 0.5, 0.5), 0.5 * (lr + li)),
        "H1-capIF": ((0.0, 0.0, 0.5), 0.5 * (lr + li + lf)),
        "H2-capF": ((2 / 3, 0.0, 2 / 3), 2 / 3 * lf),
        "H2-capI": ((0.0, 2 / 3, 2 / 3), 2 / 3 * li),
        "L-O": ((0.0, 0.0, 1.0), math.log(spec.in_channels * phase.taps)),
        "L-I": ((1.0, 0.0, 0.0), math.log(spec.out_channels * phase.rho)),
        "L-F": ((0.0, 1.0, 0.0), math.log(spec.batch * h * w)),
        "P-IO": ((1.0, 0.0, 1.0), 0.0),
        "P-FO": ((0.0, 1.0, 1.0), 0.0),
        "P-capF": ((1.0, 0.0, 0.0), lf),
        "P-capI": ((0.0, 1.0, 0.0), li),
        "G": ((0.0, 0.0, 0.0), math.log(phase.G)),
    }


#: atoms whose pairs are tried (the others are tried alone); the atoms active at the optimum of
#: the catalogue's strided layers are (H1 | H1-capF) with L-O, L-I or G
PAIR_ATOMS = ("H1", "H1-capF", "H1-capI", "H1-capIF", "L-O", "L-I", "L-F", "G")


@lru_cache(maxsize=1)
def _menu(names: tuple[str, ...]) -> np.ndarray:
    """The convex combinations theta tried, one per row: every atom alone and every pair of
    PAIR_ATOMS at PAIR_WEIGHTS."""
    index = {a: i for i, a in enumerate(names)}
    menu = list(np.eye(len(names)))
    for a, b in itertools.combinations([a for a in names if a in PAIR_ATOMS], 2):
        for t in PAIR_WEIGHTS:
            row = np.zeros(len(names))
            row[index[a]], row[index[b]] = t, 1.0 - t
            menu.append(row)
    return np.array(menu)


def hoelder_rows(theta: np.ndarray, exps: np.ndarray, logc: np.ndarray, log_y: np.ndarray):
    """(exponents (m, 3), offsets (m,)) of the Hoelder rows of the combinations theta (m, atoms)
    of atoms with exponents `exps` (atoms, 3) and log constants `logc` (phases, atoms), for log
    weights `log_y` (phases,); rows with alpha + beta > 1 are dropped."""
    e = theta @ exps
    delta = 1.0 - e[:, 0] - e[:, 1]
    keep = delta >= -1e-12
    e, delta, theta = e[keep], np.clip(delta[keep], 0.0, None), theta[keep]
    z = logc @ theta.T + log_y[:, None]  # (phases, m): log c_phi of each row
    top = z.max(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.where(delta > 1e-12, delta, 1.0)
        lse = scaled * np.log(np.exp((z - top) / scaled).sum(axis=0)) + top
    return e, np.where(delta > 1e-12, lse, top)


@lru_cache(maxsize=256)
def polyphase_program(spec: ConvSpec, exponent: float,
                      witness: bool = False) -> tuple[LayerProgram, float]:
    """(program, log of the total weighted work sum_phi y_phi G_phi) for y_phi = rho_phi^-e
    normalised to max 1.  Local.  The rows bound log T_y: y_max times every row of
    `layer_program` (its families) and one Hoelder row per combination of `_menu` (family
    ``PH``); the caps and byte weights are the layer's.  With `witness` the layer's rows are
    `witness_program`'s (never above them: for feasible values only, no search for kappa)."""
    base = witness_program(spec) if witness else layer_program(spec)
    ph = phases(spec)
    rho = np.array([p.rho for p in ph], dtype=float)
    log_y = -exponent * np.log(rho)
    log_y -= log_y.max()
    atoms = [_atoms(spec, p) for p in ph]
    names = tuple(atoms[0])
    exps = np.array([atoms[0][a][0] for a in names])
    logc = np.array([[at[a][1] for a in names] for at in atoms])
    rows, offsets = hoelder_rows(_menu(names), exps, logc, log_y)
    total = float(np.log(np.exp(log_y) @ np.array([p.G for p in ph], dtype=float)))
    base_offsets = base.offsets.copy()
    # the weighted work of the whole layer replaces |V| <= G_eff
    base_offsets[base.index("G")] = total
    prog = LayerProgram(np.vstack([base.rows, rows]), np.concatenate([base_offsets, offsets]),
                        base.families + ("PH",) * len(offsets), base.sizes, base.bytes_per)
    return prog, total


def is_strided(spec: ConvSpec) -> bool:
    """Whether the layer has more than one phase (the polyphase bound can differ).  Counts the
    non-empty tap classes per axis without building the phases (whose kappa costs a search)."""
    return _class_count(*spec.axis(0)) * _class_count(*spec.axis(1)) > 1


@lru_cache(maxsize=8192)
def polyphase_work(spec: ConvSpec, exponent: float, X: float,
                   output_weight: int = 1) -> tuple[float, float]:
    """(F_y(X), total weighted work): the most weighted work sum_phi y_phi |V_phi| any set of
    iterations touching at most X bytes can do (output bytes counted ``output_weight`` times, as
    `parconv.bounds.workfn.solve_work`), a dual certificate never below the maximum.
    Local; needs G_eff >= 1."""
    prog, total = polyphase_program(spec, exponent)
    prog = output_weighted(prog, output_weight)
    if float(prog.bytes_per @ prog.sizes) <= X:
        return math.exp(total), math.exp(total)
    u, t_primal, lam = work_primal(prog, X)
    # certify on the rows active at the primal point: fewer rows relax the maximum, so the dual
    # of the reduced program is still never below the true maximum
    active = prog.rows @ u + prog.offsets - t_primal < ACTIVE_SLACK
    sub = _subprogram(prog, active)
    lam = lam[active]
    candidates = [np.eye(len(sub.offsets))[i] for i in range(len(sub.offsets))]
    if lam.sum() > 0:
        candidates.append(lam / lam.sum())
    best, best_lam = min(((work_dual(sub, c, X), c) for c in candidates), key=lambda t: t[0])
    if best - t_primal > GAP_TOL * max(1.0, abs(t_primal)):
        best, best_lam = polish_work_dual(sub, best_lam, X)
    return math.exp(min(best, total) + LOG_PAD), math.exp(total)


def _subprogram(prog: LayerProgram, keep: np.ndarray) -> LayerProgram:
    return dataclasses.replace(prog, rows=prog.rows[keep], offsets=prog.offsets[keep],
                               families=tuple(f for f, k in zip(prog.families, keep) if k))


@lru_cache(maxsize=8192)
def polyphase_traffic(spec: ConvSpec, exponent: float, P: int,
                      owned: tuple[int, int, int]) -> float:
    """min sum_j p_j x_j over x with o_j <= x_j <= |A_j| and every row at T_y = (total weighted
    work) / P, certified never above the minimum.  Local; needs G_eff >= 1."""
    prog, total = polyphase_program(spec, exponent)
    # T_y <= total holds at total / P
    sub = _subprogram(prog, np.array([f != "G" for f in prog.families]))
    rhs = total - math.log(P) - sub.offsets
    lower, upper = np.log(np.asarray(owned, dtype=float)), sub.caps
    u, lam = traffic_primal(sub, rhs, lower, upper)
    u = make_feasible(sub.rows, rhs, u, upper)
    primal = float(sub.bytes_per @ np.exp(u))
    # certify on the rows active at the primal point (fewer rows lower the minimum: still valid);
    # a primal point raised to feasibility may leave no row active: then certify on all rows
    active = sub.rows @ u - rhs < ACTIVE_SLACK
    if not active.any():
        active[:] = True
    sub, rhs, lam = _subprogram(sub, active), rhs[active], lam[active]
    return certify_traffic(sub, lam, rhs, lower, upper, primal)
