"""The plan reports the problem's bound (balanced shares, idle ranks included) under ``bound``,
the layout's own under ``layout_bound``, and ``predicted_bound_volume`` under ``bytes`` like the run
report (the top-level key is an alias for one release)."""

import json

import numpy as np
import pytest

from parconv.bounds import parallel_bounds
from parconv.layers import get_layer
from parconv.plan import make_plan
from parconv.spec import ConvSpec

STEM_LIKE = ConvSpec(batch=16, in_channels=3, out_channels=32, in_size=(100, 80), kernel_size=7,
                     stride=2, padding=3)


def test_bound_is_the_problems_and_layout_bound_uses_the_layouts_shares():
    plan = make_plan(STEM_LIKE, 24)
    assert plan.bound == parallel_bounds(STEM_LIKE, 24, plan.memory)
    assert plan.layout_bound == parallel_bounds(STEM_LIKE, 24, plan.memory,
                                                owned=plan.prediction.owned)
    # uneven blocks own more than the balanced share, so the layout's bound is lower
    assert plan.layout_bound.value < plan.bound.value <= plan.max_volume
    assert plan.ratio_to_bound == pytest.approx(plan.max_volume / plan.bound.value)


@pytest.mark.parametrize("name, P", [("resnet50.layer2.0.conv2", 8), ("resnet50.conv1", 64),
                                     ("resnet50.layer1.0.conv2", 7)])
def test_problem_bound_never_above_the_planned_volume(name, P):
    plan = make_plan(get_layer(name, batch=4), P)
    assert plan.bound.value <= plan.max_volume
    assert plan.bound.owned == tuple(-(-a // P) for a in (plan.spec.size_input_touched,
                                                          plan.spec.size_filter,
                                                          plan.spec.size_output))


def test_predicted_bound_volume_lives_under_bytes_with_a_top_level_alias():
    plan = make_plan(STEM_LIKE, 6)
    d = json.loads(json.dumps(plan.to_dict()))
    assert d["bytes"]["predicted_bound_volume"] == d["predicted_bound_volume"]
    assert d["bytes"]["predicted_bound_volume"] == np.asarray(plan.predicted_bound_volume).tolist()
    assert d["layout_bound"]["owned"] == list(plan.prediction.owned)
    assert d["bound"]["value"] == plan.bound.value


@pytest.mark.parametrize("name, P", [("resnet50.conv1", 64), ("resnet50.layer1.0.conv2", 512),
                                     ("vgg16.conv5_1", 64)])
def test_ideal_grid_is_below_the_integer_grid_and_halos_only_add(name, P):
    from parconv.bounds.alternatives import ideal_grid
    spec = get_layer(name, batch=32)
    plan = make_plan(spec, P)
    bare, factors = ideal_grid(spec, P)
    with_halo, _ = ideal_grid(spec, P, halo=True)
    assert np.prod(factors) == pytest.approx(P)
    assert bare <= with_halo * (1 + 1e-12)
    assert with_halo <= plan.max_volume * (1 + 1e-9)
