"""The node event stream (POST /v1/nodes/{id}/events, /outbox) and sign?wait= (API.md §1.7–1.8).

Runs on SQLite and PostgreSQL (the ``client`` fixture). Every refusal is checked for its status,
code and field; one job's failure inside a batch must not touch another's messages.
"""

from __future__ import annotations

import base64
import concurrent.futures
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from shardguard.coordinator import wire

from .conftest import ADMIN, FakeNode, run_dkg, sign_result
from .test_api import err


def events(node: FakeNode, cursors: dict[str, int] | None = None, claim: int = 0, wait: float = 0, **kw: Any) -> httpx.Response:
    body = {"cursors": cursors or {}, "claim": claim, "wait": wait}
    return node.request("POST", f"/v1/nodes/{node.node_id}/events", body, **kw)


def outbox(
    node: FakeNode, messages: list[tuple[str, str, int, bytes]] = (), results: list[dict[str, Any]] = (), **kw: Any
) -> httpx.Response:  # type: ignore[assignment]
    body = {
        "messages": [{"job": j, "to": to, "seq": seq, "blob": base64.b64encode(b).decode()} for j, to, seq, b in messages],
        "results": list(results),
    }
    return node.request("POST", f"/v1/nodes/{node.node_id}/outbox", body, **kw)


def sign_job(client: TestClient, key_id: str, signers: list[str]) -> str:
    r = client.post(f"/v1/keys/{key_id}/sign", json={"message_hex": "00", "signers": signers}, headers=ADMIN)
    assert r.status_code == 202, r.text
    return str(r.json()["request_id"])


def claim_all(node: FakeNode, n: int) -> list[dict[str, Any]]:
    r = events(node, claim=n)
    assert r.status_code == 200, r.text
    return list(r.json()["tasks"])


def _unbundled(make_client: Callable[..., TestClient]) -> tuple[TestClient, list[FakeNode]]:
    """A coordinator where every request is its own job, started at once (no bundles, API.md
    §1.6), and its three nodes."""
    client = make_client(sign_inflight=0)
    nodes = [FakeNode(client, f"node-{c}") for c in "abc"]
    for n in nodes:
        assert n.register().status_code == 200
    return client, nodes


def test_tasks_are_handed_out_in_batches_and_once(make_client: Callable[..., TestClient]) -> None:
    client, nodes = _unbundled(make_client)
    key_id = run_dkg(client, nodes)
    a, b, _c = nodes
    jobs = [sign_job(client, key_id, [a.node_id, b.node_id]) for _ in range(3)]
    assert claim_all(a, 0) == []  # claim 0: messages only
    got = claim_all(a, 2)
    assert [t["job_id"] for t in got] == jobs[:2]  # oldest first, at most `claim`
    assert got[0]["you"] == {"node_id": a.node_id, "index": 1} and got[0]["kind"] == "sign"
    assert [t["job_id"] for t in claim_all(a, 5)] == jobs[2:]
    assert claim_all(a, 5) == []  # each task once
    assert a.next_task() is None  # the per-task long-poll sees them taken too


def test_messages_of_several_jobs_in_one_post(client: TestClient, nodes: list[FakeNode]) -> None:
    key_id = run_dkg(client, nodes)
    a, b, c = nodes
    j1 = sign_job(client, key_id, [a.node_id, b.node_id])
    j2 = sign_job(client, key_id, [a.node_id, b.node_id, c.node_id])
    claim_all(a, 2), claim_all(b, 2), claim_all(c, 2)
    r = outbox(a, [(j1, b.node_id, 1, b"one"), (j2, "*", 1, b"all"), (j2, c.node_id, 2, b"c only")])
    assert r.status_code == 200, r.text
    assert r.json() == {"jobs": {j1: {"accepted": 1, "duplicates": 0}, j2: {"accepted": 2, "duplicates": 0}}, "results": {}}
    # Re-posting the same bytes is a duplicate (retries are harmless).
    assert outbox(a, [(j1, b.node_id, 1, b"one")]).json()["jobs"][j1] == {"accepted": 0, "duplicates": 1}

    out = events(b, {j1: 0, j2: 0}).json()
    by_job = {j["job_id"]: j for j in out["jobs"]}
    assert [base64.b64decode(m["blob"]) for m in by_job[j1]["messages"]] == [b"one"]
    assert [base64.b64decode(m["blob"]) for m in by_job[j2]["messages"]] == [b"all"]  # not c's
    assert all(m["from"] == a.node_id for j in out["jobs"] for m in j["messages"])
    # Past the cursors there is nothing new, and a sender never reads its own messages.
    cursors = {j: by_job[j]["next_after"] for j in (j1, j2)}
    assert events(b, cursors).json()["jobs"] == []
    assert events(a, {j1: 0, j2: 0}).json()["jobs"] == []
    c_news = events(c, {j2: 0}).json()["jobs"]
    assert [base64.b64decode(m["blob"]) for m in c_news[0]["messages"]] == [b"all", b"c only"]


