"""Holding a distributed run to account: counted bytes against the plan, the measured volume
against the lower bound, the output against a serial reference; and the run report.

Used by parconv.conv after the exchanges.  Everything here that communicates moves only metadata
(counters, times, memory figures, per-rank kernel statistics, a verdict) on the grid's duplicated
communicator, plus, in the legacy check of per-rank blocks without a source, the "check" gather of
the owned input pieces.  The check with a data source (`local_check`) gathers nothing: every rank
recomputes its own output piece from the input region and filters it reads.
"""

from __future__ import annotations

import math

import numpy as np

from .compare import finite_max_abs, max_abs_error
from .errors import ParconvRuntimeError
from .mpi import distribute
from .mpi.agree import collectively
from .nodes import get_kernel
from .plan import PHASES
from .plan.predict import (BALANCE_PHASES, END_PHASES, RECEIVED_BOUND_PHASES, SENT_BOUND_PHASES,
                           START_PHASES)
from .plan.blocks import block_starts
from .regions import sub_spec

#: phases the engine counts, in report order: the balanced start, the algorithm, the balanced end,
#: then the data distribution
COUNTED = START_PHASES + PHASES + END_PHASES + ("scatter", "gather", "check")
COUNT_KEYS = ("sent", "received", "messages")
#: relative tolerance per float type, scaled by sqrt(C R S) and the largest |reference| value
FLOAT_RTOL = {"float16": 1e-2, "float32": 1e-5, "float64": 1e-12}
#: the measured volume may undercut the (numerically solved) bound by this relative amount only
BOUND_SLACK = 1e-9


def gather_counts(grid, table: dict | None = None) -> dict[str, np.ndarray]:
    """Every rank's counters: ``{phase: int64 array (P, 3)}`` over (sent, received, messages).

    Collective over ``grid.world``; every rank gets the whole table.  ``table``: this rank's
    counters (default: what ``grid.counters`` holds now).
    """
    table = grid.counters.counters() if table is None else table
    mine = np.array([[table.get(phase, {}).get(key, 0) for key in COUNT_KEYS]
                     for phase in COUNTED], dtype=np.int64)
    everyone = np.empty((grid.world.size, *mine.shape), dtype=np.int64)
    grid.world.comm.Allgather(mine, everyone)  # meta: counters, not data
    return {phase: everyone[:, i, :] for i, phase in enumerate(COUNTED)}


def measured_bound_volume(counts: dict) -> np.ndarray:
    """Per rank: received bytes of balance (input and filter), filter, input and halos plus
    sent partial sums (reduce) and sent finished outputs (balance_out)."""
    received = sum(counts[p][:, 1] for p in RECEIVED_BOUND_PHASES)
    return received + sum(counts[p][:, 0] for p in SENT_BOUND_PHASES)


def predictions(plan, performed, root: int) -> dict:
    """``{phase: {key: array (P,)}}`` the counters must equal, for the phases that ran.

    The one place the audit asks the plan for the distribution phases' bytes.  A run that did
    not start balanced ("balance" not in ``performed``) must have moved nothing in BALANCE_PHASES.
    """
    out = {phase: plan.predicted[phase] for phase in PHASES}
    for phase in BALANCE_PHASES:
        out[phase] = plan.predicted[phase] if "balance" in performed else \
            dict.fromkeys(COUNT_KEYS, np.zeros(plan.ranks, dtype=np.int64))
    if "scatter" in performed:
        out["scatter"] = plan.predicted_scatter if root == 0 else plan.predict_scatter(root)
    if "gather" in performed:
        out["gather"] = plan.predict_gather(root, balanced="balance" in performed)
    return out


