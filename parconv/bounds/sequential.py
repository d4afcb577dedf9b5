"""Sequential lower bounds of theory.md sections 2-3, in bytes, mixed precision.  Pure, no MPI.

* `work_function` F(X): the most iterations any set of data worth X bytes can feed (section 2),
  solved as a geometric program and certified by duality (`parconv.bounds.workfn`), never below
  the truth; `closed_form_work`, its two AM-GM upper bounds.
* `sequential_bound`: one processor with a fast memory of M bytes (section 3), its segment terms
  (`segment_term`: segments of S transfers, or weighted segments) the largest over a menu of
  lengths (`segment_lengths`, `best_segment`);
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
from .workfn import (SHARE_STEPS, feasible_log_works, layer_program, output_bytes,
                     output_weighted, solve_work, used_filter_size, witness_program)

__all__ = ["work_function", "closed_form_work", "sequential_bound", "sequential_bound_two_memory",
           "sequential_bound_value", "im2col_bound", "segments", "segment_lengths", "best_segment",
           "segment_budget", "segment_term", "term_upper", "SEGMENT_FACTORS", "SequentialBound"]


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


#: Segment lengths tried by the segment bounds, as multiples of M (theory.md 3.3).  Every whole
#: length >= 1 gives a valid bound, so the bound is the largest over this menu: steps of 2^(1/2)
#: from M/2 to 128M (the optima are flat, so a step costs a few per cent at most), with 3M and 6M,
#: and so 2M, 4M and 6M, the optima of the closed forms (3.4).
SEGMENT_FACTORS = tuple(sorted({2.0 ** (k / 2) for k in range(-2, 15)} | {3.0, 6.0}))


def segment_lengths(M: float) -> tuple[int, ...]:
    """The whole segment lengths >= 1 of `SEGMENT_FACTORS` for a memory of M bytes."""
    return tuple(sorted({max(1, math.floor(M * f)) for f in SEGMENT_FACTORS}))


def segment_budget(M: float, length: int, weighted: bool) -> float:
    """The bytes of data one segment's iterations can touch (theory.md 3.3): 2M + S for a
    segment of S transfers; 3M + L + 1 for a weighted segment of L units, in a budget that
    counts output bytes twice."""
    return 3.0 * M + length + 1.0 if weighted else 2.0 * M + length


def best_segment(M: float, term: Callable[[int], float],
                 upper: Callable[[tuple[int, ...]], list[float]] | None = None,
                 floor: float = 0.0,
                 refine: Callable[[int], float] | None = None) -> tuple[float, int]:
    """The largest segment term over the lengths of `segment_lengths`, and its length.

    Local.  ``term(n)`` is one segment term at length n (`segment_term`, e.g.
    ``S (ceil(work / F(2M + S)) - 1)`` for segments of S transfers, theory.md 3.3); every length
    gives a valid lower bound.  ``upper(lengths)`` gives, for every length at once, a value never
    below its term; a length is then solved only if its upper value exceeds `floor` and every
    term found so far, in decreasing order of the upper values, and (with ``refine(n)``, a
    tighter value never below the term, computed only for those lengths) only if its refined
    value does too.  The result is the same maximum when it exceeds `floor`, and
    (value <= floor, 0) otherwise.
    """
    lengths = segment_lengths(M)
    order = sorted(zip([math.inf] * len(lengths) if upper is None else upper(lengths), lengths),
                   reverse=True)
    best, best_S = floor, 0
    for high, S in order:
        if high <= best:
            break
        if refine is not None and refine(S) <= best:
            continue
        value = term(S)
        if value > best:
            best, best_S = value, S
    return best, best_S


# ---- sequential -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SequentialBound:
    """Lower bound on the bytes moved between slow memory and a fast memory of M bytes.

    ``value`` is the maximum of the other terms; all are bytes (theory.md section 3).
    ``segment`` is the best segment term of the layer's work function over both segment rules
    and the lengths of `segment_lengths`: ``segment_length`` is its length (0 when the term is
    0) and ``segment_weighted`` tells whether it is a weighted segment (3.3).
    ``segment_polyphase``, ``polyphase_length`` and ``polyphase_weighted`` are the same for the
    polyphase work function (3.9.4).  ``binding`` names the largest term; when it is the
    segment term it names the inequality family active at the optimum of its work function:
    'small-filter' if the (H1) row has the smallest slack (ties included), 'large-filter' if a
    (P) or (H2) row has a strictly smaller slack.
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
    segment_weighted: bool = False
    polyphase_length: int = 0
    polyphase_weighted: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def sequential_bound(spec: ConvSpec, M: float) -> SequentialBound:
    """W_seq >= max(compulsory, segment terms, closed forms) (theory.md section 3).  Local.

    compulsory = p_I |I_touched| + p_F |F_used| + p_Y |O|, with |F_used| = |F| unless some filter
    tap only ever meets padding (`parconv.bounds.workfn.used_filter_size`).  The segment term is
    the largest `segment_term` over both rules (segments of S transfers, weighted segments) and
    the lengths of `segment_lengths`.  small_filter is the larger of the closed forms
    2^(1/2) G_eff (p_I p_F p_O)^(1/2) / (kappa M)^(1/2) - 4M (S = 4M) and
    (8/3)^(1/2) G_eff (p_I p_F p_O)^(1/2) / (kappa M)^(1/2) (9M / (9M + 1))^(3/2) - 6M - p_O |O|
    (weighted, L = 6M); large_filter = (9/8) G_eff (p_I p_F p_O)^(2/3) / M - 2M (S = 2M; kappa:
    theory.md 2.3.1; all clipped at 0).  For a whole M they never exceed the segment term and
    are kept as checks.  On a layer with more than one phase the polyphase segment terms are
    added (docs/theory.md 3.9); ``binding`` is then 'polyphase' when they are the largest.

    Raises
    ------
    ParconvError
        If M is not a finite number of bytes > 0.
    """
    check_spec(spec)
    M = check_bytes(M, "M")
    compulsory, small, large = _closed_terms(spec, M)
    outputs = _outputs_written(spec)
    segment, length, weighted = 0.0, 0, False
    if spec.G_eff > 0:
        segment, length, weighted = _best_rule(
            M, partial(segment_term, spec, M),
            term_upper(layer_program(spec), spec.G_eff, M, outputs))
    terms = {"compulsory": compulsory, "small-filter": small, "large-filter": large}
    slack = solve_work(spec, segment_budget(M, length or int(M) or 1, weighted),
                       2 if weighted else 1).slack
    if slack and slack["H1"] <= min(slack["P"], slack["H2"]):
        terms["segment:small-filter"] = segment
    else:
        terms["segment:large-filter"] = segment
    poly, poly_length, poly_weighted = 0.0, 0, False
    if spec.G_eff > 0 and is_strided(spec):
        for e in WEIGHT_EXPONENTS:
            prog, total = polyphase_program(spec, e)
            found = _best_rule(M, lambda n, w: segment_term(spec, M, n, w, e),
                               term_upper(prog, math.exp(total), M, outputs))
            if found[0] > poly:
                poly, poly_length, poly_weighted = found
        terms["segment:polyphase"] = poly
    binding = max(terms, key=lambda key: (terms[key], key == "compulsory"))
    return SequentialBound(value=max(terms.values()), compulsory=compulsory, segment=segment,
                           small_filter=small, large_filter=large,
                           binding=binding.removeprefix("segment:"), M=M,
                           segment_polyphase=poly, segment_length=length,
                           segment_weighted=weighted, polyphase_length=poly_length,
                           polyphase_weighted=poly_weighted)


