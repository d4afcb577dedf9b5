"""Exact integer Winograd F(2x2, 3x3), stride 1, on float32 BLAS, with numba transforms.  Pure,
no MPI.

The layout and the input transform of `parconv.winograd_fused` (channels-last rows of a block,
16 planes of tile coefficients), the 16 float32 products ``M[k] = V[k] U[k]^T``, and an output
transform of its own that adds the products in float64 and writes the integer accumulator.
Every value on the way is exact when `exact_bound` holds (docs/theory.md 1.5 and design.md 4.5):

* ``V = B^T d B`` adds four input values with signs: integers of magnitude at most 4 max|x|;
* ``U = G g G^T`` (G holds 0, +-1/2, +-1): multiples of 1/4, at most 9/4 max|w|, exact in the
  filter product of `winograd.filter_transform` (all its partial sums are such multiples);
* every partial sum that BLAS forms of ``sum_c U[k][f, c] V[k][c, t]``, in any order, is a
  multiple of 1/4 of magnitude at most ``sum_c |U[k][f, c]| 4 max|x|``; float32 holds every
  multiple of 1/4 up to 2^22, so that bound at most 2^22 makes each product exact;
* the output transform adds nine such values with signs in float64 (exact far beyond), and the
  result, the exact convolution, is an integer of magnitude below 9 2^22 < 2^31: the cast to
  int32 is exact (no wrap-around can occur).

The bound depends on the filters' values (not only on their largest magnitude), so the kernel
checks it on the block's data and runs a direct method where it fails (`parconv.blasconv`).
This module imports no numba (the memory model, `parconv.blas_workspace`, reads its sizes);
`conv_winograd_exact` takes its compiled parts from `parconv.winograd_exact_jit` and
`parconv.winograd_fused`, which `parconv.blasconv` calls only where `parconv.jit` has loaded
numba.
"""

from __future__ import annotations

import numpy as np

from .blas import matmul
from .spec import ConvSpec
from .winograd import MIN_TILES, filter_transform, tile_blocks, tile_grid

#: float32 holds every multiple of 1/4 of magnitude at most this
EXACT_QUARTERS = 2 ** 22
#: bytes of V and M per block (as `parconv.winograd_fused`, whose transforms it shares)
BLOCK_BYTES = 16 << 20


def filters(w: np.ndarray) -> np.ndarray:
    """U (16, K, C) in float32: the transformed filters (exact multiples of 1/4)."""
    return filter_transform(w, np.float32)


def exact_bound(u: np.ndarray, x_magnitude: int) -> bool:
    """Whether every partial sum of the products is exact in float32 (module docstring):
    ``max_{k, f} sum_c |U[k][f, c]| * 4 max|x| <= 2^22``."""
    if u.size == 0:
        return True
    weight = float(np.abs(u).sum(axis=2, dtype=np.float64).max())
    return weight * 4 * x_magnitude <= EXACT_QUARTERS


def exact_filters(w: np.ndarray, x_magnitude: int) -> np.ndarray | None:
    """`filters` where `exact_bound` holds, else None.  U[0] is the filters' tap (0, 0) itself
    (G's first row is (1, 0, 0)), so its sums are checked first, on the filters as they are
    (first filter 0's alone, then all): a block whose data fail there (wide layers of
    full-range data) costs next to nothing before its direct method."""
    for rows in (slice(0, 1), slice(None)):
        corner = w[rows, :, 0, 0].astype(np.int64)
        if corner.size and 4 * x_magnitude * int(np.abs(corner).sum(axis=1).max()) > \
                EXACT_QUARTERS:
            return None
    u = filters(w)
    return u if exact_bound(u, x_magnitude) else None


def conv_winograd_exact(spec: ConvSpec, x: np.ndarray, u: np.ndarray, y: np.ndarray) -> None:
    """The integer layer by F(2x2, 3x3) (module docstring) into ``y`` (N, K, H, W), from the
    transformed filters ``u`` (`exact_filters`: the bound holds)."""
    from .winograd_exact_jit import output_transform
    from .winograd_fused import PLANE_PAD, _channels_last, _matrices, _planes, input_transform
    N, C, K = spec.batch, spec.in_channels, spec.out_channels
    tH, tW = tile_grid(spec)
    per = (16 * (C + K) + 8 * C) * 4
    blocks = tile_blocks(N, tH, tW, max(MIN_TILES, BLOCK_BYTES // per))
    most = max((n1 - n0) * (i1 - i0) for n0, n1, i0, i1 in blocks) * tW
    vbuf = np.empty(16 * (C * most + PLANE_PAD), dtype=np.float32)
    mbuf = np.empty(16 * (K * most + PLANE_PAD), dtype=np.float32)
    nmost = max(n1 - n0 for n0, n1, _, _ in blocks)
    rmost = max(i1 - i0 for _, _, i0, i1 in blocks)
    xbuf = np.empty(nmost * (2 * rmost + 2) * (2 * tW + 2) * C, dtype=np.float32)
    for n0, n1, i0, i1 in blocks:
        length = (n1 - n0) * (i1 - i0) * tW
        xcl = xbuf[:(n1 - n0) * (2 * (i1 - i0) + 2) * (2 * tW + 2) * C].reshape(
            n1 - n0, 2 * (i1 - i0) + 2, 2 * tW + 2, C)
        _channels_last(spec, x, n0, n1, i0, xcl)           # int8 -> float32, exact
        v, m = _planes(vbuf, length, C), _planes(mbuf, length, K)
        input_transform(xcl, tW, v)
        matmul(_matrices(v, length, C), u.transpose(0, 2, 1), _matrices(m, length, K))
        output_transform(m, n0, n1, i0, i1, tW, y)
