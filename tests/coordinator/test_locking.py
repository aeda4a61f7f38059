"""Row locks that keep concurrent transactions honest: jobs that change a key's shares run alone
on it even when submitted on two replicas at the same moment (API.md §1.6, "Ordering per key"),
and a re-registration takes its locks in the documented order (node row, job row, its tasks).

SQLite runs one writer at a time, so there these hold by construction; the PostgreSQL runs are
the ones that matter.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from shardguard.coordinator.app import create_app
from shardguard.coordinator.settings import Settings

from .conftest import ADMIN, BOOT, FakeNode, run_dkg
from .test_events import sign_job

EXCLUSIVE = ("dkg", "refresh", "repair")


def _submit(client: TestClient, key_id: str, kind: str) -> int:
    if kind == "refresh":
        return client.post(f"/v1/keys/{key_id}/refresh", headers=ADMIN).status_code
    return client.post(f"/v1/keys/{key_id}/sign", json={"message_hex": "00"}, headers=ADMIN).status_code


def test_key_changing_jobs_submitted_at_once_on_two_replicas_never_run_beside_another(
    make_client: Callable[..., TestClient],
) -> None:
    """Each pair — refresh + refresh, refresh + sign — is submitted on two replicas at the same
    moment (a barrier). Before the key row was locked, both submits looked only at committed
    jobs and both started: on PostgreSQL most pairs ended up running side by side."""
    one, two = make_client(replica_id="r1"), make_client(replica_id="r2")
    nodes = [FakeNode(one, f"node-{x}") for x in "abc"]
    for n in nodes:
        assert n.register().status_code == 200
    pairs = [("refresh", "refresh"), ("refresh", "sign"), ("sign", "refresh")] * 3
    keys = [run_dkg(one, nodes) for _ in pairs]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for key_id, (first, second) in zip(keys, pairs, strict=True):
            barrier = threading.Barrier(2)

            def go(client: TestClient, kind: str, key_id: str = key_id, barrier: threading.Barrier = barrier) -> int:
                barrier.wait()
                return _submit(client, key_id, kind)

            codes = [f.result() for f in (pool.submit(go, one, first), pool.submit(go, two, second))]
            assert codes == [202, 202], codes
    for key_id, pair in zip(keys, pairs, strict=True):
        jobs = one.get("/v1/requests", params={"key_id": key_id, "limit": 10}, headers=ADMIN).json()
        running = [j["kind"] for j in jobs if j["status"] == "running"]
        queued = [j["kind"] for j in jobs if j["status"] == "queued"]
        assert sorted(running + queued) == sorted(pair), jobs
        # One of the two runs, the other waits its turn (whichever came first).
        assert len(running) == 1 and len(queued) == 1, (key_id, pair, running, queued)


def test_a_sign_burst_beside_a_refresh_submit_never_runs_with_it(make_client: Callable[..., TestClient]) -> None:
    """Signatures hold the key FOR SHARE (they run side by side); a refresh submitted in the
    middle of a burst of them, on the other replica, starts only with none running."""
    one, two = make_client(replica_id="r1"), make_client(replica_id="r2")
    nodes = [FakeNode(one, f"node-{x}") for x in "abc"]
    for n in nodes:
        assert n.register().status_code == 200
    key_id = run_dkg(one, nodes)
    barrier = threading.Barrier(5)

    def go(client: TestClient, kind: str) -> int:
        barrier.wait()
        return _submit(client, key_id, kind)

    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(go, one, "sign") for _ in range(4)] + [pool.submit(go, two, "refresh")]
        assert [f.result() for f in futures] == [202] * 5
    jobs = one.get("/v1/requests", params={"key_id": key_id, "status": "running"}, headers=ADMIN).json()
    kinds = [j["kind"] for j in jobs]
    assert kinds == ["refresh"] or (kinds and "refresh" not in kinds), kinds


@pytest.fixture
def pg_client(pg_url: str) -> Iterator[TestClient]:
    """A client on PostgreSQL only (the lock order below is PostgreSQL's to show)."""
    settings = Settings(db_url=pg_url, bootstrap_token=BOOT, sweep_interval=0, poll_interval=0.05)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_register_locks_the_job_row_before_its_tasks(pg_url: str, pg_client: TestClient) -> None:
    """A node re-registering with a new key fails its running jobs. It must lock each job row
    before the job's tasks, as a report does (job row, then its tasks): locking the tasks
    first, it could deadlock with a report of the same job. Here a transaction holds the job
    row, as a report would; the registration waits for it without having locked any task."""
    client = pg_client
    nodes = [FakeNode(client, f"node-{x}") for x in "abc"]
    for n in nodes:
        assert n.register().status_code == 200
    key_id = run_dkg(client, nodes)
    a, b, _c = nodes
    job = sign_job(client, key_id, [a.node_id, b.node_id])
    assert a.next_task() is not None and b.next_task() is not None
    with psycopg.connect(pg_url) as report, psycopg.connect(pg_url, autocommit=True) as watch:
        report.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (job,))
        new = FakeNode(client, a.node_id)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            registered = pool.submit(new.register)
            deadline = time.monotonic() + 20
            while not watch.execute("SELECT 1 FROM pg_locks WHERE NOT granted").fetchall():
                assert time.monotonic() < deadline and not registered.done(), "the registration never waited"
                time.sleep(0.02)
            # The report's next step: its tasks. Nothing holds them yet.
            try:
                report.execute("SELECT id FROM tasks WHERE job_id = %s FOR UPDATE NOWAIT", (job,))
            except psycopg.errors.LockNotAvailable:
                pytest.fail("the registration locked the job's tasks before the job row")
            report.commit()
            assert registered.result(timeout=30).json()["generation"] == 2
    got: dict[str, Any] = client.get(f"/v1/requests/{job}", headers=ADMIN).json()
    assert got["status"] == "failed" and got["error"]["reason"] == "node_restarted"
