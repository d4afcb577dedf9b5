"""Communication lower bounds of theory.md sections 2-4, in bytes, mixed precision.  Pure, no MPI.

* `work_function` F(X): the most iterations any set of data worth X bytes can feed (section 2),
  solved as a geometric program and certified by duality (parconv.workfn), never below the truth.
* `sequential_bound`: one processor with a fast memory of M bytes (section 3).
* `parallel_bounds`: P processors, memory-independent B_MI and memory-dependent B_MD (section 4).
* `im2col_bound`: the same layer computed as im2col + matrix multiply, for comparison (section 3).

Precisions: p_I = ``spec.p_in``, p_F = ``spec.p_weight``, p_Y = ``spec.p_out`` (stored output, in
the compulsory traffic) and p_O = min(p_acc, p_out) for outputs inside the counting arguments (see
`parconv.workfn.output_bytes`: an output completed in a segment, or on a processor that does not
own it, can be moved at p_out bytes; with the usual p_out = p_acc this is theory.md's p_O).
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from .errors import ParconvError
from .spec import ConvSpec
from .workfn import output_bytes, solve_traffic, solve_work, used_filter_size

__all__ = ["work_function", "closed_form_work", "sequential_bound", "sequential_bound_two_memory",
           "parallel_bounds", "im2col_bound", "busy_processor_footprint", "SequentialBound",
           "ParallelBound"]


# ---- validation -------------------------------------------------------------------------------
def _check_spec(spec) -> ConvSpec:
    if not isinstance(spec, ConvSpec):
        raise ParconvError(f"spec must be a ConvSpec, got {type(spec).__name__}")
    return spec


def _check_bytes(value, name: str) -> float:
    """A memory size or byte budget: a finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value <= 0:
        raise ParconvError(f"{name} must be a finite number of bytes > 0, got {value!r}")
    return float(value)


def _check_ranks(P) -> int:
    if isinstance(P, bool) or not isinstance(P, numbers.Integral) or P < 1:
        raise ParconvError(f"P must be an integer >= 1, got {P!r}")
    return int(P)


def _array_sizes(spec: ConvSpec) -> tuple[int, int, int]:
    """(|I_touched|, |F|, |O|) in elements."""
    return spec.size_input_touched, spec.size_filter, spec.size_output


