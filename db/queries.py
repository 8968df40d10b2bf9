"""Query functions. Each takes a session first; callers own the transaction."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from db.errors import NotFound  # callers catch it as queries.NotFound
from db.labelling import current_label_join, newest_label_rows
from db.models import (
    Dataset,
    Epoch,
    Export,
    Image,
    Label,
    Prediction,
    Run,
    RunImage,
)


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
    loader compares with the file on disk (engine.images.check_unchanged) to notice a replaced file."""
    q = select(Image.rel_path, Image.bytes, Image.mtime_ns).where(Image.dataset_id == dataset_id,
                                                                 Image.status == "ok")
    return {path: (size, mtime) for path, size, mtime in s.execute(q)}


def image_sha1s(s: Session, dataset_id: int) -> dict[str, str | None]:
    q = select(Image.rel_path, Image.sha1).where(Image.dataset_id == dataset_id)
    return {path: sha1 for path, sha1 in s.execute(q)}


def images_without_meta(s: Session, dataset_id: int) -> dict[str, int]:
    """rel_path -> id of the readable images whose header properties were never recorded
    (imported before migration 0004)."""
    q = select(Image.rel_path, Image.id).where(Image.dataset_id == dataset_id, Image.status == "ok",
                                               Image.format.is_(None))
    return {path: i for path, i in s.execute(q)}


def image_groups(s: Session, dataset_id: int) -> dict[str, str | None]:
    """rel_path -> the train.csv group recorded with each image ("" none; None: not recorded yet,
    an image imported before migration 0006)."""
    q = select(Image.rel_path, Image.csv_group).where(Image.dataset_id == dataset_id)
    return {path: group for path, group in s.execute(q)}


def csv_groups(s: Session, dataset_id: int, split: str | None = "train") -> dict[int, str]:
    """image id -> its recorded train.csv group, of the readable images that have one."""
    q = select(Image.id, Image.csv_group).where(Image.dataset_id == dataset_id, Image.status == "ok",
                                                Image.csv_group.is_not(None), Image.csv_group != "")
    if split is not None:
        q = q.where(Image.split == split)
    return {i: group for i, group in s.execute(q)}


def without_group(s: Session, image_ids) -> int:
    """How many of `image_ids` have no train.csv group recorded (imported before migration 0006)."""
    ids = list(image_ids)
    q = select(func.count()).select_from(Image).where(Image.csv_group.is_(None))
    return sum(s.scalar(q.where(Image.id.in_(ids[k:k + 10_000]))) for k in range(0, len(ids), 10_000))


def mark_replaced(s: Session, image_ids: list[int]) -> None:
    """Record, for images whose file an import found replaced, their newest label row id now
    (Image.replaced_at_label): a label row not newer than it was given to the old picture."""
    if image_ids:
        newest = select(func.max(Label.id)).where(Label.image_id == Image.id).scalar_subquery()
        s.execute(update(Image).where(Image.id.in_(image_ids)).values(replaced_at_label=newest)
                  .execution_options(synchronize_session=False))


def set_groups(s: Session, values: dict[int, str]) -> None:
    """Record train.csv groups (image id -> group, "" for none): one bulk UPDATE by primary key."""
    if values:
        s.execute(update(Image), [{"id": i, "csv_group": g} for i, g in values.items()])


META_COLUMNS = ("width", "height", "bytes", "format", "mode", "jpeg_quality", "subsampling",
                "progressive", "has_exif", "has_icc")


def image_meta(s: Session, dataset_id: int, split: str | None = None, *, among=None) -> list[tuple]:
    """(id, rel_path, split, *META_COLUMNS) of the readable images (of those in `among`, a select
    of image ids, when given), in images()'s order."""
    cols = [getattr(Image, c) for c in META_COLUMNS]
    q = select(Image.id, Image.rel_path, Image.split, *cols).where(Image.dataset_id == dataset_id,
                                                                  Image.status == "ok")
    if split is not None:
        q = q.where(Image.split == split)
    if among is not None:
        q = q.where(Image.id.in_(among))
    return [tuple(r) for r in s.execute(q.order_by(Image.split, Image.csv_row))]


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


