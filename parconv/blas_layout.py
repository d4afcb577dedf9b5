"""The layouts of the direct methods: filter taps, channels-last phase images, tap-major filters
and blocks of output pixels.  Pure, no MPI.

The input is converted once to channels-last *phase images*, one per stride phase, zero
padding included: ``xq[a, b][n, i, j, c] = x[n, c, sh i + a - ph, sw j + b - pw]``.  Tap (r, s)
then reads phase ``(dh r mod sh, dw s mod sw)`` shifted by ``(dh r div sh, dw s div sw)``: on
the flattened (n, i, j) rows of that image a constant row offset (`Tap.offset`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .spec import ConvSpec


@dataclasses.dataclass(frozen=True)
class Tap:
    """Filter tap (r, s): the phase image it reads and its row offset there."""

    r: int
    s: int
    phase: tuple[int, int]
    shift: tuple[int, int]
    offset: int


def taps(spec: ConvSpec) -> tuple[list[Tap], tuple[int, int]]:
    """The taps and the phase-image grid (Hq, Wq) = (H + max row shift, W + max column shift)."""
    (sh, sw), (dh, dw), (R, S), (H, W) = spec.stride, spec.dilation, spec.kernel_size, \
        spec.out_size
    Hq, Wq = H + (dh * (R - 1)) // sh, W + (dw * (S - 1)) // sw
    out = []
    for r in range(R):
        for s in range(S):
            shift = ((dh * r) // sh, (dw * s) // sw)
            out.append(Tap(r, s, ((dh * r) % sh, (dw * s) % sw), shift, shift[0] * Wq + shift[1]))
    return out, (Hq, Wq)


def phase_images(spec: ConvSpec, x: np.ndarray, dtype, phases, grid, tail: int = 0,
                 channels_first: bool = False, shift: bool = False) -> dict:
    """Channels-last phase images of ``dtype``, zero where the padding is: per phase a flat
    (N Hq Wq + tail, C) array whose first N Hq Wq rows are the (N, Hq, Wq, C) image and whose
    ``tail`` rows are zeros.  With ``channels_first``: per phase a (C, N, Hq, Wq) array (and
    no tail).  With ``shift`` (int8): uint8 images of the values plus 128, padding and tail
    included (the left operands of `parconv.blas_mkl_int`)."""
    (sh, sw), (ph, pw), (H_in, W_in) = spec.stride, spec.padding, spec.in_size
    Hq, Wq = grid
    N, C = spec.batch, spec.in_channels
    out = {}
    for a, b in phases:
        if channels_first:
            flat = image = np.zeros((C, N, Hq, Wq), dtype=dtype)
        else:
            flat = np.zeros((N * Hq * Wq + tail, C), dtype=dtype)
            image = flat[:N * Hq * Wq].reshape(N, Hq, Wq, C)
        i0, i1 = held(ph - a, sh, H_in, Hq)
        j0, j1 = held(pw - b, sw, W_in, Wq)
        if i1 > i0 and j1 > j0:
            rows = slice(sh * i0 + a - ph, sh * (i1 - 1) + a - ph + 1, sh)
            cols = slice(sw * j0 + b - pw, sw * (j1 - 1) + b - pw + 1, sw)
            if channels_first:
                image[:, :, i0:i1, j0:j1] = x[:, :, rows, cols].transpose(1, 0, 2, 3)
            else:
                image[:, i0:i1, j0:j1, :] = x[:, :, rows, cols].transpose(0, 2, 3, 1)
        if shift:
            flat = flat.view(np.uint8)
            np.bitwise_xor(flat, np.uint8(0x80), out=flat)      # + 128 in two's complement
        out[(a, b)] = flat
    return out


def phase_views(flat: dict, spec: ConvSpec, grid) -> dict:
    """The (N, Hq, Wq, C) views of `phase_images`' flat arrays."""
    size = spec.batch * grid[0] * grid[1]
    return {p: v[:size].reshape(spec.batch, *grid, spec.in_channels) for p, v in flat.items()}


def held(pad: int, stride: int, extent: int, count: int) -> tuple[int, int]:
    """Indices i in [0, count) with 0 <= stride i - pad < extent (the positions that read the
    input, not its padding), as a half-open range."""
    i0 = max(0, -(-pad // stride))
    i1 = min(count, -(-(extent + pad) // stride))
    return i0, max(i0, i1)


def tap_major(w: np.ndarray, dtype) -> np.ndarray:
    """The filters as (R, S, K, C) of ``dtype``: per tap a C-contiguous K x C matrix whose
    transpose BLAS reads as is (a view for 1x1 filters; K C R S -> R S K C moves runs of R S
    values, 2-3x cheaper than R S C K)."""
    return np.ascontiguousarray(w.transpose(2, 3, 0, 1), dtype=dtype)


def pixel_blocks(N: int, H: int, W: int, rows: int, Hq: int | None = None
                  ) -> list[tuple[int, int, int, int]]:
    """(n0, n1, h0, h1): whole images when ``rows`` grid positions hold one (an image has
    ``Hq`` W positions, default H W), else rows of one image."""
    size = (Hq or H) * W
    if rows >= size:
        step = rows // size
        return [(n, min(N, n + step), 0, H) for n in range(0, N, step)]
    step = max(1, rows // W)
    return [(n, n + 1, h, min(H, h + step)) for n in range(N) for h in range(0, H, step)]
