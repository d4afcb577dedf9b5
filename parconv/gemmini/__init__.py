"""A model of the Gemmini accelerator as parconv's node kernel (gemmini.md).

Pure modules, no MPI:

* `config`: `GemminiConfig` (generator parameters, named variants, ``dev``/``dosa`` semantics),
  `Pool`, and the per-tile capacity rule `footprint_rows` (gemmini.md 4.2);
* `vendor`: the library's tile heuristics `conv_auto` (``tiled_conv_auto``, 4.3) and
  `matmul_auto` (``tiled_matmul_auto``, 5);
* `call_rules`: the per-call rules of the library's tile loop (windows, pointer rules, bytes per
  stream, execute cycles; 4.4-4.7) as elementwise functions;
* `calls`: `vendor_loop`, `iter_calls` (every call with its windows, flags, bytes and cycles)
  and `vendor_layer_cost` (a whole layer, grouped evaluation) returning a `LayerCost`;
* `cycles`: the calibrated cycle model of one call (`CycleConstants`, `load_constants`,
  `call_cycles`), fitted to FireSim by experiments/calibrate_cycles.py; `vendor.firesim`:
  `firesim_cost`, ``tiled_conv`` with an explicit tile and loop order as FireSim ran it.
"""

from .config import (DEFAULT_CONFIG, NAMED_CONFIGS, NO_POOL, GemminiConfig, Pool,
                     downsample_eligible, footprint_rows, uses_downsample)
from .cycles import CycleConstants, call_cycles, load_constants
from .vendor.calls import VendorCall, VendorLoop, iter_calls, vendor_loop
from .vendor.layer_cost import LayerCost, cost_by_walking, vendor_layer_cost
from .vendor.firesim import firesim_cost
from .vendor.heuristics import (VendorConvTile, VendorMatmulTile, conv_auto, conv_extents,
                                matmul_auto)

__all__ = ["DEFAULT_CONFIG", "NAMED_CONFIGS", "NO_POOL", "GemminiConfig", "Pool",
           "downsample_eligible", "footprint_rows", "uses_downsample", "VendorConvTile",
           "VendorMatmulTile", "conv_auto", "conv_extents", "matmul_auto", "LayerCost",
           "VendorCall", "VendorLoop", "cost_by_walking", "iter_calls", "vendor_layer_cost",
           "vendor_loop", "CycleConstants", "call_cycles", "load_constants", "firesim_cost"]
