"""Tile schedules and their checks and counters, over all the tiles at once.  Pure numpy, no MPI.

A schedule is a sequence of `TileCall` records: a list (the vendor loop, hand-made schedules) or
a `TileSchedule`, the same records held as arrays (parconv's tilings, built without a Python
object per tile and materialised only where one call is asked for).

`check_schedule` does, for a whole schedule, what the executor's module docstring
(`parconv.gemmini.executor`) lists per call (steps 1-5: capacities, residency, bias or spill
read-back, window, move-out) on arrays over the calls, so that a schedule of many tiles costs a
few numpy passes rather than a Python function per tile.  Only the residency of blocks whose
mode is not ``"auto"`` is followed call by call (it depends on the order of loads); with
``"auto"`` modes alone (parconv's tilings) a block moves in exactly when the previous call used
another key.  A faulty schedule raises the error of its first faulty call, the check that the
call would fail first in the executor's order: empty tile, window step below 1, capacity,
input then weight residency, an output block visited after it was final, window alignment,
window bounds.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict

import numpy as np

from ..errors import ParconvError, ParconvRuntimeError

#: columns of `call_table`: the 7 half-open ranges, then the window and the flags
COLUMNS = ("n0", "n1", "k0", "k1", "c0", "c1", "h0", "h1", "w0", "w1", "r0", "r1", "s0", "s1",
           "row0", "col0", "rows", "cols", "step", "last", "mpp")


@dataclasses.dataclass(frozen=True, slots=True)
class TileCall:
    """One tile of a schedule.  Ranges are half-open over the 7 loops of the layer.

    ``row0``/``col0`` are the image positions held in the first scratchpad row/column of the
    input window (negative inside the top/left padding), ``rows``/``cols`` the number held
    (padding included), ``step`` the DRAM stride between held positions (2 under downsample).
    Keys identify blocks (block indices, theory.md 6.3); modes are ``"load"`` (always move in, as
    the library does on every call), ``"reuse"`` (the block must still be resident: a NULL
    pointer) or ``"auto"`` (move in unless the previous tile used the identical block).
    ``last`` says the output block's reduction is complete after this call; ``mpp`` is the
    first-layer ``max_pixels_per_row`` of the execute model.
    """

    n: tuple[int, int]
    k: tuple[int, int]
    c: tuple[int, int]
    h: tuple[int, int]
    w: tuple[int, int]
    r: tuple[int, int]
    s: tuple[int, int]
    row0: int
    col0: int
    rows: int
    cols: int
    step: int
    input_key: tuple
    weight_key: tuple
    output_key: tuple
    input_mode: str
    weight_mode: str
    last: bool
    mpp: int = 1

    def sizes(self) -> tuple[int, ...]:
        """Truncated block sizes (nN, nK, nC, nH, nW, nR, nS)."""
        return tuple(b - a for a, b in (self.n, self.k, self.c, self.h, self.w, self.r, self.s))


class TileSchedule:
    """`TileCall` records held as arrays, all with ``"auto"`` modes (consecutive reuse).

    Parameters
    ----------
    table : int64 array (m, len(COLUMNS))
        The integer fields of the calls in visiting order (columns `COLUMNS`).
    input_keys, weight_keys, output_keys : int64 arrays (m, a)
        The block keys of each call (one row each, as the keys' tuples).

    Indexing gives a `TileCall` (a slice: a list of them); iteration materialises every call.
    """

    def __init__(self, table: np.ndarray, input_keys: np.ndarray, weight_keys: np.ndarray,
                 output_keys: np.ndarray) -> None:
        self.table = np.asarray(table, dtype=np.int64).reshape(-1, len(COLUMNS))
        self.keys = {"input": input_keys, "weight": weight_keys, "output": output_keys}

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"call {index} of a schedule of {len(self)}")
        v = self.table[index].tolist()
        key = {k: tuple(a[index].tolist()) for k, a in self.keys.items()}
        return TileCall(*(tuple(v[i:i + 2]) for i in range(0, 14, 2)), *v[14:19],
                        key["input"], key["weight"], key["output"], "auto", "auto",
                        bool(v[19]), v[20])

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def call_table(calls) -> np.ndarray:
    """The integer fields of ``calls`` as an int64 array (len(calls), len(COLUMNS))."""
    if isinstance(calls, TileSchedule):
        return calls.table
    return np.array([(*c.n, *c.k, *c.c, *c.h, *c.w, *c.r, *c.s, c.row0, c.col0, c.rows, c.cols,
                      c.step, c.last, c.mpp) for c in calls],
                    dtype=np.int64).reshape(-1, len(COLUMNS))


def tile_blocks(calls) -> list[tuple]:
    """The (n, h, w, k, c, r, s) ranges of each call (the blocks of its product)."""
    if not isinstance(calls, TileSchedule):
        return [(c.n, c.h, c.w, c.k, c.c, c.r, c.s) for c in calls]
    return [((v[0], v[1]), (v[6], v[7]), (v[8], v[9]), (v[2], v[3]), (v[4], v[5]),
             (v[10], v[11]), (v[12], v[13])) for v in calls.table[:, :14].tolist()]


def max_taps(calls) -> int:
    """The most filter taps (nR nS) of any call (0 for no call)."""
    if isinstance(calls, TileSchedule):
        t = calls.table
        return int(((t[:, 11] - t[:, 10]) * (t[:, 13] - t[:, 12])).max(initial=0))
    return max(((c.r[1] - c.r[0]) * (c.s[1] - c.s[0]) for c in calls), default=0)


def _ceil(a, b):
    return -(-a // b)


def _held(first, count, step, extent):
    """Window indices per call whose image position lies in ``[0, extent)`` (vectorised
    ``_held_positions`` of the executor: the others are zero padding and cost no traffic)."""
    i0 = np.maximum(0, _ceil(-first, step))
    i1 = np.minimum(count, _ceil(extent - first, step))
    return np.maximum(i1 - i0, 0)


def _changes(calls, stream: str) -> np.ndarray:
    """Whether each call's ``stream`` key differs from the previous call's (the first always
    does)."""
    out = np.ones(len(calls), dtype=bool)
    if isinstance(calls, TileSchedule):
        keys = calls.keys[stream]
        out[1:] = (keys[1:] != keys[:-1]).any(axis=1)
        return out
    keys = [getattr(c, stream + "_key") for c in calls]
    out[1:] = [a != b for a, b in zip(keys, keys[1:])]
    return out


def _loads(calls, stream: str) -> tuple[np.ndarray, int | None]:
    """Which calls move their ``stream`` ("input" or "weight") block in, and the index of the
    first call that reuses a block that is not resident (None if none)."""
    if isinstance(calls, TileSchedule):
        return _changes(calls, stream), None
    modes = [getattr(c, stream + "_mode") for c in calls]
    keys = [getattr(c, stream + "_key") for c in calls]
    if all(m == "auto" for m in modes):
        # one resident block at a time, always the previous call's
        return _changes(calls, stream), None
    ident = _window_id if stream == "input" else _weight_id
    resident, loads = OrderedDict(), np.zeros(len(calls), dtype=bool)
    for i, (call, mode, key) in enumerate(zip(calls, modes, keys)):
        held = resident.get(key)
        if mode == "reuse":
            if held is None or held != ident(call):
                return loads, i
            continue
        if mode == "auto" and held is not None:
            continue
        loads[i] = True
        # two scratchpad halves (double buffering): the library keeps tile t in half t
        resident[key] = ident(call)
        while len(resident) > (1 if mode == "auto" else 2):
            resident.popitem(last=False)
    return loads, None


def _window_id(call) -> tuple:
    return (call.n, call.c, call.row0, call.rows, call.col0, call.cols, call.step)


def _weight_id(call) -> tuple:
    return (call.k, call.c, call.r, call.s)


def _visits(calls, opens: np.ndarray, closes: np.ndarray, last: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Per call opening an output block: whether the block was visited before (its partial
    sums are read back) and whether it was already final (a fault)."""
    if isinstance(calls, TileSchedule):
        keys = calls.keys["output"]
        if len(keys) and keys.shape[1] and keys.min() >= 0 and \
                math.prod(int(v) + 1 for v in keys.max(axis=0)) < 2 ** 62:
            # one mixed-radix integer per key (block indices: small and non-negative)
            radix = keys.max(axis=0) + 1
            keys = keys @ np.cumprod(np.r_[radix[1:], 1][::-1])[::-1]
        unique, kid = np.unique(keys, axis=0 if keys.ndim > 1 else None, return_inverse=True)
        blocks, kid = len(unique), kid.reshape(-1)
    else:
        ids: dict = {}
        kid = np.array([ids.setdefault(c.output_key, len(ids)) for c in calls], dtype=np.int64)
        blocks = len(ids)
    starts = np.flatnonzero(opens)
    revisit, final = np.zeros(len(calls), dtype=bool), np.zeros(len(calls), dtype=bool)
    if blocks == len(starts):            # every block visited once
        return revisit, final
    run_kid, run_last = kid[starts], last[np.flatnonzero(closes)].astype(np.int64)
    order = np.argsort(run_kid, kind="stable")
    sorted_kid, sorted_last = run_kid[order], run_last[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = sorted_kid[1:] != sorted_kid[:-1]
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    before = np.cumsum(sorted_last) - sorted_last          # finals of earlier runs (all keys)
    finals_before = before - before[group_start]           # ... of this key
    run_revisit, run_final = np.empty_like(first), np.empty_like(first)
    run_revisit[order], run_final[order] = ~first, finals_before > 0
    revisit[starts], final[starts] = run_revisit, run_final
    return revisit, final


def check_schedule(calls, spec, config, has_bias: bool, stats) -> np.ndarray:
    """Check every call of ``calls`` and add its counts to ``stats`` (an `ExecutionStats`).

    Returns the record of the cycle count: per call (nN, nH, nW, nK, nR, nS, nC, mpp, bytes
    moved by the call and the stores issued right after it).

    Raises
    ------
    ParconvError
        If a tile exceeds the scratchpad or accumulator limit.
    ParconvRuntimeError
        If a tile is empty, reuses a block that is not resident, revisits a final output block,
        reads outside its window, or if the schedule does not finish every output.
    """
    t = call_table(calls)
    sizes = t[:, 1:14:2] - t[:, 0:14:2]
    nN, nK, nC, nH, nW, nR, nS = sizes.T
    (n0, _, k0, _, c0, _, h0, _, w0, _, r0, _, s0, _, row0, col0, rows, cols, step, last,
     mpp) = t.T
    dim = config.dim
    spad_limit, acc_limit = config.spad_rows_limit, config.acc_rows_limit
    # rows of dim elements (GemminiConfig.for_spec keeps the byte capacity for wider types)
    k_rows = _ceil(nK, dim)
    spad_rows = _ceil(nC, dim) * nN * rows * cols + k_rows * nR * nS * nC
    acc_rows = k_rows * nN * nH * nW
    elements = nN * nK * nH * nW
    in_loads, in_fault = _loads(calls, "input")
    w_loads, w_fault = _loads(calls, "weight")
    opens = _changes(calls, "output")
    closes = np.ones(len(calls), dtype=bool)
    closes[:-1] = opens[1:]
    revisit, final = _visits(calls, opens, closes, last.astype(bool))
    # every input position the tile reads lies in its window, on the window's grid
    (sh, sw), (dh, dw), (ph, pw) = spec.stride, spec.dilation, spec.padding
    off_r, off_c = sh * h0 + dh * r0 - ph - row0, sw * w0 + dw * s0 - pw - col0
    safe = np.maximum(step, 1)
    misaligned = (off_r % safe != 0) | (off_c % safe != 0) \
        | ((sh % safe != 0) & (nH > 1)) | ((sw % safe != 0) & (nW > 1)) \
        | ((dh % safe != 0) & (nR > 1)) | ((dw % safe != 0) & (nS > 1))
    last_r = off_r // safe + (sh // safe) * (nH - 1) + (dh // safe) * (nR - 1)
    last_c = off_c // safe + (sw // safe) * (nW - 1) + (dw // safe) * (nS - 1)
    outside = (off_r < 0) | (off_c < 0) | (last_r >= rows) | (last_c >= cols)
    faults = [sizes.min(axis=1) <= 0, step < 1, (spad_rows > spad_limit) | (acc_rows > acc_limit),
              _at(in_fault, len(calls)), _at(w_fault, len(calls)), final, misaligned, outside]
    _raise_first(calls, faults, spad_rows, acc_rows, spad_limit, acc_limit)

    cfg, st = config, stats
    H_in, W_in = spec.in_size
    pixels = nN * _held(row0, rows, safe, H_in) * _held(col0, cols, safe, W_in)
    # only in-image positions cost DRAM bytes; the padding is zero-filled
    in_bytes = np.where(in_loads, pixels * nC * cfg.input_bytes, 0)
    w_bytes = np.where(w_loads, nK * nR * nS * nC * cfg.weight_bytes, 0)
    read_back = opens & revisit
    bias = opens & ~revisit & has_bias
    # stride-0 mvins: one dim-wide row per dim output pixels of a row and channel block
    open_bytes = np.where(read_back, elements * cfg.acc_bytes, 0) \
        + np.where(bias, nN * nH * _ceil(nW, dim) * nK * cfg.bias_bytes, 0)
    done, spill = closes & (last != 0), closes & (last == 0)
    out_bytes = np.where(done, elements * cfg.output_bytes, 0)
    spill_bytes = np.where(spill, elements * cfg.acc_bytes, 0)
    finished = int(elements[done].sum())
    if finished != spec.size_output:
        raise ParconvRuntimeError(f"schedule finished {finished} of {spec.size_output} outputs")

    st.dram_bytes["input"] += int(in_bytes.sum())
    st.dram_bytes["weight"] += int(w_bytes.sum())
    st.dram_bytes["bias"] += int(np.where(bias, open_bytes, 0).sum())
    st.dram_bytes["output"] += int(out_bytes.sum())
    st.dram_bytes["psum"] += int(np.where(read_back, open_bytes, 0).sum() + spill_bytes.sum())
    st.mvin_rows["input"] += int((pixels * _ceil(nC, dim))[in_loads].sum())
    st.mvin_rows["weight"] += int((k_rows * nR * nS * nC)[w_loads].sum())
    st.mvin_rows["bias"] += int(acc_rows[bias].sum())
    st.mvin_rows["psum"] += int(acc_rows[read_back].sum())
    st.mvout_rows["output"] += int(acc_rows[done].sum())
    st.mvout_rows["psum"] += int(acc_rows[spill].sum())
    if len(calls):
        st.max_spad_rows = max(st.max_spad_rows, int(spad_rows.max()))
        st.max_acc_rows = max(st.max_acc_rows, int(acc_rows.max()))
    st.macs += int((nN * nK * nC * nH * nW * nR * nS).sum())
    st.calls += len(calls)
    moved = in_bytes + w_bytes + open_bytes + out_bytes + spill_bytes
    return np.stack([nN, nH, nW, nK, nR, nS, nC, mpp, moved], axis=1)


def _at(index: int | None, length: int) -> np.ndarray:
    out = np.zeros(length, dtype=bool)
    if index is not None:
        out[index] = True
    return out


def _raise_first(calls, faults, spad_rows, acc_rows, spad_limit, acc_limit) -> None:
    """Raise the error of the first faulty call (the first failing check of that call)."""
    bad = np.flatnonzero(np.logical_or.reduce(faults))
    if not len(bad):
        return
    i = int(bad[0])
    call = calls[i]
    kind = next(j for j, f in enumerate(faults) if f[i])
    if kind == 0:
        raise ParconvRuntimeError(f"empty tile {call}")
    if kind == 1:
        raise ParconvRuntimeError(f"tile {call.sizes()} has window step {call.step} (must be "
                                  f"at least 1)")
    kind -= 1
    if kind == 1:
        raise ParconvError(
            f"tile {call.sizes()} needs {int(spad_rows[i])} scratchpad rows (limit "
            f"{spad_limit}) and {int(acc_rows[i])} accumulator rows (limit "
            f"{acc_limit}); the tiling does not fit")
    if kind == 2:
        raise ParconvRuntimeError(f"call reuses input block {call.input_key} that is not "
                                  f"resident with window {_window_id(call)}")
    if kind == 3:
        raise ParconvRuntimeError(f"call reuses weight block {call.weight_key} that is "
                                  f"not resident")
    if kind == 4:
        raise ParconvRuntimeError(f"output block {call.output_key} visited after it was final")
    if kind == 5:
        raise ParconvRuntimeError(f"tile {call.sizes()} is not aligned with its window")
    raise ParconvRuntimeError(f"tile {call.sizes()} reads outside its input window")
