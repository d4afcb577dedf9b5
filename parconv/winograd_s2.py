"""Winograd for floating-point 3x3 layers of stride 2 and dilation 1: the polyphase form.  Pure.

Per axis, the two outputs ``y0, y1`` of a tile read five padded inputs ``x0 .. x4`` (outputs
2t and 2t + 1 read inputs 4t .. 4t + 4).  The even taps (w0, w2 on x0, x2, x4) are a stride-1
two-tap filter, computed by Winograd F(2, 2) in 3 products; the odd tap (w1 on x1, x3) is direct,
2 products: 5 products per 2 outputs instead of 6::

    d = (x0 - x2, x2, x4 - x2, x1, x3)        g = (w0, w0 + w2, w2, w1, w1)
    m = d * g                                 y0 = m0 + m1 + m3,   y1 = m1 + m2 + m4

On both axes: 25 products per 2x2 output tile instead of 36 (1.44x fewer multiply-adds), with
only +-1 in every transform (float32 rounding as in `parconv.winograd`).  The 25 coefficient
pairs (k, l) share 16 transformed filters ``U[k', l']`` (k' = min(k, 3): coefficients 3 and 4
are the odd tap on x1 and on x3), so the channel reduction is 16 matrix products over groups of
coefficient matrices: ``M = V U^T``, (tiles x C) @ (C x K), 1, 2 or 4 coefficients at a time.

Layout: channels-last throughout, so every transform pass runs along C (or K) contiguous
values.  Per block of whole images, or of tile rows of one image (`winograd.tile_blocks`, at most
`BLOCK_BYTES` of buffers: they stay in the last-level cache), the block's padded input is
copied once into (n, row, column, c) order (``X``); the row transform gives five row arrays
(two differences and three views of ``X``), the column transform writes the 25 coefficient
matrices ``V`` grouped by their filter; the output transform adds the products (K innermost),
its last four additions writing the four phases of the 2x2 tiles into the NCHW output.
(The NCHW-ordered products, as in `parconv.winograd`, ran 4-13 % slower: the tile interleave then
has inner runs of tW values instead of K.)
"""

from __future__ import annotations

import numpy as np

from . import winograd
from .blas import matmul
from .spec import ConvSpec

#: bytes of block buffers (input copy, row differences, V and M) per block
BLOCK_BYTES = 16 << 20
#: cost of one element of a transform pass, in multiply-adds of the products at full speed
#: (as `winograd.TRANSFORM_COST`; with the passes counted in `relative_cost` the fitted model
#: puts resnet50.layer3.0.conv2 at 0.81 of im2col, measured 0.82 side by side at one thread)
TRANSFORM_COST = 16.0
#: cost of one element of the filter transform, as `winograd.FILTER_COST`
FILTER_COST = 10.0
#: input elements per tile the transform passes write (X 16, row differences 8, V 25) and
#: output elements per tile (the additions of the output transform 24, the last 4 into NCHW)
INPUT_PASSES, OUTPUT_PASSES = 49, 28

#: the filter coefficient of each transform coefficient: 0 -> w0, 1 -> w0 + w2, 2 -> w2, 3 -> w1
_TAP = {0: 0, 2: 2, 3: 1}
#: the coefficients each output sums (besides its odd tap): y0 = m0 + m1, y1 = m1 + m2
_SUMS = ((0, 1), (1, 2))


def applies(spec: ConvSpec) -> bool:
    """Floating types, 3x3 filters, stride 2, dilation 1."""
    return (np.dtype(spec.dtype_in).kind == "f" and tuple(spec.kernel_size) == (3, 3)
            and tuple(spec.stride) == (2, 2) and tuple(spec.dilation) == (1, 1))


