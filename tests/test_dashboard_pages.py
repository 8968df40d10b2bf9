"""Each page file under AppTest against a temporary store with a finished run."""
import os
import socket

import pytest
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from db import evaluation, labelling, queries
from db.models import Label
from tests.conftest import ROOT, finished_run

PAGES = ROOT / "dashboard" / "views"


def page(name: str, **query) -> AppTest:
    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=60)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


@pytest.fixture()
def run_id(sessions):
    return finished_run(sessions)


@pytest.mark.parametrize("name", ["runs", "train", "evaluate", "review", "shift", "export", "sweep"])
def test_empty_store_gives_a_message_not_a_traceback(sessions, name):
    at = page(name)
    assert not at.exception
    assert at.info, "an empty store should explain itself"


def test_runs_page_lists_the_run_and_its_curves(run_id):
    at = page("runs")
    assert not at.exception
    assert len(at.dataframe) >= 3  # datasets, runs, comparison
    assert at.multiselect[0].value == [run_id]


def test_evaluate_threshold_changes_the_numbers(run_id):
    at = page("evaluate", run=str(run_id))
    assert not at.exception
    f1 = {m.label: m.value for m in at.metric}
    slider = at.slider[0]
    assert slider.value == pytest.approx(0.5)
    slider.set_value(0.8).run()
    assert not at.exception
    f1_high = {m.label: m.value for m in at.metric}
    assert f1["F1"] != f1_high["F1"] and f1["Called AI"] != f1_high["Called AI"]
    # saving the threshold stores it on the run
    next(b for b in at.button if b.label.startswith("Save")).click().run()
    with queries_session(at) as s:
        assert queries.get_run(s, run_id).chosen_threshold == pytest.approx(0.8)


def test_evaluate_test_split_sets_threshold_from_a_target_rate(run_id):
    at = page("evaluate", run=str(run_id), split="test")
    assert not at.exception
    at.number_input[0].set_value(20.0).run()
    next(b for b in at.button if b.label.startswith("Set threshold")).click().run()
    assert not at.exception
    called = next(m for m in at.metric if m.label.startswith("Test images called AI"))
    assert called.value == "20 of 100 (20.0%)"


def test_review_relabel_and_undo_add_history_rows(run_id, sessions):
    at = page("review", run=str(run_id), reviewer="ana")
    assert not at.exception
    assert any("images match" in c.value for c in at.caption)

    def label_rows():
        with sessions() as s:
            return s.scalar(select(func.count(Label.id)))

    before = label_rows()
    relabel = next(b for b in at.button if b.label.startswith("Label "))
    relabel.click().run()
    assert not at.exception
    assert label_rows() == before + 1
    with sessions() as s:
        newest = s.scalars(select(Label).order_by(Label.id.desc())).first()
        assert (newest.source, newest.author) == ("review", "ana")
    next(b for b in at.button if b.label == "Undo last review").click().run()
    assert label_rows() == before + 2
    with sessions() as s:
        history = labelling.label_history(s, newest.image_id)
        assert history[-1].label == history[0].label and history[-1].note.startswith("undo of")


def test_export_writes_a_submission_and_lists_it(run_id, sessions):
    at = page("export", run=str(run_id))
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Rows"] == "100"
    next(b for b in at.button if b.label == "Write submission").click().run()
    assert not at.exception
    with sessions() as s:
        assert [e.rows for e in queries.exports(s)] == [100]


def queries_session(at):
    from db.store import session_factory
    return session_factory()()


def test_a_failed_run_and_a_missing_image_show_clear_messages(sessions, tmp_path):
    from tests.conftest import copy_sample
    data = copy_sample(tmp_path / "copy")
    run_id = finished_run(sessions, source=data)
    with sessions.begin() as s:
        from db.models import Run
        failed = Run(dataset_id=queries.get_run(s, run_id).dataset_id, status="failed", config={"epochs": 1},
                     error="RuntimeError: out of memory")
        s.add(failed)
    at = page("runs")
    assert not at.exception
    assert any("out of memory" in e.value for e in at.error)

    # the first image the review grid shows is deleted after import
    first = page("review", run=str(run_id))
    shown = next(c.value for c in first.caption if "images match" in c.value)
    assert shown
    with sessions() as s:
        run = queries.get_run(s, run_id)
        rows = queries.prediction_rows(s, run, "val")
    for _, rel, *_ in rows:
        (data / rel).unlink()
    at = page("review", run=str(run_id))
    assert not at.exception
    assert any("image file is missing" in w.value for w in at.warning)


