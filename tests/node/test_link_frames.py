"""What the coordinator sends the node's event stream is hostile (ARCHITECTURE §1-2): every
frame is checked whole before any of it is used, a malformed one is refused with the field
named and nothing of it applied, and no frame — nor any error in handling one — ends the
stream's threads or loses a task."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import pytest

from shardguard.coordinator import attached
from shardguard.node import link
from shardguard.node.engine import EngineError
from shardguard.node.link import EventStream, MalformedFrame

from .test_link import ScriptedCoordinator, until


def idle_stream(tasks: list[Mapping[str, Any]] | None = None) -> EventStream:
    """A stream whose threads are not started: frames are handed to it by the test."""
    sink = tasks if tasks is not None else []
    return EventStream(None, "node-a", on_task=sink.append, free_slots=lambda: 4, transport="http")  # type: ignore[arg-type]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


GOOD_TASK = {"task_id": "task_1", "job_id": "req_1", "kind": "sign"}


def _attached_events(refs: list[Any], blobs: list[bytes]) -> bytes:
    """A binary events frame (API.md §1.11) of job req_1 whose messages' blobs are ``refs``."""
    messages = [{"cursor": i + 1, "from": "node-b", "blob": r} for i, r in enumerate(refs)]
    return _with_blobs({"op": "events", "jobs": [{"job_id": "req_1", "messages": messages}]}, blobs)


def _with_blobs(header: dict[str, Any], blobs: list[bytes]) -> bytes:
    raw = json.dumps(header | {"attachments": [len(b) for b in blobs]}).encode()
    return len(raw).to_bytes(4, "big") + raw + b"".join(blobs)


def _decoded(frame: Any) -> tuple[Any, list[bytes] | None]:
    """A frame as the stream loop decodes it: bytes on a stream with attachments, anything
    else as JSON text on a stream without."""
    if isinstance(frame, bytes):
        return link._decode_frame(frame, attachments=True)
    return link._decode_frame(json.dumps(frame), attachments=False)


MALFORMED: list[tuple[str, Any, str]] = [
    ("frame not an object", ["op", "events"], "frame"),
    ("ack seq a list", {"op": "ack", "seq": [1]}, "seq"),
    ("ack seq infinite", json.loads('{"op":"ack","seq":1e400}'), "seq"),
    ("ack seq a float", {"op": "ack", "seq": 1.0}, "seq"),
    ("ack seq a bool", {"op": "ack", "seq": True}, "seq"),
    ("ack seq missing", {"op": "ack"}, "seq"),
    ("ack seq too large", {"op": "ack", "seq": 2**64}, "seq"),
    ("tasks an int", {"op": "events", "tasks": 5}, "tasks"),
    ("task a string", {"op": "events", "tasks": ["x"]}, "tasks[0]"),
    ("task without job_id", {"op": "events", "tasks": [{"task_id": "t1"}]}, "tasks[0].job_id"),
    ("task_id not a string", {"op": "events", "tasks": [{"task_id": 7, "job_id": "req_1"}]}, "tasks[0].task_id"),
    ("job_id too long", {"op": "events", "tasks": [{"task_id": "t1", "job_id": "j" * 129}]}, "tasks[0].job_id"),
    ("jobs a dict", {"op": "events", "jobs": {"req_1": {}}}, "jobs"),
    ("job without job_id", {"op": "events", "jobs": [{}]}, "jobs[0].job_id"),
    ("job status a number", {"op": "events", "jobs": [{"job_id": "req_1", "job_status": 3}]}, "jobs[0].job_status"),
    ("messages a string", {"op": "events", "jobs": [{"job_id": "req_1", "messages": "m"}]}, "jobs[0].messages"),
    ("message a list", {"op": "events", "jobs": [{"job_id": "req_1", "messages": [[1, "b", "AA=="]]}]}, "jobs[0].messages[0]"),
    (
        "cursor a string",
        {"op": "events", "jobs": [{"job_id": "req_1", "messages": [{"cursor": "1", "from": "b", "blob": "AA=="}]}]},
        "jobs[0].messages[0].cursor",
    ),
    (
        "cursor zero",
        {"op": "events", "jobs": [{"job_id": "req_1", "messages": [{"cursor": 0, "from": "b", "blob": "AA=="}]}]},
        "jobs[0].messages[0].cursor",
    ),
    (
        "sender missing",
        {"op": "events", "jobs": [{"job_id": "req_1", "messages": [{"cursor": 1, "blob": "AA=="}]}]},
        "jobs[0].messages[0].from",
    ),
    (
        "blob not base64",
        {"op": "events", "jobs": [{"job_id": "req_1", "messages": [{"cursor": 1, "from": "b", "blob": "!!notbase64"}]}]},
        "jobs[0].messages[0].blob",
    ),
    (
        "blob not a string",
        {"op": "events", "jobs": [{"job_id": "req_1", "messages": [{"cursor": 1, "from": "b", "blob": None}]}]},
        "jobs[0].messages[0].blob",
    ),
    # Binary frames: attachments (API.md §1.11).
    ("truncated", b"\x00\x00\x01", "frame"),
    ("header in UTF-16", len("{}".encode("utf-16")).to_bytes(4, "big") + "{}".encode("utf-16"), "frame"),
    ("header past the end", (99).to_bytes(4, "big") + b"{}", "frame"),
    ("lengths past the end", _with_blobs({"op": "events"}, [b"ab"])[:-1], "attachments"),
    ("base64 in a binary frame", _attached_events(["aGk="], []), "jobs[0].messages[0].blob"),
    ("index out of range", _attached_events([1], [b"a"]), "jobs[0].messages[0].blob"),
    ("index twice", _attached_events([0, 0], [b"a"]), "jobs[0].messages[1].blob"),
    ("index a bool", _attached_events([True], [b"a", b"b"]), "jobs[0].messages[0].blob"),
    ("attachment unread", _attached_events([0], [b"a", b"b"]), "attachments"),
    ("attachments on an ack", _with_blobs({"op": "ack", "seq": 1}, [b"x"]), "attachments"),
]


