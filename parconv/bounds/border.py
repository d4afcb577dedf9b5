"""The border-aware reuse constant kappa of the small-filter inequality (theory.md 2.3.1).  Pure.

(H1) charges every input pixel with rho = rho_h rho_w im2col entries, the most one pixel can have.
Near the image border pixels are read by fewer taps, and a set of outputs that avoids the border
pays a halo instead; the inequality ``|V|^2 <= kappa |I_V| |F_V| |O_V|`` holds with
``kappa = kappa_h kappa_w``, where kappa of one axis is the squared spectral norm of that axis's
0/1 tensor ``T[x, r, h] = 1`` iff ``x = s h + d r - p`` lies in ``[0, n_in)``:

    kappa_axis = max over unit v >= 0 (one weight per tap) of ||M(v)||_2^2,
    M(v) = sum_r v_r P_r,  P_r[x, h] = T[x, r, h].

kappa_axis <= rho_axis always, and equals it only in the limit of an unbounded image.  The
maximum over the sphere is certified from above by a branch and bound over spherical triangles
(arcs for two taps): ``f(v) = ||M(v)||`` is convex and positively homogeneous, so on a spherical
triangle it is at most the linear function through its vertex values, whose maximum there has a
closed form.  Only axes with at most `MAX_TAPS` used taps and at most `MAX_OUT` outputs are
solved; elsewhere the gain is below 0.25 % (it shrinks like (pi / n_out)^2) or the search would
cost more than it gives, and rho is used.

The proof needs the weighted constant on one axis only; the other may take the set constant
sigma of `set_reuse` (exact, attained by sets, and smaller), so the layer's constant is
``min(sigma_h kappa_w, kappa_h sigma_w)`` (`combine`).
"""

from __future__ import annotations

import heapq
import itertools
import math
from functools import lru_cache

import numpy as np

from ..spec import ConvSpec
from .set_reuse import axis_set_reuse, axis_set_witness, used_rows

#: axes with more used taps keep rho (the sphere of tap weights has too many dimensions)
MAX_TAPS = 3
#: axes with more outputs keep rho: their border gain is below (pi / 65)^2 = 0.23 %
MAX_OUT = 64
#: relative gap between the certified upper bound on ||M(v)|| and the best point found
TOL = 3e-4
#: relative pad on every spectral norm, absorbing the eigen-solver's rounding
NORM_PAD = 1e-9
#: relative pad on every simplex's charge, absorbing the rounding of its small linear solves
CHARGE_PAD = 1e-9
#: relative margin taken off a witness (a computed norm at a unit v), for the eigen-solver's
#: rounding: the witness must never exceed the true maximum
WITNESS_MARGIN = 1e-12
#: largest number of simplices refined before the current upper bound is returned
MAX_CELLS = 4000
#: up to this many outputs one batched dense eigen-solve per refinement is the cheapest
DENSE_MAX = 32


def axis_taps(n_in: int, n_out: int, kernel: int, stride: int, pad: int, dil: int,
              residue: int | None = None) -> list[np.ndarray]:
    """The 0/1 matrices P_r (n_in x n_out) of the taps r that read some pixel of the image; with
    `residue`, only the taps of that polyphase class, (dil r - pad) mod stride == residue."""
    mats = []
    for rows in used_rows(n_in, n_out, kernel, stride, pad, dil, residue):
        m = np.zeros((n_in, n_out))
        inside = rows >= 0
        m[rows[inside], np.nonzero(inside)[0]] = 1.0
        mats.append(m)
    return mats


def _axis_rho(n_in: int, n_out: int, kernel: int, stride: int, pad: int, dil: int,
              residue: int | None) -> tuple[int, int]:
    """(number of used taps, rho: the most (output, tap) pairs that read one row), counted from
    the rows each tap reads, without building the tap matrices (wide axes need only rho)."""
    taps = used_rows(n_in, n_out, kernel, stride, pad, dil, residue)
    if not taps:
        return 0, 0
    counts = np.zeros(n_in, dtype=np.int64)
    for rows in taps:
        counts += np.bincount(rows[rows >= 0], minlength=n_in)
    return len(taps), int(counts.max())


