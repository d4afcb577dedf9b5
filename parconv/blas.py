"""The BLAS under the CPU kernel: which library runs, with how many threads, and the kernel's
matrix products (`matmul`, and `matmul_into` accumulating in place).  Pure, no MPI.

numpy and scipy each ship their own OpenBLAS (or link the same MKL/OpenBLAS); both honour the
environment (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``) and `threadpoolctl` limits.  The kernel
never sets a thread count itself unless asked (`limit_threads`): with P ranks on a node the
launcher sets ``OMP_NUM_THREADS`` = cores / ranks (run.sh, launch/mpirun.sh).  Products on one
BLAS thread run on MKL's sequential GEMM where `parconv.blas_mkl` enables it (faster on the
short inner dimensions of convolutions); the thread controls here leave that MKL out, since it
starts no threads.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.machinery
import importlib.util
import sys
import threading
from pathlib import Path

import numpy as np

from . import blas_mkl, blas_mkl_int


#: matrix side of the warm-up products (large enough to fill the packing buffers of one thread)
WARM_UP_SIZE = 384


@functools.lru_cache(maxsize=1)
def _controller():
    """threadpoolctl's view of the loaded thread pools (built once: it scans the loaded
    libraries; the thread counts it reports are read live)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:       # threadpoolctl is pinned, but the kernel works without it
        return None
    fortran_blas()            # load scipy's BLAS so that it is listed too
    return ThreadpoolController()


#: scipy's f2py module of the Fortran BLAS (what scipy.linalg.blas re-exports)
_FBLAS = "scipy.linalg._fblas"


@functools.lru_cache(maxsize=1)
def fortran_blas():
    """scipy's BLAS wrappers (``sgemm``/``dgemm`` with ``beta``, which numpy lacks).  Local.

    Loaded from its extension file without running ``scipy.linalg``'s package import, which
    costs about 0.3 CPU-s per process (most of a 64-rank start-up on shared cores, where every
    rank pays it); the module is registered under its own name, so a later ``import
    scipy.linalg`` uses this one.  Falls back to ``scipy.linalg.blas`` if the file is not where
    this scipy keeps it.
    """
    if _FBLAS not in sys.modules:
        try:
            import scipy
            files = sorted((Path(scipy.__file__).parent / "linalg").glob("_fblas.*"))
            loader = importlib.machinery.ExtensionFileLoader(_FBLAS, str(files[0]))
            module = importlib.util.module_from_spec(
                importlib.util.spec_from_file_location(_FBLAS, str(files[0]), loader=loader))
            loader.exec_module(module)
            sys.modules[_FBLAS] = module
        except Exception:     # noqa: BLE001 - any layout this loader does not know: the package
            from scipy.linalg import blas
            return blas
    return sys.modules[_FBLAS]


def _libraries(controller) -> list:
    """threadpoolctl's BLAS libraries whose threads the kernel controls: all but an MKL that
    `parconv.blas_mkl` loaded sequential (it has no threads to set)."""
    return [lib for lib in controller.lib_controllers if lib.user_api == "blas"
            and not (lib.internal_api == "mkl" and blas_mkl.loaded())]


def blas_info() -> dict:
    """The BLAS libraries in this process and their current thread counts.  Local.

    Returns
    -------
    dict
        ``blas_threads``: the largest thread count of the loaded BLAS libraries (what one
        matrix product may use; None when threadpoolctl is missing); ``blas``: one string per
        library, e.g. ``"openblas 0.3.31 Haswell pthreads, 2 threads"``, MKL's last where it
        runs products (`parconv.blas_mkl`: one thread's, and shares on several threads).
    """
    mkl = [f"{blas_mkl.version()}, sequential (one thread's products, shares on several)"] \
        if blas_mkl.active() else []
    controller = _controller()
    if controller is None:
        return {"blas_threads": None, "blas": ["unknown (threadpoolctl not installed)"] + mkl}
    libraries = _libraries(controller)
    names = []
    for lib in libraries:
        info = lib.info()
        parts = [info.get("internal_api"), info.get("version"), info.get("architecture"),
                 info.get("threading_layer")]
        names.append(" ".join(str(p) for p in parts if p) + f", {lib.num_threads} threads")
    threads = max((lib.num_threads for lib in libraries), default=None)
    return {"blas_threads": threads, "blas": names + mkl}


