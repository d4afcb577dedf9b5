"""The fast memories a node tiling must fit in (theory.md 6.2): one memory of M bytes
(`SingleMemory`), or Gemmini's scratchpad and accumulator (`ScratchAccMemory`), each with the
block footprints it admits and the sequential bound of its size.  Pure data, no MPI.
"""

from __future__ import annotations

import numpy as np

from ..bounds import sequential_bound_two_memory
from ..errors import ParconvError
from ..spec import ConvSpec
from .model import Tiling, clip_array, footprint, window_span


class SingleMemory:
    """One fast memory of ``M`` bytes holding the input, filter and partial-output blocks.

    The optimiser uses `fits`, `capacity`, and when present `budgets` (the constraints of the
    continuous relaxation) and `fits_array` (vectorised screening); any memory class with `fits`
    and `capacity` alone also works, only more slowly.
    """

    def __init__(self, M: float):
        if not M > 0:
            raise ParconvError(f"memory M must be a positive number of bytes, got {M!r}")
        self.M = M

    def capacity(self) -> float:
        """Bytes of fast memory, the M of the sequential bound."""
        return float(self.M)

    def budgets(self) -> list[tuple[tuple[str, ...], float]]:
        """Relaxation constraints: the arrays sharing each memory and its size in bytes."""
        return [(("input", "filter", "output"), float(self.M))]

    def fits_array(self, spec: ConvSpec, tiles: np.ndarray) -> np.ndarray:
        """Whether each row of an (m, 7) array of block sizes fits (footprint sum <= M)."""
        t = clip_array(spec, tiles).T
        (sh, sw), (dh, dw) = spec.stride, spec.dilation
        total = (spec.p_in * t[0] * t[2] * window_span(sh, dh, t[3], t[5]) * window_span(sw, dw, t[4], t[6])
                 + spec.p_weight * t[1] * t[2] * t[5] * t[6]
                 + spec.p_acc * t[0] * t[1] * t[3] * t[4])
        return total <= self.M

    def fits(self, spec: ConvSpec, tiling: Tiling) -> bool:
        return sum(footprint(spec, tiling)) <= self.M

    def __repr__(self) -> str:
        return f"SingleMemory(M={self.M})"


class ScratchAccMemory:
    """A scratchpad for inputs and filters and an accumulator for partial sums (gemmini.md 4.2).

    Channel counts that index ``granularity``-wide rows are rounded up to a multiple of it::

        scratch = p_in ceil(tC/g) g tN rows cols + p_weight ceil(tK/g) g tC tR tS
        acc     = p_acc ceil(tK/g) g tN tH tW

    with ``rows = window_extent(sh, dh, tH, tR)`` (and columns likewise).  A tile fits when
    ``scratch <= scratch_bytes / 2`` and ``acc <= acc_bytes / 2`` with double buffering (the
    full sizes without).  `capacity` is ``scratch_bytes + acc_bytes`` (the M of the bound, not
    halved).  Subclasses may override `window_extent` (e.g. Gemmini's conservative halo) and
    everything else follows, vectorised.
    """

    def __init__(self, scratch_bytes: float, acc_bytes: float, double_buffer: bool = True,
                 granularity: int = 16):
        for name, value in (("scratch_bytes", scratch_bytes), ("acc_bytes", acc_bytes)):
            if not value > 0:
                raise ParconvError(f"{name} must be a positive number of bytes, got {value!r}")
        if isinstance(granularity, bool) or not isinstance(granularity, (int, np.integer)) \
                or granularity < 1:
            raise ParconvError(f"granularity must be an integer >= 1, got {granularity!r}")
        self.scratch_bytes, self.acc_bytes = scratch_bytes, acc_bytes
        self.double_buffer, self.granularity = bool(double_buffer), int(granularity)

    def limits(self) -> tuple[float, float]:
        """Bytes one tile may use in the scratchpad and in the accumulator."""
        share = 2 if self.double_buffer else 1
        return self.scratch_bytes / share, self.acc_bytes / share

    def capacity(self) -> float:
        return float(self.scratch_bytes + self.acc_bytes)

    def budgets(self) -> list[tuple[tuple[str, ...], float]]:
        scratch, acc = self.limits()
        return [(("input", "filter"), scratch), (("output",), acc)]

    @staticmethod
    def window_extent(stride, dil, t_out, t_k):
        """Input rows (or columns) stored for ``t_out`` outputs and ``t_k`` taps."""
        return window_span(stride, dil, t_out, t_k)

    def usage_array(self, spec: ConvSpec, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scratchpad bytes, accumulator bytes) of each row of an (m, 7) array of block sizes."""
        tn, tk, tc, th, tw, tr, ts = clip_array(spec, tiles).T
        g = self.granularity
        (sh, sw), (dh, dw) = spec.stride, spec.dilation
        tc_g, tk_g = -(-tc // g) * g, -(-tk // g) * g
        scratch = (spec.p_in * tc_g * tn * self.window_extent(sh, dh, th, tr)
                   * self.window_extent(sw, dw, tw, ts) + spec.p_weight * tk_g * tc * tr * ts)
        return scratch, spec.p_acc * tk_g * tn * th * tw

    def fits_array(self, spec: ConvSpec, tiles: np.ndarray) -> np.ndarray:
        scratch, acc = self.usage_array(spec, tiles)
        scratch_limit, acc_limit = self.limits()
        return (scratch <= scratch_limit) & (acc <= acc_limit)

    def fits(self, spec: ConvSpec, tiling: Tiling) -> bool:
        return bool(self.fits_array(spec, np.array([tiling.as_tuple()]))[0])

    def bound(self, spec: ConvSpec):
        """The sequential bound with a scratchpad and an accumulator (parconv.bounds)."""
        return sequential_bound_two_memory(spec, self.scratch_bytes, self.acc_bytes)

    def __repr__(self) -> str:
        return (f"ScratchAccMemory(scratch_bytes={self.scratch_bytes}, acc_bytes={self.acc_bytes}, "
                f"double_buffer={self.double_buffer}, granularity={self.granularity})")
