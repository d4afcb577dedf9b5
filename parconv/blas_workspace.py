"""The memory `parconv.blasconv.conv2d_blas` allocates, from the block's sizes alone.  Pure.

The planner's footprint (parconv.plan.footprint) budgets the numpy node with it, vectorised over
every rank of a grid.  It mirrors the allocations of the four methods at one BLAS thread
(parconv.blas_methods, parconv.winograd*: phase images, tap-major filters, exact-group sums,
im2col row bands or columns, the returned output), so a change there must change this too;
tests/test_plan.py holds it to tracemalloc's peak.
"""

from __future__ import annotations

import numpy as np

from . import winograd, winograd_exact, winograd_s2
from .blas_exact import EXACT_BELOW
from .blas_methods import (COLUMNS_BYTES, MIN_ROWS, ROWS_MIN_WIDTH, TAP_BLOCK_BYTES,
                           band_rows)
from .blasconv import (_GATHER_COST, _SHORT_COST, _SHORT_COST_INT, GEMM_MIN_PIXELS,
                       exact_winograd_applies, winograd_form)
from .spec import ConvSpec


def workspace_bytes(spec: ConvSpec, n, c, k, out_h, out_w, padded: bool = True,
                    threads: int = 1):
    """Peak bytes `conv2d_blas` allocates on blocks of ``spec``'s kernel, strides, dilation and
    types with ``n`` images, ``c`` input and ``k`` output channels and an ``out_h`` x ``out_w``
    output (numpy arrays broadcast together): the phase images (Winograd: parity parts), the
    tap-major (Winograd: transformed) filters, the method's buffers (`blas_exact.Sums`, im2col
    columns, Winograd's block buffers) and the returned output.  Pure;
    mirrors the allocations of the four methods (parconv.blas_methods, parconv.winograd*).
    ``padded``: whether the layer pads (1x1 unpadded blocks may take the "gemm" method).
    ``threads`` scales the "taps" blocks only (one block of T threads' rows, or T pieces of one
    thread's rows each: parconv.blas_split); the T blocks of Winograd's buffers that the split
    holds at T threads are not modelled (the planner's footprint asks for one thread).
    """
    n, c, k, H, W = (np.asarray(v, dtype=np.int64) for v in (n, c, k, out_h, out_w))
    (sh, sw), (dh, dw), (R, S) = spec.stride, spec.dilation, spec.kernel_size
    acc = np.dtype(spec.dtype_acc)
    if np.dtype(spec.dtype_in).kind == "f":
        cb, limit = acc.itemsize, None
    else:
        cb = 4 if np.dtype(spec.dtype_in).itemsize == 1 else 8
        limit = EXACT_BELOW[np.dtype(np.float32 if cb == 4 else np.float64)] // (
            (1 << (8 * np.dtype(spec.dtype_in).itemsize - 1)) ** 2)
    reduction = c * R * S
    groups = np.ones_like(c) if limit is None else -(-reduction // limit)
    # Sums (blas_exact): a scratch, and a buffer and integers where the groups are added in an
    # integer type (blas_exact.arithmetic: integers in several float32 groups, in int32, or in
    # float64 groups, in int64; compared by type, not size: float32 -> int32 has both)
    multi = groups > 1
    if limit is None:
        out_item, sums_per = acc.itemsize, cb
    else:
        buffered = multi | (cb == 8)
        out_item = np.where(buffered, 8 if cb == 8 else acc.itemsize, cb)
        sums_per = cb + np.where(buffered, cb + out_item, 0)
    y = acc.itemsize * n * k * H * W
    Hq, Wq = H + (dh * (R - 1)) // sh, W + (dw * (S - 1)) // sw
    phases = len({(dh * r) % sh for r in range(R)}) * len({(dw * s) % sw for s in range(S)})
    tail = ((dh * (R - 1)) // sh) * Wq + (dw * (S - 1)) // sw
    filters = cb * k * c * R * S
    # "taps": rows of the (n, i, j) grid per block
    rows = np.maximum(MIN_ROWS, TAP_BLOCK_BYTES * threads // np.maximum(k * cb, 1))
    image = Hq * Wq
    length = np.where(rows >= image, np.minimum(n, rows // np.maximum(image, 1)) * image,
                      np.minimum(H, np.maximum(1, rows // np.maximum(Wq, 1))) * Wq)
    # the accumulating product: f2py may return the block as a copy (blas.matmul_into)
    taps_bytes = (phases * cb * (n * Hq * Wq + tail) * c + filters
                  + k * length * (sums_per + out_item + cb) + y)
    # "im2col": blocks of columns, at most `widest` wide
    widest = np.minimum(reduction, np.minimum(limit or reduction.max(initial=1),
                                              max(1, COLUMNS_BYTES // (MIN_ROWS * cb))))
    crows = np.maximum(MIN_ROWS, COLUMNS_BYTES // np.maximum(widest * cb, 1))
    block_rows = np.where(crows >= H * W, np.minimum(n, crows // np.maximum(H * W, 1)) * H * W,
                          np.minimum(H, np.maximum(1, crows // np.maximum(W, 1))) * W)
    im2col_bytes = (phases * cb * n * Hq * Wq * c + 2 * filters
                    + cb * block_rows * widest + k * block_rows * (sums_per + out_item) + y)
    if dh == 1:
        # "im2col" by row bands where blas_methods.row_bands_fit: the (r, c, s) filters and one
        # band of gathered input rows
        band = band_rows(H, c, S, W, R, sh, cb)
        # floats straight into the output; integers: a block in the groups' sum type and the
        # buffers of Sums (less its scratch)
        band_item = 0 if limit is None else out_item + sums_per - cb
        rows_bytes = (filters + cb * ((band - 1) * sh + R) * c * S * W
                      + band_item * band * k * W + y)
        im2col_bytes = np.where(W >= ROWS_MIN_WIDTH, rows_bytes, im2col_bytes)
    # "gemm": one image at a time, straight into the output when the types allow
    cast_w = 0 if np.dtype(spec.dtype_weight) == np.dtype(cb == 4 and "float32" or "float64") \
        else cb * k * c
    direct = multi if limit is not None else np.ones_like(multi)   # groups summed in y's type
    # one float32 group into int32: summed in the output's own bytes (blas_methods._aliased_output)
    aliased = (~multi) & (limit is not None and cb == acc.itemsize == 4 and acc.kind in "iu")
    gemm_bytes = (cb * c * H * W + cast_w + np.where(
        aliased, 0, k * H * W * (sums_per + np.where(direct, 0, out_item))) + y)
    if np.dtype(spec.dtype_in) == np.dtype(acc) and acc.kind == "f" and (sh, sw) == (1, 1):
        gemm_bytes = cast_w + y     # one product from the input into the output
    taps_cost = image / np.maximum(H * W, 1) * (1 + _SHORT_COST / c)
    im2col_cost = 1 + _SHORT_COST / reduction + _GATHER_COST / k
    gemm = (R, S) == (1, 1) and not padded
    method = np.where(gemm & (H * W >= GEMM_MIN_PIXELS), 0, np.where(taps_cost <= im2col_cost, 1, 2))
    choices = [gemm_bytes, taps_bytes, im2col_bytes]
    form = winograd_form(spec)
    if form is not None:
        cost = form.relative_cost(n, c, k, np.maximum(H, 1), np.maximum(W, 1), _SHORT_COST)
        method = np.where((method != 0) & (cost < np.minimum(taps_cost, im2col_cost)), 3, method)
        model = _winograd_bytes if form is winograd else _winograd_s2_bytes
        choices.append(model(n, c, k, H, W, cb) + y)
    direct = np.choose(method, choices)
    if np.dtype(spec.dtype_in) == np.int8 and np.dtype(spec.dtype_weight) == np.int8:
        # where MKL's int8 GEMM runs the products (parconv.blas_mkl_int) the block may take
        # "im2col" by blocks instead: int8 phase images, the int8 filters, a piece's copy and
        # its shifted copy, the int8 columns of blocks sized as the float ones, and int32 Sums
        # (scratch and block); its "taps" and "gemm" hold less than the float path's
        int_rows = np.maximum(MIN_ROWS, COLUMNS_BYTES // np.maximum(reduction * 4, 1))
        int_rows = np.where(int_rows >= H * W,
                            np.minimum(n, int_rows // np.maximum(H * W, 1)) * H * W,
                            np.minimum(H, np.maximum(1, int_rows // np.maximum(W, 1))) * W)
        int_im2col = (phases * n * Hq * Wq * c + 3 * k * c * R * S + int_rows * reduction
                      + 8 * k * int_rows + y)
        # the int8 products' choice (blasconv._costs): "gemm" where it applies, else the
        # cheaper of "taps" and "im2col" at their short-product cost
        int_taps = image / np.maximum(H * W, 1) * (1 + _SHORT_COST_INT / c)
        int_takes_im2col = ~(gemm & (H * W >= GEMM_MIN_PIXELS)) & (
            1 + _SHORT_COST_INT / reduction + _GATHER_COST / k < int_taps)
        direct = np.where(int_takes_im2col, np.maximum(direct, int_im2col), direct)
    if not exact_winograd_applies(spec):
        return direct
    # integers: the exact Winograd form where the model takes it and the data allow it, else
    # the direct method: budget the larger
    cost = winograd.relative_cost(n, c, k, np.maximum(H, 1), np.maximum(W, 1), _SHORT_COST)
    chosen = (method != 0) & (cost < np.minimum(taps_cost, im2col_cost))
    return np.where(chosen, np.maximum(direct, _winograd_exact_bytes(n, c, k, H, W) + y),
                    direct)


def _winograd_exact_bytes(n, c, k, H, W):
    """parconv.winograd_exact's allocations: the float32 filters (their float32 copy, U and
    the bound's |U|), and V, M and the channels-last input rows of the largest block of
    `winograd.tile_blocks` (`winograd_exact.BLOCK_BYTES`; not the 2 KiB of plane padding)."""
    tH, tW = -(-H // 2), -(-W // 2)
    tiles = np.maximum(winograd.MIN_TILES,
                       winograd_exact.BLOCK_BYTES // ((16 * (c + k) + 8 * c) * 4))
    image = tH * tW
    whole = tiles >= image
    images = -(-n // -(-n // np.maximum(tiles // np.maximum(image, 1), 1)))
    rows = -(-tH // -(-tH // np.maximum(1, tiles // np.maximum(tW, 1))))
    nb, rb = np.where(whole, images, 1), np.where(whole, tH, np.minimum(rows, tH))
    most = nb * rb * tW
    return 4 * (9 * k * c + 2 * 16 * k * c + 16 * c * most + 16 * k * most
                + nb * (2 * rb + 2) * (2 * tW + 2) * c)


def _winograd_s2_bytes(n, c, k, H, W, item: int):
    """parconv.winograd_s2's allocations: the transformed filters and the block buffers
    (`winograd_s2.block_elements`) of the largest block of `winograd.tile_blocks`."""
    tH, tW = -(-H // 2), -(-W // 2)
    per = item * sum(winograd_s2.block_elements(1, 1, tW, c, k).values()) // np.maximum(tW, 1)
    tiles = np.maximum(winograd.MIN_TILES, winograd_s2.BLOCK_BYTES // np.maximum(per, 1))
    image = tH * tW
    whole = tiles >= image
    images = -(-n // -(-n // np.maximum(tiles // np.maximum(image, 1), 1)))
    rows = -(-tH // -(-tH // np.maximum(1, tiles // np.maximum(tW, 1))))
    m, r = np.where(whole, images, 1), np.where(whole, tH, np.minimum(rows, tH))
    buffers = sum(winograd_s2.block_elements(m, r, tW, c, k).values())
    return item * (16 * k * c + buffers)


def _winograd_bytes(n, c, k, H, W, item: int):
    """parconv.winograd's allocations: the four parity parts of the padded input, the
    transformed filters and the block buffers of the largest block (`winograd.block_tiles`,
    `winograd.tile_blocks`)."""
    tH, tW = -(-H // 2), -(-W // 2)
    parts = 4 * item * n * c * (tH + 1) * (tW + 1)
    filters = 16 * item * k * c
    image = tH * (tW + 1)
    tiles = np.maximum(winograd.MIN_TILES,
                       winograd.BLOCK_BYTES // winograd.per_tile_bytes(c, k, item))
    whole = tiles >= image
    images = -(-n // -(-n // np.maximum(tiles // np.maximum(image, 1), 1)))
    rows = -(-tH // -(-tH // np.maximum(1, tiles // (tW + 1))))
    most = np.where(whole, images * image, rows * (tW + 1))
    return parts + filters + most * winograd.per_tile_bytes(c, k, item)
