"""Dashboard pages that must not show stale, rounded or slow results (issue 13: items 5, 6,
16, 18 and 19), each page under AppTest against a temporary store."""
import io

import pytest
import torch
from PIL import Image
from sqlalchemy import event
from sqlalchemy.engine import Engine
from streamlit.testing.v1 import AppTest

from db import labelling, queries
from tests.conftest import ROOT, draw_jpeg, finished_run, write_kaggle

PAGES = ROOT / "dashboard" / "views"


def page(name: str, **query) -> AppTest:
    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=60)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


@pytest.fixture()
def run_id(sessions):
    return finished_run(sessions)


class Statements:
    """Records the SQL statements every engine executes while active."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.engine = Engine

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._hook)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._hook)

    def _hook(self, conn, cursor, statement, *args):
        self.seen.append(statement)


@pytest.fixture()
def shown_images(monkeypatch) -> list[bytes]:
    """The bytes of every image a page shows with st.image while the test runs it."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    seen: list[bytes] = []
    original = MemoryMediaFileStorage.load_and_get_id

    def record(self, path_or_data, mimetype, kind, filename=None):
        if isinstance(path_or_data, bytes) and mimetype.startswith("image/"):
            seen.append(path_or_data)
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    return seen


def metric(at, label):
    return next(m.value for m in at.metric if m.label == label)


# ---------------------------------------------------------------- item 5: stale pages


def test_new_predictions_show_on_the_next_rerun(run_id, sessions):
    """Predicting again rewrites the same rows (same count, same ids): Evaluate must show the
    new probabilities without a server restart."""
    at = page("evaluate", run=str(run_id))
    assert metric(at, "Called AI") != "100.0%"
    with sessions.begin() as s:
        val = queries.run_image_ids(s, run_id, "val")
        queries.upsert_predictions(s, run_id, [(i, 0.99) for i in val])
    at.run()
    assert not at.exception
    assert metric(at, "Called AI") == "100.0%"


def test_predictions_arriving_for_a_split_show_on_the_next_rerun(run_id, sessions):
    """A page opened before `aivh predict --split train` finished shows the new rows next time."""
    at = page("review", run=str(run_id), split="train", reviewer="ana")
    assert any("no predictions on the train split" in i.value for i in at.info)
    with sessions.begin() as s:
        train = queries.run_image_ids(s, run_id, "train")
        queries.upsert_predictions(s, run_id, [(i, 0.7) for i in train])
    at.run()
    assert not at.exception
    assert not any("no predictions" in i.value for i in at.info)
    assert any("images match" in c.value for c in at.caption)


def test_the_shift_pages_caches_change_with_labels_and_with_headers_read_by_a_re_import(run_id, sessions,
                                                                                        monkeypatch):
    """The shortcut report predicts the current labels: a relabel must recompute it. File
    properties filled in by a re-import (rows recorded before aivh read headers) must reach the
    slice and map tables: the images' version changes with them."""
    from dashboard.store import reports
    from db.models import Image as ImageRow

    keys = []
    monkeypatch.setattr(reports, "_shortcut_report", lambda url, ds, version: keys.append(version) or {})
    with sessions() as s:
        ds = queries.get_run(s, run_id).dataset_id
        image_id = queries.run_image_ids(s, run_id, "train")[0]
    reports.shortcut_report(ds)
    with sessions.begin() as s:
        labelling.relabel(s, image_id, 1 - labelling.current_labels(s, ds)[image_id], author="ana")
    reports.shortcut_report(ds)
    assert keys[0] != keys[1]
    with sessions.begin() as s:
        before = queries.images_version(s, ds, "train")
        s.get(ImageRow, image_id).format = None  # as if imported before headers were read
    with sessions.begin() as s:
        blank = queries.images_version(s, ds, "train")
        s.get(ImageRow, image_id).format = "JPEG"  # a re-import reads the header
    with sessions() as s:
        assert blank != before and queries.images_version(s, ds, "train") == before


def test_a_new_best_epoch_or_status_changes_the_cache_key(run_id, sessions):
    from dashboard import store

    before = store.run_version(run_id)
    with sessions.begin() as s:
        queries.get_run(s, run_id).best_epoch = 1
    assert store.run_version(run_id) != before
    middle = store.run_version(run_id)
    with sessions.begin() as s:
        queries.get_run(s, run_id).status = "running"
    assert store.run_version(run_id) != middle


# ---------------------------------------------------------------- item 6: exact thresholds


def test_review_threshold_widget_keeps_the_exact_value(run_id, sessions):
    with sessions.begin() as s:
        queries.get_run(s, run_id).best_threshold = 0.99957
    at = page("review", run=str(run_id))
    box = next(n for n in at.number_input if n.label == "Threshold")
    assert box.value == 0.99957  # not 0.9996, nor 1.000
    at = page("review", run=str(run_id), threshold="0.123456789")
    assert next(n for n in at.number_input if n.label == "Threshold").value == 0.123456789


