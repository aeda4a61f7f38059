"""The node's connection to the coordinator: signed requests, and one event stream for all jobs.

A node runs many tasks at once (one per job). Instead of every task long-polling its own inbox
and posting each round on its own request, :class:`EventStream` keeps **one** long-poll open
(``POST /v1/nodes/{id}/events``: new tasks, and every running job's messages and end) and
**one** sender that posts whatever the tasks queued meanwhile — messages of several jobs and
task results — in a single ``POST /v1/nodes/{id}/outbox``. Under load a request carries many
rounds of many jobs; alone, a round costs one request, as before. The relay stays untrusted:
everything a task sends is already sealed and signed for its recipient (``node.engine``).

Transport: by default both run over **one WebSocket** (``GET /v1/nodes/{id}/stream``, API.md
§1.11): the coordinator pushes tasks, messages and job ends as they happen, and the node sends
``want`` (its open jobs' cursors and free slots) and ``outbox`` frames, each signed with its
identity key and bound to the connection and its place in it (``wire.sign_frame``). A
coordinator without the stream endpoint (404) gets the HTTP long-poll and posts instead.

Delivery: posts are retried until they are accepted or refused (the coordinator keeps
``(job, from, to, seq)`` unique and result reports idempotent, so a retry after a lost answer
is harmless — also across a reconnect); a refusal for one job ends that job's task, never the
others'.
"""

from __future__ import annotations

