"""Node-kernel benchmark: ``python -m parconv.bench`` (also experiments/bench_kernels.py).  Local.

Per layer (the five of the kernel issue by default) and per BLAS thread count, side by side in
one process: parconv's CPU kernel in float32 and float64 (GFLOP/s = 2 G / seconds), torch's
``conv2d`` on the same data (if torch is installed; skipped with a note otherwise), the
machine's SGEMM/DGEMM rate measured in the same run, and the exact int8 path.  Then the Gemmini
node on the block of one rank (P = 1: the whole layer): the whole node on a fresh block (no
cached tiling, shape-keyed caches cleared), its tiling search and its executor, next to the
numpy kernel on the same block (``--only-gemmini``: this part alone).  Prints the machine, the BLAS (threadpoolctl)
and the thread counts, a table and the targets met; writes everything to JSON.

Timings are best-of-k with the contenders interleaved (k rounds, each contender in turn once
per round), so that a busy machine slows all of them alike and the ratios stay meaningful.
Each contender's turn starts after a short pause (`PAUSE_S`): the thread pools of the call
before it (torch's OpenMP threads, OpenBLAS's) spin for a while after their work, and at 2
threads a contender that followed torch ran 1.5x slower without the pause, and threads started
right after an OpenBLAS call competed with its spinning threads.  The turn then calls the
contender twice and times the second call: the first call after an idle pause runs with cold
caches and sleeping threads on this kind of virtual machine (measured on
resnet50.layer1.0.conv2 at batch 8: parconv 149 GFLOP/s back to back and 116 after a 0.15 s
pause at 1 thread, 262 and 122 at 2 threads; torch 171 and 153, 324 and 233), a cost of the
pause, not of either kernel.  The first calls' times are kept too (``*_cold`` in the JSON, and
the float32 / torch target's "first call after the pause" figure).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from . import blas_mkl, blas_mkl_int
from .blas import blas_info, limit_threads, prepare
from .errors import ParconvError
from .kernels import NumpyKernel
from .layers import get_layer
from .report import write_json

#: (layer, batch) of the kernel issue
LAYERS = (("resnet50.layer1.0.conv2", 8), ("resnet50.layer3.0.conv2", 8),
          ("resnet50.layer4.1.conv2", 8), ("resnet50.layer2.0.conv1", 8),
          ("resnet50.conv1", 4))
#: targets of the issue (the SGEMM share holds for 3x3 and 1x1 filters)
SGEMM_TARGET, TORCH_TARGET, INT8_TARGET, GEMMINI_TARGET, EXECUTOR_TARGET = 0.6, 1.0, 0.6, 3.0, 2.0
DEFAULT_JSON = "experiments/results/kernels/bench.json"
#: seconds of idle time before each timed call (measured at 2 threads, resnet50.layer2.0.conv1:
#: parconv float32 right after torch's conv2d 97 GFLOP/s, after a 10 ms pause 145, with no
#: torch call before it 148; OpenBLAS's threads spin for about 0.1 s after a threaded product,
#: and the int8 path's pieces on single-threaded BLAS ran 1.6x slower 20 ms after one)
PAUSE_S = 0.15


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def interleaved_best(contenders: dict, rounds: int, cpu: dict | None = None,
                     pause: float = PAUSE_S, cold: dict | None = None) -> dict:
    """Best wall time of each callable over ``rounds`` rounds, each round calling every
    contender (in turn) twice in a row after ``pause`` seconds idle (the previous contender's
    spinning threads stop), and timing the second call: a contender measured as it runs
    block after block, its own threads awake and its operands in the cache.  ``cpu``, if
    given, receives the best process CPU time of each second call (all threads of the
    process: on a shared machine less disturbed by other load than the wall time); ``cold``,
    if given, the best wall time of each first call (right after the idle pause)."""
    best = dict.fromkeys(contenders, float("inf"))
    for extra in (cpu, cold):
        if extra is not None:
            extra.update(dict.fromkeys(contenders, float("inf")))
    for _ in range(rounds):
        for name, run in contenders.items():
            if pause:
                time.sleep(pause)
            start = time.perf_counter()
            run()
            if cold is not None:
                cold[name] = min(cold[name], time.perf_counter() - start)
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
            if cpu is not None:
                cpu[name] = min(cpu[name], time.process_time() - start_cpu)
    return best


def _operands(spec, seed=0):
    rng = np.random.default_rng(seed)
    if spec.dtype_in == "int8":
        return (rng.integers(-128, 128, spec.input_shape).astype(np.int8),
                rng.integers(-128, 128, spec.weight_shape).astype(np.int8))
    return (rng.standard_normal(spec.input_shape).astype(spec.dtype_in),
            rng.standard_normal(spec.weight_shape).astype(spec.dtype_in))


def machine() -> dict:
    """CPU, cores, load, numpy, BLAS and the environment's thread settings."""
    model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    torch = _torch()
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                          "MKL_NUM_THREADS", "OPENBLAS_CORETYPE",
                                          "OPENBLAS_L2_SIZE")}
    return {"cpu": model, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "torch": torch.__version__ if torch else None, "environment": env, **blas_info()}


