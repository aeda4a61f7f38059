"""The node event stream as one WebSocket (GET /v1/nodes/{id}/stream, API.md §1.11).

Runs on SQLite and PostgreSQL (the ``client`` fixture). The handshake is a signed request;
every frame the node sends is signed and bound to the connection and its sequence number, so
a forged, replayed, reordered or transplanted frame closes the stream with the reason.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from shardguard.channel import NodeKeys
from shardguard.coordinator import attached, wire

from .conftest import ADMIN, FakeNode, dkg_result, run_dkg, sign_result
from .test_events import sign_job


class Stream:
    """A node's side of the stream, frames signed by hand."""

    def __init__(self, ws: Any, node: FakeNode, nonce: bytes, *, attachments: bool = False) -> None:
        self.ws = ws
        self.node = node
        self.nonce = nonce
        self.seq = 0
        self.attachments = attachments  # frames carry blobs as binary attachments (API.md §1.11)

    def frame(self, op: str, data: Any, *, seq: int | None = None, keys: NodeKeys | None = None, nonce: bytes | None = None,
              body: bytes | None = None, frame_seq: int | None = None) -> int:  # fmt: skip
        self.seq += 1
        n = self.seq if seq is None else seq
        obj = {"seq": n if frame_seq is None else frame_seq, "op": op, "data": data}
        if body is not None:
            raw = body
        elif self.attachments:
            raw = attached.node_frame(obj)
        else:
            raw = json.dumps(obj).encode()
        self.ws.send_bytes(wire.sign_frame(keys or self.node.keys, self.nonce if nonce is None else nonce, n, raw))
        return n

    def want(self, cursors: dict[str, int] | None = None, claim: int = 0, admitted: dict[str, str] | None = None) -> None:
        data: dict[str, Any] = {"cursors": cursors or {}, "claim": claim}
        if admitted is not None:
            data["admitted"] = admitted
        self.frame("want", data)

    def outbox(self, messages: list[tuple[str, str, int, bytes]] = (), results: list[dict[str, Any]] = ()) -> dict[str, Any]:  # type: ignore[assignment]
        seq = self.frame(
            "outbox",
            {
                "messages": [{"job": j, "to": to, "seq": s, "blob": self._blob(b)} for j, to, s, b in messages],
                "results": list(results),
            },
        )
        ack = self.receive("ack")
        assert ack["seq"] == seq
        return ack

    def _blob(self, b: bytes) -> bytes | str:
        return b if self.attachments else base64.b64encode(b).decode()

    def receive(self, op: str) -> dict[str, Any]:
        """The next frame of ``op``; blobs are base64 as in JSON whichever way they came."""
        while True:
            obj = self._next()
            if obj["op"] == op:
                return dict(obj)

    def _next(self) -> dict[str, Any]:
        message = self.ws.receive()
        if message["type"] == "websocket.close":
            raise WebSocketDisconnect(message.get("code", 1000), message.get("reason", ""))
        if message.get("text") is not None:
            assert not self.attachments, "a text frame on a stream with attachments"
            return dict(json.loads(message["text"]))
        assert self.attachments, "a binary frame on a JSON stream"
        obj, blobs = attached.decode(message["bytes"])
        taken: set[int] = set()
        for j in obj.get("jobs", ()) if obj["op"] == "events" else ():  # an ack's jobs are the outbox answer
            for m in j["messages"]:
                m["blob"] = base64.b64encode(attached.take(m["blob"], blobs, taken, "blob")).decode()
        attached.check_all_taken(blobs, taken)
        return obj

    def closed(self) -> tuple[int, str]:
        with pytest.raises(WebSocketDisconnect) as e:
            while True:
                self._next()
        return e.value.code, e.value.reason


@contextmanager
def stream(client: TestClient, node: FakeNode, *, attachments: bool = False, **sign: Any) -> Iterator[Stream]:
    path = f"/v1/nodes/{node.node_id}/stream"
    headers = wire.sign_request(sign.pop("sign_as", node.keys), "GET", path, b"", **sign)
    offer = [attached.ATTACHED] if attachments else None
    with client.websocket_connect(path, headers=headers, subprotocols=offer) as ws:
        assert ws.accepted_subprotocol == (attached.ATTACHED if attachments else None)
        yield Stream(ws, node, bytes.fromhex(headers[wire.HEADER_NONCE]), attachments=attachments)


@contextmanager
def signing_pair(
    client: TestClient, key_id: str, a: FakeNode, b: FakeNode, *, attachments: tuple[bool, bool] = (False, False)
) -> Iterator[tuple[str, Stream, Stream, list[dict[str, Any]], list[dict[str, Any]]]]:
    """A signing by ``a`` and ``b``, each on its stream with its task pushed:
    ``(job, a's stream, b's stream, a's tasks, b's tasks)``; ``attachments``: which of the two
    streams carry blobs as binary attachments."""
    job = sign_job(client, key_id, [a.node_id, b.node_id])
    with stream(client, a, attachments=attachments[0]) as sa, stream(client, b, attachments=attachments[1]) as sb:
        sa.want(claim=4)
        sb.want(claim=4)
        ta = sa.receive("events")["tasks"]
        tb = sb.receive("events")["tasks"]
        assert [t["job_id"] for t in ta] == [job] == [t["job_id"] for t in tb]
        yield job, sa, sb, ta, tb


