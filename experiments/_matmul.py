"""im2col + distributed matrix multiply: exact per-rank bytes of a 3-D matmul grid, and the tight
memory-independent lower bound of parallel matrix multiplication.  Pure numpy, no MPI.

The layer ``Out[n,k,h,w] = sum_{c,r,s} In[n,c,..] F[k,c,r,s]`` becomes, after im2col,

    Y (m x n) = A (m x k) . B (k x n),   m = N H W,  k = C R S,  n = K,

where A is the im2col matrix (one row per output pixel, one column per (c, r, s), p_I bytes per
element, padding zeros included because they are stored), B the filter (p_F bytes) and Y the
output (partial sums moved at p_O = min(p_acc, p_out) bytes, as in parconv's bounds).

A grid p1 x p2 x p3 splits m, n and k into balanced blocks.  Rank (i, j, l) computes
Y_ij += A_il B_lj.  Every block is split in balanced flat pieces among the ranks that need it
(A_il among the p2 ranks j, B_lj among the p1 ranks i, and the final Y_ij among the p3 ranks l).
Where the blocks are uneven a piece can exceed ceil(|X| / P), which the problem (and its bound)
forbids: then the rank owns only the first ceil(|X| / P) elements of its piece at the start (of
Y: at the end) and the surplus is owned by ranks with room.  So the rank receives all of A_il
and B_lj but what it owns, and sends its partial sums of Y_ij except its own piece (p_acc bytes)
and its final piece's surplus (p_out bytes).  This is the 3-D algorithm; p3 = 1 is the 2-D
(output-stationary) one.  Building A from the distributed input is not counted, so these
figures are a lower estimate of the im2col route.
"""

from __future__ import annotations

import math

import numpy as np


def im2col_dims(spec) -> tuple[int, int, int]:
    """(m, n, k) = (N H W, K, C R S) of the layer's im2col matrix multiply."""
    h, w = spec.out_size
    r, s = spec.kernel_size
    return spec.batch * h * w, spec.out_channels, spec.in_channels * r * s


def element_bytes(spec) -> tuple[int, int, int]:
    """(p_A, p_B, p_Y): im2col input, filter, partial sums (min of accumulator and output: the
    bound's weight; parconv's grid sends partial sums at p_acc, see `volume_bytes`)."""
    return spec.p_in, spec.p_weight, min(spec.p_acc, spec.p_out)


def volume_bytes(spec) -> tuple[tuple[int, int, int], int]:
    """((p_A, p_B, partial sum), finished output) as the grid algorithm moves them."""
    return (spec.p_in, spec.p_weight, spec.p_acc), spec.p_out


def gemm_spec(spec):
    """The matmul as parconv's own 1 x 1 convolution: batch m, C = k, K = n, 1 x 1 image."""
    m, n, k = im2col_dims(spec)
    return spec.replace(batch=m, in_channels=k, out_channels=n, in_size=(1, 1),
                        kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                        padding_end=(0, 0), bias=False, name=f"{spec.name}.im2col")


def _sizes(n: int, p: int) -> np.ndarray:
    base, extra = divmod(n, p)
    return base + (np.arange(p) < extra).astype(np.int64)


def _pieces(block: np.ndarray, parts: int) -> np.ndarray:
    """Piece j of each block split in `parts`, j along a new last axis of length parts."""
    j = np.arange(parts)
    base, extra = np.divmod(block[..., None], parts)
    return base + (j < extra)


def grid_volumes(m: int, n: int, k: int, grid, p, p_final=None) -> np.ndarray:
    """Bytes every rank (i, j, l) of grid (p1, p2, p3) receives (A, B) and sends (Y), shape
    (p1, p2, p3); ``p_final``: bytes of a finished output (default p[2], the partial sum's)."""
    p1, p2, p3 = grid
    pa, pb, py = p
    p_final = py if p_final is None else p_final
    P = p1 * p2 * p3
    cap_a, cap_b, cap_y = (-(-size // P) for size in (m * k, k * n, m * n))
    mi, nj, kl = _sizes(m, p1), _sizes(n, p2), _sizes(k, p3)
    block_a, block_b, block_y = np.outer(mi, kl), np.outer(kl, nj), np.outer(mi, nj)
    recv_a = block_a[..., None] - np.minimum(_pieces(block_a, p2), cap_a)   # (i, l, j)
    recv_b = block_b[..., None] - np.minimum(_pieces(block_b, p1), cap_b)   # (l, j, i)
    piece_y = _pieces(block_y, p3)                                            # (i, j, l)
    sent_y = py * (block_y[..., None] - piece_y) + p_final * np.maximum(piece_y - cap_y, 0)
    return pa * recv_a.transpose(0, 2, 1) + pb * recv_b.transpose(2, 1, 0) + sent_y


def grids(m: int, n: int, k: int, P: int):
    """Every p1 x p2 x p3 = P with p1 <= m, p2 <= n, p3 <= k."""
    for p1 in range(1, min(P, m) + 1):
        if P % p1:
            continue
        rest = P // p1
        for p2 in range(1, min(rest, n) + 1):
            if rest % p2 == 0 and rest // p2 <= k:
                yield p1, p2, rest // p2


def best_grid(m: int, n: int, k: int, P: int, p, two_d: bool = False, p_final=None):
    """(grid, busiest rank's bytes) of the grid minimising the busiest rank's bytes; with
    `two_d` only grids with a factor 1.  None when no grid of P ranks fits."""
    best = None
    for grid in grids(m, n, k, P):
        if two_d and 1 not in grid and P > 1:
            continue
        volume = int(grid_volumes(m, n, k, grid, p, p_final).max())
        if best is None or volume < best[1]:
            best = (grid, volume)
    return best


def tight_bound(m: int, n: int, k: int, P: int, p) -> float:
    """Memory-independent lower bound on the busiest rank's bytes of any parallel classical
    matrix multiply of P ranks that starts with at most ceil(|X| / P) of each matrix X per rank.

    Al Daas, Ballard, Grigori, Kumar and Rouse (SPAA 2022, arXiv:2205.13407) bound the data a
    rank doing mnk / P multiplications must access by the program

        min  x_A + x_B + x_Y   s.t.  x_A x_B x_Y >= (mnk / P)^2  (Loomis-Whitney),
                                     |X| / P <= x_X <= |X|

    and show its optimum minus the owned data is attained.  Here the x are weighted by bytes per
    element (y_X = p_X x_X turns it into the same program); the optimum is y_X = clip(t, lo_X,
    hi_X) with t set so the product constraint is tight (KKT of the log-convex program),
    found by bisection on log t.  Equal weights give their three closed-form cases.
    """
    work = -(-m * n * k // P)
    sizes = np.array([m * k, k * n, m * n], dtype=float)
    weights = np.array(p, dtype=float)
    lo, hi = weights * np.array([work / n, work / m, work / k]), weights * sizes
    target = math.log(weights.prod()) + 2 * math.log(work)
    if np.log(hi).sum() < target - 1e-12:  # cannot happen for work <= mnk; guards rounding
        raise ValueError("Loomis-Whitney constraint infeasible")
    a, b = math.log(lo.min()), math.log(hi.max())
    for _ in range(200):
        t = 0.5 * (a + b)
        if np.log(np.clip(math.exp(t), lo, hi)).sum() >= target:
            b = t
        else:
            a = t
    accessed = np.clip(math.exp(b), lo, hi).sum()
    owned = (weights * np.ceil(sizes / P)).sum()
    return max(0.0, float(accessed - owned))
