"""Agreement on success: the collective helpers that keep every rank's view of an error the same.

Both take any mpi4py-like communicator (``allgather``, ``Get_rank``, ``Get_size``) and import no
MPI themselves.
"""

from __future__ import annotations

import contextlib
import traceback

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