def conv_rates(name: str, batch: int, threads: int, rounds: int, gemm_size: int) -> dict:
    """GFLOP/s of parconv (float32, float64, int8), torch (float32, float64) and SGEMM/DGEMM
    (``gemm_size`` squared) on one layer, interleaved: the ratios are side by side."""
    torch = _torch()
    out = {"layer": name, "batch": batch, "threads": threads}
    contenders, flops = {}, None
    square = {dtype: np.random.default_rng(0).standard_normal((gemm_size, gemm_size)).astype(
        dtype) for dtype in ("float32", "float64")}
    contenders["sgemm"] = lambda: square["float32"] @ square["float32"]
    contenders["dgemm"] = lambda: square["float64"] @ square["float64"]
    if threads == 1 and blas_mkl.enabled():
        # the kernel's one-thread products run on MKL: its GEMM is the machine's too
        product = {d: np.empty_like(a) for d, a in square.items()}
        for dtype, key in (("float32", "sgemm_mkl"), ("float64", "dgemm_mkl")):
            contenders[key] = (lambda d=dtype: blas_mkl.gemm(square[d], square[d], product[d]))
    for dtype in ("float32", "float64", "int8"):
        spec = get_layer(name, batch=batch, dtype=dtype)
        flops = 2 * spec.G
        x, w = _operands(spec)
        kernel = NumpyKernel(threads=threads)
        contenders[f"parconv_{dtype}"] = (lambda k=kernel, s=spec, x=x, w=w: k.run(s, x, w))
        how = kernel.run(spec, x, w)[1]
        out[f"method_{dtype}"], out[f"transforms_{dtype}"] = how["method"], how["transforms"]
        out[f"products_{dtype}"], out[f"compute_{dtype}"] = how["products"], how["compute_dtype"]
        if torch is not None and dtype != "int8":
            xt, wt = torch.from_numpy(x), torch.from_numpy(w)

            def conv(xt=xt, wt=wt, spec=spec):
                with torch.no_grad():
                    torch.nn.functional.conv2d(xt, wt, stride=spec.stride, padding=spec.padding,
                                               dilation=spec.dilation)
            contenders[f"torch_{dtype}"] = conv
    if torch is not None:
        torch.set_num_threads(threads)
    cpu, cold = {}, {}
    with limit_threads(threads):
        best = interleaved_best(contenders, rounds, cpu, cold=cold)
    work = {key: 2 * gemm_size ** 3 if key[1:5] == "gemm" else flops for key in best}
    out.update({f"{key}_gflops": work[key] / t / 1e9 for key, t in best.items()})
    out.update({f"{key}_gflops_cpu": work[key] / t / 1e9 for key, t in cpu.items() if t > 0})
    out.update({f"{key}_gflops_cold": work[key] / t / 1e9 for key, t in cold.items()})
    for key in ("sgemm", "dgemm"):
        # the machine's rate: the faster of numpy's BLAS and MKL (where the kernel uses it)
        out[f"{key}_numpy_gflops"] = out[f"{key}_gflops"]
        out[f"{key}_gflops"] = max(out[f"{key}_gflops"], out.get(f"{key}_mkl_gflops", 0.0))
    out["seconds"], out["cpu_seconds"], out["cold_seconds"] = best, cpu, cold
    return out


