"""`GemminiKernel`: the Gemmini model as parconv's node kernel (docs/design.md 4.4, "Node kernel
interface").  Pure, no MPI.

``run(spec, x, w)`` runs the rank's local block tile by tile through the executor with parconv's
tiling (`parconv.gemmini.tiled.choose.choose_tiling`, searched once per block shape and kept in
the process and on disk: `parconv.gemmini.tiling_cache`), returns the exact partial output, and
evaluates the vendor tiling (``tiled_conv_auto``) on the same block with the analytical model of
`parconv.gemmini.vendor.layer_cost` (the executor is run once, for parconv's tiling).

Element sizes on a rank: the local block's output is a partial sum that the engine reduces over
the C group, so it leaves Gemmini as ``spec.dtype_out`` (int32 for int8 layers: a full-precision
accumulator read, mvout with bit 29 set) rather than scaled int8; the bias is added by the
engine, so the model loads one only when ``spec.bias`` (never, for local blocks).  Float layers
use the same rules with their element sizes (``GemminiConfig.for_spec``) and compute in their type.
"""

from __future__ import annotations

import time

import numpy as np

from .. import blas_mkl
from ..errors import ParconvError
from ..kernels import _checked_operands
from ..spec import ConvSpec
from .config import DEFAULT_CONFIG, GemminiConfig
from .tiled.choose import block_bound, model_spec, run_parconv
from .tiling_cache import cached_tiling, key_text, remember


def tiling_figures(tile, order: str, schedule: str, dram_bytes: dict, cycles: float,
                   utilization: float, calls: int, calibrated_cycles: float,
                   search_cycles: float = 0.0) -> dict:
    """The per-tiling block of the stats (JSON-ready): ``cycles`` is the roofline the executor
    counts (max(execute, bytes / bandwidth) per call), ``calibrated_cycles`` the cycle model
    fitted to FireSim (parconv.gemmini.cycles, docs/gemmini.md section 11), which includes
    ``search_cycles``, the core's tile search before the first call (``tiled_conv_auto``'s;
    0 for parconv's tiling, given to ``tiled_conv``)."""
    return {"tile": [int(v) for v in tile], "order": order, "schedule": schedule,
            "dram_bytes": {k: int(v) for k, v in dram_bytes.items()}, "cycles": float(cycles),
            "calibrated_cycles": float(calibrated_cycles),
            "search_cycles": float(search_cycles),
            "utilization": float(utilization), "calls": int(calls)}


def vendor_figures(layer_cost) -> dict:
    """The stats block of the library's tiling from its `LayerCost` (tile as the 7-tuple;
    ``tiled_conv_auto``: its calibrated cycles include the tile search)."""
    if layer_cost is None:
        return None
    dram = {s: int(layer_cost.dram_bytes[s]) for s in ("input", "weight", "bias", "output")}
    dram["psum"] = 0
    dram["total"] = sum(dram.values())
    return tiling_figures(layer_cost.tile.as_tuple(), "NHWKRSC", "vendor", dram,
                          layer_cost.cycles, layer_cost.utilization, layer_cost.calls,
                          layer_cost.calibrated_cycles, layer_cost.search_cycles)


