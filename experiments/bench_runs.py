# python experiments/bench_runs.py [--full] [--ranks 1,2,4,8,64] [--repeat 3] [--no-startup]
"""Real distributed runs: time per phase, peak memory per rank against its working set, the
overlap gain, and the start-up of a 64-rank default run against bare ``import mpi4py, numpy``.

Run:  python experiments/bench_runs.py                 quick: small batches, P = 1, 2, 4, 8, 64
      python experiments/bench_runs.py --full          batch 32 for both layers
      options: --ranks 1,2,4 --layers resnet50.layer3.0.conv2 --repeat 3 --node numpy
               --no-startup (skip the 64-rank start-up comparison) --tag NAME (output name)
               --spatial (force 1x1x1xHxW grids, whose halos the overlap hides)

For each layer and P one mpirun job (oversubscribed on this machine) runs the layer once to warm
up, then ``--repeat`` times with overlap, ``--repeat`` times without, and both again, on the same
plan in the same job, so the overlap gain is a ratio measured side by side (medians over the
2 x ``--repeat`` runs of each mode).  Per phase it prints the median over repeats of
the slowest rank; per rank the peak resident memory (getrusage), the baseline right after
imports and planning, and the working-set bytes (the rank's buffers: input with halo, filter,
partial output, receive buffers, owned pieces), with the worst ``(peak - baseline) / working
set`` (target <= 2).  The start-up part times, in one go, ``mpirun -n 64 python -c 'import
mpi4py.MPI, numpy'`` and ``mpirun -n 64 python -m parconv.run`` with each node kernel (target:
at most 2x the bare imports), the default run once with the tiling cache on disk filled by an
untimed warm-up and once with it off (every distinct block shape searched in the run).
Results: experiments/results/scale/runs.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OUT = os.path.join(HERE, "results", "scale")
LAYERS = ("resnet50.layer3.0.conv2", "vgg16.conv4_2")
#: batch per layer: the issue's batch 32 with --full; quick runs use smaller batches (this
#: machine has 2 cores shared by several jobs; vgg16.conv4_2 at batch 32 is 59 GMAC)
FULL_BATCH = {"resnet50.layer3.0.conv2": 32, "vgg16.conv4_2": 32}
QUICK_BATCH = {"resnet50.layer3.0.conv2": 8, "vgg16.conv4_2": 2}
PHASES = ("filter", "bias", "input", "halo_h", "halo_w", "kernel", "reduce", "layer")
MiB = 1 << 20


def _env() -> dict:
    """The ranks' environment: the repository on the path, one BLAS thread, and byte-code
    caching allowed (an installed package has its .pyc files; without them every rank compiles
    every module at start-up)."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    return env


# ---- the MPI worker (one job: overlap on, then off) -------------------------------------------

def worker(argv) -> None:
    import numpy as np
    from mpi4py import MPI

    from parconv.conv import distributed_conv2d, shared_plan
    from parconv.layers import get_layer

    parser = argparse.ArgumentParser()
    parser.add_argument("--layer"), parser.add_argument("--batch", type=int)
    parser.add_argument("--repeat", type=int), parser.add_argument("--node")
    parser.add_argument("--out"), parser.add_argument("--grid", default="auto")
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    spec = get_layer(args.layer).replace(batch=args.batch)
    plan = shared_plan(comm, spec, grid=args.grid)
    # warm-up: its times are not used; its memory figures are (the first run's peak, measured
    # against the baseline before any run)
    warm = distributed_conv2d(comm, spec, seed=0, plan=plan, node=args.node).report
    reports = {}
    # on, off, on, off: a burst of load from other jobs hits both modes alike
    for overlap in (True, False, True, False):
        report = distributed_conv2d(comm, spec, seed=0, plan=plan, node=args.node,
                                    repeat=args.repeat, overlap=overlap).report
        key = "overlap" if overlap else "no_overlap"
        if key in reports:
            first = reports[key]
            for phase, values in report["time_s_all"].items():
                first["time_s_all"][phase] += values
                first["time_s"][phase] = float(np.median(first["time_s_all"][phase]))
            first["repeat"] += report["repeat"]
        else:
            reports[key] = report
    reports["overlap"]["memory"] = warm["memory"]
    if comm.rank == 0:
        with open(args.out, "w") as handle:
            json.dump(reports, handle)