@pytest.mark.parametrize(("frame", "where"), [(f, w) for _, f, w in MALFORMED], ids=[n for n, _, _ in MALFORMED])
def test_a_malformed_frame_is_refused_with_its_field_named_and_nothing_applied(frame: Any, where: str) -> None:
    tasks: list[Mapping[str, Any]] = []
    s = idle_stream(tasks)
    s.open("req_1")
    with pytest.raises(MalformedFrame) as caught:
        s._on_frame(*_decoded(frame))
    assert caught.value.where == where
    assert isinstance(caught.value, EngineError)
    assert "notbase64" not in str(caught.value)  # the value received is not repeated
    assert tasks == [] and list(s._seen_tasks) == [] and list(s._boxes) == ["req_1"]
    assert s._boxes["req_1"].messages == [] and s._boxes["req_1"].cursor == 0


def test_a_half_bad_frame_loses_no_task() -> None:
    """The task part of a frame is not applied when its jobs part is malformed: the task
    pushed again (every new connection does) runs, and no box is left behind."""
    tasks: list[Mapping[str, Any]] = []
    s = idle_stream(tasks)
    frame = {
        "op": "events",
        "tasks": [{"task_id": "t9", "job_id": "j9"}],
        "jobs": [{"job_id": "j9", "messages": [{"cursor": 1, "from": "b", "blob": "!!notbase64"}]}],
    }
    with pytest.raises(MalformedFrame, match=r"jobs\[0\]\.messages\[0\]\.blob"):
        s._on_frame(frame)
    assert tasks == [] and list(s._boxes) == [] and list(s._seen_tasks) == []
    s._on_frame({"op": "events", "tasks": [{"task_id": "t9", "job_id": "j9"}]})
    assert [t["task_id"] for t in tasks] == ["t9"] and list(s._boxes) == ["j9"]


def test_well_formed_frames_still_deliver() -> None:
    tasks: list[Mapping[str, Any]] = []
    s = idle_stream(tasks)
    s._on_frame({"op": "events", "tasks": [GOOD_TASK], "jobs": None})
    message = {"cursor": 2, "from": "node-b", "to": "*", "seq": 1, "blob": b64(b"hi")}
    s._on_frame({"op": "events", "jobs": [{"job_id": "req_1", "job_status": None, "next_after": 2, "messages": [message]}]})
    s._on_frame({"op": "somethingnew"})  # unknown ops are ignored
    s._on_frame({"op": "ack", "seq": 5})  # an ack nobody waits for
    assert tasks == [GOOD_TASK]
    assert s.fetch("req_1", 0, 0.0) == [(2, "node-b", b"hi")]


