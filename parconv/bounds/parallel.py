"""Parallel lower bounds of theory.md section 4: the busiest of P processors, in bytes.  Pure.

* `parallel_bounds`: memory-independent B_MI (a convex program in log variables with a dual
  certificate) and memory-dependent B_MD (the segment argument on one processor's share).
* `busy_processor_footprint`: where B_MI's optimum puts the busy processor.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

from ..spec import ConvSpec
from .checks import check_bytes, check_owned, check_ranks, check_spec
from .halo import halo_term
from .polyphase import (WEIGHT_EXPONENTS, is_strided, polyphase_program, polyphase_traffic,
                        polyphase_work)
from .sequential import best_segment, segments, term_upper
from .traffic import solve_traffic
from .workfn import layer_program, output_bytes, solve_work, used_filter_size

__all__ = ["parallel_bounds", "busy_processor_footprint", "ParallelBound"]


@dataclasses.dataclass(frozen=True)
class ParallelBound:
    """Lower bound on the busiest processor's volume (received input and filter bytes plus sent
    partial-sum bytes), theory.md section 4.

    B_MI and B_MD are the larger of the section-4 value (``*_plain``) and the polyphase value
    (``*_polyphase``, docs/theory.md 4.7; 0 for a layer with one phase); B_MI also of the halo
    value (``B_MI_halo``, docs/theory.md 4.8; 0 where it does not apply)."""

    B_MI: float
    B_MD: float
    binding: str
    value: float
    P: int
    M: float | None
    owned: tuple[int, int, int]
    B_MI_plain: float = 0.0
    B_MD_plain: float = 0.0
    B_MI_polyphase: float = 0.0
    B_MD_polyphase: float = 0.0
    B_MI_halo: float = 0.0

    @property
    def B_MI_term(self) -> str:
        """Which value B_MI is: 'section 4', 'polyphase' or 'halo' (the first of equals)."""
        values = {"section 4": self.B_MI_plain, "polyphase": self.B_MI_polyphase,
                  "halo": self.B_MI_halo}
        return max(values, key=values.get)

    def to_dict(self) -> dict:
        return {"B_MI": self.B_MI, "B_MD": self.B_MD, "binding": self.binding,
                "value": self.value, "P": self.P, "M": self.M, "owned": list(self.owned),
                "B_MI_plain": self.B_MI_plain, "B_MD_plain": self.B_MD_plain,
                "B_MI_polyphase": self.B_MI_polyphase, "B_MD_polyphase": self.B_MD_polyphase,
                "B_MI_halo": self.B_MI_halo, "B_MI_term": self.B_MI_term}


def parallel_bounds(spec: ConvSpec, P: int, M: float | None = None, owned=None) -> ParallelBound:
    """max(B_MI, B_MD) for P processors (theory.md section 4), each the larger of its section-4
    value and its polyphase value on a strided or dilated layer (docs/theory.md 4.7), B_MI also
    of its halo value on a 3x3 stride-1 layer (docs/theory.md 4.8).  Local.

    B_MI = min over x of sum_j p_j (x_j - o_j) subject to the section-2 inequalities at
    |V| = ceil(G_eff / P) and o_j <= x_j <= |A_j|: a convex program in log variables, solved with a
    dual certificate so the value is never above the true minimum; 0 when the busy processor can
    work inside what it owns.  B_MD = max_S S (ceil(ceil(G_eff / P) / F(2M + S)) - 1) over the
    segment lengths of `parconv.bounds.sequential.segment_lengths`, 0 when M is None
    (the busy processor does at least ceil(G_eff / P) iterations, an integer, hence the inner
    ceiling, slightly stronger than theory.md's G_eff / P and equally valid).

    Parameters
    ----------
    spec : ConvSpec
    P : int
        Number of processors, >= 1.
    M : float, optional
        Memory per processor in bytes.
    owned : (int, int, int), optional
        (o_I, o_F, o_O): the largest number of touched input, filter and output elements any rank
        owns; default the balanced shares ceil(|A_j| / P).

    Raises
    ------
    ParconvError
        On P < 1, a non-positive M, or owned outside [ceil(|A_j| / P), |A_j|].
    """
    check_spec(spec)
    P = check_ranks(P)
    M = None if M is None else check_bytes(M, "M")
    owned = check_owned(spec, P, owned)
    work = -(-spec.G_eff // P)
    p = (spec.p_in, spec.p_weight, output_bytes(spec))
    # filter elements that only ever meet padding are never needed: owning them saves nothing
    usable = (owned[0], min(owned[1], used_filter_size(spec)), owned[2])
    owned_bytes = sum(pj * oj for pj, oj in zip(p, usable))
    B_MI_plain = max(0.0, solve_traffic(spec, work, usable).value - owned_bytes)
    B_MD_plain = 0.0
    if M is not None and spec.G_eff > 0:
        screen, refine = term_upper(layer_program(spec), work, M)
        B_MD_plain = best_segment(
            M, lambda S: segments(work, S, solve_work(spec, 2.0 * M + S).value), screen,
            refine=lambda S: refine((S,))[0])[0]
    B_MI_poly = B_MD_poly = 0.0
    if spec.G_eff > 0 and is_strided(spec):
        for e in WEIGHT_EXPONENTS:
            B_MI_poly = max(B_MI_poly, polyphase_traffic(spec, e, P, usable) - owned_bytes)
            if M is not None:
                prog, total = polyphase_program(spec, e)
                share = partial(_polyphase_share, spec, e, P, M)
                screen, refine = term_upper(prog, math.exp(total) / P, M)
                B_MD_poly = max(B_MD_poly, best_segment(
                    M, share, screen, refine=lambda S: refine((S,))[0])[0])
    B_MI_halo = max(0.0, halo_term(spec, work, usable) - owned_bytes)
    B_MI, B_MD = max(B_MI_plain, B_MI_poly, B_MI_halo), max(B_MD_plain, B_MD_poly)
    binding = "memory-dependent" if B_MD > B_MI else "memory-independent"
    return ParallelBound(B_MI=B_MI, B_MD=B_MD, binding=binding, value=max(B_MI, B_MD), P=P, M=M,
                         owned=owned, B_MI_plain=B_MI_plain, B_MD_plain=B_MD_plain,
                         B_MI_polyphase=B_MI_poly, B_MD_polyphase=B_MD_poly, B_MI_halo=B_MI_halo)


def busy_processor_footprint(spec: ConvSpec, P: int, owned=None) -> tuple[float, float, float]:
    """(x_I, x_F, x_O) at the optimum of B_MI's program (elements, not rounded).  Local.

    Shows where the bound puts the busy processor: e.g. x_F = |F| when the whole filter is cheaper
    to replicate than any alternative (the usual CNN case).
    """
    check_spec(spec)
    P = check_ranks(P)
    o_I, o_F, o_O = check_owned(spec, P, owned)
    usable = (o_I, min(o_F, used_filter_size(spec)), o_O)
    return solve_traffic(spec, -(-spec.G_eff // P), usable).x


def _polyphase_share(spec: ConvSpec, exponent: float, P: int, M: float, S: int) -> float:
    """The busy processor's polyphase segment term at length S (weighted work T_y(all) / P)."""
    per_segment, total = polyphase_work(spec, exponent, 2.0 * M + S)
    return segments(total / P, S, per_segment)
