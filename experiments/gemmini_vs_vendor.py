# python experiments/gemmini_vs_vendor.py [--execute N] [--out experiments/results/gemmini]
"""parconv's tiling against the Gemmini library's tiled_conv_auto, on the calibrated Gemmini model.

Every ResNet-50 convolution (batch 1 and 4), every VGG-16 convolution (batch 1 and 4) and every
AlexNet convolution (batch 1 and 4) is modelled with both tilings (analytical models:
`parconv.gemmini.vendor.calls.vendor_layer_cost` for the library's loop,
`parconv.gemmini.tiled.cost.tiling_cost` for parconv's; the executor counts the same bytes, see
tests/test_gemmini_exec.py, and ``--execute N`` re-checks N layers on data).  Default Gemmini
(256 KiB scratchpad, 64 KiB accumulator), ``dev`` semantics.  Speed is the calibrated cycle model
(`parconv.gemmini.cycles`, fitted by experiments/calibrate_cycles.py; its error on held-out
FireSim layers is printed next to every speed-up); the roofline max(exec, bytes / 8 B/cycle) is
kept beside it.  The outside anchor is DOSA's FireSim-measured speed-up over the library per
ResNet-50 layer at batch 1 (experiments/data/dosa_resnet50_speedups.json).

Writes into the output folder: ``layers.csv`` and ``layers.md`` (per layer: DRAM bytes and
modelled cycles of both, speed-up, utilization, ratio to the sequential bound), ``summary.md``
and ``summary.json`` (the figures printed at the end), ``calibration.csv`` (the cycle model
against the FireSim measurements of gemmini.md 6.1: vendor tiling, batch 1, dosa semantics) and
``gemmini_vs_vendor.png`` (bar plots).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from parconv.gemmini.config import GemminiConfig  # noqa: E402
from parconv.gemmini.tiled.choose import choose_tiling, vendor_tuple  # noqa: E402
from parconv.gemmini.vendor.calls import vendor_layer_cost  # noqa: E402
from parconv.gemmini.vendor.heuristics import conv_auto  # noqa: E402
from parconv.layers import get_layer, layer_names  # noqa: E402
from parconv.spec import ConvSpec  # noqa: E402

#: the published measurements (gemmini.md 6.1: DOSA artifact, FireSim, batch 1, dosa semantics):
#: (C_in, C_out, out, k, s, vendor tile, measured cycles min, max)
MEASURED = [
    (3, 64, 112, 7, 2, (1, 22, 23, 16, 7, 7, 3), 2577642, 2577699),
    (64, 64, 56, 1, 1, (1, 22, 23, 16, 1, 1, 64), 186955, 226179),
    (64, 64, 56, 3, 1, (1, 22, 23, 16, 3, 3, 64), 537803, 538764),
    (64, 256, 56, 1, 1, (1, 22, 23, 16, 1, 1, 64), 510114, 653902),
    (256, 64, 56, 1, 1, (1, 22, 23, 16, 1, 1, 240), 833367, 909964),
    (256, 128, 56, 1, 1, (1, 22, 23, 16, 1, 1, 240), 1194556, 1379592),
    (128, 128, 28, 3, 2, (1, 22, 23, 16, 3, 3, 48), 628118, 704030),
    (128, 512, 28, 1, 1, (1, 22, 23, 16, 1, 1, 128), 457001, 587119),
    (256, 512, 28, 1, 2, (1, 22, 23, 16, 1, 1, 64), 2452866, 3198599),
    (512, 128, 28, 1, 1, (1, 22, 23, 16, 1, 1, 240), 614626, 695342),
    (128, 128, 28, 3, 1, (1, 22, 23, 16, 3, 3, 128), 628884, 636613),
    (512, 256, 28, 1, 1, (1, 22, 23, 16, 1, 1, 240), 987544, 1143548),
    (256, 256, 14, 3, 2, (1, 14, 14, 32, 3, 3, 105), 596874, 657000),
    (256, 1024, 14, 1, 1, (1, 14, 14, 32, 1, 1, 256), 343736, 412036),
    (512, 1024, 14, 1, 2, (1, 14, 14, 32, 1, 1, 160), 1272647, 1910279),
    (1024, 256, 14, 1, 1, (1, 14, 14, 32, 1, 1, 568), 517519, 573768),
    (256, 256, 14, 3, 1, (1, 14, 14, 32, 3, 3, 240), 683380, 749771),
    (1024, 512, 14, 1, 1, (1, 14, 14, 32, 1, 1, 568), 739350, 835523),
    (512, 512, 7, 3, 2, (1, 7, 7, 96, 3, 3, 113), 950713, 1104389),
    (512, 2048, 7, 1, 1, (1, 7, 7, 160, 1, 1, 512), 526394, 586484),
    (1024, 2048, 7, 1, 2, (1, 7, 7, 160, 1, 1, 368), 864214, 1056582),
    (2048, 512, 7, 1, 1, (1, 7, 7, 160, 1, 1, 624), 604086, 652535),
    (512, 512, 7, 3, 1, (1, 7, 7, 112, 3, 3, 119), 777089, 805890),
]
PAPER_RANGE = "13%-150%"
DOSA = os.path.join(ROOT, "experiments", "data", "dosa_resnet50_speedups.json")
FIT = os.path.join(ROOT, "experiments", "results", "gemmini", "calibration_fit.json")
NETWORKS = ("resnet50", "vgg16", "alexnet")
MEMORY_BOUND = 1.05     # a layer is memory-bound when its modelled cycles exceed exec by 5 %


def geomean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def compare_layer(spec: ConvSpec, config: GemminiConfig) -> dict:
    """Both tilings of one layer on the model, as one table row."""
    start = time.perf_counter()
    plan = choose_tiling(spec, config)
    vendor, ours = plan.vendor, plan.cost
    bound = plan.result.bound if plan.model is not spec else plan.result.bound
    from parconv.bounds import sequential_bound_two_memory
    from parconv.gemmini.tiled.choose import model_spec
    bound = float(sequential_bound_two_memory(model_spec(spec, plan.config),
                                              plan.config.scratch_bytes,
                                              plan.config.acc_total_bytes).value)
    row = {"vendor_tile": "(" + ",".join(map(str, vendor.tile.as_tuple())) + ")",
           "parconv_tile": "(" + ",".join(map(str, plan.tiling.as_tuple())) + ")",
           "parconv_tile_library_order": "(" + ",".join(map(str, vendor_tuple(plan.tiling)))
           + ")",
           "parconv_order": plan.order, "parconv_source": plan.source,
           "vendor_bytes": int(vendor.dram_bytes["total"]),
           "parconv_bytes": int(ours.dram_bytes["total"]),
           "parconv_psum_bytes": int(ours.dram_bytes["psum"]),
           "vendor_cycles": float(vendor.calibrated_cycles),
           "parconv_cycles": float(ours.calibrated_cycles),
           "speedup": vendor.calibrated_cycles / ours.calibrated_cycles,
           "vendor_roofline": float(vendor.cycles), "parconv_roofline": float(ours.cycles),
           "speedup_roofline": vendor.cycles / ours.cycles,
           "vendor_exec_cycles": int(vendor.exec_cycles),
           "bytes_objective_tile": "(" + ",".join(map(str, plan.fewest_bytes["tile"])) + ")",
           "bytes_objective_order": plan.fewest_bytes["order"],
           "bytes_objective_speedup": vendor.calibrated_cycles
           / plan.fewest_bytes["calibrated_cycles"],
           "objectives_differ": (tuple(plan.fewest_bytes["tile"]), plan.fewest_bytes["order"])
           != (plan.tiling.as_tuple(), plan.order),
           "vendor_util": vendor.utilization, "parconv_util": ours.utilization,
           "bound_bytes": bound, "ratio_parconv": ours.dram_bytes["total"] / bound,
           "ratio_vendor": vendor.dram_bytes["total"] / bound,
           "memory_bound": vendor.cycles > MEMORY_BOUND * vendor.exec_cycles,
           "dosa_min": None, "dosa_max": None,
           "macs": int(spec.G), "plan_s": time.perf_counter() - start}
    return row, plan


def dosa_anchor() -> dict:
    """DOSA's measured speed-ups over the library per ResNet-50 layer shape (batch 1)."""
    with open(DOSA) as f:
        layers = json.load(f)["layers"]
    return {(d["in_channels"], d["out_channels"], d["kernel_size"], d["stride"], d["out_size"]):
            (d["dosa_speedup_over_library_min"], d["dosa_speedup_over_library_max"])
            for d in layers}