# ---- the driver --------------------------------------------------------------------------------

def _row(layer: str, P: int, batch: int, reports: dict) -> dict:
    on, off = reports["overlap"], reports["no_overlap"]
    memory = on["memory"]
    peak, base, work = (memory[k] for k in ("peak_rss_bytes", "baseline_rss_bytes",
                                            "working_set_bytes"))
    ratios = [(p - b) / w if w else None for p, b, w in zip(peak, base, work)]
    worst = max(range(len(ratios)), key=lambda r: -1 if ratios[r] is None else ratios[r])
    return {"layer": layer, "P": P, "batch": batch, "grid": "x".join(str(on["grid"][a])
                                                                       for a in "NKCHW"),
            "time_s": {p: on["time_s"][p] for p in PHASES},
            "overlap_s": on["overlap_s"],
            "time_s_no_overlap": {p: off["time_s"][p] for p in PHASES},
            "overlap_gain": off["time_s"]["layer"] / on["time_s"]["layer"]
            if on["time_s"]["layer"] else None,
            "memory": memory, "worst_rank": worst, "worst_ratio": ratios[worst],
            "bytes_equal": on["bytes"]["per_phase"] == off["bytes"]["per_phase"]}


def spatial_grid(P: int) -> str:
    """The 1 x 1 x 1 x P_H x P_W grid with P_H P_W = P closest to square (halos on both axes)."""
    h = max(d for d in range(1, int(P ** 0.5) + 1) if P % d == 0)
    return f"1x1x1x{P // h}x{h}"


