"""The node's connection to the coordinator: signed requests, and one event stream for all jobs.

A node runs many tasks at once (one per job). Instead of every task long-polling its own inbox
and posting each round on its own request, :class:`EventStream` keeps **one** long-poll open
(``POST /v1/nodes/{id}/events``: new tasks, and every running job's messages and end) and
**one** sender that posts whatever the tasks queued meanwhile — messages of several jobs and
task results — in a single ``POST /v1/nodes/{id}/outbox``. Under load a request carries many
rounds of many jobs; alone, a round costs one request, as before. The relay stays untrusted:
everything a task sends is already sealed and signed for its recipient (``node.engine``).

Delivery: posts are retried until they are accepted or refused (the coordinator keeps
``(job, from, to, seq)`` unique and result reports idempotent, so a retry after a lost answer
is harmless); a refusal for one job ends that job's task, never the others'.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import httpx

from shardguard.channel import NodeKeys
from shardguard.coordinator.wire import sign_request
from shardguard.node.engine import EngineError

__all__ = ["CoordinatorLink", "CoordinatorRefused", "EventStream"]

log = logging.getLogger("shardguard.node")

#: Most messages and bytes of blobs in one outbox post (the coordinator's limits are 1024
#: messages and a 4 MiB body; base64 grows blobs by a third).
_POST_MESSAGES = 1024
_POST_BYTES = 2 * 1024 * 1024
_POST_RESULTS = 64


class CoordinatorRefused(EngineError):
    """The coordinator answered a request with an error (4xx/5xx)."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        self.status = status
        super().__init__(f"coordinator refused {method} {path}: {status} {body[:300]}")


class CoordinatorLink:
    """Signed HTTP requests to the coordinator's node API (coordinator/API.md). Thread-safe."""

    def __init__(self, base_url: str, keys: NodeKeys, *, timeout: float = 30.0) -> None:
        self._keys = keys
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout, connect=5.0),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
        )

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, body: Any = None,
                timeout: float | None = None) -> Any:  # fmt: skip
        target = path if not params else self._http.build_request(method, path, params=params).url.raw_path.decode()
        raw = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = sign_request(self._keys, method, target, raw)
        if raw:
            headers["Content-Type"] = "application/json"
        kw: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        r = self._http.request(method, target, content=raw or None, headers=headers, **kw)
        if r.status_code >= 400:
            raise CoordinatorRefused(method, path, r.status_code, r.text)
        return r.json()


@dataclass
class _Box:
    """What the stream has received for one job."""

    cursor: int = 0
    messages: list[tuple[int, str, bytes]] = field(default_factory=list)
    status: str = "running"
    error: str | None = None


@dataclass
class _Result:
    task_id: str
    body: dict[str, Any]
    done: Future[dict[str, Any]]


