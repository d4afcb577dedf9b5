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
from ..cycles import (PARCONV_TO_LIBRARY, CycleConstants, call_phases, load_constants, load_misses,
                      overlap_cycles, row_piece_lines)

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


def _piece_lines(row_bytes: np.ndarray, piece: int, steps: np.ndarray) -> np.ndarray:
    """`mean_piece_lines` of each row (its own start step), evaluated once per distinct (row
    length, step) pair (the tiles of a few candidates have a few)."""
    width = int(steps.max()) + 1
    key = row_bytes.astype(np.int64) * width + steps
    top = int(key.max()) + 1
    if top <= 4 * key.size:
        # few small keys: a table indexed by the key instead of sorting the tiles' keys
        present = np.zeros(top, dtype=bool)
        present[key] = True
        table = np.zeros(top)
        table[present] = [row_piece_lines(int(k) // width, piece, int(k) % width)
                          for k in np.flatnonzero(present)]
        return table[key].reshape(np.shape(row_bytes))
    values, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    lines = np.array([row_piece_lines(int(row_bytes[i]), piece, int(steps[i])) for i in first],
                     dtype=float)
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
    are the mvout rows of the output and of spilled partial sums; its DMA commands (mvins of
    inputs and weights, mvouts of outputs and spills, `_commands`) price the command latency
    (`parconv.gemmini.cycles.dma_command_excess`).  ``constants`` defaults to the fitted ones.
    """
    return tiling_costs(spec, [(tiling, order)], config, strided=strided, bias=bias,
                        constants=constants)[0]


def tiling_costs(spec: ConvSpec, candidates, config, *, strided: bool = False,
                 bias: bool | None = None, constants: CycleConstants | None = None) -> list:
    """`tiling_cost` of each (tiling, order) of ``candidates``, in one vectorised pass over
    all their tiles (in pieces of at most `CHUNK` tiles).  Local."""
    bias = config.has_bias if bias is None else bias
    ext = np.asarray(extents(spec), dtype=np.int64)
    constants = constants or load_constants()
    dilated = max(spec.dilation) > 1
    piece = config.max_block_len * config.dim     # columns of the widest mvin
    plans, pieces = [], []
    windows = {}                                  # (axis, t_out, t_k) -> window table
    for tiling, order in candidates:
        check_order(order)
        t = np.asarray(tiling.clipped(spec).as_tuple(), dtype=np.int64)
        trips = -(-ext // t)
        dims = [int(trips[_I[loop]]) for loop in order]
        total = math.prod(dims)
        # DMA rows start at pixel * C + c0 and (c, r, s) * K + k0: offsets in a line are
        # multiples of gcd(C, tC) and gcd(K, tK) (`mean_lines`)
        steps = (math.gcd(spec.in_channels, int(t[2])) * config.input_bytes,
                 math.gcd(spec.out_channels, int(t[1])) * config.weight_bytes)
        plans.append({"t": t, "trips": trips, "dims": dims, "total": total, "order": order,
                      "steps": steps, "chunks": [], "where": [order.index(l) for l in LOOPS],
                      "rows_table": _window_table(windows, spec, 0, int(t[3]), int(t[5])),
                      "cols_table": _window_table(windows, spec, 1, int(t[4]), int(t[6]))})
        pieces += [(len(plans) - 1, lo, min(lo + CHUNK, total)) for lo in range(0, total, CHUNK)]
    batch, size = [], 0
    for item in pieces + [None]:
        if item is None or (batch and size + item[2] - item[1] > CHUNK):
            _cost_pieces(spec, plans, batch, config, bias, strided, dilated, piece)
            batch, size = [], 0
        if item is not None:
            batch.append(item)
            size += item[2] - item[1]
    calibrated = _calibrated_all(plans, constants, config.dim)
    out = []
    for plan, calibrated_cycles in zip(plans, calibrated):
        chunks = plan["chunks"]
        dram = {stream: sum(c["dram"][stream] for c in chunks) for stream in STREAMS}
        dram["total"] = sum(dram.values())
        mvin = {k: sum(c["mvin"][k] for c in chunks) for k in ("input", "weight", "bias", "psum")}
        mvout = {k: sum(c["mvout"][k] for c in chunks) for k in ("output", "psum")}
        cycles = dma = 0.0
        for c in chunks:
            cycles += c["cycles"]
            dma += c["dma"]
        out.append(ModelCost(
            tile=tuple(int(v) for v in plan["t"]), order=plan["order"], calls=plan["total"],
            dram_bytes=dram, mvin_rows=mvin, mvout_rows=mvout,
            passes=sum(c["passes_sum"] for c in chunks),
            exec_cycles=sum(c["exec_sum"] for c in chunks), cycles=cycles, dma_cycles=dma,
            memory_bound_calls=sum(c["mem_bound"] for c in chunks), macs=spec.G,
            peak_macs_per_cycle=config.dim ** 2, calibrated_cycles=calibrated_cycles))
    return out


def _window_table(tables: dict, spec: ConvSpec, axis: int, t_out: int, t_k: int) -> np.ndarray:
    """`axis_window_table` of one axis, once per block size pair among the candidates."""
    key = (axis, t_out, t_k)
    if key not in tables:
        tables[key] = axis_window_table(*spec.axis(axis), t_out, t_k)
    return tables[key]


def _cost_pieces(spec, plans, batch, config, bias, strided, dilated, piece) -> None:
    """Cost the tiles ``[lo, hi)`` of each (plan, lo, hi) of ``batch`` at once; appends each
    piece's sums and per-tile arrays to its plan's ``chunks``."""
    if not batch:
        return
    ext = np.asarray(extents(spec), dtype=np.int64)
    chosen = [plans[index] for index, _, _ in batch]
    sizes = [hi - lo for _, lo, hi in batch]

    def per_tile(values) -> np.ndarray:
        # one value per (piece, loop) -> one column per tile (LOOPS order rows)
        return np.repeat(np.asarray(values, dtype=np.int64).reshape(len(batch), -1).T, sizes,
                         axis=1)

    # block indices (LOOPS order rows) of every piece's tiles, one column per tile; the tiles
    # before and after a tile are its neighbours in the columns, except at a piece's ends
    def blocks(plan, lo, hi) -> np.ndarray:
        if (lo, hi) == (0, plan["total"]):     # a whole plan: every index combination
            return np.indices(plan["dims"]).reshape(len(LOOPS), -1)[plan["where"]]
        return np.stack(np.unravel_index(np.arange(lo, hi), plan["dims"]))[plan["where"]]

    cur = np.concatenate([blocks(plan, lo, hi) for plan, (_, lo, hi) in zip(chosen, batch)],
                         axis=1)
    ends = np.cumsum(sizes)
    starts = ends - sizes
    # a tile's block indices differ from the next tile's exactly where the next one's differ
    # from its previous: one comparison gives both, the pieces' ends are fixed below
    changed, changes = np.empty(cur.shape, dtype=bool), np.empty(cur.shape, dtype=bool)
    np.not_equal(cur[:, 1:], cur[:, :-1], out=changed[:, 1:])
    changes[:, :-1] = changed[:, 1:]
    # the tile before each piece's first and after its last (itself at the plan's ends)
    edge_strides = np.array([[math.prod(plan["dims"][plan["order"].index(loop) + 1:])
                              for loop in LOOPS] for plan in chosen], dtype=np.int64).T
    edge_trips = np.array([plan["trips"] for plan in chosen], dtype=np.int64).T
    before = np.array([max(lo - 1, 0) for _, lo, _ in batch], dtype=np.int64)
    after = np.array([min(hi, plan["total"] - 1) for plan, (_, _, hi) in zip(chosen, batch)],
                     dtype=np.int64)
    changed[:, starts] = cur[:, starts] != before // edge_strides % edge_trips
    changes[:, ends - 1] = cur[:, ends - 1] != after // edge_strides % edge_trips
    trips = per_tile([plan["trips"] for plan in chosen])
    flat = np.concatenate([np.arange(lo, hi, dtype=np.int64) for _, lo, hi in batch])
    last_tile = np.repeat([plan["total"] - 1 for plan in chosen], sizes)
    t = per_tile([plan["t"] for plan in chosen])
    crs = [_I[loop] for loop in "CRS"]
    head, tail = flat == 0, flat == last_tile
    reduction_start = ~cur[crs].any(axis=0)
    reduction_end = (cur[crs] == trips[crs] - 1).all(axis=0)
    load_in = head | changed[_ROWS["NCHWRS"]].any(axis=0)
    load_w = head | changed[_ROWS["KCRS"]].any(axis=0)
    visit_start = head | changed[_ROWS["NKHW"]].any(axis=0)
    visit_end = tail | changes[_ROWS["NKHW"]].any(axis=0)
    in_rows, in_cols = (_lookup([plan[table] for plan in chosen], sizes, cur[_I[a]], cur[_I[b]])
                        for table, a, b in (("rows_table", "H", "R"), ("cols_table", "W", "S")))
    window = in_rows * in_cols
    nN, nK, nC, nH, nW, nR, nS = np.minimum(t, ext[:, None] - cur * t)
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
    commands = _commands(config, load_in, load_w, visit_end, nN, nK, nC, nH, nW, nR, nS,
                         in_rows, in_cols, per_tile)
    rows = {"mvin_input": load_in * nN * window * rules.ceil_div(nC, config.dim),
            "mvin_weight": load_w * rules.ceil_div(nK, config.dim) * nR * nS * nC,
            "mvin_bias": (first_visit * bias) * acc_rows, "mvin_psum": readback * acc_rows,
            "mvout_output": (visit_end & reduction_end) * acc_rows,
            "mvout_psum": (visit_end & ~reduction_end) * acc_rows}
    mpp = rules.max_pixels_per_row(config, nC, nS, strided, dilated)
    work = (nN, nH, nW, nK, nR, nS, nC, mpp, config.dim)
    exec_cycles = rules.exec_cycles(*work)
    passes = rules.passes(*work)
    short, short_rows = rules.short_passes(*work)
    moved = sum(per_tile.values())
    tile_dma = moved / config.bw_eff
    line_rows = ((first_visit * bias) * acc_rows + readback * acc_rows).astype(float)
    stores = (visit_end * acc_rows).astype(float)
    bounds = np.cumsum([0] + [hi - lo for _, lo, hi in batch])
    segments = bounds[:-1]
    in_steps, w_steps = (np.repeat([plans[index]["steps"][j] for index, _, _ in batch],
                                   np.diff(bounds)) for j in (0, 1))
    in_lines = load_in * nN * window * _piece_lines(nC * config.input_bytes,
                                                    piece * config.input_bytes, in_steps)
    w_lines = load_w * nC * nR * nS * _piece_lines(nK * config.weight_bytes,
                                                   piece * config.weight_bytes, w_steps)
    # integer sums of every piece at once (exact); float sums per piece as one np.sum each
    ints = {k: np.add.reduceat(v, segments) for k, v in
            {**{f"dram_{k}": v for k, v in per_tile.items()}, **rows, "exec": exec_cycles,
             "passes": passes, "mem_bound": (tile_dma > exec_cycles).astype(np.int64)}.items()}
    roofline = np.maximum(exec_cycles, tile_dma)
    whole = {"exec": exec_cycles, "passes": passes, "load_in": load_in, "short_passes": short,
             "short_rows": short_rows, "load_w": load_w, "moved": moved, "in_lines": in_lines,
             "w_lines": w_lines, "stores": stores, "in_bytes": per_tile["input"],
             "w_bytes": per_tile["weight"], "other_lines": line_rows, **commands}
    for j, (index, lo, hi) in enumerate(batch):
        plan, a, b = plans[index], bounds[j], bounds[j + 1]
        plan["chunks"].append({
            "dram": {k: int(ints[f"dram_{k}"][j]) for k in STREAMS},
            "mvin": {k: int(ints[f"mvin_{k}"][j]) for k in ("input", "weight", "bias", "psum")},
            "mvout": {k: int(ints[f"mvout_{k}"][j]) for k in ("output", "psum")},
            "exec_sum": int(ints["exec"][j]), "passes_sum": int(ints["passes"][j]),
            "mem_bound": int(ints["mem_bound"][j]),
            "cycles": float(roofline[a:b].sum()), "dma": float(tile_dma[a:b].sum()),
            "arrays": {k: v[a:b] for k, v in whole.items()}, "batch": (whole, a, b)})


def _lookup(tables: list, sizes: list, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``tables[p][rows, cols]`` for the tiles of each piece p (``sizes[p]`` tiles in turn), as
    one gather from the tables laid end to end."""
    offsets = np.cumsum([0] + [table.size for table in tables[:-1]])
    flat = np.concatenate([table.ravel() for table in tables])
    width = np.repeat([table.shape[1] for table in tables], sizes)
    return flat[np.repeat(offsets, sizes) + rows * width + cols]


def _commands(config, load_in, load_w, visit_end, nN, nK, nC, nH, nW, nR, nS, in_rows, in_cols,
              per_tile) -> dict:
    """DMA commands of each tile and their rows, as the library's loop issues them
    (`parconv.gemmini.vendor.calibrated.calibration_terms`): one input mvin per (batch, input
    row, dim columns, piece of channels), one weight mvin per (piece of output channels, kernel
    position, dim input channels), one mvout per (batch, output row, dim columns, dim
    channels) of the output or of a partial-sum spill."""
    wide = config.max_block_len * config.dim
    in_blocks = np.maximum(rules.ceil_div(in_cols, config.dim), 1)
    w_blocks = rules.ceil_div(nC, config.dim)
    out_blocks = rules.ceil_div(nW, config.dim)
    return {"in_cmds": load_in * nN * in_rows * in_blocks * rules.ceil_div(nC, wide),
            "in_rows": in_cols / in_blocks,
            "w_cmds": load_w * rules.ceil_div(nK, wide) * nR * nS * w_blocks,
            "w_rows": nC / w_blocks,
            "st_cmds": visit_end * nN * nH * out_blocks * rules.ceil_div(nK, config.dim),
            "st_rows": nW / np.maximum(out_blocks, 1),
            "st_bytes": per_tile["output"] + per_tile["psum"]}


def _calibrated_all(plans: list, constants: CycleConstants, dim: int) -> list[float]:
    """`layer_cycles` of every plan's tiles (one call each), the elementwise work done once over
    the tiles of all plans; the L2 misses of each operand (`load_misses` for the plan's order,
    whose loads are already the non-consecutive ones) are spread over its loads.  Each plan's
    sums are sums of its own contiguous slice, so every figure has the bits of `layer_cycles`
    on that plan alone (a product with the plan's miss fraction is the same product, per tile)."""
    chunks = [c for plan in plans for c in plan["chunks"]]
    if not chunks:
        return []
    whole, _, _ = chunks[0]["batch"]
    if all(c["batch"][0] is whole for c in chunks) and \
            [c["batch"][1] for c in chunks] == [0] + [c["batch"][2] for c in chunks[:-1]] \
            and chunks[-1]["batch"][2] == len(whole["exec"]):
        # one batch, in plan order: its arrays are already the plans' tiles laid end to end
        cat = {k: np.asarray(v, dtype=float) for k, v in whole.items()}
    else:
        cat = {k: np.concatenate([np.ravel(c["arrays"][k]) for c in chunks]).astype(float)
               for k in chunks[0]["arrays"]}
    sizes = [sum(int(np.size(c["arrays"]["exec"])) for c in plan["chunks"]) for plan in plans]
    starts = np.cumsum([0] + sizes)
    frac_in, frac_w = [], []
    for plan, a, b in zip(plans, starts[:-1], starts[1:]):
        # integer-valued sums (exact in float64 in any order)
        loads = {"input": cat["load_in"][a:b].sum(), "weight": cat["load_w"][a:b].sum()}
        per_load = {"input": cat["in_bytes"][a:b].sum() / max(loads["input"], 1.0),
                    "weight": cat["w_bytes"][a:b].sum() / max(loads["weight"], 1.0)}
        library = plan["order"][::-1].translate(PARCONV_TO_LIBRARY)
        letters = dict(zip(LOOPS.translate(PARCONV_TO_LIBRARY), (int(v) for v in plan["trips"])))
        misses = load_misses(library, letters, per_load, constants.l2_bytes)
        frac = {k: min(misses[k] / loads[k], 1.0) if loads[k] else 0.0 for k in loads}
        frac_in.append(frac["input"])
        frac_w.append(frac["weight"])
    f_in, f_w = (np.repeat(np.array(f, dtype=float), sizes) for f in (frac_in, frac_w))
    h_in, h_w = (np.repeat(1 - np.array(f, dtype=float), sizes) for f in (frac_in, frac_w))
    miss = cat["in_lines"] * f_in + cat["w_lines"] * f_w
    hit = cat["in_lines"] * h_in + cat["w_lines"] * h_w + cat["other_lines"]
    miss_bytes = cat["in_bytes"] * f_in + cat["w_bytes"] * f_w
    commands = {"dim": dim,
                "input": {"cmds": cat["in_cmds"], "rows": cat["in_rows"],
                          "hit": cat["in_lines"] * h_in, "miss": cat["in_lines"] * f_in,
                          "bytes": cat["in_bytes"], "miss_bytes": cat["in_bytes"] * f_in},
                "weight": {"cmds": cat["w_cmds"], "rows": cat["w_rows"],
                           "hit": cat["w_lines"] * h_w, "miss": cat["w_lines"] * f_w,
                           "bytes": cat["w_bytes"], "miss_bytes": cat["w_bytes"] * f_w},
                "output": {"cmds": cat["st_cmds"], "rows": cat["st_rows"],
                           "bytes": cat["st_bytes"], "stores": cat["stores"]}}
    x, load = call_phases(constants, cat["exec"], cat["passes"], hit, miss, cat["moved"],
                      cat["stores"], miss_bytes, commands,
                      (cat["short_passes"], cat["short_rows"]))
    cycles = overlap_cycles(constants, x, load)
    out = []
    for a, b in zip(starts[:-1].tolist(), starts[1:].tolist()):
        # `layer_cycles` with one call per tile: the calls' cycles, plus the pipeline fill
        total = float(cycles[a:b].sum())
        if b > a:
            total += min(float(x[a:b].sum()), float(load[a:b].sum())) / float(b - a)
        out.append(total)
    return out