def test_train_page_cancel_sets_the_flag_and_a_dead_process_shows_failed(sessions):
    run_id = finished_run(sessions)
    from db.models import Run
    from engine.processes import now
    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
        live = Run(dataset_id=run.dataset_id, status="running", config={"epochs": 3}, pid=os.getpid(),
                   heartbeat_at=now(), progress={"host": socket.gethostname(), "epoch": 1, "batch": 2,
                                                 "batches": 10, "images_per_s": 20.0, "train_images": 100})
        dead = Run(dataset_id=run.dataset_id, status="running", config={"epochs": 3}, pid=2**22 + 12345,
                   heartbeat_at=now(), progress={"host": socket.gethostname()})
        s.add_all([live, dead])
        s.flush()
        live_id, dead_id = live.id, dead.id
    at = AppTest.from_file(str(PAGES / "train.py"), default_timeout=60)
    at.query_params["watch"] = str(live_id)
    at.run()
    assert not at.exception
    next(b for b in at.button if b.label == "Cancel run").click().run()
    with sessions() as s:
        assert queries.get_run(s, live_id).cancel_requested
        gone = queries.get_run(s, dead_id)
        assert gone.status == "failed" and "stopped" in gone.error


def test_review_saliency_without_a_checkpoint_is_a_message(run_id):
    at = page("review", run=str(run_id), reviewer="ana")
    at.toggle[0].set_value(True).run()
    assert not at.exception
    assert any("No saliency map" in w.value and "checkpoint not found" in w.value for w in at.warning)


def test_label_error_queue_is_worst_first_and_relabels_with_a_note(sessions):
    from tests.conftest import finished_audit

    audit_id, _flipped = finished_audit(sessions)
    at = page("review", queue="audit", reviewer="ana")
    assert not at.exception
    with sessions() as s:
        rows = evaluation.audit_rows(s, audit_id, flagged_only=True)
    assert any(f"{len(rows):,} images in the queue" in c.value for c in at.caption)
    assert at.subheader[0].value == rows[0].rel_path  # the worst opens first
    at.text_input(key=f"note_{rows[0].image_id}").set_value("audit: clearly a photo").run()
    wanted = f"Label {'human-made' if rows[0].given_label else 'AI-generated'}"
    next(b for b in at.button if b.label == wanted).click().run()
    assert not at.exception
    with sessions() as s:
        newest = labelling.label_history(s, rows[0].image_id)[-1]
    assert (newest.label, newest.author, newest.note) == (1 - rows[0].given_label, "ana",
                                                           "audit: clearly a photo")
    at.radio[2].set_value("not yet reviewed").run()  # the fixed image leaves the pending queue
    assert at.subheader[0].value != rows[0].rel_path


def test_runs_page_compares_two_runs_fairly_and_offers_retraining(run_id, sessions):
    from db.models import Run

    with sessions.begin() as s:
        a = queries.get_run(s, run_id)
        val = queries.run_image_ids(s, run_id, "val")
        labelling.relabel(s, val[0], 1 - labelling.current_labels(s, a.dataset_id)[val[0]], author="ana")
        b = Run(dataset_id=a.dataset_id, status="succeeded", config=a.config, checkpoint="x",
                labels_as_of=labelling.newest_label_id(s, a.dataset_id), like_run_id=run_id)
        s.add(b)
        s.flush()
        queries.set_run_images(s, b.id, {"train": queries.run_image_ids(s, run_id, "train"), "val": val})
        queries.upsert_predictions(s, b.id, [(i, 0.5) for i in val])
    at = page("runs")
    assert not at.exception
    assert any("1 labels changed between run" in c.value for c in at.caption)
    assert any(f"{len(val) - 1:,} evaluation images" in c.value for c in at.caption)
    assert any(m.label == "Labels changed since it trained" for m in at.metric)
    assert any(b.label == "Retrain with current labels" for b in at.button)


AUTH = {"redirect_uri": "http://127.0.0.1:8501/oauth2callback", "cookie_secret": "test-secret",
        "client_id": "aivh", "client_secret": "x", "server_metadata_url": "https://idp.invalid/.well-known"}


def test_with_login_configured_nothing_shows_before_login(run_id):
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=60)
    at.secrets["auth"] = AUTH
    at.user = {"is_logged_in": False}
    at.run()
    assert not at.exception
    assert [b.label for b in at.button] == ["Log in"]
    assert not at.dataframe and not at.selectbox  # no page content, no run picker


