"""The convolution layer: shapes, strides, precisions and the quantities the bounds are made of.

Pure data, no MPI.  The loop nest (theory.md section 1) is

    Out[n, k, h, w] = bias[k] + sum_{c, r, s} In[n, c, sh*h + dh*r - ph, sw*w + dw*s - pw] * F[k, c, r, s]

Reads outside the image are zero padding and are not data.  Ranges are half-open throughout.
"""

from __future__ import annotations

import dataclasses
import math
from functools import cached_property

import numpy as np

from .errors import ParconvError

#: bytes per element of every dtype parconv knows
DTYPE_BYTES = {"int8": 1, "int16": 2, "int32": 4, "int64": 8,
               "float16": 2, "float32": 4, "float64": 8}

#: largest value of any integer field: shapes, strides and paddings are C ints in MPI and HDF5
MAX_FIELD = 2**31 - 1
#: largest per-axis bookkeeping (input positions, or output positions times taps): the pure
#: modules build index arrays of this length, so it is refused before anything is allocated
MAX_AXIS_WORK = 2**27
#: largest size of one array in bytes (byte counts stay exact in int64)
MAX_ARRAY_BYTES = 2**60

#: the accumulator type that goes with an input type when none is given
DEFAULT_ACC = {"int8": "int32", "int16": "int32", "int32": "int64",
               "float16": "float32", "float32": "float32", "float64": "float64"}
#: input element types of the command line and of HDF5 layer files: the ones the engine runs
INPUT_DTYPES = tuple(DEFAULT_ACC)


def check_accumulator_range(spec) -> None:
    """Refuse an integer layer whose sum of products can leave the accumulator's range.

    Each output sums ``C R S`` products of at most ``2^(b_in - 1) 2^(b_w - 1)`` in magnitude
    (``128^2 = 2^14`` for int8), so the int32 accumulator of an int8 layer is safe exactly when
    ``C R S <= floor((2^31 - 1) / 2^14) = 131071``; beyond that the nodes and the reference would
    wrap around silently and ``--check`` would still pass.  A bias adds to the same accumulator:
    its values must stay within the headroom ``2^31 - 1 - C R S 2^14`` (data, not checked here).
    Only 8-bit integer operands are checked (Gemmini's case); float layers cannot wrap.  Called by
    `ConvSpec` validation, so the planner and every node see only layers that are safe.

    Raises
    ------
    ParconvError
        Naming the bound on ``C R S`` when it is exceeded.
    """
    kinds = [np.dtype(getattr(spec, f)).kind for f in ("dtype_in", "dtype_weight", "dtype_acc")]
    if any(kind not in "iu" for kind in kinds) or max(
            DTYPE_BYTES[spec.dtype_in], DTYPE_BYTES[spec.dtype_weight]) > 1:
        return
    bits_in, bits_w = (8 * DTYPE_BYTES[getattr(spec, f)] for f in ("dtype_in", "dtype_weight"))
    acc_max = np.iinfo(np.dtype(spec.dtype_acc)).max
    largest_product = 2 ** (bits_in - 1) * 2 ** (bits_w - 1)
    limit = acc_max // largest_product
    terms = spec.in_channels * spec.kernel_size[0] * spec.kernel_size[1]
    if terms > limit:
        raise ParconvError(
            f"{spec.dtype_in} x {spec.dtype_weight} accumulation can overflow {spec.dtype_acc}: "
            f"C*R*S = {spec.in_channels}*{spec.kernel_size[0]}*{spec.kernel_size[1]} = {terms} "
            f"> {limit} = floor(({acc_max}) / {largest_product}); split the input channels or "
            f"use a wider accumulator (dtype_acc)")


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ParconvError(f"{name} must be one integer or a pair, got {value!r}")
        pair = tuple(value)
    else:
        pair = (value, value)
    for v in pair:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ParconvError(f"{name} must be integers, got {value!r}")
        if int(v) > MAX_FIELD:
            raise ParconvError(f"{name} must be at most {MAX_FIELD}, got {int(v)}")
    return int(pair[0]), int(pair[1])


