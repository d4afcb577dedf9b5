"""Grids an MPI test runs on: every grid of a layer up to a few, else an even sample; and the
grid cover of test_conv_mpi.py::test_every_grid_equals_reference above ALL_PAIRS_UP_TO ranks.

The suite runs at up to 8 oversubscribed ranks on 2 cores, where every distributed call costs
ranks / cores times its CPU time.  Tests that run a layer on each grid sample them (first, last
and evenly spaced, the same on every rank): up to MAX_GRIDS grids per layer at up to
ALL_PAIRS_UP_TO ranks, SPARSE_MAX_GRIDS above.  test_every_grid_equals_reference runs every grid
of every layer up to ALL_PAIRS_UP_TO ranks (1, 2, 3, 4); above (6, 8) it runs `grid_cover`: every
grid of the size on PER_GRID layers that admit it (all of them if fewer), so every grid and
every layer still runs, a grid on layers of different features.
"""

from parconv.plan.dims import dimension_caps, factorizations

#: grids per layer at most, up to ALL_PAIRS_UP_TO ranks
MAX_GRIDS = 6
#: grids per layer at most above ALL_PAIRS_UP_TO ranks
SPARSE_MAX_GRIDS = 4
#: the largest communicator size at which every grid of every layer runs
ALL_PAIRS_UP_TO = 4
#: layers each grid runs on in the cover (above ALL_PAIRS_UP_TO ranks)
PER_GRID = 2


def sampled_grids(size: int, spec, limit: int | None = None) -> list:
    """Every grid of ``spec`` at ``size`` ranks if there are at most ``limit`` (default
    MAX_GRIDS, SPARSE_MAX_GRIDS above ALL_PAIRS_UP_TO ranks), else ``limit`` of them: the
    first, the last and evenly spaced ones."""
    if limit is None:
        limit = MAX_GRIDS if size <= ALL_PAIRS_UP_TO else SPARSE_MAX_GRIDS
    grids = list(factorizations(size, dimension_caps(spec)))
    if len(grids) <= limit:
        return grids
    step = (len(grids) - 1) / (limit - 1)
    return [grids[round(i * step)] for i in range(limit)]


def grid_cover(size: int, layers: dict, per_grid: int = PER_GRID) -> dict:
    """name -> the grids that layer runs on: each grid of ``size`` (over all ``layers``) goes
    to ``per_grid`` layers that admit it, those with the fewest grids so far first (ties in
    name order; the grids fewest layers admit are placed first), so the work spreads evenly; a layer's grids keep the factorisation order.
    Every layer with a grid at this size gets at least one.  The same on every rank."""
    admits = {name: list(factorizations(size, dimension_caps(spec)))
              for name, spec in sorted(layers.items())}
    chosen = {name: set() for name in admits}
    takers = {}
    for name, grids in admits.items():
        for grid in grids:
            takers.setdefault(tuple(grid), []).append(name)
    # the grids fewest layers admit first, so that the others fill the layers left short
    for grid in sorted(takers, key=lambda g: (len(takers[g]), g)):
        for name in sorted(takers[grid], key=lambda n: len(chosen[n]))[:per_grid]:  # stable
            chosen[name].add(grid)
    for name, grids in admits.items():
        if grids and not chosen[name]:
            chosen[name].add(tuple(grids[0]))
    return {name: [g for g in grids if tuple(g) in chosen[name]]
            for name, grids in admits.items()}
