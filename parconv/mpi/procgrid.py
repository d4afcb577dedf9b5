"""The processor grid: the communicators of one grid over a given communicator.

`ProcGrid` duplicates the communicator it is given, builds the Cartesian communicator of the
plan's grid (``reorder=False``, so grid rank = rank) and the five sub-communicators of the grid
algorithm, all counted into one `ByteCounters` table.  Idle ranks (``rank >= plan.active``) hold
only the duplicate.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from ..errors import ParconvRuntimeError
from .agree import agree
from .comm import ByteCounters, CountedComm

#: remain_dims of Cart.Sub over the grid axes (N, K, C, H, W) for each group of the algorithm
GROUP_AXES = {
    "filter": (True, False, False, True, True),   # ranks sharing one filter block (b, c)
    "k": (False, True, False, False, False),      # ranks sharing one input block (a, c, d, e)
    "c": (False, False, True, False, False),      # ranks summing one output block (a, b, d, e)
    "h": (False, False, False, True, False),      # halo neighbours along the height
    "w": (False, False, False, False, True),      # halo neighbours along the width
}



def _translate(sub, parent) -> np.ndarray:
    """Ranks in ``parent`` of the members of ``sub`` (in ``sub``'s rank order)."""
    with_group = sub.Get_group()
    parent_group = parent.Get_group()
    try:
        ranks = MPI.Group.Translate_ranks(with_group, list(range(sub.Get_size())), parent_group)
    finally:
        with_group.Free()
        parent_group.Free()
    return np.asarray(ranks, dtype=np.int64)


class ProcGrid:
    """The grid of a plan on an MPI communicator: Cartesian communicator and group communicators.

    Collective over ``comm`` (construction and `free`).

    Attributes
    ----------
    world : CountedComm
        Over the duplicate of ``comm`` (all ranks, idle ones included): data distribution,
        gathers.
    cart : mpi4py.MPI.Cartcomm or None
        The grid (None on idle ranks).
    filter, k, c, h, w : CountedComm or None
        The groups of theory.md section 5 (None on idle ranks): ``filter`` varies N, H, W
        (member index ``(a * P_H + d) * P_W + e``), ``k`` varies K (index b), ``c`` varies C
        (index c), ``h`` varies H (index d), ``w`` varies W (index e).
    counters : ByteCounters
        The one table all of them count into.
    """

    def __init__(self, comm, plan) -> None:
        self.plan = plan
        self.counters = ByteCounters()
        self._owned = []
        dup = comm.Dup()
        self._owned.append(dup)
        self.rank = dup.Get_rank()
        self.world = CountedComm(dup, self.counters, range(dup.Get_size()))
        self.cart = None
        self.filter = self.k = self.c = self.h = self.w = None
        try:
            self._build(dup)
        except BaseException:
            self.free()
            raise

    def _build(self, dup) -> None:
        """Create the grid and its groups, agreeing over ``dup`` before every collective step so
        that a failed check on one rank cannot leave the others waiting."""
        if dup.Get_size() != self.plan.ranks:   # the same on every rank: no agreement needed
            raise ParconvRuntimeError(f"plan is for {self.plan.ranks} ranks but the "
                                      f"communicator has {dup.Get_size()}")
        cart = dup.Create_cart(list(self.plan.dims.as_tuple()), periods=[False] * 5,
                               reorder=False)
        if cart != MPI.COMM_NULL:
            self._owned.append(cart)
            self.cart = cart
        agree(dup, self._check_coords())
        if self.cart is not None:
            self._make_groups(dup)

    @property
    def active(self) -> bool:
        """Whether this rank is part of the grid (idle ranks only join world calls)."""
        return self.cart is not None

    def _check_coords(self) -> Exception | None:
        """The error to agree on when the Cartesian numbering differs from the plan's."""
        if self.cart is None:
            return None
        coords = tuple(int(v) for v in self.cart.Get_coords(self.cart.Get_rank()))
        expected = tuple(int(v) for v in self.plan.coords(self.rank))
        if self.cart.Get_rank() != self.rank or coords != expected:
            return ParconvRuntimeError(
                f"Cartesian rank {self.cart.Get_rank()} at {coords} but the plan puts rank "
                f"{self.rank} at {expected}")
        return None

    def _make_groups(self, dup) -> None:
        (a, b, c, d, e), dims = self.plan.coords(self.rank), self.plan.dims
        expected_index = {"filter": (a * dims.H + d) * dims.W + e, "k": b, "c": c, "h": d, "w": e}
        for name, remain in GROUP_AXES.items():
            members = int(np.prod([n for n, keep in zip(dims.as_tuple(), remain) if keep]))
            # a group of one needs no collective creation (saves a context id per axis)
            sub = MPI.COMM_SELF.Dup() if members == 1 else self.cart.Sub(list(remain))
            self._owned.append(sub)
            if sub.Get_rank() != expected_index[name]:
                # the row-major numbering of Cart.Sub is fixed by the MPI standard
                raise ParconvRuntimeError(f"rank {self.rank} is member {sub.Get_rank()} of its "
                                          f"{name} group, expected {expected_index[name]}")
            setattr(self, name, CountedComm(sub, self.counters, _translate(sub, dup)))

    def free(self) -> None:
        """Free every communicator this grid created (the duplicate last).  Collective."""
        while self._owned:
            comm = self._owned.pop()
            if comm != MPI.COMM_NULL:
                comm.Free()
        self.cart = None
        self.filter = self.k = self.c = self.h = self.w = None

    def __enter__(self) -> "ProcGrid":
        return self

    def __exit__(self, *exc) -> None:
        self.free()
