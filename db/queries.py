"""Query functions. Each takes a session first; callers own the transaction."""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC

from sqlalchemy import case, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from db.models import (
    Audit,
    AuditScore,
    Dataset,
    Epoch,
    EvalSet,
    EvalSetImage,
    Export,
    Image,
    Label,
    Prediction,
    Run,
    RunImage,
)


class NotFound(LookupError):
    """A dataset, run or image the user named is not in the store."""


def get_dataset(s: Session, name: str) -> Dataset:
    ds = s.scalar(select(Dataset).where(Dataset.name == name))
    if ds is None:
        known = ", ".join(s.scalars(select(Dataset.name))) or "none"
        raise NotFound(f"no dataset named {name!r} (known: {known}); run `aivh import DATA_DIR`")
    return ds


def list_datasets(s: Session) -> list[Dataset]:
    return list(s.scalars(select(Dataset).order_by(Dataset.id)))


def get_run(s: Session, run_id: int) -> Run:
    run = s.get(Run, run_id)
    if run is None:
        raise NotFound(f"no run {run_id}; `aivh runs` lists them")
    return run


def list_runs(s: Session, dataset_id: int | None = None) -> list[Run]:
    q = select(Run).order_by(Run.id)
    if dataset_id is not None:
        q = q.where(Run.dataset_id == dataset_id)
    return list(s.scalars(q))


def image_stamps(s: Session, dataset_id: int) -> dict[str, tuple[int | None, int | None]]:
    """rel_path -> (bytes, mtime_ns) of the readable images as import recorded them: what a
    loader compares with the file on disk (engine.data.check_unchanged) to notice a replaced file."""
    q = select(Image.rel_path, Image.bytes, Image.mtime_ns).where(Image.dataset_id == dataset_id,
                                                                 Image.status == "ok")
    return {path: (size, mtime) for path, size, mtime in s.execute(q)}


def image_sha1s(s: Session, dataset_id: int) -> dict[str, str | None]:
    q = select(Image.rel_path, Image.sha1).where(Image.dataset_id == dataset_id)
    return {path: sha1 for path, sha1 in s.execute(q)}


def duplicate_groups(s: Session, dataset_id: int) -> list[tuple[str, list[tuple[int, str, str]]]]:
    """Byte-identical readable images: (sha1, [(image id, rel_path, split), ...]) per sha1 held by
    more than one image, in sha1 order, members in id order."""
    shared = (select(Image.sha1).where(Image.dataset_id == dataset_id, Image.status == "ok",
                                       Image.sha1.is_not(None))
              .group_by(Image.sha1).having(func.count(Image.id) > 1).subquery())
    q = (select(Image.sha1, Image.id, Image.rel_path, Image.split)
         .where(Image.dataset_id == dataset_id, Image.status == "ok", Image.sha1.in_(select(shared.c.sha1)))
         .order_by(Image.sha1, Image.id))
    groups: dict[str, list[tuple[int, str, str]]] = {}
    for sha1, i, path, split in s.execute(q):
        groups.setdefault(sha1, []).append((i, path, split))
    return list(groups.items())


def content_keys(s: Session, dataset_id: int, split: str | None = "train") -> dict[int, str]:
    """image id -> sha1 of its bytes (its path when no sha1 was recorded): byte-identical copies
    share a key, so a split or fold that groups by it keeps every copy on one side."""
    q = select(Image.id, Image.sha1, Image.rel_path).where(Image.dataset_id == dataset_id,
                                                           Image.status == "ok")
    if split is not None:
        q = q.where(Image.split == split)
    return {i: sha1 or f"path:{path}" for i, sha1, path in s.execute(q)}


def existing_paths(s: Session, dataset_id: int) -> dict[str, tuple[int, str]]:
    """rel_path -> (image id, status), without loading ORM objects (80k rows stay fast)."""
    q = select(Image.rel_path, Image.id, Image.status).where(Image.dataset_id == dataset_id)
    return {path: (i, status) for path, i, status in s.execute(q)}


