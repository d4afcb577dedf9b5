"""The examples run as a user would run them, on every MPI size of the suite."""

import importlib.util
import os

import pytest
from mpi4py import MPI

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.mpi(min_size=1)
def test_distributed_layer_example(capsys):
    status = _load("distributed_layer").main(MPI.COMM_WORLD)
    out = capsys.readouterr().out
    assert status == 0
    if MPI.COMM_WORLD.Get_rank() == 0:
        assert "ratio" in out and "max |error|" in out