def test_tasks_and_messages_are_pushed_and_outbox_acknowledged(client: TestClient, nodes: list[FakeNode]) -> None:
    key_id = run_dkg(client, nodes)
    a, b, _c = nodes
    with signing_pair(client, key_id, a, b) as (job, sa, sb, ta, tb):
        assert ta[0]["you"] == {"node_id": a.node_id, "index": 1}
        ack = sa.outbox([(job, b.node_id, 1, b"round one")])
        assert ack["jobs"] == {job: {"accepted": 1, "duplicates": 0}}
        # Pushed to b without b asking again: its job's cursor is followed since the task.
        got = sb.receive("events")["jobs"]
        assert [(m["from"], base64.b64decode(m["blob"]), m["cursor"]) for m in got[0]["messages"]] == [
            (a.node_id, b"round one", 1)
        ]
        assert sa.outbox([(job, b.node_id, 1, b"round one")])["jobs"][job] == {"accepted": 0, "duplicates": 1}
        # Results in the outbox; once both are in, the job's end is pushed to both.
        result = sign_result(ta[0])
        acks = [
            s.outbox(results=[{"task_id": t[0]["task_id"], "status": "done", "result": result}])["results"]
            for s, t in ((sa, ta), (sb, tb))
        ]
        assert acks[0][ta[0]["task_id"]]["task_status"] == "done"
        assert acks[1][tb[0]["task_id"]]["job_status"] == "done"
        # A signing job is no longer followed once the node's result is in: its end is not
        # pushed (the last reporter learns it from its ack). The next frame is the next task.
        job2 = sign_job(client, key_id, [a.node_id, b.node_id])
        for s in (sa, sb):
            nxt = s.receive("events")
            assert [t["job_id"] for t in nxt["tasks"]] == [job2] and nxt["jobs"] == []


