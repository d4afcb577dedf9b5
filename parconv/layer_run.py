"""After the exchanges exist: the repeats of the layer, the balanced end, gather, check, the
counted bytes held against the plan and the bound, and the report (`LayerRun`, used by
parconv.conv.distributed_conv2d); also what a call returns (`ConvResult`) and the phases it times.
"""

from __future__ import annotations

import contextlib
import dataclasses
import resource
import time

import numpy as np

from .audit import (build_report, compare_with_reference, gather_counts, local_check,
                    memory_section, slowest, verify_bound, verify_counts)
from .errors import ParconvRuntimeError
from .mpi import distribute
from .mpi.agree import collectively
from .mpi.pipeline import run_layer
from .plan import Plan

#: phases timed once per call, and per repeat of the layer ("layer": one whole repeat)
ONCE = ("plan", "setup", "scatter", "balance", "balance_out", "gather", "check")
REPEATED = ("filter", "bias", "input", "halo_h", "halo_w", "kernel", "reduce", "layer")
#: the once-phases timed before the repeats
_BEFORE = 4
TIMED = ONCE[:_BEFORE] + REPEATED + ONCE[_BEFORE:]
#: kernels run on chunks of the block (interior first); others get the whole block in one call
SPLITTABLE_KERNELS = ("numpy",)
#: smallest kernel workspace budget per chunk (bytes); the budget is half the working set
MIN_CHUNK_BUDGET = 1 << 20


@dataclasses.dataclass
class ConvResult:
    """What `distributed_conv2d` returns on every rank.

    output_piece : flat ndarray of dtype_out, the outputs this rank owns at the end (its part of
        the balanced final layout; with ``blocks``, its output piece; None or empty when it owns
        none)
    output_boxes : global (N, K, H, W) boxes the piece covers, in order
    output : the whole output on the root when ``gather=True`` (None elsewhere)
    plan : the Plan that ran
    report : the run report (design.md "Report (JSON)"), identical on every rank
    """

    output_piece: np.ndarray | None
    output_boxes: list
    output: np.ndarray | None
    plan: Plan
    report: dict


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (bytes; Linux reports KiB).  Local."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class LayerRun:
    """Everything after the grid and the exchanges exist: repeats, gather, check, report."""

    def __init__(self, grid, plan, local, kernel, data, root, baseline, once) -> None:
        self.grid, self.plan, self.local, self.kernel = grid, plan, local, kernel
        self.data, self.root, self.baseline, self.once = data, root, baseline, once

    def execute(self, exchange, chunks, repeat, overlap, gather, check,
                finisher=None) -> ConvResult:
        """Run the layer ``repeat`` times, then the balanced end (``finisher``, an
        `OutputBalanceExchange`, when the run started balanced), gather, check and report.
        Collective over the grid's world."""
        grid, plan, data, root = self.grid, self.plan, self.data, self.root
        world = grid.world.comm
        performed = (["scatter"] if data.mode == "root" else []) + \
            (["balance"] if data.mode != "blocks" else [])
        distribution = grid.counters.take()
        tables, seconds, overlaps, stats = [], [], [], None
        pieces = data.pieces or [None, None, None]
        for _ in range(repeat):
            began = time.perf_counter()
            stats, clock = run_layer(world, exchange, chunks, self.kernel, pieces, overlap,
                                     copy_window=_copies_window(self.kernel))
            layer = time.perf_counter() - began
            tables.append(grid.counters.take())
            seconds.append({**clock.seconds(), "layer": layer})
            overlaps.append(clock.overlap())
        with collectively(world) if len(tables) > 1 else contextlib.nullcontext():
            for i, table in enumerate(tables[1:], start=2):
                if table != tables[0]:
                    raise ParconvRuntimeError(f"repeat {i} counted {table}, the first counted "
                                              f"{tables[0]}")
        piece = None if exchange is None else exchange.output
        boxes = self.local.output_piece_boxes() if self.local is not None else []
        if finisher is not None:   # the balanced final layout: at most ceil(|O| / P) per rank
            began = time.perf_counter()
            piece, boxes = finisher.run(piece), finisher.boxes
            self.once["balance_out"] = time.perf_counter() - began
        balanced = finisher is not None
        output, verdict = None, None
        if gather or (check and data.source is None):
            performed.append("gather")
            began = time.perf_counter()
            output = distribute.gather_output(grid, plan, piece, root, balanced)
            self.once["gather"] = time.perf_counter() - began
        if check:
            began = time.perf_counter()
            if data.source is not None:
                verdict = local_check(world, plan.spec, self.local, data.source, piece, boxes)
                verdict["how"] = "every rank against its own serial recomputation (no gather)"
            else:   # no source to read from: the legacy check on the root
                performed += ["check"] if data.mode == "blocks" else []
                verdict = compare_with_reference(grid, plan, data.globals_, data.pieces, output,
                                                 root, data.mode == "blocks")
                verdict["how"] = f"the gathered output against a serial reference on rank {root}"
            self.once["check"] = time.perf_counter() - began
        table = {**distribution, **tables[-1], **grid.counters.take()}
        counts = gather_counts(grid, table)
        working = (0 if exchange is None else exchange.nbytes) + \
            (0 if finisher is None else finisher.nbytes) + \
            sum(int(np.asarray(p).nbytes) for p in pieces if p is not None)
        memory = memory_section(grid, self.baseline, peak_rss_bytes(), working)
        times = _times(world, self.once, seconds, overlaps)
        report = build_report(grid, plan, counts, performed, stats, times, verdict,
                              getattr(self.kernel, "combine", None), memory)
        report["repeat"] = len(tables)
        report["overlap"] = bool(overlap)
        try:
            verify_counts(plan, counts, performed, root)
            verify_bound(plan, counts, balanced="balance" in performed)
            if verdict is not None and not verdict["ok"]:
                raise ParconvRuntimeError(
                    f"output differs from the serial reference: max abs error "
                    f"{verdict['max_abs_err']} > tolerance {verdict['tolerance']}")
        except ParconvRuntimeError as error:
            error.report = report
            raise
        return ConvResult(piece, boxes, output if gather else None, plan, report)


