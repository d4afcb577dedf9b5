"""The library's tile-size heuristics: ``tiled_conv_stride_auto`` and ``tiled_matmul_auto``.

Pure integers, no MPI.  `conv_auto` is gemmini.md 4.3 exactly (three phases: shrink the largest
dimension until the tile fits, grow pocols alone, then grow every dimension by one in round-robin);
`matmul_auto` is gemmini.md 5.  Both reproduce the tile columns of gemmini.md 6.1, 7.2 and 7.3.
`auto_search_steps` replays ``tiled_conv_auto``'s search with the library's own loops and counts
its steps (the core's cost of the search, priced by `parconv.gemmini.cycles.auto_search_cycles`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

from ...errors import ParconvError
from ..config import (DEFAULT_CONFIG, TILE_FIELDS, GemminiConfig, as_pool, footprint_function,
                      tile_tuple, uses_downsample)
from ..cycles import AUTO_SEARCH_PATHS

# indices into the 7-vector of tile sizes (library order)
_POCOLS, _POROWS, _CHANNEL_INDICES = 2, 1, (3, 6)


@dataclasses.dataclass(frozen=True)
class VendorConvTile:
    """A conv tile in the library's order, with its downsample flag and footprint.

    ``spad_rows``/``acc_rows`` are the gemmini.md 4.2 footprint of the tile (0 when unknown).
    """

    batches: int
    porows: int
    pocols: int
    pochs: int
    krows: int
    kcols: int
    kchs: int
    downsample: bool = False
    spad_rows: int = 0
    acc_rows: int = 0

    def as_tuple(self) -> tuple[int, int, int, int, int, int, int]:
        """(batches, porows, pocols, pochs, krows, kcols, kchs)."""
        return tuple(getattr(self, f) for f in TILE_FIELDS)

    def as_nkchwrs(self) -> tuple[int, int, int, int, int, int, int]:
        """The same sizes over parconv's loops N, K, C, H, W, R, S (H and W are pooled rows and
        columns; equal to output rows and columns without pooling)."""
        return (self.batches, self.pochs, self.kchs, self.porows, self.pocols, self.krows,
                self.kcols)

    @classmethod
    def from_nkchwrs(cls, sizes, **extra) -> "VendorConvTile":
        """From sizes over parconv's loops (tN, tK, tC, tH, tW, tR, tS)."""
        t_n, t_k, t_c, t_h, t_w, t_r, t_s = tile_tuple(sizes)
        return cls(t_n, t_h, t_w, t_k, t_r, t_s, t_c, **extra)

    @property
    def dosa_string(self) -> str:
        """DOSA's ``auto_tiling`` format ``kcols_krows_pocols_porows_kchs_pochs_batches``."""
        return "_".join(str(v) for v in (self.kcols, self.krows, self.pocols, self.porows,
                                         self.kchs, self.pochs, self.batches))

    def describe(self) -> str:
        """``(1,22,23,16,1,1,240) ds`` as in the tables of gemmini.md."""
        text = "(" + ",".join(str(v) for v in self.as_tuple()) + ")"
        return text + (" ds" if self.downsample else "")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "tile": list(self.as_tuple())}


def conv_extents(spec, pool=None) -> tuple[int, int, int, int, int, int, int]:
    """The full problem in library order: (N, pooled rows, pooled cols, K, R, S, C)."""
    pool = as_pool(pool)
    out_rows, out_cols = spec.out_size
    pooled_rows, pooled_cols = pool.pooled(out_rows), pool.pooled(out_cols)
    if pooled_rows < 1 or pooled_cols < 1:
        raise ParconvError(f"pool size {pool.size} with padding {pool.padding} is larger than the "
                           f"conv output {out_rows}x{out_cols}; pool size must be <= output + "
                           f"2 padding")
    return (spec.batch, pooled_rows, pooled_cols, spec.out_channels, spec.kernel_size[0],
            spec.kernel_size[1], spec.in_channels)


def _shrink_index(args: list[int], dim: int) -> int:
    """Phase 1's choice: the largest eligible entry, the lowest index on ties; pocols is not
    eligible while it is <= dim and porows > 1 (keeps the array rows busy)."""
    best, best_value = -1, -1
    for i, value in enumerate(args):
        if i == _POCOLS and value <= dim and args[_POROWS] > 1:
            continue
        if value > best_value:
            best, best_value = i, value
    return best


