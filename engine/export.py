"""Kaggle submission: `id,label`, every test id once, in test.csv's order, int labels."""
from __future__ import annotations

import csv
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.models import Run
from engine import atomic


class ExportRefused(ValueError):
    """The submission would be incomplete or invalid; nothing was written."""


def default_threshold(run: Run) -> tuple[float, str]:
    """The reviewer's chosen threshold, else the best validation-F1 threshold, else 0.5."""
    if run.chosen_threshold is not None:
        return run.chosen_threshold, "chosen"
    if run.best_threshold is not None:
        return run.best_threshold, "best_val_f1"
    return 0.5, "default"


def submission_rows(s: Session, run: Run, threshold: float) -> list[tuple[str, int]]:
    tests = queries.images(s, run.dataset_id, "test", ok_only=False)  # csv order
    if not tests:
        raise ExportRefused(f"dataset of run {run.id} has no test images")
    probs = queries.predictions(s, run.id, [im.id for im in tests])
    missing = [im for im in tests if im.id not in probs]
    if missing:
        first = missing[0]
        why = " (unreadable at import)" if first.status != "ok" else ""
        raise ExportRefused(
            f"no prediction for {len(missing)} of {len(tests)} test images, e.g. {first.rel_path}{why}; "
            f"run `aivh predict --run {run.id} --split test`")
    return [(im.rel_path, int(probs[im.id] >= threshold)) for im in tests]


def write_submission(rows: list[tuple[str, int]], path: Path) -> None:
    """Through a temporary file in the same folder and a rename: never a half-written CSV."""
    atomic.write_csv(path, ["id", "label"], rows)


def validate_submission(path: Path, test_ids: list[str]) -> list[str]:
    """Problems Kaggle would reject the file for; empty when it is fine."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != ["id", "label"]:
        return [f"header must be id,label, not {','.join(rows[0]) if rows else '<empty>'}"]
    problems = []
    ids = [r[0] if r else "" for r in rows[1:]]
    if ids != test_ids:
        problems.append(f"ids differ from test.csv ({len(ids)} rows vs {len(test_ids)} test ids)")
    bad = [i + 2 for i, r in enumerate(rows[1:]) if len(r) != 2 or r[1] not in ("0", "1")]
    if bad:
        problems.append(f"label not an int 0/1 on line {bad[0]} ({len(bad)} lines)")
    return problems


def export_run(sessions: sessionmaker[Session], run_id: int, out: Path,
               threshold: float | None = None) -> dict:
    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
        source = "given"
        if threshold is None:
            threshold, source = default_threshold(run)
        if not 0.0 <= threshold <= 1.0:
            raise ExportRefused(f"threshold {threshold} is outside [0, 1]")
        rows = submission_rows(s, run, threshold)
        out = out.expanduser().resolve()
        write_submission(rows, out)
        rate = sum(label for _, label in rows) / len(rows)
        queries.add_export(s, run_id=run_id, threshold=threshold, path=str(out), rows=len(rows),
                           positive_rate=rate)
    return {"path": str(out), "rows": len(rows), "positive_rate": round(rate, 6),
            "threshold": threshold, "threshold_source": source}