def test_a_binary_frame_delivers_its_attachments() -> None:
    s = idle_stream()
    s.open("req_1")
    big = bytes(range(256)) * 200
    s._on_frame(*_decoded(_attached_events([1, 0], [b"hi", big])))
    assert s.fetch("req_1", 0, 0.0) == [(1, "node-b", big), (2, "node-b", b"hi")]
    # What the coordinator encodes (bytes in place) is what the node reads.
    blobs: list[bytes] = []
    messages = attached.lift([{"cursor": 3, "from": "node-b", "blob": b"three"}], blobs)
    frame = attached.encode({"op": "events", "jobs": [{"job_id": "req_1", "messages": messages}]}, blobs)
    s._on_frame(*_decoded(frame))
    assert s.fetch("req_1", 2, 0.0) == [(3, "node-b", b"three")]


def test_a_stream_reads_frames_of_its_own_kind_only() -> None:
    """With attachments every frame is binary; without, frames are JSON whether sent as text or
    as bytes, exactly as before attachments (API.md §1.11)."""
    with pytest.raises(MalformedFrame) as caught:
        link._decode_frame(json.dumps({"op": "events"}), attachments=True)
    assert caught.value.where == "frame" and "text frame" in str(caught.value)
    body = _attached_events([0], [b"x"])
    with pytest.raises(MalformedFrame, match="not JSON"):
        link._decode_frame(body, attachments=False)
    s = idle_stream()
    s.open("req_1")
    frame = {"op": "events", "jobs": [{"job_id": "req_1", "messages": [{"cursor": 1, "from": "node-b", "blob": b64(b"hi")}]}]}
    s._on_frame(*link._decode_frame(json.dumps(frame).encode(), attachments=False))
    assert s.fetch("req_1", 0, 0.0) == [(1, "node-b", b"hi")]


def test_a_task_that_cannot_be_started_runs_when_pushed_again(caplog: pytest.LogCaptureFixture) -> None:
    started: list[str] = []

    def on_task(t: Mapping[str, Any]) -> None:
        if not started:
            started.append("refused")
            raise RuntimeError("pool shut down")
        started.append(str(t["task_id"]))

    s = EventStream(None, "node-a", on_task=on_task, free_slots=lambda: 4, transport="http")  # type: ignore[arg-type]
    s._on_frame({"op": "events", "tasks": [GOOD_TASK, {"task_id": "task_2", "job_id": "req_2"}]})
    assert started == ["refused", "task_2"] and "task_1 could not be started" in caplog.text
    assert "req_1" not in s._boxes
    s._on_frame({"op": "events", "tasks": [GOOD_TASK]})
    assert started == ["refused", "task_2", "task_1"]


