"""Where the time of the C = 3 stem goes (resnet50.conv1, 7x7 stride 2, batch 4, float32).

Side by side in one process at one BLAS thread (best of the rounds, interleaved as in
parconv.bench): torch's whole ``conv2d``; the stem's products alone, as the row bands of the
``im2col`` method compute them (one (64 x 147) @ (147 x 112) product per output row, stacked,
reading overlapping views of the gathered rows), as one (64 x 147) @ (147 x 50176) call, in
cache-sized pieces of columns, and transposed (50176 x 147) @ (147 x 64); the 1024^2 SGEMM; and
parconv's ``im2col`` method by row bands and by blocks of columns of several sizes
(`parconv.blas_methods.COLUMNS_BYTES`).  ``--widths`` instead compares row bands with blocks on
catalogue layers of several output widths, float32 and int8 (what sets
`parconv.blas_methods.ROWS_MIN_WIDTH`).

Run:  OMP_NUM_THREADS=1 python experiments/bench_stem.py [--rounds 7] [--batch 4] [--widths]
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import parconv.blas_methods as blas_methods  # noqa: E402
from parconv.bench import _operands, _torch, interleaved_best, machine  # noqa: E402
from parconv.blas import limit_threads, prepare  # noqa: E402
from parconv.blasconv import conv2d_blas  # noqa: E402
from parconv.layers import get_layer  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--blocks", nargs="+", type=int, default=[512, 1024, 4096, 16384],
                        help="COLUMNS_BYTES of the im2col runs, in KiB")
    parser.add_argument("--widths", action="store_true",
                        help="row bands against blocks on layers of several output widths")
    args = parser.parse_args(argv)
    prepare()
    if args.widths:
        return widths(args.rounds)
    spec = get_layer("resnet50.conv1", batch=args.batch, dtype="float32")
    x, w = _operands(spec)
    (H, W), K = spec.out_size, spec.out_channels
    pixels, depth = spec.batch * H * W, spec.in_channels * 49
    rng = np.random.default_rng(0)
    a = rng.standard_normal((K, depth)).astype(np.float32)
    b = rng.standard_normal((depth, pixels)).astype(np.float32)
    bt, at = np.ascontiguousarray(b.T), np.ascontiguousarray(a.T)
    out, out_t = np.empty((K, pixels), np.float32), np.empty((pixels, K), np.float32)
    square = rng.standard_normal((1024, 1024)).astype(np.float32)
    flops = {"sgemm 1024^2": 2 * 1024 ** 3}
    contenders = {}
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(1)
        xt, wt = torch.from_numpy(x), torch.from_numpy(w)

        def conv():
            with torch.no_grad():
                torch.nn.functional.conv2d(xt, wt, stride=spec.stride, padding=spec.padding)
        contenders["torch conv2d"] = conv
    contenders["sgemm 1024^2"] = lambda: square @ square
    rows = rng.standard_normal(((H - 1) * 2 + 7, depth // 7, W)).astype(np.float32)
    stacked = np.lib.stride_tricks.as_strided(
        rows, shape=(H, depth, W), strides=(2 * rows.strides[0], rows.strides[1], rows.strides[2]))
    y = np.empty((spec.batch, K, H, W), np.float32)

    def per_row():
        for n in range(spec.batch):
            np.matmul(a, stacked, out=y[n].transpose(1, 0, 2))
    contenders["products per row, stacked"] = per_row
    contenders["product, one call"] = lambda: np.matmul(a, b, out=out)
    contenders["product transposed"] = lambda: np.matmul(bt, at, out=out_t)
    for columns in (1024, 4096):
        pieces = [np.ascontiguousarray(b[:, i:i + columns]) for i in range(0, pixels, columns)]

        def chunked(pieces=pieces):
            for piece in pieces:
                np.matmul(a, piece, out=out[:, :piece.shape[1]])
        contenders[f"product, pieces of {columns}"] = chunked
    contenders["im2col, row bands"] = lambda: conv2d_blas(spec, x, w, "im2col", workers=1)
    for kib in args.blocks:
        def method(kib=kib):
            before = blas_methods.COLUMNS_BYTES
            blas_methods.COLUMNS_BYTES = kib << 10
            try:
                _blocks(spec, x, w)
            finally:
                blas_methods.COLUMNS_BYTES = before
        contenders[f"im2col, {kib} KiB blocks"] = method
    with limit_threads(1):
        best = interleaved_best(contenders, args.rounds)
    m = machine()
    print(f"{m['cpu']}, load {m['load_average']}; {'; '.join(m['blas'])}")
    print(f"{'contender':<28}{'ms':>8}{'GFLOP/s':>9}")
    for name, seconds in best.items():
        rate = flops.get(name, 2 * spec.G) / seconds / 1e9
        print(f"{name:<28}{seconds * 1e3:>8.2f}{rate:>9.1f}")
    return 0


def _blocks(spec, x, w):
    """The ``im2col`` method by blocks of columns where it would take row bands."""
    rows_apply = blas_methods.rows_apply
    blas_methods.rows_apply = lambda spec, arith: False
    try:
        return conv2d_blas(spec, x, w, "im2col", workers=1)
    finally:
        blas_methods.rows_apply = rows_apply


#: layers of output widths 112 to 7 (batch)
WIDTH_LAYERS = (("resnet50.conv1", 4), ("resnet50.layer1.0.conv2", 8),
                ("resnet50.layer2.1.conv2", 8), ("resnet50.layer3.0.conv2", 8),
                ("resnet50.layer3.1.conv2", 8), ("resnet50.layer4.1.conv2", 8))


def widths(rounds: int) -> int:
    """Row bands against blocks (both forced, whatever `ROWS_MIN_WIDTH` says), one thread."""
    m = machine()
    print(f"{m['cpu']}, load {m['load_average']}; {'; '.join(m['blas'])}")
    print(f"{'layer':<26}{'dtype':>8}{'W':>5}{'C':>6}{'bands':>8}{'blocks':>8}"
          f"{'bands/blocks':>14}  (GFLOP/s; speed ratio)")
    minimum = blas_methods.ROWS_MIN_WIDTH
    blas_methods.ROWS_MIN_WIDTH = 1
    try:
        for name, batch in WIDTH_LAYERS:
            for dtype in ("float32", "int8"):
                spec = get_layer(name, batch=batch, dtype=dtype)
                x, w = _operands(spec)
                with limit_threads(1):
                    best = interleaved_best(
                        {"bands": lambda: conv2d_blas(spec, x, w, "im2col", workers=1),
                         "blocks": lambda: _blocks(spec, x, w)}, rounds)
                rate = {k: 2 * spec.G / v / 1e9 for k, v in best.items()}
                print(f"{name:<26}{dtype:>8}{spec.out_size[1]:>5}{spec.in_channels:>6}"
                      f"{rate['bands']:>8.1f}{rate['blocks']:>8.1f}"
                      f"{best['blocks'] / best['bands']:>14.2f}", flush=True)
    finally:
        blas_methods.ROWS_MIN_WIDTH = minimum
    return 0


if __name__ == "__main__":
    sys.exit(main())
