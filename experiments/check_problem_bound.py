# python experiments/check_problem_bound.py
"""Item 1 of issue 8: the problem's bound (balanced shares, idle ranks included, polyphase bound
included) is never above the planned busiest volume.

Plans, with the automatic grid: ResNet-50 and VGG-16 at batch 32 on P = 8, 64, 512, 4096, every
layer of tests/test_plan.py::AWKWARD and of tests/mpi/test_conv_mpi.py::LAYERS at every P in
1..64, and the 7x7 stride-2 layer N=16, C=3, K=32, 100x80 at P = 24; and every forced grid of the
MPI test layers at P = 1..8.  Prints every violation and the counts.
"""
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from parconv.layers import get_layer, layer_names  # noqa: E402
from parconv.plan import make_plan  # noqa: E402
from parconv.plan.dims import dimension_caps, factorizations  # noqa: E402
from parconv.spec import ConvSpec  # noqa: E402
from test_plan import AWKWARD  # noqa: E402


def mpi_layers() -> dict:
    """The LAYERS table of the MPI tests, read from its source (importing it needs mpi4py)."""
    src = open(os.path.join(ROOT, "tests", "mpi", "test_conv_mpi.py")).read()
    start = src.index("LAYERS = {")
    namespace = {"ConvSpec": ConvSpec}
    exec(src[start:src.index("}\n", start) + 2], namespace)
    return namespace["LAYERS"]


def main() -> int:
    started = time.time()
    mpi = list(mpi_layers().values())
    jobs = [(get_layer(n, batch=32), P, None) for n in layer_names("resnet50.") +
            layer_names("vgg16.") for P in (8, 64, 512, 4096)]
    jobs += [(s, P, None) for s in AWKWARD + mpi for P in range(1, 65)]
    jobs += [(ConvSpec(batch=16, in_channels=3, out_channels=32, in_size=(100, 80),
                       kernel_size=7, stride=2, padding=3), 24, None)]
    jobs += [(s, P, tuple(g)) for s in mpi for P in range(1, 9)
             for g in factorizations(P, dimension_caps(s))]
    violations = 0
    for spec, P, grid in jobs:
        plan = make_plan(spec, P, grid=grid)
        if plan.max_volume < plan.bound.value * (1 - 1e-9):
            violations += 1
            print(f"VIOLATION {spec.describe()} P={P} grid {plan.dims}: volume {plan.max_volume}"
                  f" < bound {plan.bound.value:.1f} (layout bound {plan.layout_bound.value:.1f})")
    print(f"{len(jobs)} plans checked, {violations} violations, {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
