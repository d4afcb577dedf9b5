"""The exchanges of the grid algorithm (theory.md section 5), planned once per rank and layer.

`LayerExchange` is built once from (ProcGrid, RankSchedule, LayerTypes), the way mpi4py-fft
builds a ``Transfer``: counts, displacements, index slices, every send and receive buffer, the
work buffer, the partial output and the persistent halo requests are made at construction and
reused by every run of the layer, which allocates no new buffer.  Each phase is started without
blocking and finished (waited for and unpacked) later, so the engine can compute while it moves:

    "filter"  (1) filter block F[k, c] over the N-H-W group          Iallgatherv, in place
    "bias"    (1) bias block over the N-H-W group (c == 0)           Iallgatherv, in place
    "input"   (2) touched elements of In[n, c, own rows, own cols]
                  over the K group, into the work buffer             Iallgatherv, in place
    "halo_h"  (3) rows along H (after "input")                       persistent Isend/Irecv
    "halo_w"  (3) columns along W over all needed rows (after
                  "halo_h", so corners travel in two hops)           persistent Isend/Irecv
    "reduce"  (5) partial sums over the C group, in segments of       one Ialltoallv per
                  whole images started as soon as they are computed  segment, then a sum

Bytes are counted from the buffers handed to MPI (parconv.mpi.comm) when a phase starts.  The
object owns MPI requests: `free` releases them (context manager); the ProcGrid owns the
communicators.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import ParconvRuntimeError
from ..plan.blocks import count_masked

PHASE_ORDER = ("filter", "bias", "input", "halo_h", "halo_w", "reduce")
#: the reduction is cut into at most this many segments of whole images of the output block; the
#: bytes are the same and so are the destinations (a message count is per distinct peer)
REDUCE_SEGMENTS = 4


@dataclasses.dataclass(frozen=True)
class LayerTypes:
    """Element types of one layer: input, weight, accumulator (bias, partial sums), output."""

    input: np.dtype
    weight: np.dtype
    acc: np.dtype
    out: np.dtype

    @classmethod
    def of(cls, spec) -> "LayerTypes":
        return cls(*(np.dtype(t) for t in (spec.dtype_in, spec.dtype_weight, spec.dtype_acc,
                                           spec.dtype_out)))


def _displacements(counts: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)


def _sizes(pieces) -> np.ndarray:
    return np.array([hi - lo for lo, hi in pieces], dtype=np.int64)


def _index(positions) -> slice | np.ndarray:
    """A slice for evenly spaced positions (views, no copies), else the index array."""
    positions = np.asarray(positions, dtype=np.int64)
    if positions.size == 0:
        return slice(0, 0)
    if positions.size == 1:
        return slice(int(positions[0]), int(positions[0]) + 1)
    steps = np.diff(positions)
    if steps[0] > 0 and (steps == steps[0]).all():
        return slice(int(positions[0]), int(positions[-1]) + 1, int(steps[0]))
    return positions


def _region(rows, cols):
    """The index of rows x cols of a (n, c, rows, cols) buffer (outer product for two arrays)."""
    if isinstance(rows, np.ndarray) and isinstance(cols, np.ndarray):
        return (slice(None), slice(None), rows[:, None], cols[None, :])
    return (slice(None), slice(None), rows, cols)


def _length(index, extent: int) -> int:
    return len(range(*index.indices(extent))) if isinstance(index, slice) else index.size


class _Gather:
    """One in-place Iallgatherv: this member's piece is copied into its slot, then sent."""

    def __init__(self, comm, counts: np.ndarray, dtype, phase: str) -> None:
        self.comm, self.phase, self.counts = comm, phase, counts
        self.displs = _displacements(counts)
        self.buffer = np.empty(int(counts.sum()), dtype=dtype)
        lo = int(self.displs[comm.rank])
        self.slot = self.buffer[lo:lo + int(counts[comm.rank])]
        self.request = None

    def start(self):
        self.request = self.comm.Iallgatherv_inplace(self.buffer, self.counts, self.displs,
                                                     self.phase)

    def test(self) -> bool:
        return self.request is None or bool(self.request.Test())

    def wait(self) -> None:
        if self.request is not None:
            self.request.Wait()
            self.request = None


