"""The checks and counters of a tile schedule, over all its tiles at once.  Pure numpy, no MPI.

`check_schedule` does, for a whole schedule of `parconv.gemmini.executor.TileCall` records, what
the executor's module docstring lists per call (steps 1-5: capacities, residency, bias or spill
read-back, window, move-out) on arrays over the calls, so that a schedule of many tiles costs a
few numpy passes rather than a Python function per tile.  Only the residency of blocks whose
mode is not ``"auto"`` is followed call by call (it depends on the order of loads); with
``"auto"`` modes alone (parconv's tilings) a block moves in exactly when the previous call used
another key.  A faulty schedule raises the error of its first faulty call, the check that the
call would fail first in the executor's order: empty tile, window step below 1, capacity, input then weight
residency, an output block visited after it was final, window alignment, window bounds.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..errors import ParconvError, ParconvRuntimeError

#: columns of `call_table`: the 7 half-open ranges, then the window and the flags
COLUMNS = ("n0", "n1", "k0", "k1", "c0", "c1", "h0", "h1", "w0", "w1", "r0", "r1", "s0", "s1",
           "row0", "col0", "rows", "cols", "step", "last", "mpp")


def call_table(calls: list) -> np.ndarray:
    """The integer fields of ``calls`` as an int64 array (len(calls), len(COLUMNS))."""
    return np.array([(*c.n, *c.k, *c.c, *c.h, *c.w, *c.r, *c.s, c.row0, c.col0, c.rows, c.cols,
                      c.step, c.last, c.mpp) for c in calls],
                    dtype=np.int64).reshape(-1, len(COLUMNS))


def _ceil(a, b):
    return -(-a // b)


def _held(first, count, step, extent):
    """Window indices per call whose image position lies in ``[0, extent)`` (vectorised
    ``_held_positions`` of the executor: the others are zero padding and cost no traffic)."""
    i0 = np.maximum(0, _ceil(-first, step))
    i1 = np.minimum(count, _ceil(extent - first, step))
    return np.maximum(i1 - i0, 0)


def _changes(keys: list) -> np.ndarray:
    """Whether each key differs from the previous one (the first always does)."""
    out = np.ones(len(keys), dtype=bool)
    out[1:] = [a != b for a, b in zip(keys, keys[1:])]
    return out


def _loads(calls: list, stream: str) -> tuple[np.ndarray, int | None]:
    """Which calls move their ``stream`` ("input" or "weight") block in, and the index of the
    first call that reuses a block that is not resident (None if none)."""
    modes = [getattr(c, stream + "_mode") for c in calls]
    keys = [getattr(c, stream + "_key") for c in calls]
    if all(m == "auto" for m in modes):
        # one resident block at a time, always the previous call's
        return _changes(keys), None
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


def _visits(calls: list, opens: np.ndarray, closes: np.ndarray, last: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Per call opening an output block: whether the block was visited before (its partial
    sums are read back) and whether it was already final (a fault)."""
    ids: dict = {}
    kid = np.array([ids.setdefault(c.output_key, len(ids)) for c in calls], dtype=np.int64)
    starts = np.flatnonzero(opens)
    revisit, final = np.zeros(len(calls), dtype=bool), np.zeros(len(calls), dtype=bool)
    if len(ids) == len(starts):          # every block visited once
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


def check_schedule(calls: list, spec, config, has_bias: bool, stats) -> np.ndarray:
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
    opens = _changes([c.output_key for c in calls])
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