def prepare() -> None:
    """Load scipy's BLAS and threadpoolctl's view now (about a second, once per process), so
    that the first kernel call is not the one that pays for it.  Local.  (MKL is loaded by the
    node kernels themselves, `parconv.kernels.NumpyKernel` and
    `parconv.gemmini.kernel.GemminiKernel`, where ``$PARCONV_BLAS`` allows it.)"""
    _controller()
    _gemm(np.dtype(np.float32))


#: BLAS thread counts `warm_up` has run with in this process
_WARMED: set = set()


def warm_up(int8: bool = False) -> None:
    """Run one small product per BLAS and type, so that the libraries allocate their packing
    buffers now: a fixed cost of the runtime (a few MiB per process) that a memory baseline
    taken afterwards holds, rather than the first layer's peak.  Once per process and BLAS
    thread count (the buffers stay allocated).  ``int8``: the layer is int8, so where MKL is
    active its int8 GEMM is readied too (`blas_mkl_int.ready`: its first call and self-check,
    about 20 ms and 14 MB).  Local."""
    prepare()
    if int8 and blas_mkl.active():
        blas_mkl_int.ready()
    threads = current_threads()
    if threads in _WARMED:
        return
    _WARMED.add(threads)
    for dtype in (np.float32, np.float64):
        a = np.ones((WARM_UP_SIZE, WARM_UP_SIZE), dtype=dtype)
        out = np.zeros_like(a)
        np.matmul(a, a, out=out)
        matmul_into(out, a, a, accumulate=True)
        if blas_mkl.active():
            blas_mkl.gemm(a, a, out, beta=1.0)


def current_threads() -> int:
    """The largest current thread count of the BLAS libraries (1 without threadpoolctl)."""
    controller = _controller()
    if controller is None:
        return 1
    return max((lib.num_threads for lib in _libraries(controller)), default=1)


@contextlib.contextmanager
def limit_threads(threads: int | None):
    """Run the block with ``threads`` BLAS threads in every BLAS library of the process.  Local.

    None keeps the thread count the process was given: the smallest of the libraries' current
    counts (numpy's and scipy's BLAS are separate libraries; one loaded after a threadpoolctl
    limit was set does not have it, and oversubscribed BLAS threads spin).
    """
    controller = _controller()
    if controller is None:
        yield
        return
    libraries = _libraries(controller)
    current = [lib.num_threads for lib in libraries]
    wanted = int(threads) if threads is not None else min(current, default=1)
    if all(n == wanted for n in current):
        yield
        return
    with controller.limit(limits=wanted, user_api="blas"):
        yield


#: per thread: whether accumulating products avoid scipy's BLAS wrapper (`numpy_products`)
_LOCAL = threading.local()


@contextlib.contextmanager
def numpy_products():
    """In this thread, let `matmul_into` accumulate through numpy (a product into the scratch
    and an addition) instead of scipy's ``?gemm`` with beta = 1: scipy's wrapper holds the GIL
    through the whole product, numpy's ``matmul`` and ``add`` release it, so threads running
    products side by side (`parconv.blas_split`) run in parallel.  Local."""
    before = getattr(_LOCAL, "numpy", False)
    _LOCAL.numpy = True
    try:
        yield
    finally:
        _LOCAL.numpy = before


def _on_mkl(out: np.ndarray, threads: int) -> bool:
    """Whether this product may run on MKL: floats, one BLAS thread, MKL active."""
    return out.dtype.kind == "f" and threads == 1 and blas_mkl.active()


#: fewest multiply-adds per share before a product on T BLAS threads is cut into T shares on
#: MKL (`_mkl_shares`; handing a share to a thread costs some 20-50 us)
MIN_SHARE_MACS = 1 << 23


