"""Label audit: folds, cleanlab ranking, the CSV, retrain --like, fair comparison, label history."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from db import evaluation, labelling, queries
from db.models import Run
from engine import audit as au
from engine.compare import compare_runs
from engine.splits import assign_folds
from tests.conftest import aivh, finished_audit, finished_run
from tests.oof_check import (dataset_with_copies, fold_problems, must_stay_together, own_label_moves,
                             spy_training)


def test_folds_hold_out_every_image_once_and_balance_each_class():
    keys = {i: f"train_data/{i:04d}.jpg" for i in range(103)}
    strata = {i: int(i % 3 == 0) for i in keys}
    folds = assign_folds(keys, strata, 5, seed=0)
    assert set(folds) == set(keys) and set(folds.values()) == set(range(5))
    for cls in (0, 1):
        counts = np.bincount([f for i, f in folds.items() if strata[i] == cls], minlength=5)
        assert counts.max() - counts.min() <= 1
    assert assign_folds(keys, strata, 5, seed=0) == folds
    assert assign_folds(keys, strata, 5, seed=1) != folds
    shifted = assign_folds({i + 1000: k for i, k in keys.items()}, {i + 1000: v for i, v in strata.items()},
                              5, seed=0)
    assert {keys[i - 1000]: f for i, f in shifted.items()} == {keys[i]: f for i, f in folds.items()}


def test_cleanlab_ranks_labels_that_disagree_with_a_confident_model_worst():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 400)
    probs = np.clip(np.where(truth == 1, 0.85, 0.15) + rng.normal(0, 0.05, 400), 0.01, 0.99)
    given = truth.copy()
    flipped = rng.choice(400, 20, replace=False)
    given[flipped] = 1 - given[flipped]
    quality, flagged = au.label_scores(given, probs)
    assert set(np.argsort(quality)[:20]) == set(flipped)
    # cleanlab prunes about as many as it estimates are noisy: all flagged are flips, most flips flagged
    assert set(np.flatnonzero(flagged)) <= set(flipped) and flagged.sum() >= 16


def test_audit_scores_every_training_image_once_worst_first(sessions, tmp_path):
    audit_id, flipped = finished_audit(sessions)
    with sessions() as s:
        audit = evaluation.get_audit(s, audit_id)
        rows = evaluation.audit_rows(s, audit_id)
        train = queries.images(s, audit.dataset_id, "train")
        runs = evaluation.audit_runs(s, audit_id)
        path = au.write_audit_csv(s, audit_id, tmp_path / "audit.csv")
    assert audit.status == "succeeded" and audit.flagged == sum(r.flagged for r in rows)
    assert sorted(r.image_id for r in rows) == sorted(im.id for im in train)
    assert [r.rank for r in rows] == list(range(1, len(rows) + 1))
    assert [r.quality for r in rows] == sorted(r.quality for r in rows)
    top = {r.image_id for r in rows[: len(flipped)]}
    assert len(top & flipped) >= 0.8 * len(flipped)  # a decent model finds the planted flips
    assert {r.kind for r in runs} == {"fold"} and all(r.config["keep_epoch"] == "last" for r in runs)
    with open(path, newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(au.CSV_COLUMNS)
    assert [t["file_name"] for t in table] == [r.rel_path for r in rows]
    assert all(t["file_name"].startswith("train_data/") for t in table)
    assert {t["flagged"] for t in table} <= {"0", "1"}


def test_the_queue_shows_the_audited_label_and_the_current_one_after_a_fix(sessions):
    audit_id, _flipped = finished_audit(sessions)
    with sessions() as s:
        worst = evaluation.audit_rows(s, audit_id, limit=1)[0]
    with sessions.begin() as s:
        labelling.relabel(s, worst.image_id, 1 - worst.given_label, author="ana", note="audit fix")
    with sessions() as s:
        again = evaluation.audit_rows(s, audit_id, limit=1)[0]
    assert again.given_label == worst.given_label and again.current == 1 - worst.given_label
    assert again.reviews == worst.reviews + 1


def test_compare_uses_the_same_images_and_leaves_out_relabelled_ones(sessions):
    run_a = finished_run(sessions)
    with sessions.begin() as s:
        a = queries.get_run(s, run_a)
        val = queries.run_image_ids(s, run_a, "val")
        train = queries.run_image_ids(s, run_a, "train")
        for i in val[:3]:
            labelling.relabel(s, i, 1 - labelling.current_labels(s, a.dataset_id)[i], author="ana")
        b = Run(dataset_id=a.dataset_id, status="succeeded", config=a.config, best_epoch=1,
                labels_as_of=labelling.newest_label_id(s, a.dataset_id), like_run_id=run_a, checkpoint="x")
        s.add(b)
        s.flush()
        queries.set_run_images(s, b.id, {"train": train, "val": val})
        labels = labelling.current_labels(s, a.dataset_id)
        queries.upsert_predictions(s, b.id, [(i, 0.9 if labels[i] else 0.1) for i in val])
        evaluation.create_eval_set(s, a.dataset_id, "frozen", val[5:] + train[:4])
        run_b = b.id
    with sessions() as s:
        r = compare_runs(s, run_a, run_b)
        frozen = compare_runs(s, run_a, run_b, eval_set="frozen")
    assert r["labels_changed"] == 3 and r["excluded_label_changed"] == 3
    assert r["images"] == len(val) - 3
    assert r["b"]["f1_at_0.5"] == 1.0 and r["a"]["f1_at_0.5"] < 1.0
    assert frozen["images"] == len(val) - 5 and frozen["excluded_trained_on"] == 4
    with sessions() as s, pytest.raises(LookupError, match="no evaluation set"):
        compare_runs(s, run_a, run_b, eval_set="missing")


def test_audit_cli_end_to_end_then_retrain_like_compare_and_export_history(workspace, tiny_dataset, tmp_path):
    aivh("import", str(tiny_dataset), "--name", "tiny", env_home=workspace)
    flags = ["--epochs", "1", "--img-size", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu"]
    out = aivh("audit", "--dataset", "tiny", "--folds", "2", *flags, "--out", str(tmp_path / "a.csv"),
               "--json", env_home=workspace)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == "succeeded" and result["scored"] == 8 and len(result["runs"]) == 2
    with open(tmp_path / "a.csv", newline="") as f:
        table = list(csv.DictReader(f))
    with open(tiny_dataset / "train.csv", newline="") as f:
        names = {r["file_name"]: r["label"] for r in csv.DictReader(f)}
    assert {t["file_name"] for t in table} == set(names)
    assert all(t["given_label"] == names[t["file_name"]] for t in table)
    worst = table[0]["file_name"]

    # a reviewer fixes the worst label, then retrains with the first fold run's config
    from db.store import session_factory

    sessions = session_factory()
    with sessions.begin() as s:
        im = queries.image_by_path(s, queries.get_dataset(s, "tiny").id, worst)
        labelling.relabel(s, im.id, 1 - int(names[worst]), author="ana", note="audit")
    out = aivh("train", "--like", str(result["runs"][0]), "--patience", "1", "--json", env_home=workspace)
    like = json.loads(out.stdout.strip().splitlines()[-1])
    assert like["status"] == "succeeded" and like["like_run"] == result["runs"][0]
    with sessions() as s:
        new = queries.get_run(s, like["run"])
        assert new.kind == "train" and new.config["keep_epoch"] == "best" and new.config["patience"] == 1
        assert new.config["img_size"] == 32 and new.labels_as_of == labelling.newest_label_id(s, new.dataset_id)
        assert labelling.labels_changed(s, new.dataset_id, queries.get_run(s, result["runs"][0]).labels_as_of,
                                      new.labels_as_of) == [im.id]
    aivh("evalset", "--run", str(like["run"]), "--name", "frozen", env_home=workspace)
    out = aivh("compare", "--runs", str(like["run"]), str(like["run"]), "--eval-set", "frozen", "--json",
               env_home=workspace)
    cmp = json.loads(out.stdout.strip().splitlines()[-1])
    assert cmp["images"] >= 1 and cmp["a"] == cmp["b"]
    aivh("labels", "export", "--dataset", "tiny", "--out", str(tmp_path / "labels.csv"), env_home=workspace)
    with open(tmp_path / "labels.csv", newline="") as f:
        history = list(csv.DictReader(f))
    assert len(history) == 9 and history[-1]["file_name"] == worst
    assert (history[-1]["author"], history[-1]["note"], history[-1]["source"]) == ("ana", "audit", "review")


def test_an_audit_whose_fold_died_finishes_on_the_next_call(sessions, tiny_dataset, monkeypatch):
    from engine.config import TrainConfig
    from engine.ingest import import_dataset

    import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    spied = spy_training(monkeypatch)
    cfg = TrainConfig(epochs=1, img_size=32, batch_size=4, workers=0, device="cpu")
    with sessions.begin() as s:
        audit_id = au.create_audit(s, queries.get_dataset(s, "tiny"), cfg, 2).id
        first = evaluation.audit_runs(s, audit_id)[0]
        first.status, first.pid = "running", 999_999_999  # died before its first checkpoint
        first.progress = {"host": __import__("socket").gethostname()}
    audit = au.run_audit(sessions, audit_id, progress=False)
    with sessions() as s:
        assert audit.status == "succeeded"
        assert [r.status for r in evaluation.audit_runs(s, audit_id)] == ["succeeded", "succeeded"]
        assert len(evaluation.audit_rows(s, audit_id)) == 8
        assert len(spied.trained_on) == 2  # trained folds, out of fold too
        assert fold_problems(s, audit_id, spied.trained_on) == []


def test_audit_refuses_too_few_images_per_class(sessions, tiny_dataset):
    from engine.config import TrainConfig
    from engine.ingest import import_dataset

    import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    with sessions.begin() as s, pytest.raises(ValueError, match="at least 5 labelled images of each class"):
        au.create_audit(s, queries.get_dataset(s, "tiny"), TrainConfig(), 5)


# --- out of fold, shown on a real audit (tests/oof_check.py) ------------------------------------

PROBE_FOLDS = {"arch": "tf_efficientnet_lite0", "pretrained": None, "probe": True, "img_size": 32,
               "device": "cpu", "workers": 0, "batch_size": 32}  # random weights: only the folds matter


@pytest.fixture()
def copies_audit(sessions, tmp_path, monkeypatch):
    """The copies dataset imported; `create()` makes a 3-fold probe audit on it. Every fold run's
    training set is recorded as `jobs.train_data` hands it to the engine (`trained_on`, run id ->
    paths); `source` is what the spy reads from (a test plants a leak there)."""
    from engine.config import TrainConfig
    from engine.ingest import import_dataset

    import_dataset(sessions, dataset_with_copies(tmp_path / "copies"), "copies", progress=False)
    spied = spy_training(monkeypatch)

    def create() -> int:
        with sessions.begin() as s:
            ds = queries.get_dataset(s, "copies")
            return au.create_audit(s, ds, TrainConfig.from_dict(PROBE_FOLDS), 3).id

    spied.create = create
    return spied


def test_a_real_probe_audit_scores_every_image_out_of_fold_and_keeps_copies_together(sessions, copies_audit):
    audit_id = copies_audit.create()
    au.run_audit(sessions, audit_id, progress=False)
    trained_on = copies_audit.trained_on
    with sessions() as s:
        runs = evaluation.audit_runs(s, audit_id)
        assert [r.status for r in runs] == ["succeeded"] * 3 and set(trained_on) == {r.id for r in runs}
        assert len(evaluation.audit_rows(s, audit_id)) == 21
        assert fold_problems(s, audit_id, trained_on) == []
        ds = queries.get_dataset(s, "copies")
        paths = dict(queries.image_paths(s, ds.id, "train"))
        together = must_stay_together(Path(ds.root), paths)
    names = {frozenset(Path(paths[i]).stem[-2:] if "copy" not in paths[i] else Path(paths[i]).stem
                       for i in g) for g in together}  # the groups the check held together are real
    assert names == {frozenset({"00", "copy0", "copy1"}), frozenset({"03", "copy2"}),
                     frozenset({"04", "07"}), frozenset({"08", "09"})}
    # a fold's held-out images relabelled: its predictions of them do not move (their labels never
    # reached its fit); the probe is deterministic, so the same fit gives the same numbers
    assert own_label_moves(sessions, audit_id, copies_audit.create) < 1e-9
    # the check finds leaks planted in the store: a fold's score of an image it trained on ...
    with sessions.begin() as s:
        first, second = evaluation.audit_runs(s, audit_id)[:2]
        seen = next(i for i in queries.run_image_ids(s, first.id, "train")
                    if i in queries.run_image_ids(s, second.id, "train"))  # held out by the third fold
        queries.upsert_predictions(s, first.id, [(seen, 0.5)])
        # ... and an image held out by two folds (moved into the second fold's held-out images)
        queries.set_run_images(s, second.id, {
            "train": [i for i in queries.run_image_ids(s, second.id, "train") if i != seen],
            "val": queries.run_image_ids(s, second.id, "val") + [seen]})
    with sessions() as s:
        found = fold_problems(s, audit_id, trained_on)
    assert f"fold 0 scored image {seen}, which it trained on" in found
    assert f"image {seen} held out by folds [1, 2]" in found


def test_the_out_of_fold_check_catches_split_copies_and_a_fold_trained_on_its_held_out_images(
        sessions, copies_audit, monkeypatch):
    """Leaks planted in the engine, each caught: folds dealt without the groups (copies and twins
    straddle folds), and a fold run handed its held-out images to train on (seen by the spy, and
    by its held-out predictions moving with their own labels)."""
    from engine.probe import execute_probe
    from engine.splits import assign_folds as dealt
    from engine.train import TrainData

    monkeypatch.setattr(au, "assign_folds", lambda keys, strata, folds, seed, groups=None:
                        dealt(keys, strata, folds, seed))  # the groups ignored
    with sessions() as s:
        split = fold_problems(s, copies_audit.create())
    assert any("must stay together but are held out by folds" in p for p in split), split
    monkeypatch.setattr(au, "assign_folds", dealt)  # the real folds, then a fold run that trains on them
    handed = copies_audit.source

    def leaky(s, run):
        d, train_ids, val_ids = handed(s, run)
        return (TrainData(d.root, d.train_paths + d.val_paths, d.train_labels + d.val_labels, d.val_paths,
                          d.val_labels, d.stamps), train_ids + val_ids, val_ids)

    copies_audit.source = leaky
    audit_id = copies_audit.create()
    with sessions() as s:
        fold = evaluation.audit_runs(s, audit_id)[0]
    assert execute_probe(fold.id, sessions=sessions, progress=False).status == "succeeded"
    with sessions() as s:
        held = {queries.get_image(s, i).rel_path for i in queries.run_image_ids(s, fold.id, "val")}
        leaked = fold_problems(s, audit_id, copies_audit.trained_on)
    assert held and [p for p in leaked if "trained on" in p] == [
        f"fold 0 trained on {p}, which it scored" for p in sorted(held)]
    moved = own_label_moves(sessions, audit_id, copies_audit.create)
    print("held-out predictions moved by their own labels, leaking fold:", moved)
    assert moved > 1e-3  # and relabelling its held-out images moves their predictions
