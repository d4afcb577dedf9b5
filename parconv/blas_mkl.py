"""Intel MKL's sequential GEMM for the CPU kernel's float products.  Pure, no MPI.

numpy's OpenBLAS runs the kernel's products well on large squares but poorly on the short
inner dimensions a convolution gives (C = 64 channels, a 1x1 layer's 256): on an AVX-512 Xeon,
one thread, (1568 x 64) @ (64 x 64) ran at 120 GFLOP/s in OpenBLAS and 146-151 in MKL, (128 x
256) @ (256 x 3136) at 132-139 against 158-164 (docs/design.md 4.5).  Where MKL is installed
(the ``mkl`` wheel, or a cluster's MKL on the library path) the kernel's products on one BLAS
thread, which is every product of the threaded split's pieces (`parconv.blas_split`), run
through its CBLAS: ``cblas_?gemm`` for one matrix, ``cblas_?gemm_batch_strided`` for a stack
whose output matrices lie one after another at one stride (the 16 Winograd coefficient
products, a 1x1 layer's images); interleaved ones (the row bands' output rows, W apart in an
NCHW image) take the grouped ``cblas_?gemm_batch`` with the matrices' addresses.  A product on
T > 1 BLAS threads that is not a piece of the split runs as T shares, each one of these calls
on a thread of its own (`parconv.blas.matmul`); smaller ones stay on numpy's threaded BLAS.
The int8 products are `parconv.blas_mkl_int`'s.

MKL is loaded with its sequential threading layer (it starts no threads of its own, so the
process's thread count stays what `parconv.blas.limit_threads` sets) and the LP64 interface
(32-bit integers: a matrix whose sizes or strides do not fit falls back to numpy).  ctypes
releases the GIL during each call, so the split's threads run their products side by side.

``$PARCONV_BLAS`` chooses: ``auto`` (default) uses MKL where it loads and the CPU is Intel's
(MKL's tuned paths are for Intel CPUs; other CPUs keep OpenBLAS), ``mkl`` wherever it loads,
``numpy`` never.  Loaded when a node kernel is made (`parconv.kernels.NumpyKernel`: 18 ms and
15 MB of resident memory, measured on a warm page cache; `parconv.gemmini.kernel.GemminiKernel`,
whose executor runs int8 tiles on the int8 GEMM) or an int8 layer's tiles are executed
(`parconv.gemmini.executor`); planning never loads it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from pathlib import Path

import numpy as np

from .errors import ParconvError

#: "auto", "mkl" or "numpy" (module docstring)
BLAS_ENV = "PARCONV_BLAS"
#: names tried when the ``mkl`` wheel is not installed (a cluster's MKL on the library path)
_SONAMES = ("libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so")
#: MKL's constants: CBLAS row-major layout, no transpose / transpose, threading layer, LP64
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_SEQUENTIAL, _LP64 = 1, 0
_INT_MAX = (1 << 31) - 1
_LOCK = threading.Lock()
#: products run on MKL in this process (`calls`; threads may lose an increment, never all)
_CALLS = [0]


def choice(value: str | None = None) -> str:
    """``$PARCONV_BLAS`` (or ``value``) as "auto", "mkl" or "numpy".

    Raises
    ------
    ParconvError
        For any other value.
    """
    value = (os.environ.get(BLAS_ENV, "auto") if value is None else value).strip().lower() \
        or "auto"
    if value not in ("auto", "mkl", "numpy"):
        raise ParconvError(f"{BLAS_ENV}={value!r}: expected auto, mkl or numpy")
    return value


def _candidates() -> list[str]:
    """The ``mkl`` wheel's runtime library first (its files sit beside the environment's
    ``lib``), then the plain names for the dynamic loader's search path."""
    found = []
    try:
        import importlib.metadata as metadata
        dist = metadata.distribution("mkl")
        found = [str(Path(dist.locate_file(f)).resolve()) for f in dist.files or ()
                 if Path(str(f)).name.startswith("libmkl_rt.so")]
    except Exception:   # noqa: BLE001 - not installed, or metadata without a file list
        pass
    return found + list(_SONAMES)


@functools.lru_cache(maxsize=1)
def _intel_cpu() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return "GenuineIntel" in line
    except OSError:
        pass
    return False


