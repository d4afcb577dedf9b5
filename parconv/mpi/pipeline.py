"""One run of a layer on planned exchanges: the phases started early, the kernel run on the
interior of the output block while the halos travel, then on the boundary, then the reduction.

`KernelChunks` cuts a rank's output block once into the regions the kernel runs on
(parconv.regions); `run_layer` runs the layer once on a `LayerExchange` and returns the kernel
statistics and a `PhaseClock` of when each phase started and finished and how long the kernel
ran inside that time (the overlap).

Order with overlap (every start is non-blocking)::

    start filter, bias, input | finish input, start halo_h | finish filter, bias
    kernel on interior chunks; between chunks: halo_h done? -> unpack, start halo_w; done? -> unpack
    finish halo_h / halo_w | kernel on boundary chunks | agree on kernel errors | reduce

Without overlap every phase is started and finished in turn and the kernel runs after the halos.
The reduction runs in segments of whole images (the same segments on every member of the C
group): a segment's Ialltoallv starts as soon as its images are computed, while the kernel works
on later images.  Bytes and destinations per phase are those of one reduction.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from ..errors import ParconvRuntimeError
from ..regions import (channel_chunks, chunk_regions, interior_range, split_interior,
                       sub_spec)
from .agree import collectively


class PhaseClock:
    """Start and end time of each phase of one run and the kernel's busy intervals.  Local."""

    def __init__(self) -> None:
        self.begun, self.ended, self.busy = {}, {}, []

    def begin(self, phase: str) -> None:
        self.begun[phase] = time.perf_counter()

    def end(self, phase: str) -> None:
        self.ended[phase] = time.perf_counter()

    @contextlib.contextmanager
    def kernel(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.busy.append((start, time.perf_counter()))

    def seconds(self) -> dict[str, float]:
        """Per phase: wall time from its start to its end; "kernel": total kernel time."""
        out = {p: self.ended[p] - self.begun[p] for p in self.begun if p in self.ended}
        out["kernel"] = sum(b - a for a, b in self.busy)
        return out

    def overlap(self) -> dict[str, float]:
        """Per phase: kernel time inside the phase's interval (what the overlap hid)."""
        out = {}
        for phase, start in self.begun.items():
            end = self.ended.get(phase, start)
            out[phase] = sum(max(0.0, min(b, end) - max(a, start)) for a, b in self.busy)
        return out


class KernelChunks:
    """The regions of one rank's output block the kernel runs on, made once.  Local.

    ``split``: interior first (no remote data), boundary after, both cut into chunks of at most
    ``budget`` bytes of kernel workspace; otherwise one call on the whole block (kernels whose
    figures depend on the call shape, such as the Gemmini model, get the whole block).
    """

    def __init__(self, spec, local, split: bool, budget: int) -> None:
        nN, nK, nH, nW = local.output_block
        nC = local.input_block[1]
        self.origin = (local.rows_buf[0], local.cols_buf[0])
        if not split:
            self.interior = []
            self.boundary = [((0, nN, 0, nH, 0, nW), (0, nK), local.local_spec, local.rows_span,
                              local.cols_span)]
            return
        rows_in = interior_range(spec, 0, local.h, local.rows_own)
        cols_in = interior_range(spec, 1, local.w, local.cols_own)
        inner, outer = split_interior((nN, nH, nW), rows_in, cols_in)
        itemsize = 8 if np.issubdtype(np.dtype(spec.dtype_in), np.integer) else \
            np.dtype(spec.dtype_acc).itemsize
        name = local.local_spec.name if local.local_spec is not None else spec.name
        ks = channel_chunks(spec, (nC, nK), itemsize, budget)
        step = ks[0][1] - ks[0][0]
        self.interior, self.boundary = (
            [(r, k, *sub_spec(spec, r[1] - r[0], (nC, k[1] - k[0]),
                              (local.h[0] + r[2], local.h[0] + r[3]),
                              (local.w[0] + r[4], local.w[0] + r[5]), name))
             for r in chunk_regions(regions, spec, (nC, step), itemsize, budget) for k in ks]
            for regions in (inner, outer))
        # images complete in order, so their reductions can start while later images compute
        self.boundary.sort(key=lambda chunk: chunk[0][0])


def _run_chunk(exchange, chunks, chunk, kernel, copy_window: bool):
    (n0, n1, h0, h1, w0, w1), (k0, k1), local_spec, rows, cols = chunk
    target = exchange.partial[n0:n1, k0:k1, h0:h1, w0:w1]
    if local_spec is None:
        target[...] = 0
        return None
    r0, c0 = chunks.origin
    window = exchange.buffer[n0:n1, :, rows[0] - r0:rows[1] - r0, cols[0] - c0:cols[1] - c0]
    filters = exchange.filters if k1 - k0 == exchange.filters.shape[0] else \
        exchange.filters[k0:k1]
    y, stats = kernel.run(local_spec, np.ascontiguousarray(window) if copy_window else window,
                          filters)
    y = np.asarray(y)
    if y.shape != target.shape or y.dtype != target.dtype:
        raise ParconvRuntimeError(f"node kernel returned {y.dtype} {y.shape}, expected "
                                  f"{target.dtype} {target.shape}")
    target[...] = y
    return stats


#: what the numpy kernel's calls say about how they ran, kept over a chunked block's calls
DESCRIPTIVE = ("method", "compute_dtype", "blas_threads", "workers", "products", "transforms")


def merge_stats(kernel, calls: list) -> dict:
    """One kernel call's stats as they are; several calls of a chunked block: macs and times
    summed (the numpy kernel's figures), with the number of calls, and each of `DESCRIPTIVE`
    the calls report: its value where they agree, else the sorted list of their values."""
    calls = [s for s in calls if s is not None]
    name = getattr(kernel, "name", type(kernel).__name__)
    if len(calls) == 1:
        return calls[0]
    merged = {"kernel": name, "macs": int(sum(int(s.get("macs", 0)) for s in calls)),
              "time_s": float(sum(float(s.get("time_s", 0.0)) for s in calls)),
              "calls": len(calls)}
    for key in DESCRIPTIVE:
        values = sorted({s[key] for s in calls if s.get(key) is not None}, key=str)
        if values:
            merged[key] = values[0] if len(values) == 1 else values
    return merged


def run_layer(world, exchange, chunks, kernel, pieces, overlap: bool = True,
              copy_window: bool = False):
    """Run the layer once on ``exchange``; returns (kernel stats or None when idle, PhaseClock).

    Collective over ``world`` (the kernel agreement) and every group of the grid.  ``pieces``:
    this rank's owned [input, filter, bias] flat pieces; the output piece is then in
    ``exchange.output``.  Idle ranks (``exchange`` None) join the agreement only.
    """
    clock = PhaseClock()
    if exchange is None:
        with collectively(world):
            pass
        return None, clock

    timed = {p for p in ("filter", "bias", "input", "halo_h", "halo_w", "reduce")
             if exchange.moves(p)}

    def start(phase, piece=None):
        if phase in timed:
            clock.begin(phase)
        exchange.start(phase, piece)

    def finish(phase):
        exchange.finish(phase)
        if phase in timed:
            clock.end(phase)

    calls, error = [], None
    nN, nK, nH, nW = exchange.partial.shape
    done = np.zeros(nN, dtype=np.int64)     # output elements computed per image
    segments = list(exchange.segments)

    def release(force: bool = False):
        """Add the bias to, and start the reduction of, every segment whose images are done."""
        while segments and (force or (done[slice(*segments[0])] == nK * nH * nW).all()):
            i0, i1 = segments.pop(0)
            if exchange.bias is not None:
                np.add(exchange.partial[i0:i1], exchange.bias.reshape(1, -1, 1, 1),
                       out=exchange.partial[i0:i1])
            if "reduce" not in clock.begun and "reduce" in timed:
                clock.begin("reduce")
            exchange.start_segment(len(exchange.segments) - len(segments) - 1)

    def compute(group):
        nonlocal error
        for chunk in group:
            if error is None:
                try:
                    with clock.kernel():
                        calls.append(_run_chunk(exchange, chunks, chunk, kernel, copy_window))
                except Exception as exc:  # noqa: BLE001 - agreed on after the reduction
                    error = exc
            (n0, n1, h0, h1, w0, w1), (k0, k1) = chunk[:2]
            done[n0:n1] += (h1 - h0) * (w1 - w0) * (k1 - k0)
            if overlap:
                release()
            yield

    if overlap:
        for phase, piece in zip(("input", "filter", "bias"), pieces):
            start(phase, piece)
        finish("input")
        start("halo_h")
        finish("filter")
        finish("bias")
        pending = ["halo_h", "halo_w"]

        def progress():
            while pending and exchange.test(pending[0]):
                finish(pending.pop(0))
                if pending:
                    start(pending[0])

        progress()
        for _ in compute(chunks.interior):
            progress()
        while pending:
            finish(pending.pop(0))
            if pending:
                start(pending[0])
    else:
        for phase, piece in zip(("input", "filter", "bias"), pieces):
            start(phase, piece)
            finish(phase)
        for phase in ("halo_h", "halo_w"):
            start(phase)
            finish(phase)
        for _ in compute(chunks.interior):
            pass
    for _ in compute(chunks.boundary):
        pass
    release(force=True)   # every member starts every segment, even after a kernel failure
    finish("reduce")
    with collectively(world):
        if error is not None:
            raise error
    return merge_stats(kernel, calls), clock
