"""Counted MPI calls: every byte of data the engine moves is counted here.

Every byte of data the engine moves goes through a `CountedComm`, which records per phase the
bytes sent, the bytes received and the distinct destinations, following the counting rule of the
plan (design.md 3): bytes are the LOGICAL point-to-point payload between distinct ranks (a rank's
copy to itself is not traffic), computed from the numpy buffers and counts actually handed to MPI
(``count * itemsize``), never from the plan.

* Allgatherv: a member with a non-empty piece "sends" it once to each other member;
  it receives the other members' pieces.
* Alltoallv: sent = sum of sendcounts to others, received = sum of recvcounts from others.
* Scatterv / Gatherv: the root sends (receives) each other rank's count; that rank receives
  (sends) it.
* Point-to-point exchange: the message sizes.

``messages`` is the number of DISTINCT destination ranks (ranks of the communicator the
`ProcGrid` duplicated) that got a non-empty payload in the phase, so several calls to the same
peer within one phase count once.

`parconv.mpi.procgrid.ProcGrid` builds the communicators of a grid, each wrapped in a
`CountedComm` that counts into one `ByteCounters` table.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from ..errors import ParconvRuntimeError


class ByteCounters:
    """Per-phase table of bytes sent, bytes received and distinct destinations.  Local.

    Shared by all the `CountedComm` objects of one `ProcGrid`; destinations are recorded as ranks
    of the grid's duplicated communicator so that they are comparable across sub-communicators.
    """

    def __init__(self) -> None:
        self._sent: dict[str, int] = {}
        self._received: dict[str, int] = {}
        self._destinations: dict[str, set] = {}

    def record(self, phase: str, sent: int, received: int, destinations) -> None:
        """Add one call's payload to ``phase``; ``destinations``: ranks with a non-empty payload."""
        self._sent[phase] = self._sent.get(phase, 0) + int(sent)
        self._received[phase] = self._received.get(phase, 0) + int(received)
        self._destinations.setdefault(phase, set()).update(int(r) for r in destinations)

    def counters(self) -> dict[str, dict[str, int]]:
        """``{phase: {"sent": bytes, "received": bytes, "messages": distinct destinations}}``."""
        return {phase: {"sent": self._sent[phase], "received": self._received[phase],
                        "messages": len(self._destinations[phase])} for phase in self._sent}

    def take(self) -> dict[str, dict[str, int]]:
        """`counters` of everything recorded so far, and start afresh (one repeat of a layer)."""
        table = self.counters()
        self._sent, self._received, self._destinations = {}, {}, {}
        return table

    def get(self, phase: str) -> dict[str, int]:
        """The counts of one phase, zeros when nothing was recorded in it."""
        return self.counters().get(phase, {"sent": 0, "received": 0, "messages": 0})


def _displacements(counts: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)


def _as_counts(counts, size: int, what: str) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    if counts.size != size or (counts < 0).any():
        raise ParconvRuntimeError(f"{what} must be {size} non-negative counts, got {counts}")
    return counts


