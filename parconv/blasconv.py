"""The local convolution on BLAS matrix products, exact for integers.  Pure, no MPI.

Four methods, chosen per block by `choose_method` (all keep stride, dilation, asymmetric padding
and non-square shapes; none builds the full im2col matrix):

* ``"gemm"`` (1x1 filters, no padding, at least `GEMM_MIN_PIXELS` pixels): per image one (K x C) @ (C x H W)
  product straight on the NCHW data; no layout conversion at all.
* ``"taps"``: the input is converted once to channels-last *phase images* (one per stride
  phase, zero padding included): ``xq[a, b][n, i, j, c] = x[n, c, sh i + a - ph, sw j + b - pw]``.
  Tap (r, s) then reads phase ``(dh r mod sh, dw s mod sw)`` shifted by ``(dh r div sh,
  dw s div sw)``: on the flattened (n, i, j) rows of that image a constant row offset.  So each
  tap is one (rows x C) @ (C x K) product on a contiguous slice of the phase image, accumulated
  in place (BLAS beta = 1) into an output over the same (n, i, j) grid; the grid's extra columns
  and rows (``Wq - W`` and ``Hq - H`` of them) are computed and dropped.  Blocks of rows that
  stay in the cache; no copy per tap.

* ``"im2col"``: blocks of output rows of the im2col matrix, sized to `COLUMNS_BYTES`, gathered
  from the phase images, one product per block: for few channels (short per-tap products) or
  grids much larger than the output (small images: ``Hq Wq >> H W``).
* ``"winograd"`` (floating types, 3x3, dilation 1): stride 1 by F(2x2, 3x3), 2.25x fewer
  multiply-adds in 16 products per block of tiles (`parconv.winograd`); stride 2 by its
  polyphase form, F(2, 2) on the even taps and the odd tap direct per axis, 1.44x fewer in 16
  products (`parconv.winograd_s2`).

Every method writes its output blocks to the NCHW result while they are still in the cache.

Integers are computed exactly on floating-point BLAS: every partial sum of at most ``limit``
products of magnitude at most ``max|x| max|w|`` is an integer of magnitude at most ``2**24``
(float32) or ``2**53`` (float64), hence exact whatever order BLAS adds in.  The reduction (taps x channels)
is cut into groups of at most ``limit`` products; each group is summed in floating point and the
groups are added in the integer accumulator, which wraps around like int32 hardware.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import winograd, winograd_s2
from .blas import current_threads, matmul_into
from .errors import ParconvError
from .spec import ConvSpec

#: bytes of im2col columns gathered at once (rows of a block x columns of a piece; 4 MiB ran
#: 9-20 % faster at 1 thread on the stride-2 3x3 and the stem but slowed the int8 path at 2)
COLUMNS_BYTES = 16 << 20
#: bytes of output rows per block and BLAS thread of the "taps" method (the products stay in
#: the L2 cache; with fewer rows per thread, 2 threads ran 1.8x slower on a 56x56 layer)
TAP_BLOCK_BYTES = 2 << 20
#: fewest rows per block (shorter products run BLAS poorly)
MIN_ROWS = 256
#: every integer of magnitude at most this is exact in the floating type
EXACT_BELOW = {np.dtype(np.float32): 2 ** 24, np.dtype(np.float64): 2 ** 53}
#: the "gemm" method needs images at least this large (else one product per image is too small
#: for the cost of packing the filters, and "taps" runs one product over all images)
GEMM_MIN_PIXELS = 128


@dataclasses.dataclass(frozen=True)
class Tap:
    """Filter tap (r, s): the phase image it reads and its row offset there."""

    r: int
    s: int
    phase: tuple[int, int]
    shift: tuple[int, int]
    offset: int


@dataclasses.dataclass(frozen=True)
class Arithmetic:
    """How a block is summed: ``dtype`` of the products, at most ``limit`` products per exact
    group (None: no limit), ``out`` the type the groups are added in."""

    dtype: np.dtype
    limit: int | None
    out: np.dtype


def arithmetic(spec: ConvSpec, x: np.ndarray, w: np.ndarray) -> Arithmetic:
    """The products' type and group length for this block's data.  Local.

    Floats compute in their accumulator type.  Integers use float32 when groups of at least
    min(C R S, 128) products stay exact for the data's largest magnitudes, else float64, else
    (products beyond 2**53) exact int64 arithmetic without BLAS.
    """
    acc = np.dtype(spec.dtype_acc)
    if np.issubdtype(np.dtype(spec.dtype_in), np.floating):
        return Arithmetic(acc, None, acc)
    bound = _magnitude(x) * _magnitude(w)
    reduction = spec.in_channels * spec.kernel_size[0] * spec.kernel_size[1]
    for dtype in (np.dtype(np.float32), np.dtype(np.float64)):
        limit = EXACT_BELOW[dtype] // bound if bound else reduction
        if limit >= max(1, min(reduction, 128)) or (dtype == np.float64 and limit >= 1):
            if dtype == np.float64:
                # groups may pass 2**31: they are added in int64 (wrapped at the end)
                return Arithmetic(dtype, int(min(limit, reduction)), np.dtype(np.int64))
            if limit >= reduction:
                return Arithmetic(dtype, None, dtype)
            return Arithmetic(dtype, int(limit), acc)
    return Arithmetic(np.dtype(np.int64), None, np.dtype(np.int64))


def _magnitude(a: np.ndarray) -> int:
    """max |a| as a Python int (no overflow of abs(-128) in int8)."""
    if a.size == 0:
        return 0
    return max(-int(a.min()), int(a.max()), 0)


def taps(spec: ConvSpec) -> tuple[list[Tap], tuple[int, int]]:
    """The taps and the phase-image grid (Hq, Wq) = (H + max row shift, W + max column shift)."""
    (sh, sw), (dh, dw), (R, S), (H, W) = spec.stride, spec.dilation, spec.kernel_size, \
        spec.out_size
    Hq, Wq = H + (dh * (R - 1)) // sh, W + (dw * (S - 1)) // sw
    out = []
    for r in range(R):
        for s in range(S):
            shift = ((dh * r) // sh, (dw * s) // sw)
            out.append(Tap(r, s, ((dh * r) % sh, (dw * s) % sw), shift, shift[0] * Wq + shift[1]))
    return out, (Hq, Wq)


def phase_images(spec: ConvSpec, x: np.ndarray, dtype, phases, grid, tail: int = 0) -> dict:
    """Channels-last phase images of ``dtype``, zero where the padding is: per phase a flat
    (N Hq Wq + tail, C) array whose first N Hq Wq rows are the (N, Hq, Wq, C) image and whose
    ``tail`` rows are zeros."""
    (sh, sw), (ph, pw), (H_in, W_in) = spec.stride, spec.padding, spec.in_size
    Hq, Wq = grid
    N, C = spec.batch, spec.in_channels
    out = {}
    for a, b in phases:
        flat = np.zeros((N * Hq * Wq + tail, C), dtype=dtype)
        image = flat[:N * Hq * Wq].reshape(N, Hq, Wq, C)
        i0, i1 = _held(ph - a, sh, H_in, Hq)
        j0, j1 = _held(pw - b, sw, W_in, Wq)
        if i1 > i0 and j1 > j0:
            rows = slice(sh * i0 + a - ph, sh * (i1 - 1) + a - ph + 1, sh)
            cols = slice(sw * j0 + b - pw, sw * (j1 - 1) + b - pw + 1, sw)
            image[:, i0:i1, j0:j1, :] = x[:, :, rows, cols].transpose(0, 2, 3, 1)
        out[(a, b)] = flat
    return out


def _images(flat: dict, spec: ConvSpec, grid) -> dict:
    """The (N, Hq, Wq, C) views of `phase_images`' flat arrays."""
    size = spec.batch * grid[0] * grid[1]
    return {p: v[:size].reshape(spec.batch, *grid, spec.in_channels) for p, v in flat.items()}