@functools.lru_cache(maxsize=1)
def _library():
    """MKL's runtime with its sequential layer set, or None where it does not load (or is
    already running another threading layer, e.g. under a numpy built on MKL, which then runs
    the products itself)."""
    for name in _candidates():
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            # before any other MKL call; returns the layer in force
            if lib.MKL_Set_Threading_Layer(_SEQUENTIAL) != _SEQUENTIAL:
                return None
            lib.MKL_Set_Interface_Layer(_LP64)
            _declare(lib)
        except AttributeError:      # not MKL's runtime, or one without the batch calls
            continue
        return lib
    return None


def _declare(lib) -> None:
    i, p = ctypes.c_int, ctypes.c_void_p
    for prefix, real in (("s", ctypes.c_float), ("d", ctypes.c_double)):
        one = getattr(lib, f"cblas_{prefix}gemm")
        one.argtypes = [i, i, i, i, i, i, real, p, i, p, i, real, p, i]
        one.restype = None
        batch = getattr(lib, f"cblas_{prefix}gemm_batch_strided")
        batch.argtypes = [i, i, i, i, i, i, real, p, i, i, p, i, i, real, p, i, i, i]
        batch.restype = None
        grouped = getattr(lib, f"cblas_{prefix}gemm_batch")
        grouped.argtypes = [i, p, p, p, p, p, p, p, p, p, p, p, p, p, i, p]
        grouped.restype = None


def enabled() -> bool:
    """Whether the kernel's single-threaded products run on MKL (``$PARCONV_BLAS``, and MKL
    loads).  Loads MKL on the first call that may use it.

    Raises
    ------
    ParconvError
        ``PARCONV_BLAS=mkl`` where MKL does not load, or another value than the three.
    """
    return _enabled(os.environ.get(BLAS_ENV, "auto"))


@functools.lru_cache(maxsize=8)
def _enabled(setting: str) -> bool:
    wanted = choice(setting)
    if wanted == "numpy" or (wanted == "auto" and not _intel_cpu()):
        return False
    with _LOCK:
        lib = _library()
    if lib is None and wanted == "mkl":
        raise ParconvError(f"{BLAS_ENV}=mkl but MKL's runtime (libmkl_rt) does not load with "
                           "its sequential layer: pip install mkl, or put a cluster's MKL on "
                           "LD_LIBRARY_PATH")
    return lib is not None


def loaded() -> bool:
    """Whether MKL has been loaded (sequential) in this process."""
    return bool(_library.cache_info().currsize) and _library() is not None


def active() -> bool:
    """Whether products run on MKL now: loaded (by a node kernel, `enabled`) and still chosen
    by ``$PARCONV_BLAS``.  Never loads it: other users of the products (a warm-up, the
    planner) leave MKL out of the process."""
    return loaded() and enabled()


def calls() -> int:
    """How many products `gemm` has run on MKL in this process (a kernel call compares the
    count before and after to say which library ran its products)."""
    return _CALLS[0]


def version() -> str | None:
    """MKL's version string, or None where it is not loaded."""
    if not loaded():
        return None
    lib = _library()
    buf = ctypes.create_string_buffer(256)
    lib.MKL_Get_Version_String(buf, len(buf))
    return buf.value.decode(errors="replace").strip()


def _operand(m: np.ndarray):
    """(transpose flag, leading dimension) of a 2-d operand whose rows or columns are
    contiguous, else None."""
    item = m.itemsize
    rows, cols = m.shape
    if m.strides[1] == item or cols == 1:
        ld = m.strides[0] // item if rows > 1 else max(cols, 1)
        if m.strides[0] % item == 0 and ld >= max(cols, 1):
            return _NO_TRANS, ld
    if m.strides[0] == item or rows == 1:
        ld = m.strides[1] // item if cols > 1 else max(rows, 1)
        if m.strides[1] % item == 0 and ld >= max(rows, 1):
            return _TRANS, ld
    return None


def _stride(stack: np.ndarray, count: int) -> int | None:
    """Elements between consecutive matrices of a 3-d stack (0 for a broadcast one)."""
    if stack.ndim == 2 or count == 1:
        return 0
    step = stack.strides[0]
    return step // stack.itemsize if step % stack.itemsize == 0 and step >= 0 else None


def _disjoint(count: int, m: int, n: int, ld: int, step: int) -> bool:
    """Whether ``count`` (m x n) output matrices of row stride ``ld``, ``step`` elements apart,
    hold disjoint elements: one after another, or interleaved within a row stride (the row
    bands' output rows of an NCHW image: ``step`` = W, ``ld`` = H W)."""
    return count == 1 or step >= (m - 1) * ld + n or (n <= step and (count - 1) * step + n <= ld)


