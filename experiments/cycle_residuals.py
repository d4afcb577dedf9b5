# python experiments/cycle_residuals.py [--no-refit]
"""Residual analysis of the calibrated Gemmini cycle model on its FIT set (docs/gemmini.md 11.4).

Reads the FireSim training runs (experiments/data/gemmini_firesim_train.json) with the split of
experiments/calibrate_cycles.py and the fitted constants (parconv/gemmini/cycle_constants.json),
and prints, for the 16x16 runs of the fit layers only (held-out layers are never looked at here):

* the variance of the log residual ``log(measured / model)`` split into between-layer and
  within-layer parts (a per-layer bias would show as the first);
* the correlation of the residual with per-run features (mesh use, calls, output pixels and
  channels per call, loop order, the dominant DMA stream, bytes, image width vs DIM, stride,
  kernel, accumulation across calls, preload share, the accumulator-reuse conflict below);
* the execute-bound runs' measured cycles over the model's execute side X, by execute cycles
  per array pass, with and without the pass floor ``t_pass``;
* the effective overlap ``(measured - sum max(L, X)) / sum min(L, X)`` of the runs whose loads L
  and execution X are comparable (0 = perfect overlap, 1 = none), and what pricing the runs
  above 0.5 at ``sum (X + L)`` (an oracle: the model cannot tell them) would do to the fit MAPE;
* the ResNet-50 rows (validation, not fitted): the model and ``sum (X + L)`` against FireSim.

With a refit (default) it also fits the one structural candidate found (the zero-fill conflict,
see `conflict_fraction`) as an extra term on the fit set and prints its effect on every set, so
that its rejection in the document is reproducible.  About 1 min.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

from calibrate_cycles import UPPER, load_records, resnet_rows  # noqa: E402
from parconv.gemmini.cycles import FIELDS, CycleConstants, call_phases, layer_cycles  # noqa: E402
from parconv.gemmini.cycles import load_constants  # noqa: E402
from parconv.gemmini.vendor.calibrated import commands_of, short_of  # noqa: E402

REDUCTION = frozenset("SRC")


def trips(record) -> dict:
    """Tile counts per library letter of a FireSim run (output size from the layer key)."""
    _, c, k, size, kernel, stride = record["key"]
    out = (size + 2 * (kernel // 2) - kernel) // stride + 1
    _, pr, pc, po, kr, kc, kch = record["tile"]
    return {"N": 1, "Q": -(-out // pr), "P": -(-out // pc), "K": -(-k // po),
            "S": -(-kernel // kr), "R": -(-kernel // kc), "C": -(-c // kch)}


def conflict_fraction(record) -> float:
    """Fraction of calls that zero their accumulator rows while the previous call still owns them.

    DOSA's harness passes no bias, so ``tiled_conv`` hands ``loop_conv_ws`` a bias pointer of 1
    (non-null) on every first reduction call (krow = kcol = kch = 0): ``LoopConvLdBias`` then
    issues zero-fill mvins into the accumulator.  ``LoopConv.scala`` flips the bias / execute /
    store halves of the accumulator only after a call that stores (``output_dram_addr != 0``),
    so when the previous call did not store (a reduction loop outside a non-reduction loop), the
    zero-fill targets the rows that call still accumulates into and the reservation station
    holds it (and the loads queued behind it) until that call's computes are done.
    """
    t = trips(record)
    order = record["order"][::-1]                      # outermost first
    shape = [t[letter] for letter in order]
    if math.prod(shape) > 4_000_000:
        return float("nan")
    idx = dict(zip(order, np.indices(shape).reshape(len(shape), -1)))
    first = (idx["S"] == 0) & (idx["R"] == 0) & (idx["C"] == 0)
    last = (idx["S"] == t["S"] - 1) & (idx["R"] == t["R"] - 1) & (idx["C"] == t["C"] - 1)
    return float((first[1:] & ~last[:-1]).sum() / len(first))


def same_weight_fraction(record) -> float:
    """Fraction of consecutive calls that load the same weight block (no K, S, R or C step)."""
    t = trips(record)
    order = record["order"][::-1]
    shape = [t[letter] for letter in order]
    if math.prod(shape) > 4_000_000 or math.prod(shape) < 2:
        return float("nan")
    idx = dict(zip(order, np.indices(shape).reshape(len(shape), -1)))
    step = sum(np.diff(idx[letter]) != 0 for letter in "KSRC")
    return float((step == 0).mean())


def phases(constants, record):
    t = record["terms"]
    x, load = call_phases(constants, t["exec"], t["passes"], t["hit"], t["miss"], t["moved"],
                          t["stores"], t["miss_bytes"], commands_of(t), short_of(t))
    return x, load, t["weight"]


def model(constants, record, gamma: float = 0.0) -> float:
    t = record["terms"]
    base = layer_cycles(constants, t["weight"], t["exec"], t["passes"], t["hit"], t["miss"],
                        t["moved"], stores=t["stores"], miss_bytes=t["miss_bytes"],
                        commands=commands_of(t), short=short_of(t))
    if gamma == 0.0 or not record.get("conflict"):
        return base
    x, load, w = phases(constants, record)
    return base + gamma * record["conflict"] * float((np.minimum(x, load) * w).sum())


def features(record, constants) -> dict:
    """Per-run features of the residual analysis (means over calls where they vary)."""
    _, c, k, size, kernel, stride = record["key"]
    _, pr, pc, po, kr, kc, kch = record["tile"]
    dim = record["dim"]
    t = trips(record)
    x, load, w = phases(constants, record)
    calls = float(w.sum())
    terms = record["terms"]
    streams = {s: float((terms[p + "bytes"] * w).sum()) for s, p in
               (("input", "in_"), ("weight", "w_"), ("output", "st_"))}
    total = sum(streams.values()) or 1.0
    out_cols = min(pc, -(-size // stride))
    blocks = -(-po // dim) * kr * kc * -(-kch // dim)
    inner = [letter for letter in record["order"] if t[letter] > 1]
    return {
        "log calls": math.log(calls),
        "mesh use, output cols / DIM (<= 1)": min(out_cols / dim, 1.0),
        "mesh use, pochs mod DIM fill": po / (dim * -(-po // dim)),
        "mesh use, kchs mod DIM fill": kch / (dim * -(-kch // dim)),
        "log output pixels per call": math.log(pr * pc),
        "log channels per tile (kchs)": math.log(kch),
        "log pochs": math.log(po),
        "C innermost in the loop order": float(record["order"][0] == "C"),
        "innermost non-trivial loop is a reduction": float(bool(inner) and inner[0] in REDUCTION),
        "input share of bytes": streams["input"] / total,
        "weight share of bytes": streams["weight"] / total,
        "output share of bytes": streams["output"] / total,
        "log input bytes per call": math.log(1 + streams["input"] / calls),
        "log weight bytes per call": math.log(1 + streams["weight"] / calls),
        "image width / DIM": size / dim,
        "stride": float(stride),
        "kernel size": float(kernel),
        "accumulates across calls (C, R or S split)": float(t["C"] * t["R"] * t["S"] > 1),
        "preload share of X (DIM cycles per block)": min(1.0, blocks * dim * calls
                                                         / float((x * w).sum())),
        "log L / X": math.log(float((load * w).sum()) / float((x * w).sum())),
        "zero-fill conflict fraction": record["conflict"],
        "consecutive calls with the same weights": same_weight_fraction(record),
    }


def refit_with_conflict(fit_set, start):
    from scipy.optimize import least_squares
    measured = np.log([r["measured"] for r in fit_set])

    def residuals(theta):
        constants = CycleConstants.from_vector(theta[:-1])
        return np.log([model(constants, r, theta[-1]) for r in fit_set]) - measured

    upper = [UPPER[f] for f in FIELDS] + [5.0]
    sol = least_squares(residuals, np.r_[start, 0.3], bounds=(np.zeros(len(upper)), upper),
                        loss="soft_l1", f_scale=0.2)
    return CycleConstants.from_vector(sol.x[:-1]), float(sol.x[-1])


def mape(values, group) -> float:
    return float(100 * np.mean([abs(v / r["measured"] - 1) for v, r in zip(values, group)]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-refit", action="store_true",
                        help="skip the refit with the zero-fill conflict term (about 30 s)")
    args = parser.parse_args(argv)
    constants = load_constants()
    records = load_records()
    resnet = resnet_rows()
    for r in records:
        r["conflict"] = conflict_fraction(r)
    fit_set = [r for r in records if r["dim"] == 16 and not r["validation"]]
    res = np.array([math.log(r["measured"] / model(constants, r)) for r in fit_set])
    ape = np.abs(np.exp(-res) - 1)
    print(f"fit set: {len(fit_set)} runs of {len({r['key'] for r in fit_set})} layers, "
          f"MAPE {100 * ape.mean():.1f} %, median APE {100 * np.median(ape):.1f} %")
    layer_mean = {}
    for r, e in zip(fit_set, res):
        layer_mean.setdefault(r["key"], []).append(e)
    layer_mean = {k: float(np.mean(v)) for k, v in layer_mean.items()}
    within = np.array([e - layer_mean[r["key"]] for r, e in zip(fit_set, res)])
    print(f"log residual variance {res.var():.4f}: within layers {within.var():.4f} "
          f"({100 * within.var() / res.var():.0f} %), between layers "
          f"{res.var() - within.var():.4f}")
    print(f"runs with |error| > 20 %: {int((ape > 0.2).sum())}, their share of the MAPE "
          f"{100 * ape[ape > 0.2].sum() / ape.sum():.0f} %")
    rows = [features(r, constants) for r in fit_set]
    print("\n| feature | r with log(measured / model) |\n|---|---|")
    for name in rows[0]:
        v = np.array([f[name] for f in rows], dtype=float)
        ok = np.isfinite(v)
        r = np.corrcoef(v[ok], res[ok])[0, 1] if v[ok].std() > 0 else float("nan")
        print(f"| {name} | {r:+.2f} |")
    # effective overlap of runs whose loads and execution are comparable
    # the execute side of execute-bound runs, with and without the pass floor, by pass length
    print("\n| execute-bound runs (X > 1.5 L, X > 400 per call), execute cycles per "
          "pass | runs | median measured / X, t_pass = 0 | with the fitted t_pass |\n|---|---|---|---|")
    no_floor = CycleConstants(**{**{f: getattr(constants, f) for f in FIELDS}, "t_pass": 0.0})
    bins = {}
    for r in fit_set:
        x, load, w = phases(constants, r)
        x0 = phases(no_floor, r)[0]
        xs, ls, calls = float((x * w).sum()), float((load * w).sum()), float(w.sum())
        if xs > 1.5 * ls and xs / calls > 400:
            per_pass = float((r["terms"]["exec"] * w).sum() / (r["terms"]["passes"] * w).sum())
            key = "< 6" if per_pass < 6 else "6 - 10" if per_pass < 10 else ">= 10"
            bins.setdefault(key, []).append((r["measured"] / float((x0 * w).sum()),
                                             r["measured"] / xs))
    for key in ("< 6", "6 - 10", ">= 10"):
        v = np.array(bins.get(key, [(np.nan, np.nan)]))
        print(f"| {key} | {len(bins.get(key, []))} | {np.median(v[:, 0]):.2f} | "
              f"{np.median(v[:, 1]):.2f} |")
    over, conf, same, oracle = [], [], [], ape.copy()
    for r in fit_set:
        x, load, w = phases(constants, r)
        xs, ls = float((x * w).sum()), float((load * w).sum())
        if min(xs, ls) > 0.3 * max(xs, ls) and xs / w.sum() > 600:
            over.append((r["measured"] - max(xs, ls)) / min(xs, ls))
            if over[-1] > 0.5:      # an oracle that knew these run without overlap
                oracle[fit_set.index(r)] = abs((xs + ls) / r["measured"] - 1)
            conf.append(r["conflict"])
            same.append(same_weight_fraction(r))
    over, conf, same = np.array(over), np.array(conf), np.array(same)
    print(f"\neffective overlap (measured - max) / min over {len(over)} runs with min(L, X) > "
          f"0.3 max(L, X) and X > 600 cycles per call: median {np.median(over):+.2f}, "
          f"quartiles {np.percentile(over, 25):+.2f} / {np.percentile(over, 75):+.2f}, "
          f"{int((over > 0.5).sum())} runs above 0.5; r with the conflict fraction "
          f"{np.corrcoef(conf, over)[0, 1]:+.2f}, with the same-weights fraction "
          f"{np.corrcoef(same, over)[0, 1]:+.2f}")
    print(f"those above 0.5 carry {100 * ape[oracle != ape].sum() / ape.sum():.0f} % of the fit "
          f"MAPE; priced at sum (X + L) the fit set would be at {100 * oracle.mean():.1f} %")
    print("\n| ResNet-50 row | FireSim | model error | sum (X + L) error |\n|---|---|---|---|")
    for r in resnet:
        x, load, w = phases(constants, r)
        print(f"| {r['layer']} | {r['measured']:,.0f} | "
              f"{100 * (model(constants, r) / r['measured'] - 1):+.0f} % | "
              f"{100 * (float(((x + load) * w).sum()) / r['measured'] - 1):+.0f} % |")
    if args.no_refit:
        return 0
    refit, gamma = refit_with_conflict(fit_set, constants.vector())
    sets = {"fit 16x16": fit_set,
            "held-out 16x16": [r for r in records if r["dim"] == 16 and r["validation"]],
            "ResNet-50 rows": resnet}
    for r in resnet:
        r["conflict"] = 0.0       # the stock loop order stores before every first call
    print(f"\nrefit with the zero-fill conflict term: gamma = {gamma:.2f} of min(L, X) per "
          f"conflicting call")
    print("| set | MAPE current | MAPE with the conflict term |\n|---|---|---|")
    for label, group in sets.items():
        print(f"| {label} | {mape([model(constants, r) for r in group], group):.1f} % | "
              f"{mape([model(refit, r, gamma) for r in group], group):.1f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
