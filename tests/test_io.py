"""HDF5 I/O on one rank (MPI.COMM_SELF) and, for the per-rank hyperslabs, on simulated ranks."""

import dataclasses
import os

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from parconv.errors import ParconvError, ParconvRuntimeError
from parconv.paths import is_temporary
from parconv.mpi import hdf5 as io
from parconv.plan import make_plan
from parconv.spec import spec_for_dtype


def small_spec(**changes):
    fields = dict(batch=2, in_channels=3, out_channels=4, in_size=(7, 6), kernel_size=(3, 3),
                  stride=(2, 1), padding=(1, 1), name="small")
    fields.update(changes)
    dtype = fields.pop("dtype", "int8")
    return spec_for_dtype(dtype, **fields)


def random_layer(spec, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, spec.input_shape).astype(spec.dtype_in)
    w = rng.integers(-128, 128, spec.weight_shape).astype(spec.dtype_weight)
    bias = rng.integers(-1000, 1000, spec.out_channels).astype(spec.dtype_acc)
    return x, w, bias


def leftovers(folder):
    return [name for name in os.listdir(folder) if is_temporary(name) or ".tmp" in name]


def test_layer_file_round_trip(tmp_path):
    spec = small_spec(dilation=(1, 2), bias=True)
    x, w, bias = random_layer(spec)
    path = str(tmp_path / "layer.h5")
    io.write_layer_file(path, spec, x, w, bias)
    meta = io.read_layer_meta(MPI.COMM_SELF, path)
    assert meta.input_shape == spec.input_shape and meta.weight_shape == spec.weight_shape
    assert meta.bias_shape == (4,) and meta.input_dtype == "int8" and meta.bias_dtype == "int32"
    assert meta.attributes == {"stride": (2, 1), "padding": (1, 1), "dilation": (1, 2)}
    assert meta.name == "small"
    with h5py.File(path) as handle:
        np.testing.assert_array_equal(handle["input"][...], x)
        np.testing.assert_array_equal(handle["weight"][...], w)
    assert not leftovers(tmp_path)


def write_raw(path, **datasets):
    with h5py.File(path, "w") as handle:
        for name, value in datasets.items():
            handle.create_dataset(name, data=value)


@pytest.mark.parametrize("datasets, message", [
    (dict(weight=np.zeros((4, 3, 3, 3), np.int8)), "missing dataset 'input'"),
    (dict(input=np.zeros((1, 3, 5, 5), np.int8)), "missing dataset 'weight'"),
    (dict(input=np.zeros((1, 3, 5, 5), np.int8), weight=np.zeros((4, 2, 3, 3), np.int8)),
     "input channels disagree"),
    (dict(input=np.zeros((3, 5, 5), np.int8), weight=np.zeros((4, 3, 3, 3), np.int8)),
     "must be 4-D"),
    (dict(input=np.zeros((1, 3, 5, 5), np.int8), weight=np.zeros((4, 3, 3, 3), np.int8),
          bias=np.zeros(5, np.int32)), "'bias' has 5 elements"),
])
def test_bad_layer_files(tmp_path, datasets, message):
    path = str(tmp_path / "bad.h5")
    write_raw(path, **datasets)
    with pytest.raises(ParconvError, match=message) as info:
        io.read_layer_meta(MPI.COMM_SELF, path)
    assert path in str(info.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ParconvError, match="no such file"):
        io.read_layer_meta(MPI.COMM_SELF, str(tmp_path / "absent.h5"))
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(ParconvError, match="cannot be read as HDF5"):
        io.read_layer_meta(MPI.COMM_SELF, str(text))


@dataclasses.dataclass
class FakeResult:
    output_piece: np.ndarray
    output_boxes: list


def test_write_output_is_atomic_and_complete(tmp_path):
    spec = small_spec()
    out = np.arange(np.prod(spec.output_shape), dtype=np.int32).reshape(spec.output_shape)
    n, k, h, w = spec.output_shape
    boxes = [((0, 1), (0, k), (0, h), (0, w)), ((1, 2), (0, 2), (0, h), (0, w)),
             ((1, 2), (2, k), (0, h), (0, w))]
    piece = np.concatenate([out[tuple(slice(a, b) for a, b in box)].ravel() for box in boxes])
    plan = type("PlanStub", (), {"spec": spec})()
    path = str(tmp_path / "out.h5")
    io.write_output(MPI.COMM_SELF, path, plan, FakeResult(piece, boxes))
    with h5py.File(path) as handle:
        np.testing.assert_array_equal(handle["output"][...], out)
        assert tuple(handle.attrs["stride"]) == (2, 1)
    assert not leftovers(tmp_path)


def test_failed_write_leaves_nothing(tmp_path):
    spec = small_spec()
    plan = type("PlanStub", (), {"spec": spec})()
    path = str(tmp_path / "out.h5")
    too_short = FakeResult(np.zeros(3, np.int32), [((0, 1), (0, 1), (0, 1), (0, 3)),
                                                   ((0, 1), (0, 1), (1, 2), (0, 3))])
    with pytest.raises(ParconvRuntimeError):
        io.write_output(MPI.COMM_SELF, path, plan, too_short)
    assert not os.path.exists(path) and not leftovers(tmp_path)
    with pytest.raises(ParconvError, match="does not exist"):
        io.write_output(MPI.COMM_SELF, str(tmp_path / "no" / "out.h5"), plan,
                        FakeResult(np.zeros(0, np.int32), []))
    assert not leftovers(tmp_path)


class SimulatedRank:
    """The few communicator calls read_owned_blocks makes, for one rank of a job that agrees."""

    def __init__(self, rank):
        self.rank = rank

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return 1

    def allgather(self, value):
        return [value]


@pytest.mark.parametrize("grid, bias", [("1x2x1x2x1", True), ("2x1x2x1x1", True),
                                        ("1x1x1x1x3", False)])
def test_each_rank_reads_its_own_pieces(tmp_path, grid, bias):
    spec = small_spec(bias=bias)
    x, w, b = random_layer(spec, seed=3)
    path = str(tmp_path / "layer.h5")
    io.write_layer_file(path, spec, x, w, b if bias else None)
    plan = make_plan(spec, 4 if grid != "1x1x1x1x3" else 3, grid=grid)
    seen_x, seen_w, seen_b = (np.zeros(a.shape, int) for a in (x, w, b))
    for rank in range(plan.ranks):
        blocks = io.read_owned_blocks(SimulatedRank(rank), path, plan)
        local = plan.schedule(rank)
        for piece, boxes, array, seen in ((blocks.input_piece, local.input_piece_boxes(), x,
                                           seen_x),
                                          (blocks.filter_piece, local.filter_piece_boxes(), w,
                                           seen_w)):
            expected = [array[tuple(slice(*r) for r in box)].ravel() for box in boxes]
            np.testing.assert_array_equal(piece, np.concatenate(expected))
            for box in boxes:
                seen[tuple(slice(*r) for r in box)] += 1
        if local.bias_piece_range() is not None:
            lo, hi = local.bias_piece_range()
            np.testing.assert_array_equal(blocks.bias_piece, b[lo:hi])
            seen_b[lo:hi] += 1
        else:
            assert blocks.bias_piece is None
    # every element is owned by exactly one rank
    assert (seen_x == 1).all() and (seen_w == 1).all()
    assert (seen_b == (1 if bias else 0)).all()