def layer_rows(config: GemminiConfig) -> tuple[list[dict], dict]:
    rows, plans, cache = [], {}, {}
    anchor = dosa_anchor()
    for network in NETWORKS:
        for batch in (1, 4):
            for name in layer_names(network + "."):
                spec = get_layer(name, batch)
                key = (spec.in_channels, spec.out_channels, spec.in_size, spec.kernel_size,
                       spec.stride, spec.padding, batch)
                if key not in cache:
                    cache[key] = compare_layer(spec, config)
                row, plan = cache[key]
                (h, _), (k, _), (s, _) = spec.in_size, spec.kernel_size, spec.stride
                row = dict(row)
                dosa = anchor.get((spec.in_channels, spec.out_channels, k, s, spec.out_size[0]))
                if network == "resnet50" and batch == 1 and dosa is not None:
                    row["dosa_min"], row["dosa_max"] = dosa
                rows.append({"network": network, "batch": batch, "layer": name,
                             "shape": f"{spec.in_channels}->{spec.out_channels} {k}x{k} s{s} "
                                      f"in {h}", **row})
                plans[(name, batch)] = (spec, plan)
    return rows, plans


def calibration(bw_values=np.arange(2.0, 16.01, 0.25)) -> tuple[list[dict], dict]:
    """The model (vendor tiling, dosa semantics, batch 1) against the 6.1 measurements."""
    specs = []
    for c, k, out, kernel, s, tile, lo, hi in MEASURED:
        pad = kernel // 2
        size = (out - 1) * s + kernel - 2 * pad
        specs.append(ConvSpec(batch=1, in_channels=c, out_channels=k, in_size=(size, size),
                              kernel_size=(kernel, kernel), stride=(s, s), padding=(pad, pad),
                              name=f"{c}->{k} {kernel}x{kernel} s{s} out {out}"))

    def model(bw):
        config = GemminiConfig(semantics="dosa", bw_eff=float(bw))
        return [vendor_layer_cost(spec, conv_auto(spec, config), config) for spec in specs]

    def log_errors(costs):
        return [math.log(cost.cycles / math.sqrt(lo * hi))
                for cost, (*_, lo, hi) in zip(costs, MEASURED)]

    fits = {float(bw): float(np.mean(np.abs(log_errors(model(bw))))) for bw in bw_values}
    best_bw = min(fits, key=fits.get)
    default, fitted = model(8.0), model(best_bw)
    rows = []
    for spec, entry, cost, cost_fit in zip(specs, MEASURED, default, fitted):
        *_, tile, lo, hi = entry
        mid = math.sqrt(lo * hi)
        rows.append({"layer": spec.name, "tile_model": str(cost.tile.as_tuple()),
                     "tile_matches_6_1": tuple(cost.tile.as_tuple()) == tile,
                     "exec_cycles": cost.exec_cycles, "model_cycles_bw8": round(cost.cycles),
                     "measured_min": lo, "measured_max": hi,
                     "error_bw8_pct": 100 * (cost.cycles / mid - 1),
                     "within_range_bw8": lo <= cost.cycles <= hi,
                     f"model_cycles_bw{best_bw:g}": round(cost_fit.cycles),
                     "error_fit_pct": 100 * (cost_fit.cycles / mid - 1)})
    summary = {"bw_eff_default": 8.0, "bw_eff_fit": best_bw,
               "mean_abs_log_error_default": fits[8.0], "mean_abs_log_error_fit": fits[best_bw],
               "mean_abs_error_pct_default": float(np.mean([abs(r["error_bw8_pct"])
                                                            for r in rows])),
               "mean_abs_error_pct_fit": float(np.mean([abs(r["error_fit_pct"]) for r in rows])),
               "max_abs_error_pct_default": float(max(abs(r["error_bw8_pct"]) for r in rows)),
               "tiles_match": all(r["tile_matches_6_1"] for r in rows)}
    return rows, summary


