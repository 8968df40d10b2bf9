"""Dashboard server time on a generated store of 100,000 images with a run's predictions.

    python benchmarks/dashboard_speed.py [--n 100000] [--json]

Builds a fresh store in a temporary AIVH_HOME (images are small real JPEG files, so the
Review grid makes real thumbnails) with two finished runs (the second retrained like the
first, both predicted on every image, so the Runs page compares them), then times, with
streamlit's AppTest (server-side script time, no browser; modules a server imports once are
imported before the clock), each page's first render and the
reruns that its widgets cause: a threshold change on Evaluate, Review and Export, a page turn
on Review, a change of the compared runs on Runs, the watched run on Train.
Targets: first render < 1 s per page, every widget rerun < 0.3 s.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_store(home: Path, n: int) -> int:
    from sqlalchemy import insert

    from db import queries
    from db.models import Dataset, Label, Run
    from db.models import Image as ImageRow
    from db.store import session_factory
    from engine.config import TrainConfig
    from engine.splits import split_images

    root = home / "data"
    (root / "train_data").mkdir(parents=True)
    (root / "test_data_v2").mkdir()
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    n_test = n // 10
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, n - n_test)
    rows = []
    for i in range(n):
        rel = f"{'train_data' if i < n - n_test else 'test_data_v2'}/{i:032x}.jpg"
        (root / rel).write_bytes(jpeg)
        rows.append({"dataset_id": 1, "rel_path": rel, "split": "train" if i < n - n_test else "test",
                     "csv_row": i if i < n - n_test else i - (n - n_test), "width": 64, "height": 64,
                     "bytes": len(jpeg), "sha1": f"{i:040x}", "status": "ok"})
    sessions = session_factory()
    with sessions.begin() as s:
        s.add(Dataset(id=1, name="generated", root=str(root)))
        s.flush()
        s.execute(insert(ImageRow), rows)
        s.execute(insert(Label), [{"image_id": i + 1, "label": int(lb), "source": "import", "author": "import"}
                                  for i, lb in enumerate(labels)])
        keys = {i + 1: rows[i]["rel_path"] for i in range(n - n_test)}
        strata = {i + 1: int(labels[i]) for i in range(n - n_test)}
        train_ids, val_ids = split_images(keys, strata, val_fraction=0.1, seed=0)
        run = Run(dataset_id=1, status="succeeded", config=TrainConfig().to_dict(), checkpoint="/none",
                  labels_as_of=n - n_test, best_epoch=1, best_threshold=0.5)
        s.add(run)
        s.flush()
        queries.set_run_images(s, run.id, {"train": train_ids, "val": val_ids})
        truth = np.r_[labels, rng.integers(0, 2, n_test)]
        probs = np.clip(rng.normal(0.3 + 0.4 * truth, 0.2), 0.001, 0.999)
        queries.upsert_predictions(s, run.id, [(i + 1, float(p)) for i, p in enumerate(probs)])
        like = Run(dataset_id=1, status="succeeded", config=TrainConfig().to_dict(), checkpoint="/none",
                   labels_as_of=n - n_test, best_epoch=1, best_threshold=0.5, like_run_id=run.id)
        s.add(like)
        s.flush()
        queries.set_run_images(s, like.id, {"train": train_ids, "val": val_ids})
        probs = np.clip(rng.normal(0.25 + 0.5 * truth, 0.2), 0.001, 0.999)
        queries.upsert_predictions(s, like.id, [(i + 1, float(p)) for i, p in enumerate(probs)])
        return run.id


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["AIVH_HOME"] = tmp
        os.environ.pop("AIVH_DB_URL", None)
        build_s, run_id = timed(lambda: build_store(Path(tmp), args.n))
        # modules a running server has imported once for all sessions: not a page's own time
        import plotly.express
        import plotly.graph_objects  # noqa: F401
        import streamlit as st

        # A server scans the installed packages for components once, at startup
        # (streamlit/runtime/runtime.py); AppTest does it on every new AppTest's first run (0.3 s
        # here): done once before the clock and handed to each AppTest, reported apart.
        from streamlit.components.v2.component_manager import BidiComponentManager
        from streamlit.testing.v1 import AppTest

        import engine.compare  # noqa: F401

        components_s, components = timed(BidiComponentManager)
        scan_s, _ = timed(lambda: components.discover_and_register_components(start_file_watching=False))

        def page(name: str) -> AppTest:
            at = AppTest.from_file(str(ROOT / "dashboard" / "views" / f"{name}.py"), default_timeout=120)
            at._bidi_component_manager = components  # private in streamlit 1.5x-1.6x; see above
            return at

        results = {"images": args.n, "build_store_s": round(build_s, 1),
                   "apptest_component_scan_s": round(components_s + scan_s, 3)}
        for name in ("runs", "train", "evaluate", "review", "export", "shift", "duplicates", "embedding_map", "sweep"):
            at = page(name)
            at.query_params["run"] = str(run_id)
            st.cache_data.clear()  # each page's first render pays for its own loading
            seconds, at = timed(at.run)
            assert not at.exception, at.exception
            results[f"{name}_first_render_s"] = round(seconds, 3)

        def reruns(name: str, changes) -> None:
            """Median and max seconds of the reruns caused by widget changes after a first render."""
            at = page(name)
            at.query_params["run"] = str(run_id)
            at.run()
            took = []
            for change in changes:
                seconds, _ = timed(lambda change=change: change(at).run())
                assert not at.exception, (name, at.exception)
                took.append(seconds)
            results[f"{name}_rerun_s_median"] = round(float(np.median(took)), 3)
            results[f"{name}_rerun_s_max"] = round(max(took), 3)

        def by_label(widgets, label):
            return next(w for w in widgets if w.label.startswith(label))

        reruns("evaluate", [lambda at, v=v: at.slider[0].set_value(v) for v in (0.3, 0.62, 0.8, 0.45, 0.5)])
        reruns("review", [lambda at, v=v: by_label(at.number_input, "Threshold").set_value(v)
                          for v in (0.3, 0.62, 0.8)]
               + [lambda at, v=v: by_label(at.number_input, "Page").set_value(v) for v in (2, 3)])
        reruns("export", [lambda at, v=v: by_label(at.number_input, "Threshold").set_value(v)
                          for v in (0.3, 0.62, 0.8, 0.45, 0.5)])
        reruns("runs", [lambda at, v=v: at.multiselect[0].set_value(v)
                        for v in ([run_id], [run_id, run_id + 1], [run_id + 1], [run_id + 1, run_id])])
        reruns("train", [lambda at, v=v: by_label(at.selectbox, "Watch run").set_value(v)
                         for v in (run_id, run_id + 1, run_id)])
        results["threshold_change_s_median"] = results["evaluate_rerun_s_median"]
        results["threshold_change_s_max"] = results["evaluate_rerun_s_max"]
        thumbs = list((Path(tmp) / "cache" / "thumbs").glob("*.jpg"))
        results["thumbnails_made"] = len(thumbs)
    if args.json:
        print(json.dumps(results))
    else:
        for k, v in results.items():
            print(f"{k:32s} {v}")


if __name__ == "__main__":
    main()
