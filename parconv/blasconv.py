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
  products (`parconv.winograd_s2`); integers of stride 1 by the exact F(2x2, 3x3) of
  `parconv.winograd_exact`, where its data keep every float32 sum exact (else their direct
  method, `direct_method`).

Integers are computed exactly: int8 blocks as int8 products with int32 sums on MKL's int8 GEMM
where it is ready (`parconv.blas_mkl_int`; their own method costs, no Winograd), otherwise on
floating-point BLAS in groups of products whose partial sums are exact (`parconv.blas_exact`).  With more than one BLAS thread, the methods in `SPLIT` run
the block as that many pieces side by side on single-threaded BLAS (`parconv.blas_split`).
Stride-1 Winograd takes numba-compiled transforms where `parconv.jit` says so.
"""

from __future__ import annotations

import time

import numpy as np

from . import blas_mkl, jit, winograd, winograd_s2
from .blas import current_threads, limit_threads
from .blas_exact import arithmetic, integer_products, magnitude
from .blas_layout import taps
from .blas_methods import conv_gemm, conv_im2col, conv_taps, row_bands_fit
from .blas_split import MIN_PIECE_MACS, run_split
from .errors import ParconvError
from .spec import ConvSpec

#: the methods of this module
METHODS = ("gemm", "taps", "im2col", "winograd")
#: (method, "int" or "float" input) that run faster as pieces on single-threaded BLAS
#: (blas_split), measured side by side at 2 threads on an otherwise idle machine
#: (experiments/bench_split.py): taps 1.2-2.6x (its nine thin products per block scale worst
#: on BLAS threads), int8 gemm 0.9-1.1x, float Winograd 1.03-1.18x (not on small maps, below);
#: im2col by row bands (`blas_methods.rows_apply`; one short product per output row) on the
#: stem 1.03-1.36x int8 and 0.83-1.29x float32 in that script, 1.35-1.8x float32 with torch's
#: conv2d between the calls as parconv.bench runs them; not im2col's blocks (dilation along H
#: or narrow rows: one long product per block, 0.63-1.04x split) nor float gemm (0.93-1.22x);
#: integer Winograd takes the float rule (the same products and input transform)
SPLIT = {("taps", "int"), ("taps", "float"), ("gemm", "int"), ("winograd", "float"),
         ("winograd", "int"), ("im2col", "int"), ("im2col", "float")}
#: what splits in addition where the pieces' products run on MKL (`parconv.blas_mkl`): float
#: gemm, 1.13-1.30x split against 0.91-0.94x on OpenBLAS (resnet50.layer2.0.conv1 at batch 8,
#: 2 threads, two runs each of experiments/bench_split.py, AVX-512 Xeon)
SPLIT_MKL = {("gemm", "float")}
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
    "winograd" (where it applies, integers included: `exact_winograd_applies`) costs
    `winograd.relative_cost`.  The cheapest wins.  An integer block chosen for "winograd" runs
    `direct_method` instead where its data do not allow the exact form (`conv2d_blas`).
    """
    costs = _costs(spec)
    return min(costs, key=costs.get)


def direct_method(spec: ConvSpec) -> str:
    """The cheapest of "gemm", "taps" and "im2col" for this block (`choose_method`'s rule
    without Winograd)."""
    costs = _costs(spec)
    costs.pop("winograd", None)
    return min(costs, key=costs.get)


def _costs(spec: ConvSpec) -> dict:
    """`choose_method`'s modelled cost of each method that applies, relative to the direct
    products at full speed ("gemm" alone where it applies)."""
    (H, W), (R, S), C, K = spec.out_size, spec.kernel_size, spec.in_channels, spec.out_channels
    if _gemm_applies(spec) and H * W >= GEMM_MIN_PIXELS:
        return {"gemm": 1.0}
    _, (Hq, Wq) = taps(spec)
    if integer_products(spec):
        # int8 products (parconv.blas_mkl_int): no Winograd (its exact form runs float32
        # products, 3-4x slower than these), and short inner dimensions cost these more
        return {"taps": (Hq * Wq) / (H * W) * (1 + _SHORT_COST_INT / C),
                "im2col": 1 + _SHORT_COST_INT / (C * R * S) + _GATHER_COST / K}
    costs = {"taps": (Hq * Wq) / (H * W) * (1 + _SHORT_COST / C),
             "im2col": 1 + _SHORT_COST / (C * R * S) + _GATHER_COST / K}
    form = winograd_form(spec) or (winograd if exact_winograd_applies(spec) else None)
    if form is not None:
        costs["winograd"] = form.relative_cost(spec.batch, C, K, H, W, _SHORT_COST)
    return costs


def exact_winograd_applies(spec: ConvSpec) -> bool:
    """Whether an integer block may take the exact Winograd form (`parconv.winograd_exact`):
    integer inputs and filters, a signed accumulator of at least 32 bits (which holds its
    results, of magnitude below 9 2^22), 3x3 filters, stride 1, dilation 1 (its data decide
    whether it runs: `winograd_exact.exact_bound`)."""
    acc = np.dtype(spec.dtype_acc)
    return (np.dtype(spec.dtype_in).kind in "iu" and np.dtype(spec.dtype_weight).kind in "iu"
            and acc.kind == "i" and acc.itemsize >= 4 and tuple(spec.kernel_size) == (3, 3)
            and tuple(spec.stride) == (1, 1) and tuple(spec.dilation) == (1, 1))


