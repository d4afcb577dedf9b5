"""Node tilings (theory.md section 6): exact traffic, memories, optimiser, validity vs the bound."""

import itertools
import json
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from parconv.bounds import sequential_bound
from parconv.errors import ParconvError
from parconv.layers import get_layer
from parconv.spec import ConvSpec
from parconv.tiling import (LOOPS, ScratchAccMemory, SingleMemory, Tiling, enumerate_tilings,
                            extents, footprint, optimise, traffic, traffic_by_simulation,
                            traffic_totals)
from parconv.tiling.candidates import grid
from parconv.tiling.search import ALL_ORDERS, CANONICAL_ORDERS
from parconv.tiling.totals import _totals

GEMMINI = dict(scratch_bytes=256 * 1024, acc_bytes=64 * 1024, double_buffer=True, granularity=16)


# ---- strategies ---------------------------------------------------------------------------------
@st.composite
def small_layers(draw, max_size=8, max_channels=4):
    """Small layers with strides 1-3, dilations 1-2, (asymmetric) padding 0-2, ragged shapes."""
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    padding_end = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    low = [max(1, d * (k - 1) + 1 - p - q)
           for k, d, p, q in zip(kernel, dilation, padding, padding_end)]
    size = tuple(draw(st.integers(lo, max(lo, max_size))) for lo in low)
    return ConvSpec(batch=draw(st.integers(1, 3)), in_channels=draw(st.integers(1, max_channels)),
                    out_channels=draw(st.integers(1, max_channels)), in_size=size,
                    kernel_size=kernel, stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
                    padding=padding, padding_end=padding_end, dilation=dilation,
                    dtype_in=draw(st.sampled_from(["int8", "float32"])),
                    dtype_out=draw(st.sampled_from([None, "int8"])))


@st.composite
def layer_tiling_order(draw):
    spec = draw(small_layers())
    tiling = Tiling(*(draw(st.integers(1, e + 1)) for e in extents(spec)))
    return spec, tiling, "".join(draw(st.permutations(LOOPS)))


# ---- the exact model -------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(layer_tiling_order())
def test_traffic_equals_simulation(case):
    spec, tiling, order = case
    analytic = traffic(spec, tiling, order)
    assert analytic == traffic_by_simulation(spec, tiling, order)
    assert traffic_totals(spec, np.array([tiling.as_tuple()]), order)[0] == analytic.total


def test_traffic_hand_computed():
    # 1x1 conv, N=1 C=2 K=2 H=W=2, blocks tK=tC=1, C outside K: each of the two output blocks
    # is visited twice, so it is spilled once (4 B per int32 element) and read back once; the
    # input block (one channel) stays resident while K changes
    spec = ConvSpec(batch=1, in_channels=2, out_channels=2, in_size=2, kernel_size=1)
    t = traffic(spec, Tiling(1, 1, 1, 2, 2, 1, 1), "CKNHWRS")
    assert (t.input, t.filter) == (8, 4)
    assert (t.spill_write, t.output_read, t.output_write) == (32, 32, 32)
    assert t.loads == {"input": 2, "filter": 4, "output_read": 2, "output_write": 2,
                       "spill_write": 2}
    assert t.total == 108 and t.tiles == 4
    # with K outside C the output is stationary and the input is loaded once per K block
    t = traffic(spec, Tiling(1, 1, 1, 2, 2, 1, 1), "KCNHWRS")
    assert (t.input, t.spill_write, t.output_read, t.total) == (16, 0, 0, 52)
    # padding costs nothing: 3x3 window on a 1x1 image with padding 1 reads the one pixel
    spec = ConvSpec(batch=1, in_channels=1, out_channels=1, in_size=1, kernel_size=3, padding=1)
    assert traffic(spec, Tiling(1, 1, 1, 1, 1, 1, 1), "NKCHWRS").input == 1


@settings(max_examples=15, deadline=None)
@given(small_layers(max_size=6, max_channels=3), st.data())
def test_three_canonical_orders_attain_the_best_of_all_orders(spec, data):
    tiles = np.array([[data.draw(st.integers(1, e)) for e in extents(spec)] for _ in range(6)])
    every = _totals(spec, tiles, list(ALL_ORDERS)).min(axis=0)
    canonical = _totals(spec, tiles, list(CANONICAL_ORDERS.values())).min(axis=0)
    assert np.array_equal(every, canonical)


def test_single_block_loops_do_not_change_traffic():
    spec = ConvSpec(batch=2, in_channels=3, out_channels=2, in_size=(5, 4), kernel_size=(2, 3),
                    stride=(2, 1), padding=1)
    tiling = Tiling(2, 1, 2, 3, 4, 1, 3)           # N, H, W, S have a single block
    by_order = {}
    for order in ALL_ORDERS[::37]:
        key = "".join(l for l in order if tiling.trips(spec)[LOOPS.index(l)] > 1)
        by_order.setdefault(key, set()).add(traffic_by_simulation(spec, tiling, order).total)
    assert all(len(totals) == 1 for totals in by_order.values())


