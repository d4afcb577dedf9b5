"""The tile executor: runs a convolution tile by tile through a capacity-checked scratchpad and
accumulator, the way Gemmini's conv loop does, and counts what moves.  Pure numpy, no MPI.

A schedule is a sequence of `TileCall` records (one per ``loop_conv_ws`` call for the vendor loop,
one per tile for parconv's tilings; see `parconv.gemmini.vendor.run.vendor_calls` and
`parconv.gemmini.tiled.choose.tiling_calls`).  For each call the executor (in
`parconv.gemmini.schedule_check`, on arrays over all the calls at once)

1. checks the tile's scratchpad rows (input window with its zero padding, weights) against the
   per-tile limit and its accumulator rows against the accumulator limit (rows of ``dim`` elements,
   channels rounded up to ``dim`` where they index a row, gemmini.md section 4.2 applied to the
   block really held).  A tile that does not fit raises `ParconvError`: never a silent overflow;
2. moves the input window (only in-image positions cost DRAM bytes: padding is zero-filled) and
   the weight block in, unless the schedule says the block is still resident (``"reuse"``: checked,
   the block must be in one of the two scratchpad halves with exactly the same window) or the mode
   is ``"auto"`` and the previous tile used the identical block ("consecutive reuse", theory.md 6.3)
3. on the first visit of an output block loads the bias (stride-0 mvins: one ``dim``-wide row of
   ``bias_bytes`` per ``dim`` output pixels of an output row, gemmini.md 4.5), or reads back the
   spilled partial sums (``acc_bytes`` each) on a later visit;
4. checks that every input position the tile reads lies in its window (on the window's grid:
   the conv stride and the dilation as scratchpad strides);
5. when the next call works on another output block, moves the block out: as final output
   (``output_bytes`` per element) if its reduction is complete, else as a partial-sum spill
   (``acc_bytes`` per element, stream ``"psum"``).

Streams: ``input``, ``weight``, ``bias``, ``output`` (final outputs) and ``psum`` (partial-sum spills
and their read-backs, zero for output-stationary schedules such as the vendor loop); ``total`` is
their sum.  Cycles per call are ``max(exec_cycles, bytes_of_the_call / bw_eff)`` where the bytes
of a call are everything it moves in and the stores issued right after it (gemmini.md 0, 4.7);
they are summed once all calls are counted.

The data: once the schedule is checked, every tile's product (implicit im2col of its window times
its weight block) is computed from one zero-padded copy of the input (the input itself where
int8 products need no padding), exactly: int8 x int8 summed
into the int32 accumulator, as int8 products with int32 sums on MKL's int8 GEMM where it is
ready (`parconv.blas_exact.integer_products`, the numpy kernel's products: the filters shifted
to uint8 once, the input copy kept in int8), else on float32 BLAS in channel groups whose partial
sums stay below 2**24 (max|x| max|w| per product), else float64 (exact below 2**53); those
groups are summed in float32 when the whole reduction stays below 2**24 and no bias is added,
else in int32 (wrap-around).  Integer sums are
exact, so the order of the products changes no bit, and the numpy work is grouped: the tiles of
one (C, R, S) block whose (N, H, W, K) blocks tile a rectangle are one product over it
(`parconv.gemmini.rectangles`; the capacity checks, the residency and the counters above stay per
tile).  Floating-point tiles are multiplied one by one, in schedule order.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import ParconvError
from ..spec import ConvSpec
from .. import blas_mkl
from ..blas import matmul, matmul_into
from ..blas_exact import integer_products, magnitude
from ..blas_mkl_int import shifted
from .call_rules import exec_cycles as call_exec_cycles, passes as call_passes
from .rectangles import rectangles, schedule_rectangles
from .schedule_check import TileCall, TileSchedule, check_schedule, max_taps, tile_blocks

__all__ = ["STREAMS", "ExecutionStats", "TileCall", "TileExecutor"]

STREAMS = ("input", "weight", "bias", "output", "psum")


@dataclasses.dataclass
class ExecutionStats:
    """Counters of one execution, JSON-ready through `to_dict`."""

    dram_bytes: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(STREAMS, 0))
    mvin_rows: dict = dataclasses.field(
        default_factory=lambda: dict.fromkeys(("input", "weight", "bias", "psum"), 0))
    mvout_rows: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(("output", "psum"), 0))
    calls: int = 0
    passes: int = 0
    exec_cycles: int = 0
    cycles: float = 0.0
    macs: int = 0
    max_spad_rows: int = 0
    max_acc_rows: int = 0
    peak: int = 256
    #: the products' operand type: "int8" (int8 products with int32 sums on MKL's int8 GEMM),
    #: else the float type of the BLAS products (`TileExecutor._product_type`)
    products: str = ""

    @property
    def total_bytes(self) -> int:
        return int(sum(self.dram_bytes.values()))

    @property
    def utilization(self) -> float:
        return self.macs / (self.peak * self.cycles) if self.cycles else 0.0

    def to_dict(self) -> dict:
        return {"dram_bytes": {**{k: int(v) for k, v in self.dram_bytes.items()},
                               "total": self.total_bytes},
                "mvin_rows": dict(self.mvin_rows), "mvout_rows": dict(self.mvout_rows),
                "calls": self.calls, "passes": self.passes, "exec_cycles": self.exec_cycles,
                "cycles": self.cycles, "utilization": self.utilization, "macs": self.macs,
                "max_spad_rows": self.max_spad_rows, "max_acc_rows": self.max_acc_rows,
                "products": self.products}


class TileExecutor:
    """Runs schedules of one layer on the Gemmini model.  Local.

    Parameters
    ----------
    spec : ConvSpec
        The layer (or local block; its padding may be asymmetric).
    config : GemminiConfig
        Capacities (per-tile limits ``spad_rows_limit`` and ``acc_rows_limit``, rows of ``dim``
        elements), element sizes of the streams and ``bw_eff``.
    """

    #: largest im2col piece of a grouped product, in elements (see ``self.piece``)
    PIECE_ELEMENTS = 1 << 20
    #: output pixels per image below which a piece's images share one product
    FOLD_BELOW = 1024
    #: integers below this are exact in float32
    FLOAT32_EXACT = 2 ** 24

    def __init__(self, spec: ConvSpec, config) -> None:
        self.spec = spec
        self.config = config
        self.floating = np.issubdtype(np.dtype(spec.dtype_in), np.floating)
        self.compute = np.dtype(spec.dtype_acc) if self.floating else np.dtype(np.float64)
        if not self.floating:
            x_max = max(abs(int(np.iinfo(spec.dtype_in).min)), int(np.iinfo(spec.dtype_in).max))
            w_max = max(abs(int(np.iinfo(spec.dtype_weight).min)),
                        int(np.iinfo(spec.dtype_weight).max))
            terms = spec.in_channels * spec.kernel_size[0] * spec.kernel_size[1]
            # one accumulator value = spilled int32 (< 2**31) + this tile's sum: exact in float64
            if terms * x_max * w_max + 2 ** 31 >= 2 ** 53:
                raise ParconvError(f"in_channels x kernel taps = {terms} too large for the exact "
                                   f"float64 path of the executor (must keep sums below 2**53)")

    # ---- public -------------------------------------------------------------------------------
    def run(self, calls, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None
            ) -> tuple[np.ndarray, ExecutionStats]:
        """Execute `calls` on data ``x`` (N, C, H_in, W_in) and ``w`` (K, C, R, S).  Local.

        Returns ``y`` (N, K, H, W) in ``spec.dtype_acc`` (plus ``bias`` when given, int32
        wrap-around for integers) and the counters.  Every output element must be finished by
        the schedule (else `ParconvRuntimeError`).
        """
        spec = self.spec
        calls = calls if isinstance(calls, TileSchedule) else list(calls)
        x, w = np.asarray(x), np.asarray(w)
        # max|x| max|w|: one pass over each operand for every decision below
        scale = magnitude(x) * magnitude(w)
        self.products = self._product_type(calls, x, w, scale)
        # products per exact float32 sum (no limit for float64: __init__ checked 2**53)
        self.chunk = self.FLOAT32_EXACT // scale if self.products == np.float32 and \
            not self.floating and scale else None
        # the accumulator: float32 when the whole reduction of an output is exact in it and no
        # bias is added (one cast at the end), else the accumulator type itself (int32 sums
        # wrap around like the hardware; floats: their type)
        self.acc_type = self.products if self.floating or self.products == np.float32 and \
            bias is None and self._exact_in_float32(self.spec.in_channels
                                                    * self.spec.kernel_size[0]
                                                    * self.spec.kernel_size[1], x, w, scale) \
            else np.dtype(self.spec.dtype_acc)
        # im2col elements of one product piece: at most a quarter of the input's and the
        # weights' together (the workspace stays within the node's footprint,
        # parconv.plan.footprint, which counts both operands at 8 bytes an element), at most 1 Mi
        self.piece = min(max((x.size + w.size) // 4, 1 << 14), self.PIECE_ELEMENTS)
        self._stats = ExecutionStats(peak=self.config.dim ** 2, products=self.products.name)
        record = check_schedule(calls, spec, self.config, bias is not None, self._stats)
        self._count_cycles(record)
        return self._compute(calls, x, w, bias), self._stats

    def _product_type(self, calls, x: np.ndarray, w: np.ndarray, scale: int | None = None
                      ) -> np.dtype:
        """float32 for integer tiles when the taps of one input channel of every tile sum to
        an integer below 2**24 (at most max|x| max|w| per product, nR nS products): the
        reduction is then cut into float32 products of whole channels that are exact, twice
        as fast as float64 (`_product`).  int8 tiles with int32 sums take int8 products
        instead where MKL's int8 GEMM is ready (`parconv.blas_exact.integer_products`):
        exact, no channel groups.  Otherwise ``self.compute``."""
        # MKL loaded here where $PARCONV_BLAS allows it (`blas_mkl.enabled`), so that the
        # choice depends on the machine and the setting, not on what the process ran before
        if np.dtype(self.spec.dtype_in) == np.int8 and blas_mkl.enabled() \
                and integer_products(self.spec):
            return np.dtype(np.int8)
        if self.compute != np.float64 or np.issubdtype(np.dtype(self.spec.dtype_in),
                                                       np.floating):
            return self.compute
        taps = max_taps(calls)
        return np.dtype(np.float32) if self._exact_in_float32(taps, x, w, scale) \
            else self.compute

    @staticmethod
    def _exact_in_float32(products: int, x: np.ndarray, w: np.ndarray,
                          scale: int | None = None) -> bool:
        """Whether sums of ``products`` products of the data are integers below 2**24
        (``scale``: max|x| max|w| when already known)."""
        if scale is None:
            scale = magnitude(x) * magnitude(w)
        return products * scale <= TileExecutor.FLOAT32_EXACT

    # ---- cycles ------------------------------------------------------------------------------
    def _count_cycles(self, record: np.ndarray) -> None:
        """Execute cycles, passes and ``max(exec, bytes / bw_eff)`` of every call at once."""
        st, cfg = self._stats, self.config
        if not len(record):
            return
        sizes, moved = record[:, :8].T, record[:, 8]
        exec_cycles = np.asarray(call_exec_cycles(*sizes, cfg.dim), dtype=np.int64)
        st.exec_cycles += int(exec_cycles.sum())
        st.passes += int(np.asarray(call_passes(*sizes, cfg.dim)).sum())
        st.cycles += float(np.maximum(exec_cycles, moved / cfg.bw_eff).sum())

    # ---- compute ------------------------------------------------------------------------------
    def _compute(self, calls: list, x: np.ndarray, w: np.ndarray, bias) -> np.ndarray:
        """The output of the checked schedule: every tile's product of its window and weights.

        The input is held once, zero-padded, so a tile's window is a strided view of it
        (`check_schedule` proved the tile reads inside its window).  For integers the sums are
        exact, so the order of the products changes no bit: tiles that share a weight block
        (the same C, R, S blocks) and whose output blocks tile a rectangle are one product over
        that rectangle (`parconv.gemmini.rectangles`; an implicit im2col in pieces of ``self.piece`` elements).
        Floating-point tiles are multiplied one by one in schedule order."""
        spec = self.spec
        (ph, pw), (sh, sw), (dh, dw) = spec.padding, spec.stride, spec.dilation
        (H, W), (R, S), (H_in, W_in) = spec.out_size, spec.kernel_size, spec.in_size
        rows = max(ph + H_in, sh * (H - 1) + dh * (R - 1) + 1)
        cols = max(pw + W_in, sw * (W - 1) + dw * (S - 1) + 1)
        # int8 products take the filters shifted to uint8 once (MKL's unsigned left operand)
        self._w = shifted(w) if self.products == np.int8 else \
            w.astype(self.products, copy=False)
        if not self.floating:
            return self._compute_slabs(calls, x, bias, rows, cols)
        if (rows, cols) == (H_in, W_in):
            self._x = x.astype(self.products, copy=False)
        else:
            self._x = np.zeros((x.shape[0], x.shape[1], rows, cols), self.products)
            np.copyto(self._x[:, :, ph:ph + H_in, pw:pw + W_in], x, casting="unsafe")
        blocks = tile_blocks(calls)
        whole = tuple((0, e) for e in (spec.batch, H, W, spec.out_channels, spec.in_channels,
                                       R, S))
        # one product over the whole layer in one channel group writes every output once
        self._assign = bias is None and blocks == [whole] and self.acc_type.kind == "f" and (
            self.chunk is None or spec.in_channels * R * S <= self.chunk)
        self._y = np.empty((spec.batch, spec.out_channels, H, W), dtype=self.acc_type) \
            if self._assign else np.zeros((spec.batch, spec.out_channels, H, W), self.acc_type)
        if bias is not None:
            self._y += np.asarray(bias).astype(self.acc_type)[:, None, None]
        for block in blocks:
            self._product(*block)
        y = self._y if self._y.dtype == np.dtype(spec.dtype_acc) else \
            self._y.astype(spec.dtype_acc)
        self._x = self._w = self._y = None
        return y

    def _compute_slabs(self, calls: list, x: np.ndarray, bias, rows: int, cols: int
                       ) -> np.ndarray:
        """`_compute` for integer layers, a few images at a time: each slab of images is
        converted (and zero-padded) into one reused buffer and its outputs are summed in
        another, so the converted input and the accumulator never exist for the whole batch
        (less memory traffic).  Integer sums are exact, and every output element still
        receives the products of the same tiles, so the result is the same bits."""
        spec = self.spec
        (ph, pw), (H_in, W_in) = spec.padding, spec.in_size
        N, C, K = spec.batch, spec.in_channels, spec.out_channels
        (H, W), (R, S) = spec.out_size, spec.kernel_size
        blocks = schedule_rectangles(calls) if isinstance(calls, TileSchedule) else \
            rectangles(tile_blocks(calls))
        whole = tuple((0, e) for e in (N, H, W, K, C, R, S))
        # one product writes every output once: float sums or int8 products (beta = 0)
        self._assign = bias is None and blocks == [whole] and (
            self.acc_type.kind == "f" or self.products == np.int8) and (
            self.chunk is None or C * R * S <= self.chunk)
        out_type = np.dtype(spec.dtype_acc)
        # images per slab: about two product pieces of converted input
        slab = min(N, max(1, 2 * self.piece // max(C * rows * cols, 1)))
        # zero padding around the copied images (none to keep when they fill the buffer)
        filled = (rows, cols) == (H_in, W_in) and (ph, pw) == (0, 0)
        # nothing to convert or pad: the tiles read the images themselves
        direct = filled and x.dtype == self.products
        x_buffer = None if direct else \
            (np.empty if filled else np.zeros)((slab, C, rows, cols), self.products)
        # float32 sums of a slab into y's own bytes (int32: the same size), cast there in place
        aliased = self.acc_type != out_type and self.acc_type.itemsize == out_type.itemsize
        if self.acc_type == out_type:         # int32 sums (wrap-around) straight into y
            y = (np.empty if self._assign else np.zeros)((N, K, H, W), out_type)
            y_buffer = None
        else:                                 # float32 sums of a slab, then cast into y
            y = np.empty((N, K, H, W), out_type)
            y_buffer = y.view(self.acc_type) if aliased else np.empty((slab, K, H, W),
                                                                      self.acc_type)
        for a in range(0, N, slab):
            b = min(a + slab, N)
            if direct:
                self._x = x[a:b]
            else:
                self._x = x_buffer[:b - a]
                np.copyto(self._x[:, :, ph:ph + H_in, pw:pw + W_in], x[a:b], casting="unsafe")
            self._y = y[a:b] if y_buffer is None else \
                y_buffer[a:b] if aliased else y_buffer[:b - a]
            if y_buffer is not None and not self._assign:
                self._y.fill(0)
            if bias is not None:
                self._y += np.asarray(bias).astype(self.acc_type)[:, None, None]
            for n, h, w, k, c, r, s in blocks:
                n0, n1 = max(n[0], a), min(n[1], b)
                if n0 < n1:
                    self._product((n0 - a, n1 - a), h, w, k, c, r, s)
            if aliased:
                # float32 sums of integers are exact below 2**24: a cast, no wrap-around
                # needed; element i is read before it is written (1-d, same bytes)
                ints = y[a:b].reshape(-1)
                np.copyto(ints, ints.view(self.acc_type), casting="unsafe")
            elif y_buffer is not None:
                np.copyto(y[a:b], self._y, casting="unsafe")
        self._x = self._w = self._y = None
        return y

    def _product(self, n, h, w, k, c, r, s) -> None:
        """Add the products of the output rectangle ``n x k x h x w`` over the taps ``c x r x s``
        (ranges): weights (nK, nC nR nS) times the im2col (nC nR nS, nN nH nW), in pieces of
        whole images or output rows, and cut into channel groups whose float32 sums are exact
        (``self.chunk`` products at most)."""
        nR, nS, nC = r[1] - r[0], s[1] - s[0], c[1] - c[0]
        groups = 1 if self.chunk is None else -(-nC * nR * nS // self.chunk)
        size = -(-nC // groups)
        for c0 in range(c[0], c[1], size):
            self._product_piece(n, h, w, k, (c0, min(c0 + size, c[1])), r, s)

    def _product_piece(self, n, h, w, k, c, r, s) -> None:
        spec = self.spec
        (sh, sw), (dh, dw) = spec.stride, spec.dilation
        nH, nW = h[1] - h[0], w[1] - w[0]
        nR, nS, nC = r[1] - r[0], s[1] - s[0], c[1] - c[0]
        depth = nR * nS * nC
        weights = self._w[k[0]:k[1], c[0]:c[1], r[0]:r[1], s[0]:s[1]].reshape(-1, depth)
        origin = self._x[:, c[0]:, sh * h[0] + dh * r[0]:, sw * w[0] + dw * s[0]:]
        bN, bc, bR, bC = origin.strides
        # a piece holds at most self.piece elements of im2col and of products
        rows = max(depth, k[1] - k[0])
        step_n = max(1, self.piece // max(nH * nW * rows, 1))
        step_h = nH if step_n > 1 else max(1, self.piece // max(nW * rows, 1))
        for a in range(n[0], n[1], step_n):
            b = min(a + step_n, n[1])
            for i in range(0, nH, step_h):
                j = min(i + step_h, nH)
                if (j - i) * nW >= self.FOLD_BELOW or b - a == 1:
                    # (c, r, s) x (h, w) per image: the image's own rows, no transposition
                    # (one image: the same product as folding, without the transposed add)
                    view = np.lib.stride_tricks.as_strided(
                        origin[a:, :, sh * i:], shape=(b - a, nC, nR, nS, j - i, nW),
                        strides=(bN, bc, bR * dh, bC * dw, bR * sh, bC * sw), writeable=False)
                    target = self._y[a:b, k[0]:k[1], h[0] + i:h[0] + j, w[0]:w[1]]
                    patches = view.reshape(b - a, depth, -1)
                    if self.products == np.int8:
                        self._int8_into(target, weights, patches, self._assign)
                    elif self._assign and target.flags.c_contiguous:
                        np.matmul(weights, patches, out=target.reshape(b - a, -1, patches.shape[2]))
                    elif self._assign:        # each output written once: the buffer is unset
                        target[...] = np.matmul(weights, patches).reshape(target.shape)
                    else:
                        _accumulate(target, np.matmul(weights, patches).reshape(target.shape))
                    continue
                # small images: (c, r, s) x (n, h, w), one product for all images of the piece
                view = np.lib.stride_tricks.as_strided(
                    origin[a:, :, sh * i:], shape=(nC, nR, nS, b - a, j - i, nW),
                    strides=(bc, bR * dh, bC * dw, bN, bR * sh, bC * sw), writeable=False)
                patches = view.reshape(depth, -1)
                product = _int8_product(weights, patches) if self.products == np.int8 \
                    else weights @ patches
                product = product.reshape(-1, b - a, j - i, nW)
                target = self._y[a:b, k[0]:k[1], h[0] + i:h[0] + j, w[0]:w[1]]
                if self._assign:
                    target[...] = product.transpose(1, 0, 2, 3)
                else:
                    _accumulate(target, product.transpose(1, 0, 2, 3))

    @staticmethod
    def _int8_into(target: np.ndarray, weights: np.ndarray, patches: np.ndarray,
                   assign: bool = False) -> None:
        """``target += weights @ patches`` (``assign``: ``target = ...``) per image on MKL's
        int8 GEMM (`parconv.blas`): ``target`` (n, K, h, w) int32, ``weights`` (K, depth) uint8
        standing for the int8 filters, ``patches`` (n, depth, h w) int8.  In place where the
        (h, w) block of an image is one run of rows (whole output rows: one call, beta = 1 or
        0), else through a product buffer and one addition or copy."""
        try:
            rows = target.reshape(target.shape[0], target.shape[1], -1, copy=False)
        except ValueError:            # part of the output rows: (h, w) is not one stride
            product = _int8_product(weights, patches)
            if assign:
                target[...] = product.reshape(target.shape)
            else:
                target += product.reshape(target.shape)
            return
        matmul_into(rows, weights, patches, accumulate=not assign)


def _int8_product(weights: np.ndarray, patches: np.ndarray) -> np.ndarray:
    """``weights @ patches`` as a new int32 array: uint8 ``weights`` standing for int8 filters
    (`parconv.blas_mkl_int.shifted`), int8 ``patches`` (2-d or stacked), on MKL's int8 GEMM."""
    product = np.empty(patches.shape[:-2] + (weights.shape[0], patches.shape[-1]), np.int32)
    matmul(weights, patches, product)
    return product


def _accumulate(target: np.ndarray, product: np.ndarray) -> None:
    """``target += product``; an integer target receives the exact integer products with int32
    wrap-around (float32 products are below 2**24, float64 ones below 2**53: via int64)."""
    if target.dtype.kind == "f" or product.dtype == target.dtype:
        target += product
    elif product.dtype == np.float32:
        target += product.astype(target.dtype)
    else:
        target += product.astype(np.int64).astype(target.dtype)
