"""Cross-validation folds for the diagnostics (shortcuts, shift, the probe's choice of C): each
group of images the split keeps together (engine.duplicates.split_groups) held out whole, so a
copy is never scored by a model that trained on its twin."""
from __future__ import annotations

import numpy as np


class FoldError(ValueError):
    """A fold's training part holds one class only: its model could not score the held-out rows."""


def group_folds(y: np.ndarray, groups: np.ndarray | None, folds: int, seed: int,
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(training rows, held-out rows) of each fold: scikit-learn's StratifiedGroupKFold shuffled
    with the seed, at most as many folds as the rarer class has groups (len() says how many were
    used); without groups each row is its own. FoldError when a fold's training part lacks a
    class (groups that mix classes, on few groups): the caller names its data and what to do."""
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(y)
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    per_class = [np.unique(groups[y == c]).size for c in (0, 1)]
    folds = int(min(folds, *per_class))
    if folds < 2:
        raise ValueError("each class needs at least 2 images (not copies of one another) to cross-validate")
    splits = list(StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(y, y, groups))
    for k, (fit, _held) in enumerate(splits, 1):
        missing = [c for c in (0, 1) if not (y[fit] == c).any()]
        if missing:
            raise FoldError(f"cross-validation fold {k} of {folds} would train on class {1 - missing[0]} "
                            f"only "
                            f"(its {len(fit)} training rows: the groups kept together mix classes and are "
                            "too few to spread)")
    return splits


def codes(keys) -> np.ndarray:
    """Group keys (strings) as integers 0, 1, ... in sorted order."""
    return np.unique(np.array([str(k) for k in keys], dtype=str), return_inverse=True)[1]
