"""The Gemmini node kernel on degenerate blocks: stub stats of padding-only ranks, empty sums."""

from __future__ import annotations

import numpy as np

from parconv.gemmini.kernel import GemminiKernel
from parconv.spec import ConvSpec


def test_combine_accepts_stub_stats_of_padding_only_ranks():
    kernel = GemminiKernel()
    spec = ConvSpec(batch=1, in_channels=2, out_channels=2, in_size=(4, 4), kernel_size=1)
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, spec.input_shape).astype(np.int8)
    w = rng.integers(-128, 128, spec.weight_shape).astype(np.int8)
    _, real = kernel.run(spec, x, w)
    stub = {"kernel": "gemmini", "macs": 0}            # what the engine reports for such a rank
    totals = kernel.combine([stub, real, stub])
    assert totals["macs"] == real["macs"] and totals["bound_bytes"] == real["bound_bytes"]
    assert totals["parconv"]["dram_bytes"] == real["parconv"]["dram_bytes"]
    only_stubs = kernel.combine([stub, stub])
    assert only_stubs["macs"] == 0 and "parconv" not in only_stubs


def test_the_library_tilings_calibrated_cycles_include_its_tile_search():
    # the vendor block is tiled_conv_auto (it searches its tile on the core first); parconv's
    # tiling is given to tiled_conv and searches nothing; the totals add the ranks' searches
    from parconv.gemmini.cycles import auto_search_cycles
    from parconv.gemmini.vendor.layer_cost import vendor_layer_cost
    from parconv.gemmini.vendor.heuristics import auto_search_steps
    kernel = GemminiKernel(disk_cache=False)
    spec = ConvSpec(batch=1, in_channels=32, out_channels=48, in_size=(12, 12), kernel_size=3,
                    padding=1)
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, spec.input_shape).astype(np.int8)
    w = rng.integers(-128, 128, spec.weight_shape).astype(np.int8)
    _, stats = kernel.run(spec, x, w)
    config = kernel.node_config(spec)
    search = auto_search_cycles(auto_search_steps(spec, config))
    vendor = stats["vendor"]
    assert search > 0 and vendor["search_cycles"] == search
    given = vendor_layer_cost(spec, tuple(vendor["tile"]), config)
    assert vendor["calibrated_cycles"] == given.calibrated_cycles + search
    assert stats["parconv"]["search_cycles"] == 0.0
    totals = kernel.combine([stats, stats])
    assert totals["vendor"]["search_cycles"] == 2 * search
    assert totals["parconv"]["search_cycles"] == 0.0


def test_forget_shapes_clears_every_shape_cache_of_the_search():
    # parconv.bench.forget_shapes is what makes a benchmarked block "fresh": every lru_cache of
    # the search's packages must be empty after it, but the per-process ones (the fitted
    # constants, the hash of the sources)
    import importlib
    import pkgutil

    from parconv.bench import forget_shapes
    from parconv.gemmini.tiled.choose import choose_tiling
    from parconv.layers import get_layer
    spec = get_layer("resnet50.conv1", batch=1, dtype="int8")
    choose_tiling(spec, GemminiKernel(disk_cache=False).node_config(spec))
    forget_shapes()
    kept = []
    for package in ("parconv.tiling", "parconv.gemmini", "parconv.bounds"):
        for info in pkgutil.walk_packages(importlib.import_module(package).__path__,
                                          package + "."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            kept += [f"{info.name}.{name}" for name, value in vars(module).items()
                     if hasattr(value, "cache_info") and value.__module__ == info.name
                     and value.cache_info().currsize
                     and name not in ("load_constants", "code_version")]
    assert not kept
