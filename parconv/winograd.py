"""Winograd F(2x2, 3x3) for floating-point 3x3 layers of stride 1 and dilation 1.  Pure, no MPI.

Each 2x2 tile of output is ``A^T [ (G g G^T) * (B^T d B) ] A`` for its 4x4 input patch ``d``
(Lavin and Gray, "Fast algorithms for convolutional neural networks", 2016): 16 products per
tile and channel pair instead of 36, so the reduction over channels becomes 16 matrix products
``M[k] = U[k] @ V[k]`` (K x C) @ (C x tiles), one per transform coefficient k, 2.25x fewer
multiply-adds than the direct method.

Layout: the input is copied once, zero padded, into its four parity parts
``parts[a][b][n, c, i, j] = xpad[n, c, 2 i + a, 2 j + b]``, so that a tile's rows 0-3 are rows
i, i of the odd part, i + 1, i + 1 and its columns likewise j and j + 1 of the even and odd
parts: every transform is a numpy operation on whole shifted arrays, for all 2, 4 or 16
coefficients at once.  Two layouts of the tiles:

* NCHW (images of at least `CHANNELS_LAST_BELOW` tile columns): no transposition at all.  One
  extra tile column per tile row is computed and dropped, so that the column shift is one
  pass over contiguous memory; ``V[k]`` is (C, tiles), ``M[k] = U[k] @ V[k]`` (K, tiles) and
  the output transform writes the four phases of the 2x2 tiles into the NCHW output (stride 2
  in its rows and columns).
* channels-last (small images, where that extra column would cost up to 1/2 of the products):
  the parts are (n, i, j, c), ``V[k]`` is (tiles, C) and ``M[k] = U[k] @ V[k]^T`` (K, tiles),
  transposed back into the output by the last operation.

Blocks of whole images, or of tile rows of one image, hold at most `BLOCK_BYTES` of transform
buffers (they stay in the last-level cache).

Float32 accuracy: B and A hold only 0 and +-1 and G only 0, +-1/2, +-1, so rounding comes from
the same sums as the direct method's plus one short sum per transform; the measured error is
stated in docs/design.md (kernel section).  Integers never come here (their exact form is
`parconv.winograd_exact`).
"""

from __future__ import annotations

import numpy as np

from .blas import matmul
from .spec import ConvSpec

#: bytes of transform buffers (V, M and their temporaries) per block
BLOCK_BYTES = 16 << 20
#: fewest tiles per block (shorter products run BLAS poorly)
MIN_TILES = 64

#: images with fewer tile columns than this take the channels-last layout (measured)
CHANNELS_LAST_BELOW = 8
#: cost of one element of a transform pass and of the filter transform, in multiply-adds of the
#: products at full speed (fitted to side-by-side times at 1 thread: resnet50.layer1.0.conv2
#: Winograd / taps = 0.73, layer4.1.conv2 at batch 1 Winograd = im2col)
TRANSFORM_COST = 16.0
FILTER_COST = 10.0

#: G (4 x 3): the filter transform U = G g G^T
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def applies(spec: ConvSpec) -> bool:
    """Whether the layer may take the Winograd method: floating types, 3x3 filters, stride 1,
    dilation 1."""
    return (np.dtype(spec.dtype_in).kind == "f" and tuple(spec.kernel_size) == (3, 3)
            and tuple(spec.stride) == (1, 1) and tuple(spec.dilation) == (1, 1))


