"""A balanced initial layout and the "balance" phase that hands each rank its work piece.  Pure.

In the grid algorithm every active rank r starts from its *work piece* of each array (the flat
piece of its input block, filter block or bias block that it brings to the all-gathers,
parconv.plan.schedule).  Those pieces are uneven (owned rows follow the stride, blocks differ
by one, idle ranks have none), so a layout where every rank holds its work piece loads some
ranks with far more than their share.  In the balanced layout each of the P ranks, idle ones
included, initially owns at most ``cap = ceil(T / P)`` touched elements of an array of T touched
elements:

* a worker whose piece has ``t_r <= cap`` touched elements owns all of it;
* a worker with ``t_r > cap`` keeps its first ``cap`` touched elements (in flat order) and the
  *surplus* ``t_r - cap`` is owned by ranks with room (*deficit* ``cap - owned``);
* surpluses are matched to deficits in rank order: the surplus stream (workers' surpluses
  concatenated) and the deficit stream are cut at the union of their prefix sums, and every
  elementary interval is one segment, owned by one holder, that belongs to one worker.

The "balance" phase moves every segment's touched elements from its holder to its worker (one
message per segment; bytes = touched elements x element size), after which every worker holds
its work piece and the algorithm runs unchanged.  Untouched input elements inside a segment
are owned by the holder and never move.

The output is balanced the same way at the end (`make_output_balance`): a rank whose output
piece after the reduce-scatter has more than ``ceil(|O| / P)`` elements keeps the first ``cap``
and sends the surplus, as finished outputs, to ranks with room in phase "balance_out"; the roles
are reversed (the *worker* computed the segment and sends it, the *holder* owns it at the end).
Theorem 4.3 of docs/theory.md assumes both ends balanced.

Everything per rank is found by binary search in the two O(P) prefix sums; the phase's
prediction over all ranks is vectorised.  Example: touched counts per rank (5, 1, 0) -> T = 6,
cap = 2; rank 0 keeps 2 and has surplus 3; rank 1 has deficit 1, rank 2 deficit 2; segments:
touched [2, 3) of rank 0's piece held by rank 1, [3, 5) held by rank 2.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property

import numpy as np

#: the arrays the balanced initial layout covers (the output: `make_output_balance`)
ARRAYS = ("input", "filter", "bias")
#: the array the balanced final layout covers
OUTPUT = "output"


@dataclasses.dataclass(frozen=True, eq=False)
class Balance:
    """The balanced initial ownership of one array over P ranks.

    ``counts[r]``: touched elements of rank r's work piece (0 on idle ranks); ``itemsize``: bytes
    per element moved.  Segments are given as touched-index ranges ``[u0, u1)`` within the
    worker's piece (its touched elements counted from 0 in flat order).
    """

    name: str
    counts: np.ndarray
    itemsize: int

    @cached_property
    def total(self) -> int:
        return int(self.counts.sum())

    @cached_property
    def cap(self) -> int:
        """Most touched elements any rank owns initially: ceil(T / P)."""
        P = self.counts.size
        return -(-self.total // P) if P else 0

    @cached_property
    def surplus_starts(self) -> np.ndarray:
        """P + 1 prefix sums of the surpluses max(counts - cap, 0)."""
        return np.concatenate(([0], np.cumsum(np.maximum(self.counts - self.cap, 0))))

    @cached_property
    def deficit_starts(self) -> np.ndarray:
        """P + 1 prefix sums of the room cap - min(counts, cap) each rank has."""
        return np.concatenate(([0], np.cumsum(self.cap - np.minimum(self.counts, self.cap))))

    # ---- one rank (binary searches, O(segments of that rank)) -----------------------------------
    def kept(self, rank: int) -> int:
        """Touched elements of its own work piece ``rank`` owns initially (the first ones)."""
        return int(min(self.counts[rank], self.cap))

    def owned(self, rank: int) -> int:
        """Touched elements ``rank`` owns initially: kept plus held segments (<= cap)."""
        return int(self.owned_all[rank])

    @cached_property
    def owned_all(self) -> np.ndarray:
        """`owned` of every rank (length P), from the two prefix sums."""
        total = self.surplus_starts[-1]
        held = np.minimum(self.deficit_starts[1:], total) - np.minimum(self.deficit_starts[:-1],
                                                                       total)
        return np.minimum(self.counts, self.cap) + held

    @staticmethod
    def _cut(starts_b, lo, hi):
        """Elementary intervals of the stream range [lo, hi) cut at the prefix sums
        ``starts_b`` of the other stream: (index in it, start, stop) arrays."""
        if hi <= lo:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        first = int(np.searchsorted(starts_b, lo, side="right")) - 1
        last = int(np.searchsorted(starts_b, hi - 1, side="right")) - 1
        owners = np.arange(first, last + 1, dtype=np.int64)
        starts = np.maximum(starts_b[owners], lo)
        stops = np.minimum(starts_b[owners + 1], hi)
        keep = stops > starts
        return owners[keep], starts[keep], stops[keep]

    def receives(self, worker: int) -> tuple[np.ndarray, np.ndarray]:
        """In the balance phase ``worker`` receives, from each holder in ``holders``, the
        touched elements ``ranges[i] = [u0, u1)`` of its own piece.  Returns (holders,
        ranges (m, 2))."""
        lo, hi = self.surplus_starts[worker], self.surplus_starts[worker + 1]
        holders, starts, stops = self._cut(self.deficit_starts, lo, hi)
        base = self.cap - lo
        return holders, np.stack([starts + base, stops + base], axis=1)

    def holds(self, holder: int) -> tuple[np.ndarray, np.ndarray]:
        """The segments ``holder`` owns initially and sends in the balance phase: (workers,
        ranges (m, 2)) with ``ranges[i]`` touched indices within ``workers[i]``'s piece."""
        lo, hi = self.deficit_starts[holder], self.deficit_starts[holder + 1]
        hi = min(hi, self.surplus_starts[-1])
        workers, starts, stops = self._cut(self.surplus_starts, lo, hi)
        base = self.cap - self.surplus_starts[workers]
        return workers, np.stack([starts + base, stops + base], axis=1)

    # ---- every rank (vectorised) ----------------------------------------------------------------
    @cached_property
    def segments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(holder, worker, touched elements) of every segment, in stream order (both
        nondecreasing along it)."""
        total = self.surplus_starts[-1]
        if total == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        cuts = _merged_distinct([self.surplus_starts,
                                 self.deficit_starts[self.deficit_starts <= total]])
        lo, hi = cuts[:-1], cuts[1:]
        worker = np.searchsorted(self.surplus_starts, lo, side="right") - 1
        holder = np.searchsorted(self.deficit_starts, lo, side="right") - 1
        return holder.astype(np.int64), worker.astype(np.int64), (hi - lo).astype(np.int64)

    @cached_property
    def predicted(self) -> dict:
        """``{"sent", "received", "messages"}`` of this array's part of the balance phase
        (arrays of length P): each holder sends its segments, one message a segment (a pair
        (holder, worker) has one segment per array)."""
        return _moved([self], reverse=False)


def _merged_distinct(keys: list) -> np.ndarray:
    """The distinct values of several nondecreasing arrays, sorted: the stable sort merges their
    runs, cheaper than np.unique's full sort, which the planner would pay for every grid."""
    merged = np.concatenate(keys)
    merged.sort(kind="stable")
    keep = np.ones(merged.size, dtype=bool)
    keep[1:] = merged[1:] != merged[:-1]
    return merged[keep]


