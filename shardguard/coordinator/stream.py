"""A node's event stream as one WebSocket (API.md §1.11): the long-poll and the outbox of §1.9–1.10
on one connection, without an HTTP request, a signature header check and a nonce row per step.

The node opens ``GET /v1/nodes/{id}/stream`` as a signed request (the handshake: headers as for
any node request, nonce recorded once). Then:

* node → coordinator, binary frames ``signature(64) ‖ JSON body`` (``wire.sign_frame``), the
  body ``{"seq": n, "op": …, "data": {…}}`` with ``seq`` = 1, 2, … on this connection:

  - ``want``: ``{"cursors": {job: cursor}, "claim": k}`` — what the node wants pushed (the
    body of ``POST …/events`` without ``wait``); sent again whenever it changes;
  - ``outbox``: the body of ``POST …/outbox``; answered by an ``ack`` frame with the same
    ``seq`` and the answer ``POST …/outbox`` would give (or ``error`` if the post is malformed);

* coordinator → node, text frames: ``{"op": "events", "tasks": […], "jobs": […]}`` whenever
  there is news (what ``POST …/events`` answers), and the ``ack``\\ s.

A frame that fails its signature, skips or repeats a ``seq``, is not JSON, or names an unknown
op closes the stream (code 1008, the reason says which); so does the node registering a new
identity key (``stale_identity``): every claim and every outbox post checks, in its own
transaction, that the handshake's key is still the node's, and nothing is handed out or kept
otherwise. The node reconnects with a new signed handshake and re-sends what was not
acknowledged (the relay and result reports are idempotent).
Cursors are kept here as well as on the node: after a push the coordinator moves them on, and a
``want`` can only move a job's cursor forward, so nothing is pushed twice on one connection
unless the node asks for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.websockets import WebSocketState

from shardguard.coordinator import attached, schemas, wire
from shardguard.coordinator.errors import ApiError, error_body
from shardguard.coordinator.precommit import PRECOMMITTED
from shardguard.coordinator.service import Coordinator, NodeIdentity, StaleIdentity
from shardguard.coordinator.waits import LET_WOKEN_RUN, woken

__all__ = ["serve_stream"]

_log = logging.getLogger(__name__)
_POLICY_VIOLATION = 1008
_TOO_BIG = 1009
_STALE = "stale_identity: the node registered a new identity key"


class Notifier(Protocol):
    """What the stream needs of ``app.Notifier``."""

    def waiter(self, key: str) -> asyncio.Future[None]: ...
    def discard(self, key: str, fut: asyncio.Future[None]) -> bool: ...
    def notify(self, key: str, n: int | None = None) -> None: ...
    def take_task_hint(self, node_id: str) -> bool: ...
    def follow(self, node_id: str) -> None: ...
    def unfollow(self, node_id: str) -> None: ...
    def take_dirty(self, node_id: str) -> set[str]: ...


class _Closed(Exception):
    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


@dataclass
class _State:
    node: NodeIdentity
    conn_nonce: bytes
    cursors: dict[str, int] = field(default_factory=dict)
    claim: int = 0
    seq: int = 0
    claim_now: bool = True
    #: Jobs to read on the next look (new to the stream); the rest only when woken for them.
    fresh: set[str] = field(default_factory=set)
    #: Jobs of the tasks pushed on this connection that have not ended: followed whatever a
    #: ``want`` says, because the node may have written that want before it saw the task.
    handed: set[str] = field(default_factory=set)
    #: Task id -> job id of the signing tasks pushed on this connection and not yet reported.
    signing: dict[str, str] = field(default_factory=dict)
    #: The node's latest ``want``: peers it admitted -> SHA-256 of that evidence (tasks name
    #: their evidence by the digest, API.md §1.3).
    admitted: dict[str, str] = field(default_factory=dict)
    #: Tasks claimed for this stream in the transaction that queued them (service.TaskTaker),
    #: not pushed yet; ``wake`` wakes the pusher for them.
    taken: list[dict[str, Any]] = field(default_factory=list)
    wake: Callable[[], None] = lambda: None
    #: Frames carry blobs as binary attachments (the node offered ``attached.ATTACHED``).
    attached: bool = False
    #: The event loop's thread: where the coordinator may hand this stream tasks.
    thread: int = field(default_factory=threading.get_ident)

    @property
    def identity(self) -> bytes:
        return self.node.identity_public_key

    def take(self, tasks: list[dict[str, Any]]) -> None:
        """Tasks claimed for this stream (within ``claim``): pushed by its pusher, woken now."""
        self.claim -= len(tasks)
        self.taken += tasks
        self.wake()


async def serve_stream(ws: WebSocket, node_id: str, coord: Coordinator, notifier: Notifier, hot: Any) -> None:
    """The whole life of one node's stream connection."""
    headers = {h: ws.headers.get(h) for h in (wire.HEADER_NODE, wire.HEADER_TIMESTAMP, wire.HEADER_NONCE, wire.HEADER_SIGNATURE)}
    raw_path = ws.scope.get("raw_path") or ws.url.path.encode("ascii")
    query = ws.scope.get("query_string") or b""
    target = (raw_path + b"?" + query if query else raw_path).decode("ascii", errors="replace")
    try:
        node = await hot(coord.authenticate_node, headers, "GET", target, b"")
        if node.node_id != node_id:
            raise ApiError(403, "forbidden", f"signed by node {node.node_id}, not {node_id}", field="node_id")
    except ApiError as e:
        await _deny(ws, e)
        return
    nonce = wire.parse_nonce(headers[wire.HEADER_NONCE] or "")
    if nonce is None:  # cannot happen: authenticate_node parsed the same header
        await _deny(ws, ApiError(401, "malformed_signature", "malformed nonce header"))
        return
    binary = coord.settings.stream_attachments and attached.ATTACHED in (ws.scope.get("subprotocols") or ())
    await ws.accept(subprotocol=attached.ATTACHED if binary else None)
    state = _State(node, nonce, wake=lambda: notifier.notify(f"events:{node_id}", None), attached=binary)
    coord.metrics.stream_connections.inc()
    if binary:
        coord.metrics.stream_attached.inc()
    send_lock = asyncio.Lock()

    async def send(obj: dict[str, Any]) -> None:
        body = attached.coordinator_frame(obj) if binary else json.dumps(obj, separators=(",", ":"))
        async with send_lock:
            try:
                await (ws.send_bytes(body) if isinstance(body, bytes) else ws.send_text(body))
            except (RuntimeError, OSError) as e:
                # The connection is gone (Starlette raises WebSocketDisconnected, a
                # RuntimeError, for every send after the first one that failed): one way to
                # say so, handled like the node's own disconnect, not an application error.
                raise WebSocketDisconnect(code=1006) from e

    pusher = asyncio.create_task(_pushing(ws, state, coord, notifier, hot, send))
    coord.takers[node_id] = state  # the newest connection takes the node's tasks
    try:
        await _receive(ws, state, coord, notifier, hot, send)
    except _Closed as e:
        coord.metrics.stream_refusals.labels(e.reason.partition(":")[0]).inc()
        with contextlib.suppress(Exception):
            await ws.close(code=e.code, reason=e.reason[:120])
    except WebSocketDisconnect:
        pass
    finally:
        if coord.takers.get(node_id) is state:
            del coord.takers[node_id]
        pusher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pusher
        coord.metrics.stream_connections.dec()
        if binary:
            coord.metrics.stream_attached.dec()


