# python experiments/same_tilings.py [--baseline COMMIT] [--quick] [--out experiments/results/kernels/same_tilings.json]
"""The Gemmini tiling of many blocks before and after a change, compared field by field.

The baseline commit's ``parconv`` is loaded side by side as ``parconv_base`` (as in
`bench_gemmini_node.py`).  For every catalogue layer at batch 1 and 8 (int8), rank 0's block of
each at P = 4 and 16, and every fifth layer in float32 at batch 2, both versions run
`choose_tiling` with the node's configuration and must agree on the tile, loop order, schedule,
winning candidate, DRAM bytes, calibrated cycles, number of candidates, the fewest-bytes
candidate and the optimiser's tiling, order, traffic and bound.  Prints the differences (none
expected from a change that only makes the search faster) and the search seconds of both;
writes JSON; exits 1 when a block differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_gemmini_node import load_baseline  # noqa: E402
from parconv.gemmini.kernel import GemminiKernel  # noqa: E402
from parconv.gemmini.tiled.choose import choose_tiling  # noqa: E402
from parconv.layers import get_layer, layer_names  # noqa: E402
from parconv.plan import make_plan  # noqa: E402


def blocks(quick: bool) -> list:
    """The blocks compared (module docstring; ``quick``: batch 4 only, no P > 1)."""
    out = []
    for name in layer_names():
        for batch in ((4,) if quick else (1, 8)):
            spec = get_layer(name, batch=batch, dtype="int8")
            out.append(spec)
            for P in (() if quick else (4, 16)):
                out.append(make_plan(spec, P).schedule(0).local_spec)
    out += [get_layer(name, batch=2, dtype="float32") for name in layer_names()[::5]]
    return [spec for spec in out if spec.G > 0]


def summary(choice) -> dict:
    """The fields of a `TilingChoice` that must not change (JSON-ready)."""
    return {"tile": list(choice.tiling.as_tuple()), "order": choice.order,
            "schedule": choice.schedule, "source": choice.source,
            "dram_bytes": int(choice.cost.dram_bytes["total"]),
            "calibrated_cycles": float(choice.cost.calibrated_cycles),
            "candidates": int(choice.candidates),
            "fewest_bytes": {k: (list(v) if isinstance(v, tuple) else v)
                             for k, v in (choice.fewest_bytes or {}).items()},
            "optimiser": {"tile": list(choice.result.tiling.as_tuple()),
                          "order": choice.result.order,
                          "traffic": int(choice.result.traffic.total),
                          "bound": float(choice.result.bound)}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="ca5537e",
                        help="commit of the 'before' code (default ca5537e)")
    parser.add_argument("--quick", action="store_true", help="batch 4, P = 1 only")
    parser.add_argument("--out", default="experiments/results/kernels/same_tilings.json")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        base = load_baseline(args.baseline, folder)
        base_choose = importlib.import_module("parconv_base.gemmini.tiled.choose")
        base_kernel = importlib.import_module("parconv_base.gemmini.kernel").GemminiKernel(
            disk_cache=False)
        kernel = GemminiKernel(disk_cache=False)
        rows, seconds = [], {"before": 0.0, "after": 0.0}
        for spec in blocks(args.quick):
            fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
            base_spec = base.spec.ConvSpec(**fields)
            begin = time.perf_counter()
            after = summary(choose_tiling(spec, kernel.node_config(spec)))
            middle = time.perf_counter()
            before = summary(base_choose.choose_tiling(base_spec,
                                                       base_kernel.node_config(base_spec)))
            seconds["after"] += middle - begin
            seconds["before"] += time.perf_counter() - middle
            rows.append({"block": spec.describe(), "same": after == before,
                         **({} if after == before else {"before": before, "after": after})})
            if after != before:
                print(f"DIFFERS {spec.describe()}\n  before {before}\n  after  {after}")
    differ = sum(not r["same"] for r in rows)
    print(f"{len(rows)} blocks, {differ} differ; search seconds before {seconds['before']:.2f}, "
          f"after {seconds['after']:.2f} (baseline {args.baseline})")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"command": " ".join(["python", *sys.argv]), "baseline": args.baseline,
                   "blocks": len(rows), "differ": differ, "search_seconds": seconds,
                   "rows": rows, "seconds": time.perf_counter() - start}, f, indent=1)
    print(f"wrote {args.out}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
