"""The library's conv tile loop run on the tile executor (gemmini.md 4.4).  Pure, no MPI.

`vendor_calls` turns the loop nest of `parconv.gemmini.vendor.calls.vendor_loop` into the executor's
`TileCall` records (the library's windows, truncation and pointer rules, from
`parconv.gemmini.call_rules`); `run_vendor` executes them on data.  The executor then moves the
data and counts the bytes itself, which must equal `parconv.gemmini.vendor.layer_cost.vendor_layer_cost`.
"""

from __future__ import annotations

import numpy as np

from ...errors import ParconvError
from ...spec import ConvSpec
from .. import call_rules as rules
from ..executor import TileCall, TileExecutor
from .calls import vendor_loop


def vendor_calls(loop) -> list[TileCall]:
    """The calls of the library's loop (`parconv.gemmini.vendor.calls.vendor_loop`) as tiles.  Local.

    Windows, truncation and pointer rules are the library's (gemmini.md 4.4), taken from
    `parconv.gemmini.call_rules` (``axis_window`` per spatial axis, ``loads_input`` /
    ``loads_weight``, ``max_pixels_per_row``): every call moves its input and weights in
    ("load") unless ``a_reuse``/``b_reuse`` leaves the pointer NULL ("reuse": the executor
    checks the block is still in one of the two scratchpad halves); under downsample every
    other input row and column is moved (step 2).
    """
    if loop.pooled:
        raise ParconvError("the tile executor does not model a fused max-pool; use "
                           "parconv.gemmini.vendor.layer_cost.vendor_layer_cost for pooled layers")
    step = 2 if loop.downsample else 1
    starts = [[int(v) for v in loop.starts(i)] for i in range(7)]
    sizes = [[int(v) for v in loop.sizes(i)] for i in range(7)]
    windows = []
    for axis, geom in ((1, loop.rows), (2, loop.cols)):
        win = rules.axis_window(geom, np.asarray(starts[axis])[:, None],
                                np.asarray(sizes[axis])[:, None],
                                np.asarray(starts[axis + 3])[None, :],
                                np.asarray(sizes[axis + 3])[None, :])
        lo, hi = (np.broadcast_to(v, win.i_len.shape) for v in win.out_range)
        windows.append((np.asarray(lo), np.asarray(hi), np.broadcast_to(win.i_start, lo.shape),
                        np.broadcast_to(win.i_len, lo.shape)))
    ext, calls = loop.extents, []
    for index in np.ndindex(*loop.counts):
        b, porow, pocol, poch, krow, kcol, kch = index
        sb, _, _, sk, sr, ss, sc = (starts[i][j] for i, j in enumerate(index))
        nb, _, _, pochs_, krows_, kcols_, kchs_ = (sizes[i][j] for i, j in enumerate(index))
        r_lo, r_hi, r_start, r_len = (int(a[porow, krow]) for a in windows[0])
        c_lo, c_hi, c_start, c_len = (int(a[pocol, kcol]) for a in windows[1])
        mpp = rules.max_pixels_per_row(loop.config, kchs_, kcols_, loop.downsample, loop.dilated)
        last = sr + krows_ >= ext[4] and ss + kcols_ >= ext[5] and sc + kchs_ >= ext[6]
        calls.append(TileCall(
            n=(sb, sb + nb), k=(sk, sk + pochs_), c=(sc, sc + kchs_), h=(r_lo, r_hi),
            w=(c_lo, c_hi), r=(sr, sr + krows_), s=(ss, ss + kcols_), row0=r_start,
            col0=c_start, rows=r_len // step, cols=c_len // step, step=step,
            input_key=(b, porow, pocol, krow, kcol, kch), weight_key=(poch, krow, kcol, kch),
            output_key=(b, porow, pocol, poch),
            input_mode="load" if rules.loads_input(loop.a_reuse, poch == 0) else "reuse",
            weight_mode="load" if rules.loads_weight(loop.b_reuse, b + porow + pocol == 0)
            else "reuse", last=bool(last), mpp=int(mpp)))
    return calls


def run_vendor(spec: ConvSpec, x, w, bias=None, tile=None, config=None, downsample=None):
    """Run ``spec`` with the vendor tile (default: `conv_auto`'s) in the library's loop order.

    Local.  Returns ``(y, stats, loop)``: the output (plus ``bias`` when given), the executor's
    `ExecutionStats` and the `VendorLoop` (tile, counts, reuse flags).  A bias is loaded only
    when the semantics has one (``config.has_bias``); passing one otherwise is an error.

    Raises
    ------
    ParconvError
        If the tile does not fit the config's per-tile limits.
    """
    loop = vendor_loop(spec, tile, config, None, downsample)
    if bias is not None and not loop.config.has_bias:
        raise ParconvError(f"semantics {loop.config.semantics!r} loads no bias; run without "
                           f"bias or enable it (GemminiConfig bias=True)")
    executor = TileExecutor(spec, loop.config)
    y, stats = executor.run(vendor_calls(loop), x, w, bias)
    return y, stats, loop
