"""The Gemmini tile executor, parconv's tiling on Gemmini, the node kernel and the command line.

Exactness on awkward shapes for the vendor tiling, parconv's and random feasible tilings; the
executor's byte counts against the analytical models (part 1's `vendor_layer_cost`,
`parconv.tiling.traffic` + bias, `tiling_cost`); capacity violations; CLI and kernel contracts.
"""

from __future__ import annotations

import contextlib
import io
import json
import types

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from parconv import blas_mkl, blas_mkl_int
from parconv.cache_folders import CACHE_ENV
from parconv.errors import ParconvError
from parconv.gemmini.config import GemminiConfig
from parconv.gemmini.executor import TileExecutor
from parconv.gemmini.rectangles import rectangles, schedule_rectangles
from parconv.gemmini.tiled.choose import (GemminiMemory, choose_tiling, run_parconv, tiling_calls,
                                          vendor_tuple)
from parconv.gemmini.tiled.cost import tiling_cost
from parconv.gemmini.tiled.search import (CYCLE_SLACK, _LoopSumTables, bias_totals,
                                          exec_and_passes, exec_totals)
from parconv.gemmini.vendor.layer_cost import vendor_layer_cost
from parconv.gemmini.vendor.run import run_vendor
from parconv.kernels import reference_conv2d
from parconv.layers import get_layer
from parconv.spec import ConvSpec
from parconv.tiling import LOOPS, Tiling, extents, traffic

# a small Gemmini (128 scratchpad / 32 accumulator rows per tile) so that small layers need
# many tiles, ragged edges and several channel blocks
SMALL = dict(spad_bank_rows=64, acc_rows=64)

AWKWARD = {
    "3x3 s2 pad1 ragged": dict(batch=2, in_channels=5, out_channels=7, in_size=(9, 11),
                               kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)),
    "3x3 s3 pad2": dict(batch=1, in_channels=18, out_channels=20, in_size=(13, 10),
                        kernel_size=(3, 3), stride=(3, 3), padding=(2, 2)),
    "3x3 dil2 pad(2,1)": dict(batch=1, in_channels=20, out_channels=33, in_size=(13, 10),
                              kernel_size=(3, 3), dilation=(2, 2), padding=(2, 1)),
    "asymmetric padding": dict(batch=2, in_channels=6, out_channels=17, in_size=(10, 9),
                               kernel_size=(3, 3), stride=(2, 1), padding=(1, 0),
                               padding_end=(2, 1)),
    "1x1": dict(batch=2, in_channels=40, out_channels=24, in_size=(7, 9), kernel_size=(1, 1)),
    "1x1 s2 (downsample)": dict(batch=1, in_channels=40, out_channels=70, in_size=(12, 12),
                                kernel_size=(1, 1), stride=(2, 2)),
    "5x5 pad2": dict(batch=1, in_channels=3, out_channels=21, in_size=(15, 14),
                     kernel_size=(5, 5), padding=(2, 2)),
    "7x7 s2 stem": dict(batch=2, in_channels=3, out_channels=20, in_size=(20, 20),
                        kernel_size=(7, 7), stride=(2, 2), padding=(3, 3)),
}


def _data(spec: ConvSpec, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, spec.input_shape).astype(np.int8)
    w = rng.integers(-128, 128, spec.weight_shape).astype(np.int8)
    bias = rng.integers(-2 ** 20, 2 ** 20, spec.out_channels).astype(np.int32)
    return x, w, bias


def _psum(moved) -> int:
    return moved.output_read + moved.spill_write


def _check_against_traffic(spec, tiling, order, config, counted: dict, bias: bool):
    """Executor counts == parconv.tiling.traffic (+ the bias stream) == tiling_cost."""
    moved = traffic(spec, tiling, order)
    assert counted["input"] == moved.input
    assert counted["weight"] == moved.filter
    assert counted["output"] == moved.output_write
    assert counted["psum"] == _psum(moved)
    model = tiling_cost(spec, tiling, order, config, bias=bias)
    assert {k: counted[k] for k in model.dram_bytes} == model.dram_bytes
    assert counted["bias"] == int(bias_totals(spec, np.array([tiling.as_tuple()]), config)[0]
                                  if bias else 0)
    return model