def _label_rows(dataset_id: int, pick=func.max, as_of: int | None = None):
    """Subquery (image_id, lid): per image, the newest (max) or first (min) label row id."""
    q = (select(Label.image_id, pick(Label.id).label("lid")).join(Image, Image.id == Label.image_id)
         .where(Image.dataset_id == dataset_id))
    if as_of is not None:
        q = q.where(Label.id <= as_of)
    return q.group_by(Label.image_id).subquery()


# Label sources: "import" (the CSV's label), "review" (a reviewer's relabel), "undo" (restores
# the label before an undone review; its note names it) and "unlabel" (undoes an image's first
# review when it had no label before, a test image: its label column repeats the undone one
# and means nothing; the image has no current label).
UNDO_SOURCES = ("undo", "unlabel")


def _labels_by(s: Session, rows) -> dict[int, int]:
    found = s.execute(select(Label.image_id, Label.label).join(rows, Label.id == rows.c.lid)
                      .where(Label.source != "unlabel"))
    return {image_id: label for image_id, label in found}


def current_labels(s: Session, dataset_id: int, *, as_of: int | None = None) -> dict[int, int]:
    """image_id -> label, from the newest label row (at or before label id `as_of`)."""
    return _labels_by(s, _label_rows(dataset_id, func.max, as_of))


def import_labels(s: Session, dataset_id: int) -> dict[int, int]:
    """image_id -> label as first imported: immutable, so it can stratify a split."""
    return _labels_by(s, _label_rows(dataset_id, func.min))


def newest_label_id(s: Session, dataset_id: int) -> int | None:
    q = select(func.max(Label.id)).join(Image, Image.id == Label.image_id)
    return s.scalar(q.where(Image.dataset_id == dataset_id))


def images(s: Session, dataset_id: int, split: str | None = None, *, ok_only: bool = True) -> list[Image]:
    q = select(Image).where(Image.dataset_id == dataset_id)
    if split is not None:
        q = q.where(Image.split == split)
    if ok_only:
        q = q.where(Image.status == "ok")
    return list(s.scalars(q.order_by(Image.split, Image.csv_row)))


def image_paths(s: Session, dataset_id: int, split: str | None = None) -> list[tuple[int, str]]:
    """(id, rel_path) of the readable images, in images()'s order: no ORM object per image."""
    q = select(Image.id, Image.rel_path).where(Image.dataset_id == dataset_id, Image.status == "ok")
    if split is not None:
        q = q.where(Image.split == split)
    return [(i, p) for i, p in s.execute(q.order_by(Image.split, Image.csv_row))]


def count_images(s: Session, dataset_id: int, split: str) -> int:
    q = select(func.count(Image.id)).where(Image.dataset_id == dataset_id, Image.split == split,
                                           Image.status == "ok")
    return s.scalar(q) or 0


def run_image_ids(s: Session, run_id: int, role: str | None = None) -> list[int]:
    q = select(RunImage.image_id).where(RunImage.run_id == run_id)
    if role is not None:
        q = q.where(RunImage.role == role)
    return list(s.scalars(q.order_by(RunImage.image_id)))


def set_run_images(s: Session, run_id: int, roles: dict[str, Sequence[int]]) -> None:
    s.execute(delete(RunImage).where(RunImage.run_id == run_id))
    rows = [{"run_id": run_id, "image_id": i, "role": r} for r, ids in roles.items() for i in ids]
    if rows:
        s.execute(RunImage.__table__.insert(), rows)


def upsert_predictions(s: Session, run_id: int, pairs: Iterable[tuple[int, float]]) -> int:
    rows = [{"run_id": run_id, "image_id": i, "prob": float(p)} for i, p in pairs]
    if not rows:
        return 0
    insert = pg_insert if s.bind.dialect.name == "postgresql" else sqlite_insert
    stmt = insert(Prediction.__table__)
    stmt = stmt.on_conflict_do_update(
        index_elements=["run_id", "image_id"], set_={"prob": stmt.excluded.prob}
    )
    s.execute(stmt, rows)
    return len(rows)