def relative_cost(n, c, k, out_h, out_w, short_cost: float):
    """Time relative to the direct products (N H W K C 9 multiply-adds at full speed; numpy
    arrays broadcast): 25 products per tile on ``tH tW`` tiles of inner dimension C, the
    transforms' passes (`INPUT_PASSES` C + `OUTPUT_PASSES` K elements per tile) and the filter
    transform (16 K C elements)."""
    tiles = -(-out_h // 2) * -(-out_w // 2)
    direct = 9.0 * out_h * out_w
    return (25.0 * tiles / direct * (1 + short_cost / c)
            + TRANSFORM_COST * tiles * (INPUT_PASSES * c + OUTPUT_PASSES * k) / (direct * k * c)
            + FILTER_COST * 16.0 / (direct * n))


def block_elements(images, rows, tW, c, k) -> dict:
    """Elements of each block buffer for blocks of ``images`` images x ``rows`` tile rows of
    ``tW`` tile columns (numpy arrays broadcast): the input copy X, the two row differences A,
    the 25 coefficient matrices V and their products M."""
    tiles = images * rows * tW
    return {"X": images * (4 * rows + 1) * (4 * tW + 1) * c,
            "A": 2 * images * rows * (4 * tW + 1) * c,
            "V": 25 * tiles * c, "M": 25 * tiles * k}


def per_tile_bytes(c: int, k: int, tW: int, itemsize: int) -> int:
    """Bytes of block buffers per tile of one tile row (what sizes the blocks)."""
    return itemsize * sum(block_elements(1, 1, tW, c, k).values()) // tW


def blocks(spec: ConvSpec, itemsize: int) -> list[tuple[int, int, int, int]]:
    """(n0, n1, i0, i1) blocks of at most `BLOCK_BYTES` (at least `winograd.MIN_TILES` tiles)."""
    tH, tW = winograd.tile_grid(spec)
    per = per_tile_bytes(spec.in_channels, spec.out_channels, tW, itemsize)
    return winograd.tile_blocks(spec.batch, tH, tW, max(winograd.MIN_TILES, BLOCK_BYTES // per))


def filter_transform(w: np.ndarray, dtype) -> np.ndarray:
    """U (4, 4, K, C): ``U[k, l]`` the filters' combination of transform coefficients k (rows)
    and l (columns): nine taps copied, seven sums."""
    K, C = w.shape[:2]
    u = np.empty((4, 4, K, C), dtype=dtype)
    for k, r in _TAP.items():
        for l, s in _TAP.items():
            u[k, l] = w[:, :, r, s]
        np.add(u[k, 0], u[k, 2], out=u[k, 1])
    np.add(u[0], u[2], out=u[1])
    return u


def conv_winograd(spec: ConvSpec, x: np.ndarray, w: np.ndarray, dtype, y: np.ndarray,
                  u: np.ndarray | None = None) -> None:
    """The layer by the polyphase form (module docstring) into ``y`` (N, K, H, W).

    ``u``: the transformed filters (`filter_transform`) if already made (the threaded split's
    pieces share one), else made here."""
    dtype = np.dtype(dtype)
    C, K = spec.in_channels, spec.out_channels
    tH, tW = winograd.tile_grid(spec)
    u = filter_transform(w, dtype) if u is None else u
    plan = blocks(spec, dtype.itemsize)
    images = max(n1 - n0 for n0, n1, _, _ in plan)
    rows = max(i1 - i0 for _, _, i0, i1 in plan)
    buffers = {name: np.empty(int(size), dtype=dtype)
               for name, size in block_elements(images, rows, tW, C, K).items()}
    for block in plan:
        _block(spec, x, u, block, buffers, y)


def _fill(spec: ConvSpec, x: np.ndarray, block, X: np.ndarray) -> None:
    """``X`` (n, p, q, c) = the padded input of the block's images at padded rows 4 i0 + p and
    columns q, zero outside the input."""
    n0, n1, i0, _ = block
    (ph, pw), (H_in, W_in) = spec.padding, spec.in_size
    rows, cols = X.shape[1:3]
    r0, r1 = min(rows, max(0, ph - 4 * i0)), min(rows, max(0, ph + H_in - 4 * i0))
    c0, c1 = min(cols, pw), min(cols, max(0, pw + W_in))
    X[:, :r0] = 0
    X[:, r1:] = 0
    X[:, r0:r1, :c0] = 0
    X[:, r0:r1, c1:] = 0
    if r1 > r0 and c1 > c0:
        first = 4 * i0 + r0 - ph
        X[:, r0:r1, c0:c1] = x[n0:n1, :, first:first + r1 - r0, c0 - pw:c1 - pw].transpose(
            0, 2, 3, 1)


def _block(spec, x, u, block, buffers, y) -> None:
    """One block: input copy, row and column transforms, 16 products, output transform into
    ``y`` (its last additions write the tiles' four phases, rows and columns of stride 2)."""
    n0, n1, i0, i1 = block
    C, K, (H, W) = spec.in_channels, spec.out_channels, spec.out_size
    tW = -(-W // 2)
    m, rows = n1 - n0, i1 - i0
    L = m * rows * tW
    sizes = block_elements(m, rows, tW, C, K)
    X = buffers["X"][:sizes["X"]].reshape(m, 4 * rows + 1, 4 * tW + 1, C)
    _fill(spec, x, block, X)
    # rows: d = (x0 - x2, x2, x4 - x2, x1, x3) of padded rows 4 i + (0 .. 4)
    A = buffers["A"][:sizes["A"]].reshape(2, m, rows, 4 * tW + 1, C)
    mid = X[:, 2::4][:, :rows]
    np.subtract(X[:, 0::4][:, :rows], mid, out=A[0])
    np.subtract(X[:, 4::4][:, :rows], mid, out=A[1])
    row_parts = (A[0], mid, A[1], X[:, 1::4][:, :rows], X[:, 3::4][:, :rows])
    # V grouped by filter: ee (3, 3), eo (3 rows, 2 odd columns), oe (3 columns, 2 odd rows),
    # oo (2, 2); each coefficient a contiguous (tiles, C) matrix
    V = buffers["V"][:25 * L * C]
    vee, veo, voe, voo = (V[a * L * C:b * L * C] for a, b in ((0, 9), (9, 15), (15, 21),
                                                                (21, 25)))
    vee, veo = vee.reshape(3, 3, L, C), veo.reshape(3, 2, L, C)
    voe, voo = voe.reshape(3, 2, L, C), voo.reshape(2, 2, L, C)
    for k, Z in enumerate(row_parts):
        even = [(vee[k, l] if k < 3 else voe[l, k - 3]).reshape(m, rows, tW, C) for l in range(3)]
        odd = [(veo[k, b] if k < 3 else voo[k - 3, b]).reshape(m, rows, tW, C) for b in range(2)]
        centre = Z[:, :, 2::4][:, :, :tW]
        np.subtract(Z[:, :, 0::4][:, :, :tW], centre, out=even[0])
        even[1][...] = centre
        np.subtract(Z[:, :, 4::4][:, :, :tW], centre, out=even[2])
        odd[0][...] = Z[:, :, 1::4][:, :, :tW]
        odd[1][...] = Z[:, :, 3::4][:, :, :tW]
    # products M = V U^T, (tiles, K) per coefficient; BLAS reads U transposed in place
    M = buffers["M"][:25 * L * K]
    mee, meo, moe, moo = (M[a * L * K:b * L * K] for a, b in ((0, 9), (9, 15), (15, 21),
                                                                (21, 25)))
    mee, meo = mee.reshape(3, 3, L, K), meo.reshape(3, 2, L, K)
    moe, moo = moe.reshape(3, 2, L, K), moo.reshape(2, 2, L, K)
    matmul(vee, u[:3, :3].transpose(0, 1, 3, 2), mee)
    matmul(veo.reshape(3, 2 * L, C), u[:3, 3].transpose(0, 2, 1), meo.reshape(3, 2 * L, K))
    matmul(voe.reshape(3, 2 * L, C), u[3, :3].transpose(0, 2, 1), moe.reshape(3, 2 * L, K))
    matmul(voo.reshape(4 * L, C), u[3, 3].T, moo.reshape(4 * L, K))
    # columns: meo[k, b] becomes row coefficient k of output column b, moo[a, b] odd row a's
    for b, (l0, l1) in enumerate(_SUMS):
        for k in range(3):
            meo[k, b] += mee[k, l0]
            meo[k, b] += mee[k, l1]
        moo[:, b] += moe[l0]
        moo[:, b] += moe[l1]
    # rows: output row a sums row coefficients _SUMS[a] and odd row a
    moo[0] += meo[0]
    moo[1] += meo[2]
    for a in range(2):
        ra = len(range(2 * i0 + a, min(H, 2 * i1), 2))
        for b in range(2):
            cb = len(range(b, W, 2))
            if ra == 0 or cb == 0:
                continue
            view = y[n0:n1, :, 2 * i0 + a:2 * i0 + a + 2 * ra - 1:2, b:b + 2 * cb - 1:2]
            np.add(moo[a, b].reshape(m, rows, tW, K)[:, :ra, :cb],
                   meo[1, b].reshape(m, rows, tW, K)[:, :ra, :cb], out=view.transpose(0, 2, 3, 1),
                   casting="unsafe")