# ---- the vendor tiling --------------------------------------------------------------------------
@pytest.mark.parametrize("semantics", ["dev", "dosa"])
@pytest.mark.parametrize("name", list(AWKWARD))
def test_vendor_exact_and_counts_equal_the_analytical_model(name, semantics):
    spec = ConvSpec(**AWKWARD[name])
    config = GemminiConfig(semantics=semantics, **SMALL)
    x, w, bias = _data(spec)
    bias = bias if config.has_bias else None
    y, stats, loop = run_vendor(spec, x, w, bias, config=config)
    np.testing.assert_array_equal(y, reference_conv2d(spec, x, w, bias))
    model = vendor_layer_cost(spec, None, config)
    counted = stats.to_dict()
    assert {s: counted["dram_bytes"][s] for s in model.dram_bytes} == model.dram_bytes
    assert counted["dram_bytes"]["psum"] == 0
    assert (stats.calls, stats.exec_cycles, stats.passes) == \
        (model.calls, model.exec_cycles, model.passes)
    assert stats.cycles == pytest.approx(model.cycles, rel=1e-12)
    assert stats.max_spad_rows <= config.spad_rows_limit
    assert stats.max_acc_rows <= config.acc_rows_limit


@pytest.mark.parametrize("name, batch", [("resnet50.layer3.1.conv1", 1),     # a_reuse
                                         ("resnet50.layer4.0.downsample.0", 1)])
def test_vendor_operand_reuse_on_real_layers(name, batch):
    spec = get_layer(name, batch)
    config = GemminiConfig()
    x, w, bias = _data(spec, 3)
    y, stats, loop = run_vendor(spec, x, w, bias, config=config)
    assert loop.a_reuse or loop.b_reuse or loop.downsample
    np.testing.assert_array_equal(y, reference_conv2d(spec, x, w, bias))
    model = vendor_layer_cost(spec, None, config)
    assert {s: stats.dram_bytes[s] for s in model.dram_bytes if s != "total"} == \
        {s: v for s, v in model.dram_bytes.items() if s != "total"}


# ---- parconv's tiling ---------------------------------------------------------------------------
@pytest.mark.parametrize("semantics", ["dev", "dosa"])
@pytest.mark.parametrize("name", list(AWKWARD))
def test_parconv_tiling_exact_and_counts_equal_traffic(name, semantics):
    spec = ConvSpec(**AWKWARD[name])
    config = GemminiConfig(semantics=semantics, **SMALL)
    x, w, bias = _data(spec, 1)
    bias = bias if config.has_bias else None
    y, stats, plan = run_parconv(spec, x, w, bias, config=config)
    np.testing.assert_array_equal(y, reference_conv2d(spec, x, w, bias))
    assert GemminiMemory(plan.config).fits(plan.model, plan.tiling)
    counted = stats.to_dict()["dram_bytes"]
    assert counted == plan.cost.dram_bytes
    assert stats.cycles == pytest.approx(plan.cost.cycles, rel=1e-12)
    if plan.schedule == "tiling":
        _check_against_traffic(plan.model, plan.tiling, plan.order, plan.config, counted,
                               config.has_bias)
    # never more bytes than the vendor tiling; at most CYCLE_SLACK slower on the calibrated model
    assert counted["total"] <= plan.vendor.dram_bytes["total"]
    assert plan.cost.calibrated_cycles <= plan.vendor.calibrated_cycles * (1 + CYCLE_SLACK)


