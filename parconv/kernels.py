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

from .errors import ParconvError
from .spec import ConvSpec

#: float64 represents every integer of magnitude below 2**53 exactly
_FLOAT64_EXACT = 2 ** 53


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


def _integer_sum_is_exact_in_float64(spec: ConvSpec) -> bool:
    """Whether every partial sum of C R S products fits the 53-bit float64 mantissa."""
    x_max = max(abs(int(np.iinfo(spec.dtype_in).min)), int(np.iinfo(spec.dtype_in).max))
    w_max = max(abs(int(np.iinfo(spec.dtype_weight).min)), int(np.iinfo(spec.dtype_weight).max))
    terms = spec.in_channels * spec.kernel_size[0] * spec.kernel_size[1]
    return terms * x_max * w_max < _FLOAT64_EXACT


def _compute_dtype(spec: ConvSpec) -> np.dtype:
    """The type the products are summed in: the float accumulator for floats; float64 (BLAS,
    exact, see `_integer_sum_is_exact_in_float64`) or int64 (no BLAS, slow) for integers."""
    if np.issubdtype(np.dtype(spec.dtype_in), np.floating):
        return np.dtype(spec.dtype_acc)
    return np.dtype(np.float64) if _integer_sum_is_exact_in_float64(spec) else np.dtype(np.int64)


def _to_accumulator(acc: np.ndarray, dtype_acc: str) -> np.ndarray:
    """Cast the summed products to the accumulator type; integers wrap around like the hardware."""
    target = np.dtype(dtype_acc)
    if np.issubdtype(target, np.integer):
        if np.issubdtype(acc.dtype, np.floating):
            acc = np.rint(acc).astype(np.int64)
        return acc.astype(target)  # int64 -> int32 keeps the low 32 bits: two's-complement wrap
    return acc.astype(target, copy=False)


def _tap_windows(spec: ConvSpec):
    """(r, s, row slice, column slice) of every filter tap over the padded input."""
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    H, W = spec.out_size
    R, S = spec.kernel_size
    for r in range(R):
        rows = slice(dh * r, dh * r + sh * (H - 1) + 1, sh)
        for s in range(S):
            yield r, s, rows, slice(dw * s, dw * s + sw * (W - 1) + 1, sw)


def _conv_im2col(spec: ConvSpec, xp: np.ndarray, wc: np.ndarray, images: int) -> np.ndarray:
    """im2col, `images` images at a time: one (K x C R S) @ (C R S x n H W) product per chunk."""
    N, C, K = spec.batch, spec.in_channels, spec.out_channels
    (H, W), (R, S) = spec.out_size, spec.kernel_size
    w_matrix = wc.reshape(K, C * R * S)
    y = np.empty((N, K, H, W), dtype=xp.dtype)
    for n0 in range(0, N, images):
        n1 = min(N, n0 + images)
        columns = np.empty((C, R, S, n1 - n0, H, W), dtype=xp.dtype)
        for r, s, rows, cols in _tap_windows(spec):
            columns[:, r, s] = xp[n0:n1, :, rows, cols].transpose(1, 0, 2, 3)
        product = w_matrix @ columns.reshape(C * R * S, -1)
        y[n0:n1] = product.reshape(K, n1 - n0, H, W).transpose(1, 0, 2, 3)
    return y


def _conv_per_tap(spec: ConvSpec, xp: np.ndarray, wc: np.ndarray) -> np.ndarray:
    """One (K x C) @ (C x N H W) product per filter tap: memory of one input copy, for images
    whose im2col columns would be too large."""
    K, (H, W) = spec.out_channels, spec.out_size
    xc = xp.transpose(1, 0, 2, 3)
    acc = np.zeros((K, spec.batch * H * W), dtype=xp.dtype)
    for r, s, rows, cols in _tap_windows(spec):
        acc += wc[:, :, r, s] @ xc[:, :, rows, cols].reshape(spec.in_channels, -1)
    return acc.reshape(K, spec.batch, H, W).transpose(1, 0, 2, 3)


#: largest im2col buffer built at once (bytes); the batch is processed in chunks that fit
IM2COL_CHUNK_BYTES = 64 << 20
#: im2col only below this many input channels: with more, the per-tap products are already
#: large BLAS calls and skip building the R S times larger column matrix (measured: per-tap is
#: 1.6x faster on resnet50.layer1.0.conv2, im2col 3-7x faster on resnet50.conv1 with C = 3)
IM2COL_MAX_CHANNELS = 32


def conv2d_local(spec: ConvSpec, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The convolution of one local block, no bias, in ``spec.dtype_acc``.  Local.

    Pads the input by ``spec.padding`` before and ``spec.padding_end`` after.  Few channels:
    multiplies the filters with the im2col columns of a few images at a time (one BLAS product
    with inner dimension C R S instead of R S products with inner dimension C).  Otherwise, or
    when one image's columns exceed ``IM2COL_CHUNK_BYTES``: one product per filter tap.
    """
    x, w = _checked_operands(spec, x, w)
    compute = _compute_dtype(spec)
    (ph, pw), (qh, qw) = spec.padding, spec.padding_end
    xp = np.pad(x.astype(compute), ((0, 0), (0, 0), (ph, qh), (pw, qw)))
    wc = w.astype(compute)
    (H, W), (R, S) = spec.out_size, spec.kernel_size
    per_image = spec.in_channels * R * S * H * W * compute.itemsize
    if spec.in_channels < IM2COL_MAX_CHANNELS and per_image <= IM2COL_CHUNK_BYTES:
        y = _conv_im2col(spec, xp, wc, max(1, IM2COL_CHUNK_BYTES // per_image))
    else:
        y = _conv_per_tap(spec, xp, wc)
    return np.ascontiguousarray(_to_accumulator(y, spec.dtype_acc))


class NumpyKernel:
    """The fast CPU node kernel (numpy BLAS); exact for integer types.  Local."""

    name = "numpy"

    def run(self, spec: ConvSpec, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, dict]:
        """Convolve one local block.  Local.

        Returns
        -------
        y : ndarray (N, K, H, W) of ``spec.dtype_acc``
            Partial output without bias.
        stats : dict
            ``kernel``, ``macs`` (= spec.G) and ``time_s`` (wall time of the call).
        """
        start = time.perf_counter()
        y = conv2d_local(spec, x, w)
        return y, {"kernel": self.name, "macs": int(spec.G),
                   "time_s": time.perf_counter() - start}


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
