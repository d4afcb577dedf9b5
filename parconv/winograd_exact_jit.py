"""The numba output transform of `parconv.winograd_exact`: the 16 exact float32 products added
in float64, written as integers.  Pure, no MPI.  Imported only where `parconv.jit` has loaded
numba (`parconv.blasconv`); numba's cache folder is the one `parconv.winograd_fused` sets.
"""

from __future__ import annotations

import numba
import numpy as np

from .winograd_fused import _CACHE


@numba.njit(nogil=True, cache=_CACHE)
def output_transform(m, n0, n1, i0, i1, tW, y):
    """`winograd_fused.output_transform` adding in float64 and writing integers: the 2x2
    outputs ``A^T M A`` of the tiles of ``m`` (float32 `_planes` (16, tiles K + pad)) into ``y``
    (N, K, H, W) of an integer type, rows 2 i0 .. of images n0 .., clipped at H and W."""
    K, H, W = y.shape[1], y.shape[2], y.shape[3]
    rows = i1 - i0
    span = tW * K
    s = np.empty((8, span), dtype=np.float64)
    out = np.empty((4, span), dtype=np.float64)
    for n in range(n0, n1):
        for i in range(i0, i1):
            at = ((n - n0) * rows + (i - i0)) * span
            for q in range(4):
                _sum3(m[q, at:at + span], m[4 + q, at:at + span], m[8 + q, at:at + span],
                      s[q])
                _diff3(m[4 + q, at:at + span], m[8 + q, at:at + span],
                       m[12 + q, at:at + span], s[4 + q])
            for a in range(2):
                _sum3(s[4 * a], s[4 * a + 1], s[4 * a + 2], out[2 * a])
                _diff3(s[4 * a + 1], s[4 * a + 2], s[4 * a + 3], out[2 * a + 1])
            for a in range(2):
                row = 2 * i + a
                if row >= H:
                    continue
                even, odd = out[2 * a], out[2 * a + 1]
                for k in range(K):
                    target = y[n, k, row]
                    for j in range(tW):
                        target[2 * j] = even[j * K + k]
                    for j in range(min(tW, W // 2)):
                        target[2 * j + 1] = odd[j * K + k]


@numba.njit(nogil=True, cache=_CACHE, inline="always")
def _sum3(a, b, c, out):
    for q in range(out.shape[0]):
        out[q] = (np.float64(a[q]) + np.float64(b[q])) + np.float64(c[q])


@numba.njit(nogil=True, cache=_CACHE, inline="always")
def _diff3(a, b, c, out):
    for q in range(out.shape[0]):
        out[q] = (np.float64(a[q]) - np.float64(b[q])) - np.float64(c[q])