# Only where reads run off the event loop: on SQLite they run inline, and nothing can happen
# between the read and the push.
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_news_of_a_job_reported_while_it_was_read_is_not_pushed(
    client: TestClient, nodes: list[FakeNode], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race CI once lost: the pusher reads a job's news, and while that read runs the
    node's result goes in (it stops following the job) and the job ends. What the read
    brings back for that job is no concern of the node any more and is not pushed; the next
    frame is the next task."""
    key_id = run_dkg(client, nodes)
    a, b, _c = nodes
    service = client.app.state.coordinator  # type: ignore[attr-defined]
    read_news = service.read_news
    armed, entered, release = threading.Event(), threading.Event(), threading.Event()

    def held(node_id: str, cursors: dict[str, int], **kw: Any) -> Any:
        if armed.is_set() and node_id == a.node_id and cursors:
            armed.clear()
            entered.set()
            assert release.wait(10)
        return read_news(node_id, cursors, **kw)

    monkeypatch.setattr(service, "read_news", held)
    with signing_pair(client, key_id, a, b) as (job, sa, sb, ta, tb):
        armed.set()
        sb.outbox([(job, a.node_id, 1, b"round one")])  # wakes a's pusher for the job
        assert entered.wait(10)
        result = sign_result(ta[0])
        for s, t in ((sa, ta), (sb, tb)):
            s.outbox(results=[{"task_id": t[0]["task_id"], "status": "done", "result": result}])
        release.set()  # the read now finds the job ended, with b's message in it
        job2 = sign_job(client, key_id, [a.node_id, b.node_id])
        nxt = sa.receive("events")
        assert [t["job_id"] for t in nxt["tasks"]] == [job2] and nxt["jobs"] == []


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Every frame the coordinator sends on a stream, in order: (node id, frame)."""
    log: list[tuple[str, dict[str, Any]]] = []
    original = WebSocket.send_text

    async def send_text(self: WebSocket, data: str) -> None:
        log.append((self.scope["path"].split("/")[3], json.loads(data)))
        await original(self, data)

    monkeypatch.setattr(WebSocket, "send_text", send_text)
    return log


# SQLite only: there the database work runs on the event loop and the order of frames is fixed;
# on PostgreSQL it runs in threads, and either may go first.
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_relayed_message_goes_to_its_recipient_before_the_senders_ack(
    make_client: Any, sent: list[tuple[str, dict[str, Any]]]
) -> None:
    """The recipient waits for the message; the sender only learns that it is kept."""
    from .test_precommit import _registered

    client = make_client(poll_interval=30.0)  # no timer wakes a stream meanwhile
    nodes = _registered(client)
    key_id = run_dkg(client, nodes)
    a, b, _c = nodes
    with signing_pair(client, key_id, a, b) as (job, sa, sb, ta, tb):
        sent.clear()
        sa.outbox([(job, b.node_id, 1, b"round one")])
        assert [m["cursor"] for m in sb.receive("events")["jobs"][0]["messages"]] == [1]
        assert [(node, f["op"]) for node, f in sent] == [(b.node_id, "events"), (a.node_id, "ack")]
        # A signing's results too: the job started once it ended goes out first.
        job2 = sign_job(client, key_id, [a.node_id, b.node_id])  # queued behind the first
        result = sign_result(ta[0])
        sa.outbox(results=[{"task_id": ta[0]["task_id"], "status": "done", "result": result}])
        sent.clear()
        ack = sb.outbox(results=[{"task_id": tb[0]["task_id"], "status": "done", "result": result}])
        assert ack["results"][tb[0]["task_id"]]["job_status"] == "done"
        assert [(node, f["op"], [t["job_id"] for t in f.get("tasks", ())]) for node, f in sent] == [
            (a.node_id, "events", [job2]), (b.node_id, "events", [job2]), (b.node_id, "ack", [])
        ]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_dkg_reporter_gets_its_ack_before_its_jobs_end(make_client: Any, sent: list[tuple[str, dict[str, Any]]]) -> None:
    """A DKG (refresh, repair) reporter follows its job to its end: the ack of the result that
    ended it comes first, then the end."""
    from .test_precommit import _registered

    client = make_client(poll_interval=30.0)
    nodes = _registered(client)
    r = client.post("/v1/keys", json={"scheme": "ed25519", "threshold": 2, "nodes": [n.node_id for n in nodes]}, headers=ADMIN)
    assert r.status_code == 202, r.text
    with stream(client, nodes[0]) as s0, stream(client, nodes[1]) as s1, stream(client, nodes[2]) as s2:
        streams = (s0, s1, s2)
        tasks = []
        for s in streams:
            s.want(claim=1)
            tasks.append(s.receive("events")["tasks"][0])
        result = dkg_result("ed25519")
        for s, t in zip(streams[:2], tasks[:2], strict=True):
            s.outbox(results=[{"task_id": t["task_id"], "status": "done", "result": result}])
        sent.clear()
        ack = s2.outbox(results=[{"task_id": tasks[2]["task_id"], "status": "done", "result": result}])
        assert ack["results"][tasks[2]["task_id"]]["job_status"] == "done"
        assert [j["job_status"] for j in s2.receive("events")["jobs"]] == ["done"]
        mine = [f["op"] for node, f in sent if node == nodes[2].node_id]
        assert mine[:2] == ["ack", "events"]


def test_a_want_that_omits_a_handed_job_does_not_drop_it(client: TestClient, nodes: list[FakeNode]) -> None:
    """A node may write a want before the task reaches it (API.md §1.11): the job of a task
    pushed on the connection stays followed until it ends, whatever wants say meanwhile."""
    key_id = run_dkg(client, nodes)
    a, b, _c = nodes
    job = sign_job(client, key_id, [a.node_id, b.node_id])
    with stream(client, a) as sa, stream(client, b) as sb:
        sa.want(claim=4)
        sb.want(claim=4)
        ta = sa.receive("events")["tasks"]
        sb.receive("events")
        sb.want(cursors={}, claim=3)  # written before b "saw" its task: no cursors
        sa.outbox([(job, b.node_id, 1, b"round one")])
        got = sb.receive("events")["jobs"]
        assert [(j["job_id"], [m["cursor"] for m in j["messages"]]) for j in got] == [(job, [1])]
        # Once the job has ended, a want without it does drop it (nothing more is pushed).
        sa.outbox(results=[{"task_id": ta[0]["task_id"], "status": "failed", "result": None,
                            "error": {"reason": "TEST", "detail": "x"}}])  # fmt: skip
        ends = [j for j in sb.receive("events")["jobs"] if j["job_status"] != "running"]
        assert [j["job_id"] for j in ends] == [job]


def test_malformed_outbox_is_refused_in_its_ack_and_the_stream_stays(client: TestClient, nodes: list[FakeNode]) -> None:
    a = nodes[0]
    with stream(client, a) as sa:
        seq = sa.frame("outbox", {"messages": [{"job": "j", "to": "x", "seq": -1, "blob": "!!"}]})
        ack = sa.receive("ack")
        assert ack["seq"] == seq and ack["error"]["status"] == 422 and ack["error"]["code"] == "validation_error"
        assert sa.outbox([("no-such-job", "node-b", 1, b"x")])["jobs"]["no-such-job"]["error"]["code"] == "not_found"


def denied(client: TestClient, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """Status and error code of a refused handshake."""
    with pytest.raises(WebSocketDenialResponse) as e, client.websocket_connect(path, headers=headers):
        pass
    return e.value.status_code, str(e.value.json()["error"]["code"])


def test_handshake_is_a_signed_request(client: TestClient, nodes: list[FakeNode]) -> None:
    a, b, _c = nodes
    path = f"/v1/nodes/{a.node_id}/stream"
    assert denied(client, path, wire.sign_request(NodeKeys.generate(a.node_id), "GET", path, b"")) == (401, "bad_signature")
    headers = wire.sign_request(a.keys, "GET", path, b"")
    with client.websocket_connect(path, headers=headers):
        pass
    assert denied(client, path, headers) == (401, "replayed_nonce")  # the same handshake again
    assert denied(client, path, wire.sign_request(b.keys, "GET", path, b""))[0] == 403  # b opening a's stream
    assert denied(client, path, {}) == (401, "missing_signature")


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("forged", "bad_signature"),
        ("replayed", "bad_signature"),
        ("skipped", "bad_signature"),
        ("other_connection", "bad_signature"),
        ("body_seq", "malformed_frame"),
        ("not_json", "malformed_frame"),
        ("unknown_op", "malformed_frame"),
        ("text", "malformed_frame"),
        ("truncated", "bad_signature"),
        ("bad_want", "validation_error"),
        ("oversized", "payload_too_large"),
    ],
)
def test_a_bad_frame_closes_the_stream_with_its_reason(
    client: TestClient, nodes: list[FakeNode], tamper: str, reason: str
) -> None:
    a = nodes[0]
    with stream(client, a) as sa:
        sa.want()
        if tamper == "forged":
            sa.frame("want", {"cursors": {}, "claim": 0}, keys=NodeKeys.generate(a.node_id))
        elif tamper == "replayed":
            sa.frame("want", {"cursors": {}, "claim": 0}, seq=1)
        elif tamper == "skipped":
            sa.frame("want", {"cursors": {}, "claim": 0}, seq=3)
        elif tamper == "other_connection":
            sa.frame("want", {"cursors": {}, "claim": 0}, nonce=b"\x01" * 32)
        elif tamper == "body_seq":
            sa.frame("want", {"cursors": {}, "claim": 0}, frame_seq=7)
        elif tamper == "not_json":
            sa.frame("want", None, body=b"\xff not json")
        elif tamper == "unknown_op":
            sa.frame("shutdown", {})
        elif tamper == "text":
            sa.ws.send_text("{}")
        elif tamper == "truncated":
            sa.ws.send_bytes(b"\x00" * 10)
        elif tamper == "bad_want":
            sa.frame("want", {"cursors": {}, "claim": 10_000})
        elif tamper == "oversized":
            sa.frame("outbox", None, body=b" " * (client.app.state.coordinator.settings.max_body_bytes + 1))  # type: ignore[attr-defined]
        code, why = sa.closed()
    assert code in (1008, 1009) and why.startswith(reason), why