class _Norm:
    """``v -> ||sum_r v_r P_r||_2`` for a stack of v, from the Gram blocks ``P_r^T P_r'``.

    ``M(v)^T M(v)`` is banded (outputs h, h' share a pixel only when ``|h - h'| <= d (R-1) / s``),
    so beyond `DENSE_MAX` outputs its largest eigenvalue comes from LAPACK's banded solver, one
    matrix at a time (a dense solver costs more there and starts BLAS threads from n = 64 on);
    below, one batched dense solve for all new vertices is cheaper.
    """

    def __init__(self, mats: list[np.ndarray]):
        self.gram = np.array([[a.T @ b for b in mats] for a in mats])
        rows, cols = np.nonzero(self.gram.any(axis=(0, 1)))
        self.band = int(np.abs(rows - cols).max())
        self.n = self.gram.shape[-1]

    def __call__(self, vs: np.ndarray) -> np.ndarray:
        g = np.einsum("kr,ks,rsij->kij", vs, vs, self.gram)
        n, b = self.n, self.band
        if n <= DENSE_MAX:
            top = np.linalg.eigvalsh(g)[:, -1]
            return np.sqrt(np.maximum(top, 0.0)) * (1.0 + NORM_PAD)
        from scipy.linalg import eig_banded
        top = np.empty(len(vs))
        lower_band = np.zeros((b + 1, n))
        for i, a in enumerate(g):
            for d in range(b + 1):
                lower_band[d, :n - d] = np.diagonal(a, -d)
            top[i] = eig_banded(lower_band, lower=True, eigvals_only=True, select="i",
                                select_range=(n - 1, n - 1))[0]
        return np.sqrt(np.maximum(top, 0.0)) * (1.0 + NORM_PAD)


