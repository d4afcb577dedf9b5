"""The run report: JSON output and the short summary rank 0 prints.  Pure, no MPI.

The report is the dict the engine builds (design.md, "Report (JSON)"): ``spec``, ``ranks``,
``grid``, ``bytes`` (per-rank lists and ``per_phase``), ``bound``, ``ratio_to_bound``, ``node``,
``time_s`` (medians over ``repeat`` runs of the slowest rank), ``time_s_all`` (every repeat),
``overlap_s`` (kernel time hidden inside each phase), ``memory`` (per rank ``peak_rss_bytes``,
``baseline_rss_bytes``, ``working_set_bytes``) and ``check``.  Everything here only reads it; missing parts are left out of the summary.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from . import paths
from .plan import BOUND_PHASES

#: peak MACs per cycle of the modelled Gemmini (16 x 16 systolic array)
GEMMINI_PEAK_MACS_PER_CYCLE = 256


def to_jsonable(value):
    """`value` with numpy scalars and arrays, tuples and non-string keys turned into JSON types."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def write_json(report: dict, path: str) -> None:
    """Write `report` as indented JSON, atomically (temporary file in the same folder + rename;
    a symlink `path` is written through)."""
    target = paths.resolve(path)
    tmp = paths.temporary_name(target, "report")
    paths.register(tmp)
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(to_jsonable(report), handle, indent=1)
            handle.write("\n")
        os.replace(tmp, target)
        paths.unregister(tmp)
    except BaseException:
        paths.remove_quietly(tmp)
        raise


# ---- the summary ------------------------------------------------------------------------------

def human_bytes(count) -> str:
    """``1234567`` -> ``'1.18 MiB'``; exact below 1 KiB."""
    count = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1024
    return f"{count:.2f} TiB"  # pragma: no cover - loop always returns


def _busiest_rank(byte_report: dict) -> int | None:
    volume = byte_report.get("bound_volume")
    if volume is None or len(volume) == 0:
        return None
    return int(np.argmax(np.asarray(volume)))


def _phase_lines(byte_report: dict, busiest: int) -> list[str]:
    """One line per phase that moved bytes: the busiest rank's figures and the maxima."""
    lines, unbounded = [], False
    for phase, counts in (byte_report.get("per_phase") or {}).items():
        sent = np.asarray(counts.get("sent", [0]))
        received = np.asarray(counts.get("received", [0]))
        messages = np.asarray(counts.get("messages", [0]))
        if not sent.any() and not received.any():
            continue
        mark = "" if phase in BOUND_PHASES else " *"
        unbounded |= bool(mark)
        lines.append(f"  {phase + mark:<10}{human_bytes(sent[busiest]):>12}"
                     f"{human_bytes(received[busiest]):>12}{int(messages[busiest]):>6}"
                     f"{human_bytes(sent.max()):>12}{human_bytes(received.max()):>12}")
    if not lines:
        return ["  no bytes moved between ranks"]
    head = (f"  {'':<10}{'busiest rank ' + str(busiest):^30}{'maximum over ranks':^24}")
    columns = (f"  {'phase':<10}{'sent':>12}{'received':>12}{'msgs':>6}{'sent':>12}"
               f"{'received':>12}")
    lines = [head, columns] + lines
    if unbounded:
        lines.append("  * not in the bound volume (received input and filter bytes plus sent "
                     "partial sums): bias and data distribution")
    return lines


def _bytes_lines(report: dict) -> list[str]:
    byte_report = report.get("bytes") or {}
    busiest = _busiest_rank(byte_report)
    if busiest is None:
        return []
    lines = _phase_lines(byte_report, busiest)
    measured = np.asarray(byte_report["bound_volume"])
    predicted = byte_report.get("predicted_bound_volume")
    agreement = ""
    if predicted is not None:
        same = np.array_equal(measured, np.asarray(predicted))
        agreement = ("  measured == predicted on every rank" if same
                     else "  MEASURED != PREDICTED")
    lines.append(f"  bound volume of the busiest rank {busiest}: {human_bytes(measured[busiest])} "
                 f"({int(measured[busiest])} B){agreement}")
    return lines