def role_images(run_ids: int | Sequence[int], role: str, *, among=None):
    """A select of the image ids one run (or any of several) used in `role`, of those in `among`
    (a select of image ids) when given: for use in a query."""
    ids = [run_ids] if isinstance(run_ids, int) else list(run_ids)
    q = select(RunImage.image_id).where(RunImage.run_id.in_(ids), RunImage.role == role)
    return q if among is None else q.where(RunImage.image_id.in_(among))


def set_run_images(s: Session, run_id: int, roles: dict[str, Sequence[int]]) -> None:
    s.execute(delete(RunImage).where(RunImage.run_id == run_id))
    rows = [{"run_id": run_id, "image_id": i, "role": r} for r, ids in roles.items() for i in ids]
    if rows:
        s.execute(RunImage.__table__.insert(), rows)


def upsert_predictions(s: Session, run_id: int, pairs: Iterable[tuple[int, float]], *,
                       epoch: int | None = None, checkpoint_sha1: str | None = None) -> int:
    """Insert or replace a run's predictions; every row written names the checkpoint given
    (None: unknown), a replaced row never keeps the epoch and file of the one it replaces.
    The engine writes through db.runs.replace_predictions; this serves tests and benchmarks."""
    rows = [{"run_id": run_id, "image_id": i, "prob": float(p), "epoch": epoch,
             "checkpoint_sha1": checkpoint_sha1} for i, p in pairs]
    if not rows:
        return 0
    insert = pg_insert if s.bind.dialect.name == "postgresql" else sqlite_insert
    stmt = insert(Prediction.__table__)
    stmt = stmt.on_conflict_do_update(
        index_elements=["run_id", "image_id"],
        set_={"prob": stmt.excluded.prob, "epoch": stmt.excluded.epoch,
              "checkpoint_sha1": stmt.excluded.checkpoint_sha1})
    s.execute(stmt, rows)
    return len(rows)


def predictions(s: Session, run_id: int, image_ids: Sequence[int] | None = None, *,
                among=None) -> dict[int, float]:
    """image_id -> probability of a run; `image_ids` picks (in Python), `among` (a select of
    image ids) restricts in the query."""
    q = select(Prediction.image_id, Prediction.prob).where(Prediction.run_id == run_id)
    if among is not None:
        q = q.where(Prediction.image_id.in_(among))
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


def prediction_rows(s: Session, run: Run, split: str) -> list[tuple]:
    """(image_id, rel_path, prob, label or None, reviews) for a run's predictions on a split.

    split: "val" / "train" (the run's own roles) or "test".
    """
    if split in ("val", "train"):
        among = role_images(run.id, split)
    else:
        among = select(Image.id).where(Image.dataset_id == run.dataset_id, Image.split == split)
    newest, reviews = newest_label_rows(run.dataset_id, among)  # not the whole dataset's labels
    q = (select(Image.id, Image.rel_path, Prediction.prob, Label.label,
                func.coalesce(reviews.c.n, 0))
         .join(Prediction, (Prediction.image_id == Image.id) & (Prediction.run_id == run.id))
         .outerjoin(newest, newest.c.image_id == Image.id)
         .outerjoin(Label, current_label_join(newest))
         .outerjoin(reviews, reviews.c.image_id == Image.id))
    if split in ("val", "train"):
        q = q.join(RunImage, (RunImage.image_id == Image.id) & (RunImage.run_id == run.id)
                   & (RunImage.role == split))
    else:
        q = q.where(Image.split == split)
    return [tuple(r) for r in s.execute(q.order_by(Image.id))]