def summarise(rows: list[dict]) -> dict:
    out = {"violations_more_bytes": [r["layer"] + f" b{r['batch']}" for r in rows
                                     if r["parconv_bytes"] > r["vendor_bytes"]],
           "slower_layers": [r["layer"] + f" b{r['batch']}" for r in rows
                             if r["speedup"] < 1 - 1e-9]}
    groups = {"all": rows}
    for network in NETWORKS:
        for batch in (1, 4):
            groups[f"{network} b{batch}"] = [r for r in rows if r["network"] == network
                                             and r["batch"] == batch]
    for label, group in groups.items():
        memory_bound = [r for r in group if r["memory_bound"]]
        speed = [r["speedup"] for r in group]
        out[label] = {
            "layers": len(group), "geomean_speedup": geomean(speed),
            "min_speedup": min(speed), "max_speedup": max(speed),
            "network_speedup": sum(r["vendor_cycles"] for r in group)
            / sum(r["parconv_cycles"] for r in group),
            "bytes_ratio_vendor_over_parconv": sum(r["vendor_bytes"] for r in group)
            / sum(r["parconv_bytes"] for r in group),
            "memory_bound_layers": len(memory_bound),
            "memory_bound_geomean_speedup": geomean(r["speedup"] for r in memory_bound),
            "memory_bound_range": [min((r["speedup"] for r in memory_bound), default=None),
                                   max((r["speedup"] for r in memory_bound), default=None)],
            "not_faster": sum(1 for r in group if r["speedup"] <= 1 + 1e-9),
            "geomean_speedup_roofline": geomean(r["speedup_roofline"] for r in group),
            "objectives_differ": sum(1 for r in group if r["objectives_differ"]),
            "geomean_speedup_bytes_objective": geomean(r["bytes_objective_speedup"]
                                                       for r in group),
            "ratio_to_bound_median": float(np.median([r["ratio_parconv"] for r in group])),
            "ratio_to_bound_max": max(r["ratio_parconv"] for r in group),
            "vendor_ratio_to_bound_median": float(np.median([r["ratio_vendor"] for r in group]))}
    anchored = [r for r in rows if r["dosa_min"] is not None]
    out["dosa_anchor"] = {
        "layers": len(anchored),
        "parconv_geomean": geomean(r["speedup"] for r in anchored),
        "dosa_geomean_min": geomean(r["dosa_min"] for r in anchored),
        "dosa_geomean_max": geomean(r["dosa_max"] for r in anchored),
        "parconv_at_least_dosa_min": sum(r["speedup"] >= r["dosa_min"] for r in anchored)}
    macs = sorted(r["macs"] for r in rows)
    cut = macs[int(0.75 * len(macs))]
    large = [r for r in rows if r["macs"] >= cut]
    out["large_layers"] = {"definition": f"top quartile by MACs (>= {cut / 1e6:.0f} MMAC)",
                           "count": len(large),
                           "ratio_median": float(np.median([r["ratio_parconv"] for r in large])),
                           "ratio_max": max(r["ratio_parconv"] for r in large),
                           "within_1_5": sum(r["ratio_parconv"] <= 1.5 for r in large)}
    return out