def predictions(s: Session, run_id: int, image_ids: Sequence[int] | None = None) -> dict[int, float]:
    q = select(Prediction.image_id, Prediction.prob).where(Prediction.run_id == run_id)
    found = {i: p for i, p in s.execute(q)}
    if image_ids is None:
        return found
    return {i: found[i] for i in image_ids if i in found}


def epochs(s: Session, run_id: int) -> list[Epoch]:
    return list(s.scalars(select(Epoch).where(Epoch.run_id == run_id).order_by(Epoch.epoch)))


def best_epoch(s: Session, run: Run) -> Epoch | None:
    """The epoch row of the run's kept checkpoint (None before its first epoch)."""
    if run.best_epoch is None:
        return None
    return s.scalar(select(Epoch).where(Epoch.run_id == run.id, Epoch.epoch == run.best_epoch))


def add_export(s: Session, **values) -> Export:
    export = Export(**values)
    s.add(export)
    s.flush()
    return export


def _lock_image(s: Session, image_id: int) -> None:
    """Serialise label writes per image (PostgreSQL: row lock until commit; SQLite writes are
    serialised anyway), so an undo never reads a history that a relabel is changing."""
    if s.execute(select(Image.id).where(Image.id == image_id).with_for_update()).first() is None:
        raise NotFound(f"no image {image_id}")


def relabel(s: Session, image_id: int, label: int, *, author: str, note: str | None = None) -> Label:
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, not {label!r}")
    _lock_image(s, image_id)
    row = Label(image_id=image_id, label=label, source="review", author=author, note=note)
    s.add(row)
    s.flush()
    return row


# ---------------------------------------------------------------- review and evaluation


def _newest_labels(dataset_id: int):
    """(newest label row per image, reviews still in force per image: reviews minus undos)."""
    newest = _label_rows(dataset_id, func.max)
    counted = case((Label.source == "review", 1), (Label.source.in_(UNDO_SOURCES), -1), else_=0)
    reviews = (select(Label.image_id, func.sum(counted).label("n"))
               .join(Image, Image.id == Label.image_id)
               .where(Image.dataset_id == dataset_id, Label.source.in_(("review", *UNDO_SOURCES)))
               .group_by(Label.image_id).subquery())
    return newest, reviews


def _current(newest):
    """Join condition for the current label row (none when an undo left the image unlabelled)."""
    return (Label.id == newest.c.lid) & (Label.source != "unlabel")


def prediction_rows(s: Session, run: Run, split: str) -> list[tuple]:
    """(image_id, rel_path, prob, label or None, reviews) for a run's predictions on a split.

    split: "val" / "train" (the run's own roles) or "test".
    """
    newest, reviews = _newest_labels(run.dataset_id)
    q = (select(Image.id, Image.rel_path, Prediction.prob, Label.label,
                func.coalesce(reviews.c.n, 0))
         .join(Prediction, (Prediction.image_id == Image.id) & (Prediction.run_id == run.id))
         .outerjoin(newest, newest.c.image_id == Image.id)
         .outerjoin(Label, _current(newest))
         .outerjoin(reviews, reviews.c.image_id == Image.id))
    if split in ("val", "train"):
        q = q.join(RunImage, (RunImage.image_id == Image.id) & (RunImage.run_id == run.id)
                   & (RunImage.role == split))
    else:
        q = q.where(Image.split == split)
    return [tuple(r) for r in s.execute(q.order_by(Image.id))]


def label_history(s: Session, image_id: int) -> list[Label]:
    return list(s.scalars(select(Label).where(Label.image_id == image_id).order_by(Label.id)))


class UndoRefused(ValueError):
    """An undo that would not restore what the reviewer expects; the message is one line."""


