"""A run's state follows its process: liveness by (host, pid, start time), a heartbeat from a
thread, only the owner writes, resume only with the process count it trained with, and an end
of epoch interrupted at any point resumes to one epoch history."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from db import queries
from db.models import Dataset, Epoch, Image, Label, Prediction, Run
from db.store import run_dir
from engine import atomic, checkpoints, distributed, errors, jobs, liveness, processes, recording
from engine import train as tr
from engine.config import TrainConfig

CFG = TrainConfig(epochs=3, img_size=32, batch_size=8, workers=0, device="cpu", bn_batches=1, keep_epoch="last",
                  val_fraction=0.25)


def _dataset(sessions, tmp_path: Path, n: int = 32, *, name: str = "tint") -> int:
    """Noise images tinted red or blue by class, written straight into the store (no import)."""
    root = tmp_path / name
    rng = np.random.default_rng(0)
    with sessions.begin() as s:
        ds = Dataset(name=name, root=str(root))
        s.add(ds)
        s.flush()
        for i in range(n):
            arr = rng.integers(0, 256, (32, 32, 3)).astype(np.float32)
            arr[..., 0 if i % 2 else 2] += 90
            rel = f"train_data/{i:04d}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            PILImage.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(root / rel, quality=95)
            im = Image(dataset_id=ds.id, rel_path=rel, split="train", csv_row=i, status="ok")
            s.add(im)
            s.flush()
            s.add(Label(image_id=im.id, label=i % 2, source="import"))
        return ds.id


def _run(sessions, ds_id: int, cfg: TrainConfig = CFG, **values) -> int:
    with sessions.begin() as s:
        run = Run(dataset_id=ds_id, status=values.pop("status", "queued"), config=cfg.to_dict(), **values)
        s.add(run)
        s.flush()
        return run.id


@pytest.fixture()
def live_child():
    """Another live process on this host (stands for a trainer that owns a run)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _started(pid: int) -> float:
    """The process's start time as the store records it, read here from /proc independently."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19])
    boot = next(float(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines()
                if ln.startswith("btime "))
    return round(boot + ticks / os.sysconf("SC_CLK_TCK"), 2)


def _owner(proc) -> dict:
    return {"host": socket.gethostname(), "pid": proc.pid, "pid_started": _started(proc.pid)}


def _get(sessions, run_id: int) -> Run:
    with sessions() as s:
        return queries.get_run(s, run_id)


# ---------------------------------------------------------------- 1: liveness and ownership


def test_a_live_process_on_this_host_keeps_its_run_whatever_its_heartbeat(sessions, tmp_path, live_child):
    ds = _dataset(sessions, tmp_path, 4)
    run_id = _run(sessions, ds, status="running", heartbeat_at=processes.now() - timedelta(minutes=10),
                  **_owner(live_child))  # silent for 10 min: compiling, validating ...
    with sessions.begin() as s:
        assert liveness.reap_stale(s) == []
    assert _get(sessions, run_id).status == "running"


def test_a_reused_pid_is_not_taken_for_the_run(sessions, tmp_path, live_child):
    ds = _dataset(sessions, tmp_path, 4)
    owner = _owner(live_child)
    run_id = _run(sessions, ds, status="running", heartbeat_at=processes.now(),
                  **{**owner, "pid_started": owner["pid_started"] - 3600})  # the pid, another process
    with sessions.begin() as s:
        assert liveness.reap_stale(s) == [run_id]
    run = _get(sessions, run_id)
    assert run.status == "failed" and f"process {live_child.pid} stopped" in run.error


def test_execute_refusing_a_run_that_is_already_running_leaves_it_untouched(sessions, tmp_path, live_child):
    ds = _dataset(sessions, tmp_path, 8)
    run_id = _run(sessions, ds, status="running", heartbeat_at=processes.now(), **_owner(live_child))
    (run_dir(run_id) / "last.pt").write_bytes(b"x")
    for resume in (False, True):  # a double-clicked Resume, a second `aivh train --resume`
        with pytest.raises(ValueError, match=f"run {run_id} is already running \\(pid {live_child.pid}"):
            jobs.execute(run_id, resume=resume, progress=False, sessions=sessions)
    run = _get(sessions, run_id)
    assert (run.status, run.error, run.pid) == ("running", None, live_child.pid)


def test_resume_is_refused_while_the_owner_lives_whatever_the_status(sessions, tmp_path, live_child, monkeypatch):
    ds = _dataset(sessions, tmp_path, 8)
    run_id = _run(sessions, ds, status="failed", error="marked failed by an old reaper", **_owner(live_child))
    (run_dir(run_id) / "last.pt").write_bytes(b"x")
    started = []
    monkeypatch.setattr(jobs.subprocess, "Popen", lambda *a, **k: started.append(a))
    with sessions.begin() as s, pytest.raises(ValueError, match="already running"):
        jobs.check_resumable(s, run_id)
    with pytest.raises(ValueError, match="already running"):
        jobs.launch(run_id, resume=True, sessions=sessions)
    assert not started
    assert _get(sessions, run_id).pid == live_child.pid


def test_a_run_whose_process_died_while_queued_shows_failed_with_the_reason(sessions, tmp_path):
    ds = _dataset(sessions, tmp_path, 4)
    run_id = _run(sessions, ds)
    # what launch records: the started process as the queued run's owner
    pid = jobs.launch(run_id, sessions=sessions)
    run = _get(sessions, run_id)
    assert (run.status, run.pid, run.host) == ("queued", pid, socket.gethostname())
    assert run.pid_started == _started(pid)
    os.kill(pid, signal.SIGKILL)  # dies before it takes the run (it is still importing)
    deadline = time.monotonic() + 30
    while processes.process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    (run_dir(run_id) / "process.txt").write_text("Traceback ...\nImportError: no module named foo\n")
    with sessions.begin() as s:
        assert liveness.reap_stale(s) == [run_id]
    run = _get(sessions, run_id)
    assert run.status == "failed"
    assert run.error == f"process {pid} exited before the run started: ImportError: no module named foo"


def test_the_heartbeat_thread_beats_while_the_trainer_is_silent(sessions, tmp_path, monkeypatch):
    ds = _dataset(sessions, tmp_path, 8)
    run_id = _run(sessions, ds)
    monkeypatch.setattr(liveness, "HEARTBEAT_S", 0.05)
    beats = []

    def silent_train(cfg, data, out, cb, **kw):  # a long compile: no callback for a while
        with sessions() as s:
            first = queries.get_run(s, run_id).heartbeat_at
        time.sleep(0.6)
        with sessions() as s:
            beats.append((first, queries.get_run(s, run_id).heartbeat_at))

    monkeypatch.setattr(jobs, "train", silent_train)
    assert jobs.execute(run_id, progress=False, sessions=sessions).status == "succeeded"
    first, later = beats[0]
    assert (later - first).total_seconds() >= 0.3


def test_only_the_owning_process_finishes_its_run(sessions, tmp_path, monkeypatch, live_child):
    ds = _dataset(sessions, tmp_path, 8)
    run_id = _run(sessions, ds)

    def taken_over(cfg, data, out, cb, **kw):  # meanwhile another process took the run
        with sessions.begin() as s:
            run = queries.get_run(s, run_id)
            run.host, run.pid, run.pid_started = _owner(live_child).values()

    monkeypatch.setattr(jobs, "train", taken_over)
    jobs.execute(run_id, progress=False, sessions=sessions)
    run = _get(sessions, run_id)
    assert (run.status, run.pid, run.finished_at) == ("running", live_child.pid, None)


def test_a_callback_of_a_process_that_lost_its_run_writes_nothing(sessions, tmp_path, live_child):
    ds = _dataset(sessions, tmp_path, 8)
    run_id = _run(sessions, ds, status="running", **_owner(live_child))
    cb = recording.StoreCallbacks(sessions, run_id, [], owner=processes.this_process())
    with pytest.raises(errors.LostRun):
        cb.on_batch(1, 1, 10, 5.0)
    assert _get(sessions, run_id).progress is None


# ---------------------------------------------------------------- 2: process count


def test_world_size_is_recorded_and_resume_with_another_is_one_clear_refusal(sessions, tmp_path, monkeypatch):
    ds = _dataset(sessions, tmp_path, 8)
    fresh = _run(sessions, ds)
    monkeypatch.setattr(jobs, "train", lambda *a, **k: None)
    jobs.execute(fresh, progress=False, sessions=sessions)
    assert _get(sessions, fresh).world_size == 1

    ddp = _run(sessions, ds, status="failed", error="killed", world_size=2)
    (run_dir(ddp) / "last.pt").write_bytes(b"x")
    with pytest.raises(ValueError) as e:
        jobs.execute(ddp, resume=True, progress=False, sessions=sessions)
    assert str(e.value) == (f"run {ddp} was trained by 2 process(es) and cannot resume with 1: "
                            "resume it with --nproc 2")
    with pytest.raises(ValueError, match="--nproc 2"):
        jobs.launch(ddp, resume=True, sessions=sessions)
    run = _get(sessions, ddp)
    assert (run.status, run.error) == ("failed", "killed")


def test_a_checkpoint_resumed_with_another_schedule_is_refused_before_it_loads(tmp_path):
    def parts(total_steps):
        model = torch.nn.Linear(2, 1)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        return model, opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=total_steps)

    model, opt, sched = parts(20)
    result = tr.TrainResult(best=None, best_val_probs=np.zeros(2))
    checkpoints.stage_checkpoints(tmp_path, model, opt, sched, CFG, result, 1, 0, 2, is_best=False)
    with pytest.raises(ValueError, match="trained by 2 process\\(es\\); resume it with 2, not 1"):
        tr._restore(tmp_path / checkpoints.LAST_NEXT, *parts(20), tr.TrainResult(best=None), "best", 1)
    checkpoints.stage_checkpoints(tmp_path, model, opt, sched, CFG, result, 1, 0, 1, is_best=False)
    with pytest.raises(ValueError, match="20 scheduler steps in all, this setup has 10"):
        tr._restore(tmp_path / checkpoints.LAST_NEXT, *parts(10), tr.TrainResult(best=None), "best", 1)


# ---------------------------------------------------------------- 3: the end of an epoch


class Fault(Exception):
    pass


def _inject(monkeypatch, point: str) -> None:
    """Raise at `point` of epoch 2's end (a kill there leaves the same files and rows)."""
    real_save, real_rename, real_store = checkpoints.save_atomic, checkpoints._rename, recording.store_val_predictions

    def save(obj, path):
        if obj.get("epoch") == 2 and point == f"writing {Path(path).name}":
            raise Fault(point)
        real_save(obj, path)

    def store(s, run_id, ids, probs, **kw):
        if kw.get("epoch") == 2 and point == "store":
            raise Fault(point)  # mid-transaction: the epoch row was added, nothing is committed
        real_store(s, run_id, ids, probs, **kw)

    renames = []

    def rename(src, dst):
        if torch.load(src, weights_only=True)["epoch"] == 2:
            renames.append(dst.name)
            if point == f"renaming {dst.name}":
                raise Fault(point)
        real_rename(src, dst)

    monkeypatch.setattr(checkpoints, "save_atomic", save)
    monkeypatch.setattr(checkpoints, "_rename", rename)
    monkeypatch.setattr(recording, "store_val_predictions", store)


