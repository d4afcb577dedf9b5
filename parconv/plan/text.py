"""Plain-text rendering of a Plan for the terminal.  Pure."""

from __future__ import annotations

import numpy as np

from .predict import END_PHASES, PHASES, START_PHASES


def human_bytes(n: float) -> str:
    """1536 -> '1.50 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} TiB"


def _footprint_line(plan) -> str:
    """The largest footprint (parconv.plan.footprint), its stage and its three largest terms."""
    worst = int(np.argmax(plan.prediction.footprint))
    fp = plan.footprint(worst)
    top = sorted(fp["terms"].items(), key=lambda kv: -kv[1])[:3]
    parts = ", ".join(f"{name} {human_bytes(v)}" for name, v in top if v)
    return (f"  memory footprint (largest, rank {worst}, {fp['node']} node): "
            f"{human_bytes(fp['total'])} in stage {fp['stage']} ({parts})")


def plan_table(plan) -> str:
    """The plan as a readable table: grid, busiest rank's bytes per phase, bound, baselines."""
    spec, bound = plan.spec, plan.bound
    busiest = int(np.argmax(plan.predicted_bound_volume))
    lines = [spec.describe(),
             f"ranks {plan.ranks} ({plan.active} active), memory {human_bytes(plan.memory)} per "
             f"rank, grid NxKxCxHxW = {plan.dims}" + (" (forced)" if plan.forced else " (chosen)"),
             f"input rows owned {plan.ownership[0]}, columns owned {plan.ownership[1]}",
             "",
             f"busiest rank {busiest} at {plan.coords(busiest)}:",
             f"  {'phase':<12} {'sent':>12} {'received':>12} {'messages':>9}"]
    for phase in START_PHASES + PHASES + END_PHASES:
        d = plan.predicted[phase]
        lines.append(f"  {phase:<12} {human_bytes(d['sent'][busiest]):>12} "
                     f"{human_bytes(d['received'][busiest]):>12} {d['messages'][busiest]:>9}")
    lines += [
        f"  bound-comparable volume (received input+filter, balance included, sent partial "
        f"sums and balance_out outputs): "
        f"{human_bytes(plan.max_volume)} ({plan.max_volume} B)",
        _footprint_line(plan),
        "",
        f"lower bound: B_MI = {human_bytes(bound.B_MI)} ({bound.B_MI_term} term), B_MD = "
        f"{human_bytes(bound.B_MD)} ({bound.binding} binds)",
        "ratio to bound: " + ("n/a (the bound is 0)" if plan.ratio_to_bound is None
                              else f"{plan.ratio_to_bound:.3f}"),
        "",
        "baselines (largest bound-comparable volume of any rank):",
    ]
    for name, base in plan.baselines.items():
        if base is None:
            lines.append(f"  {name:<15} impossible at P={plan.ranks}")
        else:
            grid = "x".join(str(v) for v in base["grid"].values())
            ratio = base["max_volume"] / plan.max_volume if plan.max_volume else float("inf")
            lines.append(f"  {name:<15} {grid:<16} {human_bytes(base['max_volume']):>12}  "
                         f"({ratio:.2f}x the chosen grid)")
    lines.append(f"planned in {plan.planning_time_s * 1e3:.0f} ms "
                 f"({plan.grids_evaluated} grids evaluated exactly)")
    return "\n".join(lines)