def test_a_new_best_threshold_restarts_evaluate_and_export_at_it_within_a_session(run_id, sessions):
    """A run still training finds a new best epoch: the slider and the export's box start at its
    threshold on the next rerun, not at the value of an earlier render of the same session."""
    with sessions.begin() as s:
        queries.get_run(s, run_id).best_threshold = 0.3
    evaluate, export = page("evaluate", run=str(run_id)), page("export", run=str(run_id))
    assert evaluate.slider[0].value == pytest.approx(0.3)
    assert next(n for n in export.number_input if n.label == "Threshold").value == pytest.approx(0.3)
    with sessions.begin() as s:
        queries.get_run(s, run_id).best_threshold = 0.61234
    evaluate.run()
    export.run()
    assert not evaluate.exception and not export.exception
    assert evaluate.slider[0].value == 0.61234
    assert next(n for n in export.number_input if n.label == "Threshold").value == 0.61234


# ---------------------------------------------------------------- item 19: speed


def test_review_grid_reads_the_thumbnails_names_in_one_query(run_id):
    """24 thumbnails a page: one query for their sha1s, not one session per thumbnail."""
    at = page("review", run=str(run_id))
    with Statements() as sql:
        next(n for n in at.number_input if n.label.startswith("Page")).set_value(2).run()
    assert not at.exception
    per_image = [q for q in sql.seen if "FROM images" in q and "images.id = ?" in q]
    assert sql.seen and len(per_image) <= 2, f"{len(per_image)} single-image queries on a page turn"
    assert len(sql.seen) < 24, f"{len(sql.seen)} statements for a page turn"


def test_labels_changed_is_exact_and_cached(run_id, sessions):
    from dashboard import store

    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
        ds, before = run.dataset_id, run.labels_as_of
        val = queries.run_image_ids(s, run_id, "val")
        now = labelling.current_labels(s, ds)
        labelling.relabel(s, val[0], 1 - now[val[0]], author="ana")
        labelling.relabel(s, val[1], 1 - now[val[1]], author="ana")
        labelling.relabel(s, val[1], now[val[1]], author="bea")  # put back: not a change
        labelling.relabel(s, val[2], now[val[2]], author="ana")  # confirmed: not a change
    with sessions() as s:
        expected = len(labelling.labels_changed(s, ds, before, labelling.newest_label_id(s, ds)))
        newest = labelling.newest_label_id(s, ds)
    assert expected == 1
    assert store.labels_changed(ds, before, None) == expected
    assert store.labels_changed(ds, newest, before) == expected  # either order
    assert store.labels_changed(ds, None, None) == 0
    with Statements() as sql:
        assert store.labels_changed(ds, before, None) == expected
    assert len(sql.seen) == 1  # the newest label id only: the count comes from the cache


def test_compare_runs_is_cached_and_follows_new_predictions(run_id, sessions):
    from dashboard import store
    from db.models import Prediction, Run
    from engine.compare import compare_runs

    with sessions.begin() as s:
        a = queries.get_run(s, run_id)
        b = Run(dataset_id=a.dataset_id, status="succeeded", config=a.config, checkpoint="x",
                labels_as_of=a.labels_as_of, like_run_id=run_id)
        s.add(b)
        s.flush()
        b_id = b.id
        val = queries.run_image_ids(s, run_id, "val")
        queries.set_run_images(s, b_id, {"train": queries.run_image_ids(s, run_id, "train"), "val": val})
        queries.upsert_predictions(s, b_id, [(i, 0.5) for i in val])
    got = store.compare_runs(run_id, b_id)
    with sessions() as s:
        assert got == compare_runs(s, run_id, b_id)
    with Statements() as sql:
        assert store.compare_runs(run_id, b_id) == got
    assert not any("FROM predictions" in q and "sum(" not in q for q in sql.seen)  # versions only
    with sessions.begin() as s:  # run B predicted again, now perfectly
        now = labelling.current_labels(s, queries.get_run(s, run_id).dataset_id)
        queries.upsert_predictions(s, b_id, [(i, 0.1 + 0.8 * now[i]) for i in val])
    after = store.compare_runs(run_id, b_id)
    assert (got["b"]["auc"], after["b"]["auc"]) == (0.5, 1.0)
    with pytest.raises(ValueError, match="different datasets|no evaluation images"):
        with sessions.begin() as s:  # run B's predictions deleted: nothing left to compare on
            s.query(Prediction).filter_by(run_id=b_id).delete()
        store.compare_runs(run_id, b_id)