def test_footprint_formula():
    spec = ConvSpec(batch=3, in_channels=5, out_channels=7, in_size=(20, 21), kernel_size=(3, 2),
                    stride=(2, 3), dilation=(2, 1), dtype_in="int8")
    inp, flt, out = footprint(spec, Tiling(2, 4, 3, 5, 6, 2, 2))
    assert inp == 1 * 2 * 3 * (2 * 4 + 2 * 1 + 1) * (3 * 5 + 1 * 1 + 1)
    assert flt == 1 * 4 * 3 * 2 * 2
    assert out == 4 * 2 * 4 * 5 * 6
    assert footprint(spec, Tiling(99, 99, 99, 99, 99, 99, 99)) == \
        footprint(spec, Tiling(*extents(spec)))


# ---- memories --------------------------------------------------------------------------------
def test_scratch_acc_usage_and_halving():
    spec = ConvSpec(batch=2, in_channels=40, out_channels=20, in_size=16, kernel_size=3, padding=1)
    tiling = Tiling(1, 20, 17, 4, 5, 3, 3)
    mem = ScratchAccMemory(**GEMMINI)
    scratch, acc = mem.usage_array(spec, np.array([tiling.as_tuple()]))
    assert scratch[0] == 32 * 1 * 6 * 7 + 32 * 17 * 3 * 3     # tC 17 -> 32, tK 20 -> 32
    assert acc[0] == 4 * 32 * 1 * 4 * 5
    assert mem.capacity() == 320 * 1024
    tight = ScratchAccMemory(2 * int(scratch[0]), 2 * int(acc[0]))
    assert tight.fits(spec, tiling)
    assert not ScratchAccMemory(2 * int(scratch[0]) - 1, 2 * int(acc[0])).fits(spec, tiling)
    assert not ScratchAccMemory(2 * int(scratch[0]), 2 * int(acc[0]) - 1).fits(spec, tiling)
    assert ScratchAccMemory(int(scratch[0]), int(acc[0]), double_buffer=False).fits(spec, tiling)


@pytest.mark.parametrize("bad", [
    lambda: Tiling(0, 1, 1, 1, 1, 1, 1), lambda: Tiling(1, 1.5, 1, 1, 1, 1, 1),
    lambda: SingleMemory(0), lambda: ScratchAccMemory(0, 10),
    lambda: ScratchAccMemory(10, 10, granularity=0),
    lambda: traffic(ConvSpec(1, 1, 1, 3, 1), Tiling(1, 1, 1, 1, 1, 1, 1), "NKCHWR"),
    lambda: optimise(ConvSpec(1, 4, 4, 8, 3), SingleMemory(5)),
])
def test_errors_name_the_problem(bad):
    with pytest.raises(ParconvError):
        bad()


# ---- validity against the sequential bound, and optimality, on tiny layers -----------------------
TINY = [
    ConvSpec(batch=2, in_channels=2, out_channels=2, in_size=(4, 3), kernel_size=(3, 2), padding=1),
    ConvSpec(batch=1, in_channels=3, out_channels=2, in_size=(7, 5), kernel_size=3, stride=2,
             padding=1),
    ConvSpec(batch=2, in_channels=2, out_channels=2, in_size=(5, 5), kernel_size=2, dilation=2,
             padding=(1, 0)),
    ConvSpec(batch=1, in_channels=4, out_channels=3, in_size=(3, 4), kernel_size=(2, 1),
             stride=(2, 1), dtype_out="int8"),
    ConvSpec(batch=2, in_channels=3, out_channels=2, in_size=(4, 4), kernel_size=3, padding=1,
             dtype_in="float32"),
]


def _tiny_memory(spec, quantile):
    """A SingleMemory that some but not all tilings fit in, and all fitting tilings."""
    tiles = grid([range(1, e + 1) for e in extents(spec)])
    totals = np.sort([sum(footprint(spec, Tiling(*map(int, t)))) for t in tiles])
    memory = SingleMemory(int(totals[int(quantile * len(totals))]))
    fitting = tiles[memory.fits_array(spec, tiles)]
    assert 0 < len(fitting) < len(tiles)
    return memory, fitting