def test_logged_in_reviewer_name_comes_from_the_login_and_is_written_with_labels(run_id, sessions):
    at = AppTest.from_file(str(PAGES / "review.py"), default_timeout=60)
    at.secrets["auth"] = AUTH
    at.user = {"is_logged_in": True, "name": "Ana Ortiz", "email": "ana@example.org"}
    at.query_params.update({"run": str(run_id), "reviewer": "mallory"})  # the URL cannot override it
    at.run()
    assert not at.exception
    box = at.sidebar.text_input(key="reviewer_name")
    assert box.value == "Ana Ortiz" and box.disabled
    next(b for b in at.button if b.label.startswith("Label ")).click().run()
    with sessions() as s:
        newest = s.scalars(select(Label).order_by(Label.id.desc())).first()
    assert newest.author == "Ana Ortiz"


def test_without_login_configured_the_app_opens_directly(run_id):
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert not any(b.label == "Log in" for b in at.button)


def test_rendering_never_writes_a_dead_owner_shows_until_an_action_reaps_it(sessions):
    run_id = finished_run(sessions)
    from db.models import Run
    from engine.processes import now
    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
        dead = Run(dataset_id=run.dataset_id, status="running", config={"epochs": 3}, pid=2**22 + 12345,
                   heartbeat_at=now(), progress={"host": socket.gethostname()})
        s.add(dead)
        s.flush()
        dead_id = dead.id
    for name in ("runs", "train", "evaluate", "review", "export"):
        at = page(name, watch=str(dead_id))
        assert not at.exception
    from db.store import run_dir
    (run_dir(dead_id) / "process.txt").write_text("loading...\nMemoryError: out of memory\n\n")
    at = page("train", watch=str(dead_id))
    assert any("owner gone" in h.value for h in at.subheader)
    assert any(f"Process {2**22 + 12345} stopped while running; the last line it wrote: MemoryError: "
               "out of memory" in e.value
               for e in at.error)  # the reason, before any action records it
    runs = page("runs")
    assert any(f"Run #{dead_id}" in w.value and "process is gone" in w.value for w in runs.warning)
    with sessions() as s:
        assert queries.get_run(s, dead_id).status == "running"  # shown, not written
    next(b for b in at.button if b.label == "Cancel run").click().run()  # an action reaps
    with sessions() as s:
        gone = queries.get_run(s, dead_id)
        assert gone.status == "failed" and "stopped" in gone.error


def test_train_form_defaults_are_train_configs(run_id):
    from engine.config import TrainConfig

    at = page("train")
    d = TrainConfig()
    values = {n.label: n.value for n in at.number_input}
    # image size and learning rate: 0 = TrainConfig.from_dict's, from the architecture and weights
    assert values["Epochs"] == d.epochs and values["Image size (px, 0 = the architecture's)"] == 0
    assert values["Batch size"] == d.batch_size and values["Decoding workers"] == d.workers
    assert values["Learning rate (0 = 1e-3 from scratch, 3e-4 pretrained)"] == 0
    assert values["Freeze epochs (head only first)"] == d.freeze_epochs
    assert {t.label: t.value for t in at.text_input}["Architecture"] == d.arch
    boxes = {b.label: b.value for b in at.selectbox}
    assert (boxes["Device"], boxes["Resize mode"], boxes["JPEG decode"]) == (d.device, d.resize_mode, d.decode)


def test_train_page_starts_a_probe_that_finishes_and_shows_its_arch_and_weights(run_id, sessions):
    """The Train form's probe button launches a real probe process (pretrained Lite0, offline
    weights) on the sample; the Runs page then lists its architecture and weights."""
    import time

    at = page("train")  # the probe form starts at the probe's own defaults: pretrained Lite0
    at.number_input(key="probe_img_size").set_value(32)
    at.number_input(key="probe_workers").set_value(0)
    next(b for b in at.button if b.label.startswith("Start a probe")).click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    with sessions() as s:
        probe = max(queries.list_runs(s), key=lambda r: r.id)
    assert probe.id != run_id and probe.kind == "probe" and probe.config["arch"] == "tf_efficientnet_lite0"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        with sessions() as s:
            status = queries.get_run(s, probe.id).status
        if status not in ("queued", "running"):
            break
        time.sleep(1)
    assert status == "succeeded", (probe.id, status)
    table = page("runs").dataframe[1].value
    row = table[table["run"] == probe.id].iloc[0]
    assert row["arch"] == "tf_efficientnet_lite0" and row["weights"].startswith("imagenet: ")
    assert row["kind"] == "probe" and row["status"] == "succeeded"