def save_json(result: dict, path: str) -> Path:
    """Write a benchmark's ``result`` to ``path`` atomically (`parconv.report.write_json`),
    creating its folder; returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json(result, str(target))
    return target


def forget_shapes() -> None:
    """Forget everything the Gemmini node keeps per block shape (the tilings of
    `parconv.gemmini.tiling_cache` and the shape-keyed caches of the search, the cycle model and
    the bounds), so that the next block is searched from scratch; the imports and the fitted
    cycle constants (read once per process) stay."""
    import importlib
    from .gemmini.tiling_cache import clear_memory
    clear_memory()
    for module in ("parconv.tiling.model", "parconv.tiling.totals", "parconv.tiling.relax",
                   "parconv.tiling.candidates", "parconv.gemmini.cycles",
                   "parconv.gemmini.tiled.choose", "parconv.gemmini.vendor.heuristics",
                   "parconv.bounds.polyphase", "parconv.bounds.workfn", "parconv.bounds.traffic",
                   "parconv.bounds.border", "parconv.bounds.set_reuse", "parconv.bounds.halo"):
        for name, value in vars(importlib.import_module(module)).items():
            if hasattr(value, "cache_clear") and name != "load_constants":
                value.cache_clear()


def gemmini_block(name: str, batch: int, ranks: int, rounds: int) -> dict:
    """The Gemmini node on rank 0's block at ``ranks`` ranks (1 BLAS thread), interleaved with
    the numpy kernel on the same block: the whole node on a fresh block (`forget_shapes` first:
    tiling search, execution, statistics), the executor alone with the tiling known, and the
    search's own time (best of the rounds)."""
    from .gemmini.kernel import GemminiKernel
    from .gemmini.tiling_cache import cached_tiling
    from .gemmini.tiled.choose import run_parconv
    from .plan import make_plan
    layer = get_layer(name, batch=batch, dtype="int8")
    block = make_plan(layer, ranks).schedule(0).local_spec if ranks > 1 else layer
    x, w = _operands(block, seed=1)
    gemmini, numpy_kernel = GemminiKernel(disk_cache=False), NumpyKernel(threads=1)
    config = gemmini.node_config(block)
    searches = []

    def fresh_node():
        forget_shapes()
        _, stats = gemmini.run(block, x, w)
        searches.append(stats["search_s"])

    contenders = {"numpy": lambda: numpy_kernel.run(block, x, w),
                  "execute": lambda: run_parconv(block, x, w, plan=plan), "node": fresh_node}
    if blas_mkl_int.ready():
        # the same kernel without MKL (its int8 GEMM and float GEMM): the int8 path on float
        # products, as on a machine without them
        contenders["numpy_float"] = lambda: with_blas("numpy", numpy_kernel.run, block, x, w)
    with limit_threads(1):
        plan, _ = cached_tiling(block, config, disk=False)
        best = interleaved_best(contenders, rounds)
        _, stats = gemmini.run(block, x, w)          # the kernel itself, tiling now cached
        numpy_products = numpy_kernel.run(block, x, w)[1]["compute_dtype"]
    float_s = best.get("numpy_float")
    return {"layer": name, "batch": batch, "ranks": ranks, "block": block.describe(),
            "search_s": min(searches), "execute_s": best["execute"],
            "numpy_s": best["numpy"], "node_fresh_s": best["node"],
            "numpy_int8_products": numpy_products == "int8",
            "numpy_float_products_s": float_s,
            "kernel_cached_s": stats["time_s"], "tiling_source_cached": stats["tiling_source"],
            "ratio_with_search": best["node"] / best["numpy"],
            "ratio_search_execute": (min(searches) + best["execute"]) / best["numpy"],
            "ratio_execute": best["execute"] / best["numpy"],
            "ratio_with_search_float": best["node"] / float_s if float_s else None,
            "ratio_execute_float": best["execute"] / float_s if float_s else None}


def with_blas(setting: str, run, *args):
    """``run(*args)`` with ``$PARCONV_BLAS`` set to ``setting`` for the call (the library reads
    it on every product: side-by-side runs of one kernel with and without MKL)."""
    before = os.environ.get(blas_mkl.BLAS_ENV)
    os.environ[blas_mkl.BLAS_ENV] = setting
    try:
        return run(*args)
    finally:
        if before is None:
            del os.environ[blas_mkl.BLAS_ENV]
        else:
            os.environ[blas_mkl.BLAS_ENV] = before