import base64
import collections
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
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from shardguard.channel import NodeKeys
from shardguard.coordinator.wire import HEADER_NONCE, sign_frame, sign_request
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

    def open_stream(self, node_id: str) -> tuple[ClientConnection, bytes]:
        """Open the node's event-stream WebSocket with a signed handshake; the connection and
        the handshake nonce its frames are bound to. Raises :class:`CoordinatorRefused` when
        the coordinator answers the handshake with an HTTP error (404: no stream endpoint)."""
        path = f"/v1/nodes/{node_id}/stream"
        headers = sign_request(self._keys, "GET", path, b"")
        url = str(self._http.base_url.copy_with(path=path))
        url = "ws" + url.removeprefix("http")  # http → ws, https → wss
        try:
            ws = connect(url, additional_headers=headers, open_timeout=10, max_size=8 * 1024 * 1024, compression=None)
        except InvalidStatus as e:
            body = (e.response.body or b"").decode(errors="replace")
            raise CoordinatorRefused("GET", path, e.response.status_code, body) from None
        # The caller owns the connection and closes it (websockets wants the context-manager
        # protocol entered; its exit is close()).
        return ws.__enter__(), bytes.fromhex(headers[HEADER_NONCE])

    def sign_frame(self, conn_nonce: bytes, seq: int, body: bytes) -> bytes:
        return sign_frame(self._keys, conn_nonce, seq, body)

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
    """What the stream has received for one job; ``changed`` wakes only that job's task."""

    changed: threading.Condition
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
        transport: str = "websocket",
    ) -> None:
        if transport not in ("websocket", "http"):
            raise ValueError("transport is 'websocket' or 'http'")
        self._link = link
        self._node = node_id
        self._on_task = on_task
        self._free_slots = free_slots
        self._poll = poll
        # One lock for the boxes; each box has its own condition on it, so a message for one
        # job wakes that job's task only.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._boxes: dict[str, _Box] = {}
        self._held: dict[str, list[tuple[str, bytes]]] = {}
        # Task ids handed to us lately: a task pushed again (every new connection pushes the
        # tasks handed out and not yet reported) is run once. A task whose job has an open box
        # is ours already too (one task per node and job), however long ago it came.
        self._seen_tasks: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._seq = 0
        self._out: queue.SimpleQueue[tuple[str, str, int, bytes] | _Result | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # The WebSocket (None: not connected, or the HTTP transport), its frame counter and
        # nonce, the outbox frames awaiting their ack, and the last ``want`` sent on it.
        self._websocket = transport == "websocket"
        self._ws: ClientConnection | None = None
        self._ws_lock = threading.Lock()
        self._ws_seq = 0
        self._ws_nonce = b""
        self._acks: dict[int, Future[dict[str, Any]]] = {}
        self._wanted: tuple[frozenset[str], int] | None = None
        self._want_lock = threading.Lock()

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
            for box in self._boxes.values():
                box.changed.notify_all()
        ws = self._ws
        if ws is not None:
            ws.close()
        for t in self._threads:
            t.join(timeout=2)

    def _box(self, job: str) -> _Box:
        """The job's box, made if new (hold ``_cond``)."""
        box = self._boxes.get(job)
        if box is None:
            box = self._boxes[job] = _Box(threading.Condition(self._lock))
        return box

    def open(self, job: str) -> None:
        with self._cond:
            self._box(job)
        self._want()

    def close(self, job: str) -> None:
        with self._cond:
            self._held.pop(job, None)
            box = self._boxes.pop(job, None)
            if box is not None:
                box.changed.notify_all()
        with self._want_lock:
            # Forgotten here whether or not the coordinator still follows it (it stops after
            # our result for a signing job, at the end for the others): the mirror only needs
            # to cover the jobs we follow, and so stays small.
            if self._wanted is not None:
                self._wanted = (self._wanted[0] - {job}, self._wanted[1])
        self._want()

    def room_changed(self) -> None:
        """A task slot was freed (``free_slots()`` grew): tell the coordinator if it needs to
        know (see ``_want_locked``)."""
        self._want()

    # -- Relay ----------------------------------------------------------------------------
    def post(self, job: str, envelopes: Sequence[tuple[str, bytes]], *, hold: bool = False) -> None:
        with self._cond:
            if hold:  # out with the job's next post, or before it waits for anything
                self._held.setdefault(job, []).extend(envelopes)
                return
            self._release(job, envelopes)

    def _release(self, job: str, envelopes: Sequence[tuple[str, bytes]]) -> None:
        """Queue what is held for ``job``, then ``envelopes`` (hold ``_cond``)."""
        for to, blob in [*self._held.pop(job, ()), *envelopes]:
            self._seq += 1
            self._out.put((job, to, self._seq, blob))

    def fetch(self, job: str, after: int, wait: float) -> list[tuple[int, str, bytes]]:
        end = time.monotonic() + wait
        with self._cond:
            if job in self._held:  # about to wait: what is held goes out now, whatever follows
                self._release(job, ())
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
                box.changed.wait(left)

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
                box.changed.wait(left)

    # -- the two loops --------------------------------------------------------------------
    def _receive_loop(self) -> None:
        if self._websocket:
            self._stream_loop()
        self._poll_loop()  # the HTTP transport (also when the coordinator has no stream)

    def _poll_loop(self) -> None:
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
        tasks = []
        with self._cond:
            for t in out.get("tasks") or []:
                task_id = str(t.get("task_id"))
                if task_id in self._seen_tasks or str(t.get("job_id")) in self._boxes:
                    log.info("task %s was pushed again: already taken, ignored", task_id)
                    continue
                self._seen_tasks[task_id] = None
                if len(self._seen_tasks) > 4096:
                    self._seen_tasks.popitem(last=False)
                tasks.append(t)
                self._box(str(t["job_id"]))
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
                box.changed.notify_all()
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
            out = self._post_outbox(body)
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
                        box.changed.notify_all()
            for r in results:
                r.done.set_exception(e)
            return True
        except (httpx.HTTPError, ValueError, _Disconnected) as e:
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
                    box.changed.notify_all()
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

    # -- the WebSocket transport ----------------------------------------------------------------
    def _post_outbox(self, body: dict[str, Any]) -> Any:
        if not self._websocket:
            return self._link.request("POST", f"/v1/nodes/{self._node}/outbox", body=body)
        done: Future[dict[str, Any]] = Future()
        if not self._frame("outbox", body, ack=done):
            raise _Disconnected("the event stream is not connected")
        try:
            out = done.result(timeout=60.0)
        except TimeoutError:
            raise _Disconnected("no acknowledgement within 60 s") from None
        err = out.get("error")
        if isinstance(err, dict):
            raise CoordinatorRefused("STREAM", "outbox", int(err.get("status", 422)), json.dumps(err))
        return out

    def _frame(self, op: str, data: dict[str, Any], *, ack: Future[dict[str, Any]] | None = None) -> bool:
        """Sign and send one frame (any thread); False when there is no connection."""
        with self._ws_lock:
            ws = self._ws
            if ws is None:
                return False
            self._ws_seq += 1
            seq = self._ws_seq
            body = json.dumps({"seq": seq, "op": op, "data": data}, separators=(",", ":")).encode()
            if ack is not None:
                self._acks[seq] = ack
            try:
                ws.send(self._link.sign_frame(self._ws_nonce, seq, body))
            except (ConnectionClosed, OSError):
                self._acks.pop(seq, None)
                return False
        return True

    def _want(self, *, force: bool = False) -> None:
        """Tell the coordinator what to push: open jobs' cursors and free task slots (only when
        that changed, or ``force``)."""
        if not self._websocket or self._ws is None:
            return
        with self._want_lock:
            self._want_locked(force)

    def _want_locked(self, force: bool) -> None:
        with self._cond:
            cursors = {job: box.cursor for job, box in self._boxes.items() if box.status == "running"}
        claim = max(0, min(64, self._free_slots()))
        # ``_wanted`` mirrors what the coordinator believes (API.md §1.11): it follows the jobs
        # of the tasks it hands out until they end, moves the cursors as it pushes, and counts
        # the room down by the tasks handed out. A want is needed only when we need a job it
        # does not follow, or when the room it counts fell below half of our free slots (a
        # want per ~16 tasks, not two per task). A job it follows that we closed costs
        # nothing: its end is the last news pushed for it.
        last = self._wanted
        if not force and last is not None and cursors.keys() <= last[0] and last[1] * 2 >= claim:
            return
        self._wanted = (frozenset(cursors), claim)
        self._frame("want", {"cursors": cursors, "claim": claim})

    def _pushed(self, events: Mapping[str, Any]) -> None:
        """Mirror the coordinator's bookkeeping for an events frame it pushed (``_wanted``)."""
        with self._want_lock:
            if self._wanted is None:
                return
            jobs, room = self._wanted
            tasks = [str(t.get("job_id")) for t in events.get("tasks") or [] if isinstance(t, dict)]
            ended = {
                str(j.get("job_id"))
                for j in events.get("jobs") or []
                if isinstance(j, dict) and (j.get("job_status") or "running") != "running"
            }
            self._wanted = ((jobs | frozenset(tasks)) - ended, max(0, room - len(tasks)))

    def _stream_loop(self) -> None:
        """Keep the WebSocket open and deliver what arrives; returns only to fall back to HTTP
        (the coordinator has no stream endpoint) or when stopping."""
        while not self._stop.is_set():
            try:
                ws, nonce = self._link.open_stream(self._node)
            except CoordinatorRefused as e:
                if e.status == 404:
                    log.warning("event stream: the coordinator has no WebSocket endpoint; using HTTP long-polls")
                    self._websocket = False
                    return
                log.warning("event stream: handshake refused: %s", e)
                self._stop.wait(1.0)
                continue
            except (OSError, WebSocketException, TimeoutError) as e:
                log.warning("event stream: coordinator unreachable: %s", e)
                self._stop.wait(1.0)
                continue
            with self._ws_lock:
                self._ws, self._ws_nonce, self._ws_seq, self._wanted = ws, nonce, 0, None
            try:
                self._want(force=True)
                while not self._stop.is_set():
                    try:
                        raw = ws.recv(timeout=0.25)
                    except TimeoutError:
                        # A slot freed after the task's job was closed: say so (nothing is
                        # sent unless the want changed).
                        self._want()
                        continue
                    self._on_frame(json.loads(raw))
            except (ConnectionClosed, OSError, ValueError) as e:
                if not self._stop.is_set():
                    log.warning("event stream: connection lost: %s (reconnecting)", e)
            finally:
                with self._ws_lock:
                    self._ws = None
                    pending, self._acks = self._acks, {}
                for fut in pending.values():
                    fut.set_exception(_Disconnected("the event stream closed before the acknowledgement"))
                ws.close()

    def _on_frame(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            raise ValueError("a coordinator frame is a JSON object")
        if obj.get("op") == "ack":
            with self._ws_lock:
                fut = self._acks.pop(int(obj.get("seq", 0)), None)
            if fut is not None:
                fut.set_result(obj)
        elif obj.get("op") == "events":
            self._deliver(obj)
            self._pushed(obj)
            self._want()


class _Disconnected(EngineError):
    """The stream closed (or never opened) before an outbox frame was acknowledged: retried."""
