"""Stride-1 Winograd on small maps with T threads: the block split by channels.  Pure, no MPI.

The threaded split of `parconv.blas_split` cuts a block by output rows; on a 7x7 map at
batch 8 (392 pixels, 128 tiles) its pieces' 16 products get too short, so such a block ran as
one call, its products on T OpenBLAS threads and its numpy transforms and filter transform
(16 K C values: 4.5 ms of 21 on resnet50.layer4.1.conv2 at one thread) on one thread.  Here
the T threads share the block's buffers (channels-last layout, `parconv.winograd`) and cut it
by channels instead, each on single-threaded BLAS:

* thread i transforms the filters of its output channels ``[k_i, k_i+1)`` (its own U), and
  splits and transforms the input of its input channels ``[c_i, c_i+1)`` (each channel of V
  reads only that channel of the input, so no thread waits for another here);
* all threads wait for each other (V is then whole);
* thread i computes the 16 products of its output channels against the whole V and their
  output transform into ``y[:, k_i:k_i+1]``; blocks after the first wait again before V is
  overwritten.

The products are those of one call with the same inner dimension C (float results differ at
most by BLAS's summation order for a product of another size).  A thread that fails breaks
the barrier, so no thread waits forever; the first error is raised after all have stopped.
"""

from __future__ import annotations

import concurrent.futures
import threading

import numpy as np

from . import winograd
from .blas import limit_threads
from .blas_split import _pool
from .spec import ConvSpec

#: the fewest output channels per thread (shorter products run BLAS poorly)
MIN_CHANNELS = 64


def applies(spec: ConvSpec, workers: int) -> bool:
    """Whether `conv_winograd` may run the block on ``workers`` threads: the stride-1 form in
    its channels-last layout (images of fewer than `winograd.CHANNELS_LAST_BELOW` tile columns)
    with at least `MIN_CHANNELS` output and input channels per thread."""
    return (workers > 1 and winograd.applies(spec)
            and winograd.tile_grid(spec)[1] < winograd.CHANNELS_LAST_BELOW
            and min(spec.out_channels, spec.in_channels) >= workers * MIN_CHANNELS)


def cuts(count: int, parts: int) -> list[tuple[int, int]]:
    """[0, count) cut into ``parts`` ranges of nearly equal length (multiples of 16 where
    possible, so that each thread's runs of channels-last values start on a cache line)."""
    unit = 16 if count >= 16 * parts else 1
    edges = [min(count, (count // unit) * q // parts * unit) for q in range(parts)] + [count]
    return list(zip(edges, edges[1:]))


def conv_winograd(spec: ConvSpec, x: np.ndarray, w: np.ndarray, dtype, y: np.ndarray,
                  workers: int) -> int:
    """The layer by F(2x2, 3x3) into ``y`` (N, K, H, W) on ``workers`` threads (the calling
    thread and ``workers - 1`` pooled ones) cut by channels (module docstring), every BLAS
    library held to one thread meanwhile.  Local.  Returns ``workers``."""
    dtype = np.dtype(dtype)
    N, C, K = spec.batch, spec.in_channels, spec.out_channels
    tH, tW = winograd.tile_grid(spec)
    parts = [np.empty((2, N, tH + 1, tW + 1, C), dtype=dtype) for _ in (0, 1)]
    per_tile = (8 * C, 16 * C, 16 * K, 8 * K)               # t, V, M, s
    blocks, buffers = winograd.block_buffers(spec, dtype, per_tile, winograd.BLOCK_BYTES)
    inputs, outputs = cuts(C, workers), cuts(K, workers)
    barrier = threading.Barrier(workers)

    def work(i: int) -> None:
        try:
            (c0, c1), (k0, k1) = inputs[i], outputs[i]
            u = winograd.filter_transform(w[k0:k1], dtype)
            winograd.split_phases(spec, x, parts, 0, N, True, slice(c0, c1))
            for number, block in enumerate(blocks):
                if number:
                    barrier.wait()                          # V of the block before is read
                winograd.input_channels_last(parts, block, buffers, c0, c1)
                barrier.wait()                              # V whole
                winograd.output_channels_last(spec, u, block, buffers, y, k0, k1)
        except BaseException:
            barrier.abort()
            raise

    with limit_threads(1):
        futures = [_pool(workers).submit(work, i) for i in range(1, workers)]
        try:
            work(0)
        except threading.BrokenBarrierError as broken:
            concurrent.futures.wait(futures)
            # another thread failed and broke the barrier: raise its error
            raise next((f.exception() for f in futures if f.exception() is not None
                        and not isinstance(f.exception(), threading.BrokenBarrierError)),
                       broken) from None
        finally:
            concurrent.futures.wait(futures)
        for future in futures:
            future.result()
    return workers
