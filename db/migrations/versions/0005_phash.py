"""Each image's perceptual hash (imagehash.phash as 16 hex digits), for near copies: filled in at
first use by `aivh duplicates` or `aivh train --group near-duplicates`; existing rows stay NULL
until then.

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("images", sa.Column("phash", sa.String(16)))  # plain ADD COLUMN (see 0003)


def downgrade() -> None:
    op.drop_column("images", "phash")
