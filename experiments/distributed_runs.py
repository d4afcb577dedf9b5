# python experiments/distributed_runs.py [--ranks 8,64] [--batch 8] [--node gemmini]
"""Distributed runs of catalogue layers: measured bytes against the bound, and time per phase.

Run:  python experiments/distributed_runs.py [--ranks 8,64] [--batch 8] [--node gemmini]
          [--layers resnet50.layer1.0.conv2,resnet50.layer3.0.conv2,vgg16.conv4_2]

Launches ``mpirun -n P python -m parconv.run --layer L --report ... --check`` for every layer and
P, reads the JSON reports and writes experiments/results/distributed/runs.{csv,md}: the grid, the
busiest rank's measured bound-comparable volume, the bound max(B_MI, B_MD), their ratio, whether
every rank's measured bytes equalled the prediction (the run fails otherwise), and the wall time
per phase (slowest rank).  On a 2-core machine the ranks are oversubscribed: times show where the
time goes, not how fast a cluster would be.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PHASES = ("scatter", "filter", "bias", "input", "halo_h", "halo_w", "kernel", "reduce",
          "gather", "check")


def run_one(mpirun: str, layer: str, P: int, batch: int, node: str, tmp: str) -> dict:
    report_path = os.path.join(tmp, f"{layer}-{P}.json")
    cmd = [mpirun, "-n", str(P), sys.executable, "-m", "parconv.run", "--layer", layer,
           "--batch", str(batch), "--node", node, "--check", "--quiet", "--report", report_path]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True, timeout=1800)
    with open(report_path) as fh:
        report = json.load(fh)
    volume = report["bytes"]["bound_volume"]
    busiest = max(range(len(volume)), key=volume.__getitem__)
    row = {"layer": layer, "P": P, "batch": batch, "node": node,
           "grid": "x".join(str(report["grid"][a]) for a in "NKCHW"),
           "busiest_rank": busiest, "measured_volume": volume[busiest],
           "predicted_volume": report["bytes"]["predicted_bound_volume"][busiest],
           "bound": round(report["bound"]["value"]), "binding": report["bound"]["binding"],
           "ratio": round(report["ratio_to_bound"], 4),
           "check_ok": report.get("check", {}).get("ok")}
    row.update({f"t_{p}_s": round(report["time_s"].get(p, 0.0), 4) for p in PHASES})
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="8,64")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--node", default="gemmini", choices=("gemmini", "numpy"))
    parser.add_argument("--layers", default="resnet50.layer1.0.conv2,resnet50.layer3.0.conv2,"
                                            "vgg16.conv4_2")
    parser.add_argument("--mpirun", default=shutil.which("mpirun", path=os.path.dirname(
        sys.executable)) or shutil.which("mpirun") or "mpirun")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "distributed"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for layer in args.layers.split(","):
            for P in (int(p) for p in args.ranks.split(",")):
                rows.append(run_one(args.mpirun, layer, P, args.batch, args.node, tmp))
    os.makedirs(args.out, exist_ok=True)
    fields = list(rows[0])
    with open(os.path.join(args.out, "runs.csv.tmp"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(os.path.join(args.out, "runs.csv.tmp"), os.path.join(args.out, "runs.csv"))
    table = "| " + " | ".join(fields) + " |\n|" + "---|" * len(fields) + "\n" + "".join(
        "| " + " | ".join(str(r[f]) for f in fields) + " |\n" for r in rows)
    with open(os.path.join(args.out, "runs.md.tmp"), "w") as fh:
        fh.write(table)
    os.replace(os.path.join(args.out, "runs.md.tmp"), os.path.join(args.out, "runs.md"))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
