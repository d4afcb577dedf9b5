"""The exchanges of the grid algorithm (theory.md section 5) on a `ProcGrid`.

Each function is collective over one group communicator of the grid and takes this rank's
`RankSchedule` (parconv.plan) for the block geometry; the byte counts come from the buffers handed to
MPI (parconv.mpi.comm), the plan only says which elements go where.

    allgather_filter   (1) filter block F[k, c] over the N-H-W group        phase "filter"
    allgather_bias     (1) bias block bias[k] over the N-H-W group (c == 0)  phase "bias"
    allgather_input    (2) touched elements of In[n, c, own rows, own cols]
                           over the K group, into the local work buffer      phase "input"
    exchange_halos     (3) rows along H, then columns along W               "halo_h", "halo_w"
    reduce_scatter_output (5) partial sums over the C group                 phase "reduce"
"""

from __future__ import annotations

import numpy as np

from ..errors import ParconvRuntimeError
from ..plan.blocks import count_masked


def _piece_sizes(pieces) -> np.ndarray:
    return np.array([hi - lo for lo, hi in pieces], dtype=np.int64)


def _checked_piece(piece, pieces, index: int, dtype, what: str) -> np.ndarray:
    piece = np.ascontiguousarray(piece, dtype=dtype).reshape(-1)
    lo, hi = pieces[index]
    if piece.size != hi - lo:
        raise ParconvRuntimeError(f"{what} piece has {piece.size} elements, the plan gives "
                                  f"member {index} the flat range [{lo}, {hi})")
    return piece


def _allgather_block(group, pieces, piece, shape, dtype, phase: str, what: str) -> np.ndarray:
    counts = _piece_sizes(pieces)
    mine = _checked_piece(piece, pieces, group.rank, dtype, what)
    block = np.empty(int(counts.sum()), dtype=dtype)
    group.Allgatherv(mine, block, counts, phase)
    return block.reshape(shape)


def allgather_filter(grid, local, piece: np.ndarray) -> np.ndarray:
    """Assemble the filter block F[k, c, :, :] from the pieces of the N-H-W group.

    Collective over ``grid.filter``.  Member ``q = (a P_H + d) P_W + e`` brings flat piece
    ``local.filter_pieces[q]`` (C order) of the (nK, nC, R, S) block.  Example: a 2-rank group
    sharing a block of 5 elements; rank q=0 holds [f0, f1, f2], q=1 holds [f3, f4]; afterwards both
    hold the whole block [f0 .. f4] reshaped to (nK, nC, R, S).
    """
    spec = grid.plan.spec
    return _allgather_block(grid.filter, local.filter_pieces, piece, local.filter_block,
                            spec.dtype_weight, "filter", "filter")


def allgather_bias(grid, local, piece: np.ndarray) -> np.ndarray | None:
    """Assemble the bias block bias[k] on the ranks of channel block c == 0.

    Collective over ``grid.filter`` on ranks with ``local.bias_pieces`` (layers with bias,
    c == 0: the whole N-H-W group qualifies or none of it); returns None elsewhere without
    communicating.  Example: nK = 3 over a 2-rank group: q=0 holds [b0, b1], q=1 holds [b2];
    afterwards both hold [b0, b1, b2] (dtype_acc).
    """
    if local.bias_pieces is None:
        return None
    spec = grid.plan.spec
    return _allgather_block(grid.filter, local.bias_pieces, piece, (local.k[1] - local.k[0],),
                            spec.dtype_acc, "bias", "bias")


def _touched_mask(local) -> np.ndarray:
    """Flat mask over the input block: elements whose row and column the layer reads."""
    plane = np.outer(local.rows_touched_own, local.cols_touched_own).reshape(-1)
    nN, nC = local.input_block[:2]
    return np.tile(plane, nN * nC)


def allgather_input(grid, local, piece: np.ndarray) -> np.ndarray:
    """All-gather the touched elements of the input block into a fresh local work buffer.

    Collective over ``grid.k``.  Member b brings flat piece ``local.input_pieces[b]`` of the block
    In[n, c, rows_own, cols_own] (ALL its elements); only the elements whose row and column are
    touched by the layer travel (packed in flat order), so untouched rows, e.g. the odd rows of a
    1x1 stride-2 layer, never move.  Returns the (nN, nC, rows_buf, cols_buf) buffer with the block
    in place, zeros elsewhere (halos arrive later) and in untouched positions.

    Example: P_K = 2, a 1 x 1 x 2 x 2 block [[x0, x1], [x2, x3]] whose row 1 is untouched; b=0
    holds [x0, x1], b=1 holds [x2, x3].  b=0 sends [x0, x1], b=1 sends nothing; afterwards both
    buffers hold [[x0, x1], [0, 0]] at the own rows and columns.
    """
    spec = grid.plan.spec
    mine = _checked_piece(piece, local.input_pieces, grid.k.rank, spec.dtype_in, "input")
    mask = _touched_mask(local)
    starts, stops = (np.array(v, dtype=np.int64) for v in zip(*local.input_pieces))
    counts = count_masked(local.rows_touched_own, local.cols_touched_own, starts, stops)
    lo, hi = local.input_pieces[grid.k.rank]
    packed = np.ascontiguousarray(mine[mask[lo:hi]])
    received = np.empty(int(counts.sum()), dtype=spec.dtype_in)
    grid.k.Allgatherv(packed, received, counts, "input")
    block = np.zeros(mask.size, dtype=spec.dtype_in)
    block[mask] = received
    buffer = np.zeros((*local.input_block[:2], local.rows_buf[1] - local.rows_buf[0],
                       local.cols_buf[1] - local.cols_buf[0]), dtype=spec.dtype_in)
    rows = slice(local.rows_own[0] - local.rows_buf[0], local.rows_own[1] - local.rows_buf[0])
    cols = slice(local.cols_own[0] - local.cols_buf[0], local.cols_own[1] - local.cols_buf[0])
    buffer[:, :, rows, cols] = block.reshape(local.input_block)
    return buffer