_LABEL_WORDS = {0: "human-made", 1: "AI-generated"}


def _stamp(when) -> str:
    """A label row's time in UTC (SQLite hands back naive UTC, PostgreSQL the session's zone)."""
    if when is None:
        return "an unknown time"
    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def undo_last_review(s: Session, image_id: int, *, author: str) -> Label:
    """Undo `author`'s newest review of the image that is still in force: append a row that
    restores the label the image had just before it (an "unlabel" row when it had none, as a
    test image before its first review). History stays whole; undo rows name what they undo,
    so a second undo goes one review further back, never forward.

    Raises UndoRefused when the author has no review left to undo, or when someone else has
    relabelled the image since (naming who and when): undoing then would silently revert their
    change.
    """
    _lock_image(s, image_id)
    history = label_history(s, image_id)
    undone = {int(m.group(1)) for h in history if h.source in UNDO_SOURCES
              and (m := re.match(r"undo of #(\d+)", h.note or ""))}
    in_force = [h for h in history if h.source == "review" and h.id not in undone]
    mine = [h for h in in_force if h.author == author]
    if not mine:
        raise UndoRefused(f"nothing to undo: {author} has no review of image {image_id} left to undo")
    last = mine[-1]
    others = [h for h in in_force if h.id > last.id and h.author != author]
    if others:
        o = others[-1]
        raise UndoRefused(
            f"cannot undo {author}'s review #{last.id} of image {image_id}: {o.author or 'someone'} "
            f"relabelled it {_LABEL_WORDS.get(o.label, o.label)} at {_stamp(o.created_at)} since; "
            f"ask them to undo theirs, or relabel it directly")
    before = [h for h in history if h.id < last.id]
    if before and before[-1].source != "unlabel":
        row = Label(image_id=image_id, label=before[-1].label, source="undo", author=author,
                    note=f"undo of #{last.id}")
    else:  # the image had no label before this review
        row = Label(image_id=image_id, label=last.label, source="unlabel", author=author,
                    note=f"undo of #{last.id} (no label before it)")
    s.add(row)
    s.flush()
    return row


def exports(s: Session) -> list[Export]:
    return list(s.scalars(select(Export).order_by(Export.id.desc())))


def label_version(s: Session) -> int:
    """Changes whenever any label is added: a cache key for label-dependent views."""
    return s.scalar(select(func.max(Label.id))) or 0


def get_image(s: Session, image_id: int) -> Image:
    im = s.get(Image, image_id)
    if im is None:
        raise NotFound(f"no image {image_id}")
    return im


def epochs_for_runs(s: Session, run_ids: Sequence[int]) -> list[Epoch]:
    q = select(Epoch).where(Epoch.run_id.in_(list(run_ids))).order_by(Epoch.run_id, Epoch.epoch)
    return list(s.scalars(q))


def dataset_counts(s: Session) -> list[tuple[str, str, int, int, int]]:
    """(name, root, train images, test images, runs) per dataset."""
    out = []
    for ds in list_datasets(s):
        runs = s.scalar(select(func.count(Run.id)).where(Run.dataset_id == ds.id)) or 0
        out.append((ds.name, ds.root, count_images(s, ds.id, "train"), count_images(s, ds.id, "test"), runs))
    return out


def set_chosen_threshold(s: Session, run_id: int, threshold: float | None) -> None:
    get_run(s, run_id).chosen_threshold = threshold


def image_by_path(s: Session, dataset_id: int, rel_path: str) -> Image | None:
    return s.scalar(select(Image).where(Image.dataset_id == dataset_id, Image.rel_path == rel_path))


# ---------------------------------------------------------------- audits, comparisons, history


def get_audit(s: Session, audit_id: int) -> Audit:
    audit = s.get(Audit, audit_id)
    if audit is None:
        raise NotFound(f"no audit {audit_id}; `aivh audit --list` lists them")
    return audit


