"""Inputs refused from arithmetic before anything is allocated, and the planner's use of ranks."""

import pytest

from parconv.errors import ParconvError
from parconv.plan import make_plan, parse_memory
from parconv.spec import ConvSpec


def test_no_full_grid_keeps_most_ranks_busy():
    """P = 5 on a layer whose dimensions (N=4, K=2, C=3, 1x1 output) admit no 5-rank grid: the
    planner runs on 4 ranks, not on the 2 that would move the fewest bytes."""
    spec = ConvSpec(batch=4, in_channels=3, out_channels=2, in_size=(6, 6), kernel_size=(6, 6))
    plan = make_plan(spec, 5)
    assert plan.active == 4


@pytest.mark.parametrize("memory", ["inf", "1e400", "nan", "-5", 2**70, "12XB"])
def test_memory_refused_from_arithmetic(memory):
    with pytest.raises(ParconvError, match="--memory"):
        parse_memory(memory)


@pytest.mark.parametrize("fields", [dict(stride=2**63), dict(batch=2**63),
                                    dict(padding=10**9), dict(in_size=(2**31 - 1, 6))])
def test_huge_fields_refused_before_allocating(fields):
    base = dict(batch=1, in_channels=2, out_channels=2, in_size=(6, 6), kernel_size=(3, 3))
    with pytest.raises(ParconvError, match="at most"):
        ConvSpec(**{**base, **fields})
