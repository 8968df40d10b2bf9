"""The newest label row id of an image when an import found its file replaced, so a label given
to the old picture is reported at every import until train.csv's label is recorded or someone
labels the image again (engine.ingest). Existing rows stay NULL: no replacement recorded.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("images", sa.Column("replaced_at_label", sa.Integer()))  # plain ADD COLUMN (see 0003)


def downgrade() -> None:
    op.drop_column("images", "replaced_at_label")