def _bound_lines(report: dict) -> list[str]:
    bound = report.get("bound")
    if not bound:
        return []
    which = {"problem": "problem's bound (balanced start and end)",
             "layout": "bound of the given blocks' layout"}.get(report.get("bound_checked"),
                                                               "bound")
    term = f" ({bound['B_MI_term']} term)" if bound.get("B_MI_term") else ""
    line = (f"  {which}: B_MI {human_bytes(bound.get('B_MI', 0))}{term}, B_MD "
            f"{human_bytes(bound.get('B_MD', 0))}, binding {bound.get('binding', '?')}")
    ratio = report.get("ratio_to_bound")
    if ratio is not None:
        line += f"; busiest rank / bound = {float(ratio):.3f}"
    lines = [line]
    if not bound.get("B_MD"):
        lines.append("    (B_MD is 0: with --memory "
                     f"{human_bytes(bound.get('M') or 0)} the busy rank's share of the work "
                     "fits in a single segment of every length (docs/theory.md 4.4), so only "
                     "the memory-independent bound applies)")
    return lines


def _stats_per_rank(node: dict) -> list[dict]:
    per_rank = node.get("per_rank") or node.get("stats") or []
    return [s for s in per_rank if isinstance(s, dict)]


def _seen(per_rank: list[dict], key: str) -> list[str]:
    """The distinct values of ``key`` over the ranks' stats (lists flattened), sorted."""
    values = [s.get(key) for s in per_rank]
    flat = [v for value in values for v in (value if isinstance(value, list) else [value])]
    return sorted({str(v) for v in flat if v is not None})


def _summary(per_rank: list[dict], fields) -> str:
    """``"; label a/b, ..."`` for the ``(label, key)`` fields the stats hold, or ""."""
    parts = [f"{label} {'/'.join(values)}" for label, values in
             ((label, _seen(per_rank, key)) for label, key in fields) if values]
    return "; " + ", ".join(parts) if parts else ""


def _cpu_summary(per_rank: list[dict]) -> str:
    """The CPU kernel's methods, BLAS threads, split pieces, the products' operand type (int8:
    MKL's int8 GEMM) and product library over the ranks (each the distinct values seen), or ""
    when the stats do not hold them."""
    return _summary(per_rank, (("method", "method"), ("BLAS threads per rank", "blas_threads"),
                               ("pieces side by side", "workers"),
                               ("products in", "compute_dtype"), ("products on", "products")))


def _tiling_figures(per_rank: list[dict], which: str) -> dict | None:
    """Summed DRAM bytes and cycles of one tiling ('parconv' or 'vendor') over the ranks."""
    entries = [s[which] for s in per_rank if isinstance(s.get(which), dict)]
    if not entries:
        return None
    dram = sum(int((e.get("dram_bytes") or {}).get("total", 0)) for e in entries)
    cycles = [float(e.get("cycles", 0)) for e in entries]
    calibrated = [float(e.get("calibrated_cycles", math.nan)) for e in entries]
    return {"dram": dram, "cycles_max": max(cycles), "cycles_sum": sum(cycles),
            "calibrated_max": max(calibrated)}


