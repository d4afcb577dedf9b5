"""`Plan`, what the planner returns: a chosen grid with every rank's predicted bytes, schedules,
footprints, the balanced start and the bound (docs/theory.md section 5, docs/design.md 3).  Pure,
no MPI: a plan answers for any rank number, never a communicator.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property

import numpy as np

from ..errors import ParconvError
from ..spec import ConvSpec
from .balance import (final_layout, layout_elements, make_balance, make_output_balance,
                      predict_balance, rank_layout)
from .dims import GridDims
from .footprint import STAGES
from .predict import (ALIGNED, BALANCE_PHASES, PHASES, RECEIVED_BOUND_PHASES, SENT_BOUND_PHASES,
                      GridPrediction, owned_piece_sizes)
from .schedule import RankSchedule, rank_schedule
from .text import plan_table

BOUND_PHASES = RECEIVED_BOUND_PHASES + SENT_BOUND_PHASES
#: schedules a plan keeps (most recent ranks)
SCHEDULE_CACHE = 8


@dataclasses.dataclass(frozen=True)
class Plan:
    """A chosen grid with every rank's predicted bytes and the parallel lower bound.

    ``bound`` is the problem's bound: balanced shares ceil(|A_j| / P) for the total P, idle ranks
    included (theory.md 4.2), so it depends on the layer, P and the memory only.  ``layout_bound``
    is the same bound with the chosen layout's largest owned shares (valid for this layout, and
    lower where its blocks are uneven).
    """

    spec: ConvSpec
    ranks: int
    dims: GridDims
    memory: int
    prediction: GridPrediction
    bound: object
    baselines: dict
    forced: bool
    grids_evaluated: int
    planning_time_s: float
    #: elements each active rank owns at the start (``input``, ``filter``, ``bias``) and the
    #: end (``output``) of a run (predict.owned_piece_sizes), for the scatter / gather phases
    owned_elements: dict = dataclasses.field(default=None, repr=False)
    #: the node kernel the footprint was budgeted for (parconv.plan.footprint.node_name)
    node: str = "numpy"
    #: B_MI / B_MD with the chosen layout's own largest owned shares (``bound`` is the problem's)
    layout_bound: object = None
    #: how the input rows (H) and columns (W) are owned: "aligned" or "centred" each
    #: (parconv.plan.blocks.OWNERSHIPS)
    ownership: tuple = ALIGNED

    #: caches derived from the fields, left out when a plan is pickled (broadcast)
    _DERIVED = ("_schedules", "predicted", "predicted_bound_volume", "footprints", "balance",
                "predicted_balance", "predicted_unbalanced_bound_volume", "initial_elements",
                "output_balance")

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in self._DERIVED}

    def __post_init__(self):
        if self.owned_elements is None:
            object.__setattr__(self, "owned_elements",
                               owned_piece_sizes(self.spec, self.dims.as_tuple(),
                                                 self.ownership))

    # ---- ranks ------------------------------------------------------------------------------
    @property
    def active(self) -> int:
        return self.dims.size

    def is_active(self, rank: int) -> bool:
        return 0 <= rank < self.active

    def coords(self, rank: int) -> tuple[int, int, int, int, int]:
        """Grid coordinates (a, b, c, d, e) of an active rank (row-major over N, K, C, H, W)."""
        if not self.is_active(rank):
            raise ParconvError(f"rank {rank} is idle in a plan with {self.active} active ranks")
        return tuple(int(v) for v in np.unravel_index(rank, self.dims.as_tuple()))

    def rank_of(self, coords) -> int:
        return int(np.ravel_multi_index(tuple(coords), self.dims.as_tuple()))

    def schedule(self, rank: int) -> RankSchedule | None:
        """The blocks, pieces and exchange schedules of ``rank`` (None when idle).

        Built for that rank alone (parconv.plan.schedule) and kept: the engine asks for its own
        rank's schedule several times.  The few most recent ranks are kept, so a serial loop
        over all ranks holds O(1) schedules."""
        if not self.is_active(rank):
            return None
        cache = self.__dict__.setdefault("_schedules", {})
        rank = int(rank)
        if rank not in cache:
            if len(cache) >= SCHEDULE_CACHE:
                cache.pop(next(iter(cache)))
            cache[rank] = rank_schedule(self.spec, self.dims, rank, self.coords(rank),
                                        self.ownership)
        return cache[rank]

    # ---- predictions ------------------------------------------------------------------------
    def _pad(self, values: np.ndarray) -> np.ndarray:
        out = np.zeros(self.ranks, dtype=np.int64)
        out[:self.active] = values
        return out

    @cached_property
    def predicted(self) -> dict:
        """``predicted[phase][key]``: bytes sent / received and messages per rank (length P),
        for BALANCE_PHASES (run when the run starts balanced) and PHASES."""
        out = {phase: {key: np.asarray(v, dtype=np.int64) for key, v in
                       self.prediction.balance[phase].items()} for phase in BALANCE_PHASES}
        out.update({phase: {key: self._pad(v) for key, v in self.prediction.phases[phase].items()}
                    for phase in PHASES})
        return out

    @cached_property
    def predicted_bound_volume(self) -> np.ndarray:
        """Per rank (length P): the bound-comparable volume of a run from the balanced layout."""
        return self._pad(self.prediction.bound_volume)

    @cached_property
    def predicted_unbalanced_bound_volume(self) -> np.ndarray:
        """The same for a run that starts from the work pieces (user-given ``blocks``)."""
        return self._pad(self.prediction.unbalanced_bound_volume)

    @property
    def max_volume(self) -> int:
        return int(self.predicted_bound_volume.max())

    @property
    def ratio_to_bound(self) -> float | None:
        """Largest bound-comparable volume over max(B_MI, B_MD); None when the bound is 0."""
        return self.max_volume / self.bound.value if self.bound.value > 0 else None

    @cached_property
    def predicted_scatter(self) -> dict:
        """`predict_scatter` from rank 0, the default root."""
        return self.predict_scatter(0)

    @cached_property
    def predicted_gather(self) -> dict:
        """`predict_gather` to rank 0, the default root."""
        return self.predict_gather(0)

    def predict_scatter(self, root: int = 0) -> dict:
        """Bytes of handing every rank its initial layout (the balanced one,
        `initial_layout`) of input, filter and bias from ``root`` (``{"sent", "received",
        "messages"}``, arrays of length P).  Needs every rank's layout (`initial_elements`,
        O(P) schedules, made on first use): the scatter from a root is O(P) by nature."""
        if root == 0 and "predicted_scatter" in self.__dict__:
            return self.predicted_scatter
        weights = {"input": self.spec.p_in, "filter": self.spec.p_weight,
                   "bias": self.spec.p_bias}
        return self._root_phase(root, weights, outward=True, elements=self.initial_elements)

    def predict_gather(self, root: int = 0, balanced: bool = True) -> dict:
        """Bytes of collecting every rank's owned output (stored type) on ``root``: its part of
        the balanced final layout (`final_layout`), or with ``balanced=False`` (a run from
        user-given work pieces, no "balance_out") its output piece (``owned_elements``)."""
        if root == 0 and balanced and "predicted_gather" in self.__dict__:
            return self.predicted_gather
        elements = {"output": (self.output_balance.owned_all if balanced
                               else self._pad(self.owned_elements["output"]))}
        return self._root_phase(root, {"output": self.spec.p_out}, outward=False,
                                elements=elements)

    def _root_phase(self, root, weights, outward, elements=None):
        """Root-to-all (``outward``) or all-to-root traffic: one message per peer and phase."""
        if not 0 <= root < self.ranks:
            raise ParconvError(f"root {root} outside [0, {self.ranks})")
        elements = ({k: self._pad(v) for k, v in self.owned_elements.items()}
                    if elements is None else elements)    # initial_elements: all P ranks
        per_peer = sum(elements[name] * weight for name, weight in weights.items())
        per_peer[root] = 0
        sent, received, messages = (np.zeros(self.ranks, dtype=np.int64) for _ in range(3))
        if outward:
            sent[root], received[:] = per_peer.sum(), per_peer
            messages[root] = np.count_nonzero(per_peer)
        else:
            received[root], sent[:] = per_peer.sum(), per_peer
            messages[:] = per_peer > 0
        return {"sent": sent, "received": received, "messages": messages}

    # ---- balanced start (parconv.plan.balance) ---------------------------------------------
    @cached_property
    def balance(self) -> dict:
        """The `Balance` of input, filter and bias over all P ranks (idle ones included): each
        owns at most ceil(T / P) touched elements of each array initially."""
        return make_balance(self.spec, self.prediction.work_touched, self.ranks)

    @cached_property
    def predicted_balance(self) -> dict:
        """Bytes and messages of the "balance" phase that moves surpluses to their workers."""
        return predict_balance(self.balance)

    @cached_property
    def output_balance(self):
        """The `Balance` of the output over all P ranks: each owns at most ceil(|O| / P) outputs
        at the end (phase "balance_out" moves the surplus of larger pieces)."""
        return make_output_balance(self.spec, self.owned_elements["output"], self.ranks)

    def final_layout(self, rank: int) -> dict:
        """What ``rank`` owns at the end of a balanced run and moves in "balance_out"
        (`parconv.plan.balance.final_layout`)."""
        return final_layout(self.output_balance, self.schedule, rank)

    def initial_layout(self, rank: int) -> dict:
        """What ``rank`` owns in the balanced layout and moves in the balance phase
        (`parconv.plan.balance.rank_layout`)."""
        return rank_layout(self.balance, self.schedule, rank)

    @cached_property
    def initial_elements(self) -> dict:
        """Elements (touched or not) of input, filter and bias each of the P ranks owns in the
        balanced layout (`parconv.plan.balance.layout_elements`; O(P) schedules, for the root
        scatter's prediction only)."""
        return layout_elements(self.balance, self.schedule, self.ranks)

    # ---- memory -------------------------------------------------------------------------------
    def footprint(self, rank: int) -> dict | None:
        """What ``rank`` allocates, as named terms: ``{"node", "total", "stage", "terms"}``
        (bytes; parconv.plan.footprint); None when idle."""
        if not self.is_active(rank):
            return None
        return self.prediction.memory.for_rank(rank)

    @cached_property
    def footprints(self) -> dict:
        """Every rank's footprint (lists of length P, zero on idle ranks): ``total``,
        ``stage`` (None on idle ranks) and ``terms``."""
        memory = self.prediction.memory
        stages = [tuple(STAGES)[int(i)] for i in memory.stage] + [None] * (self.ranks - self.active)
        return {"node": memory.node, "total": self._pad(memory.total).tolist(), "stage": stages,
                "terms": {name: self._pad(v).tolist() for name, v in memory.terms.items()}}

    # ---- presentation -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready, with the run report's keys where they apply."""
        busiest = int(np.argmax(self.predicted_bound_volume))
        return {
            "spec": self.spec.to_dict(), "ranks": self.ranks, "active_ranks": self.active,
            "grid": self.dims.as_dict(), "grid_forced": self.forced, "memory": self.memory,
            "ownership": dict(zip(("H", "W"), self.ownership)),
            "bound": self.bound.to_dict(),
            "layout_bound": (None if self.layout_bound is None
                             else self.layout_bound.to_dict()),
            # the run report's place; the top-level key below is an alias kept for one release
            "bytes": {"predicted_bound_volume": self.predicted_bound_volume.tolist()},
            "predicted_bound_volume": self.predicted_bound_volume.tolist(),
            "max_volume": self.max_volume, "busiest_rank": busiest,
            "ratio_to_bound": self.ratio_to_bound,
            "predicted_bytes": {phase: {k: v.tolist() for k, v in d.items()}
                                for phase, d in self.predicted.items()},
            "footprint_max": int(self.prediction.footprint.max()),
            "footprint": self.footprints,
            "owned_max": dict(zip(("input", "filter", "output"), self.prediction.owned)),
            "baselines": self.baselines,
            "grids_evaluated": self.grids_evaluated,
            "planning_time_s": self.planning_time_s,
        }

    def table(self) -> str:
        return plan_table(self)