def _held(pad: int, stride: int, extent: int, count: int) -> tuple[int, int]:
    """Indices i in [0, count) with 0 <= stride i - pad < extent, as a range."""
    i0 = max(0, -(-pad // stride))
    i1 = min(count, -(-(extent + pad) // stride))
    return i0, max(i0, i1)


def column_groups(channels: int, n_taps: int, limit: int | None, piece: int | None = None):
    """The reduction cut into exact groups of pieces of entries (tap, c0, c1).

    Entries cover every (tap, channel) once, tap-major; no group sums more than ``limit``
    products, no piece more than ``piece`` columns (None: one entry per piece, as the per-tap
    products take them).
    """
    step = min(channels, limit or channels, piece or channels)
    entries = [(t, c0, min(channels, c0 + step)) for t in range(n_taps)
               for c0 in range(0, channels, step)]
    groups = _pack(entries, limit)
    if piece is None:
        return [[[entry] for entry in group] for group in groups]
    return [_pack(group, piece) for group in groups]


def _pack(entries, bound):
    """Consecutive entries packed greedily into lists of at most ``bound`` columns."""
    packs, current, size = [], [], 0
    for entry in entries:
        width = entry[2] - entry[1]
        if current and bound is not None and size + width > bound:
            packs.append(current)
            current, size = [], 0
        current.append(entry)
        size += width
    if current:
        packs.append(current)
    return packs


def choose_method(spec: ConvSpec) -> str:
    """"gemm", "taps", "im2col" or "winograd" for this block (module docstring).

    "taps" computes ``Hq Wq / (H W)`` times the products and its products have inner dimension
    C; "im2col" computes exactly the products, with inner dimension C R S, but gathers C R S
    values per output row (cost relative to the products about `_GATHER_COST` / K);
    "winograd" (where it applies) costs `winograd.relative_cost`.  The cheapest wins.
    """
    (H, W), (R, S), C, K = spec.out_size, spec.kernel_size, spec.in_channels, spec.out_channels
    if _gemm_applies(spec) and H * W >= GEMM_MIN_PIXELS:
        return "gemm"
    _, (Hq, Wq) = taps(spec)
    costs = {"taps": (Hq * Wq) / (H * W) * (1 + _SHORT_COST / C),
             "im2col": 1 + _SHORT_COST / (C * R * S) + _GATHER_COST / K}
    form = winograd_form(spec)
    if form is not None:
        costs["winograd"] = form.relative_cost(spec.batch, C, K, H, W, _SHORT_COST)
    return min(costs, key=costs.get)


def winograd_form(spec: ConvSpec):
    """The module of the "winograd" method for this block (`parconv.winograd` for stride 1,
    `parconv.winograd_s2` for stride 2), or None where neither applies."""
    return next((form for form in (winograd, winograd_s2) if form.applies(spec)), None)


def channels_first(spec: ConvSpec) -> bool:
    """Whether "im2col" gathers from channel-first images: runs of W values are longer than
    runs of C."""
    return spec.in_channels * 4 <= spec.out_size[1]


def _gemm_in_place(spec: ConvSpec, x: np.ndarray, arith: Arithmetic, y: np.ndarray) -> bool:
    """Whether "gemm" runs as one product from ``x`` into ``y``: one group, stride 1, and
    ``x`` C-contiguous of the products' type (blas_workspace: floats)."""
    return (arith.limit is None and arith.out == y.dtype == arith.dtype
            and tuple(spec.stride) == (1, 1) and x.dtype == arith.dtype and x.flags.c_contiguous)


def _aliased_output(arith: Arithmetic, y: np.ndarray) -> bool:
    """Whether "gemm" sums straight into ``y``'s bytes reinterpreted as the products' type:
    one exact group whose floating sums become integers of the same size (float32 -> int32)."""
    return (arith.limit is None and arith.out == arith.dtype and y.dtype.kind in "iu"
            and y.dtype.itemsize == arith.dtype.itemsize and y.flags.c_contiguous)


def _gemm_applies(spec: ConvSpec) -> bool:
    return (tuple(spec.kernel_size) == (1, 1) and tuple(spec.padding) == (0, 0)
            and tuple(spec.padding_end) == (0, 0))


#: relative cost of products with inner dimension d: 1 + _SHORT_COST / d (measured)
_SHORT_COST = 4.0
#: cost of gathering one im2col value, in multiply-adds of the product (measured)
_GATHER_COST = 16.0


class _Sums:
    """Adds the exact groups of one block of the output into ``out`` (``out`` has the
    arithmetic's ``out`` type: the product type for one group, else the integer accumulator).
    Buffers hold ``size`` elements: blocks of any shape up to that size."""

    def __init__(self, arith: Arithmetic, size: int):
        self.arith = arith
        self.scratch = np.empty(size, dtype=arith.dtype)
        self.buffer = np.empty(size, dtype=arith.dtype) if arith.out != arith.dtype else None
        self.ints = np.empty(size, dtype=arith.out) if self.buffer is not None else None
        self.size, self._block = size, None

    def block(self, shape) -> np.ndarray:
        """A contiguous output block of ``shape`` (reused)."""
        if self._block is None:
            self._block = np.empty(self.size, dtype=self.arith.out)
        return self._view(self._block, shape)

    @staticmethod
    def _view(buffer: np.ndarray, shape) -> np.ndarray:
        return buffer[:int(np.prod(shape))].reshape(shape)

    def run(self, out: np.ndarray, groups, products) -> None:
        """``products(target, group, scratch, first)`` sums one group into ``target``
        (overwriting it when ``first``)."""
        scratch = self._view(self.scratch, out.shape)
        if self.buffer is None:
            for index, group in enumerate(groups):
                products(out, group, scratch, first=index == 0)
            return
        for index, group in enumerate(groups):
            target = self._view(self.buffer, out.shape)
            products(target, group, scratch, first=True)
            if index == 0:
                np.copyto(out, target, casting="unsafe")     # exact integers
            else:
                ints = self._view(self.ints, out.shape)
                np.copyto(ints, target, casting="unsafe")
                np.add(out, ints, out=out)                    # wraps like int32 hardware


def conv_gemm(spec: ConvSpec, x: np.ndarray, w: np.ndarray, arith: Arithmetic,
              y: np.ndarray) -> None:
    """1x1, unpadded: per image (K x C) @ (C x H W) on the NCHW data, into ``y``.  Floats of
    stride 1 on C-contiguous data: one stacked product for all images, no buffer at all."""
    (sh, sw), (H, W), C, K = spec.stride, spec.out_size, spec.in_channels, spec.out_channels
    wm = w.reshape(K, C).astype(arith.dtype, copy=False)
    if _gemm_in_place(spec, x, arith, y):
        np.matmul(wm, x.reshape(spec.batch, C, H * W), out=y.reshape(spec.batch, K, H * W))
        return
    groups = column_groups(C, 1, arith.limit)
    direct = arith.out == y.dtype
    # one group of float32 sums into int32: the product is written into the output image's
    # own bytes and cast there in place (exact integers, theory.md 1.5), so no block buffer
    # and no second pass through one (2 threads: int8 / float32 0.83 -> 0.92 on a 1x1 layer)
    aliased = _aliased_output(arith, y)
    sums = None if aliased else _Sums(arith, K * H * W)
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
            np.matmul(wm, flat, out=sums_view.reshape(K, H * W))
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
    flat = phase_images(spec, x, arith.dtype, {t.phase for t in tap_list}, (Hq, Wq), tail)
    wk = _tap_major(w, arith.dtype)
    groups = column_groups(C, len(tap_list), arith.limit)
    rows = max(MIN_ROWS, TAP_BLOCK_BYTES * current_threads() // (K * arith.dtype.itemsize))
    # whole images (their grid rows Hq included) or rows h0:h1 of one image
    blocks = [(n0, n1, h0, h1, (h0, h1) == (0, H),
               (n1 - n0) * Hq * Wq if (h0, h1) == (0, H) else (h1 - h0) * Wq)
              for n0, n1, h0, h1 in _pixel_blocks(N, H, Wq, rows, Hq)]
    sums = _Sums(arith, K * max(block[-1] for block in blocks))
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
    from channel-first phase images: runs of W values instead of runs of C (few channels)."""
    tap_list, grid = taps(spec)
    N, C, K, (H, W) = spec.batch, spec.in_channels, spec.out_channels, spec.out_size
    images = _images(phase_images(spec, x, arith.dtype, {t.phase for t in tap_list}, grid),
                     spec, grid)
    if channels_first:
        images = {p: np.ascontiguousarray(v.transpose(3, 0, 1, 2)) for p, v in images.items()}
    wk = _tap_major(w, arith.dtype)
    item = arith.dtype.itemsize
    groups = column_groups(C, len(tap_list), arith.limit,
                           piece=max(1, COLUMNS_BYTES // (MIN_ROWS * item)))
    widest = max(sum(c1 - c0 for _, c0, c1 in piece) for group in groups for piece in group)
    weights = {}
    for group in groups:
        for piece in group:
            # (K, columns of the piece): copies of runs of c1 - c0 filter values
            weights[id(piece)] = np.concatenate([wk[tap_list[t].r, tap_list[t].s, :, c0:c1]
                                                 for t, c0, c1 in piece], axis=1)
    blocks = _pixel_blocks(N, H, W, max(MIN_ROWS, COLUMNS_BYTES // (widest * item)))
    block_rows = max((n1 - n0) * (h1 - h0) * W for n0, n1, h0, h1 in blocks)
    columns = np.empty(block_rows * widest, dtype=arith.dtype)
    sums = _Sums(arith, block_rows * K)
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


def _tap_major(w: np.ndarray, dtype) -> np.ndarray:
    """The filters as (R, S, K, C) of ``dtype``: per tap a C-contiguous K x C matrix whose
    transpose BLAS reads as is (a view for 1x1 filters; K C R S -> R S K C moves runs of R S
    values, 2-3x cheaper than R S C K)."""
    return np.ascontiguousarray(w.transpose(2, 3, 0, 1), dtype=dtype)


def _pixel_blocks(N: int, H: int, W: int, rows: int, Hq: int | None = None
                  ) -> list[tuple[int, int, int, int]]:
    """(n0, n1, h0, h1): whole images when ``rows`` grid positions hold one (an image has
    ``Hq`` W positions, default H W), else rows of one image."""
    size = (Hq or H) * W
    if rows >= size:
        step = rows // size
        return [(n, min(N, n + step), 0, H) for n in range(0, N, step)]
    step = max(1, rows // W)
    return [(n, n + 1, h, min(H, h + step)) for n in range(N) for h in range(0, H, step)]


def conv2d_blas(spec: ConvSpec, x: np.ndarray, w: np.ndarray, method: str | None = None
                ) -> tuple[np.ndarray, dict]:
    """The block's convolution (N, K, H, W) in ``spec.dtype_acc`` and how it was computed
    (``method``, ``compute_dtype``, ``exact_group``: products per exact integer group or None).
    ``x`` and ``w`` must already have the spec's shapes and types.  Local.

    Sums reach ``y`` through an unsafe cast: exact integers (below 2**24 / 2**53 for one
    group) or int32/int64 sums, and int64 -> int32 keeps the low 32 bits (two's-complement
    wrap-around, like the hardware).
    """
    arith = arithmetic(spec, x, w)
    method = method or choose_method(spec)
    if method == "gemm" and not _gemm_applies(spec):
        raise ParconvError(f"method 'gemm' needs a 1x1 unpadded block, got {spec.describe()}")
    if method == "winograd" and winograd_form(spec) is None:
        raise ParconvError("method 'winograd' needs a floating-point 3x3 block of stride 1 or 2 "
                           f"and dilation 1, got {spec.describe()}")
    y = np.empty(spec.output_shape, dtype=spec.dtype_acc)
    if method == "winograd":
        winograd_form(spec).conv_winograd(spec, x, w, arith.dtype, y)
    elif method == "gemm":
        conv_gemm(spec, x, w, arith, y)
    elif method == "taps":
        conv_taps(spec, x, w, arith, y)
    elif method == "im2col":
        conv_im2col(spec, x, w, arith, y, channels_first=channels_first(spec))
    else:
        raise ParconvError(f"method must be gemm, taps, im2col or winograd, got {method!r}")
    return y, {"method": method, "compute_dtype": arith.dtype.name, "exact_group": arith.limit}
