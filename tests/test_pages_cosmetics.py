"""What the pages print and draw: no deprecated Streamlit arguments (and no deprecation line
logged), a readable saliency caption, legends clear of the axis titles, whole-number epoch
ticks, and no up-or-down delta on a count (issue 24, item 17). AppTest against a temporary store."""
import ast
import json
import logging

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT, finished_run
from tests.test_trust_pages import wide_run  # noqa: F401 - fixture

PAGES = ROOT / "dashboard" / "views"
DEPRECATED = {"use_container_width", "use_column_width"}  # width="stretch" / "content" (pyproject: streamlit>=1.50)


def page(name: str, **query) -> AppTest:
    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=60)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def figures(at) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


@pytest.fixture()
def run_id(sessions):
    return finished_run(sessions)


@pytest.fixture()
def deprecations():
    """Every deprecation line Streamlit logs while the test runs (it logs each message once
    per process: the record of those already shown is cleared first)."""
    from streamlit import deprecation_util

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    getattr(deprecation_util, "_shown_warnings", set()).clear()  # private; absent in some releases
    logger = logging.getLogger("streamlit.deprecation_util")
    handler = Keep(logging.WARNING)
    logger.addHandler(handler)
    yield seen
    logger.removeHandler(handler)


def test_no_dashboard_call_passes_a_deprecated_width_argument():
    found = []
    for file in sorted((ROOT / "dashboard").rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Call):
                found += [f"{file.relative_to(ROOT)}:{node.lineno} {k.arg}" for k in node.keywords
                          if k.arg in DEPRECATED]
    assert found == []


def test_the_saliency_caption_is_readable_and_nothing_deprecated_is_logged(wide_run, deprecations):  # noqa: F811
    at = page("review", run=str(wide_run), reviewer="ana", split="test")
    at.toggle(key=f"sal_show_{wide_run}").set_value(True).run()
    assert not at.exception
    caption = next(c.value for c in at.caption if c.value.startswith("p(AI) ="))
    assert "Settings(" not in caption and "=" not in caption.split("·", 1)[1].split("centre")[0], caption
    assert " · saliency · " in caption  # the default method, said as a word
    assert deprecations == []


def test_settings_are_said_in_words():
    from dashboard.views.review import settings_text
    from engine.saliency import Settings

    assert settings_text(Settings("integrated_gradients", steps=16, baseline="blur")) == \
        "integrated gradients, 16 steps from a blur baseline"
    assert settings_text(Settings("smoothgrad")) == "smoothgrad, 16 noisy copies (noise 0.15)"
    assert settings_text(Settings("occlusion", window=8)) == "occlusion, an 8 px window"
    assert settings_text(Settings("occlusion", window=16)) == "occlusion, a 16 px window"
    assert settings_text(Settings("occlusion", window=11)) == "occlusion, an 11 px window"


def test_evaluate_legends_sit_clear_of_the_axis_titles(run_id):
    at = page("evaluate", run=str(run_id))
    assert not at.exception
    with_legend = [f for f in figures(at) if sum(t.get("showlegend", True) for t in f["data"]) > 1]
    assert len(with_legend) >= 4  # threshold curves, ROC, histogram, reliability
    for f in with_legend:
        legend = f["layout"].get("legend", {})
        # plotly puts a horizontal legend under the plot (y -0.1), over the x axis' title; a
        # vertical one right of the plot (x 1.02), where no title is
        right = legend.get("orientation", "v") == "v" and legend.get("x", 1.02) >= 1
        above = legend.get("orientation") == "h" and legend.get("y", -0.1) >= 1
        assert right or above, (f["layout"].get("title"), legend)


def test_epoch_axes_tick_on_whole_epochs(sessions, run_id):
    from tests.test_sweep import recorded_sweep

    at = page("runs")
    assert not at.exception
    curves = [f for f in figures(at) if f["layout"].get("xaxis", {}).get("title", {}).get("text") == "epoch"]
    assert curves
    sweep_id, _ = recorded_sweep(sessions, run_id)
    at = page("sweep")
    assert not at.exception
    curves += [json.loads(c.proto.spec) for c in at.get("plotly_chart") if c.key == f"sweep_{sweep_id}_intermediate"]
    at = page("train", watch=str(run_id))
    assert not at.exception
    curves += [json.loads(c.proto.spec) for c in at.get("plotly_chart") if c.key == f"live_{run_id}"]
    assert len(curves) >= 3  # the Runs page's, the Sweep page's intermediate values (its steps are epochs), Train's
    for f in curves:
        axis = f["layout"]["xaxis"]
        assert axis.get("tickformat") == "d" and isinstance(axis.get("dtick"), int) and axis["dtick"] >= 1, axis


def test_the_test_splits_count_carries_no_delta(run_id):
    at = page("evaluate", run=str(run_id), split="test")
    assert not at.exception
    m = next(m for m in at.metric if m.label == "Test images called AI at this threshold")
    assert m.proto.delta == ""  # a count, not a change: no arrow
    assert m.value.endswith("%)") and " of 100 (" in m.value