def write_table(path_csv: str, path_md: str, rows: list[dict], columns: list[str]) -> None:
    with open(path_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with open(path_md, "w") as f:
        f.write("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n")
        for row in rows:
            cells = []
            for c in columns:
                v = row[c]
                cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
            f.write("| " + " | ".join(cells) + " |\n")


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 1, figsize=(16, 9))
    r50 = [r for r in rows if r["network"] == "resnet50" and r["batch"] == 4]
    x = np.arange(len(r50))
    axes[0].bar(x - 0.2, [r["vendor_bytes"] / 1e6 for r in r50], 0.4, label="vendor tiling")
    axes[0].bar(x + 0.2, [r["parconv_bytes"] / 1e6 for r in r50], 0.4, label="parconv tiling")
    axes[0].plot(x, [r["bound_bytes"] / 1e6 for r in r50], "k_", markersize=8,
                 label="sequential bound")
    axes[0].set_ylabel("DRAM MB")
    axes[0].set_title("ResNet-50 convolutions, batch 4: DRAM traffic on the Gemmini model")
    axes[0].set_xticks(x, [str(i + 1) for i in x])
    axes[0].legend()
    labels, colours = [], {"resnet50 b1": "C0", "resnet50 b4": "C1", "vgg16 b1": "C2",
                           "vgg16 b4": "C3"}
    position = 0
    for key, colour in colours.items():
        network, batch = key.split(" b")
        group = [r for r in rows if r["network"] == network and r["batch"] == int(batch)]
        xs = np.arange(position, position + len(group))
        axes[1].bar(xs, [r["speedup"] for r in group], color=colour, label=key)
        labels.append((position + len(group) / 2, key))
        position += len(group) + 2
    axes[1].axhline(1.0, color="k", linewidth=0.8)
    axes[1].set_ylabel("speed-up (vendor cycles / parconv cycles)")
    axes[1].set_xlabel("layer (network order)")
    axes[1].set_title("Modelled speed-up of parconv's tiling (calibrated cycle model, dev semantics)")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def execute_some(plans: dict, count: int) -> list[str]:
    """Run the ``count`` cheapest distinct layers on data with both tilings and check them."""
    from parconv.gemmini.cli import execute
    done, lines = set(), []
    for (name, batch), (spec, plan) in sorted(plans.items(), key=lambda i: i[1][0].G):
        key = (spec.in_channels, spec.out_channels, spec.in_size, spec.kernel_size, spec.stride)
        if key in done or len(done) >= count:
            continue
        done.add(key)
        result = execute(spec, plan, seed=len(done))
        verdict = all(r["ok"] and r["bytes_match_model"] for r in result.values())
        lines.append(f"executed {name} b{batch}: {'OK' if verdict else 'FAILED'} "
                     f"(exact result and counted bytes == model for both tilings)")
        if not verdict:
            raise SystemExit(f"--execute check failed on {name}: {result}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "gemmini"))
    parser.add_argument("--execute", type=int, default=0, metavar="N",
                        help="also run the N cheapest distinct layers on data (both tilings)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    config = GemminiConfig()
    rows, plans = layer_rows(config)
    columns = ["network", "batch", "layer", "shape", "vendor_tile", "parconv_tile",
               "parconv_order", "parconv_source", "vendor_bytes", "parconv_bytes",
               "parconv_psum_bytes", "bound_bytes", "vendor_cycles", "parconv_cycles",
               "speedup", "dosa_min", "dosa_max", "vendor_roofline", "parconv_roofline",
               "speedup_roofline", "bytes_objective_tile", "bytes_objective_order",
               "bytes_objective_speedup", "objectives_differ", "vendor_util", "parconv_util",
               "ratio_vendor", "ratio_parconv", "memory_bound"]
    write_table(os.path.join(args.out, "layers.csv"), os.path.join(args.out, "layers.md"),
                rows, columns)
    cal_rows, cal = calibration()
    write_table(os.path.join(args.out, "calibration.csv"),
                os.path.join(args.out, "calibration.md"), cal_rows, list(cal_rows[0]))
    summary = summarise(rows)
    summary["calibration"] = cal
    summary["paper_range"] = PAPER_RANGE
    summary["model_error"] = model_error()
    summary["resnet50_b1_rows"] = [
        {k: r[k] for k in ("layer", "shape", "vendor_bytes", "parconv_bytes", "vendor_cycles",
                           "parconv_cycles", "speedup", "dosa_min", "dosa_max")}
        for r in rows if r["network"] == "resnet50" and r["batch"] == 1]
    executed = execute_some(plans, args.execute) if args.execute else []
    plot(rows, os.path.join(args.out, "gemmini_vs_vendor.png"))
    summary["runtime_s"] = time.perf_counter() - start
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    text = report(summary, cal_rows, executed)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return 1 if summary["violations_more_bytes"] else 0


def model_error() -> dict:
    """The calibrated model's error from experiments/calibrate_cycles.py (calibration_fit.json)."""
    if not os.path.exists(FIT):
        raise SystemExit(f"{FIT} missing: run experiments/calibrate_cycles.py first")
    with open(FIT) as f:
        sets = json.load(f)["sets"]
    val = sets["validation 16x16 (held-out layers)"]
    res = sets["ResNet-50 calibration rows (library tiling)"]
    return {"val16_mape": val["mape_new"], "val16_pairs": val["pairs_new"][0],
            "resnet_mape": res["mape_new"], "resnet_mean_error": res["mean_error_new"],
            "text": f"model error: MAPE {val['mape_new']:.0f}% on held-out FireSim layers "
                    f"(16x16), {res['mape_new']:.0f}% on the ResNet-50 FireSim rows; picks the "
                    f"faster of two tilings {100 * val['pairs_new'][0]:.0f}% of the time"}


def report(summary: dict, cal_rows: list[dict], executed: list[str]) -> str:
    err = summary["model_error"]["text"]
    lines = ["# parconv tiling vs the Gemmini library (tiled_conv_auto) on the Gemmini model", "",
             "Default Gemmini (256 KiB scratchpad, 64 KiB accumulator), dev semantics; cycles = "
             "the calibrated model (parconv/gemmini/cycles.py, fitted to FireSim by "
             f"experiments/calibrate_cycles.py; {err}). Roofline = max(execute model, "
             "bytes / 8 B/cycle) per call, the previous model.", ""]
    violations = summary["violations_more_bytes"]
    lines.append(f"* ours never moves more DRAM bytes than the vendor tiling: "
                 f"{'YES' if not violations else 'NO: ' + ', '.join(violations)} "
                 f"({summary['all']['layers']} layer rows checked)")
    lines.append(f"* layers where ours is slower: {summary['slower_layers'] or 'none'}")
    for label in ("resnet50 b1", "resnet50 b4", "vgg16 b1", "vgg16 b4", "alexnet b1",
                  "alexnet b4", "all"):
        s = summary[label]
        lo, hi = s["memory_bound_range"]
        mb = (f"{s['memory_bound_layers']} memory-bound layers, geomean speed-up "
              f"{s['memory_bound_geomean_speedup']:.2f}x (range {lo:.2f}-{hi:.2f})"
              if s["memory_bound_layers"] else "no memory-bound layer")
        lines.append(
            f"* {label}: geomean speed-up {s['geomean_speedup']:.2f}x ({err}; roofline "
            f"{s['geomean_speedup_roofline']:.2f}x), range "
            f"{100 * (s['min_speedup'] - 1):.0f}% to {100 * (s['max_speedup'] - 1):.0f}% "
            f"(paper: {summary['paper_range']}); whole network {s['network_speedup']:.2f}x; "
            f"DRAM bytes vendor/ours {s['bytes_ratio_vendor_over_parconv']:.2f}x; {mb}; "
            f"{s['not_faster']} of {s['layers']} layers not faster; ratio to bound median "
            f"{s['ratio_to_bound_median']:.2f} (vendor {s['vendor_ratio_to_bound_median']:.2f}),"
            f" max {s['ratio_to_bound_max']:.2f}")
    d = summary["dosa_anchor"]
    lines.append(f"* outside anchor, ResNet-50 b1 ({d['layers']} layers with a DOSA FireSim "
                 f"measurement): parconv's modelled speed-up geomean {d['parconv_geomean']:.2f}x "
                 f"({err}) vs DOSA's measured {d['dosa_geomean_min']:.2f}x-"
                 f"{d['dosa_geomean_max']:.2f}x (min/max over its predictors); parconv >= DOSA's "
                 f"min on {d['parconv_at_least_dosa_min']} of {d['layers']} layers")
    a = summary["all"]
    lines.append(f"* objectives: the bytes-alone objective (fewest bytes among the candidates) "
                 f"picks another tiling than the calibrated-cycles objective on "
                 f"{a['objectives_differ']} of {a['layers']} layer rows; its geomean speed-up "
                 f"would be {a['geomean_speedup_bytes_objective']:.2f}x instead of "
                 f"{a['geomean_speedup']:.2f}x")
    large = summary["large_layers"]
    lines.append(f"* large layers ({large['definition']}, {large['count']} rows): ratio of ours "
                 f"to the bound median {large['ratio_median']:.2f}, max {large['ratio_max']:.2f}"
                 f"; {large['within_1_5']} of {large['count']} within 1.5x")
    cal = summary["calibration"]
    lines += ["", "## Cycle model vs the FireSim measurements of gemmini.md 6.1 "
              "(vendor tiling, batch 1, dosa semantics)", "",
              f"Vendor tiles equal the 6.1 tile column: {cal['tiles_match']}. Mean |error| "
              f"{cal['mean_abs_error_pct_default']:.1f}% (max "
              f"{cal['max_abs_error_pct_default']:.1f}%) at BW_eff = 8; best fit BW_eff = "
              f"{cal['bw_eff_fit']:g} B/cycle gives mean |error| "
              f"{cal['mean_abs_error_pct_fit']:.1f}%. Error = model / geometric mean of the "
              f"measured min and max - 1.", "",
              "| layer | exec model | model (BW 8) | measured | error (BW 8) | in range |"
              " error (fit) |", "|---|---|---|---|---|---|---|"]
    for r in cal_rows:
        lines.append(f"| {r['layer']} | {r['exec_cycles']:,} | {r['model_cycles_bw8']:,} | "
                     f"{r['measured_min']:,}-{r['measured_max']:,} | {r['error_bw8_pct']:+.1f}% |"
                     f" {'yes' if r['within_range_bw8'] else 'no'} | "
                     f"{r['error_fit_pct']:+.1f}% |")
    lines += ["", "## ResNet-50 batch 1 per layer, with DOSA's FireSim-measured speed-up", "",
              f"Speed-ups are modelled ({err}).", "",
              "| layer | shape | DRAM MB library | DRAM MB parconv | Mcycles library | "
              "Mcycles parconv | speed-up | DOSA measured |", "|---|---|---|---|---|---|---|---|"]
    for r in summary["resnet50_b1_rows"]:
        dosa = (f"{r['dosa_min']:.2f}-{r['dosa_max']:.2f}" if r["dosa_min"] is not None
                else "-")
        lines.append(f"| {r['layer']} | {r['shape']} | {r['vendor_bytes'] / 1e6:.2f} | "
                     f"{r['parconv_bytes'] / 1e6:.2f} | {r['vendor_cycles'] / 1e6:.3f} | "
                     f"{r['parconv_cycles'] / 1e6:.3f} | {r['speedup']:.2f} | {dosa} |")
    if executed:
        lines += ["", *("* " + line for line in executed)]
    lines.append(f"\n(runtime {summary['runtime_s']:.0f} s)")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
