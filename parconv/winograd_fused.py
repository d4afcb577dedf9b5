"""Winograd F(2x2, 3x3), stride 1, with its transforms compiled by numba.  Pure, no MPI.

The arithmetic of `parconv.winograd` (the same transforms, their additions in the same order,
the same 16 products per tile), but each transform is one compiled pass per tile row instead
of a chain of numpy passes over the block's buffers.  Per block of whole images or tile rows
(`winograd.tile_blocks`, `BLOCK_BYTES`):

* `_channels_last`: the block's input rows, zero padded, copied channels-last (one numpy copy);
* `input_transform`: per tile row, the row transform B^T d of its four padded rows into a
  small scratch, then the column transform writes each tile's 16 coefficients, C contiguous
  values each, into the 16 (tiles x C) matrices ``V[k]``;
* the 16 products ``M[k] = V[k] U[k]^T`` (tiles x C) @ (C x K) on BLAS;
* `output_transform` (`output_transform_into` with the scratch given): per tile row, A^T M A
  along its tW K contiguous values into a scratch, then its four output phases into the NCHW
  rows.

Every compiled inner loop stores to one array and loads from at most three, so that LLVM's
run-time overlap checks stay few enough for it to vectorise the loop (loops storing to 16
arrays at once stayed scalar, at 2-4 GB/s); the 16 planes of V and M start a cache line apart
beyond their size (`_planes`), since planes a multiple of 4 KiB apart share the L1 cache's
sets.  No parity parts and no dropped tile column.  The kernels release the GIL
(`parconv.blas_split` runs pieces of a block on threads side by side).  Import through
`parconv.jit`, which decides when they run.
"""

from __future__ import annotations

import os

import numba
import numpy as np

from . import winograd
from .jit import numba_cache_dir
from .blas import matmul
from .spec import ConvSpec
from .winograd import filter_transform, tile_blocks, tile_grid

# numba's cache locator reads its folder when a kernel is decorated (below): the project's
# cache folder, or no disk cache at all (never the folder of the installed package)
_FOLDER = numba_cache_dir()
if _FOLDER is not None and not os.environ.get("NUMBA_CACHE_DIR"):
    numba.config.CACHE_DIR = str(_FOLDER)
_CACHE = _FOLDER is not None

#: bytes of V and M per block
BLOCK_BYTES = 16 << 20
#: elements between the planes of V and M (`_planes`)
PLANE_PAD = 16


@numba.njit(nogil=True, cache=_CACHE)
def input_transform(xcl, tW, v):
    """``v[4 r + s, tile C + c] = (B^T d B)[r, s]`` for every tile of ``xcl``, the block's
    zero-padded input channels-last (images, 2 rows + 2, 2 tW + 2, C), tiles in (image, tile
    row, tile column) order; ``v`` is `_planes` (16, tiles C + pad).

    Every inner loop runs along C contiguous values, stores to one array and loads from at
    most two (so that the compiler's run-time overlap checks stay few enough for it to
    vectorise the loop)."""
    nb, rows2, width, C = xcl.shape
    rows = (rows2 - 2) // 2
    t = np.empty((4, width * C), dtype=v.dtype)
    for n in range(nb):
        for i in range(rows):
            d0 = xcl[n, 2 * i].ravel()
            d1 = xcl[n, 2 * i + 1].ravel()
            d2 = xcl[n, 2 * i + 2].ravel()
            d3 = xcl[n, 2 * i + 3].ravel()
            # rows B^T d
            _sub(d0, d2, t[0])
            _add(d1, d2, t[1])
            _sub(d2, d1, t[2])
            _sub(d1, d3, t[3])
            # columns (B^T d) B: columns 2 j + (0, 1, 2, 3) of the tile at column j
            base = (n * rows + i) * tW * C
            for r in range(4):
                tr = t[r]
                for j in range(tW):
                    at, q = base + j * C, 2 * j * C
                    c0, c1 = tr[q:q + C], tr[q + C:q + 2 * C]
                    c2, c3 = tr[q + 2 * C:q + 3 * C], tr[q + 3 * C:q + 4 * C]
                    _sub(c0, c2, v[4 * r, at:at + C])
                    _add(c1, c2, v[4 * r + 1, at:at + C])
                    _sub(c2, c1, v[4 * r + 2, at:at + C])
                    _sub(c1, c3, v[4 * r + 3, at:at + C])


