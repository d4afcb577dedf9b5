"""The "balance_out" phase: from every rank's output piece to the balanced final layout.

After the reduce-scatter each active rank owns its output piece, a flat piece of its output
block.  Blocks differ by one and idle ranks own nothing, so a piece can exceed the
``ceil(|O| / P)`` outputs the problem's bound lets a rank own at the end (docs/theory.md 4.1).
In the balanced final layout (`parconv.plan.balance.final_layout`) such a rank keeps the first
``cap`` elements of its piece and sends the rest, as finished outputs (dtype_out), to ranks with
room; idle ranks included.  The bytes a rank sends here count in its bound-comparable volume
like the partial sums of "reduce".  Example: piece sizes (5, 1, 0), cap 2: rank 0 keeps
elements [0, 2) of its piece, sends [2, 3) to rank 1 and [3, 5) to rank 2.
"""

from __future__ import annotations

import numpy as np

from ..errors import ParconvRuntimeError

PHASE = "balance_out"
_TAG = 13


class OutputBalanceExchange:
    """One rank's part of "balance_out", planned once from the plan (local construction); `run`
    is collective over ``world`` (every rank calls it, ranks with nothing to move return at once).

    Attributes
    ----------
    boxes : list of global (N, K, H, W) boxes this rank owns at the end, in the order of the
        flat output `run` returns (its kept part first, then the held segments).
    """

    def __init__(self, world, plan, rank: int) -> None:
        self.world, self.rank = world, rank
        self.dtype = np.dtype(plan.spec.dtype_out)
        layout = plan.final_layout(rank)
        local = plan.schedule(rank)
        self.boxes = layout["boxes"]
        base = local.output_piece[0] if local is not None else 0
        self._piece_size = int(np.diff(local.output_piece)[0]) if local is not None else 0
        self._kept = None if layout["kept"] is None else \
            (layout["kept"][0] - base, layout["kept"][1] - base)
        item = self.dtype.itemsize
        self._sends = [(holder, lo - base, hi - base) for holder, lo, hi in layout["sends"]]
        self.sends, self.recvs = {}, {}
        for holder, lo, hi in self._sends:   # one segment per (worker, holder) pair
            self.sends[holder] = np.empty((hi - lo) * item, np.uint8)
        self._held = [(worker, hi - lo) for worker, lo, hi in layout["held"]]
        for worker, count in self._held:
            self.recvs[worker] = np.empty(count * item, np.uint8)
        if len(self.sends) != len(self._sends) or len(self.recvs) != len(self._held):
            raise ParconvRuntimeError(f"balance_out: rank {rank} has two segments with one peer")

    def run(self, piece: np.ndarray | None) -> np.ndarray:
        """Send the surplus of ``piece`` (this rank's flat output piece after the reduce, dtype
        convertible to dtype_out; None on idle ranks) to its holders and receive the segments
        this rank holds.  Collective over ``world``.  Returns the flat outputs this rank owns
        at the end, in the order of `boxes` (None on an idle rank that holds none)."""
        mine = np.zeros(0, self.dtype) if piece is None else \
            np.ascontiguousarray(piece, dtype=self.dtype).reshape(-1)
        if mine.size != self._piece_size:
            raise ParconvRuntimeError(f"balance_out: rank {self.rank} has an output piece of "
                                      f"{mine.size} elements, its plan {self._piece_size}")
        for holder, lo, hi in self._sends:
            self.sends[holder][:] = mine[lo:hi].view(np.uint8)
        self.world.exchange(self.sends, self.recvs, PHASE, tag=_TAG)
        if piece is None and not self._held:
            return None
        parts = [] if self._kept is None else [mine[self._kept[0]:self._kept[1]]]
        parts += [np.frombuffer(self.recvs[worker].tobytes(), dtype=self.dtype)
                  for worker, _ in self._held]
        return np.concatenate(parts) if parts else np.zeros(0, self.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes of the send and receive buffers."""
        return sum(b.nbytes for table in (self.sends, self.recvs) for b in table.values())
