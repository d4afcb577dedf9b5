"""Validation shared by the bound functions: every argument is checked before any solve.  Pure."""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..errors import ParconvError
from ..spec import ConvSpec


def check_spec(spec) -> ConvSpec:
    if not isinstance(spec, ConvSpec):
        raise ParconvError(f"spec must be a ConvSpec, got {type(spec).__name__}")
    return spec


def check_bytes(value, name: str) -> float:
    """A memory size or byte budget: a finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value <= 0:
        raise ParconvError(f"{name} must be a finite number of bytes > 0, got {value!r}")
    return float(value)


def check_ranks(P) -> int:
    if isinstance(P, bool) or not isinstance(P, numbers.Integral) or P < 1:
        raise ParconvError(f"P must be an integer >= 1, got {P!r}")
    return int(P)


def array_sizes(spec: ConvSpec) -> tuple[int, int, int]:
    """(|I_touched|, |F|, |O|) in elements."""
    return spec.size_input_touched, spec.size_filter, spec.size_output


def check_owned(spec: ConvSpec, P: int, owned) -> tuple[int, int, int]:
    """Default: the balanced shares ceil(|A_j| / P).  Otherwise three integers with
    ceil(|A_j| / P) <= o_j <= |A_j| (no distribution without replication has a smaller largest
    share, none a larger one)."""
    sizes = array_sizes(spec)
    low = tuple(-(-a // P) for a in sizes)
    if owned is None:
        return low
    if isinstance(owned, np.ndarray):
        owned = owned.tolist()
    if not isinstance(owned, (tuple, list)) or len(owned) != 3:
        raise ParconvError(f"owned must be three integers (o_I, o_F, o_O), got {owned!r}")
    for j, (o, lo, hi) in enumerate(zip(owned, low, sizes)):
        name = ("o_I (touched input)", "o_F (filter)", "o_O (output)")[j]
        if isinstance(o, bool) or not isinstance(o, numbers.Integral) or not lo <= o <= hi:
            raise ParconvError(f"owned {name} must be an integer in [{lo}, {hi}] "
                               f"(ceil(size / P) to size) for P = {P}, got {o!r}")
    return tuple(int(o) for o in owned)
