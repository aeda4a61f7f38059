"""Lock order between a node asking for witnesses and a report ending its witness job, on
PostgreSQL (SQLite has one writer at a time: no such interleaving there)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shardguard.coordinator.service import NodeIdentity

from .conftest import FakeNode, coord, run_dkg


@pytest.fixture
def db_url(pg_url: str) -> str:
    return pg_url


class _Entering:
    """A lock that calls ``on_enter`` before it is taken."""

    def __init__(self, real: Any, on_enter: Callable[[], None]) -> None:
        self.real, self.on_enter = real, on_enter

    def __enter__(self) -> Any:
        self.on_enter()
        return self.real.__enter__()

    def __exit__(self, *exc: object) -> Any:
        return self.real.__exit__(*exc)


def test_a_witness_ask_never_deadlocks_with_the_report_ending_its_job(make_client: Callable[..., TestClient]) -> None:
    """Review finding: a report ending node-a's witness job holds the job row, then takes the
    key row; node-a asking again held the key row, then waited for the job row — PostgreSQL
    aborted one of them (DeadlockDetected). The ask now skips a job row another transaction
    holds, taking that job as pending: both succeed."""
    client = make_client(witness_restart=0.0, witness_interval=0.0)
    nodes = [FakeNode(client, f"node-{c}") for c in "abc"]
    for n in nodes:
        assert n.register().status_code == 200
    run_dkg(client, nodes, "ed25519")
    c = coord(client)
    a = nodes[0]
    (witness,) = a.request("POST", f"/v1/nodes/{a.node_id}/witness", {}).json()["jobs"]
    tasks = {n.node_id: n.next_task() for n in nodes}
    assert all(t is not None and t["kind"] == "witness" for t in tasks.values()), tasks
    for n in nodes[:2]:
        assert n.report(tasks[n.node_id]["task_id"], result={}).status_code == 200
    job_held, key_held = threading.Event(), threading.Event()
    complete = c._complete_job

    def complete_then_wait(*args: Any, **kwargs: Any) -> Any:
        out = complete(*args, **kwargs)
        job_held.set()  # the report holds the job row ...
        key_held.wait(5)  # ... until the ask holds the key row
        return out

    c._complete_job = complete_then_wait  # type: ignore[method-assign]
    c._witness_lock = _Entering(c._witness_lock, lambda: key_held.set() if threading.current_thread().name == "ask" else None)  # type: ignore[assignment]
    out: dict[str, Any] = {}
    last = nodes[2]

    def report() -> None:
        try:
            out["report"] = c.post_result(tasks[last.node_id]["task_id"], last.node_id, "done", {}, None,
                                          last.keys.card().identity_public_key)  # fmt: skip
        except Exception as e:
            out["report"] = repr(e)

    def ask() -> None:
        job_held.wait(5)
        try:
            out["ask"] = c.request_witness(NodeIdentity(a.node_id, a.keys.card().identity_public_key))
        except Exception as e:
            out["ask"] = repr(e)

    threads = [threading.Thread(target=report, name="report"), threading.Thread(target=ask, name="ask")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert out["report"] == {"task_status": "done", "job_status": "done"}, out
    assert out["ask"] == {"jobs": [witness]}, out  # the job being ended, taken as pending
