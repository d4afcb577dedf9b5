"""The cost of a whole layer run by the library's conv tile loop (gemmini.md 4.6-4.7, 11): DRAM
bytes per stream, requests, passes and the roofline and calibrated cycles, summed without walking
every call (`vendor_layer_cost`: the calls grouped by their truncated sizes and windows, which are
few per axis) or by walking them (`cost_by_walking`, the check).  Pure data, no MPI.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .. import call_rules as rules
from ..call_rules import AxisGeometry, AxisWindow, axis_window
from ..config import GemminiConfig
from ..cycles import CycleConstants, auto_search_cycles, load_constants
from .calibrated import calibrated_total, calibration_terms
from .calls import LIBRARY_ORDER, STREAMS, VendorLoop, call_cost, iter_calls, vendor_loop
from .heuristics import VendorConvTile, auto_search_steps


@dataclasses.dataclass(frozen=True)
class LayerCost(rules.Utilization):
    """DRAM traffic and modelled cycles of one layer run by the library's loop.

    ``dram_bytes`` has ``input``, ``weight``, ``bias``, ``output`` and ``total``; ``requests`` the
    DRAM row requests per stream (mvin rows for the first three, mvout rows for ``output``);
    ``cycles`` sums ``max(exec, bytes / bw_eff)`` over the calls (the roofline: calls only,
    never the tile search), ``dma_cycles`` sums
    ``bytes / bw_eff``; ``memory_bound_calls`` counts calls where the DMA term wins.
    ``utilization = macs / (dim^2 cycles)`` with ``macs = N H W K R S C`` (before pooling).
    ``calibrated_cycles`` is the calibrated model of `parconv.gemmini.cycles` (NaN from
    `cost_by_walking`, which checks the roofline terms only) plus ``search_cycles``, the core's
    cycles of ``tiled_conv_auto``'s tile search before the first call
    (`parconv.gemmini.cycles.auto_search_cycles`; 0 for ``tiled_conv`` with a given tile);
    ``calibration_terms`` are the per-call-group inputs of the calls' part
    (`parconv.gemmini.vendor.calibrated.calibration_terms`).
    """

    tile: VendorConvTile
    counts: tuple
    a_reuse: bool
    b_reuse: bool
    calls: int
    dram_bytes: dict
    requests: dict
    passes: int
    exec_cycles: int
    cycles: float
    dma_cycles: float
    memory_bound_calls: int
    macs: int
    peak_macs_per_cycle: int
    config_name: str
    semantics: str
    pool: tuple
    calibrated_cycles: float = float("nan")
    calibration_terms: dict | None = dataclasses.field(default=None, compare=False, repr=False)
    search_cycles: float = 0.0

    @property
    def exec_utilization(self) -> float:
        """Utilization of the execute model alone (no memory term)."""
        return self.macs / (self.peak_macs_per_cycle * self.exec_cycles) if self.exec_cycles \
            else 0.0

    def to_dict(self) -> dict:
        """JSON-ready summary (the tile as its 7-tuple in library order)."""
        return {"tile": list(self.tile.as_tuple()), "downsample": self.tile.downsample,
                "spad_rows": self.tile.spad_rows, "acc_rows": self.tile.acc_rows,
                "counts": list(self.counts), "a_reuse": self.a_reuse, "b_reuse": self.b_reuse,
                "calls": self.calls, "dram_bytes": dict(self.dram_bytes),
                "requests": dict(self.requests), "passes": self.passes,
                "exec_cycles": self.exec_cycles, "cycles": self.cycles,
                "dma_cycles": self.dma_cycles, "memory_bound_calls": self.memory_bound_calls,
                "macs": self.macs, "utilization": self.utilization,
                "exec_utilization": self.exec_utilization, "config": self.config_name,
                "semantics": self.semantics, "pool": list(self.pool),
                "calibrated_cycles": self.calibrated_cycles,
                "search_cycles": self.search_cycles}


def _layer_cost(loop: VendorLoop, *, calls, bytes_, requests, passes, exec_total, cycles,
                dma_cycles, memory_bound, calibrated=float("nan"), terms=None,
                search=0.0) -> LayerCost:
    dram = {s: int(bytes_[s]) for s in STREAMS}
    dram["total"] = sum(dram.values())
    return LayerCost(tile=loop.tile, counts=loop.counts, a_reuse=loop.a_reuse,
                     b_reuse=loop.b_reuse, calls=int(calls), dram_bytes=dram,
                     requests={s: int(requests[s]) for s in STREAMS}, passes=int(passes),
                     exec_cycles=int(exec_total), cycles=float(cycles),
                     dma_cycles=float(dma_cycles), memory_bound_calls=int(memory_bound),
                     macs=loop.spec.G, peak_macs_per_cycle=loop.config.peak_macs_per_cycle,
                     config_name=loop.config.name, semantics=loop.config.semantics,
                     pool=(loop.pool.size, loop.pool.stride, loop.pool.padding),
                     calibrated_cycles=float(calibrated), calibration_terms=terms,
                     search_cycles=float(search))


def cost_by_walking(loop: VendorLoop) -> LayerCost:
    """`LayerCost` summed over `iter_calls` one call at a time (slow; the reference for tests)."""
    totals = {s: 0 for s in STREAMS}
    reqs = {s: 0 for s in STREAMS}
    calls = passes = exec_total = memory_bound = 0
    cycles = dma = 0.0
    for call in iter_calls(loop):
        calls += 1
        for s in STREAMS:
            totals[s] += call.bytes[s]
            reqs[s] += call.requests[s]
        passes += call.passes
        exec_total += call.exec_cycles
        cycles += call.cycles
        dma += call.total_bytes / loop.config.bw_eff
        memory_bound += call.total_bytes / loop.config.bw_eff > call.exec_cycles
    return _layer_cost(loop, calls=calls, bytes_=totals, requests=reqs, passes=passes,
                       exec_total=exec_total, cycles=cycles, dma_cycles=dma,
                       memory_bound=memory_bound)


def _grouped(columns, axis: int):
    """Distinct rows of the stacked attribute ``columns`` (any equal shapes) and their
    multiplicities, each column reshaped to lie along ``axis`` of a 5-D grid."""
    table = np.stack([np.ravel(c) for c in np.broadcast_arrays(*columns)], axis=1)
    unique, counts = _unique_rows(table)
    shape = [1] * 5
    shape[axis] = len(counts)
    return [unique[:, j].reshape(shape) for j in range(unique.shape[1])], counts.reshape(shape)


def _unique_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(table, axis=0, return_counts=True)`` of an integer table: the same sorted
    rows and counts, from one mixed-radix key per row (a 1-D sort) when the rows are
    non-negative and the key fits in int64."""
    if table.dtype.kind not in "iub" or not len(table) or table.min() < 0:
        return np.unique(table, axis=0, return_counts=True)
    radix = [int(v) + 1 for v in table.max(axis=0)]
    if math.prod(radix) >= 2 ** 62:
        return np.unique(table, axis=0, return_counts=True)
    weights = np.array([math.prod(radix[j + 1:]) for j in range(len(radix))], dtype=np.int64)
    _, first, counts = np.unique(table.astype(np.int64) @ weights, return_index=True,
                                 return_counts=True)
    return table[first], counts


