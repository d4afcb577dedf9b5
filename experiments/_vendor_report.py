"""The tables, plots and summary of experiments/gemmini_vs_vendor.py: per-network figures of the
layer rows, the CSV / markdown tables, the bar plots and the printed report (no modelling here:
the rows come from gemmini_vs_vendor.layer_rows)."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIT = os.path.join(ROOT, "experiments", "results", "gemmini", "calibration_fit.json")
NETWORKS = ("resnet50", "vgg16", "alexnet")


def geomean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def summarise(rows: list[dict]) -> dict:
    out = {"violations_more_bytes": [r["layer"] + f" b{r['batch']}" for r in rows
                                     if r["parconv_bytes"] > r["vendor_bytes"]],
           "slower_layers": [r["layer"] + f" b{r['batch']}" for r in rows
                             if r["speedup"] < 1 - 1e-9],
           "slower_layers_no_search": [r["layer"] + f" b{r['batch']}" for r in rows
                                       if r["speedup_no_search"] < 1 - 1e-9]}
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
            "geomean_speedup_no_search": geomean(r["speedup_no_search"] for r in group),
            "search_share_of_vendor_cycles": sum(r["vendor_search_cycles"] for r in group)
            / sum(r["vendor_cycles"] for r in group),
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
        "parconv_geomean_no_search": geomean(r["speedup_no_search"] for r in anchored),
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
    axes[1].set_title("Modelled speed-up of parconv's tiling (calibrated cycle model, the "
                      "library's tile search charged to it, dev semantics)")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
             f"experiments/calibrate_cycles.py; {err}). The library's cycles include the tile "
             "search its tiled_conv_auto runs on the core before the first call (parconv's "
             "tiling is given to tiled_conv and searches nothing); 'no search' leaves it out. "
             "Roofline = max(execute model, bytes / 8 B/cycle) per call, the previous model "
             "(no search).", ""]
    violations = summary["violations_more_bytes"]
    lines.append(f"* ours never moves more DRAM bytes than the vendor tiling: "
                 f"{'YES' if not violations else 'NO: ' + ', '.join(violations)} "
                 f"({summary['all']['layers']} layer rows checked)")
    lines.append(f"* layers where ours is slower: {summary['slower_layers'] or 'none'} "
                 f"(without the library's search: "
                 f"{summary['slower_layers_no_search'] or 'none'})")
    for label in ("resnet50 b1", "resnet50 b4", "vgg16 b1", "vgg16 b4", "alexnet b1",
                  "alexnet b4", "all"):
        s = summary[label]
        lo, hi = s["memory_bound_range"]
        mb = (f"{s['memory_bound_layers']} memory-bound layers, geomean speed-up "
              f"{s['memory_bound_geomean_speedup']:.2f}x (range {lo:.2f}-{hi:.2f})"
              if s["memory_bound_layers"] else "no memory-bound layer")
        lines.append(
            f"* {label}: geomean speed-up {s['geomean_speedup']:.2f}x ({err}; no search "
            f"{s['geomean_speedup_no_search']:.2f}x, the search "
            f"{100 * s['search_share_of_vendor_cycles']:.1f}% of the library's cycles; roofline "
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
                 f"({err}; no search {d['parconv_geomean_no_search']:.2f}x) vs DOSA's "
                 f"measured {d['dosa_geomean_min']:.2f}x-"
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
              "| layer | shape | DRAM MB library | DRAM MB parconv | Mcycles library (search) | "
              "Mcycles parconv | speed-up | no search | DOSA measured |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in summary["resnet50_b1_rows"]:
        dosa = (f"{r['dosa_min']:.2f}-{r['dosa_max']:.2f}" if r["dosa_min"] is not None
                else "-")
        lines.append(f"| {r['layer']} | {r['shape']} | {r['vendor_bytes'] / 1e6:.2f} | "
                     f"{r['parconv_bytes'] / 1e6:.2f} | {r['vendor_cycles'] / 1e6:.3f} "
                     f"({r['vendor_search_cycles'] / 1e6:.3f}) | "
                     f"{r['parconv_cycles'] / 1e6:.3f} | {r['speedup']:.2f} | "
                     f"{r['speedup_no_search']:.2f} | {dosa} |")
    if executed:
        lines += ["", *("* " + line for line in executed)]
    lines.append(f"\n(runtime {summary['runtime_s']:.0f} s)")
    return "\n".join(lines)
