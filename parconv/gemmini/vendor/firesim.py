"""The library's ``tiled_conv`` with an explicit tile and loop order, as FireSim ran it.  Pure.

DOSA's data collection (gemmini-rocc-tests, branch ``dosa``) calls ``tiled_conv`` with a tile, a
DRAM-level loop order (``PERM_STR``, innermost first) and no bias, on a Gemmini of side
``PE_DIM`` built without the first-layer optimization.  That branch has no operand reuse and no
downsample path: every call moves its input window and weights in, whatever the order; the order
decides only which reloads are still in the L2 (`parconv.gemmini.cycles.load_misses`).  The
harness runs ``tiled_conv_auto`` on the same buffers just before, so a layer that fits the L2
starts warm.
`firesim_cost` gives the calibrated cycles of such a run, the quantity the FireSim training set
measures; ``experiments/calibrate_cycles.py`` fits the constants on it.
"""

from __future__ import annotations

from ...errors import ParconvError
from ..config import GemminiConfig
from .layer_cost import LayerCost, vendor_layer_cost
from .heuristics import conv_extents

#: the library letters of a DOSA loop order
ORDER_LETTERS = frozenset("NQPKSRC")


def firesim_config(dim: int) -> GemminiConfig:
    """The modelled Gemmini of a FireSim build with side ``dim``: ``dosa`` semantics, no
    first-layer optimization, 64-byte DMA requests (``max_block_len = 64 / dim``).  The
    per-tile capacity is not checked (the memories of the non-16 builds are not published):
    the scratchpad and accumulator are made large enough for any tile."""
    if not isinstance(dim, int) or dim < 1:
        raise ParconvError(f"dim must be a positive integer, got {dim!r}")
    return GemminiConfig(name=f"firesim{dim}", dim=dim, semantics="dosa",
                         first_layer_opt=False, max_block_len=max(1, 64 // dim),
                         spad_bank_rows=1 << 24, acc_rows=1 << 24)


def firesim_cost(spec, tile, order: str, dim: int = 16, constants=None,
                 warm: bool = True) -> LayerCost:
    """`LayerCost` of ``tiled_conv(spec, tile, order)`` on the FireSim build of side ``dim``;
    ``calibrated_cycles`` is the model of the measured cycles.  ``tile`` sizes larger than the
    layer are clamped (the library loops once over such a dimension).  ``warm``: the data were
    touched by the harness's ``tiled_conv_auto`` run just before.  Local.

    Raises
    ------
    ParconvError
        If ``order`` is not a permutation of ``NQPKSRC``.
    """
    if len(order) != 7 or set(order) != ORDER_LETTERS:
        raise ParconvError(f"order must be a permutation of NQPKSRC (innermost first), "
                           f"got {order!r}")
    tile = tuple(min(int(t), e) for t, e in zip(tile, conv_extents(spec)))
    return vendor_layer_cost(spec, tile, firesim_config(dim), downsample=False, order=order,
                             constants=constants, warm=warm)