def test_submission_scores_match_the_engine_and_refuse_like_it(run_id, sessions):
    from dashboard import store
    from engine.errors import ExportRefused
    from engine.export import submission_rows

    scores = store.submission_scores(run_id)
    with sessions() as s:
        run = queries.get_run(s, run_id)
        for t in (0.2, 0.5, 0.8):
            rows = submission_rows(s, run, t)
            assert list(zip(scores.ids, scores.called_ai(t).tolist())) == rows
    with Statements() as sql:
        store.submission_scores(run_id).called_ai(0.3)
    assert not any("FROM predictions" in q and "sum(" not in q for q in sql.seen)
    with sessions.begin() as s:  # a test image loses its prediction: the engine refuses, so do we
        test_id = queries.images(s, run.dataset_id, "test")[0].id
        from db.models import Prediction
        s.query(Prediction).filter_by(run_id=run_id, image_id=test_id).delete()
    refused = store.submission_scores(run_id).refused
    with sessions() as s, pytest.raises(ExportRefused) as e:
        submission_rows(s, queries.get_run(s, run_id), 0.5)
    assert refused == str(e.value)


# ---------------------------------------------------------------- items 16 and 18: saliency


@pytest.fixture()
def wide_run(sessions, tmp_path):
    """A run on 2:1 photos (96 x 48) with a real, randomly initialised B3 checkpoint."""
    from engine.model import build_model

    root = tmp_path / "wide"
    train = [(f"train_data/{i:032x}.jpg", i % 2) for i in range(20)]
    test = [f"test_data_v2/{100 + i:032x}.jpg" for i in range(4)]
    for i, (name, _) in enumerate(train):
        draw_jpeg(root / name, i, size=(96, 48))
    for i, name in enumerate(test):
        draw_jpeg(root / name, 100 + i, size=(96, 48))
    write_kaggle(root, train, test)
    run_id = finished_run(sessions, name="wide", source=root)
    torch.manual_seed(0)
    ckpt = tmp_path / "best.pt"
    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
        torch.save({"config": run.config, "model": build_model(None).state_dict()}, ckpt)
        run.checkpoint = str(ckpt)
    return run_id


def test_review_saliency_is_shown_at_the_image_aspect_ratio_with_the_decode_note(wide_run, shown_images):
    at = page("review", run=str(wide_run), reviewer="ana", split="test")
    assert any("Pillow" in c.value and "GPU" in c.value for c in at.caption), "decode note missing"
    shown_images.clear()
    at.toggle(key=f"sal_show_{wide_run}").set_value(True).run()
    assert not at.exception
    assert not at.warning, [w.value for w in at.warning]
    shown = next(c.value for c in at.caption if c.value.startswith("Shown at"))
    assert shown.startswith("Shown at 192x96, the image's own aspect ratio")
    assert "squashed" in shown and "32x32 px" in shown
    assert any("stored prediction" in c.value for c in at.caption)
    sizes = [Image.open(io.BytesIO(b)).size for b in shown_images]
    overlay, pair = sizes[-2:]  # the map over the image, then image | attribution
    assert overlay == (192, 96) and pair == (2 * 192, 96), sizes  # 2:1 as the photo, not 32 px square


def test_export_checks_match_the_engine_and_follow_a_new_checkpoint(run_id, sessions):
    from dashboard import store
    from db import predictions
    from engine.export import prediction_source, stale_problem, submission_rows, threshold_warnings

    def engine(t):
        with sessions() as s:
            run = queries.get_run(s, run_id)
            labels = [label for _, label in submission_rows(s, run, t)]
            warnings = threshold_warnings(s, run, t, labels)
            return prediction_source(s, run, "test"), stale_problem(s, run), warnings

    for t in (0.5, 0.001):
        assert store.export_checks(run_id, t) == engine(t)
    with sessions.begin() as s:  # the test split predicted again by the epoch 2 checkpoint
        tests = [im.id for im in queries.images(s, queries.get_run(s, run_id).dataset_id, "test")]
        predictions.upsert(s, run_id, [(i, 0.4) for i in tests], epoch=2, checkpoint_sha1="ab" * 20)
    assert store.export_checks(run_id, 0.5) == engine(0.5)
    assert "epoch 2" in store.export_checks(run_id, 0.5)[0]
    assert store.provenance(run_id, "test")[0] == engine(0.5)[0]


def test_versions_and_cached_loaders_on_both_backends(store_url, sessions):
    """The version queries (sums over bigint and float columns) and the loaders on SQLite and
    PostgreSQL: a rewritten probability changes the key, the loaders agree with the engine."""
    from dashboard import store
    from engine.export import submission_rows

    run_id = finished_run(sessions)
    before = store.run_version(run_id)
    scores = store.submission_scores(run_id)
    with sessions() as s:
        assert list(zip(scores.ids, scores.called_ai(0.5).tolist())) == submission_rows(
            s, queries.get_run(s, run_id), 0.5)
        ds = queries.get_run(s, run_id).dataset_id
        first_test = queries.images(s, ds, "test")[0].id
    with sessions.begin() as s:
        queries.upsert_predictions(s, run_id, [(first_test, 0.123)])
    assert store.run_version(run_id) != before
    assert store.submission_scores(run_id).probs[0] == pytest.approx(0.123)
    assert store.labels_changed(ds, None, None) == 0
