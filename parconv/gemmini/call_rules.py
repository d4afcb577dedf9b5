"""Per-call rules of the library's conv tile loop (gemmini.md 4.4-4.7), as small pure functions.

Pure integers, no MPI.  One *call* is one ``sp_tiled_conv`` (one ``loop_conv_ws`` instruction) of
``tiled_conv``'s loop nest ``b -> porow -> pocol -> poch -> krow -> kcol -> kch``.  Every function
here is elementwise: it takes Python ints or numpy integer arrays (broadcasting), so the literal
call-by-call walk (`parconv.gemmini.vendor.calls.iter_calls`) and the grouped evaluation of a whole layer
(`parconv.gemmini.vendor.layer_cost.vendor_layer_cost`) share one definition.  A tile executor that moves real
data must follow the same windows to count the same bytes.

Windows of one call along one spatial axis (rows; columns likewise), `axis_window`:

* pooled outputs ``[po, po + po_len)``; pre-pool outputs ``o_start = po * pool_stride -
  pool_padding`` with ``o_len = po_len * pool_stride + pool_size - 1`` (the pool halo), of which
  ``o_pad_lo``/``o_pad_hi`` fall outside ``[0, n_out)``: the call computes the ``o_eff``
  pre-pool outputs ``out_range = [o_start + o_pad_lo, o_start + o_len - o_pad_hi)``;
* input window ``i_start = max(o_start, 0) * stride + k * dilation - padding`` of ``i_len =
  o_eff * stride + k_ext - 1`` rows (``k_ext`` = dilated extent of the call's kernel rows): one
  row more than needed when stride = 2 (the library is conservative).  Its in-image part
  ``in_range`` has ``i_eff`` rows; padding costs no traffic.  Under downsample only every other
  row and column is moved: ``i_loaded = ceil(i_eff / 2)`` (i_eff is always even there).

Bytes of one call (elements times the config's element sizes), gemmini.md 4.6:

* input  (input pointer non-NULL): ``batches_ * i_loaded_rows * i_loaded_cols * kchs_``;
* weight (weight pointer non-NULL): ``krows_ * kcols_ * kchs_ * pochs_``;
* bias   (first reduction tile, bias on): ``batches_ * o_eff_rows * ceil(o_eff_cols / dim) *
  pochs_`` int32 (one stride-0 mvin per dim output pixels and dim channels);
* output (last reduction tile): ``batches_ * o_eff_rows * o_eff_cols * pochs_``, or with pooling
  ``batches_ * porows_ * pocols_ * pochs_``.

Execute cycles of one call (gemmini.md 4.7, pass model of 3.1): for each weight block
(``ceil(pochs_/dim) * krows_ * ceil(kcols_/mpp) * ceil(kchs_/dim)``), one pass per
(batch, output row, dim-wide block of output columns) of ``max(I, 4)`` cycles (I = pixels in the
pass) plus ``dim - max(I_last, 4)`` for the next block's weight preload; ``mpp`` is
``max_pixels_per_row`` of the first-layer optimization (1 when it is off).
"""

from __future__ import annotations

import dataclasses

import numpy as np

#: shortest pass of the array (ROB retirement / accumulator write-after-write; gemmini.md 3.1)
MIN_PASS_CYCLES = 4


