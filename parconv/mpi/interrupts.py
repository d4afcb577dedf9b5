"""How an interrupted job ends: temporary files removed, every rank gone, one known status.

Used by the command line (parconv.run) only; a library caller keeps its own signal handling.
"""

from __future__ import annotations

import signal
import sys
import time

from .. import paths

#: the exit status of a job that ends through MPI_Abort: hydra's mpirun reports 9 for the ranks it
#: kills with SIGKILL after an abort, so aborting with 9 makes the job's status 9 whichever rank
#: aborted and whether the others were busy (with another code hydra returns it or 9 at random)
ABORT_STATUS = 9
#: how long ranks other than 0 wait, when interrupted, for rank 0 to clean up and abort
INTERRUPT_WAIT_S = 3.0
#: how long a rank that printed its last message waits before MPI_Abort: the launcher forwards a
#: rank's stderr through a pipe, and an abort that kills the forwarding proxy first loses the
#: message (seen once with hydra on a loaded 2-core CI machine)
FORWARD_WAIT_S = 0.5


def abort_job(world) -> None:
    """Flush, give the launcher `FORWARD_WAIT_S` to forward what was printed, and end every rank
    with ``world.Abort(ABORT_STATUS)``.  Local: the first rank to call it ends the job."""
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(FORWARD_WAIT_S)
    world.Abort(ABORT_STATUS)


def install_signal_handlers(world, print_error) -> None:
    """SIGINT/SIGTERM end the job through ``world.Abort(ABORT_STATUS)``.  Local.

    Rank 0 holds the temporary files (parconv.paths); it removes them and prints one line with
    `print_error`; the other ranks give it `INTERRUPT_WAIT_S` first (mpirun forwards the signal to
    every rank, and the first rank to abort ends them all).  SIGXFSZ is ignored, so that
    ``ulimit -f`` makes a write fail with EFBIG, which parconv reports, instead of killing the
    process (Python ignores it already; this makes sure).
    """
    rank = world.Get_rank()

    def interrupted(signum, frame):  # noqa: ARG001 - the signal handler signature
        removed = paths.remove_registered()
        if rank == 0:
            note = f"; removed {', '.join(removed)}" if removed else ""
            print_error(f"interrupted by {signal.Signals(signum).name}{note}; ending the job "
                        f"(exit status {ABORT_STATUS})")
        else:
            time.sleep(INTERRUPT_WAIT_S)
        abort_job(world)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupted)
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
