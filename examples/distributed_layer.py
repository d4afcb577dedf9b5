# Run: mpirun -n 4 python examples/distributed_layer.py
"""parconv from inside your own mpi4py program: plan a layer, run it on numpy arrays, read the report.

Every rank runs this file.  Rank 0 holds the whole input and filters (as a training script that
loaded them would); parconv hands every rank its blocks, runs the grid algorithm, counts every
byte against the plan's prediction and the lower bound, and gathers the output on rank 0 because
``gather=True`` asks for it.
"""

from __future__ import annotations

import sys

import numpy as np
from mpi4py import MPI

import parconv
from parconv.kernels import reference_conv2d


def main(comm) -> int:
    """Plan, run and check one layer on ``comm``.  Collective over ``comm``; returns 0 on success."""
    spec = parconv.ConvSpec(batch=4, in_channels=32, out_channels=64, in_size=(29, 27),
                            kernel_size=(3, 3), stride=(2, 1), padding=(1, 1),
                            dtype_in="float32", name="example")
    plan = parconv.make_plan(spec, comm.Get_size())        # pure: the same on every rank
    x = w = None
    if comm.Get_rank() == 0:
        rng = np.random.default_rng(0)
        x = rng.standard_normal(spec.input_shape).astype(np.float32)
        w = rng.standard_normal(spec.weight_shape).astype(np.float32)
        print(plan.table())
    result = parconv.distributed_conv2d(comm, spec, x=x, w=w, plan=plan, node="numpy",
                                        gather=True)
    if comm.Get_rank() == 0:
        report = result.report
        error = float(np.abs(result.output - reference_conv2d(spec, x, w)).max())
        ratio = report["ratio_to_bound"]      # None when the lower bound is 0
        print(f"grid {report['grid']}, busiest rank moved {max(report['bytes']['bound_volume'])} B, "
              f"bound {report['bound']['value']:.0f} B, ratio "
              f"{'n/a' if ratio is None else f'{ratio:.3f}'}, "
              f"max |error| vs a serial reference {error:.2e}")
        ok = error <= 1e-4 * float(np.abs(result.output).max())
    else:
        ok = True
    return 0 if comm.allreduce(ok, op=MPI.LAND) else 1


if __name__ == "__main__":
    sys.exit(main(MPI.COMM_WORLD))