def _flat(buffer: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(buffer, np.ndarray) or not buffer.flags.c_contiguous:
        raise ParconvRuntimeError(f"{what} must be a C-contiguous numpy array")
    return buffer.reshape(-1)


class CountedComm:
    """An mpi4py communicator whose data calls are counted per phase.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        The communicator to wrap (not freed by this object: its `ProcGrid` owns it).
    counters : ByteCounters
        The table to record into.
    parent_ranks : sequence of int
        For each rank of ``comm``, its rank in the grid's duplicated communicator (how
        destinations are named in the table).

    All data calls take numpy buffers; counts are in ELEMENTS of the buffers' dtype.  Every call
    is collective over ``comm`` (or, for `exchange`, over the ranks named in it).
    """

    def __init__(self, comm, counters: ByteCounters, parent_ranks) -> None:
        self.comm = comm
        self.counters = counters
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.parent_ranks = np.asarray(parent_ranks, dtype=np.int64)

    def _others(self, nonzero: np.ndarray) -> np.ndarray:
        mask = np.asarray(nonzero, dtype=bool).copy()
        mask[self.rank] = False
        return self.parent_ranks[mask]

    def Barrier(self, phase: str | None = None) -> None:
        """Synchronise.  Collective over this communicator.  Moves no payload, so nothing is
        counted (``phase`` is accepted for a uniform call style)."""
        self.comm.Barrier()

    def Allgatherv(self, sendbuf: np.ndarray, recvbuf: np.ndarray, counts, phase: str) -> None:
        """Every member contributes ``counts[i]`` elements; ``recvbuf`` gets them in rank order.

        Collective over this communicator.  Example (3 ranks, counts [2, 1, 0]): rank 0 holds
        [a, b], rank 1 [c], rank 2 []; afterwards every rank's recvbuf is [a, b, c].  Counted:
        rank 0 sent 2 * 2 elements to 2 destinations, received 1; rank 2 sent nothing.
        """
        counts = _as_counts(counts, self.size, "Allgatherv counts")
        send, recv = _flat(sendbuf, "Allgatherv sendbuf"), _flat(recvbuf, "Allgatherv recvbuf")
        if send.size != counts[self.rank] or recv.size != counts.sum():
            raise ParconvRuntimeError(
                f"Allgatherv in phase {phase!r}: send {send.size} / receive {recv.size} elements "
                f"do not match counts {counts.tolist()} at member {self.rank}")
        self.comm.Allgatherv(send, [recv, (counts, _displacements(counts))])
        item, mine = recv.itemsize, int(counts[self.rank])
        dest = self._others(np.full(self.size, mine > 0))
        self.counters.record(phase, mine * item * (self.size - 1),
                             (int(counts.sum()) - mine) * item, dest)

    def Iallgatherv_inplace(self, recvbuf: np.ndarray, counts, displs, phase: str):
        """Non-blocking `Allgatherv` whose own piece is already in place: ``recvbuf[displs[i]:
        displs[i] + counts[i]]`` of member i travels to every member.

        Collective over this communicator; returns the request (wait before reading
        ``recvbuf``).  Counted when started, by the rule of `Allgatherv`; ``counts`` and
        ``displs`` are int arrays made once by the caller (checked here on each call: cheap)."""
        recv = _flat(recvbuf, "Iallgatherv recvbuf")
        mine = int(counts[self.rank])
        request = self.comm.Iallgatherv(MPI.IN_PLACE, [recv, (counts, displs)])
        item = recv.itemsize
        self.counters.record(phase, mine * item * (self.size - 1),
                             (int(counts.sum()) - mine) * item,
                             self.parent_ranks[np.arange(self.size) != self.rank]
                             if mine > 0 else ())
        return request

    def Ialltoallv(self, sendbuf: np.ndarray, sendcounts, sdispls, recvbuf: np.ndarray,
                   recvcounts, rdispls, phase: str):
        """Non-blocking `Alltoallv` with the caller's counts and displacements (made once).

        Collective over this communicator; returns the request.  Counted when started, by the
        rule of `Alltoallv`."""
        send, recv = _flat(sendbuf, "Ialltoallv sendbuf"), _flat(recvbuf, "Ialltoallv recvbuf")
        request = self.comm.Ialltoallv([send, (sendcounts, sdispls)],
                                       [recv, (recvcounts, rdispls)])
        me = self.rank
        self.counters.record(phase, (int(sendcounts.sum()) - int(sendcounts[me])) * send.itemsize,
                             (int(recvcounts.sum()) - int(recvcounts[me])) * recv.itemsize,
                             self._others(sendcounts > 0))
        return request

    def persistent_exchange(self, sends: dict, recvs: dict, tag: int = 0) -> "PlannedExchange":
        """Persistent point-to-point requests for sending ``sends[peer]`` and receiving into
        ``recvs[peer]`` (buffers owned by the caller and reused on every start).  Local (no
        communication until `PlannedExchange.start`); empty buffers and self entries are
        skipped."""
        return PlannedExchange(self, sends, recvs, tag)

    def Alltoallv(self, sendbuf: np.ndarray, sendcounts, recvbuf: np.ndarray, recvcounts,
                  phase: str) -> None:
        """Member i sends ``sendcounts[j]`` consecutive elements to member j.

        Collective over this communicator.  Example (2 ranks): rank 0 sends [a | b] with counts
        [1, 1], rank 1 sends [c, d | e] with counts [2, 1]; afterwards rank 0 holds [a | c, d]
        and rank 1 [b | e].  Counted: rank 0 sent 1 element and received 2.
        """
        sendcounts = _as_counts(sendcounts, self.size, "Alltoallv sendcounts")
        recvcounts = _as_counts(recvcounts, self.size, "Alltoallv recvcounts")
        send, recv = _flat(sendbuf, "Alltoallv sendbuf"), _flat(recvbuf, "Alltoallv recvbuf")
        if send.size != sendcounts.sum() or recv.size != recvcounts.sum():
            raise ParconvRuntimeError(f"Alltoallv in phase {phase!r}: buffer sizes do not match "
                                      f"the counts at member {self.rank}")
        self.comm.Alltoallv([send, (sendcounts, _displacements(sendcounts))],
                            [recv, (recvcounts, _displacements(recvcounts))])
        me = self.rank
        self.counters.record(phase, (sendcounts.sum() - sendcounts[me]) * send.itemsize,
                             (recvcounts.sum() - recvcounts[me]) * recv.itemsize,
                             self._others(sendcounts > 0))

    def Scatterv(self, sendbuf, counts, recvbuf: np.ndarray, root: int, phase: str) -> None:
        """The root sends ``counts[i]`` consecutive elements of ``sendbuf`` to member i.

        Collective over this communicator; ``sendbuf`` and ``counts`` matter on the root only.
        Example (root 0, counts [1, 2]): rank 0 has [a | b, c]; afterwards rank 0's recvbuf is [a],
        rank 1's [b, c].  Counted: the root sent 2 elements to 1 destination; rank 1 received 2.
        """
        recv = _flat(recvbuf, "Scatterv recvbuf")
        if self.rank == root:
            counts = _as_counts(counts, self.size, "Scatterv counts")
            send = _flat(sendbuf, "Scatterv sendbuf")
            if send.size != counts.sum() or recv.size != counts[root]:
                raise ParconvRuntimeError(f"Scatterv in phase {phase!r}: buffer sizes do not "
                                          f"match the counts at the root")
            self.comm.Scatterv([send, (counts, _displacements(counts))], recv, root=root)
            self.counters.record(phase, (counts.sum() - counts[root]) * send.itemsize, 0,
                                 self._others(counts > 0))
        else:
            self.comm.Scatterv(None, recv, root=root)
            self.counters.record(phase, 0, recv.size * recv.itemsize, ())

    def Gatherv(self, sendbuf: np.ndarray, recvbuf, counts, root: int, phase: str) -> None:
        """Member i sends its ``counts[i]`` elements to the root, which stores them in rank order.

        Collective over this communicator; ``recvbuf`` and ``counts`` matter on the root only.
        Example (root 0): rank 0 sends [a], rank 1 [b, c]; afterwards the root's recvbuf is
        [a, b, c].  Counted: rank 1 sent 2 elements to 1 destination; the root received 2.
        """
        send = _flat(sendbuf, "Gatherv sendbuf")
        if self.rank == root:
            counts = _as_counts(counts, self.size, "Gatherv counts")
            recv = _flat(recvbuf, "Gatherv recvbuf")
            if recv.size != counts.sum() or send.size != counts[root]:
                raise ParconvRuntimeError(f"Gatherv in phase {phase!r}: buffer sizes do not "
                                          f"match the counts at the root")
            self.comm.Gatherv(send, [recv, (counts, _displacements(counts))], root=root)
            self.counters.record(phase, 0, (counts.sum() - counts[root]) * recv.itemsize, ())
        else:
            self.comm.Gatherv(send, None, root=root)
            dest = [self.parent_ranks[root]] if send.size else ()
            self.counters.record(phase, send.size * send.itemsize, 0, dest)

    def exchange(self, sends: dict, recvs: dict, phase: str, tag: int = 0) -> None:
        """Point-to-point exchange: send ``sends[peer]`` to each peer, receive ``recvs[peer]``
        (preallocated) from each peer.

        Collective over the ranks named: each message must be matched by the peer's entry of the
        same size.  Empty arrays are not sent (both sides skip them).  Example (ranks 0 and 1 of a
        row): rank 0 passes sends {1: [x]}, recvs {1: empty(2)}; rank 1 sends {0: [y, z]},
        recvs {0: empty(1)}; afterwards rank 0's recvs[1] is [y, z] and rank 1's recvs[0] is [x].
        """
        requests, dest, sent, received = [], [], 0, 0
        for peer, buf in sorted(recvs.items()):
            buf = _flat(buf, "exchange receive buffer")
            if buf.size and peer != self.rank:
                requests.append(self.comm.Irecv(buf, source=peer, tag=tag))
                received += buf.size * buf.itemsize
        for peer, buf in sorted(sends.items()):
            buf = _flat(buf, "exchange send buffer")
            if buf.size and peer != self.rank:
                requests.append(self.comm.Isend(buf, dest=peer, tag=tag))
                sent += buf.size * buf.itemsize
                dest.append(self.parent_ranks[peer])
        MPI.Request.Waitall(requests)
        self.counters.record(phase, sent, received, dest)


class PlannedExchange:
    """Persistent send and receive requests of one point-to-point exchange, made once.

    `start` starts them all (counted like `CountedComm.exchange`), `wait` completes them,
    `test` reports completion without blocking; `free` releases the requests.  Collective over
    the ranks named on both sides.  Context manager.
    """

    def __init__(self, comm: CountedComm, sends: dict, recvs: dict, tag: int) -> None:
        self.comm = comm
        self.requests = []
        self.sent = self.received = 0
        self.destinations = []
        for peer, buf in sorted(recvs.items()):
            buf = _flat(buf, "exchange receive buffer")
            if buf.size and peer != comm.rank:
                self.requests.append(comm.comm.Recv_init(buf, source=peer, tag=tag))
                self.received += buf.size * buf.itemsize
        for peer, buf in sorted(sends.items()):
            buf = _flat(buf, "exchange send buffer")
            if buf.size and peer != comm.rank:
                self.requests.append(comm.comm.Send_init(buf, dest=peer, tag=tag))
                self.sent += buf.size * buf.itemsize
                self.destinations.append(int(comm.parent_ranks[peer]))

    def start(self, phase: str) -> None:
        if self.requests:
            MPI.Prequest.Startall(self.requests)
        self.comm.counters.record(phase, self.sent, self.received, self.destinations)

    def test(self) -> bool:
        return bool(MPI.Request.Testall(self.requests)) if self.requests else True

    def wait(self) -> None:
        if self.requests:
            MPI.Request.Waitall(self.requests)

    def free(self) -> None:
        while self.requests:
            self.requests.pop().Free()

    def __enter__(self) -> "PlannedExchange":
        return self

    def __exit__(self, *exc) -> None:
        self.free()
