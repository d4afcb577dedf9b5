"""The planner's rows of the scaling studies: parconv's grid, the bound and the peers'
decompositions (batch, spatial, input-channel, output-channel only) on the same ranks."""

from __future__ import annotations

from _common import PEERS, StudyError, grid_text
from parconv.plan import make_plan


def _largest_grid(family: str, caps, P: int) -> list[tuple]:
    """Pure grids of `family` using as many ranks as that decomposition can, at most P."""
    n, k, c, h, w = caps
    if family == "batch":
        return [(min(P, n), 1, 1, 1, 1)]
    if family == "output-channel":
        return [(1, min(P, k), 1, 1, 1)]
    if family == "input-channel":
        return [(1, 1, min(P, c), 1, 1)]
    pairs = [(a, min(w, P // a)) for a in range(1, min(h, P) + 1)]
    most = max(a * b for a, b in pairs)
    return [(1, 1, 1, a, b) for a, b in pairs if a * b == most]


def peer_volumes(spec, plan, memory) -> dict:
    """Busiest rank's volume of each peer decomposition on ``plan.ranks`` ranks.

    Where the pure decomposition exists on all P ranks it is ``plan.baselines`` (the planner's
    own evaluation).  Where it cannot use P ranks (batch only with P > N, spatial only with
    P > H W, ...) the peer runs on the most ranks it can use and the others idle, as data
    parallelism beyond the batch does; ``ranks`` then says how many it used.  None when no
    grid of that family fits in `memory`.
    """
    caps = (spec.batch, spec.out_channels, spec.in_channels, *spec.out_size)
    out = {}
    for family in PEERS:
        base = plan.baselines.get(family)
        if base is not None:
            out[family] = {"grid": grid_text(base["grid"]), "ranks": plan.ranks,
                           "max_volume": int(base["max_volume"])}
            continue
        best = None
        for grid in _largest_grid(family, caps, plan.ranks):
            used = 1
            for g in grid:
                used *= g
            try:
                peer = make_plan(spec, used, memory=memory, grid=grid)
            except Exception as exc:  # noqa: BLE001 - a grid that does not fit is no peer
                if "memory too small" in str(exc):
                    continue
                raise
            if best is None or peer.max_volume < best["max_volume"]:
                best = {"grid": grid_text(grid), "ranks": used, "max_volume": peer.max_volume}
        out[family] = best
    return out


def plan_row(spec, P: int, memory=None) -> dict:
    """One predicted row: parconv's grid and busiest volume, the bound and every peer."""
    plan = make_plan(spec, P, memory=memory)
    row = {"layer": spec.name, "batch": spec.batch, "P": P, "grid": grid_text(plan.dims.as_tuple()),
           "active": plan.active, "max_volume": plan.max_volume,
           "B_MI": plan.bound.B_MI, "B_MD": plan.bound.B_MD, "bound": plan.bound.value,
           "binding": plan.bound.binding, "ratio_to_bound": plan.ratio_to_bound}
    peers = peer_volumes(spec, plan, plan.memory)
    for family, peer in peers.items():
        row[f"{family}_volume"] = None if peer is None else peer["max_volume"]
        row[f"{family}_ranks"] = None if peer is None else peer["ranks"]
        row[f"{family}_grid"] = None if peer is None else peer["grid"]
    for prefix, usable in (
            ("best_peer", {f: p for f, p in peers.items() if p is not None and p["ranks"] == P}),
            ("best_idle_peer", {f: p for f, p in peers.items() if p is not None})):
        best = min(usable, key=lambda f: (usable[f]["max_volume"], -usable[f]["ranks"]),
                   default=None)
        row[prefix] = best
        row[f"{prefix}_ranks"] = usable[best]["ranks"] if best else None
        row[f"{prefix}_volume"] = usable[best]["max_volume"] if best else None
        row[f"{prefix}_over_parconv"] = (usable[best]["max_volume"] / plan.max_volume
                                         if best and plan.max_volume > 0 else None)
    return row


def check_bound(rows: list[dict]) -> int:
    """bound <= parconv's busiest volume on every row (the bound is a lower bound)."""
    bad = [r for r in rows if r["bound"] > r["max_volume"] * (1 + 1e-9) + 1e-6]
    if bad:
        r = bad[0]
        raise StudyError(f"bound above the volume: {r['layer']} P={r['P']}: bound {r['bound']} "
                         f"> busiest volume {r['max_volume']}")
    return len(rows)


def check_measured(rows: list[dict], measured: list[dict]) -> int:
    """Every measured busiest-rank volume equals the predicted table's where both exist."""
    table = {(r["layer"], r["P"]): r["max_volume"] for r in rows}
    both = 0
    for m in measured:
        predicted = table.get((m["layer"], m["P"]))
        if predicted is None:
            continue
        if predicted != m["measured_volume"]:
            raise StudyError(f"{m['layer']} P={m['P']}: measured busiest volume "
                             f"{m['measured_volume']} != predicted {predicted}")
        both += 1
    return both
