"""Many reviewers at once, and the dashboard reading while they write: nothing lost, never locked."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from sqlalchemy import func, select

from db import queries, store
from db.models import Dataset, Image, Label, Run
from tests.conftest import ROOT

WORKERS, IMAGES = 4, 500


def _store_with_images(url: str) -> tuple[list[int], int]:
    sessions = store.session_factory(url)
    with sessions.begin() as s:
        ds = Dataset(name="load", root="/nonexistent")
        s.add(ds)
        s.flush()
        s.execute(Image.__table__.insert(), [
            {"dataset_id": ds.id, "rel_path": f"train_data/{i:05d}.jpg", "split": "train", "csv_row": i,
             "status": "ok"} for i in range(IMAGES)])
        ids = list(s.scalars(select(Image.id).where(Image.dataset_id == ds.id).order_by(Image.id)))
        s.execute(Label.__table__.insert(), [{"image_id": i, "label": 0, "source": "import",
                                               "author": "import"} for i in ids])
        run = Run(dataset_id=ds.id, status="succeeded", config={})
        s.add(run)
        s.flush()
        queries.set_run_images(s, run.id, {"val": ids})
        queries.upsert_predictions(s, run.id, [(i, 0.5) for i in ids])
        return ids, run.id


def test_four_reviewers_relabelling_the_same_images_lose_nothing(store_url):
    ids, run_id = _store_with_images(store_url)
    start_at = time.time() + 3.0
    env = {**os.environ, "AIVH_DB_URL": store_url}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.relabel_worker", f"reviewer{w}", str(start_at),
                               *map(str, ids)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for w in range(WORKERS)]
    sessions = store.session_factory(store_url)
    seen, reads = [], 0
    while any(p.poll() is None for p in procs):  # the dashboard keeps reading meanwhile
        with sessions() as s:
            rows = queries.prediction_rows(s, queries.get_run(s, run_id), "val")
            assert len(rows) == IMAGES
            seen.append(s.scalar(select(func.count(Label.id)).where(Label.source == "review")))
        reads += 1
        time.sleep(0.01)
    errors = [p.communicate() for p in procs]
    for p, (_out, err) in zip(procs, errors):
        assert p.returncode == 0, err[-2000:]
        assert "locked" not in err
    with sessions() as s:
        rows = s.execute(select(Label.author, Label.image_id, Label.note).where(Label.source == "review")).all()
    assert len(rows) == WORKERS * IMAGES  # 2,000 writes, every one kept
    assert len(set(rows)) == WORKERS * IMAGES
    for w in range(WORKERS):
        assert sorted(i for a, i, _ in rows if a == f"reviewer{w}") == ids
    assert reads >= 3 and seen == sorted(seen)  # reads went on during the load and never went back
