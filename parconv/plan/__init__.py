"""The plan of a distributed convolution (docs/theory.md section 5, docs/design.md).  Pure, no MPI.

* `blocks`: balanced blocks, owned input rows, flat pieces, hyperslab boxes;
* `axis`: the geometry of one spatial axis split into blocks (needed rows, halos);
* `dims`: `GridDims` (P_N x P_K x P_C x P_H x P_W) and the factorisations of P;
* `predict`: every rank's bytes per phase for one grid, vectorised over the ranks;
* `schedule`: `RankSchedule`, what one rank holds and exchanges;
* `planner`: `make_plan`, the grid search;
* `result`: the `Plan` it returns (per-rank predictions, schedules, footprints, bound);
* `text`, `cli`: the terminal table and ``python -m parconv.plan``.
"""

from .dims import AXES, GridDims
from .planner import DEFAULT_MEMORY, make_plan, parse_memory
from .result import BOUND_PHASES, Plan
from .predict import PHASES
from .schedule import RankSchedule

__all__ = ["make_plan", "Plan", "RankSchedule", "GridDims", "AXES", "PHASES", "BOUND_PHASES",
           "DEFAULT_MEMORY", "parse_memory"]
