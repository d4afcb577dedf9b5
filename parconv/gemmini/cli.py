"""``python -m parconv.gemmini``: one layer on the Gemmini model, vendor tiling against parconv's.

Examples::

    python -m parconv.gemmini --layer resnet50.layer2.0.conv2 --batch 4
    python -m parconv.gemmini --batch 1 --in-channels 64 --out-channels 64 --size 56 \\
        --kernel-size 3 --padding 1 --semantics dosa --json
    python -m parconv.gemmini --layer resnet50.layer1.0.conv1 --execute

Prints the vendor tile (``tiled_conv_auto``) as the library 7-tuple (batches, porows, pocols,
pochs, krows, kcols, kchs), parconv's tiling (tN, tK, tC, tH, tW, tR, tS) and loop order, and for
both the DRAM bytes per stream, the modelled cycles and the utilization, plus the sequential lower
bound with M = scratchpad + accumulator.  Exit status 0 ok, 2 bad input, 1 failure (e.g. an
``--execute`` mismatch).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from ..bounds import sequential_bound_two_memory
from ..cli import add_layer_arguments, list_layers, spec_from_args
from ..errors import ParconvError, ParconvRuntimeError
from ..kernels import conv2d_local
from .config import NAMED_CONFIGS, SEMANTICS, GemminiConfig
from .tiled.choose import choose_tiling, cost_of_vendor, model_spec, run_parconv, vendor_tuple
from .vendor.run import run_vendor

PROG = "python -m parconv.gemmini"
STREAMS = ("input", "weight", "bias", "output", "psum", "total")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Model one convolution layer on the Gemmini accelerator with the vendor "
                    "tiling (the library's tiled_conv_auto) and with parconv's tiling: DRAM "
                    "bytes per stream, modelled cycles (max(execute model, bytes / bw-eff) per "
                    "call) and utilization (MACs / (dim^2 cycles)), against the sequential "
                    "communication lower bound (M = scratchpad + accumulator).",
        epilog="Streams: input, weight, bias (int32, stride-0 mvins on the first visit of an "
               "output tile), output (final outputs, int8 mvout) and psum (int32 partial-sum "
               "spills and read-backs, only for parconv's non-output-stationary orders).  The "
               "bias stream follows --semantics (dev: on, dosa: off) unless --bias forces it on. "
               "Exit status 0 ok, 2 bad input, 1 failure.")
    add_layer_arguments(parser)
    model = parser.add_argument_group("Gemmini model")
    model.add_argument("--config", default="default", choices=tuple(NAMED_CONFIGS),
                       help="generator configuration (gemmini.md 1.1)")
    model.add_argument("--bw-eff", type=float, default=None, metavar="B/CYCLE",
                       help="effective DRAM bandwidth of the cycle model in bytes/cycle, at "
                            "most the 16 B/cycle bus peak (default 8)")
    model.add_argument("--semantics", default="dev", choices=SEMANTICS,
                       help="library version: dev (operand reuse, downsample, bias, first-layer "
                            "optimization) or dosa (none; the 6.1 measurements)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print JSON (keys layer, config, "
                     "vendor, parconv, bound_bytes, ...) instead of the table")
    out.add_argument("--execute", action="store_true",
                     help="also run both tilings tile by tile on random data and check them "
                          "against the reference convolution (and the analytical byte counts)")
    out.add_argument("--seed", type=int, default=0, help="seed of the --execute data")
    return parser


def _config(args) -> GemminiConfig:
    overrides = {"semantics": args.semantics}
    if args.bw_eff is not None:
        overrides["bw_eff"] = args.bw_eff
    if args.bias:
        overrides["bias"] = True
    return GemminiConfig.named(args.config, **overrides)


def _figures(cost, tile, order: str, schedule: str) -> dict:
    dram = {s: int(cost.dram_bytes.get(s, 0)) for s in STREAMS[:-1]}
    dram["total"] = sum(dram.values())
    return {"tile": [int(v) for v in tile], "order": order, "schedule": schedule,
            "dram_bytes": dram, "cycles": float(cost.cycles),
            "exec_cycles": int(cost.exec_cycles), "calls": int(cost.calls),
            "utilization": float(cost.utilization)}


def evaluate(spec, config: GemminiConfig) -> dict:
    """The comparison of one layer as a JSON-ready dict (what ``--json`` prints).  Local."""
    plan = choose_tiling(spec, config)
    cfg = plan.config
    if plan.vendor is None:
        raise ParconvError(f"the vendor heuristic finds no tile for {spec.describe()} on "
                           f"config {cfg.name!r}")
    bound = sequential_bound_two_memory(model_spec(spec, cfg), cfg.scratch_bytes,
                                        cfg.acc_total_bytes)
    vendor = _figures(cost_of_vendor(plan.vendor), plan.vendor.tile.as_tuple(), "NHWKRSC",
                      "vendor")
    vendor.update(downsample=plan.vendor.tile.downsample, a_reuse=plan.vendor.a_reuse,
                  b_reuse=plan.vendor.b_reuse)
    ours = _figures(plan.cost, plan.tiling.as_tuple(), plan.order, plan.schedule)
    ours.update(tile_library_order=list(vendor_tuple(plan.tiling)), source=plan.source,
                strided_dma=plan.subsampled)
    out = {"layer": model_spec(spec, cfg).to_dict(), "config": cfg.to_dict(), "vendor": vendor, "parconv": ours,
           "bound_bytes": float(bound.value), "bound_binding": bound.binding, "M_bytes": bound.M,
           "macs": int(spec.G)}
    out["ratio_to_bound"] = {k: out[k]["dram_bytes"]["total"] / bound.value
                             for k in ("vendor", "parconv")}
    out["speedup"] = vendor["cycles"] / ours["cycles"] if ours["cycles"] else None
    return out, plan


def execute(spec, plan, seed: int) -> dict:
    """Run both tilings on random data; compare with the reference and the analytical counts."""
    rng = np.random.default_rng(seed)
    if np.issubdtype(np.dtype(spec.dtype_in), np.integer):
        x = rng.integers(-128, 128, spec.input_shape).astype(spec.dtype_in)
        w = rng.integers(-128, 128, spec.weight_shape).astype(spec.dtype_weight)
        bias = rng.integers(-2 ** 20, 2 ** 20, spec.out_channels).astype(spec.dtype_acc)
    else:
        x = rng.standard_normal(spec.input_shape).astype(spec.dtype_in)
        w = rng.standard_normal(spec.weight_shape).astype(spec.dtype_weight)
        bias = rng.standard_normal(spec.out_channels).astype(spec.dtype_acc)
    bias = bias if plan.config.has_bias else None
    reference = conv2d_local(spec, x, w)
    if bias is not None:
        reference = (reference + bias.reshape(1, -1, 1, 1)).astype(spec.dtype_acc)
    exact = np.issubdtype(np.dtype(spec.dtype_in), np.integer)
    report = {}
    runs = {"vendor": lambda: run_vendor(spec, x, w, bias, config=plan.config)[:2],
            "parconv": lambda: run_parconv(spec, x, w, bias, plan=plan)[:2]}
    models = {"vendor": plan.vendor.dram_bytes, "parconv": plan.cost.dram_bytes}
    for name, run in runs.items():
        y, stats = run()
        error = float(np.max(np.abs(y.astype(np.float64) - reference))) if y.size else 0.0
        tolerance = 0.0 if exact else 1e-4 * np.sqrt(spec.in_channels * np.prod(spec.kernel_size))
        counted = stats.to_dict()["dram_bytes"]
        matches = all(counted.get(s, 0) == models[name].get(s, 0)
                      for s in ("input", "weight", "bias", "output", "psum"))
        report[name] = {"ok": error <= tolerance, "max_abs_err": error,
                        "bytes_match_model": matches, "dram_bytes": counted,
                        "cycles": stats.cycles}
    return report


def _kb(value) -> str:
    return f"{value / 1e3:,.1f} KB"


def render(result: dict) -> str:
    """The human-readable table of `evaluate`'s dict."""
    v, p = result["vendor"], result["parconv"]
    layer, cfg = result["layer"], result["config"]
    lines = [f"layer  {layer['name']}: N={layer['batch']} C={layer['in_channels']} "
             f"K={layer['out_channels']} in {layer['in_size'][0]}x{layer['in_size'][1]} -> out "
             f"{layer['out_size'][0]}x{layer['out_size'][1]}, kernel {layer['kernel_size'][0]}x"
             f"{layer['kernel_size'][1]}, stride {layer['stride'][0]}, padding "
             f"{layer['padding'][0]}, dilation {layer['dilation'][0]}; {result['macs']:,} MACs",
             f"gemmini config {cfg['name']} ({cfg['semantics']} semantics), {cfg['dim']}x"
             f"{cfg['dim']} array, scratchpad {cfg['scratch_bytes'] // 1024} KiB, accumulator "
             f"{cfg['acc_total_bytes'] // 1024} KiB (per tile {cfg['spad_rows_limit']} / "
             f"{cfg['acc_rows_limit']} rows), bw_eff {cfg['bw_eff']:g} B/cycle",
             f"vendor tile  (batches,porows,pocols,pochs,krows,kcols,kchs) = "
             f"{tuple(v['tile'])}{' downsample' if v['downsample'] else ''}"
             f"{' a_reuse' if v['a_reuse'] else ''}{' b_reuse' if v['b_reuse'] else ''}, "
             f"{v['calls']} calls",
             f"parconv tile (tN,tK,tC,tH,tW,tR,tS) = {tuple(p['tile'])}, loop order "
             f"{p['order']} ({p['source']}{', strided DMA' if p['strided_dma'] else ''}), "
             f"{p['calls']} tiles",
             f"{'':<22}{'vendor':>16}{'parconv':>16}"]
    for stream in STREAMS:
        lines.append(f"  DRAM {stream:<16}{_kb(v['dram_bytes'][stream]):>16}"
                     f"{_kb(p['dram_bytes'][stream]):>16}")
    lines.append(f"  {'cycles':<21}{v['cycles']:>16,.0f}{p['cycles']:>16,.0f}")
    lines.append(f"  {'utilization':<21}{100 * v['utilization']:>15.1f}%"
                 f"{100 * p['utilization']:>15.1f}%")
    lines.append(f"  {'ratio to bound':<21}{result['ratio_to_bound']['vendor']:>16.2f}"
                 f"{result['ratio_to_bound']['parconv']:>16.2f}")
    lines.append(f"sequential bound {_kb(result['bound_bytes'])} ({result['bound_binding']}, "
                 f"M = {result['M_bytes'] / 1024:.0f} KiB); speed-up of parconv "
                 f"{result['speedup']:.2f}x")
    for name, check in (result.get("execute") or {}).items():
        lines.append(f"execute {name}: {'OK' if check['ok'] else 'MISMATCH'} (max abs error "
                     f"{check['max_abs_err']:g}); counted bytes "
                     f"{'equal' if check['bytes_match_model'] else 'DIFFER FROM'} the model")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.list_layers:
            print(list_layers())
            return 0
        spec = spec_from_args(args, default_batch=1)
        result, plan = evaluate(spec, _config(args))
        if args.execute:
            result["execute"] = execute(spec, plan, args.seed)
        print(json.dumps(result, indent=1) if args.json else render(result))
        failed = [k for k, c in (result.get("execute") or {}).items()
                  if not (c["ok"] and c["bytes_match_model"])]
        if failed:
            raise ParconvRuntimeError(f"--execute check failed for {', '.join(failed)}")
        return 0
    except ParconvError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except ParconvRuntimeError as exc:
        print(f"{PROG}: failure: {exc}", file=sys.stderr)
        return 1
