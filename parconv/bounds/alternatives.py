"""Decompositions outside the planner's grid family, for explaining gaps to the bound (analysis
only; docs/theory.md 5.7).  Pure, no MPI.

* `ideal_grid`: the grid algorithm's busiest volume with REAL grid factors, each rank owning the
  balanced shares, with or without halos: what the grid family would move without integrality
  (and without halos).  Its ratio to the bound is the part of a gap that is neither integrality
  (nor halo).

Two grids side by side (P = P1 + P2, each planned by `make_plan` on its part of the batch or of
the output channels) are evaluated by `experiments/bench_planner.py`, which may import the planner
(this package may not: the planner imports the bounds).
"""

from __future__ import annotations

import math

import numpy as np

from ..spec import ConvSpec
from .workfn import output_bytes

__all__ = ["ideal_grid"]


def _sizes_bytes(spec: ConvSpec) -> np.ndarray:
    return np.array([spec.size_input_touched * spec.p_in, spec.size_filter * spec.p_weight,
                     spec.size_output * output_bytes(spec)], dtype=float)


def ideal_grid(spec: ConvSpec, P: int, halo: bool = False,
               per_octave: int | None = None) -> tuple[float, tuple]:
    """(busiest volume, real factors (P_N, P_K, P_C, P_H, P_W)) of the grid algorithm with real
    factors >= 1 multiplying to P and at most the dimension sizes, balanced ownership.  Local.

    volume = sum_j p_j (block of A_j) - sum_j p_j |A_j| / P: the input block is split by N, C,
    H, W; the filter block by K, C; the output block by N, K, H, W.  Without ``halo`` the input
    block is |I| / (P_N P_C P_H P_W); with it, a block of h x w outputs reads
    min(T, s (h - 1) + d (R - 1) + 1 - b) rows (T the touched rows; b = 0 when some block lies
    between two others, else b = the smaller border's padding, which every block skips) and
    likewise columns.  Every
    factor but P_W runs over a geometric grid of ``per_octave`` points per factor of 2 (default
    4 up to P = 64, 2 above; all powers of two included) and P_W = P / (the others); the minimum
    over that grid is returned.
    """
    H, W = spec.out_size
    caps = np.array([spec.batch, spec.out_channels, spec.in_channels, H, W], dtype=float)
    if P > caps.prod():
        return float("nan"), ()
    steps = per_octave or (4 if P <= 64 else 2)
    levels = 2.0 ** (np.arange(0, math.floor(steps * math.log2(P)) + 1) / steps)
    grid = np.stack(np.meshgrid(*[levels] * 4, indexing="ij"), axis=-1).reshape(-1, 4)
    fac = np.concatenate([grid, P / grid.prod(axis=1, keepdims=True)], axis=1)
    fac = fac[np.all((fac >= 1.0 - 1e-12) & (fac <= caps * (1 + 1e-12)), axis=1)]
    if not len(fac):
        return float("nan"), ()
    pN, pK, pC, pH, pW = fac.T
    touched = (int(spec.touched_rows.sum()), int(spec.touched_cols.sum()))
    spans = []
    for a, (out, parts) in enumerate(((H, pH), (W, pW))):
        block = out / parts
        if halo:
            n_in, n_out, kernel, stride, pad, dil = spec.axis(a)
            ext = dil * (kernel - 1) + 1
            # at most two blocks: each meets a border, and the busier one still skips the
            # smaller of the two borders' padding (centred ownership splits the rest evenly)
            end_pad = max(0, stride * (n_out - 1) + ext - pad - n_in)
            border = np.where(parts <= 2 * (1 + 1e-12), min(pad, end_pad), 0)
            spans.append(np.minimum(touched[a], stride * (block - 1) + ext - border))
        else:
            spans.append(touched[a] * block / out)
    sizes = _sizes_bytes(spec)
    volume = (spec.batch * spec.in_channels / (pN * pC) * spans[0] * spans[1] * spec.p_in
              + sizes[1] / (pK * pC) + sizes[2] / (pN * pK * pH * pW) - sizes.sum() / P)
    best = int(np.argmin(volume))
    return float(volume[best]), tuple(float(v) for v in fac[best])
