"""The errors of parconv.  Pure.

`ParconvError` is the one exception type for bad input and impossible requests; its message names
the offending field and the allowed range.  `ParconvRuntimeError` is a failure while running.
The collective helpers that make every rank agree on them live in `parconv.mpi.agree`.
"""

from __future__ import annotations


class ParconvError(ValueError):
    """Bad input or an impossible request (exit status 2 on the command line)."""


class ParconvRuntimeError(RuntimeError):
    """A failure while running (exit status 1 on the command line), e.g. in one rank's kernel."""