def targets(rows: list[dict], gemmini: list[dict]) -> list[dict]:
    """Every target of the issue with its measured figure and verdict."""
    out = []
    for row in rows:
        tag = f"{row['layer']} @ {row['threads']} thr"
        f32 = row["parconv_float32_gflops"]
        if "torch_float32_gflops" in row:
            ratio = f32 / row["torch_float32_gflops"]
            cpu = row.get("parconv_float32_gflops_cpu", 0) / row.get(
                "torch_float32_gflops_cpu", float("inf"))
            cold = row.get("parconv_float32_gflops_cold", 0) / row.get(
                "torch_float32_gflops_cold", float("inf"))
            out.append({"target": f"float32 >= torch: {tag}", "value": ratio,
                        "value_cpu_time": cpu, "value_cold": cold, "met": ratio >= TORCH_TARGET})
        if get_layer(row["layer"]).kernel_size in ((3, 3), (1, 1)):
            share = f32 / row["sgemm_gflops"]
            out.append({"target": f"float32 >= {SGEMM_TARGET:.0%} SGEMM: {tag}", "value": share,
                        "met": share >= SGEMM_TARGET})
        ratio = row["parconv_int8_gflops"] / f32
        cpu = row.get("parconv_int8_gflops_cpu", 0) / row.get("parconv_float32_gflops_cpu",
                                                               float("inf"))
        out.append({"target": f"int8 >= {INT8_TARGET} x float32: {tag}", "value": ratio,
                    "value_cpu_time": cpu, "met": ratio >= INT8_TARGET})
    for g in gemmini:
        tag = f"{g['layer']} P={g['ranks']}"
        for key, target, limit in (("ratio_with_search", "Gemmini node incl. search", GEMMINI_TARGET),
                                   ("ratio_execute", "executor", EXECUTOR_TARGET)):
            entry = {"target": f"{target} <= {limit}x numpy: {tag}", "value": g[key],
                     "met": g[key] <= limit}
            if g.get(f"{key}_float"):
                entry["value_float_products"] = g[f"{key}_float"]
            out.append(entry)
    return out


def table(result: dict) -> str:
    """The printed report."""
    m = result["machine"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, load {m['load_average']}, numpy "
             f"{m['numpy']}, torch {m['torch'] or 'not installed (torch columns skipped)'}",
             f"BLAS: {'; '.join(m['blas'])}", f"environment: {m['environment']}",
             f"measured in {result['seconds']:.0f} s", ""]
    if result["conv"]:
        head = (f"{'layer':<26}{'thr':>4}{'method':>8}{'f32':>7}{'torch':>7}{'/torch':>7}"
                f"{'sgemm':>7}{'/sgemm':>7}{'f64':>7}{'torch64':>8}{'dgemm':>7}{'int8':>7}"
                f"{'i8/f32':>7}")
        lines += [f"GFLOP/s (2 G / best time; SGEMM/DGEMM of {result['gemm_size']}^2 interleaved "
                  f"with each layer's runs, the faster of numpy's BLAS and MKL where the "
                  f"kernel's products ran on MKL)", head, "-" * len(head)]
        nan = float("nan")
        for r in result["conv"]:
            sg, t32, t64 = r["sgemm_gflops"], r.get("torch_float32_gflops"), \
                r.get("torch_float64_gflops")
            f32 = r["parconv_float32_gflops"]
            lines.append(
                f"{r['layer']:<26}{r['threads']:>4}{r['method_float32']:>8}{f32:>7.1f}"
                f"{(t32 or nan):>7.1f}{(f32 / t32 if t32 else nan):>7.2f}{sg:>7.1f}"
                f"{f32 / sg:>7.2f}{r['parconv_float64_gflops']:>7.1f}{(t64 or nan):>8.1f}"
                f"{r['dgemm_gflops']:>7.1f}{r['parconv_int8_gflops']:>7.1f}"
                f"{r['parconv_int8_gflops'] / f32:>7.2f}")
        fused = [f"{r['layer']} @ {r['threads']}" for r in result["conv"]
                 if r.get("transforms_float32") == "numba"]
        lines.append("float32 Winograd transforms compiled by numba (parconv.jit) on: "
                     + (", ".join(fused) if fused else "none (numpy transforms everywhere)"))
        on_mkl = [f"{r['layer']} @ {r['threads']}" for r in result["conv"]
                  if r.get("products_float32") == "mkl"]
        lines.append("float32 products on MKL's sequential GEMM (parconv.blas_mkl) on: "
                     + (", ".join(on_mkl) if on_mkl else "none (numpy's BLAS everywhere)"))
        int8 = [f"{r['layer']} @ {r['threads']} ({r['method_int8']})" for r in result["conv"]
                if r.get("compute_int8") == "int8"]
        lines.append("int8 as int8 products with int32 sums on MKL's int8 GEMM "
                     "(parconv.blas_mkl_int) on: "
                     + (", ".join(int8) if int8 else "none (float products in exact groups)"))
    if result["gemmini"]:
        head = (f"{'Gemmini node, int8, 1 thread':<30}{'P':>4}{'search s':>10}{'exec s':>9}"
                f"{'node s':>9}{'numpy s':>9}{'(s+e)/np':>10}{'node/np':>9}{'e/np':>7}"
                f"{'np float s':>11}{'node/npf':>9}{'e/npf':>7}")
        lines += ["", "Gemmini node on a fresh block (no cached tiling, shape caches cleared; "
                  "node = the whole kernel call), best of the rounds; np = the numpy kernel "
                  "as it runs (int8 products where MKL's int8 GEMM is ready), npf = the same "
                  "kernel on float products ($PARCONV_BLAS=numpy)", head, "-" * len(head)]
        nan = float("nan")
        for g in result["gemmini"]:
            lines.append(f"{g['layer']:<30}{g['ranks']:>4}{g['search_s']:>10.3f}"
                         f"{g['execute_s']:>9.3f}{g['node_fresh_s']:>9.3f}{g['numpy_s']:>9.3f}"
                         f"{g['ratio_search_execute']:>10.2f}{g['ratio_with_search']:>9.2f}"
                         f"{g['ratio_execute']:>7.2f}{g.get('numpy_float_products_s') or nan:>11.3f}"
                         f"{g.get('ratio_with_search_float') or nan:>9.2f}"
                         f"{g.get('ratio_execute_float') or nan:>7.2f}")
    lines += ["", "targets:"]
    lines += [f"  {'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['value']:.2f}"
              + (f" (by CPU time {t['value_cpu_time']:.2f}" if "value_cpu_time" in t else "")
              + (f"; first call after the pause {t['value_cold']:.2f}" if "value_cold" in t
                 else "") + (")" if "value_cpu_time" in t else "")
              + (f" (against the numpy kernel on float products, $PARCONV_BLAS=numpy: "
                 f"{t['value_float_products']:.2f})" if "value_float_products" in t else "")
              for t in result["targets"]]
    return "\n".join(lines)