@functools.lru_cache(maxsize=4)
def _share_pool(workers: int):
    """Idle threads for `_mkl_shares` (kept: starting threads per product costs more)."""
    import concurrent.futures
    return concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                                 thread_name_prefix="parconv-gemm")


def _mkl_shares(a: np.ndarray, b: np.ndarray, out: np.ndarray, beta: float,
                threads: int) -> bool:
    """``out = a @ b + beta out`` (2-d or 3-d, `blas_mkl.gemm`'s operands) cut into T shares
    run side by side on T threads of MKL's sequential GEMM, where the process has T > 1 BLAS
    threads, MKL is active and every share has at least `MIN_SHARE_MACS` multiply-adds: the
    matrices of a stack (the 16 Winograd coefficient products), else the columns of one
    product (or its rows, when it has more).  Local.

    Why: numpy's OpenBLAS on 2 threads ran the 16 products of resnet50.layer4.1.conv2's
    Winograd block (392 x 512 x 512) at 1.0-1.1x its one-thread speed, MKL's sequential GEMM
    on two threads of a share each at 1.9x (design.md 4.5).  Returns False (nothing computed)
    where this does not apply; a share MKL refuses (`blas_mkl.gemm` False) is computed by
    numpy afterwards.
    """
    if threads <= 1 or out.ndim not in (2, 3) or not blas_mkl.active():
        return False
    if _integer(out, b):
        if not blas_mkl_int.ready():
            return False
        product = blas_mkl_int.gemm
    elif out.dtype.kind == "f":
        product = blas_mkl.gemm
    else:
        return False
    m, n = out.shape[-2:]
    count = out.shape[0] if out.ndim == 3 else 1
    k = a.shape[-1]
    if count * m * n * k < 2 * MIN_SHARE_MACS:
        return False
    shares = max(1, min(threads, count * m * n * k // MIN_SHARE_MACS))
    if out.ndim == 3 and count >= shares:
        cuts = [count * i // shares for i in range(shares + 1)]

        def part(i):
            s = slice(cuts[i], cuts[i + 1])
            return (a if a.ndim == 2 else a[s]), (b if b.ndim == 2 else b[s]), out[s]
    elif out.ndim == 2 and n >= m:
        cuts = [n * i // shares for i in range(shares + 1)]

        def part(i):
            return a, b[:, cuts[i]:cuts[i + 1]], out[:, cuts[i]:cuts[i + 1]]
    elif out.ndim == 2:
        cuts = [m * i // shares for i in range(shares + 1)]

        def part(i):
            return a[cuts[i]:cuts[i + 1]], b, out[cuts[i]:cuts[i + 1]]
    else:
        return False

    def run(i):
        pa, pb, pout = part(i)
        return product(pa, pb, pout, beta=beta)

    futures = [_share_pool(threads).submit(run, i) for i in range(1, shares)]
    done = [run(0)] + [future.result() for future in futures]
    for i, ok in enumerate(done):
        if not ok:
            pa, pb, pout = part(i)
            if _integer(out, b):
                _integer_product(pa, pb, pout, beta)
            elif beta:
                pout += np.matmul(pa, pb)
            else:
                np.matmul(pa, pb, out=pout)
    return True


def _integer(out: np.ndarray, b: np.ndarray) -> bool:
    """Whether this is an int8 product into int32 (`parconv.blas_mkl_int`)."""
    return out.dtype == np.int32 and b.dtype == np.int8


def _integer_product(a: np.ndarray, b: np.ndarray, out: np.ndarray, beta: float) -> None:
    """``out = a @ b + beta out`` for the int8 products (a uint8 ``a`` stands for ``a - 128``):
    on MKL's int8 GEMM where it is `ready`, else exactly in numpy's int32 arithmetic (slow: for
    operands MKL refuses, or a caller on a machine without the int8 GEMM)."""
    if blas_mkl_int.ready() and blas_mkl_int.gemm(a, b, out, beta=beta):
        return
    left = a.astype(np.int32) - 128 if a.dtype == np.uint8 else a.astype(np.int32)
    product = np.matmul(left, b.astype(np.int32))
    if beta:
        out += product
    else:
        out[...] = product


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out = a @ b`` with numpy matmul's stacking (``out`` given, C-contiguous rows): on MKL
    where `_on_mkl` and the operands suit it (`blas_mkl.gemm`), in shares on MKL where the
    process has several BLAS threads (`_mkl_shares`), else numpy.  int8 operands into an int32
    ``out`` (``a`` int8, or uint8 standing for ``a - 128``) run on MKL's int8 GEMM where it is
    ready (`parconv.blas_mkl_int`), else exactly in numpy's int32 arithmetic.  Local."""
    # asking the libraries costs about 2 us, next to products of tens of us and more
    threads = current_threads()
    if out.ndim <= 3 and _mkl_shares(a, b, out, 0.0, threads):
        return
    if _integer(out, b):
        _integer_product(a, b, out, 0.0)
        return
    if out.ndim > 3 and out.dtype.kind == "f" and blas_mkl.active():
        # stacks of stacks (the stride-2 Winograd's 3 x 3 coefficient groups): one call (or
        # one set of shares) per leading index, operands broadcast as numpy does
        def pick(m, i):
            return m if m.ndim < out.ndim else m[i if m.shape[0] > 1 else 0]
        for i in range(out.shape[0]):
            matmul(pick(a, i), pick(b, i), out[i])
        return
    if not (_on_mkl(out, threads) and blas_mkl.gemm(a, b, out)):
        np.matmul(a, b, out=out)


@functools.lru_cache(maxsize=4)
def _gemm(dtype: np.dtype):
    blas = fortran_blas()
    return {np.dtype(np.float32): blas.sgemm, np.dtype(np.float64): blas.dgemm}.get(dtype)


def matmul_into(out: np.ndarray, a: np.ndarray, b: np.ndarray, accumulate: bool,
                scratch: np.ndarray | None = None) -> None:
    """``out = a @ b`` or, with ``accumulate``, ``out += a @ b``, without a temporary when the
    operands allow it.  Local.

    ``out`` (m, n) must be C-contiguous.  Accumulating float32/float64 products with C-contiguous
    ``a`` (m, k) and C- or F-contiguous ``b`` (k, n) is one BLAS call with beta = 1 on the
    transposed (column-major) views, so the product never leaves the output; other operands go
    through ``scratch`` (shape of ``out``; allocated when not given) and one addition, as do
    all operands inside `numpy_products`.  On MKL (`matmul`) every operand with contiguous rows
    or columns accumulates in place, inside `numpy_products` too (ctypes releases the GIL).
    """
    if not accumulate:
        matmul(a, b, out)
        return
    threads = current_threads()
    if (_on_mkl(out, threads) and blas_mkl.gemm(a, b, out, beta=1.0)) \
            or _mkl_shares(a, b, out, 1.0, threads):
        return
    if _integer(out, b):
        _integer_product(a, b, out, 1.0)
        return
    gemm = None if getattr(_LOCAL, "numpy", False) else _gemm(out.dtype)
    if (gemm is not None and a.dtype == out.dtype and b.dtype == out.dtype
            and a.flags.c_contiguous and out.flags.c_contiguous
            and (b.flags.c_contiguous or b.flags.f_contiguous)):
        # column-major: out^T (n, m) += b^T (n, k) @ a^T (k, m); b^T is b.T (F-contiguous) or,
        # for F-contiguous b, b itself transposed by BLAS
        if b.flags.c_contiguous:
            result = gemm(1.0, b.T, a.T, beta=1.0, c=out.T, overwrite_c=1)
        else:
            result = gemm(1.0, b, a.T, beta=1.0, c=out.T, trans_a=1, overwrite_c=1)
        if not np.shares_memory(result, out):   # f2py made a copy after all: keep the result
            out[...] = result.T
        return
    if scratch is None:
        scratch = np.empty_like(out)
    np.matmul(a, b, out=scratch)
    out += scratch