def _arc_max(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """max of c . v over the unit vectors v of cone(a, b) (a, b unit, not parallel)."""
    ca, cb, ab = float(c @ a), float(c @ b), float(a @ b)
    det = 1.0 - ab * ab
    alpha, beta = (ca - ab * cb) / det, (cb - ab * ca) / det  # projection = alpha a + beta b
    if alpha >= 0.0 and beta >= 0.0:
        return math.sqrt(max(alpha * ca + beta * cb, 0.0))
    return max(ca, cb)


def _charges(cells: np.ndarray, values: np.ndarray) -> list[float]:
    """Upper bounds on f over spherical simplices (rows of each cell: m unit vertices in R^m),
    f convex and positively homogeneous with f(vertex) = values.

    The linear function l(x) = c . x through a cell's vertex values bounds f on it: a unit v
    there is t p with p = sum_i beta_i vertex_i (beta >= 0 summing to 1) and t > 0, so
    f(v) = t f(p) <= t sum_i beta_i values_i = l(v).  The charge is the largest l on the cell:
    |c| if c points into it, else the largest on its boundary arcs."""
    c = np.linalg.solve(cells, values[..., None])[..., 0]    # m vertices in R^m fix l
    if cells.shape[1] == 2:
        return [_arc_max(ci, cell[0], cell[1]) for ci, cell in zip(c, cells)]
    inside = np.linalg.solve(cells.transpose(0, 2, 1), c[..., None])[..., 0].min(axis=1) >= 0.0
    norms = np.linalg.norm(c, axis=1)
    return [float(norm) if ok else max(_arc_max(ci, cell[i], cell[j])
                                       for i, j in ((0, 1), (1, 2), (2, 0)))
            for ci, cell, ok, norm in zip(c, cells, inside, norms)]


def _split(cells: np.ndarray) -> np.ndarray:
    """The 2 (arc) or 4 (triangle) spherical children of every cell, midpoints on the sphere."""
    def mid(a, b):
        m = a + b
        return m / np.linalg.norm(m, axis=-1, keepdims=True)
    if cells.shape[1] == 2:
        a, b = cells[:, 0], cells[:, 1]
        m = mid(a, b)
        return np.concatenate([np.stack([a, m], 1), np.stack([m, b], 1)])
    a, b, c = cells[:, 0], cells[:, 1], cells[:, 2]
    ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
    return np.concatenate([np.stack(t, 1) for t in ((a, ab, ca), (ab, b, bc), (ca, bc, c),
                                                    (ab, bc, ca))])


def spectral_bound(mats: list[np.ndarray], tol: float = TOL,
                   max_cells: int = MAX_CELLS) -> tuple[float, float]:
    """(lower, upper) on ``max over unit v >= 0 of ||sum_r v_r P_r||_2`` for nonneg matrices.

    `lower` is attained (the norm at a computed unit v).  `upper` is certified: the spherical
    simplices kept in a heap always cover the nonneg part of the sphere, and each is charged an
    upper bound of f on it (`_charges`).  Best first, the top simplex is split at its midpoints
    until its charge is at most lower (1 + tol) or `max_cells` simplices were split; `upper` is
    then the top charge.
    """
    norm = _Norm(mats)
    m = len(mats)
    if m == 1:
        value = float(norm(np.ones((1, 1)))[0])
        return value, value
    known: dict[bytes, float] = {}

    def charge(cells: np.ndarray) -> list[float]:
        flat = cells.reshape(-1, m)
        keys = [np.round(v, 12).tobytes() for v in flat]
        new = [i for i, key in enumerate(keys) if key not in known]
        if new:
            for i, value in zip(new, norm(flat[new])):
                known[keys[i]] = float(value)
        values = np.array([known[key] for key in keys]).reshape(cells.shape[:2])
        return [value * (1.0 + CHARGE_PAD) for value in _charges(cells, values)]

    order = itertools.count()
    heap = [(-charge(np.eye(m)[None])[0], next(order), np.eye(m))]
    # the centroid is near the optimum of the usual, nearly symmetric axes: a good first lower
    known[b"centroid"] = float(norm(np.full((1, m), m ** -0.5))[0])
    for _ in range(max_cells):
        lower = max(known.values())
        if -heap[0][0] <= lower * (1.0 + tol):
            break
        _, _, cell = heapq.heappop(heap)
        children = _split(cell[None])
        for child, c in zip(children, charge(children)):
            heapq.heappush(heap, (-c, next(order), child))
    lower = max(known.values())
    return lower, max(lower, -heap[0][0])


@lru_cache(maxsize=4096)
def axis_reuse(n_in: int, n_out: int, kernel: int, stride: int, pad: int, dil: int,
               residue: int | None = None) -> float:
    """kappa of one axis (or of one polyphase class of its taps, `residue`): a certified upper
    bound on the squared spectral norm of its tensor, never above its rho (the most taps that
    read one row).  Local."""
    used, rho = _axis_rho(n_in, n_out, kernel, stride, pad, dil, residue)
    if not used:
        return 1.0
    if rho == 1 or n_out > MAX_OUT or used > MAX_TAPS:
        return float(rho)
    _, upper = spectral_bound(axis_taps(n_in, n_out, kernel, stride, pad, dil, residue))
    return min(float(rho), upper * upper)


@lru_cache(maxsize=4096)
def axis_reuse_witness(n_in: int, n_out: int, kernel: int, stride: int, pad: int, dil: int,
                       residue: int | None = None) -> float:
    """A value that kappa of the axis is never below, found cheaply: the largest squared norm
    ``||M(v)||^2`` at the unit tap vectors, the edge midpoints and the centroid of the octant
    (each attained by a unit v, so at most the maximum), less a rounding margin.  Where
    `axis_reuse` keeps rho it is rho.  Local."""
    m, rho = _axis_rho(n_in, n_out, kernel, stride, pad, dil, residue)
    if not m:
        return 1.0
    if rho == 1 or n_out > MAX_OUT or m > MAX_TAPS:
        return float(rho)
    mats = axis_taps(n_in, n_out, kernel, stride, pad, dil, residue)
    points = [np.eye(m)[i] for i in range(m)]
    points += [(points[i] + points[j]) / math.sqrt(2.0) for i in range(m) for j in range(i)]
    points.append(np.full(m, m ** -0.5))
    raw = _Norm(mats)(np.array(points)) / (1.0 + NORM_PAD)
    return min(float(rho), float(raw.max()) ** 2 * (1.0 - WITNESS_MARGIN))


@lru_cache(maxsize=4096)
def axis_sigma(n_in: int, n_out: int, kernel: int, stride: int, pad: int, dil: int,
               residue: int | None = None, witness: bool = False) -> float:
    """sigma of one axis (`set_reuse.axis_set_reuse`; with `witness`, the cheap value it is never
    below, `set_reuse.axis_set_witness`) where `axis_reuse` solves the axis, else that axis's
    kappa (rho there).  Never above the axis's kappa: sets are vectors.  Local."""
    taps = used_rows(n_in, n_out, kernel, stride, pad, dil, residue)
    if not taps or n_out > MAX_OUT or len(taps) > MAX_TAPS:
        return axis_reuse(n_in, n_out, kernel, stride, pad, dil, residue)
    rows = np.concatenate(taps)
    if np.bincount(rows[rows >= 0]).max() == 1:   # kappa = 1: no row is read twice
        return 1.0
    solve = axis_set_witness if witness else axis_set_reuse
    return solve(n_in, n_out, kernel, stride, pad, dil, residue)


def combine(height: tuple[float, float], width: tuple[float, float]) -> float:
    """The layer's (or a phase's) constant from ``(kappa, sigma)`` of each axis: the better of
    the two ways to run Theorem 2.3.1, sets on one axis and weights on the other."""
    return min(height[1] * width[0], height[0] * width[1])


def reuse_witness(spec: ConvSpec) -> float:
    """A value never above `reuse_constant` (spec), without its searches: each axis's kappa
    and sigma replaced by their witnesses."""
    axes = [spec.axis(i) for i in (0, 1)]
    return combine(*[(axis_reuse_witness(*a, None), axis_sigma(*a, None, witness=True))
                     for a in axes])


def reuse_constant(spec: ConvSpec) -> float:
    """The constant of the small-filter inequality (theory.md 2.3.1):
    ``min(sigma_h kappa_w, kappa_h sigma_w) <= kappa_h kappa_w <= spec.rho``."""
    axes = [spec.axis(i) for i in (0, 1)]
    return combine(*[(axis_reuse(*a, None), axis_sigma(*a, None)) for a in axes])
