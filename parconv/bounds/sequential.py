"""Sequential lower bounds of theory.md sections 2-3, in bytes, mixed precision.  Pure, no MPI.

* `work_function` F(X): the most iterations any set of data worth X bytes can feed (section 2),
  solved as a geometric program and certified by duality (`parconv.bounds.workfn`), never below
  the truth; `closed_form_work`, its two AM-GM upper bounds.
* `sequential_bound`: one processor with a fast memory of M bytes (section 3), its segment terms
  the largest over a menu of segment lengths S (`segment_lengths`, `best_segment`);
  `sequential_bound_two_memory`, a scratchpad and an accumulator.
* `im2col_bound`: the same layer computed as im2col + matrix multiply, for comparison (section 3).

Precisions: p_I = ``spec.p_in``, p_F = ``spec.p_weight``, p_Y = ``spec.p_out`` (stored output, in
the compulsory traffic) and p_O = min(p_acc, p_out) for outputs inside the counting arguments (see
`parconv.bounds.workfn.output_bytes`: an output completed in a segment, or on a processor that does
not own it, can be moved at p_out bytes; with the usual p_out = p_acc this is theory.md's p_O).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from functools import partial

from ..spec import ConvSpec
from .border import reuse_constant, reuse_witness
from .checks import check_bytes, check_spec
from .polyphase import WEIGHT_EXPONENTS, is_strided, polyphase_program, polyphase_work
from .workfn import (feasible_log_work, output_bytes, solve_work, used_filter_size,
                     witness_program)

__all__ = ["work_function", "closed_form_work", "sequential_bound", "sequential_bound_two_memory",
           "sequential_bound_value", "im2col_bound", "segments", "segment_lengths", "best_segment",
           "SEGMENT_FACTORS", "SequentialBound"]


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
    check_spec(spec)
    return solve_work(spec, check_bytes(X, "X")).value


def closed_form_work(spec: ConvSpec, X: float) -> dict:
    """The two closed-form upper bounds on F(X) of theory.md section 2 (AM-GM on (H1), (H2)).

    ``small_filter = kappa^(1/2) (X/3)^(3/2) / (p_I p_F p_O)^(1/2)``,
    ``large_filter = (X/3)^2 / (p_I p_F p_O)^(2/3)``.  Local.
    """
    check_spec(spec)
    X = check_bytes(X, "X")
    ppp = spec.p_in * spec.p_weight * output_bytes(spec)
    return {"small_filter": math.sqrt(reuse_constant(spec)) * (X / 3.0) ** 1.5 / math.sqrt(ppp),
            "large_filter": (X / 3.0) ** 2 / ppp ** (2.0 / 3.0)}


def segments(work: float, length: float, per_segment: float) -> float:
    """length (ceil(work / per_segment) - 1), 0 when no work: the traffic of at least
    ceil(work / per_segment) segments, all but the last of `length` transfers (theory.md 3.3)."""
    if work <= 0 or per_segment <= 0:
        return 0.0
    return length * max(math.ceil(work / per_segment) - 1, 0)


#: Segment lengths S tried by the segment bound, as multiples of M (theory.md 3.3).  Every whole
#: S >= 1 gives a valid bound, so the bound is the largest over this menu; S = 4 M is the
#: small-filter optimum and S = 2 M the large-filter one (3.4), S = M the classical choice.  Steps
#: of 2^(1/2) lose at most a few per cent against the best S (the optimum is flat).
SEGMENT_FACTORS = tuple(2.0 ** (k / 2) for k in range(-2, 15))


def segment_lengths(M: float) -> tuple[int, ...]:
    """The whole segment lengths S >= 1 of `SEGMENT_FACTORS` for a memory of M bytes."""
    return tuple(sorted({max(1, math.floor(M * f)) for f in SEGMENT_FACTORS}))


def best_segment(M: float, term: Callable[[int], float],
                 upper: Callable[[int], float] | None = None,
                 floor: float = 0.0) -> tuple[float, int]:
    """The largest segment term over the lengths S of `segment_lengths`, and its S.

    Local.  ``term(S)`` is the term ``S (ceil(work / F(2M + S)) - 1)`` with F(2M + S) certified
    never below the most work data worth 2M + S bytes can feed: a segment of S transfers executes
    iterations whose data are worth at most the M bytes in fast memory at its start, its S
    transfers and the M at its end (theory.md 3.3).  With ``upper(S)``, a value never below
    ``term(S)``, a length is solved only if its upper value exceeds `floor` and every term found
    so far; the result is then the same maximum when it exceeds `floor`, and (value <= floor, 0)
    otherwise.
    """
    lengths = segment_lengths(M)
    if upper is None:
        order = [(math.inf, S) for S in lengths]
    else:
        order = sorted(((upper(S), S) for S in lengths), reverse=True)
    best, best_S = floor, 0
    for high, S in order:
        if high <= best:
            break
        value = term(S)
        if value > best:
            best, best_S = value, S
    return best, best_S


# ---- sequential -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SequentialBound:
    """Lower bound on the bytes moved between slow memory and a fast memory of M bytes.

    ``value`` is the maximum of the other terms; all are bytes (theory.md section 3).
    ``segment`` is the segment term at its best segment length ``segment_length`` (bytes; 0 when
    the term is 0), ``segment_polyphase`` the polyphase one at ``polyphase_length``.  ``binding``
    names the largest term; when it is the segment term it names the inequality family active at
    the optimum of F(2M + S): 'small-filter' if the (H1) row has the smallest slack (ties
    included), 'large-filter' if a (P) or (H2) row has a strictly smaller slack.
    """

    value: float
    compulsory: float
    segment: float
    small_filter: float
    large_filter: float
    binding: str
    M: float
    segment_polyphase: float = 0.0
    segment_length: int = 0
    polyphase_length: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def sequential_bound(spec: ConvSpec, M: float) -> SequentialBound:
    """W_seq >= max(compulsory, max_S S (ceil(G_eff / F(2M + S)) - 1), closed forms)
    (theory.md section 3).

    Local.  compulsory = p_I |I_touched| + p_F |F_used| + p_Y |O|, with |F_used| = |F| unless
    some filter tap only ever meets padding (`parconv.bounds.workfn.used_filter_size`); the
    segment term is the largest over the segment lengths S of `segment_lengths`;
    small_filter = 2^(1/2) G_eff (p_I p_F p_O)^(1/2) / (kappa^(1/2) M^(1/2)) - 4M (kappa:
    theory.md 2.3.1) and large_filter = (9/8) G_eff (p_I p_F p_O)^(2/3) / M - 2M (both clipped at
    0), the segment term's closed forms at S = 4M and S = 2M: they never exceed it for a whole M.
    On a layer with more than one phase the polyphase segment term
    max_S S (ceil(T_y / F_y(2M + S)) - 1) is added (docs/theory.md 3.9); ``binding`` is then
    'polyphase' when it is the largest.

    Raises
    ------
    ParconvError
        If M is not a finite number of bytes > 0.
    """
    check_spec(spec)
    M = check_bytes(M, "M")
    compulsory, small, large = _closed_terms(spec, M)
    segment, length = best_segment(
        M, lambda S: segments(spec.G_eff, S, solve_work(spec, 2.0 * M + S).value))
    terms = {"compulsory": compulsory, "small-filter": small, "large-filter": large}
    slack = solve_work(spec, 2.0 * M + (length or M)).slack
    if slack and slack["H1"] <= min(slack["P"], slack["H2"]):
        terms["segment:small-filter"] = segment
    else:
        terms["segment:large-filter"] = segment
    poly, poly_length = 0.0, 0
    if spec.G_eff > 0 and is_strided(spec):
        for e in WEIGHT_EXPONENTS:
            value, S = best_segment(M, partial(_polyphase_term, spec, e, M))
            if value > poly:
                poly, poly_length = value, S
        terms["segment:polyphase"] = poly
    binding = max(terms, key=lambda key: (terms[key], key == "compulsory"))
    return SequentialBound(value=max(terms.values()), compulsory=compulsory, segment=segment,
                           small_filter=small, large_filter=large,
                           binding=binding.removeprefix("segment:"), M=M,
                           segment_polyphase=poly, segment_length=length,
                           polyphase_length=poly_length)


def _closed_terms(spec: ConvSpec, M: float,
                  reuse: float | None = None) -> tuple[float, float, float]:
    """(compulsory, small_filter, large_filter) of `sequential_bound`; the small-filter form
    with `reuse` in place of kappa when given (a smaller reuse gives a larger form)."""
    ppp = spec.p_in * spec.p_weight * output_bytes(spec)
    compulsory = float(spec.p_in * spec.size_input_touched
                       + spec.p_weight * used_filter_size(spec) + spec.p_out * spec.size_output)
    reuse = reuse_constant(spec) if reuse is None else reuse
    # segments of S = 4M and 2M transfers with F(6M), F(4M) at most the closed forms of F (3.4)
    small = max(0.0, math.sqrt(2.0) * spec.G_eff * math.sqrt(ppp) / math.sqrt(reuse * M) - 4.0 * M)
    large = max(0.0, 9.0 / 8.0 * spec.G_eff * ppp ** (2.0 / 3.0) / M - 2.0 * M)
    return compulsory, small, large


def sequential_bound_value(spec: ConvSpec, M: float) -> float:
    """``sequential_bound(spec, M).value``, bit for bit, solving only the work functions whose
    segment term might be the largest.  Local.

    Each segment term is ``S (ceil(work / F(2M + S)) - 1)`` at its best length S, with F
    certified never below the maximum of its program; a feasible point of that program
    (`feasible_log_work`, no solve) gives a value F_low <= maximum <= F, so
    ``S (ceil(work / F_low) - 1)`` bounds the term at S from above.  A length whose upper value is
    at most the largest term found so far (the compulsory term first) cannot give the (strict)
    maximum and is not solved (`best_segment` with an estimate); every other one is solved exactly
    as `sequential_bound` solves it.  The value is the maximum of the same terms, hence the same
    number and as valid.  The feasible points and the small-filter form's upper bound use
    `border.reuse_witness`, a value kappa is never below, so that kappa is searched for only when
    a term needing it may bind.

    Raises
    ------
    ParconvError
        If M is not a finite number of bytes > 0.
    """
    check_spec(spec)
    M = check_bytes(M, "M")
    # the witness (<= kappa) bounds the small-filter form from above without kappa's search
    compulsory, small_high, large = _closed_terms(spec, M, reuse_witness(spec))
    value = max(compulsory, large)
    if small_high > compulsory:
        value = max(value, _closed_terms(spec, M)[1])
    if spec.G_eff == 0:
        return value

    def upper(prog, work: float) -> Callable[[int], float]:
        def value_at(S: int) -> float:
            X = 2.0 * M + S
            if float(prog.bytes_per @ prog.sizes) <= X:      # F = all the work: the term is 0
                return 0.0
            return segments(work, S, math.exp(feasible_log_work(prog, X)))
        return value_at

    value = best_segment(M, lambda S: segments(spec.G_eff, S, solve_work(spec, 2.0 * M + S).value),
                         upper(witness_program(spec), spec.G_eff), value)[0]
    if is_strided(spec):
        for e in WEIGHT_EXPONENTS:
            prog, total = polyphase_program(spec, e, witness=True)
            value = best_segment(M, partial(_polyphase_term, spec, e, M),
                                 upper(prog, math.exp(total)), value)[0]
    return value


def _polyphase_term(spec: ConvSpec, exponent: float, M: float, S: int) -> float:
    """The polyphase segment term at length S: S (ceil(T_y(all) / F_y(2M + S)) - 1)."""
    per_segment, total = polyphase_work(spec, exponent, 2.0 * M + S)
    return segments(total, S, per_segment)


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
    total = check_bytes(M_scratch, "M_scratch") + check_bytes(M_acc, "M_acc")
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
    check_spec(spec)
    M = check_bytes(M, "M")
    h, w = spec.out_size
    r, s = spec.kernel_size
    im2col_elements = spec.batch * h * w * spec.in_channels * r * s
    compulsory = float(spec.p_in * im2col_elements + spec.p_weight * spec.size_filter
                       + spec.p_out * spec.size_output)
    ppp = spec.p_in * spec.p_weight * output_bytes(spec)
    segment = best_segment(
        M, lambda S: segments(spec.G, S, ((2.0 * M + S) / 3.0) ** 1.5 / math.sqrt(ppp)))[0]
    return max(compulsory, segment)
