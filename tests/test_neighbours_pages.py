"""The Duplicates and Map pages, and Review's selection and "more like this", under AppTest
against a store with a finished run on the planted sample and embeddings written directly
(random vectors with planted neighbours: no model needed)."""
import numpy as np
import pytest
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from db import labelling, queries
from db.models import Label
from tests.conftest import ROOT, finished_run
from tests.test_neighbours import PLANTS, plant_copies

PAGES = ROOT / "dashboard" / "views"


def page(name: str, state: dict | None = None, **query) -> AppTest:
    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=60)
    for k, v in query.items():
        at.query_params[k] = v
    for k, v in (state or {}).items():
        at.session_state[k] = v
    return at.run()


@pytest.fixture()
def planted_run(sessions, tmp_path, monkeypatch):
    """A finished run on the planted sample, with embeddings in which image ids 1..6 are near
    each other (cosine > 0.99) and everything else is random."""
    from engine import embeddings

    monkeypatch.setenv("AIVH_MAP", "pca")  # UMAP's numba JIT costs tens of seconds: PCA here
    plants = plant_copies(tmp_path / "data")
    run_id = finished_run(sessions, name="planted", source=tmp_path / "data")
    with sessions() as s:
        ids = [i for i, *_ in queries.image_facts(s, queries.get_dataset(s, "planted").id)]
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(ids), 32)).astype(np.float32)
    vectors[1:6] = vectors[0] + 0.01 * rng.standard_normal((5, 32))
    embeddings.save(run_id, ids, vectors)
    return run_id, ids, plants


def label_rows(sessions) -> int:
    with sessions() as s:
        return s.scalar(select(func.count(Label.id)))


@pytest.mark.parametrize("name", ["duplicates", "embedding_map"])
def test_empty_store_gives_a_message_not_a_traceback(sessions, name):
    at = page(name)
    assert not at.exception and at.info


def test_duplicates_page_hashes_once_shows_the_plants_and_relabels(planted_run, sessions):
    run_id, _ids, _plants = planted_run
    at = page("duplicates", reviewer="ana")
    assert not at.exception
    hash_button = next(b for b in at.button if b.label.startswith("Hash "))
    hash_button.click().run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["label-conflict"] == str(PLANTS) and int(metrics["train-test"]) >= PLANTS
    assert not [b for b in at.button if b.label.startswith("Hash ")]  # stored: not asked again
    before = label_rows(sessions)
    next(b for b in at.button if b.label == "AI-generated" and not b.disabled).click().run()
    assert not at.exception and label_rows(sessions) == before + 1
    with sessions() as s:
        newest = s.scalars(select(Label).order_by(Label.id.desc())).first()
        assert (newest.author, newest.note) == ("ana", "from Duplicates")
    # with the run's embeddings chosen, the planted neighbours 1..6 appear as embedding pairs
    at = page("duplicates", reviewer="ana", run=str(run_id))
    assert not at.exception and any("embedding cosine" in c.value for c in at.caption)


def test_map_computes_once_then_colours_and_opens_a_selection_in_review(planted_run, sessions):
    run_id, ids, _ = planted_run
    at = page("embedding_map", run=str(run_id))
    assert not at.exception
    next(b for b in at.button if b.label == "Compute the map").click().run()
    assert not at.exception
    assert any("PCA of run" in c.value for c in at.caption)
    at.selectbox[1].set_value("error").run()
    assert not at.exception
    # what the lasso's button hands Review: exactly these images, and Review shows exactly them
    chosen = ids[10:14]
    at = page("review", run=str(run_id), reviewer="ana",
              state={"review_selection": {"ids": chosen, "title": "4 images lassoed on the map"}})
    assert not at.exception
    assert any(h.value == "4 images lassoed on the map: 4 images" for h in at.subheader)
    opened = [b for b in at.button if b.label == "Open"]
    assert len(opened) == 4
    with sessions() as s:
        paths = {queries.get_image(s, i).rel_path for i in chosen}
    shown = {h.value for h in at.subheader} - {"4 images lassoed on the map: 4 images"}
    assert shown <= paths and shown  # the opened image is one of them
    next(b for b in at.button if b.label == "Back to all predictions").click().run()
    assert not at.exception and any("images match" in c.value for c in at.caption)


def test_review_more_like_this_lists_neighbours_and_relabels_them_in_one_click(planted_run, sessions):
    run_id, ids, _ = planted_run
    with sessions() as s:
        ds = queries.get_dataset(s, "planted").id
        before_labels = labelling.current_labels(s, ds)
    at = page("review", run=str(run_id), reviewer="ana", split="train",
              state={"review_selection": {"ids": [ids[0]], "title": "one"}})
    assert not at.exception
    assert any(e.label == "More like this" for e in at.expander)
    before = label_rows(sessions)
    next(b for b in at.button if b.label == "Label these 6 AI-generated").click().run()
    assert not at.exception
    with sessions() as s:
        after = labelling.current_labels(s, ds)
    neighbours = ids[1:6]  # the five planted neighbours, plus one nearest random image
    assert all(after[i] == 1 for i in neighbours if i in after)
    changed = [i for i in after if after[i] != before_labels.get(i)]
    assert set(changed) <= set(ids) and label_rows(sessions) - before == len(changed) >= 1


def test_embeddings_of_an_older_checkpoint_are_said_on_the_map_duplicates_and_review(planted_run, sessions):
    """Embeddings name the checkpoint they came from; after a new best epoch they show the older
    model, and the pages say so (with the command that refreshes them)."""
    from sqlalchemy import update

    from db.models import Prediction
    from engine import embeddings

    run_id, _ids, _ = planted_run
    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
        s.execute(update(Prediction).where(Prediction.run_id == run_id)
                  .values(epoch=run.best_epoch, checkpoint_sha1="b" * 40))
    found = embeddings.load(run_id)
    embeddings.save(run_id, found.image_id, found.vectors, "a" * 40)  # an earlier best.pt
    stale = f"run `aivh embed --run {run_id}` again"
    for name, query in (("embedding_map", {"run": str(run_id)}), ("duplicates", {"run": str(run_id)})):
        at = page(name, reviewer="ana", **query)
        assert not at.exception, at.exception
        assert any(stale.lower() in w.value.lower() for w in at.warning), name
    at = page("review", run=str(run_id), reviewer="ana")
    assert not at.exception and any(stale.lower() in w.value.lower() for w in at.warning)
    embeddings.save(run_id, found.image_id, found.vectors, "b" * 40)  # embedded again from the best
    at = page("embedding_map", run=str(run_id))
    assert not at.exception and not any(stale.lower() in w.value.lower() for w in at.warning)
    assert any("best checkpoint (epoch" in c.value for c in at.caption)