def _check_owned(spec: ConvSpec, P: int, owned) -> tuple[int, int, int]:
    """Default: the balanced shares ceil(|A_j| / P).  Otherwise three integers with
    ceil(|A_j| / P) <= o_j <= |A_j| (no distribution without replication has a smaller largest
    share, none a larger one)."""
    sizes = _array_sizes(spec)
    low = tuple(-(-a // P) for a in sizes)
    if owned is None:
        return low
    if isinstance(owned, np.ndarray):
        owned = owned.tolist()
    if not isinstance(owned, (tuple, list)) or len(owned) != 3:
        raise ParconvError(f"owned must be three integers (o_I, o_F, o_O), got {owned!r}")
    for j, (o, lo, hi) in enumerate(zip(owned, low, sizes)):
        name = ("o_I (touched input)", "o_F (filter)", "o_O (output)")[j]
        if isinstance(o, bool) or not isinstance(o, numbers.Integral) or not lo <= o <= hi:
            raise ParconvError(f"owned {name} must be an integer in [{lo}, {hi}] "
                               f"(ceil(size / P) to size) for P = {P}, got {o!r}")
    return tuple(int(o) for o in owned)


# ---- work function ----------------------------------------------------------------------------
def work_function(spec: ConvSpec, X: float) -> float:
    """F(X) of theory.md section 2: the largest |V| allowed by (P), (H1), (H2), (L) and
    |V| <= G_eff over (x_I, x_F, x_O) with p_I x_I + p_F x_F + p_O x_O <= X, x_j <= |A_j|.

    Local.  Solved in log variables; the value is a dual (upper) certificate, so it is never below
    the true maximum (and exceeds it by about 1e-12 relative).  Cached on (spec, X).

    Raises
    ------
    ParconvError
        If X is not a finite number > 0.
    """
    _check_spec(spec)
    return solve_work(spec, _check_bytes(X, "X")).value


def closed_form_work(spec: ConvSpec, X: float) -> dict:
    """The two closed-form upper bounds on F(X) of theory.md section 2 (AM-GM on (H1), (H2)).

    ``small_filter = rho^(1/2) (X/3)^(3/2) / (p_I p_F p_O)^(1/2)``,
    ``large_filter = (X/3)^2 / (p_I p_F p_O)^(2/3)``.  Local.
    """
    _check_spec(spec)
    X = _check_bytes(X, "X")
    ppp = spec.p_in * spec.p_weight * output_bytes(spec)
    return {"small_filter": math.sqrt(spec.rho) * (X / 3.0) ** 1.5 / math.sqrt(ppp),
            "large_filter": (X / 3.0) ** 2 / ppp ** (2.0 / 3.0)}


def _segments(work: float, M: float, per_segment: float) -> float:
    """M (ceil(work / F(3M)) - 1), 0 when no work (theory.md section 3)."""
    if work <= 0 or per_segment <= 0:
        return 0.0
    return M * max(math.ceil(work / per_segment) - 1, 0)


# ---- sequential -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SequentialBound:
    """Lower bound on the bytes moved between slow memory and a fast memory of M bytes.

    ``value`` is the maximum of the other terms; all are bytes (theory.md section 3).  ``binding``
    names the largest term; when it is the segment term it names the inequality family active at
    the optimum of F(3M): 'small-filter' if the (H1) row has the smallest slack (ties included),
    'large-filter' if a (P) or (H2) row has a strictly smaller slack.
    """

    value: float
    compulsory: float
    segment: float
    small_filter: float
    large_filter: float
    binding: str
    M: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def sequential_bound(spec: ConvSpec, M: float) -> SequentialBound:
    """W_seq >= max(compulsory, M (ceil(G_eff / F(3M)) - 1), closed forms) (theory.md section 3).

    Local.  compulsory = p_I |I_touched| + p_F |F_used| + p_Y |O|, with |F_used| = |F| unless
    some filter tap only ever meets padding (`parconv.workfn.used_filter_size`);
    small_filter = G_eff (p_I p_F p_O)^(1/2) / (rho^(1/2) M^(1/2)) - M;
    large_filter = G_eff (p_I p_F p_O)^(2/3) / M - M (both clipped at 0).  The closed forms never
    exceed the segment term (F(3M) is at most either closed form of F); they are kept as checks.

    Raises
    ------
    ParconvError
        If M is not a finite number of bytes > 0.
    """
    _check_spec(spec)
    M = _check_bytes(M, "M")
    ppp = spec.p_in * spec.p_weight * output_bytes(spec)
    compulsory = float(spec.p_in * spec.size_input_touched
                       + spec.p_weight * used_filter_size(spec) + spec.p_out * spec.size_output)
    solution = solve_work(spec, 3.0 * M)
    segment = _segments(spec.G_eff, M, solution.value)
    small = max(0.0, spec.G_eff * math.sqrt(ppp) / math.sqrt(spec.rho * M) - M)
    large = max(0.0, spec.G_eff * ppp ** (2.0 / 3.0) / M - M)
    terms = {"compulsory": compulsory, "small-filter": small, "large-filter": large}
    slack = solution.slack
    if slack and slack["H1"] <= min(slack["P"], slack["H2"]):
        terms["segment:small-filter"] = segment
    else:
        terms["segment:large-filter"] = segment
    binding = max(terms, key=lambda key: (terms[key], key == "compulsory"))
    return SequentialBound(value=max(terms.values()), compulsory=compulsory, segment=segment,
                           small_filter=small, large_filter=large,
                           binding=binding.removeprefix("segment:"), M=M)


def sequential_bound_two_memory(spec: ConvSpec, M_scratch: float, M_acc: float) -> SequentialBound:
    """The sequential bound for a scratchpad of M_scratch bytes (inputs, filters) and an
    accumulator of M_acc bytes (partial sums): the one-memory bound with M = M_scratch + M_acc,
    valid because a schedule on the two memories is a schedule on their union (theory.md
    section 3).  Local.

    Raises
    ------
    ParconvError
        If either size is not a finite number of bytes > 0.
    """
    total = _check_bytes(M_scratch, "M_scratch") + _check_bytes(M_acc, "M_acc")
    return sequential_bound(spec, total)


def im2col_bound(spec: ConvSpec, M: float) -> float:
    """Sequential lower bound (bytes) of the im2col + matrix-multiply route for the same layer.

    Local.  The GEMM (N H W) x (C R S) x K reads the im2col matrix A (N H W C R S elements of p_I
    bytes, padding zeros included because they are stored) and performs all G = N K C H W R S
    multiply-adds.  With the Loomis-Whitney work function
    F_mm(X) = (X/3)^(3/2) / (p_I p_F p_O)^(1/2) (theory.md section 2 with rho = 1 and A in place
    of the input) the segment argument of section 3 gives

        W_im2col >= max(p_I |A| + p_F |F| + p_Y |O|,  M (ceil(G / F_mm(3M)) - 1)).

    Building A from the input (reading |I_touched|, writing |A|) costs more and is not counted, so
    this is a lower bound on that route.

    Raises
    ------
    ParconvError
        If M is not a finite number of bytes > 0.
    """
    _check_spec(spec)
    M = _check_bytes(M, "M")
    h, w = spec.out_size
    r, s = spec.kernel_size
    im2col_elements = spec.batch * h * w * spec.in_channels * r * s
    compulsory = float(spec.p_in * im2col_elements + spec.p_weight * spec.size_filter
                       + spec.p_out * spec.size_output)
    ppp = spec.p_in * spec.p_weight * output_bytes(spec)
    per_segment = M ** 1.5 / math.sqrt(ppp)  # F_mm(3M)
    return max(compulsory, _segments(spec.G, M, per_segment))


# ---- parallel ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ParallelBound:
    """Lower bound on the busiest processor's volume (received input and filter bytes plus sent
    partial-sum bytes), theory.md section 4."""

    B_MI: float
    B_MD: float
    binding: str
    value: float
    P: int
    M: float | None
    owned: tuple[int, int, int]

    def to_dict(self) -> dict:
        return {"B_MI": self.B_MI, "B_MD": self.B_MD, "binding": self.binding,
                "value": self.value, "P": self.P, "M": self.M, "owned": list(self.owned)}


def parallel_bounds(spec: ConvSpec, P: int, M: float | None = None, owned=None) -> ParallelBound:
    """max(B_MI, B_MD) for P processors (theory.md section 4).  Local.

    B_MI = min over x of sum_j p_j (x_j - o_j) subject to the section-2 inequalities at
    |V| = ceil(G_eff / P) and o_j <= x_j <= |A_j|: a convex program in log variables, solved with a
    dual certificate so the value is never above the true minimum; 0 when the busy processor can
    work inside what it owns.  B_MD = M (ceil(ceil(G_eff / P) / F(3M)) - 1), 0 when M is None
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
    _check_spec(spec)
    P = _check_ranks(P)
    M = None if M is None else _check_bytes(M, "M")
    owned = _check_owned(spec, P, owned)
    work = -(-spec.G_eff // P)
    p = (spec.p_in, spec.p_weight, output_bytes(spec))
    # filter elements that only ever meet padding are never needed: owning them saves nothing
    usable = (owned[0], min(owned[1], used_filter_size(spec)), owned[2])
    owned_bytes = sum(pj * oj for pj, oj in zip(p, usable))
    B_MI = max(0.0, solve_traffic(spec, work, usable).value - owned_bytes)
    B_MD = 0.0 if M is None else _segments(work, M, solve_work(spec, 3.0 * M).value)
    binding = "memory-dependent" if B_MD > B_MI else "memory-independent"
    return ParallelBound(B_MI=B_MI, B_MD=B_MD, binding=binding, value=max(B_MI, B_MD), P=P, M=M,
                         owned=owned)


def busy_processor_footprint(spec: ConvSpec, P: int, owned=None) -> tuple[float, float, float]:
    """(x_I, x_F, x_O) at the optimum of B_MI's program (elements, not rounded).  Local.

    Shows where the bound puts the busy processor: e.g. x_F = |F| when the whole filter is cheaper
    to replicate than any alternative (the usual CNN case).
    """
    _check_spec(spec)
    P = _check_ranks(P)
    o_I, o_F, o_O = _check_owned(spec, P, owned)
    usable = (o_I, min(o_F, used_filter_size(spec)), o_O)
    return solve_traffic(spec, -(-spec.G_eff // P), usable).x
