"""Alembic environment: migrations run on a connection handed in by gateway.adapters.database.migrate."""

from __future__ import annotations

from alembic import context

from gateway.adapters.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through gateway.adapters.database.migrate()")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
