"""HDF5 input and output of a layer, distributed: every rank reads and writes only its own blocks.

File layout (design.md): datasets ``input`` (N, C, H_in, W_in), ``weight`` (K, C, R, S), optional
``bias`` (K,); root-group attributes ``stride``, ``padding``, ``dilation`` (pairs) when the file
carries them.  An output file holds ``output`` (N, K, H, W) and the same attributes.

Writing is atomic: the data go to a temporary file in the destination folder, which rank 0
renames to the final name only after every rank reported success; on any failure the temporary
file is removed, so nothing half written ever appears under the final name.

h5py here is usually built without MPI; then writes are handed from rank to rank in order (one
writer at a time, a token passed with Send/Recv).  With a parallel h5py the 'mpio' driver is used.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import os
import sys
import time

import numpy as np

from .. import paths
from ..cli import add_layer_arguments, spec_from_args
from ..data import random_layer_data
from ..errors import ParconvError, ParconvRuntimeError
from ..plan.blocks import read_boxes, write_boxes
from ..spec import MAX_FIELD
from .agree import agree, collectively
from .distribute import OwnedBlocks

LAYER_ATTRIBUTES = ("stride", "padding", "dilation")
_TOKEN_TAG = 7301


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


@contextlib.contextmanager
def _duplicated(comm):
    """A private duplicate of `comm` for the duration of a block (freed afterwards)."""
    dup = comm.Dup()
    try:
        yield dup
    finally:
        dup.Free()


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
            with _open_for_reading(path) as handle:
                try:
                    blocks = _read_pieces(handle, path, spec, local)
                except (ParconvError, ParconvRuntimeError):
                    raise
                except (OSError, RuntimeError, ValueError, KeyError) as exc:
                    # corrupt chunks, a truncated file: bad input, like an unreadable header
                    raise ParconvError(f"input file {path}: cannot be read "
                                       f"({' '.join(str(exc).split())})") from exc
    return blocks


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


# ---- writing --------------------------------------------------------------------------------

#: set when an HDF5 write failed in this process: the HDF5 library may then crash while closing
#: its files at interpreter exit, so the command line leaves through os._exit (run.py)
WRITE_FAILED = {"hdf5": False}


def temporary_name(path: str, pid: int | None = None) -> str:
    """The temporary name `path` is written through (parconv.paths.temporary_name)."""
    return paths.temporary_name(paths.resolve(path), "output", pid)


def _layer_attributes(spec) -> dict:
    return {"stride": np.array(spec.stride, dtype=np.int64),
            "padding": np.array(spec.padding, dtype=np.int64),
            "dilation": np.array(spec.dilation, dtype=np.int64),
            "layer": spec.name}


def _write_in_turn(comm, tmp: str, boxes, piece) -> None:
    """Ranks open `tmp` one after another and write their boxes.  Collective over `comm`.

    A token travels 0 -> 1 -> ... -> P-1; it carries "an earlier rank failed", after which the
    others skip writing but still pass it on, so nobody waits forever.
    """
    import h5py
    rank, size = comm.Get_rank(), comm.Get_size()
    token = np.zeros(1, dtype=np.int32)
    if rank > 0:
        comm.Recv(token, source=rank - 1, tag=_TOKEN_TAG)
    error = None
    if token[0] == 0:
        try:
            if boxes:
                with h5py.File(tmp, "r+") as handle:
                    write_boxes(handle["output"], boxes, piece)
        except Exception as exc:  # noqa: BLE001 - reported to every rank by agree() below
            error, token[0] = _write_error(tmp, exc), 1
    if rank + 1 < size:
        comm.Send(token, dest=rank + 1, tag=_TOKEN_TAG)
    responsive_barrier(comm)
    agree(comm, error)


def responsive_barrier(comm, poll_s: float = 0.002) -> None:
    """A barrier during which this process still handles signals.  Collective over `comm`.

    A blocking MPI call holds off Python's signal handlers until it returns; rank 0 waits here
    while the others write, and must be able to remove its temporary file when interrupted."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(poll_s)


def _write_parallel(comm, tmp: str, boxes, piece) -> None:
    """All ranks write their boxes at once through the 'mpio' driver.  Collective over `comm`."""
    import h5py
    error = None
    with h5py.File(tmp, "r+", driver="mpio", comm=comm) as handle:
        try:
            write_boxes(handle["output"], boxes, piece)
        except Exception as exc:  # noqa: BLE001 - agreed below, after the collective close
            error = _write_error(tmp, exc)
    agree(comm, error)


