"""The node's event stream over its WebSocket, against the real coordinator app under uvicorn:
tasks and messages pushed, outbox frames acknowledged, a lost connection re-opened with a new
signed handshake (what was not acknowledged is sent again), and the HTTP fallback when the
coordinator has no stream endpoint."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from shardguard.coordinator.app import create_app
from shardguard.coordinator.settings import Settings
from shardguard.node.link import CoordinatorLink, CoordinatorRefused, EventStream

from ..coordinator.conftest import ADMIN, BOOT, FakeNode, run_dkg, sign_result
from .test_link import ScriptedCoordinator, until


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    with _serving(tmp_path) as url:
        yield url


@contextlib.contextmanager
def _serving(tmp_path: Path, **settings_kw: Any) -> Iterator[str]:
    settings = Settings(
        db_url=f"sqlite:///{tmp_path / 'c.sqlite3'}", bootstrap_token=BOOT, sweep_interval=0, poll_interval=0.1, **settings_kw
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(settings), log_level="warning", lifespan="on", ws="websockets-sansio")
    srv = uvicorn.Server(config)
    t = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    until(lambda: srv.started, 10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        t.join(10)


@contextlib.contextmanager
def streaming(
    server: str, *, attachments: bool = True
) -> Iterator[tuple[httpx.Client, FakeNode, FakeNode, str, EventStream, list[Mapping[str, Any]]]]:
    """node-a and node-b registered with a FROST key; node-a's EventStream running (the tasks
    it is handed collected in the list), node-b a hand-driven FakeNode. ``attachments``: the
    stream offers binary frames (API.md §1.11), else it speaks JSON as a node before them."""
    with httpx.Client(base_url=server) as http:
        a, b = FakeNode(http, "node-a"), FakeNode(http, "node-b")
        for n in (a, b):
            assert n.register().status_code == 200
        key_id = run_dkg(http, [a, b])
        tasks: list[Mapping[str, Any]] = []
        link = CoordinatorLink(server, a.keys, offer_attachments=attachments)
        s = EventStream(link, a.node_id, on_task=tasks.append, free_slots=lambda: 4)
        s.start()
        try:
            yield http, a, b, key_id, s, tasks
        finally:
            s.stop()
            link.close()


@pytest.mark.parametrize("attachments", [True, False], ids=["attached", "json"])
def test_stream_end_to_end_with_a_reconnect(server: str, caplog: pytest.LogCaptureFixture, attachments: bool) -> None:
    caplog.set_level(logging.INFO, logger="shardguard.node")
    with streaming(server, attachments=attachments) as (http, a, b, key_id, s, tasks):
        r = http.post(f"/v1/keys/{key_id}/sign", json={"message_hex": "00", "signers": ["node-a", "node-b"]}, headers=ADMIN)
        job = r.json()["request_id"]
        until(lambda: len(tasks) == 1)  # pushed, no long-poll
        assert s._ws_attached is attachments  # the coordinator accepts the offer
        assert _gauge(http, "shardguard_stream_attached_connections") == (1.0 if attachments else 0.0)
        assert _gauge(http, "shardguard_stream_connections") == 1.0
        task_b = b.next_task()
        assert task_b is not None and tasks[0]["job_id"] == job == task_b["job_id"]
        s.open(job)
        s.post(job, [(b.node_id, b"one")])
        assert _received(b, job, 1) == [b"one"]
        b.send(job, [(a.node_id, 1, b"back")])
        assert s.fetch(job, 0, 5.0)[0][1:] == (b.node_id, b"back")

        s._ws.close()  # the connection drops: a new signed handshake, then on as before  # type: ignore[union-attr]
        s.post(job, [(b.node_id, b"two")])
        assert _received(b, job, 2) == [b"one", b"two"]
        # The new connection pushed the unreported task again (API.md §1.11): run once.
        until(lambda: s._ws is not None)
        assert s._ws_attached is attachments
        until(lambda: "pushed again" in caplog.text)
        assert len(tasks) == 1
        result = sign_result(task_b)  # the coordinator checks reported signatures
        b.report(task_b["task_id"], result=result)
        ack = s.report(tasks[0]["task_id"], {"status": "done", "result": result, "error": None})
        assert ack == {"task_status": "done", "job_status": "done"}
        # A signing job is not followed after our result (API.md §1.11): its end came in the ack.


def test_a_node_offering_attachments_to_a_coordinator_that_declines_speaks_json(tmp_path: Path) -> None:
    """A coordinator from before attachments (or set not to accept them) does not pick the
    subprotocol: the node's frames and the coordinator's stay JSON, and everything arrives."""
    with _serving(tmp_path, stream_attachments=False) as url, streaming(url) as (http, a, b, key_id, s, tasks):
        r = http.post(f"/v1/keys/{key_id}/sign", json={"message_hex": "00", "signers": ["node-a", "node-b"]}, headers=ADMIN)
        job = r.json()["request_id"]
        until(lambda: len(tasks) == 1)
        assert b.next_task() is not None  # b claims its task: its messages are taken
        assert s._link.offer_attachments and not s._ws_attached
        assert _gauge(http, "shardguard_stream_attached_connections") == 0.0
        s.open(job)
        s.post(job, [(b.node_id, b"one")])
        assert _received(b, job, 1) == [b"one"]
        b.send(job, [(a.node_id, 1, b"back")])
        assert s.fetch(job, 0, 5.0)[0][1:] == (b.node_id, b"back")


def _gauge(http: httpx.Client, name: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} in /metrics")


def _want_frames(http: httpx.Client) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith('shardguard_stream_frames_total{op="want"}'):
            return float(line.split()[-1])
    return 0.0


def test_a_want_only_when_the_coordinator_needs_one(server: str) -> None:
    """The coordinator follows the job of every task it pushes until the job ends and counts
    the room down (API.md §1.11): the node does not send a want per task handed out and per
    job closed, only when the room the coordinator counts falls below half of its own; every
    job's messages still arrive."""
    with streaming(server) as (http, a, b, key_id, s, tasks):
        until(lambda: _want_frames(http) == 1)  # the first, on connecting
        body = {"message_hex": "00", "signers": ["node-a", "node-b"]}
        for i in range(8):
            r = http.post(f"/v1/keys/{key_id}/sign", json=body, headers=ADMIN)
            job = r.json()["request_id"]
            until(lambda: len(tasks) == i + 1)
            task_b = b.next_task()
            assert task_b is not None and task_b["job_id"] == job == tasks[i]["job_id"]
            b.send(job, [(a.node_id, 1, b"to a")])
            assert s.fetch(job, 0, 5.0)[0][1:] == (b.node_id, b"to a")  # pushed: the job is followed
            result = sign_result(task_b)  # the coordinator checks reported signatures
            b.report(task_b["task_id"], result=result)
            assert s.report(tasks[i]["task_id"], {"status": "done", "result": result, "error": None})["job_status"] == "done"
            s.close(job)
        # Room 4, counted down per task: a want at 1 left (1 * 2 < 4), i.e. every 3 tasks.
        # Before: two per task (17 here).
        time.sleep(0.3)
        assert _want_frames(http) == 1 + 8 // 3