async def _deny(ws: WebSocket, e: ApiError) -> None:
    """Refuse the handshake with the HTTP error a plain request would get, where the server can."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(JSONResponse(error_body(e.code, e.message, field=e.field), status_code=e.status))
    else:
        await ws.close(code=_POLICY_VIOLATION, reason=f"{e.code}: {e.message}"[:120])


async def _receive(ws: WebSocket, state: _State, coord: Coordinator, notifier: Notifier, hot: Any, send: Any) -> None:
    limit = coord.settings.max_body_bytes
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        frame = message.get("bytes")
        if frame is None:
            raise _Closed(_POLICY_VIOLATION, "malformed_frame: node frames are binary (signature ‖ body)")
        if len(frame) > limit + 64:
            raise _Closed(_TOO_BIG, f"payload_too_large: a frame is limited to {limit} bytes")
        state.seq += 1
        body = wire.verify_frame(state.node.identity_public_key, state.node.node_id, state.conn_nonce, state.seq, frame)
        if body is None:
            raise _Closed(_POLICY_VIOLATION, f"bad_signature: frame {state.seq} does not verify (or is out of order)")
        obj, blobs = _decode_body(body, state)
        if not isinstance(obj, dict) or obj.get("seq") != state.seq or not isinstance(obj.get("data"), dict):
            raise _Closed(_POLICY_VIOLATION, f"malformed_frame: frame {state.seq} needs seq = {state.seq} and a data object")
        op, data = obj.get("op"), obj["data"]
        if blobs and op != "outbox":
            raise _Closed(_POLICY_VIOLATION, f"malformed_frame: frame {state.seq}: only an outbox carries attachments")
        coord.metrics.stream_frames.labels(str(op) if op in ("want", "outbox") else "other").inc()
        if op == "want":
            try:
                want = schemas.Events.model_validate(data)
            except ValidationError as e:
                raise _Closed(_POLICY_VIOLATION, f"validation_error: want: {_first_error(e)}") from None
            _apply_want(state, want)
            notifier.notify(f"events:{state.node.node_id}", None)  # the pusher looks again
        elif op == "outbox":
            try:
                if state.attached:
                    _take_blobs(data, blobs)
                box = schemas.Outbox.model_validate(data)
            except attached.AttachedFrameError as e:
                error = {"status": 422, "code": "validation_error", "message": str(e)}
                await send({"op": "ack", "seq": state.seq, "error": error})
                continue
            except ValidationError as e:
                error = {"status": 422, "code": "validation_error", "message": _first_error(e)}
                await send({"op": "ack", "seq": state.seq, "error": error})
                continue
            try:
                out = await hot(coord.post_outbox, state.node, *box.items())
            except StaleIdentity:
                # The node is another process now: nothing of this post was kept, and this
                # connection speaks for it no more (API.md §1.11).
                raise _Closed(_POLICY_VIOLATION, _STALE) from None
            except ApiError as e:
                await send({"op": "ack", "seq": state.seq, "error": {"status": e.status, "code": e.code, "message": e.message}})
                continue
            signing = all(r.task_id in state.signing for r in box.results)
            _reported(state, out.get("results") or {})
            relayed = any(j.get("accepted") for j in (out.get("jobs") or {}).values())
            if signing and (relayed or box.results):
                # Let what this post woke go first: the recipients of its messages (waiting
                # for them: a round of a two-round signing), the clients of the signatures its
                # results completed and the nodes of the jobs started after them. The poster
                # only learns here that its post is kept. Not for DKG, refresh or repair
                # results: their reporter follows the job and must not hear of its end first.
                for _ in range(LET_WOKEN_RUN):
                    await asyncio.sleep(0)
            await send({"op": "ack", "seq": state.seq, **out})
        else:
            raise _Closed(_POLICY_VIOLATION, f"malformed_frame: unknown op {op!r} in frame {state.seq}")


def _decode_body(body: bytes, state: _State) -> tuple[Any, list[bytes]]:
    """A frame body's object and attachments (none unless the stream has them)."""
    if state.attached:
        try:
            return attached.decode(body)
        except attached.AttachedFrameError as e:
            raise _Closed(_POLICY_VIOLATION, f"malformed_frame: frame {state.seq}: {e}") from None
    try:
        return json.loads(body), []
    except (ValueError, RecursionError):
        raise _Closed(_POLICY_VIOLATION, f"malformed_frame: frame {state.seq} is not JSON") from None