POINTS = ["writing last.next.pt", "writing best.next.pt", "store", "renaming best.pt", "renaming last.pt"]
_REFERENCE: dict[str, list] = {}


def _history(sessions, run_id):
    with sessions() as s:
        return [(e.epoch, round(e.train_loss, 5), round(e.val_loss, 5)) for e in queries.epochs(s, run_id)]


@pytest.mark.parametrize("point", POINTS)
def test_an_epoch_end_interrupted_at_any_point_resumes_to_one_epoch_history(sessions, tmp_path, monkeypatch, point):
    ds = _dataset(sessions, tmp_path)
    if "straight" not in _REFERENCE:  # the same config never interrupted (the split is by path)
        _REFERENCE["straight"] = _history(sessions, jobs.execute(_run(sessions, ds), progress=False,
                                                                 sessions=sessions).id)
    run_id = _run(sessions, ds)
    with monkeypatch.context() as m:
        _inject(m, point)
        with pytest.raises(Fault):
            jobs.execute(run_id, progress=False, sessions=sessions)
    assert _get(sessions, run_id).status == "failed"
    assert jobs.execute(run_id, resume=True, progress=False, sessions=sessions).status == "succeeded"

    out = run_dir(run_id)
    assert _history(sessions, run_id) == _REFERENCE["straight"]  # epochs 1, 2, 3 once, as uninterrupted
    last = torch.load(out / "last.pt", weights_only=True)
    assert [h["epoch"] for h in last["history"]] == [1, 2, 3]
    assert not list(out.glob("*.next.pt"))
    run = _get(sessions, run_id)
    best_pt = torch.load(out / "best.pt", weights_only=True)
    assert best_pt["epoch"] == run.best_epoch
    with sessions() as s:
        best = s.get(Epoch, (run_id, run.best_epoch))
        rows = s.query(Prediction).filter_by(run_id=run_id).all()
    assert run.best_threshold == best.val_best_threshold
    assert rows and {(p.epoch, p.checkpoint_sha1) for p in rows} == {(run.best_epoch, atomic.file_sha1(out / "best.pt"))}