class EventStream:
    """One long-poll and one sender per node, shared by all its tasks (module docstring).

    Implements :class:`~shardguard.node.engine.Relay` for the engine (``post``, ``fetch``);
    ``report`` sends a task's result and returns the coordinator's acknowledgement. Tasks the
    stream hands out go to ``on_task``; ``free_slots()`` says how many more the node can take.
    """

    def __init__(
        self,
        link: CoordinatorLink,
        node_id: str,
        *,
        on_task: Callable[[Mapping[str, Any]], None],
        free_slots: Callable[[], int],
        poll: float = 10.0,
    ) -> None:
        self._link = link
        self._node = node_id
        self._on_task = on_task
        self._free_slots = free_slots
        self._poll = poll
        self._cond = threading.Condition()
        self._boxes: dict[str, _Box] = {}
        self._seq = 0
        self._out: queue.SimpleQueue[tuple[str, str, int, bytes] | _Result | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        for target, name in ((self._receive_loop, "events"), (self._send_loop, "outbox")):
            t = threading.Thread(target=target, name=f"shardguard-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._out.put(None)
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=2)

    def open(self, job: str) -> None:
        with self._cond:
            self._boxes.setdefault(job, _Box())

    def close(self, job: str) -> None:
        with self._cond:
            self._boxes.pop(job, None)

    # -- Relay ----------------------------------------------------------------------------
    def post(self, job: str, envelopes: Sequence[tuple[str, bytes]]) -> None:
        with self._cond:
            for to, blob in envelopes:
                self._seq += 1
                self._out.put((job, to, self._seq, blob))

    def fetch(self, job: str, after: int, wait: float) -> list[tuple[int, str, bytes]]:
        end = time.monotonic() + wait
        with self._cond:
            while True:
                box = self._boxes.get(job)
                if box is None:
                    raise EngineError(f"job {job} is not open on this node")
                got = [m for m in box.messages if m[0] > after]
                if got:
                    box.messages = got  # what the caller has passed is not needed again
                    return got
                if box.error is not None:
                    raise EngineError(box.error)
                if box.status != "running":
                    raise EngineError(f"job {job} ended ({box.status}) at the coordinator")
                left = end - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return []
                self._cond.wait(left)

    # -- results and job ends -------------------------------------------------------------
    def report(self, task_id: str, body: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        """Post a task's result (batched with other traffic); the coordinator's ack."""
        item = _Result(task_id, body, Future())
        self._out.put(item)
        return item.done.result(timeout=timeout)

    def wait_ended(self, job: str, timeout: float) -> str:
        """The job's status once it is no longer running (or ``running`` after ``timeout``)."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                box = self._boxes.get(job)
                if box is None or box.status != "running":
                    return "unknown" if box is None else box.status
                left = end - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return "running"
                self._cond.wait(left)

    # -- the two loops --------------------------------------------------------------------
    def _receive_loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                cursors = {job: box.cursor for job, box in self._boxes.items() if box.status == "running"}
            claim = max(0, min(64, self._free_slots()))
            # A full node re-asks soon, so a task that frees a slot is not kept waiting a whole poll.
            wait = self._poll if claim else min(self._poll, 0.2)
            try:
                out = self._link.request("POST", f"/v1/nodes/{self._node}/events",
                                         body={"cursors": cursors, "claim": claim, "wait": wait}, timeout=wait + 30)  # fmt: skip
            except (httpx.HTTPError, EngineError, ValueError) as e:
                log.warning("event stream: coordinator unreachable: %s", e)
                self._stop.wait(1.0)
                continue
            self._deliver(out)

    def _deliver(self, out: Mapping[str, Any]) -> None:
        tasks = list(out.get("tasks") or [])
        with self._cond:
            for t in tasks:
                self._boxes.setdefault(str(t["job_id"]), _Box())
            for j in out.get("jobs") or []:
                box = self._boxes.get(str(j["job_id"]))
                if box is None:
                    continue
                for m in j.get("messages") or []:
                    cursor = int(m["cursor"])
                    if cursor > box.cursor:
                        box.messages.append((cursor, str(m["from"]), base64.b64decode(m["blob"])))
                        box.cursor = cursor
                box.status = str(j.get("job_status") or "running")
            self._cond.notify_all()
        for t in tasks:
            self._on_task(t)

    def _send_loop(self) -> None:
        pending: list[tuple[str, str, int, bytes] | _Result] = []
        while True:
            if not pending:
                item = self._out.get()
                if item is None:
                    return
                pending.append(item)
            ending = self._drain(pending)
            batch, pending = self._split(pending)
            if not self._send(batch):
                pending = batch + pending  # unreachable: keep everything, in order, and retry
                if self._stop.wait(0.5):
                    return
            if ending:
                return

    def _drain(self, pending: list[tuple[str, str, int, bytes] | _Result]) -> bool:
        """Move what is queued now into ``pending``; True if the stop marker was among it."""
        while True:
            try:
                item = self._out.get_nowait()
            except queue.Empty:
                return False
            if item is None:
                return True
            pending.append(item)

    @staticmethod
    def _split(
        pending: list[tuple[str, str, int, bytes] | _Result],
    ) -> tuple[list[tuple[str, str, int, bytes] | _Result], list[tuple[str, str, int, bytes] | _Result]]:
        """The longest prefix within one post's limits (order kept: messages before the result
        that follows them)."""
        n_msg = n_res = size = 0
        for i, item in enumerate(pending):
            if isinstance(item, _Result):
                n_res += 1
                if n_res > _POST_RESULTS:
                    return pending[:i], pending[i:]
            else:
                n_msg += 1
                size += len(item[3])
                if i and (n_msg > _POST_MESSAGES or size > _POST_BYTES):
                    return pending[:i], pending[i:]
        return pending, []

    def _send(self, batch: Sequence[tuple[str, str, int, bytes] | _Result]) -> bool:
        messages = []
        results: list[_Result] = []
        for item in batch:
            if isinstance(item, _Result):
                results.append(item)
            else:
                job, to, seq, blob = item
                messages.append({"job": job, "to": to, "seq": seq, "blob": base64.b64encode(blob).decode()})
        body = {"messages": messages, "results": [{"task_id": r.task_id, **r.body} for r in results]}
        try:
            out = self._link.request("POST", f"/v1/nodes/{self._node}/outbox", body=body)
        except CoordinatorRefused as e:
            if e.status >= 500 or e.status in (401, 429):
                log.warning("outbox: %s (retrying)", e)
                return False
            # The whole post was refused (malformed by our own code): fail every item in it.
            with self._cond:
                for m in messages:
                    box = self._boxes.get(str(m["job"]))
                    if box is not None:
                        box.error = str(e)
                self._cond.notify_all()
            for r in results:
                r.done.set_exception(e)
            return True
        except (httpx.HTTPError, ValueError) as e:
            log.warning("outbox: coordinator unreachable: %s (retrying)", e)
            return False
        with self._cond:
            for job, ack in (out.get("jobs") or {}).items():
                err = ack.get("error") if isinstance(ack, dict) else None
                box = self._boxes.get(job)
                if err and box is not None:
                    box.error = f"coordinator refused messages of job {job}: {err.get('code')}: {err.get('message')}"
                    if err.get("job_status"):
                        box.status = str(err["job_status"])
            self._cond.notify_all()
        acks = out.get("results") or {}
        for r in results:
            ack = acks.get(r.task_id)
            if not isinstance(ack, dict):
                r.done.set_exception(EngineError(f"no acknowledgement for task {r.task_id}"))
            elif "error" in ack:
                err = ack["error"]
                r.done.set_exception(
                    CoordinatorRefused("POST", f"outbox result {r.task_id}", int(err.get("status", 409)), json.dumps(err))
                )
            else:
                r.done.set_result(ack)
        return True
