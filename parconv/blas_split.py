"""One block run as T pieces on T Python threads, each with single-threaded BLAS.  Pure, no MPI.

With T BLAS threads a block's products are split by OpenBLAS inside each call; the thin
products of the direct methods (inner dimension and K both 64 on a 56x56 3x3 layer) scale
badly that way, and the casts, layout copies and integer group sums between the products run
on the calling thread alone.  Here the block's output is instead cut into T pieces of equal
work (whole images, or rows of an image where the batch does not divide), each computed by
the same method on its own slice of the input and written into its disjoint slice of the
output by one of T threads, while every BLAS library is held to one thread (numpy's products,
casts and ufunc loops release the GIL, so the threads run side by side).  The thread count
the caller set (`parconv.blas.current_threads`) is the number of pieces: the rank still uses
that many threads.

Every piece computes its outputs exactly as the whole block would, from the same operands in
the same types: integer results are identical (exact sums); floating results differ at most
by the summation order BLAS picks for a product of another size.
"""

from __future__ import annotations

import concurrent.futures
import functools

import numpy as np

from .blas import limit_threads, numpy_products
from .spec import ConvSpec

#: the fewest multiply-adds per piece worth a thread of its own (a piece's fixed costs: its
#: spec, phase images and a thread hand-over, some 0.1 ms)
MIN_PIECE_MACS = 1 << 24


@functools.lru_cache(maxsize=4)
def _pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    """Idle threads kept for the next block (starting threads per block costs more than a
    small piece)."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                                 thread_name_prefix="parconv-blas")


def pieces(batch: int, height: int, count: int, align: int = 1) -> list[list[tuple]]:
    """The (image, output row) grid cut into at most ``count`` parts of nearly equal rows.

    Part i holds the flattened rows [N H i / count, N H (i + 1) / count) (cuts inside an image
    rounded to a multiple of ``align`` rows) as a list of ``(n0, n1, h0, h1)``: whole images
    ``n0:n1`` (``(h0, h1) == (0, height)``) or rows ``h0:h1`` of image ``n0`` (``n1 = n0 +
    1``).  Empty parts are dropped, so fewer than ``count`` parts come back when the grid has
    fewer rows than that.
    """
    total = batch * height

    def cut(i: int) -> int:
        n, h = divmod(total * i // count, height)
        return n * height + min(height, -(-h // align) * align)

    cuts = [cut(i) for i in range(count)] + [total]
    out = []
    for start, stop in zip(cuts, cuts[1:]):
        part = []
        while start < stop:
            n, h = divmod(start, height)
            if h == 0 and stop - start >= height:
                images = (stop - start) // height
                part.append((n, n + images, 0, height))
                start += images * height
            else:
                end = min(stop, (n + 1) * height)
                part.append((n, n + 1, h, end - n * height))
                start = end
        if part:
            out.append(part)
    return out


def piece_spec(spec: ConvSpec, n0: int, n1: int, h0: int, h1: int):
    """The block of output rows ``h0:h1`` of images ``n0:n1``: its spec and the input rows
    ``[lo, hi)`` it reads (None when it reads padding only).  Its padding is what the whole
    block pads there (asymmetric at the cuts: none on a side that reads real rows)."""
    (sh, _), (dh, _), (R, _), (ph, _), H_in = (spec.stride, spec.dilation, spec.kernel_size,
                                              spec.padding, spec.in_size[0])
    first, last = sh * h0 - ph, sh * (h1 - 1) + dh * (R - 1) - ph + 1
    lo, hi = max(0, first), min(H_in, last)
    if hi <= lo:
        return spec.replace(batch=n1 - n0), None
    sub = spec.replace(batch=n1 - n0, in_size=(hi - lo, spec.in_size[1]),
                       padding=(lo - first, spec.padding[1]),
                       padding_end=(last - hi, spec.padding_end[1]))
    return sub, (lo, hi)


def run_split(spec: ConvSpec, x: np.ndarray, y: np.ndarray, workers: int, run,
              align: int = 1) -> int:
    """``run(piece_spec, x_piece, y_piece)`` on every piece of `pieces`, the parts on
    ``workers`` threads (the calling thread takes the first), BLAS held to one thread
    meanwhile.  Local.

    ``y`` (the block's C-contiguous output) holds every piece's result afterwards: pieces of
    whole images are computed straight into their slice of ``y``, pieces of rows into a
    contiguous buffer copied there (the methods write their output through reshaped views).
    An error in any piece is raised here, after all parts have stopped.  Returns the number
    of parts (at most ``workers``; fewer when the block has fewer output rows).
    """
    H = spec.out_size[0]

    def piece(n0, n1, h0, h1):
        sub, rows = piece_spec(spec, n0, n1, h0, h1)
        if (h0, h1) == (0, H):
            run(sub, x[n0:n1], y[n0:n1])
        elif rows is None:
            y[n0:n1, :, h0:h1] = 0
        else:
            out = np.empty(sub.output_shape, dtype=y.dtype)
            run(sub, x[n0:n1, :, rows[0]:rows[1]], out)
            y[n0:n1, :, h0:h1] = out

    def part(blocks):
        with numpy_products():      # products that release the GIL
            for block in blocks:
                piece(*block)

    parts = pieces(spec.batch, H, workers, align)
    with limit_threads(1):
        futures = [_pool(workers).submit(part, blocks) for blocks in parts[1:]]
        try:
            part(parts[0])
        finally:
            concurrent.futures.wait(futures)
        for future in futures:
            future.result()
    return len(parts)