def _shrink(args: list[int], index: int, dim: int) -> None:
    if index in _CHANNEL_INDICES:
        # channels shrink to the next multiple of dim below (a whole dim when already one)
        value = args[index]
        value = (value // dim) * dim if value % dim else value - dim
        args[index] = max(value, 1)
    else:
        args[index] -= 1


def conv_auto(spec, config: GemminiConfig | None = None, pool=None) -> VendorConvTile:
    """The tile ``tiled_conv_stride_auto`` chooses for ``spec`` (gemmini.md 4.3). Local.

    Parameters
    ----------
    spec : ConvSpec
        The layer (kernels may be non-square; strides and dilations may differ per axis).
    config : GemminiConfig, optional
        Array side and per-tile limits (``config.for_spec(spec)`` for float layers); its
        semantics decides whether an eligible 1x1 stride-2 layer takes the downsample path
        (``dev``) or not (``dosa``).
    pool : Pool or (size, stride, padding), optional
        A max-pool fused into the conv (the ResNet-50 stem has (3, 2, 1)).

    Returns
    -------
    VendorConvTile
        With ``downsample`` and the tile's spad/acc rows.

    Raises
    ------
    ParconvError
        If even the all-ones tile does not fit the limits.

    Example
    -------
    3x3, 56x56, 64 -> 64, stride 1, batch 1: phase 1 ends at (1,22,23,16,3,3,16), phase 2 cannot
    grow pocols, phase 3 grows kchs to 64: (1,22,23,16,3,3,64), 2976 spad rows, 506 acc rows.
    """
    return _conv_auto_of(spec, (config or DEFAULT_CONFIG).for_spec(spec), as_pool(pool))


@functools.lru_cache(maxsize=256)
def _conv_auto_of(spec, config: GemminiConfig, pool) -> VendorConvTile:
    # once per layer shape: the library's cost and its replayed tile search both start from it
    downsample = uses_downsample(spec, config, pool)
    max_args = conv_extents(spec, pool)

    footprint = footprint_function(dim=config.dim, stride=spec.stride,
                                   kernel_dilation=spec.dilation, input_dilation=1,
                                   downsample=downsample, pool=pool)
    spad_limit, acc_limit = config.spad_rows_limit, config.acc_rows_limit

    def rows(args) -> tuple[int, int]:
        return footprint(*args)

    def fits(args) -> bool:
        spad, acc = footprint(*args)
        return spad <= spad_limit and acc <= acc_limit

    if not fits((1,) * 7):
        spad, acc = rows((1,) * 7)
        raise ParconvError(f"even the smallest tile (1,1,1,1,1,1,1) needs {spad} scratchpad rows "
                           f"(limit {config.spad_rows_limit}) and {acc} accumulator rows (limit "
                           f"{config.acc_rows_limit}) for {spec.describe()}")
    args = list(max_args)
    while not fits(args):                                   # phase 1: shrink until it fits
        _shrink(args, _shrink_index(args, config.dim), config.dim)
    while args[_POCOLS] + 1 <= max_args[_POCOLS]:           # phase 2: grow pocols alone
        candidate = args.copy()
        candidate[_POCOLS] += 1
        if not fits(candidate):
            break
        args = candidate
    # phase 3: round-robin +1.  The rows only grow with every entry, so an entry that cannot
    # grow (at its maximum, or the tile would not fit) never can again: it leaves the round
    growing = list(range(7))
    while growing:
        still = []
        for i in growing:
            candidate = args.copy()
            candidate[i] += 1
            if candidate[i] <= max_args[i] and fits(candidate):
                args = candidate
                still.append(i)
        growing = still
    spad, acc = rows(args)
    return VendorConvTile(*args, downsample=downsample, spad_rows=spad, acc_rows=acc)


def auto_search_steps(spec, config: GemminiConfig | None = None, pool=None) -> dict:
    """Steps of the tile search ``tiled_conv_auto`` runs on the core before its first call, by
    kind (the keys of `parconv.gemmini.cycles.AUTO_SEARCH_PATHS`, which prices them). Local.

    Replays the library's own loops (gemmini.md 4.3, 11.2), not the shortened round-robin of
    `conv_auto`, whose tile it must end at: both footprints once before the loops; phase 1
    shrinks (both footprints every step) until the tile fits; phase 2 grows pocols while it
    fits; phase 3 tries +1 on each of the seven sizes in turn and repeats the pass until no size
    grew.  A candidate above its maximum costs a comparison only (``at_max``), and one whose
    scratchpad rows do not fit skips the accumulator footprint (``spad_full``: the compiled
    code does); ``accepted`` counts the candidates taken.  The ``dev`` and ``dosa`` branches run
    the same loops (downsample and pooling only change the footprint, as in `conv_auto`).

    Parameters are those of `conv_auto`.

    Raises
    ------
    ParconvError
        As `conv_auto` (the smallest tile does not fit), or if the replay does not end at
        `conv_auto`'s tile (the two disagree on the library's rules).

    Example
    -------
    16 -> 16 1x1 on 4x4, batch 1: the whole layer fits at once; phase 2 meets pocols at its
    maximum and one phase-3 pass meets all seven there: 1 ``fits_spad`` and 8 ``at_max``.
    """
    tile = conv_auto(spec, config, pool)            # raises before a search that cannot end
    config = (config or DEFAULT_CONFIG).for_spec(spec)
    pool = as_pool(pool)
    max_args = conv_extents(spec, pool)
    footprint = footprint_function(dim=config.dim, stride=spec.stride,
                                   kernel_dilation=spec.dilation, input_dilation=1,
                                   downsample=tile.downsample, pool=pool)
    spad_limit, acc_limit = config.spad_rows_limit, config.acc_rows_limit
    steps = dict.fromkeys(AUTO_SEARCH_PATHS, 0)

    def fits(args) -> bool:
        spad, acc = footprint(*args)
        return spad <= spad_limit and acc <= acc_limit

    def candidate_fits(args) -> bool:
        spad, acc = footprint(*args)
        if spad > spad_limit:
            steps["spad_full"] += 1
            return False
        steps["fits_spad"] += 1
        return acc <= acc_limit

    def grow(args, i) -> list[int] | None:
        candidate = args.copy()
        candidate[i] += 1
        if candidate[i] > max_args[i]:
            steps["at_max"] += 1
            return None
        if not candidate_fits(candidate):
            return None
        steps["accepted"] += 1
        return candidate

    args = list(max_args)
    steps["fits_spad"] += 1
    while not fits(args):
        _shrink(args, _shrink_index(args, config.dim), config.dim)
        steps["shrink"] += 1
    while (grown := grow(args, _POCOLS)) is not None:
        args = grown
    grew = True
    while grew:
        grew = False
        for i in range(7):
            if (grown := grow(args, i)) is not None:
                args, grew = grown, True
    if tuple(args) != tile.as_tuple():
        raise ParconvError(f"the replayed tile search of {spec.describe()} ends at "
                           f"{tuple(args)}, conv_auto at {tile.as_tuple()}")
    return steps


@dataclasses.dataclass(frozen=True)
class VendorMatmulTile:
    """A ``tiled_matmul_auto`` tile in dim-blocks (tile_I, tile_J, tile_K) and its footprint."""

    tile_I: int
    tile_J: int
    tile_K: int
    spad_rows: int
    acc_rows: int

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.tile_I, self.tile_J, self.tile_K)

    def describe(self) -> str:
        return f"({self.tile_I},{self.tile_J},{self.tile_K})"

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "tile": list(self.as_tuple())}


