"""A job's end is counted once its transaction commits, never when it rolls back (review
finding: a transaction retried after a rollback counted its job twice)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shardguard.coordinator.aftercommit import after_commit
from shardguard.coordinator.service import _Ended

from .conftest import coord


def _finished(client: TestClient) -> float:
    sample = coord(client).metrics.jobs_finished.labels("sign", "done", "")
    return float(sample._value.get())


@pytest.mark.parametrize("raw", [False, True])
def test_a_job_end_counts_only_once_its_transaction_committed(client: TestClient, raw: bool) -> None:
    c = coord(client)
    t0 = dt.datetime.now(dt.UTC)
    ended = _Ended("sign", t0, t0 + dt.timedelta(seconds=1))
    write: Callable[[], Any] = c.db.raw.write if raw else c.db.write
    before = _finished(client)
    with pytest.raises(RuntimeError), write():
        c._record_end(ended, "done", "")
        raise RuntimeError("rolled back")
    assert _finished(client) == before
    with write():
        c._record_end(ended, "done", "")
        assert _finished(client) == before  # not before the commit
    assert _finished(client) == before + 1


def test_hooks_run_in_order_and_at_once_outside_a_transaction(client: TestClient) -> None:
    seen: list[int] = []
    with coord(client).db.write():
        after_commit(lambda: seen.append(1))
        after_commit(lambda: seen.append(2))
        assert seen == []
    after_commit(lambda: seen.append(3))
    assert seen == [1, 2, 3]