def _copies_window(kernel) -> bool:
    """Kernels other than numpy get a contiguous copy of their input window (as before)."""
    return getattr(kernel, "name", None) not in SPLITTABLE_KERNELS


def _times(world, once: dict, seconds: list, overlaps: list) -> dict:
    """``time_s`` (once-phases, and the median over repeats of the slowest rank of each repeat),
    ``time_s_all`` (every repeat) and ``overlap_s`` (median kernel time hidden inside each
    phase).  Collective over ``world``."""
    names = list(REPEATED)
    table = np.array([[s.get(n, 0.0) for n in names] for s in seconds]
                     + [[o.get(n, 0.0) for n in names] for o in overlaps]
                     + [[once[n] for n in ONCE] + [0.0] * (len(names) - len(ONCE))])
    table = slowest(world, table)
    k = len(seconds)
    per_repeat, hidden, firsts = table[:k], table[k:2 * k], table[2 * k]
    medians, hidden = np.median(per_repeat, axis=0), np.median(hidden, axis=0)
    time_s = {n: float(firsts[i]) for i, n in enumerate(ONCE[:_BEFORE])}
    time_s.update({n: float(medians[i]) for i, n in enumerate(names)})
    time_s.update({n: float(firsts[i + _BEFORE]) for i, n in enumerate(ONCE[_BEFORE:])})
    return {"time_s": time_s,
            "time_s_all": {n: per_repeat[:, i].tolist() for i, n in enumerate(names)},
            "overlap_s": {n: float(hidden[i]) for i, n in enumerate(names)
                          if n not in ("kernel", "layer")}}
