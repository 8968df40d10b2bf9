"""Typed SQLAlchemy 2.0 models: the store is the single source of truth."""
from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class RunStatus(StrEnum):
    """A run's (and an audit's) life: queued -> running -> succeeded | failed | cancelled | pruned.
    A StrEnum: stored as its text, equal to it in comparisons. pruned: a sweep's trial its
    pruner stopped early (engine.sweep); its epochs and checkpoints are kept, like a finished run's."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PRUNED = "pruned"


class RunKind(StrEnum):
    """train: `aivh train` or the Train page; fold: one held-out fold of a label audit; probe: a
    linear probe on a frozen backbone's features (`aivh probe`); trial: one trial of a
    hyperparameter sweep (`aivh sweep`), its sweep and trial number in its config."""

    TRAIN = "train"
    FOLD = "fold"
    PROBE = "probe"
    TRIAL = "trial"


class Base(DeclarativeBase):
    pass


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    root: Mapped[str] = mapped_column(Text)  # absolute path; images are stored relative to it
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("dataset_id", "rel_path"),
        CheckConstraint("split IN ('train', 'test')", name="split_kind"),
        Index("ix_images_dataset_split", "dataset_id", "split", "csv_row"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    rel_path: Mapped[str] = mapped_column(Text)  # exactly as written in the CSV
    split: Mapped[str] = mapped_column(String(8))
    csv_row: Mapped[int] = mapped_column(Integer)  # 0-based data row in its CSV: export order
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    bytes: Mapped[int | None] = mapped_column(Integer)
    sha1: Mapped[str | None] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(12), default="ok")  # ok | unreadable
    # added in migration 0003: the file's modification time when it was probed (with `bytes`,
    # how a file replaced after import is noticed)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    # added in migration 0004: what the file's header says (engine.images.FileMeta), read at
    # import without decoding pixels; NULL format on a readable image: not yet probed (a store
    # from before 0004, filled in by the next import). Bytes per pixel is bytes / (width * height).
    format: Mapped[str | None] = mapped_column(String(16))  # JPEG, PNG, WEBP ...
    mode: Mapped[str | None] = mapped_column(String(16))  # RGB, L, CMYK ...
    jpeg_quality: Mapped[int | None] = mapped_column(Integer)  # estimated from the quantization tables
    subsampling: Mapped[str | None] = mapped_column(String(8))  # 4:4:4, 4:2:2, 4:2:0
    progressive: Mapped[bool | None] = mapped_column(Boolean)  # progressive JPEG, interlaced PNG
    has_exif: Mapped[bool | None] = mapped_column(Boolean)
    has_icc: Mapped[bool | None] = mapped_column(Boolean)
    # added in migration 0005: the 64-bit perceptual hash (imagehash.phash, 16 hex digits) of the
    # decoded pixels, computed at first use by `aivh duplicates` or a grouped split; NULL: not yet
    phash: Mapped[str | None] = mapped_column(String(16))
    # added in migration 0006: train.csv's `group` column for this image as import recorded it
    # ("" for none, and for test images, and for a row written by anything but import): what a
    # split keeps on one side, so a split never reads the live CSV. NULL: imported before 0006;
    # a split refuses such a dataset (engine.duplicates.split_groups) until the next import
    # records them. A changed group in train.csv is reported at re-import and recorded only with
    # `aivh import --apply-group-changes`.
    csv_group: Mapped[str | None] = mapped_column(Text, default="")
    # added in migration 0007: the newest label row id of this image when an import last found its
    # file replaced (other bytes). While the image's newest label row is not newer, its current
    # label was given to the old picture: each import reports it where train.csv says otherwise,
    # until `--apply-label-changes` records train.csv's label or someone labels the image again.
    # NULL: never found replaced (or no label then).
    replaced_at_label: Mapped[int | None] = mapped_column(Integer)


class Label(Base):
    """Append-only: the current label of an image is its newest row."""

    __tablename__ = "labels"
    __table_args__ = (
        CheckConstraint("label IN (0, 1)", name="label_binary"),
        Index("ix_labels_image", "image_id", "id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    label: Mapped[int] = mapped_column(Integer)  # 1 = AI-generated, 0 = human-made
    source: Mapped[str] = mapped_column(String(12))  # import | review
    author: Mapped[str | None] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16), default=RunKind.TRAIN.value)
    status: Mapped[str] = mapped_column(String(12), default=RunStatus.QUEUED.value)
    config: Mapped[dict] = mapped_column(JSON)
    labels_as_of: Mapped[int | None] = mapped_column(Integer)  # newest label id it trained on
    pid: Mapped[int | None] = mapped_column(Integer)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    checkpoint: Mapped[str | None] = mapped_column(Text)  # best checkpoint path
    error: Mapped[str | None] = mapped_column(Text)
    # live progress for the dashboard: {"epoch", "epochs", "batch", "batches", "images_per_s"}
    progress: Mapped[dict | None] = mapped_column(JSON)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    best_epoch: Mapped[int | None] = mapped_column(Integer)
    best_threshold: Mapped[float | None] = mapped_column(Float)  # best validation-F1 threshold
    chosen_threshold: Mapped[float | None] = mapped_column(Float)  # set by a reviewer
    # added in migration 0002
    audit_id: Mapped[int | None] = mapped_column(ForeignKey("audits.id"))
    fold: Mapped[int | None] = mapped_column(Integer)  # 0-based fold of an audit's k-fold runs
    like_run_id: Mapped[int | None] = mapped_column(Integer)  # config copied from this run
    # added in migration 0003: the process that owns the run is (host, pid, pid_started), the
    # start time telling a reused pid apart; world_size: processes that train it (DDP)
    host: Mapped[str | None] = mapped_column(String(255))
    pid_started: Mapped[float | None] = mapped_column(Float)
    world_size: Mapped[int | None] = mapped_column(Integer)
    threshold_note: Mapped[str | None] = mapped_column(Text)  # why best_threshold is missing or suspect


class Epoch(Base):
    __tablename__ = "epochs"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)  # 1-based
    train_loss: Mapped[float] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    val_f1: Mapped[float | None] = mapped_column(Float)  # at threshold 0.5
    val_best_f1: Mapped[float | None] = mapped_column(Float)
    val_best_threshold: Mapped[float | None] = mapped_column(Float)
    val_auc: Mapped[float | None] = mapped_column(Float)
    lr: Mapped[float] = mapped_column(Float)
    images_per_s: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)


class RunImage(Base):
    __tablename__ = "run_images"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[str] = mapped_column(String(8))  # train | val


class Prediction(Base):
    __tablename__ = "predictions"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    prob: Mapped[float] = mapped_column(Float)  # probability of label 1 (AI-generated)
    # added in migration 0003: the checkpoint that made it (its epoch and the file's sha1)
    epoch: Mapped[int | None] = mapped_column(Integer)
    checkpoint_sha1: Mapped[str | None] = mapped_column(String(40))


class Export(Base):
    __tablename__ = "exports"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    threshold: Mapped[float] = mapped_column(Float)
    path: Mapped[str] = mapped_column(Text)
    rows: Mapped[int] = mapped_column(Integer)
    positive_rate: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # added in migration 0003: a refusal the user overrode (and why), warnings shown at export
    override: Mapped[str | None] = mapped_column(Text)
    warnings: Mapped[list | None] = mapped_column(JSON)


class Audit(Base):
    """k fold runs whose out-of-fold probabilities rank every training image's label."""

    __tablename__ = "audits"
    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    folds: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict] = mapped_column(JSON)  # the fold runs' training config
    status: Mapped[str] = mapped_column(String(12), default="queued")
    labels_as_of: Mapped[int | None] = mapped_column(Integer)  # the labels it audited
    flagged: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditScore(Base):
    __tablename__ = "audit_scores"
    __table_args__ = (Index("ix_audit_scores_rank", "audit_id", "rank"),)
    audit_id: Mapped[int] = mapped_column(ForeignKey("audits.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    given_label: Mapped[int] = mapped_column(Integer)  # the label the audit checked
    prob: Mapped[float] = mapped_column(Float)  # out-of-fold probability of label 1
    quality: Mapped[float] = mapped_column(Float)  # cleanlab label quality, low = suspicious
    flagged: Mapped[bool] = mapped_column(Boolean)  # cleanlab's likely label issue
    rank: Mapped[int] = mapped_column(Integer)  # 1 = worst


class EvalSet(Base):
    """Images a user froze for comparing runs: the same images, whatever the labels do."""

    __tablename__ = "eval_sets"
    __table_args__ = (UniqueConstraint("dataset_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    author: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EvalSetImage(Base):
    __tablename__ = "eval_set_images"
    eval_set_id: Mapped[int] = mapped_column(ForeignKey("eval_sets.id", ondelete="CASCADE"),
                                             primary_key=True)
    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