def _node_lines(report: dict) -> list[str]:
    node = report.get("node")
    if not node:
        return []
    per_rank = _stats_per_rank(node)
    kernel = node.get("kernel") or (per_rank[0].get("kernel") if per_rank else "?")
    macs = (node.get("totals") or {}).get("macs") or sum(int(s.get("macs", 0)) for s in per_rank)
    tiles = _summary(per_rank, (("tiles' products in", "compute_dtype"), ("on", "products")))
    lines = [f"  node kernel {kernel}: {int(macs):,} MACs{tiles}; DRAM traffic summed over "
             "ranks:" if _tiling_figures(per_rank, "parconv") else
             f"  node kernel {kernel}: {int(macs):,} MACs{_cpu_summary(per_rank)}"]
    bound = sum(float(s.get("bound_bytes", 0)) for s in per_rank)
    for which in ("parconv", "vendor"):
        figures = _tiling_figures(per_rank, which)
        if figures is None:
            continue
        utilization = macs / (GEMMINI_PEAK_MACS_PER_CYCLE * figures["cycles_sum"]) \
            if figures["cycles_sum"] else 0.0
        versus = f" = {figures['dram'] / bound:.2f}x seq. bound" if bound > 0 else ""
        lines.append(f"    {which + ' tiling':<15} DRAM {human_bytes(figures['dram']):>11}{versus}"
                     f", {figures['cycles_max']:,.0f} roofline / "
                     f"{figures['calibrated_max']:,.0f} calibrated cycles (slowest rank), "
                     f"utilization {100 * utilization:.1f}%")
    return lines


def _time_lines(report: dict) -> list[str]:
    times = report.get("time_s") or {}
    if not times:
        return []
    parts = ", ".join(f"{phase} {float(t) * 1e3:.1f}" for phase, t in times.items()
                      if t is not None)
    repeat = report.get("repeat", 1)
    which = f"median of {repeat} repeats, " if repeat and repeat > 1 else ""
    lines = [f"  time (ms, {which}slowest rank): {parts}"]
    hidden = {p: float(t) for p, t in (report.get("overlap_s") or {}).items() if t}
    if hidden:
        lines.append("  kernel time overlapped with (ms): "
                     + ", ".join(f"{p} {t * 1e3:.1f}" for p, t in hidden.items()))
    return lines


def _memory_lines(report: dict) -> list[str]:
    memory = report.get("memory") or {}
    peak, base, work = (memory.get(k) for k in ("peak_rss_bytes", "baseline_rss_bytes",
                                                "working_set_bytes"))
    if not peak or not base or not work:
        return []
    ratios = [(p - b) / w if w else 0.0 for p, b, w in zip(peak, base, work)]
    r = int(np.argmax(ratios))
    return [f"  memory: largest peak {human_bytes(max(peak))}; rank {r}: peak "
            f"{human_bytes(peak[r])} = baseline {human_bytes(base[r])} + "
            f"{ratios[r]:.2f} x working set {human_bytes(work[r])}"]


def _check_lines(report: dict) -> list[str]:
    check = report.get("check")
    if not check:
        return []
    verdict = "OK" if check.get("ok") else "MISMATCH"
    how = f", {check['how']}" if check.get("how") else ""
    tol = f", tolerance {check['tolerance']}" if check.get("tolerance") is not None else ""
    return [f"  check against the serial reference: {verdict} "
            f"(max abs error {check.get('max_abs_err')}{tol}{how})"]


def summary_table(report: dict) -> str:
    """A short human-readable summary of a run report (printed by rank 0)."""
    spec = report.get("spec") or {}
    grid = report.get("grid") or {}
    grid_text = "x".join(str(grid.get(a, "?")) for a in "NKCHW")
    head = (f"parconv: {spec.get('name', '?')} N={spec.get('batch')} C={spec.get('in_channels')} "
            f"K={spec.get('out_channels')} in {'x'.join(map(str, spec.get('in_size', [])))} "
            f"kernel {'x'.join(map(str, spec.get('kernel_size', [])))} "
            f"stride {'x'.join(map(str, spec.get('stride', [])))} {spec.get('dtype_in')}")
    lines = [head, f"  ranks {report.get('ranks')}, grid NxKxCxHxW = {grid_text}"]
    for part in (_bytes_lines, _bound_lines, _node_lines, _time_lines, _memory_lines,
                 _check_lines):
        lines += part(report)
    return "\n".join(lines)
