# python experiments/bench_gemmini_node.py [--baseline COMMIT] [--rounds 5] [--out experiments/results/kernels/gemmini_node_before_after.json]
"""The Gemmini node before and after a change, side by side in one process.

The baseline commit's ``parconv`` is extracted (``git archive``) into a temporary folder as the
package ``parconv_base`` (the package imports itself relatively, so both versions load side by
side).  For every layer of the kernel issue (P = 1, int8, 1 BLAS thread) each round runs, in
turn: the numpy kernel, the baseline node and the current node on a fresh block (no cached
tiling, shape-keyed caches cleared: `parconv.bench.forget_shapes`), and both executors with the
tiling known.  Prints best-of-rounds seconds and the ratios to the numpy kernel, checks that both
nodes return the numpy kernel's output bit for bit and that both choose the same tiling, and
writes JSON.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from parconv.bench import LAYERS, _operands, forget_shapes, interleaved_best, machine  # noqa: E402
from parconv.blas import limit_threads, prepare  # noqa: E402
from parconv.kernels import NumpyKernel  # noqa: E402
from parconv.layers import get_layer  # noqa: E402

#: modules of the node that keep shape-keyed caches (as `parconv.bench.forget_shapes`), in
#: this version or in an earlier one (a baseline's missing modules are skipped)
CACHED = ("tiling.model", "tiling.totals", "tiling.relax", "tiling.candidates", "tiling.search",
          "gemmini.cycles", "gemmini.tiled.choose", "gemmini.vendor.heuristics",
          "bounds.polyphase", "bounds.workfn", "bounds.border", "bounds.set_reuse")


def load_baseline(commit: str, folder: str):
    """The baseline's parconv as the package ``parconv_base`` (extracted under ``folder``)."""
    archive = subprocess.run(["git", "-C", ROOT, "archive", commit, "parconv"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    os.rename(os.path.join(folder, "parconv"), os.path.join(folder, "parconv_base"))
    sys.path.insert(0, folder)
    return importlib.import_module("parconv_base")


def forget_baseline() -> None:
    importlib.import_module("parconv_base.gemmini.tiling_cache").clear_memory()
    for name in CACHED:
        try:
            module = importlib.import_module(f"parconv_base.{name}")
        except ModuleNotFoundError:
            continue
        for attr, value in vars(module).items():
            if hasattr(value, "cache_clear") and attr != "load_constants":
                value.cache_clear()


def measure(name: str, batch: int, rounds: int) -> dict:
    from parconv.gemmini.kernel import GemminiKernel
    from parconv.gemmini.tiled.choose import choose_tiling, run_parconv
    base_kernel = importlib.import_module("parconv_base.gemmini.kernel")
    base_choose = importlib.import_module("parconv_base.gemmini.tiled.choose")
    base_layers = importlib.import_module("parconv_base.layers")
    spec = get_layer(name, batch=batch, dtype="int8")
    base_spec = base_layers.get_layer(name, batch=batch, dtype="int8")
    x, w = _operands(spec, seed=1)
    numpy_kernel = NumpyKernel(threads=1)
    new, old = GemminiKernel(disk_cache=False), base_kernel.GemminiKernel(disk_cache=False)
    new_plan = choose_tiling(spec, new.node_config(spec))
    old_plan = base_choose.choose_tiling(base_spec, old.node_config(base_spec))
    reference = numpy_kernel.run(spec, x, w)[0]
    searches = {"before": [], "after": []}

    def node(kernel, block, forget, label):
        def run():
            forget()
            y, stats = kernel.run(block, x, w)
            searches[label].append(stats["search_s"])
            assert np.array_equal(y, reference), f"{label} node differs from numpy on {name}"
        return run

    with limit_threads(1):
        best = interleaved_best({
            "numpy": lambda: numpy_kernel.run(spec, x, w),
            "node_before": node(old, base_spec, forget_baseline, "before"),
            "node_after": node(new, spec, forget_shapes, "after"),
            "execute_before": lambda: base_choose.run_parconv(base_spec, x, w, plan=old_plan),
            "execute_after": lambda: run_parconv(spec, x, w, plan=new_plan)}, rounds)
    out = {"layer": name, "batch": batch, "seconds": best,
           "search_before_s": min(searches["before"]), "search_after_s": min(searches["after"]),
           "same_tiling": (new_plan.tiling.as_tuple(), new_plan.order, new_plan.schedule)
           == (old_plan.tiling.as_tuple(), old_plan.order, old_plan.schedule)}
    for when in ("before", "after"):
        out[f"node_{when}_over_numpy"] = best[f"node_{when}"] / best["numpy"]
        out[f"execute_{when}_over_numpy"] = best[f"execute_{when}"] / best["numpy"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="c9299a6",
                        help="commit of the 'before' code (default c9299a6)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="experiments/results/kernels/"
                                         "gemmini_node_before_after.json")
    args = parser.parse_args(argv)
    prepare()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        load_baseline(args.baseline, folder)
        # warm the imports of both (scipy.optimize, constants): not per-block costs
        measure("alexnet.conv5", 1, 1)
        rows = [measure(name, batch, args.rounds) for name, batch in LAYERS]
    m = machine()
    print(f"machine: {m['cpu']}, {m['cores']} cores, load {m['load_average']}; best of "
          f"{args.rounds} rounds, 1 thread, int8, P = 1; before = {args.baseline}")
    head = (f"{'layer':<26}{'numpy s':>9}{'search s':>18}{'exec s':>16}{'node s':>16}"
            f"{'node/np':>14}{'exec/np':>14}")
    print(head + "\n" + f"{'':<35}{'before  after':>18}{'before  after':>16}"
          f"{'before  after':>16}{'before after':>14}{'before after':>14}\n" + "-" * len(head))
    for r in rows:
        s = r["seconds"]
        print(f"{r['layer']:<26}{s['numpy']:>9.3f}{r['search_before_s']:>10.3f}"
              f"{r['search_after_s']:>7.3f}{s['execute_before']:>9.3f}{s['execute_after']:>7.3f}"
              f"{s['node_before']:>9.3f}{s['node_after']:>7.3f}"
              f"{r['node_before_over_numpy']:>8.2f}{r['node_after_over_numpy']:>6.2f}"
              f"{r['execute_before_over_numpy']:>8.2f}{r['execute_after_over_numpy']:>6.2f}"
              + ("" if r["same_tiling"] else "  (tiling changed)"))
    result = {"command": " ".join(["python", *sys.argv]), "machine": m,
              "baseline": args.baseline, "rounds": args.rounds, "layers": rows,
              "seconds": time.perf_counter() - start}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
