# python experiments/calibrate_cycles.py [--bootstrap 40] [--out experiments/results/gemmini]
"""Fit the calibrated Gemmini cycle model to FireSim and validate it (docs/gemmini.md section 11).

Data: experiments/data/gemmini_firesim_train.json (1236 FireSim runs of ``tiled_conv`` with an
explicit tile, loop order and mesh side, the DOSA artifact's training set) and the 23 ResNet-50
rows of gemmini.md 6.1 (the library's own tiling, FireSim, batch 1; `MEASURED` of
experiments/gemmini_vs_vendor.py).

Split: by layer.  A layer (batch, C, K, input size, kernel, stride) is a validation layer when
``crc32(repr(key)) % 10 < 3`` (about 30 % of the layers, all its tilings and meshes); the fit
uses the remaining layers' records on the 16x16 mesh only (the build the targets are about).
Validation: the held-out layers at 16x16 (the target), the held-out layers on the other meshes
(the mesh is an input of the model, constants shared), and the ResNet-50 rows (never fitted).

Fit: least squares on log(model / measured) with a soft-L1 loss (scale 0.2, so that a handful of
pathological runs cannot drag the constants), then a cluster bootstrap over the fit layers for
the standard errors.  Writes parconv/gemmini/cycle_constants.json (read by the library) and
``calibration_fit.json`` / ``calibration_fit.md`` in the output folder, and prints the figures
of the roofline model (BW_eff = 8 B/cycle) and of the previous (round-4) model beside the new one.

Variants (`VARIANTS`): the first round's structure and each later term (rounds 2 to 4, and
round 6's tile search of the ResNet-50 rows, experiments/cycle_auto_search.py) added in turn, every one fitted on the same split, so that each term's effect on held-out error is
measured in the same run (the first round's structure refitted here reproduces its published
figures).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

from gemmini_vs_vendor import MEASURED  # noqa: E402
from parconv.gemmini.config import GemminiConfig  # noqa: E402
from parconv.gemmini.cycles import (CONSTANTS_PATH, FIELDS, CycleConstants,  # noqa: E402
                                    auto_search_cycles, call_cycles, layer_cycles)
from parconv.gemmini.vendor.calibrated import commands_of, short_of  # noqa: E402
from parconv.gemmini.vendor.layer_cost import vendor_layer_cost  # noqa: E402
from parconv.gemmini.vendor.firesim import firesim_cost  # noqa: E402
from parconv.gemmini.vendor.heuristics import auto_search_steps  # noqa: E402
from parconv.spec import ConvSpec  # noqa: E402

DATA = os.path.join(ROOT, "experiments", "data", "gemmini_firesim_train.json")
TILE_KEYS = ("batches", "porows", "pocols", "pochs", "krows", "kcols", "kchs")
START = CycleConstants(t_cmd=20.0, t_pass=6.0)
UPPER = {"c_call": 1e5, "t_hit": 100.0, "t_miss": 200.0, "inv_bw": 10.0, "alpha": 1.0,
         "p_pass": 100.0, "t_store": 100.0, "inv_bw_miss": 10.0, "t_cmd": 1000.0,
         "t_pass": 16.0}
#: the model's structures compared (cumulative): first-round terms, then each later term
VARIANTS = {"round 1": {"lines": "rows", "fields": FIELDS[:6], "fill": False},
            "+ mvin pieces": {"lines": "pieces", "fields": FIELDS[:6], "fill": False},
            "+ store rows": {"lines": "pieces", "fields": FIELDS[:7], "fill": False},
            "+ miss bandwidth": {"lines": "pieces", "fields": FIELDS[:8], "fill": False},
            "+ pipeline fill (round 2)": {"lines": "pieces", "fields": FIELDS[:8], "fill": True},
            "+ DMA command latency (round 3)": {"lines": "pieces", "fields": FIELDS[:9],
                                                "fill": True},
            "+ pass floor (round 4)": {"lines": "pieces", "fields": FIELDS, "fill": True},
            "+ auto tile search (round 6, final)": {"lines": "pieces", "fields": FIELDS,
                                                    "fill": True, "search": True}}
FINAL = "+ auto tile search (round 6, final)"
#: the published model before this round (the "previous" column of the report)
PREVIOUS = "+ pass floor (round 4)"


def layer_key(spec: ConvSpec) -> tuple:
    return (spec.batch, spec.in_channels, spec.out_channels, spec.in_size[0],
            spec.kernel_size[0], spec.stride[0])


def is_validation(key: tuple) -> bool:
    return zlib.crc32(repr(key).encode()) % 10 < 3


def load_records(path: str = DATA, warm: bool = True) -> list[dict]:
    """The FireSim runs with their calibration terms and roofline cycles."""
    with open(path) as f:
        raw = json.load(f)["records"]
    records = []
    for r in raw:
        spec = ConvSpec(batch=r["batch"], in_channels=r["in_channels"],
                        out_channels=r["out_channels"], in_size=tuple(r["in_size"]),
                        kernel_size=tuple(r["kernel_size"]), stride=tuple(r["stride"]),
                        padding=tuple(r["padding"]), dilation=tuple(r["dilation"]))
        if list(spec.out_size) != list(r["out_size"]):
            raise SystemExit(f"csv_row {r['csv_row']}: out_size {spec.out_size} != "
                             f"{r['out_size']}")
        tile = tuple(r["tile"][k] for k in TILE_KEYS)
        cost = firesim_cost(spec, tile, r["loop_order"], r["firesim_pe_dim"], START, warm=warm)
        key = layer_key(spec)
        records.append({"csv_row": r["csv_row"], "key": key, "dim": r["firesim_pe_dim"],
                        "order": r["loop_order"], "tile": tile, "measured": r["measured_cycles"],
                        "terms": cost.calibration_terms, "roofline": cost.cycles,
                        "validation": is_validation(key)})
    return records


def row_spec(row) -> ConvSpec:
    """The layer of a `MEASURED` row as DOSA ran it (padding k // 2, input extent
    ``(out - 1) s + k - 2 pad``, gemmini.md 6.1)."""
    c, k, out, kernel, s = row[:5]
    pad = kernel // 2
    size = (out - 1) * s + kernel - 2 * pad
    return ConvSpec(batch=1, in_channels=c, out_channels=k, in_size=(size, size),
                    kernel_size=(kernel, kernel), stride=(s, s), padding=(pad, pad),
                    name=f"{c}->{k} {kernel}x{kernel} s{s} out {out}")


def resnet_rows() -> list[dict]:
    """The 23 ResNet-50 rows: the library's tile and stock loop, dosa semantics, FireSim
    min/max (the reference value is their geometric mean), and the core cycles of the tile
    search that their timed ``tiled_conv_auto_inner`` runs first (`auto_search_steps`, round 6)."""
    rows = []
    for row in MEASURED:
        spec, (tile, lo, hi) = row_spec(row), row[5:]
        config = GemminiConfig(semantics="dosa")
        cost = vendor_layer_cost(spec, tile, config, constants=START)
        steps = auto_search_steps(spec, config)
        rows.append({"layer": spec.name, "key": ("resnet50",) + layer_key(spec), "dim": 16,
                     "measured": math.sqrt(lo * hi), "lo": lo, "hi": hi,
                     "terms": cost.calibration_terms, "roofline": cost.cycles,
                     "search_steps": steps, "search": auto_search_cycles(steps)})
    return rows


def model_cycles(theta, record, variant: str = FINAL) -> float:
    """The modelled cycles of a record under ``variant`` (`VARIANTS`), with the variant's
    fitted constants ``theta`` (the other constants are 0)."""
    t, v = record["terms"], VARIANTS[variant]
    values = dict(zip(v["fields"], theta))
    # a field the variant does not fit is 0 (t_pass = 0: the execute model's own floor of 4)
    constants = CycleConstants.from_vector([values.get(f, 0.0) for f in FIELDS])
    hit, miss = (t["hit"], t["miss"]) if v["lines"] == "pieces" else (t["hit_rows"],
                                                                       t["miss_rows"])
    commands = commands_of(t)     # adds nothing while t_cmd = 0 (the earlier variants)
    short = short_of(t)           # adds nothing while t_pass <= 4
    # the library's tile search: only the ResNet-50 rows run it (0 for the FireSim runs)
    search = record.get("search", 0.0) if v.get("search") else 0.0
    if v["fill"]:
        return search + layer_cycles(constants, t["weight"], t["exec"], t["passes"], hit, miss,
                            t["moved"], stores=t["stores"], miss_bytes=t["miss_bytes"],
                            commands=commands, short=short)
    return search + float((call_cycles(constants, t["exec"], t["passes"], hit, miss, t["moved"],
                              stores=t["stores"], miss_bytes=t["miss_bytes"],
                              commands=commands, short=short) * t["weight"]).sum())


def fit(records, start=None, variant: str = FINAL):
    from scipy.optimize import least_squares
    fields = VARIANTS[variant]["fields"]
    start = START.vector()[:len(fields)] if start is None else start
    measured = np.log([r["measured"] for r in records])

    def residuals(theta):
        return np.log([model_cycles(theta, r, variant) for r in records]) - measured

    upper = [UPPER[f] for f in fields]
    sol = least_squares(residuals, start, bounds=(np.zeros(len(fields)), upper),
                        loss="soft_l1", f_scale=0.2)
    return sol.x


def errors(values, records) -> np.ndarray:
    return np.array([v / r["measured"] - 1 for v, r in zip(values, records)])


def mape(values, records) -> float:
    return float(100 * np.mean(np.abs(errors(values, records)))) if records else float("nan")


def pair_agreement(values, records) -> tuple[float, int]:
    """Fraction of pairs of tilings of the same layer (and mesh) whose faster one the model
    picks, over pairs with different measured cycles."""
    groups: dict = {}
    for v, r in zip(values, records):
        groups.setdefault((r["key"], r["dim"]), []).append((v, r["measured"]))
    right = total = 0
    for group in groups.values():
        for (m1, y1), (m2, y2) in itertools.combinations(group, 2):
            if y1 != y2:
                total += 1
                right += (m1 < m2) == (y1 < y2)
    return (right / total if total else float("nan")), total


def bootstrap(records, theta, rounds: int, seed: int = 0) -> np.ndarray:
    """Standard errors of the constants: refits on fit layers drawn with replacement."""
    rng = np.random.default_rng(seed)
    layers = sorted({r["key"] for r in records})
    by_layer = {k: [r for r in records if r["key"] == k] for k in layers}
    draws = []
    for _ in range(rounds):
        pick = rng.integers(0, len(layers), len(layers))
        sample = [r for i in pick for r in by_layer[layers[i]]]
        draws.append(fit(sample, theta))
    return np.std(draws, axis=0, ddof=1) if rounds > 1 else np.full(len(FIELDS), np.nan)


FIT_SET, VAL_SET = "fit (16x16, fit layers)", "validation 16x16 (held-out layers)"
RESNET_SET = "ResNet-50 calibration rows (library tiling)"


def summarise(theta, records, resnet, variant: str = FINAL) -> dict:
    sets = {FIT_SET: [r for r in records if r["dim"] == 16 and not r["validation"]],
            VAL_SET: [r for r in records if r["dim"] == 16 and r["validation"]]}
    for dim in sorted({r["dim"] for r in records} - {16}):
        sets[f"validation {dim}x{dim} (held-out layers)"] = [
            r for r in records if r["dim"] == dim and r["validation"]]
    sets[RESNET_SET] = resnet
    out = {}
    for label, group in sets.items():
        new = [model_cycles(theta, r, variant) for r in group]
        old = [r["roofline"] for r in group]
        e_new = errors(new, group)
        out[label] = {"records": len(group), "layers": len({r["key"] for r in group}),
                      "mape_new": mape(new, group), "mape_roofline": mape(old, group),
                      "median_ape_new": float(100 * np.median(np.abs(e_new))),
                      "max_ape_new": float(100 * np.max(np.abs(e_new))),
                      "mean_error_new": float(100 * np.mean(e_new)),
                      "pairs_new": pair_agreement(new, group),
                      "pairs_roofline": pair_agreement(old, group)}
    return out


def report(result: dict) -> str:
    c = result["constants"]
    lines = ["# Calibrated Gemmini cycle model vs FireSim", "",
             f"Split: {result['split']}", "",
             "| constant | value | bootstrap s.e. | meaning |", "|---|---|---|---|"]
    meaning = {"c_call": "cycles per call at least (core issues the call)",
               "t_hit": "cycles per 64-B DMA line that hits the L2",
               "t_miss": "cycles per 64-B DMA line that misses the L2",
               "inv_bw": "cycles per byte moved (1 / bandwidth)",
               "alpha": "non-overlapped fraction of min(load, exec)",
               "p_pass": "cycles added per array pass",
               "t_store": "cycles per mvout row (one DMA write request)",
               "inv_bw_miss": "cycles per loaded byte that misses the L2 (refill bandwidth)",
               "t_cmd": "round trip of one DMA command (mvin / mvout); 16 / DIM + 1 in flight",
               "t_pass": "shortest array pass in cycles (the RTL floor is 4)"}
    for f in FIELDS:
        lines.append(f"| {f} | {c[f]:.4g} | {c['stderr'][f]:.2g} | {meaning[f]} |")
    lines += ["", f"l2_bytes = {c['l2_bytes']} (fixed: the builds' L2)", "",
              "| set | records | layers | MAPE new | MAPE previous (" + PREVIOUS + ") | "
              "MAPE roofline (BW 8) | median APE new | max APE new | mean error new | "
              "pairs right new | pairs right previous | pairs right roofline |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    old = result["variants"][PREVIOUS]["sets"]
    for label, s in result["sets"].items():
        pn, p1, pr = s["pairs_new"], old[label]["pairs_new"], s["pairs_roofline"]
        lines.append(f"| {label} | {s['records']} | {s['layers']} | {s['mape_new']:.1f}% | "
                     f"{old[label]['mape_new']:.1f}% | "
                     f"{s['mape_roofline']:.1f}% | {s['median_ape_new']:.1f}% | "
                     f"{s['max_ape_new']:.0f}% | {s['mean_error_new']:+.1f}% | "
                     f"{100 * pn[0]:.1f}% of {pn[1]} | {100 * p1[0]:.1f}% | "
                     f"{100 * pr[0]:.1f}% of {pr[1]} |")
    lines += ["", "Each term added in turn (same split, same fit; round 1 = the first round's "
              "structure refitted here):", "",
              "| model | constants | MAPE fit | MAPE held-out 16x16 | pairs held-out 16x16 | "
              "MAPE ResNet-50 rows | mean error ResNet-50 |", "|---|---|---|---|---|---|---|"]
    for name, v in result["variants"].items():
        fs, vs, rs = (v["sets"][k] for k in (FIT_SET, VAL_SET, RESNET_SET))
        lines.append(f"| {name} | {len(v['theta'])} | {fs['mape_new']:.1f}% | "
                     f"{vs['mape_new']:.1f}% | {100 * vs['pairs_new'][0]:.1f}% | "
                     f"{rs['mape_new']:.1f}% | {rs['mean_error_new']:+.1f}% |")
    lines += ["", "ResNet-50 rows (error = model / geometric mean of FireSim min and max - 1):",
              "", "| layer | FireSim | new model | error | previous (" + PREVIOUS + ") error | roofline | "
              "error |",
              "|---|---|---|---|---|---|---|"]
    for r in result["resnet"]:
        lines.append(f"| {r['layer']} | {r['lo']:,}-{r['hi']:,} | {r['new']:,.0f} | "
                     f"{r['error_new']:+.1f}% | {r['error_previous']:+.1f}% | "
                     f"{r['roofline']:,.0f} | {r['error_roofline']:+.1f}% |")
    lines.append(f"\n(runtime {result['runtime_s']:.0f} s)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "gemmini"))
    parser.add_argument("--bootstrap", type=int, default=40, metavar="B")
    parser.add_argument("--cold", action="store_true",
                        help="treat every FireSim run as starting with a cold L2")
    parser.add_argument("--constants", default=CONSTANTS_PATH,
                        help="where to write the fitted constants (read by the library)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    records = load_records(warm=not args.cold)
    resnet = resnet_rows()
    fit_set = [r for r in records if r["dim"] == 16 and not r["validation"]]
    theta = fit(fit_set)
    stderr = bootstrap(fit_set, theta, args.bootstrap)
    split = (f"by layer, validation = crc32(repr(layer)) % 10 < 3: "
             f"{len({r['key'] for r in records if r['validation']})} of "
             f"{len({r['key'] for r in records})} layers held out; fit on the "
             f"{len(fit_set)} 16x16 records of the other layers; ResNet-50 rows never fitted")
    constants = CycleConstants.from_vector(
        theta, stderr={f: float(s) for f, s in zip(FIELDS, stderr)},
        fit={"records": len(fit_set), "split": split, "bootstrap_rounds": args.bootstrap,
             "data": "experiments/data/gemmini_firesim_train.json",
             "script": "experiments/calibrate_cycles.py"})
    variants = {}
    for name in VARIANTS:
        # a variant that differs from the final one only in the search term fits the same
        # constants (the fit records never run the search)
        same = {k: v for k, v in VARIANTS[name].items() if k != "search"} == {
            k: v for k, v in VARIANTS[FINAL].items() if k != "search"}
        v_theta = theta if same else fit(fit_set, variant=name)
        variants[name] = {"theta": [float(x) for x in v_theta],
                          "sets": summarise(v_theta, records, resnet, name)}
    result = {"split": split, "constants": constants.to_dict(),
              "sets": variants[FINAL]["sets"], "variants": variants, "resnet": []}
    previous = variants[PREVIOUS]["theta"]
    for r in resnet:
        new = model_cycles(theta, r)
        old = model_cycles(previous, r, PREVIOUS)
        result["resnet"].append({"layer": r["layer"], "lo": r["lo"], "hi": r["hi"], "new": new,
                                 "error_new": 100 * (new / r["measured"] - 1),
                                 "error_previous": 100 * (old / r["measured"] - 1),
                                 "roofline": r["roofline"],
                                 "error_roofline": 100 * (r["roofline"] / r["measured"] - 1)})
    result["runtime_s"] = time.perf_counter() - start
    with open(args.constants, "w") as f:
        json.dump(constants.to_dict(), f, indent=1)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "calibration_fit.json"), "w") as f:
        json.dump(result, f, indent=1)
    text = report(result)
    with open(os.path.join(args.out, "calibration_fit.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
