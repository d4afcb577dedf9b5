"""The "balance" phases: from the balanced initial layout to every worker's work piece.

In the balanced layout (parconv.plan.balance) each of the P ranks, idle ones included, owns at
most ceil(T / P) touched elements of the input, the filter and the bias: the *kept* flat range of
its own work piece and *held* flat ranges of other workers' blocks.  `BalanceExchange` is built
once per rank from the plan: the boxes it must obtain from the data source, the touched masks
of its held ranges, the per-peer send and receive buffers and the places in its work pieces
where the received elements go.  Then

* `load` fills the kept part of the work pieces and packs the held touched elements (the values
  come from a data source, `load_source`, or from the root's scatter of the initial layout);
* `run` moves every segment from its holder to its worker, point to point through the world
  `CountedComm`: phase "balance" carries input and filter (one message per holder and worker),
  phase "balance_bias" the bias, so that the bias bytes stay out of the bound-comparable volume
  as in "filter" / "bias".  Counted bytes are the touched elements x element size, exactly
  ``plan.predicted["balance"]`` and ``plan.predicted["balance_bias"]``.

Untouched input elements inside a held range are owned by the holder and never move; the worker's
work piece has zeros there (the input all-gather packs touched elements only, so they are never
read).  Example: touched counts per rank (5, 1, 0), cap 2: rank 0 keeps its first 2 touched
elements, receives touched [2, 3) from rank 1 and [3, 5) from rank 2.
"""

from __future__ import annotations

import numpy as np

from ..errors import ParconvRuntimeError
from ..plan.balance import ARRAYS

#: data-source names of the arrays (parconv.data) and the phase each array travels in
SOURCE_NAMES = {"input": "input", "filter": "weight", "bias": "bias"}
PHASE_OF = {"input": "balance", "filter": "balance", "bias": "balance_bias"}
_TAGS = {"balance": 11, "balance_bias": 12}


def _count(boxes) -> int:
    return sum(int(np.prod([hi - lo for lo, hi in box])) for box in boxes)


def touched_mask(local, array: str, lo: int, hi: int) -> np.ndarray | None:
    """Which elements of flat range [lo, hi) of ``local``'s ``array`` block are touched (None:
    all of them, as for filter and bias).  Local."""
    if array != "input":
        return None
    rows = np.asarray(local.rows_touched_own, bool)
    cols = np.asarray(local.cols_touched_own, bool)
    if rows.all() and cols.all():
        return None
    plane = np.outer(rows, cols).reshape(-1)
    return plane[np.arange(lo, hi, dtype=np.int64) % max(plane.size, 1)]


def _dtypes(spec) -> dict:
    return {"input": np.dtype(spec.dtype_in), "filter": np.dtype(spec.dtype_weight),
            "bias": np.dtype(spec.dtype_acc)}


def initial_parts(plan, rank: int, layout: dict | None = None) -> list:
    """``(array, dtype, global boxes)`` of what ``rank`` owns in the balanced layout, in the
    order `BalanceExchange.load` takes them: per array its kept boxes, then each held range's
    boxes.  Local, pure (needs the schedules of the workers whose ranges it holds)."""
    layout = plan.initial_layout(rank) if layout is None else layout
    dtypes, out = _dtypes(plan.spec), []
    for name in ARRAYS:
        out.append((name, dtypes[name], layout[name]["kept_boxes"]))
        out += [(name, dtypes[name], plan.schedule(worker).block_boxes(name, a, b))
                for worker, a, b in layout[name]["held"]]
    return out


