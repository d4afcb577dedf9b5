"""The calibrated cycle model of one ``loop_conv_ws`` call (docs/gemmini.md section 11).  Pure numpy.

The roofline ``max(exec, bytes / bw_eff)`` of `parconv.gemmini.call_rules` is too optimistic on
real Gemmini (FireSim).  This model keeps the same per-call quantities and adds what the hardware
and the library do around them (Gemmini's ``LoopConv.scala``: two loops in flight, loads of the
next call overlap the execution of the current one; the core computes and issues every call):

* **call floor** ``c_call``: the Rocket core runs the tile loop of ``tiled_conv`` in software and
  issues six config instructions per call; no call finishes faster than that;
* **DMA lines** ``t_hit`` / ``t_miss`` cycles per 64-byte line a load touches: a row of ``b``
  bytes starting at offset ``o`` touches ``ceil((o mod 64 + b) / 64)`` lines (`mean_lines`), so
  small-channel rows cost a whole line each; a line costs ``t_miss`` when its block was last
  used so long ago (reuse distance > ``l2_bytes`` of other data, `load_misses`) that it left
  the L2, or it is touched for the first time, and ``t_hit`` otherwise;
  a row is moved by mvin commands of at most ``max_block_len * dim`` columns, each requested
  on its own (`mean_piece_lines`: a piece that straddles a line costs two lines);
* **bandwidth** ``inv_bw`` cycles per byte moved (loads and stores), plus ``inv_bw_miss`` per
  loaded byte that misses the L2 (the refill's own bandwidth, beyond the per-line latency);
* **stores** ``t_store`` cycles per mvout row (one DMA write request per <= dim channels of
  a pixel, or per accumulator row of a partial sum);
* **overlap** ``alpha``: loads + stores ``L`` and execution ``X`` of a call overlap but not
  perfectly: ``max(L, X) + alpha min(L, X)``;
* **per pass** ``p_pass`` cycles added to each array pass (one compute command of <= dim rows)
  of the execute model: command issue and pipeline fill/drain that a pass of few rows (7x7
  layers) cannot hide;
* **DMA commands** ``t_cmd``: the load and store controllers keep only ``16 / dim + 1`` mvin
  (mvout) commands in flight, each holding its slot for its rows plus the round trip
  ``t_cmd``; a stream of short commands is slower than its bytes say (`dma_command_excess`);
* **pass floor** ``t_pass``: no array pass takes fewer than ``max(t_pass, 4)`` cycles (the
  execute model's floor is the RTL's 4, ``ExecuteController``'s ``total_rows``); the passes of
  fewer rows that this lengthens are `parconv.gemmini.call_rules.short_passes`
  (`pass_floor_cycles`).

``cycles(call) = max(c_call, max(L, X) + alpha min(L, X))`` with ``X = exec + p_pass passes
+ the pass floor``
and ``L = t_hit lines_hit + t_miss lines_miss + inv_bw (load + store bytes) + t_store
stores + inv_bw_miss missed bytes + the DMA command excess``; a layer adds the pipeline fill ``min(L, X)`` of its mean
call once (`layer_cycles`: the first call's loads and the last call's execution overlap
nothing).

Around a ``tiled_conv_auto`` call the core also runs the library's tile search before the first
call (`auto_search_cycles`, priced from the compiled code, not fitted; only the FireSim rows of
the library's own tiling time it).

The constants are fitted by ``experiments/calibrate_cycles.py`` and stored in
``cycle_constants.json`` next to this module (with bootstrap standard errors).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os

import numpy as np

from ..errors import ParconvError
from .call_rules import MIN_PASS_CYCLES

#: where experiments/calibrate_cycles.py writes the fitted constants
CONSTANTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cycle_constants.json")
#: bytes of one TileLink request / cache line (the DMA's 64-byte requests)
LINE_BYTES = 64
#: library loop letters (innermost first in a DOSA ``PERM_STR``): which operand each one indexes
INPUT_LOOPS, WEIGHT_LOOPS = frozenset("NQPSRC"), frozenset("KSRC")
#: parconv's loop names -> the library's letters (H = pooled rows Q, W = cols P, R = krows S, ...)
PARCONV_TO_LIBRARY = str.maketrans("NKCHWRS", "NKCQPSR")
FIELDS = ("c_call", "t_hit", "t_miss", "inv_bw", "alpha", "p_pass", "t_store", "inv_bw_miss",
          "t_cmd", "t_pass")
#: DMA read / write requests in flight (Gemmini's ``max_in_flight_mem_reqs`` default)
MAX_IN_FLIGHT_MEM_REQS = 16
#: the per-stream keys of a call's DMA commands (`dma_command_excess`)
COMMAND_KEYS = ("cmds", "rows", "hit", "miss", "bytes", "miss_bytes", "stores")


@dataclasses.dataclass(frozen=True)
class CycleConstants:
    """The constants of the calibrated model (module docstring), in cycles.  The defaults are
    only starting values of the fit; the fitted ones come from `load_constants`.

    ``l2_bytes`` is the residency capacity of the reuse-distance test (the FireSim builds' 512 KiB
    L2, not fitted); ``stderr`` holds bootstrap standard errors of the fitted fields.
    ``t_pass`` at or below 4 (the default) adds nothing: the execute model's own floor.
    """

    c_call: float = 270.0
    t_hit: float = 1.0
    t_miss: float = 3.0
    inv_bw: float = 0.115
    alpha: float = 0.1
    p_pass: float = 2.0
    t_store: float = 1.5
    inv_bw_miss: float = 0.05
    t_cmd: float = 0.0
    t_pass: float = float(MIN_PASS_CYCLES)
    l2_bytes: int = 512 * 1024
    stderr: dict = dataclasses.field(default_factory=dict, compare=False)
    fit: dict = dataclasses.field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for field in FIELDS:
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 \
                    or not math.isfinite(value):
                raise ParconvError(f"CycleConstants.{field} must be a finite number >= 0, "
                                   f"got {value!r}")

    def vector(self) -> np.ndarray:
        return np.array([getattr(self, f) for f in FIELDS], dtype=float)

    @classmethod
    def from_vector(cls, values, **extra) -> "CycleConstants":
        return cls(**{f: float(v) for f, v in zip(FIELDS, values)}, **extra)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@functools.lru_cache(maxsize=4)
def load_constants(path: str = CONSTANTS_PATH) -> CycleConstants:
    """The fitted constants of ``cycle_constants.json``.

    Raises
    ------
    ParconvError
        If the file is missing (run ``experiments/calibrate_cycles.py``).
    """
    if not os.path.exists(path):
        raise ParconvError(f"no fitted cycle constants at {path}; run "
                           f"experiments/calibrate_cycles.py")
    with open(path) as f:
        data = json.load(f)
    return CycleConstants(**{k: data[k] for k in (*FIELDS, "l2_bytes", "stderr", "fit")
                             if k in data})


def commands_in_flight(dim: int) -> int:
    """DMA commands (mvins, or mvouts) Gemmini keeps in flight: the load and store controllers
    track ``max_in_flight_mem_reqs / DIM + 1`` commands (``DMACommandTracker(nCmds)`` in
    ``LoadController.scala`` / ``StoreController.scala``): 2 on a 16x16 mesh, 1 from 32x32."""
    return MAX_IN_FLIGHT_MEM_REQS // int(dim) + 1


def dma_command_excess(constants: CycleConstants, commands: dict | None):
    """Cycles by which the DMA command latency exceeds the bandwidth side of each stream.

    ``commands`` maps ``"input"``, ``"weight"`` (mvins) and ``"output"`` (mvouts) to dicts of
    per-call arrays (`COMMAND_KEYS`: commands, rows per command, lines that hit / miss, bytes,
    missed bytes, mvout rows) and ``"dim"`` to the mesh side.  With ``n`` commands of ``r`` rows
    in flight at most ``commands_in_flight(dim)`` at a time, each holding its slot for its rows
    plus the round trip ``t_cmd``, a stream takes at least ``n (r + t_cmd) / in_flight``
    cycles; the excess over the stream's bandwidth side (its lines and bytes, as in
    `call_cycles`) is added to the load side.  ``None`` (or ``t_cmd = 0``) adds nothing.
    """
    if commands is None or constants.t_cmd == 0:
        return 0.0
    c = constants
    in_flight = np.asarray(commands["dim"], dtype=float)
    in_flight = np.floor(MAX_IN_FLIGHT_MEM_REQS / in_flight) + 1
    excess = 0.0
    for stream in ("input", "weight", "output"):
        s = {k: np.asarray(commands[stream].get(k, 0.0), dtype=float) for k in COMMAND_KEYS}
        bandwidth = (c.t_hit * s["hit"] + c.t_miss * s["miss"] + c.inv_bw * s["bytes"]
                     + c.inv_bw_miss * s["miss_bytes"] + c.t_store * s["stores"])
        latency = s["cmds"] * (s["rows"] + c.t_cmd) / in_flight
        excess = excess + np.maximum(latency - bandwidth, 0.0)
    return excess


def mean_lines(row_bytes, step: int, line: int = LINE_BYTES):
    """Mean number of ``line``-byte lines a row of ``row_bytes`` touches when its start offset is
    a multiple of ``step`` (the gcd of the DRAM stride and the tile start), uniform in a line.
    Elementwise over ``row_bytes``; 0 for an empty row."""
    step = max(1, math.gcd(int(step), line))
    offsets = np.arange(0, line, step)
    b = np.asarray(row_bytes)[..., None]
    lines = np.where(b > 0, -(-(offsets + b) // line), 0).mean(axis=-1)
    return lines if np.ndim(lines) else float(lines)


@functools.lru_cache(maxsize=4096)
def _piece_lines(row_bytes: int, piece: int, step: int, line: int) -> float:
    """Mean lines of one DRAM row cut into mvin pieces (see `mean_piece_lines`)."""
    offsets = range(0, line, step)
    total = sum(-(-(p0 % line + min(piece, start + row_bytes - p0)) // line)
                for start in offsets for p0 in range(start, start + row_bytes, piece))
    return total / len(offsets)


def row_piece_lines(row_bytes: int, piece: int, step: int, line: int = LINE_BYTES) -> float:
    """`mean_piece_lines` of one row given as an int (no array handling: the exact costing asks
    for a few distinct rows per search)."""
    if row_bytes <= 0:
        return 0.0
    return _piece_lines(int(row_bytes), int(piece), max(1, math.gcd(int(step), line)), line)


def mean_piece_lines(row_bytes, piece: int, step: int, line: int = LINE_BYTES):
    """Mean number of ``line``-byte lines the DMA requests for a DRAM row of ``row_bytes``
    loaded by mvin commands of ``piece`` bytes each (``max_block_len * dim`` elements, the
    widest mvin): every piece is requested on its own, so a piece that straddles a line costs
    two, even when the row's other pieces share that line.  The row's start offset is a
    multiple of ``step``, uniform in a line.  Elementwise over ``row_bytes``; 0 for an empty
    row; equals `mean_lines` for rows of at most one piece."""
    step = max(1, math.gcd(int(step), line))
    b = np.asarray(row_bytes, dtype=np.int64)
    values = {int(v): _piece_lines(int(v), int(piece), step, line) for v in np.unique(b)
              if v > 0}
    if b.ndim == 0:
        return values.get(int(b), 0.0)
    return np.vectorize(lambda v: values.get(int(v), 0.0), otypes=[float])(b)


def load_misses(order: str, trips: dict, per_call_bytes: dict, l2_bytes: int,
                warm_bytes: float = 0.0) -> dict:
    """Loads of each operand that miss the L2, as a count of calls' worth of loads.

    ``order`` is the loop nest innermost first in library letters (N Q P K S R C), ``trips`` the
    trip count of each letter, ``per_call_bytes`` the mean bytes one call loads of ``"input"``
    and ``"weight"``.  A block's first load misses (there are ``prod(trips of its loops)``
    blocks); a later load misses when the loops inside the loop that brings the block back touch
    more than ``l2_bytes`` (both operands' blocks over those loops: the reuse distance).  Reloads
    by loops inside the operand's innermost loop are consecutive and always hit.  ``warm_bytes``
    > 0 says the layer's data were touched just before (DOSA's harness runs ``tiled_conv_auto``
    on the same buffers first): when those bytes fit the L2, first loads hit too.
    """
    n = [int(trips[letter]) for letter in order]
    out = {}
    for name, loops in (("input", INPUT_LOOPS), ("weight", WEIGHT_LOOPS)):
        dep = [letter in loops for letter in order]
        first = dep.index(True)
        misses = math.prod(v for v, d in zip(n, dep) if d)
        if 0 < warm_bytes <= l2_bytes:
            misses = 0
        for j in range(first + 1, len(order)):
            if dep[j] or n[j] == 1:
                continue
            reloads = (n[j] - 1) * math.prod(n[j + 1:]) * math.prod(
                v for v, d in zip(n[:j], dep[:j]) if d)
            distance = sum(per_call_bytes[other] * math.prod(
                v for v, letter in zip(n[:j], order[:j]) if letter in other_loops)
                for other, other_loops in (("input", INPUT_LOOPS), ("weight", WEIGHT_LOOPS)))
            if distance > l2_bytes:
                misses += reloads
        out[name] = float(misses)
    return out


#: the library's tile search, run on the core inside the timed region of every
#: ``tiled_conv_auto`` call (gemmini.md 11.2, round 6): (instructions, multiplies) of one step of
#: each kind, counted in ``tiled_conv_auto_inner`` of the dosa branch compiled as
#: gemmini-rocc-tests builds it (gcc 12, ``-O2 -march=rv64gc``): a shrink step of phase 1 (scan
#: of the seven sizes, one shrink, both footprints), a candidate of phases 2-3 whose scratchpad
#: rows fit (both footprints), one whose scratchpad rows do not (the compiler skips the
#: accumulator footprint), a candidate above its maximum (no footprint), and what a candidate
#: that is taken adds (the copy of the seven sizes)
AUTO_SEARCH_PATHS = {"shrink": (179, 17), "fits_spad": (139, 17), "spad_full": (106, 12),
                     "at_max": (30, 0), "accepted": (16, 0)}
#: cycles of one 32-bit multiply on the FireSim builds' Rocket core (``WithNBigCores``:
#: ``MulDivParams(mulUnroll = 8, mulEarlyOut = true)``, 8 bits per cycle, so about two steps for
#: the operands of the search, which are below 2^16, plus issue and write-back); the other
#: instructions are taken at one cycle each (single-issue, in-order)
ROCKET_MUL_CYCLES = 4


def auto_search_cycles(steps: dict) -> float:
    """Core cycles of the library's tile search from its step counts (``AUTO_SEARCH_PATHS``
    keys -> how many steps of that kind the search of a layer takes).

    Not a fitted term: the FireSim training runs call ``tiled_conv`` with an explicit tile and
    never run the search, so they cannot price it; it is priced from the compiled code
    (instructions at one cycle, multiplies at ``ROCKET_MUL_CYCLES``).
    """
    total = 0.0
    for kind, count in steps.items():
        instructions, multiplies = AUTO_SEARCH_PATHS[kind]
        total += count * (instructions + (ROCKET_MUL_CYCLES - 1) * multiplies)
    return float(total)


def pass_floor_cycles(constants: CycleConstants, short_passes, short_rows):
    """Cycles the pass floor ``t_pass`` adds to calls: each of their ``short_passes`` passes of
    ``short_rows`` rows (`parconv.gemmini.call_rules.short_passes`) takes
    ``max(short_rows, t_pass, 4)`` cycles instead of the execute model's ``max(short_rows, 4)``.
    Elementwise; 0 while ``t_pass <= 4``."""
    floor = max(constants.t_pass, MIN_PASS_CYCLES)
    if floor == MIN_PASS_CYCLES:
        return 0.0
    rows = np.maximum(np.asarray(short_rows, dtype=float), MIN_PASS_CYCLES)
    return np.asarray(short_passes, dtype=float) * np.maximum(floor - rows, 0.0)


def call_phases(constants: CycleConstants, exec_cycles, passes, lines_hit, lines_miss,
                moved_bytes, stores, miss_bytes, commands=None, short=(0.0, 0.0)):
    """(X, L) of calls: the execute side and the load/store side of the module docstring;
    ``short`` = (short passes, their rows) for `pass_floor_cycles`."""
    c = constants
    x = (np.asarray(exec_cycles, dtype=float) + c.p_pass * np.asarray(passes, dtype=float)
         + pass_floor_cycles(c, *short))
    load = (c.t_hit * np.asarray(lines_hit, dtype=float)
            + c.t_miss * np.asarray(lines_miss, dtype=float)
            + c.inv_bw * np.asarray(moved_bytes, dtype=float)
            + c.t_store * np.asarray(stores, dtype=float)
            + c.inv_bw_miss * np.asarray(miss_bytes, dtype=float)
            + dma_command_excess(c, commands))
    return x, load


def overlap_cycles(constants: CycleConstants, x, load):
    """Cycles of calls from their phases: ``max(c_call, max(L, X) + alpha min(L, X))``."""
    return np.maximum(constants.c_call, np.maximum(load, x)
                      + constants.alpha * np.minimum(load, x))


def call_cycles(constants: CycleConstants, exec_cycles, passes, lines_hit, lines_miss,
                moved_bytes, busy=None, stores=0.0, miss_bytes=0.0, commands=None,
                short=(0.0, 0.0)):
    """Calibrated cycles of calls (elementwise; module docstring for the formula).

    ``moved_bytes`` counts loads and stores of the call, ``stores`` its mvout rows (output and
    partial sums) and ``miss_bytes`` the loaded bytes of its lines that miss the L2; ``busy``
    (bool, default all True) marks the calls that exist (a call of an empty block costs 0, not
    the floor); ``commands`` the calls' DMA commands per stream (`dma_command_excess`);
    ``short`` their (short passes, rows) for the pass floor (`pass_floor_cycles`).
    """
    x, load = call_phases(constants, exec_cycles, passes, lines_hit, lines_miss, moved_bytes,
                          stores, miss_bytes, commands, short)
    cycles = overlap_cycles(constants, x, load)
    if busy is not None:
        cycles = np.where(busy, cycles, 0.0)
    return cycles


def layer_cycles(constants: CycleConstants, calls, exec_cycles, passes, lines_hit, lines_miss,
                 moved_bytes, stores=0.0, miss_bytes=0.0, commands=None,
                 short=(0.0, 0.0)) -> float:
    """Calibrated cycles of a whole layer: `call_cycles` of each group of identical calls times
    ``calls`` (calls per group; 0 for a call that does not exist), plus the pipeline fill.

    Fill: with two loops in flight a call's loads overlap the previous call's execution, so
    only the first call's loads and the last call's execution are exposed; the model adds
    ``min(L, X)`` of the mean call once per layer (no constant of its own).
    """
    calls = np.asarray(calls, dtype=float)
    args = (exec_cycles, passes, lines_hit, lines_miss, moved_bytes, stores, miss_bytes)
    phases = call_phases(constants, *args, commands, short)
    cycles = overlap_cycles(constants, *phases)       # `call_cycles` of the same phases
    x, load = (np.broadcast_to(v, calls.shape) for v in phases)
    total = float((np.broadcast_to(cycles, calls.shape) * calls).sum())
    n = float(calls.sum())
    if n > 0:
        total += min(float((x * calls).sum()), float((load * calls).sum())) / n
    return total
