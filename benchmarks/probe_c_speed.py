"""The time the diagnostics' cross-validation takes on synthetic pooled features.

    nice -n 10 python benchmarks/probe_c_speed.py probe [--rows 4000] [--dims 1280] [--seeds 0 1]
    nice -n 10 python benchmarks/probe_c_speed.py shift [--rows 4000] [--dims 1280] [--seeds 0 1]

probe: engine.probe.fit_head's choice of C (5 grouped folds, CS, warm-started along C per fold)
against the way it chose C before, scikit-learn's GridSearchCV over a scaler + regression
pipeline (a cold fit per C and fold), on the same folds: seconds and the C each picks.

shift: `aivh shift --run`'s run-features-alone model, engine.shortcuts.features_alone_oof
(standardised logistic regression), against gradient boosting (engine.shortcuts.out_of_fold, as
before) on the same folds: seconds and out-of-fold AUC.

The features: |N(0, 1)| (pooled activations are non-negative), 64 dimensions shifted by 0.3
standard deviations (`--signal`) for class 1, and every 4th row a jittered copy of the row before it (a
group of two). One JSON line per seed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def features(rows: int, dims: int, seed: int, signal: float = 0.3,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, rows)
    x = np.abs(rng.normal(size=(rows, dims)))
    x[:, :64] += signal * y[:, None]
    groups = np.arange(rows)
    copies = np.arange(3, rows, 4)
    x[copies] = x[copies - 1] + rng.normal(0, 0.05, (len(copies), dims))
    y[copies], groups[copies] = y[copies - 1], groups[copies - 1]
    return x.astype(np.float32), y, groups


def old_fit_head_c(x, y, seed, groups) -> float:
    """The choice of C before: GridSearchCV, a cold fit per C and fold (the same grouped folds)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from engine.folds import group_folds
    from engine.probe import CS

    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    search = GridSearchCV(pipe, {"logisticregression__C": CS}, scoring="neg_log_loss",
                          cv=group_folds(y, groups, 5, seed))
    search.fit(x, y)
    return float(search.best_params_["logisticregression__C"])


def probe(rows: int, dims: int, seeds: list[int]) -> None:
    from engine.probe import fit_head

    for seed in seeds:
        x, y, groups = features(rows, dims, seed)
        t0 = time.perf_counter()
        c_new = fit_head(x, y, seed, groups)[2]
        new = time.perf_counter() - t0
        t0 = time.perf_counter()
        c_old = old_fit_head_c(x, y, seed, groups)
        old = time.perf_counter() - t0
        print(json.dumps({"what": "probe", "rows": rows, "dims": dims, "seed": seed, "old_s": round(old, 1),
                          "new_s": round(new, 1), "old_c": c_old, "new_c": c_new}), flush=True)


def shift(rows: int, dims: int, seeds: list[int], signal: float = 0.3) -> None:
    from sklearn.metrics import roc_auc_score

    from engine.shortcuts import features_alone_oof, out_of_fold

    for seed in seeds:
        x, y, groups = features(rows, dims, seed, signal)
        t0 = time.perf_counter()
        p_new = features_alone_oof(x, y, groups=groups, seed=seed)
        new = time.perf_counter() - t0
        t0 = time.perf_counter()
        p_old = out_of_fold(x, y, groups=groups, seed=seed)
        old = time.perf_counter() - t0
        print(json.dumps({"what": "shift", "rows": rows, "dims": dims, "seed": seed, "signal": signal,
                          "boosting_s": round(old, 1),
                          "logistic_s": round(new, 1), "boosting_auc": round(roc_auc_score(y, p_old), 4),
                          "logistic_auc": round(roc_auc_score(y, p_new), 4)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["probe", "shift"])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--dims", type=int, default=1280)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--signal", type=float, default=0.3, help="shift: class 1's shift of 64 dimensions")
    args = parser.parse_args()
    if args.what == "probe":
        probe(args.rows, args.dims, args.seeds)
    else:
        shift(args.rows, args.dims, args.seeds, args.signal)


if __name__ == "__main__":
    main()
