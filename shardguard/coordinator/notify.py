"""Wake-ups across replicas: PostgreSQL LISTEN/NOTIFY.

Every replica publishes the wake-up keys of its writes (``node:<id>``, ``inbox:<node>:<job>``,
``job:<id>``) on one channel and listens to the others'. This only makes long-polls answer
sooner: correctness never depends on a notification (they may be lost, e.g. while a listener
reconnects), because every long-poll re-reads the database at least every ``poll_interval``.

Payload: ``<replica id>|<count or empty>|<key>``; a replica ignores its own.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from typing import Protocol

import psycopg
from sqlalchemy.engine import make_url

__all__ = ["CHANNEL", "PgBridge"]

CHANNEL = "shardguard_coordinator"
_BATCH = 64

_log = logging.getLogger(__name__)


class _Local(Protocol):
    def notify(self, key: str, n: int | None = None) -> None: ...


def conninfo(sqlalchemy_url: str) -> str:
    """A psycopg connection string for an SQLAlchemy ``postgresql+psycopg://`` URL."""
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


class PgBridge:
    def __init__(self, sqlalchemy_url: str, local: _Local, replica_id: str) -> None:
        self._dsn = conninfo(sqlalchemy_url)
        self._local = local
        self._me = replica_id
        self._out: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target, name in ((self._listen, "listen"), (self._publish_loop, "publish")):
            t = threading.Thread(target=target, name=f"shardguard-pg-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        # The publisher sends our own "stop" note before it ends, which wakes the listener at
        # once; if the note is missed, the listener sees the flag within a second.
        self._stop.set()
        self._out.put(None)
        for t in self._threads:
            t.join(timeout=5)

    def publish(self, key: str, n: int | None) -> None:
        """Queue a wake-up for the other replicas (sent by a background thread, batched)."""
        if self._threads and not self._stop.is_set():
            self._out.put(f"{self._me}|{'' if n is None else n}|{key}")

    def _publish_loop(self) -> None:
        conn: psycopg.Connection[tuple[object, ...]] | None = None
        ending = False
        while not ending:
            item = self._out.get()
            batch = [item]
            while len(batch) < _BATCH and batch[-1] is not None:
                try:
                    batch.append(self._out.get_nowait())
                except queue.Empty:
                    break
            if batch[-1] is None:
                ending = True
                batch[-1] = f"{self._me}|stop|"
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self._dsn, autocommit=True)
                sql = "SELECT " + ", ".join(["pg_notify(%s, %s)"] * len(batch))
                conn.execute(sql.encode(), [x for payload in batch for x in (CHANNEL, payload)])
            except psycopg.Error as e:
                _log.warning("cannot publish wake-ups to other replicas (they will poll): %s", e)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
                if not ending:
                    self._stop.wait(1.0)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            if note.payload == f"{self._me}|stop|":
                                return
                            self._deliver(note.payload)
            except psycopg.Error as e:
                if not self._stop.is_set():
                    _log.warning("wake-up listener lost its connection (long-polls will poll): %s", e)
                    self._stop.wait(1.0)

    def _deliver(self, payload: str) -> None:
        origin, _, rest = payload.partition("|")
        count, _, key = rest.partition("|")
        if origin == self._me or not key:
            return
        self._local.notify(key, int(count) if count.isdigit() else None)
