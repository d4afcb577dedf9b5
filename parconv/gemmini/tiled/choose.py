"""parconv's own tiling on Gemmini: the communication-optimal search of `parconv.tiling` run with
Gemmini's capacity rule, and the exact cost of the result under the Gemmini model.  Pure, no MPI.

How parconv runs a layer on the modelled Gemmini (theory.md section 6):

* **Memory.** `GemminiMemory` is a `parconv.tiling.ScratchAccMemory` whose ``fits`` is the
  library's own per-tile rule (``GemminiConfig.fits``, gemmini.md 4.2: conservative halo
  ``orows * stride + krows_dilated - 1``, channels rounded up to ``dim`` where they index a row,
  half of each memory per tile).  So every tiling the optimiser returns passes the executor's
  capacity check.  ``capacity()`` = scratchpad + accumulator bytes: the ``M`` of the bound.
* **Search.** `parconv.tiling.optimise` over tile sizes and loop orders (output-, weight- and
  input-stationary orders, with the consecutive reuse the vendor loop never exploits) gives the
  byte-optimal tiling; `parconv.gemmini.tiled.search.refine` then looks around it (and around the
  vendor tile) for tilings the systolic array runs efficiently, since a byte-optimal tile with
  5-pixel rows wastes most of each array pass.  The winner moves no more bytes than the library
  and is, among the candidates at most 2 % slower than the fastest (calibrated cycle model,
  `parconv.gemmini.cycles`) and never slower than the
  library, the one moving the fewest bytes (`choose_tiling`).  ``TilingChoice.source`` says which candidate won; when the library's own
  schedule wins (its two-half operand reuse is outside the one-buffer model), ``schedule`` is
  ``"vendor"``.
* **Strided DMA.** A 1x1 convolution with stride > 1 and no padding reads only every s-th row and
  column.  The DMA moves exactly those (a doubled DRAM stride, as the library's downsample path
  does): the tiles run on the equivalent stride-1 layer over the subsampled input
  (`subsampled_spec`).  Without this, the contiguous-window contract would move the skipped rows.
* **Streams.** ``input``, ``weight``, ``bias`` (first visit of an output block, stride-0 mvins as
  in the library), ``output`` (final values, ``output_bytes`` each) and ``psum``: partial-sum
  spills and read-backs of non-output-stationary orders, ``acc_bytes`` (int32) each.  ``psum``
  is ``Traffic.spill_write + Traffic.output_read`` of `parconv.tiling.traffic`, ``output`` is
  ``Traffic.output_write``.

`parconv.gemmini.tiled.cost.tiling_cost` evaluates a (tiling, order) per tile, vectorised (bytes,
execute cycles and ``max(exec, bytes / bw_eff)`` per tile; `tiling_costs` many at once); the
executor (`parconv.gemmini.executor`) runs the same tiles on data and must count the same.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from ...bounds.checks import check_bytes
from ...bounds.sequential import sequential_bound_two_memory, sequential_bound_value
from ...errors import ParconvError
from ...spec import ConvSpec
from ...tiling import (CANONICAL_ORDERS, LOOPS, ScratchAccMemory, Tiling, TilingResult, clip_array,
                       extents, optimise, traffic, traffic_totals)
from .. import call_rules
from ..config import DEFAULT_CONFIG, GemminiConfig
from ..executor import TileExecutor
from ..schedule_check import TileSchedule
from ..vendor.layer_cost import vendor_layer_cost
from ..vendor.run import run_vendor
from .cost import ModelCost, tiling_costs
from .search import CYCLE_SLACK, bias_totals, refine

#: the vendor loop b -> porow -> pocol -> poch -> krow -> kcol -> kch in parconv's loop names
VENDOR_ORDER = "NHWKRSC"
_INPUT, _FILTER, _OUTPUT = "NCHWRS", "KCRS", "NKHW"
_I = {loop: i for i, loop in enumerate(LOOPS)}
_DTYPES = {("int", 1): "int8", ("int", 2): "int16", ("int", 4): "int32", ("int", 8): "int64",
           ("float", 2): "float16", ("float", 4): "float32", ("float", 8): "float64"}


# ---- the memory ---------------------------------------------------------------------------------
class GemminiMemory(ScratchAccMemory):
    """Gemmini's scratchpad and accumulator for `parconv.tiling.optimise`.  Local.

    ``fits`` is exactly ``config.fits`` (gemmini.md 4.2) with the tiling mapped to the library's
    7-tuple (batches = tN, porows = tH, pocols = tW, pochs = tK, krows = tR, kcols = tS,
    kchs = tC).
    """

    def __init__(self, config: GemminiConfig = DEFAULT_CONFIG):
        super().__init__(config.scratch_bytes, config.acc_total_bytes, config.double_buffer,
                         config.dim)
        self.config = config

    @staticmethod
    def window_extent(stride, dil, t_out, t_k):
        # the library's conservative halo: one position per stride beyond the last output
        return stride * t_out + dil * (t_k - 1)

    def fits_array(self, spec: ConvSpec, tiles: np.ndarray) -> np.ndarray:
        return self.fits_clipped(spec, clip_array(spec, np.atleast_2d(tiles)))

    def fits_clipped(self, spec: ConvSpec, tiles: np.ndarray) -> np.ndarray:
        """`fits_array` of an (m, 7) int64 array already capped at the loop bounds."""
        # contiguous columns: elementwise work on strided columns of a large array is slower
        tn, tk, tc, th, tw, tr, ts = np.ascontiguousarray(tiles.T)
        (sh, sw), (dh, dw), d = spec.stride, spec.dilation, self.config.dim
        # `footprint_rows` without pooling, input dilation or downsampling (never used here):
        # halo rows orows * stride + dilated kernel rows - 1
        k_blocks = _ceil_div(tk, d)
        spad = (_ceil_div(tc, d) * tn * (sh * th + dh * (tr - 1)) * (sw * tw + dw * (ts - 1))
                + k_blocks * tr * ts * tc)
        return (spad <= self.config.spad_rows_limit) & (k_blocks * tn * th * tw
                                                        <= self.config.acc_rows_limit)
    def fits(self, spec: ConvSpec, tiling: Tiling) -> bool:
        return self.config.fits(spec, vendor_tuple(tiling.clipped(spec)))

    def bound(self, spec: ConvSpec):
        return sequential_bound_two_memory(spec, self.config.scratch_bytes,
                                           self.config.acc_total_bytes)

    def bound_value(self, spec: ConvSpec) -> float:
        return block_bound(spec, self.config.scratch_bytes, self.config.acc_total_bytes)

    def __repr__(self) -> str:
        return f"GemminiMemory({self.config.name!r})"


def block_bound(spec: ConvSpec, scratch_bytes: float, acc_bytes: float) -> float:
    """The value of `parconv.bounds.sequential_bound_two_memory` of a block (bytes), computed
    once per block shape in the process (the search and the kernel's statistics of the same
    block share it) by `parconv.bounds.sequential.sequential_bound_value`: the same number,
    without the work-function solves of segment terms that cannot be the largest."""
    return _bound_of_shape(spec.replace(name="block"), scratch_bytes, acc_bytes)


@functools.lru_cache(maxsize=512)
def _bound_of_shape(spec: ConvSpec, scratch_bytes: float, acc_bytes: float) -> float:
    # the one-memory bound with M = scratchpad + accumulator, as sequential_bound_two_memory
    return sequential_bound_value(spec, check_bytes(scratch_bytes, "M_scratch")
                                  + check_bytes(acc_bytes, "M_acc"))


def _ceil_div(a: np.ndarray, d: int) -> np.ndarray:
    """ceil(a / d) of a non-negative integer array (a shift when d is a power of two)."""
    return (a + (d - 1)) >> (d.bit_length() - 1) if d & (d - 1) == 0 else -(-a // d)


def vendor_tuple(tiling: Tiling) -> tuple[int, ...]:
    """(batches, porows, pocols, pochs, krows, kcols, kchs) of a parconv `Tiling`."""
    tn, tk, tc, th, tw, tr, ts = tiling.as_tuple()
    return (tn, th, tw, tk, tr, ts, tc)


def tiling_of_vendor(tile) -> Tiling:
    """The parconv `Tiling` of a library 7-tuple (or `VendorConvTile`)."""
    b, porows, pocols, pochs, krows, kcols, kchs = (tile.as_tuple() if hasattr(tile, "as_tuple")
                                                    else tile)
    return Tiling(b, pochs, kchs, porows, pocols, krows, kcols)


# ---- the layer the tiles run on -----------------------------------------------------------------
def model_spec(spec: ConvSpec, config: GemminiConfig) -> ConvSpec:
    """``spec`` with the element sizes of ``config`` (its ``dtype_out`` is the stored output:
    int8 for Gemmini's scaled mvout by default).

    Raises
    ------
    ParconvError
        If the input, weight or accumulator sizes of spec and config disagree.
    """
    for field, spec_bytes, cfg_bytes in (("input", spec.p_in, config.input_bytes),
                                         ("weight", spec.p_weight, config.weight_bytes),
                                         ("acc", spec.p_acc, config.acc_bytes)):
        if spec_bytes != cfg_bytes:
            raise ParconvError(f"{field} element size {spec_bytes} B of {spec.name} differs from "
                               f"the config's {field}_bytes = {cfg_bytes} (use config.for_spec)")
    if spec.p_out == config.output_bytes:
        return spec
    kind = "float" if np.issubdtype(np.dtype(spec.dtype_acc), np.floating) else "int"
    dtype = _DTYPES.get((kind, config.output_bytes))
    if dtype is None:
        raise ParconvError(f"output_bytes must be one of 1, 2, 4, 8, got {config.output_bytes}")
    return spec.replace(dtype_out=dtype)


def subsampled_spec(spec: ConvSpec) -> ConvSpec | None:
    """The stride-1 layer over the subsampled input of a 1x1, unpadded, strided layer (the
    strided-DMA case), or None when it does not apply."""
    if tuple(spec.kernel_size) != (1, 1) or tuple(spec.stride) == (1, 1) \
            or tuple(spec.padding) != (0, 0) or tuple(spec.padding_end) != (0, 0):
        return None
    return spec.replace(in_size=spec.out_size, stride=(1, 1), dilation=(1, 1))


def subsample_input(spec: ConvSpec, x: np.ndarray) -> np.ndarray:
    """The input positions a 1x1 strided layer reads: ``x[:, :, ::sh, ::sw]`` cut to (H, W)."""
    (sh, sw), (H, W) = spec.stride, spec.out_size
    return x[:, :, ::sh, ::sw][:, :, :H, :W]


# ---- the plan -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TilingChoice:
    """parconv's tiling of one layer on Gemmini.

    ``model`` is the layer the tiles run on (the subsampled stride-1 layer when ``subsampled``,
    with ``dtype_out`` of the stored output).  ``schedule`` is ``"tiling"`` (parconv's tiles with
    consecutive reuse, `tiling_calls`) or ``"vendor"`` (the library's own loop and pointer
    rules, chosen only when no tiling of the one-buffer model moves fewer bytes; see
    `choose_tiling`).  ``source`` names the winning candidate (``"optimise"``, ``"refined"``,
    ``"vendor tile"`` or ``"vendor schedule"``), ``result`` is the optimiser's `TilingResult`,
    ``cost`` the winner's `ModelCost` and ``vendor`` the library's `LayerCost` of
    ``tiled_conv_auto``, its tile search included in ``calibrated_cycles`` (or None when
    ``conv_auto`` finds no tile); ``fewest_bytes`` is the candidate a bytes-alone objective
    would pick (tile, order, source, bytes, calibrated cycles), for comparison.
    """

    spec: ConvSpec
    model: ConvSpec
    subsampled: bool
    config: GemminiConfig
    tiling: Tiling
    order: str
    schedule: str
    source: str
    result: object
    cost: ModelCost
    vendor: object = None
    candidates: int = 0
    fewest_bytes: dict | None = None

    def input_for_model(self, x: np.ndarray) -> np.ndarray:
        """The DRAM input the model's tiles read (strided view when subsampled)."""
        return subsample_input(self.spec, x) if self.subsampled else x


def cost_of_vendor(layer_cost) -> ModelCost:
    """A library `LayerCost` as a `ModelCost` (``psum`` = 0: the library never spills) for
    parconv to run: its tile is given to ``tiled_conv``, so no tile search is charged."""
    dram = {s: int(layer_cost.dram_bytes[s]) for s in ("input", "weight", "bias", "output")}
    dram["psum"] = 0
    dram["total"] = sum(dram.values())
    return ModelCost(tile=tuple(tiling_of_vendor(layer_cost.tile).as_tuple()),
                     order=VENDOR_ORDER, calls=layer_cost.calls, dram_bytes=dram,
                     mvin_rows={}, mvout_rows={}, passes=layer_cost.passes,
                     exec_cycles=layer_cost.exec_cycles, cycles=layer_cost.cycles,
                     dma_cycles=layer_cost.dma_cycles,
                     memory_bound_calls=layer_cost.memory_bound_calls, macs=layer_cost.macs,
                     peak_macs_per_cycle=layer_cost.peak_macs_per_cycle,
                     calibrated_cycles=layer_cost.calibrated_cycles - layer_cost.search_cycles)


def _single_tile_result(spec: ConvSpec, memory: GemminiMemory, tiling: Tiling, order: str):
    moved = traffic(spec, tiling, order)
    bound = memory.bound_value(spec)
    return TilingResult(tiling=tiling, order=order, traffic=moved, bound=bound,
                        ratio=moved.total / bound if bound > 0 else float("inf"), evaluated=1)


def choose_tiling(spec: ConvSpec, config: GemminiConfig | None = None, orders=None,
                 exact: int = 12) -> TilingChoice:
    """parconv's tiling and loop order of ``spec`` on Gemmini (module docstring).  Local.

    1. `parconv.tiling.optimise` with `GemminiMemory` (fewest bytes, bias excluded);
    2. `parconv.gemmini.tiled.search.refine` from that tiling and the vendor tile (closed-form
       screening of cycles and bytes);
    3. the ``exact`` best screened candidates, the optimiser's answer and the vendor tile (in the
       canonical orders) are costed exactly (`tiling_cost`); those moving more DRAM bytes
       than the library are dropped, and the library's own schedule joins as a candidate (its
       two-half operand reuse, ``a_reuse`` / ``b_reuse``, can beat every schedule of the
       one-buffer model).  Speed is the calibrated cycle model (`parconv.gemmini.cycles`,
       ``calibrated_cycles``).  Among the candidates at most `CYCLE_SLACK` (2 %) slower than
       the fastest and no slower than the library, the one moving the fewest bytes wins (then
       the faster; a tie keeps parconv's tiles).

    ``config`` defaults to the default Gemmini; floats use ``config.for_spec(spec)``.  The bias
    stream follows ``config.has_bias``.

    Raises
    ------
    ParconvError
        If not even the smallest tile fits the config.
    """
    config = (config or DEFAULT_CONFIG).for_spec(spec)
    model = model_spec(spec, config)
    sub = subsampled_spec(model)
    run_on, strided = sub or model, sub is not None
    orders = list(orders or CANONICAL_ORDERS.values())
    memory = GemminiMemory(config)
    whole = Tiling(*extents(run_on))
    if memory.fits(run_on, whole):
        # one tile holds the layer: every array moves exactly once, nothing to search
        result = _single_tile_result(run_on, memory, whole, orders[0])
    else:
        result = optimise(run_on, memory, orders=orders)
    try:
        vendor = vendor_layer_cost(spec, None, config)     # tiled_conv_auto: with its search
    except ParconvError:
        vendor = None
    seeds = [result.tiling.as_tuple()]
    if vendor is not None:
        seeds.append(tiling_of_vendor(vendor.tile).clipped(run_on).as_tuple())
    screen = refine(run_on, memory, config, seeds, orders, strided)
    pairs = {(result.tiling.as_tuple(), result.order): "optimise"}
    for tile, order in screen.top(exact):
        pairs.setdefault((tile, order), "refined")
    if vendor is not None and memory.fits(run_on, Tiling(*seeds[1])):
        for order in dict.fromkeys((VENDOR_ORDER, *orders)):
            pairs.setdefault((seeds[1], order), "vendor tile")
    limit = vendor.dram_bytes["total"] if vendor is not None else None
    # the exact bytes first (`traffic` plus the bias stream, what `tiling_cost` counts): a
    # candidate moving more than the library is dropped before its cycles are costed
    # (all pairs in one vectorised call: `traffic_totals` is `traffic`'s model)
    tiles = np.array([tile for tile, _ in pairs], dtype=np.int64)
    distinct = list(dict.fromkeys(order for _, order in pairs))
    moved = (traffic_totals(run_on, tiles, distinct)[[distinct.index(order) for _, order in pairs],
                                                     np.arange(len(pairs))]
             + bias_totals(run_on, tiles, config))
    kept = [(Tiling(*tile), order, source)
            for ((tile, order), source), total in zip(pairs.items(), moved.tolist())
            if limit is None or total <= limit]
    costs = tiling_costs(run_on, [(tiling, order) for tiling, order, _ in kept], config,
                         strided=strided)
    costed = [(cost, tiling, order, source) for cost, (tiling, order, source) in zip(costs, kept)
              if limit is None or cost.dram_bytes["total"] <= limit]
    ceiling = float("inf")
    if vendor is not None:
        costed.append((cost_of_vendor(vendor), tiling_of_vendor(vendor.tile), VENDOR_ORDER,
                       "vendor schedule"))
        ceiling = costed[-1][0].calibrated_cycles      # never slower than the library itself
    fastest = min(cost.calibrated_cycles for cost, *_ in costed)
    ceiling = min(ceiling, fastest * (1 + CYCLE_SLACK))
    best = min((c for c in costed if c[0].calibrated_cycles <= ceiling),
               key=lambda c: (c[0].dram_bytes["total"], c[0].calibrated_cycles,
                              c[3] == "vendor schedule"))
    frugal = min(costed, key=lambda c: (c[0].dram_bytes["total"], c[0].calibrated_cycles))
    common = dict(spec=spec, config=config, result=result, vendor=vendor,
                  candidates=len(pairs),
                  fewest_bytes={"tile": frugal[1].as_tuple(), "order": frugal[2],
                                "source": frugal[3], "bytes": frugal[0].dram_bytes["total"],
                                "calibrated_cycles": frugal[0].calibrated_cycles})
    if best[3] == "vendor schedule":
        return TilingChoice(model=spec, subsampled=False, tiling=best[1], order=VENDOR_ORDER,
                        schedule="vendor", source=best[3], cost=best[0], **common)
    cost, tiling, order, source = best
    return TilingChoice(model=run_on, subsampled=strided, tiling=tiling, order=order,
                    schedule="tiling", source=source, cost=cost, **common)


# ---- tiles --------------------------------------------------------------------------------------
def tiling_calls(spec: ConvSpec, tiling: Tiling, order: str, config: GemminiConfig,
                 strided: bool = False) -> TileSchedule:
    """The tiles of (tiling, order) on ``spec`` in visiting order, with consecutive reuse
    ("auto" modes) and the exact input windows of the traffic contract, as a `TileSchedule`
    (arrays over the tiles).  Local."""
    ext = np.asarray(extents(spec), dtype=np.int64)
    t = np.asarray(tiling.clipped(spec).as_tuple(), dtype=np.int64)
    trips = -(-ext // t)
    (sh, sw), (dh, dw), (ph, pw) = spec.stride, spec.dilation, spec.padding
    where = [order.index(loop) for loop in LOOPS]
    # block indices of every tile, the first loop of the order outermost (LOOPS order rows)
    visit = np.indices([int(trips[_I[loop]]) for loop in order]).reshape(len(order), -1)
    block = visit[where]
    lo = block * t[:, None]
    hi = np.minimum(lo + t[:, None], ext[:, None])
    (n0, k0, c0, h0, w0, r0, s0), (n1, k1, c1, h1, w1, r1, s1) = lo, hi
    mpp = np.broadcast_to(call_rules.max_pixels_per_row(config, c1 - c0, s1 - s0, strided,
                                                        max(spec.dilation) > 1), n0.shape)
    last = (block[[_I[loop] for loop in "CRS"]] == trips[[_I[loop] for loop in "CRS"], None] - 1
            ).all(axis=0)
    table = np.stack([n0, n1, k0, k1, c0, c1, h0, h1, w0, w1, r0, r1, s0, s1,
                      sh * h0 + dh * r0 - ph, sw * w0 + dw * s0 - pw,
                      sh * (h1 - h0 - 1) + dh * (r1 - r0 - 1) + 1,
                      sw * (w1 - w0 - 1) + dw * (s1 - s0 - 1) + 1, np.ones_like(n0),
                      last, mpp], axis=1)
    keys = (block[[_I[loop] for loop in key]].T for key in (_INPUT, _FILTER, _OUTPUT))
    return TileSchedule(table, *keys)


def run_parconv(spec: ConvSpec, x, w, bias=None, config: GemminiConfig | None = None,
                plan: TilingChoice | None = None):
    """Run ``spec`` tile by tile with parconv's tiling.  Local.

    Returns ``(y, stats, plan)``; ``y`` is (N, K, H, W) in ``spec.dtype_acc`` (plus ``bias`` when
    given; a bias needs ``config.has_bias``).
    """
    plan = plan or choose_tiling(spec, config)
    if bias is not None and not plan.config.has_bias:
        raise ParconvError(f"semantics {plan.config.semantics!r} loads no bias; run without bias "
                           f"or enable it (GemminiConfig bias=True)")
    if plan.schedule == "vendor":
        y, stats, _ = run_vendor(spec, x, w, bias, tile=vendor_tuple(plan.tiling),
                                 config=plan.config)
        return y, stats, plan
    calls = tiling_calls(plan.model, plan.tiling, plan.order, plan.config, plan.subsampled)
    y, stats = TileExecutor(plan.model, plan.config).run(calls, plan.input_for_model(x), w, bias)
    return y, stats, plan
