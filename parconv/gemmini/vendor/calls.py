"""The library's conv tile loop call by call (gemmini.md 4.4-4.7).

Pure data, no MPI.  `vendor_loop` fixes everything a layer's loop nest needs (tile, tile counts,
downsample, operand-reuse flags, axis geometries) after checking the tile against both capacity
limits; `iter_calls` walks the calls in the library's order ``b -> porow -> pocol -> poch -> krow
-> kcol -> kch`` and gives, per call, its windows, pointer flags, bytes per stream and cycles
(a tile executor moving real data follows these); `parconv.gemmini.vendor.layer_cost` sums the
same quantities for a whole layer.  ``cycles = max(exec_cycles, bytes / bw_eff)`` per call.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Iterator

import numpy as np

from ...errors import ParconvError
from .. import call_rules as rules

# exec_cycles is re-exported for the tile executor
from ..call_rules import AxisGeometry, AxisWindow, axis_window, exec_cycles  # noqa: F401
from ..config import (DEFAULT_CONFIG, TILE_FIELDS, GemminiConfig, as_pool, downsample_eligible,
                      tile_tuple, uses_downsample)
from .heuristics import VendorConvTile, conv_auto, conv_extents

STREAMS = ("input", "weight", "bias", "output")
#: the stock loop b -> porow -> pocol -> poch -> krow -> kcol -> kch, innermost first
LIBRARY_ORDER = "CRSKPQN"


@dataclasses.dataclass(frozen=True)
class VendorLoop:
    """The loop nest of one layer under one tile (gemmini.md 4.4).

    ``extents`` and ``counts`` are in library order (batch, pooled rows, pooled cols, out
    channels, kernel rows, kernel cols, in channels); ``counts[i] = ceil(extents[i] / tile[i])``.
    """

    spec: object
    config: GemminiConfig
    pool: object
    tile: VendorConvTile
    extents: tuple
    counts: tuple
    rows: AxisGeometry
    cols: AxisGeometry
    a_reuse: bool
    b_reuse: bool

    @property
    def downsample(self) -> bool:
        return self.tile.downsample

    @property
    def pooled(self) -> bool:
        return self.pool.active

    @property
    def dilated(self) -> bool:
        return max(self.spec.dilation) > 1

    @property
    def calls(self) -> int:
        return int(np.prod(self.counts))

    def starts(self, i: int) -> np.ndarray:
        """Tile starts along loop ``i`` (library order)."""
        return np.arange(0, self.extents[i], self.tile.as_tuple()[i], dtype=np.int64)

    def sizes(self, i: int) -> np.ndarray:
        """Truncated tile sizes along loop ``i``."""
        return np.minimum(self.tile.as_tuple()[i], self.extents[i] - self.starts(i))


def vendor_loop(spec, tile=None, config: GemminiConfig | None = None, pool=None,
                downsample: bool | None = None) -> VendorLoop:
    """The loop nest of ``spec`` under ``tile`` (default: the vendor's `conv_auto` tile). Local.

    ``downsample`` None follows the library (eligible layer and semantics that allow it); a
    `VendorConvTile`'s own flag is not consulted.  Float layers use ``config.for_spec(spec)``
    (their element sizes, same memory bytes).

    Raises
    ------
    ParconvError
        If a tile size is outside [1, extent] or the tile breaks a capacity limit.
    """
    config = (config or DEFAULT_CONFIG).for_spec(spec)
    pool = as_pool(pool)
    extents = conv_extents(spec, pool)
    if downsample is None:
        downsample = uses_downsample(spec, config, pool)
    elif downsample and not downsample_eligible(spec, pool):
        raise ParconvError("downsample needs stride 2, a 1x1 kernel, no padding, no pooling and "
                           f"an even input size; {spec.describe()} is not eligible")
    sizes = tile_tuple(conv_auto(spec, config, pool) if tile is None else tile)
    for field, size, extent in zip(TILE_FIELDS, sizes, extents):
        if size > extent:
            raise ParconvError(f"tile {field} must be in [1, {extent}], got {size}")
    spad, acc = config.check_fits(spec, sizes, pool=pool, downsample=downsample)
    vendor_tile = VendorConvTile(*sizes, downsample=bool(downsample), spad_rows=spad,
                                 acc_rows=acc)
    counts = tuple(-(-e // t) for e, t in zip(extents, sizes))
    a_reuse, b_reuse = rules.reuse_flags(counts, config.has_operand_reuse)
    return VendorLoop(spec=spec, config=config, pool=pool, tile=vendor_tile, extents=extents,
                      counts=counts,
                      rows=AxisGeometry.from_spec(spec, 0, pool, bool(downsample)),
                      cols=AxisGeometry.from_spec(spec, 1, pool, bool(downsample)),
                      a_reuse=a_reuse, b_reuse=b_reuse)


# ---- one call -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class VendorCall:
    """One ``sp_tiled_conv`` call.

    ``start``/``size`` are in library order (b, porow, pocol, poch, krow, kcol, kch): starts of
    the batch, pooled output row/col, output channel, kernel row/col and input channel, and the
    truncated sizes.  ``rows``/``cols`` are its `AxisWindow`s (``rows.out_range`` the pre-pool
    output rows computed, ``rows.in_range`` the in-image input rows read).  ``bytes`` per stream
    count only streams whose pointer is non-NULL; ``requests`` are DRAM row requests likewise;
    ``mpp`` is the first-layer ``max_pixels_per_row`` of the execute model.
    """

    index: tuple
    start: tuple
    size: tuple
    rows: AxisWindow
    cols: AxisWindow
    load_input: bool
    load_weight: bool
    load_bias: bool
    store_output: bool
    bytes: dict
    requests: dict
    passes: int
    exec_cycles: int
    cycles: float
    mpp: int = 1

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    def loop_ranges(self) -> dict:
        """Half-open ranges over parconv's loops: ``n``, ``k`` (output channels), ``c`` (input
        channels), ``h``/``w`` (the pre-pool output rows/cols the call computes), ``r``, ``s``."""
        b, _, _, poch, krow, kcol, kch = self.start
        nb, _, _, pochs_, krows_, kcols_, kchs_ = self.size
        return {"n": (b, b + nb), "k": (poch, poch + pochs_), "c": (kch, kch + kchs_),
                "h": self.rows.out_range, "w": self.cols.out_range,
                "r": (krow, krow + krows_), "s": (kcol, kcol + kcols_)}


def _scalar_window(window: AxisWindow) -> AxisWindow:
    return AxisWindow(*(int(v) for v in dataclasses.astuple(window)))


def call_cost(loop: VendorLoop, sizes, rows: AxisWindow, cols: AxisWindow, flags):
    """(bytes, requests, passes, exec_cycles) per call; elementwise over arrays. ``flags`` are
    (load_input, load_weight, load_bias, store_output)."""
    cfg = loop.config
    nb, porows_, pocols_, pochs_, krows_, kcols_, kchs_ = sizes
    out_rows, out_cols = (porows_, pocols_) if loop.pooled else (rows.o_eff, cols.o_eff)
    elements = (rules.input_elements(nb, rows.i_loaded, cols.i_loaded, kchs_),
                rules.weight_elements(krows_, kcols_, kchs_, pochs_),
                rules.bias_elements(nb, rows.o_eff, cols.o_eff, pochs_, cfg.dim),
                rules.output_elements(nb, out_rows, out_cols, pochs_))
    widths = (cfg.input_bytes, cfg.weight_bytes, cfg.bias_bytes, cfg.output_bytes)
    requests = rules.dram_row_requests(cfg, nb, rows.i_loaded, cols.i_loaded, rows.o_eff,
                                       cols.o_eff, out_rows, out_cols, pochs_, krows_, kcols_,
                                       kchs_)
    bytes_ = {s: e * w * f for s, e, w, f in zip(STREAMS, elements, widths, flags)}
    reqs = {s: r * f for s, r, f in zip(STREAMS, requests, flags)}
    mpp = rules.max_pixels_per_row(cfg, kchs_, kcols_, loop.downsample, loop.dilated)
    work = (nb, rows.o_eff, cols.o_eff, pochs_, krows_, kcols_, kchs_, mpp, cfg.dim)
    return bytes_, reqs, rules.passes(*work), rules.exec_cycles(*work)


def iter_calls(loop: VendorLoop) -> Iterator[VendorCall]:
    """Every call of the layer in the library's order (gemmini.md 4.4). Local.

    Pointer rules: bias on the first reduction tile (krow = kcol = kch = 0, if the semantics has
    a bias), output on the last one, input skipped for poch > 0 under a_reuse, weights skipped
    after the first (b, porow, pocol) tile under b_reuse.
    """
    starts = [loop.starts(i) for i in range(7)]
    sizes = [loop.sizes(i) for i in range(7)]
    ext = loop.extents
    for index in itertools.product(*(range(c) for c in loop.counts)):
        start = tuple(int(starts[i][j]) for i, j in enumerate(index))
        size = tuple(int(sizes[i][j]) for i, j in enumerate(index))
        b, porow, pocol, poch, krow, kcol, kch = start
        rows = _scalar_window(axis_window(loop.rows, porow, size[1], krow, size[4]))
        cols = _scalar_window(axis_window(loop.cols, pocol, size[2], kcol, size[5]))
        first = krow == 0 and kcol == 0 and kch == 0
        last = (krow + size[4] >= ext[4] and kcol + size[5] >= ext[5]
                and kch + size[6] >= ext[6])
        flags = (bool(rules.loads_input(loop.a_reuse, poch == 0)),
                 bool(rules.loads_weight(loop.b_reuse, b == 0 and porow == 0 and pocol == 0)),
                 first and loop.config.has_bias, last)
        bytes_, reqs, passes, cycles = call_cost(loop, size, rows, cols, flags)
        bytes_ = {s: int(v) for s, v in bytes_.items()}
        mpp = rules.max_pixels_per_row(loop.config, size[6], size[5], loop.downsample,
                                       loop.dilated)
        yield VendorCall(index=index, start=start, size=size, rows=rows, cols=cols,
                         load_input=flags[0], load_weight=flags[1], load_bias=flags[2],
                         store_output=flags[3], bytes=bytes_,
                         requests={s: int(v) for s, v in reqs.items()}, passes=int(passes),
                         exec_cycles=int(cycles),
                         cycles=max(float(cycles), sum(bytes_.values()) / loop.config.bw_eff),
                         mpp=int(mpp))
