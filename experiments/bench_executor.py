# python experiments/bench_executor.py [--repeat 3] [--out experiments/results/gemmini/bench_executor.json]
"""Speed of the Gemmini tile executor against the plain numpy kernel, side by side.

For three ResNet-50 layers at batch 4, runs the same random int8 data through
`parconv.kernels.NumpyKernel` (one BLAS product per filter tap over the whole layer) and through
the tile executor with parconv's tiling and with the vendor tiling (capacity checks and byte
counters per tile, then the tiles' exact products, grouped), checks that all three agree exactly,
and prints the best-of-N wall times and their ratios (target: executor <= 3x the plain kernel).
Planning (the tiling search) is timed separately and not included in the executor's time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from parconv.gemmini.config import GemminiConfig  # noqa: E402
from parconv.gemmini.tiled.choose import choose_tiling, run_parconv  # noqa: E402
from parconv.gemmini.vendor.run import run_vendor  # noqa: E402
from parconv.kernels import NumpyKernel  # noqa: E402
from parconv.layers import get_layer  # noqa: E402

LAYERS = ("resnet50.layer1.0.conv2", "resnet50.layer2.0.conv1", "resnet50.layer3.0.conv2")


def best_time(function, repeat: int):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "gemmini",
                                                      "bench_executor.json"))
    args = parser.parse_args(argv)
    config = GemminiConfig(bias=False)   # the node kernel's setting: partial sums, no bias
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'layer':<28}{'MMAC':>8}{'numpy s':>10}{'ours s':>10}{'ratio':>7}"
          f"{'vendor s':>10}{'ratio':>7}{'plan s':>8}  tiles ours/vendor")
    for name in LAYERS:
        spec = get_layer(name, args.batch)
        x = rng.integers(-128, 128, spec.input_shape).astype(np.int8)
        w = rng.integers(-128, 128, spec.weight_shape).astype(np.int8)
        t_numpy, (y_ref, _) = best_time(lambda: NumpyKernel().run(spec, x, w), args.repeat)
        t_plan, plan = best_time(lambda: choose_tiling(spec, config), 1)
        t_ours, (y_ours, s_ours, _) = best_time(lambda: run_parconv(spec, x, w, plan=plan),
                                                args.repeat)
        t_vendor, (y_vendor, s_vendor, _) = best_time(
            lambda: run_vendor(spec, x, w, config=config), args.repeat)
        if not (np.array_equal(y_ours, y_ref) and np.array_equal(y_vendor, y_ref)):
            raise SystemExit(f"{name}: executor result differs from the numpy kernel")
        row = {"layer": name, "batch": args.batch, "mmac": spec.G / 1e6, "numpy_s": t_numpy,
               "executor_parconv_s": t_ours, "executor_vendor_s": t_vendor, "plan_s": t_plan,
               "ratio_parconv": t_ours / t_numpy, "ratio_vendor": t_vendor / t_numpy,
               "tiles_parconv": s_ours.calls, "tiles_vendor": s_vendor.calls}
        rows.append(row)
        print(f"{name:<28}{row['mmac']:>8.0f}{t_numpy:>10.3f}{t_ours:>10.3f}"
              f"{row['ratio_parconv']:>7.2f}{t_vendor:>10.3f}{row['ratio_vendor']:>7.2f}"
              f"{t_plan:>8.2f}  {s_ours.calls}/{s_vendor.calls}")
    worst = max(max(r["ratio_parconv"], r["ratio_vendor"]) for r in rows)
    print(f"largest executor / numpy ratio: {worst:.2f} (target <= 3)")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"rows": rows, "worst_ratio": worst, "repeat": args.repeat}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
