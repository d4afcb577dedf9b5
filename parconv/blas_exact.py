"""Exact integer sums on floating-point BLAS: the products' type, the exact groups, their sums.
Pure, no MPI.

Every partial sum of at most ``limit`` products of magnitude at most ``max|x| max|w|`` is an
integer of magnitude at most ``2**24`` (float32) or ``2**53`` (float64), hence exact whatever
order BLAS adds in (docs/theory.md 1.5).  The reduction (taps x channels) is cut into groups of
at most ``limit`` products (`column_groups`); each group is summed in floating point and the
groups are added in the integer accumulator (`Sums`), which wraps around like int32 hardware.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .spec import ConvSpec

#: every integer of magnitude at most this is exact in the floating type
EXACT_BELOW = {np.dtype(np.float32): 2 ** 24, np.dtype(np.float64): 2 ** 53}


@dataclasses.dataclass(frozen=True)
class Arithmetic:
    """How a block is summed: ``dtype`` of the products' operands, at most ``limit`` products
    per exact group (None: no limit), ``out`` the type the groups are added in.  ``dtype``
    int8 with ``out`` int32: the int8 products of `parconv.blas_mkl_int` (`integer`), whose
    sums are int32 already."""

    dtype: np.dtype
    limit: int | None
    out: np.dtype

    @property
    def integer(self) -> bool:
        """Whether the products are int8 products with int32 sums (MKL's int8 GEMM)."""
        return self.dtype == np.int8

    @property
    def result(self) -> np.dtype:
        """The type the products write: int32 for `integer` products, else ``dtype``."""
        return np.dtype(np.int32) if self.integer else self.dtype


#: the int8 products' sums (`Arithmetic.integer`)
INTEGER = Arithmetic(np.dtype(np.int8), None, np.dtype(np.int32))


def integer_products(spec: ConvSpec) -> bool:
    """Whether the block's products may run as int8 products with int32 sums
    (`parconv.blas_mkl_int`): int8 inputs and filters, a signed accumulator of at least 32 bits
    whose true sums stay within int32 (C R S 2^14 < 2^31; `parconv.spec` refuses int32
    accumulators beyond that), and MKL's int8 GEMM `ready` in this process."""
    acc = np.dtype(spec.dtype_acc)
    terms = spec.in_channels * spec.kernel_size[0] * spec.kernel_size[1]
    if not (np.dtype(spec.dtype_in) == np.int8 and np.dtype(spec.dtype_weight) == np.int8
            and acc.kind == "i" and acc.itemsize >= 4 and terms << 14 < 1 << 31):
        return False
    from . import blas_mkl_int
    return blas_mkl_int.ready()


def arithmetic(spec: ConvSpec, x: np.ndarray, w: np.ndarray) -> Arithmetic:
    """The products' type and group length for this block's data.  Local.

    Floats compute in their accumulator type.  int8 blocks take the int8 products
    (`integer_products`, `INTEGER`) where MKL's int8 GEMM is ready.  Other integers use
    float32 when groups of at least min(C R S, 128) products stay exact for the data's largest
    magnitudes, else float64, else (products beyond 2**53) exact int64 arithmetic without BLAS.
    """
    acc = np.dtype(spec.dtype_acc)
    if np.issubdtype(np.dtype(spec.dtype_in), np.floating):
        return Arithmetic(acc, None, acc)
    if integer_products(spec):
        return INTEGER
    bound = magnitude(x) * magnitude(w)
    reduction = spec.in_channels * spec.kernel_size[0] * spec.kernel_size[1]
    for dtype in (np.dtype(np.float32), np.dtype(np.float64)):
        limit = EXACT_BELOW[dtype] // bound if bound else reduction
        if limit >= max(1, min(reduction, 128)) or (dtype == np.float64 and limit >= 1):
            if dtype == np.float64:
                # groups may pass 2**31: they are added in int64 (wrapped at the end)
                return Arithmetic(dtype, int(min(limit, reduction)), np.dtype(np.int64))
            if limit >= reduction:
                return Arithmetic(dtype, None, dtype)
            return Arithmetic(dtype, int(limit), acc)
    return Arithmetic(np.dtype(np.int64), None, np.dtype(np.int64))


def magnitude(a: np.ndarray) -> int:
    """max |a| as a Python int (no overflow of abs(-128) in int8)."""
    if a.size == 0:
        return 0
    return max(-int(a.min()), int(a.max()), 0)


def column_groups(channels: int, n_taps: int, limit: int | None, piece: int | None = None):
    """The reduction cut into exact groups of pieces of entries (tap, c0, c1).

    Entries cover every (tap, channel) once, tap-major; no group sums more than ``limit``
    products, no piece more than ``piece`` columns (None: one entry per piece, as the per-tap
    products take them).
    """
    step = min(channels, limit or channels, piece or channels)
    entries = [(t, c0, min(channels, c0 + step)) for t in range(n_taps)
               for c0 in range(0, channels, step)]
    groups = _pack(entries, limit)
    if piece is None:
        return [[[entry] for entry in group] for group in groups]
    return [_pack(group, piece) for group in groups]


def _pack(entries, bound):
    """Consecutive entries packed greedily into lists of at most ``bound`` columns."""
    packs, current, size = [], [], 0
    for entry in entries:
        width = entry[2] - entry[1]
        if current and bound is not None and size + width > bound:
            packs.append(current)
            current, size = [], 0
        current.append(entry)
        size += width
    if current:
        packs.append(current)
    return packs


class Sums:
    """Adds the exact groups of one block of the output into ``out`` (``out`` has the
    arithmetic's ``out`` type: the product type for one group, else the integer accumulator).
    Buffers hold ``size`` elements: blocks of any shape up to that size."""

    def __init__(self, arith: Arithmetic, size: int):
        self.arith = arith
        self.scratch = np.empty(size, dtype=arith.result)
        self.buffer = np.empty(size, dtype=arith.result) if arith.out != arith.result else None
        self.ints = np.empty(size, dtype=arith.out) if self.buffer is not None else None
        self.size, self._block = size, None

    def block(self, shape) -> np.ndarray:
        """A contiguous output block of ``shape`` (reused)."""
        if self._block is None:
            self._block = np.empty(self.size, dtype=self.arith.out)
        return self._view(self._block, shape)

    @staticmethod
    def _view(buffer: np.ndarray, shape) -> np.ndarray:
        return buffer[:int(np.prod(shape))].reshape(shape)

    def run(self, out: np.ndarray, groups, products) -> None:
        """``products(target, group, scratch, first)`` sums one group into ``target``
        (overwriting it when ``first``)."""
        scratch = self._view(self.scratch, out.shape)
        if self.buffer is None:
            for index, group in enumerate(groups):
                products(out, group, scratch, first=index == 0)
            return
        for index, group in enumerate(groups):
            target = self._view(self.buffer, out.shape)
            products(target, group, scratch, first=True)
            if index == 0:
                np.copyto(out, target, casting="unsafe")     # exact integers
            else:
                ints = self._view(self.ints, out.shape)
                np.copyto(ints, target, casting="unsafe")
                np.add(out, ints, out=out)                    # wraps like int32 hardware
