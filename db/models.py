"""Typed SQLAlchemy 2.0 models: the store is the single source of truth."""
from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
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
    kind: Mapped[str] = mapped_column(String(16), default="train")
    status: Mapped[str] = mapped_column(String(12), default="queued")
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


class Export(Base):
    __tablename__ = "exports"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    threshold: Mapped[float] = mapped_column(Float)
    path: Mapped[str] = mapped_column(Text)
    rows: Mapped[int] = mapped_column(Integer)
    positive_rate: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
