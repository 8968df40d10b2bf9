"""What each image file's header says: format, mode, estimated JPEG quality, chroma subsampling,
progressive, EXIF and ICC present (for the shortcut and shift audits). Existing rows stay NULL
until the next `aivh import` of their dataset fills them in from the headers.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = [sa.Column("format", sa.String(16)), sa.Column("mode", sa.String(16)),
           sa.Column("jpeg_quality", sa.Integer()), sa.Column("subsampling", sa.String(8)),
           sa.Column("progressive", sa.Boolean()), sa.Column("has_exif", sa.Boolean()),
           sa.Column("has_icc", sa.Boolean())]


def upgrade() -> None:
    for column in COLUMNS:  # plain ADD COLUMN: no table rebuild (see 0003)
        op.add_column("images", column)


def downgrade() -> None:
    for column in reversed(COLUMNS):
        op.drop_column("images", column.name)
