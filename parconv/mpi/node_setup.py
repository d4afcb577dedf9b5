"""A node kernel's per-block set-up done once per distinct block shape, not once per rank.

The Gemmini node searches a tiling for its block before it runs (parconv.gemmini.tiling_cache);
that tiling depends only on the block's shape and types, and a grid has few distinct block shapes
(one per combination of long and short blocks per axis).  Searching on every rank repeats the same
work P times; on a node whose cores are shared by many ranks (oversubscription, or more ranks than
cores) it is most of the start-up.  Here the ranks with equal blocks form one group
(``comm.Split`` by a hash of the kernel's set-up key), the group's first rank does the set-up and
broadcasts the result, and the others adopt it.  Every rank's work is its own group's: no rank
loops over all ranks.

A kernel takes part by having three methods (parconv.gemmini.kernel.GemminiKernel does):

* ``setup_key(spec) -> str | None``: text naming what ``setup`` computes for this block (None:
  nothing to share);
* ``setup(spec) -> payload``: do it (and keep it for the coming ``run``); picklable result;
* ``adopt(spec, payload)``: keep a payload computed elsewhere.
"""

from __future__ import annotations

import pickle
import zlib

from mpi4py import MPI

from ..errors import ParconvError, ParconvRuntimeError
from .agree import collectively


def shares_setup(kernel) -> bool:
    """Whether `kernel` has the set-up methods this module uses.  Local."""
    return all(callable(getattr(kernel, name, None)) for name in ("setup_key", "setup", "adopt"))


def share_node_setup(comm, kernel, spec) -> None:
    """Do `kernel`'s set-up for `spec` once per group of ranks with the same set-up key.
    Collective over `comm`.

    Before: each rank holds its own block's `spec` (None for a rank without a block).  After:
    every rank with a block has its kernel's set-up for it (computed on the group's first rank, or
    on this rank when a hash collision put different keys in one group), or every rank raises the
    same error (agreed over `comm`) when a set-up failed.  Nothing is sent when `kernel` has
    nothing to share; the broadcasts are the kernel's metadata, not layer data, so they are not
    counted in the layer's bytes.
    """
    if not shares_setup(kernel):
        return
    with collectively(comm):
        key = kernel.setup_key(spec) if spec is not None else None
        color = MPI.UNDEFINED if key is None else zlib.crc32(key.encode()) & 0x7FFFFFFF
        group = comm.Split(color, comm.Get_rank())
        if group == MPI.COMM_NULL:
            return
        try:
            _share_in_group(group, kernel, spec, key)
        finally:
            group.Free()


def _share_in_group(group, kernel, spec, key: str) -> None:
    """The group's first rank sets up and broadcasts; equal keys adopt.  Collective over `group`.

    The first rank never raises before its broadcast, so nobody waits for a payload that will not
    come; a failure travels as text and is raised on every member (then agreed by the caller).
    """
    if group.Get_rank() == 0:
        try:   # pickled here, so that a payload that cannot be sent fails before the broadcast
            message = pickle.dumps((key, kernel.setup(spec), None))
        except Exception as exc:  # noqa: BLE001 - sent to the group, raised below on every member
            kind = "input" if isinstance(exc, ParconvError) else "runtime"
            message = pickle.dumps((key, None, (kind, f"{exc}" or type(exc).__name__)))
        group.bcast(message, root=0)   # meta: one pickled tiling (a few KiB)
    else:
        message = group.bcast(None, root=0)   # meta
    leader_key, payload, error = pickle.loads(message)
    if error is not None:
        kind, text = error
        raise (ParconvError if kind == "input" else ParconvRuntimeError)(text)
    if leader_key == key:
        if group.Get_rank() != 0:
            kernel.adopt(spec, payload)
    else:                  # another shape with the same hash: this rank sets itself up
        kernel.setup(spec)
