"""Which images a run trains and validates on, and which fold an audit holds each image out in.

One rule for both: byte-identical copies (same content hash), and whatever else
engine.duplicates.split_groups joins (the train.csv group recorded at import, near copies on
request), form a group that always lands on one side; a group's class is the most common import
label among its copies (the lower on a tie); within a class, groups are ordered by the smallest
stable hash of their members' keys (`stable_rank`). The import label is an image's first label
row, which never changes (a relabel, or an edit of train.csv recorded by a re-import, is a later
row), so no relabel moves an image; every input is read from the store, never from the live CSV.
"""
from __future__ import annotations

import hashlib


def stable_rank(seed: int, key: str, salt: str = "") -> str:
    """An image's place in its class: sha1 of (salt, seed, its stable key), the same on any machine."""
    return hashlib.sha1(f"{salt}{seed}:{key}".encode()).hexdigest()


def content_groups(ids, content: dict[int, str | None] | None) -> list[list[int]]:
    """Images grouped by content hash (id -> sha1 of the bytes); an image without one is alone."""
    content = content or {}
    by_content: dict[str, list[int]] = {}
    groups: list[list[int]] = []
    for i in sorted(ids):
        digest = content.get(i)
        if digest is None:
            groups.append([i])
        else:
            by_content.setdefault(digest, []).append(i)
    return groups + list(by_content.values())


def group_class(group: list[int], strata: dict[int, int]) -> int:
    """The most common import label among a group's copies, the lower on a tie."""
    labels = [strata[i] for i in group]
    return min(set(labels), key=lambda v: (-labels.count(v), v))


def ordered_classes(groups: list[list[int]], keys: dict[int, str], strata: dict[int, int], seed: int,
                    salt: str = ""):
    """(class, its groups in stable-hash order) for each class, lowest class first."""
    def rank(g: list[int]) -> str:
        return min(stable_rank(seed, keys[i], salt) for i in g)

    by_class: dict[int, list[list[int]]] = {}
    for g in groups:
        by_class.setdefault(group_class(g, strata), []).append(g)
    return [(cls, sorted(by_class[cls], key=rank)) for cls in sorted(by_class)]


def split_images(keys: dict[int, str], strata: dict[int, int], *, val_fraction: float,
                 seed: int, limit: int | None = None,
                 content: dict[int, str | None] | None = None) -> tuple[list[int], list[int]]:
    """(train ids, val ids): a pure function of stable keys, the seed, the import labels and the groups.

    Images with the same content key (`content`: id -> sha1 of the file's bytes, or the group key
    of split_groups) form one
    group that lands whole on one side: a copy under another name never trains while its twin
    validates. Per class, groups are taken in stable-hash order (module docstring) until
    `val_fraction` of the class's images are validation. Without duplicates this is exactly the
    per-image split.
    """
    total = len(keys)
    train_ids, val_ids = [], []
    for _, ranked in ordered_classes(content_groups(keys, content), keys, strata, seed):
        if limit is not None and limit < total:
            budget = max(2, round(limit * sum(map(len, ranked)) / total))
            ranked = _take(ranked, budget)
        size = sum(map(len, ranked))
        n_val = max(1, round(val_fraction * size)) if val_fraction > 0 else 0
        val = _take(ranked, n_val)
        val_ids += [i for g in val for i in g]
        train_ids += [i for g in ranked[len(val):] for i in g]
    return sorted(train_ids), sorted(val_ids)


def _take(groups: list[list[int]], images: int) -> list[list[int]]:
    """The leading groups holding at least `images` images (fewer if there are not that many)."""
    taken, n = [], 0
    for g in groups:
        if n >= images:
            break
        taken.append(g)
        n += len(g)
    return taken


def assign_folds(keys: dict[int, str], strata: dict[int, int], folds: int, seed: int,
                 groups: dict[int, str] | None = None) -> dict[int, int]:
    """image id -> fold. Per class, groups of copies (`groups`: image id -> content key,
    queries.content_keys) in stable-hash order (salted "audit:", so folds do not follow the
    train/val split) are dealt one at a time to the fold with the fewest images of that class
    so far (ties: the lowest fold): without copies, a round-robin. No copy is trained on while
    another is held out."""
    out: dict[int, int] = {}
    for _, ordered in ordered_classes(content_groups(keys, groups), keys, strata, seed, salt="audit:"):
        filled = [0] * folds
        for ids in ordered:
            k = min(range(folds), key=lambda f: (filled[f], f))
            filled[k] += len(ids)
            out.update({i: k for i in ids})
    return out