@st.composite
def _tilings(draw):
    name = draw(st.sampled_from(sorted(AWKWARD)))
    # the stored output is int8, as Gemmini's mvout writes it (GemminiConfig.output_bytes = 1)
    spec = ConvSpec(**AWKWARD[name]).replace(dtype_out="int8")
    sizes = [draw(st.integers(1, e)) for e in extents(spec)]
    memory = GemminiMemory(GemminiConfig(**SMALL))
    while not memory.fits(spec, Tiling(*sizes)):
        # shrink the largest block until the library's rule accepts the tile
        i = int(np.argmax(sizes))
        sizes[i] = -(-sizes[i] // 2)
    order = "".join(draw(st.permutations(LOOPS)))
    tiling = Tiling(*sizes)
    assume(np.prod(tiling.trips(spec)) <= 300)     # keep the executor's walk short
    return spec, tiling, order


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_tilings(), bias=st.booleans())
def test_random_feasible_tilings_are_exact_and_counted_exactly(case, bias):
    spec, tiling, order = case
    config = GemminiConfig(bias=bias, **SMALL)
    x, w, b = _data(spec, 2)
    b = b if bias else None
    y, stats = TileExecutor(spec, config).run(tiling_calls(spec, tiling, order, config), x, w, b)
    np.testing.assert_array_equal(y, reference_conv2d(spec, x, w, b))
    model = _check_against_traffic(spec, tiling, order, config,
                                   stats.to_dict()["dram_bytes"], bias)
    assert stats.exec_cycles == model.exec_cycles
    assert stats.exec_cycles == int(exec_totals(spec, np.array([tiling.as_tuple()]), config)[0])
    assert stats.cycles == pytest.approx(model.cycles, rel=1e-12)
    assert (stats.mvin_rows, stats.mvout_rows) == (model.mvin_rows, model.mvout_rows)
    assert stats.max_spad_rows <= config.spad_rows_limit


@pytest.mark.parametrize("name", sorted(AWKWARD))
@pytest.mark.parametrize("high", [128, 8])
@pytest.mark.parametrize("bias", [False, True])
def test_integer_layers_in_slabs_of_one_image(name, high, bias, monkeypatch):
    # tiny product pieces: the executor converts and sums one image at a time (several slabs);
    # high = 128 sums in int32 (wrap-around), high = 8 in float32, a bias in int32
    monkeypatch.setattr(TileExecutor, "PIECE_ELEMENTS", 1)
    spec = ConvSpec(**AWKWARD[name]).replace(batch=3, dtype_out="int8")
    config = GemminiConfig(bias=bias, **SMALL)
    plan = choose_tiling(spec, config)
    rng = np.random.default_rng(3)
    x = rng.integers(-high, high, spec.input_shape).astype(np.int8)
    w = rng.integers(-high, high, spec.weight_shape).astype(np.int8)
    b = rng.integers(-2 ** 20, 2 ** 20, spec.out_channels).astype(np.int32) if bias else None
    executor = TileExecutor(plan.model, plan.config)
    calls = tiling_calls(plan.model, plan.tiling, plan.order, plan.config, plan.subsampled)
    y, _ = executor.run(calls, plan.input_for_model(x), w, b)
    np.testing.assert_array_equal(y, reference_conv2d(spec, x, w, b))
    assert y.dtype == np.dtype(spec.dtype_acc)


@pytest.mark.parametrize("semantics", ["dev", "dosa"])
@pytest.mark.parametrize("strided", [False, True])
def test_exec_tables_equal_the_closed_form(semantics, strided):
    # the screen's table lookups give the integers of exec_and_passes (first-layer packing on
    # the stem and the 3-channel layers, ragged blocks everywhere)
    rng = np.random.default_rng(7)
    specs = [ConvSpec(**case) for case in AWKWARD.values()] + [
        get_layer("resnet50.conv1", batch=2), get_layer("resnet50.layer2.0.conv1", batch=3)]
    for spec in specs:
        config = GemminiConfig(semantics=semantics)
        tiles = rng.integers(1, np.array(extents(spec)) + 1, size=(300, 7))
        tables = _LoopSumTables(spec, config, strided).exec_and_passes(tiles)
        for got, want in zip(tables, exec_and_passes(spec, tiles, config, strided)):
            np.testing.assert_array_equal(got, want)


