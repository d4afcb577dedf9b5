"""Node-level tilings of one convolution (docs/theory.md section 6).  Pure, no MPI.

* `model`: tilings, footprints and the exact traffic of a (tiling, loop order) pair;
* `memories`: the fast memories a tiling must fit in (one memory, or a scratchpad and an
  accumulator);
* `relax`: the continuous relaxation of the tiling problem (its SLSQP solves: `slsqp`);
* `search`: the optimiser (relaxation, integer neighbourhood, local search), with its
  candidate sizes (`candidates`), scoring and local search (`scorer`) and the vectorised exact
  traffic (`totals`).
"""

from .memories import ScratchAccMemory, SingleMemory
from .model import (DEPENDS, LOOPS, REUSE_LOOPS, Tiling, Traffic, axis_window_sum, axis_window_table,
                    check_order, clip_array, extents, footprint, traffic, traffic_by_simulation)
from .search import ALL_ORDERS, CANONICAL_ORDERS, TilingResult, enumerate_tilings, optimise
from .totals import traffic_totals

__all__ = ["LOOPS", "DEPENDS", "REUSE_LOOPS", "Tiling", "Traffic", "SingleMemory",
           "ScratchAccMemory", "footprint", "traffic", "traffic_by_simulation", "extents",
           "check_order", "clip_array", "axis_window_table", "axis_window_sum", "ALL_ORDERS",
           "CANONICAL_ORDERS", "TilingResult", "enumerate_tilings", "optimise", "traffic_totals"]
