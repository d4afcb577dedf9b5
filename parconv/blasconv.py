"""The local convolution on BLAS matrix products, exact for integers: which method runs a block,
and on how many threads.  Pure, no MPI.

Four methods, chosen per block by `choose_method` (all keep stride, dilation, asymmetric padding
and non-square shapes; none builds the full im2col matrix):

* ``"gemm"`` (1x1 filters, no padding, at least `GEMM_MIN_PIXELS` pixels), ``"taps"`` (one
  product per filter tap on channels-last phase images) and ``"im2col"`` (blocks of im2col rows,
  for few channels or grids much larger than the output): `parconv.blas_methods`, on the
  layouts of `parconv.blas_layout`;
* ``"winograd"`` (floating types, 3x3, dilation 1): stride 1 by F(2x2, 3x3), 2.25x fewer
  multiply-adds in 16 products per block of tiles (`parconv.winograd`); stride 2 by its
  polyphase form, F(2, 2) on the even taps and the odd tap direct per axis, 1.44x fewer in 16
  products (`parconv.winograd_s2`).

Integers are computed exactly on floating-point BLAS in groups of products whose partial sums
are exact (`parconv.blas_exact`).  With more than one BLAS thread, the methods in `SPLIT` run
the block as that many pieces side by side on single-threaded BLAS (`parconv.blas_split`).
Stride-1 Winograd takes numba-compiled transforms where `parconv.jit` says so.
"""

from __future__ import annotations

import time

import numpy as np

from . import jit, winograd, winograd_s2
from .blas import current_threads
from .blas_exact import arithmetic
from .blas_layout import taps
from .blas_methods import conv_gemm, conv_im2col, conv_taps
from .blas_split import MIN_PIECE_MACS, run_split
from .errors import ParconvError
from .spec import ConvSpec

#: the methods of this module
METHODS = ("gemm", "taps", "im2col", "winograd")
#: (method, "int" or "float" input) that run faster as pieces on single-threaded BLAS
#: (blas_split), measured side by side at 2 threads on an otherwise idle machine
#: (experiments/bench_split.py): taps 1.2-2.6x (its nine thin products per block scale worst
#: on BLAS threads), int8 gemm 0.9-1.1x, float Winograd 1.03-1.18x (not on small maps, below);
#: not im2col (its one long product per block scales well: 0.63-1.04x split) nor float gemm
#: (0.93-1.22x)
SPLIT = {("taps", "int"), ("taps", "float"), ("gemm", "int"), ("winograd", "float")}
#: whether the threaded split's stride-2 Winograd pieces share the block's filter transform
#: (`conv2d_blas`); a switch for side-by-side measurement (experiments/bench_threads.py)
SHARED_FILTERS = True
#: the fewest output pixels per piece (Winograd on resnet50.layer4.1.conv2, 392 pixels at batch
#: 8, ran 0.81x split: each piece's 16 products get too short)
MIN_PIECE_PIXELS = 512
#: the "gemm" method needs images at least this large (else one product per image is too small
#: for the cost of packing the filters, and "taps" runs one product over all images)
GEMM_MIN_PIXELS = 128


def choose_method(spec: ConvSpec) -> str:
    """"gemm", "taps", "im2col" or "winograd" for this block (module docstring).

    "taps" computes ``Hq Wq / (H W)`` times the products and its products have inner dimension
    C; "im2col" computes exactly the products, with inner dimension C R S, but gathers C R S
    values per output row (cost relative to the products about `_GATHER_COST` / K);
    "winograd" (where it applies) costs `winograd.relative_cost`.  The cheapest wins.
    """
    (H, W), (R, S), C, K = spec.out_size, spec.kernel_size, spec.in_channels, spec.out_channels
    if _gemm_applies(spec) and H * W >= GEMM_MIN_PIXELS:
        return "gemm"
    _, (Hq, Wq) = taps(spec)
    costs = {"taps": (Hq * Wq) / (H * W) * (1 + _SHORT_COST / C),
             "im2col": 1 + _SHORT_COST / (C * R * S) + _GATHER_COST / K}
    form = winograd_form(spec)
    if form is not None:
        costs["winograd"] = form.relative_cost(spec.batch, C, K, H, W, _SHORT_COST)
    return min(costs, key=costs.get)


def winograd_form(spec: ConvSpec):
    """The module of the "winograd" method for this block (`parconv.winograd` for stride 1,
    `parconv.winograd_s2` for stride 2), or None where neither applies."""
    return next((form for form in (winograd, winograd_s2) if form.applies(spec)), None)


def channels_first(spec: ConvSpec) -> bool:
    """Whether "im2col" gathers from channel-first images: runs of W values are longer than
    runs of C."""
    return spec.in_channels * 4 <= spec.out_size[1]


