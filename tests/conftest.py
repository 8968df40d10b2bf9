"""Shared fixtures: a fresh workspace per test, the bundled sample, drawn images."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from db import evaluation, labelling, store

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "engine" / "sample"


@pytest.fixture()
def workspace(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("AIVH_HOME", str(home))
    monkeypatch.delenv("AIVH_DB_URL", raising=False)
    store.get_engine.cache_clear()
    yield home
    store.get_engine.cache_clear()


@pytest.fixture()
def sessions(workspace):
    return store.session_factory()


PG_ENV = "AIVH_TEST_PG_URL"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, workspace, monkeypatch) -> str:
    """A fresh, empty store on each backend; set as AIVH_DB_URL so subprocesses use it too.

    PostgreSQL comes from AIVH_TEST_PG_URL (`.ci/run` installs and starts a server and sets it);
    without it these tests fail rather than skip, so a CI run cannot pass without PostgreSQL.
    """
    if request.param == "sqlite":
        workspace.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{workspace / 'aivh.db'}"
        monkeypatch.setenv("AIVH_DB_URL", url)
        yield url
        return
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    admin = os.environ.get(PG_ENV)
    if not admin:
        pytest.fail(f"{PG_ENV} is not set: run `bash .ci/postgres.sh` and export the URL it prints "
                    "(`bash .ci/run` does both)")
    name = f"aivh_t_{os.getpid()}_{abs(hash(request.node.nodeid)) % 10**8}"
    admin_engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with admin_engine.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(admin).set(database=name).render_as_string(hide_password=False)
    monkeypatch.setenv("AIVH_DB_URL", url)
    store.get_engine.cache_clear()
    yield url
    store.get_engine.cache_clear()
    with admin_engine.connect() as c:  # FORCE ends the test's own open connections
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin_engine.dispose()


def draw_jpeg(path: Path, seed: int, size: tuple[int, int] = (48, 40), fmt: str = "JPEG") -> None:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, fmt)


def write_kaggle(root: Path, train: list[tuple[str, object]], test: list[str]) -> Path:
    """train.csv with its unnamed index column and test.csv, exactly as Kaggle ships them."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "train.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["", "file_name", "label"])
        for i, (name, label) in enumerate(train):
            w.writerow([i, name, label])
    with open(root / "test.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id"])
        w.writerows([t] for t in test)
    return root


@pytest.fixture()
def tiny_dataset(tmp_path) -> Path:
    """A drawn Kaggle-layout folder: 8 train images (4 per class) and 3 test images."""
    root = tmp_path / "tiny"
    train = [(f"train_data/{i:032x}.jpg", i % 2) for i in range(8)]
    test = [f"test_data_v2/{100 + i:032x}.jpg" for i in range(3)]
    for i, (name, _) in enumerate(train):
        draw_jpeg(root / name, i)
    for i, name in enumerate(test):
        draw_jpeg(root / name, 100 + i)
    return write_kaggle(root, train, test)


