"""Layer data made without a file: seeded random inputs, weights and bias.  Pure, no MPI."""

from __future__ import annotations

import numpy as np

from .errors import ParconvError


def random_layer_data(spec, seed: int = 0) -> tuple:
    """Seeded random (x, w, bias) for `spec`: uniform int8 for int8 layers (bias int32 in
    [-2^15, 2^15)), standard normal for floats; bias None unless ``spec.bias``.  Local."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ParconvError(f"--seed must be an integer >= 0, got {seed!r}")
    rng = np.random.default_rng(seed)
    if np.issubdtype(np.dtype(spec.dtype_in), np.integer):
        x = rng.integers(-128, 128, spec.input_shape, dtype=np.int8).astype(spec.dtype_in)
        w = rng.integers(-128, 128, spec.weight_shape, dtype=np.int8).astype(spec.dtype_weight)
        bias = rng.integers(-2**15, 2**15, spec.out_channels).astype(spec.dtype_acc)
    else:
        x = rng.standard_normal(spec.input_shape).astype(spec.dtype_in)
        w = rng.standard_normal(spec.weight_shape).astype(spec.dtype_weight)
        bias = rng.standard_normal(spec.out_channels).astype(spec.dtype_acc)
    return x, w, (bias if spec.bias else None)