def _write_error(tmp: str, exc: BaseException) -> BaseException:
    """A failed HDF5 write as a one-line ParconvRuntimeError (errno and file named)."""
    if isinstance(exc, (ParconvError, ParconvRuntimeError)):
        return exc
    WRITE_FAILED["hdf5"] = True
    text = " ".join(str(exc).split())
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        if f"errno = {code}," in text or getattr(exc, "errno", None) == code:
            return ParconvRuntimeError(f"writing {tmp} failed: {os.strerror(code)}")
    return ParconvRuntimeError(f"writing {tmp} failed: {type(exc).__name__}: {text}")


def write_output(comm, path: str, plan, result) -> None:
    """Write the distributed output to `path` atomically.  Collective over `comm`.

    Each rank writes ``result.output_piece`` (flat, C order over its boxes) into
    ``result.output_boxes``.  After all ranks agreed on success rank 0 renames the temporary
    file onto `path` (onto the file a symlink `path` points to); otherwise it removes it and
    every rank raises the agreed error.

    Example with 2 ranks, output (1, 1, 2, 2): rank 0 holds piece [a, b] with boxes
    [((0,1),(0,1),(0,1),(0,2))], rank 1 [c, d] with [((0,1),(0,1),(1,2),(0,2))]; afterwards
    `path` holds output [[[[a, b], [c, d]]]] and no temporary file remains.
    """
    target = paths.resolve(path)
    with _duplicated(comm) as comm:
        tmp = comm.bcast(paths.temporary_name(target, "output") if comm.Get_rank() == 0
                         else None, root=0)  # meta
        write_output_temporary(comm, tmp, plan, result)
        try:
            with collectively(comm):
                if comm.Get_rank() == 0:
                    os.replace(tmp, target)
                    paths.unregister(tmp)
        except BaseException:
            if comm.Get_rank() == 0:
                paths.remove_quietly(tmp)
            raise


def write_output_temporary(comm, tmp: str, plan, result) -> None:
    """Write the distributed output into the new file `tmp` (not renamed).  Collective.

    Rank 0 creates `tmp` with the whole dataset allocated and its disk space reserved
    (``posix_fallocate``), so a full disk, a quota or ``ulimit -f`` fails here with a clean
    error before the HDF5 library writes a byte of data (HDF5 left with a failed write may crash
    the process).  Then every rank writes its boxes.  On any failure rank 0 removes `tmp` and
    every rank raises the agreed error; on success `tmp` is complete and synced to disk, and the
    caller renames it.
    """
    import h5py
    spec = plan.spec
    boxes = list(result.output_boxes or [])
    piece = np.asarray(result.output_piece if boxes else np.empty(0), dtype=spec.dtype_out)
    with _duplicated(comm) as comm:
        try:
            with collectively(comm):
                if comm.Get_rank() == 0:
                    _create_output_file(tmp, spec)
            if h5py.get_config().mpi:
                _write_parallel(comm, tmp, boxes, piece)
            else:
                _write_in_turn(comm, tmp, boxes, piece)
            with collectively(comm):
                if comm.Get_rank() == 0:
                    sync_file(tmp)
        except BaseException:
            if comm.Get_rank() == 0:
                paths.remove_quietly(tmp)
            raise


def sync_file(path: str) -> None:
    """Flush `path` to disk (a delayed-allocation file system reports a full disk here)."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def reserve_space(path: str) -> None:
    """Allocate the blocks of `path` up to its size now, so later writes cannot run out."""
    size = os.path.getsize(path)
    handle = os.open(path, os.O_RDWR)
    try:
        if size:
            os.posix_fallocate(handle, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            return  # no fallocate on this file system: the writes report a full disk instead
        raise ParconvRuntimeError(f"cannot reserve {size} bytes for {path}: "
                                  f"{exc.strerror}") from exc
    finally:
        os.close(handle)


def _create_output_file(tmp: str, spec) -> None:
    """Create `tmp` with dataset 'output' allocated at once, no fill written, space reserved."""
    import h5py
    folder = os.path.dirname(tmp)
    if not os.path.isdir(folder):
        raise ParconvError(f"output file: folder {folder} does not exist")
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # every element is written by some rank
    paths.register(tmp)
    try:
        with h5py.File(tmp, "w") as handle:
            handle.create_dataset("output", shape=spec.output_shape, dtype=spec.dtype_out,
                                  dcpl=dcpl)
            handle.attrs.update(_layer_attributes(spec))
    except Exception as exc:  # noqa: BLE001 - as one clean error
        raise _write_error(tmp, exc) from exc
    reserve_space(tmp)


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
            handle.attrs.update(_layer_attributes(spec))
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
