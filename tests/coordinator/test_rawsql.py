"""The raw DB-API path for prebuilt statements (coordinator/rawsql.py) gives exactly what
SQLAlchemy's own execution gives, on SQLite and PostgreSQL: values, types (UTC datetimes, JSON),
literals, expanding IN lists, RETURNING, errors, and commit/rollback."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy import bindparam, insert, select
from sqlalchemy.exc import IntegrityError

from shardguard.coordinator import service as S
from shardguard.coordinator.db import Database, migrate
from shardguard.coordinator.models import Job, Key, MailboxMessage
from shardguard.coordinator.rawsql import RawDatabase
from shardguard.coordinator.settings import Settings

NOW = dt.datetime(2026, 12, 1, 3, 4, 5, 678901, tzinfo=dt.UTC)
_INSERT_KEY = insert(Key)


@pytest.fixture
def dbs(db_url: str) -> Iterator[tuple[Database, RawDatabase]]:
    db = Database(Settings(db_url=db_url).database_url())
    migrate(db)
    yield db, db.raw
    db.dispose()


def _job(job_id: str, **over: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": job_id, "kind": "sign", "key_id": "k1", "params": {"message_hex": "00", "n": [1, 2]}, "status": "running",
        "result": None, "error": None, "participants": [{"node_id": "a", "index": 1}, {"node_id": "b", "index": 2}],
        "instance": "ab" * 32, "epoch": 0, "attempts": 1, "lease_owner": "r1", "lease_until": NOW, "next_msg_seq": 1,
        "mailbox_bytes": 0, "requested_by": None, "created_at": NOW, "updated_at": NOW, "started_at": NOW,
    }  # fmt: skip
    row.update(over)
    return row


def _seed(raw: RawDatabase) -> None:
    with raw.write() as c:
        c.insert(
            _INSERT_KEY,
            {"id": "k1", "scheme": "ed25519", "threshold": 2, "node_ids": ["a", "b", "c"], "public_key": None,
             "public_package": None, "epoch": 0, "status": "active", "created_at": NOW, "updated_at": NOW},
        )  # fmt: skip
        c.insert(S._INSERT_JOB, [_job("j1"), _job("j2", status="queued", kind="refresh")])
        c.insert(
            S._INSERT_MESSAGE,
            [
                {"job_id": "j1", "job_seq": i, "from_node": "a", "to_node": "b" if i != 3 else "*", "seq": i,
                 "blob": bytes([i]) * 5, "created_at": NOW}
                for i in range(1, 6)
            ],
        )  # fmt: skip


def test_rows_equal_sqlalchemy_execution(dbs: tuple[Database, RawDatabase]) -> None:
    db, raw = dbs
    _seed(raw)
    cases = [
        (S._REQUEST, {"job": "j1"}),
        (S._JOBS_OF, {"jobs": ["j1", "j2", "nope"]}),
        (S._NEWS, {"job": "j1", "after": 1, "node": "b", "limit": 3}),
        (S._SENT_BEFORE, {"job": "j1", "node": "a", "seqs": [2, 4, 9]}),
        (S._KEY_CHANGING, {"key": "k1"}),  # literal IN list (EXCLUSIVE_KINDS) and LIMIT 1
        (S._QUEUED_JOB, {"key": "k1"}),
        (S._KEY_FOR_SIGN, {"key": "k1"}),
    ]
    for stmt, params in cases:
        with db.engine.connect() as conn:
            want = [tuple(r) for r in conn.execute(stmt, params)]
        with raw.read() as c:
            got = c.execute(stmt, params)
        assert [tuple(r) for r in got] == want, stmt
        assert want, f"no rows: the case proves nothing ({stmt})"
    with raw.read() as c:
        job = c.first(S._REQUEST, {"job": "j1"})
        news = c.execute(S._NEWS, {"job": "j1", "after": 0, "node": "b", "limit": 9})
    assert job.created_at == NOW and job.created_at.tzinfo is dt.UTC  # microseconds and zone kept
    assert job.params == {"message_hex": "00", "n": [1, 2]}
    assert [m.job_seq for m in news] == [1, 2, 3, 4, 5]


def test_writes_are_read_back_by_the_orm(dbs: tuple[Database, RawDatabase]) -> None:
    db, raw = dbs
    _seed(raw)
    later = NOW + dt.timedelta(seconds=1)
    with raw.write() as c:
        c.execute(S._JOB_DONE, {"job": "j1", "res": {"signature": "ff", "x": None}, "now": later})
    with db.read() as s:
        job = s.get(Job, "j1")
        assert job is not None
        assert (job.status, job.result, job.finished_at, job.updated_at) == ("done", {"signature": "ff", "x": None}, later, later)
        assert s.scalar(select(MailboxMessage.blob).where(MailboxMessage.job_seq == 2)) == b"\x02" * 5


def test_integrity_error_and_rollback(dbs: tuple[Database, RawDatabase]) -> None:
    _db, raw = dbs
    _seed(raw)
    dup = {"job_id": "j1", "job_seq": 9, "from_node": "a", "to_node": "b", "seq": 1, "blob": b"x", "created_at": NOW}
    with pytest.raises(IntegrityError), raw.write() as c:
        c.execute(S._JOB_DONE, {"job": "j1", "res": {}, "now": NOW})
        c.insert(S._INSERT_MESSAGE, dup)  # (job, from, to, seq) already taken
    with raw.read() as c:  # the whole transaction was rolled back
        assert c.first(S._REQUEST, {"job": "j1"}).status == "running"


def test_returning_and_empty_results(dbs: tuple[Database, RawDatabase]) -> None:
    _db, raw = dbs
    _seed(raw)
    stmt = select(Job.id).where(Job.id == bindparam("job"))
    with raw.read() as c:
        assert c.first(stmt, {"job": "nope"}) is None
        assert c.scalar(stmt, {"job": "j2"}) == "j2"
        assert c.execute(S._JOBS_OF, {"jobs": ["nope"]}) == []


def test_refuses_what_it_cannot_do(dbs: tuple[Database, RawDatabase]) -> None:
    _db, raw = dbs
    with pytest.raises(TypeError, match="no value given"), raw.write() as c:
        c.insert(S._INSERT_JOB, {"id": "j9"})  # Python-side defaults would not run
    with pytest.raises(TypeError, match="no value"), raw.read() as c:
        c.execute(S._REQUEST, {})


def test_in_lists_expanded_once_per_length_give_sqlalchemys_rows(
    dbs: tuple[Database, RawDatabase], monkeypatch: pytest.MonkeyPatch
) -> None:
    """IN lists: the expansion is built by SQLAlchemy once per tuple of list lengths and then
    reused; every call still returns exactly what SQLAlchemy's own execution returns."""
    db, raw = dbs
    _seed(raw)
    compiled = raw.prepared(S._SENT_BEFORE, None).compiled
    calls = []
    real = type(compiled).construct_expanded_state

    def spy(self: object, *a: object, **k: object) -> object:
        calls.append(1)
        return real(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(type(compiled), "construct_expanded_state", spy)
    lists = [[1], [2, 4, 9], [5, 3, 1], [9], [], [1, 2, 3, 4, 5], [4, 2, 4]]
    for seqs in lists * 2:
        params = {"job": "j1", "node": "a", "seqs": seqs}
        with db.engine.connect() as conn:
            want = [tuple(r) for r in conn.execute(S._SENT_BEFORE, params)]
        with raw.read() as c:
            got = [tuple(r) for r in c.execute(S._SENT_BEFORE, params)]
        assert got == want, seqs
    with raw.read() as c:
        n = len(calls)
        for seqs in lists:
            c.execute(S._SENT_BEFORE, {"job": "j1", "node": "a", "seqs": seqs})
        assert len(calls) == n  # every length seen before: no expansion rebuilt
        c.execute(S._SENT_BEFORE, {"job": "j1", "node": "a", "seqs": list(range(1, 12))})
        assert len(calls) == n + 1


def test_in_lists_missing_or_not_a_list(dbs: tuple[Database, RawDatabase]) -> None:
    """A missing IN list is an error even once an empty one was seen (it must never act as an
    empty list), and a set or tuple is bound as SQLAlchemy binds it."""
    db, raw = dbs
    _seed(raw)
    with raw.read() as c:
        assert c.execute(S._SENT_BEFORE, {"job": "j1", "node": "a", "seqs": []}) == []
    with pytest.raises(TypeError, match="seqs"), raw.read() as c:
        c.execute(S._SENT_BEFORE, {"job": "j1", "node": "a"})
    with pytest.raises(TypeError, match="job"), raw.read() as c:  # a plain bind, on the cached plan
        c.execute(S._SENT_BEFORE, {"node": "a", "seqs": []})
    for seqs in ({2, 4}, (2, 4), [2, 4]):
        params = {"job": "j1", "node": "a", "seqs": seqs}
        with db.engine.connect() as conn:
            want = sorted(tuple(r) for r in conn.execute(S._SENT_BEFORE, params))
        with raw.read() as c:
            assert sorted(tuple(r) for r in c.execute(S._SENT_BEFORE, params)) == want and want
