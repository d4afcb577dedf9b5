"""Every node kernel on blocks that are empty or read only padding, on any communicator size.

Run as ``mpirun -n N python -m mpi4py -m pytest --with-mpi tests/mpi`` (N = 1, 3, 4 are the
interesting sizes: at 4 ranks the 6x6 layer with padding 3 gives some ranks a padding-only block).
Every verdict is agreed over the communicator so that all ranks pass or fail together.
"""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from parconv.conv import distributed_conv2d
from parconv.kernels import reference_conv2d
from parconv.spec import ConvSpec

pytestmark = pytest.mark.mpi(min_size=1)

LAYERS = {
    # the reported failure: 1x1 kernel, padding 3 -> the border outputs read only padding
    "padding-3-1x1": ConvSpec(batch=1, in_channels=2, out_channels=2, in_size=(6, 6),
                              kernel_size=1, padding=3),
    # every output reads only padding (stride 4 steps over the single real pixel)
    "all-padding": ConvSpec(batch=1, in_channels=2, out_channels=2, in_size=(1, 1),
                            kernel_size=1, padding=3, stride=4),
    "padding-3-bias": ConvSpec(batch=2, in_channels=3, out_channels=2, in_size=(5, 4),
                               kernel_size=1, padding=3, bias=True),
}


def agree_all(comm, ok: bool, detail="") -> None:
    verdicts = comm.allgather((bool(ok), str(detail)))
    bad = [f"rank {rank}: {why}" for rank, (fine, why) in enumerate(verdicts) if not fine]
    assert not bad, "; ".join(bad)


def data(spec: ConvSpec, seed: int = 3):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, spec.input_shape).astype(np.int8)
    w = rng.integers(-128, 128, spec.weight_shape).astype(np.int8)
    bias = rng.integers(-1000, 1000, spec.out_channels).astype(np.int32) if spec.bias else None
    return x, w, bias


def run(comm, spec, node):
    x, w, bias = data(spec)
    result = distributed_conv2d(comm, spec, x=x, w=w, bias=bias, node=node, check=True,
                                gather=True)
    ok = result.report["check"]["ok"]
    if comm.rank == 0:
        ok = ok and np.array_equal(result.output, reference_conv2d(spec, x, w, bias))
    return ok, result.report


@pytest.mark.parametrize("node", ["gemmini", "numpy"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_padding_only_blocks(name, node):
    comm = MPI.COMM_WORLD
    try:
        ok, report = run(comm, LAYERS[name], node)
        detail = str(report.get("check"))
    except Exception as error:          # every rank reports its own failure
        ok, detail = False, f"{type(error).__name__}: {error}"
    agree_all(comm, ok, detail)


@pytest.mark.parametrize("node", ["gemmini", "numpy"])
def test_single_rank_all_padding(node):
    """P = 1 on an all-padding layer: each rank runs it alone on COMM_SELF."""
    try:
        ok, report = run(MPI.COMM_SELF, LAYERS["all-padding"], node)
        detail = str(report.get("check"))
    except Exception as error:
        ok, detail = False, f"{type(error).__name__}: {error}"
    agree_all(MPI.COMM_WORLD, ok, detail)