class BalanceExchange:
    """One rank's part of the balance phases, planned once.  Construction is local (it needs
    the schedules of the workers whose ranges it holds); `run` is collective over ``world``
    (every rank calls it; ranks with nothing to move return at once after the exchange).

    Attributes
    ----------
    parts : list of (array, dtype, boxes)
        The global boxes this rank obtains in `load`, in order: per array its kept boxes, then
        each held range's boxes (the layout the root scatter hands out).
    pieces : [input, filter, bias] work pieces (flat, dtype of each array; None on idle ranks)
        complete after `run`.
    """

    def __init__(self, world, plan, rank: int) -> None:
        spec = plan.spec
        self.world, self.rank = world, rank
        self.dtypes = _dtypes(spec)
        layout = plan.initial_layout(rank)
        local = plan.schedule(rank)
        # _roles[i]: None for a kept part, else (phase, worker, byte offset, bytes, mask)
        self.parts = initial_parts(plan, rank, layout)
        self._roles, self._kept, self._received = [], {}, []
        self.pieces = None
        if local is not None:
            lo_of = {"input": local.input_piece[0], "filter": local.filter_piece[0],
                     "bias": (local.bias_split.piece(local.filter_index)[0]
                              if local.bias_split is not None else 0)}
            sizes = {"input": np.diff(local.input_piece)[0],
                     "filter": np.diff(local.filter_piece)[0],
                     "bias": (np.diff(local.bias_split.piece(local.filter_index))[0]
                              if local.bias_split is not None else 0)}
            self.pieces = [np.zeros(int(sizes[name]), dtype=self.dtypes[name]) for name in ARRAYS]
        # send / receive byte counts per peer and phase, filled in array order on both sides
        send_bytes = {phase: {} for phase in _TAGS}
        recv_bytes = {phase: {} for phase in _TAGS}
        for index, name in enumerate(ARRAYS):
            entry, item = layout[name], self.dtypes[name].itemsize
            self._roles.append(None)
            if entry["kept"] is not None:
                a, b = entry["kept"]
                self._kept[name] = (index, a - lo_of[name], b - lo_of[name])
            phase = PHASE_OF[name]
            for worker, a, b in entry["held"]:
                theirs = plan.schedule(worker)
                mask = touched_mask(theirs, name, a, b)
                count = (b - a) if mask is None else int(mask.sum())
                offset = send_bytes[phase].get(worker, 0)
                self._roles.append((phase, worker, offset, count * item, mask))
                send_bytes[phase][worker] = offset + count * item
            for holder, a, b in entry["received"]:
                mask = touched_mask(local, name, a, b)
                count = (b - a) if mask is None else int(mask.sum())
                offset = recv_bytes[phase].get(holder, 0)
                view = self.pieces[index][a - lo_of[name]:b - lo_of[name]]
                self._received.append((phase, holder, offset, count, view, mask))
                recv_bytes[phase][holder] = offset + count * item
        self.sends = {phase: {peer: np.empty(n, np.uint8) for peer, n in table.items()}
                      for phase, table in send_bytes.items()}
        self.recvs = {phase: {peer: np.empty(n, np.uint8) for peer, n in table.items()}
                      for phase, table in recv_bytes.items()}
        self._loaded = False

    def load(self, values: list) -> None:
        """Take the values of `parts` (one flat array per part, in order) from the data source
        or the root's scatter: kept parts go into the work pieces, held parts are packed into
        the send buffers (touched elements only).  Local."""
        if len(values) != len(self.parts):
            raise ParconvRuntimeError(f"balance: {len(values)} parts given, the layout of rank "
                                      f"{self.rank} has {len(self.parts)}")
        for (name, dtype, boxes), role, value in zip(self.parts, self._roles, values):
            value = np.asarray(value, dtype=dtype).reshape(-1)
            if value.size != _count(boxes):
                raise ParconvRuntimeError(f"balance: a {name} part of rank {self.rank} has "
                                          f"{value.size} elements, its boxes {_count(boxes)}")
            if role is None:
                if name in self._kept:
                    index, a, b = self._kept[name]
                    self.pieces[index][a:b] = value
                continue
            phase, worker, offset, nbytes, mask = role
            packed = np.ascontiguousarray(value if mask is None else value[mask])
            self.sends[phase][worker][offset:offset + nbytes] = packed.view(np.uint8)
        self._loaded = True

    def load_source(self, source) -> None:
        """`load` from a data source (``read(name, boxes)``, parconv.data): this rank reads or
        makes exactly the boxes of its initial layout.  Local."""
        self.load([source.read(SOURCE_NAMES[name], boxes) if boxes
                   else np.zeros(0, dtype=dtype) for name, dtype, boxes in self.parts])

    def run(self) -> list | None:
        """Move every held segment to its worker (phases "balance", then "balance_bias") and
        put the received touched elements into the work pieces.  Collective over ``world``.
        Returns ``[input, filter, bias]`` work pieces (None on idle ranks)."""
        if not self._loaded:
            raise ParconvRuntimeError("balance: run before load")
        for phase, tag in _TAGS.items():
            self.world.exchange(self.sends[phase], self.recvs[phase], phase, tag=tag)
        for phase, holder, offset, count, view, mask in self._received:
            item = view.dtype.itemsize
            raw = self.recvs[phase][holder][offset:offset + count * item]
            got = np.frombuffer(raw.tobytes(), dtype=view.dtype)   # copy: offsets unaligned
            if mask is None:
                view[:] = got
            else:
                view[mask] = got
        return self.pieces

    @property
    def nbytes(self) -> int:
        """Bytes of the send and receive buffers (the work pieces are counted by the caller)."""
        return sum(b.nbytes for table in (*self.sends.values(), *self.recvs.values())
                   for b in table.values())
