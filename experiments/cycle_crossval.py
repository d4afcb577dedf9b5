# python experiments/cycle_crossval.py [--k 1 3 5 10]
"""Leave-one-layer-out cross-validation of the calibrated cycle model and a noise ceiling for
any smooth function of its features (docs/gemmini.md 11.4, round 6).

Records: the FireSim training runs on the 16x16 mesh (experiments/data/gemmini_firesim_train.json,
the calibration data; the held-out FireSim set that judges the model is never read).  Two
pools, each cross-validated by layer (every record of the left-out layer is predicted from
constants fitted on the other layers, with calibrate_cycles.py's fit):

* ``fit layers``: the 228 records of the 29 fit layers of calibrate_cycles.py's split; their
  cross-validated MAPE is what the fit set's 9.4 % becomes out of layer;
* ``all layers``: all 323 16x16 records of the 45 layers (the 16 held-out layers of the split
  included), the most data an honest estimate can use.

Per pool it prints the model's MAPE in-sample (one fit on the whole pool) and cross-validated,
the layers that carry the most cross-validated error, and three noise-ceiling predictors, all
cross-validated by the same folds and using only the model's own per-layer features (log of
calls, execute cycles, passes, short passes, DMA lines hit / missed, bytes moved, missed bytes,
mvout rows, and the input / weight / mvout commands, standardised on the training folds):

* ``kNN cycles``: log cycles as the mean of the k nearest training records (any smooth
  function of the features, no model);
* ``model x kNN residual``: the fold's model times exp(mean log residual of the k nearest
  training records), i.e. the model plus any smooth correction;
* ``model x LS residual``: the fold's model corrected by a least-squares fit (ridge 1e-3) of the
  log residual on the features and their squares;
* ``model x kNN residual, leave one record out``: the kNN correction again, but from every
  other record, the left-out record's own layer included (on the in-sample fit): what the
  features could explain if each layer's other tilings had been seen.

For the ``all layers`` pool it also prints the cross-validated MAPE of the split's fit layers
and of its held-out layers separately, each against the same figure for 2000 random sets of
as many layers (is the split's held-out set unusually hard?).

Fits take a few seconds each (76 fits in all: about 7 min on the shared machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

from calibrate_cycles import fit, load_records, model_cycles  # noqa: E402

#: per-layer sums of these calibration terms (weighted by the calls of each group) are the
#: features; "weight" is the calls themselves
FEATURES = ("weight", "exec", "passes", "short_passes", "hit", "miss", "moved", "miss_bytes",
            "stores", "in_cmds", "w_cmds", "st_cmds")


def features(record) -> np.ndarray:
    t = record["terms"]
    w = np.asarray(t["weight"], dtype=float)
    return np.log1p([float(w.sum()) if f == "weight" else float((np.asarray(t[f]) * w).sum())
                     for f in FEATURES])


def knn_mean(train_x, train_y, test_x, k: int) -> np.ndarray:
    d = ((test_x[:, None, :] - train_x[None, :, :]) ** 2).sum(axis=-1)
    nearest = np.argsort(d, axis=1)[:, :k]
    return train_y[nearest].mean(axis=1)


def ls_correction(train_x, train_r, test_x, ridge: float = 1e-3) -> np.ndarray:
    def design(x):
        return np.hstack([np.ones((len(x), 1)), x, x ** 2])
    a = design(train_x)
    coef = np.linalg.solve(a.T @ a + ridge * len(a) * np.eye(a.shape[1]), a.T @ train_r)
    return design(test_x) @ coef


def ape(pred, meas) -> np.ndarray:
    return np.abs(np.asarray(pred) / np.asarray(meas) - 1)


def crossval(pool: list[dict], ks, label: str, groups: dict | None = None) -> dict:
    layers = sorted({r["key"] for r in pool})
    meas = np.array([r["measured"] for r in pool])
    feats = np.array([features(r) for r in pool])
    layer_of = np.array([layers.index(r["key"]) for r in pool])
    theta_all = fit(pool)
    in_sample = np.array([model_cycles(theta_all, r) for r in pool])
    cv_model = np.empty(len(pool))
    knn = {k: np.empty(len(pool)) for k in ks}
    knn_res = {k: np.empty(len(pool)) for k in ks}
    ls_res = np.empty(len(pool))
    for i, _ in enumerate(layers):
        test, train = layer_of == i, layer_of != i
        theta = fit([r for r, m in zip(pool, train) if m], theta_all)
        model = np.array([model_cycles(theta, r) for r in pool])
        cv_model[test] = model[test]
        mu, sd = feats[train].mean(axis=0), feats[train].std(axis=0) + 1e-9
        x_tr, x_te = (feats[train] - mu) / sd, (feats[test] - mu) / sd
        resid = np.log(meas[train] / model[train])
        for k in ks:
            knn[k][test] = np.exp(knn_mean(x_tr, np.log(meas[train]), x_te, k))
            knn_res[k][test] = model[test] * np.exp(knn_mean(x_tr, resid, x_te, k))
        ls_res[test] = model[test] * np.exp(ls_correction(x_tr, resid, x_te))
    # the same correction from the other records of every layer, the left-out layer's other
    # tilings included (leave one record out, on the in-sample fit): what the features could
    # explain if a layer's own tilings were seen
    mu, sd = feats.mean(axis=0), feats.std(axis=0) + 1e-9
    x_all = (feats - mu) / sd
    resid_all = np.log(meas / in_sample)
    loro = {}
    for k in ks:
        loro[k] = np.empty(len(pool))
        for j in range(len(pool)):
            keep = np.arange(len(pool)) != j
            loro[k][j] = in_sample[j] * np.exp(knn_mean(x_all[keep], resid_all[keep],
                                                         x_all[j:j + 1], k)[0])
    per_layer = sorted(((ape(cv_model[layer_of == i], meas[layer_of == i]).sum(), i)
                        for i in range(len(layers))), reverse=True)
    total = ape(cv_model, meas).sum()
    print(f"\n## {label}: {len(pool)} records, {len(layers)} layers\n")
    print("| predictor | MAPE | median APE |")
    print("|---|---|---|")
    rows = [("model, in-sample (one fit on the pool)", in_sample),
            ("model, leave one layer out", cv_model)]
    rows += [(f"kNN cycles, k = {k}", knn[k]) for k in ks]
    rows += [(f"model x kNN residual, k = {k}", knn_res[k]) for k in ks]
    rows += [("model x LS residual (features and squares)", ls_res)]
    rows += [(f"model x kNN residual, k = {k}, leave one record out (layer seen)", loro[k])
             for k in ks]
    out = {"records": len(pool), "layers": len(layers)}
    for name, pred in rows:
        e = ape(pred, meas)
        out[name] = float(100 * e.mean())
        print(f"| {name} | {100 * e.mean():.1f}% | {100 * np.median(e):.1f}% |")
    cv_ape = ape(cv_model, meas)
    rng = np.random.default_rng(0)
    for name, members in (groups or {}).items():
        mask = np.array([r["key"] in members for r in pool])
        split = 100 * cv_ape[mask].mean()
        print(f"\nLeave one layer out on {name}: MAPE {split:.1f}% over {int(mask.sum())} "
              f"records (in-sample {100 * ape(in_sample[mask], meas[mask]).mean():.1f}%)")
        # the same figure for random sets of as many layers: is this split unusual?
        n = len(members)
        draws = np.array([100 * cv_ape[np.isin(layer_of, rng.choice(len(layers), n,
                                                                     replace=False))].mean()
                          for _ in range(2000)])
        print(f"  random sets of {n} of the {len(layers)} layers (2000 draws): median "
              f"{np.median(draws):.1f}%, 5-95 % range {np.percentile(draws, 5):.1f}-"
              f"{np.percentile(draws, 95):.1f}%; this set at percentile "
              f"{100 * np.mean(draws < split):.0f}")
    print("\nLayers carrying the most leave-one-layer-out error (share of the summed APE):\n")
    print("| layer (N, C, K, in, kernel, stride) | records | MAPE | share |")
    print("|---|---|---|---|")
    cumulative = 0.0
    for j, (s, i) in enumerate(per_layer[:8]):
        n = int((layer_of == i).sum())
        cumulative += s
        print(f"| {layers[i]} | {n} | {100 * s / n:.1f}% | {100 * s / total:.0f}% |")
    for top in (3, 5):
        rest = [i for _, i in per_layer[top:]]
        mask = np.isin(layer_of, rest)
        print(f"\nWithout the {top} worst layers: MAPE {100 * ape(cv_model[mask], meas[mask]).mean():.1f}%"
              f" over {int(mask.sum())} records")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 3, 5, 10])
    args = parser.parse_args(argv)
    start = time.perf_counter()
    records = [r for r in load_records() if r["dim"] == 16]
    crossval([r for r in records if not r["validation"]], args.k, "fit layers")
    crossval(records, args.k, "all layers",
             {"the 29 fit layers": {r["key"] for r in records if not r["validation"]},
              "the 16 held-out layers": {r["key"] for r in records if r["validation"]}})
    print(f"\n(runtime {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