def test_a_failed_push_closes_the_stream(client: TestClient, nodes: list[FakeNode], monkeypatch: pytest.MonkeyPatch) -> None:
    """A database failure while looking for news must not leave an open stream that pushes
    nothing: it is closed (1011) and the node reconnects."""
    key_id = run_dkg(client, nodes)
    a, b, _c = nodes
    coordinator = client.app.state.coordinator  # type: ignore[attr-defined]

    def broken(*_args: Any) -> Any:
        raise RuntimeError("database unreachable")

    with stream(client, a) as sa:
        monkeypatch.setattr(coordinator, "claim_tasks", broken)
        sign_job(client, key_id, [a.node_id, b.node_id])
        sa.want(claim=4)
        code, why = sa.closed()
    assert code == 1011 and why.startswith("internal_error")


def test_a_task_claimed_elsewhere_is_pushed_within_a_poll_interval(client: TestClient, nodes: list[FakeNode]) -> None:
    """A connection the node has left (half-open on another replica, or this replica's old
    pusher finishing a claim as it is cancelled) may still claim tasks for the node and write
    them into a dead socket. The live connection looks for the node's claimed, unreported
    tasks every poll interval and pushes those it has not pushed (the node runs each once)."""
    key_id = run_dkg(client, nodes)
    a, b, _c = nodes
    coordinator = client.app.state.coordinator  # type: ignore[attr-defined]
    with stream(client, a) as sa:
        sa.want(claim=0)  # no room: this connection claims nothing itself
        job = sign_job(client, key_id, [a.node_id, b.node_id])
        elsewhere = coordinator.claim_tasks(a.node_id, 4)
        assert [t["job_id"] for t in elsewhere] == [job]
        got = sa.receive("events")["tasks"]  # within the poll interval (0.05 s here)
        assert got == elsewhere
        time.sleep(0.3)  # six more looks: not pushed again on this connection
        failed = {"task_id": got[0]["task_id"], "status": "failed", "result": None, "error": {"reason": "TEST", "detail": "x"}}
        seq = sa.frame("outbox", {"messages": [], "results": [failed]})
        frames = []
        while not frames or frames[-1]["op"] != "ack":
            frames.append(sa.ws.receive_json())
        assert frames[-1]["seq"] == seq and all(not f.get("tasks") for f in frames)


def test_a_new_connection_gets_the_tasks_handed_out_and_not_reported_again(client: TestClient, nodes: list[FakeNode]) -> None:
    """A frame written just before the connection died may never have reached the node: every
    new connection first pushes the node's claimed, unreported tasks of running jobs again
    (without a want: the node may have no room left for new ones). Reported tasks, ended jobs
    and other nodes' tasks are not pushed."""
    key_id = run_dkg(client, nodes)
    a, b, c = nodes
    job1 = sign_job(client, key_id, [a.node_id, b.node_id])
    with stream(client, a) as sa:
        sa.want(claim=4)
        t1 = sa.receive("events")["tasks"]
    assert [t["job_id"] for t in t1] == [job1]
    job2 = sign_job(client, key_id, [a.node_id, c.node_id])
    coordinator = client.app.state.coordinator  # type: ignore[attr-defined]
    t2 = coordinator.claim_tasks(a.node_id, 4)  # handed out by (say) another replica's stream
    assert [t["job_id"] for t in t2] == [job2]
    with stream(client, a) as sa:
        again = sa.receive("events")["tasks"]
        assert again == t1 + t2  # the same tasks, in the order they were handed out
        # Reported: not pushed again; the job of the other task still runs.
        sa.outbox(results=[{"task_id": t1[0]["task_id"], "status": "failed", "result": None,
                            "error": {"reason": "TEST", "detail": "x"}}])  # fmt: skip
    with stream(client, a) as sa:
        assert [t["task_id"] for t in sa.receive("events")["tasks"]] == [t2[0]["task_id"]]
    assert coordinator.claimed_tasks(b.node_id) == []  # b's task was never handed out
    assert [t["task_id"] for t in coordinator.claimed_tasks(a.node_id)] == [t2[0]["task_id"]]


