"""Grids an MPI test runs on: every grid of a layer up to a few, else an even sample.

The suite runs at up to 8 oversubscribed ranks on 2 cores; tests that run a layer on each grid
sample them there (first, last and evenly spaced, the same on every rank), while
test_conv_mpi.py::test_every_grid_equals_reference still runs every grid.
"""

from parconv.plan.dims import dimension_caps, factorizations

#: grids per layer at most
MAX_GRIDS = 6


def sampled_grids(size: int, spec, limit: int = MAX_GRIDS) -> list:
    grids = list(factorizations(size, dimension_caps(spec)))
    if len(grids) <= limit:
        return grids
    step = (len(grids) - 1) / (limit - 1)
    return [grids[round(i * step)] for i in range(limit)]
