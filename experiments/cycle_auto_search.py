# python experiments/cycle_auto_search.py
"""The library's tile search as a per-layer cost of the ResNet-50 rows (docs/gemmini.md 11.4,
round 6).

DOSA's data-collection harness (gemmini-rocc-tests branch ``dosa``,
``gemmini-data-collection/templates/conv_tilings.c``) times ``tiled_conv_auto_inner`` (the
ResNet-50 rows of gemmini.md 6.1) and then ``tiled_conv`` with an explicit tile (the FireSim
training runs).  The first runs the tile search of gemmini.md 4.3 on the Rocket core inside the
timed region before its first ``loop_conv_ws``; the second never does.  The search is three
loops over the seven sizes, each step evaluating ``tiled_conv_total_spad_rows`` for the
scratchpad and the accumulator; phase 3 grows one size by one per candidate and repeats its
pass over all seven sizes until none grows, so a layer whose kchs ends at 568-624 takes
hundreds of passes.

`parconv.gemmini.vendor.heuristics.auto_search_steps` replays the search with the library's own
control flow (the C loops, not the shortened round-robin of `conv_auto`, whose tile it must
reproduce) and counts its steps by kind; `parconv.gemmini.cycles.auto_search_cycles` prices them
from the compiled code.  Printed per ResNet-50 row: the steps, the search cycles, FireSim, and
the round-4 model without and with the search; then the MAPE for multiply costs of 2-6 cycles
(the sensitivity of the one estimated figure).  Reads the fitted constants; fits nothing.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

from parconv.gemmini import cycles  # noqa: E402
from parconv.gemmini.config import GemminiConfig  # noqa: E402


def main() -> int:
    from calibrate_cycles import (FINAL, MEASURED, PREVIOUS, START, model_cycles, resnet_rows,
                                  row_spec)
    from parconv.gemmini.vendor.layer_cost import vendor_layer_cost
    constants = cycles.load_constants()
    theta = constants.vector()
    rows = resnet_rows()
    print("| layer | shrink / fits (taken) / spad full / at max steps | search cycles | FireSim | "
          "model round 4 | error | + search | error |")
    print("|---|---|---|---|---|---|---|---|")
    base, search, measured = [], [], []
    for r in rows:
        s = r["search_steps"]
        model = model_cycles(theta, r, PREVIOUS)
        base.append(model)
        search.append(cycles.auto_search_cycles(s))
        measured.append(r["measured"])
        print(f"| {r['layer']} | {s['shrink']} / {s['fits_spad']} ({s['accepted']}) / "
              f"{s['spad_full']} / "
              f"{s['at_max']} | {search[-1]:,.0f} | {r['measured']:,.0f} | {model:,.0f} | "
              f"{100 * (model / r['measured'] - 1):+.1f}% | {model + search[-1]:,.0f} | "
              f"{100 * ((model + search[-1]) / r['measured'] - 1):+.1f}% |")
    base, search, measured = (np.array(v) for v in (base, search, measured))
    check = np.array([model_cycles(theta, r, FINAL) for r in rows])
    if not np.allclose(check, base + search):
        raise SystemExit("calibrate_cycles.FINAL does not add the search cycles")
    print("\n| cycles per multiply | search cycles per step (fits / spad full) | MAPE | "
          "mean error | median APE |")
    print("|---|---|---|---|---|")
    saved = cycles.ROCKET_MUL_CYCLES
    try:
        for mul in (None, 2, 3, 4, 5, 6):
            if mul is None:
                extra, label, per = np.zeros(len(rows)), "no search (round 4)", "-"
            else:
                cycles.ROCKET_MUL_CYCLES = mul
                extra = np.array([cycles.auto_search_cycles(r["search_steps"]) for r in rows])
                per = (f"{cycles.auto_search_cycles({'fits_spad': 1}):.0f} / "
                       f"{cycles.auto_search_cycles({'spad_full': 1}):.0f}")
                label = f"{mul}" + (" (used)" if mul == saved else "")
            e = (base + extra) / measured - 1
            print(f"| {label} | {per} | {100 * np.mean(np.abs(e)):.1f}% | "
                  f"{100 * np.mean(e):+.1f}% | {100 * np.median(np.abs(e)):.1f}% |")
    finally:
        cycles.ROCKET_MUL_CYCLES = saved
    lo, hi = np.array([r["lo"] for r in rows]), np.array([r["hi"] for r in rows])
    spread = 100 * np.mean((hi - lo) / (hi + lo))
    for label, pred in (("round 4", base), ("+ search", base + search)):
        outside = np.maximum(lo - pred, 0) + np.maximum(pred - hi, 0)
        inside = int(np.sum(outside == 0))
        print(f"{label}: {inside} of {len(rows)} rows inside their FireSim min-max range; mean "
              f"distance to the range {100 * np.mean(outside / measured):.1f}% (the rows' own "
              f"half-range is +-{spread:.1f}% on average)")
    # the start state's share: every row as warm as the training runs (first loads hit when the
    # layer fits the L2), search included
    warm = []
    for r, m in zip(rows, MEASURED):
        spec = row_spec(m)
        cost = vendor_layer_cost(spec, m[5], GemminiConfig(semantics="dosa"),
                                 constants=START, warm=True)
        warm.append(model_cycles(theta, dict(r, terms=cost.calibration_terms), FINAL))
    e = np.array(warm) / measured - 1
    print(f"every row warm (an upper bound of what the start state explains): MAPE "
          f"{100 * np.mean(np.abs(e)):.1f}%, mean error {100 * np.mean(e):+.1f}%")
    total = sum(math.fsum(r["search_steps"].values()) for r in rows)
    print(f"\n{total:.0f} search steps over the {len(rows)} rows; search = "
          f"{100 * search.sum() / measured.sum():.1f}% of their FireSim cycles")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
