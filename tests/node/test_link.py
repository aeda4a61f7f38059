"""The node's event stream over a scripted coordinator: batching, retries, per-job refusals."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx
import pytest

from shardguard.node import link as link_module
from shardguard.node.engine import EngineError
from shardguard.node.link import CoordinatorRefused, EventStream


class ScriptedCoordinator:
    """Answers the stream's requests; the test decides what the events long-poll returns."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.fail_next: list[Exception] = []
        self.job_errors: dict[str, dict[str, Any]] = {}
        self.news: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def request(self, method: str, path: str, *, body: Any = None, timeout: float | None = None, **_: Any) -> Any:
        with self.lock:
            if path.endswith("/outbox"):
                if self.fail_next:
                    raise self.fail_next.pop(0)
                self.posts.append(body)
                jobs = {m["job"]: self.job_errors.get(m["job"], {"accepted": 1, "duplicates": 0}) for m in body["messages"]}
                results = {r["task_id"]: {"task_status": r["status"], "job_status": "done"} for r in body["results"]}
                return {"jobs": jobs, "results": results}
            self.events.append(body)
            news, self.news = self.news, []
        if not news:
            time.sleep(min(0.05, body["wait"]))
        return {"tasks": [], "jobs": news}


def stream(coord: ScriptedCoordinator, tasks: list[Mapping[str, Any]] | None = None) -> EventStream:
    sink = tasks if tasks is not None else []
    s = EventStream(coord, "node-a", on_task=sink.append, free_slots=lambda: 4, poll=0.05, transport="http")  # type: ignore[arg-type]
    s.start()
    return s


def until(cond: Any, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


def test_posts_are_retried_in_order_until_accepted() -> None:
    coord = ScriptedCoordinator()
    coord.fail_next = [httpx.ConnectError("down"), CoordinatorRefused("POST", "/outbox", 503, "busy")]
    s = stream(coord)
    try:
        s.open("req_1")
        s.post("req_1", [("node-b", b"one")])
        s.post("req_1", [("node-b", b"two"), ("node-c", b"three")])
        until(lambda: sum(len(p["messages"]) for p in coord.posts) == 3)
        sent = [(m["to"], m["seq"], base64.b64decode(m["blob"])) for p in coord.posts for m in p["messages"]]
        assert sent == [("node-b", 1, b"one"), ("node-b", 2, b"two"), ("node-c", 3, b"three")]
    finally:
        s.stop()


def test_a_refused_job_ends_its_task_only() -> None:
    coord = ScriptedCoordinator()
    coord.job_errors["req_bad"] = {
        "error": {"status": 409, "code": "job_not_running", "message": "failed", "job_status": "failed"}
    }
    s = stream(coord)
    try:
        s.open("req_bad"), s.open("req_ok")
        s.post("req_bad", [("node-b", b"x")])
        s.post("req_ok", [("node-b", b"y")])
        with pytest.raises(EngineError, match="job_not_running"):
            s.fetch("req_bad", 0, 5.0)
        coord.news = [
            {"job_id": "req_ok", "job_status": "running", "messages": [{"cursor": 3, "from": "node-b", "blob": "eg=="}]}
        ]
        assert s.fetch("req_ok", 0, 5.0) == [(3, "node-b", b"z")]
    finally:
        s.stop()


def test_results_are_acknowledged_and_job_ends_wake_waiters() -> None:
    coord = ScriptedCoordinator()
    s = stream(coord)
    try:
        s.open("req_1")
        assert s.report("task_1", {"status": "done", "result": {"signature": "00"}}) == {
            "task_status": "done",
            "job_status": "done",
        }
        coord.news = [{"job_id": "req_1", "job_status": "failed", "messages": []}]
        assert s.wait_ended("req_1", 5.0) == "failed"
        with pytest.raises(EngineError, match="ended"):
            s.fetch("req_1", 0, 1.0)
        s.close("req_1")
        with pytest.raises(EngineError, match="not open"):
            s.fetch("req_1", 0, 0.1)
    finally:
        s.stop()


def test_the_stream_asks_for_running_jobs_and_free_slots() -> None:
    coord = ScriptedCoordinator()
    s = stream(coord)
    try:
        s.open("req_1")
        until(lambda: any(e["cursors"] == {"req_1": 0} for e in coord.events))
        assert all(e["claim"] == 4 for e in coord.events)
        coord.news = [{"job_id": "req_1", "job_status": "running", "messages": [{"cursor": 5, "from": "node-b", "blob": "AA=="}]}]
        assert s.fetch("req_1", 0, 5.0) == [(5, "node-b", b"\x00")]
        until(lambda: coord.events[-1]["cursors"] == {"req_1": 5})
    finally:
        s.stop()


def test_held_envelopes_go_out_with_the_next_post_or_before_a_wait() -> None:
    coord = ScriptedCoordinator()
    s = stream(coord)
    try:
        s.open("req_1")
        s.post("req_1", [("node-b", b"note")], hold=True)
        time.sleep(0.1)
        assert coord.posts == []  # held
        s.post("req_1", [("node-b", b"round 1")])
        until(lambda: sum(len(p["messages"]) for p in coord.posts) == 2)
        assert [base64.b64decode(m["blob"]) for m in coord.posts[0]["messages"]] == [b"note", b"round 1"]  # one post, in order
        s.open("req_2")
        s.post("req_2", [("node-b", b"note 2")], hold=True)
        assert s.fetch("req_2", 0, 0.05) == []  # about to wait: the held note went out first
        until(lambda: any(base64.b64decode(m["blob"]) == b"note 2" for p in coord.posts for m in p["messages"]))
        s.open("req_3")
        s.post("req_3", [("node-b", b"never")], hold=True)
        s.close("req_3")  # the job ended before its next post: dropped
        s.post("req_4", [("node-b", b"x")])
        until(lambda: any(m["job"] == "req_4" for p in coord.posts for m in p["messages"]))
        assert not any(m["job"] == "req_3" for p in coord.posts for m in p["messages"])
    finally:
        s.stop()


def test_a_task_handed_out_twice_runs_once() -> None:
    coord = ScriptedCoordinator()
    tasks: list[Mapping[str, Any]] = []
    s = stream(coord, tasks)
    try:
        task = {"task_id": "task_1", "job_id": "req_1", "kind": "sign"}
        s._deliver({"tasks": [task], "jobs": []})
        s._deliver({"tasks": [dict(task), {"task_id": "task_2", "job_id": "req_2", "kind": "sign"}], "jobs": []})
        assert [t["task_id"] for t in tasks] == ["task_1", "task_2"]
        # Long after its id left the recent-ids memory: the job's box is still open, so it is
        # still ours (one task per node and job) and not run a second time.
        s._seen_tasks.clear()
        s._deliver({"tasks": [dict(task)], "jobs": []})
        assert [t["task_id"] for t in tasks] == ["task_1", "task_2"]
    finally:
        s.stop()


def test_a_stopped_stream_ends_waiting_tasks_at_once() -> None:
    """A task in flight at shutdown (a pre-signing, say) waited for its result's ack up to 60 s
    and its fetches returned nothing at once until the deadline: the process could not exit
    (interpreter exit joins task threads). Now both raise as soon as the stream stops."""
    coord = ScriptedCoordinator()
    released = threading.Event()
    answer = coord.request

    def hanging(method: str, path: str, **kw: Any) -> Any:
        if path.endswith("/outbox"):
            released.wait(10)  # the coordinator never answers while the node stops
        return answer(method, path, **kw)

    coord.request = hanging  # type: ignore[method-assign]
    s = stream(coord)
    s.open("req_1")
    errors: list[BaseException] = []

    def wait_for_ack() -> None:
        try:
            s.report("task_1", {"status": "done", "result": {}}, timeout=60)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=wait_for_ack)
    t.start()
    time.sleep(0.2)
    started = time.monotonic()
    s.stop()
    t.join(timeout=5)
    released.set()
    assert not t.is_alive() and time.monotonic() - started < 3
    assert len(errors) == 1 and isinstance(errors[0], EngineError) and "stopping" in str(errors[0])
    with pytest.raises(EngineError, match="stopping"):
        s.fetch("req_1", 0, 10.0)


