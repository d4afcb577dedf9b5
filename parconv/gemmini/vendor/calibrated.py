"""Inputs of the calibrated cycle model for the library's loop, per group of identical calls.

Pure numpy.  `calibration_terms` turns the call groups of
`parconv.gemmini.vendor.layer_cost.vendor_layer_cost` into the quantities of
`parconv.gemmini.cycles.layer_cycles` (execute cycles, passes, DMA lines that hit or miss the L2,
bytes moved, store rows, missed bytes); `calibrated_total` sums the model over the groups.  The fit
(``experiments/calibrate_cycles.py``) evaluates the terms once per measured layer and the model
many times.
"""

from __future__ import annotations

import math

import numpy as np

from .. import call_rules as rules
from ..cycles import COMMAND_KEYS, layer_cycles, load_misses, mean_lines, mean_piece_lines


def calibration_terms(loop, order: str, l2_bytes: int, weight, sizes, rows, cols, flags, bytes_,
                      passes, exec_cycles, warm: bool = False) -> dict:
    """Flat arrays over the call groups: ``weight`` (calls per group), ``exec``, ``passes``,
    ``hit`` and ``miss`` (DMA lines), ``moved`` (bytes of every stream), ``stores`` (mvout
    rows), ``miss_bytes`` (loaded bytes that miss the L2) and ``short_passes`` /
    ``short_rows`` (`parconv.gemmini.call_rules.short_passes`); ``hit_rows`` / ``miss_rows`` are
    the lines by the first round's rule (`mean_lines` of whole rows, for the comparison in
    ``experiments/calibrate_cycles.py``).  Local.

    Lines per call: input rows (one per loaded pixel) of ``kchs_`` bytes at a DRAM stride of C,
    weight rows (one per kernel position and input channel) of ``pochs_`` bytes at a stride of
    K, each cut into mvins of ``max_block_len * dim`` columns (`mean_piece_lines`); the bias
    stream's stride-0 rows are one line each; the output is written one row of <= dim channels
    of a pixel per mvout row.  The L2 misses of
    `load_misses` (loop ``order``, library letters innermost first) are spread evenly over the
    calls that load the operand.  ``warm``: the layer's input, weights and output were touched
    just before (`load_misses`).
    """
    cfg, spec = loop.config, loop.spec
    shape = weight.shape
    nb, _, _, pochs_, krows_, kcols_, kchs_ = sizes
    load_in, load_w = (np.broadcast_to(f, shape) for f in flags[:2])
    # a row starts at pixel * C + kch (kch a multiple of the tile's kchs), so its offset in a
    # line is a multiple of gcd(C, kchs); weight rows likewise with K and pochs.  The loop
    # moves a row by mvins of at most max_block_len * dim columns, each requested on its own
    piece = cfg.max_block_len * cfg.dim
    in_lines = nb * rows.i_loaded * cols.i_loaded * mean_piece_lines(
        kchs_ * cfg.input_bytes, piece * cfg.input_bytes,
        math.gcd(spec.in_channels, loop.tile.kchs) * cfg.input_bytes)
    w_lines = krows_ * kcols_ * kchs_ * mean_piece_lines(
        pochs_ * cfg.weight_bytes, piece * cfg.weight_bytes,
        math.gcd(spec.out_channels, loop.tile.pochs) * cfg.weight_bytes)
    in_lines = np.broadcast_to(in_lines, shape) * load_in
    w_lines = np.broadcast_to(w_lines, shape) * load_w
    # the first round's rule (a row's lines as one segment), kept for the comparison
    in_rows = np.broadcast_to(nb * rows.i_loaded * cols.i_loaded * mean_lines(
        kchs_ * cfg.input_bytes, math.gcd(spec.in_channels, loop.tile.kchs) * cfg.input_bytes),
        shape) * load_in
    w_rows = np.broadcast_to(krows_ * kcols_ * kchs_ * mean_lines(
        pochs_ * cfg.weight_bytes, math.gcd(spec.out_channels, loop.tile.pochs)
        * cfg.weight_bytes), shape) * load_w
    calls_in, calls_w = (float((f * weight).sum()) for f in (load_in, load_w))
    per_call = {name: float((np.broadcast_to(bytes_[name], shape) * weight).sum()) / max(n, 1.0)
                for name, n in (("input", calls_in), ("weight", calls_w))}
    footprint = (spec.batch * spec.in_channels * spec.in_size[0] * spec.in_size[1]
                 * cfg.input_bytes + spec.out_channels * spec.in_channels
                 * spec.kernel_size[0] * spec.kernel_size[1] * cfg.weight_bytes
                 + spec.batch * spec.out_channels * spec.out_size[0] * spec.out_size[1]
                 * cfg.output_bytes)
    misses = load_misses(order, dict(zip("NQPKSRC", loop.counts)), per_call, l2_bytes,
                         footprint if warm else 0.0)
    miss_in = min(misses["input"] / calls_in, 1.0) if calls_in else 0.0
    miss_w = min(misses["weight"] / calls_w, 1.0) if calls_w else 0.0
    bias_rows = np.broadcast_to(bytes_["bias"], shape) / max(cfg.dim * cfg.bias_bytes, 1)
    moved = sum(np.broadcast_to(b, shape) for b in bytes_.values())
    in_b = np.broadcast_to(bytes_["input"], shape) * load_in
    w_b = np.broadcast_to(bytes_["weight"], shape) * load_w
    # mvout writes one row (<= dim channels of one pixel) per DMA request
    pixels_out = np.broadcast_to(bytes_["output"], shape) / np.maximum(
        pochs_ * cfg.output_bytes, 1)
    # DMA commands per call and their rows (gemmini.md 11.2): LoopConvLdInput moves one mvin
    # per (batch, input row, dim input columns, piece of channels), LoopConvLdWeight one per
    # (piece of output channels, kernel position, dim input channels), LoopConvSt one mvout
    # per (batch, output row, dim output columns, dim output channels)
    wide = cfg.max_block_len * cfg.dim
    in_blocks = -(-cols.i_loaded // cfg.dim)
    cmds_in = nb * rows.i_loaded * in_blocks * (-(-kchs_ // wide))
    rows_in = cols.i_loaded / np.maximum(in_blocks, 1)
    cmds_w = (-(-pochs_ // wide)) * krows_ * kcols_ * (-(-kchs_ // cfg.dim))
    rows_w = kchs_ / (-(-kchs_ // cfg.dim))
    out_rows, out_cols = rows.o_eff, cols.o_eff
    out_blocks = -(-out_cols // cfg.dim)
    stored = np.broadcast_to(bytes_["output"], shape) > 0
    cmds_st = nb * out_rows * out_blocks * (-(-pochs_ // cfg.dim)) * stored
    rows_st = out_cols / np.maximum(out_blocks, 1)
    mpp = rules.max_pixels_per_row(cfg, kchs_, kcols_, loop.downsample, loop.dilated)
    short, short_rows = rules.short_passes(nb, out_rows, out_cols, pochs_, krows_, kcols_, kchs_,
                                           mpp, cfg.dim)
    flat = {"weight": weight, "exec": exec_cycles, "passes": passes,
            "hit": in_lines * (1 - miss_in) + w_lines * (1 - miss_w) + bias_rows,
            "miss": in_lines * miss_in + w_lines * miss_w, "moved": moved,
            "stores": pixels_out * (-(-pochs_ // cfg.dim)),
            "miss_bytes": in_b * miss_in + w_b * miss_w,
            "hit_rows": in_rows * (1 - miss_in) + w_rows * (1 - miss_w) + bias_rows,
            "miss_rows": in_rows * miss_in + w_rows * miss_w,
            # per-stream DMA commands (`parconv.gemmini.cycles.dma_command_excess`)
            "in_cmds": cmds_in * load_in, "in_rows": rows_in,
            "in_hit": in_lines * (1 - miss_in), "in_miss": in_lines * miss_in,
            "in_bytes": in_b, "in_miss_bytes": in_b * miss_in,
            "w_cmds": cmds_w * load_w, "w_rows": rows_w,
            "w_hit": w_lines * (1 - miss_w), "w_miss": w_lines * miss_w,
            "w_bytes": w_b, "w_miss_bytes": w_b * miss_w,
            "st_cmds": cmds_st, "st_rows": rows_st,
            "st_bytes": np.broadcast_to(bytes_["output"], shape),
            "st_stores": pixels_out * (-(-pochs_ // cfg.dim)), "dim": np.full(shape, cfg.dim),
            "short_passes": short, "short_rows": short_rows}
    return {k: np.broadcast_to(v, shape).astype(float).ravel() for k, v in flat.items()}


#: flat prefixes of `calibration_terms` -> the streams of `parconv.gemmini.cycles.dma_command_excess`
COMMAND_PREFIXES = {"input": "in_", "weight": "w_", "output": "st_"}


def commands_of(terms: dict) -> dict:
    """The ``commands`` argument of `parconv.gemmini.cycles.layer_cycles` from the flat terms
    of `calibration_terms` (or of parconv's tiles, same keys)."""
    out = {stream: {k: terms[prefix + k] for k in COMMAND_KEYS if prefix + k in terms}
           for stream, prefix in COMMAND_PREFIXES.items()}
    out["dim"] = terms["dim"]
    return out


def short_of(terms: dict) -> tuple:
    """The ``short`` argument of `parconv.gemmini.cycles.layer_cycles` (the pass floor's short
    passes and their rows) from the flat terms; no short passes when the terms have none."""
    if "short_passes" not in terms:
        return (0.0, 0.0)
    return terms["short_passes"], terms["short_rows"]


def calibrated_total(terms: dict, constants) -> float:
    """The calibrated cycles of the whole layer (`parconv.gemmini.cycles.layer_cycles`)."""
    return layer_cycles(constants, terms["weight"], terms["exec"], terms["passes"], terms["hit"],
                        terms["miss"], terms["moved"], stores=terms["stores"],
                        miss_bytes=terms["miss_bytes"], commands=commands_of(terms),
                        short=short_of(terms))
