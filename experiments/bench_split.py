"""The threaded split of the CPU kernel (parconv.blas_split) against one call on T BLAS threads.

Per layer, input type and method, side by side in one process at T BLAS threads: the block as
one call with T-threaded BLAS (``workers=1``) and as T pieces on T threads of single-threaded
BLAS (``workers=T``), best of the rounds with the two interleaved (parconv.bench's timing).
The int8 results must be identical, the float results equal within rounding.  What
`parconv.blasconv.SPLIT` holds follows from this table.

Run:  OMP_NUM_THREADS=1 python experiments/bench_split.py [--threads 2] [--rounds 5]
      [--layers resnet50.layer1.0.conv2:8 ...] [--methods taps im2col]
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parconv.bench import LAYERS, _operands, interleaved_best, machine, save_json  # noqa: E402
from parconv.blas import limit_threads, prepare  # noqa: E402
from parconv.blasconv import choose_method, conv2d_blas, winograd_form  # noqa: E402
from parconv.layers import get_layer  # noqa: E402


def methods_for(spec):
    """The chosen method first, then the other direct methods that apply."""
    chosen = choose_method(spec)
    others = ["taps", "im2col"] + (["winograd"] if winograd_form(spec) else [])
    return [chosen] + [m for m in others if m != chosen]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", nargs="+", metavar="NAME:BATCH")
    parser.add_argument("--dtypes", nargs="+", default=["int8", "float32", "float64"])
    parser.add_argument("--methods", nargs="+", help="default: the chosen one and the others")
    parser.add_argument("--pause", type=float, default=0.2,
                        help="seconds idle before each call (default 0.2: OpenBLAS's threads "
                             "spin for about 0.1 s after a threaded product)")
    parser.add_argument("--json", default="experiments/results/kernels/bench_split.json")
    args = parser.parse_args(argv)
    layers = LAYERS if not args.layers else [(s.split(":")[0], int(s.split(":")[1]))
                                             for s in args.layers]
    prepare()
    rows = []
    print(f"{'layer':<26}{'batch':>6}{'dtype':>8}{'method':>10}{'one call':>10}{'split':>8}"
          f"{'split/one':>10}  same")
    for name, batch in layers:
        for dtype in args.dtypes:
            spec = get_layer(name, batch=batch, dtype=dtype)
            x, w = _operands(spec)
            for method in args.methods or methods_for(spec):
                if method == "winograd" and not winograd_form(spec):
                    continue
                if method == "gemm" and spec.kernel_size != (1, 1):
                    continue
                with limit_threads(args.threads):
                    one = conv2d_blas(spec, x, w, method, workers=1)[0]
                    split = conv2d_blas(spec, x, w, method, workers=args.threads)[0]
                    best = interleaved_best(
                        {"one": lambda: conv2d_blas(spec, x, w, method, workers=1),
                         "split": lambda: conv2d_blas(spec, x, w, method,
                                                      workers=args.threads)}, args.rounds,
                        pause=args.pause)
                same = (bool(np.array_equal(one, split)) if dtype == "int8" else
                        float(np.abs(one - split).max() / max(np.abs(one).max(), 1e-300)))
                gflops = {k: 2 * spec.G / t / 1e9 for k, t in best.items()}
                rows.append({"layer": name, "batch": batch, "dtype": dtype, "method": method,
                             "threads": args.threads, "one_gflops": gflops["one"],
                             "split_gflops": gflops["split"], "same": same})
                print(f"{name:<26}{batch:>6}{dtype:>8}{method:>10}{gflops['one']:>10.1f}"
                      f"{gflops['split']:>8.1f}{gflops['split'] / gflops['one']:>10.2f}  {same}",
                      flush=True)
    if args.json:
        save_json({"machine": machine(), "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