def _received(node: FakeNode, job: str, n: int) -> list[bytes]:
    end = time.monotonic() + 5
    while True:
        msgs = node.inbox(job).json()["messages"]
        got = [base64.b64decode(m["blob"]) for m in msgs]
        if len(got) >= n or time.monotonic() > end:
            return got
        time.sleep(0.02)


class NoStreamCoordinator(ScriptedCoordinator):
    def open_stream(self, node_id: str) -> Any:
        raise CoordinatorRefused("GET", f"/v1/nodes/{node_id}/stream", 404, "not found")


def test_falls_back_to_http_without_a_stream_endpoint() -> None:
    coord = NoStreamCoordinator()
    s = EventStream(coord, "node-a", on_task=lambda t: None, free_slots=lambda: 4, poll=0.05)  # type: ignore[arg-type]
    s.start()
    try:
        s.open("req_1")
        s.post("req_1", [("node-b", b"one")])
        until(lambda: len(coord.posts) == 1)  # through POST …/outbox
        until(lambda: len(coord.events) >= 1)  # and the long-poll
    finally:
        s.stop()


def test_the_want_says_which_peers_evidence_the_node_holds_and_tasks_name_it_by_digest(server: str) -> None:
    """A change of the peers the node holds admissions for (admission.Admissions.advertised)
    sends a want within a receive timeout; the tasks then pushed name that peer's evidence, and
    the node's own, by SHA-256 instead of repeating it (coordinator API.md §1.3)."""
    with httpx.Client(base_url=server) as http:
        a, b = FakeNode(http, "node-a"), FakeNode(http, "node-b")
        for n in (a, b):
            assert n.register().status_code == 200
        key_id = run_dkg(http, [a, b])
        record = http.get(f"/v1/nodes/{b.node_id}", headers=ADMIN).json()
        digest_b = hashlib.sha256(base64.b64decode(record["evidence"])).hexdigest()
        advert: dict[str, str] = {}
        tasks: list[Mapping[str, Any]] = []
        link = CoordinatorLink(server, a.keys)
        s = EventStream(link, a.node_id, on_task=tasks.append, free_slots=lambda: 4, admitted=lambda: dict(advert))
        wants: list[dict[str, Any]] = []
        frame = s._frame

        def recording(op: str, data: dict[str, Any], **kw: Any) -> bool:
            if op == "want":
                wants.append(data)
            return frame(op, data, **kw)

        s._frame = recording  # type: ignore[method-assign]
        s.start()
        try:
            until(lambda: _want_frames(http) == 1)
            body = {"message_hex": "00", "signers": ["node-a", "node-b"]}
            http.post(f"/v1/keys/{key_id}/sign", json=body, headers=ADMIN)
            until(lambda: len(tasks) == 1)
            entry = {p["node_id"]: p for p in tasks[0]["participants"]}
            assert entry["node-b"]["evidence"] == record["evidence"] and "evidence_sha256" not in entry["node-b"]
            assert "evidence" not in entry["node-a"] and entry["node-a"]["evidence_sha256"]
            task_b = b.next_task()
            assert task_b is not None
            result = sign_result(task_b)
            b.report(task_b["task_id"], result=result)
            assert s.report(tasks[0]["task_id"], {"status": "done", "result": result, "error": None})["job_status"] == "done"

            # Nothing held: no "admitted" at all (a coordinator before it refuses the field).
            assert wants and all("admitted" not in w for w in wants)
            advert["node-b"] = digest_b
            until(lambda: _want_frames(http) == 2)  # sent on the next receive timeout
            assert wants[-1]["admitted"] == {"node-b": digest_b}
            http.post(f"/v1/keys/{key_id}/sign", json=body, headers=ADMIN)
            until(lambda: len(tasks) == 2)
            entry = {p["node_id"]: p for p in tasks[1]["participants"]}
            assert entry["node-b"]["evidence_sha256"] == digest_b and "evidence" not in entry["node-b"]
            time.sleep(0.3)
            assert _want_frames(http) == 2  # once: the advert has not changed since
        finally:
            s.stop()
            link.close()
