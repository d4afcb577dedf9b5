"""The node kernel's set-up shared by ranks with equal blocks (parconv.mpi.node_setup).

Run under ``mpirun -n N python -m mpi4py -m pytest --with-mpi tests/mpi``; every verdict is
agreed over the communicator so that all ranks pass or fail together.
"""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from parconv.cache_folders import CACHE_ENV
from parconv.conv import distributed_conv2d
from parconv.errors import ParconvError
from parconv.gemmini import tiling_cache
from parconv.mpi import node_setup
from parconv.spec import ConvSpec

pytestmark = pytest.mark.mpi(min_size=1)


def agree_all(comm, ok: bool, detail="") -> None:
    verdicts = comm.allgather((bool(ok), str(detail)))
    bad = [f"rank {rank}: {why}" for rank, (fine, why) in enumerate(verdicts) if not fine]
    assert not bad, "; ".join(bad)


class Recorder:
    """A kernel whose set-up is a string built from the key; it records what it did."""

    def __init__(self, fail_on=None):
        self.fail_on, self.did, self.kept = fail_on, [], []

    def setup_key(self, spec):
        return None if spec is None else f"shape {spec}"

    def setup(self, spec):
        if spec == self.fail_on:
            raise ParconvError(f"cannot set up {spec}")
        self.did.append(spec)
        return f"payload of {spec}"

    def adopt(self, spec, payload):
        self.kept.append((spec, payload))


def test_one_setup_per_distinct_key():
    comm = MPI.COMM_WORLD
    spec = comm.rank % 2            # two shapes (one with a single rank), as a grid has a few
    kernel = Recorder()
    node_setup.share_node_setup(comm, kernel, spec)
    setups = comm.allreduce(len(kernel.did))
    first_of_shape = comm.rank < 2
    ok = (setups == min(comm.size, 2)
          and kernel.did == ([spec] if first_of_shape else [])
          and kernel.kept == ([] if first_of_shape else [(spec, f"payload of {spec}")]))
    agree_all(comm, ok, (setups, kernel.did, kernel.kept))


def test_ranks_without_a_block_take_no_part():
    comm = MPI.COMM_WORLD
    spec = None if comm.rank % 2 else "block"
    kernel = Recorder()
    node_setup.share_node_setup(comm, kernel, spec)
    ok = (kernel.did == (["block"] if comm.rank == 0 else [])
          and kernel.kept == ([("block", "payload of block")] if comm.rank % 2 == 0
                              and comm.rank > 0 else []))
    agree_all(comm, ok, (kernel.did, kernel.kept))


def test_a_hash_collision_makes_the_other_keys_set_up_themselves(monkeypatch):
    comm = MPI.COMM_WORLD
    monkeypatch.setattr(node_setup.zlib, "crc32", lambda data: 7)   # every key in one group
    spec = comm.rank % 3
    kernel = Recorder()
    node_setup.share_node_setup(comm, kernel, spec)
    leader_key = 0
    ok = (kernel.did == ([spec] if comm.rank == 0 or spec != leader_key else [])
          and kernel.kept == ([(spec, "payload of 0")] if comm.rank > 0 and spec == leader_key
                              else []))
    agree_all(comm, ok, (kernel.did, kernel.kept))


def test_a_failed_setup_is_raised_on_every_rank():
    comm = MPI.COMM_WORLD
    spec = comm.rank % 2
    with pytest.raises(ParconvError, match="cannot set up 1" if comm.size > 1 else "set up 0"):
        node_setup.share_node_setup(comm, Recorder(fail_on=1 if comm.size > 1 else 0), spec)


def test_gemmini_runs_search_each_block_shape_once(monkeypatch):
    comm = MPI.COMM_WORLD
    monkeypatch.setenv(CACHE_ENV, "off")
    tiling_cache.clear_memory()
    spec = ConvSpec(batch=comm.size + 1, in_channels=8, out_channels=16, in_size=(9, 7),  # uneven
                    kernel_size=3, padding=1, name="shared-setup")
    rng = np.random.default_rng(5)
    x = rng.integers(-128, 128, spec.input_shape).astype(np.int8)
    w = rng.integers(-128, 128, spec.weight_shape).astype(np.int8)
    result = distributed_conv2d(comm, spec, x=x, w=w, node="gemmini", check=True)
    local = result.plan.schedule(comm.rank)
    shape = None if local is None or local.local_spec is None else \
        repr(local.local_spec.replace(name="block"))
    shapes = {s for s in comm.allgather(shape) if s is not None}
    sources = [s.get("tiling_source") for s in result.report["node"]["per_rank"]
               if s.get("tiling_source")]
    ok = (result.report["check"]["ok"] and sources.count("search") == len(shapes)
          and sources.count("peer") == len(sources) - len(shapes))
    agree_all(comm, ok, (sources, len(shapes), result.report["grid"]))
