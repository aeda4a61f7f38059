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
import binascii
import collections
import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

from shardguard.channel import NodeKeys
from shardguard.coordinator import attached
from shardguard.coordinator.wire import HEADER_NONCE, sign_frame, sign_request
from shardguard.node.engine import EngineError

__all__ = ["CoordinatorLink", "CoordinatorRefused", "EventStream", "MalformedFrame"]

log = logging.getLogger("shardguard.node")

#: Most messages and bytes of blobs in one outbox post (the coordinator's limits are 1024
#: messages and a 4 MiB body; base64 grows blobs by a third).
_POST_MESSAGES = 1024
_POST_BYTES = 2 * 1024 * 1024
_POST_RESULTS = 64

#: What the stream keeps for one job until its task fetches it (``_Box.messages``), and for
#: all jobs together. The task takes everything at each fetch, so a box holds only what came
#: in while its task was busy: legitimately one round of every peer (an OT-setup round of a
#: 255-party ECDSA key is under 5 MiB). Beyond that a message is dropped with a log line —
#: as the relay itself could drop it — so a hostile relay cannot grow the node's memory.
_BOX_MESSAGES = 4096
_BOX_BYTES = 8 * 1024 * 1024
_BOXES_BYTES = 64 * 1024 * 1024
#: Most jobs taken and not yet closed: a node asks for as many tasks as it has room (32
#: workers by default), so more can only come from a coordinator pushing unasked (review
#: finding: 10,000 pushed tasks were all taken, each with its box and queue entry).
_MAX_OPEN_JOBS = 512
#: Most message bytes the outbox keeps while the coordinator does not take them (503, 429, an
#: unreachable coordinator); past it the oldest messages go (never a task's result): their jobs
#: will time out. A coordinator refusing every post while it pushes tasks would grow it without end.
_PENDING_BYTES = 64 * 1024 * 1024
#: The largest answer read from one HTTP request (the same cap as one stream frame).
_MAX_ANSWER = 8 * 1024 * 1024

#: Limits on what the coordinator's frames carry (API.md §1.3, §1.5, §1.9): ids, node ids,
#: statuses, cursors and frame sequence numbers.
_ID_CHARS = 128
_NODE_ID_CHARS = 64
_STATUS_CHARS = 32
_MAX_INT = 2**63 - 1

#: Back-off after a malformed frame or an unexpected error on the event stream: doubles per
#: failure from the first to the last, and starts over once a connection lasted ``_STABLE`` s.
_BACKOFF_FIRST = 0.5
_BACKOFF_LAST = 30.0
_STABLE = 30.0


class CoordinatorRefused(EngineError):
    """The coordinator answered a request with an error (4xx/5xx)."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        self.status = status
        super().__init__(f"coordinator refused {method} {path}: {status} {body[:300]}")


class MalformedFrame(EngineError, ValueError):
    """What the coordinator sent does not have the shape API.md gives it. ``where`` names the
    field (``tasks[0].job_id``); the message never repeats the value received."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        super().__init__(f"malformed coordinator frame: {where}: {problem}")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedFrame(where, f"expected an object, got {_kind(value)}")
    return value