def verify_counts(plan, counts: dict, performed, root: int) -> None:
    """Raise ParconvRuntimeError (on every rank alike: ``counts`` is global) when any rank's
    counted bytes or messages differ from the plan's prediction in any phase.  Local."""
    wrong = []
    for phase, predicted in predictions(plan, performed, root).items():
        for column, key in enumerate(COUNT_KEYS):
            expected = np.asarray(predicted[key], dtype=np.int64)
            measured = counts[phase][:, column]
            for rank in np.flatnonzero(expected != measured):
                wrong.append(f"rank {rank} phase {phase} {key}: predicted {expected[rank]}, "
                             f"measured {measured[rank]}")
    if wrong:
        more = f" (and {len(wrong) - 5} more)" if len(wrong) > 5 else ""
        raise ParconvRuntimeError("counted traffic differs from the plan: "
                                  + "; ".join(wrong[:5]) + more)


def checked_bound(plan, balanced: bool = True):
    """The bound a run is held against: the problem's (``plan.bound``, every rank owning at most
    ceil(|A_j| / P) initially) when it started from the balanced layout, else the bound of the
    layout it started from (``plan.layout_bound``: user-given work pieces).  Local."""
    if balanced or plan.layout_bound is None:
        return plan.bound
    return plan.layout_bound


def verify_bound(plan, counts: dict, balanced: bool = True) -> None:
    """Raise ParconvRuntimeError when the busiest rank's measured volume is below the lower bound
    (`checked_bound`; a bug in the bound, the plan or the counters).  Local."""
    volume = int(measured_bound_volume(counts).max())
    bound = checked_bound(plan, balanced)
    value = float(bound.value)
    if volume < value * (1 - BOUND_SLACK) - BOUND_SLACK:
        which = "the problem's" if bound is plan.bound else "the layout's"
        raise ParconvRuntimeError(
            f"measured volume {volume} B of the busiest rank is BELOW the lower bound "
            f"{value:.6g} B ({which}, {bound.binding} binds): the bound, the plan or the "
            f"counters are wrong")


#: ratios that do not add up over ranks: dropped from generic totals (a kernel's ``combine``
#: recomputes them from the summed quantities)
INTENSIVE = frozenset({"utilization", "ratio_to_bound"})


def _sum_numeric(values: list):
    """Sum the numeric leaves of equally shaped dicts; other leaves and ratios are dropped."""
    dicts = [v for v in values if isinstance(v, dict)]
    if dicts:
        keys = dict.fromkeys(k for d in dicts for k in d if k not in INTENSIVE)
        out = {k: _sum_numeric([d[k] for d in dicts if k in d]) for k in keys}
        return {k: v for k, v in out.items() if v is not None and v != {}}
    numbers = [v for v in values if isinstance(v, (int, float, np.integer, np.floating))
               and not isinstance(v, (bool, np.bool_))]
    return sum(numbers) if numbers and len(numbers) == len(values) else None


def node_section(grid, stats, combine=None) -> dict:
    """Kernel name, every rank's stats (None where idle) and their totals: ``combine(list of
    stats)`` when the kernel provides one (it knows which figures add up), else the sums of the
    numeric leaves without the ratios.  Collective over ``grid.world``."""
    per_rank = grid.world.comm.allgather(stats)  # meta: small dicts
    active = [s for s in per_rank if s is not None]
    names = sorted({str(s.get("kernel")) for s in active})
    totals = (combine or _sum_numeric)(active) if active else {}
    return {"kernel": names[0] if len(names) == 1 else names, "per_rank": per_rank,
            "totals": totals}


def slowest(comm, values: np.ndarray) -> np.ndarray:
    """Elementwise maximum of a float array over the ranks.  Collective over ``comm``."""
    from mpi4py import MPI
    local = np.ascontiguousarray(values, dtype=np.float64)
    out = np.empty_like(local)
    comm.Allreduce(local, out, op=MPI.MAX)  # meta: timings, errors
    return out


def memory_section(grid, baseline: int, peak: int, working_set: int) -> dict:
    """Per rank: peak resident bytes, the baseline right after imports (before the run) and
    the bytes of the rank's own working set.  Collective over ``grid.world``."""
    mine = np.array([peak, baseline, working_set], dtype=np.int64)
    everyone = np.empty((grid.world.size, 3), dtype=np.int64)
    grid.world.comm.Allgather(mine, everyone)  # meta: three numbers per rank
    return {"peak_rss_bytes": everyone[:, 0].tolist(),
            "baseline_rss_bytes": everyone[:, 1].tolist(),
            "working_set_bytes": everyone[:, 2].tolist()}