def _take_blobs(data: dict[str, Any], blobs: list[bytes]) -> None:
    """Put an attached outbox's blobs in place of their indices (raises AttachedFrameError;
    fields named as the schema's errors name them). Messages that are not a list of objects
    each with a blob are left to the schema to refuse, with its more precise error."""
    messages = data.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "blob" in m for m in messages):
        return
    taken: set[int] = set()
    for i, m in enumerate(messages):
        m["blob"] = attached.take(m["blob"], blobs, taken, f"messages.{i}.blob")
    attached.check_all_taken(blobs, taken)


def _reported(state: _State, acks: dict[str, Any]) -> None:
    """Stop following a signing job once this node's result for it is in: nothing after that
    concerns the node (API.md §1.11), so its end is not pushed. DKG, refresh and repair
    tasks wait for their job's end and stay followed."""
    for task_id, ack in acks.items():
        job = state.signing.get(task_id)
        if job is not None and isinstance(ack, dict) and "error" not in ack:
            del state.signing[task_id]
            state.cursors.pop(job, None)
            state.handed.discard(job)


def _one_step(task: dict[str, Any]) -> bool:
    """A FROST signing in one step (API.md §1.13): its job never has mailbox messages."""
    params = task.get("params")
    return task.get("kind") in ("sign", "bundle") and isinstance(params, dict) and PRECOMMITTED in params


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"


