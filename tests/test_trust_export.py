"""Export trusts nothing it has not checked: which checkpoint made the test predictions, the
dataset's test.csv as it is now, the written file, and whether the threshold is degenerate."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import select, update

from db import labelling, queries
from db.models import Epoch, Prediction, Run
from engine import cli
from engine.errors import ExportRefused
from engine.export import export_run, stale_problem, validate_submission
from tests.conftest import draw_jpeg, write_kaggle


def _dataset(root: Path, n_train: int = 40, n_test: int = 6) -> Path:
    train = [(f"train_data/{i:032x}.jpg", i % 2) for i in range(n_train)]
    test = [f"test_data_v2/{1000 + i:032x}.jpg" for i in range(n_test)]
    for i, (name, _) in enumerate(train):
        draw_jpeg(root / name, i, size=(24, 20))
    for i, name in enumerate(test):
        draw_jpeg(root / name, 1000 + i, size=(24, 20))
    return write_kaggle(root, train, test)


def _run(sessions, root: Path, *, best_epoch: int = 2, best_threshold: float = 0.5,
         val_probs=None, test_probs=None, pred_epoch: int | None = 2, sha1: str | None = "a" * 40,
         val_auc: float | None = 0.9, checkpoint: str = "/nonexistent/best.pt") -> int:
    """A succeeded run on the dataset at `root`: every train image in validation, predictions
    on validation and test as the trainer and `aivh predict` store them."""
    from db.predictions import upsert
    from engine.config import TrainConfig
    from engine.ingest import import_dataset

    import_dataset(sessions, root, "d", progress=False)
    with sessions.begin() as s:
        ds = queries.get_dataset(s, "d")
        labels = labelling.current_labels(s, ds.id)
        val_ids = sorted(labels)
        test_ids = [im.id for im in queries.images(s, ds.id, "test")]
        run = Run(dataset_id=ds.id, status="succeeded", config=TrainConfig(epochs=5, img_size=32).to_dict(),
                  checkpoint=checkpoint, best_epoch=best_epoch, best_threshold=best_threshold)
        s.add(run)
        s.flush()
        queries.set_run_images(s, run.id, {"train": [], "val": val_ids})
        s.add(Epoch(run_id=run.id, epoch=best_epoch, train_loss=0.5, val_loss=0.5, val_f1=0.8,
                    val_best_f1=0.8, val_best_threshold=best_threshold, val_auc=val_auc, lr=1e-3,
                    images_per_s=1.0, seconds=1.0))
        if val_probs is None:  # a decent model: AI images score high
            val_probs = [0.2 + 0.6 * labels[i] for i in val_ids]
        upsert(s, run.id, zip(val_ids, val_probs), epoch=best_epoch, checkpoint_sha1=sha1)
        if test_probs is None:
            test_probs = np.linspace(0.1, 0.9, len(test_ids))
        upsert(s, run.id, zip(test_ids, test_probs), epoch=pred_epoch, checkpoint_sha1=sha1)
        return run.id


def _test_ids(root: Path) -> list[str]:
    return [r[0] for r in csv.reader((root / "test.csv").open())][1:]


# ---------------------------------------------------------------- 4: predictions and checkpoints


def _save_checkpoint(path: Path, epoch: int) -> str:
    from engine.config import TrainConfig
    from engine.model import build_model

    torch.manual_seed(epoch)
    model = build_model(None)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "config": TrainConfig(img_size=32).to_dict(), "epoch": epoch}, path)
    return hashlib.sha1(path.read_bytes()).hexdigest()


def test_predict_records_the_checkpoint_and_export_refuses_stale_predictions(sessions, tmp_path):
    from engine.predict import predict_run

    root = _dataset(tmp_path / "data", n_train=8, n_test=3)
    ckpt = tmp_path / "run" / "best.pt"
    sha_2 = _save_checkpoint(ckpt, 2)
    run_id = _run(sessions, root, best_epoch=2, sha1=sha_2, checkpoint=str(ckpt))
    with sessions.begin() as s:  # no test predictions yet
        test_ids = [im.id for im in queries.images(s, queries.get_run(s, run_id).dataset_id, "test")]
        s.execute(Prediction.__table__.delete().where(Prediction.image_id.in_(test_ids)))
    result = predict_run(sessions, run_id, "test", device="cpu", workers=0, progress=False)
    assert (result["images"], result["epoch"], result["checkpoint_sha1"]) == (3, 2, sha_2)
    with sessions() as s:
        stored = set(s.execute(select(Prediction.epoch, Prediction.checkpoint_sha1)
                               .where(Prediction.image_id.in_(test_ids))))
    assert stored == {(2, sha_2)}
    out = tmp_path / "s.csv"
    # an untrained model scores every image alike: given thresholds, so its degeneracy only warns
    assert export_run(sessions, run_id, out, 0.5)["predictions"] == {"epoch": 2, "checkpoint_sha1": sha_2}

    # epoch 5 becomes best: a new best.pt, threshold and validation predictions; test ones are epoch 2's
    sha_5 = _save_checkpoint(ckpt, 5)
    with sessions.begin() as s:
        s.execute(update(Run).where(Run.id == run_id).values(best_epoch=5, best_threshold=0.7))
        s.execute(update(Prediction).where(Prediction.image_id.notin_(test_ids))
                  .values(epoch=5, checkpoint_sha1=sha_5))
    out.unlink()
    with pytest.raises(ExportRefused, match=r"epoch 2.*epoch 5") as e:
        export_run(sessions, run_id, out)
    assert "--allow-stale-predictions" in str(e.value) and not out.exists()
    with pytest.raises(ExportRefused, match=r"epoch 2.*epoch 5"):  # a given threshold is no excuse
        export_run(sessions, run_id, out, 0.5)

    done = export_run(sessions, run_id, out, 0.5, allow_stale=True)
    assert done["override"] and "epoch 2" in done["override"] and out.exists()
    with sessions() as s:
        assert "epoch 2" in queries.exports(s)[0].override

    # predicting again with the new best checkpoint clears the refusal
    assert predict_run(sessions, run_id, "test", device="cpu", workers=0, progress=False)["epoch"] == 5
    assert export_run(sessions, run_id, out, 0.5)["override"] is None


def test_same_epoch_from_another_checkpoint_file_is_refused(sessions, tmp_path):
    root = _dataset(tmp_path / "data")
    run_id = _run(sessions, root, best_epoch=3, pred_epoch=3, sha1="b" * 40)
    with sessions.begin() as s:  # the trainer re-wrote epoch 3 (a resume) with another file
        test_ids = [im.id for im in queries.images(s, queries.get_run(s, run_id).dataset_id, "test")]
        s.execute(update(Prediction).where(Prediction.image_id.notin_(test_ids)).values(checkpoint_sha1="c" * 40))
    with pytest.raises(ExportRefused, match="bbbbbbbb.*cccccccc"):
        export_run(sessions, run_id, tmp_path / "s.csv")


def test_predictions_from_an_unknown_checkpoint_give_a_clear_refusal(sessions, tmp_path):
    """Stores made before checkpoints were recorded have NULL epoch and hash."""
    root = _dataset(tmp_path / "data")
    run_id = _run(sessions, root, pred_epoch=None, sha1=None)
    with pytest.raises(ExportRefused, match="unknown checkpoint"):
        export_run(sessions, run_id, tmp_path / "s.csv")
    assert export_run(sessions, run_id, tmp_path / "s.csv", allow_stale=True)["rows"] == 6


def test_cli_flag_overrides_and_the_refusal_is_one_line(sessions, tmp_path, capsys):
    root = _dataset(tmp_path / "data")
    run_id = _run(sessions, root, best_epoch=4, pred_epoch=1)
    out = tmp_path / "s.csv"
    assert cli.main(["export", "--run", str(run_id), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "epoch 1" in err and "epoch 4" in err, err
    assert cli.main(["export", "--run", str(run_id), "--out", str(out), "--allow-stale-predictions",
                     "--json"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "epoch 1" in payload["override"] and payload["predictions"]["epoch"] == 1


# ---------------------------------------------------------------- 7: test.csv as it is now


def test_export_refuses_when_test_csv_has_ids_the_store_lacks(sessions, tmp_path):
    root = _dataset(tmp_path / "data")
    run_id = _run(sessions, root)
    with open(root / "test.csv", "a") as f:
        f.write("test_data_v2/added-after-import.jpg\n")
    out = tmp_path / "s.csv"
    with pytest.raises(ExportRefused, match=r"7 ids.*6.*added-after-import") as e:
        export_run(sessions, run_id, out)
    assert "\n" not in str(e.value) and not out.exists()


def test_export_refuses_a_test_id_rejected_at_import(sessions, tmp_path):
    root = _dataset(tmp_path / "data")
    ids = _test_ids(root)
    with open(root / "test.csv", "w") as f:  # an id whose path is refused never enters the store
        f.write("id\n" + "\n".join(ids[:3] + ["../escape.jpg"] + ids[3:]) + "\n")
    run_id = _run(sessions, root)
    with pytest.raises(ExportRefused, match=r"escape\.jpg"):
        export_run(sessions, run_id, tmp_path / "s.csv")


def test_export_refuses_a_reordered_test_csv(sessions, tmp_path):
    root = _dataset(tmp_path / "data")
    run_id = _run(sessions, root)
    ids = _test_ids(root)
    (root / "test.csv").write_text("id\n" + "\n".join([ids[1], ids[0], *ids[2:]]) + "\n")
    with pytest.raises(ExportRefused, match="order"):
        export_run(sessions, run_id, tmp_path / "s.csv")


def test_the_validator_runs_on_the_written_file_before_the_rename(sessions, tmp_path, monkeypatch):
    import engine.export as ex

    root = _dataset(tmp_path / "data")
    run_id = _run(sessions, root)
    out = tmp_path / "s.csv"
    out.write_text("previous submission\n")
    real = ex.submission_rows
    monkeypatch.setattr(ex, "submission_rows", lambda *a, **k: real(*a, **k)[:-1])  # a short file
    with pytest.raises(ExportRefused, match="ids differ"):
        export_run(sessions, run_id, out)
    assert out.read_text() == "previous submission\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".s.csv")] == []
    with sessions() as s:
        assert queries.exports(s) == []
    monkeypatch.setattr(ex, "submission_rows", real)
    export_run(sessions, run_id, out)
    assert validate_submission(out, _test_ids(root)) == []


# ---------------------------------------------------------------- 17: degenerate thresholds


def test_a_threshold_calling_everything_ai_is_refused_unless_given(sessions, tmp_path, capsys):
    root = _dataset(tmp_path / "data")
    # a useless model: best F1 by calling everything AI (the 8.5e-07)
    rng = np.random.default_rng(0)
    run_id = _run(sessions, root, best_threshold=8.5e-07, val_auc=0.51,
                  val_probs=rng.uniform(1e-6, 1e-3, 40), test_probs=rng.uniform(1e-6, 1e-3, 6))
    out = tmp_path / "s.csv"
    with pytest.raises(ExportRefused, match=r"(?=.*100\.0% of the validation)(?=.*--threshold)"):
        export_run(sessions, run_id, out)
    assert not out.exists()
    assert cli.main(["export", "--run", str(run_id), "--out", str(out)]) == 1
    assert "degenerate" in capsys.readouterr().err
    assert cli.main(["export", "--run", str(run_id), "--out", str(out), "--threshold", "0.0005",
                     "--json"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert any("AUC 0.510" in w for w in payload["warnings"]), payload
    with sessions() as s:
        assert any("AUC 0.510" in w for w in queries.exports(s)[0].warnings)


def test_a_chance_auc_alone_is_refused(sessions, tmp_path):
    root = _dataset(tmp_path / "data")
    run_id = _run(sessions, root, val_auc=0.5)
    with pytest.raises(ExportRefused, match="AUC 0.500"):
        export_run(sessions, run_id, tmp_path / "s.csv")


def test_a_sound_threshold_exports_without_warnings(sessions, tmp_path):
    root = _dataset(tmp_path / "data")
    run_id = _run(sessions, root)
    result = export_run(sessions, run_id, tmp_path / "s.csv")
    assert result["warnings"] == [] and result["threshold_source"] == "best_val_f1"
    with sessions() as s:
        e = queries.exports(s)[0]
        assert (e.warnings, e.override) in (([], None), (None, None))


def test_a_run_without_a_threshold_of_its_own_is_not_exported_at_a_silent_guess(sessions, tmp_path):
    root = _dataset(tmp_path / "data")
    run_id = _run(sessions, root, best_threshold=None)
    with sessions.begin() as s:
        s.execute(update(Run).where(Run.id == run_id).values(threshold_note="validation has no AI-generated image"))
    with pytest.raises(ExportRefused, match=r"no threshold of its own.*no AI-generated image.*--threshold"):
        export_run(sessions, run_id, tmp_path / "s.csv")
    result = export_run(sessions, run_id, tmp_path / "s.csv", 0.5)
    assert result["threshold_source"] == "given" and result["warnings"] == []


def test_predictions_keep_their_checkpoint_on_both_backends(store_url, tmp_path):
    """Re-predicting replaces the probability and the checkpoint together (SQLite and PostgreSQL)."""
    from db import predictions
    from db.store import session_factory

    sessions = session_factory(store_url)
    run_id = _run(sessions, _dataset(tmp_path / "data"), best_epoch=3, pred_epoch=1, sha1="1" * 40)
    with sessions() as s:
        assert [(x.epoch, x.count) for x in predictions.sources(s, run_id, "test")] == [(1, 6)]
        assert [(x.epoch, x.count) for x in predictions.sources(s, run_id, "val")] == [(3, 40)]
        test_ids = [im.id for im in queries.images(s, queries.get_run(s, run_id).dataset_id, "test")]
    with sessions.begin() as s:
        predictions.upsert(s, run_id, [(i, 0.25) for i in test_ids[:2]], epoch=3, checkpoint_sha1="3" * 40)
    with sessions() as s:
        found = predictions.sources(s, run_id, "test")
        assert [(x.epoch, x.checkpoint_sha1, x.count) for x in found] == [(1, "1" * 40, 4), (3, "3" * 40, 2)]
        assert queries.predictions(s, run_id, test_ids[:2]) == {test_ids[0]: 0.25, test_ids[1]: 0.25}
        assert "several checkpoints" in stale_problem(s, queries.get_run(s, run_id))


def test_chance_is_judged_by_the_size_of_validation():
    """AUC 0.55 on 30 validation images is chance (the issue's demo run); on 8,000 it is not
    far from it either, but the fixed margin of 0.05 is what is left there."""
    from engine.export import chance_margin

    small = np.array([0, 1] * 15)
    assert 0.5 + chance_margin(small) > 0.55 and chance_margin(small) == pytest.approx(0.2144, abs=1e-3)
    assert chance_margin(np.array([0, 1] * 4000)) == 0.05
    # the margin is what random scores reach: 2 standard deviations of their AUC (about 2.3% above)
    from engine import metrics
    rng = np.random.default_rng(0)
    aucs = np.array([metrics.roc_auc(small, rng.uniform(size=small.size)) for _ in range(2000)])
    assert 0.005 < (aucs > 0.5 + chance_margin(small)).mean() < 0.05


def test_too_few_validation_images_are_said_not_called_chance(sessions, tmp_path):
    """6 labelled validation images (3 of each class): chance alone reaches AUC 0.5 + 0.509, so
    even a perfect 1.000 cannot be told from it; the refusal says so, not "no better than chance"."""
    root = _dataset(tmp_path / "data", n_train=6)
    run_id = _run(sessions, root, val_auc=1.0)
    with pytest.raises(ExportRefused) as refused:
        export_run(sessions, run_id, tmp_path / "s.csv")
    said = str(refused.value)
    assert "too few labelled validation images to judge the model: validation AUC 1.000 on 6" in said
    assert "0.5 + 0.509" in said and "no better than chance" not in said and "degenerate model" not in said
    assert not (tmp_path / "s.csv").exists()


def test_a_small_validation_with_auc_just_above_half_is_chance(sessions, tmp_path):
    root = _dataset(tmp_path / "data")  # 40 validation images: 0.5 + 0.185 is chance
    run_id = _run(sessions, root, val_auc=0.62)
    with pytest.raises(ExportRefused, match=r"AUC 0.620, no better than chance \(0.5 \+ 0.185 on 40"):
        export_run(sessions, run_id, tmp_path / "s.csv")
