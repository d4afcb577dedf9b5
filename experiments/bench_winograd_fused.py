"""Winograd F(2x2, 3x3) with numba-fused transforms (parconv.winograd_fused) against the numpy
transforms (parconv.winograd) and torch, side by side.

Per stride-1 3x3 layer and per thread count T, interleaved in one process (parconv.bench's
timing: best of the rounds, a pause before each call): the float32 Winograd method with numpy
transforms and with the fused ones, both as the kernel runs them (at T > 1 as T pieces on
single-threaded BLAS where `blasconv.split_workers` splits, else one call on T BLAS threads),
the fused one also as one call on T BLAS threads, and torch's conv2d (if installed).  Then the
stage times of the fused method's first block at one thread (transforms and products), and numba's compile time in a
fresh process with an empty cache ("cold") and again with that cache filled ("warm").

numba is not a requirement of parconv: without it this script says so and exits 0.

Run:  OMP_NUM_THREADS=1 python experiments/bench_winograd_fused.py [--rounds 7]
      [--threads 1 2] [--layers resnet50.layer1.0.conv2:8 ...] [--no-compile]
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parconv.bench import _operands, _torch, interleaved_best, machine, save_json  # noqa: E402
from parconv.blas import limit_threads, prepare  # noqa: E402
from parconv.blas_split import run_split  # noqa: E402
from parconv.blasconv import split_workers, winograd_form  # noqa: E402
from parconv.layers import get_layer  # noqa: E402

LAYERS = (("resnet50.layer1.0.conv2", 8), ("resnet50.layer2.1.conv2", 8),
          ("resnet50.layer3.1.conv2", 8), ("resnet50.layer4.1.conv2", 8))

_COMPILE = """
import sys, time
sys.path.insert(0, {root!r})
start = time.perf_counter()
import numpy as np
from parconv import winograd_fused
from parconv.layers import get_layer
imported = time.perf_counter()
spec = get_layer("resnet50.layer4.1.conv2", batch=1, dtype="float32")
x = np.ones(spec.input_shape, np.float32)
w = np.ones(spec.weight_shape, np.float32)
winograd_fused.conv_winograd(spec, x, w, np.float32, np.empty(spec.output_shape, np.float32))
first = time.perf_counter()
winograd_fused.conv_winograd(spec, x, w, np.float32, np.empty(spec.output_shape, np.float32))
print(imported - start, first - imported, time.perf_counter() - first)
"""


def kernel(conv, spec, x, w, threads, split=True):
    """The Winograd method by ``conv`` (a ``conv_winograd``), run as `blasconv.conv2d_blas`
    runs it."""
    dtype = np.dtype(spec.dtype_in)
    y = np.empty(spec.output_shape, dtype=spec.dtype_acc)

    def run(piece, xp, yp):
        conv(piece, xp, w, dtype, yp)

    workers = split_workers(spec, "winograd", threads) if split else 1
    if workers > 1:
        run_split(spec, x, y, workers, run, align=2)
    else:
        run(spec, x, y)
    return y


def sized(module, block_bytes, call):
    """``call()`` with ``module.BLOCK_BYTES`` set to ``block_bytes``."""
    saved, module.BLOCK_BYTES = module.BLOCK_BYTES, block_bytes
    try:
        return call()
    finally:
        module.BLOCK_BYTES = saved


def stages(spec, x, w, rounds):
    """Best-of seconds of the stages of the fused method on its first block, at one thread."""
    from parconv import winograd_fused as f
    from parconv.winograd import MIN_TILES, filter_transform, tile_blocks, tile_grid
    dtype = np.dtype(spec.dtype_in)
    N, C, K = spec.batch, spec.in_channels, spec.out_channels
    tH, tW = tile_grid(spec)
    u = filter_transform(w, dtype)
    y = np.empty(spec.output_shape, dtype=spec.dtype_acc)
    per = (16 * (C + K) + 8 * C) * dtype.itemsize
    n0, n1, i0, i1 = tile_blocks(N, tH, tW, max(MIN_TILES, f.BLOCK_BYTES // per))[0]
    length = (n1 - n0) * (i1 - i0) * tW
    xcl = np.empty((n1 - n0, 2 * (i1 - i0) + 2, 2 * tW + 2, C), dtype)
    v = f._planes(np.empty(16 * (C * length + f.PLANE_PAD), dtype), length, C)
    m = f._planes(np.empty(16 * (K * length + f.PLANE_PAD), dtype), length, K)
    vm, mm = f._matrices(v, length, C), f._matrices(m, length, K)
    u = u.transpose(0, 2, 1)
    with limit_threads(1):
        best = interleaved_best({
            "channels_last": lambda: f._channels_last(spec, x, n0, n1, i0, xcl),
            "input": lambda: f.input_transform(xcl, tW, v),
            "products": lambda: np.matmul(vm, u, out=mm),
            "output": lambda: f.output_transform(m, n0, n1, i0, i1, tW, y)}, rounds,
            pause=0.02)
    best["block"] = (n0, n1, i0, i1)
    return best


def compile_times(root):
    """(import, first call, second call) seconds in a fresh process, cache empty then warm."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "OMP_NUM_THREADS": "1"}
        for label in ("cold", "warm"):
            text = subprocess.run([sys.executable, "-c", _COMPILE.format(root=root)], env=env,
                                  capture_output=True, text=True, check=True).stdout
            out[label] = dict(zip(("import_s", "first_call_s", "second_call_s"),
                                  map(float, text.split())))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--layers", nargs="+", metavar="NAME:BATCH")
    parser.add_argument("--no-compile", action="store_true", help="skip the compile timing")
    parser.add_argument("--block-mib", type=float, nargs="+",
                        help="also time the fused method with blocks of these MiB (default: "
                             "winograd_fused.BLOCK_BYTES only)")
    parser.add_argument("--json", default="experiments/results/kernels/winograd_fused.json")
    args = parser.parse_args(argv)
    try:
        import numba
    except ImportError:
        print("bench_winograd_fused: numba is not installed (pip install numba); skipped")
        return 0
    from parconv import jit
    if not jit.preload():
        print("bench_winograd_fused: numba cannot be used here (no cache folder?); skipped")
        return 0
    from parconv import winograd, winograd_fused
    layers = LAYERS if not args.layers else [(s.split(":")[0], int(s.split(":")[1]))
                                             for s in args.layers]
    prepare()
    torch = _torch()
    root = str(Path(__file__).resolve().parents[1])
    result = {"machine": machine(), "numba": numba.__version__, "rounds": args.rounds,
              "rows": []}
    print(f"load {os.getloadavg()}, numba {numba.__version__}, torch "
          f"{torch.__version__ if torch else 'absent'}; GFLOP/s = 2 G / best wall time; "
          f"cpu f/n: numpy / fused best process CPU time; split: pieces side by side; fused1: "
          f"fused as one call on T BLAS threads; takes: the transforms NumpyKernel takes there once numba is loaded (parconv.jit); |fused - numpy|: largest difference / largest "
          f"|output|")
    head = (f"{'layer':<26}{'thr':>4}{'split':>6}{'numpy':>8}{'fused':>8}{'fused1':>8}"
            f"{'torch':>8}{'fu/np':>7}{'fu/torch':>9}{'np/torch':>9}{'cpu f/n':>8}{'takes':>7}  |fused - numpy|")
    print(head + "\n" + "-" * len(head))
    for threads in args.threads:
        for name, batch in layers:
            spec = get_layer(name, batch=batch, dtype="float32")
            x, w = _operands(spec)
            if winograd_form(spec) is not winograd:
                print(f"{name}: not a stride-1 Winograd layer, skipped")
                continue
            numpy_conv, fused_conv = winograd.conv_winograd, winograd_fused.conv_winograd
            contenders = {
                "numpy": lambda: kernel(numpy_conv, spec, x, w, threads),
                "fused": lambda: kernel(fused_conv, spec, x, w, threads),
                "fused1": lambda: kernel(fused_conv, spec, x, w, threads, split=False)}
            for mib in args.block_mib or ():
                contenders[f"fused_{mib:g}MiB"] = (
                    lambda mib=mib: sized(winograd_fused, int(mib * 2 ** 20),
                                          lambda: kernel(fused_conv, spec, x, w, threads)))
            if torch is not None:
                xt, wt = torch.from_numpy(x), torch.from_numpy(w)

                def conv(xt=xt, wt=wt):
                    with torch.no_grad():
                        torch.nn.functional.conv2d(xt, wt, stride=spec.stride, padding=spec.padding)
                contenders["torch"] = conv
                torch.set_num_threads(threads)
            with limit_threads(threads):
                ya, yb = contenders["numpy"](), contenders["fused"]()
                workers = split_workers(spec, "winograd", threads)
                cpu = {}
                best = interleaved_best(contenders, args.rounds, cpu)
                used = "numba" if jit.fused_winograd(spec, threads, workers) else "numpy"
            scale = np.abs(ya).max()
            diff = float(np.abs(ya - yb).max() / scale)
            rate = {k: 2 * spec.G / t / 1e9 for k, t in best.items()}
            row = {"layer": name, "batch": batch, "threads": threads, "workers": workers,
                   "gflops": rate, "seconds": best, "cpu_seconds": cpu, "max_rel_diff": diff,
                   "kernel_takes": used}
            result["rows"].append(row)
            t = rate.get("torch", float("nan"))
            print(f"{name:<26}{threads:>4}{workers:>6}{rate['numpy']:>8.1f}{rate['fused']:>8.1f}"
                  f"{rate['fused1']:>8.1f}{t:>8.1f}{rate['fused'] / rate['numpy']:>7.2f}"
                  f"{rate['fused'] / t:>9.2f}{rate['numpy'] / t:>9.2f}"
                  f"{cpu['numpy'] / cpu['fused']:>8.2f}{used:>7}  {diff:.1e}"
                  + "".join(f"  {k} {v:.1f}" for k, v in rate.items() if k.endswith("MiB")))
    print("\nstages of the fused method on its first block at 1 thread (best of the rounds, ms)")
    for name, batch in layers:
        spec = get_layer(name, batch=batch, dtype="float32")
        if winograd_form(spec) is not winograd:
            continue
        x, w = _operands(spec)
        best = stages(spec, x, w, args.rounds)
        block = best.pop("block")
        result.setdefault("stages_ms", {})[name] = {k: 1e3 * v for k, v in best.items()}
        print(f"  {name:<26} block {block}: "
              + "  ".join(f"{k} {1e3 * v:.2f}" for k, v in best.items()))
    if not args.no_compile:
        result["compile"] = compile_times(root)
        for label, times in result["compile"].items():
            print(f"compile, {label} cache: " + ", ".join(f"{k} {v:.2f} s"
                                                       for k, v in times.items()))
    if args.json:
        print(f"wrote {save_json(result, args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
