"""The float32 CPU kernel at 2 BLAS threads: variants of how the block uses the threads.

Per layer, side by side in one process (parconv.bench's timing: best of the rounds, the
contenders interleaved, each call after a pause), at T BLAS threads:

* ``shared`` / ``own``: the threaded split's Winograd pieces sharing one filter transform
  (`parconv.blasconv.SHARED_FILTERS`; stride 2 only, so the two are the same code at stride 1)
  or each making its own;
* ``one``: the block as one call on T-threaded BLAS (``workers=1``);
* ``torch``: torch's conv2d on T threads, if installed;

and the time of the filter transform alone on T BLAS threads, and as a control of how many
cores the process really got, the 1024^2 SGEMM's speed-up from 1 to T threads; also the best process CPU time
of each (both threads counted: less disturbed by other load than the wall time).  Results must agree (float
rounding of BLAS's summation order only).

Run:  OMP_NUM_THREADS=1 python experiments/bench_threads.py [--threads 2] [--rounds 7]
      [--layers resnet50.layer3.0.conv2:8 ...]
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parconv import blasconv, jit  # noqa: E402
from parconv.bench import _operands, _torch, interleaved_best, machine, save_json  # noqa: E402
from parconv.blas import limit_threads, prepare  # noqa: E402
from parconv.blasconv import conv2d_blas, winograd_form  # noqa: E402
from parconv.layers import get_layer  # noqa: E402

LAYERS = (("resnet50.layer3.0.conv2", 8), ("resnet50.layer4.1.conv2", 8),
          ("resnet50.layer3.1.conv2", 8), ("resnet50.layer1.0.conv2", 8))


def shared(flag: bool, run):
    def call():
        before = blasconv.SHARED_FILTERS
        blasconv.SHARED_FILTERS = flag
        try:
            return run()
        finally:
            blasconv.SHARED_FILTERS = before
    return call


def contenders(spec, x, w, threads: int) -> dict:
    """The variants that apply to this block (module docstring)."""
    dtype = np.dtype(spec.dtype_in)
    out = {}
    split = conv2d_blas(spec, x, w, "winograd")[1]["workers"] > 1
    if split:
        out["shared"] = shared(True, lambda: conv2d_blas(spec, x, w, "winograd"))
        out["own"] = shared(False, lambda: conv2d_blas(spec, x, w, "winograd"))
    out["one"] = lambda: conv2d_blas(spec, x, w, "winograd", workers=1)
    torch = _torch()
    if torch is not None:
        xt, wt = torch.from_numpy(x), torch.from_numpy(w)

        def conv():
            with torch.no_grad():
                torch.nn.functional.conv2d(xt, wt, stride=spec.stride, padding=spec.padding)
        out["torch"] = conv
    form = winograd_form(spec)
    out["filters"] = lambda: form.filter_transform(w, dtype)
    # the control: how many cores the process gets now (SGEMM at T threads / at 1)
    square = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    out["sgemm"] = lambda: square @ square

    def sgemm_one():
        with limit_threads(1):
            square @ square
    out["sgemm1"] = sgemm_one
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--layers", nargs="+", metavar="NAME:BATCH")
    parser.add_argument("--json", default="experiments/results/kernels/bench_threads.json")
    args = parser.parse_args(argv)
    layers = LAYERS if not args.layers else [(s.split(":")[0], int(s.split(":")[1]))
                                             for s in args.layers]
    prepare()
    jit.preload()       # as parconv.bench: stride-1 pieces take the fused transforms if numba is there
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(args.threads)
    print(f"load {os.getloadavg()[0]:.2f}, {args.threads} threads, best of {args.rounds}; "
          "ms (GFLOP/s)")
    rows = []
    for name, batch in layers:
        spec = get_layer(name, batch=batch, dtype="float32")
        x, w = _operands(spec)
        with limit_threads(args.threads):
            runs = contenders(spec, x, w, args.threads)
            results = {k: f() for k, f in runs.items()
                       if k not in ("torch", "filters", "sgemm", "sgemm1")}
            ref = conv2d_blas(spec, x, w, "winograd", workers=1)[0]
            scale = float(np.abs(ref).max())
            errors = {k: float(np.abs(r[0] - ref).max() / scale) for k, r in results.items()}
            cpu = {}
            best = interleaved_best(runs, args.rounds, cpu)
        row = {"layer": name, "batch": batch, "threads": args.threads,
               "ms": {k: t * 1e3 for k, t in best.items()},
               "cpu_ms": {k: t * 1e3 for k, t in cpu.items()}, "error": errors}
        rows.append(row)
        row["sgemm_speedup"] = best["sgemm1"] / best["sgemm"]
        figures = "  ".join(
            f"{k} {t * 1e3:.2f}" + (f" ({2 * spec.G / t / 1e9:.0f})" if k in results or
                                    k == "torch" else "")
            for k, t in best.items() if k not in ("sgemm", "sgemm1"))
        figures += f"  [SGEMM {args.threads} thr / 1 thr: {row['sgemm_speedup']:.2f}]"
        print(f"{name}:{batch}  {figures}  max error {max(errors.values()):.1e}\n"
              f"{'':>10}CPU ms (both threads): "
              + "  ".join(f"{k} {t * 1e3:.2f}" for k, t in cpu.items()), flush=True)
    if args.json:
        save_json({"machine": machine(), "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
