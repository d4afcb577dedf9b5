# python experiments/gemmini_vs_vendor.py [--execute N] [--out experiments/results/gemmini]
"""parconv's tiling against the Gemmini library's tiled_conv_auto, on the calibrated Gemmini model.

Every ResNet-50 convolution (batch 1 and 4), every VGG-16 convolution (batch 1 and 4) and every
AlexNet convolution (batch 1 and 4) is modelled with both tilings (analytical models:
`parconv.gemmini.vendor.layer_cost.vendor_layer_cost` for the library's loop,
`parconv.gemmini.tiled.cost.tiling_cost` for parconv's; the executor counts the same bytes, see
tests/test_gemmini_exec.py, and ``--execute N`` re-checks N layers on data).  Default Gemmini
(256 KiB scratchpad, 64 KiB accumulator), ``dev`` semantics.  Speed is the calibrated cycle model
(`parconv.gemmini.cycles`, fitted by experiments/calibrate_cycles.py; its error on held-out
FireSim layers is printed next to every speed-up); the library's cycles include the tile search
its ``tiled_conv_auto`` runs on the core before the first call (``vendor_search_cycles``;
parconv's tiling is given to ``tiled_conv`` and searches nothing), and the speed-up without it
is kept beside (``speedup_no_search``), as is the roofline max(exec, bytes / 8 B/cycle).  The outside anchor is DOSA's FireSim-measured speed-up over the library per
ResNet-50 layer at batch 1 (experiments/data/dosa_resnet50_speedups.json).

Writes into the output folder: ``layers.csv`` and ``layers.md`` (per layer: DRAM bytes and
modelled cycles of both, speed-up, utilization, ratio to the sequential bound), ``summary.md``
and ``summary.json`` (the figures printed at the end), ``calibration.csv`` (the cycle model
against the FireSim measurements of gemmini.md 6.1: vendor tiling, batch 1, dosa semantics) and
``gemmini_vs_vendor.png`` (bar plots).  The tables, plots and report are in
experiments/_vendor_report.py.
"""

from __future__ import annotations

import argparse
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
from parconv.gemmini.vendor.layer_cost import vendor_layer_cost  # noqa: E402
from parconv.gemmini.vendor.heuristics import conv_auto  # noqa: E402
from parconv.layers import get_layer, layer_names  # noqa: E402
from parconv.spec import ConvSpec  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _vendor_report import NETWORKS, model_error, plot, report, summarise, write_table  # noqa: E402

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
MEMORY_BOUND = 1.05     # a layer is memory-bound when its modelled cycles exceed exec by 5 %


def compare_layer(spec: ConvSpec, config: GemminiConfig) -> dict:
    """Both tilings of one layer on the model, as one table row."""
    start = time.perf_counter()
    plan = choose_tiling(spec, config)
    vendor, ours = plan.vendor, plan.cost
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
           "vendor_search_cycles": float(vendor.search_cycles),
           "parconv_cycles": float(ours.calibrated_cycles),
           "speedup": vendor.calibrated_cycles / ours.calibrated_cycles,
           "speedup_no_search": (vendor.calibrated_cycles - vendor.search_cycles)
           / ours.calibrated_cycles,
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
               "parconv_psum_bytes", "bound_bytes", "vendor_cycles", "vendor_search_cycles",
               "parconv_cycles", "speedup", "speedup_no_search", "dosa_min", "dosa_max", "vendor_roofline", "parconv_roofline",
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
                           "vendor_search_cycles", "parconv_cycles", "speedup",
                           "speedup_no_search", "dosa_min", "dosa_max")}
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


if __name__ == "__main__":
    raise SystemExit(main())
