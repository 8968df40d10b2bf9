"""Evaluate and Export pages: exact thresholds, which checkpoint made the predictions, refusals
and warnings said plainly (AppTest against a temporary store)."""
from __future__ import annotations

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from db import queries
from tests.conftest import ROOT
from tests.test_trust_export import _dataset, _run

PAGES = ROOT / "dashboard" / "views"
EXACT = 0.99957  # rounds to 1.000 at 3 decimals, to 0.9996 at 4


def page(name: str, **query) -> AppTest:
    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=60)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def _texts(at) -> str:
    return "\n".join(str(e.value) for kind in ("caption", "warning", "error", "info", "success", "markdown")
                     for e in getattr(at, kind))


@pytest.fixture()
def sharp_run(sessions, tmp_path) -> int:
    """A run whose best threshold sits at 0.99957: AI images score 0.9999, human ones lower."""
    root = _dataset(tmp_path / "data")
    val = [0.9999 if i % 2 else 0.5 for i in range(40)]
    return _run(sessions, root, best_threshold=EXACT, val_probs=val,
                test_probs=[0.9999, 0.3, 0.9999, 0.3, 0.9999, 0.3])


def test_evaluate_keeps_and_saves_the_exact_threshold(sharp_run, sessions):
    at = page("evaluate", run=str(sharp_run))
    assert not at.exception
    assert at.slider[0].value == EXACT
    assert {m.label: m.value for m in at.metric}["Called AI"] == "50.0%"
    next(b for b in at.button if b.label.startswith("Save")).click().run()
    assert not at.exception
    with sessions() as s:
        assert queries.get_run(s, sharp_run).chosen_threshold == EXACT
    assert "0.99957" in _texts(at)  # the display says the value, not 1.000


def test_export_writes_at_the_exact_threshold(sharp_run, sessions):
    at = page("export", run=str(sharp_run))
    assert not at.exception
    assert at.number_input[0].value == EXACT
    assert {m.label: m.value for m in at.metric}["Called AI-generated"] == "50.0%"
    next(b for b in at.button if b.label == "Write submission").click().run()
    assert not at.exception
    with sessions() as s:
        assert [e.threshold for e in queries.exports(s)] == [EXACT]


def test_pages_show_which_checkpoint_made_the_predictions_and_export_refuses_stale(sessions, tmp_path):
    root = _dataset(tmp_path / "data")
    run_id = _run(sessions, root, best_epoch=5, pred_epoch=2, sha1="d" * 40)
    at = page("evaluate", run=str(run_id), split="test")
    assert not at.exception
    assert "epoch 2 checkpoint" in _texts(at) and "dddddddddddd" in _texts(at)
    at = page("export", run=str(run_id))
    assert not at.exception
    assert any("epoch 2" in e.value and "epoch 5" in e.value for e in at.error), _texts(at)
    assert not [b for b in at.button if b.label == "Write submission"] or \
        next(b for b in at.button if b.label == "Write submission").disabled
    at.checkbox(key="export_stale").check().run()
    next(b for b in at.button if b.label == "Write submission").click().run()
    assert not at.exception
    with sessions() as s:
        (e,) = queries.exports(s)
        assert "epoch 2" in e.override


def test_pages_say_when_the_threshold_is_degenerate(sessions, tmp_path):
    root = _dataset(tmp_path / "data")
    rng = np.random.default_rng(1)
    run_id = _run(sessions, root, best_threshold=8.5e-07, val_auc=0.5,
                  val_probs=rng.uniform(1e-6, 1e-3, 40), test_probs=rng.uniform(1e-6, 1e-3, 6))
    at = page("evaluate", run=str(run_id))
    assert not at.exception
    assert any("degenerate" in w.value for w in at.warning), _texts(at)
    at = page("export", run=str(run_id))
    assert not at.exception
    assert any("degenerate" in w.value and "AUC 0.500" in w.value for w in at.warning), _texts(at)
    at.checkbox(key="export_warned").check().run()
    next(b for b in at.button if b.label == "Write submission").click().run()
    assert not at.exception
    with sessions() as s:
        (e,) = queries.exports(s)
        assert any("AUC 0.500" in w for w in e.warnings)


def test_pages_say_when_the_run_has_no_threshold_of_its_own(sessions, tmp_path):
    from sqlalchemy import update

    from db.models import Run

    root = _dataset(tmp_path / "data")
    run_id = _run(sessions, root, best_threshold=None)
    with sessions.begin() as s:
        s.execute(update(Run).where(Run.id == run_id).values(threshold_note="validation has no human-made image"))
    for name in ("evaluate", "export"):
        at = page(name, run=str(run_id))
        assert not at.exception
        assert any("no human-made image" in w.value and "guess" in w.value for w in at.warning), _texts(at)
