"""Engines, transactions and migrations for SQLite and PostgreSQL.

Writes that must not interleave (claiming a task, dispatching a job, appending to a mailbox)
run in :meth:`Database.write` transactions:

* PostgreSQL: READ COMMITTED with ``SELECT … FOR UPDATE SKIP LOCKED`` on the rows claimed, so
  several coordinator replicas on one database never hand out the same row twice;
* SQLite: ``BEGIN IMMEDIATE`` — the one writer lock is taken when the transaction starts, so a
  read-then-update is atomic across threads and processes (SQLite has no row locks; FOR UPDATE
  is not emitted there).

Reads use :meth:`Database.read` (a deferred transaction on SQLite: never blocks under WAL).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from shardguard.coordinator.aftercommit import transaction_hooks
from shardguard.coordinator.rawsql import RawDatabase

__all__ = ["MIGRATIONS", "Database", "migrate"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Any constant: serialises concurrent migrations of replicas that start together.
_MIGRATION_LOCK = 0x5348_4744_0001

_log = logging.getLogger(__name__)


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # Take BEGIN into our own hands (below): pysqlite's implicit transactions would start
        # deferred and could not be made IMMEDIATE.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get("sg_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")


class Database:
    """One engine, with read and write transactions as context managers yielding ORM sessions."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            kwargs["pool_size"] = 20
            kwargs["max_overflow"] = 20
        else:
            kwargs["pool_size"] = 10
            kwargs["max_overflow"] = 30
            kwargs["pool_pre_ping"] = True
        self.engine = create_engine(url, **kwargs)
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":
            _sqlite_setup(self.engine)
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else None
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write_engine = self.engine.execution_options(sg_write=True)
        self._write = sessionmaker(self._write_engine, expire_on_commit=False)
        #: The hot paths' prebuilt statements, on raw connections of the same pool (rawsql).
        self.raw = RawDatabase(self.engine, self._write_lock)

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with self._read() as s, s.begin():
            yield s

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction; what :func:`aftercommit.after_commit` is given in it runs once
        it has committed."""
        if self._write_lock is None:
            with transaction_hooks(), self._write() as s, s.begin():
                yield s
            return
        # SQLite: one writer at a time anyway; queueing our own threads on a lock wakes the
        # next one as soon as the previous commits, where SQLite's busy handler would poll
        # with sleeps of up to 100 ms.
        with transaction_hooks(), self._write_lock, self._write() as s, s.begin():
            yield s

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def migrate(db: Database) -> None:
    """``alembic upgrade head`` on ``db`` (a PostgreSQL advisory lock keeps replicas in turn)."""
    cfg = _config()
    with db.engine.connect() as conn:
        if db.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK})
            conn.commit()
        try:
            current = MigrationContext.configure(conn).get_current_revision()
            conn.commit()
            if current != head_revision():
                _log.info("migrating the coordinator database from %s to head", current)
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                conn.commit()
        finally:
            if db.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK})
                conn.commit()