@pytest.mark.parametrize("point", ["writing best.next.pt", "store", "renaming last.pt"])
def test_a_kill_at_an_epoch_end_resumes_to_one_epoch_history(sessions, tmp_path, point):
    from tests.conftest import ROOT

    ds = _dataset(sessions, tmp_path)
    if "straight" not in _REFERENCE:
        _REFERENCE["straight"] = _history(sessions, jobs.execute(_run(sessions, ds), progress=False,
                                                                 sessions=sessions).id)
    run_id = _run(sessions, ds)
    proc = subprocess.run([sys.executable, "-m", "tests.kill_writer", "epoch-end", point, str(run_id)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert _get(sessions, run_id).status == "running"  # as the kill left it
    with sessions.begin() as s:
        assert liveness.reap_stale(s) == [run_id]  # its process is gone
    assert jobs.execute(run_id, resume=True, progress=False, sessions=sessions).status == "succeeded"
    out = run_dir(run_id)
    assert _history(sessions, run_id) == _REFERENCE["straight"]
    assert [h["epoch"] for h in torch.load(out / "last.pt", weights_only=True)["history"]] == [1, 2, 3]
    assert not list(out.glob("*.next.pt"))
    run = _get(sessions, run_id)
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == run.best_epoch == 3
    with sessions() as s:
        rows = s.query(Prediction).filter_by(run_id=run_id).all()
    assert rows and {(p.epoch, p.checkpoint_sha1) for p in rows} == {(3, atomic.file_sha1(out / "best.pt"))}


def test_the_cuda_generator_is_saved_and_restored(tmp_path, monkeypatch):
    class OnCuda(torch.nn.Linear):  # a module whose parameters report a CUDA device
        def parameters(self, recurse=True):
            for p in super().parameters(recurse):
                yield type("P", (), {"device": torch.device("cuda", 0)})()

    saved, restored = torch.arange(8, dtype=torch.uint8), []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device=None: restored.append(state))
    model = OnCuda(2, 1)
    opt = torch.optim.AdamW(torch.nn.Linear(2, 1).parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=5)
    checkpoints.stage_checkpoints(tmp_path, model, opt, sched, CFG, tr.TrainResult(best=None, best_val_probs=np.zeros(1)),
                          1, 0, is_best=False)
    tr._restore(tmp_path / checkpoints.LAST_NEXT, model, opt, sched, tr.TrainResult(best=None), "best")
    assert len(restored) == 1 and torch.equal(restored[0], saved)


# ---------------------------------------------------------------- 16: smaller defects


def test_precise_bn_uses_a_seeded_random_sample_of_the_training_images(tmp_path, monkeypatch):
    paths = [f"train_data/{i:04d}.jpg" for i in range(100)]  # a CSV sorted by class: 0s first
    data = tr.TrainData(tmp_path, paths, [int(i >= 50) for i in range(100)], paths[:2], [0, 1])
    loaders = []

    def capture(root, p, labels, **kw):
        loaders.append((list(p), labels))
        if len(loaders) == 3:
            raise Fault("stop after the loaders")
        return [None]

    monkeypatch.setattr(tr, "make_loader", capture)
    with pytest.raises(Fault):
        tr.train(TrainConfig(batch_size=8, bn_batches=2, device="cpu", workers=0), data, tmp_path, progress=False)
    bn = loaders[2][0]
    assert len(bn) == 16 and set(bn) <= set(paths) and bn != paths[:16]
    assert sum(int(p[-8:-4]) >= 50 for p in bn) >= 3  # both classes, not the first 16 rows
    assert bn == tr.bn_sample(paths, 16, 0) and bn != tr.bn_sample(paths, 16, 1)


@pytest.mark.parametrize("present", [0, 1])
def test_with_one_class_in_validation_no_threshold_is_stored_and_the_run_says_why(sessions, tmp_path, present):
    val_y = np.full(6, present)
    probs = np.linspace(0.1, 0.9, 6)
    er = tr.epoch_result(1, 0.5, 0.5, val_y, probs, 1e-3, 10, 1.0, 0)
    assert np.isnan(er.val_best_threshold)
    ds = _dataset(sessions, tmp_path, 4)
    run_id = _run(sessions, ds, status="running")
    with sessions() as s:
        ids = [im.id for im in queries.images(s, ds)][:4]
    cb = recording.StoreCallbacks(sessions, run_id, ids, [present] * 4)
    cb.on_epoch(er, is_best=True, val_probs=probs[:4], checkpoint=tmp_path / "best.pt", checkpoint_sha1="ab" * 20)
    run = _get(sessions, run_id)
    missing = "AI-generated (label 1)" if present == 0 else "human-made (label 0)"
    assert run.best_threshold is None and f"validation has no {missing} image" in run.threshold_note
    with sessions() as s:
        assert s.get(Epoch, (run_id, 1)).val_best_threshold is None


def test_training_flags_are_checked_in_one_place(sessions, tmp_path, monkeypatch):
    assert TrainConfig().problems() == []
    assert TrainConfig(patience=0).problems() == [
        "patience must be at least 1 epoch (got 0): with 0, training would stop after its first epoch"]
    assert len(TrainConfig(epochs=0, batch_size=0, img_size=8, val_fraction=1.0).problems()) == 4
    with pytest.raises(ValueError, match="pretrained weights file not found: /no/such.pth"):
        TrainConfig(pretrained="/no/such.pth").validate()
    ds = _dataset(sessions, tmp_path, 8)
    run_id = _run(sessions, ds, TrainConfig(patience=0, img_size=32, workers=0))
    trained = []
    monkeypatch.setattr(jobs, "train", lambda *a, **k: trained.append(1))
    with pytest.raises(ValueError, match="patience must be at least 1"):
        jobs.execute(run_id, progress=False, sessions=sessions)
    assert not trained and "patience must be at least 1" in _get(sessions, run_id).error


def test_the_train_pages_resume_is_refused_in_one_line(sessions, tmp_path, monkeypatch, live_child):
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT

    ds = _dataset(sessions, tmp_path, 8)
    ddp = _run(sessions, ds, status="failed", error="killed", world_size=2)
    owned = _run(sessions, ds, status="failed", error="marked failed", **_owner(live_child))
    for run_id in (ddp, owned):
        (run_dir(run_id) / "last.pt").write_bytes(b"x")
    started = []
    monkeypatch.setattr(jobs.subprocess, "Popen", lambda *a, **k: started.append(a))
    expected = {ddp: "resume it with --nproc 2", owned: f"is already running (pid {live_child.pid}"}
    for run_id, why in expected.items():
        at = AppTest.from_file(str(ROOT / "dashboard" / "views" / "train.py"), default_timeout=60).run()
        at.selectbox[-2].set_value(run_id)  # "Resume a run that died"
        next(b for b in at.button if b.label == "Resume").click().run()
        assert not at.exception
        assert any(why in e.value for e in at.error), [e.value for e in at.error]
    assert not started
    assert [_get(sessions, i).status for i in (ddp, owned)] == ["failed", "failed"]


def test_two_processes_taking_one_run_only_one_wins_on_each_store(store_url, tmp_path):
    from db import runs as owners
    from db.store import session_factory

    sessions = session_factory(store_url)
    ds = _dataset(sessions, tmp_path, 2)
    run_id = _run(sessions, ds, status="failed", host="h", pid=7, pid_started=1.25)
    with sessions.begin() as s:  # both saw the dead owner (h, 7, 1.25)
        first = owners.take(s, run_id, ("h", 7, 1.25), ("h", 8, 2.5), status="running")
    with sessions.begin() as s:
        second = owners.take(s, run_id, ("h", 7, 1.25), ("h", 9, 3.5), status="running")
        assert not owners.set_if_owner(s, run_id, ("h", 9, 3.5), status="succeeded")
        assert owners.set_if_owner(s, run_id, ("h", 8, 2.5), heartbeat_at=processes.now())
    assert (first, second) == (True, False)
    run = _get(sessions, run_id)
    assert (run.status, run.pid, run.pid_started) == ("running", 8, 2.5)


def test_a_one_process_run_resumed_with_two_is_refused_before_any_process_starts(sessions, tmp_path, monkeypatch):
    import torch.multiprocessing as mp

    ds = _dataset(sessions, tmp_path, 8)
    run_id = _run(sessions, ds, status="failed", error="killed", world_size=1)
    (run_dir(run_id) / "last.pt").write_bytes(b"x")
    spawned = []
    monkeypatch.setattr(mp, "spawn", lambda *a, **k: spawned.append(a))
    with pytest.raises(ValueError, match="cannot resume with 2: resume it with one process \\(no --nproc\\)"):
        distributed.execute_distributed(run_id, 2, resume=True)
    assert not spawned
    assert (_get(sessions, run_id).status, _get(sessions, run_id).error) == ("failed", "killed")


def test_a_dead_fold_run_queued_again_by_its_audit_is_not_reaped_before_it_starts(sessions, tmp_path):
    """The audit re-queues a fold whose process died before its first epoch: it takes the run
    from the dead owner (compare and set) and leaves no owner, so a page or `aivh runs` reaping
    in between does not mark it failed (which stopped the audit)."""
    from engine import audit

    ds = _dataset(sessions, tmp_path, 2)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_id = _run(sessions, ds, status="running", host=socket.gethostname(), pid=dead.pid, pid_started=1.25,
                  error=None, cancel_requested=True)  # a fold the user had cancelled: resuming goes on
    assert audit._resumable(sessions, run_id) is False  # no last.pt: restarts
    run = _get(sessions, run_id)
    assert (run.status, run.host, run.pid, run.pid_started, run.error) == ("queued", None, None, None, None)
    assert not run.cancel_requested
    with sessions.begin() as s:
        assert liveness.reap_stale(s) == []
    assert _get(sessions, run_id).status == "queued"


def test_a_cancel_asked_while_queued_is_honoured_when_the_process_starts(sessions, tmp_path):
    """Cancel pressed in the seconds between Start and the process taking the run: the run ends
    cancelled without training (it used to clear the flag and train). Resuming a cancelled run
    still goes on."""
    from engine.probe import execute_probe

    ds = _dataset(sessions, tmp_path, 8)
    run_id = _run(sessions, ds, cancel_requested=True)
    run = jobs.execute(run_id, progress=False, sessions=sessions)
    assert run.status == "cancelled" and run.best_epoch is None
    with sessions() as s:
        assert queries.epochs(s, run_id) == []
    probe_cfg = TrainConfig(epochs=1, img_size=32, workers=0, device="cpu", probe=True,
                            arch="tf_efficientnet_lite0", pretrained="imagenet")
    probe_id = _run(sessions, ds, probe_cfg, kind="probe", cancel_requested=True)
    assert execute_probe(probe_id, sessions=sessions, progress=False).status == "cancelled"
