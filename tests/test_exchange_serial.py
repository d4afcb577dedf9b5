"""Serial checks of the engine's pure helpers: piece boxes, report totals, tolerances, verdicts.

The engine itself runs under MPI (tests/mpi/test_conv_mpi.py); these are the parts that need no
communicator.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from parconv import audit
from parconv.errors import ParconvRuntimeError
from parconv.mpi import distribute
from parconv.plan import make_plan
from parconv.plan.blocks import read_boxes, write_boxes
from parconv.spec import ConvSpec

SPEC = ConvSpec(batch=2, in_channels=3, out_channels=5, in_size=(9, 7), kernel_size=3,
                padding=1, bias=True)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 8), st.integers(0, 10_000))
def test_owned_pieces_partition_every_array(P, seed):
    """Cutting x, w, bias by every rank's owned boxes and writing the pieces back rebuilds them
    (the boxes the scatter, the blocks path and the check gather rely on)."""
    plan = make_plan(SPEC, P)
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(shape) for shape in
              (SPEC.input_shape, SPEC.weight_shape, (SPEC.out_channels,))]
    rebuilt = [np.full(a.shape, np.nan) for a in arrays]
    for rank in range(plan.active):
        for array, copy, (_, boxes) in zip(arrays, rebuilt, distribute._owned_parts(plan, rank)):
            piece = read_boxes(array, boxes)
            assert piece.size == distribute._count(boxes)
            write_boxes(copy, boxes, piece)
    for array, copy in zip(arrays, rebuilt):
        np.testing.assert_array_equal(array, copy)


def test_unpack_reverses_the_byte_packing():
    parts = [("int8", [((0, 3),)]), ("float64", [((0, 2),)]), ("int32", [])]
    values = [np.array([1, -2, 3], np.int8), np.array([0.5, -1.25]), np.zeros(0, np.int32)]
    typed = distribute._unpack(distribute._as_bytes(values), parts)
    for got, want in zip(typed, values):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def _counts_from_plan(plan):
    table = {phase: np.zeros((plan.ranks, 3), dtype=np.int64) for phase in audit.COUNTED}
    for phase, predicted in plan.predicted.items():
        for column, key in enumerate(audit.COUNT_KEYS):
            table[phase][:, column] = predicted[key]
    return table


def test_verify_counts_names_rank_phase_and_values():
    plan = make_plan(SPEC, 4, grid=(1, 2, 1, 2, 1))
    counts = _counts_from_plan(plan)
    audit.verify_counts(plan, counts, [], 0)
    counts["input"][3, 1] += 7
    with pytest.raises(ParconvRuntimeError, match=r"rank 3 phase input received: predicted"):
        audit.verify_counts(plan, counts, [], 0)


def test_verify_bound_and_bound_volume():
    plan = make_plan(SPEC, 4, grid=(1, 2, 1, 2, 1))
    counts = _counts_from_plan(plan)
    np.testing.assert_array_equal(audit.measured_bound_volume(counts),
                                  plan.predicted_bound_volume)
    audit.verify_bound(plan, counts)
    for phase in counts:
        counts[phase][:] = 0
    if plan.bound.value > 0:
        with pytest.raises(ParconvRuntimeError, match="BELOW the lower bound"):
            audit.verify_bound(plan, counts)


def test_numeric_totals_sum_leaves_and_drop_the_rest():
    stats = [{"kernel": "k", "macs": 3, "dram": {"in": 1, "out": 2.5}, "tiling": [1, 2]},
             {"kernel": "k", "macs": 4, "dram": {"in": 10, "out": 0.5}, "tiling": [3, 4]}]
    assert audit._sum_numeric(stats) == {"macs": 7, "dram": {"in": 11, "out": 3.0}}


def test_tolerance_is_zero_for_integers_and_scaled_for_floats():
    assert audit.tolerance(SPEC, np.array([5, -7], np.int32)) == 0.0
    spec = SPEC.replace(dtype_in="float32", dtype_acc="float32", dtype_out="float32")
    assert audit.tolerance(spec, np.array([2.0, -4.0], np.float32)) == \
        pytest.approx(1e-5 * np.sqrt(3 * 3 * 3) * 4.0)
