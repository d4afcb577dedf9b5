"""Writing the distributed output of a layer to HDF5: every rank writes only its own blocks.

Writing is atomic: the data go to a temporary file in the destination folder (parconv.paths),
which is renamed onto the final name only after every rank reported success; on any failure the
temporary file is removed, so nothing half written ever appears under the final name.  The file's
disk space is reserved before any data are written, so a full disk or quota is a clean error.

h5py here is usually built without MPI; then writes are handed from rank to rank in order (one
writer at a time, a token passed with Send/Recv).  With a parallel h5py the 'mpio' driver is used.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time

import numpy as np

from .. import paths
from ..errors import ParconvError, ParconvRuntimeError
from ..plan.blocks import write_boxes
from .agree import agree, collectively

_TOKEN_TAG = 7301


@contextlib.contextmanager
def _duplicated(comm):
    """A private duplicate of `comm` for the duration of a block (freed afterwards)."""
    dup = comm.Dup()
    try:
        yield dup
    finally:
        dup.Free()


#: set when an HDF5 write failed in this process: the HDF5 library may then crash while closing
#: its files at interpreter exit, so the command line leaves through os._exit (parconv.run)
WRITE_FAILED = {"hdf5": False}


def temporary_name(path: str, pid: int | None = None) -> str:
    """The temporary name `path` is written through (parconv.paths.temporary_name)."""
    return paths.temporary_name(paths.resolve(path), "output", pid)


def layer_attributes(spec) -> dict:
    """The root-group attributes of a layer or output file."""
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
            handle.attrs.update(layer_attributes(spec))
    except Exception as exc:  # noqa: BLE001 - as one clean error
        raise _write_error(tmp, exc) from exc
    reserve_space(tmp)