def test_one_jobs_refusal_leaves_the_others_alone(make_client: Callable[..., TestClient]) -> None:
    client, nodes = _unbundled(make_client)
    key_id = run_dkg(client, nodes)
    a, b, c = nodes
    j1 = sign_job(client, key_id, [a.node_id, b.node_id])
    j2 = sign_job(client, key_id, [a.node_id, b.node_id])
    claim_all(a, 2)
    assert outbox(a, [(j2, b.node_id, 7, b"first")]).status_code == 200
    r = outbox(
        a, [(j1, b.node_id, 1, b"fine"), (j2, c.node_id, 8, b"x"), (j2, b.node_id, 7, b"other bytes"), ("req_nope", "*", 1, b"x")]
    )
    assert r.status_code == 200, r.text
    jobs = r.json()["jobs"]
    assert jobs[j1] == {"accepted": 1, "duplicates": 0}
    assert jobs[j2]["error"]["status"] == 422 and jobs[j2]["error"]["field"] == "messages[1].to"  # c is not in j2
    assert jobs["req_nope"]["error"]["status"] == 404 and jobs["req_nope"]["error"]["code"] == "not_found"
    # Nothing of the refused job was stored: only "first" reaches b.
    news = {j["job_id"]: j for j in events(b, {j1: 0, j2: 0}).json()["jobs"]}
    assert [base64.b64decode(m["blob"]) for m in news[j2]["messages"]] == [b"first"]
    # A conflict names the message by its place in the whole post.
    r = outbox(a, [(j1, b.node_id, 2, b"ok"), (j2, b.node_id, 7, b"other bytes")])
    assert r.json()["jobs"][j2]["error"] | {"message": ""} == {
        "status": 409, "code": "conflict", "field": "messages[1].seq", "message": ""
    }  # fmt: skip


def test_results_ride_in_the_outbox(client: TestClient, nodes: list[FakeNode]) -> None:
    key_id = run_dkg(client, nodes)
    a, b, _c = nodes
    job = sign_job(client, key_id, [a.node_id, b.node_id])
    ta, tb = claim_all(a, 1)[0], claim_all(b, 1)[0]
    sig = sign_result(ta)
    r = outbox(a, results=[{"task_id": ta["task_id"], "status": "done", "result": {"signature": "NOT HEX"}}])
    assert r.json()["results"][ta["task_id"]]["error"]["field"] == "results[0].result.signature"
    r = outbox(a, results=[{"task_id": tb["task_id"], "status": "done", "result": sig}])
    assert r.json()["results"][tb["task_id"]]["error"]["status"] == 403  # b's task, not a's
    r = outbox(a, results=[{"task_id": ta["task_id"], "status": "done", "result": sig}])
    assert r.json()["results"][ta["task_id"]] == {"task_status": "done", "job_status": "running"}
    r = outbox(
        b,
        [(job, a.node_id, 1, b"late but fine")],
        results=[{"task_id": tb["task_id"], "status": "done", "result": sig}],
    )
    assert r.json()["results"][tb["task_id"]] == {"task_status": "done", "job_status": "done"}
    assert client.get(f"/v1/requests/{job}", headers=ADMIN).json()["result"] == sig
    # The finished job is reported once asked about; its late messages are refused with its status.
    news = events(a, {job: 0}).json()["jobs"]
    assert news[0]["job_status"] == "done"
    late = outbox(a, [(job, b.node_id, 9, b"too late")]).json()["jobs"][job]["error"]
    assert late["code"] == "job_not_running" and late["job_status"] == "done"


def test_unknown_and_foreign_jobs_look_the_same(client: TestClient, nodes: list[FakeNode]) -> None:
    key_id = run_dkg(client, nodes)
    a, b, c = nodes
    job = sign_job(client, key_id, [a.node_id, b.node_id])
    out = events(c, {job: 0, "req_nope": 0}).json()["jobs"]
    assert sorted((j["job_id"], j["job_status"], j["messages"]) for j in out) == [
        (job, "not_found", []),
        ("req_nope", "not_found", []),
    ]