def build_report(grid, plan, counts, performed, stats, times, check=None,
                 combine=None, memory=None) -> dict:
    """The run report (design.md "Report (JSON)"), the same dict on every rank.  Collective over
    ``grid.world``.  ``bytes.sent`` / ``received`` sum the algorithm's phases (parconv.plan.PHASES,
    with BALANCE_PHASES when the run started balanced);
    the distribution phases that ran (scatter, gather, check) are listed in ``per_phase`` only.
    ``times``: ``{"time_s": ..., ...}`` already agreed over the ranks (parconv.conv), merged into
    the report; ``memory``: the `memory_section`."""
    volume = measured_bound_volume(counts)
    balanced = "balance" in performed
    shown = [p for p in COUNTED if p in PHASES or p in performed
             or (balanced and p in BALANCE_PHASES)]
    per_phase = {p: {key: counts[p][:, i].tolist() for i, key in enumerate(COUNT_KEYS)}
                 for p in shown}
    bound = checked_bound(plan, balanced)
    value = float(bound.value)
    totals = START_PHASES + PHASES + END_PHASES if balanced else PHASES
    predicted = plan.predicted_bound_volume if balanced else \
        plan.predicted_unbalanced_bound_volume
    report = {
        "spec": plan.spec.to_dict(), "ranks": plan.ranks, "active_ranks": plan.active,
        "grid": plan.dims.as_dict(), "grid_forced": plan.forced, "memory_limit": plan.memory,
        "ownership": dict(zip(("H", "W"), plan.ownership)),
        "bytes": {
            "sent": sum(counts[p][:, 0] for p in totals).tolist(),
            "received": sum(counts[p][:, 1] for p in totals).tolist(),
            "bound_volume": volume.tolist(),
            "predicted_bound_volume": np.asarray(predicted).tolist(),
            "per_phase": per_phase,
            "totals_over": list(totals),
        },
        "bound": bound.to_dict(),
        # "problem": the problem's bound (balanced start); "layout": that of user-given blocks
        "bound_checked": "problem" if bound is plan.bound else "layout",
        "balanced_start": balanced,
        # the balanced final layout ("balance_out") runs exactly when the start was balanced
        "balanced_end": balanced,
        "ratio_to_bound": float(volume.max()) / value if value > 0 else None,
        "predicted_ratio_to_bound": (float(np.max(predicted)) / value if value > 0 else None),
        "baselines": plan.baselines,
        "node": node_section(grid, stats, combine),
    }
    report.update(times)
    if memory is not None:
        report["memory"] = memory
    if check is not None:
        report["check"] = check
    return report


def tolerance(spec, reference: np.ndarray) -> float:
    """Largest accepted |distributed - reference|: 0 for integers; for floats
    ``FLOAT_RTOL[type] * sqrt(C R S) * max(|reference|)`` (the summation order differs: the
    channel sum is split over P_C ranks; rounding grows like sqrt of the number of terms)."""
    return tolerance_for_scale(spec, finite_max_abs(reference))


def tolerance_for_scale(spec, scale: float) -> float:
    """`tolerance` given ``max(|reference|)`` (agreed over the ranks by `local_check`)."""
    if np.issubdtype(np.dtype(spec.dtype_out), np.integer):
        return 0.0
    terms = spec.in_channels * spec.kernel_size[0] * spec.kernel_size[1]
    rtol = FLOAT_RTOL.get(spec.dtype_out, 1e-5)
    return rtol * math.sqrt(terms) * max(scale, np.finfo(spec.dtype_out).tiny)


def reference_output(spec, x, w, bias) -> np.ndarray:
    """The serial reference: the numpy node kernel on the whole layer, plus bias, cast to
    dtype_out.  Local."""
    y, _ = get_kernel("numpy").run(spec.replace(bias=False), x, w)
    if bias is not None:
        y = np.add(y, np.asarray(bias).reshape(1, -1, 1, 1), dtype=spec.dtype_acc)
    return y.astype(spec.dtype_out)


