"""Errors of parconv and the collective helpers that keep every rank in agreement about them.

`ParconvError` is the one exception type for bad input and impossible requests; its message names
the offending field and the allowed range.  The collective helpers import mpi4py lazily so that the
pure modules (spec, bounds, plan, ...) can raise `ParconvError` without loading MPI.
"""

from __future__ import annotations

import contextlib
import traceback


class ParconvError(ValueError):
    """Bad input or an impossible request (exit status 2 on the command line)."""


class ParconvRuntimeError(RuntimeError):
    """A failure while running (exit status 1 on the command line), e.g. in one rank's kernel."""


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