@numba.njit(nogil=True, cache=_CACHE, inline="always")
def _sub(a, b, out):
    for q in range(out.shape[0]):
        out[q] = a[q] - b[q]


@numba.njit(nogil=True, cache=_CACHE, inline="always")
def _add(a, b, out):
    for q in range(out.shape[0]):
        out[q] = a[q] + b[q]


@numba.njit(nogil=True, cache=_CACHE)
def output_transform(m, n0, n1, i0, i1, tW, y):
    """The 2x2 outputs ``A^T M A`` of the tiles of `input_transform`'s order from ``m``
    (`_planes` (16, tiles K + pad): ``M[k][tile, f]`` at ``m[k, tile K + f]``) into ``y`` (N,
    K, H, W), rows 2 i0 .. of images n0 .., clipped at H and W, added in ``m``'s type."""
    span = tW * y.shape[1]
    output_transform_into(m, n0, n1, i0, i1, tW, y, np.empty((8, span), dtype=m.dtype),
                          np.empty((4, span), dtype=m.dtype))


@numba.njit(nogil=True, cache=_CACHE)
def output_transform_into(m, n0, n1, i0, i1, tW, y, s, out):
    """`output_transform` with the scratch rows ``s`` (8, tW K) and ``out`` (4, tW K) given:
    the sums are formed in their type (float64 scratch adds float32 products exactly:
    `parconv.winograd_exact`).

    Rows and columns of the transform run along tW K contiguous values (one store, at most
    three loads per loop, so that they vectorise); the last loop moves the tile row's four
    output phases into the NCHW rows."""
    K, H, W = y.shape[1], y.shape[2], y.shape[3]
    rows = i1 - i0
    span = tW * K
    zero = np.zeros(1, dtype=s.dtype)[0]
    for n in range(n0, n1):
        for i in range(i0, i1):
            at = ((n - n0) * rows + (i - i0)) * span
            # rows A^T M: s[q] = m[q] + m[4 + q] + m[8 + q], s[4 + q] = m[4 + q] - m[8 + q]
            # - m[12 + q] (column q of the tile)
            for q in range(4):
                _sum3(m[q, at:at + span], m[4 + q, at:at + span], m[8 + q, at:at + span],
                      s[q], zero)
                _diff3(m[4 + q, at:at + span], m[8 + q, at:at + span],
                       m[12 + q, at:at + span], s[4 + q], zero)
            # columns: output column 0 = s0 + s1 + s2, column 1 = s1 - s2 - s3 (per row a)
            for a in range(2):
                _sum3(s[4 * a], s[4 * a + 1], s[4 * a + 2], out[2 * a], zero)
                _diff3(s[4 * a + 1], s[4 * a + 2], s[4 * a + 3], out[2 * a + 1], zero)
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
def _sum3(a, b, c, out, zero):
    # (a + b) + c in the type of ``zero`` (out's): adding it first widens a float32 a
    for q in range(out.shape[0]):
        out[q] = ((zero + a[q]) + b[q]) + c[q]


@numba.njit(nogil=True, cache=_CACHE, inline="always")
def _diff3(a, b, c, out, zero):
    for q in range(out.shape[0]):
        out[q] = ((zero + a[q]) - b[q]) - c[q]