def test_shift_page_shows_shortcuts_shift_slices_and_stored_robustness(run_id):
    import json

    from db.store import run_dir

    at = page("shift", run=str(run_id))
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    # the bundled sample: every file has the same header, so no shortcut and no shift
    assert float(metrics["label from file properties alone (AUC)"]) < 0.75
    assert float(metrics["training vs test images, file properties (AUC)"]) < 0.75
    slices = at.dataframe[2].value
    assert set(slices["dimension"]) == {"size (short side)", "aspect", "format", "JPEG quality"}
    assert slices.groupby("dimension")["val images"].sum().nunique() == 1  # every image in one slice each
    assert any("aivh robustness --run" in i.value for i in at.info)
    rows = [{"perturbation": "none", "f1": 0.9, "auc": 0.95, "called_ai": 0.5},
            {"perturbation": "jpeg50", "f1": 0.4, "auc": 0.6, "called_ai": 0.1}]
    (run_dir(run_id) / "robustness-val.json").write_text(json.dumps({"rows": rows}))
    at = page("shift", run=str(run_id))
    assert not at.exception and list(at.dataframe[3].value["perturbation"]) == ["none", "jpeg50"]


def _app_on(page_file: str, run_id: int) -> AppTest:
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=60)
    at.query_params["run"] = str(run_id)
    at.run()
    return at.switch_page(f"views/{page_file}").run()


def _open_in_review(at: AppTest, section: str, option: str) -> AppTest:
    box = at.selectbox(key=f"{section}_bar")
    box.select_index(box.options.index(option)).run()
    at.button(key=f"{section}_open").click().run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Review"]
    return at


def test_a_slice_bar_and_a_robustness_bar_open_exactly_their_images_in_review(run_id, sessions):
    import json

    from db.store import run_dir

    with sessions() as s:
        val = queries.run_image_ids(s, run_id, "val")
        test = [r[0] for r in queries.prediction_rows(s, queries.get_run(s, run_id), "test")]
    assert len(test) == 100
    at = _app_on("shift.py", run_id)
    assert not at.exception, at.exception
    # the bundled sample: every image is a 32 px JPEG, so one slice holds all validation images
    at = _open_in_review(at, "slices", "size (short side): < 64 px (validation)")
    assert sorted(at.session_state["review_selection"]["ids"]) == sorted(val)
    assert any(h.value == f"size (short side): < 64 px (validation): {len(val)} images" for h in at.subheader)
    at = _app_on("shift.py", run_id)
    at = _open_in_review(at, "slices", "size (short side): < 64 px (test)")
    assert sorted(at.session_state["review_selection"]["ids"]) == sorted(test)
    # the robustness rows keep the images whose call each perturbation changed
    flipped = [val[3], val[0], 10**6]  # the last one is no image of the run
    rows = [{"perturbation": "none", "f1": 0.9, "auc": 0.95, "called_ai": 0.5, "flipped_ids": []},
            {"perturbation": "jpeg50", "f1": 0.4, "auc": 0.6, "called_ai": 0.1, "flipped_ids": flipped}]
    (run_dir(run_id) / "robustness-val.json").write_text(json.dumps({"rows": rows}))
    at = _app_on("shift.py", run_id)
    at = _open_in_review(at, "robustness", "jpeg50: 3 calls changed")
    assert at.subheader[0].value == "calls changed by jpeg50: 2 images"
    assert any(c.value == f"1 more are not images of run #{run_id}'s dataset" for c in at.caption)
    assert at.subheader[1].value == queries_rel_path(sessions, val[3])  # in the order given, first opened
    at.switch_page("views/review.py").run()  # where the browser now is (AppTest stays on its own page)
    assert [t.value for t in at.title] == ["Review"] and at.session_state["review_selection"]["ids"] == flipped
    next(b for b in at.button if b.label == "Back to all predictions").click().run()
    assert not at.exception and "review_selection" not in at.session_state
    assert any("images match" in c.value for c in at.caption)  # Review's own filters again
    # a confusion cell's link names its own filters: an earlier selection does not hide them
    at = _app_on("shift.py", run_id)
    at = _open_in_review(at, "robustness", "jpeg50: 3 calls changed")
    at.switch_page("views/evaluate.py").run()
    next(b for b in at.button if b.label.startswith("false positives")).click().run()
    assert not at.exception and "review_selection" not in at.session_state


def queries_rel_path(sessions, image_id: int) -> str:
    from db.models import Image

    with sessions() as s:
        return s.get(Image, image_id).rel_path


def test_evaluate_shows_the_slices_and_the_robustness_of_the_run(run_id):
    at = page("evaluate", run=str(run_id))
    assert not at.exception, at.exception
    # closed, the section computes nothing (on a large store the slices cost more than the page)
    assert not any(h.value.startswith("Results per slice") for h in at.subheader)
    next(t for t in at.toggle if t.label.startswith("Results per slice")).set_value(True).run()
    assert not at.exception, at.exception
    assert any(h.value.startswith("Results per slice at threshold") for h in at.subheader)
    assert any("aivh robustness --run" in i.value for i in at.info)
    assert any(s.label == "Slice" for s in at.selectbox)
