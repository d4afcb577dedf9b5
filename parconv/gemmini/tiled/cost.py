"""Exact cost of a parconv (tiling, loop order) on the Gemmini model, evaluated per tile without
moving data.  Pure numpy, no MPI.

The tiles are enumerated in visiting order as index arrays (in chunks), and for each tile the
model of `parconv.gemmini.executor` is applied elementwise: an input or weight block is moved in
when the previous tile used another block (consecutive reuse), an output block's first visit loads
the bias (``bias_bytes`` per ``dim`` output pixels of a row and output channel), a later visit reads
back its spilled partial sums, and the end of a visit writes the block as final output or as a
partial-sum spill.  Bytes are the in-image windows of the traffic contract (theory.md 6.3), so
``input + weight + output + psum`` equals `parconv.tiling.traffic` exactly and ``bias`` is the
extra stream.  Each tile costs ``max(exec_cycles, bytes / bw_eff)`` with the pass model of
`parconv.gemmini.call_rules.exec_cycles`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ...spec import ConvSpec
from ...tiling import LOOPS, Tiling, axis_window_table, check_order, extents
from .. import call_rules as rules
from ..cycles import (PARCONV_TO_LIBRARY, CycleConstants, layer_cycles, load_constants,
                      load_misses, mean_piece_lines)

STREAMS = ("input", "weight", "bias", "output", "psum")
_I = {loop: i for i, loop in enumerate(LOOPS)}
#: tiles evaluated at once (bounds the memory of the index arrays)
CHUNK = 1 << 17


@dataclasses.dataclass(frozen=True)
class ModelCost(rules.Utilization):
    """DRAM bytes per stream, rows moved and modelled cycles of one (tiling, order).

    ``tile`` is (tN, tK, tC, tH, tW, tR, tS); ``dram_bytes`` has the five streams and ``total``;
    ``cycles`` sums ``max(exec, bytes / bw_eff)`` over the tiles (``calls``), ``dma_cycles``
    sums ``bytes / bw_eff``; ``utilization = macs / (dim^2 cycles)``.  ``calibrated_cycles`` is
    the calibrated model of `parconv.gemmini.cycles` (the objective of parconv's tiling search).
    """

    tile: tuple
    order: str
    calls: int
    dram_bytes: dict
    mvin_rows: dict
    mvout_rows: dict
    passes: int
    exec_cycles: int
    cycles: float
    dma_cycles: float
    memory_bound_calls: int
    macs: int
    peak_macs_per_cycle: int
    calibrated_cycles: float = float("nan")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["tile"] = list(self.tile)
        out["utilization"] = self.utilization
        return out


#: rows of the loops each array depends on (block-index rows in LOOPS order)
_ROWS = {loops: [_I[loop] for loop in loops] for loops in ("NCHWRS", "KCRS", "NKHW")}


def _piece_lines(row_bytes: np.ndarray, piece: int, step: int) -> np.ndarray:
    """`mean_piece_lines` of each row, evaluated once per distinct row length (a layer's tiles
    have a few)."""
    values, inverse = np.unique(row_bytes, return_inverse=True)
    lines = np.asarray(mean_piece_lines(values, piece, step), dtype=float)
    return lines[inverse].reshape(np.shape(row_bytes))


def tiling_cost(spec: ConvSpec, tiling: Tiling, order: str, config, *, strided: bool = False,
                bias: bool | None = None, constants: CycleConstants | None = None) -> ModelCost:
    """The Gemmini-model cost of ``spec`` tiled by ``tiling`` in loop order ``order``.  Local.

    ``config`` gives the element sizes, ``dim``, ``bw_eff`` and the first-layer rule;
    ``strided`` marks a subsampled 1x1 layer (no first-layer packing then, like downsample);
    ``bias`` defaults to ``config.has_bias``.  ``calibrated_cycles`` applies
    `parconv.gemmini.cycles.layer_cycles` to the tiles (a tile is one call): its DMA lines are
    the input rows (one per in-image pixel, ``nC`` bytes at a stride of C), weight rows (one per
    (c, r, s), ``nK`` bytes at a stride of K), both cut into mvins of ``max_block_len * dim``
    columns (`mean_piece_lines`), bias and partial-sum rows (one line each), split into L2 hits
    and misses by `parconv.gemmini.cycles.load_misses` for ``order`` (cold start); its stores
    are the mvout rows of the output and of spilled partial sums.
    ``constants`` defaults to the fitted ones.
    """
    check_order(order)
    bias = config.has_bias if bias is None else bias
    ext = np.asarray(extents(spec), dtype=np.int64)
    t = np.asarray(tiling.clipped(spec).as_tuple(), dtype=np.int64)
    trips = -(-ext // t)
    dims = [int(trips[_I[loop]]) for loop in order]
    total_tiles = math.prod(dims)
    # DMA rows start at pixel * C + c0 and (c, r, s) * K + k0: offsets in a line are multiples
    # of gcd(C, tC) and gcd(K, tK) (`mean_lines`)
    steps = (math.gcd(spec.in_channels, int(t[2])) * config.input_bytes,
             math.gcd(spec.out_channels, int(t[1])) * config.weight_bytes)
    piece = config.max_block_len * config.dim     # columns of the widest mvin
    rows_table = axis_window_table(*spec.axis(0), int(t[3]), int(t[5]))
    cols_table = axis_window_table(*spec.axis(1), int(t[4]), int(t[6]))
    dilated = max(spec.dilation) > 1
    constants = constants or load_constants()
    sums = dict.fromkeys(("exec", "passes", "mem_bound"), 0)
    chunks = []
    cycles = dma = 0.0
    dram = dict.fromkeys(STREAMS, 0)
    mvin = dict.fromkeys(("input", "weight", "bias", "psum"), 0)
    mvout = dict.fromkeys(("output", "psum"), 0)
    where = [order.index(loop) for loop in LOOPS]
    for start in range(0, total_tiles, CHUNK):
        stop = min(start + CHUNK, total_tiles)
        flat = np.arange(start, stop, dtype=np.int64)
        # block indices (LOOPS order, one row per loop) of the tiles from start - 1 to stop
        lo = max(start - 1, 0)
        every = np.stack(np.unravel_index(np.arange(lo, min(stop + 1, total_tiles)), dims))[where]
        cur = every[:, start - lo:stop - lo]
        prev = every[:, np.maximum(flat - 1, 0) - lo]
        nxt = every[:, np.minimum(flat + 1, total_tiles - 1) - lo]
        head, tail = flat == 0, flat == total_tiles - 1
        nN, nK, nC, nH, nW, nR, nS = np.minimum(t[:, None], ext[:, None] - cur * t[:, None])
        crs = [_I[loop] for loop in "CRS"]
        reduction_start = ~cur[crs].any(axis=0)
        reduction_end = (cur[crs] == trips[crs, None] - 1).all(axis=0)
        changed, changes = cur != prev, cur != nxt
        load_in = head | changed[_ROWS["NCHWRS"]].any(axis=0)
        load_w = head | changed[_ROWS["KCRS"]].any(axis=0)
        visit_start = head | changed[_ROWS["NKHW"]].any(axis=0)
        visit_end = tail | changes[_ROWS["NKHW"]].any(axis=0)
        window = rows_table[cur[_I["H"]], cur[_I["R"]]] * cols_table[cur[_I["W"]], cur[_I["S"]]]
        out_elems = nN * nK * nH * nW
        acc_rows = nN * nH * nW * rules.ceil_div(nK, config.dim)
        first_visit = visit_start & reduction_start
        readback = visit_start & ~reduction_start
        per_tile = {
            "input": load_in * nN * nC * window * config.input_bytes,
            "weight": load_w * nK * nC * nR * nS * config.weight_bytes,
            "bias": (first_visit * bias) * nN * nH * rules.ceil_div(nW, config.dim) * nK
            * config.bias_bytes,
            "output": (visit_end & reduction_end) * out_elems * config.output_bytes,
            # a tile may both read back and spill: count the two transfers (not a logical or)
            "psum": (readback.astype(np.int64) + (visit_end & ~reduction_end))
            * out_elems * config.acc_bytes}
        for stream, values in per_tile.items():
            dram[stream] += int(values.sum())
        mvin["input"] += int((load_in * nN * window * rules.ceil_div(nC, config.dim)).sum())
        mvin["weight"] += int((load_w * rules.ceil_div(nK, config.dim) * nR * nS * nC).sum())
        mvin["bias"] += int(((first_visit * bias) * acc_rows).sum())
        mvin["psum"] += int((readback * acc_rows).sum())
        mvout["output"] += int(((visit_end & reduction_end) * acc_rows).sum())
        mvout["psum"] += int(((visit_end & ~reduction_end) * acc_rows).sum())
        mpp = rules.max_pixels_per_row(config, nC, nS, strided, dilated)
        work = (nN, nH, nW, nK, nR, nS, nC, mpp, config.dim)
        exec_cycles = rules.exec_cycles(*work)
        passes = rules.passes(*work)
        line_rows = ((first_visit * bias) * acc_rows + readback * acc_rows).astype(float)
        chunks.append({
            "exec": exec_cycles, "passes": passes, "load_in": load_in,
            "load_w": load_w, "moved": sum(per_tile.values()),
            "in_lines": load_in * nN * window * _piece_lines(
                nC * config.input_bytes, piece * config.input_bytes, steps[0]),
            "w_lines": load_w * nC * nR * nS * _piece_lines(
                nK * config.weight_bytes, piece * config.weight_bytes, steps[1]),
            "stores": (visit_end * acc_rows).astype(float),
            "in_bytes": per_tile["input"], "w_bytes": per_tile["weight"],
            "other_lines": line_rows})
        tile_dma = sum(per_tile.values()) / config.bw_eff
        sums["exec"] += int(exec_cycles.sum())
        sums["passes"] += int(passes.sum())
        sums["mem_bound"] += int((tile_dma > exec_cycles).sum())
        cycles += float(np.maximum(exec_cycles, tile_dma).sum())
        dma += float(tile_dma.sum())
    dram["total"] = sum(dram.values())
    calibrated = _calibrated(chunks, order, trips, constants)
    return ModelCost(tile=tuple(int(v) for v in t), order=order, calls=total_tiles,
                     dram_bytes=dram, mvin_rows=mvin, mvout_rows=mvout, passes=sums["passes"],
                     exec_cycles=sums["exec"], cycles=cycles, dma_cycles=dma,
                     memory_bound_calls=sums["mem_bound"], macs=spec.G,
                     peak_macs_per_cycle=config.dim ** 2, calibrated_cycles=calibrated)


def _calibrated(chunks: list, order: str, trips, constants: CycleConstants) -> float:
    """`layer_cycles` over all tiles (one call each); the L2 misses of each operand
    (`load_misses` for ``order``, whose loads are already the non-consecutive ones) are spread
    over its loads."""
    cat = {k: np.concatenate([np.ravel(c[k]) for c in chunks]).astype(float) for k in chunks[0]}
    loads = {"input": cat["load_in"].sum(), "weight": cat["load_w"].sum()}
    per_load = {"input": cat["in_bytes"].sum() / max(loads["input"], 1.0),
                "weight": cat["w_bytes"].sum() / max(loads["weight"], 1.0)}
    library = order[::-1].translate(PARCONV_TO_LIBRARY)
    letters = dict(zip(LOOPS.translate(PARCONV_TO_LIBRARY), (int(v) for v in trips)))
    misses = load_misses(library, letters, per_load, constants.l2_bytes)
    frac = {k: min(misses[k] / loads[k], 1.0) if loads[k] else 0.0 for k in loads}
    miss = cat["in_lines"] * frac["input"] + cat["w_lines"] * frac["weight"]
    hit = (cat["in_lines"] * (1 - frac["input"]) + cat["w_lines"] * (1 - frac["weight"])
           + cat["other_lines"])
    miss_bytes = cat["in_bytes"] * frac["input"] + cat["w_bytes"] * frac["weight"]
    return layer_cycles(constants, np.ones_like(cat["exec"]), cat["exec"], cat["passes"], hit,
                        miss, cat["moved"], stores=cat["stores"], miss_bytes=miss_bytes)
