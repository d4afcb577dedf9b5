"""The calibrated cycle model: its terms by hand, residency by loop order, FireSim runs."""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest

from parconv.errors import ParconvError
from parconv.gemmini import call_rules
from parconv.gemmini.cycles import (FIELDS, CycleConstants, call_cycles, commands_in_flight,
                                    dma_command_excess, layer_cycles, load_constants,
                                    load_misses, mean_lines, mean_piece_lines,
                                    pass_floor_cycles, row_piece_lines)
from parconv.gemmini.tiled.cost import tiling_cost
from parconv.gemmini.vendor.layer_cost import vendor_layer_cost
from parconv.gemmini.vendor.firesim import firesim_cost
from parconv.gemmini.vendor.heuristics import auto_search_steps
from parconv.gemmini.config import GemminiConfig
from parconv.spec import ConvSpec
from parconv.tiling import Tiling

SPEC = ConvSpec(batch=1, in_channels=64, out_channels=32, in_size=(14, 14), kernel_size=3,
                padding=1)


def test_mean_lines_by_hand():
    assert mean_lines(64, 64) == 1.0 and mean_lines(65, 64) == 2.0
    assert mean_lines(2, 2) == 1.0                       # a 2-byte row still costs a line
    # 48 bytes at offsets 0, 16, 32, 48: 1, 1, 2, 2 lines
    assert mean_lines(48, 16) == 1.5
    np.testing.assert_array_equal(mean_lines(np.array([0, 64, 128]), 64), [0, 1, 2])


def test_mean_piece_lines_by_hand():
    # one piece: the same as a whole row
    assert mean_piece_lines(48, 64, 16) == mean_lines(48, 16) == 1.5
    assert mean_piece_lines(128, 64, 64) == 2.0
    # 128 bytes at offset 32, cut into 64-byte mvins: [32, 96) and [96, 160) touch 2 lines
    # each (4), where the whole row [32, 160) touches 3; offsets 0 and 32 -> (2 + 4) / 2
    assert mean_piece_lines(128, 64, 32) == 3.0 and mean_lines(128, 32) == 2.5
    np.testing.assert_array_equal(mean_piece_lines(np.array([0, 16, 160]), 64, 64),
                                  [0, 1, 3])
    assert mean_piece_lines(np.int64(0), 64, 16) == 0.0
    # the one-row form gives the same numbers (rows, pieces and steps of real layers)
    for row, piece, step in [(0, 64, 16), (48, 64, 16), (128, 64, 32), (1000, 256, 6),
                             (4096, 1024, 48), (3, 64, 1)]:
        assert row_piece_lines(row, piece, step) == mean_piece_lines(row, piece, step)


def test_call_cycles_by_hand():
    c = CycleConstants(c_call=100.0, t_hit=1.0, t_miss=4.0, inv_bw=0.5, alpha=0.25, p_pass=2.0)
    # X = 300 + 2 * 10 = 320; L = 1 * 20 + 4 * 10 + 0.5 * 200 = 160 -> 320 + 0.25 * 160 = 360
    assert call_cycles(c, 300, 10, 20, 10, 200) == pytest.approx(360.0)
    assert call_cycles(c, 1, 0, 0, 0, 0) == pytest.approx(100.0)       # the call floor
    assert call_cycles(c, 1, 0, 0, 0, 0, busy=False) == 0.0
    # stores and missed bytes add to the load side: L = 160 + 3 * 40 + 0.5 * 200 = 380,
    # X = 320 -> 380 + 0.25 * 320 = 460
    c2 = CycleConstants(c_call=100.0, t_hit=1.0, t_miss=4.0, inv_bw=0.5, alpha=0.25,
                        p_pass=2.0, t_store=3.0, inv_bw_miss=0.5)
    assert call_cycles(c2, 300, 10, 20, 10, 200, stores=40, miss_bytes=200) == \
        pytest.approx(460.0)
    assert call_cycles(c2, 300, 10, 20, 10, 200) == pytest.approx(360.0)


