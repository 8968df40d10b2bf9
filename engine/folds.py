"""Cross-validation folds for the diagnostics (shortcuts, shift, the probe's choice of C): each
group of images the split keeps together (engine.duplicates.split_groups) held out whole, so a
copy is never scored by a model that trained on its twin."""
from __future__ import annotations

import numpy as np


def group_folds(y: np.ndarray, groups: np.ndarray | None, folds: int, seed: int):
    """(splitter, groups): scikit-learn's StratifiedGroupKFold shuffled with the seed, at most as
    many folds as the rarer class has groups; without groups each row is its own."""
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(y)
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    per_class = [np.unique(groups[y == c]).size for c in (0, 1)]
    folds = int(min(folds, *per_class))
    if folds < 2:
        raise ValueError("each class needs at least 2 images (not copies of one another) to cross-validate")
    return StratifiedGroupKFold(folds, shuffle=True, random_state=seed), groups


def codes(keys) -> np.ndarray:
    """Group keys (strings) as integers 0, 1, ... in sorted order."""
    return np.unique(np.array([str(k) for k in keys], dtype=str), return_inverse=True)[1]