def test_news_cut_short_by_the_byte_limit_is_read_again_at_once(make_client: Any, nodes: list[FakeNode]) -> None:
    """A push carries at most max_body_bytes of messages; the jobs it cut short are read again
    right away, not at the next wake-up or poll (here 30 s)."""
    client = make_client(max_body_bytes=4096, poll_interval=30.0)
    key_id = run_dkg(client, nodes)
    a, b, _c = nodes
    job = sign_job(client, key_id, [a.node_id, b.node_id])
    blobs = [bytes([i]) * 2500 for i in (1, 2, 3)]  # two do not fit in one push
    with stream(client, a) as sa:
        sa.want(claim=4)
        sa.receive("events")
        for i, blob in enumerate(blobs, start=1):
            sa.outbox([(job, b.node_id, i, blob)])
    start = time.monotonic()
    with stream(client, b) as sb:
        sb.want(claim=4)
        got: list[bytes] = []
        frames = 0
        while len(got) < 3:
            ev = sb.receive("events")
            frames += 1
            got += [base64.b64decode(m["blob"]) for j in ev["jobs"] for m in j["messages"]]
    assert got == blobs and frames == 3
    assert time.monotonic() - start < 10


def test_a_job_cut_short_is_read_again_even_when_nothing_else_was_pushed(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The news of a job that an answer's limits cut short is read again at once — also when
    what filled the answer belonged to a job the node stopped following meanwhile, so that no
    frame went out (review finding): not at the next poll (here 30 s)."""
    from .test_precommit import _registered

    client = make_client(poll_interval=30.0)
    nodes = _registered(client)
    key_id = run_dkg(client, nodes)
    a, b, _c = nodes
    service = client.app.state.coordinator  # type: ignore[attr-defined]
    read_news = service.read_news
    armed = threading.Event()

    def filled_by_another(node_id: str, cursors: dict[str, int], **kw: Any) -> Any:
        if armed.is_set() and node_id == a.node_id:
            armed.clear()
            # What a read returns when another job's messages filled it: that job, unfollowed
            # during the read, and this one cut short.
            other = {"job_id": "req_unfollowed", "job_status": "running", "messages": [], "next_after": 7}
            return [other], set(cursors)
        return read_news(node_id, cursors, **kw)

    monkeypatch.setattr(service, "read_news", filled_by_another)
    with signing_pair(client, key_id, a, b) as (job, sa, sb, _ta, _tb), ThreadPoolExecutor(1) as pool:
        armed.set()
        sb.outbox([(job, a.node_id, 1, b"round one")])
        got = pool.submit(sa.receive, "events").result(timeout=10)
        assert [(j["job_id"], [m["cursor"] for m in j["messages"]]) for j in got["jobs"]] == [(job, [1])]
        assert not armed.is_set()


def _frames_until_closed(s: Stream) -> tuple[list[dict[str, Any]], int, str]:
    """Every frame the coordinator sends until it closes the stream, and the close."""
    frames: list[dict[str, Any]] = []
    with pytest.raises(WebSocketDisconnect) as e:
        while True:
            frames.append(s.ws.receive_json())
    return frames, e.value.code, e.value.reason


def test_a_stream_of_an_old_identity_key_is_handed_no_task_and_closed(make_client: Any, nodes: list[FakeNode]) -> None:
    """A node restarted (new identity key) while a stream opened with its old key was still
    open: the old stream must not claim the new registration's task. The claim checks the key
    in its own transaction, hands out nothing and closes the stream (1008, stale_identity) —
    not only when the pusher is idle (the poll interval is long here: the claim does it)."""
    client = make_client(poll_interval=30.0)
    for n in nodes:
        n.client = client
    key_id = run_dkg(client, nodes)
    old, b, _c = nodes
    with stream(client, old) as sa:
        sa.want(claim=4)
        new = FakeNode(client, old.node_id)  # the restarted process, a new identity key
        assert new.register().json()["generation"] == 2
        job = sign_job(client, key_id, [old.node_id, b.node_id])
        frames, code, why = _frames_until_closed(sa)
    assert code == 1008 and why.startswith("stale_identity"), why
    assert not [t for f in frames for t in f.get("tasks", [])]
    task = new.next_task()  # still queued: the new process gets it
    assert task is not None and task["job_id"] == job


def test_an_outbox_post_on_a_stale_stream_keeps_nothing_and_closes_it(make_client: Any, nodes: list[FakeNode]) -> None:
    """Messages and results posted on a stream whose key the node has replaced are refused in
    the post's own transaction (nothing is appended or reported) and the stream is closed."""
    client = make_client(poll_interval=30.0)
    for n in nodes:
        n.client = client
    key_id = run_dkg(client, nodes)
    old, b, _c = nodes
    with stream(client, old) as sa:
        new = FakeNode(client, old.node_id)
        assert new.register().status_code == 200
        job = sign_job(client, key_id, [old.node_id, b.node_id])
        ta, tb = new.next_task(), b.next_task()
        assert ta is not None and tb is not None
        result = {"task_id": ta["task_id"], "status": "done", "result": sign_result(ta)}
        blob = base64.b64encode(b"from the old process").decode()
        sa.frame("outbox", {"messages": [{"job": job, "to": b.node_id, "seq": 1, "blob": blob}], "results": [result]})
        frames, code, why = _frames_until_closed(sa)
    assert code == 1008 and why.startswith("stale_identity"), why
    assert not [f for f in frames if f["op"] == "ack"]
    assert b.inbox(job).json()["messages"] == []
    # The task is still the new process's to report.
    assert new.report(ta["task_id"], result=sign_result(ta)).json() == {"task_status": "done", "job_status": "running"}


def test_a_one_step_signing_is_pushed_without_reading_its_news_and_its_end_still_arrives(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signing in one step has no mailbox messages (API.md §1.13): its task goes out without
    a read of the job's news first. A failure of its job still reaches a node that has not
    reported (the stream follows the job from the task on)."""
    from .conftest import coord
    from .test_precommit import Signer, _registered

    client = make_client(poll_interval=30.0)  # no sweep reads the job meanwhile
    nodes = _registered(client)
    key_id = run_dkg(client, nodes, "ed25519")
    a, b, _c = nodes
    signers = {i + 1: Signer(n, i + 1, "ed25519") for i, n in enumerate(nodes)}
    for i in (1, 2):
        signers[i].publish(2)
    service = coord(client)
    reads: list[set[str]] = []
    read_news = service.read_news

    def counting(node_id: str, cursors: dict[str, int], **kw: Any) -> Any:
        reads.append(set(cursors))
        return read_news(node_id, cursors, **kw)

    monkeypatch.setattr(service, "read_news", counting)
    with stream(client, a) as sa, stream(client, b) as sb:
        sa.want(claim=4)
        sb.want(claim=4)
        # A first signing, run to its end: both streams are then past their first look (which
        # reads every job the stream follows, whatever it is).
        first = sign_job(client, key_id, [a.node_id, b.node_id])
        for s, i in ((sa, 1), (sb, 2)):
            (t,) = s.receive("events")["tasks"]
            assert t["job_id"] == first
            s.outbox(results=[{"task_id": t["task_id"], "status": "done", "result": signers[i].answer(t, signers)}])
        job = sign_job(client, key_id, [a.node_id, b.node_id])
        ta = sa.receive("events")["tasks"]
        tb = sb.receive("events")["tasks"]
        assert [t["job_id"] for t in ta] == [job] == [t["job_id"] for t in tb]
        assert "commitments" in ta[0]["params"]
        assert not any(job in r for r in reads)
        # b fails its task: the job fails, and a, still running it, is told.
        failed = {"task_id": tb[0]["task_id"], "status": "failed", "error": {"reason": "aborted", "detail": "test"}}
        ack = sb.outbox(results=[failed])
        assert ack["results"][tb[0]["task_id"]]["job_status"] == "failed", ack
        ended = sa.receive("events")["jobs"]
        assert [(j["job_id"], j["job_status"]) for j in ended] == [(job, "failed")]


def _evidence_digests(client: TestClient, nodes: list[FakeNode]) -> dict[str, str]:
    out = {}
    for n in nodes:
        record = client.get(f"/v1/nodes/{n.node_id}", headers=ADMIN).json()
        out[n.node_id] = hashlib.sha256(base64.b64decode(record["evidence"])).hexdigest()
    return out


_REFERENCED = {"evidence", "collateral", "evidence_nonce", "evidence_challenges"}


def test_a_task_names_by_digest_the_evidence_the_node_holds(make_client: Any) -> None:
    """API.md §1.3: the node's own evidence, and a peer's it says it admitted on exactly that
    evidence (``admitted`` in its want), are named by SHA-256 instead of repeated; a peer whose
    evidence the node does not hold (another digest, or none) comes whole."""
    from .test_events import _unbundled

    client, nodes = _unbundled(make_client)
    key_id = run_dkg(client, nodes)
    a, b, c = nodes
    digests = _evidence_digests(client, nodes)
    jobs = [sign_job(client, key_id, [a.node_id, b.node_id]), sign_job(client, key_id, [a.node_id, c.node_id])]
    with stream(client, a) as sa:
        sa.want(claim=4, admitted={b.node_id: digests[b.node_id], c.node_id: "ab" * 32})
        tasks: list[dict[str, Any]] = []
        while len(tasks) < 2:
            tasks += sa.receive("events")["tasks"]
    assert sorted(t["job_id"] for t in tasks) == sorted(jobs)
    for t in tasks:
        entries = {p["node_id"]: p for p in t["participants"]}
        for nid, entry in entries.items():
            if nid in (a.node_id, b.node_id):  # ours, and b's as we hold it
                assert entry["evidence_sha256"] == digests[nid] and not _REFERENCED & entry.keys()
                assert entry["peer_card"] and entry["platform"] and entry["generation"] == 1
            else:  # c: the digest we gave is not its evidence's
                assert "evidence_sha256" not in entry and entry["evidence"] and entry.keys() >= _REFERENCED
    # The HTTP long-poll (§1.9) takes the same field.
    job = sign_job(client, key_id, [a.node_id, c.node_id])
    body = {"cursors": {}, "claim": 4, "admitted": {c.node_id: digests[c.node_id]}}
    r = a.request("POST", f"/v1/nodes/{a.node_id}/events", body)
    assert r.status_code == 200, r.text
    (task,) = [t for t in r.json()["tasks"] if t["job_id"] == job]
    assert all(p["evidence_sha256"] == digests[p["node_id"]] and "evidence" not in p for p in task["participants"])


@pytest.mark.parametrize(
    "admitted",
    [{"node-b": "AB" * 32}, {"node-b": "ab" * 31}, {"not a node id!": "ab" * 32}, {f"node-{i}": "ab" * 32 for i in range(1025)}],
)
def test_a_malformed_admitted_map_closes_the_stream(client: TestClient, nodes: list[FakeNode], admitted: dict[str, str]) -> None:
    a = nodes[0]
    with stream(client, a) as sa:
        sa.want(claim=1, admitted=admitted)
        code, reason = sa.closed()
    assert code == 1008 and reason.startswith("validation_error: want: admitted")


# -- frames with binary attachments (API.md §1.11) ----------------------------------------------
@pytest.mark.parametrize("attachments", [(True, True), (True, False), (False, True)], ids=["both", "a-only", "b-only"])
def test_blobs_travel_as_attachments_on_the_streams_that_offer_them(
    client: TestClient, nodes: list[FakeNode], attachments: tuple[bool, bool]
) -> None:
    key_id = run_dkg(client, nodes)
    a, b, _c = nodes
    big = bytes(range(256)) * 300  # a DKLs23 round's size
    with signing_pair(client, key_id, a, b, attachments=attachments) as (job, sa, sb, _ta, _tb):
        ack = sa.outbox([(job, b.node_id, 1, b"one"), (job, b.node_id, 2, big)])
        assert ack["jobs"] == {job: {"accepted": 2, "duplicates": 0}}
        got = sb.receive("events")["jobs"][0]["messages"]
        pushed = [(m["from"], base64.b64decode(m["blob"]), m["cursor"]) for m in got]
        assert pushed == [(a.node_id, b"one", 1), (a.node_id, big, 2)]
        assert sb.outbox([(job, a.node_id, 1, b"back")])["jobs"][job]["accepted"] == 1
        got = sa.receive("events")["jobs"][0]["messages"]
        assert [(m["from"], base64.b64decode(m["blob"])) for m in got] == [(b.node_id, b"back")]
        # Stored as posted: the HTTP inbox (base64) reads the same bytes.
        assert [base64.b64decode(m["blob"]) for m in b.inbox(job).json()["messages"]] == [b"one", big]


def _outbox_header(job: str, to: str, refs: list[Any], lengths: list[int], seq: int) -> bytes:
    header = {"seq": seq, "op": "outbox", "data": {"messages": [{"job": job, "to": to, "seq": i + 1, "blob": r} for i, r in
              enumerate(refs)], "results": []}, "attachments": lengths}  # fmt: skip
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(4, "big") + raw


@pytest.mark.parametrize(
    ("refs", "blobs", "field", "problem"),
    [
        ([0, 0], [b"a"], "messages.1.blob", "referred to twice"),
        ([1], [b"a"], "messages.0.blob", "does not exist"),
        (["YQ=="], [], "messages.0.blob", "an attachment index"),
        ([0], [b"a", b"b"], "attachments", "attachment 1 is not referred to"),
    ],
    ids=["twice", "missing", "base64", "unread"],
)
def test_an_outbox_whose_references_do_not_match_its_attachments_is_refused_whole(
    client: TestClient, nodes: list[FakeNode], refs: list[Any], blobs: list[bytes], field: str, problem: str
) -> None:
    key_id = run_dkg(client, nodes)
    a, b, _c = nodes
    with signing_pair(client, key_id, a, b, attachments=(True, True)) as (job, sa, _sb, _ta, _tb):
        body = _outbox_header(job, b.node_id, refs, [len(x) for x in blobs], sa.seq + 1) + b"".join(blobs)
        seq = sa.frame("outbox", None, body=body)
        ack = sa.receive("ack")
        assert ack["seq"] == seq and ack["error"]["status"] == 422 and ack["error"]["code"] == "validation_error"
        assert ack["error"]["message"].startswith(f"{field}: ") and problem in ack["error"]["message"]
        assert b.inbox(job).json()["messages"] == []  # nothing of it kept
        # The stream stays open: the next post goes through.
        assert sa.outbox([(job, b.node_id, 1, b"ok")])["jobs"][job]["accepted"] == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x00\x00", "shorter than its 4-byte header length"),
        ((500).to_bytes(4, "big") + b"{}", "runs past the frame's end"),
        ((2).to_bytes(4, "big") + b"{}" + b"extra", "the lengths add up to 0 bytes"),
        ((2).to_bytes(4, "big") + b"[]", "the header is not a JSON object"),
    ],
    ids=["short", "header-past-end", "stray-bytes", "not-object"],
)
def test_a_malformed_attached_frame_closes_the_stream(
    client: TestClient, nodes: list[FakeNode], body: bytes, reason: str
) -> None:
    with stream(client, nodes[0], attachments=True) as s:
        s.frame("want", None, body=body)
        code, why = s.closed()
        assert code == 1008 and why.startswith("malformed_frame: frame 1") and reason in why


def test_attachments_on_a_want_close_the_stream(client: TestClient, nodes: list[FakeNode]) -> None:
    with stream(client, nodes[0], attachments=True) as s:
        raw = json.dumps({"seq": 1, "op": "want", "data": {"cursors": {}, "claim": 0}, "attachments": [1]}).encode()
        s.frame("want", None, body=len(raw).to_bytes(4, "big") + raw + b"x")
        code, why = s.closed()
        assert code == 1008 and why == "malformed_frame: frame 1: only an outbox carries attachments"


def test_a_json_body_on_a_stream_with_attachments_closes_it(client: TestClient, nodes: list[FakeNode]) -> None:
    with stream(client, nodes[0], attachments=True) as s:
        s.frame("want", None, body=json.dumps({"seq": 1, "op": "want", "data": {"cursors": {}, "claim": 0}}).encode())
        code, why = s.closed()
        assert code == 1008 and why.startswith("malformed_frame: frame 1")


def test_an_attached_outbox_the_schema_refuses_is_named_by_the_schema(client: TestClient, nodes: list[FakeNode]) -> None:
    """A message without its blob, or messages that are not a list: the schema's error, not a
    complaint about an attachment nobody referred to."""
    key_id = run_dkg(client, nodes)
    a, b, _c = nodes
    with signing_pair(client, key_id, a, b, attachments=(True, True)) as (job, sa, _sb, _ta, _tb):
        for data, field in [
            ({"messages": [{"job": job, "to": b.node_id, "seq": 1}], "results": []}, "messages.0.blob"),
            ({"messages": {"0": 0}, "results": []}, "messages"),
        ]:
            header = json.dumps({"seq": sa.seq + 1, "op": "outbox", "data": data, "attachments": [1]}).encode()
            seq = sa.frame("outbox", None, body=len(header).to_bytes(4, "big") + header + b"x")
            ack = sa.receive("ack")
            assert ack["seq"] == seq and ack["error"]["code"] == "validation_error"
            assert ack["error"]["message"].startswith(f"{field}: "), ack
        assert b.inbox(job).json()["messages"] == []


def test_a_header_nested_too_deep_closes_the_stream(client: TestClient, nodes: list[FakeNode]) -> None:
    with stream(client, nodes[0], attachments=True) as s:
        header = b"[" * 100_000 + b"]" * 100_000
        s.frame("want", None, body=len(header).to_bytes(4, "big") + header)
        code, why = s.closed()
        assert code == 1008 and why == "malformed_frame: frame 1: frame: the header is not JSON"


def _registered(client: TestClient) -> list[FakeNode]:
    out = [FakeNode(client, f"node-{c}") for c in "abc"]
    for n in out:
        assert n.register().status_code == 200
    return out


def test_an_events_frame_holds_no_more_attachments_than_a_node_takes(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``inbox_batch`` may exceed what one attached frame may carry: the news comes in more
    frames, every message of it, none refused by the node for too many attachments."""
    monkeypatch.setattr(attached, "MAX_ATTACHMENTS", 2)
    client = make_client(inbox_batch=10)
    nodes = _registered(client)
    key_id = run_dkg(client, nodes)
    a, b, _c = nodes
    with signing_pair(client, key_id, a, b, attachments=(False, True)) as (job, sa, sb, _ta, _tb):
        sent = [(job, b.node_id, i, f"m{i}".encode()) for i in range(1, 6)]
        assert sa.outbox(sent)["jobs"][job]["accepted"] == 5
        got: list[bytes] = []
        sizes = []
        while len(got) < 5:
            messages = sb.receive("events")["jobs"][0]["messages"]
            sizes.append(len(messages))
            got += [base64.b64decode(m["blob"]) for m in messages]
        assert got == [blob for *_, blob in sent] and max(sizes) <= 2


def test_a_coordinator_set_not_to_accept_attachments_speaks_json(make_client: Callable[..., TestClient]) -> None:
    client = make_client(stream_attachments=False)
    node = _registered(client)[0]
    path = f"/v1/nodes/{node.node_id}/stream"
    headers = wire.sign_request(node.keys, "GET", path, b"")
    with client.websocket_connect(path, headers=headers, subprotocols=[attached.ATTACHED]) as ws:
        assert ws.accepted_subprotocol is None
        s = Stream(ws, node, bytes.fromhex(headers[wire.HEADER_NONCE]))
        s.want(claim=1)  # JSON frames, as before attachments: taken
        s.want(claim=2)
        assert s.outbox()["jobs"] == {}