def _exact_winograd(spec: ConvSpec, x: np.ndarray, w: np.ndarray, threads: int,
                    workers: int):
    """(`parconv.winograd_exact`, its float32 filters U) where an integer block runs the exact
    Winograd form, else (None, reason).  It runs where the numba transforms would run a float
    block of the same shape now (`parconv.jit.fused_winograd`: same thread rule and loading
    policy) and the data pass `winograd_exact.exact_bound`."""
    if jit.fused_winograd(_float_twin(spec), threads, workers) is None:
        return None, ("the numba transforms are not loaded or not usable at "
                      f"{threads} BLAS threads in {workers} pieces (parconv.jit)")
    from . import winograd_exact      # numba is importable: fused_winograd loaded it
    u = winograd_exact.exact_filters(w, magnitude(x))
    if u is None:
        return None, "its data exceed the exact float32 bound (winograd_exact.exact_bound)"
    return winograd_exact, u


def _float_twin(spec: ConvSpec) -> ConvSpec:
    """The float32 block of the same shape (whose numba rule the exact form follows)."""
    return spec.replace(dtype_in="float32", dtype_weight="float32", dtype_acc="float32")


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
#: the same for the int8 products of MKL's int8 GEMM (measured at batch 8, one thread, int8
#: GOP/s "taps" / "im2col": resnet50.layer1.0.conv2 186 / 221, layer3.0.conv2 406 / 589,
#: layer4.1.conv2 316 / 671; design.md 4.5): their nine products of depth C lose to one of
#: depth 9 C far more than float products do
_SHORT_COST_INT = 64.0
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

    An integer block chosen for "winograd" runs the exact form (`parconv.winograd_exact`:
    ``compute_dtype`` float32, ``exact_group`` None, ``transforms`` "numba") where
    `_exact_winograd` allows it, else `direct_method`; forced (``method="winograd"``) there,
    it raises ParconvError with the reason.
    """
    arith = arithmetic(spec, x, w)
    forced, method = method is not None, method or choose_method(spec)
    if method == "gemm" and not _gemm_applies(spec):
        raise ParconvError(f"method 'gemm' needs a 1x1 unpadded block, got {spec.describe()}")
    if method == "winograd" and winograd_form(spec) is None and not exact_winograd_applies(spec):
        raise ParconvError("method 'winograd' needs a 3x3 block of dilation 1 and stride 1 or 2 "
                           f"(integers: stride 1), got {spec.describe()}")
    if method not in METHODS:
        raise ParconvError(f"method must be gemm, taps, im2col or winograd, got {method!r}")
    threads = current_threads()
    given = workers
    if workers is None:
        workers = split_workers(spec, method, threads)
    exact, u, pending = None, None, False
    if method == "winograd" and exact_winograd_applies(spec):
        with limit_threads(1):      # a small product: no BLAS threads left spinning after it
            exact, found = _exact_winograd(spec, x, w, threads, workers)
        if exact is None:
            if forced:
                raise ParconvError(f"method 'winograd' cannot run the integer block "
                                   f"{spec.describe()} exactly: {found}")
            # "auto": this time counts towards loading numba, as a float block's would
            pending = jit.eligible(_float_twin(spec), threads, workers)
            method = direct_method(spec)
            workers = given if given is not None else split_workers(spec, method, threads)
        else:
            u = found
    eligible = method == "winograd" and exact is None and jit.eligible(spec, threads, workers)
    fused = jit.fused_winograd(spec, threads, workers) if eligible else None
    y = np.empty(spec.output_shape, dtype=spec.dtype_acc)
    start = time.perf_counter()

    # the stride-2 split's pieces share one filter transform (numpy copies and sums, made here)
    # instead of each making all of it; not stride 1, whose filter transform is a product:
    # made here on the BLAS threads, their spinning after it slowed the pieces (1.5x CPU time)
    if (exact is None and method == "winograd" and workers > 1 and SHARED_FILTERS
            and winograd_form(spec) is winograd_s2):
        u = winograd_s2.filter_transform(w, arith.dtype)

    def run(piece, xp, yp):
        if exact is not None:
            exact.conv_winograd_exact(piece, xp, u, yp)
        elif method == "winograd":
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
    if (eligible and fused is None) or pending:
        jit.record(time.perf_counter() - start)
    return y, {"method": method,
               "compute_dtype": "float32" if exact is not None else arith.dtype.name,
               "exact_group": None if exact is not None else arith.limit,
               "workers": workers, "transforms": None if method != "winograd" else
               "numba" if fused or exact is not None else "numpy"}


def split_workers(spec: ConvSpec, method: str, threads: int) -> int:
    """How many pieces `conv2d_blas` runs side by side: ``threads`` where the method and
    input kind are in `SPLIT` (or `SPLIT_MKL`, where MKL runs the pieces' products; im2col:
    where it runs by row bands or on int8 products: split at 2 threads, resnet50.layer3.0.conv2
    ran 642-662 GOP/s against 443-452 unsplit, the stem 143-155 against 100-125) and every piece
    keeps `MIN_PIECE_MACS` multiply-adds and `MIN_PIECE_PIXELS` output pixels, else 1 (one
    call on the BLAS threads)."""
    kind = "int" if np.dtype(spec.dtype_in).kind in "iu" else "float"
    if threads <= 1 or ((method, kind) not in SPLIT
                        and not ((method, kind) in SPLIT_MKL and blas_mkl.active())):
        return 1
    if method == "im2col" and not row_bands_fit(spec) and not integer_products(spec):
        return 1        # its blocks of float products, not row bands
    pixels = spec.batch * spec.out_size[0] * spec.out_size[1]
    return threads if (spec.G >= threads * MIN_PIECE_MACS
                       and pixels >= threads * MIN_PIECE_PIXELS) else 1