def _apply_want(state: _State, want: schemas.Events) -> None:
    """The node's jobs and free slots replace ours, except that a job whose task we pushed stays
    followed until it ends (API.md §1.11): the node counts on that and does not repeat every
    job it is handed in a ``want`` of its own."""
    cursors = {job: max(cursor, state.cursors.get(job, 0)) for job, cursor in want.cursors.items()}
    for job in state.handed - cursors.keys():
        if job in state.cursors:
            cursors[job] = state.cursors[job]
    state.fresh |= cursors.keys() - state.cursors.keys()
    state.cursors = cursors
    state.admitted = dict(want.admitted)
    if want.claim > state.claim:
        state.claim_now = True
    state.claim = want.claim


async def _pushing(ws: WebSocket, state: _State, coord: Coordinator, notifier: Notifier, hot: Any, send: Any) -> None:
    """:func:`_push`; if it fails (say the database is unreachable), close the stream so the
    node reconnects, instead of leaving it open with nothing pushed."""
    try:
        await _push(ws, state, coord, notifier, hot, send)
    except (asyncio.CancelledError, WebSocketDisconnect):
        raise
    except StaleIdentity:
        # A claim (or the look at the claimed tasks, every poll interval) found that the node
        # registered a new key: nothing was handed out; the node reconnects if it is alive.
        coord.metrics.stream_refusals.labels("stale_identity").inc()
        with contextlib.suppress(Exception):
            await ws.close(code=_POLICY_VIOLATION, reason=_STALE)
    except Exception:
        _log.exception("event stream of %s: push failed; closing it (the node reconnects)", state.node.node_id)
        with contextlib.suppress(Exception):
            await ws.close(code=1011, reason="internal_error: the coordinator could not read the node's news")


