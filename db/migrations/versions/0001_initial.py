"""The schema as first released (stores made by `create_all` before migrations existed).

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _id() -> sa.Column:
    return sa.Column("id", sa.Integer(), primary_key=True)


def _fk(name: str, target: str, *, primary_key: bool = False) -> sa.Column:
    return sa.Column(name, sa.Integer(), sa.ForeignKey(target, ondelete="CASCADE"), nullable=False,
                     primary_key=primary_key)


def _when(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table("datasets", _id(), sa.Column("name", sa.String(200), nullable=False, unique=True),
                    sa.Column("root", sa.Text(), nullable=False), _when("created_at", False))
    op.create_table(
        "images", _id(), _fk("dataset_id", "datasets.id"),
        sa.Column("rel_path", sa.Text(), nullable=False), sa.Column("split", sa.String(8), nullable=False),
        sa.Column("csv_row", sa.Integer(), nullable=False), sa.Column("width", sa.Integer()),
        sa.Column("height", sa.Integer()), sa.Column("bytes", sa.Integer()),
        sa.Column("sha1", sa.String(40)), sa.Column("status", sa.String(12), nullable=False),
        sa.UniqueConstraint("dataset_id", "rel_path"),
        sa.CheckConstraint("split IN ('train', 'test')", name="split_kind"))
    op.create_index("ix_images_dataset_split", "images", ["dataset_id", "split", "csv_row"])
    op.create_table(
        "runs", _id(), _fk("dataset_id", "datasets.id"),
        sa.Column("kind", sa.String(16), nullable=False), sa.Column("status", sa.String(12), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False), sa.Column("labels_as_of", sa.Integer()),
        sa.Column("pid", sa.Integer()), _when("heartbeat_at"), _when("created_at", False),
        _when("started_at"), _when("finished_at"), sa.Column("checkpoint", sa.Text()),
        sa.Column("error", sa.Text()), sa.Column("progress", sa.JSON()),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False), sa.Column("best_epoch", sa.Integer()),
        sa.Column("best_threshold", sa.Float()), sa.Column("chosen_threshold", sa.Float()))
    op.create_table(
        "epochs", _fk("run_id", "runs.id", primary_key=True),
        sa.Column("epoch", sa.Integer(), primary_key=True),
        sa.Column("train_loss", sa.Float(), nullable=False),
        *[sa.Column(c, sa.Float()) for c in ("val_loss", "val_f1", "val_best_f1", "val_best_threshold",
                                              "val_auc")],
        *[sa.Column(c, sa.Float(), nullable=False) for c in ("lr", "images_per_s", "seconds")])
    op.create_table(
        "exports", _id(), _fk("run_id", "runs.id"), sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False), sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("positive_rate", sa.Float(), nullable=False), _when("created_at", False))
    op.create_table(
        "labels", _id(), _fk("image_id", "images.id"), sa.Column("label", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(12), nullable=False), sa.Column("author", sa.String(200)),
        sa.Column("note", sa.Text()), _when("created_at", False),
        sa.CheckConstraint("label IN (0, 1)", name="label_binary"))
    op.create_index("ix_labels_image", "labels", ["image_id", "id"])
    op.create_table("predictions", _fk("run_id", "runs.id", primary_key=True),
                    _fk("image_id", "images.id", primary_key=True),
                    sa.Column("prob", sa.Float(), nullable=False))
    op.create_table("run_images", _fk("run_id", "runs.id", primary_key=True),
                    _fk("image_id", "images.id", primary_key=True),
                    sa.Column("role", sa.String(8), nullable=False))


def downgrade() -> None:
    for table in ("run_images", "predictions", "labels", "exports", "epochs", "runs", "images", "datasets"):
        op.drop_table(table)