def list_audits(s: Session, dataset_id: int | None = None) -> list[Audit]:
    q = select(Audit).order_by(Audit.id.desc())
    if dataset_id is not None:
        q = q.where(Audit.dataset_id == dataset_id)
    return list(s.scalars(q))


def audit_runs(s: Session, audit_id: int) -> list[Run]:
    return list(s.scalars(select(Run).where(Run.audit_id == audit_id).order_by(Run.fold)))


def audit_rows(s: Session, audit_id: int, *, flagged_only: bool = False, limit: int | None = None):
    """Worst first: rank, image_id, rel_path, given_label, prob, quality, flagged, current label, reviews."""
    audit = get_audit(s, audit_id)
    newest, reviews = _newest_labels(audit.dataset_id)
    q = (select(AuditScore.rank, AuditScore.image_id, Image.rel_path, AuditScore.given_label,
                AuditScore.prob, AuditScore.quality, AuditScore.flagged, Label.label.label("current"),
                func.coalesce(reviews.c.n, 0).label("reviews"))
         .join(Image, Image.id == AuditScore.image_id)
         .outerjoin(newest, newest.c.image_id == Image.id)
         .outerjoin(Label, _current(newest))
         .outerjoin(reviews, reviews.c.image_id == Image.id)
         .where(AuditScore.audit_id == audit_id))
    if flagged_only:
        q = q.where(AuditScore.flagged.is_(True))
    q = q.order_by(AuditScore.rank)
    if limit is not None:
        q = q.limit(limit)
    return list(s.execute(q))


def label_states(s: Session, dataset_id: int, states: Sequence[int | None]) -> dict[int, list[int | None]]:
    """The label of each image relabelled since the oldest of `states` (label ids; None: now),
    at each state (None: no label then). Label rows are only ever added, so an image with no row
    after the oldest state has the same label in all of them and is left out: a relabel or two
    since a run trained costs a few rows, not the whole dataset once per state."""
    fixed = [st for st in states if st is not None]
    if not fixed:  # now, only: one state, nothing to tell apart
        return {}
    lo, hi = min(fixed), (None if None in states else max(fixed))
    touched = (select(Label.image_id).join(Image, Image.id == Label.image_id)
               .where(Image.dataset_id == dataset_id, Label.id > lo))
    if hi is not None:
        touched = touched.where(Label.id <= hi)
    rows = select(Label.image_id, Label.id, Label.label, Label.source).where(
        Label.image_id.in_(touched.distinct()))
    if hi is not None:
        rows = rows.where(Label.id <= hi)
    out: dict[int, list[int | None]] = {}
    for image_id, label_id, label, source in s.execute(rows.order_by(Label.id)):
        now = None if source == "unlabel" else label
        at = out.setdefault(image_id, [None] * len(states))
        for k, st in enumerate(states):
            if st is None or label_id <= st:
                at[k] = now
    return out


def labels_changed(s: Session, dataset_id: int, before: int | None, after: int | None) -> list[int]:
    """Images labelled in both label states (newest label ids) whose label differs between them."""
    if not before or not after:  # a state with no label at all: no image is labelled in both
        return []
    both = label_states(s, dataset_id, [before, after])
    return sorted(i for i, (a, b) in both.items() if a is not None and b is not None and a != b)


def create_eval_set(s: Session, dataset_id: int, name: str, image_ids: Sequence[int], *,
                    author: str | None = None) -> EvalSet:
    if s.scalar(select(EvalSet).where(EvalSet.dataset_id == dataset_id, EvalSet.name == name)):
        raise ValueError(f"an evaluation set named {name!r} already exists")
    if not image_ids:
        raise ValueError("an evaluation set needs at least one image")
    es = EvalSet(dataset_id=dataset_id, name=name, author=author)
    s.add(es)
    s.flush()
    s.execute(EvalSetImage.__table__.insert(),
              [{"eval_set_id": es.id, "image_id": i} for i in sorted(set(image_ids))])
    return es