def _moved(balances: list, reverse: bool) -> dict:
    """Bytes sent and received and messages per rank (arrays of length P) of moving every
    segment of ``balances`` at once: from holder to worker, or with ``reverse`` from worker to
    holder; one message per distinct (sender, receiver) pair, all arrays together."""
    P = balances[0].counts.size
    sent, received = np.zeros(P, dtype=np.int64), np.zeros(P, dtype=np.int64)
    keys = []
    for balance in balances:
        holder, worker, count = balance.segments
        sender, receiver = (worker, holder) if reverse else (holder, worker)
        size = count * balance.itemsize
        sent += np.bincount(sender, weights=size, minlength=P).astype(np.int64)
        received += np.bincount(receiver, weights=size, minlength=P).astype(np.int64)
        keys.append(sender * P + receiver)   # nondecreasing in stream order
    pairs = _merged_distinct(keys)
    return {"sent": sent, "received": received,
            "messages": np.bincount(pairs // P, minlength=P).astype(np.int64)}


def predict_balance(balances: dict) -> dict:
    """The "balance" phase over all arrays: bytes add up; a holder sends one message to each
    distinct worker (its segments of all arrays travel together).  Arrays of length P."""
    return _moved(list(balances.values()), reverse=False)


def predict_output_balance(balance: Balance) -> dict:
    """The "balance_out" phase: every worker sends its surplus output segments to their holders,
    one message per (worker, holder) pair (the balance phase reversed).  Arrays of length P."""
    return _moved([balance], reverse=True)


def make_output_balance(spec, output_counts, ranks: int) -> Balance:
    """The `Balance` of the output over ``ranks`` ranks (idle ranks included): every element of
    an output piece is owned by someone at the end, so the counts are the piece sizes of the
    active ranks (``output_counts``) and the element size is the stored output's.  Local, pure."""
    counts = np.zeros(ranks, dtype=np.int64)
    values = np.asarray(output_counts, dtype=np.int64).reshape(-1)
    counts[:values.size] = values
    return Balance(OUTPUT, counts, spec.p_out)


def final_layout(balance: Balance, schedule_of, rank: int) -> dict:
    """What ``rank`` owns at the end in the balanced final layout of the output and what it
    moves in "balance_out".  ``schedule_of(r)``: rank r's RankSchedule (None when idle).

    Returns ``{"kept": flat range (lo, hi) of its own output block it keeps (None when it has no
    piece), "sends": [(holder, lo, hi)] flat ranges of its own block it sends, "held": [(worker,
    lo, hi)] flat ranges of other workers' blocks it receives, "boxes": global (N, K, H, W)
    boxes of what it owns, kept first, then held in order}``.  Local; O(its segments).
    Example: piece sizes (5, 1, 0), cap 2: rank 0 keeps flat [0, 2) of its piece and sends
    [2, 3) to rank 1 and [3, 5) to rank 2.
    """
    mine = schedule_of(rank)
    out = {"kept": None, "sends": [], "held": [], "boxes": []}
    if mine is not None and balance.counts[rank] > 0:
        lo = mine.output_piece[0]
        out["kept"] = (int(lo), int(lo) + balance.kept(rank))
        out["boxes"] += mine.block_boxes(OUTPUT, *out["kept"])
        holders, ranges = balance.receives(rank)   # the segments of its piece others own
        out["sends"] = [(int(h), int(lo + a), int(lo + b)) for h, (a, b) in zip(holders, ranges)]
    workers, ranges = balance.holds(rank)
    for worker, (a, b) in zip(workers.tolist(), ranges.tolist()):
        theirs = schedule_of(worker)
        base = theirs.output_piece[0]
        out["held"].append((worker, int(base + a), int(base + b)))
        out["boxes"] += theirs.block_boxes(OUTPUT, int(base + a), int(base + b))
    return out


def _flat(schedule, array: str, ranges: np.ndarray) -> np.ndarray:
    """Touched-index ranges (m, 2) of a worker's piece as flat ranges (m, 2) of its block."""
    if ranges.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    return schedule.piece_flat_of_touched(array, ranges)


def rank_layout(balances: dict, schedule_of, rank: int) -> dict:
    """What ``rank`` owns initially in the balanced layout and what it moves in the balance
    phase, per array.  ``schedule_of(r)`` gives rank r's RankSchedule (None when idle).

    Returns ``{array: {"touched": owned touched elements, "kept": flat range (lo, hi) of its
    own work piece it owns (None when it has none), "held": [(worker, lo, hi)] flat ranges of
    other workers' blocks it owns and sends to them, "received": [(holder, lo, hi)] flat ranges
    of its own block it receives, "kept_boxes", "held_boxes": global boxes}}``.  Local; costs
    O(its segments), each needing that worker's schedule.
    """
    mine = schedule_of(rank)
    out = {}
    for name, balance in balances.items():
        entry = {"touched": balance.owned(rank), "kept": None, "held": [], "received": [],
                 "kept_boxes": [], "held_boxes": []}
        if mine is not None and balance.counts[rank] > 0:
            lo = (mine.input_piece if name == "input" else
                  (mine.bias_split if name == "bias" else mine.filter_split)
                  .piece(mine.filter_index))[0]
            stop = int(_flat(mine, name, np.array([balance.kept(rank)]))[0])
            entry["kept"] = (int(lo), stop)
            entry["kept_boxes"] = mine.block_boxes(name, int(lo), stop)
            holders, ranges = balance.receives(rank)
            flat = _flat(mine, name, ranges)
            entry["received"] = [(int(h), int(a), int(b)) for h, (a, b) in zip(holders, flat)]
        workers, ranges = balance.holds(rank)
        for worker, touched in zip(workers.tolist(), ranges):
            theirs = schedule_of(worker)
            a, b = (int(v) for v in _flat(theirs, name, touched[None, :])[0])
            entry["held"].append((worker, a, b))
            entry["held_boxes"] += theirs.block_boxes(name, a, b)
        out[name] = entry
    return out


def layout_elements(balances: dict, schedule_of, ranks: int) -> dict:
    """Elements (touched or not) of each array that each of the ``ranks`` ranks owns in the
    balanced layout: the sizes of its kept and held boxes (arrays of length ``ranks``).  Local;
    builds every rank's layout (O(P) schedules)."""
    out = {name: np.zeros(ranks, dtype=np.int64) for name in balances}
    for rank in range(ranks):
        for name, entry in rank_layout(balances, schedule_of, rank).items():
            out[name][rank] = sum(int(np.prod([hi - lo for lo, hi in box]))
                                  for box in entry["kept_boxes"] + entry["held_boxes"])
    return out


def make_balance(spec, owned_touched: dict, ranks: int) -> dict:
    """The `Balance` of each array of ``ARRAYS`` over ``ranks`` ranks (idle ranks included),
    from the touched elements of every active rank's work piece (``owned_touched``: arrays over
    the active ranks).  Local, pure."""
    itemsize = {"input": spec.p_in, "filter": spec.p_weight, "bias": spec.p_bias}
    out = {}
    for name in ARRAYS:
        counts = np.zeros(ranks, dtype=np.int64)
        values = np.asarray(owned_touched[name], dtype=np.int64)
        counts[:values.size] = values
        out[name] = Balance(name, counts, itemsize[name])
    return out
