"""Node kernels on the CPU: the fast convolution and a slow reference.  Pure, no MPI.

Every kernel follows one contract (docs/design.md 4.4, "Node kernel interface")::

    y, stats = parconv.nodes.get_kernel(name).run(spec, x, w)

``spec`` describes the LOCAL block (its padding may be asymmetric: ``spec.padding`` before,
``spec.padding_end`` after), ``x`` is ``(N, C, H_in, W_in)`` of ``spec.dtype_in``, ``w`` is
``(K, C, R, S)`` of ``spec.dtype_weight``; ``y`` is the ``(N, K, H, W)`` partial output in
``spec.dtype_acc`` without bias, exact for integer types (int32 wrap-around like the hardware);
``stats`` is a JSON-ready dict with at least ``"kernel"`` and ``"macs"``.
"""

from __future__ import annotations

import time

import numpy as np

from . import blas_mkl
from .blas import blas_info, limit_threads, prepare
from .blasconv import METHODS, conv2d_blas
from .errors import ParconvError
from .spec import ConvSpec


def _checked_operands(spec: ConvSpec, x, w) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``w`` with the spec's types and shapes, or ParconvError naming the mismatch."""
    arrays = []
    for name, value, shape, dtype in (("x", x, spec.input_shape, spec.dtype_in),
                                      ("w", w, spec.weight_shape, spec.dtype_weight)):
        value = np.asarray(value)
        if value.shape != tuple(shape):
            raise ParconvError(f"kernel operand {name} must have shape {tuple(shape)} for "
                               f"{spec.describe()}, got {value.shape}")
        if value.dtype != np.dtype(dtype):
            if not np.can_cast(value.dtype, dtype, casting="safe"):
                raise ParconvError(f"kernel operand {name} must be {dtype} (or safely castable), "
                                   f"got {value.dtype}")
            value = value.astype(dtype)
        arrays.append(value)
    return arrays[0], arrays[1]


def _to_accumulator(acc: np.ndarray, dtype_acc: str) -> np.ndarray:
    """Cast exact int64 / float64 sums to the accumulator type; integers wrap around like the
    hardware (int64 -> int32 keeps the low 32 bits)."""
    target = np.dtype(dtype_acc)
    if np.issubdtype(target, np.integer):
        return acc.astype(np.int64).astype(target)
    return acc.astype(target, copy=False)


def conv2d_local(spec: ConvSpec, x: np.ndarray, w: np.ndarray, method: str | None = None
                 ) -> np.ndarray:
    """The convolution of one local block, no bias, in ``spec.dtype_acc``.  Local.

    Pads the input by ``spec.padding`` before and ``spec.padding_end`` after.  BLAS matrix
    products without a full im2col matrix, exact for integers (`parconv.blasconv`); ``method``
    forces "gemm" (1x1 unpadded only), "taps", "im2col" or "winograd" (floating 3x3, stride 1
    or 2, dilation 1) (default: `choose_method`).
    """
    x, w = _checked_operands(spec, x, w)
    return conv2d_blas(spec, x, w, method)[0]


class NumpyKernel:
    """The fast CPU node kernel (numpy/scipy BLAS); exact for integer types.  Local.

    Parameters
    ----------
    threads : int, optional
        BLAS threads for the kernel's products (threadpoolctl limit while it runs).  Default:
        as the process is set up (``OMP_NUM_THREADS`` etc., or the caller's threadpoolctl
        limits); the launchers set cores / ranks per node.
    method : str, optional
        Force "gemm", "taps", "im2col" or "winograd" (default: chosen per block).
    """

    name = "numpy"

    def __init__(self, threads: int | None = None, method: str | None = None) -> None:
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise ParconvError(f"threads must be a positive integer, got {threads!r}")
        if method not in (None, *METHODS):
            raise ParconvError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        self.threads, self.method = threads, method
        prepare()   # load the BLAS now, not inside the first (timed) call
        blas_mkl.enabled()  # and MKL where it runs the products

    def run(self, spec: ConvSpec, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, dict]:
        """Convolve one local block.  Local.

        Returns
        -------
        y : ndarray (N, K, H, W) of ``spec.dtype_acc``
            Partial output without bias.
        stats : dict
            ``kernel``, ``macs`` (= spec.G), ``time_s`` (wall time of the call), ``method``,
            ``compute_dtype`` (the products' operand type: "int8" for int8 products with int32
            sums on MKL's int8 GEMM, `parconv.blas_mkl_int`), ``exact_group`` (products per
            exact integer group, None when unlimited), ``blas_threads`` (BLAS threads this rank's products could use),
            ``workers`` (threads that ran pieces of the block side by side, each on one BLAS
            thread, `parconv.blas_split`; 1 when the products ran on the ``blas_threads``)
            ``blas`` (the BLAS libraries, version, CPU kernel and threads) and ``products``
            ("mkl" where MKL's sequential GEMM, or its int8 GEMM, ran products of this call,
            `parconv.blas_mkl`, else "numpy").
        """
        start = time.perf_counter()
        x, w = _checked_operands(spec, x, w)
        on_mkl = blas_mkl.calls()
        with limit_threads(self.threads):
            y, how = conv2d_blas(spec, x, w, self.method)
            threads = blas_info()
        products = "mkl" if blas_mkl.calls() > on_mkl else "numpy"
        return y, {"kernel": self.name, "macs": int(spec.G), **how, **threads,
                   "products": products, "time_s": time.perf_counter() - start}


def reference_conv2d(spec: ConvSpec, x: np.ndarray, w: np.ndarray, bias=None) -> np.ndarray:
    """Slow, obviously correct convolution for tests (small shapes only).  Local.

    Straight from the loop nest: for every tap, output (h, w) reads input row ``sh h + dh r - ph``
    and column ``sw w + dw s - pw``; reads outside the image contribute nothing.  Sums in int64
    (integers) or float64 (floats), adds ``bias`` if given, then casts to ``spec.dtype_acc``
    (integers wrap around).
    """
    x, w = _checked_operands(spec, x, w)
    exact = np.int64 if np.issubdtype(np.dtype(spec.dtype_in), np.integer) else np.float64
    x, w = x.astype(exact), w.astype(exact)
    H, W = spec.out_size
    R, S = spec.kernel_size
    out = np.zeros((spec.batch, spec.out_channels, H, W), dtype=exact)
    for r in range(R):
        in_rows = spec.stride[0] * np.arange(H) + spec.dilation[0] * r - spec.padding[0]
        h_ok = np.flatnonzero((in_rows >= 0) & (in_rows < spec.in_size[0]))
        for s in range(S):
            in_cols = spec.stride[1] * np.arange(W) + spec.dilation[1] * s - spec.padding[1]
            w_ok = np.flatnonzero((in_cols >= 0) & (in_cols < spec.in_size[1]))
            patch = x[:, :, in_rows[h_ok][:, None], in_cols[w_ok][None, :]]
            contribution = np.einsum("nchw,kc->nkhw", patch, w[:, :, r, s])
            np.add.at(out, (slice(None), slice(None), h_ok[:, None], w_ok[None, :]),
                      contribution)
    if bias is not None:
        out += np.asarray(bias).astype(exact).reshape(1, -1, 1, 1)
    return _to_accumulator(out, spec.dtype_acc)
