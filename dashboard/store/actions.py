"""What pages do: the only writes (relabel, undo, threshold, freeze, start, retrain, resume, cancel, export) and saliency."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from dashboard.store.sessions import sessions_for, write
from db import evaluation, labelling, queries
from db.models import Dataset, EvalSetImage
from db.store import db_url, home, run_dir  # noqa: F401 - home, run_dir: the folders pages show


def relabel(image_id: int, label: int, *, author: str, note: str | None = None) -> None:
    with write() as s:
        labelling.relabel(s, image_id, label, author=author, note=note)


def undo(image_id: int, *, author: str) -> None:
    """Undo the author's newest review of the image; UndoRefused when it cannot."""
    with write() as s:
        labelling.undo_last_review(s, image_id, author=author)


def save_threshold(run_id: int, threshold: float) -> None:
    with write() as s:
        queries.set_chosen_threshold(s, run_id, float(threshold))


def freeze_validation(run_id: int, name: str, *, author: str | None = None) -> int:
    """Freeze the run's validation images as an evaluation set; how many. ValueError: name taken."""
    with write() as s:
        es = evaluation.freeze_validation(s, run_id, name, author=author)
        return s.scalar(select(func.count()).where(EvalSetImage.eval_set_id == es.id))


def _reap() -> None:
    from engine.liveness import reap_stale

    with write() as s:
        reap_stale(s)


def _start(create) -> int:
    """Create a queued run (create(session, jobs) -> Run) and start its process; its id."""
    from engine import jobs

    _reap()
    with write() as s:
        run_id = create(s, jobs).id
    jobs.launch(run_id, sessions=sessions_for(db_url()))
    return run_id


def weights_problems(cfg) -> list[str]:
    """Why the config's starting weights cannot be had (engine.weights.unavailable), as a list."""
    from engine.weights import unavailable

    problem = unavailable(cfg.arch, cfg.pretrained)
    return [problem] if problem else []


def start_run(dataset_id: int, cfg) -> int:
    """A run on the dataset with `cfg` (the caller checked cfg.problems()), started; its id."""
    return _start(lambda s, jobs: jobs.create_run(s, s.get(Dataset, dataset_id), cfg))


def start_probe(dataset_id: int, cfg) -> int:
    """A linear-probe run (engine.probe) on the dataset with `cfg`, started; its id."""
    from engine.probe import create_probe

    return _start(lambda s, jobs: create_probe(s, s.get(Dataset, dataset_id), cfg))


def retrain(like_id: int) -> int:
    """A new run with `like_id`'s config on the current labels, started; its id. ValueError
    (nothing recorded) when its starting weights cannot be had."""
    def create(s, jobs):
        from engine.config import TrainConfig

        run = jobs.create_like_run(s, like_id)
        problems = weights_problems(TrainConfig.from_dict(run.config))
        if problems:
            raise ValueError(problems[0])
        return run

    return _start(create)


def resume(run_id: int) -> None:
    """Resume a run that died; ValueError or FileNotFoundError (nothing started) when refused."""
    from engine import jobs

    _reap()
    jobs.launch(run_id, resume=True, sessions=sessions_for(db_url()))


def cancel(run_id: int) -> None:
    """Ask the run to stop after its current batch (and mark runs whose owner died as failed)."""
    from engine import jobs

    _reap()
    with write() as s:
        jobs.request_cancel(s, run_id)


def export(run_id: int, out: Path, threshold: float, *, allow_stale: bool) -> dict:
    """engine.export.export_run: write and record the submission; ExportRefused when refused."""
    from engine.export import export_run

    return export_run(sessions_for(db_url()), run_id, out, threshold, allow_stale=allow_stale)


def explain(run_id: int, rel_path: str, settings, model):
    """engine.run_saliency.explain_run_image for a run's image (the map and the model's output)."""
    from engine.run_saliency import explain_run_image

    return explain_run_image(sessions_for(db_url()), run_id, rel_path, settings, model=model)
