"""MKL's integer GEMM for the exact int8 path: int8 operands, int32 sums.  Pure, no MPI.

The int8 path otherwise casts its operands to float32 and sums them in exact groups of float
products (`parconv.blas_exact`).  MKL's ``cblas_gemm_s8u8s32`` multiplies an unsigned 8-bit
matrix by a signed one with int32 sums, on the CPU's integer dot products (AVX-512 VNNI, AMX):
on the AVX-512 Xeon of the twelfth round it ran the 1x1 and 3x3 products of ResNet-50 at
250-830 GOP/s against 140-165 GFLOP/s for MKL's SGEMM on the same shapes, with no casts
(design.md 4.5).  Its unsigned operand, the left one, is made from the int8 one by adding 128
(``x ^ 0x80``: `shifted`) and MKL subtracts it again through its operand offset (``oa =
-128``): ``(u - 128) b = a b``, exactly, in int32.

Why the result is exact: every term is a product of two int8 values, the offset correction is
an int32 sum too, and the planner refuses layers whose true sums could leave int32
(`parconv.spec`), so any order of int32 additions, wrapping or not, gives the true sum.  What
could break that is a CPU without non-saturating 8-bit dot products: the older path through
``vpmaddubsw`` saturates pairs of u8 x s8 products at int16.  So the products run here only
where the CPU has VNNI or AMX and a self-check of MKL on extreme operands (`ready`: sums of
-128 x -128 past 2^24, mixed signs, both call layouts, accumulation onto large values) agrees
with numpy's int64 products bit for bit; elsewhere the float path runs.
"""

from __future__ import annotations

import ctypes
import functools
import threading

import numpy as np

from . import blas_mkl
from .blas_mkl import _INT_MAX, _NO_TRANS, _ROW_MAJOR, _operand, nothing_to_multiply, stack_shapes

#: MKL's one-offset-for-all C offset (``CblasFixOffset``)
_FIX_OFFSET = 173
#: CPU flags (/proc/cpuinfo) of the non-saturating 8-bit dot products MKL's int8 GEMM uses
CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
_LOCK = threading.Lock()
_ZERO = np.zeros(1, dtype=np.int32)


def _cpu_has_dot_products() -> bool:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    return any(flag in line.split() for flag in CPU_FLAGS)
    except OSError:
        pass
    return False


@functools.lru_cache(maxsize=1)
def _function():
    """MKL's ``cblas_gemm_s8u8s32`` with its argument types, or None."""
    lib = blas_mkl._library()
    if lib is None or not hasattr(lib, "cblas_gemm_s8u8s32"):
        return None
    i, p, real = ctypes.c_int, ctypes.c_void_p, ctypes.c_float
    fn = lib.cblas_gemm_s8u8s32
    fn.argtypes = [i, i, i, i, i, i, i, real, p, i, ctypes.c_int8, p, i, ctypes.c_int8, real,
                   p, i, p]
    fn.restype = None
    return fn


def ready() -> bool:
    """Whether int8 products may run here: MKL active (`blas_mkl.active`), the CPU has
    non-saturating 8-bit dot products (`CPU_FLAGS`) and MKL passed `self_check` in this
    process (run once: 10-20 ms with MKL's first int8 call).  Local; never loads MKL."""
    if not blas_mkl.active():
        return False
    with _LOCK:
        return _checked()


@functools.lru_cache(maxsize=1)
def _checked() -> bool:
    return _cpu_has_dot_products() and _function() is not None and self_check()