class FakeWS:
    subprotocol = None  # a coordinator from before attachments (API.md §1.11)

    def __init__(self, frames: list[str | bytes]) -> None:
        self.frames = frames
        self.closed = False

    def recv(self, timeout: float | None = None) -> str | bytes:
        if self.frames:
            return self.frames.pop(0)
        time.sleep(timeout or 0)
        raise TimeoutError

    def send(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class FakeLink:
    """Each connection sends its script of frames, then nothing."""

    def __init__(self, scripts: list[list[str | bytes]]) -> None:
        self.scripts = scripts
        self.opened = 0

    def open_stream(self, node_id: str) -> tuple[FakeWS, bytes]:
        self.opened += 1
        return FakeWS(self.scripts.pop(0) if self.scripts else []), b"\x00" * 16

    def sign_frame(self, nonce: bytes, seq: int, body: bytes) -> bytes:
        return body

    def request(self, *a: Any, **kw: Any) -> Any:
        raise AssertionError("the stream fell back to HTTP")


def test_no_frame_ends_the_websocket_receive_thread(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Every bad frame closes its connection (nothing of it applied); the stream reconnects
    (backing off) and takes the task the next connection pushes."""
    monkeypatch.setattr(link, "_BACKOFF_FIRST", 0.01)
    deep = "[" * 100_000 + "]" * 100_000  # RecursionError in json, not a ValueError
    scripts: list[list[str | bytes]] = [
        [json.dumps({"op": "ack", "seq": [1]})],
        [json.dumps({"op": "events", "tasks": 5})],
        [json.dumps({"op": "events", "tasks": ["x"]})],
        [b"\xff\xfe not utf-8"],
        ["not json"],
        [deep],
        [json.dumps({"op": "events", "tasks": [GOOD_TASK]})],
    ]
    fake = FakeLink(scripts)
    tasks: list[Mapping[str, Any]] = []
    s = EventStream(fake, "node-a", on_task=tasks.append, free_slots=lambda: 4)  # type: ignore[arg-type]
    s.start()
    try:
        until(lambda: tasks == [GOOD_TASK], 10)
        assert fake.opened == 7
        assert all(t.is_alive() for t in s._threads)
        assert "malformed coordinator frame: seq: expected an integer, got list" in caplog.text
    finally:
        s.stop()


def test_an_unexpected_error_in_a_frame_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(link, "_BACKOFF_FIRST", 0.01)
    calls = {"n": 0}

    def free_slots() -> int:
        calls["n"] += 1
        if calls["n"] == 2:  # the want after the first events frame
            raise KeyError("a bug elsewhere")
        return 4

    fake = FakeLink([[json.dumps({"op": "events", "jobs": []})], [json.dumps({"op": "events", "tasks": [GOOD_TASK]})]])
    tasks: list[Mapping[str, Any]] = []
    s = EventStream(fake, "node-a", on_task=tasks.append, free_slots=free_slots)  # type: ignore[arg-type]
    s.start()
    try:
        until(lambda: tasks == [GOOD_TASK], 10)
        assert fake.opened >= 2 and s._threads[0].is_alive()
    finally:
        s.stop()


class HostileCoordinator(ScriptedCoordinator):
    """Answers the long-poll with the scripted answers first."""

    def __init__(self, answers: list[Any]) -> None:
        super().__init__()
        self.answers = answers

    def request(self, method: str, path: str, *, body: Any = None, timeout: float | None = None, **kw: Any) -> Any:
        if path.endswith("/events"):
            with self.lock:
                if self.answers:
                    self.events.append(body)
                    return self.answers.pop(0)
        return super().request(method, path, body=body, timeout=timeout, **kw)


def test_no_answer_ends_the_long_poll_thread(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(link, "_BACKOFF_FIRST", 0.01)
    coord = HostileCoordinator(
        [
            [1, 2],
            {"tasks": 5},
            {"tasks": [{"task_id": "t1"}]},
            {"jobs": [{"job_id": "req_1", "messages": [{"cursor": 1e400, "from": "b", "blob": "AA=="}]}]},
            {"tasks": [GOOD_TASK], "jobs": []},
        ]
    )
    tasks: list[Mapping[str, Any]] = []
    s = EventStream(coord, "node-a", on_task=tasks.append, free_slots=lambda: 4, poll=0.05, transport="http")  # type: ignore[arg-type]
    s.start()
    try:
        until(lambda: tasks == [GOOD_TASK], 10)
        assert s._threads[0].is_alive()
        assert "answer dropped: malformed coordinator frame: tasks[0].job_id" in caplog.text
    finally:
        s.stop()


class BadAckCoordinator(ScriptedCoordinator):
    def __init__(self, answers: list[Any]) -> None:
        super().__init__()
        self.answers = answers

    def request(self, method: str, path: str, *, body: Any = None, timeout: float | None = None, **kw: Any) -> Any:
        if path.endswith("/outbox"):
            with self.lock:
                if self.answers:
                    self.posts.append(body)
                    return self.answers.pop(0)
        return super().request(method, path, body=body, timeout=timeout, **kw)


@pytest.mark.parametrize(
    "answer",
    [
        [],
        {"jobs": [], "results": {}},
        {"jobs": {}, "results": {"task_1": {"error": "refused"}}},
        {"jobs": {"req_1": {"error": [1]}}, "results": {}},
        {"jobs": {"req_1": {"error": {"job_status": 5}}}, "results": {}},
    ],
    ids=["a list", "jobs a list", "result error a string", "job error a list", "job status a number"],
)
def test_a_malformed_outbox_answer_fails_its_batch_and_the_sender_goes_on(answer: Any) -> None:
    coord = BadAckCoordinator([answer])
    s = EventStream(coord, "node-a", on_task=lambda t: None, free_slots=lambda: 4, poll=0.05, transport="http")  # type: ignore[arg-type]
    s.start()
    try:
        s.open("req_1")
        s.post("req_1", [("node-b", b"one")])
        with pytest.raises(MalformedFrame, match="outbox answer"):
            s.report("task_1", {"status": "done", "result": {}})
        with pytest.raises(EngineError, match="malformed coordinator frame"):
            s.fetch("req_1", 0, 5.0)
        # The sender lives on: the next post is sent and acknowledged.
        ack = s.report("task_2", {"status": "done", "result": {}}, timeout=5.0)
        assert ack == {"task_status": "done", "job_status": "done"}
        assert s._threads[1].is_alive()
    finally:
        s.stop()


def test_a_refusal_with_a_malformed_status_is_still_a_refusal() -> None:
    coord = BadAckCoordinator([{"jobs": {}, "results": {"task_1": {"error": {"status": [409], "code": "x"}}}}])
    s = EventStream(coord, "node-a", on_task=lambda t: None, free_slots=lambda: 4, poll=0.05, transport="http")  # type: ignore[arg-type]
    s.start()
    try:
        with pytest.raises(link.CoordinatorRefused) as caught:
            s.report("task_1", {"status": "done", "result": {}}, timeout=5.0)
        assert caught.value.status == 409
        assert s._threads[1].is_alive()
    finally:
        s.stop()


def test_a_job_box_keeps_at_most_its_limits(caplog: pytest.LogCaptureFixture) -> None:
    """A relay that pushes faster than the task fetches cannot grow the node's memory: past a
    box's limits (messages, bytes) messages are dropped, logged; what the task has fetched
    makes room again."""
    caplog.set_level(logging.WARNING, logger="shardguard.node")
    s = idle_stream()
    s.open("req_1")
    s.open("req_2")
    blob = b64(b"x" * 1000)
    n = link._BOX_MESSAGES + 100
    s._deliver({"jobs": [{"job_id": "req_1", "messages": [{"cursor": c, "from": "b", "blob": blob} for c in range(1, n + 1)]}]})
    box = s._boxes["req_1"]
    assert len(box.messages) == link._BOX_MESSAGES and box.dropped == 100 and box.cursor == n
    assert "req_1: 64 message(s) dropped" in caplog.text and "req_1: 128 message(s) dropped" not in caplog.text
    got = s.fetch("req_1", 0, 0.0)
    assert len(got) == link._BOX_MESSAGES and got[-1][0] == link._BOX_MESSAGES
    # What the task has passed is released, new or not: room again.
    assert s.fetch("req_1", n, 0.0) == [] and box.messages == [] and box.size == 0 == s._boxes_size
    s._deliver({"jobs": [{"job_id": "req_1", "messages": [{"cursor": n + 1, "from": "b", "blob": blob}]}]})
    assert s.fetch("req_1", n, 0.0) == [(n + 1, "b", b"x" * 1000)]
    assert s._boxes_size == 1000 == box.size

    big = b64(b"y" * (1024 * 1024))
    s._deliver({"jobs": [{"job_id": "req_2", "messages": [{"cursor": c, "from": "b", "blob": big} for c in range(1, 12)]}]})
    assert s._boxes["req_2"].size == link._BOX_BYTES and s._boxes["req_2"].dropped == 11 - link._BOX_BYTES // 2**20
    s.close("req_2")
    s.close("req_1")
    assert s._boxes_size == 0


def test_all_boxes_together_keep_at_most_their_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(link, "_BOXES_BYTES", 3000)
    s = idle_stream()
    for job in ("req_1", "req_2"):
        s.open(job)
        s._deliver(
            {"jobs": [{"job_id": job, "messages": [{"cursor": c, "from": "b", "blob": b64(b"z" * 1000)} for c in (1, 2)]}]}
        )
    assert [len(s._boxes[j].messages) for j in ("req_1", "req_2")] == [2, 1] and s._boxes["req_2"].dropped == 1
    assert s._boxes_size == 3000
    assert len(s.fetch("req_1", 1, 0.0)) == 1 and s._boxes_size == 2000


@pytest.mark.parametrize(
    ("answer", "what"),
    [
        (b"[" * 10 + b"0" * (link._MAX_ANSWER) + b"]" * 10, "larger than"),  # endless, cut at the cap
        (b"not json", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),  # nesting that would overflow the parser
    ],
)
def test_an_http_answer_is_read_within_its_cap_and_refused_typed(answer: bytes, what: str) -> None:
    """A hostile coordinator's answer to a plain request (registration, challenges, the HTTP
    fallback) is read at most to _MAX_ANSWER and refused as MalformedFrame, never buffered whole
    or raised untyped."""
    import httpx

    from shardguard.channel import NodeKeys

    served = httpx.MockTransport(lambda request: httpx.Response(200, content=answer))
    c = link.CoordinatorLink("http://coordinator.test", NodeKeys.generate("node-1"))
    c._http = httpx.Client(base_url="http://coordinator.test", transport=served)
    with pytest.raises(MalformedFrame, match=what):
        c.request("GET", "/v1/nodes/node-1/challenges")
    c.close()