def _list(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    """``obj[key]`` as a list (absent or null: empty)."""
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedFrame(f"{where}{key}", f"expected a list, got {_kind(value)}")
    return value


def _str(obj: Mapping[str, Any], key: str, where: str, limit: int) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise MalformedFrame(f"{where}{key}", f"expected a string, got {_kind(value)}")
    if not 0 < len(value) <= limit:
        raise MalformedFrame(f"{where}{key}", f"expected 1 to {limit} characters, got {len(value)}")
    return value


def _int(value: Any, where: str, lo: int, hi: int = _MAX_INT) -> int:
    if type(value) is not int:  # not a bool, not a float (1e400 is inf)
        raise MalformedFrame(where, f"expected an integer, got {_kind(value)}")
    if not lo <= value <= hi:
        raise MalformedFrame(where, f"expected an integer in {lo}..{hi}")
    return value


@dataclass(frozen=True)
class _JobNews:
    job_id: str
    status: str
    messages: list[tuple[int, str, bytes]]


@dataclass(frozen=True)
class _Events:
    """An events frame (or long-poll answer), checked whole before any of it is applied."""

    tasks: list[tuple[str, str, dict[str, Any]]]  # (task_id, job_id, task)
    jobs: list[_JobNews]


def _parse_events(out: Any, blobs: Sequence[bytes] | None = None) -> _Events:
    """Check an events frame's every field ``_deliver`` uses (API.md §1.9); raises
    :class:`MalformedFrame`. The rest of a task is the task handler's to check. ``blobs``: the
    attachments of a binary frame (API.md §1.11), which its blob fields refer to by index;
    ``None`` for JSON, whose blobs are base64."""
    out = _obj(out, "frame")
    taken: set[int] = set()
    tasks = []
    for i, t in enumerate(_list(out, "tasks", "")):
        where = f"tasks[{i}]"
        t = _obj(t, where)
        tasks.append((_str(t, "task_id", f"{where}.", _ID_CHARS), _str(t, "job_id", f"{where}.", _ID_CHARS), t))
    jobs = []
    for i, j in enumerate(_list(out, "jobs", "")):
        where = f"jobs[{i}]"
        j = _obj(j, where)
        job_id = _str(j, "job_id", f"{where}.", _ID_CHARS)
        status = "running" if j.get("job_status") is None else _str(j, "job_status", f"{where}.", _STATUS_CHARS)
        messages = []
        for k, m in enumerate(_list(j, "messages", f"{where}.")):
            at = f"{where}.messages[{k}]"
            m = _obj(m, at)
            cursor = _int(m.get("cursor"), f"{at}.cursor", 1)
            sender = _str(m, "from", f"{at}.", _NODE_ID_CHARS)
            messages.append((cursor, sender, _blob(m.get("blob"), blobs, taken, f"{at}.blob")))
        jobs.append(_JobNews(job_id, status, messages))
    if blobs is not None:
        with _as_malformed():
            attached.check_all_taken(blobs, taken)
    return _Events(tasks, jobs)


def _blob(value: Any, blobs: Sequence[bytes] | None, taken: set[int], where: str) -> bytes:
    if blobs is not None:
        with _as_malformed():
            return attached.take(value, blobs, taken, where)
    if not isinstance(value, str):
        raise MalformedFrame(where, f"expected a base64 string, got {_kind(value)}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedFrame(where, "not base64") from None


@contextlib.contextmanager
def _as_malformed() -> Iterator[None]:
    """:class:`~shardguard.coordinator.attached.AttachedFrameError` raised as :class:`MalformedFrame`."""
    try:
        yield
    except attached.AttachedFrameError as e:
        raise MalformedFrame(e.field, e.problem) from None


def _b64_blobs(body: dict[str, Any]) -> dict[str, Any]:
    """An outbox body for JSON: its messages' blobs as base64."""
    msgs = [m | {"blob": base64.b64encode(m["blob"]).decode()} for m in body["messages"]]
    return body | {"messages": msgs}


def _with_admitted(body: dict[str, Any], advert: Mapping[str, str]) -> dict[str, Any]:
    """``body`` with ``admitted`` when there is any: the field is left out when empty, since a
    coordinator from before API.md §1.3's references refuses it."""
    return body | {"admitted": dict(advert)} if advert else body


def _backoff(failures: int) -> float:
    """Seconds to wait after ``failures`` failures in a row (``_BACKOFF_FIRST`` … ``_BACKOFF_LAST``)."""
    return min(_BACKOFF_LAST, _BACKOFF_FIRST * float(1 << min(max(failures - 1, 0), 16)))


def _error_status(err: Mapping[str, Any], default: int) -> int:
    status = err.get("status", default)
    return status if type(status) is int and 400 <= status <= 599 else default


def _parse_outbox_answer(out: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The per-job and per-result acknowledgements of an outbox answer (API.md §1.10),
    checked before any is used; raises :class:`MalformedFrame`."""
    out = _obj(out, "outbox answer")
    parts = []
    for key in ("jobs", "results"):
        part = out.get(key)
        if part is None:
            part = {}
        if not isinstance(part, dict):
            raise MalformedFrame(f"outbox answer.{key}", f"expected an object, got {_kind(part)}")
        for ack in part.values():
            if isinstance(ack, dict) and "error" in ack:
                err = _obj(ack["error"], f"outbox answer.{key}[…].error")
                if key == "jobs" and err.get("job_status") is not None:
                    _str(err, "job_status", "outbox answer.jobs[…].error.", _STATUS_CHARS)
        parts.append(part)
    return parts[0], parts[1]


class CoordinatorLink:
    """Signed HTTP requests to the coordinator's node API (coordinator/API.md). Thread-safe.
    ``offer_attachments``: the event stream offers binary frames (API.md §1.11); a coordinator
    that does not accept them gets JSON, as before them."""

    def __init__(self, base_url: str, keys: NodeKeys, *, timeout: float = 30.0, offer_attachments: bool = True) -> None:
        self._keys = keys
        self.offer_attachments = offer_attachments
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
            ws = connect(
                url, additional_headers=headers, open_timeout=10, max_size=8 * 1024 * 1024, compression=None,
                subprotocols=[Subprotocol(attached.ATTACHED)] if self.offer_attachments else None,
            )  # fmt: skip
        except InvalidStatus as e:
            body = (e.response.body or b"").decode(errors="replace")
            raise CoordinatorRefused("GET", path, e.response.status_code, body) from None
        # The caller owns the connection and closes it (websockets wants the context-manager
        # protocol entered; its exit is close()).
        return ws.__enter__(), bytes.fromhex(headers[HEADER_NONCE])

    def sign_frame(self, conn_nonce: bytes, seq: int, body: bytes) -> bytes:
        return sign_frame(self._keys, conn_nonce, seq, body)

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, body: Any = None,
                timeout: float | None = None, bearer: str | None = None) -> Any:  # fmt: skip
        target = path if not params else self._http.build_request(method, path, params=params).url.raw_path.decode()
        raw = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = sign_request(self._keys, method, target, raw)
        if bearer is not None:  # the enrollment token, for registration only
            headers["Authorization"] = f"Bearer {bearer}"
        if raw:
            headers["Content-Type"] = "application/json"
        kw: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        with self._http.stream(method, target, content=raw or None, headers=headers, **kw) as r:
            # Read at most _MAX_ANSWER: a hostile coordinator's endless answer must not fill
            # the enclave's memory (the stream's frames are capped the same way).
            got = bytearray()
            for chunk in r.iter_bytes():
                got += chunk
                if len(got) > _MAX_ANSWER:
                    raise MalformedFrame(f"{method} {path}", f"answer larger than {_MAX_ANSWER} bytes")
            status = r.status_code
        if status >= 400:
            raise CoordinatorRefused(method, path, status, got[:2000].decode("utf-8", errors="replace"))
        try:
            return json.loads(got)
        except (ValueError, RecursionError):
            raise MalformedFrame(f"{method} {path}", "the answer is not JSON") from None


@dataclass
class _Box:
    """What the stream has received for one job; ``changed`` wakes only that job's task."""

    changed: threading.Condition
    cursor: int = 0
    messages: list[tuple[int, str, bytes]] = field(default_factory=list)
    size: int = 0  # bytes of blobs in ``messages``
    dropped: int = 0  # messages dropped over the box's limits (``_BOX_MESSAGES``, ``_BOX_BYTES``)
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
        admitted: Callable[[], Mapping[str, str]] = dict,
    ) -> None:
        if transport not in ("websocket", "http"):
            raise ValueError("transport is 'websocket' or 'http'")
        self._link = link
        self._node = node_id
        self._on_task = on_task
        self._free_slots = free_slots
        # Peers whose evidence tasks may name by digest (admission.Admissions.advertised).
        self._admitted = admitted
        self._poll = poll
        # One lock for the boxes; each box has its own condition on it, so a message for one
        # job wakes that job's task only.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._boxes: dict[str, _Box] = {}
        self._boxes_size = 0  # bytes of blobs in all boxes (``_BOXES_BYTES``)
        self._held: dict[str, list[tuple[str, bytes]]] = {}
        # Task ids handed to us lately: a task pushed again (every new connection pushes the
        # tasks handed out and not yet reported) is run once. A task whose job has an open box
        # is ours already too (one task per node and job), however long ago it came.
        self._seen_tasks: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._unasked = 0  # tasks pushed past _MAX_OPEN_JOBS, not taken
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
        self._ws_attached = False  # the connection's frames carry blobs as attachments
        self._acks: dict[int, Future[dict[str, Any]]] = {}
        self._wanted: tuple[frozenset[str], int] | None = None
        self._advert: Mapping[str, str] = {}  # the ``admitted`` of the last want sent
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
                self._boxes_size -= box.size
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
                if len(got) < len(box.messages):  # what the caller has passed is not needed again
                    size = sum(len(m[2]) for m in got)
                    self._boxes_size -= box.size - size
                    box.messages, box.size = got, size
                if got:
                    return list(got)
                if box.error is not None:
                    raise EngineError(box.error)
                if box.status != "running":
                    raise EngineError(f"job {job} ended ({box.status}) at the coordinator")
                if self._stop.is_set():
                    # Not an empty answer: the engine would ask again at once, until its deadline
                    # (a task in flight at shutdown spun and kept the process from exiting).
                    raise EngineError("the node is stopping")
                left = end - time.monotonic()
                if left <= 0:
                    return []
                box.changed.wait(left)

    # -- results and job ends -------------------------------------------------------------
    def report(self, task_id: str, body: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        """Post a task's result (batched with other traffic); the coordinator's ack."""
        item = _Result(task_id, body, Future())
        self._out.put(item)
        end = time.monotonic() + timeout
        while True:
            # In slices: once the stream stops nobody sends it, and a task thread waiting the
            # whole timeout kept the process from exiting (interpreter exit joins task threads).
            try:
                return item.done.result(timeout=max(0.0, min(0.5, end - time.monotonic())))
            except FutureTimeout:
                if self._stop.is_set():
                    raise EngineError("the node is stopping: the result was not sent") from None
                if time.monotonic() >= end:
                    raise

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
        failures = 0
        while not self._stop.is_set():
            # Whatever the coordinator answers, or whatever fails here, the loop goes on: a
            # malformed answer is dropped whole (nothing of it applied, so the next poll reads
            # the same jobs from the same cursors) and the next poll waits a little longer.
            try:
                cursors, claim, advert = self._asking()
                # A full node re-asks soon, so a task that frees a slot is not kept waiting a whole poll.
                wait = self._poll if claim else min(self._poll, 0.2)
                body = _with_admitted({"cursors": cursors, "claim": claim, "wait": wait}, advert)
                out = self._link.request("POST", f"/v1/nodes/{self._node}/events", body=body, timeout=wait + 30)
            except (httpx.HTTPError, EngineError, ValueError) as e:
                log.warning("event stream: coordinator unreachable: %s", e)
                self._stop.wait(1.0)
                continue
            except Exception:
                failures += 1
                log.exception("event stream: the long-poll failed")
                self._stop.wait(_backoff(failures))
                continue
            try:
                self._deliver(out)
            except MalformedFrame as e:
                failures += 1
                log.warning("event stream: answer dropped: %s", e)
                self._stop.wait(_backoff(failures))
            except Exception:
                failures += 1
                log.exception("event stream: an answer could not be delivered")
                self._stop.wait(_backoff(failures))
            else:
                failures = 0

    def _deliver(self, out: Any, blobs: list[bytes] | None = None) -> _Events:
        """Check a whole events frame (raises :class:`MalformedFrame`, nothing applied), then
        apply it: new tasks to ``on_task``, messages and job ends to the jobs' boxes."""
        events = _parse_events(out, blobs)
        tasks = []
        with self._cond:
            for task_id, job_id, t in events.tasks:
                if task_id in self._seen_tasks or job_id in self._boxes:
                    log.info("task %s was pushed again: already taken, ignored", task_id)
                    continue
                if len(self._boxes) >= _MAX_OPEN_JOBS:  # not taken: a later push may be
                    self._unasked += 1
                    if self._unasked & (self._unasked - 1) == 0:  # 1, 2, 4, …: a flood logs little
                        log.warning("%d task(s) pushed beyond %d jobs open were not taken", self._unasked, _MAX_OPEN_JOBS)
                    continue
                self._seen_tasks[task_id] = None
                if len(self._seen_tasks) > 4096:
                    self._seen_tasks.popitem(last=False)
                tasks.append((task_id, job_id, t))
                self._box(job_id)
            for j in events.jobs:
                box = self._boxes.get(j.job_id)
                if box is None:
                    continue
                for cursor, sender, blob in j.messages:
                    if cursor <= box.cursor:
                        continue
                    box.cursor = cursor  # the coordinator has passed it too, kept or not
                    if (
                        len(box.messages) >= _BOX_MESSAGES
                        or box.size + len(blob) > _BOX_BYTES
                        or self._boxes_size + len(blob) > _BOXES_BYTES
                    ):
                        box.dropped += 1
                        if box.dropped & (box.dropped - 1) == 0:  # 1, 2, 4, …: a flood logs little
                            log.warning("job %s: %d message(s) dropped: more than %d messages or %d bytes waiting for "
                                        "its task (%d bytes for all jobs)", j.job_id, box.dropped, _BOX_MESSAGES,
                                        _BOX_BYTES, _BOXES_BYTES)  # fmt: skip
                        continue
                    box.messages.append((cursor, sender, blob))
                    box.size += len(blob)
                    self._boxes_size += len(blob)
                box.status = j.status
                box.changed.notify_all()
        for task_id, job_id, t in tasks:
            try:
                self._on_task(t)
            except Exception:
                # Not taken after all: forget it, so the coordinator's next push of it runs it.
                log.exception("task %s could not be started", task_id)
                with self._cond:
                    self._seen_tasks.pop(task_id, None)
                    box = self._boxes.pop(job_id, None)
                    if box is not None:
                        self._boxes_size -= box.size
                        box.changed.notify_all()
        return events

    def _send_loop(self) -> None:
        pending: list[tuple[str, str, int, bytes] | _Result] = []
        while True:
            if not pending:
                item = self._out.get()
                if item is None:
                    return
                pending.append(item)
            ending = self._drain(pending)
            pending = self._trim(pending)
            batch, pending = self._split(pending)
            try:
                sent = self._send(batch)
            except Exception as e:  # never lose the sender: fail what it was sending, go on
                log.exception("outbox: a post failed")
                self._fail(batch, EngineError(f"outbox: the post failed: {type(e).__name__}"))
                sent = True
            if not sent:
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

    def _trim(self, pending: list[tuple[str, str, int, bytes] | _Result]) -> list[tuple[str, str, int, bytes] | _Result]:
        """``pending`` within ``_PENDING_BYTES`` of messages: the oldest messages dropped first,
        never a result."""
        size = sum(len(item[3]) for item in pending if not isinstance(item, _Result))
        if size <= _PENDING_BYTES:
            return pending
        kept: list[tuple[str, str, int, bytes] | _Result] = []
        dropped = 0
        for item in pending:
            if size > _PENDING_BYTES and not isinstance(item, _Result):
                size -= len(item[3])
                dropped += 1
                continue
            kept.append(item)
        log.warning("outbox: %d message(s) dropped: more than %d bytes waiting for the coordinator", dropped, _PENDING_BYTES)
        return kept

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
                messages.append({"job": job, "to": to, "seq": seq, "blob": blob})
        body = {"messages": messages, "results": [{"task_id": r.task_id, **r.body} for r in results]}
        try:
            jobs, acks = _parse_outbox_answer(self._post_outbox(body))
        except CoordinatorRefused as e:
            if e.status >= 500 or e.status in (401, 429):
                log.warning("outbox: %s (retrying)", e)
                return False
            # The whole post was refused (malformed by our own code): fail every item in it.
            self._fail(batch, e)
            return True
        except MalformedFrame as e:
            # Whether the post was taken is unknown, and a coordinator that answers so is not
            # one to wait for: every item fails with the reason (the tasks end, never hang).
            log.warning("outbox: %s", e)
            self._fail(batch, e)
            return True
        except (httpx.HTTPError, ValueError, _Disconnected) as e:
            log.warning("outbox: coordinator unreachable: %s (retrying)", e)
            return False
        with self._cond:
            for job, ack in jobs.items():
                err = ack.get("error") if isinstance(ack, dict) else None
                box = self._boxes.get(job)
                if err and box is not None:
                    code, message = str(err.get("code"))[:100], str(err.get("message"))[:300]
                    box.error = f"coordinator refused messages of job {job}: {code}: {message}"
                    if err.get("job_status"):
                        box.status = str(err["job_status"])
                    box.changed.notify_all()
        for r in results:
            ack = acks.get(r.task_id)
            if not isinstance(ack, dict):
                r.done.set_exception(EngineError(f"no acknowledgement for task {r.task_id}"))
            elif "error" in ack:
                refusal: dict[str, Any] = ack["error"]  # an object (_parse_outbox_answer)
                r.done.set_exception(
                    CoordinatorRefused("POST", f"outbox result {r.task_id}", _error_status(refusal, 409), json.dumps(refusal))
                )
            else:
                r.done.set_result(ack)
        return True

    def _fail(self, batch: Sequence[tuple[str, str, int, bytes] | _Result], error: EngineError) -> None:
        """End every job with a message in ``batch`` and every result in it with ``error``."""
        with self._cond:
            for item in batch:
                if not isinstance(item, _Result):
                    box = self._boxes.get(item[0])
                    if box is not None:
                        box.error = str(error)
                        box.changed.notify_all()
        for item in batch:
            if isinstance(item, _Result) and not item.done.done():
                item.done.set_exception(error)

    # -- the WebSocket transport ----------------------------------------------------------------
    def _post_outbox(self, body: dict[str, Any]) -> Any:
        if not self._websocket:
            return self._link.request("POST", f"/v1/nodes/{self._node}/outbox", body=_b64_blobs(body))
        done: Future[dict[str, Any]] = Future()
        if not self._frame("outbox", body, ack=done):
            raise _Disconnected("the event stream is not connected")
        try:
            out = done.result(timeout=60.0)
        except TimeoutError:
            raise _Disconnected("no acknowledgement within 60 s") from None
        err = out.get("error")
        if isinstance(err, dict):
            raise CoordinatorRefused("STREAM", "outbox", _error_status(err, 422), json.dumps(err))
        return out

    def _frame(self, op: str, data: dict[str, Any], *, ack: Future[dict[str, Any]] | None = None) -> bool:
        """Sign and send one frame (any thread); False when there is no connection."""
        with self._ws_lock:
            ws = self._ws
            if ws is None:
                return False
            self._ws_seq += 1
            seq = self._ws_seq
            obj = {"seq": seq, "op": op, "data": data}
            if self._ws_attached:
                body = attached.node_frame(obj)
            else:
                if op == "outbox":
                    obj["data"] = _b64_blobs(data)
                body = json.dumps(obj, separators=(",", ":")).encode()
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

    def _asking(self) -> tuple[dict[str, int], int, dict[str, str]]:
        """What a ``want`` or an events poll asks for: the running jobs' cursors, the room for
        tasks (at most 64) and the peers whose evidence tasks may name by digest."""
        with self._cond:
            cursors = {job: box.cursor for job, box in self._boxes.items() if box.status == "running"}
        return cursors, max(0, min(64, self._free_slots())), dict(self._admitted())

    def _want_locked(self, force: bool) -> None:
        cursors, claim, advert = self._asking()
        # ``_wanted`` mirrors what the coordinator believes (API.md §1.11): it follows the jobs
        # of the tasks it hands out until they end, moves the cursors as it pushes, and counts
        # the room down by the tasks handed out. A want is needed only when we need a job it
        # does not follow, or when the room it counts fell below half of our free slots (a
        # want per ~16 tasks, not two per task), or when the peers we hold admissions for
        # changed. A job it follows that we closed costs nothing: its end is the last news
        # pushed for it.
        last = self._wanted
        if not force and last is not None and cursors.keys() <= last[0] and last[1] * 2 >= claim and advert == self._advert:
            return
        self._wanted = (frozenset(cursors), claim)
        self._advert = advert
        self._frame("want", _with_admitted({"cursors": cursors, "claim": claim}, advert))

    def _pushed(self, events: _Events) -> None:
        """Mirror the coordinator's bookkeeping for an events frame it pushed (``_wanted``)."""
        with self._want_lock:
            if self._wanted is None:
                return
            jobs, room = self._wanted
            tasks = [job_id for _, job_id, _ in events.tasks]
            ended = {j.job_id for j in events.jobs if j.status != "running"}
            self._wanted = ((jobs | frozenset(tasks)) - ended, max(0, room - len(tasks)))

    def _stream_loop(self) -> None:
        """Keep the WebSocket open and deliver what arrives; returns only to fall back to HTTP
        (the coordinator has no stream endpoint) or when stopping.

        Nothing the coordinator sends ends this loop. A malformed frame (or any error in
        handling one) is logged and closes the connection, nothing of the frame applied; the
        next connection, after a back-off that grows while that repeats, asks again from the
        jobs' cursors and is pushed the tasks not yet reported, so nothing is lost."""
        failures = 0
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
            except Exception:
                failures += 1
                log.exception("event stream: the handshake failed")
                self._stop.wait(_backoff(failures))
                continue
            opened = time.monotonic()
            failed = False
            with self._ws_lock:
                self._ws, self._ws_nonce, self._ws_seq, self._wanted = ws, nonce, 0, None
                self._ws_attached = ws.subprotocol == attached.ATTACHED
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
                    self._on_frame(*_decode_frame(raw, attachments=self._ws_attached))
            except (ConnectionClosed, OSError) as e:
                if not self._stop.is_set():
                    log.warning("event stream: connection lost: %s (reconnecting)", e)
            except MalformedFrame as e:
                failed = True
                log.warning("event stream: %s (closing the connection)", e)
            except Exception:
                failed = True
                log.exception("event stream: a frame could not be handled (closing the connection)")
            finally:
                with self._ws_lock:
                    self._ws = None
                    pending, self._acks = self._acks, {}
                for fut in pending.values():
                    fut.set_exception(_Disconnected("the event stream closed before the acknowledgement"))
                with contextlib.suppress(Exception):
                    ws.close()
            if time.monotonic() - opened >= _STABLE:
                failures = 0
            if failed:
                failures += 1
                self._stop.wait(_backoff(failures))

    def _on_frame(self, obj: Any, blobs: list[bytes] | None = None) -> None:
        """Handle one decoded coordinator frame (``blobs``: a binary frame's attachments);
        raises :class:`MalformedFrame` (nothing of the frame applied) when it is not what
        API.md §1.11 says. Unknown ops are ignored."""
        obj = _obj(obj, "frame")
        op = obj.get("op")
        if blobs and op != "events":
            raise MalformedFrame("attachments", f"only an events frame carries attachments, not {op!r}")
        if op == "ack":
            seq = _int(obj.get("seq"), "seq", 1)
            with self._ws_lock:
                fut = self._acks.pop(seq, None)
            if fut is not None:
                fut.set_result(obj)
        elif op == "events":
            events = self._deliver(obj, blobs)
            self._pushed(events)
            self._want()


def _decode_frame(raw: str | bytes, *, attachments: bool) -> tuple[Any, list[bytes] | None]:
    """A frame of a stream with attachments is binary, a header and its attachments; any other
    stream's frame is JSON, as before them (API.md §1.11)."""
    if attachments:
        if not isinstance(raw, bytes):
            raise MalformedFrame("frame", "a text frame on a stream with attachments (binary frames only)")
        with _as_malformed():
            header, blobs = attached.decode(raw)
        return header, blobs
    try:
        return json.loads(raw), None
    except (ValueError, RecursionError):  # not JSON, or nested too deep
        raise MalformedFrame("frame", "not JSON") from None


class _Disconnected(EngineError):
    """The stream closed (or never opened) before an outbox frame was acknowledged: retried."""