@pytest.mark.parametrize("spec", TINY, ids=lambda s: s.describe().split(": ")[1][:40])
def test_no_tiling_and_order_beats_the_bound_and_optimiser_finds_the_best(spec):
    for quantile in (0.15, 0.5):
        memory, fitting = _tiny_memory(spec, quantile)
        every = _totals(spec, fitting, list(ALL_ORDERS))          # all tilings x all 5040 orders
        bound = sequential_bound(spec, memory.capacity()).value
        assert every.min() >= bound, f"a schedule beats the bound with M = {memory.M}"
        best = int(every.min())
        # exhaustive path and relaxation + local-search path, window split allowed
        assert optimise(spec, memory, keep_window=False).traffic.total == best
        assert optimise(spec, memory, keep_window=False, full_search_limit=0).traffic.total == best
        # with the window kept whole (theory.md's rule) it is the best of those tilings
        ext = extents(spec)
        whole = (fitting[:, 5] == ext[5]) & (fitting[:, 6] == ext[6])
        if whole.any():
            result = optimise(spec, memory, full_search_limit=0)
            assert result.traffic.total == every.min(axis=0)[whole].min()
            assert (result.tiling.tR, result.tiling.tS) == (ext[5], ext[6])
            assert result.ratio >= 1


def test_scalar_enumeration_agrees_with_bound():
    """enumerate_tilings + traffic() (the scalar path) on the smallest tiny layer."""
    spec = TINY[3]
    memory, fitting = _tiny_memory(spec, 0.4)
    bound = sequential_bound(spec, memory.capacity()).value
    totals = [traffic(spec, tiling, order).total
              for tiling, order in enumerate_tilings(spec, memory, distinct_orders=True)]
    assert min(totals) >= bound
    assert min(totals) == _totals(spec, fitting, list(CANONICAL_ORDERS.values())).min()
    some = list(itertools.islice(enumerate_tilings(spec, memory), 5041))
    assert len({order for _, order in some}) == 5040


# ---- optimiser on realistic layers -------------------------------------------------------------
class FitsOnly:
    """A memory with only the two required methods (the slow fallback path)."""

    def __init__(self, M):
        self._memory = SingleMemory(M)

    def fits(self, spec, tiling):
        return self._memory.fits(spec, tiling)

    def capacity(self):
        return self._memory.capacity()


def test_optimise_with_a_minimal_memory_object():
    spec = ConvSpec(batch=1, in_channels=8, out_channels=8, in_size=6, kernel_size=3, padding=1)
    expected = optimise(spec, SingleMemory(600))
    got = optimise(spec, FitsOnly(600))
    assert got.traffic.total == expected.traffic.total
    assert json.loads(json.dumps(got.to_dict()))["order"] == got.order


@settings(max_examples=15, deadline=None)
@given(small_layers(max_size=12, max_channels=12), st.integers(1, 4), st.data())
def test_optimiser_fits_and_beats_random_feasible_tilings(spec, g, data):
    memory = ScratchAccMemory(data.draw(st.integers(600, 6000)), data.draw(st.integers(200, 2000)),
                              granularity=g)
    try:
        result = optimise(spec, memory, full_search_limit=0)
    except ParconvError:
        assert not memory.fits(spec, Tiling(1, 1, 1, 1, 1, 1, 1))
        return
    assert memory.fits(spec, result.tiling)
    assert result.traffic == traffic(spec, result.tiling, result.order)
    assert result.ratio >= 1
    tiles = np.array([[data.draw(st.integers(1, e)) for e in extents(spec)] for _ in range(30)])
    tiles = tiles[memory.fits_array(spec, tiles)]
    if (result.tiling.tR, result.tiling.tS) == extents(spec)[5:]:
        tiles = tiles[(tiles[:, 5] == spec.kernel_size[0]) & (tiles[:, 6] == spec.kernel_size[1])]
    if len(tiles):
        assert _totals(spec, tiles, list(ALL_ORDERS[::97])).min() >= result.traffic.total


@pytest.mark.parametrize("batch", [1, 4])
def test_gemmini_memory_on_resnet50(batch, capsys):
    memory = ScratchAccMemory(**GEMMINI)
    lines = []
    for name in ("resnet50.conv1", "resnet50.layer1.0.conv2", "resnet50.layer2.0.downsample.0",
                 "resnet50.layer3.0.conv2", "resnet50.layer4.1.conv2"):
        spec = get_layer(name, batch=batch).replace(dtype_out="int8")
        start = time.process_time()
        result = optimise(spec, memory)
        seconds = time.process_time() - start
        assert memory.fits(spec, result.tiling)
        assert result.traffic == traffic(spec, result.tiling, result.order)
        assert result.ratio >= 1
        assert result.ratio < 4, "far from the bound: the search has regressed"
        # no other loop order does better with the same tiling
        assert result.traffic.total <= min(traffic_totals(
            spec, np.array([result.tiling.as_tuple()]), o)[0] for o in ALL_ORDERS[::251])
        lines.append(f"{name} batch {batch}: tile {result.tiling.as_tuple()} order "
                     f"{result.order} bytes {result.traffic.total} bound {result.bound:.0f} "
                     f"ratio {result.ratio:.2f} ({seconds:.2f} s CPU)")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
