"""The CPU kernel's products on MKL (parconv.blas_mkl) against numpy's OpenBLAS, side by side.

Two tables, each timed with parconv.bench's interleaved best-of rounds:

* the product shapes the kernel runs, one BLAS thread: the 56x56 Winograd coefficient products
  (1568 x 64 @ 64 x 64), a 1x1 layer's image (128 x 256 @ 256 x 3136), the stem's output rows
  (64 x 147 @ 147 x 896), a 7x7-map Winograd product (128 x 512 @ 512 x 512) and the 1024^2
  square, float32, numpy's matmul against `blas_mkl.gemm`, back to back;
* per layer (the benchmark's five by default), type and BLAS thread count, the whole kernel
  (`NumpyKernel`) with ``PARCONV_BLAS=mkl`` and ``=numpy`` alternating in one process, a
  pause before each pair of calls (parconv.bench's timing).  For int8 the MKL side runs int8
  products on MKL's int8 GEMM where the CPU has VNNI or AMX (parconv.blas_mkl_int), the numpy
  side the float path in exact groups.

MKL is not a requirement of parconv: where it does not load this script says so and exits 0.

Run:  OMP_NUM_THREADS=1 python experiments/bench_blas.py [--rounds 7] [--threads 1 2]
      [--layers resnet50.layer1.0.conv2:8 ...] [--dtypes float32 int8] [--json PATH]
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parconv import blas_mkl  # noqa: E402
from parconv.bench import LAYERS, _operands, interleaved_best, machine, save_json  # noqa: E402
from parconv.bench import with_blas  # noqa: E402
from parconv.blas import limit_threads, prepare  # noqa: E402
from parconv.kernels import NumpyKernel  # noqa: E402
from parconv.layers import get_layer  # noqa: E402

SHAPES = ((1568, 64, 64), (128, 256, 3136), (64, 147, 896), (128, 512, 512), (1024, 1024, 1024))


class _Products:
    """A callable running the kernel with ``$PARCONV_BLAS`` set to one value for the call."""

    def __init__(self, kernel, spec, x, w, setting):
        self.kernel, self.spec, self.x, self.w, self.setting = kernel, spec, x, w, setting

    def __call__(self):
        return with_blas(self.setting, self.kernel.run, self.spec, self.x, self.w)


def shapes_table(rounds: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    with limit_threads(1):
        for m, k, n in SHAPES:
            a = rng.standard_normal((m, k)).astype(np.float32)
            b = rng.standard_normal((k, n)).astype(np.float32)
            c = np.empty((m, n), dtype=np.float32)
            # back to back, as the kernel calls them (a pause before a 0.2 ms product times
            # the core waking up)
            best = interleaved_best({"numpy": lambda: np.matmul(a, b, out=c),
                                     "mkl": lambda: blas_mkl.gemm(a, b, c)}, rounds, pause=0)
            rate = {key: 2 * m * k * n / t / 1e9 for key, t in best.items()}
            rows.append({"m": m, "k": k, "n": n, "numpy_gflops": rate["numpy"],
                         "mkl_gflops": rate["mkl"], "mkl_over_numpy": rate["mkl"] / rate["numpy"]})
            print(f"  {m:>5} x {k:<5} @ {k:>5} x {n:<5}  numpy {rate['numpy']:7.1f}  "
                  f"mkl {rate['mkl']:7.1f}  mkl/numpy {rate['mkl'] / rate['numpy']:5.2f}",
                  flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--layers", nargs="+", metavar="NAME:BATCH")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64", "int8"])
    parser.add_argument("--json", default="experiments/results/kernels/bench_blas.json")
    args = parser.parse_args(argv)
    os.environ.setdefault(blas_mkl.BLAS_ENV, "mkl")
    try:
        loaded = blas_mkl.enabled()
    except Exception as exc:   # noqa: BLE001 - PARCONV_BLAS=mkl where it does not load
        print(f"MKL does not load here ({exc}); nothing to compare")
        return 0
    if not loaded:
        print("MKL is not enabled here (PARCONV_BLAS=numpy); nothing to compare")
        return 0
    layers = LAYERS if not args.layers else [(s.split(":")[0], int(s.split(":")[1]))
                                             for s in args.layers]
    prepare()
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, load {info['load_average']}")
    print(f"BLAS: {'; '.join(info['blas'])}")
    print("GFLOP/s, one thread, best of the rounds, interleaved:")
    shapes = shapes_table(args.rounds)
    print("\nthe kernel (GFLOP/s = 2 G / best wall time), PARCONV_BLAS=mkl and =numpy alternating")
    head = (f"{'layer':<26}{'batch':>6}{'dtype':>8}{'thr':>4}{'method':>9}{'workers':>8}"
            f"{'numpy':>8}{'mkl':>8}{'mkl/np':>8}{'same':>10}")
    print(head + "\n" + "-" * len(head), flush=True)
    rows = []
    for name, batch in layers:
        for dtype in args.dtypes:
            spec = get_layer(name, batch=batch, dtype=dtype)
            x, w = _operands(spec)
            for threads in args.threads:
                kernel = NumpyKernel(threads=threads)
                runs = {key: _Products(kernel, spec, x, w, key) for key in ("numpy", "mkl")}
                (y_np, how_np), (y_mkl, how) = runs["numpy"](), runs["mkl"]()
                same = float(np.abs(y_mkl.astype(np.float64) - y_np).max()
                             / max(1e-300, float(np.abs(y_np.astype(np.float64)).max())))
                best = interleaved_best(runs, args.rounds)
                rate = {key: 2 * spec.G / t / 1e9 for key, t in best.items()}
                rows.append({"layer": name, "batch": batch, "dtype": dtype, "threads": threads,
                             "method": how["method"], "workers": how["workers"],
                             "products": {"numpy": how_np["products"], "mkl": how["products"]},
                             "numpy_gflops": rate["numpy"], "mkl_gflops": rate["mkl"],
                             "mkl_over_numpy": rate["mkl"] / rate["numpy"],
                             "max_relative_difference": same})
                print(f"{name:<26}{batch:>6}{dtype:>8}{threads:>4}{how['method']:>9}"
                      f"{how['workers']:>8}{rate['numpy']:>8.1f}{rate['mkl']:>8.1f}"
                      f"{rate['mkl'] / rate['numpy']:>8.2f}{same:>10.1e}"
                      + ("" if how["products"] == "mkl" else "  (one call on T threads: "
                         "numpy's BLAS both times)"), flush=True)
    path = save_json({"machine": info, "rounds": args.rounds, "shapes": shapes, "kernel": rows},
                     args.json)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