class LayerExchange:
    """Every exchange of one rank for one layer, with its buffers, made once.  Collective use.

    Construction and `free` are local.  Each ``start_*`` / ``finish_*`` pair is collective over
    the phase's group communicator (start on every member, finish on every member).

    Attributes (reused by every run)
    ---------------------------------
    filters : (nK, nC, R, S) filter block after ``finish("filter")``
    bias : (nK,) bias block after ``finish("bias")`` (None where the rank has no bias block)
    buffer : (nN, nC, rows_buf, cols_buf) input work buffer: own block after "input", halos after
        "halo_h" / "halo_w", zeros where nothing is read
    partial : (nN, nK, nH, nW) partial output the kernel writes (dtype_acc)
    output : flat owned output piece (dtype_out) after ``finish("reduce")``
    """

    def __init__(self, grid, local, types: LayerTypes) -> None:
        self.local, self.types = local, types
        self._halos = []
        me_k = grid.k.rank
        self._filter = _Gather(grid.filter, _sizes(local.filter_pieces), types.weight, "filter")
        self._bias = (None if local.bias_pieces is None else
                      _Gather(grid.filter, _sizes(local.bias_pieces), types.acc, "bias"))
        self.filters = self._filter.buffer.reshape(local.filter_block)
        self.bias = None if self._bias is None else self._bias.buffer
        # (2) input: only touched rows x touched columns travel, so the packed elements of the
        # whole block are the dense array block[:, :, touched rows][..., touched cols]
        rt, ct = np.asarray(local.rows_touched_own, bool), np.asarray(local.cols_touched_own, bool)
        starts, stops = (np.array(v, dtype=np.int64) for v in zip(*local.input_pieces))
        self._input = _Gather(grid.k, count_masked(rt, ct, starts, stops), types.input, "input")
        lo, hi = local.input_pieces[me_k]
        self._piece_size = hi - lo
        self._pack_mask = None
        if not (rt.all() and ct.all()):
            plane = np.outer(rt, ct).reshape(-1)
            first, last = (lo // plane.size, -(-hi // plane.size)) if plane.size else (0, 0)
            self._pack_mask = np.tile(plane, last - first)[lo - first * plane.size:
                                                           hi - first * plane.size]
        nN, nC = local.input_block[:2]
        rows0, cols0 = local.rows_buf[0], local.cols_buf[0]
        self.buffer = np.zeros((nN, nC, local.rows_buf[1] - rows0, local.cols_buf[1] - cols0),
                               dtype=types.input)
        own_rows = local.rows_own[0] + np.flatnonzero(rt)
        own_cols = local.cols_own[0] + np.flatnonzero(ct)
        self._own = _region(_index(own_rows - rows0), _index(own_cols - cols0))
        self._own_shape = (nN, nC, own_rows.size, own_cols.size)
        # (3) halos: one persistent request per peer and direction, buffers per peer
        self._halo = {
            "halo_h": self._plan_halo(grid.h, local.halo_h, own_cols - cols0, 0, rows0, tag=1),
            "halo_w": self._plan_halo(grid.w, local.halo_w,
                                      np.asarray(local.rows_needed, np.int64) - rows0, 1, cols0,
                                      tag=2)}
        # (5) reduce-scatter of the partial sums over the C group
        self.partial = np.zeros(local.output_block, dtype=types.acc)
        self._c = grid.c
        sizes = _sizes(local.output_pieces)
        mine = int(sizes[grid.c.rank])
        self.segments, self._segment_counts = self._plan_segments(local, grid.c.rank)
        self._reduce_requests = []
        flat = self.partial.reshape(-1)
        if grid.c.size == 1:
            self._received = None
            self.output = flat if types.out == types.acc else np.empty(mine, types.out)
        else:
            self._received = np.empty(mine * grid.c.size, dtype=types.acc)
            self.output = np.empty(mine, dtype=types.out)
            self._sum = self.output if types.out == types.acc else np.empty(mine, types.acc)

    @staticmethod
    def _plan_segments(local, me: int):
        """Image ranges of the reduce segments (the same on every member of the C group: they
        depend on the output block only) and each segment's Ialltoallv counts and
        displacements into the flat partial block and the (P_C, mine) receive buffer."""
        nN = local.output_block[0]
        per_image = int(np.prod(local.output_block[1:]))
        parts = max(1, min(nN, REDUCE_SEGMENTS))
        bounds = [nN * i // parts for i in range(parts + 1)]
        lo_piece = np.array([lo for lo, _ in local.output_pieces], dtype=np.int64)
        hi_piece = np.array([hi for _, hi in local.output_pieces], dtype=np.int64)
        my_lo, my_hi = local.output_pieces[me]
        segments, counts = [], []
        for i0, i1 in zip(bounds[:-1], bounds[1:]):
            lo, hi = i0 * per_image, i1 * per_image
            start = np.maximum(lo_piece, lo)
            send = np.maximum(np.minimum(hi_piece, hi) - start, 0)
            recv_lo = max(lo, my_lo)
            recv = max(0, min(hi, my_hi) - recv_lo)
            peers = np.arange(len(local.output_pieces), dtype=np.int64)
            counts.append((send, np.where(send > 0, start, 0),
                           np.full(peers.size, recv, dtype=np.int64),
                           peers * (my_hi - my_lo) + (recv_lo - my_lo if recv else 0)))
            segments.append((i0, i1))
        return segments, counts

    def start_segment(self, index: int) -> None:
        """Start the reduction of segment ``index`` (images ``segments[index]`` of the partial
        block, bias already added).  Collective over the C group, in segment order."""
        if self._received is None:
            return
        send, sdispls, recv, rdispls = self._segment_counts[index]
        self._reduce_requests.append(self._c.Ialltoallv(
            self.partial.reshape(-1), send, sdispls, self._received, recv, rdispls, "reduce"))

    def _plan_halo(self, comm, schedule, fixed_local, axis: int, origin: int, tag: int) -> list:
        """Per peer: (send index, send buffer, receive index, receive buffer); plus the
        persistent requests.  ``fixed_local``: buffer positions of the other axis."""
        fixed = _index(fixed_local)
        nN, nC = self.buffer.shape[:2]
        width = _length(fixed, self.buffer.shape[3 - axis])
        entries, sends, recvs = [], {}, {}
        for peer, (send_pos, recv_pos) in enumerate(schedule):
            if peer == comm.rank:
                continue
            pair = []
            for positions in (send_pos, recv_pos):
                moving = _index(np.asarray(positions, np.int64) - origin)
                count = _length(moving, self.buffer.shape[2 + axis])
                shape = (nN, nC, count, width) if axis == 0 else (nN, nC, width, count)
                index = _region(moving, fixed) if axis == 0 else _region(fixed, moving)
                pair += [index, np.empty(shape, dtype=self.buffer.dtype)]
            entries.append(pair)
            sends[peer], recvs[peer] = pair[1], pair[3]
        requests = comm.persistent_exchange(sends, recvs, tag=tag)
        self._halos.append(requests)
        return [entries, requests]

    # ---- starting and finishing phases ---------------------------------------------------------
    def start(self, phase: str, piece=None) -> None:
        """Start ``phase``; "filter", "bias" and "input" take this rank's owned flat piece."""
        if phase in ("filter", "bias", "input"):
            stage = {"filter": self._filter, "bias": self._bias, "input": self._input}[phase]
            if stage is None:
                return
            self._place(stage, phase, piece)
            stage.start()
        elif phase in self._halo:
            entries, requests = self._halo[phase]
            for send_index, send, _, _ in entries:
                if send.size:
                    np.copyto(send, self.buffer[send_index])
            requests.start(phase)
        elif phase == "reduce":
            for index in range(len(self._reduce_requests), len(self.segments)):
                self.start_segment(index)
        else:
            raise ParconvRuntimeError(f"unknown exchange phase {phase!r}")

    def _place(self, stage, phase: str, piece) -> None:
        dtype = stage.buffer.dtype
        piece = np.asarray(piece if piece is not None else np.zeros(0, dtype)).reshape(-1)
        expected = self._piece_size if phase == "input" else stage.slot.size
        if piece.size != expected:
            raise ParconvRuntimeError(f"{phase} piece has {piece.size} elements, the plan gives "
                                      f"this rank {expected}")
        if phase == "input" and self._pack_mask is not None:
            np.compress(self._pack_mask, piece, out=stage.slot)
        else:
            np.copyto(stage.slot, piece, casting="same_kind")

    def moves(self, phase: str) -> bool:
        """Whether ``phase`` involves other ranks at all on this rank (else it is a local copy
        or nothing, and is not timed)."""
        if phase in ("filter", "bias", "input"):
            stage = {"filter": self._filter, "bias": self._bias, "input": self._input}[phase]
            return stage is not None and stage.comm.size > 1
        if phase in self._halo:
            return bool(self._halo[phase][1].requests)
        return self._received is not None

    def test(self, phase: str) -> bool:
        """Whether ``phase`` has completed (drives MPI progress; never blocks)."""
        if phase in ("filter", "bias", "input"):
            stage = {"filter": self._filter, "bias": self._bias, "input": self._input}[phase]
            return stage is None or stage.test()
        if phase in self._halo:
            return self._halo[phase][1].test()
        return all(bool(r.Test()) for r in self._reduce_requests)

    def finish(self, phase: str) -> None:
        """Wait for ``phase`` and put what arrived in place."""
        if phase in ("filter", "bias"):
            stage = self._filter if phase == "filter" else self._bias
            if stage is not None:
                stage.wait()
        elif phase == "input":
            self._input.wait()
            if self._input.buffer.size:
                self.buffer[self._own] = self._input.buffer.reshape(self._own_shape)
        elif phase in self._halo:
            entries, requests = self._halo[phase]
            requests.wait()
            for _, _, recv_index, recv in entries:
                if recv.size:
                    self.buffer[recv_index] = recv
        elif phase == "reduce":
            if self._received is None:
                if self.output.base is not self.partial:
                    np.copyto(self.output, self.partial.reshape(-1), casting="unsafe")
                return
            while self._reduce_requests:
                self._reduce_requests.pop(0).Wait()
            np.sum(self._received.reshape(self._c.size, -1), axis=0, dtype=self.types.acc,
                   out=self._sum)
            if self._sum is not self.output:
                np.copyto(self.output, self._sum, casting="unsafe")

    # ---- bookkeeping ------------------------------------------------------------------------
    def buffers(self) -> dict[str, np.ndarray]:
        """Every buffer this object owns, by name (for memory figures and reuse tests)."""
        out = {"filters": self._filter.buffer, "input_received": self._input.buffer,
               "buffer": self.buffer, "partial": self.partial, "output": self.output}
        if self._bias is not None:
            out["bias"] = self._bias.buffer
        if self._pack_mask is not None:
            out["pack_mask"] = self._pack_mask
        if self._received is not None:
            out["reduce_received"] = self._received
            if self._sum is not self.output:
                out["reduce_sum"] = self._sum
        for phase, (entries, _) in self._halo.items():
            for i, (_, send, _, recv) in enumerate(entries):
                out[f"{phase}_send_{i}"], out[f"{phase}_recv_{i}"] = send, recv
        return out

    @property
    def nbytes(self) -> int:
        """Bytes of all buffers (views of another buffer count once)."""
        seen, total = set(), 0
        for array in self.buffers().values():
            base = array if array.base is None else array.base
            if id(base) not in seen:
                seen.add(id(base))
                total += base.nbytes
        return total

    def free(self) -> None:
        """Release the persistent requests.  Local."""
        while self._halos:
            self._halos.pop().free()

    def __enter__(self) -> "LayerExchange":
        return self

    def __exit__(self, *exc) -> None:
        self.free()