def compare_with_reference(grid, plan, globals_, pieces, output, root: int,
                           from_blocks: bool) -> dict:
    """``{"max_abs_err", "tolerance", "ok"}`` of the gathered output against the serial
    reference, agreed on every rank.  Collective over ``grid.world``.  ``globals_`` is (x, w,
    bias) on the root; when the data came as per-rank ``pieces`` (``from_blocks``, the same on
    every rank) they are first gathered on the root (counted phase "check")."""
    spec = plan.spec
    if from_blocks:
        globals_ = distribute.gather_owned(grid, plan, pieces, root)
    verdict = None
    if grid.world.rank == root:
        x, w, bias = globals_
        ref = reference_output(spec, x, w, bias)
        err = max_abs_error(ref, output)      # NaN for NaN and equal infinities agree
        err = int(err) if np.issubdtype(ref.dtype, np.integer) else err
        tol = tolerance(spec, ref)
        verdict = {"max_abs_err": err, "tolerance": tol, "ok": bool(err <= tol)}
    return grid.world.comm.bcast(verdict, root=root)  # meta: the verdict


def _reference_box(spec, source, box, c_step: int) -> np.ndarray:
    """The serial reference of one output box ((n), (k), (h), (w)) in dtype_acc, bias included,
    from ``source``: one image and ``c_step`` input channels at a time (bounded memory)."""
    (n0, n1), (k0, k1), rows, cols = box
    R, S = spec.kernel_size
    acc = np.zeros((n1 - n0, k1 - k0, rows[1] - rows[0], cols[1] - cols[0]),
                   dtype=spec.dtype_acc)
    kernel = get_kernel("numpy")
    starts = block_starts(spec.in_channels, -(-spec.in_channels // c_step))
    for c0, c1 in zip(starts[:-1], starts[1:]):
        local, rspan, cspan = sub_spec(spec, 1, (int(c1 - c0), k1 - k0), rows, cols,
                                       f"{spec.name}@check")
        if local is None:
            continue
        w = source.read("weight", [((k0, k1), (int(c0), int(c1)), (0, R), (0, S))])
        w = w.reshape(local.weight_shape)
        for n in range(n0, n1):
            x = source.read("input", [((n, n + 1), (int(c0), int(c1)), rspan, cspan)])
            y, _ = kernel.run(local, x.reshape(local.input_shape), w)
            acc[n - n0:n - n0 + 1] += y
    if spec.bias:
        acc += source.read("bias", [((k0, k1),)]).reshape(1, -1, 1, 1)
    return acc.astype(spec.dtype_out)


def local_check(comm, spec, local, source, piece, boxes) -> dict:
    """``{"max_abs_err", "tolerance", "ok"}`` of every rank's owned outputs against the serial
    reference, each rank recomputing its own ``boxes`` (global, in the order of the flat
    ``piece``) from ``source``; the ranks agree on the largest error and the largest |reference|
    (Allreduce).  Collective over ``comm``; no data moves.  ``local``: the rank's schedule
    (None when idle; the reference then sums all input channels at once)."""
    err, scale = 0.0, 0.0
    c_step = max(1, local.c[1] - local.c[0]) if local is not None else spec.in_channels
    with collectively(comm):
        if boxes:
            offset = 0
            for box in boxes:
                ref = _reference_box(spec, source, box, c_step)
                got = np.asarray(piece[offset:offset + ref.size]).reshape(ref.shape)
                offset += ref.size
                if ref.size:   # NaN for NaN and equal infinities agree (parconv.compare)
                    err = max(err, max_abs_error(ref, got))
                    scale = max(scale, finite_max_abs(ref))
    err, scale = (float(v) for v in slowest(comm, np.array([err, scale])))
    if np.issubdtype(np.dtype(spec.dtype_out), np.integer):
        err = int(err)
    tol = tolerance_for_scale(spec, scale)
    return {"max_abs_err": err, "tolerance": tol, "ok": bool(err <= tol)}
