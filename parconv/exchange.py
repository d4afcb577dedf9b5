"""The exchanges of the grid algorithm (theory.md section 5) on a `ProcGrid`.

Each function is collective over one group communicator of the grid and takes this rank's
`RankLocal` (parconv.plan) for the block geometry; the byte counts come from the buffers handed to
MPI (parconv.comm), the plan only says which elements go where.

    allgather_filter   (1) filter block F[k, c] over the N-H-W group        phase "filter"
    allgather_bias     (1) bias block bias[k] over the N-H-W group (c == 0)  phase "bias"
    allgather_input    (2) touched elements of In[n, c, own rows, own cols]
                           over the K group, into the local work buffer      phase "input"
    exchange_halos     (3) rows along H, then columns along W               "halo_h", "halo_w"
    reduce_scatter_output (5) partial sums over the C group                 phase "reduce"
"""

from __future__ import annotations

import numpy as np

from .blocks import count_masked, read_boxes, write_boxes
from .errors import ParconvRuntimeError


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


# ---- data distribution from and to one root (phases "scatter", "gather", "check") -------------

def _owned_parts(plan, rank: int) -> list[tuple[str, list]]:
    """(dtype, global boxes) of the input, filter and bias pieces ``rank`` owns at the start;
    empty for an idle rank, no boxes for an empty piece."""
    local, spec = plan.local(rank), plan.spec
    if local is None:
        return []
    bias = local.bias_piece_range()
    return [(spec.dtype_in, local.input_piece_boxes()),
            (spec.dtype_weight, local.filter_piece_boxes()),
            (spec.dtype_acc, [] if bias is None else [(bias,)])]


def _count(boxes) -> int:
    return sum(int(np.prod([hi - lo for lo, hi in box])) for box in boxes)


def _parts_bytes(parts) -> int:
    return sum(np.dtype(dtype).itemsize * _count(boxes) for dtype, boxes in parts)


def _as_bytes(arrays) -> np.ndarray:
    """Concatenate the raw bytes of ``arrays`` (C order) into one uint8 buffer."""
    raw = [np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays]
    return np.concatenate(raw) if raw else np.zeros(0, dtype=np.uint8)


def _unpack(raw: np.ndarray, parts) -> list[np.ndarray]:
    """Split a byte buffer into the typed pieces of ``parts`` (copies: offsets may be unaligned)."""
    out, offset = [], 0
    for dtype, boxes in parts:
        nbytes = np.dtype(dtype).itemsize * _count(boxes)
        out.append(np.frombuffer(raw[offset:offset + nbytes].tobytes(), dtype=dtype))
        offset += nbytes
    return out


def scatter_owned(grid, x, w, bias, root: int) -> list[np.ndarray] | None:
    """Hand every active rank its owned input, filter and bias pieces from the root's arrays.

    Collective over ``grid.world`` (phase "scatter").  The root holds the global ``x`` (N, C, H_in,
    W_in), ``w`` (K, C, R, S) and ``bias`` (K,) or None, already validated; the other ranks pass
    anything.  Each rank's three pieces travel as one byte message.  Returns ``[input_piece,
    filter_piece, bias_piece]`` (flat; the bias piece is empty where the rank owns none), or None
    on idle ranks.  Example: 2 ranks on grid 1x2x1x1x1 of a layer with C = K = 2: rank 1 receives
    half of In (flat order of the whole input block) and half of its filter block F[1, :, :, :].
    """
    plan = grid.plan
    sendbuf, counts = None, None
    if grid.world.rank == root:
        raw = [_as_bytes([read_boxes(array, boxes) for array, (_, boxes) in
                          zip((x, w, bias), _owned_parts(plan, r)) if boxes])
               for r in range(plan.active)]
        counts = np.zeros(plan.ranks, dtype=np.int64)
        counts[:plan.active] = [part.size for part in raw]
        sendbuf = np.concatenate(raw)
    parts = _owned_parts(plan, grid.world.rank)
    received = np.empty(_parts_bytes(parts), dtype=np.uint8)
    grid.world.Scatterv(sendbuf, counts, received, root, "scatter")
    return _unpack(received, parts) if parts else None


def gather_owned(grid, pieces, root: int, phase: str = "check"):
    """The inverse of `scatter_owned`: assemble the global ``x``, ``w``, ``bias`` on the root.

    Collective over ``grid.world``.  ``pieces`` is this rank's [input, filter, bias] flat pieces
    (ignored on idle ranks).  Returns ``(x, w, bias or None)`` on the root, None elsewhere.
    """
    plan, spec = grid.plan, grid.plan.spec
    parts = _owned_parts(plan, grid.world.rank)
    mine = _as_bytes([np.asarray(p if p is not None else [], dtype=dtype)
                      for p, (dtype, _) in zip(pieces or [], parts)])
    counts, raw, everyone = None, None, None
    if grid.world.rank == root:
        everyone = [_owned_parts(plan, r) for r in range(plan.ranks)]
        counts = np.array([_parts_bytes(p) for p in everyone], dtype=np.int64)
        raw = np.empty(int(counts.sum()), dtype=np.uint8)
    grid.world.Gatherv(mine, raw, counts, root, phase)
    if grid.world.rank != root:
        return None
    x = np.zeros(spec.input_shape, dtype=spec.dtype_in)
    w = np.zeros(spec.weight_shape, dtype=spec.dtype_weight)
    b = np.zeros(spec.out_channels, dtype=spec.dtype_acc) if spec.bias else None
    offsets = np.concatenate(([0], np.cumsum(counts)))
    for r in range(plan.active):
        typed = _unpack(raw[offsets[r]:offsets[r + 1]], everyone[r])
        for array, (_, boxes), part in zip((x, w, b), everyone[r], typed):
            if boxes:
                write_boxes(array, boxes, part)
    return x, w, b


def gather_output(grid, piece: np.ndarray | None, root: int) -> np.ndarray | None:
    """Assemble the global output (N, K, H, W) on the root from every rank's owned piece.

    Collective over ``grid.world`` (phase "gather").  ``piece`` is this rank's flat output piece
    (dtype_out; None on idle ranks).  Returns the output on the root, None elsewhere.  Example:
    P_C = 2, rank c=0 owns the first half of the flat block (a, b, d, e), rank c=1 the second;
    the root writes both halves into Out[n block, k block, h block, w block].
    """
    plan, spec = grid.plan, grid.plan.spec
    mine = np.zeros(0, dtype=spec.dtype_out) if piece is None else \
        np.ascontiguousarray(piece, dtype=spec.dtype_out).reshape(-1)
    counts, out = None, None
    if grid.world.rank == root:
        counts = np.zeros(plan.ranks, dtype=np.int64)
        counts[:plan.active] = [int(np.diff(plan.local(r).output_piece)[0])
                                for r in range(plan.active)]
        out = np.empty(int(counts.sum()), dtype=spec.dtype_out)
    grid.world.Gatherv(mine, out, counts, root, "gather")
    if grid.world.rank != root:
        return None
    result = np.zeros(spec.output_shape, dtype=spec.dtype_out)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    for r in range(plan.active):
        write_boxes(result, plan.local(r).output_piece_boxes(), out[offsets[r]:offsets[r + 1]])
    return result
