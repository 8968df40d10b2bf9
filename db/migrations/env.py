"""Alembic environment: aivh runs migrations itself (db.store.migrate) on a connection it owns."""
from __future__ import annotations

from alembic import context

from db.models import Base

connection = context.config.attributes["connection"]
# no batch mode: SQLite's table rebuild would drop and recreate tables that others reference
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
