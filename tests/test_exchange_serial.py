"""Serial checks of the engine's pure helpers: piece boxes, report totals, tolerances, verdicts,
seeded data and output regions.

The engine itself runs under MPI (tests/mpi/test_conv_mpi.py); these are the parts that need no
communicator.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from parconv import audit
from parconv.data import SeededLayer, generated_values, owned_pieces, random_layer_data
from parconv.kernels import reference_conv2d
from parconv.errors import ParconvRuntimeError
from parconv.mpi import distribute
from parconv.plan import make_plan
from parconv.plan.blocks import read_boxes, write_boxes
from parconv.regions import chunk_regions, interior_range, split_interior, sub_spec
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
    audit.verify_counts(plan, counts, ["balance"], 0)
    counts["input"][3, 1] += 7
    with pytest.raises(ParconvRuntimeError, match=r"rank 3 phase input received: predicted"):
        audit.verify_counts(plan, counts, ["balance"], 0)


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


# ---- seeded data and output regions (pure parts of the engine without a root) ---------------



@settings(max_examples=20, deadline=None)
@given(st.integers(1, 8), st.integers(0, 1000), st.sampled_from(["int8", "float32"]))
def test_seeded_pieces_are_the_same_for_every_P(P, seed, dtype):
    """Every rank's seeded pieces equal the whole seeded arrays cut at its boxes."""
    spec = SPEC.replace(dtype_in=dtype, dtype_weight=dtype,
                        dtype_acc="int32" if dtype == "int8" else dtype,
                        dtype_out="int32" if dtype == "int8" else dtype)
    x, w, bias = random_layer_data(spec, seed)
    plan = make_plan(spec, P)
    for rank in range(plan.active):
        local = plan.schedule(rank)
        pieces = owned_pieces(SeededLayer(spec, seed), spec, local)
        np.testing.assert_array_equal(pieces[0], read_boxes(x, local.input_piece_boxes()))
        np.testing.assert_array_equal(pieces[1], read_boxes(w, local.filter_piece_boxes()))
        bias_range = local.bias_piece_range()
        if bias_range is not None:
            np.testing.assert_array_equal(pieces[2], bias[slice(*bias_range)])


def test_seeded_values_ranges_and_seeds():
    x, w, bias = random_layer_data(SPEC, 0)
    assert x.dtype == np.int8 and bias.dtype == np.int32
    assert x.min() < -100 and x.max() > 100 and abs(bias).max() < 2 ** 15
    assert not np.array_equal(x, random_layer_data(SPEC, 1)[0])
    floats = SPEC.replace(dtype_in="float64", dtype_weight="float64", dtype_acc="float64",
                          dtype_out="float64", batch=40)
    values = generated_values(floats, "input", [((0, 40), (0, 3), (0, 9), (0, 7))], 5)
    assert abs(values.mean()) < 0.05 and abs(values.std() - 1) < 0.05


@pytest.mark.parametrize("spec", [
    SPEC, SPEC.replace(stride=(2, 3), kernel_size=(3, 5), padding=(1, 2), in_size=(11, 10)),
    SPEC.replace(dilation=(2, 1), padding=(2, 0), in_size=(13, 8)),
    SPEC.replace(kernel_size=(3, 3), stride=(3, 3), padding=(2, 2), in_size=(5, 6))])
@pytest.mark.parametrize("budget", [1, 1 << 30])
def test_regions_tile_the_block_and_reproduce_the_kernel(spec, budget):
    """Interior + boundary chunks cover every output position once, and the kernel on each
    chunk's sub-spec reproduces the whole layer."""
    spec = spec.replace(bias=False)
    x, w, _ = random_layer_data(spec, 2)
    full = reference_conv2d(spec, x, w)
    (H_in, W_in), (H, W) = spec.in_size, spec.out_size
    own = (2, H_in - 3), (1, W_in - 2)
    rows_in = interior_range(spec, 0, (0, H), own[0])
    cols_in = interior_range(spec, 1, (0, W), own[1])
    inner, outer = split_interior((spec.batch, H, W), rows_in, cols_in)
    chunks = chunk_regions(inner + outer, spec, (spec.in_channels, spec.out_channels), 8, budget)
    rebuilt, seen = np.zeros_like(full), np.zeros(full.shape, int)
    for n0, n1, h0, h1, w0, w1 in chunks:
        seen[n0:n1, :, h0:h1, w0:w1] += 1
        local, rows, cols = sub_spec(spec, n1 - n0, (spec.in_channels, spec.out_channels),
                                     (h0, h1), (w0, w1), "chunk")
        if local is not None:
            rebuilt[n0:n1, :, h0:h1, w0:w1] = reference_conv2d(
                local, x[n0:n1, :, rows[0]:rows[1], cols[0]:cols[1]], w)
    assert (seen == 1).all()
    np.testing.assert_array_equal(rebuilt, full)
    for region in inner:   # the interior reads only the owned rows and columns
        local, rows, cols = sub_spec(spec, 1, (1, 1), region[2:4], region[4:6], "i")
        assert local is None or (own[0][0] <= rows[0] and rows[1] <= own[0][1]
                                 and own[1][0] <= cols[0] and cols[1] <= own[1][1])