def run_section(args) -> list[dict]:
    """The real runs: one mpirun job per (layer, P); returns one row per job (printed too)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for layer in args.layers:
            batch = args.batch[layer]
            for P in args.ranks:
                out = os.path.join(tmp, f"{layer}-{P}.json")
                cmd = [args.mpirun, "-n", str(P), sys.executable, os.path.abspath(__file__),
                       "--worker", "--layer", layer, "--batch", str(batch), "--repeat",
                       str(args.repeat), "--node", args.node, "--out", out,
                       "--grid", spatial_grid(P) if getattr(args, "spatial", False) else "auto"]
                print("$", " ".join(cmd), flush=True)
                started = time.perf_counter()
                subprocess.run(cmd, cwd=REPO, env=_env(), check=True, timeout=3600)
                with open(out) as handle:
                    row = _row(layer, P, batch, json.load(handle))
                row["job_wall_s"] = time.perf_counter() - started
                print(_row_text(row), flush=True)
                rows.append(row)
    return rows


def _row_text(row: dict) -> str:
    t, off = row["time_s"], row["time_s_no_overlap"]
    phases = " ".join(f"{p} {1e3 * t[p]:.1f}" for p in PHASES)
    mem = row["memory"]
    r = row["worst_rank"]
    return (f"  {row['layer']} N={row['batch']} P={row['P']} grid {row['grid']}: ms {phases} | "
            f"no overlap: layer {1e3 * off['layer']:.1f} -> gain {row['overlap_gain']:.2f}x | "
            f"memory worst rank {r}: peak {mem['peak_rss_bytes'][r] / MiB:.1f} MiB, baseline "
            f"{mem['baseline_rss_bytes'][r] / MiB:.1f}, working set "
            f"{mem['working_set_bytes'][r] / MiB:.2f} MiB, (peak - baseline) / working set "
            f"{row['worst_ratio']:.2f}")


#: the default run with the tiling cache off: every distinct block shape searched in the run
FRESH = "python -m parconv.run (default, gemmini, tiling cache off)"


def startup_section(mpirun: str, ranks: int = 64) -> dict:
    """Wall time of bare imports and of default runs (both nodes), measured one after the other."""
    commands = {
        "import mpi4py.MPI, numpy": [sys.executable, "-c", "import mpi4py.MPI, numpy"],
        "python -m parconv.run --node numpy": [sys.executable, "-m", "parconv.run", "--node",
                                               "numpy", "--quiet"],
        "python -m parconv.run (default, gemmini)": [sys.executable, "-m", "parconv.run",
                                                     "--quiet"],
        FRESH: [sys.executable, "-m", "parconv.run", "--quiet"],
    }
    # the Gemmini tilings: found in the disk cache the untimed warm-up filled, or searched afresh
    # (each distinct block shape once, parconv.mpi.node_setup) with the cache off
    extra = {FRESH: {"PARCONV_CACHE_DIR": "off"}}
    out = {}
    for cmd in commands.values():   # fill the byte-code caches once, untimed
        subprocess.run([mpirun, "-n", "1", *cmd], cwd=REPO, env=_env(), check=True, timeout=600)
    for name, cmd in commands.items():
        full = [mpirun, "-n", str(ranks), *cmd]
        print("$", " ".join(f"{k}={v}" for k, v in extra.get(name, {}).items()),
              " ".join(full), flush=True)
        started = time.perf_counter()
        subprocess.run(full, cwd=REPO, env={**_env(), **extra.get(name, {})}, check=True,
                       timeout=3600)
        out[name] = time.perf_counter() - started
        print(f"  {name}: {out[name]:.1f} s", flush=True)
    base = out["import mpi4py.MPI, numpy"]
    out["ratios"] = {k: v / base for k, v in out.items() if k != "import mpi4py.MPI, numpy"}
    for name, ratio in out["ratios"].items():
        print(f"  {name}: {ratio:.2f}x the bare imports (target <= 2)")
    return out


def _markdown(rows: list[dict], startup: dict | None, command: str) -> str:
    lines = [f"# Real runs (`{command}`)", "",
             "Median over repeats of the slowest rank, ms; memory of the rank with the largest "
             "(peak - baseline) / working set.", "",
             "| layer | N | P | grid | " + " | ".join(PHASES) + " | layer, no overlap | gain "
             "| peak MiB | baseline MiB | working set MiB | ratio |",
             "|" + "---|" * (len(PHASES) + 10)]
    for row in rows:
        mem, r = row["memory"], row["worst_rank"]
        lines.append(
            f"| {row['layer']} | {row['batch']} | {row['P']} | {row['grid']} | "
            + " | ".join(f"{1e3 * row['time_s'][p]:.1f}" for p in PHASES)
            + f" | {1e3 * row['time_s_no_overlap']['layer']:.1f} | {row['overlap_gain']:.2f} | "
            f"{mem['peak_rss_bytes'][r] / MiB:.1f} | {mem['baseline_rss_bytes'][r] / MiB:.1f} | "
            f"{mem['working_set_bytes'][r] / MiB:.2f} | {row['worst_ratio']:.2f} |")
    if startup:
        lines += ["", "Start-up at 64 ranks (wall time of the whole mpirun job):", ""]
        for name, value in startup.items():
            if name != "ratios":
                ratio = startup["ratios"].get(name)
                lines.append(f"- `{name}`: {value:.1f} s"
                             + (f" = {ratio:.2f}x the bare imports" if ratio else ""))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        worker(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="batch 32 for both layers")
    parser.add_argument("--ranks", default="1,2,4,8,64")
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--node", default="numpy", choices=("numpy", "gemmini"))
    parser.add_argument("--no-startup", action="store_true")
    parser.add_argument("--tag", default="", help="results go to runs-TAG.{json,md}")
    parser.add_argument("--spatial", action="store_true",
                        help="force 1x1x1xHxW grids (halos on both axes) instead of the auto grid")
    parser.add_argument("--mpirun", default=os.path.join(os.path.dirname(sys.executable),
                                                         "mpirun"))
    args = parser.parse_args(argv)
    args.layers = args.layers.split(",")
    args.ranks = [int(p) for p in args.ranks.split(",") if p]   # --ranks "" : start-up only
    args.batch = {layer: (FULL_BATCH if args.full else QUICK_BATCH).get(layer, 8)
                  for layer in args.layers}
    rows = run_section(args)
    startup = None if args.no_startup else startup_section(args.mpirun)
    os.makedirs(OUT, exist_ok=True)
    command = "python experiments/bench_runs.py " + " ".join(argv)
    name = f"runs-{args.tag}" if args.tag else "runs"
    with open(os.path.join(OUT, f"{name}.json"), "w") as handle:
        json.dump({"command": command.strip(), "rows": rows, "startup": startup}, handle,
                  indent=1)
    with open(os.path.join(OUT, f"{name}.md"), "w") as handle:
        handle.write(_markdown(rows, startup, command.strip()))
    print(f"wrote {os.path.join(OUT, name + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
