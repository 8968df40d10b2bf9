"""`aivh sweep` (engine.sweep): the space spec, pruning into runs, the study's storage beside
the store on both backends, a killed worker and --resume. Trials train timm's tiny
`test_efficientnet` at 32 px on a stratified part of the bundled sample."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from sqlalchemy import create_engine, inspect, select

from db import queries, store
from db.models import Run
from engine import search_space, sweep, sweep_report
from engine.cli import main
from engine.errors import UsageError
from engine.ingest import import_dataset
from tests.conftest import ROOT, SAMPLE, aivh

TINY = {"arch": "test_efficientnet", "img_size": 32, "workers": 0, "device": "cpu", "limit": 200,
        "batch_size": 16}
TINY_FLAGS = ["--arch", "test_efficientnet", "--img-size", "32", "--workers", "0", "--device", "cpu",
              "--limit", "60", "--batch-size", "16"]


def test_a_space_spec_reads_ranges_logs_and_choices():
    space = search_space.parse_space("lr=1e-4:3e-3:log, img-size=64|96|128,aug_min_scale=0.5:1,pretrained=none|imagenet")
    assert space["lr"] == search_space.Param("lr", 1e-4, 3e-3, True)
    assert space["img_size"].choices == (64, 96, 128)
    assert (space["aug_min_scale"].low, space["aug_min_scale"].log) == (0.5, False)
    assert space["pretrained"].choices == (None, "imagenet")
    assert search_space.parse_space(search_space.space_text(space)) == space  # stored as text, read back the same


@pytest.mark.parametrize("spec, says", [
    ("lr", "NAME=LOW:HIGH"), ("colour=1:2", "cannot be swept"), ("lr=3e-3:1e-4", "LOW must be below HIGH"),
    ("lr=0:1:log", "log range must start above 0"), ("img_size=64|big", "not an integer"),
    ("lr=1e-4:1e-3:ln", "LOW:HIGH:log"), ("resize_mode=resize|stretch", "resize_mode is one of"),
    ("lr=1e-4:1e-3,lr=1e-3:1e-2", "given twice"), (" , ", "empty")])
def test_a_bad_space_spec_is_one_clear_error(spec, says):
    with pytest.raises(UsageError, match=says):
        search_space.parse_space(spec)


def test_a_training_flag_given_leaves_the_default_space():
    space = search_space.default_space({"img_size": 64, "lr": 1e-3})
    assert "img_size" not in space and "lr" not in space
    assert {"weight_decay", "batch_size", "resize_mode", "aug_min_scale"} <= set(space)
    lite0 = search_space.default_space({"arch": "tf_efficientnet_lite0"})  # packaged ImageNet weights (test extra)
    assert lite0["pretrained"].choices == (None, "imagenet") and "freeze_epochs" in lite0


def test_the_cli_refuses_bad_input_in_one_line(workspace, capsys):
    import_dataset(store.session_factory(), SAMPLE, "sample", progress=False)
    cases = [(["--dataset", "sample", "--trials", "2", "--space", "lr=1:0"], "LOW must be below HIGH"),
             (["--dataset", "sample", "--trials", "2", "--lr", "1e-3", "--space", "lr=1e-4:1e-2:log"],
              "lr is both fixed by a training flag and in --space"),
             (["--dataset", "nope", "--trials", "2"], "nope"),
             (["--dataset", "sample"], "--trials"),
             (["--resume", "99"], "no sweep 99"),
             (["--dataset", "sample", "--trials", "0"], "at least 1")]
    for argv, says in cases:
        assert main(["sweep", *argv, "--json"]) == 1
        out = capsys.readouterr()
        lines = out.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("aivh: error:") and says in lines[0], (argv, out.err)
        assert out.out == ""


def _alembic_tables(url: str) -> dict:
    """Where each alembic_version lives: the store's revision stays the store's."""
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            return {schema: c.exec_driver_sql(f"SELECT version_num FROM {schema + '.' if schema else ''}"
                                              "alembic_version").scalars().all()
                    for schema in ([None, "optuna"] if url.startswith("postgresql") else [None])
                    if "alembic_version" in inspect(c).get_table_names(schema=schema)}
    finally:
        engine.dispose()


def test_a_sweep_prunes_into_runs_and_keeps_its_study_beside_the_store(store_url):
    """An aggressive pruner (median of the first finished trial, from epoch 1) on trials whose
    learning rates span 1e-5 to 1: a pruned trial is a run with status pruned, its epochs and
    checkpoints kept; Optuna's state is in its own namespace on both backends."""
    from optuna.trial import TrialState

    sessions = store.session_factory()
    import_dataset(sessions, SAMPLE, "sample", progress=False)
    sweep_id = sweep.create_sweep(sessions, "sample", 6, space="lr=1e-5:1:log", metric="val_auc",
                                  fixed={**TINY, "epochs": 2}, pruner="median", prune_startup=1, prune_warmup=0)
    sweep.work(sweep_id, sessions=sessions)
    r = sweep_report.summary(sweep_id, sessions)
    assert r["completed"] + r["pruned"] == 6 and r["failed"] == 0
    assert r["pruned"] >= 1, r  # 3 and 4 of 6 with sampler seeds 0 to 3 (measured 2026-11-27)
    assert r["epochs_requested"] == 12 and r["epochs_run"] < 12  # what pruning saved
    with sessions() as s:
        runs = {x.id: x for x in s.scalars(select(Run).where(Run.kind == "trial"))}
        study = sweep.load_study(sweep.storage(), sweep_id)
        for t in study.get_trials():
            run = runs[t.user_attrs["run"]]
            assert (run.config["sweep"], run.config["trial"]) == (sweep_id, t.number)
            epochs = [e.epoch for e in queries.epochs(s, run.id)]
            if t.state == TrialState.PRUNED:  # stopped at the epoch the pruner said, every epoch kept
                assert run.status == "pruned" and epochs == sorted(t.intermediate_values) and epochs[0] == 1
                assert (store.run_dir(run.id) / "last.pt").is_file() and run.best_epoch in epochs
            else:
                assert t.state == TrialState.COMPLETE and run.status == "succeeded" and epochs == [1, 2]
                assert t.value == pytest.approx(queries.best_epoch(s, run).val_auc)
    best = max((t for t in study.get_trials() if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert (r["best_run"], r["best_value"], r["best_params"]) == (best.user_attrs["run"], best.value, best.params)
    # the store's migrations and Optuna's never share an alembic_version
    assert _alembic_tables(store_url)[None] == [store.head_revision()]
    if store_url.startswith("postgresql"):
        assert _alembic_tables(store_url)["optuna"] not in ([], [store.head_revision()])
        assert "trials" not in inspect(create_engine(store_url)).get_table_names()
    else:
        sibling = store_url.removeprefix("sqlite:///").removesuffix(".db") + ".optuna.db"
        assert "trials" in inspect(create_engine(f"sqlite:///{sibling}")).get_table_names()
    # another process reads the same study
    listed = json.loads(aivh("sweep", "--list", "--json", env_home=store.home()).stdout.splitlines()[-1])
    assert [(x["sweep"], x["completed"], x["pruned"]) for x in listed] == [(sweep_id, r["completed"], r["pruned"])]


def test_a_killed_worker_s_trial_fails_and_resume_completes_the_count(workspace):
    """`aivh sweep` killed mid-trial: its trial shows failed (the run too, its owner gone), and
    `--resume` retries those parameters and reaches the requested count."""
    sessions = store.session_factory()
    import_dataset(sessions, SAMPLE, "sample", progress=False)
    env = {**os.environ, "AIVH_HOME": str(workspace)}
    env.pop("AIVH_DB_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "sweep", "--dataset", "sample", "--trials", "2",
                             "--epochs", "3", "--space", "lr=1e-4:1e-2:log", "--pruner", "none", *TINY_FLAGS,
                             "--json"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # the first trial's run is training
            with sessions() as s:
                if s.scalar(select(Run.id).where(Run.kind == "trial", Run.status == "running")) is not None:
                    break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        else:
            pytest.fail("no trial started in 300 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    listed = json.loads(aivh("sweep", "--list", "--json", env_home=workspace).stdout.splitlines()[-1])
    # the trial killed is the one running (on a quiet machine the first may have finished)
    assert [(x["failed"], x["running"]) for x in listed] == [(1, 0)] and listed[0]["completed"] <= 1
    sweep_id = listed[0]["sweep"]
    with sessions() as s:
        killed = s.scalars(select(Run).where(Run.kind == "trial", Run.status != "succeeded")).one()
        assert killed.status == "failed" and "stopped" in killed.error
    out = json.loads(aivh("sweep", "--resume", str(sweep_id), "--json", env_home=workspace).stdout.splitlines()[-1])
    assert (out["completed"], out["pruned"], out["failed"], out["trials"]) == (2, 0, 1, 2)
    study = sweep.load_study(sweep.storage(), sweep_id)
    retried = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == killed.config["trial"]]
    assert len(retried) == 1 and retried[0].params == study.trials[killed.config["trial"]].params  # again
    assert retried[0].user_attrs["run"] != killed.id


def recorded_sweep(sessions, run_id: int | None = None) -> tuple[int, int]:
    """A sweep as workers would leave it, without training: two completed trials (one of them
    a finished run of the sample, made here unless given) and a pruned one, with their
    per-epoch values. Also the browser test's."""
    import optuna
    from optuna.distributions import FloatDistribution

    from tests.conftest import finished_run

    run_id = run_id or finished_run(sessions)
    sweep_id = sweep.create_sweep(sessions, "sample", 3, space="lr=1e-4:1e-2:log", fixed={"epochs": 2})
    study = sweep.load_study(sweep.storage(), sweep_id)
    dist = {"lr": FloatDistribution(1e-4, 1e-2, log=True)}
    for lr, state, values, run in [(1e-3, "COMPLETE", {1: 0.7, 2: 0.75}, run_id),
                                   (5e-3, "COMPLETE", {1: 0.6, 2: 0.65}, None),
                                   (2e-4, "PRUNED", {1: 0.5}, None)]:
        study.add_trial(optuna.create_trial(
            state=optuna.trial.TrialState[state], value=list(values.values())[-1], params={"lr": lr},
            distributions=dist, intermediate_values=values, user_attrs={"run": run}))
    return sweep_id, run_id


def test_the_sweep_page_shows_trials_figures_and_the_best_run(sessions):
    from streamlit.testing.v1 import AppTest

    sweep_id, run_id = recorded_sweep(sessions)
    at = AppTest.from_file(str(ROOT / "dashboard" / "views" / "sweep.py"), default_timeout=60).run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Completed"], metrics["Pruned"], metrics["Requested"]) == ("2", "1", "3")
    table = at.dataframe[0].value
    assert list(table["state"]) == ["succeeded", "succeeded", "pruned"] and table["run"].iloc[0] == run_id
    assert f"run #{run_id}" in at.success[0].value
    charts = {c.key: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    assert set(charts) == {f"sweep_{sweep_id}_{k}" for k in ("history", "intermediate", "parallel", "importances")}
    curves = {d["name"]: d["x"] for d in charts[f"sweep_{sweep_id}_intermediate"]["data"]}
    assert curves == {"Trial0": [1, 2], "Trial1": [1, 2], "Trial2": [1]}  # the pruned one stops at epoch 1
    assert [t.label for t in at.tabs] == ["Optimisation history", "Intermediate values (pruned trials stop)",
                                          "Parallel coordinates", "Parameter importances"]
    assert at.query_params["sweep"] == str(sweep_id)


def test_the_sweep_page_refuses_a_bad_space_in_one_message(sessions):
    from streamlit.testing.v1 import AppTest

    from tests.conftest import finished_run

    finished_run(sessions)
    at = AppTest.from_file(str(ROOT / "dashboard" / "views" / "sweep.py"), default_timeout=60).run()
    at.text_input[0].set_value("lr=1:0")
    at.button[0].click().run()
    assert not at.exception
    assert "LOW must be below HIGH" in at.error[0].value
    assert sweep_report.list_sweeps() == []  # nothing made


def test_two_worker_processes_share_one_study(workspace):
    """--parallel 2: two processes pull trials of the same study and stop at the count between them."""
    sessions = store.session_factory()
    import_dataset(sessions, SAMPLE, "sample", progress=False)
    out = json.loads(aivh("sweep", "--dataset", "sample", "--trials", "4", "--parallel", "2", "--epochs", "2",
                          "--space", "lr=1e-4:1e-2:log", "--pruner", "none", *TINY_FLAGS, "--json",
                          env_home=workspace).stdout.splitlines()[-1])
    assert out["completed"] >= 4 and out["failed"] == 0 and out["running"] == 0
    study = sweep.load_study(sweep.storage(), out["sweep"])
    workers = {tuple(t.user_attrs["worker"]) for t in study.get_trials()}
    assert len(workers) == 2  # both processes ran trials
    logs = sorted(p.name for p in (workspace / "sweeps" / str(out["sweep"])).glob("*.txt"))
    assert logs == ["worker-0.txt", "worker-1.txt"]
    assert sweep.live_workers(out["sweep"]) == 0  # both recorded, both gone
    assert len(list((workspace / "sweeps" / str(out["sweep"]) / "workers").glob("*.json"))) == 2


def test_a_worker_whose_every_trial_fails_stops_instead_of_looping(workspace, monkeypatch):
    """Failed trials do not count towards --trials; three failures in a row stop the worker."""
    from engine import jobs

    sessions = store.session_factory()
    import_dataset(sessions, SAMPLE, "sample", progress=False)
    sweep_id = sweep.create_sweep(sessions, "sample", 2, space="lr=1e-4:1e-3", fixed=TINY)

    def broken(*_a, **_k):  # a failure every trial meets (the disk gone, say)
        raise OSError("disk gone")

    monkeypatch.setattr(jobs, "execute", broken)
    sweep.work(sweep_id, sessions=sessions)
    r = sweep_report.summary(sweep_id, sessions)
    assert (r["completed"], r["pruned"], r["failed"], r["best_run"]) == (0, 0, 3, None)


def test_a_bad_value_in_the_space_is_one_error_at_creation(workspace):
    sessions = store.session_factory()
    import_dataset(sessions, SAMPLE, "sample", progress=False)
    for spec, said in (("pretrained=/no/such/weights.pth", "pretrained"), ("batch_size=0:8", "batch size"),
                       ("aug_min_scale=0.01:0.5", "augmentation"), ("arch=tf_efficientnet_lite0|", "empty choice")):
        with pytest.raises(UsageError, match=said):
            sweep.create_sweep(sessions, "sample", 2, space=spec, fixed={k: v for k, v in TINY.items()
                                                                        if not spec.startswith(k)})


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_the_page_offers_resume_for_a_trial_whose_worker_died(sessions):
    """Rendering reads: the dead worker's trial shows as such, and Resume fails it (and retries it)."""
    from streamlit.testing.v1 import AppTest

    sweep_id, _run_id = recorded_sweep(sessions)
    study = sweep.load_study(sweep.storage(), sweep_id)
    study.set_user_attr("trials", 5)  # short of its count
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trial = study.ask()
    trial.set_user_attr("worker", [socket.gethostname(), dead.pid, None])
    at = AppTest.from_file(str(ROOT / "dashboard" / "views" / "sweep.py"), default_timeout=60).run()
    assert not at.exception
    assert "lost their worker" in at.warning[0].value
    assert "running (worker gone)" in list(at.dataframe[0].value["state"])
    assert sweep_report.summary(sweep_id)["worker_gone"] == 1  # the page wrote nothing
    assert sweep.fail_dead_trials(study) == [trial.number]
    assert [t.number for t in study.get_trials() if t.state.name == "WAITING"] == [trial.number + 1]


def test_the_page_offers_no_resume_while_a_worker_of_the_sweep_still_runs(sessions):
    """Between trials (or while a new worker imports torch) no trial runs, yet a worker lives:
    Resume would start more workers than the count needs."""
    from streamlit.testing.v1 import AppTest

    sweep_id, _run_id = recorded_sweep(sessions)
    sweep.load_study(sweep.storage(), sweep_id).set_user_attr("trials", 5)  # short of its count
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        sweep.note_worker(sweep_id, worker.pid)
        assert sweep_report.summary(sweep_id)["workers_alive"] == 1
        at = AppTest.from_file(str(ROOT / "dashboard" / "views" / "sweep.py"), default_timeout=60).run()
        assert not at.exception and not any(b.label == "Resume sweep" for b in at.button)
    finally:
        worker.kill()
        worker.wait()
    assert sweep_report.summary(sweep_id)["workers_alive"] == 0
    at = AppTest.from_file(str(ROOT / "dashboard" / "views" / "sweep.py"), default_timeout=60).run()
    assert any(b.label == "Resume sweep" for b in at.button)
