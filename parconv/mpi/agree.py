"""Agreement on success: the collective helpers that keep every rank's view of an error the same.

They take any mpi4py-like communicator (``allgather``, ``Get_rank``, ``Get_size``; `patient_bcast`
also ``Ibcast``) and import no MPI themselves.
"""

from __future__ import annotations

import contextlib
import pickle
import time
import traceback

import numpy as np

from ..errors import ParconvError, ParconvRuntimeError


def agree(comm, error: BaseException | None) -> None:
    """Agree on success over `comm`; re-raise the first failing rank's error on every rank.

    Collective over `comm`: every rank must call it, with `error=None` where its own work
    succeeded.  If any rank failed, every rank raises the same exception type with the message of
    the lowest failing rank (prefixed with that rank), so that no rank waits in a later collective
    for a peer that has given up.

    Example: rank 1 of 3 passes ``ParconvError("bad")``, the others ``None``; afterwards all three
    raise ``ParconvError("rank 1: bad")``.
    """
    local = None
    if error is not None:
        kind = "input" if isinstance(error, ParconvError) else "runtime"
        local = (comm.Get_rank(), kind, f"{error}" or type(error).__name__)
    failures = [f for f in comm.allgather(local) if f is not None]  # meta: tiny tuples
    if not failures:
        return
    rank, kind, message = min(failures)
    text = message if comm.Get_size() == 1 else f"rank {rank}: {message}"
    if kind == "input":
        raise ParconvError(text) from error
    raise ParconvRuntimeError(text) from error


@contextlib.contextmanager
def collectively(comm):
    """Run a block that may fail on one rank alone, then agree on success over `comm`.

    Collective over `comm`.  Usage::

        with collectively(comm):
            data = read_my_hyperslab(...)   # may raise on this rank only

    Every rank leaves the block together: normally, or by raising the agreed error.
    """
    error = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - any local failure must reach the other ranks
        error = exc
        if not isinstance(exc, (ParconvError, ParconvRuntimeError)):
            error = ParconvRuntimeError(f"{type(exc).__name__}: {exc}")
            error.__cause__ = exc
            error.local_traceback = traceback.format_exc()
    agree(comm, error)


#: first and longest sleep between two tests of a pending request (seconds).  Used only where
#: ranks wait for long local work of others (the root planning): a sleeping rank progresses its
#: other pending requests only when it wakes, so patience everywhere would slow every exchange
POLL_S, MAX_POLL_S = 0.0002, 0.005


def _wait_patiently(request) -> None:
    """Wait for ``request`` sleeping between tests, ever longer up to ``MAX_POLL_S``: a rank
    waiting for a slow peer gives its core away instead of spinning in MPI (on an oversubscribed
    node the spinning ranks would take the CPU time of the ranks they wait for)."""
    pause = POLL_S
    while not request.Test():
        time.sleep(pause)
        pause = min(2 * pause, MAX_POLL_S)


def patient_bcast(comm, obj, root: int = 0):
    """``comm.bcast(obj, root)`` whose waiting ranks sleep while the root works.  Collective.

    The root's object is pickled and sent as a length and a byte buffer (two Ibcast calls).
    Example: root 0 passes a Plan, the others None; afterwards every rank holds an equal Plan.
    """
    me = comm.Get_rank()
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) if me == root else b""
    size = np.array([len(data)], dtype=np.int64)
    _wait_patiently(comm.Ibcast(size, root=root))
    buffer = np.frombuffer(data, dtype=np.uint8).copy() if me == root else \
        np.empty(int(size[0]), dtype=np.uint8)
    _wait_patiently(comm.Ibcast(buffer, root=root))
    return obj if me == root else pickle.loads(buffer.tobytes())


def patient_allgather_flags(comm, flags) -> list[tuple]:
    """Every rank's tuple of booleans (the same length everywhere), waited for patiently.
    Collective over ``comm``.  Example: ranks pass (True, False) and (False, False); afterwards
    both hold [(True, False), (False, False)]."""
    mine = np.array(flags, dtype=np.int8)
    everyone = np.empty((comm.Get_size(), mine.size), dtype=np.int8)
    _wait_patiently(comm.Iallgather(mine, everyone))  # meta: a few flags per rank
    return [tuple(bool(v) for v in row) for row in everyone]