def exports(s: Session) -> list[Export]:
    return list(s.scalars(select(Export).order_by(Export.id.desc())))


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
    """Changes when the dataset's images on a split do (added, re-probed, headers read by a
    re-import: the count of rows with a format)."""
    q = select(func.count(), func.max(Image.id), func.sum(Image.mtime_ns % 1_000_003), func.max(Image.sha1),
               func.sum(func.length(Image.status)), func.count(Image.format))
    return tuple(s.execute(q.where(Image.dataset_id == dataset_id, Image.split == split)).one())


def groups_version(s: Session, dataset_id: int) -> tuple:
    """Changes when the train.csv groups recorded with the dataset's images do (recorded by a
    re-import for rows imported before groups were, changed by `aivh import
    --apply-group-changes`): how many are unrecorded, and a sha1 of every (image id, group) that
    is not empty (an edit that keeps the count and the longest name changes it too). Reads only
    the rows with a group: nothing on a dataset without the column."""
    import hashlib

    unrecorded = s.scalar(select(func.count()).select_from(Image).where(
        Image.dataset_id == dataset_id, Image.csv_group.is_(None)))
    digest = hashlib.sha1()
    q = select(Image.id, Image.csv_group).where(Image.dataset_id == dataset_id, Image.csv_group != "")
    for i, group in s.execute(q.order_by(Image.id)):
        digest.update(f"{i}\t{group}\n".encode())
    return unrecorded, digest.hexdigest()


def phashes(s: Session, dataset_id: int, *, failed: bool = False) -> dict[int, str]:
    """image id -> stored perceptual hash, for readable images that have one (migration 0005);
    failed: also those stored as "" (could not be hashed)."""
    q = select(Image.id, Image.phash).where(Image.dataset_id == dataset_id, Image.status == "ok",
                                            Image.phash.is_not(None))
    return {i: h for i, h in s.execute(q) if h or failed}


def set_phashes(s: Session, values: dict[int, str]) -> None:
    """Store perceptual hashes (image id -> 16 hex digits): one bulk UPDATE by primary key."""
    if values:
        s.execute(update(Image), [{"id": i, "phash": h} for i, h in values.items()])


def image_facts(s: Session, dataset_id: int) -> list[tuple[int, str, str, str | None]]:
    """(id, rel_path, split, sha1) of the readable images in id order: plain tuples for 80k rows."""
    q = select(Image.id, Image.rel_path, Image.split, Image.sha1).where(
        Image.dataset_id == dataset_id, Image.status == "ok").order_by(Image.id)
    return [tuple(r) for r in s.execute(q)]


def image_rows(s: Session, dataset_id: int, run_id: int | None = None,
               image_ids: Sequence[int] | None = None) -> list[tuple]:
    """(image_id, rel_path, split, prob or None, label or None, reviews) of readable images (all,
    or `image_ids`), with the run's prediction where it made one: the embedding map and a
    selection opened in Review, which span splits and images without predictions."""
    newest, reviews = newest_label_rows(dataset_id)
    prob = Prediction.prob if run_id is not None else func.cast(None, Prediction.prob.type)
    q = (select(Image.id, Image.rel_path, Image.split, prob, Label.label, func.coalesce(reviews.c.n, 0))
         .outerjoin(newest, newest.c.image_id == Image.id)
         .outerjoin(Label, current_label_join(newest))
         .outerjoin(reviews, reviews.c.image_id == Image.id)
         .where(Image.dataset_id == dataset_id, Image.status == "ok"))
    if run_id is not None:
        q = q.outerjoin(Prediction, (Prediction.image_id == Image.id) & (Prediction.run_id == run_id))
    if image_ids is not None:
        q = q.where(Image.id.in_([int(i) for i in image_ids]))
    return [tuple(r) for r in s.execute(q.order_by(Image.id))]


def count_without_phash(s: Session, dataset_id: int) -> int:
    """Readable images whose perceptual hash is not stored yet."""
    return s.scalar(select(func.count(Image.id)).where(Image.dataset_id == dataset_id, Image.status == "ok",
                                                       Image.phash.is_(None))) or 0
