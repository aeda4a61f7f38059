"""Tasks claimed for a node's event stream in the transaction that queues them
(``Coordinator._hand_over``): only for a stream open on the event loop that queues them, with
its identity key, within its room; every other node is told a task waits, as before."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient

from .conftest import ADMIN, FakeNode, coord, run_dkg, sign_result
from .test_stream import Stream, stream


def report(s: Stream, task: dict[str, Any]) -> list[dict[str, Any]]:
    """Post ``task``'s result; the tasks pushed until its ack (kept, unlike ``Stream.outbox``)."""
    seq = s.frame(
        "outbox", {"messages": [], "results": [{"task_id": task["task_id"], "status": "done", "result": sign_result(task)}]}
    )
    tasks: list[dict[str, Any]] = []
    while True:
        frame = s.ws.receive_json()
        if frame["op"] == "ack":
            assert frame["seq"] == seq and "error" not in frame, frame
            return tasks
        tasks += frame.get("tasks") or []


@dataclass
class Taker:
    identity: bytes
    claim: int = 4
    thread: int = field(default_factory=threading.get_ident)
    admitted: dict[str, str] = field(default_factory=dict)
    taken: list[dict[str, Any]] = field(default_factory=list)

    def take(self, tasks: list[dict[str, Any]]) -> None:
        self.claim -= len(tasks)
        self.taken += tasks


def _identity(node: FakeNode) -> bytes:
    return bytes(node.keys.card().identity_public_key)


@pytest.mark.parametrize("kind", ["live", "stale key", "other thread", "no room"])
def test_a_task_is_handed_only_to_a_live_stream_of_this_loop_with_room_and_its_key(
    client: TestClient, nodes: list[FakeNode], monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    key_id = run_dkg(client, nodes)
    a, b, _c = nodes
    service = coord(client)
    taker = {
        "live": Taker(_identity(a)),
        "stale key": Taker(b"\x01" * 32),
        "other thread": Taker(_identity(a), thread=0),
        "no room": Taker(_identity(a), claim=0),
    }[kind]
    told: list[str] = []
    notify = service.notify
    monkeypatch.setattr(service, "notify", lambda k, n=None: (told.append(k), notify(k, n)))
    monkeypatch.setitem(service.takers, a.node_id, taker)
    # Submitted on this (the test's) thread, as the app's loop submits inline on SQLite.
    request_id = service.submit_sign(
        key_id, digest=None, message=b"\x00", path=None, signers=[a.node_id, b.node_id], requested_by="test"
    )["request_id"]
    assert f"node:{b.node_id}" in told  # no stream: told, as before
    claimed_for_a = service.claimed_tasks(a.node_id)
    if kind == "live":
        (task,) = taker.taken
        assert task["job_id"] == request_id and task["you"]["node_id"] == a.node_id
        assert taker.claim == 3 and f"node:{a.node_id}" not in told
        assert [t["task_id"] for t in claimed_for_a] == [task["task_id"]]  # claimed, in the same commit
        assert a.next_task(wait=0) is None  # nothing queued left for a
    else:
        assert taker.taken == [] and f"node:{a.node_id}" in told
        assert claimed_for_a == []
        task = a.next_task(wait=0)  # still queued: its own claim takes it
        assert task is not None and task["job_id"] == request_id


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_next_jobs_tasks_reach_open_streams_without_a_claim_of_their_own(
    client: TestClient, nodes: list[FakeNode], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite (the hot paths inline on the loop): a signing started by a submission, and the
    bundle started by the end of the job in flight, are pushed to both signers' streams with
    no claim transaction of the streams' own; a stream without room is handed nothing and
    claims its task itself once it has room again."""
    key_id = run_dkg(client, nodes)
    a, b, _c = nodes
    service = coord(client)
    claims: list[str] = []
    claim_tasks = service.claim_tasks

    def counting(node_id: str, *args: Any, **kwargs: Any) -> Any:
        out = claim_tasks(node_id, *args, **kwargs)
        if out:
            claims.append(node_id)
        return out

    monkeypatch.setattr(service, "claim_tasks", counting)

    def sign(message: str) -> str:
        r = client.post(
            f"/v1/keys/{key_id}/sign", json={"message_hex": message, "signers": [a.node_id, b.node_id]}, headers=ADMIN
        )
        assert r.status_code == 202, r.text
        return str(r.json()["request_id"])

    with stream(client, a) as sa, stream(client, b) as sb:
        sa.want(claim=2)
        sb.want(claim=4)
        first = sign("01")
        ta = sa.receive("events")["tasks"]
        tb = sb.receive("events")["tasks"]
        assert [t["job_id"] for t in ta] == [first] == [t["job_id"] for t in tb]
        # Two more wait behind the one in flight; its end starts them as one bundle.
        sign("02")
        sign("03")
        report(sa, ta[0])
        (bundle_b,) = report(sb, tb[0])  # the last report: what it started may come before its ack
        (bundle_a,) = sa.receive("events")["tasks"]
        assert bundle_a["kind"] == "bundle" and bundle_a["job_id"] == bundle_b["job_id"]
        assert claims == []  # every task so far was claimed where it was queued
        # a has no room left (it asked for two): the next job's task waits for a's own claim.
        report(sa, bundle_a)
        assert report(sb, bundle_b) == []
        last = sign("04")
        (tb2,) = sb.receive("events")["tasks"]
        assert tb2["job_id"] == last and claims == []
        sa.want(claim=1)
        (ta2,) = sa.receive("events")["tasks"]
        assert ta2["job_id"] == last and claims == [a.node_id]


def test_a_node_in_two_jobs_of_one_dispatch_takes_its_tasks_once(client: TestClient, nodes: list[FakeNode]) -> None:
    """Review finding: a dispatch that starts two jobs sharing a node announced each job's
    nodes, so that node's stream took the same claimed tasks twice (its room counted twice)."""
    a, b, c = nodes
    service = coord(client)
    taker = Taker(_identity(a))
    service.takers[a.node_id] = taker
    told: list[str] = []
    service.notify = lambda k, n=None: told.append(k)  # type: ignore[method-assign]
    try:
        handed = {a.node_id: [{"task_id": "t1"}, {"task_id": "t2"}]}
        service._announce([a.node_id, b.node_id], handed)
        service._announce([a.node_id, c.node_id], handed)
    finally:
        del service.takers[a.node_id]
    assert [t["task_id"] for t in taker.taken] == ["t1", "t2"] and taker.claim == 2
    assert told == [f"node:{b.node_id}", f"node:{a.node_id}", f"node:{c.node_id}"]