def test_float_layers_use_their_element_sizes():
    spec = ConvSpec(**AWKWARD["3x3 s2 pad1 ragged"], dtype_in="float32")
    rng = np.random.default_rng(5)
    x = rng.standard_normal(spec.input_shape).astype(np.float32)
    w = rng.standard_normal(spec.weight_shape).astype(np.float32)
    y, stats, plan = run_parconv(spec, x, w, config=GemminiConfig(semantics="dosa", **SMALL))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, reference_conv2d(spec, x, w), rtol=1e-4, atol=1e-4)
    assert plan.config.input_bytes == 4 and plan.config.acc_bytes == 4
    moved = traffic(plan.model, plan.tiling, plan.order)
    assert stats.dram_bytes["input"] == moved.input      # 4 bytes per element
    assert moved.input % 4 == 0


# ---- capacity -----------------------------------------------------------------------------------
def test_vendor_tile_that_does_not_fit_raises():
    spec = ConvSpec(**AWKWARD["1x1"])
    x, w, _ = _data(spec)
    with pytest.raises(ParconvError, match="does not fit"):
        run_vendor(spec, x, w, tile=(2, 7, 9, 24, 1, 1, 40), config=GemminiConfig(**SMALL))


def test_executor_rejects_an_overflowing_tile():
    spec = ConvSpec(**AWKWARD["1x1"])
    config = GemminiConfig(**SMALL)
    whole = Tiling(*extents(spec))
    assert not GemminiMemory(config).fits(spec, whole)
    x, w, _ = _data(spec)
    with pytest.raises(ParconvError, match="accumulator rows"):
        TileExecutor(spec, config).run(tiling_calls(spec, whole, "NKCHWRS", config), x, w)


def test_gemmini_memory_is_the_library_rule():
    spec = ConvSpec(**AWKWARD["3x3 dil2 pad(2,1)"])
    config = GemminiConfig(**SMALL)
    memory = GemminiMemory(config)
    rng = np.random.default_rng(0)
    tiles = np.stack([rng.integers(1, e + 1, 300) for e in extents(spec)], axis=1)
    vectorised = memory.fits_array(spec, tiles)
    one_by_one = [config.fits(spec, vendor_tuple(Tiling(*map(int, t)))) for t in tiles]
    assert list(vectorised) == one_by_one
    assert 0 < sum(one_by_one) < len(one_by_one)


# ---- real layers, analytical only ---------------------------------------------------------------
@pytest.mark.parametrize("name, batch", [("resnet50.layer1.0.conv1", 1),
                                         ("resnet50.layer2.0.conv2", 4),
                                         ("resnet50.layer2.0.downsample.0", 1)])
def test_parconv_beats_vendor_bytes_on_resnet_layers(name, batch):
    spec = get_layer(name, batch)
    plan = choose_tiling(spec, GemminiConfig())
    assert plan.cost.dram_bytes["total"] <= plan.vendor.dram_bytes["total"]
    assert plan.cost.calibrated_cycles <= plan.vendor.calibrated_cycles * (1 + CYCLE_SLACK)
    assert plan.cost.dram_bytes["total"] >= plan.result.bound   # never below the bound
    print(name, batch, plan.tiling.as_tuple(), plan.order, plan.cost.dram_bytes["total"],
          plan.vendor.dram_bytes["total"], plan.cost.dram_bytes["total"] / plan.result.bound)


# ---- the node kernel ----------------------------------------------------------------------------
def test_gemmini_kernel_contract():
    from parconv.nodes import get_kernel
    spec = ConvSpec(**AWKWARD["asymmetric padding"])
    x, w, _ = _data(spec, 4)
    y, stats = get_kernel("gemmini").run(spec, x, w)
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, reference_conv2d(spec, x, w))
    assert stats["kernel"] == "gemmini" and stats["macs"] == spec.G
    for which in ("parconv", "vendor"):
        block = stats[which]
        assert {"tile", "order", "dram_bytes", "cycles", "utilization"} <= set(block)
        assert set(block["dram_bytes"]) >= {"input", "weight", "bias", "output", "total"}
        assert block["dram_bytes"]["bias"] == 0          # local blocks carry no bias
    assert stats["ratio_to_bound"] == pytest.approx(
        stats["parconv"]["dram_bytes"]["total"] / stats["bound_bytes"])
    assert stats["ratio_to_bound"] >= 1.0
    json.dumps(stats)