def test_dma_command_latency_by_hand():
    assert [commands_in_flight(d) for d in (4, 8, 16, 32, 64)] == [5, 3, 2, 1, 1]
    c = CycleConstants(c_call=0.0, t_hit=1.0, t_miss=4.0, inv_bw=0.5, alpha=0.0, p_pass=0.0,
                       t_store=0.0, inv_bw_miss=0.0, t_cmd=20.0)
    # 10 input mvins of 7 rows, 2 in flight: 10 (7 + 20) / 2 = 135 cycles against a bandwidth
    # side of 1 * 70 lines + 0.5 * 100 bytes = 120 -> 15 more; 4 weight mvins of 16 rows:
    # 4 * 36 / 2 = 72 < 16 * 4 + 0.5 * 256 = 192 -> nothing; no output commands
    commands = {"dim": 16,
                "input": {"cmds": 10, "rows": 7, "hit": 70, "bytes": 100},
                "weight": {"cmds": 4, "rows": 16, "hit": 64, "bytes": 256},
                "output": {"cmds": 0, "rows": 0}}
    assert dma_command_excess(c, commands) == pytest.approx(15.0)
    assert dma_command_excess(c, None) == 0.0
    # the excess adds to the load side: L = 134 + 356 * 0.5 + 15 = 327 > X = 100
    assert call_cycles(c, 100, 0, 134, 0, 356, commands=commands) == pytest.approx(327.0)
    assert call_cycles(c, 100, 0, 134, 0, 356) == pytest.approx(312.0)
    # one command in flight on a 32x32 mesh: 10 * 27 = 270 -> 150 more on the input stream
    assert dma_command_excess(c, {**commands, "dim": 32}) == pytest.approx(150.0)


def test_pass_floor_by_hand():
    # 2 batches x 3 rows of 20 columns, 32 out / 48 in channels, 1x1: 2 x 3 = 6 blocks; each
    # (batch, row) has a 16-column pass and a 4-column one; the last 4-column pass of a block is
    # followed by the next preload, so 5 per block (30 per call) are lengthened by a floor
    count, rows = call_rules.short_passes(2, 3, 20, 32, 1, 1, 48)
    assert (count, rows) == (30, 4)
    assert call_rules.short_passes(1, 1, 7, 16, 3, 3, 16) == (0, 7)     # one pass per block
    assert call_rules.short_passes(1, 4, 0, 16, 1, 1, 16)[0] == 0       # an empty call
    np.testing.assert_array_equal(call_rules.short_passes(np.array([1, 2]), 7, 7, 16, 1, 1,
                                                          16)[0], [6, 13])
    c = CycleConstants(c_call=0.0, t_hit=1.0, t_miss=4.0, inv_bw=0.5, alpha=0.0, p_pass=0.0,
                       t_pass=6.5)
    # 30 passes of 4 rows take 6.5 instead of max(4, 4) cycles: 75 more; 7-row passes nothing
    assert pass_floor_cycles(c, 30, 4) == pytest.approx(75.0)
    assert pass_floor_cycles(c, 30, 7) == 0.0
    assert pass_floor_cycles(CycleConstants(t_pass=4.0), 30, 2) == 0.0  # the RTL's own floor
    assert pass_floor_cycles(CycleConstants(t_pass=0.0), 30, 2) == 0.0
    # the floor adds to the execute side: X = 300 + 75 > L = 1 * 20 + 0.5 * 200 = 120
    assert call_cycles(c, 300, 10, 20, 0, 200, short=(30, 4)) == pytest.approx(375.0)
    assert call_cycles(c, 300, 10, 20, 0, 200) == pytest.approx(300.0)