def _gemm_applies(spec: ConvSpec) -> bool:
    """Whether the "gemm" method can run the block: 1x1 filters, no padding."""
    return (tuple(spec.kernel_size) == (1, 1) and tuple(spec.padding) == (0, 0)
            and tuple(spec.padding_end) == (0, 0))


#: relative cost of products with inner dimension d: 1 + _SHORT_COST / d (measured)
_SHORT_COST = 4.0
#: cost of gathering one im2col value, in multiply-adds of the product (measured)
_GATHER_COST = 16.0


def conv2d_blas(spec: ConvSpec, x: np.ndarray, w: np.ndarray, method: str | None = None,
                workers: int | None = None) -> tuple[np.ndarray, dict]:
    """The block's convolution (N, K, H, W) in ``spec.dtype_acc`` and how it was computed
    (``method``, ``compute_dtype``, ``exact_group``: products per exact integer group or None;
    ``workers``: threads of single-threaded BLAS that ran its pieces side by side, 1 for one
    call on the BLAS threads; ``transforms``: "numba" or "numpy" for the Winograd method,
    `parconv.jit`, else None).  ``x`` and ``w`` must already have the spec's shapes and
    types.  Local.

    ``workers`` (default `split_workers` for the current BLAS thread count) > 1 cuts the block
    into that many pieces run side by side (`parconv.blas_split`).  Sums reach ``y`` through an
    unsafe cast: exact integers (below 2**24 / 2**53 for one group) or int32/int64 sums, and
    int64 -> int32 keeps the low 32 bits (two's-complement wrap-around, like the hardware).
    """
    arith = arithmetic(spec, x, w)
    method = method or choose_method(spec)
    if method == "gemm" and not _gemm_applies(spec):
        raise ParconvError(f"method 'gemm' needs a 1x1 unpadded block, got {spec.describe()}")
    if method == "winograd" and winograd_form(spec) is None:
        raise ParconvError("method 'winograd' needs a floating-point 3x3 block of stride 1 or 2 "
                           f"and dilation 1, got {spec.describe()}")
    if method not in METHODS:
        raise ParconvError(f"method must be gemm, taps, im2col or winograd, got {method!r}")
    threads = current_threads()
    if workers is None:
        workers = split_workers(spec, method, threads)
    eligible = method == "winograd" and jit.eligible(spec, threads, workers)
    fused = jit.fused_winograd(spec, threads, workers) if eligible else None
    y = np.empty(spec.output_shape, dtype=spec.dtype_acc)
    start = time.perf_counter()

    # the stride-2 split's pieces share one filter transform (numpy copies and sums, made here)
    # instead of each making all of it; not stride 1, whose filter transform is a product:
    # made here on the BLAS threads, their spinning after it slowed the pieces (1.5x CPU time)
    u = (winograd_s2.filter_transform(w, arith.dtype)
         if method == "winograd" and workers > 1 and SHARED_FILTERS
         and winograd_form(spec) is winograd_s2 else None)

    def run(piece, xp, yp):
        if method == "winograd":
            (fused or winograd_form(piece).conv_winograd)(piece, xp, w, arith.dtype, yp, u)
        elif method == "gemm":
            conv_gemm(piece, xp, w, arith, yp)
        elif method == "taps":
            conv_taps(piece, xp, w, arith, yp)
        else:
            conv_im2col(piece, xp, w, arith, yp, channels_first=channels_first(piece))

    if workers > 1:
        workers = run_split(spec, x, y, workers, run, align=2 if method == "winograd" else 1)
    else:
        run(spec, x, y)
    if eligible and fused is None:
        jit.record(time.perf_counter() - start)
    return y, {"method": method, "compute_dtype": arith.dtype.name, "exact_group": arith.limit,
               "workers": workers, "transforms": None if method != "winograd" else
               "numba" if fused else "numpy"}


def split_workers(spec: ConvSpec, method: str, threads: int) -> int:
    """How many pieces `conv2d_blas` runs side by side: ``threads`` where the method and
    input kind are in `SPLIT` and every piece keeps `MIN_PIECE_MACS` multiply-adds and
    `MIN_PIECE_PIXELS` output pixels, else 1 (one call on the BLAS threads)."""
    kind = "int" if np.dtype(spec.dtype_in).kind in "iu" else "float"
    if threads <= 1 or (method, kind) not in SPLIT:
        return 1
    pixels = spec.batch * spec.out_size[0] * spec.out_size[1]
    return threads if (spec.G >= threads * MIN_PIECE_MACS
                       and pixels >= threads * MIN_PIECE_PIXELS) else 1