def _exchange_axis(group, buffer, schedule, fixed, axis: int, origin, phase: str) -> None:
    """Move ``buffer`` entries along one spatial axis: to peer j the positions ``schedule[j][0]``
    of that axis, from peer j the positions ``schedule[j][1]``, over positions ``fixed`` of the
    other axis (all global indices; ``origin`` = global (row, col) of buffer[..., 0, 0])."""
    fixed_local = np.asarray(fixed, dtype=np.int64) - origin[1 - axis]

    def index(moving):
        moving_local = np.asarray(moving, dtype=np.int64) - origin[axis]
        if axis == 0:
            return moving_local[:, None], fixed_local[None, :]
        return fixed_local[:, None], moving_local[None, :]

    sends, recvs = {}, {}
    for peer, (send_pos, recv_pos) in enumerate(schedule):
        if peer == group.rank:
            continue
        rows, cols = index(send_pos)
        sends[peer] = np.ascontiguousarray(buffer[:, :, rows, cols])
        rows, cols = index(recv_pos)
        recvs[peer] = np.empty(buffer[:, :, rows, cols].shape, dtype=buffer.dtype)
    group.exchange(sends, recvs, phase)
    for peer, received in recvs.items():
        rows, cols = index(schedule[peer][1])
        buffer[:, :, rows, cols] = received


def exchange_halos(grid, local, buffer: np.ndarray) -> None:
    """Fill in the halo of the local work buffer: rows along H, then columns along W.

    Collective over ``grid.h`` then ``grid.w``.  Along H, rank d sends to each peer d' the rows of
    its own block that d' needs (``local.halo_h[d'][0]``) over its touched own columns; along W it
    sends the columns e' needs (``local.halo_w[e'][0]``) over ALL the rows it needs, including the
    rows just received, so corner elements travel in two hops.  Peers with an empty schedule
    exchange nothing (border ranks, or blocks thinner than the halo where several owners serve
    one row).

    Example: 2 H blocks of a 3x3 stride-1 layer, rank d=0 owns rows [0, 3), d=1 owns [3, 6);
    before, d=0's buffer holds rows 0..2, d=1's rows 3..5; d=0 sends row 2 and receives row 3,
    d=1 the opposite, so afterwards d=0 holds rows 0..3 and d=1 rows 2..5.
    """
    exchange_halo_rows(grid, local, buffer)
    exchange_halo_cols(grid, local, buffer)


def exchange_halo_rows(grid, local, buffer: np.ndarray) -> None:
    """The H step of `exchange_halos` (phase "halo_h").  Collective over ``grid.h``."""
    own_cols = local.cols_own[0] + np.flatnonzero(local.cols_touched_own)
    _exchange_axis(grid.h, buffer, local.halo_h, own_cols, 0,
                   (local.rows_buf[0], local.cols_buf[0]), "halo_h")


def exchange_halo_cols(grid, local, buffer: np.ndarray) -> None:
    """The W step of `exchange_halos` (phase "halo_w"), after the H step.  Collective over
    ``grid.w``."""
    _exchange_axis(grid.w, buffer, local.halo_w, local.rows_needed, 1,
                   (local.rows_buf[0], local.cols_buf[0]), "halo_w")


def reduce_scatter_output(grid, local, partial: np.ndarray) -> np.ndarray:
    """Sum the partial output blocks of the C group; each member keeps its flat piece.

    Collective over ``grid.c``.  Member c sends flat piece ``local.output_pieces[j]`` of its
    (nN, nK, nH, nW) partial block (dtype_acc) to member j and sums the P_C contributions to its
    own piece (integers wrap around like the accumulator hardware).  Returns the flat piece.

    Example: P_C = 2, blocks of 3 elements [p0, p1, p2] on c=0 and [q0, q1, q2] on c=1, pieces
    [0, 2) and [2, 3); afterwards c=0 holds [p0 + q0, p1 + q1], c=1 holds [p2 + q2].
    """
    spec = grid.plan.spec
    flat = np.ascontiguousarray(partial, dtype=spec.dtype_acc).reshape(-1)
    expected = int(np.prod(local.output_block))
    if flat.size != expected:
        raise ParconvRuntimeError(f"partial output has {flat.size} elements, the output block "
                                  f"{local.output_block} has {expected}")
    sendcounts = _piece_sizes(local.output_pieces)
    mine = int(sendcounts[grid.c.rank])
    received = np.empty(mine * grid.c.size, dtype=spec.dtype_acc)
    grid.c.Alltoallv(flat, sendcounts, received, np.full(grid.c.size, mine), "reduce")
    return received.reshape(grid.c.size, mine).sum(axis=0, dtype=spec.dtype_acc)