def test_the_stream_wakes_on_a_message(client: TestClient, nodes: list[FakeNode]) -> None:
    key_id = run_dkg(client, nodes)
    a, b, _c = nodes
    job = sign_job(client, key_id, [a.node_id, b.node_id])
    claim_all(a, 1), claim_all(b, 1)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        t0 = time.monotonic()
        waiting = pool.submit(events, b, {job: 0}, 0, 10)
        time.sleep(0.3)
        assert outbox(a, [(job, b.node_id, 1, b"wake up")]).status_code == 200
        out = waiting.result(timeout=10).json()
    assert time.monotonic() - t0 < 5
    assert base64.b64decode(out["jobs"][0]["messages"][0]["blob"]) == b"wake up"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cursors": {f"req_{i}": 0 for i in range(257)}}, "cursors"),
        ({"claim": 65}, "claim"),
        ({"claim": -1}, "claim"),
        ({"wait": -1}, "wait"),
        ({"wait": 301}, "wait"),
        ({"cursors": {"req_1": -1}}, "cursors.req_1"),
        ({"cursors": {"bad id!": 0}}, "cursors.bad id!.[key]"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_events_refuses_malformed_bodies(client: TestClient, nodes: list[FakeNode], body: dict[str, Any], field: str) -> None:
    a = nodes[0]
    r = a.request("POST", f"/v1/nodes/{a.node_id}/events", body)
    e = err(r, 422, "validation_error")
    assert e["field"] == field or e["field"].startswith(field.split(".")[0])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": [{"job": "req_1", "to": "node-b", "seq": 0, "blob": "!!"}]}, "messages[0].blob"),
        ({"messages": [{"job": "req_1", "to": "NODE B", "seq": 0, "blob": "AA=="}]}, "messages[0].to"),
        ({"messages": [{"job": "req_1", "to": "node-b", "seq": -1, "blob": "AA=="}]}, "messages[0].seq"),
        ({"messages": [{"to": "node-b", "seq": 0, "blob": "AA=="}]}, "messages[0].job"),
        ({"results": [{"task_id": "t", "status": "maybe"}]}, "results[0].status"),
        ({"messages": [{"job": "req_1", "to": "node-b", "seq": i, "blob": "AA=="} for i in range(1025)]}, "messages"),
    ],
)
def test_outbox_refuses_malformed_bodies(client: TestClient, nodes: list[FakeNode], body: dict[str, Any], field: str) -> None:
    a = nodes[0]
    e = err(a.request("POST", f"/v1/nodes/{a.node_id}/outbox", body), 422, "validation_error")
    assert e["field"] == field


def test_stream_requests_are_authenticated(client: TestClient, nodes: list[FakeNode]) -> None:
    a, b, _c = nodes
    err(events(a, tamper=lambda h: h.update({wire.HEADER_SIGNATURE: "00" * 64})), 401, "bad_signature")
    err(b.request("POST", f"/v1/nodes/{a.node_id}/events", {"claim": 1}), 403, "forbidden", "node_id")  # b for a
    err(b.request("POST", f"/v1/nodes/{a.node_id}/outbox", {"messages": []}), 403, "forbidden", "node_id")
    nonce = b"\x01" * 32
    assert events(a, nonce=nonce).status_code == 200
    err(events(a, nonce=nonce), 401, "replayed_nonce")
    err(client.post(f"/v1/nodes/{a.node_id}/outbox", json={"messages": []}), 401, "missing_signature")


def test_an_empty_message_or_an_oversized_one_is_refused_per_job(client: TestClient, nodes: list[FakeNode]) -> None:
    key_id = run_dkg(client, nodes)
    a, b, _c = nodes
    job = sign_job(client, key_id, [a.node_id, b.node_id])
    claim_all(a, 1)
    assert outbox(a, [(job, b.node_id, 1, b"")]).json()["jobs"][job]["error"]["field"] == "messages[0].blob"


def test_sign_with_wait_answers_with_the_finished_request(client: TestClient, nodes: list[FakeNode]) -> None:
    key_id = run_dkg(client, nodes)
    a, b, _c = nodes
    sigs: list[dict[str, Any]] = []

    def play() -> None:
        deadline = time.monotonic() + 10
        pending = {a.node_id: a, b.node_id: b}
        while pending and time.monotonic() < deadline:
            for nid, n in list(pending.items()):
                tasks = claim_all(n, 1)
                if tasks:
                    if not sigs:
                        sigs.append(sign_result(tasks[0]))
                    result = {"task_id": tasks[0]["task_id"], "status": "done", "result": sigs[0]}
                    assert outbox(n, results=[result]).status_code == 200
                    del pending[nid]
            time.sleep(0.05)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        player = pool.submit(play)
        r = client.post(
            f"/v1/keys/{key_id}/sign",
            params={"wait": 10},
            json={"message_hex": "00", "signers": [a.node_id, b.node_id]},
            headers=ADMIN,
        )
        player.result(timeout=15)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "done" and r.json()["result"] == sigs[0]
    err(
        client.post(f"/v1/keys/{key_id}/sign", params={"wait": -1}, json={"message_hex": "00"}, headers=ADMIN),
        422,
        "validation_error",
        "wait",
    )
