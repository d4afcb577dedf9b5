"""Node-level tilings for a two-level memory (theory.md section 6).  Pure data, no MPI.

A tiling is a block size on each of the seven loops ``LOOPS = "NKCHWRS"`` of the convolution and a
loop order is a permutation of ``LOOPS`` (outermost first) over the *block* indices.  This module
gives the fast-memory footprint of one block and the exact slow-memory traffic of a (tiling, loop order) under the contract of the design (theory.md 6.3,
"Exact traffic of a (tiling, order)"):

* one buffer per array; an input or filter block is loaded unless the previous tile used the same
  block (the same block indices on the loops the array depends on: input N C H W R S, filter
  K C R S);
* the input block of a tile is the contiguous in-image window of rows
  ``[sh h0 + dh r0 - ph, sh (h1 - 1) + dh (r1 - 1) - ph]`` clipped to ``[0, H_in)`` (and likewise
  columns), so padding costs nothing;
* the output block stays resident while consecutive tiles share it; when it changes, the old block
  is written as final output (``p_out`` bytes per element) if every (C, R, S) tile has been applied
  to it, and otherwise spilled as partial sums (``p_acc``) that are read back (``p_acc``) on the next
  visit.

`traffic` evaluates this analytically: an array whose loops are ``D`` is reloaded once per
combination of the loops at or outside the innermost loop of ``D`` that has more than one block
(loops with a single block never change an index and are invisible), so its bytes are the exact
sum of its block sizes (ragged edges and clipped halos included) times the trip counts of the loops
outside that position it does not depend on.  `traffic_by_simulation` walks the tiles literally and
is the reference the tests hold `traffic` to.

The memories a tiling must fit in are `parconv.tiling.memories`; the optimiser lives in
`parconv.tiling.search`; the package `parconv.tiling` exports both (`optimise`,
`TilingResult`, `enumerate_tilings`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from functools import lru_cache

import numpy as np

from ..errors import ParconvError
from ..spec import ConvSpec

#: the seven loops, in the order of a `Tiling`'s fields
LOOPS = "NKCHWRS"
#: the loops each array's block index depends on
INPUT_LOOPS, FILTER_LOOPS, OUTPUT_LOOPS = "NCHWRS", "KCRS", "NKHW"
DEPENDS = {"input": INPUT_LOOPS, "filter": FILTER_LOOPS, "output": OUTPUT_LOOPS}
#: for each array, the loops it does not depend on (its reuse loops)
REUSE_LOOPS = {"input": "K", "filter": "NHW", "output": "CRS"}
_INDEX = {loop: i for i, loop in enumerate(LOOPS)}


def extents(spec: ConvSpec) -> tuple[int, int, int, int, int, int, int]:
    """The loop bounds (N, K, C, H, W, R, S) of a layer, in `LOOPS` order."""
    (h, w), (r, s) = spec.out_size, spec.kernel_size
    return (spec.batch, spec.out_channels, spec.in_channels, h, w, r, s)


def check_order(order: str) -> str:
    """Return `order` if it is a permutation of ``LOOPS``; raise ParconvError otherwise."""
    if not isinstance(order, str) or sorted(order) != sorted(LOOPS):
        raise ParconvError(f"loop order must be a permutation of {LOOPS!r} (outermost first), "
                           f"got {order!r}")
    return order


@dataclasses.dataclass(frozen=True)
class Tiling:
    """Block sizes on the loops N, K, C, H, W, R, S (each an integer >= 1).

    Sizes larger than the loop bound are allowed and mean "the whole loop"; `clipped` makes that
    explicit.  Edge blocks are truncated (ragged).
    """

    tN: int
    tK: int
    tC: int
    tH: int
    tW: int
    tR: int
    tS: int

    def __post_init__(self) -> None:
        for name in ("tN", "tK", "tC", "tH", "tW", "tR", "tS"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ParconvError(f"tiling {name} must be an integer >= 1, got {value!r}")
            object.__setattr__(self, name, int(value))

    def as_tuple(self) -> tuple[int, int, int, int, int, int, int]:
        """(tN, tK, tC, tH, tW, tR, tS)."""
        return (self.tN, self.tK, self.tC, self.tH, self.tW, self.tR, self.tS)

    def clipped(self, spec: ConvSpec) -> "Tiling":
        """The same tiling with every block size capped at its loop bound."""
        return Tiling(*(min(t, e) for t, e in zip(self.as_tuple(), extents(spec))))

    def trips(self, spec: ConvSpec) -> tuple[int, ...]:
        """Number of blocks on each loop, ceil(extent / size), in `LOOPS` order."""
        return tuple(-(-e // t) for t, e in zip(self.as_tuple(), extents(spec)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def window_span(stride, dil, t_out, t_k):
    """Input positions spanned by ``t_out`` outputs and ``t_k`` taps (works on arrays too)."""
    return stride * (t_out - 1) + dil * (t_k - 1) + 1


def footprint(spec: ConvSpec, tiling: Tiling) -> tuple[int, int, int]:
    """Fast-memory bytes of one full block: (input with halo, filter, partial outputs).

    ``p_in tN tC (sh (tH-1) + dh (tR-1) + 1)(sw (tW-1) + dw (tS-1) + 1)``, ``p_weight tK tC tR
    tS`` and ``p_acc tN tK tH tW`` (partial sums live in the accumulator type), with the block sizes
    first clipped to the loop bounds.  The halo is not clipped to the image: the footprint is an
    upper bound of every block's size, edge blocks included.
    """
    tn, tk, tc, th, tw, tr, ts = tiling.clipped(spec).as_tuple()
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    return (spec.p_in * tn * tc * window_span(sh, dh, th, tr) * window_span(sw, dw, tw, ts),
            spec.p_weight * tk * tc * tr * ts,
            spec.p_acc * tn * tk * th * tw)


def clip_array(spec: ConvSpec, tiles: np.ndarray) -> np.ndarray:
    """Block sizes of many tilings (an (m, 7) integer array) capped at the loop bounds."""
    return np.minimum(np.asarray(tiles, dtype=np.int64), np.asarray(extents(spec)))


# ---- exact traffic -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Traffic:
    """Slow-memory traffic of one (tiling, loop order), in bytes, and the transfers behind it.

    ``output_write`` is final output (``p_out`` per element), ``spill_write`` and ``output_read``
    are partial sums (``p_acc``).  ``loads`` counts block transfers per stream (a block that
    lies entirely in the padding still counts as a load of 0 bytes); ``tiles`` is the number of
    tiles visited.
    """

    input: int
    filter: int
    output_read: int
    output_write: int
    spill_write: int
    loads: dict = dataclasses.field(default_factory=dict)
    tiles: int = 0

    @property
    def total(self) -> int:
        return self.input + self.filter + self.output_read + self.output_write + self.spill_write

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["total"] = self.total
        return out


def axis_window_table(n_in: int, n_out: int, kernel: int, stride: int, pad: int, dil: int,
                      t_out: int, t_k: int) -> np.ndarray:
    """In-image window length of every (output block, tap block) pair of one axis."""
    h0 = np.arange(0, n_out, t_out)
    h1 = np.minimum(h0 + t_out, n_out)
    r0 = np.arange(0, kernel, t_k)
    r1 = np.minimum(r0 + t_k, kernel)
    first = np.maximum(stride * h0[:, None] + dil * r0[None, :] - pad, 0)
    last = np.minimum(stride * (h1 - 1)[:, None] + dil * (r1 - 1)[None, :] - pad, n_in - 1)
    return np.clip(last - first + 1, 0, None)


@lru_cache(maxsize=1 << 16)
def axis_window_sum(n_in: int, n_out: int, kernel: int, stride: int, pad: int, dil: int,
                    t_out: int, t_k: int) -> int:
    """Sum over all (output block, tap block) pairs of one axis of the in-image window length."""
    return int(axis_window_table(n_in, n_out, kernel, stride, pad, dil, t_out, t_k).sum())


def _innermost(order: str, trips: dict, loops: str) -> int:
    """Position in `order` of the innermost loop of `loops` with more than one block, or -1."""
    position = -1
    for p, loop in enumerate(order):
        if loop in loops and trips[loop] > 1:
            position = p
    return position


def traffic(spec: ConvSpec, tiling: Tiling, order: str) -> Traffic:
    """Exact slow-memory traffic of `tiling` visited in loop order `order` (outermost first).

    Implements the contract of the module docstring analytically, in time independent of the
    number of tiles (apart from one cached pass over the block pairs of each spatial axis).
    """
    check_order(order)
    ext = extents(spec)
    t = [min(size, e) for size, e in zip(tiling.as_tuple(), ext)]
    trips = {loop: -(-e // size) for loop, e, size in zip(LOOPS, ext, t)}
    n, k, c, h, w, r, s = ext
    rows = axis_window_sum(spec.in_size[0], h, r, spec.stride[0], spec.padding[0],
                           spec.dilation[0], t[3], t[5])
    cols = axis_window_sum(spec.in_size[1], w, s, spec.stride[1], spec.padding[1],
                           spec.dilation[1], t[4], t[6])
    size_output, size_filter = n * k * h * w, k * c * r * s

    def reloads(array: str, depends: str) -> tuple[int, int]:
        # (multiplier of the array's bytes, number of loads)
        j = _innermost(order, trips, depends)
        multiplier = math.prod(trips[l] for l in REUSE_LOOPS[array] if order.index(l) < j)
        return multiplier, math.prod(trips[l] for l in order[:j + 1])

    input_mult, input_loads = reloads("input", INPUT_LOOPS)
    filter_mult, filter_loads = reloads("filter", FILTER_LOOPS)
    visits, _ = reloads("output", OUTPUT_LOOPS)
    blocks_out = math.prod(trips[l] for l in OUTPUT_LOOPS)
    spilled = spec.p_acc * size_output * (visits - 1)
    return Traffic(input=spec.p_in * n * c * rows * cols * input_mult,
                   filter=spec.p_weight * size_filter * filter_mult,
                   output_read=spilled, output_write=spec.p_out * size_output,
                   spill_write=spilled,
                   loads={"input": input_loads, "filter": filter_loads,
                          "output_read": blocks_out * (visits - 1), "output_write": blocks_out,
                          "spill_write": blocks_out * (visits - 1)},
                   tiles=math.prod(trips.values()))


def _block_ranges(extent: int, size: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + size, extent)) for lo in range(0, extent, size)]


def _window_length(rng_out, rng_k, n_in, stride, pad, dil) -> int:
    first = stride * rng_out[0] + dil * rng_k[0] - pad
    last = stride * (rng_out[1] - 1) + dil * (rng_k[1] - 1) - pad
    return len(range(max(first, 0), min(last, n_in - 1) + 1))


def traffic_by_simulation(spec: ConvSpec, tiling: Tiling, order: str) -> Traffic:
    """The same as `traffic`, by walking every tile in order (for tests on small layers)."""
    check_order(order)
    t = tiling.clipped(spec).as_tuple()
    ranges = {loop: _block_ranges(e, size) for loop, e, size in zip(LOOPS, extents(spec), t)}
    (hin, win), (sh, sw), (dh, dw) = spec.in_size, spec.stride, spec.dilation
    ph, pw = spec.padding
    reduction_tiles = math.prod(len(ranges[l]) for l in REUSE_LOOPS["output"])
    bytes_ = dict.fromkeys(("input", "filter", "output_read", "output_write", "spill_write"), 0)
    loads = dict.fromkeys(bytes_, 0)
    current = {"input": None, "filter": None, "output": None}
    done: dict[tuple, int] = {}
    tiles = 0

    def size(loop, key):
        lo, hi = ranges[loop][key[OUTPUT_LOOPS.index(loop)]]
        return hi - lo

    def retire(key):
        elements = math.prod(size(l, key) for l in OUTPUT_LOOPS)
        stream = "output_write" if done[key] == reduction_tiles else "spill_write"
        bytes_[stream] += elements * (spec.p_out if stream == "output_write" else spec.p_acc)
        loads[stream] += 1

    for index in itertools.product(*(range(len(ranges[l])) for l in order)):
        tiles += 1
        block = {l: ranges[l][i] for l, i in zip(order, index)}
        at = dict(zip(order, index))
        key_in = tuple(at[l] for l in INPUT_LOOPS)
        if key_in != current["input"]:
            current["input"] = key_in
            loads["input"] += 1
            n_, c_ = (block[l][1] - block[l][0] for l in "NC")
            bytes_["input"] += spec.p_in * n_ * c_ * \
                _window_length(block["H"], block["R"], hin, sh, ph, dh) * \
                _window_length(block["W"], block["S"], win, sw, pw, dw)
        key_f = tuple(at[l] for l in FILTER_LOOPS)
        if key_f != current["filter"]:
            current["filter"] = key_f
            loads["filter"] += 1
            bytes_["filter"] += spec.p_weight * math.prod(block[l][1] - block[l][0]
                                                          for l in FILTER_LOOPS)
        key_out = tuple(at[l] for l in OUTPUT_LOOPS)
        if key_out != current["output"]:
            if current["output"] is not None:
                retire(current["output"])
            if done.get(key_out, 0) > 0:
                bytes_["output_read"] += spec.p_acc * math.prod(size(l, key_out)
                                                                for l in OUTPUT_LOOPS)
                loads["output_read"] += 1
            current["output"] = key_out
        done[key_out] = done.get(key_out, 0) + 1
    retire(current["output"])
    return Traffic(**bytes_, loads=loads, tiles=tiles)


__all__ = ["LOOPS", "Tiling", "Traffic", "footprint", "window_span",
           "traffic", "traffic_by_simulation", "extents", "check_order", "clip_array",
           "axis_window_table", "axis_window_sum"]
