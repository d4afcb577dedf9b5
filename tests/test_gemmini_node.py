"""The Gemmini node kernel on degenerate blocks: stub stats of padding-only ranks, empty sums."""

from __future__ import annotations

import numpy as np

from parconv.gemmini.kernel import GemminiKernel
from parconv.spec import ConvSpec


def test_combine_accepts_stub_stats_of_padding_only_ranks():
    kernel = GemminiKernel()
    spec = ConvSpec(batch=1, in_channels=2, out_channels=2, in_size=(4, 4), kernel_size=1)
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, spec.input_shape).astype(np.int8)
    w = rng.integers(-128, 128, spec.weight_shape).astype(np.int8)
    _, real = kernel.run(spec, x, w)
    stub = {"kernel": "gemmini", "macs": 0}            # what the engine reports for such a rank
    totals = kernel.combine([stub, real, stub])
    assert totals["macs"] == real["macs"] and totals["bound_bytes"] == real["bound_bytes"]
    assert totals["parconv"]["dram_bytes"] == real["parconv"]["dram_bytes"]
    only_stubs = kernel.combine([stub, stub])
    assert only_stubs["macs"] == 0 and "parconv" not in only_stubs
