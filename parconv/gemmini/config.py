"""Gemmini configuration and the per-tile capacity rule of the library (gemmini.md sections 1, 4.2).

Pure data, no MPI.  `GemminiConfig` holds the generator parameters the model needs (array side,
scratchpad and accumulator sizes, element sizes, DMA widths), the named variants of the generator's
``Configs.scala`` and the library semantics (``dev`` HEAD or the ``dosa`` branch).  `footprint_rows`
is ``tiled_conv_total_spad_rows`` (gemmini.md 4.2) in integer arithmetic; `GemminiConfig.fits`
applies both per-tile limits (half of each memory when the loop engines double-buffer).

Tiles are 7-tuples in the library's order ``(batches, porows, pocols, pochs, krows, kcols, kchs)``
(pooled output rows/cols, output channels, kernel rows/cols, input channels), or any object with an
``as_tuple()`` giving that tuple (e.g. `parconv.gemmini.vendor.VendorConvTile`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import ParconvError

#: the two library versions the model supports (gemmini.md section 0)
SEMANTICS = ("dev", "dosa")

#: library order of the seven tile sizes
TILE_FIELDS = ("batches", "porows", "pocols", "pochs", "krows", "kcols", "kchs")

#: overrides of the defaults for the named generator configs (Configs.scala, gemmini.md 1.1)
NAMED_CONFIGS: dict[str, dict] = {
    "default": {},
    # WS only, 64 in-flight requests: same memories as the default
    "lean": {"max_in_flight_mem_reqs": 64},
    # 64 KiB scratchpad (4 banks of 1024 16-B rows), 32 KiB accumulator (512 64-B rows)
    "chip": {"spad_bank_rows": 1024, "acc_rows": 512},
    # 32x32 array, 128 KiB scratchpad (4 banks of 1024 32-B rows), 64 KiB accumulator (512 128-B
    # rows); a 64-B DMA request then carries 2 array rows (MAX_BLOCK_LEN = 64 / 32)
    "large_chip": {"dim": 32, "spad_bank_rows": 1024, "acc_rows": 512, "max_block_len": 2},
}


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def tile_tuple(tile) -> tuple[int, ...]:
    """The 7-tuple of a tile given as a sequence or as an object with ``as_tuple()``.

    Raises
    ------
    ParconvError
        Unless it has seven positive integers.
    """
    values = tuple(tile.as_tuple() if hasattr(tile, "as_tuple") else tile)
    if len(values) != 7 or not all(_is_int(v) and v >= 1 for v in values):
        raise ParconvError(f"tile must be 7 positive integers {TILE_FIELDS}, got {tile!r}")
    return tuple(int(v) for v in values)


@dataclasses.dataclass(frozen=True)
class Pool:
    """A max-pool fused into the conv (``pool_size``, ``pool_stride``, ``pool_padding``).

    ``Pool(1, 1, 0)`` is no pooling (what the library uses internally when ``pool_stride == 0``).
    """

    size: int = 1
    stride: int = 1
    padding: int = 0

    def __post_init__(self) -> None:
        for field, low in (("size", 1), ("stride", 1), ("padding", 0)):
            value = getattr(self, field)
            if not _is_int(value) or value < low:
                raise ParconvError(f"pool {field} must be an integer >= {low}, got {value!r}")
        if self.padding >= self.size:
            raise ParconvError(f"pool padding must be in [0, size) = [0, {self.size}), "
                               f"got {self.padding}")

    @property
    def active(self) -> bool:
        return (self.size, self.stride, self.padding) != (1, 1, 0)

    def pooled(self, n: int) -> int:
        """Pooled extent of ``n`` pre-pool outputs: (n + 2 padding - size) // stride + 1."""
        return (n + 2 * self.padding - self.size) // self.stride + 1


NO_POOL = Pool()


def as_pool(pool) -> Pool:
    """`Pool` from None, a Pool or a (size, stride, padding) triple."""
    if pool is None:
        return NO_POOL
    if isinstance(pool, Pool):
        return pool
    return Pool(*pool)