def test_pass_floor_reaches_both_cost_models():
    """The library's calls (`vendor_layer_cost`) and parconv's tiles (`tiling_cost`) carry the
    same pass-floor term: a higher floor slows both, t_pass = 4 is the execute model itself."""
    spec = ConvSpec(batch=1, in_channels=32, out_channels=32, in_size=(7, 7),
                    kernel_size=(3, 3), padding=(1, 1))
    base = {f: getattr(load_constants(), f) for f in FIELDS}
    low, high = (CycleConstants(**{**base, "t_pass": v, "alpha": 0.0}) for v in (4.0, 12.0))
    for cost in (lambda c: vendor_layer_cost(spec, constants=c).calibrated_cycles,
                 lambda c: tiling_cost(spec, Tiling(1, 16, 32, 7, 7, 3, 3), "NKHWCRS",
                                       GemminiConfig(), constants=c).calibrated_cycles):
        assert cost(high) > cost(low)


def test_layer_cycles_add_one_pipeline_fill():
    c = CycleConstants(c_call=100.0, t_hit=1.0, t_miss=4.0, inv_bw=0.5, alpha=0.25, p_pass=2.0,
                       t_store=0.0, inv_bw_miss=0.0)
    # group A: X = 320, L = 160 -> 360 per call, 2 calls; group B: X = 100, L = 200 -> 225
    # fill = min(mean X, mean L) = min(740 / 3, 520 / 3)
    total = layer_cycles(c, [2, 1], [300, 100], [10, 0], [20, 0], [10, 0], [200, 400])
    assert total == pytest.approx(2 * 360 + 225 + 520 / 3)
    assert isinstance(total, float)
    assert layer_cycles(c, [0, 0], [300, 100], [10, 0], [20, 0], [10, 0], [200, 400]) == 0.0


def test_constants_validation_and_file():
    with pytest.raises(ParconvError, match="t_miss"):
        CycleConstants(t_miss=-1.0)
    fitted = load_constants()
    assert all(getattr(fitted, f) >= 0 for f in FIELDS)
    assert set(fitted.stderr) == set(FIELDS) and fitted.fit["records"] > 0


def test_load_misses_follow_the_loop_order():
    trips = {"N": 1, "Q": 4, "P": 1, "K": 8, "S": 1, "R": 1, "C": 2}
    per_call = {"input": 1000.0, "weight": 1000.0}
    # K innermost: the input block is reloaded by K consecutively (hits); weights come back
    # after a Q step whose inner loops touch 8 * 2 weight blocks + 2 input blocks = 18 kB
    small = load_misses("KCQPSRN", trips, per_call, l2_bytes=1 << 20)
    assert small == {"input": 4 * 2, "weight": 8 * 2}        # only the first loads miss
    tiny = load_misses("KCQPSRN", trips, per_call, l2_bytes=10_000)
    assert tiny["weight"] == 8 * 2 * 4                       # every weight load misses
    assert tiny["input"] == 4 * 2
    warm = load_misses("KCQPSRN", trips, per_call, l2_bytes=1 << 20, warm_bytes=1e5)
    assert warm == {"input": 0.0, "weight": 0.0}


def test_firesim_order_changes_only_residency():
    tile = (1, 2, 14, 16, 3, 3, 16)
    a = firesim_cost(SPEC, tile, "CKPQRSN")
    b = firesim_cost(SPEC, tile, "QPKCRSN")
    assert a.dram_bytes == b.dram_bytes and a.cycles == b.cycles
    constants = load_constants()
    for cost in (a, b):
        assert cost.calibrated_cycles >= constants.c_call * cost.calls
        assert math.isfinite(cost.calibrated_cycles)
    with pytest.raises(ParconvError, match="permutation"):
        firesim_cost(SPEC, tile, "CKPQRS")


def test_library_and_tiling_costs_carry_the_calibrated_model():
    constants = load_constants()
    vendor = vendor_layer_cost(SPEC)
    assert vendor.calibrated_cycles >= max(constants.c_call * vendor.calls,
                                           vendor.exec_cycles)
    cost = tiling_cost(SPEC, Tiling(1, 16, 64, 7, 14, 3, 3), "NKHWCRS", GemminiConfig())
    assert cost.calibrated_cycles >= max(constants.c_call * cost.calls, cost.exec_cycles)
    # a slower bus (every byte costs more) can only make the model slower
    slow = CycleConstants(**{f: getattr(constants, f) for f in FIELDS}, l2_bytes=1)
    assert vendor_layer_cost(SPEC, constants=slow).calibrated_cycles >= vendor.calibrated_cycles