# ---- command line -------------------------------------------------------------------------------
def _cli(*argv):
    from parconv.gemmini.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


def test_cli_json_keys_and_execute():
    status, out, _ = _cli("--batch", "1", "--in-channels", "20", "--out-channels", "24",
                          "--size", "12", "--kernel-size", "3", "--stride", "2", "--padding",
                          "1", "--config", "chip", "--json", "--execute")
    assert status == 0
    result = json.loads(out)
    for which in ("vendor", "parconv"):
        assert {"tile", "dram_bytes", "cycles", "utilization"} <= set(result[which])
        assert "total" in result[which]["dram_bytes"]
        assert result["execute"][which]["ok"] and result["execute"][which]["bytes_match_model"]
    assert len(result["vendor"]["tile"]) == 7 and isinstance(result["parconv"]["order"], str)
    assert result["bound_bytes"] > 0


def test_cli_table_and_errors():
    status, out, _ = _cli("--layer", "resnet50.layer1.0.conv1", "--semantics", "dosa")
    assert status == 0 and "vendor tile" in out and "parconv tile" in out
    status, _, err = _cli("--layer", "resnet50.nope")
    assert status == 2 and "unknown layer" in err
    status, _, err = _cli("--layer", "resnet50.conv1", "--bw-eff", "17")
    assert status == 2 and "bw_eff" in err


def test_kernel_totals_add_bytes_and_recompute_ratios():
    """Totals over ranks sum bytes, MACs and bounds; utilization and ratios are recomputed."""
    from parconv.gemmini.kernel import GemminiKernel
    kernel = GemminiKernel()
    rng = np.random.default_rng(3)
    stats = []
    for size in (6, 9):
        spec = ConvSpec(batch=1, in_channels=20, out_channels=18, in_size=(size, size),
                        kernel_size=3, padding=1)
        x = rng.integers(-128, 128, spec.input_shape, dtype=np.int8)
        w = rng.integers(-128, 128, spec.weight_shape, dtype=np.int8)
        stats.append(kernel.run(spec, x, w)[1])
    total = kernel.combine(stats)
    assert total["macs"] == sum(s["macs"] for s in stats)
    ours = total["parconv"]
    assert ours["dram_bytes"]["total"] == sum(s["parconv"]["dram_bytes"]["total"] for s in stats)
    assert ours["cycles"] == sum(s["parconv"]["cycles"] for s in stats)
    assert ours["utilization"] == pytest.approx(total["macs"] / (256 * ours["cycles"]))
    assert 0 < ours["utilization"] <= 1
    assert ours["ratio_to_bound"] == pytest.approx(ours["dram_bytes"]["total"]
                                                   / total["bound_bytes"])


# ---- speed paths: the tiling cache and the float32 products of the executor ---------------------
@pytest.fixture
def cache_in(tmp_path, monkeypatch):
    from parconv.gemmini import tiling_cache
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    tiling_cache.clear_memory()
    yield tmp_path
    tiling_cache.clear_memory()