def footprint_rows(tile, *, dim: int = 16, stride=(1, 1), kernel_dilation=(1, 1),
                   input_dilation: int = 1, downsample: bool = False, pool=None
                   ) -> tuple[int, int]:
    """(spad_rows, acc_rows) of one tile: ``tiled_conv_total_spad_rows`` (gemmini.md 4.2).

    Local.  ``irows = orows * stride + krows_dilated - 1`` with ``orows`` including the pool halo;
    padding is not subtracted (conservative, like the library).  Input channels are rounded up to
    ``dim`` for the A rows and output channels for the B and C rows, but ``kchs`` itself multiplies
    the B rows.  Under ``downsample`` the input rows and columns are halved with ``>>``.
    Stride and dilation may be pairs (rows, cols); the library's square case is the special case.

    Example: tile (1, 22, 23, 16, 3, 3, 64), stride 1 -> A = 4*24*25 = 2400, B = 1*3*3*64 = 576,
    C = 1*22*23 = 506, i.e. (2976, 506).
    """
    pool = as_pool(pool)
    sh, sw = (stride, stride) if _is_int(stride) else stride
    dh, dw = (kernel_dilation, kernel_dilation) if _is_int(kernel_dilation) else kernel_dilation
    return footprint_function(dim=dim, stride=(sh, sw), kernel_dilation=(dh, dw),
                              input_dilation=input_dilation, downsample=downsample,
                              pool=pool)(*tile_tuple(tile))


