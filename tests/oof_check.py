"""Whether an audit's scores are really out of fold, checked from the store and from what the
engine was handed to train on; and a small dataset with copies and `group` twins to check it on.
Shared by the audit tests (tests/test_audit.py, tests/test_backbones.py)."""
from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from db import evaluation, labelling, queries
from tests.conftest import draw_jpeg


def dataset_with_copies(root: Path) -> Path:
    """18 drawn training images, label i % 2, plus byte-identical copies under other names (two
    of image 0, one of image 3 with the other label) and train.csv `group` twins (4 and 7, 8 and 9:
    different pictures that must stay together)."""
    rows = [(f"train_data/{i:032x}.jpg", i % 2, "") for i in range(18)]
    for i in range(18):
        draw_jpeg(root / rows[i][0], i)
    for n, (of, label) in enumerate([(0, 0), (0, 0), (3, 0)]):
        name = f"train_data/copy{n}.jpg"
        shutil.copyfile(root / rows[of][0], root / name)
        rows.append((name, label, ""))
    for i, g in [(4, "twin-a"), (7, "twin-a"), (8, "twin-b"), (9, "twin-b")]:
        rows[i] = (*rows[i][:2], g)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "train.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["", "file_name", "label", "group"])
        w.writerows([n, *r] for n, r in enumerate(rows))
    (root / "test.csv").write_text("id\n")
    return root


def must_stay_together(root: Path, paths: dict[int, str]) -> list[set[int]]:
    """Groups of training images read here from the files themselves, not from the engine: the
    same bytes (sha1), or the same train.csv `group`; joined transitively."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    with open(root / "train.csv", newline="") as f:
        group = {r["file_name"]: r.get("group") or "" for r in csv.DictReader(f)}
    ids = sorted(paths)
    first: dict[str, int] = {}
    edges = []
    for n, i in enumerate(ids):
        for key in (hashlib.sha1((root / paths[i]).read_bytes()).hexdigest(), group.get(paths[i]) and
                    "group:" + group[paths[i]]):
            if key:
                edges.append((first.setdefault(key, n), n))
    a, b = zip(*edges)
    _, comp = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(len(ids), len(ids))))
    together: dict[int, set[int]] = {}
    for i, c in zip(ids, comp):
        together.setdefault(int(c), set()).add(i)
    return [g for g in together.values() if len(g) > 1]


def fold_problems(s, audit_id: int, trained_on: dict[int, set[str]] | None = None) -> list[str]:
    """Every way an audit's scores could fail to be out of fold, one sentence each; none: they are.

    From the store: no fold run scored an image in its own training role; every labelled training
    image is held out by exactly one fold, and its audit score is that fold's prediction; images
    that must stay together (copies, `group` twins) are held out by one fold. `trained_on` (run id
    -> the paths the engine really trained that run on, as `jobs.train_data` handed them over):
    none of them is an image the run scored."""
    from db.models import Dataset

    audit = evaluation.get_audit(s, audit_id)
    ds = s.get(Dataset, audit.dataset_id)
    given = labelling.current_labels(s, ds.id, as_of=audit.labels_as_of)
    paths = {im.id: im.rel_path for im in queries.images(s, ds.id, "train") if im.id in given}
    problems: list[str] = []
    held_by: dict[int, list[int]] = {}
    held_prob: dict[int, float] = {}
    for run in evaluation.audit_runs(s, audit_id):
        train = set(queries.run_image_ids(s, run.id, "train"))
        held = queries.run_image_ids(s, run.id, "val")
        scored = queries.predictions(s, run.id)
        problems += [f"fold {run.fold} scored image {i}, which it trained on"
                     for i in sorted(set(scored) & train)]
        fitted = (trained_on or {}).get(run.id, set())
        problems += [f"fold {run.fold} trained on {p}, which it scored" for p in
                     sorted(fitted & {paths[i] for i in scored if i in paths})]
        for i in held:
            held_by.setdefault(i, []).append(run.fold)
            if i in scored:
                held_prob[i] = scored[i]
    problems += [f"image {i} held out by folds {held_by.get(i, [])}" for i in sorted(paths)
                 if len(held_by.get(i, [])) != 1]
    if audit.status == "succeeded":
        scores = {r.image_id: r.prob for r in evaluation.audit_rows(s, audit_id)}
        problems += [f"image {i} scored {scores.get(i)}, not by the fold holding it out ({held_prob.get(i)})"
                     for i in sorted(paths) if i not in scores or scores[i] != held_prob.get(i)]
    for g in must_stay_together(Path(ds.root), paths):
        folds = sorted({f for i in g for f in held_by.get(i, [])})
        if len(folds) > 1:
            problems.append(f"images {sorted(g)} must stay together but are held out by folds {folds}")
    return problems


def spy_training(monkeypatch) -> SimpleNamespace:
    """Record, per run, the paths `jobs.train_data` hands the engine to train on (the one place
    both a trained fold and a probe fold get their training images): `.trained_on` (run id ->
    paths). `.source` is what the spy reads from: a test plants a leak by replacing it."""
    from engine import jobs

    spied = SimpleNamespace(source=jobs.train_data, trained_on={})

    def spy(s, run):
        data, train_ids, val_ids = spied.source(s, run)
        spied.trained_on[run.id] = set(data.train_paths)
        return data, train_ids, val_ids

    monkeypatch.setattr(jobs, "train_data", spy)
    return spied


def own_label_moves(sessions, audit_id: int, create, fold: int = 0) -> float:
    """How far a probe fold's out-of-fold predictions move when the images it holds out have their
    own labels flipped and the fold is fitted again (`create()`: a new audit with the same config;
    the import labels deal the folds, so they are the same). Out of fold, a held-out image's label
    never reaches its fold's fit: the same cached features and training labels give the same
    predictions (0 moved). A fold that trained on its held-out images, wherever in the engine,
    moves them."""
    from engine.probe import execute_probe

    with sessions() as s:
        run = evaluation.audit_runs(s, audit_id)[fold]
        held = queries.run_image_ids(s, run.id, "val")
        before = queries.predictions(s, run.id, held)
    with sessions.begin() as s:
        now = labelling.current_labels(s, run.dataset_id)
        for i in held:
            labelling.relabel(s, i, 1 - now[i], author="leak check")
    again = create()
    with sessions() as s:
        rerun = evaluation.audit_runs(s, again)[fold]
        assert queries.run_image_ids(s, rerun.id, "val") == held  # the same fold
    execute_probe(rerun.id, sessions=sessions, progress=False)
    with sessions() as s:
        after = queries.predictions(s, rerun.id, held)
    assert before and set(after) == set(before)
    return max(abs(after[i] - before[i]) for i in before)