def _axis_touched(n_in: int, n_out: int, k: int, stride: int, pad: int, dil: int) -> np.ndarray:
    """Boolean mask over input positions [0, n_in) that some (output, tap) pair reads."""
    idx = (stride * np.arange(n_out)[:, None] + dil * np.arange(k)[None, :] - pad).ravel()
    mask = np.zeros(n_in, dtype=bool)
    mask[idx[(idx >= 0) & (idx < n_in)]] = True
    return mask


def _axis_effective_pairs(n_in: int, n_out: int, k: int, stride: int, pad: int, dil: int) -> int:
    """Number of (output, tap) pairs on one axis whose input index lies inside the image."""
    idx = stride * np.arange(n_out)[:, None] + dil * np.arange(k)[None, :] - pad
    return int(np.count_nonzero((idx >= 0) & (idx < n_in)))


def _axis_rho(k: int, stride: int, dil: int) -> int:
    """Largest number of taps r in [0, k) that map to one input position (theory.md (H1))."""
    return min(k, -(-k * math.gcd(stride, dil) // stride))


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """One 2-D convolution layer (groups = 1), with the precision of every array.

    Parameters
    ----------
    batch, in_channels, out_channels : int
        N, C and K.
    in_size, kernel_size : int or (int, int)
        (H_in, W_in) and (R, S).
    stride, padding, dilation : int or (int, int)
        (sh, sw), (ph, pw) and (dh, dw).
    dtype_in, dtype_weight, dtype_acc, dtype_out : str
        Element types of the input, the filters, the partial sums (accumulator) and the stored
        output.  ``dtype_acc`` and ``dtype_out`` default to the accumulator that goes with
        ``dtype_in`` (int32 for int8).
    bias : bool
        Whether the layer adds a bias per output channel (stored in the accumulator type).
    name : str
        A label, e.g. the catalogue name.
    padding_end : (int, int), optional
        Zero padding after the last row and column, when it differs from ``padding`` (which is
        then the padding before the first).  Layers are symmetric; the local block of one rank is
        not, and is described by the same class.

    Raises
    ------
    ParconvError
        On a non-positive size, stride or dilation, a negative padding, a kernel wider than the
        padded input, or an unknown dtype; the message names the field and the allowed range.
    """

    batch: int
    in_channels: int
    out_channels: int
    in_size: tuple[int, int]
    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    dtype_in: str = "int8"
    dtype_weight: str | None = None
    dtype_acc: str | None = None
    dtype_out: str | None = None
    bias: bool = False
    name: str = "custom"
    padding_end: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        for field in ("batch", "in_channels", "out_channels"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ParconvError(f"{field} must be a positive integer (>= 1), got {value!r}")
            if int(value) > MAX_FIELD:
                raise ParconvError(f"{field} must be at most {MAX_FIELD}, got {int(value)}")
            object.__setattr__(self, field, int(value))
        if self.padding_end is None:
            object.__setattr__(self, "padding_end", self.padding)
        for field, low in (("in_size", 1), ("kernel_size", 1), ("stride", 1),
                           ("padding", 0), ("dilation", 1), ("padding_end", 0)):
            pair = _pair(getattr(self, field), field)
            if min(pair) < low:
                raise ParconvError(f"{field} must be >= {low}, got {pair}")
            object.__setattr__(self, field, pair)
        dtype_weight = self.dtype_weight or self.dtype_in
        object.__setattr__(self, "dtype_weight", dtype_weight)
        if self.dtype_in in DEFAULT_ACC:
            object.__setattr__(self, "dtype_acc", self.dtype_acc or DEFAULT_ACC[self.dtype_in])
        object.__setattr__(self, "dtype_out", self.dtype_out or self.dtype_acc)
        for field in ("dtype_in", "dtype_weight", "dtype_acc", "dtype_out"):
            if getattr(self, field) not in DTYPE_BYTES:
                raise ParconvError(f"{field} must be one of {', '.join(DTYPE_BYTES)}, "
                                   f"got {getattr(self, field)!r}")
        for axis, (n_in, k, pad, pad_end, dil) in enumerate(zip(
                self.in_size, self.kernel_size, self.padding, self.padding_end, self.dilation)):
            extent = dil * (k - 1) + 1
            if extent > n_in + pad + pad_end:
                raise ParconvError(
                    f"kernel_size {'height' if axis == 0 else 'width'} {k} with dilation {dil} "
                    f"spans {extent} positions, more than the padded input ({n_in} + {pad} + "
                    f"{pad_end} = {n_in + pad + pad_end}); kernel extent must be <= padded "
                    f"input size")
        self._check_sizes()
        object.__setattr__(self, "bias", bool(self.bias))
        check_accumulator_range(self)

    def _check_sizes(self) -> None:
        """Refuse, from arithmetic alone, layers whose bookkeeping or arrays could not be held."""
        for axis, (n_in, n_out, k) in enumerate(zip(self.in_size, self.out_size,
                                                    self.kernel_size)):
            name = "height" if axis == 0 else "width"
            if max(n_in, n_out * k) > MAX_AXIS_WORK:
                raise ParconvError(
                    f"layer too large along the {name}: {n_in} input and {n_out} output positions "
                    f"with {k} taps (padding {self.padding[axis]}); at most {MAX_AXIS_WORK} input "
                    f"positions and output positions x taps are supported")
        for what, shape, dtype in (("input", self.input_shape, self.dtype_in),
                                   ("weight", self.weight_shape, self.dtype_weight),
                                   ("output", self.output_shape, self.dtype_acc)):
            size = math.prod(shape) * DTYPE_BYTES[dtype]
            if size > MAX_ARRAY_BYTES:
                raise ParconvError(f"the {what} array {shape} would need {size} bytes, more than "
                                   f"the {MAX_ARRAY_BYTES} supported")

    # ---- shapes -------------------------------------------------------------------------------
    @cached_property
    def out_size(self) -> tuple[int, int]:
        """(H, W): floor((H_in + 2 ph - dh (R - 1) - 1) / sh) + 1, and likewise W (with
        ``padding + padding_end`` in place of ``2 ph`` for an asymmetric block).  Computed once
        per spec (the tiling searches ask for it thousands of times)."""
        return tuple((n + p + q - d * (k - 1) - 1) // s + 1 for n, k, s, p, q, d in
                     zip(self.in_size, self.kernel_size, self.stride, self.padding,
                         self.padding_end, self.dilation))

    @cached_property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.in_channels, *self.in_size)

    @cached_property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels, *self.kernel_size)

    @cached_property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_channels, *self.out_size)

    def axis(self, which: int) -> tuple[int, int, int, int, int, int]:
        """(n_in, n_out, kernel, stride, padding, dilation) of axis 0 (height) or 1 (width)."""
        return (self.in_size[which], self.out_size[which], self.kernel_size[which],
                self.stride[which], self.padding[which], self.dilation[which])

    # ---- counts -------------------------------------------------------------------------------
    @cached_property
    def G(self) -> int:
        """Multiply-adds of the full loop nest, N K C H W R S."""
        H, W = self.out_size
        R, S = self.kernel_size
        return self.batch * self.out_channels * self.in_channels * H * W * R * S

    @cached_property
    def effective_pairs(self) -> tuple[int, int]:
        """(A_h, A_w): (output, tap) pairs per axis whose input index is inside the image."""
        return tuple(_axis_effective_pairs(*self.axis(i)) for i in (0, 1))

    @cached_property
    def G_eff(self) -> int:
        """Iterations whose input index lies inside the image: N K C A_h A_w."""
        a_h, a_w = self.effective_pairs
        return self.batch * self.out_channels * self.in_channels * a_h * a_w

    @cached_property
    def touched_rows(self) -> np.ndarray:
        """Boolean mask over input rows [0, H_in) that some output row reads."""
        return _axis_touched(*self.axis(0))

    @cached_property
    def touched_cols(self) -> np.ndarray:
        """Boolean mask over input columns [0, W_in) that some output column reads."""
        return _axis_touched(*self.axis(1))

    @property
    def size_input_touched(self) -> int:
        """|I|: input elements some iteration reads, N C (touched rows) (touched columns)."""
        return (self.batch * self.in_channels * int(self.touched_rows.sum())
                * int(self.touched_cols.sum()))

    @cached_property
    def size_input(self) -> int:
        return int(np.prod(self.input_shape))

    @cached_property
    def size_filter(self) -> int:
        """|F| = K C R S."""
        return int(np.prod(self.weight_shape))

    @cached_property
    def size_output(self) -> int:
        """|O| = N K H W."""
        return int(np.prod(self.output_shape))

    @property
    def rho_hw(self) -> tuple[int, int]:
        return tuple(_axis_rho(k, s, d) for k, s, d in
                     zip(self.kernel_size, self.stride, self.dilation))

    @property
    def rho(self) -> int:
        """Largest number of im2col entries one input pixel appears in, rho_h rho_w."""
        rho_h, rho_w = self.rho_hw
        return rho_h * rho_w

    # ---- precisions ---------------------------------------------------------------------------
    @cached_property
    def p_in(self) -> int:
        return DTYPE_BYTES[self.dtype_in]

    @cached_property
    def p_weight(self) -> int:
        return DTYPE_BYTES[self.dtype_weight]

    @cached_property
    def p_acc(self) -> int:
        return DTYPE_BYTES[self.dtype_acc]

    @cached_property
    def p_out(self) -> int:
        return DTYPE_BYTES[self.dtype_out]

    @cached_property
    def p_bias(self) -> int:
        """The bias is stored in the accumulator type (int32 for int8 layers)."""
        return self.p_acc

    # ---- conversions --------------------------------------------------------------------------
    def replace(self, **changes) -> "ConvSpec":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Every field and the derived sizes, JSON-ready (the report's ``spec``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key in ("in_size", "kernel_size", "stride", "padding", "dilation", "padding_end"):
            out[key] = list(out[key])
        out.update(out_size=list(self.out_size), G=self.G, G_eff=self.G_eff,
                   size_input=self.size_input, size_input_touched=self.size_input_touched,
                   size_filter=self.size_filter, size_output=self.size_output, rho=self.rho)
        return out

    def describe(self) -> str:
        """One line: shapes, stride, padding, dilation and types."""
        (hi, wi), (r, s), (h, w) = self.in_size, self.kernel_size, self.out_size
        return (f"{self.name}: N={self.batch} C={self.in_channels} K={self.out_channels} "
                f"in {hi}x{wi} -> out {h}x{w}, kernel {r}x{s}, stride {self.stride[0]}x"
                f"{self.stride[1]}, padding {self.padding[0]}x{self.padding[1]}, dilation "
                f"{self.dilation[0]}x{self.dilation[1]}, {self.dtype_in}/{self.dtype_weight}"
                f" -> {self.dtype_acc}{' +bias' if self.bias else ''}")


def spec_for_dtype(dtype: str, **fields) -> ConvSpec:
    """A ConvSpec whose types follow the command line's ``--dtype``: inputs and weights of that
    type, accumulation and output in `DEFAULT_ACC` (int8 and int16 -> int32, int32 -> int64,
    float16 -> float32, float32 and float64 keep their type)."""
    if dtype not in INPUT_DTYPES:
        raise ParconvError(f"--dtype must be one of {', '.join(INPUT_DTYPES)}, got {dtype!r}")
    acc = DEFAULT_ACC[dtype]
    return ConvSpec(dtype_in=dtype, dtype_weight=dtype, dtype_acc=acc, dtype_out=acc, **fields)
