"""Label audits (k-fold out-of-fold scores), frozen evaluation sets, retrain lineage.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _fk(name: str, target: str) -> sa.Column:
    return sa.Column(name, sa.Integer(), sa.ForeignKey(target, ondelete="CASCADE"), nullable=False,
                     primary_key=name != "dataset_id")


def upgrade() -> None:
    op.create_table(
        "audits", sa.Column("id", sa.Integer(), primary_key=True), _fk("dataset_id", "datasets.id"),
        sa.Column("folds", sa.Integer(), nullable=False), sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(12), nullable=False), sa.Column("labels_as_of", sa.Integer()),
        sa.Column("flagged", sa.Integer()), sa.Column("error", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)))
    op.create_table(
        "audit_scores", _fk("audit_id", "audits.id"), _fk("image_id", "images.id"),
        sa.Column("given_label", sa.Integer(), nullable=False), sa.Column("prob", sa.Float(), nullable=False),
        sa.Column("quality", sa.Float(), nullable=False), sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False))
    op.create_index("ix_audit_scores_rank", "audit_scores", ["audit_id", "rank"])
    op.create_table(
        "eval_sets", sa.Column("id", sa.Integer(), primary_key=True), _fk("dataset_id", "datasets.id"),
        sa.Column("name", sa.String(200), nullable=False), sa.Column("author", sa.String(200)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("dataset_id", "name"))
    op.create_table("eval_set_images", _fk("eval_set_id", "eval_sets.id"), _fk("image_id", "images.id"))
    # plain ADD COLUMN (SQLite allows REFERENCES on a nullable new column): no table rebuild,
    # which on SQLite would drop `runs` and with it, by cascade, every run's epochs
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE runs ADD COLUMN audit_id INTEGER REFERENCES audits (id)")
    else:
        op.add_column("runs", sa.Column("audit_id", sa.Integer(),
                                        sa.ForeignKey("audits.id")))
    op.add_column("runs", sa.Column("fold", sa.Integer()))
    op.add_column("runs", sa.Column("like_run_id", sa.Integer()))


def downgrade() -> None:
    for column in ("like_run_id", "fold", "audit_id"):
        op.drop_column("runs", column)
    for table in ("eval_set_images", "eval_sets", "audit_scores", "audits"):
        op.drop_table(table)