def _spatial_groups(loop: VendorLoop, axis: int, geom: AxisGeometry, grid_axis: int):
    """Groups of (pooled-output tile, kernel tile) pairs along one spatial axis."""
    po, po_len = loop.starts(axis)[:, None], loop.sizes(axis)[:, None]
    k, k_len = loop.starts(axis + 3)[None, :], loop.sizes(axis + 3)[None, :]
    win = axis_window(geom, po, po_len, k, k_len)
    kernel = loop.extents[axis + 3]
    return _grouped([win.o_eff, win.i_loaded, po_len, k_len, po == 0, k == 0,
                     k + k_len >= kernel], grid_axis)


def vendor_layer_cost(spec, tile=None, config: GemminiConfig | None = None, pool=None,
                      downsample: bool | None = None, order: str = LIBRARY_ORDER,
                      constants: CycleConstants | None = None, warm: bool = False,
                      auto_search: bool | None = None) -> LayerCost:
    """DRAM bytes per stream, calls and cycles of ``spec`` run by ``tiled_conv`` with ``tile``,
    or by ``tiled_conv_auto`` when ``tile`` is None (the vendor's `conv_auto` choice). Local.

    Equal to summing `iter_calls` (tested), but evaluated on groups of identical calls: along
    each of five independent factors (batch tiles, row x kernel-row tiles, column x kernel-column
    tiles, output-channel tiles, input-channel tiles) calls differ only by truncation and
    border windows, so a ResNet-50 layer needs a few hundred evaluations at most.

    ``order`` (library letters, innermost first, as DOSA's ``PERM_STR``; default the stock
    ``CRSKPQN``) only decides which reloads hit the L2 in ``calibrated_cycles``: the per-call
    loads, pointer rules and windows are those of the stock loop.  ``constants`` defaults to
    the fitted ones (`parconv.gemmini.cycles.load_constants`); ``warm`` says the layer's data
    were just touched (first loads hit the L2 when they fit it).

    ``auto_search``: charge the core's tile search of ``tiled_conv_auto``
    (`parconv.gemmini.vendor.heuristics.auto_search_steps`, priced by
    `parconv.gemmini.cycles.auto_search_cycles`) to ``calibrated_cycles`` (and report it as
    ``search_cycles``); None charges it exactly when ``tile`` is None.  A deployed
    ``tiled_conv_auto`` pays it on every call; ``tiled_conv`` with a given tile (parconv's
    tilings, the FireSim training runs) never searches.  The roofline ``cycles`` never include
    it.

    Raises
    ------
    ParconvError
        If the tile does not fit the config's per-tile limits (never silently clamped).

    Example: resnet50.layer1.0.conv2 (56x56, 64 -> 64, 3x3) at batch 1, dev semantics:
    tile (1,22,23,16,3,3,64), 36 calls, 922/332/201/72 KB input/weight/output/bias,
    461,952 execute-model cycles.
    """
    loop = vendor_loop(spec, tile, config, pool, downsample)
    cfg = loop.config
    (nb, b_first), b_count = _grouped([loop.sizes(0), loop.starts(0) == 0], 0)
    (r_oeff, r_load, porows_, krows_, pr_first, kr_first, kr_last), r_count = \
        _spatial_groups(loop, 1, loop.rows, 1)
    (c_oeff, c_load, pocols_, kcols_, pc_first, kc_first, kc_last), c_count = \
        _spatial_groups(loop, 2, loop.cols, 2)
    (pochs_, poch_first), p_count = _grouped([loop.sizes(3), loop.starts(3) == 0], 3)
    (kchs_, kch_first, kch_last), k_count = _grouped(
        [loop.sizes(6), loop.starts(6) == 0, loop.starts(6) + loop.sizes(6) >= loop.extents[6]],
        4)
    weight = b_count * r_count * c_count * p_count * k_count
    rows = AxisWindow(*([None] * 4), r_oeff, *([None] * 5), r_load)
    cols = AxisWindow(*([None] * 4), c_oeff, *([None] * 5), c_load)
    first = (kr_first & kc_first & kch_first).astype(bool)
    flags = (rules.loads_input(loop.a_reuse, poch_first.astype(bool)),
             rules.loads_weight(loop.b_reuse, (b_first & pr_first & pc_first).astype(bool)),
             first & cfg.has_bias, (kr_last & kc_last & kch_last).astype(bool))
    sizes = (nb, porows_, pocols_, pochs_, krows_, kcols_, kchs_)
    bytes_, reqs, passes, cycles = call_cost(loop, sizes, rows, cols, flags)
    call_bytes = sum(np.broadcast_to(b, weight.shape) for b in bytes_.values())
    dma = call_bytes / cfg.bw_eff
    constants = constants or load_constants()
    terms = calibration_terms(loop, order, constants.l2_bytes, weight, sizes, rows, cols, flags,
                              bytes_, passes, cycles, warm)
    if auto_search is None:
        auto_search = tile is None
    search = auto_search_cycles(auto_search_steps(spec, config, pool)) if auto_search else 0.0
    return _layer_cost(
        loop, calls=weight.sum(),
        bytes_={s: (np.broadcast_to(v, weight.shape) * weight).sum() for s, v in bytes_.items()},
        requests={s: (np.broadcast_to(v, weight.shape) * weight).sum() for s, v in reqs.items()},
        passes=(passes * weight).sum(), exec_total=(cycles * weight).sum(),
        cycles=(np.maximum(cycles, dma) * weight).sum(), dma_cycles=(dma * weight).sum(),
        memory_bound=((dma > cycles) * weight).sum(), terms=terms, search=search,
        calibrated=calibrated_total(terms, constants) + search)