def _best_rule(M: float, term, uppers=None, floor: float = 0.0) -> tuple[float, int, bool]:
    """(value, length, weighted) of the largest ``term(length, weighted)`` over both segment
    rules, as `best_segment`; ``uppers`` is a `term_upper` pair (screen, refine) or None."""
    best = (floor, 0, False)
    for weighted in (False, True):
        screen = refine = None
        if uppers is not None:
            screen = (lambda ns: uppers[0](ns, weighted))
            refine = (lambda n: uppers[1]((n,), weighted)[0])
        value, length = best_segment(M, lambda n: term(n, weighted), screen, best[0], refine)
        if length:
            best = (value, length, weighted)
    return best


def _closed_terms(spec: ConvSpec, M: float,
                  reuse: float | None = None) -> tuple[float, float, float]:
    """(compulsory, small_filter, large_filter) of `sequential_bound`; the small-filter form
    with `reuse` in place of kappa when given (a smaller reuse gives a larger form)."""
    ppp = spec.p_in * spec.p_weight * output_bytes(spec)
    compulsory = float(spec.p_in * spec.size_input_touched
                       + spec.p_weight * used_filter_size(spec) + spec.p_out * spec.size_output)
    reuse = reuse_constant(spec) if reuse is None else reuse
    lead = spec.G_eff * math.sqrt(ppp / (reuse * M))
    # S = 4M with F(6M), and L = 6M with F2(9M + 1), at most the closed forms of F (3.4)
    small = max(0.0, math.sqrt(2.0) * lead - 4.0 * M,
                math.sqrt(8.0 / 3.0) * lead * (9.0 * M / (9.0 * M + 1.0)) ** 1.5 - 6.0 * M
                - _outputs_written(spec))
    large = max(0.0, 9.0 / 8.0 * spec.G_eff * ppp ** (2.0 / 3.0) / M - 2.0 * M)
    return compulsory, small, large


