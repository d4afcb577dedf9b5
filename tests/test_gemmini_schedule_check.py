"""The schedule checks of the tile executor (parconv.gemmini.schedule_check): every fault of a
schedule is found, the first faulty call's error is the one raised, and a schedule that loads
every block counts every block."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from parconv.errors import ParconvError, ParconvRuntimeError
from parconv.gemmini.config import GemminiConfig
from parconv.gemmini.executor import TileExecutor
from parconv.gemmini.schedule_check import TileSchedule
from parconv.gemmini.tiled.choose import choose_tiling, tiling_calls
from parconv.spec import ConvSpec

SPEC = ConvSpec(batch=2, in_channels=20, out_channels=33, in_size=(13, 10), kernel_size=(3, 3),
                stride=(2, 1), padding=(1, 1))


@pytest.fixture(scope="module")
def schedule():
    plan = choose_tiling(SPEC, GemminiConfig(spad_bank_rows=64, acc_rows=64))
    calls = list(tiling_calls(plan.model, plan.tiling, plan.order, plan.config, plan.subsampled))
    assert len(calls) > 8
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, SPEC.input_shape).astype(np.int8)
    w = rng.integers(-128, 128, SPEC.weight_shape).astype(np.int8)
    return plan.model, plan.config, calls, x, w


def _run(schedule, calls):
    spec, config, _, x, w = schedule
    return TileExecutor(spec, config).run(calls, x, w)


def _with(calls, i, **fields):
    return [*calls[:i], dataclasses.replace(calls[i], **fields), *calls[i + 1:]]


def test_each_fault_is_found(schedule):
    calls = schedule[2]
    cases = [(_with(calls, 3, rows=calls[3].rows - 1), "outside its input window"),
             (_with(calls, 3, row0=calls[3].row0 + 1), "outside its input window"),
             (_with(calls, 3, step=2), "not aligned"),
             (_with(calls, 3, step=0), "window step 0"),
             (_with(calls, 3, input_mode="reuse"), "reuses input block"),
             (_with(calls, 0, weight_mode="reuse"), "reuses weight block"),
             (calls + calls[:1], "visited after it was final"),
             (calls[:-1], "schedule finished"),
             (_with(calls, 2, h=(calls[2].h[0], calls[2].h[0])), "empty tile")]
    for faulty, message in cases:
        with pytest.raises(ParconvRuntimeError, match=message):
            _run(schedule, faulty)


def test_the_first_faulty_call_decides(schedule):
    calls = schedule[2]
    # a window fault at call 2 and a capacity fault at call 5: call 2's error
    big = dataclasses.replace(calls[5], rows=calls[5].rows * 100)
    faulty = _with([*calls[:5], big, *calls[6:]], 2, step=2)
    with pytest.raises(ParconvRuntimeError, match="not aligned"):
        _run(schedule, faulty)
    with pytest.raises(ParconvError, match="does not fit"):
        _run(schedule, [*calls[:5], big, *calls[6:]])


def test_mixed_modes_count_the_resident_blocks(schedule):
    calls = schedule[2]
    # every block loaded: each call moves its own input and weights
    loads = [dataclasses.replace(c, input_mode="load", weight_mode="load") for c in calls]
    y_auto, auto = _run(schedule, calls)
    y_load, load = _run(schedule, loads)
    np.testing.assert_array_equal(y_auto, y_load)
    config = schedule[1]
    weights = sum((c.k[1] - c.k[0]) * (c.c[1] - c.c[0]) * (c.r[1] - c.r[0]) * (c.s[1] - c.s[0])
                  for c in calls) * config.weight_bytes
    assert load.dram_bytes["weight"] == weights >= auto.dram_bytes["weight"]


def test_a_tile_schedule_counts_as_its_list_of_calls():
    # the arrays of a TileSchedule and its materialised TileCalls: the same output and counts,
    # for the tiling's order and for one that revisits output blocks (spills and read-backs)
    plan = choose_tiling(SPEC, GemminiConfig(spad_bank_rows=64, acc_rows=64, bias=True))
    rng = np.random.default_rng(4)
    x = rng.integers(-128, 128, SPEC.input_shape).astype(np.int8)
    w = rng.integers(-128, 128, SPEC.weight_shape).astype(np.int8)
    bias = rng.integers(-2 ** 20, 2 ** 20, SPEC.out_channels).astype(np.int32)
    for order in (plan.order, "CRSNKHW"):
        schedule = tiling_calls(plan.model, plan.tiling, order, plan.config, plan.subsampled)
        assert isinstance(schedule, TileSchedule)
        executor = TileExecutor(plan.model, plan.config)
        y_arrays, by_arrays = executor.run(schedule, x, w, bias)
        y_calls, by_calls = executor.run(list(schedule), x, w, bias)
        np.testing.assert_array_equal(y_arrays, y_calls)
        assert by_arrays.to_dict() == by_calls.to_dict()
    assert by_calls.dram_bytes["psum"] > 0
    assert schedule[-1] == list(schedule)[-1] and schedule[1:3] == list(schedule)[1:3]