def test_search_objective_is_the_calibrated_model():
    from parconv.gemmini.tiled.choose import choose_tiling
    from parconv.gemmini.tiled.search import CYCLE_SLACK
    plan = choose_tiling(SPEC)
    assert plan.cost.dram_bytes["total"] <= plan.vendor.dram_bytes["total"]
    assert plan.cost.calibrated_cycles <= plan.vendor.calibrated_cycles
    # the library's tiling is charged its tile search (tiled_conv_auto), parconv's run (even of
    # the library's own schedule, given to tiled_conv) is not; and parconv is never slower
    # than the library without the search either
    assert plan.vendor.search_cycles > 0
    assert plan.cost.calibrated_cycles <= plan.vendor.calibrated_cycles \
        - plan.vendor.search_cycles
    assert plan.cost.calibrated_cycles <= plan.fewest_bytes["calibrated_cycles"] * (
        1 + CYCLE_SLACK)
    assert plan.fewest_bytes["bytes"] <= plan.cost.dram_bytes["total"]


def test_auto_search_cycles_by_hand():
    from parconv.gemmini.cycles import AUTO_SEARCH_PATHS, ROCKET_MUL_CYCLES, auto_search_cycles
    assert auto_search_cycles({}) == 0.0
    # two candidates with both footprints and three above their maximum
    per_fit = AUTO_SEARCH_PATHS["fits_spad"][0] + (ROCKET_MUL_CYCLES - 1) \
        * AUTO_SEARCH_PATHS["fits_spad"][1]
    assert auto_search_cycles({"fits_spad": 2, "at_max": 3}) == 2 * per_fit + 3 * 30
    with pytest.raises(KeyError):
        auto_search_cycles({"no such step": 1})


def _experiments_on_path() -> None:
    experiments = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "experiments")
    if experiments not in sys.path:
        sys.path.insert(0, experiments)


def test_search_replay_counts_a_layer_that_fits_by_hand():
    # 16 -> 16 1x1 on 4x4 fits at once: the footprints before the loops, pocols at its
    # maximum (phase 2 ends), one phase-3 pass whose seven candidates are all at their maximum
    spec = ConvSpec(batch=1, in_channels=16, out_channels=16, in_size=(4, 4), kernel_size=1)
    steps = auto_search_steps(spec, GemminiConfig(semantics="dosa"))
    assert steps == {"shrink": 0, "fits_spad": 1, "spad_full": 0, "at_max": 8, "accepted": 0}


def test_search_replay_reproduces_the_library_tiles_of_the_resnet_rows():
    _experiments_on_path()
    from gemmini_vs_vendor import MEASURED
    from parconv.gemmini.vendor.heuristics import conv_auto
    counts = []
    for c, k, out, kernel, s, tile, _, _ in MEASURED:
        pad = kernel // 2
        size = (out - 1) * s + kernel - 2 * pad
        spec = ConvSpec(batch=1, in_channels=c, out_channels=k, in_size=(size, size),
                        kernel_size=kernel, stride=s, padding=pad)
        config = GemminiConfig(semantics="dosa")
        assert conv_auto(spec, config).as_tuple() == tuple(tile)
        steps = auto_search_steps(spec, config)     # raises if the replay ends elsewhere
        counts.append((steps["fits_spad"], kernel, tile[-1]))
    # phase 3 grows kchs by one per pass: the deep 1x1 layers (kchs >= 512) take the most
    deep = [n for n, kernel, kchs in counts if kernel == 1 and kchs >= 512]
    assert min(deep) > max(n for n, kernel, _ in counts if kernel == 7)