def matmul_auto(dim_I: int, dim_J: int, dim_K: int, config: GemminiConfig | None = None,
                double_buffered: bool = True) -> VendorMatmulTile:
    """The tile ``tiled_matmul_auto`` chooses for C (I x J) = A (I x K) B (K x J) (gemmini.md 5).

    Local.  Sizes are counted in dim-blocks.  The initial guess is (min(I, t_ij), min(J, t_ij),
    min(K, t_k)) with t_ij = isqrt(acc_limit / dim) and t_k = (spad_limit / 2 / dim) / t_ij
    (5 and 51 when double-buffered, 8 and 64 otherwise); then J, I and K grow by one in that
    order while the footprint spad = (tI tK + tK tJ) dim, acc = tI tJ dim fits.

    Example: I=196, J=256, K=1024 blocks of 16 -> (5, 5, 51).
    """
    config = config or DEFAULT_CONFIG
    for name, value in (("dim_I", dim_I), ("dim_J", dim_J), ("dim_K", dim_K)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ParconvError(f"{name} must be a positive integer, got {value!r}")
    dim = config.dim
    blocks = [-(-d // dim) for d in (dim_I, dim_J, dim_K)]
    spad_limit = config.spad_rows_total // 2 if double_buffered else config.spad_rows_total
    acc_limit = config.acc_rows // 2 if double_buffered else config.acc_rows
    max_tile_ij = math.isqrt(acc_limit // dim)
    max_tile_k = (spad_limit // 2 // dim) // max(max_tile_ij, 1)

    def spad(ti, tj, tk):
        return (ti * tk + tk * tj) * dim

    def acc(ti, tj):
        return ti * tj * dim

    ti, tj, tk = min(blocks[0], max_tile_ij), min(blocks[1], max_tile_ij), min(blocks[2],
                                                                               max_tile_k)
    if min(ti, tj, tk) < 1 or spad(ti, tj, tk) > spad_limit or acc(ti, tj) > acc_limit:
        raise ParconvError(f"config {config.name!r} is too small for tiled_matmul_auto: initial "
                           f"tile ({ti},{tj},{tk}) does not fit {spad_limit} spad / {acc_limit} "
                           f"acc rows")
    grew = True
    while grew:
        grew = False
        if (spad(ti, tj + 1, tk) <= spad_limit and acc(ti, tj + 1) <= acc_limit
                and tj + 1 <= blocks[1]):
            tj, grew = tj + 1, True
        if (spad(ti + 1, tj, tk) <= spad_limit and acc(ti + 1, tj) <= acc_limit
                and ti + 1 <= blocks[0]):
            ti, grew = ti + 1, True
        if spad(ti, tj, tk + 1) <= spad_limit and tk + 1 <= blocks[2]:
            tk, grew = tk + 1, True
    return VendorMatmulTile(ti, tj, tk, spad(ti, tj, tk), acc(ti, tj))