async def _push(ws: WebSocket, state: _State, coord: Coordinator, notifier: Notifier, hot: Any, send: Any) -> None:
    """Send news whenever there is some. Woken for a job, read that job only (and jobs new to
    the stream); read every followed job and look at the task queue at least every poll
    interval regardless (a safety net, as for the long-polls)."""
    settings = coord.settings
    node_id = state.node.node_id
    key = f"events:{node_id}"
    last_claim = last_sweep = -math.inf
    identity = state.node.identity_public_key
    notifier.follow(node_id)
    pushed: set[str] = set()  # task ids pushed on this connection
    last_recheck = -math.inf
    try:
        while ws.client_state == WebSocketState.CONNECTED:
            fut = notifier.waiter(key)
            try:
                now = time.monotonic()
                tasks: list[dict[str, Any]] = []
                if now - last_recheck >= settings.poll_interval:
                    # First on each connection, then every poll interval: the node's tasks
                    # handed out and not yet reported that this connection has not pushed. A
                    # frame written just before an earlier connection died may never have
                    # arrived, and a connection the node has left (on this replica or another)
                    # may still claim tasks for it. The node runs a task id only once; these
                    # are not counted against the room (it may be running them already).
                    # This look also checks the stream's key (StaleIdentity), busy or idle.
                    last_recheck = now
                    held = await hot(coord.claimed_tasks, node_id, identity=identity, admitted=state.admitted)
                    pushed &= {str(t["task_id"]) for t in held}
                    tasks = [t for t in held if str(t["task_id"]) not in pushed]
                hinted = notifier.take_task_hint(node_id)
                if state.claim > 0 and (hinted or state.claim_now or now - last_claim >= settings.poll_interval):
                    state.claim_now = False
                    last_claim = now
                    # Told of a new task: claim without probing for one first (one transaction less).
                    claimed = await hot(
                        coord.claim_tasks,
                        node_id,
                        min(state.claim, 64),
                        identity=identity,
                        probe=not hinted,
                        admitted=state.admitted,
                    )
                    state.claim -= len(claimed)
                    tasks += claimed
                if state.taken:
                    # Claimed for this stream when they were queued (service._hand_over); the
                    # look above may have found them among the claimed ones already.
                    ids = {str(t["task_id"]) for t in tasks} | pushed
                    for t in state.taken:
                        if str(t["task_id"]) not in ids:
                            ids.add(str(t["task_id"]))
                            tasks.append(t)
                    state.taken = []
                pushed.update(str(t["task_id"]) for t in tasks)
                for t in tasks:
                    state.cursors.setdefault(str(t["job_id"]), 0)
                    if not _one_step(t):
                        # Messages a co-signer posted before this stream followed the job:
                        # read them with the task. A signing in one step has no messages, and
                        # its end (a failure) still wakes the stream (dirty jobs).
                        state.fresh.add(str(t["job_id"]))
                    state.handed.add(str(t["job_id"]))
                    if t.get("kind") in ("sign", "bundle"):
                        state.signing[str(t["task_id"])] = str(t["job_id"])
                look = notifier.take_dirty(node_id) | state.fresh
                state.fresh = set()
                if now - last_sweep >= settings.poll_interval:
                    last_sweep = now
                    look = set(state.cursors)
                cursors = {j: state.cursors[j] for j in look if j in state.cursors}
                jobs, cut = await hot(coord.read_news, node_id, cursors, raw_blobs=state.attached) if cursors else ([], set())
                # A job the node stopped following while we read (its result went in, or a
                # want dropped it) is no concern of the node any more: its news is not pushed.
                jobs = [j for j in jobs if j["job_id"] in state.cursors]
                for j in jobs:
                    if j["job_status"] != "running":
                        state.cursors.pop(j["job_id"], None)  # ended: the node closes it
                        state.handed.discard(j["job_id"])
                        for task_id in [t for t, job in state.signing.items() if job == j["job_id"]]:
                            del state.signing[task_id]
                    else:  # followed (filtered above)
                        state.cursors[j["job_id"]] = max(state.cursors[j["job_id"]], int(j["next_after"]))
                if tasks or jobs:
                    # Tasks in a frame that never reached the node stay claimed: its next
                    # connection pushes them again (above).
                    await send({"op": "events", "tasks": tasks, "jobs": jobs})
                # Jobs the answer's limits cut short (count or bytes): read them again at once —
                # also when what filled the answer was dropped above (review finding).
                again = {j for j in cut if j in state.cursors}
                if tasks or jobs or again:
                    state.fresh |= again
                    continue
                await woken(fut, settings.poll_interval)
            finally:
                notifier.discard(key, fut)
    finally:
        notifier.unfollow(node_id)