class GemminiKernel:
    """The Gemmini accelerator model as a node kernel.  Local.

    Parameters
    ----------
    config : GemminiConfig, optional
        The modelled Gemmini (default: the default configuration, ``dev`` semantics).
    disk_cache : bool
        Keep searched tilings on disk too (`parconv.gemmini.tiling_cache`; the folder is
        ``$PARCONV_CACHE_DIR``, default ``~/.cache/parconv/tilings``, ``off`` disables it).
    """

    name = "gemmini"

    def __init__(self, config: GemminiConfig | None = None, disk_cache: bool = True) -> None:
        self.config = config or DEFAULT_CONFIG
        self.disk_cache = disk_cache
        # MKL where $PARCONV_BLAS allows it: the executor's int8 tiles run on its int8 GEMM
        # (readied for int8 layers by `parconv.blas.warm_up`, before the memory baseline)
        blas_mkl.enabled()
        #: how `setup` found a tiling (search, disk), reported by the `run` that uses it
        self._setup_info: dict = {}

    def node_config(self, spec: ConvSpec) -> GemminiConfig:
        """The config for a local block: its element sizes, bias only if the block has one."""
        config = self.config.for_spec(spec)
        return config.replace(output_bytes=spec.p_out, bias=bool(spec.bias))

    def setup_key(self, spec: ConvSpec) -> str | None:
        """Text naming the tiling `setup` searches for a block (equal texts: equal tilings), or
        None for a block without work.  Local (parconv.mpi.node_setup shares set-ups)."""
        if spec.G == 0:
            return None
        return key_text(spec, self.node_config(spec))

    def setup(self, spec: ConvSpec):
        """Search (or look up) the tiling of a block and keep it for `run`; returns it.  Local."""
        config = self.node_config(spec)
        choice, info = cached_tiling(spec, config, disk=self.disk_cache)
        self._setup_info[key_text(spec, config)] = info
        return choice

    def adopt(self, spec: ConvSpec, choice) -> None:
        """Keep the tiling another rank's `setup` found for an equal block.  Local."""
        remember(spec, self.node_config(spec), choice)

    def run(self, spec: ConvSpec, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, dict]:
        """Convolve one local block on the model.  Local.

        Returns
        -------
        y : ndarray (N, K, H, W) of ``spec.dtype_acc``
            The exact partial output without bias (int32 wrap-around for int8).
        stats : dict
            ``kernel``, ``macs``, ``time_s``, ``config``, ``semantics``; ``parconv`` and
            ``vendor`` (each ``tile``, ``order``, ``schedule``, ``dram_bytes`` per stream and
            ``total``, ``cycles`` (roofline), ``calibrated_cycles`` (the FireSim-fitted model,
            with ``search_cycles``: the vendor's ``tiled_conv_auto`` searches its tile on the
            core first, parconv's given tiling does not, 0), ``utilization``, ``calls``; parconv's ``tile`` is
            (tN, tK, tC, tH, tW, tR, tS), the vendor's the library 7-tuple (batches, porows,
            pocols, pochs, krows, kcols, kchs)); ``bound_bytes`` (sequential bound of the block
            with M = scratchpad + accumulator) and ``ratio_to_bound`` (parconv's bytes / bound);
            ``tiling_source`` ("memory", "peer", "disk" or "search": where the tiling came
            from; "peer": searched by another rank with an equal block),
            ``search_s`` (seconds searching it, 0 when cached), ``compute_dtype`` (the tiles'
            products: "int8" for int8 products with int32 sums on MKL's int8 GEMM, else the
            float type of exact float products, `parconv.gemmini.executor`), ``products``
            ("mkl" where MKL ran them, else "numpy") and ``execute_s`` (seconds in the tile
            executor).

        Raises
        ------
        ParconvError
            If the operands do not match ``spec``.
        """
        start = time.perf_counter()
        if spec.bias:
            raise ParconvError("GemminiKernel computes partial outputs without bias "
                               "(the engine adds it); pass a spec with bias=False")
        x, w = _checked_operands(spec, x, w)
        config = self.node_config(spec)
        plan, found = cached_tiling(spec, config, disk=self.disk_cache)
        if found["source"] == "memory":     # the search `setup` did is this run's search
            found = self._setup_info.pop(key_text(spec, config), found)
        begin, on_mkl = time.perf_counter(), blas_mkl.calls()
        y, executed, plan = run_parconv(spec, x, w, plan=plan)
        execute = time.perf_counter() - begin
        products = "mkl" if blas_mkl.calls() > on_mkl else "numpy"
        bound = block_bound(model_spec(spec, plan.config), config.scratch_bytes,
                            config.acc_total_bytes)
        ours = tiling_figures(plan.tiling.as_tuple(), plan.order, plan.schedule,
                              executed.to_dict()["dram_bytes"], executed.cycles,
                              executed.utilization, executed.calls, plan.cost.calibrated_cycles)
        total = ours["dram_bytes"]["total"]
        stats = {"kernel": self.name, "macs": int(spec.G),
                 "config": config.name, "semantics": config.semantics,
                 "parconv": ours, "vendor": vendor_figures(plan.vendor),
                 "bound_bytes": bound, "ratio_to_bound": total / bound if bound > 0 else None,
                 "tiling_source": found["source"], "search_s": found["search_s"],
                 "compute_dtype": executed.products, "products": products,
                 "execute_s": execute, "time_s": time.perf_counter() - start}
        return y, stats

    def combine(self, per_rank: list[dict]) -> dict:
        """Totals over the ranks' stats: bytes, MACs and bounds add up; cycles are given both
        summed (work) and as the slowest rank (time); utilization and the ratio to the bound are
        recomputed from the sums, never summed.  Ranks whose block reads only padding report stub
        stats (``kernel`` and ``macs`` = 0, no tiling and no bound): they add nothing.  Local."""
        macs = sum(s.get("macs", 0) for s in per_rank)
        bound = sum(s.get("bound_bytes", 0.0) for s in per_rank)
        out = {"kernel": "gemmini", "macs": macs, "bound_bytes": bound,
               "time_s": sum(s.get("time_s", 0.0) for s in per_rank)}
        for which in ("parconv", "vendor"):
            blocks = [s[which] for s in per_rank if s.get(which)]
            if not blocks:
                continue
            dram = {k: sum(b["dram_bytes"][k] for b in blocks) for k in blocks[0]["dram_bytes"]}
            cycles = sum(b["cycles"] for b in blocks)
            calibrated = [b.get("calibrated_cycles", float("nan")) for b in blocks]
            out[which] = {"dram_bytes": dram, "cycles": cycles,
                          "cycles_slowest_rank": max(b["cycles"] for b in blocks),
                          "calibrated_cycles": sum(calibrated),
                          "search_cycles": sum(b.get("search_cycles", 0.0) for b in blocks),
                          "calibrated_cycles_slowest_rank": max(calibrated),
                          "calls": sum(b["calls"] for b in blocks),
                          "utilization": (macs / (self.config.peak_macs_per_cycle * cycles)
                                          if cycles else 0.0),
                          "ratio_to_bound": dram["total"] / bound if bound > 0 else None}
        return out