def aivh(*args: str, env_home: Path, check: bool = True, timeout: float = 600,
         launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """The real command line, as a user runs it (launcher: e.g. torchrun's module and flags)."""
    env = {**os.environ, "AIVH_HOME": str(env_home)}
    if not env.get("AIVH_DB_URL", "").startswith("postgresql"):
        env.pop("AIVH_DB_URL", None)  # the workspace's own SQLite store
    proc = subprocess.run([sys.executable, *launcher, "-m", "engine.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"aivh {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def copy_sample(dst: Path) -> Path:
    shutil.copytree(SAMPLE, dst)
    return dst


def finished_run(sessions, *, name: str = "sample", seed: int = 0, source: Path = SAMPLE) -> int:
    """The bundled sample imported and a succeeded run recorded as training would record it:
    split, two epochs, best threshold, validation and test predictions (seeded scores that
    separate the classes imperfectly). For dashboard tests, which need no real training."""
    from db import labelling, queries
    from db.models import Epoch, Run
    from engine.config import TrainConfig
    from engine.ingest import import_dataset
    from engine.splits import split_images

    import_dataset(sessions, source, name, progress=False)
    rng = np.random.default_rng(seed)
    with sessions.begin() as s:
        ds = queries.get_dataset(s, name)
        ims = {im.id: im for im in queries.images(s, ds.id)}
        labels = {i: v for i, v in labelling.current_labels(s, ds.id).items() if i in ims}
        train_ids, val_ids = split_images({i: ims[i].rel_path for i in labels}, labels,
                                          val_fraction=0.2, seed=0)
        run = Run(dataset_id=ds.id, status="succeeded", config=TrainConfig(epochs=2, img_size=32).to_dict(),
                  labels_as_of=labelling.newest_label_id(s, ds.id), checkpoint="/nonexistent/best.pt",
                  best_epoch=2, best_threshold=0.5)
        s.add(run)
        s.flush()
        queries.set_run_images(s, run.id, {"train": train_ids, "val": val_ids})
        for e in (1, 2):
            s.add(Epoch(run_id=run.id, epoch=e, train_loss=0.7 - 0.1 * e, val_loss=0.7 - 0.05 * e,
                        val_f1=0.6 + 0.05 * e, val_best_f1=0.65 + 0.05 * e, val_best_threshold=0.5,
                        val_auc=0.7 + 0.05 * e, lr=1e-3, images_per_s=30.0, seconds=10.0))
        scored = [(i, float(np.clip(rng.normal(0.3 + 0.4 * labels[i], 0.2), 0.001, 0.999)))
                  for i in val_ids]
        scored += [(i, float(rng.uniform())) for i, im in ims.items() if im.split == "test"]
        from db.predictions import upsert

        upsert(s, run.id, scored, epoch=2, checkpoint_sha1="0" * 40)  # made by best.pt of epoch 2
        return run.id


def finished_audit(sessions, *, flips: int = 15, folds: int = 2, seed: int = 0) -> tuple[int, set[int]]:
    """The bundled sample with `flips` labels flipped by a review, and a 2-fold audit whose fold runs
    'predicted' their held-out images as a decent model would (seeded, from the true labels).
    Returns (audit id, flipped image ids). No training: for ranking, queue and page tests."""
    from db import queries
    from engine import audit as au
    from engine.config import TrainConfig
    from engine.ingest import import_dataset

    import_dataset(sessions, SAMPLE, "sample", progress=False)
    rng = np.random.default_rng(seed)
    with sessions.begin() as s:
        ds = queries.get_dataset(s, "sample")
        truth = labelling.current_labels(s, ds.id)
        flipped = {int(i) for i in rng.choice(sorted(truth), flips, replace=False)}
        for i in flipped:
            labelling.relabel(s, i, 1 - truth[i], author="import-noise")
        audit = au.create_audit(s, ds, TrainConfig(epochs=1, img_size=32), folds)
        for run in evaluation.audit_runs(s, audit.id):
            held = queries.run_image_ids(s, run.id, "val")
            probs = np.clip(rng.normal(0.2 + 0.6 * np.array([truth[i] for i in held]), 0.12), 0.01, 0.99)
            queries.upsert_predictions(s, run.id, zip(held, probs))
            run.status = "succeeded"
        audit_id = audit.id
    au.run_audit(sessions, audit_id, progress=False)  # every fold succeeded: only scores
    return audit_id, flipped


def predict_every_image(sessions, dataset: str) -> tuple[int, int, list[int]]:
    """A succeeded run recorded with a prediction (0.5) for every image of the dataset, as if made
    from the files' content at import: (run id, dataset id, image ids)."""
    from db import queries
    from db.models import Run

    with sessions.begin() as s:
        ds_id = queries.get_dataset(s, dataset).id
        run = Run(dataset_id=ds_id, status="succeeded", config={})
        s.add(run)
        s.flush()
        ids = [im.id for im in queries.images(s, ds_id)]
        queries.upsert_predictions(s, run.id, [(i, 0.5) for i in ids], epoch=1, checkpoint_sha1="c" * 40)
        return run.id, ds_id, ids
