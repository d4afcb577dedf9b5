"""The processor grid: the communicators of one grid over a given communicator.

`ProcGrid` duplicates the communicator it is given, builds the Cartesian communicator of a grid
``dims`` = (P_N, P_K, P_C, P_H, P_W) (``reorder=False``, so grid rank = rank) and the five
sub-communicators of the grid algorithm, all counted into one `ByteCounters` table.  It knows the
grid, not the plan.  Idle ranks (``rank >= prod(dims)``) hold only the duplicate.
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


def _dims_tuple(dims) -> tuple[int, int, int, int, int]:
    values = dims.as_tuple() if hasattr(dims, "as_tuple") else tuple(dims)
    if len(values) != 5 or any(int(v) < 1 for v in values):
        raise ParconvRuntimeError(f"a grid has five positive dimensions, got {values}")
    return tuple(int(v) for v in values)


class ProcGrid:
    """A processor grid on an MPI communicator: Cartesian communicator and group communicators.

    Collective over ``comm`` (construction and `free`).  ``dims``: a GridDims or the 5-tuple
    (P_N, P_K, P_C, P_H, P_W); its product may be below the communicator size (idle ranks).

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

    def __init__(self, comm, dims) -> None:
        self.dims = _dims_tuple(dims)
        self.active_ranks = int(np.prod(self.dims))
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
        if dup.Get_size() < self.active_ranks:   # the same on every rank: no agreement needed
            raise ParconvRuntimeError(f"grid {'x'.join(map(str, self.dims))} needs "
                                      f"{self.active_ranks} ranks but the communicator has "
                                      f"{dup.Get_size()}")
        cart = dup.Create_cart(list(self.dims), periods=[False] * 5, reorder=False)
        if cart != MPI.COMM_NULL:
            self._owned.append(cart)
            self.cart = cart
        agree(dup, self._check_coords())
        if self.cart is not None:
            self._make_groups(dup)

    def coords(self, rank: int) -> tuple[int, int, int, int, int]:
        """Grid coordinates (a, b, c, d, e) of an active rank (row-major over N, K, C, H, W)."""
        return tuple(int(v) for v in np.unravel_index(rank, self.dims))

    @property
    def active(self) -> bool:
        """Whether this rank is part of the grid (idle ranks only join world calls)."""
        return self.cart is not None

    def _check_coords(self) -> Exception | None:
        """The error to agree on when the Cartesian numbering differs from the plan's."""
        if self.cart is None:
            return None
        coords = tuple(int(v) for v in self.cart.Get_coords(self.cart.Get_rank()))
        expected = self.coords(self.rank)
        if self.cart.Get_rank() != self.rank or coords != expected:
            return ParconvRuntimeError(
                f"Cartesian rank {self.cart.Get_rank()} at {coords} but the grid puts rank "
                f"{self.rank} at {expected}")
        return None

    def _make_groups(self, dup) -> None:
        (a, b, c, d, e), (_, _, _, PH, PW) = self.coords(self.rank), self.dims
        expected_index = {"filter": (a * PH + d) * PW + e, "k": b, "c": c, "h": d, "w": e}
        for name, remain in GROUP_AXES.items():
            members = int(np.prod([n for n, keep in zip(self.dims, remain) if keep]))
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
