"""The balanced initial layout: every rank owns at most ceil(T / P) touched elements of each
array, the owned boxes partition every array, and the "balance" phase prediction equals a
recount from the per-rank segments."""

import numpy as np
import pytest

from parconv.layers import get_layer
from parconv.plan import make_plan
from parconv.plan.balance import ARRAYS, Balance
from parconv.spec import ConvSpec
from test_plan import AWKWARD

def _touched_mask(spec):
    rows = np.zeros(spec.in_size[0], dtype=bool)
    cols = np.zeros(spec.in_size[1], dtype=bool)
    for mask, (n_in, n_out, kernel, stride, pad, dil) in ((rows, spec.axis(0)),
                                                          (cols, spec.axis(1))):
        pos = stride * np.arange(n_out)[:, None] + dil * np.arange(kernel) - pad
        mask[pos[(pos >= 0) & (pos < n_in)]] = True
    return np.broadcast_to(np.outer(rows, cols), spec.input_shape)


def _check(plan):
    spec, P = plan.spec, plan.ranks
    shapes = {"input": spec.input_shape, "filter": spec.weight_shape,
              "bias": (spec.out_channels,)}
    touched = {"input": _touched_mask(spec), "filter": np.ones(spec.weight_shape, bool),
               "bias": np.ones(spec.out_channels, bool)}
    cover = {name: np.zeros(shapes[name], dtype=np.int64) for name in ARRAYS}
    sent = {name: np.zeros(P, dtype=np.int64) for name in ARRAYS}
    received = {name: np.zeros(P, dtype=np.int64) for name in ARRAYS}
    pairs = set()
    layouts = [plan.initial_layout(r) for r in range(P)]
    for rank, layout in enumerate(layouts):
        for name in ARRAYS:
            entry, balance = layout[name], plan.balance[name]
            owned = 0
            for box in entry["kept_boxes"] + entry["held_boxes"]:
                region = tuple(slice(lo, hi) for lo, hi in box)
                cover[name][region] += 1
                owned += int(touched[name][region].sum())
            assert owned == entry["touched"] <= balance.cap, (rank, name)
            for worker, lo, hi in entry["held"]:
                boxes = plan.schedule(worker).block_boxes(name, lo, hi)
                count = sum(int(touched[name][tuple(slice(a, b) for a, b in box)].sum())
                            for box in boxes)
                assert count > 0
                sent[name][rank] += count * balance.itemsize
                received[name][worker] += count * balance.itemsize
                assert (rank, lo, hi) in layouts[worker][name]["received"]
                pairs.add((rank, worker))
    for name in ARRAYS:
        if name != "bias" or spec.bias:
            assert (cover[name] == 1).all(), name
            assert plan.balance[name].total == int(touched[name].sum())
            assert plan.balance[name].cap == -(-int(touched[name].sum()) // P)
        assert np.array_equal(plan.balance[name].predicted["sent"], sent[name]), name
        assert np.array_equal(plan.balance[name].predicted["received"], received[name]), name
    total = plan.predicted_balance
    assert np.array_equal(total["sent"], sum(sent.values()))
    assert np.array_equal(total["received"], sum(received.values()))
    messages = np.bincount([h for h, _ in pairs], minlength=P) if pairs else np.zeros(P)
    assert np.array_equal(total["messages"], messages)


@pytest.mark.parametrize("ownership", ["auto", "aligned", "centred"])
@pytest.mark.parametrize("spec", AWKWARD, ids=lambda s: s.describe()[:50])
@pytest.mark.parametrize("P", [1, 2, 3, 5, 7, 8])
def test_balanced_layout_partitions_and_predicts_exactly(spec, P, ownership):
    _check(make_plan(spec, P, ownership=ownership))


@pytest.mark.parametrize("P", [13, 16])
def test_balanced_layout_on_a_strided_catalogue_layer(P):
    """1x1 stride 2: three quarters of the input is never read and never counted."""
    _check(make_plan(get_layer("resnet50.layer2.0.downsample.0", batch=2, bias=True), P))


def test_matching_example_of_the_module_doc():
    balance = Balance("x", np.array([5, 1, 0]), 1)
    assert balance.cap == 2
    holders, ranges = balance.receives(0)
    assert holders.tolist() == [1, 2] and ranges.tolist() == [[2, 3], [3, 5]]
    assert balance.holds(2)[0].tolist() == [0] and balance.holds(2)[1].tolist() == [[3, 5]]
    assert [balance.owned(r) for r in range(3)] == [2, 2, 2]
    assert balance.predicted["sent"].tolist() == [0, 1, 2]
    assert balance.predicted["received"].tolist() == [3, 0, 0]


@pytest.mark.parametrize("spec", AWKWARD, ids=lambda s: s.describe()[:50])
@pytest.mark.parametrize("P", [3, 5, 7])
def test_bound_volume_counts_the_balance_phase_input_and_filter_not_bias(spec, P):
    """The predicted bound-comparable volume of a balanced run is the unbalanced one plus the
    input and filter bytes each worker receives in "balance" ("balance_bias" stays out) and the
    outputs it sends in "balance_out", it is never below the problem's bound, and the two start
    phases add up to the whole balance phase."""
    plan = make_plan(spec, P)
    balance, bias = plan.predicted["balance"], plan.predicted["balance_bias"]
    out = plan.predicted["balance_out"]
    assert np.array_equal(plan.predicted_bound_volume,
                          plan.predicted_unbalanced_bound_volume + balance["received"]
                          + out["sent"])
    for key in ("sent", "received"):
        assert np.array_equal(balance[key] + bias[key], plan.predicted_balance[key])
    expected_bias = plan.balance["bias"].predicted["received"]
    assert np.array_equal(bias["received"], expected_bias)
    assert plan.max_volume >= plan.bound.value * (1 - 1e-9)


@pytest.mark.parametrize("spec", AWKWARD, ids=lambda s: s.describe()[:50])
@pytest.mark.parametrize("P", [3, 5, 7, 17])
def test_balanced_end_owns_at_most_the_cap_and_partitions_the_output(spec, P):
    """After "balance_out" no rank owns more than ceil(|O| / P) outputs; the final boxes of all
    ranks partition the output; a worker sends exactly its piece's surplus, at p_out bytes."""
    plan = make_plan(spec, P)
    cap = -(-spec.size_output // P)
    seen = np.zeros(spec.output_shape, dtype=np.int64)
    for rank in range(P):
        boxes = plan.final_layout(rank)["boxes"]
        owned = 0
        for box in boxes:
            seen[tuple(slice(lo, hi) for lo, hi in box)] += 1
            owned += int(np.prod([hi - lo for lo, hi in box]))
        assert owned <= cap and owned == plan.output_balance.owned_all[rank]
        piece = plan.owned_elements["output"][rank] if plan.is_active(rank) else 0
        assert plan.predicted["balance_out"]["sent"][rank] == max(0, piece - cap) * spec.p_out
    assert (seen == 1).all()


def test_the_issue_layer_is_uneven_and_the_balance_phase_moves_it():
    """Issue 8's 7x7 stride-2 layer at P = 24: some work piece exceeds ceil(T / P), so the
    balance phase moves bytes; balanced, the busiest rank is held to the problem's bound."""
    spec = ConvSpec(batch=16, in_channels=3, out_channels=32, in_size=(100, 80), kernel_size=7,
                    stride=2, padding=3)
    plan = make_plan(spec, 24)
    assert (plan.balance["input"].counts > plan.balance["input"].cap).any()
    assert plan.predicted["balance"]["received"].sum() > 0
    assert plan.max_volume >= plan.bound.value >= plan.layout_bound.value