def run(layers=LAYERS, threads=(1, 2), rounds: int = 5, ranks=(1,), gemm_size: int = 1024,
        gemmini: bool = True, conv: bool = True) -> dict:
    """Everything the benchmark measures, as a JSON-ready dict.  Local.

    numba's Winograd kernels are loaded up front (`parconv.jit.preload`), so that the rows show
    the kernel of a process that runs many blocks (a one-shot run loads them only after 2 s of
    Winograd work); the table names the rows that took them."""
    prepare()
    from .jit import preload
    preload()
    start = time.perf_counter()
    conv = [conv_rates(name, batch, t, rounds, gemm_size) for t in threads
            for name, batch in layers] if conv else []
    blocks = [gemmini_block(name, batch, p, rounds) for p in ranks for name, batch in layers] \
        if gemmini else []
    result = {"command": " ".join([Path(sys.executable).name, "-m", "parconv.bench",
                                   *sys.argv[1:]]),
              "machine": machine(), "threads": list(threads), "rounds": rounds,
              "gemm_size": gemm_size, "conv": conv, "gemmini": blocks}
    result["targets"] = targets(conv, blocks)
    result["seconds"] = time.perf_counter() - start
    return result


def main(argv=None) -> int:
    """``python -m parconv.bench [--layers ...] [--threads 1 2] [--rounds 5] [--json PATH]``."""
    parser = argparse.ArgumentParser(prog="python -m parconv.bench", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--layers", nargs="+", metavar="NAME[:BATCH]",
                        help="catalogue layers (default: the five of the kernel issue)")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5, help="best of this many (default 5)")
    parser.add_argument("--ranks", nargs="+", type=int, default=[1],
                        help="Gemmini node on rank 0's block at these P (default 1)")
    parser.add_argument("--no-gemmini", action="store_true")
    parser.add_argument("--only-gemmini", action="store_true",
                        help="the Gemmini node's table only (no GFLOP/s table)")
    parser.add_argument("--gemm-size", type=int, default=1024,
                        help="side of the SGEMM/DGEMM squares (default 1024)")
    parser.add_argument("--json", default=DEFAULT_JSON, help=f"(default {DEFAULT_JSON})")
    args = parser.parse_args(argv)
    try:
        layers = LAYERS if not args.layers else [
            (item.split(":")[0], int(item.split(":")[1]) if ":" in item else 8)
            for item in args.layers]
        for name, _ in layers:
            get_layer(name)
        if min(args.threads) < 1 or args.rounds < 1 or min(args.ranks) < 1:
            raise ParconvError("threads, rounds and ranks must be positive")
    except (ParconvError, ValueError) as exc:
        print(f"parconv.bench: {exc}", file=sys.stderr)
        return 2
    if args.no_gemmini and args.only_gemmini:
        print("parconv.bench: --no-gemmini and --only-gemmini exclude each other",
              file=sys.stderr)
        return 2
    result = run(layers, tuple(args.threads), args.rounds, tuple(args.ranks), args.gemm_size,
                 not args.no_gemmini, not args.only_gemmini)
    print(table(result))
    if args.json:
        print(f"\nwrote {save_json(result, args.json)} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