def stack_shapes(a: np.ndarray, b: np.ndarray, out: np.ndarray):
    """(count, m, k, n) of ``out = a @ b``, 2-d or a stack of ``count`` (3-d; a 2-d operand
    serves every matrix), or None where the shapes do not agree."""
    if out.ndim not in (2, 3) or a.ndim not in (2, out.ndim) or b.ndim not in (2, out.ndim):
        return None
    count = out.shape[0] if out.ndim == 3 else 1
    m, n = out.shape[-2:]
    k = a.shape[-1]
    if a.shape[-2:] != (m, k) or b.shape[-2:] != (k, n) \
            or any(x.ndim == 3 and x.shape[0] != count for x in (a, b)):
        return None
    return count, m, k, n


def nothing_to_multiply(out: np.ndarray, k: int, beta: float) -> bool:
    """Whether the product ``out = a @ b + beta out`` has no products (an empty output, or an
    inner dimension of 0: ``out = beta out``, done here)."""
    if out.size == 0:
        return True
    if k == 0:
        if beta == 0:
            out[...] = 0
        elif beta != 1:
            out *= beta
        return True
    return False


def gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray, beta: float = 0.0) -> bool:
    """``out = a @ b + beta out`` on MKL for 2-d or 3-d (stacked) float32/float64 operands of
    one type; a 2-d ``a`` or ``b`` is used for every matrix of the stack.  Local.

    Returns False (and computes nothing) where MKL is not loaded or the operands do not suit
    one call: another type, a matrix with neither contiguous rows nor columns, stacks not at
    one stride, sizes beyond 32-bit integers, or ``out`` overlapping an operand.  The caller
    then uses numpy.
    """
    lib = _library() if loaded() else None
    shapes = stack_shapes(a, b, out)
    if lib is None or out.dtype not in (np.float32, np.float64) \
            or a.dtype != out.dtype or b.dtype != out.dtype or shapes is None:
        return False
    count, m, k, n = shapes
    if nothing_to_multiply(out, k, beta):
        return True
    a2, b2, c2 = (x if x.ndim == 2 else x[0] for x in (a, b, out))
    pa, pb, pc = _operand(a2), _operand(b2), _operand(c2)
    sa, sb, sc = _stride(a, count), _stride(b, count), _stride(out, count)
    if None in (pa, pb, pc, sa, sb, sc) or pc[0] != _NO_TRANS or not _disjoint(count, m, n,
                                                                                 pc[1], sc):
        return False
    if np.may_share_memory(out, a) or np.may_share_memory(out, b):
        return False
    if max(m, n, k, pa[1], pb[1], pc[1], sa, sb, sc, count) > _INT_MAX:
        return False
    prefix = "s" if out.dtype == np.float32 else "d"
    ptr = (lambda x: x.__array_interface__["data"][0])
    if count == 1:
        getattr(lib, f"cblas_{prefix}gemm")(
            _ROW_MAJOR, pa[0], pb[0], m, n, k, 1.0, ptr(a2), pa[1], ptr(b2), pb[1],
            beta, ptr(c2), pc[1])
    elif sc < m * pc[1]:
        # MKL's strided batch wants the output matrices one after another (stridec >= ldc m);
        # interleaved ones go to its grouped batch, one call with the matrices' addresses
        # (one call per matrix would hold the GIL between the calls)
        item, steps = out.itemsize, np.arange(count, dtype=np.uint64)
        addresses = [(ptr(x) + steps * np.uint64(step * item)).astype(np.uintp)
                     for x, step in ((a2, sa), (b2, sb), (c2, sc))]
        real = ctypes.c_float if prefix == "s" else ctypes.c_double
        ints = (ctypes.c_int * 1)
        getattr(lib, f"cblas_{prefix}gemm_batch")(
            _ROW_MAJOR, ints(pa[0]), ints(pb[0]), ints(m), ints(n), ints(k), (real * 1)(1.0),
            addresses[0].ctypes.data, ints(pa[1]), addresses[1].ctypes.data, ints(pb[1]),
            (real * 1)(beta), addresses[2].ctypes.data, ints(pc[1]), 1, ints(count))
    else:
        getattr(lib, f"cblas_{prefix}gemm_batch_strided")(
            _ROW_MAJOR, pa[0], pb[0], m, n, k, 1.0, ptr(a2), pa[1], sa, ptr(b2), pb[1], sb,
            beta, ptr(c2), pc[1], sc, count)
    _CALLS[0] += 1
    return True