def relative_cost(n, c, k, out_h, out_w, short_cost: float):
    """Time of the Winograd method relative to the direct products (N H W K C 9 multiply-adds
    at full speed; numpy arrays broadcast): 16 products per tile on ``tH (tW + 1)`` tiles (``tH tW``
channels-last), of
    inner dimension C (relative cost ``1 + short_cost / C``), plus the transforms' passes (24 C
    + 24 K elements per tile) and the filter transform (16 K C elements)."""
    columns = -(-out_w // 2)
    tiles = -(-out_h // 2) * np.where(columns < CHANNELS_LAST_BELOW, columns, columns + 1)
    direct = 9.0 * out_h * out_w
    return (16.0 * tiles / direct * (1 + short_cost / c)
            + TRANSFORM_COST * 24.0 * tiles * (c + k) / (direct * k * c)
            + FILTER_COST * 16.0 / (direct * n))


def tile_grid(spec: ConvSpec) -> tuple[int, int]:
    """(tile rows, tile columns) covering the output: ceil(H / 2), ceil(W / 2)."""
    H, W = spec.out_size
    return -(-H // 2), -(-W // 2)


def per_tile_bytes(channels: int, out_channels: int, itemsize: int) -> int:
    """Bytes of block buffers per tile: V (16 C), M (16 K), the row transform (8 C) and the
    row sums of the output transform (8 K)."""
    return itemsize * (24 * channels + 24 * out_channels)


def tile_blocks(N: int, tH: int, tW: int, tiles: int) -> list[tuple[int, int, int, int]]:
    """(n0, n1, i0, i1): whole images when ``tiles`` hold one, else tile rows of one image;
    blocks of (nearly) equal size."""
    if tiles >= tH * tW:
        count = -(-N // (tiles // (tH * tW)))
        edges = [N * q // count for q in range(count + 1)]
        return [(n0, n1, 0, tH) for n0, n1 in zip(edges, edges[1:])]
    count = -(-tH // max(1, tiles // tW))
    edges = [tH * q // count for q in range(count + 1)]
    return [(n, n + 1, i0, i1) for n in range(N) for i0, i1 in zip(edges, edges[1:])]


def filter_transform(w: np.ndarray, dtype) -> np.ndarray:
    """U (16, K, C): ``U[4 a + b] = sum_rs G[a, r] G[b, s] w[:, :, r, s]``, one product of the
    16 x 9 Kronecker matrix with the filters read in place."""
    K, C = w.shape[:2]
    kron = np.kron(_G, _G).astype(dtype)                     # (16, 9): (a b) x (r s)
    u = np.empty((16, K * C), dtype=dtype)
    matmul(kron, w.reshape(K * C, 9).astype(dtype, copy=False).T, u)
    return u.reshape(16, K, C)


def split_phases(spec: ConvSpec, x: np.ndarray, parts: list[np.ndarray], n0: int,
                 n1: int, channels_last: bool = False) -> None:
    """Images [n0, n1) of the zero-padded input split by row and column parity into ``parts``:
    ``parts[a][b, n, c, i, j] = xpad[n, c, 2 i + a, 2 j + b]``, each (2, N, C, tH + 1, tW + 1),
    or (2, N, tH + 1, tW + 1, C) ``channels_last``."""
    (ph, pw), (H_in, W_in) = spec.padding, spec.in_size
    for a in (0, 1):
        part = parts[a][:, n0:n1]
        if channels_last:
            part = part.transpose(0, 1, 4, 2, 3)           # the (b, n, c, i, j) view
        i0, i1 = _held(ph - a, H_in, part.shape[3])
        for b in (0, 1):
            j0, j1 = _held(pw - b, W_in, part.shape[4])
            _zero_outside(part[b], i0, i1, j0, j1)
            if i1 > i0 and j1 > j0:
                r, c = 2 * i0 + a - ph, 2 * j0 + b - pw
                part[b, :, :, i0:i1, j0:j1] = x[n0:n1, :, r:r + 2 * (i1 - i0) - 1:2,
                                                c:c + 2 * (j1 - j0) - 1:2]


def _held(pad: int, extent: int, count: int) -> tuple[int, int]:
    """Indices i in [0, count) with 0 <= 2 i - pad < extent, as a range."""
    i0 = max(0, -(-pad // 2))
    i1 = min(count, -(-(extent + pad) // 2))
    return i0, max(i0, i1)


def _zero_outside(part: np.ndarray, i0: int, i1: int, j0: int, j1: int) -> None:
    """Zero the rows and columns of ``part`` outside [i0, i1) x [j0, j1) (the padding)."""
    part[:, :, :i0] = 0
    part[:, :, i1:] = 0
    part[:, :, :, :j0] = 0
    part[:, :, :, j1:] = 0


def conv_winograd(spec: ConvSpec, x: np.ndarray, w: np.ndarray, dtype, y: np.ndarray,
                  u: np.ndarray | None = None) -> None:
    """The layer by F(2x2, 3x3) (module docstring) into ``y`` (N, K, H, W).

    ``u``: the transformed filters (`filter_transform`) if already made, else (None) made here
    (`parconv.blasconv` passes None at stride 1: see `blasconv.SHARED_FILTERS`)."""
    dtype = np.dtype(dtype)
    N, C, K = spec.batch, spec.in_channels, spec.out_channels
    tH, tW = tile_grid(spec)
    u = filter_transform(w, dtype) if u is None else u      # (BLAS threads as given)
    last = tW < CHANNELS_LAST_BELOW
    shape = (2, N, tH + 1, tW + 1, C) if last else (2, N, C, tH + 1, tW + 1)
    parts = [np.empty(shape, dtype=dtype) for _ in (0, 1)]
    run = _block_channels_last if last else _block
    per_tile = (8 * C, 16 * C, 16 * K, 8 * K)               # t, V, M, s
    run_blocks(spec, dtype, per_tile, BLOCK_BYTES,
               lambda: split_phases(spec, x, parts, 0, N, last),
               lambda block, buffers: run(spec, parts, u, block, buffers, y))


def run_blocks(spec: ConvSpec, dtype, per_tile, block_bytes: int, split, run) -> None:
    """Allocate the block buffers (``per_tile`` elements each per tile, for the largest block
    of `tile_blocks` of at most ``block_bytes``, at least `MIN_TILES` tiles), then
    ``split()`` the input and ``run(block, buffers)`` every block.

    With several BLAS threads the products use them and the transforms run in this thread
    (measured: T Python workers sharing the buffers, each with single-threaded BLAS, ran slower
    at 2 threads on resnet50.layer1.0.conv2 and layer4.1.conv2)."""
    N = spec.batch
    tH, tW = tile_grid(spec)
    per = int(sum(per_tile)) * dtype.itemsize
    blocks = tile_blocks(N, tH, tW + 1, max(MIN_TILES, block_bytes // per))
    most = max((n1 - n0) * (i1 - i0) for n0, n1, i0, i1 in blocks) * (tW + 1)
    buffers = [np.empty(width * most, dtype=dtype) for width in per_tile]
    split()
    for block in blocks:
        run(block, buffers)


def _block(spec, parts, u, block, buffers, y) -> None:
    """One block of tiles: input transform, 16 products, output transform into ``y``.

    Tile column tW of the block's rows is computed and dropped: every operation is then one
    pass over contiguous memory, each for all 2, 4 or 16 coefficients at once."""
    n0, n1, i0, i1 = block
    C, K, (H, W) = spec.in_channels, spec.out_channels, spec.out_size
    tW = parts[0].shape[-1] - 1
    nb, rows = n1 - n0, i1 - i0
    length = nb * rows * (tW + 1)
    tbuf, vbuf, mbuf, sbuf = buffers
    t = tbuf[:8 * C * length].reshape(4, 2, C, nb, rows, tW + 1)
    # rows of B^T d: padded rows 2 i + (0, 1, 2, 3) are rows i, i of the odd part, i + 1, ...
    ev = parts[0][:, n0:n1, :, i0:i1 + 1].transpose(0, 2, 1, 3, 4)
    od = parts[1][:, n0:n1, :, i0:i1 + 1].transpose(0, 2, 1, 3, 4)
    d0, d1, d2, d3 = ev[:, :, :, :-1], od[:, :, :, :-1], ev[:, :, :, 1:], od[:, :, :, 1:]
    np.subtract(d0, d2, out=t[0])
    np.add(d1, d2, out=t[1])
    np.subtract(d2, d1, out=t[2])
    np.subtract(d1, d3, out=t[3])
    # columns (B^T d) B: padded columns 2 j + (0, 1, 2, 3) are the even and odd parts' j, j + 1
    t = t.reshape(4, 2, C * length)
    v = vbuf[:16 * C * length].reshape(4, 4, C * length)
    e0, e1, o0, o1 = t[:, 0, :-1], t[:, 0, 1:], t[:, 1, :-1], t[:, 1, 1:]
    np.subtract(e0, e1, out=v[:, 0, :-1])
    np.add(o0, e1, out=v[:, 1, :-1])
    np.subtract(e1, o0, out=v[:, 2, :-1])
    np.subtract(o0, o1, out=v[:, 3, :-1])
    v[:, :, -1] = 0                                         # (in a dropped column)
    m = mbuf[:16 * K * length].reshape(16, K, length)
    matmul(u, v.reshape(16, C, length), m)
    # rows A^T M, then columns (A^T M) A: the last operation writes the NCHW output
    m = m.reshape(4, 4, K, length)
    s = sbuf[:8 * K * length].reshape(2, 4, K, length)
    _output_rows(m, s)
    half = mbuf[:4 * K * length].reshape(2, 2, K, nb, rows, tW + 1)   # m is consumed
    np.add(s[:, 0], s[:, 1], out=half[0].reshape(2, K, length))
    np.subtract(s[:, 1], s[:, 2], out=half[1].reshape(2, K, length))
    s = s.reshape(2, 4, K, nb, rows, tW + 1)
    # (K, N, H, W) view of this block's images, the axis order of half and s
    _write_tiles(half, s, y.transpose(1, 0, 2, 3)[:, n0:n1], i0, i1, H, W)


def _write_tiles(half: np.ndarray, s: np.ndarray, target: np.ndarray, i0: int, i1: int,
                 H: int, W: int) -> None:
    """The columns of the output transform, written into the output: the 2x2 output of tile row
    i and column j goes to rows 2i + a, columns 2j + b of ``target`` (a 4-d view whose first two
    axes match those of ``half[b, a]`` and ``s[a, .]``), clipped at H and W."""
    for a in range(2):
        r0 = 2 * i0 + a
        count_r = len(range(r0, min(H, 2 * i1), 2))
        for b, (op, tail) in enumerate(((np.add, s[a, 2]), (np.subtract, s[a, 3]))):
            count_c = len(range(b, W, 2))
            if count_r == 0 or count_c == 0:
                continue
            view = target[:, :, r0:r0 + 2 * count_r - 1:2, b:b + 2 * count_c - 1:2]
            op(half[b, a][:, :, :count_r, :count_c], tail[:, :, :count_r, :count_c],
               out=view, casting="unsafe")


def _output_rows(m: np.ndarray, s: np.ndarray) -> None:
    """The rows of the output transform, A^T M, for both layouts: s[0] = m0 + m1 + m2 and
    s[1] = m1 - m2 - m3 (``m`` of shape (4, 4, ...), ``s`` (2, 4, ...))."""
    np.add(m[0], m[1], out=s[0])
    s[0] += m[2]
    np.subtract(m[1], m[2], out=s[1])
    s[1] -= m[3]


def _block_channels_last(spec, parts, u, block, buffers, y) -> None:
    """`_block` on channels-last parts: no dropped column (the column shift is a view whose
    rows are contiguous runs of tW C values); M^T = U V^T; the last operation writes the
    (n, i, j, k) tiles into the NCHW output."""
    n0, n1, i0, i1 = block
    C, K, (H, W) = spec.in_channels, spec.out_channels, spec.out_size
    tW = parts[0].shape[3] - 1
    nb, rows = n1 - n0, i1 - i0
    length = nb * rows * tW
    tbuf, vbuf, mbuf, sbuf = buffers
    t = tbuf[:8 * C * nb * rows * (tW + 1)].reshape(4, 2, nb, rows, tW + 1, C)
    ev, od = parts[0][:, n0:n1, i0:i1 + 1], parts[1][:, n0:n1, i0:i1 + 1]
    d0, d1, d2, d3 = ev[:, :, :-1], od[:, :, :-1], ev[:, :, 1:], od[:, :, 1:]
    np.subtract(d0, d2, out=t[0])
    np.add(d1, d2, out=t[1])
    np.subtract(d2, d1, out=t[2])
    np.subtract(d1, d3, out=t[3])
    v = vbuf[:16 * C * length].reshape(4, 4, nb, rows, tW, C)
    e0, e1 = t[:, 0, :, :, :-1], t[:, 0, :, :, 1:]
    o0, o1 = t[:, 1, :, :, :-1], t[:, 1, :, :, 1:]
    np.subtract(e0, e1, out=v[:, 0])
    np.add(o0, e1, out=v[:, 1])
    np.subtract(e1, o0, out=v[:, 2])
    np.subtract(o0, o1, out=v[:, 3])
    m = mbuf[:16 * K * length].reshape(16, K, length)
    # M^T = U V^T (K x tiles): BLAS reads V transposed in place (U^T as the operand ran 1.6x
    # slower), and the output transform works on the NCHW-like (K, tiles) layout
    matmul(u, v.reshape(16, length, C).transpose(0, 2, 1), m)
    m = m.reshape(4, 4, K, length)
    s = sbuf[:8 * K * length].reshape(2, 4, K, length)
    _output_rows(m, s)
    half = mbuf[:4 * K * length].reshape(2, 2, K, length)  # m is consumed
    np.add(s[:, 0], s[:, 1], out=half[0])
    np.subtract(s[:, 1], s[:, 2], out=half[1])
    half = half.reshape(2, 2, K, nb, rows, tW).transpose(0, 1, 3, 2, 4, 5)
    s = s.reshape(2, 4, K, nb, rows, tW).transpose(0, 1, 3, 2, 4, 5)   # (n, k, i, j) views
    _write_tiles(half, s, y[n0:n1], i0, i1, H, W)
