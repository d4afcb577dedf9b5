"""HDF5 layer files: every rank reads only its own blocks; a serial writer of whole layer files.

File layout (design.md): datasets ``input`` (N, C, H_in, W_in), ``weight`` (K, C, R, S), optional
``bias`` (K,); root-group attributes ``stride``, ``padding``, ``dilation`` (pairs) when the file
carries them.  An output file holds ``output`` (N, K, H, W) and the same attributes.

Reading refuses, as bad input (ParconvError), anything that is not a layer file of supported
types: missing or truncated files, corrupt chunks, attribute values outside 0..2^31-1; data in
any byte order are converted.  The distributed output writer is parconv.mpi.h5write
(``write_output`` is re-exported here).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys

import numpy as np

from .. import paths
from ..cli import add_layer_arguments, spec_from_args
from ..data import random_layer_data
from ..errors import ParconvError, ParconvRuntimeError
from ..plan.blocks import read_boxes
from ..spec import MAX_FIELD
from .agree import collectively
from .distribute import OwnedBlocks
from .h5write import layer_attributes, write_output  # noqa: F401 - write_output re-exported

LAYER_ATTRIBUTES = ("stride", "padding", "dilation")


@dataclasses.dataclass(frozen=True)
class LayerMeta:
    """Shapes, types and layer attributes of an HDF5 layer file (what rank 0 found)."""

    path: str
    input_shape: tuple
    weight_shape: tuple
    bias_shape: tuple | None
    input_dtype: str
    weight_dtype: str
    bias_dtype: str | None
    attributes: dict  # subset of LAYER_ATTRIBUTES -> (int, int)
    name: str | None = None  # the ``layer`` attribute, when the file has one


def _require(condition: bool, path: str, problem: str) -> None:
    if not condition:
        raise ParconvError(f"input file {path}: {problem}")


def _pair_attribute(path: str, name: str, value) -> tuple[int, int]:
    """An attribute holding one integer or a pair, as Python ints within a C int (MAX_FIELD).

    Values are converted exactly (``tolist``), so 2^63 stored as uint64 is refused by its value,
    not wrapped around."""
    values = np.atleast_1d(np.asarray(value)).ravel()
    _require(values.size in (1, 2) and np.issubdtype(values.dtype, np.integer)
             and values.dtype != np.bool_, path,
             f"attribute {name!r} must be one integer or a pair of integers, got {value!r}")
    pair = [int(v) for v in values.tolist()]
    for v in pair:
        _require(0 <= v <= MAX_FIELD, path,
                 f"attribute {name!r} must be integers from 0 to {MAX_FIELD}, got {v}")
    return pair[0], pair[-1]


def native_dtype(dtype) -> str:
    """The name of `dtype` in native byte order: ``>f8`` -> ``'float64'``, ``>i1`` -> ``'int8'``.

    Data of any byte order are converted on reading (``read_boxes`` casts to the spec's native
    types), so the byte order is no reason to refuse a file."""
    dtype = np.dtype(dtype)
    return dtype.newbyteorder("=").name if dtype.byteorder not in ("=", "|") else dtype.name


def _open_for_reading(path: str):
    import h5py
    if not os.path.exists(path):
        raise ParconvError(f"input file {path}: no such file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ParconvError(f"input file {path}: cannot be read as HDF5 ({exc})") from exc


def _dataset(handle, path: str, name: str, ndim: int):
    import h5py
    obj = handle.get(name)
    _require(isinstance(obj, h5py.Dataset), path, f"missing dataset {name!r} "
             f"(expected {ndim}-D; the file has {sorted(handle.keys())})")
    _require(obj.ndim == ndim, path, f"dataset {name!r} must be {ndim}-D, got shape {obj.shape}")
    return obj


def inspect_layer_file(path: str) -> LayerMeta:
    """Read and check the metadata of a layer file.  Local.

    Raises
    ------
    ParconvError
        Missing or unreadable file, missing dataset, wrong ranks, or shapes that disagree (input
        channels of ``input`` and ``weight``, bias length and output channels).
    """
    with _open_for_reading(path) as handle:
        x = _dataset(handle, path, "input", 4)
        w = _dataset(handle, path, "weight", 4)
        b = _dataset(handle, path, "bias", 1) if "bias" in handle else None
        _require(x.shape[1] == w.shape[1], path,
                 f"input channels disagree: 'input' has C = {x.shape[1]} (shape {x.shape}), "
                 f"'weight' has C = {w.shape[1]} (shape {w.shape})")
        if b is not None:
            _require(b.shape[0] == w.shape[0], path,
                     f"'bias' has {b.shape[0]} elements, 'weight' has K = {w.shape[0]} "
                     f"output channels")
        _require(min(x.shape) > 0 and min(w.shape) > 0, path,
                 f"empty dataset: 'input' {x.shape}, 'weight' {w.shape}")
        attributes = {name: _pair_attribute(path, name, handle.attrs[name])
                      for name in LAYER_ATTRIBUTES if name in handle.attrs}
        name = handle.attrs.get("layer")
        name = name.decode() if isinstance(name, bytes) else (str(name) if name else None)
        return LayerMeta(path=path, input_shape=tuple(int(v) for v in x.shape),
                         weight_shape=tuple(int(v) for v in w.shape),
                         bias_shape=None if b is None else (int(b.shape[0]),),
                         input_dtype=native_dtype(x.dtype), weight_dtype=native_dtype(w.dtype),
                         bias_dtype=None if b is None else native_dtype(b.dtype),
                         attributes=attributes,
                         name=name)


def read_layer_meta(comm, path: str) -> LayerMeta:
    """Rank 0 inspects the layer file and broadcasts what it found.  Collective over `comm`.

    Every rank returns the same LayerMeta, or every rank raises the same ParconvError naming the
    file and the problem.
    """
    found, error = None, None
    if comm.Get_rank() == 0:
        try:
            found = inspect_layer_file(path)
        except ParconvError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - any reading problem is bad input here
            error = f"input file {path}: {type(exc).__name__}: {exc}"
    found, error = comm.bcast((found, error), root=0)  # meta
    if error is not None:
        raise ParconvError(error)
    return found


def _checked_dtype(path: str, name: str, found, wanted) -> None:
    _require(np.can_cast(found, wanted, casting="safe"), path,
             f"dataset {name!r} has type {found}, which does not convert safely to {wanted}")


def read_owned_blocks(comm, path: str, plan):
    """Each rank reads its own pieces of ``input``, ``weight``, ``bias``.  Collective over `comm`.

    Ranks read independent hyperslabs (``plan.schedule(rank).input_piece_boxes()`` and friends) and
    flatten them in order into the flat pieces the engine expects.  Idle ranks read nothing.
    A failure on any rank is raised on every rank (errors.collectively).

    Returns
    -------
    OwnedBlocks
        ``input_piece``, ``filter_piece``, ``bias_piece`` (None where the rank owns no bias).
    """
    spec, local = plan.spec, plan.schedule(comm.Get_rank())
    blocks = OwnedBlocks(np.empty(0, spec.dtype_in), np.empty(0, spec.dtype_weight), None)
    with collectively(comm):
        if local is not None:
            with _open_for_reading(path) as handle, _unreadable_is_bad_input(path):
                blocks = _read_pieces(handle, path, spec, local)
    return blocks


@contextlib.contextmanager
def _unreadable_is_bad_input(path: str):
    """Corrupt chunks or a truncated file met while reading data are bad input (exit status 2),
    like an unreadable header."""
    try:
        yield
    except (ParconvError, ParconvRuntimeError):
        raise
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        raise ParconvError(f"input file {path}: cannot be read "
                           f"({' '.join(str(exc).split())})") from exc


class FileLayer:
    """A data source (parconv.data) over a layer file: ``read(name, boxes)`` reads hyperslabs of
    dataset ``input``, ``weight`` or ``bias``, converted to the layer's types.  Local; the file
    is opened for each read (the check reads a few boxes per rank)."""

    _DATASETS = {"input": "input", "weight": "weight", "bias": "bias"}

    def __init__(self, path: str, spec) -> None:
        self.path, self.spec = path, spec

    def read(self, name: str, boxes) -> np.ndarray:
        dtype = {"input": self.spec.dtype_in, "weight": self.spec.dtype_weight,
                 "bias": self.spec.dtype_acc}[name]
        with _open_for_reading(self.path) as handle, _unreadable_is_bad_input(self.path):
            _require(name in handle, self.path, f"missing dataset {name!r}")
            dataset = handle[self._DATASETS[name]]
            _checked_dtype(self.path, name, dataset.dtype, dtype)
            return read_boxes(dataset, boxes, dtype)

    def describe(self) -> str:
        return f"file {self.path}"


def _read_pieces(handle, path: str, spec, local):
    x, w = handle["input"], handle["weight"]
    _checked_dtype(path, "input", x.dtype, spec.dtype_in)
    _checked_dtype(path, "weight", w.dtype, spec.dtype_weight)
    bias = None
    bias_range = local.bias_piece_range() if spec.bias else None
    if bias_range is not None:
        _require("bias" in handle, path, "missing dataset 'bias' (--bias given)")
        _checked_dtype(path, "bias", handle["bias"].dtype, spec.dtype_acc)
        bias = read_boxes(handle["bias"], [(bias_range,)], spec.dtype_acc)
    return OwnedBlocks(read_boxes(x, local.input_piece_boxes(), spec.dtype_in),
                       read_boxes(w, local.filter_piece_boxes(), spec.dtype_weight), bias)


def write_layer_file(path: str, spec, x: np.ndarray, w: np.ndarray, bias=None) -> None:
    """Write a complete layer file (input, weight, optional bias, attributes) atomically.  Local.

    A serial helper for tests and tools.
    """
    import h5py
    target = paths.resolve(path)
    tmp = paths.temporary_name(target, "layer")
    paths.register(tmp)
    try:
        with h5py.File(tmp, "w") as handle:
            handle.create_dataset("input", data=np.asarray(x, dtype=spec.dtype_in))
            handle.create_dataset("weight", data=np.asarray(w, dtype=spec.dtype_weight))
            if bias is not None:
                handle.create_dataset("bias", data=np.asarray(bias, dtype=spec.dtype_acc))
            handle.attrs.update(layer_attributes(spec))
        os.replace(tmp, target)
        paths.unregister(tmp)
    except BaseException:
        paths.remove_quietly(tmp)
        raise


def main(argv=None) -> int:
    """``python -m parconv.mpi.hdf5 make [layer flags] [--seed N] OUT.h5``: write a random layer file."""
    parser = argparse.ArgumentParser(
        prog="python -m parconv.mpi.hdf5", description="Write a layer file (input, weight, optional "
        "bias, stride/padding/dilation attributes) with seeded random data, for --input.",
        epilog="Example: python -m parconv.mpi.hdf5 make --layer resnet50.layer2.0.conv2 --batch 4 "
               "--bias layer.h5")
    parser.add_argument("command", choices=("make",))
    parser.add_argument("path", metavar="OUT.h5")
    add_layer_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the data (default 0)")
    args = parser.parse_args(argv)
    try:
        spec = spec_from_args(args, default_batch=1)
        write_layer_file(args.path, spec, *random_layer_data(spec, args.seed))
    except (ParconvError, OSError) as exc:
        print(f"parconv.mpi.hdf5: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.path}: {spec.describe()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
