"""Each image's group from train.csv's optional `group` column, recorded at import so a split
uses the stored value and never the live CSV. Existing rows stay NULL (not recorded yet) until
the next `aivh import` of their dataset, or the first split that needs them, reads train.csv
once and records them.

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("images", sa.Column("csv_group", sa.Text()))  # plain ADD COLUMN (see 0003)


def downgrade() -> None:
    op.drop_column("images", "csv_group")