def test_tiling_is_searched_once_per_shape(cache_in):
    from parconv.gemmini import tiling_cache
    from parconv.gemmini.kernel import GemminiKernel
    spec = ConvSpec(**AWKWARD["3x3 s2 pad1 ragged"], name="a")
    config = GemminiConfig(**SMALL)
    first, info = tiling_cache.cached_tiling(spec, config)
    assert info["source"] == "search" and info["search_s"] > 0
    searched = choose_tiling(spec, config)
    assert (first.tiling, first.order, first.schedule, first.cost, first.spec) == \
        (searched.tiling, searched.order, searched.schedule, searched.cost, spec)
    again, info = tiling_cache.cached_tiling(spec.replace(name="b"), config)  # same shape
    assert info["source"] == "memory" and info["search_s"] == 0
    assert again.spec.name == "b" and again.tiling == first.tiling and again.order == first.order
    files = list(cache_in.glob("*.pickle"))
    assert len(files) == 1 and not list(cache_in.glob(".tmp-*"))
    tiling_cache.clear_memory()                                               # a new run
    from_disk, info = tiling_cache.cached_tiling(spec, config)
    assert info["source"] == "disk" and from_disk.cost == first.cost
    other, info = tiling_cache.cached_tiling(spec, GemminiConfig(semantics="dosa", **SMALL))
    assert info["source"] == "search" and len(list(cache_in.glob("*.pickle"))) == 2
    # a damaged entry is searched again and rewritten whole
    tiling_cache.clear_memory()
    files[0].write_bytes(b"\x80\x05 not a pickle")
    _, info = tiling_cache.cached_tiling(spec, config)
    assert info["source"] == "search"
    tiling_cache.clear_memory()
    assert tiling_cache.cached_tiling(spec, config)[1]["source"] == "disk"
    # the kernel reports where its tiling came from
    x, w, _ = _data(spec)
    kernel = GemminiKernel(config)
    for source in ("search", "memory"):
        y, stats = kernel.run(spec, x, w)
        np.testing.assert_array_equal(y, reference_conv2d(spec, x, w))
        assert stats["tiling_source"] == source and stats["execute_s"] > 0
        assert (stats["search_s"] > 0) == (source == "search")


