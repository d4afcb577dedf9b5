"""The direct methods of the CPU kernel on BLAS products: "gemm", "taps" and "im2col".
Pure, no MPI.

* ``"gemm"`` (1x1 filters, unpadded): per image one (K x C) @ (C x H W) product straight on the
  NCHW data; no layout conversion at all.
* ``"taps"``: one (rows x C) @ (C x K) product per filter tap on a contiguous slice of a phase
  image (`parconv.blas_layout`), accumulated in place (BLAS beta = 1) into an output over the
  same (n, i, j) grid; the grid's extra columns and rows (``Wq - W`` and ``Hq - H`` of them) are
  computed and dropped.  Blocks of rows that stay in the cache; no copy per tap.
* ``"im2col"``: the products of the im2col matrix, inner dimension C R S.  Where the filter rows
  are adjacent (dilation 1 along H) and output rows are wide (`ROWS_MIN_WIDTH`), as *row bands*
  (`_im2col_rows`): per input row the C S values each output pixel reads from it, gathered once;
  the im2col rows of output row i are then the R consecutive gathered input rows from sh i on,
  a contiguous matrix, so one stacked product per band reads them in place (the stride-2 7x7
  stem gathers 3.5x fewer values than its im2col matrix holds; exact groups are ranges of the
  matrix's rows).  Elsewhere blocks of output rows of the im2col matrix, sized to
  `COLUMNS_BYTES`, gathered from the phase images, one product per block and exact group.

Each writes its output blocks to the NCHW result while they are still in the cache; integers
are summed in exact groups (`parconv.blas_exact`), or as int8 products with int32 sums where
MKL's int8 GEMM runs them (`parconv.blas_mkl_int`: the left operand of each product, the
filters or, for "taps", the phase images, is then held shifted to uint8).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .blas import current_threads, matmul, matmul_into
from .blas_exact import Arithmetic, Sums, column_groups
from .blas_mkl_int import shifted
from .blas_layout import held, phase_images, phase_views, pixel_blocks, tap_major, taps
from .spec import ConvSpec

#: bytes of im2col columns gathered at once (rows of a block x columns of a piece; 4 MiB ran
#: 5-12 % faster than 16 MiB at 1 and 2 threads on the stem and the int8 stride-2 3x3 once the
#: int8 path split at 2 threads: experiments/bench_stem.py; it had slowed the unsplit int8 path)
COLUMNS_BYTES = 4 << 20
#: bytes of output rows per block and BLAS thread of the "taps" method (the products stay in
#: the L2 cache; with fewer rows per thread, 2 threads ran 1.8x slower on a 56x56 layer)
TAP_BLOCK_BYTES = 2 << 20
#: fewest rows per block (shorter products run BLAS poorly)
MIN_ROWS = 256
#: narrowest output rows that "im2col" runs as row bands (their products are W wide): speed
#: of row bands / blocks at one thread, float32 / int8 (experiments/bench_stem.py --widths,
#: two runs): W = 112 (the stem) 1.40-1.44 / 1.10-1.12, W = 56 1.18-1.33 / 1.08-1.15,
#: W = 28 0.80-1.03 / 0.85-1.08, W = 14 0.53-0.64, W = 7 0.31-0.35
ROWS_MIN_WIDTH = 32


def _gemm_in_place(spec: ConvSpec, x: np.ndarray, arith: Arithmetic, y: np.ndarray) -> bool:
    """Whether "gemm" runs as one product from ``x`` into ``y``: one group whose sums have
    ``y``'s type, stride 1, and ``x`` C-contiguous of the products' type (blas_workspace:
    floats, and int8 products into int32)."""
    return (arith.limit is None and arith.out == y.dtype == arith.result
            and tuple(spec.stride) == (1, 1) and x.dtype == arith.dtype and x.flags.c_contiguous)


def _left(m: np.ndarray, arith: Arithmetic) -> np.ndarray:
    """A left operand used in many products, in the form the products take it: for the int8
    products shifted to uint8 once (`blas_mkl_int.shifted`), else as it is."""
    return shifted(m) if arith.integer else m


def _aliased_output(arith: Arithmetic, y: np.ndarray) -> bool:
    """Whether "gemm" sums straight into ``y``'s bytes reinterpreted as the products' type:
    one exact group whose floating sums become integers of the same size (float32 -> int32)."""
    return (arith.limit is None and arith.out == arith.dtype and y.dtype.kind in "iu"
            and y.dtype.itemsize == arith.dtype.itemsize and y.flags.c_contiguous)


def conv_gemm(spec: ConvSpec, x: np.ndarray, w: np.ndarray, arith: Arithmetic,
              y: np.ndarray) -> None:
    """1x1, unpadded: per image (K x C) @ (C x H W) on the NCHW data, into ``y``.  Floats of
    stride 1 on C-contiguous data: one stacked product for all images, no buffer at all."""
    (sh, sw), (H, W), C, K = spec.stride, spec.out_size, spec.in_channels, spec.out_channels
    wm = _left(w.reshape(K, C).astype(arith.dtype, copy=False), arith)
    if _gemm_in_place(spec, x, arith, y):
        matmul(wm, x.reshape(spec.batch, C, H * W), y.reshape(spec.batch, K, H * W))
        return
    groups = column_groups(C, 1, arith.limit)
    direct = arith.out == y.dtype
    # one group of float32 sums into int32: the product is written into the output image's
    # own bytes and cast there in place (exact integers, theory.md 1.5), so no block buffer
    # and no second pass through one (2 threads: int8 / float32 0.83 -> 0.92 on a 1x1 layer)
    aliased = _aliased_output(arith, y)
    sums = None if aliased else Sums(arith, K * H * W)
    image = np.empty((C, H, W), dtype=arith.dtype)
    for n in range(spec.batch):
        src = x[n, :, ::sh, ::sw][:, :H, :W]
        if src.dtype == arith.dtype and src.flags.c_contiguous:
            flat = src.reshape(C, H * W)
        else:
            np.copyto(image, src, casting="unsafe")
            flat = image.reshape(C, H * W)

        def products(target, group, scratch, first):
            for i, ((_, c0, c1),) in enumerate(group):
                # the weight columns are K x (c1 - c0) of a K x C matrix: BLAS takes the stride
                matmul_into(target, wm[:, c0:c1], flat[c0:c1], not (first and i == 0), scratch)

        if aliased:
            ints = y[n].reshape(K * H * W)
            sums_view = ints.view(arith.dtype)
            matmul(wm, flat, sums_view.reshape(K, H * W))
            # element i is read before it is written: a 1-d cast in place is exact
            np.copyto(ints, sums_view, casting="unsafe")
            continue
        block = y[n].reshape(K, H * W) if direct else sums.block((K, H * W))
        sums.run(block, groups, products)
        if not direct:
            np.copyto(y[n].reshape(K, H * W), block, casting="unsafe")


def conv_taps(spec: ConvSpec, x: np.ndarray, w: np.ndarray, arith: Arithmetic,
              y: np.ndarray) -> None:
    """One product per tap on the phase images (module docstring), into ``y``.

    Blocks of whole images (or of image rows) of the (n, i, j) grid, each written to the NCHW
    output while still in the cache.  (The products are rows x K: computing K x rows instead,
    to write runs of W, runs 25 % slower in OpenBLAS for K = C = 64.)
    """
    tap_list, (Hq, Wq) = taps(spec)
    N, C, K, (H, W) = spec.batch, spec.in_channels, spec.out_channels, spec.out_size
    # a block reads up to the largest tap offset past its end: zero rows there
    tail = max(t.offset for t in tap_list)
    flat = phase_images(spec, x, arith.dtype, {t.phase for t in tap_list}, (Hq, Wq), tail,
                        shift=arith.integer)
    wk = tap_major(w, arith.dtype)
    groups = column_groups(C, len(tap_list), arith.limit)
    rows = max(MIN_ROWS, TAP_BLOCK_BYTES * current_threads() // (K * arith.result.itemsize))
    # whole images (their grid rows Hq included) or rows h0:h1 of one image
    blocks = [(n0, n1, h0, h1, (h0, h1) == (0, H),
               (n1 - n0) * Hq * Wq if (h0, h1) == (0, H) else (h1 - h0) * Wq)
              for n0, n1, h0, h1 in pixel_blocks(N, H, Wq, rows, Hq)]
    sums = Sums(arith, K * max(block[-1] for block in blocks))
    for n0, n1, h0, h1, whole, length in blocks:
        base = (n0 * Hq + h0) * Wq

        def products(target, group, scratch, first):
            for i, ((t, c0, c1),) in enumerate(group):
                tap = tap_list[t]
                a = flat[tap.phase][base + tap.offset:base + tap.offset + length, c0:c1]
                matmul_into(target, a, wk[tap.r, tap.s, :, c0:c1].T, not (first and i == 0),
                            scratch)

        block = sums.block((length, K))
        sums.run(block, groups, products)
        if whole:
            grid = block.reshape(n1 - n0, Hq, Wq, K)[:, :H, :W, :]
            np.copyto(y[n0:n1], grid.transpose(0, 3, 1, 2), casting="unsafe")
        else:
            np.copyto(y[n0, :, h0:h1, :], block.reshape(h1 - h0, Wq, K)[:, :W, :].transpose(
                2, 0, 1), casting="unsafe")


def conv_im2col(spec: ConvSpec, x: np.ndarray, w: np.ndarray, arith: Arithmetic,
                y: np.ndarray, channels_first: bool = False) -> None:
    """Blocks of im2col rows gathered from the phase images, one product per block and piece,
    into ``y``.  Each block's output is K x pixels (written to NCHW in runs of the block's
    pixels).  With ``channels_first`` the transposed columns (C R S x pixels) are gathered
    from channel-first phase images: runs of W values instead of runs of C (few channels).
    Row bands instead where `rows_apply` (module docstring)."""
    if rows_apply(spec, arith):
        _im2col_rows(spec, x, w, arith, y)
        return
    tap_list, grid = taps(spec)
    N, C, K, (H, W) = spec.batch, spec.in_channels, spec.out_channels, spec.out_size
    images = phase_images(spec, x, arith.dtype, {t.phase for t in tap_list}, grid,
                          channels_first=channels_first)
    if not channels_first:
        images = phase_views(images, spec, grid)
    wk = tap_major(w, arith.dtype)
    # blocks sized by the sums' type (int8 products: as many rows as float32 ones, so that no
    # buffer outgrows the float path's, which the planner budgets: blas_workspace)
    item = arith.result.itemsize
    groups = column_groups(C, len(tap_list), arith.limit,
                           piece=max(1, COLUMNS_BYTES // (MIN_ROWS * item)))
    widest = max(sum(c1 - c0 for _, c0, c1 in piece) for group in groups for piece in group)
    weights = {}
    for group in groups:
        for piece in group:
            # (K, columns of the piece): copies of runs of c1 - c0 filter values
            weights[id(piece)] = _left(np.concatenate([wk[tap_list[t].r, tap_list[t].s, :, c0:c1]
                                                       for t, c0, c1 in piece], axis=1), arith)
    blocks = pixel_blocks(N, H, W, max(MIN_ROWS, COLUMNS_BYTES // (widest * item)))
    block_rows = max((n1 - n0) * (h1 - h0) * W for n0, n1, h0, h1 in blocks)
    columns = np.empty(block_rows * widest, dtype=arith.dtype)
    sums = Sums(arith, block_rows * K)
    for n0, n1, h0, h1 in blocks:
        count = (n1 - n0) * (h1 - h0) * W

        def products(target, group, scratch, first):
            for i, piece in enumerate(group):
                width = sum(c1 - c0 for _, c0, c1 in piece)
                q = 0
                if channels_first:
                    block = columns[:count * width].reshape(width, n1 - n0, h1 - h0, W)
                    for t, c0, c1 in piece:
                        (di, dj), phase = tap_list[t].shift, tap_list[t].phase
                        block[q:q + c1 - c0] = images[phase][c0:c1, n0:n1, h0 + di:h1 + di,
                                                             dj:dj + W]
                        q += c1 - c0
                    matrix = block.reshape(width, count)
                else:
                    block = columns[:count * width].reshape(n1 - n0, h1 - h0, W, width)
                    for t, c0, c1 in piece:
                        (di, dj), phase = tap_list[t].shift, tap_list[t].phase
                        block[..., q:q + c1 - c0] = images[phase][n0:n1, h0 + di:h1 + di,
                                                                  dj:dj + W, c0:c1]
                        q += c1 - c0
                    matrix = block.reshape(count, width).T      # BLAS reads it transposed
                matmul_into(target, weights[id(piece)], matrix, not (first and i == 0),
                            scratch)

        out = sums.block((K, count))
        sums.run(out, groups, products)
        np.copyto(y[n0:n1, :, h0:h1, :],
                  out.reshape(K, n1 - n0, h1 - h0, W).transpose(1, 0, 2, 3), casting="unsafe")


def row_bands_fit(spec: ConvSpec) -> bool:
    """Whether the block's shape takes "im2col" by row bands: dilation 1 along H (the R filter
    rows of an output row read adjacent input rows) and output rows of at least
    `ROWS_MIN_WIDTH` pixels (the products' width)."""
    return spec.dilation[0] == 1 and spec.out_size[1] >= ROWS_MIN_WIDTH


def rows_apply(spec: ConvSpec, arith: Arithmetic) -> bool:
    """Whether "im2col" runs as row bands: `row_bands_fit` and products of a floating type
    (`blas_exact.arithmetic`).  Not the int8 products: the stem's (64 x 147) @ (147 x 112) per
    output row ran at 49-58 GOP/s on MKL's int8 GEMM, its blocks at 100-155 (batch 4, 1 and 2
    threads)."""
    return row_bands_fit(spec) and arith.dtype.kind == "f"


def band_rows(rows, channels, taps_s, width, taps_r, stride, item):
    """Output rows per band of `_im2col_rows` (numpy arrays broadcast): its gathered input rows,
    ``channels taps_s width item`` bytes each, within `COLUMNS_BYTES`, at least one and at most
    ``rows`` (the output height)."""
    gathered = COLUMNS_BYTES // np.maximum(1, channels * taps_s * width * item)
    return np.maximum(1, np.minimum(rows, (gathered - taps_r) // stride + 1))


def _im2col_rows(spec: ConvSpec, x: np.ndarray, w: np.ndarray, arith: Arithmetic,
                 y: np.ndarray) -> None:
    """"im2col" by row bands (module docstring), into ``y``.

    Per band of output rows [h0, h1) of one image, ``g[u, c, s, j]`` = the input value tap
    column s of output column j reads in input row ``sh h0 + u - ph`` (zero in the padding);
    output row i's im2col matrix (R C S x W, rows in (r, c, s) order) is ``g[sh (i - h0) :
    sh (i - h0) + R]`` flattened, and one stacked product of the (K x R C S) filters with
    these overlapping views writes the band: straight into ``y`` where its type is the
    products', else through a band block in the arithmetic's ``out`` type, the exact groups
    (consecutive rows of the matrix) added there as `blas_exact.Sums` adds them.
    """
    (sh, sw), (_, dw), (ph, pw) = spec.stride, spec.dilation, spec.padding
    (R, S), (H, W), (H_in, W_in) = spec.kernel_size, spec.out_size, spec.in_size
    N, C, K = spec.batch, spec.in_channels, spec.out_channels
    dtype, depth = arith.dtype, R * C * S
    # (K, R, C, S): the (r, c, s) order of the gathered rows
    wm = np.ascontiguousarray(w.transpose(0, 2, 1, 3), dtype=dtype).reshape(K, depth)
    band = int(band_rows(H, C, S, W, R, sh, dtype.itemsize))
    g = np.empty(((band - 1) * sh + R, C, S, W), dtype=dtype)
    step = arith.limit or depth
    groups = [(a, min(depth, a + step)) for a in range(0, depth, step)]
    direct = y.dtype == dtype
    block = None if direct else np.empty((band, K, W), dtype=arith.out)
    # as blas_exact.Sums: a group buffer and integers where groups are added in an integer type
    buffer = np.empty((band, K, W), dtype=dtype) if arith.out != dtype else None
    ints = None if buffer is None else np.empty((band, K, W), dtype=arith.out)
    cols = [held(pw - dw * s, sw, W_in, W) for s in range(S)]
    for n in range(N):
        for h0 in range(0, H, band):
            h1 = min(H, h0 + band)
            rows = (h1 - h0 - 1) * sh + R
            # input rows sh h0 - ph + [0, rows): the held ones are [u0, u1)
            u0 = min(rows, max(0, ph - sh * h0))
            u1 = max(u0, min(rows, H_in + ph - sh * h0))
            part = g[:rows]
            part[:u0] = 0
            part[u1:] = 0
            for s, (j0, j1) in enumerate(cols):
                dst = part[u0:u1, :, s]
                dst[:, :, :j0] = 0
                dst[:, :, j1:] = 0
                if j1 > j0:
                    i0, c0 = sh * h0 + u0 - ph, dw * s + sw * j0 - pw
                    dst[:, :, j0:j1] = x[n, :, i0:i0 + u1 - u0,
                                         c0:c0 + sw * (j1 - j0 - 1) + 1:sw].transpose(1, 0, 2)
            strides = g.strides
            matrices = as_strided(part, shape=(h1 - h0, depth, W),
                                  strides=(sh * strides[0], strides[2], strides[3]),
                                  writeable=False)
            target = y[n, :, h0:h1, :].transpose(1, 0, 2)
            if direct:
                matmul(wm, matrices, target)
                continue
            out = block[:h1 - h0]
            for index, (a, b) in enumerate(groups):
                sums = out if buffer is None else buffer[:h1 - h0]
                matmul(wm[:, a:b], matrices[:, a:b], sums)
                if buffer is None:
                    continue
                if index == 0:
                    np.copyto(out, sums, casting="unsafe")      # exact integers
                else:
                    np.copyto(ints[:h1 - h0], sums, casting="unsafe")
                    np.add(out, ints[:h1 - h0], out=out)         # wraps like int32 hardware
            np.copyto(target, out, casting="unsafe")
