"""Data distribution from and to one root: phases "scatter", "gather" and "check".

`OwnedBlocks` is what one rank owns at the start.  `scatter_owned` hands every rank its pieces from
global arrays on a root, `gather_owned` and `gather_output` assemble global arrays on a root.
They run only when the caller holds global arrays on the root or asks for the whole output
(``gather``); by default every rank reads or makes its own pieces (parconv.data) and nothing is
scattered or gathered.  The root's loops over all ranks here are O(P) by nature.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..plan.blocks import read_boxes, write_boxes
from .balance import initial_parts


@dataclasses.dataclass
class OwnedBlocks:
    """The flat pieces one rank owns at the start (read by parconv.mpi.hdf5, or made by a caller).

    ``input_piece`` covers ``plan.schedule(rank).input_piece_boxes()`` in order (dtype_in),
    ``filter_piece`` the filter boxes (dtype_weight), ``bias_piece`` the bias range (dtype_acc)
    or None where the rank owns no bias.  Idle ranks pass empty arrays.
    """

    input_piece: np.ndarray
    filter_piece: np.ndarray
    bias_piece: np.ndarray | None = None


def _owned_parts(plan, rank: int) -> list[tuple[str, list]]:
    """(dtype, global boxes) of the input, filter and bias pieces ``rank`` owns at the start;
    empty for an idle rank, no boxes for an empty piece."""
    local, spec = plan.schedule(rank), plan.spec
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


def scatter_owned(grid, plan, x, w, bias, root: int) -> list[np.ndarray] | None:
    """Hand every active rank its owned input, filter and bias pieces from the root's arrays.

    Collective over ``grid.world`` (phase "scatter").  The root holds the global ``x`` (N, C, H_in,
    W_in), ``w`` (K, C, R, S) and ``bias`` (K,) or None, already validated; the other ranks pass
    anything.  Each rank's three pieces travel as one byte message.  Returns ``[input_piece,
    filter_piece, bias_piece]`` (flat; the bias piece is empty where the rank owns none), or None
    on idle ranks.  Example: 2 ranks on grid 1x2x1x1x1 of a layer with C = K = 2: rank 1 receives
    half of In (flat order of the whole input block) and half of its filter block F[1, :, :, :].
    """
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


def scatter_initial(grid, plan, parts, x, w, bias, root: int) -> list[np.ndarray]:
    """Hand every rank (idle ones included) the values of its balanced initial layout from the
    root's arrays, for the "balance" phases (parconv.mpi.balance).

    Collective over ``grid.world`` (phase "scatter").  ``parts``: this rank's ``(array, dtype,
    boxes)`` (`BalanceExchange.parts`); the root also builds every other rank's.  Returns one
    flat typed array per part.  The root's loop over all ranks is O(P) by nature.
    """
    arrays = {"input": x, "filter": w, "bias": bias}
    sendbuf, counts = None, None
    if grid.world.rank == root:
        raw = []
        for r in range(plan.ranks):
            theirs = parts if r == root else initial_parts(plan, r)
            raw.append(_as_bytes([read_boxes(arrays[name], boxes) for name, _, boxes in theirs
                                  if boxes]))
        counts = np.array([part.size for part in raw], dtype=np.int64)
        sendbuf = np.concatenate(raw)
    typed = [(dtype, boxes) for _, dtype, boxes in parts]
    received = np.empty(_parts_bytes(typed), dtype=np.uint8)
    grid.world.Scatterv(sendbuf, counts, received, root, "scatter")
    return _unpack(received, typed)


def gather_owned(grid, plan, pieces, root: int, phase: str = "check"):
    """The inverse of `scatter_owned`: assemble the global ``x``, ``w``, ``bias`` on the root.

    Collective over ``grid.world``.  ``pieces`` is this rank's [input, filter, bias] flat pieces
    (ignored on idle ranks).  Returns ``(x, w, bias or None)`` on the root, None elsewhere.
    """
    spec = plan.spec
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


def owned_output_boxes(plan, rank: int, balanced: bool) -> list:
    """Global boxes of the outputs ``rank`` owns at the end: its part of the balanced final
    layout (after "balance_out"), or its output piece when the run was not balanced.  Local."""
    if balanced:
        return plan.final_layout(rank)["boxes"]
    return plan.schedule(rank).output_piece_boxes() if plan.is_active(rank) else []


def gather_output(grid, plan, piece: np.ndarray | None, root: int,
                  balanced: bool = True) -> np.ndarray | None:
    """Assemble the global output (N, K, H, W) on the root from every rank's owned outputs.

    Collective over ``grid.world`` (phase "gather").  ``piece`` is the flat outputs this rank
    owns (dtype_out, in the order of `owned_output_boxes`; None when it owns none).  Returns the
    output on the root, None elsewhere; the root builds every rank's boxes (O(P), like any
    gather).  Example: P_C = 2, unbalanced, rank c=0 owns the first half of the flat block
    (a, b, d, e), rank c=1 the second; the root writes both halves into Out[n block, k block,
    h block, w block].
    """
    spec = plan.spec
    mine = np.zeros(0, dtype=spec.dtype_out) if piece is None else \
        np.ascontiguousarray(piece, dtype=spec.dtype_out).reshape(-1)
    counts, out, boxes = None, None, None
    if grid.world.rank == root:
        boxes = [owned_output_boxes(plan, r, balanced) for r in range(plan.ranks)]
        counts = np.array([sum(int(np.prod([hi - lo for lo, hi in box])) for box in mine_boxes)
                           for mine_boxes in boxes], dtype=np.int64)
        out = np.empty(int(counts.sum()), dtype=spec.dtype_out)
    grid.world.Gatherv(mine, out, counts, root, "gather")
    if grid.world.rank != root:
        return None
    result = np.zeros(spec.output_shape, dtype=spec.dtype_out)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    for r in range(plan.ranks):
        if counts[r]:
            write_boxes(result, boxes[r], out[offsets[r]:offsets[r + 1]])
    return result