def conv_winograd(spec: ConvSpec, x: np.ndarray, w: np.ndarray, dtype, y: np.ndarray,
                  u: np.ndarray | None = None) -> None:
    """The layer by F(2x2, 3x3) with fused transforms (module docstring) into ``y`` (N, K, H,
    W).

    ``u``: the transformed filters (`filter_transform`) if already made, else (None) made here
    (`parconv.blasconv` passes None at stride 1: see `blasconv.SHARED_FILTERS`)."""
    dtype = np.dtype(dtype)
    N, C, K = spec.batch, spec.in_channels, spec.out_channels
    tH, tW = tile_grid(spec)
    u = filter_transform(w, dtype) if u is None else u
    per = (16 * (C + K) + 8 * C) * dtype.itemsize
    blocks = tile_blocks(N, tH, tW, max(winograd.MIN_TILES, BLOCK_BYTES // per))
    most = max((n1 - n0) * (i1 - i0) for n0, n1, i0, i1 in blocks) * tW
    vbuf = np.empty(16 * (C * most + PLANE_PAD), dtype=dtype)
    mbuf = np.empty(16 * (K * most + PLANE_PAD), dtype=dtype)
    nmost = max(n1 - n0 for n0, n1, _, _ in blocks)
    rmost = max(i1 - i0 for _, _, i0, i1 in blocks)
    xbuf = np.empty(nmost * (2 * rmost + 2) * (2 * tW + 2) * C, dtype=dtype)
    for n0, n1, i0, i1 in blocks:
        length = (n1 - n0) * (i1 - i0) * tW
        xcl = xbuf[:(n1 - n0) * (2 * (i1 - i0) + 2) * (2 * tW + 2) * C].reshape(
            n1 - n0, 2 * (i1 - i0) + 2, 2 * tW + 2, C)
        _channels_last(spec, x, n0, n1, i0, xcl)
        v, m = _planes(vbuf, length, C), _planes(mbuf, length, K)
        input_transform(xcl, tW, v)
        # M[k] = V[k] U[k]^T (tiles x K): BLAS reads U[k] transposed in place
        matmul(_matrices(v, length, C), u.transpose(0, 2, 1), _matrices(m, length, K))
        output_transform(m, n0, n1, i0, i1, tW, y)


def _channels_last(spec: ConvSpec, x: np.ndarray, n0: int, n1: int, i0: int,
                   xcl: np.ndarray) -> None:
    """``xcl[n, r, q, c] = xpad[n0 + n, c, 2 i0 + r, q]``: the input rows of the block's tile
    rows, zero padded, channels-last."""
    (ph, pw), (H_in, W_in) = spec.padding, spec.in_size
    rows, width = xcl.shape[1], xcl.shape[2]
    r0 = 2 * i0 - ph
    lo_r, hi_r = max(0, r0), min(H_in, r0 + rows)
    lo_q, hi_q = max(0, -pw), min(W_in, width - pw)
    xcl[:, :max(0, lo_r - r0)] = 0
    xcl[:, max(0, hi_r - r0):] = 0
    xcl[:, :, :max(0, lo_q + pw)] = 0
    xcl[:, :, max(0, hi_q + pw):] = 0
    if hi_r > lo_r and hi_q > lo_q:
        xcl[:, lo_r - r0:hi_r - r0, lo_q + pw:hi_q + pw] = x[n0:n1, :, lo_r:hi_r,
                                                             lo_q:hi_q].transpose(0, 2, 3, 1)


def _planes(buf: np.ndarray, rows: int, length: int) -> np.ndarray:
    """(16, rows length + `PLANE_PAD`) C-contiguous view of ``buf``: 16 planes that start
    `PLANE_PAD` elements apart beyond their size (the transforms run along all 16 planes at
    once, and planes a multiple of 4 KiB apart would share the L1 cache's sets); `_matrices`
    gives the products' (16, rows, length) view of it."""
    step = rows * length + PLANE_PAD
    return buf[:16 * step].reshape(16, step)


def _matrices(planes: np.ndarray, rows: int, length: int) -> np.ndarray:
    """The (16, rows, length) matrices held by `_planes`, a view."""
    return planes[:, :rows * length].reshape(16, rows, length)