def freeze_validation(s: Session, run_id: int, name: str, *, author: str | None = None) -> EvalSet:
    """A run's validation images, frozen as an evaluation set named `name` (for fair comparisons)."""
    run = get_run(s, run_id)
    return create_eval_set(s, run.dataset_id, name, run_image_ids(s, run.id, "val"), author=author)


def get_eval_set(s: Session, dataset_id: int, name: str) -> EvalSet:
    es = s.scalar(select(EvalSet).where(EvalSet.dataset_id == dataset_id, EvalSet.name == name))
    if es is None:
        known = ", ".join(e.name for e in list_eval_sets(s, dataset_id)) or "none"
        raise NotFound(f"no evaluation set named {name!r} (known: {known})")
    return es


def list_eval_sets(s: Session, dataset_id: int) -> list[EvalSet]:
    return list(s.scalars(select(EvalSet).where(EvalSet.dataset_id == dataset_id).order_by(EvalSet.id)))


def eval_set_image_ids(s: Session, eval_set_id: int) -> list[int]:
    q = select(EvalSetImage.image_id).where(EvalSetImage.eval_set_id == eval_set_id)
    return list(s.scalars(q.order_by(EvalSetImage.image_id)))


def label_history_rows(s: Session, dataset_id: int):
    """Every label row of a dataset, oldest first, with the image's name: the team's record."""
    q = (select(Label.id, Image.rel_path, Image.split, Label.label, Label.source, Label.author,
                Label.note, Label.created_at)
         .join(Image, Image.id == Label.image_id).where(Image.dataset_id == dataset_id)
         .order_by(Label.id))
    return list(s.execute(q))


def thumbnail_keys(s: Session, image_ids: Sequence[int]) -> dict[int, tuple[str | None, tuple]]:
    """image id -> (content sha1, (bytes, mtime_ns) at import), in one query (thumbnail names)."""
    q = select(Image.id, Image.sha1, Image.bytes, Image.mtime_ns).where(Image.id.in_(list(image_ids)))
    return {i: (sha1, (size, mtime)) for i, sha1, size, mtime in s.execute(q)}


def submission_probabilities(s: Session, run: Run) -> list[tuple[str, float | None]]:
    """(rel_path, the run's probability or None) of the dataset's test images in test.csv order."""
    q = (select(Image.rel_path, Prediction.prob).outerjoin(
            Prediction, (Prediction.image_id == Image.id) & (Prediction.run_id == run.id))
         .where(Image.dataset_id == run.dataset_id, Image.split == "test")
         .order_by(Image.split, Image.csv_row))
    return [tuple(r) for r in s.execute(q)]


# ---------------------------------------------------------------- cache keys (the dashboard's loaders)


def predictions_version(s: Session, run_id: int) -> tuple:
    """Changes whenever a run's predictions do: rows added or removed, a probability rewritten
    (an upsert keeps the row, so a count or id alone would not see it), another checkpoint."""
    q = select(func.count(), func.sum(Prediction.prob), func.min(Prediction.epoch),
               func.max(Prediction.epoch), func.min(Prediction.checkpoint_sha1),
               func.max(Prediction.checkpoint_sha1))
    return tuple(s.execute(q.where(Prediction.run_id == run_id)).one())


def run_state(run: Run | None) -> tuple:
    """What of a run changes what it shows: status, best epoch, thresholds, checkpoint, labels."""
    if run is None:
        return (None,)
    return (run.status, run.best_epoch, run.best_threshold, run.chosen_threshold, run.checkpoint,
            run.labels_as_of, str(run.finished_at))


def images_version(s: Session, dataset_id: int, split: str) -> tuple:
    """Changes when the dataset's images on a split do (added, re-probed)."""
    q = select(func.count(), func.max(Image.id), func.sum(Image.mtime_ns % 1_000_003), func.max(Image.sha1),
               func.sum(func.length(Image.status)))
    return tuple(s.execute(q.where(Image.dataset_id == dataset_id, Image.split == split)).one())