def footprint_function(*, dim: int, stride: tuple, kernel_dilation: tuple,
                       input_dilation: int, downsample: bool, pool: "Pool"):
    """`footprint_rows` with the layer constants bound, taking the seven sizes as ints without
    validation (the heuristics evaluate it thousands of times)."""
    (sh, sw), (dh, dw) = stride, kernel_dilation
    shift = 1 if downsample else 0
    halo = pool.size - 1

    def rows(batches, porows, pocols, pochs, krows, kcols, kchs) -> tuple[int, int]:
        orows = porows * pool.stride + halo
        ocols = pocols * pool.stride + halo
        irows = -(-(orows * sh + krows + (dh - 1) * (krows - 1) - 1) // input_dilation)
        icols = -(-(ocols * sw + kcols + (dw - 1) * (kcols - 1) - 1) // input_dilation)
        in_blocks, out_blocks = -(-kchs // dim), -(-pochs // dim)
        a_rows = in_blocks * batches * (irows >> shift) * (icols >> shift)
        b_rows = out_blocks * kcols * krows * kchs
        return a_rows + b_rows, out_blocks * batches * orows * ocols

    return rows


@dataclasses.dataclass(frozen=True)
class GemminiConfig:
    """Generator parameters and library semantics of the modelled Gemmini (gemmini.md 1, 0).

    Parameters
    ----------
    name : str
        Label (the named variant it came from).
    dim : int
        Side of the systolic array (DIM); a scratchpad row holds ``dim`` elements.
    spad_banks, spad_bank_rows : int
        Scratchpad banks and rows per bank (default 4 x 4096 rows of 16 B = 256 KiB).
    acc_rows : int
        Accumulator rows of ``dim * acc_bytes`` bytes (default 1024 x 64 B = 64 KiB).
    input_bytes, weight_bytes, acc_bytes, bias_bytes, output_bytes : int
        Element sizes; ``output_bytes`` = 1 because mvout writes scaled int8.
    double_buffer : bool
        The loop engines use half of each memory per tile (limits 8192 spad / 512 acc rows).
    bus_bytes_per_cycle : float
        Peak DMA bandwidth (128-bit system bus: 16 B/cycle).
    bw_eff : float
        Effective DRAM bandwidth of the cycle model in bytes/cycle (default 8, the rate observed
        on the memory-bound layers of gemmini.md 6.1); must lie in (0, bus_bytes_per_cycle].
    semantics : {"dev", "dosa"}
        Library version: ``dev`` HEAD (operand reuse, downsample where eligible, bias, first-layer
        optimization) or the ``dosa`` branch of the 6.1 measurements (none of these).
    max_block_len, max_block_len_acc : int
        Array rows one DMA request carries into the scratchpad / accumulator (MAX_BLOCK_LEN = 4,
        MAX_BLOCK_LEN_ACC = 1); used for the DRAM row-request counts.
    max_in_flight_mem_reqs : int
        Outstanding DMA transactions (informational).
    operand_reuse, downsample, bias, first_layer_opt : bool or None
        Override one feature of the semantics; None follows ``semantics``.  Read the resolved
        values through ``has_operand_reuse`` etc.

    Raises
    ------
    ParconvError
        On a non-positive size, an unknown semantics, or ``bw_eff`` outside
        (0, bus_bytes_per_cycle]; the message names the field.
    """

    name: str = "default"
    dim: int = 16
    spad_banks: int = 4
    spad_bank_rows: int = 4096
    acc_rows: int = 1024
    input_bytes: int = 1
    weight_bytes: int = 1
    acc_bytes: int = 4
    bias_bytes: int = 4
    output_bytes: int = 1
    double_buffer: bool = True
    bus_bytes_per_cycle: float = 16.0
    bw_eff: float = 8.0
    semantics: str = "dev"
    max_block_len: int = 4
    max_block_len_acc: int = 1
    max_in_flight_mem_reqs: int = 16
    operand_reuse: bool | None = None
    downsample: bool | None = None
    bias: bool | None = None
    first_layer_opt: bool | None = None

    def __post_init__(self) -> None:
        for field in ("dim", "spad_banks", "spad_bank_rows", "acc_rows", "input_bytes",
                      "weight_bytes", "acc_bytes", "bias_bytes", "output_bytes",
                      "max_block_len", "max_block_len_acc", "max_in_flight_mem_reqs"):
            value = getattr(self, field)
            if not _is_int(value) or value < 1:
                raise ParconvError(f"GemminiConfig.{field} must be a positive integer, "
                                   f"got {value!r}")
        if self.double_buffer and (self.spad_banks * self.spad_bank_rows < 2
                                   or self.acc_rows < 2):
            raise ParconvError("GemminiConfig: double_buffer needs at least 2 scratchpad and 2 "
                               "accumulator rows")
        if self.semantics not in SEMANTICS:
            raise ParconvError(f"GemminiConfig.semantics must be one of {SEMANTICS}, "
                               f"got {self.semantics!r}")
        peak = self.bus_bytes_per_cycle
        if not isinstance(peak, (int, float, np.number)) or isinstance(peak, bool) or peak <= 0:
            raise ParconvError(f"GemminiConfig.bus_bytes_per_cycle must be > 0, got {peak!r}")
        bw = self.bw_eff
        if (not isinstance(bw, (int, float, np.number)) or isinstance(bw, bool)
                or not 0 < bw <= peak):
            raise ParconvError(f"GemminiConfig.bw_eff must be in (0, bus_bytes_per_cycle = "
                               f"{peak}] bytes/cycle, got {bw!r}")
        if not isinstance(self.double_buffer, bool):
            raise ParconvError("GemminiConfig.double_buffer must be True or False")
        for field in ("operand_reuse", "downsample", "bias", "first_layer_opt"):
            if getattr(self, field) not in (None, True, False):
                raise ParconvError(f"GemminiConfig.{field} must be None, True or False, "
                                   f"got {getattr(self, field)!r}")

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def named(cls, name: str = "default", **overrides) -> "GemminiConfig":
        """A named generator config (``default``, ``lean``, ``chip``, ``large_chip``) with any
        field overridden, e.g. ``GemminiConfig.named("chip", bw_eff=6.0, semantics="dosa")``."""
        if name not in NAMED_CONFIGS:
            raise ParconvError(f"config name must be one of {', '.join(NAMED_CONFIGS)}, "
                               f"got {name!r}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ParconvError(f"unknown GemminiConfig field(s) {sorted(unknown)}")
        return cls(**{"name": name, **NAMED_CONFIGS[name], **overrides})

    def replace(self, **changes) -> "GemminiConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def for_spec(self, spec) -> "GemminiConfig":
        """This config with the element sizes of a non-int8 ``spec``, memories kept in bytes.

        For int8 layers the config is returned unchanged (its element sizes, default int8 x int8
        -> int32 with scaled int8 outputs, are Gemmini's).  Other dtypes take ``spec.p_in``,
        ``p_weight``, ``p_acc``, ``p_bias`` and ``p_out`` and scale the rows per bank so that the
        scratchpad and accumulator keep their byte capacity (rows stay ``dim`` elements wide).
        `conv_auto` and the call model apply this themselves.
        """
        if spec.dtype_in == "int8":
            return self
        element = max(spec.p_in, spec.p_weight)
        spad_rows = self.spad_bank_rows * max(self.input_bytes, self.weight_bytes) // element
        acc_rows = self.acc_rows * self.acc_bytes // spec.p_acc
        return self.replace(input_bytes=spec.p_in, weight_bytes=spec.p_weight,
                            acc_bytes=spec.p_acc, bias_bytes=spec.p_bias,
                            output_bytes=spec.p_out, spad_bank_rows=max(1, spad_rows),
                            acc_rows=max(2, acc_rows))

    # ---- resolved semantics -------------------------------------------------------------------
    def _feature(self, value: bool | None) -> bool:
        return self.semantics == "dev" if value is None else value

    @property
    def has_operand_reuse(self) -> bool:
        """a_reuse / b_reuse pointer rules of gemmini.md 4.4 (dev)."""
        return self._feature(self.operand_reuse)

    @property
    def has_downsample(self) -> bool:
        """Use the downsample path for eligible 1x1 stride-2 convs (dev)."""
        return self._feature(self.downsample)

    @property
    def has_bias(self) -> bool:
        """Load a bias on the first reduction tile of each output tile (dev)."""
        return self._feature(self.bias)

    @property
    def has_first_layer_opt(self) -> bool:
        """Pack several pixels in one spad row when kchs <= dim (dev)."""
        return self._feature(self.first_layer_opt)

    # ---- derived sizes ------------------------------------------------------------------------
    @property
    def spad_row_bytes(self) -> int:
        return self.dim * max(self.input_bytes, self.weight_bytes)

    @property
    def acc_row_bytes(self) -> int:
        return self.dim * self.acc_bytes

    @property
    def spad_rows_total(self) -> int:
        return self.spad_banks * self.spad_bank_rows

    @property
    def spad_rows_limit(self) -> int:
        """Scratchpad rows one tile may use (half the scratchpad when double-buffered)."""
        return self.spad_rows_total // 2 if self.double_buffer else self.spad_rows_total

    @property
    def acc_rows_limit(self) -> int:
        """Accumulator rows one tile may use (half the accumulator when double-buffered)."""
        return self.acc_rows // 2 if self.double_buffer else self.acc_rows

    @property
    def scratch_bytes(self) -> int:
        """Physical scratchpad bytes (256 KiB by default)."""
        return self.spad_rows_total * self.spad_row_bytes

    @property
    def acc_total_bytes(self) -> int:
        """Physical accumulator bytes (64 KiB by default)."""
        return self.acc_rows * self.acc_row_bytes

    @property
    def peak_macs_per_cycle(self) -> int:
        return self.dim * self.dim

    @property
    def dma_max_bytes(self) -> int:
        """Largest DMA request (MAX_BYTES = max_block_len * dim * input_bytes = 64 B)."""
        return self.max_block_len * self.dim * self.input_bytes

    # ---- the capacity rule --------------------------------------------------------------------
    def footprint_rows(self, spec, tile, *, pool=None, downsample: bool = False
                       ) -> tuple[int, int]:
        """(spad_rows, acc_rows) of ``tile`` for layer ``spec`` (gemmini.md 4.2). Local."""
        return footprint_rows(tile, dim=self.dim, stride=spec.stride,
                              kernel_dilation=spec.dilation, downsample=downsample, pool=pool)

    def rows_fit(self, spad_rows: int, acc_rows: int) -> bool:
        return spad_rows <= self.spad_rows_limit and acc_rows <= self.acc_rows_limit

    def fits(self, spec, tile, *, pool=None, downsample: bool = False) -> bool:
        """Whether ``tile`` satisfies both per-tile limits for ``spec`` (with the limits of
        ``self.for_spec(spec)``, i.e. fewer rows for wider float elements). Local."""
        spad, acc = self.footprint_rows(spec, tile, pool=pool, downsample=downsample)
        return self.for_spec(spec).rows_fit(spad, acc)

    def check_fits(self, spec, tile, *, pool=None, downsample: bool = False) -> tuple[int, int]:
        """(spad_rows, acc_rows) of a tile that fits; ParconvError naming the limit otherwise."""
        spad, acc = self.footprint_rows(spec, tile, pool=pool, downsample=downsample)
        limits = self.for_spec(spec)
        if not limits.rows_fit(spad, acc):
            raise ParconvError(
                f"tile {tile_tuple(tile)} does not fit Gemmini config {self.name!r}: needs "
                f"{spad} scratchpad rows (limit {limits.spad_rows_limit}) and {acc} accumulator "
                f"rows (limit {limits.acc_rows_limit})")
        return spad, acc

    def to_dict(self) -> dict:
        """Every field plus the resolved features and derived sizes, JSON-ready."""
        out = dataclasses.asdict(self)
        out.update(has_operand_reuse=self.has_operand_reuse, has_downsample=self.has_downsample,
                   has_bias=self.has_bias, has_first_layer_opt=self.has_first_layer_opt,
                   spad_rows_limit=self.spad_rows_limit, acc_rows_limit=self.acc_rows_limit,
                   scratch_bytes=self.scratch_bytes, acc_total_bytes=self.acc_total_bytes)
        return out


def downsample_eligible(spec, pool=None) -> bool:
    """The library's downsample test (gemmini.md 4.1): stride 2, 1x1 kernel, no padding, no
    pooling and an even input height and width (input dilation is always 1 here)."""
    return (tuple(spec.stride) == (2, 2) and tuple(spec.kernel_size) == (1, 1)
            and tuple(spec.padding) == (0, 0) and tuple(spec.padding_end) == (0, 0)
            and not as_pool(pool).active
            and spec.in_size[0] % 2 == 0 and spec.in_size[1] % 2 == 0)


def uses_downsample(spec, config: GemminiConfig, pool=None) -> bool:
    """Whether the vendor path runs ``spec`` with downsample (eligible and enabled)."""
    return config.has_downsample and downsample_eligible(spec, pool)


DEFAULT_CONFIG = GemminiConfig()
