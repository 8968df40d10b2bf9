"""Run ownership (host, process start time, world size), which checkpoint made each
prediction, each image's modification time, and what an export overrode or warned about.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = {
    "runs": [sa.Column("host", sa.String(255)), sa.Column("pid_started", sa.Float()),
             sa.Column("world_size", sa.Integer()), sa.Column("threshold_note", sa.Text())],
    "predictions": [sa.Column("epoch", sa.Integer()), sa.Column("checkpoint_sha1", sa.String(40))],
    "images": [sa.Column("mtime_ns", sa.BigInteger())],
    "exports": [sa.Column("override", sa.Text()), sa.Column("warnings", sa.JSON())],
}


def upgrade() -> None:
    # plain ADD COLUMN everywhere: no table rebuild (on SQLite a rebuild of `runs` would drop,
    # by cascade, every run's epochs and predictions)
    for table, columns in COLUMNS.items():
        for column in columns:
            op.add_column(table, column)


def downgrade() -> None:
    for table, columns in COLUMNS.items():
        for column in reversed(columns):
            op.drop_column(table, column.name)
