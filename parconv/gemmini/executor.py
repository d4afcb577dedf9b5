"""The tile executor: runs a convolution tile by tile through a capacity-checked scratchpad and
accumulator, the way Gemmini's conv loop does, and counts what moves.  Pure numpy, no MPI.

A schedule is a sequence of `TileCall` records (one per ``loop_conv_ws`` call for the vendor loop,
one per tile for parconv's tilings; see `parconv.gemmini.vendor.run.vendor_calls` and
`parconv.gemmini.tiled.choose.tiling_calls`).  For each call the executor

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
4. computes the tile exactly: one matrix product per tile (implicit im2col of the resident window
   times the resident weights), int8 x int8 summed exactly into the int32 accumulator with
   wrap-around: float32 BLAS when every tile's partial sums stay below 2**24 (the data's
   max|x| max|w| times the tile's nR nS nC products), else float64 (exact below 2**53).  Tiles that multiply the same window by different
   output-channel blocks (the vendor's poch tiles) share one product over all their channels
   (numpy work grouped; checks and counters stay per tile);
5. when the next call works on another output block, moves the block out: as final output
   (``output_bytes`` per element) if its reduction is complete, else as a partial-sum spill
   (``acc_bytes`` per element, stream ``"psum"``).

Streams: ``input``, ``weight``, ``bias``, ``output`` (final outputs) and ``psum`` (partial-sum spills
and their read-backs, zero for output-stationary schedules such as the vendor loop); ``total`` is
their sum.  Cycles per call are ``max(exec_cycles, bytes_of_the_call / bw_eff)`` where the bytes
of a call are everything it moves in and the stores issued right after it (gemmini.md 0, 4.7).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import numpy as np

from ..blas import matmul_into
from ..errors import ParconvError, ParconvRuntimeError
from ..spec import ConvSpec
from .call_rules import exec_cycles as call_exec_cycles, passes as call_passes

STREAMS = ("input", "weight", "bias", "output", "psum")


@dataclasses.dataclass(frozen=True, slots=True)
class TileCall:
    """One tile of a schedule.  Ranges are half-open over the 7 loops of the layer.

    ``row0``/``col0`` are the image positions held in the first scratchpad row/column of the
    input window (negative inside the top/left padding), ``rows``/``cols`` the number held
    (padding included), ``step`` the DRAM stride between held positions (2 under downsample).
    Keys identify blocks (block indices, theory.md 6.3); modes are ``"load"`` (always move in, as
    the library does on every call), ``"reuse"`` (the block must still be resident: a NULL
    pointer) or ``"auto"`` (move in unless the previous tile used the identical block).
    ``last`` says the output block's reduction is complete after this call; ``mpp`` is the
    first-layer ``max_pixels_per_row`` of the execute model.
    """

    n: tuple[int, int]
    k: tuple[int, int]
    c: tuple[int, int]
    h: tuple[int, int]
    w: tuple[int, int]
    r: tuple[int, int]
    s: tuple[int, int]
    row0: int
    col0: int
    rows: int
    cols: int
    step: int
    input_key: tuple
    weight_key: tuple
    output_key: tuple
    input_mode: str
    weight_mode: str
    last: bool
    mpp: int = 1

    def sizes(self) -> tuple[int, ...]:
        """Truncated block sizes (nN, nK, nC, nH, nW, nR, nS)."""
        return tuple(b - a for a, b in (self.n, self.k, self.c, self.h, self.w, self.r, self.s))


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
                "max_spad_rows": self.max_spad_rows, "max_acc_rows": self.max_acc_rows}


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _held_positions(first: int, count: int, step: int, extent: int) -> tuple[int, int]:
    """Range ``[i0, i1)`` of window indices whose image position ``first + step*i`` lies in
    ``[0, extent)`` (the others are zero padding and cost no traffic)."""
    i0 = max(0, _ceil(-first, step))
    i1 = min(count, _ceil(extent - first, step))
    return i0, max(i0, i1)


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

    #: bytes of grouped products kept at once (see `_compute`)
    GROUP_BUDGET = 64 * 2 ** 20

    def __init__(self, spec: ConvSpec, config) -> None:
        self.spec = spec
        self.config = config
        floating = np.issubdtype(np.dtype(spec.dtype_in), np.floating)
        self.compute = np.dtype(spec.dtype_acc) if floating else np.dtype(np.float64)
        if not floating:
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
        calls = list(calls)
        x, w = np.asarray(x), np.asarray(w)
        self.products = self._product_type(calls, x, w)
        # the accumulator: the products' type when the whole reduction of an output is exact
        # in it too and no bias is added (then BLAS accumulates in place), else self.compute
        self.acc_type = self.products if self.products == self.compute or bias is None and \
            self._exact_in_float32(self.spec.in_channels * self.spec.kernel_size[0]
                                   * self.spec.kernel_size[1], x, w) else self.compute
        # one conversion each, straight into the channels-last layouts the tiles slice
        self._x = np.empty((x.shape[0], x.shape[2], x.shape[3], x.shape[1]), self.products)
        np.copyto(self._x, x.transpose(0, 2, 3, 1), casting="unsafe")
        self._w = np.empty((w.shape[2], w.shape[3], w.shape[1], w.shape[0]), self.products)
        np.copyto(self._w, w.transpose(2, 3, 1, 0), casting="unsafe")
        self._bias = None if bias is None else np.asarray(bias).astype(self.compute)
        H, W = spec.out_size
        self._y = np.zeros((spec.batch, H, W, spec.out_channels), dtype=spec.dtype_acc)
        self._stats = ExecutionStats(peak=self.config.dim ** 2)
        self._inputs = OrderedDict()      # resident input windows: key -> (window id, array)
        self._weights = OrderedDict()
        self._products = {}               # grouped compute: key -> [product, k0, uses left]
        self._state = {}                  # output key -> "spilled" | "final"
        self._acc_key, self._acc = None, None
        self._finished_elements = 0
        self._group(calls)
        for index, call in enumerate(calls):
            self._call(call, calls[index + 1] if index + 1 < len(calls) else None)
        if self._finished_elements != spec.size_output:
            raise ParconvRuntimeError(f"schedule finished {self._finished_elements} of "
                                      f"{spec.size_output} outputs")
        y = np.ascontiguousarray(self._y.transpose(0, 3, 1, 2))
        self._x = self._w = self._y = self._acc = None
        return y, self._stats

    def _product_type(self, calls, x: np.ndarray, w: np.ndarray) -> np.dtype:
        """float32 for integer tiles whose every partial sum is an integer below 2**24 (at
        most max|x| max|w| per product, nR nS nC products per tile): exact and twice as fast
        as float64.  The accumulator stays ``self.compute``."""
        if self.compute != np.float64 or np.issubdtype(np.dtype(self.spec.dtype_in),
                                                       np.floating):
            return self.compute
        longest = max(((c.r[1] - c.r[0]) * (c.s[1] - c.s[0]) * (c.c[1] - c.c[0])
                       for c in calls), default=0)
        return np.dtype(np.float32) if self._exact_in_float32(longest, x, w) else self.compute

    @staticmethod
    def _exact_in_float32(products: int, x: np.ndarray, w: np.ndarray) -> bool:
        """Whether sums of ``products`` products of the data are integers below 2**24."""
        return products * _magnitude(x) * _magnitude(w) <= 2 ** 24

    # ---- one call -----------------------------------------------------------------------------
    def _call(self, call: TileCall, following: TileCall | None) -> None:
        cfg, st = self.config, self._stats
        nN, nK, nC, nH, nW, nR, nS = call.sizes()
        if min(nN, nK, nC, nH, nW, nR, nS) <= 0:
            raise ParconvRuntimeError(f"empty tile {call}")
        # rows of dim elements (GemminiConfig.for_spec keeps the byte capacity for wider types)
        in_rows = _ceil(nC, cfg.dim) * nN * call.rows * call.cols
        w_rows = _ceil(nK, cfg.dim) * nR * nS * nC
        acc_rows = _ceil(nK, cfg.dim) * nN * nH * nW
        if in_rows + w_rows > cfg.spad_rows_limit or acc_rows > cfg.acc_rows_limit:
            raise ParconvError(
                f"tile {call.sizes()} needs {in_rows + w_rows} scratchpad rows (limit "
                f"{cfg.spad_rows_limit}) and {acc_rows} accumulator rows (limit "
                f"{cfg.acc_rows_limit}); the tiling does not fit")
        st.max_spad_rows = max(st.max_spad_rows, in_rows + w_rows)
        st.max_acc_rows = max(st.max_acc_rows, acc_rows)
        moved = st.total_bytes
        window = self._input_window(call)
        weights = self._weight_block(call)
        self._open_output(call)
        self._compute(call, window, weights)
        if following is None or following.output_key != call.output_key:
            self._close_output(call)
        exec_cycles = call_exec_cycles(nN, nH, nW, nK, nR, nS, nC, call.mpp, cfg.dim)
        st.exec_cycles += exec_cycles
        st.passes += call_passes(nN, nH, nW, nK, nR, nS, nC, call.mpp, cfg.dim)
        st.cycles += max(exec_cycles, (st.total_bytes - moved) / cfg.bw_eff)
        st.macs += nN * nK * nC * nH * nW * nR * nS
        st.calls += 1

    # ---- movement -----------------------------------------------------------------------------
    def _window_id(self, call: TileCall) -> tuple:
        return (call.n, call.c, call.row0, call.rows, call.col0, call.cols, call.step)

    def _input_window(self, call: TileCall) -> "_Window":
        wid = self._window_id(call)
        resident = self._inputs.get(call.input_key)
        if call.input_mode == "reuse":
            if resident is None or resident[0] != wid:
                raise ParconvRuntimeError(f"call reuses input block {call.input_key} that is not "
                                          f"resident with window {wid}")
            return resident[1]
        if call.input_mode == "auto" and resident is not None:
            return resident[1]
        cfg, st, (H_in, W_in) = self.config, self._stats, self.spec.in_size
        i0, i1 = _held_positions(call.row0, call.rows, call.step, H_in)
        j0, j1 = _held_positions(call.col0, call.cols, call.step, W_in)
        nN, nC = call.n[1] - call.n[0], call.c[1] - call.c[0]
        r0, c0 = call.row0 + call.step * i0, call.col0 + call.step * j0
        src = self._x[call.n[0]:call.n[1],
                      r0:r0 + call.step * (i1 - i0):call.step,
                      c0:c0 + call.step * (j1 - j0):call.step,
                      call.c[0]:call.c[1]]
        st.dram_bytes["input"] += src.size * cfg.input_bytes
        st.mvin_rows["input"] += nN * (i1 - i0) * (j1 - j0) * _ceil(nC, cfg.dim)
        block = _Window(src, (nN, call.rows, call.cols, nC), (i0, i1, j0, j1), self.products)
        # two scratchpad halves (double buffering): the library keeps tile t in half t
        limit = 1 if call.input_mode == "auto" else 2
        self._inputs[call.input_key] = (wid, block)
        while len(self._inputs) > limit:
            self._inputs.popitem(last=False)
        return block

    def _weight_block(self, call: TileCall) -> np.ndarray:
        resident = self._weights.get(call.weight_key)
        wid = (call.k, call.c, call.r, call.s)
        if call.weight_mode == "reuse":
            if resident is None or resident[0] != wid:
                raise ParconvRuntimeError(f"call reuses weight block {call.weight_key} that is "
                                          f"not resident")
            return resident[1]
        if call.weight_mode == "auto" and resident is not None:
            return resident[1]
        cfg = self.config
        block = np.ascontiguousarray(
            self._w[call.r[0]:call.r[1], call.s[0]:call.s[1], call.c[0]:call.c[1],
                    call.k[0]:call.k[1]])
        self._stats.dram_bytes["weight"] += block.size * cfg.weight_bytes
        nK = call.k[1] - call.k[0]
        self._stats.mvin_rows["weight"] += _ceil(nK, cfg.dim) * block.shape[0] * block.shape[1] \
            * block.shape[2]
        limit = 1 if call.weight_mode == "auto" else 2
        self._weights[call.weight_key] = (wid, block)
        while len(self._weights) > limit:
            self._weights.popitem(last=False)
        return block

    def _open_output(self, call: TileCall) -> None:
        if self._acc_key == call.output_key:
            return
        cfg, st = self.config, self._stats
        nN, nK, _, nH, nW, _, _ = call.sizes()
        (n0, n1), (k0, k1), (h0, h1), (w0, w1) = call.n, call.k, call.h, call.w
        state = self._state.get(call.output_key)
        if state == "final":
            raise ParconvRuntimeError(f"output block {call.output_key} visited after it was final")
        if state == "spilled":
            self._acc = self._y[n0:n1, h0:h1, w0:w1, k0:k1].astype(self.acc_type)
            st.dram_bytes["psum"] += self._acc.size * cfg.acc_bytes
            st.mvin_rows["psum"] += nN * nH * nW * _ceil(nK, cfg.dim)
        else:
            self._acc = np.zeros((nN, nH, nW, nK), dtype=self.acc_type)
            if self._bias is not None:
                self._acc += self._bias[k0:k1]
                # stride-0 mvins: one dim-wide row per dim output pixels of a row and channel block
                st.dram_bytes["bias"] += nN * nH * _ceil(nW, cfg.dim) * nK * cfg.bias_bytes
                st.mvin_rows["bias"] += nN * nH * nW * _ceil(nK, cfg.dim)
        self._acc_key = call.output_key

    def _close_output(self, call: TileCall) -> None:
        cfg, st = self.config, self._stats
        (n0, n1), (k0, k1), (h0, h1), (w0, w1) = call.n, call.k, call.h, call.w
        if self._acc.dtype == np.float32 or self._y.dtype.kind == "f":
            # float32 sums of integers are exact below 2**24: one cast, no wrap-around needed
            np.copyto(self._y[n0:n1, h0:h1, w0:w1, k0:k1], self._acc, casting="unsafe")
        else:
            self._y[n0:n1, h0:h1, w0:w1, k0:k1] = _to_accumulator(self._acc, self._y.dtype)
        rows = self._acc.shape[0] * self._acc.shape[1] * self._acc.shape[2] \
            * _ceil(self._acc.shape[3], cfg.dim)
        if call.last:
            st.dram_bytes["output"] += self._acc.size * cfg.output_bytes
            st.mvout_rows["output"] += rows
            self._state[call.output_key] = "final"
            self._finished_elements += self._acc.size
        else:
            st.dram_bytes["psum"] += self._acc.size * cfg.acc_bytes
            st.mvout_rows["psum"] += rows
            self._state[call.output_key] = "spilled"
        self._acc_key, self._acc = None, None

    # ---- compute ------------------------------------------------------------------------------
    def _compute_key(self, call: TileCall) -> tuple:
        return (self._window_id(call), call.h, call.w, call.r, call.s)

    def _group(self, calls: list) -> None:
        """Find tiles that multiply the same input patches by different output-channel blocks
        (the vendor loop's poch tiles reload the same window and weights of other channels).
        Their products are computed once, for all their channels, and sliced per tile: only
        the numpy work is grouped; capacity checks and counters stay per tile."""
        groups: dict[tuple, list] = {}
        for call in calls:
            entry = groups.setdefault(self._compute_key(call), [call.k[0], call.k[1], 0])
            entry[0], entry[1] = min(entry[0], call.k[0]), max(entry[1], call.k[1])
            entry[2] += 1
        self._uses = {key: entry for key, entry in groups.items() if entry[2] > 1}
        self._group_bytes = 0

    def _compute(self, call: TileCall, window: "_Window", weights: np.ndarray) -> None:
        nN, nK, nC, nH, nW, nR, nS = call.sizes()
        key = self._compute_key(call)
        cached = self._products.get(key)
        if cached is None:
            patches = self._patches(call, window.array())
            group = self._uses.get(key)
            size = None if group is None else \
                patches.shape[0] * (group[1] - group[0]) * patches.itemsize
            if group is not None and self._group_bytes + size <= self.GROUP_BUDGET:
                # the same DRAM weights the later tiles of the group will move in
                full = self._w[call.r[0]:call.r[1], call.s[0]:call.s[1], call.c[0]:call.c[1],
                               group[0]:group[1]].reshape(nR * nS * nC, -1)
                cached = [patches @ full, group[0], group[2]]
                self._products[key] = cached
                self._group_bytes += size
            else:
                acc = self._acc.reshape(nN * nH * nW, nK)
                if acc.dtype == patches.dtype:          # in place (BLAS beta = 1)
                    matmul_into(acc, patches, weights.reshape(nR * nS * nC, nK), True)
                else:
                    acc += patches @ weights.reshape(nR * nS * nC, nK)
                return
        product, k0 = cached[0], cached[1]
        self._acc += product[:, call.k[0] - k0:call.k[1] - k0].reshape(nN, nH, nW, nK)
        cached[2] -= 1
        if cached[2] == 0:
            del self._products[key]
            self._group_bytes -= product.nbytes

    def _patches(self, call: TileCall, window: np.ndarray) -> np.ndarray:
        """The implicit im2col of the tile: (nN nH nW) x (nR nS nC), read from the window with
        the conv stride (A_stride) and the dilation as scratchpad strides."""
        spec = self.spec
        nN, nK, nC, nH, nW, nR, nS = call.sizes()
        (sh, sw), (dh, dw), (ph, pw) = spec.stride, spec.dilation, spec.padding
        off_r = sh * call.h[0] + dh * call.r[0] - ph - call.row0
        off_c = sw * call.w[0] + dw * call.s[0] - pw - call.col0
        step = call.step
        if off_r % step or off_c % step or (sh % step and nH > 1) or (sw % step and nW > 1) \
                or (dh % step and nR > 1) or (dw % step and nS > 1):
            raise ParconvRuntimeError(f"tile {call.sizes()} is not aligned with its window")
        i0, j0 = off_r // step, off_c // step
        last_r = i0 + (sh // step) * (nH - 1) + (dh // step) * (nR - 1)
        last_c = j0 + (sw // step) * (nW - 1) + (dw // step) * (nS - 1)
        if i0 < 0 or j0 < 0 or last_r >= call.rows or last_c >= call.cols:
            raise ParconvRuntimeError(f"tile {call.sizes()} reads outside its input window")
        bN, bR, bC, bc = window.strides
        view = np.lib.stride_tricks.as_strided(
            window[:, i0:, j0:, :], shape=(nN, nH, nW, nR, nS, nC),
            strides=(bN, bR * (sh // step), bC * (sw // step), bR * max(dh // step, 1),
                     bC * max(dw // step, 1), bc), writeable=False)
        return view.reshape(nN * nH * nW, nR * nS * nC)


class _Window:
    """An input window moved into the scratchpad: the in-image block ``src`` (already counted)
    placed at ``[i0:i1, j0:j1]`` of a zero-padded ``shape``.  The numpy array is built on first
    use (a view of the DRAM copy when the window has no padding): the bytes were counted when
    the window was moved in, and the data are the same."""

    __slots__ = ("src", "shape", "box", "dtype", "_array")

    def __init__(self, src, shape, box, dtype):
        self.src, self.shape, self.box, self.dtype, self._array = src, shape, box, dtype, None

    def array(self) -> np.ndarray:
        if self._array is None:
            i0, i1, j0, j1 = self.box
            if (i0, i1, j0, j1) == (0, self.shape[1], 0, self.shape[2]):
                self._array = self.src
            else:
                self._array = np.zeros(self.shape, dtype=self.dtype)
                self._array[:, i0:i1, j0:j1, :] = self.src
        return self._array


def _magnitude(a: np.ndarray) -> int:
    """max |a| as a Python int (no overflow of abs(-128) in int8)."""
    return max(-int(a.min()), int(a.max()), 0) if a.size else 0


def _to_accumulator(acc: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast computed sums to the accumulator type; integers wrap around like int32 hardware."""
    if np.issubdtype(dtype, np.integer):
        return acc.astype(np.int64).astype(dtype)      # exact integers: no rounding needed
    return acc.astype(dtype)
