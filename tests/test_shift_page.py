"""The Shift page's "most test-like training images" button opens what it says (issue 24,
item 15: it said 200 and opened the 30 the run had predicted). AppTest against a temporary store."""
import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT, finished_run


@pytest.fixture()
def run_id(sessions):
    return finished_run(sessions)  # 300 training images, the 60 of validation predicted


def test_the_test_like_button_says_what_it_opens_and_opens_it(run_id):
    from dashboard import store

    at = AppTest.from_file(str(ROOT / "dashboard" / "views" / "shift.py"), default_timeout=120)
    at.query_params["run"] = str(run_id)
    at.run()
    assert not at.exception
    button = next(b for b in at.button if "most test-like" in b.label)
    dataset_id = store.runs_by_id()[run_id].dataset_id
    top = store.shortcut_report(dataset_id)["shift"]["most_test_like"][:200]
    frame = store.selection_frame(dataset_id, run_id, top)
    predicted = int(frame["prob"].notna().sum())
    assert 0 < predicted < 200  # the case the page got wrong: some of the 200 without a prediction
    assert button.label == (f"Open the 200 most test-like training images in Review "
                            f"({predicted} with run #{run_id}'s prediction)")
    assert any(c.value.startswith(f"{200 - predicted} of them have no prediction") for c in at.caption)
    button.click().run()
    opened = at.session_state["review_selection"]
    assert opened["ids"] == top and opened["run"] == run_id  # all 200, most test-like first
