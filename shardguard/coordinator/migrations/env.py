"""Alembic environment: run by ``shardguard.coordinator.db.migrate`` on a connection it passes in
``config.attributes["connection"]`` (there is no alembic.ini: the package is the configuration)."""

from __future__ import annotations

from alembic import context

from shardguard.coordinator.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through shardguard.coordinator.db.migrate()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
