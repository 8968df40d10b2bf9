"""Labels: append-only rows, the label of every image at any state (current, imported, as of a label id), relabel and undo with their refusals, the history."""
from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from db.errors import NotFound
from db.models import (
    Image,
    Label,
)


def _label_rows(dataset_id: int, pick=func.max, as_of: int | None = None, among=None,
                source: str | None = None):
    """Subquery (image_id, lid): per image, the newest (max) or first (min) label row id; with
    `among` (a select of image ids), only those images; with `source`, among its rows only."""
    q = (select(Label.image_id, pick(Label.id).label("lid")).join(Image, Image.id == Label.image_id)
         .where(Image.dataset_id == dataset_id))
    if source is not None:
        q = q.where(Label.source == source)
    if as_of is not None:
        q = q.where(Label.id <= as_of)
    if among is not None:
        q = q.where(Label.image_id.in_(among))
    return q.group_by(Label.image_id).subquery()


# Label sources: "import" (train.csv's label: the first row of every training image, and a later
# row when `aivh import --apply-label-changes` records an edit of train.csv), "review" (a
# reviewer's relabel), "undo" (restores
# the label before an undone review; its note names it) and "unlabel" (undoes an image's first
# review when it had no label before, a test image: its label column repeats the undone one
# and means nothing; the image has no current label).
UNDO_SOURCES = ("undo", "unlabel")


def _labels_by(s: Session, rows) -> dict[int, int]:
    found = s.execute(select(Label.image_id, Label.label).join(rows, Label.id == rows.c.lid)
                      .where(Label.source != "unlabel"))
    return {image_id: label for image_id, label in found}


def current_labels(s: Session, dataset_id: int, *, as_of: int | None = None, among=None) -> dict[int, int]:
    """image_id -> label, from the newest label row (at or before label id `as_of`); with `among`
    (a select of image ids), of those images only."""
    return _labels_by(s, _label_rows(dataset_id, func.max, as_of, among))


def import_labels(s: Session, dataset_id: int) -> dict[int, int]:
    """image_id -> label as first imported: immutable, so it can stratify a split."""
    return _labels_by(s, _label_rows(dataset_id, func.min))


def csv_labels(s: Session, dataset_id: int) -> dict[int, int]:
    """image_id -> the label train.csv gave it as last recorded (its newest "import" row): what a
    re-import compares train.csv with to notice an edited label."""
    return _labels_by(s, _label_rows(dataset_id, func.max, source="import"))


def labelled_before_replaced(s: Session, dataset_id: int) -> set[int]:
    """The images whose file an import found replaced (Image.replaced_at_label) and whose newest
    label row is not newer than that: their current label was given to the old picture."""
    newest = _label_rows(dataset_id, func.max)
    q = (select(Image.id).join(newest, newest.c.image_id == Image.id)
         .where(Image.dataset_id == dataset_id, Image.replaced_at_label.is_not(None),
                newest.c.lid <= Image.replaced_at_label))
    return set(s.scalars(q))


def newest_label_id(s: Session, dataset_id: int) -> int | None:
    q = select(func.max(Label.id)).join(Image, Image.id == Label.image_id)
    return s.scalar(q.where(Image.dataset_id == dataset_id))


def _lock_image(s: Session, image_id: int) -> None:
    """Serialise label writes per image (PostgreSQL: row lock until commit; SQLite writes are
    serialised anyway), so an undo never reads a history that a relabel is changing."""
    if s.execute(select(Image.id).where(Image.id == image_id).with_for_update()).first() is None:
        raise NotFound(f"no image {image_id}")


LABEL_SOURCES = ("review", "import")  # what relabel() may record (undo rows come from undo_last_review)


def relabel(s: Session, image_id: int, label: int, *, author: str, note: str | None = None,
            source: str = "review") -> Label:
    """A new current label: a reviewer's ("review"), or an edit of train.csv a re-import
    records ("import", `aivh import --apply-label-changes`)."""
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, not {label!r}")
    if source not in LABEL_SOURCES:
        raise ValueError(f"label source must be {' or '.join(LABEL_SOURCES)}, not {source!r}")
    _lock_image(s, image_id)
    row = Label(image_id=image_id, label=label, source=source, author=author, note=note)
    s.add(row)
    s.flush()
    return row


def newest_label_rows(dataset_id: int, among=None):
    """(newest label row per image, reviews still in force per image: reviews minus undos); with
    `among` (a select of image ids), of those images only."""
    newest = _label_rows(dataset_id, func.max, among=among)
    counted = case((Label.source == "review", 1), (Label.source.in_(UNDO_SOURCES), -1), else_=0)
    reviews = (select(Label.image_id, func.sum(counted).label("n"))
               .join(Image, Image.id == Label.image_id)
               .where(Image.dataset_id == dataset_id, Label.source.in_(("review", *UNDO_SOURCES))))
    if among is not None:
        reviews = reviews.where(Label.image_id.in_(among))
    return newest, reviews.group_by(Label.image_id).subquery()


def current_label_join(newest):
    """Join condition for the current label row (none when an undo left the image unlabelled)."""
    return (Label.id == newest.c.lid) & (Label.source != "unlabel")


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

    Raises UndoRefused when the author has no review left to undo, or when someone else (or a
    re-import recording an edit of train.csv) has relabelled the image since (naming who and
    when): undoing then would silently revert their change.
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
    others = [h for h in history if h.id > last.id and (h.source == "import" or (
        h in in_force and h.author != author))]
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


def label_version(s: Session) -> int:
    """Changes whenever any label is added: a cache key for label-dependent views."""
    return s.scalar(select(func.max(Label.id))) or 0


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


def label_history_rows(s: Session, dataset_id: int):
    """Every label row of a dataset, oldest first, with the image's name: the team's record."""
    q = (select(Label.id, Image.rel_path, Image.split, Label.label, Label.source, Label.author,
                Label.note, Label.created_at)
         .join(Image, Image.id == Label.image_id).where(Image.dataset_id == dataset_id)
         .order_by(Label.id))
    return list(s.execute(q))