def ceil_div(a, b):
    """Ceiling division for ints or integer arrays."""
    return -(-a // b)


@dataclasses.dataclass(frozen=True)
class AxisGeometry:
    """One spatial axis of a layer as ``tiled_conv`` sees it.

    ``n_out`` is the pre-pool output extent and ``n_pooled`` the pooled one (equal without
    pooling); ``padding`` is the zero padding before the first position (the padding after the
    last one is implied by ``n_in`` and ``n_out``, so asymmetric local blocks work unchanged).
    """

    n_in: int
    n_out: int
    n_pooled: int
    kernel: int
    stride: int
    padding: int
    dilation: int
    pool_size: int = 1
    pool_stride: int = 1
    pool_padding: int = 0
    downsample: bool = False

    @classmethod
    def from_spec(cls, spec, axis: int, pool, downsample: bool) -> "AxisGeometry":
        """Axis 0 (rows) or 1 (columns) of ``spec`` with a `Pool` fused."""
        n_out = spec.out_size[axis]
        return cls(n_in=spec.in_size[axis], n_out=n_out, n_pooled=pool.pooled(n_out),
                   kernel=spec.kernel_size[axis], stride=spec.stride[axis],
                   padding=spec.padding[axis], dilation=spec.dilation[axis],
                   pool_size=pool.size, pool_stride=pool.stride, pool_padding=pool.padding,
                   downsample=downsample)


@dataclasses.dataclass(frozen=True)
class AxisWindow:
    """Output and input windows of a call along one axis (fields are ints or arrays)."""

    o_start: object     # first pre-pool output position incl. pool halo (may be < 0)
    o_len: object       # pre-pool outputs incl. pool halo (orows_)
    o_pad_lo: object    # pupad
    o_pad_hi: object    # pdpad
    o_eff: object       # pre-pool outputs the call computes (orows_ - pupad - pdpad)
    i_start: object     # first input position of the window (may be < 0: padding)
    i_len: object       # irows_ (padding included)
    i_pad_lo: object    # upad (clamped to i_len)
    i_pad_hi: object    # dpad (clamped so that i_eff >= 0)
    i_eff: object       # in-image positions of the window (u_rows)
    i_loaded: object    # positions moved from DRAM (i_eff, or ceil(i_eff / 2) under downsample)

    @property
    def out_range(self) -> tuple:
        """Half-open pre-pool output positions the call computes."""
        return (self.o_start + self.o_pad_lo, self.o_start + self.o_len - self.o_pad_hi)

    @property
    def in_range(self) -> tuple:
        """Half-open in-image input positions of the window (every other one is moved under
        downsample, starting with the first)."""
        start = self.i_start + self.i_pad_lo
        return (start, start + self.i_eff)


def axis_window(geom: AxisGeometry, po_start, po_len, k_start, k_len) -> AxisWindow:
    """The windows of a call whose pooled outputs are ``[po_start, po_start + po_len)`` and whose
    kernel positions are ``[k_start, k_start + k_len)`` along ``geom`` (gemmini.md 4.4).

    Example: rows of a 3x3 stride-1 pad-1 layer with 56 rows, outputs [0, 22), full kernel:
    i_start = -1, i_len = 24, i_pad_lo = 1, i_eff = 23.
    """
    o_start = po_start * geom.pool_stride - geom.pool_padding
    o_len = po_len * geom.pool_stride + geom.pool_size - 1
    o_pad_lo = np.maximum(0, -o_start)
    o_pad_hi = np.maximum(0, o_start + o_len - geom.n_out)
    o_eff = np.maximum(0, o_len - o_pad_lo - o_pad_hi)
    k_ext = k_len + (geom.dilation - 1) * (k_len - 1)
    i_start = np.maximum(o_start, 0) * geom.stride + k_start * geom.dilation - geom.padding
    i_len = o_eff * geom.stride + k_ext - 1
    # clamp so that a window lying wholly in the padding has i_eff = 0 (the library's raw
    # formula would go negative there; no vendor tile of a real layer reaches that case)
    i_pad_lo = np.minimum(np.maximum(0, -i_start), i_len)
    i_pad_hi = np.minimum(np.maximum(0, i_start + i_len - geom.n_in), i_len - i_pad_lo)
    i_eff = i_len - i_pad_lo - i_pad_hi
    i_loaded = ceil_div(i_eff, 2) if geom.downsample else i_eff
    return AxisWindow(o_start, o_len, o_pad_lo, o_pad_hi, o_eff, i_start, i_len, i_pad_lo,
                      i_pad_hi, i_eff, i_loaded)


# ---- pointer rules (gemmini.md 4.4) ----------------------------------------------------------
def reuse_flags(counts, operand_reuse: bool) -> tuple[bool, bool]:
    """(a_reuse, b_reuse) from the tile counts (num_b, num_porow, num_pocol, num_poch,
    num_krow, num_kcol, num_kch): b_reuse when the weights span <= 2 tiles, a_reuse when the
    input's reduction and spatial tiles number <= 2 (dev semantics only)."""
    n_b, n_porow, n_pocol, n_poch, n_krow, n_kcol, n_kch = counts
    if not operand_reuse:
        return False, False
    a_reuse = n_kch * n_krow * n_kcol * n_b * n_porow * n_pocol <= 2
    b_reuse = n_kch * n_poch * n_krow * n_kcol <= 2
    return bool(a_reuse), bool(b_reuse)


def loads_input(a_reuse: bool, poch_is_first):
    """Input pointer non-NULL: always, except for later output-channel tiles under a_reuse."""
    return np.logical_not(np.logical_and(a_reuse, np.logical_not(poch_is_first)))


def loads_weight(b_reuse: bool, spatial_is_first):
    """Weight pointer non-NULL: always, except after the first (b, porow, pocol) tile under
    b_reuse; ``spatial_is_first`` means b = porow = pocol = 0."""
    return np.logical_not(np.logical_and(b_reuse, np.logical_not(spatial_is_first)))


# ---- bytes per stream, in elements (gemmini.md 4.6) ------------------------------------------
def input_elements(batches_, in_rows, in_cols, kchs_):
    """Input elements moved: ``batches_ * in_rows * in_cols * kchs_`` with the loaded in-image
    rows/cols of the window (`AxisWindow.i_loaded`)."""
    return batches_ * in_rows * in_cols * kchs_


def weight_elements(krows_, kcols_, kchs_, pochs_):
    return krows_ * kcols_ * kchs_ * pochs_


def bias_elements(batches_, orows, ocols, pochs_, dim: int):
    """Bias elements read for ``orows x ocols`` pre-pool outputs (`AxisWindow.o_eff`): one
    stride-0 mvin (one row of <= dim values) per dim pixels of a row and dim channels, so every
    pixel block reads the ``pochs_`` biases again."""
    return batches_ * orows * ceil_div(ocols, dim) * pochs_


def output_elements(batches_, out_rows, out_cols, pochs_):
    """Output elements written: pass the pre-pool ``o_eff`` rows/cols, or with pooling the
    pooled ``porows_``/``pocols_``."""
    return batches_ * out_rows * out_cols * pochs_


def dram_row_requests(config, batches_, in_rows, in_cols, orows, ocols, out_rows, out_cols,
                      pochs_, krows_, kcols_, kchs_):
    """DRAM row requests (one contiguous DRAM segment each) per stream of one call, before the
    pointer rules: (input, weight, bias, output) = (pixels x ceil(kchs_ / (max_block_len dim)),
    input channels x kernel positions x ceil(pochs_ / (max_block_len dim)), one per bias mvin,
    written pixels x ceil(pochs_ / dim)).  Arguments as in the element functions."""
    wide = config.max_block_len * config.dim
    wide_acc = config.max_block_len_acc * config.dim
    inputs = batches_ * in_rows * in_cols * ceil_div(kchs_, wide)
    weights = ceil_div(pochs_, wide) * krows_ * kcols_ * kchs_
    bias = batches_ * orows * ceil_div(ocols, config.dim) * ceil_div(pochs_, wide_acc)
    outputs = batches_ * out_rows * out_cols * ceil_div(pochs_, config.dim)
    return inputs, weights, bias, outputs


# ---- execute cycles (gemmini.md 3.1, 4.7) ----------------------------------------------------
def max_pixels_per_row(config, kchs_, kcols_, downsample: bool, dilated: bool):
    """Pixels packed into one spad row by the first-layer optimization: ``min(dim // kchs_,
    kcols_)`` when it is on and applies (no downsample or dilation, kchs_ <= dim), else 1."""
    if not config.has_first_layer_opt or downsample or dilated:
        return np.ones_like(np.asarray(kchs_)) if np.ndim(kchs_) else 1
    packed = np.minimum(np.maximum(config.dim // kchs_, 1), kcols_)
    packed = np.where(kchs_ > config.dim, 1, packed)
    return packed if np.ndim(packed) else int(packed)


def weight_blocks(pochs_, krows_, kcols_, kchs_, mpp=1, dim: int = 16):
    """Weight blocks one call preloads: one per dim output channels, kernel row, mpp kernel
    columns and dim input channels."""
    return ceil_div(pochs_, dim) * krows_ * ceil_div(kcols_, mpp) * ceil_div(kchs_, dim)


def passes(batches_, orows, ocols, pochs_, krows_, kcols_, kchs_, mpp=1, dim: int = 16):
    """Array passes of one call: per weight block, one per (batch, output row, dim outputs)."""
    return (weight_blocks(pochs_, krows_, kcols_, kchs_, mpp, dim)
            * batches_ * orows * ceil_div(ocols, dim))


def exec_cycles(batches_, orows, ocols, pochs_, krows_, kcols_, kchs_, mpp=1, dim: int = 16):
    """Execute-model cycles of one call computing ``batches_ x orows x ocols`` pre-pool outputs
    (`AxisWindow.o_eff`) of ``pochs_`` channels over ``krows_ x kcols_ x kchs_`` (gemmini.md 4.7).

    Per weight block: ``sum over passes of max(I, 4)`` (I = dim, except the last column block of
    each row) ``+ dim - max(I_last, 4)``.  Example: the stem without first-layer optimization,
    tile (1,22,23,16,7,7,3), gives 2,515,072 cycles over its 120 calls.
    """
    full = np.maximum(ceil_div(ocols, dim) - 1, 0)
    last = np.maximum(ocols - dim * full, MIN_PASS_CYCLES)
    per_block = batches_ * orows * (dim * full + last) + (dim - last)
    per_block = np.where(batches_ * orows * ocols > 0, per_block, 0)
    cycles = weight_blocks(pochs_, krows_, kcols_, kchs_, mpp, dim) * per_block
    return cycles if np.ndim(cycles) else int(cycles)


def short_passes(batches_, orows, ocols, pochs_, krows_, kcols_, kchs_, mpp=1, dim: int = 16):
    """``(count, rows)``: the passes of one call whose length a longer pass floor than
    `MIN_PASS_CYCLES` would raise in `exec_cycles`, and their rows ``I_last``.

    Per weight block, the last column-block pass of every (batch, output row) but one: the
    block's final pass is followed by the next block's preload, which covers whatever that pass
    leaves of ``dim`` cycles (the ``dim - max(I_last, 4)`` of `exec_cycles`), so a floor on it
    moves time between the two and adds nothing.  Used by the calibrated model's ``t_pass``
    (`parconv.gemmini.cycles`).
    """
    full = np.maximum(ceil_div(ocols, dim) - 1, 0)
    last = ocols - dim * full
    count = weight_blocks(pochs_, krows_, kcols_, kchs_, mpp, dim) * np.maximum(
        batches_ * orows - 1, 0)
    count = np.where(batches_ * orows * ocols > 0, count, 0)
    if np.ndim(count) or np.ndim(last):
        return count, last
    return int(count), int(last)


class Utilization:
    """Mixin for cost records with ``macs``, ``cycles`` and ``peak_macs_per_cycle``."""

    @property
    def utilization(self) -> float:
        """MACs / (peak MACs per cycle x cycles): 1.0 is the array busy on every cycle."""
        return self.macs / (self.peak_macs_per_cycle * self.cycles) if self.cycles else 0.0