def sequential_bound_value(spec: ConvSpec, M: float) -> float:
    """``sequential_bound(spec, M).value``, bit for bit, solving only the work functions whose
    segment term might be the largest.  Local.

    Each segment term is ``length (ceil(work / F(X)) - 1)`` (less p_O |O| for weighted segments)
    with F certified never below the maximum of its program; a feasible point of that program
    (`feasible_log_work`, no solve) gives a value F_low <= maximum <= F, so the same expression
    with F_low bounds the term from above.  A length whose upper value is at most the largest
    term found so far (the compulsory term first) cannot give the (strict) maximum and is not
    solved (`best_segment` with an estimate); every other one is solved exactly as
    `sequential_bound` solves it.  The value is the maximum of the same terms, hence the same
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
    outputs = _outputs_written(spec)
    value = _best_rule(M, partial(segment_term, spec, M),
                       term_upper(witness_program(spec), spec.G_eff, M, outputs), value)[0]
    if is_strided(spec):
        for e in WEIGHT_EXPONENTS:
            prog, total = polyphase_program(spec, e, witness=True)
            value = _best_rule(M, lambda n, w: segment_term(spec, M, n, w, e),
                               term_upper(prog, math.exp(total), M, outputs), value)[0]
    return value


def segment_term(spec: ConvSpec, M: float, length: int, weighted: bool = False,
                 exponent: float | None = None) -> float:
    """One segment term of theory.md 3.3 at one length, in bytes.  Local.

    Segments of S = `length` transfers: ``S (ceil(work / F(2M + S)) - 1)``.  Weighted segments
    of L = `length` units (an input or filter byte read is 1, an output byte written out is 2):
    ``L (ceil(work / F2(3M + L + 1)) - 1) - p_O |O|``, clipped at 0, where F2 counts output bytes
    twice.  work and F are G_eff and F(X), or with `exponent` the polyphase T_y(all) and F_y(X)
    (docs/theory.md 3.9.4).
    """
    X = segment_budget(M, length, weighted)
    weight = 2 if weighted else 1
    if exponent is None:
        per_segment, work = solve_work(spec, X, weight).value, spec.G_eff
    else:
        per_segment, work = polyphase_work(spec, exponent, X, weight)
    value = segments(work, length, per_segment)
    return max(0.0, value - _outputs_written(spec)) if weighted else value


def _outputs_written(spec: ConvSpec) -> float:
    """p_O |O|: what weighted segments may count twice without a read-back (theory.md 3.3)."""
    return float(output_bytes(spec) * spec.size_output)


#: the byte splits of the first screen of `term_upper` (a divisor of `workfn.SHARE_STEPS`:
#: its points are a subset, so the finer screen is never looser)
SCREEN_STEPS = 8


def term_upper(prog, work: float, M: float, outputs: float = 0.0):
    """(screen, refine): ``upper(lengths, weighted)`` functions giving, for each length, a value
    never below the segment term of a work function whose program's maximum is at most that of
    ``prog`` (the same program, or one whose rows are never above it).  Local.

    From feasible points of ``prog`` (`feasible_log_works`, no solve): a value F_low <= F, and
    the term's expression with F_low in place of F; ``screen`` on a coarse grid of byte splits
    (`SCREEN_STEPS`, cheap, for every length), ``refine`` on the fine one (only where the screen
    cannot rule a length out).  `best_segment` solves only the lengths both leave open."""
    def upper(lengths: tuple[int, ...], weighted: bool = False,
              steps: int = SHARE_STEPS) -> list[float]:
        weighted_prog = output_weighted(prog, 2 if weighted else 1)
        everything = float(weighted_prog.bytes_per @ weighted_prog.sizes)
        budgets = [segment_budget(M, n, weighted) for n in lengths]
        # F = all the work from the first budget holding everything: 0 there and beyond
        count = next((i for i, X in enumerate(budgets) if everything <= X), len(budgets))
        logs = feasible_log_works(weighted_prog, budgets[:count], steps).tolist() if count else []
        out = []
        for n, log_work in zip(lengths, logs):
            high = segments(work, n, math.exp(log_work))
            out.append(high - outputs if weighted else high)
        return out + [0.0] * (len(lengths) - count)
    return partial(upper, steps=SCREEN_STEPS), upper


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
    outputs = _outputs_written(spec)

    def term(n: int, weighted: bool) -> float:       # F_mm, its outputs counted 1 or 2 times
        X = segment_budget(M, n, weighted)
        value = segments(spec.G, n, (X / 3.0) ** 1.5 / math.sqrt(ppp * (2 if weighted else 1)))
        return max(0.0, value - outputs) if weighted else value

    return max(compulsory, _best_rule(M, term)[0])
