"""The store on SQLite and on PostgreSQL: migrations keep data, queries agree, no lost writes."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import create_engine, func, inspect, select, text

from db import evaluation, labelling, queries, store
from db.models import Base, Epoch, Label, Prediction
from tests.conftest import SAMPLE, aivh, finished_run


def _engine(url):
    return create_engine(url)


def test_a_new_store_is_at_the_newest_migration_and_matches_the_models(store_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = store.get_engine(store_url)
    with engine.connect() as c:
        assert store.current_revision(c) == store.head_revision()
        assert compare_metadata(MigrationContext.configure(c), Base.metadata) == []


def _old_store(url: str) -> None:
    """A store as the first release made it (revision 0001), holding a run with epochs."""
    engine = _engine(url)
    if url.startswith("sqlite"):
        from sqlalchemy import event

        event.listen(engine, "connect", store._sqlite_pragmas)
    store.migrate(engine, "0001")
    with engine.begin() as c:
        c.execute(text("INSERT INTO datasets (id, name, root, created_at) VALUES (1, 'old', '/data', "
                       "CURRENT_TIMESTAMP)"))
        c.execute(text("INSERT INTO images (id, dataset_id, rel_path, split, csv_row, status) VALUES "
                       "(1, 1, 'train_data/a.jpg', 'train', 0, 'ok')"))
        c.execute(text("INSERT INTO labels (image_id, label, source, created_at) VALUES "
                       "(1, 1, 'import', CURRENT_TIMESTAMP)"))
        c.execute(text("INSERT INTO runs (id, dataset_id, kind, status, config, created_at, "
                       "cancel_requested) VALUES (1, 1, 'train', 'succeeded', :cfg, CURRENT_TIMESTAMP, "
                       "false)"), {"cfg": json.dumps({"epochs": 2})})
        for e in (1, 2):
            c.execute(text("INSERT INTO epochs (run_id, epoch, train_loss, lr, images_per_s, seconds) "
                           "VALUES (1, :e, 0.5, 0.001, 10, 1)"), {"e": e})
    engine.dispose()


@pytest.mark.parametrize("stamped", [True, False], ids=["migrated-store", "pre-migration-store"])
def test_a_newer_aivh_opens_an_older_store_without_losing_data(store_url, stamped):
    _old_store(store_url)
    if not stamped:  # made by create_all before migrations existed: no alembic_version table
        engine = _engine(store_url)
        with engine.begin() as c:
            c.execute(text("DROP TABLE alembic_version"))
        engine.dispose()
    sessions = store.session_factory(store_url)
    with sessions() as s:
        assert queries.get_run(s, 1).config == {"epochs": 2}
        assert [e.epoch for e in queries.epochs(s, 1)] == [1, 2]  # no cascade fired mid-migration
        assert labelling.current_labels(s, 1) == {1: 1}
        assert queries.get_run(s, 1).audit_id is None  # the new column exists
    with sessions.begin() as s:
        evaluation.create_eval_set(s, 1, "frozen", [1])
    with store.get_engine(store_url).connect() as c:
        assert store.current_revision(c) == store.head_revision()


def test_import_relabel_undo_and_history_on_each_backend(store_url):
    sessions = store.session_factory(store_url)
    run_id = finished_run(sessions)
    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
        ds = run.dataset_id
        imported = labelling.current_labels(s, ds)
        image_id = min(queries.run_image_ids(s, run_id, "val"))  # a scored validation image
        first = imported[image_id]
        labelling.relabel(s, image_id, 1 - first, author="ana", note="looks generated")
    with sessions.begin() as s:
        assert labelling.current_labels(s, ds)[image_id] == 1 - first
        # (image_id, rel_path, prob, label, reviews in force): the review shows on its image only
        rows = queries.prediction_rows(s, queries.get_run(s, run_id), "val")
        assert {r[0]: (r[3], r[4]) for r in rows} == {
            i: ((1 - first, 1) if i == image_id else (imported[i], 0))
            for i in queries.run_image_ids(s, run_id, "val")}
        assert labelling.import_labels(s, ds)[image_id] == first
        with pytest.raises(labelling.UndoRefused, match="nothing to undo: ben"):
            labelling.undo_last_review(s, image_id, author="ben")  # not ben's review to undo
        labelling.undo_last_review(s, image_id, author="ana")
    with sessions() as s:
        history = labelling.label_history(s, image_id)
        assert [(h.label, h.source, h.author) for h in history] == [
            (first, "import", "import"), (1 - first, "review", "ana"), (first, "undo", "ana")]
        assert labelling.labels_changed(s, ds, history[0].id, history[1].id) == [image_id]
        assert labelling.labels_changed(s, ds, history[0].id, history[2].id) == []
        rows = queries.prediction_rows(s, queries.get_run(s, run_id), "val")
        # the undo cancels the review: back to the imported label, no review in force
        assert rows and {r[0]: (r[3], r[4]) for r in rows} == {r[0]: (imported[r[0]], 0) for r in rows}


def test_upsert_predictions_replaces_on_each_backend(store_url):
    sessions = store.session_factory(store_url)
    run_id = finished_run(sessions)
    with sessions.begin() as s:
        ids = sorted(queries.predictions(s, run_id))[:3]
        queries.upsert_predictions(s, run_id, [(i, 0.25) for i in ids], epoch=3, checkpoint_sha1="a" * 40)
    with sessions() as s:
        assert queries.predictions(s, run_id, ids) == {i: 0.25 for i in ids}
    with sessions.begin() as s:  # a replaced row names the checkpoint given, not the old row's
        queries.upsert_predictions(s, run_id, [(ids[0], 0.5)])
    with sessions() as s:
        rows = s.execute(select(Prediction.image_id, Prediction.epoch, Prediction.checkpoint_sha1)
                         .where(Prediction.run_id == run_id, Prediction.image_id.in_(ids))).all()
    assert sorted(rows) == [(ids[0], None, None), (ids[1], 3, "a" * 40), (ids[2], 3, "a" * 40)]


def test_cli_import_and_runs_work_against_the_configured_backend(store_url, workspace, tmp_path):
    out = aivh("import", str(SAMPLE), "--name", "s", "--json", env_home=workspace)
    assert json.loads(out.stdout.strip().splitlines()[-1])["train"] == 300
    with store.session_factory(store_url)() as s:
        n = s.scalar(select(func.count(Label.id)))
    assert n == 300
    assert store_url.split(":")[0] in str(store.get_engine(store_url).url)
    assert "epochs" in inspect(store.get_engine(store_url)).get_table_names()
    assert Epoch.__tablename__ == "epochs"


def test_label_states_reads_only_relabelled_images_and_agrees_with_full_label_states(store_url):
    """compare and the Runs page read the labels at a few states through label_states; it must
    give what a full read of each state gives, relabels, undos and unlabels (test images) included."""
    import random

    sessions = store.session_factory(store_url)
    run_id = finished_run(sessions)
    rnd = random.Random(0)
    with sessions() as s:
        ds = queries.get_run(s, run_id).dataset_id
        labelled = sorted(labelling.current_labels(s, ds))
        unlabelled = [i.id for i in queries.images(s, ds, "test")][:4]
    states = []
    with sessions() as s:
        states.append(labelling.newest_label_id(s, ds))
    for step in range(30):
        image_id = rnd.choice(labelled[:6] + unlabelled)
        with sessions.begin() as s:
            if step % 3 == 2:
                try:
                    labelling.undo_last_review(s, image_id, author="ana")
                except labelling.UndoRefused:
                    pass
            else:
                labelling.relabel(s, image_id, rnd.randint(0, 1), author="ana")
        with sessions() as s:
            states.append(labelling.newest_label_id(s, ds))
    with sessions() as s:
        full = {st: labelling.current_labels(s, ds, as_of=st) for st in set(states)}
        full[None] = labelling.current_labels(s, ds)
        sources = {row.source for i in labelled[:6] + unlabelled for row in labelling.label_history(s, i)}
        assert {"review", "undo", "unlabel"} <= sources, sources  # every kind of row was exercised
        for _ in range(20):
            picked = [rnd.choice(states), rnd.choice(states), None]
            got = labelling.label_states(s, ds, picked)
            for i in full[None].keys() | {i for st in states for i in full[st]}:
                want = [full[st].get(i) for st in picked]
                if i in got:
                    assert got[i] == want, (i, picked)
                else:  # left out: one label in every state
                    assert len(set(want)) == 1, (i, picked)
            a, b = picked[:2]
            assert labelling.labels_changed(s, ds, a, b) == sorted(
                i for i in full[a].keys() & full[b].keys() if full[a][i] != full[b][i])


def _open_new_store(url: str, start, results) -> None:
    start.wait()  # every process opens the brand-new file at the same moment
    try:
        with store.session_factory(url)() as s:
            s.execute(text("SELECT count(*) FROM runs")).scalar_one()
        results.put("ok")
    except Exception as e:  # noqa: BLE001 - reported to the test
        results.put(f"{type(e).__name__}: {e}")


def test_processes_opening_a_new_sqlite_store_at_once_all_get_it_in_wal_mode(tmp_path):
    """torchrun's ranks open the store together; switching a new file to WAL needs an exclusive
    lock, which SQLite refused at once ("database is locked") to one of two such processes."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    for attempt in range(3):
        url = f"sqlite:///{tmp_path / f'new{attempt}.db'}"
        start, results = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_open_new_store, args=(url, start, results)) for _ in range(4)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert outcomes == ["ok"] * 4, outcomes
        with create_engine(url).connect() as c:
            assert c.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"


def test_a_file_uri_sqlite_store_is_locked_beside_its_file_and_in_wal_mode(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for url in (f"sqlite:///file:{tmp_path / 'abs.db'}?uri=true", "sqlite:///file:rel.db?uri=true"):
        with store.get_engine(url).connect() as c:
            assert c.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            assert c.execute(text("SELECT count(*) FROM runs")).scalar_one() == 0
    assert sorted(p.name for p in tmp_path.glob("*.migrate.lock")) == ["abs.db.migrate.lock", "rel.db.migrate.lock"]
    store.get_engine.cache_clear()
