"""Alembic revisions, one file each, applied in order by ``alembic upgrade head``."""