def test_tiling_cache_off_and_concurrent_writers(cache_in, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor
    from parconv.gemmini import tiling_cache
    spec = ConvSpec(**AWKWARD["1x1"])
    config = GemminiConfig(**SMALL)
    choice, _ = tiling_cache.cached_tiling(spec, config, disk=False)
    assert not list(cache_in.iterdir())
    key = tiling_cache._key_text(spec, config)
    name = tiling_cache.entry_name(spec, config)
    with ThreadPoolExecutor(8) as pool:     # many ranks writing the same entry at once
        assert all(pool.map(lambda _: tiling_cache._write(cache_in, name, key, choice), range(32)))
    assert [p.name for p in cache_in.iterdir()] == [name]
    assert tiling_cache._read(cache_in / name, key).tiling == choice.tiling
    assert tiling_cache._read(cache_in / name, key + "other code") is None
    monkeypatch.setenv(CACHE_ENV, "off")
    assert tiling_cache.cache_dir() is None
    assert not tiling_cache._write(cache_in / name / "below a file", name, key, choice)


@pytest.mark.parametrize("low, high", [(-128, 128), (-8, 8)])
def test_executor_products_float32_when_exact(low, high, float_int8_path):
    # float32 products exactly when the taps of one channel sum below 2**24: the reduction is
    # cut into channel groups whose float32 sums are exact (the float path: no MKL int8 GEMM)
    import dataclasses
    spec = ConvSpec(batch=1, in_channels=20, out_channels=33, in_size=(13, 10),
                    kernel_size=(3, 3), padding=(1, 1))
    plan = choose_tiling(spec, GemminiConfig())
    rng = np.random.default_rng(5)
    x = rng.integers(low, high, spec.input_shape).astype(np.int8)
    w = rng.integers(low, high, spec.weight_shape).astype(np.int8)
    x.flat[0], w.flat[0] = low, low
    executor = TileExecutor(plan.model, plan.config)
    calls = tiling_calls(plan.model, plan.tiling, plan.order, plan.config, plan.subsampled)
    taps = max((c.r[1] - c.r[0]) * (c.s[1] - c.s[0]) for c in calls)
    y, _ = executor.run(calls, x, w)
    assert executor.products == (np.float32 if taps * low * low <= 2 ** 24 else np.float64)
    assert executor.chunk == 2 ** 24 // (low * low)
    # float32 sums when the whole reduction is exact in float32, else int32 (wrap-around)
    assert executor.acc_type == (np.float32 if 180 * low * low <= 2 ** 24 else np.int32)
    np.testing.assert_array_equal(y, reference_conv2d(spec, x, w))
    bias = np.full(spec.out_channels, 2 ** 30, dtype=np.int32)     # a bias: int32 sums
    y, _ = executor.run(calls, x, w, bias)
    assert executor.acc_type == np.int32
    np.testing.assert_array_equal(y, reference_conv2d(spec, x, w, bias))
    # groups of one channel's taps: still exact
    executor.FLOAT32_EXACT = 9 * low * low
    y, _ = executor.run(calls, x, w)
    assert executor.chunk == 9
    np.testing.assert_array_equal(y, reference_conv2d(spec, x, w))
    # one channel of 2**24 / (low * low) + 1 taps would not be exact in float32
    long_tile = dataclasses.replace(calls[0], r=(0, 2 ** 24 // (low * low) + 1), s=(0, 1))
    del executor.FLOAT32_EXACT
    assert executor._product_type([long_tile], x, w) == np.float64
    assert executor._product_type(calls, np.zeros_like(x), w) == np.float32


def _int8_ready() -> bool:
    return blas_mkl.enabled() and blas_mkl_int.ready()


@pytest.mark.skipif(not _int8_ready(), reason="MKL's int8 GEMM is not ready on this machine")
@pytest.mark.parametrize("spec", [
    ConvSpec(batch=2, in_channels=20, out_channels=33, in_size=(13, 10), kernel_size=(3, 3),
             padding=(1, 1)),
    ConvSpec(batch=3, in_channels=17, out_channels=40, in_size=(40, 37), kernel_size=(3, 2),
             stride=(2, 1), padding=(2, 0), dilation=(1, 2)),
    ConvSpec(batch=1, in_channels=300, out_channels=24, in_size=(9, 9), kernel_size=(1, 1)),
    ConvSpec(batch=2, in_channels=3, out_channels=20, in_size=(70, 70), kernel_size=(7, 7),
             stride=(2, 2), padding=(3, 3)),
    ConvSpec(batch=2, in_channels=4, out_channels=8, in_size=(128, 128), kernel_size=(1, 1)),
    ConvSpec(batch=1, in_channels=8, out_channels=8, in_size=(130, 130), kernel_size=(3, 3),
             padding=(0, 1)),
], ids=["3x3", "strided-dilated", "1x1-deep", "stem", "large-map-1x1", "large-map-3x3"])
def test_executor_int8_products_on_mkl_are_exact(spec, mkl_calls):
    # where MKL's int8 GEMM is ready the tiles' products are int8 with int32 sums (no groups),
    # bit-identical to the reference on extreme operands, with a bias near 2**30, for
    # parconv's tiling and the library's (whose output blocks cover part of the rows)
    rng = np.random.default_rng(11)
    x = rng.choice(np.array([-128, 127, -1, 0, 1], np.int8), spec.input_shape)
    w = rng.choice(np.array([-128, 127, -3, 5], np.int8), spec.weight_shape)
    x.reshape(-1)[:64], w.reshape(-1)[:64] = -128, -128
    want = reference_conv2d(spec, x, w)
    y, stats, plan = run_parconv(spec, x, w)
    np.testing.assert_array_equal(y, want)
    assert stats.products == "int8" and mkl_calls and all(mkl_calls)
    y_vendor, vendor_stats, _ = run_vendor(spec, x, w)
    np.testing.assert_array_equal(y_vendor, want)
    assert vendor_stats.products == "int8"
    executor = TileExecutor(plan.model, plan.config)
    calls = tiling_calls(plan.model, plan.tiling, plan.order, plan.config, plan.subsampled)
    bias = np.full(spec.out_channels, 2 ** 30, dtype=np.int32)
    y, _ = executor.run(calls, x, w, bias)
    assert executor.products == np.int8 and executor.chunk is None
    np.testing.assert_array_equal(y, reference_conv2d(spec, x, w, bias))


@pytest.mark.skipif(not _int8_ready(), reason="MKL's int8 GEMM is not ready on this machine")
@pytest.mark.parametrize("columns", [(0, 9), (2, 7)], ids=["whole-rows", "part-of-rows"])
@pytest.mark.parametrize("assign", [False, True], ids=["add", "assign"])
def test_int8_tile_products_go_into_any_output_block(columns, assign):
    # an output block of whole rows takes the products in place (beta = 1, or 0 to assign),
    # one of part of the rows through a buffer: both give exactly what int64 arithmetic does
    rng = np.random.default_rng(3)
    y = rng.integers(-2 ** 30, 2 ** 30, (3, 6, 5, 9)).astype(np.int32)
    w = rng.integers(-128, 128, (4, 10)).astype(np.int8)
    lo, hi = columns
    patches = rng.integers(-128, 128, (2, 10, 3 * (hi - lo))).astype(np.int8)
    want = y.astype(np.int64)
    product = np.matmul(w.astype(np.int64), patches.astype(np.int64)).reshape(2, 4, 3, hi - lo)
    if assign:
        want[1:3, 2:6, 1:4, lo:hi] = product
    else:
        want[1:3, 2:6, 1:4, lo:hi] += product
    TileExecutor._int8_into(y[1:3, 2:6, 1:4, lo:hi], blas_mkl_int.shifted(w), patches, assign)
    np.testing.assert_array_equal(y, want)


def test_executor_int8_products_follow_the_blas_setting(float_int8_path):
    # PARCONV_BLAS=numpy keeps MKL's int8 GEMM out of the executor as out of the numpy kernel
    spec = ConvSpec(batch=1, in_channels=8, out_channels=16, in_size=(12, 12),
                    kernel_size=(3, 3), padding=(1, 1))
    x, w, _ = _data(spec)
    y, stats, _ = run_parconv(spec, x, w)
    assert stats.products == "float32"
    np.testing.assert_array_equal(y, reference_conv2d(spec, x, w))


def test_single_product_split_by_rows_is_exact():
    # one product over the whole layer (written once, into an unset buffer) cut into pieces of
    # output rows that are not contiguous in the output (several channels): every piece must
    # be assigned, not added to the unset buffer (once gave garbage on vgg16.conv1_2)
    spec = ConvSpec(batch=1, in_channels=16, out_channels=16, in_size=(128, 128),
                    kernel_size=(1, 1))
    x, w, _ = _data(spec)
    want = reference_conv2d(spec, x, w)
    y, _, plan = run_parconv(spec, x, w)
    np.testing.assert_array_equal(y, want)
    y_vendor, _, _ = run_vendor(spec, x, w)
    np.testing.assert_array_equal(y_vendor, want)


@pytest.mark.parametrize("order", ["NHWKRSC", "KRSCNHW", "CKNSHRW"])
def test_schedule_rectangles_equal_the_tile_by_tile_grouping(order):
    # the integer keys of _schedule_rectangles group, merge and order the tiles as _rectangles
    # does on the tiles' ranges: whole grids, and schedules with tiles dropped, repeated or
    # reordered (no rectangle: each tile its own product)
    spec = ConvSpec(batch=3, in_channels=5, out_channels=6, in_size=(9, 7), kernel_size=(3, 2),
                    padding=(1, 0))
    config = GemminiConfig(**SMALL)
    calls = tiling_calls(spec, Tiling(2, 4, 2, 4, 3, 2, 1), order, config)
    rng = np.random.default_rng(5)
    tables = [calls.table, calls.table[1:], calls.table[np.r_[0, 0, 1:len(calls.table)]],
              calls.table[rng.permutation(len(calls.table))]]
    for table in tables:
        schedule = types.SimpleNamespace(table=table)      # the function reads the table only
        want = rectangles([((v[0], v[1]), (v[6], v[7]), (v[8], v[9]), (v[2], v[3]),
                             (v[4], v[5]), (v[10], v[11]), (v[12], v[13]))
                            for v in table[:, :14].tolist()])
        assert schedule_rectangles(schedule) == want
    assert len(schedule_rectangles(calls)) < len(calls.table)