def self_check() -> bool:
    """MKL's int8 GEMM against numpy's int64 products, bit for bit, on the operands most
    likely to expose saturation or float rounding: all -128 (sums of 2^14 k, past 2^24), +127
    against -128, alternating extremes and random values; the left operand shifted here or
    by the caller, transposed, a stack, and accumulation (beta = 1) onto values near 2^29.
    Local."""
    rng = np.random.default_rng(12345)
    m, k, n = 16, 1100, 24         # 1100 x 2^14 > 2^24
    cases = [(np.full((m, k), -128), np.full((k, n), -128)),
             (np.full((m, k), 127), np.full((k, n), -128)),
             (np.where(np.arange(m * k).reshape(m, k) % 2, 127, -128),
              np.where(np.arange(k * n).reshape(k, n) % 3, -128, 127)),
             (rng.integers(-128, 128, (m, k)), rng.integers(-128, 128, (k, n)))]
    for a, b in cases:
        a, b = a.astype(np.int8), b.astype(np.int8)
        expected = _reference(a, b)
        for left, right in ((a, b), (shifted(a), b), (a.T.copy().T, b[:, :n // 4])):
            # shifted here or by the caller; a column-major left operand
            want = _reference(a, right)
            out = np.empty(want.shape, dtype=np.int32)
            if not gemm(left, right, out) or not np.array_equal(out, want):
                return False
        start = rng.integers(-(1 << 29), 1 << 29, expected.shape).astype(np.int32)
        out = start.copy()
        if not gemm(a, b, out, beta=1.0) or not np.array_equal(out, expected + start):
            return False
    stack_a = rng.integers(-128, 128, (3, 17, 300)).astype(np.int8)
    stack_b = rng.integers(-128, 128, (3, 300, 29)).astype(np.int8)
    out = np.empty((3, 17, 29), dtype=np.int32)
    return gemm(stack_a, stack_b, out) and np.array_equal(out, _reference(stack_a, stack_b))


def _reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` exactly, as int64: float64 products of these sizes stay below 2^53."""
    return np.rint(np.matmul(a.astype(np.float64), b.astype(np.float64))).astype(np.int64)


def shifted(m: np.ndarray) -> np.ndarray:
    """``m + 128`` as a C-contiguous uint8 copy of an int8 array (flip the sign bit): the form
    of a left operand that `gemm` takes as it is (an operand used in many products is shifted
    once by its caller)."""
    return np.bitwise_xor(m.view(np.uint8), np.uint8(0x80))


def gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray, beta: float = 0.0) -> bool:
    """``out = a @ b`` (``beta`` 0) or ``out += a @ b`` (``beta`` 1) for int8 ``b``, int32
    ``out`` and int8 ``a``, or uint8 ``a`` standing for ``a - 128`` (`shifted`), 2-d or stacked
    (3-d; a 2-d operand serves every matrix), on MKL's ``cblas_gemm_s8u8s32``.  Local.

    MKL's unsigned operand is the one whose rows are the output's rows (row-major A), in
    either layout of the call, so it is ``a`` that is shifted: here (a copy) when int8.
    Returns False (and computes nothing) where MKL's int8 GEMM is not loaded or the operands
    do not suit it: other types, a matrix with neither contiguous rows nor columns, an output
    whose rows are not contiguous or that overlaps an operand, sizes beyond 32-bit integers.
    Call only where `ready` (it does not check the CPU).
    """
    fn = _function()
    shapes = stack_shapes(a, b, out)
    if fn is None or out.dtype != np.int32 or a.dtype not in (np.int8, np.uint8) \
            or b.dtype != np.int8 or shapes is None or beta not in (0.0, 1.0):
        return False
    count, m, k, n = shapes
    if nothing_to_multiply(out, k, beta):
        return True
    if np.may_share_memory(out, a) or np.may_share_memory(out, b):
        return False
    calls = []
    for i in range(count):
        a2, b2, c2 = (x if x.ndim == 2 else x[i] for x in (a, b, out))
        pa, pb, pc = _operand(a2), _operand(b2), _operand(c2)
        if None in (pa, pb, pc) or pc[0] != _NO_TRANS or max(m, n, k, pa[1], pb[1], pc[1]) \
                > _INT_MAX:
            return False
        calls.append((a2, b2, c2, pa, pb, pc))
    if a.dtype == np.int8:
        # shifted only once the operands are known to suit: a refusal copies nothing
        a = shifted(a)
        calls = [(a if a.ndim == 2 else a[i], b2, c2, _operand(a if a.ndim == 2 else a[i]),
                  pb, pc) for i, (_, b2, c2, _, pb, pc) in enumerate(calls)]
    ptr = (lambda x: x.__array_interface__["data"][0])
    for a2, b2, c2, pa, pb, pc in calls:
        # (u - 128) b with u = a + 128: MKL subtracts the offset in its int32 sums
        fn(_ROW_MAJOR, pa[0], pb[0], _FIX_OFFSET, m, n, k, 1.0, ptr(a2), pa[1], -128,
           ptr(b2), pb[1], 0, beta, ptr(c2), pc[1], _ZERO.ctypes.data)
    blas_mkl._CALLS[0] += 1
    return True
