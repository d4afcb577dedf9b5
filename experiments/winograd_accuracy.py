"""Float32 error of the Winograd method next to the direct method's, against float64.

Run:  python experiments/winograd_accuracy.py   (writes experiments/results/kernels/winograd_accuracy.json)

Per layer where the Winograd method applies (3x3: F(2x2, 3x3) at stride 1, the polyphase form
at stride 2) and per data case, the largest absolute
error of the float32 result against a float64 computation of the same float32 operands, divided
by the largest |output|: for the direct float32 methods ("taps": nine products of inner
dimension C accumulated; "im2col": one of inner dimension 9 C) and for "winograd"; the ratio is
winograd's error over the smaller direct one.  Data cases: standard normal; uniform [0, 1) (no sign
cancellation); a constant background 100 + N(0, 1) (the input transform cancels it: the worst
case found).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parconv.blasconv import conv2d_blas  # noqa: E402
from parconv.layers import get_layer  # noqa: E402

LAYERS = (("resnet50.layer1.0.conv2", 8), ("resnet50.layer4.1.conv2", 8),
          ("resnet50.layer2.1.conv2", 8), ("vgg16.conv1_2", 1),
          ("resnet50.layer2.0.conv2", 8), ("resnet50.layer3.0.conv2", 8))   # stride 2
CASES = {"normal": lambda rng, shape: rng.standard_normal(shape),
         "uniform": lambda rng, shape: rng.random(shape),
         "offset 100": lambda rng, shape: 100 + rng.standard_normal(shape)}


def errors(name: str, batch: int, case: str, seed: int = 0) -> dict:
    spec = get_layer(name, batch=batch, dtype="float32")
    rng = np.random.default_rng(seed)
    x = CASES[case](rng, spec.input_shape).astype(np.float32)
    w = CASES[case](rng, spec.weight_shape).astype(np.float32)
    exact = conv2d_blas(spec.replace(dtype_in="float64", dtype_weight="float64",
                                     dtype_acc="float64"), x.astype(np.float64),
                        w.astype(np.float64), "taps")[0]
    scale = np.abs(exact).max()
    out = {"layer": name, "batch": batch, "case": case}
    for method in ("taps", "im2col", "winograd"):
        y = conv2d_blas(spec, x, w, method)[0]
        out[f"{method}_error"] = float(np.abs(y - exact).max() / scale)
    out["ratio"] = out["winograd_error"] / min(out["taps_error"], out["im2col_error"])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default="experiments/results/kernels/winograd_accuracy.json")
    args = parser.parse_args(argv)
    rows = [errors(name, batch, case) for name, batch in LAYERS for case in CASES]
    print("largest |error| / largest |output|, float32 against float64 on the same operands")
    print(f"{'layer':<26}{'case':>12}{'taps':>11}{'im2col':>11}{'winograd':>11}{'ratio':>7}")
    for r in rows:
        print(f"{r['layer']:<26}{r['case']:>12}{r['taps_error']:>11.2e}{r['im2col_error']:>11.2e}"
              f"{r['winograd_error']:>11.2e}{r['ratio']:>7.2f}")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": "python experiments/winograd_accuracy.py",
                                "rows": rows}, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