def test_tasks_pushed_beyond_the_open_jobs_limit_are_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review finding: a coordinator pushing tasks the node never asked for (it asks for as
    many as it has room) had every one taken — 10,000 boxes and queue entries. Past
    _MAX_OPEN_JOBS jobs open, a pushed task is not taken; once a job closes, a later push is."""
    monkeypatch.setattr(link_module, "_MAX_OPEN_JOBS", 8)
    taken: list[Any] = []
    s = EventStream(None, "node-a", on_task=taken.append, free_slots=lambda: 0, transport="http")  # type: ignore[arg-type]
    s._deliver({"tasks": [{"task_id": f"t{i}", "job_id": f"j{i}", "kind": "sign"} for i in range(20)]})
    assert [t["task_id"] for t in taken] == [f"t{i}" for i in range(8)]
    s.close("j0")
    s._deliver({"tasks": [{"task_id": "t8", "job_id": "j8", "kind": "sign"}]})  # pushed again
    assert taken[-1]["task_id"] == "t8" and len(taken) == 9


class _Refusing(ScriptedCoordinator):
    """Answers every outbox post 503."""

    def request(self, method: str, path: str, *, body: Any = None, timeout: float | None = None, **kw: Any) -> Any:
        if path.endswith("/outbox"):
            with self.lock:
                self.posts.append(body)
            raise CoordinatorRefused("POST", path, 503, "busy")
        return super().request(method, path, body=body, timeout=timeout, **kw)


def test_the_outbox_keeps_a_bounded_backlog_while_posts_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review finding: while every post was refused (503) the outbox kept every message of
    every job, without end. It keeps at most _PENDING_BYTES of messages (the oldest go first),
    and never drops a task's result."""
    monkeypatch.setattr(link_module, "_PENDING_BYTES", 50_000)
    coord = _Refusing()
    s = EventStream(coord, "node-a", on_task=lambda t: None, free_slots=lambda: 4, poll=0.05, transport="http")  # type: ignore[arg-type]
    s.start()
    try:
        for k in range(20):
            s.open(f"job{k}")
            s.post(f"job{k}", [("node-b", b"x" * 10_000)])
        until(lambda: len(coord.posts) >= 3 and len(coord.posts[-1]["messages"]) == 5)
        kept = [m["job"] for m in coord.posts[-1]["messages"]]
        assert kept == [f"job{k}" for k in range(15, 20)], kept  # the newest 50,000 bytes
    finally:
        s.stop()
