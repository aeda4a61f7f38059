"""Alembic migrations of the coordinator database, applied at start (``db.migrate``)."""
