"""The numba output transform of `parconv.winograd_exact`: the 16 exact float32 products added
in float64, written as integers.  Pure, no MPI.  Imported only where `parconv.jit` has loaded
numba (`parconv.blasconv`); numba's cache folder is the one `parconv.winograd_fused` sets.
"""

from __future__ import annotations

import numba
import numpy as np

from .winograd_fused import _CACHE, output_transform_into


@numba.njit(nogil=True, cache=_CACHE)
def output_transform(m, n0, n1, i0, i1, tW, y):
    """`winograd_fused.output_transform` adding in float64 and writing integers: the 2x2
    outputs ``A^T M A`` of the tiles of ``m`` (float32 `_planes` (16, tiles K + pad)) into ``y``
    (N, K, H, W) of an integer type, rows 2 i0 .. of images n0 .., clipped at H and W."""
    span = tW * y.shape[1]
    output_transform_into(m, n0, n1, i0, i1, tW, y, np.empty((8, span), dtype=np.float64),
                          np.empty((4, span), dtype=np.float64))
