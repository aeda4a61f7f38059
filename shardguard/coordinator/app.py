"""The coordinator's FastAPI application: ``create_app(settings)``.

Client endpoints authenticate with ``Authorization: Bearer <token>`` (scopes ``keys:write``,
``sign:write``, ``read``, ``admin``; admin implies every scope). Node endpoints authenticate by
the node's identity key (signed requests, :mod:`.wire`). Every error is
``{"error": {"code", "message", "field"}}``. The node-facing API is specified in ``API.md``.
"""

import asyncio
import collections
import contextlib
import hashlib
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Protocol, TypeVar

import anyio.to_thread
from fastapi import Depends, FastAPI, Header, Path, Query, Request, Security, WebSocket
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import shardguard
from shardguard.channel.identity import MAX_NONCE_LEN, MIN_NONCE_LEN
from shardguard.coordinator import schemas, wire
from shardguard.coordinator.db import Database, migrate
from shardguard.coordinator.errors import ApiError, error_body, install_handlers
from shardguard.coordinator.fastpath import SignFastPath, replay_body
from shardguard.coordinator.metrics import Metrics
from shardguard.coordinator.notify import PgBridge
from shardguard.coordinator.service import Coordinator, NodeIdentity, Submitted, TokenInfo, canonical_json, decode_card
from shardguard.coordinator.settings import Settings
from shardguard.coordinator.stream import serve_stream
from shardguard.coordinator.waits import woken

__all__ = ["create_app"]

_log = logging.getLogger(__name__)
T = TypeVar("T")

_ID = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
#: An id in a query string: the same characters (review finding: a NUL byte reached psycopg,
#: whose DataError was a 500 on PostgreSQL).
_QID_PATTERN = r"^[A-Za-z0-9._-]+$"
#: ``Idempotency-Key`` (API.md §2): the same key again, from the same token, answers the first
#: request instead of making a second one.
_IdemKey = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
]
#: Integer query parameters stored as (or compared with) a 64-bit signed column: larger values
#: are a 422 naming the parameter, not an overflow in the driver (a 500).
_MAX_BIGINT = 2**63 - 1
_NODE_HEADERS = (wire.HEADER_NODE, wire.HEADER_TIMESTAMP, wire.HEADER_NONCE, wire.HEADER_SIGNATURE)
_NODE_AUTH_DOC = {
    "description": (
        "Signed node request: headers X-ShardGuard-Node, X-ShardGuard-Timestamp, X-ShardGuard-Nonce and "
        "X-ShardGuard-Signature (see API.md, 'Node authentication')."
    )
}


async def run(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run blocking database work in a worker thread."""
    return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))


class Runner(Protocol):
    async def __call__(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T: ...


def hot_runner(inline: bool) -> Runner:
    """How the hot paths (node and signing requests, long-poll checks) run their database work.

    On SQLite they run inline on the event loop: each is a few indexed statements on a local
    file (well under a millisecond), SQLite takes one writer at a time anyway, and the hop to
    a worker thread and back cost more than the work (about 0.8 ms each, measured). The price:
    a write blocked by another *process* holding SQLite's lock (busy timeout) stalls the loop —
    run one coordinator process per SQLite file. On PostgreSQL every statement is a network
    round trip, so they go to worker threads (:func:`run`)."""
    if not inline:
        return run

    async def inline_run(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return fn(*args, **kwargs)

    return inline_run


class Notifier:
    """Wakes long-polls of this replica when something for them happened (thread-safe; works
    with any number of event loops). Other replicas' writes arrive through
    :class:`~shardguard.coordinator.notify.PgBridge` (PostgreSQL LISTEN/NOTIFY), and every
    long-poll re-reads the database at least every ``poll_interval`` anyway."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._task_hints: set[str] = set()
        # Jobs with news, per node whose event-stream WebSocket follows them (stream.py): a
        # woken stream reads those jobs only, not every job the node has open.
        self._dirty: dict[str, set[str]] = {}
        self._following: collections.Counter[str] = collections.Counter()

    def waiter(self, key: str) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._waiters.setdefault(key, []).append(fut)
        return fut

    def discard(self, key: str, fut: asyncio.Future[None]) -> bool:
        """Stop waiting on ``fut``; False if a wake-up had taken it already (resolved, or about
        to be)."""
        with self._lock:
            waiting = self._waiters.get(key)
            if waiting is not None and fut in waiting:
                waiting.remove(fut)
                if not waiting:
                    del self._waiters[key]
                return True
            return False

    def notify(self, key: str, n: int | None = None) -> None:
        """Wake the ``n`` longest-waiting long-polls on ``key`` (all of them when None). What
        wakes a node's task or inbox long-poll also wakes its event stream (``events:<node>``)."""
        kind, _, rest = key.partition(":")
        if kind == "node":
            with self._lock:
                self._task_hints.add(rest)
        elif kind == "inbox":
            node, _, job = rest.partition(":")
            with self._lock:
                dirty = self._dirty.get(node)
                if dirty is not None:
                    dirty.add(job)
        if kind in ("node", "inbox"):
            self._wake(f"events:{rest.partition(':')[0]}", None)
        self._wake(key, n)

    def take_task_hint(self, node_id: str) -> bool:
        """Whether a task for ``node_id`` may have been queued since the last call (so an event
        stream woken by a message need not look for tasks as well)."""
        with self._lock:
            if node_id in self._task_hints:
                self._task_hints.discard(node_id)
                return True
            return False

    def follow(self, node_id: str) -> None:
        """An event stream of ``node_id`` opened: record which of its jobs get news."""
        with self._lock:
            self._following[node_id] += 1
            self._dirty.setdefault(node_id, set())

    def unfollow(self, node_id: str) -> None:
        with self._lock:
            self._following[node_id] -= 1
            if self._following[node_id] <= 0:
                del self._following[node_id]
                self._dirty.pop(node_id, None)

    def take_dirty(self, node_id: str) -> set[str]:
        """The jobs of ``node_id`` with news since the last call (needs :meth:`follow`)."""
        with self._lock:
            dirty = self._dirty.get(node_id)
            if not dirty:
                return set()
            self._dirty[node_id] = set()
            return dirty

    def _wake(self, key: str, n: int | None) -> None:
        with self._lock:
            waiting = self._waiters.get(key)
            if not waiting:
                return
            woken, rest = (waiting, []) if n is None else (waiting[:n], waiting[n:])
            if rest:
                self._waiters[key] = rest
            else:
                del self._waiters[key]
        for fut in woken:
            with contextlib.suppress(RuntimeError):  # its loop has closed
                fut.get_loop().call_soon_threadsafe(_resolve, fut)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class BodyLimit:
    """413 for bodies over ``max_bytes`` (by Content-Length, or counted while streaming).

    An oversized body is read and discarded up to ``drain_bytes`` before the 413 is sent, so an
    ordinary client still writing its body gets the answer instead of a broken connection;
    beyond that the connection is simply closed after the answer."""

    def __init__(self, app: ASGIApp, max_bytes: int, drain_bytes: int = 16 * 1024 * 1024) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.drain_bytes = drain_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = f"request body larger than {self.max_bytes} bytes"
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._reject(send, 400, "bad_request", "invalid Content-Length")
                    return
                if declared > self.max_bytes:
                    await self._drain(receive, 0)
                    await self._reject(send, 413, "payload_too_large", too_big)
                    return
        # Read the whole (bounded) body before the app sees it, then replay it.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_bytes:
                if more:
                    await self._drain(receive, size)
                await self._reject(send, 413, "payload_too_large", too_big)
                return
            chunks.append(chunk)
        await self.app(scope, replay_body(b"".join(chunks), receive), send)

    async def _drain(self, receive: Receive, size: int) -> None:
        while size <= self.drain_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _reject(self, send: Send, status: int, code: str, message: str) -> None:
        response = JSONResponse(error_body(code, message), status_code=status, headers={"Connection": "close"})
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class HttpMetrics:
    """Counts and times every request by route template, method and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.http_requests.labels(path, method, str(status)).inc()
            self.metrics.http_latency.labels(path, method).observe(time.perf_counter() - start)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build a coordinator app: opens the database, applies the migrations (``alembic upgrade
    head``) and wires the routes. The background sweeper (deadlines, dispatch, clean-up) runs
    while the app's lifespan is active (uvicorn, or ``with TestClient(app)``)."""
    settings = settings or Settings()
    db = Database(settings.database_url())
    migrate(db)
    metrics = Metrics()
    notifier = Notifier()
    bridge = PgBridge(db.url, notifier, settings.replica_id) if db.dialect == "postgresql" else None

    def notify(key: str, n: int | None) -> None:
        notifier.notify(key, n)
        if bridge is not None:
            bridge.publish(key, n)

    coord = Coordinator(settings, db, metrics, notify)
    metrics.add_queue_collector(coord.queue_counts)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if bridge is not None:
            bridge.start()
        task = asyncio.create_task(_sweeper(coord)) if settings.sweep_interval > 0 else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if bridge is not None:
                await run(bridge.stop)
            db.dispose()

    app = FastAPI(
        title="ShardGuard coordinator",
        version=shardguard.__version__,
        summary="Untrusted coordinator: request queue, end-to-end encrypted relay, audit mirror (ARCHITECTURE §8).",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.coordinator = coord
    app.state.settings = settings
    app.state.notifier = notifier
    app.state.metrics = metrics
    install_handlers(app)
    _routes(app, coord, notifier)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HttpMetrics, metrics=metrics)
    return app


async def _sweeper(coord: Coordinator) -> None:
    interval = coord.settings.sweep_interval
    while True:
        await asyncio.sleep(interval)
        try:
            await run(coord.sweep)
        except Exception:
            _log.exception("sweep failed; retrying in %s s", interval)


async def _long_poll(
    notifier: Notifier,
    key: str,
    wait: float,
    interval: float,
    check: Callable[[], tuple[bool, T]],
    *,
    gone: tuple[Callable[[], Awaitable[bool]], T] | None = None,
    runner: Runner = run,
    check_first: bool = True,
) -> T:
    """Call ``check`` (in a thread) until it reports ready or ``wait`` seconds pass; sleep on
    this replica's notifications in between, re-checking at least every ``interval``. With
    ``gone = (disconnected, idle)``: once the client has disconnected, return ``idle`` before
    ``check`` runs again — for checks that hand something out, so nothing goes to nobody.
    ``check_first=False``: the caller knows ``check`` is not ready yet (a request it has just
    created), so the first look waits for a notification (or ``interval``) instead; ``check``
    still runs before anything is returned."""
    deadline = time.monotonic() + wait
    first = True
    skip = not check_first
    while True:
        if gone is not None and not first and await gone[0]():
            return gone[1]
        first = False
        fut = notifier.waiter(key)
        leaving = True
        try:
            if skip:
                skip = False
            else:
                ready, value = await runner(check)
                if ready or deadline - time.monotonic() <= 0:
                    return value
            remaining = max(0.0, deadline - time.monotonic())
            await woken(fut, min(remaining, interval))
            leaving = False
        finally:
            if not notifier.discard(key, fut) and leaving:
                # A wake-up took our future (it may not have resolved it yet, or found it
                # cancelled with this task, its client gone) and we are leaving (answered,
                # timed out, gone): pass it on, it may have been meant for something we did
                # not take.
                notifier.notify(key, 1)


def _target(request: Request) -> str:
    raw = request.scope.get("raw_path") or request.url.path.encode("ascii")
    query = request.scope.get("query_string") or b""
    return (raw + b"?" + query if query else raw).decode("ascii", errors="replace")


def _routes(app: FastAPI, coord: Coordinator, notifier: Notifier) -> None:
    """Wire the routes, and the sign route's fast path (innermost middleware: the body limit
    and the metrics, added after, wrap it)."""
    inline = coord.db.dialect == "sqlite"
    hot = hot_runner(inline)
    settings = coord.settings
    bearer = HTTPBearer(auto_error=False, description="API token (scopes keys:write, sign:write, read, admin)")

    def require(scope: str) -> Callable[..., Awaitable[TokenInfo]]:
        async def dependency(creds: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]) -> TokenInfo:
            if creds is None or not creds.credentials:
                raise ApiError(401, "unauthorized", "missing bearer token", extra={})
            info = await hot(coord.authenticate_token, creds.credentials)
            if info is None:
                raise ApiError(401, "unauthorized", "invalid or revoked token")
            if not info.allows(scope):
                raise ApiError(403, "forbidden", f"this token lacks the {scope!r} scope")
            return info

        return dependency

    Admin = Annotated[TokenInfo, Depends(require("admin"))]
    Reader = Annotated[TokenInfo, Depends(require("read"))]
    KeyWriter = Annotated[TokenInfo, Depends(require("keys:write"))]
    Signer = Annotated[TokenInfo, Depends(require("sign:write"))]
    Enroller = Annotated[TokenInfo, Depends(require("nodes:register"))]

    async def node_auth(request: Request) -> NodeIdentity:
        body = await request.body()
        headers = {h: request.headers.get(h) for h in _NODE_HEADERS}
        return await hot(coord.authenticate_node, headers, request.method, _target(request), body)

    SignedNode = Annotated[NodeIdentity, Depends(node_auth)]

    def same_node(node: NodeIdentity, node_id: str) -> None:
        if node.node_id != node_id:
            raise ApiError(403, "forbidden", f"signed by node {node.node_id}, not {node_id}", field="node_id")

    # -- service --------------------------------------------------------------------------------
    @app.get("/v1/health", tags=["service"], response_model=schemas.Health)
    async def health() -> JSONResponse:
        try:
            await run(coord.db.ping)
            body = {"status": "ok", "database": "ok"}
            status = 200
        except Exception as e:
            _log.warning("health check: database unreachable: %r", e)
            body = {"status": "unavailable", "database": "unreachable"}
            status = 503
        body |= {"replica_id": settings.replica_id, "version": shardguard.__version__}
        return JSONResponse(body, status_code=status)

    @app.get("/metrics", tags=["service"], include_in_schema=True, response_class=Response)
    async def metrics_endpoint(request: Request) -> Response:
        if not settings.metrics_public:
            await require("read")(await bearer(request))
        data = await run(generate_latest, coord.metrics.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    # -- tokens ---------------------------------------------------------------------------------
    @app.post("/v1/tokens", tags=["admin"], status_code=201, response_model=schemas.NewToken)
    async def create_token(body: schemas.CreateToken, _t: Admin) -> dict[str, Any]:
        out, token = await run(coord.create_token, list(body.scopes), body.label)
        return {**out, "token": token}

    @app.get("/v1/tokens", tags=["admin"], response_model=list[schemas.TokenOut])
    async def list_tokens(_t: Admin) -> list[dict[str, Any]]:
        return await run(coord.list_tokens)

    @app.delete("/v1/tokens/{token_id}", tags=["admin"], response_model=schemas.TokenOut)
    async def revoke_token(token_id: _ID, _t: Admin) -> dict[str, Any]:
        return await run(coord.revoke_token, token_id)

    # -- keys and requests ----------------------------------------------------------------------
    @app.post("/v1/keys", tags=["keys"], status_code=202, response_model=schemas.KeyAccepted)
    async def create_key(body: schemas.CreateKey, t: KeyWriter, idempotency_key: _IdemKey = None) -> dict[str, Any]:
        return await run(
            coord.create_key, body.scheme, body.threshold, list(body.nodes), body.allow_single, t.token_id, idempotency_key
        )

    @app.get("/v1/keys", tags=["keys"], response_model=list[schemas.KeyOut])
    async def list_keys(_t: Reader) -> list[dict[str, Any]]:
        return await run(coord.list_keys)

    @app.get("/v1/keys/{key_id}", tags=["keys"], response_model=schemas.KeyOut)
    async def get_key(key_id: _ID, _t: Reader) -> dict[str, Any]:
        return await run(coord.get_key, key_id)

    ended: dict[int | str, dict[str, Any]] = {
        200: {"model": schemas.RequestOut, "description": "with ``wait``: the request once it ended"}
    }

    async def sign_answer(
        key_id: str, body: schemas.SignRequest, token_id: str, wait: float, idempotency_key: str | None
    ) -> JSONResponse:
        """The sign route's work, shared with its fast path (``fastpath.SignFastPath``)."""
        out = await hot(
            coord.submit_sign,
            key_id,
            digest=body.digest_hex,
            message=body.message_hex,
            path=body.path,
            signers=body.signers,
            requested_by=token_id,
            idempotency_key=idempotency_key,
        )
        if wait <= 0:
            return JSONResponse(out, status_code=202)
        request_id = str(out["request_id"])

        def check() -> tuple[bool, dict[str, Any]]:
            # Ended by a report on this replica: its record as written, not read back.
            r = coord.take_answer(request_id) or coord.get_request(request_id)
            return r["status"] in ("done", "failed"), r

        wait = min(wait, settings.max_wait)
        # A request this call created cannot have ended before the long-poll's waiter exists
        # when the submission ran inline on the loop (SQLite: nothing ran in between), so its
        # first look is the wake-up — one database read fewer per signature. On PostgreSQL the
        # submission ran in a thread and another replica may have ended the job meanwhile (its
        # wake-up then came before the waiter; review finding): look at once, as a replay does.
        skip = isinstance(out, Submitted) and inline
        answer = await _long_poll(
            notifier, f"job:{request_id}", wait, settings.poll_interval, check, runner=hot, check_first=not skip
        )
        return JSONResponse(answer)

    @app.post("/v1/keys/{key_id}/sign", tags=["keys"], status_code=202, response_model=schemas.Accepted, responses=ended)
    async def sign(
        key_id: _ID,
        body: schemas.SignRequest,
        t: Signer,
        wait: Annotated[float, Query(ge=0, le=300)] = 0.0,
        idempotency_key: _IdemKey = None,
    ) -> JSONResponse:
        """Queue a signature. ``wait``: also long-poll up to that many seconds (capped by the
        server) and answer **200** with the request as ``GET /v1/requests/{id}`` would — done,
        failed, or still running when the wait ran out — saving the client a second call."""
        return await sign_answer(key_id, body, t.token_id, wait, idempotency_key)

    if settings.sign_fast_path:
        sign_route = app.router.routes[-1]  # the one just declared
        app.add_middleware(
            SignFastPath, answer=sign_answer, authenticate=lambda token: hot(coord.authenticate_token, token), route=sign_route
        )

    @app.post("/v1/keys/{key_id}/refresh", tags=["keys"], status_code=202, response_model=schemas.Accepted)
    async def refresh(key_id: _ID, t: KeyWriter, idempotency_key: _IdemKey = None) -> dict[str, Any]:
        return await run(coord.submit_refresh, key_id, t.token_id, idempotency_key)

    @app.post("/v1/keys/{key_id}/repair", tags=["keys"], status_code=202, response_model=schemas.Accepted)
    async def repair(key_id: _ID, body: schemas.Repair, t: KeyWriter, idempotency_key: _IdemKey = None) -> dict[str, Any]:
        return await run(coord.submit_repair, key_id, body.lost, body.helpers, t.token_id, idempotency_key)

    @app.get("/v1/requests", tags=["requests"], response_model=list[schemas.RequestOut])
    async def list_requests(
        _t: Reader,
        key_id: Annotated[str | None, Query(max_length=64, pattern=_QID_PATTERN)] = None,
        status: Annotated[str | None, Query(pattern="^(queued|running|done|failed)$")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        return await run(coord.list_requests, key_id=key_id, status=status, limit=limit)

    @app.get("/v1/requests/{request_id}", tags=["requests"], response_model=schemas.RequestOut)
    async def get_request(request_id: _ID, _t: Reader, wait: Annotated[float, Query(ge=0, le=300)] = 0.0) -> dict[str, Any]:
        """``wait``: long-poll up to that many seconds (capped by the server) until the request is done or failed."""

        def check() -> tuple[bool, dict[str, Any]]:
            out = coord.get_request(request_id)
            return out["status"] in ("done", "failed"), out

        return await _long_poll(
            notifier, f"job:{request_id}", min(wait, settings.max_wait), settings.poll_interval, check, runner=hot
        )

    @app.get("/v1/nodes", tags=["nodes"], response_model=list[schemas.NodeOut])
    async def list_nodes(
        _t: Reader,
        after: Annotated[str | None, Query(max_length=64, pattern=_QID_PATTERN)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` nodes by id; ``after``: the last node id of the previous page (API.md §2)."""
        return await run(coord.list_nodes, after, limit)

    @app.get("/v1/nodes/{node_id}", tags=["nodes"], response_model=schemas.NodeOut)
    async def get_node(node_id: _ID, _t: Reader) -> dict[str, Any]:
        """One node, with its peer card, evidence and collateral (base64) for offline checks."""
        return await run(coord.get_node, node_id)

    @app.get("/v1/audit", tags=["audit"])
    async def list_audit(
        _t: Reader,
        node: Annotated[str | None, Query(max_length=64, pattern=_QID_PATTERN)] = None,
        after: Annotated[int | None, Query(ge=0, le=_MAX_BIGINT)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        if after is not None and node is None:
            raise ApiError(422, "validation_error", "after pages one node's log: give node too", field="after")
        return {"entries": await run(coord.list_audit, node, after, limit)}

    # -- node API (signed requests) -------------------------------------------------------------
    @app.post("/v1/nodes/register", tags=["node API"], openapi_extra=_NODE_AUTH_DOC)
    async def register(body: schemas.Register, request: Request, enroller: Enroller) -> dict[str, Any]:
        """Enrollment: a node registers (or re-registers: a restart brings a new identity key)
        with a token of scope ``nodes:register`` as well as its signature, so that nobody without
        one can take over a node id — its tasks, its mailbox, its audit mirror (API.md §1.2)."""
        card = decode_card(body.peer_card)
        if body.evidence_nonce is not None and not MIN_NONCE_LEN <= len(body.evidence_nonce) <= MAX_NONCE_LEN:
            raise ApiError(422, "validation_error", f"must be {MIN_NONCE_LEN}..{MAX_NONCE_LEN} bytes", field="evidence_nonce")
        raw = await request.body()
        headers = {h: request.headers.get(h) for h in _NODE_HEADERS}
        await run(coord.authenticate_node, headers, request.method, _target(request), raw, card=card)
        return await run(
            coord.register_node, card, body.platform, body.evidence, body.collateral, body.evidence_nonce, body.challenges,
            enroller,
        )

    @app.post("/v1/nodes/{node_id}/challenges", tags=["node API"], openapi_extra=_NODE_AUTH_DOC)
    async def challenge_node(node_id: _ID, body: schemas.ChallengeIn, node: SignedNode, request: Request) -> dict[str, Any]:
        """Challenge ``node_id`` (the signing node is the challenger; its newest challenge
        replaces its earlier one) and wait up to ``wait`` seconds for evidence that answers it.
        The node's card and evidence either way, with ``answered`` (API.md §1.12)."""
        await hot(coord.post_challenge, node.node_id, node_id, body.nonce)

        def check() -> tuple[bool, dict[str, Any]]:
            answered, record = coord.evidence_answering(node_id, node.node_id, body.nonce)
            return answered, {**record, "answered": answered}

        # Ends when the caller is gone (a stopping node), so a stopping coordinator is not held.
        gone: tuple[Callable[[], Awaitable[bool]], dict[str, Any]] = (request.is_disconnected, {"answered": False})
        return await _long_poll(
            notifier, f"evidence:{node_id}", min(body.wait, settings.max_wait), settings.poll_interval, check,
            gone=gone, runner=hot,
        )  # fmt: skip

    @app.get("/v1/nodes/{node_id}/challenges", tags=["node API"], openapi_extra=_NODE_AUTH_DOC)
    async def node_challenges(
        node_id: _ID,
        node: SignedNode,
        request: Request,
        known: Annotated[str, Query(max_length=64)] = "",
        wait: Annotated[float, Query(ge=0, le=300)] = 0.0,
    ) -> dict[str, Any]:
        """The node's open challenges and their digest; ``wait``: long-poll until the digest
        differs from ``known`` (API.md §1.12)."""
        same_node(node, node_id)

        def check() -> tuple[bool, dict[str, Any]]:
            items = coord.challenges_for(node_id)
            digest = hashlib.sha256(canonical_json(items).encode()).hexdigest()
            return digest != known, {"challenges": items, "digest": digest}

        # Ends when the node is gone: a stopping node does not hold a stopping coordinator.
        idle: dict[str, Any] = {"challenges": [], "digest": known}
        gone: tuple[Callable[[], Awaitable[bool]], dict[str, Any]] = (request.is_disconnected, idle)
        return await _long_poll(
            notifier, f"challenges:{node_id}", min(wait, settings.max_wait), settings.poll_interval, check,
            gone=gone, runner=hot,
        )  # fmt: skip

    @app.get("/v1/nodes/{node_id}/tasks", tags=["node API"], response_model=schemas.TaskEnvelope, openapi_extra=_NODE_AUTH_DOC)
    async def next_task(
        node_id: _ID, node: SignedNode, request: Request, wait: Annotated[float, Query(ge=0, le=300)] = 0.0
    ) -> JSONResponse:
        """The node's next task, handed out once; ``{"task": null}`` if none came within ``wait`` seconds."""
        same_node(node, node_id)

        def check() -> tuple[bool, dict[str, Any] | None]:
            # With the key this request was signed with: the long-poll may outlive it (a
            # re-registration meanwhile), and then hands out nothing (401 stale_identity).
            task = coord.claim_task(node_id, node.identity_public_key)
            return task is not None, task

        wait = min(wait, settings.max_wait)
        gone: tuple[Callable[[], Awaitable[bool]], dict[str, Any] | None] = (request.is_disconnected, None)
        task = await _long_poll(notifier, f"node:{node_id}", wait, settings.poll_interval, check, gone=gone, runner=hot)
        return JSONResponse({"task": task})

    @app.post("/v1/jobs/{job_id}/messages", tags=["node API"], response_model=schemas.Counts, openapi_extra=_NODE_AUTH_DOC)
    async def post_messages(job_id: _ID, body: schemas.PostMessages, node: SignedNode) -> JSONResponse:
        if len(body.messages) > settings.max_messages_per_post:
            raise ApiError(
                422, "validation_error", f"at most {settings.max_messages_per_post} messages per post", field="messages"
            )
        msgs = [(m.to, m.seq, m.blob) for m in body.messages]
        return JSONResponse(await hot(coord.post_messages, job_id, node.node_id, msgs))

    @app.get("/v1/nodes/{node_id}/inbox", tags=["node API"], response_model=schemas.InboxOut, openapi_extra=_NODE_AUTH_DOC)
    async def inbox(
        node_id: _ID,
        node: SignedNode,
        job: Annotated[str, Query(min_length=1, max_length=64, pattern=_QID_PATTERN)],
        after: Annotated[int, Query(ge=0, le=_MAX_BIGINT)] = 0,
        wait: Annotated[float, Query(ge=0, le=300)] = 0.0,
    ) -> JSONResponse:
        """Messages for this node in ``job`` past cursor ``after``; waits up to ``wait`` s for one."""
        same_node(node, node_id)

        def check() -> tuple[bool, dict[str, Any]]:
            out = coord.read_inbox(node_id, job, after)
            return bool(out["messages"]) or out["job_status"] != "running", out

        out = await _long_poll(
            notifier, f"inbox:{node_id}:{job}", min(wait, settings.max_wait), settings.poll_interval, check, runner=hot
        )
        return JSONResponse(out)

    @app.post("/v1/nodes/{node_id}/events", tags=["node API"], response_model=schemas.EventsOut, openapi_extra=_NODE_AUTH_DOC)
    async def events(node_id: _ID, body: schemas.Events, node: SignedNode, request: Request) -> JSONResponse:
        """Everything new for the node in one long-poll: up to ``claim`` queued tasks (handed out
        once) and, for each job in ``cursors``, messages past its cursor and its status once it
        is no longer running. Answers as soon as there is anything, else after ``wait``."""
        same_node(node, node_id)
        cursors = dict(body.cursors)
        last_claim = -math.inf

        def check() -> tuple[bool, dict[str, Any]]:
            nonlocal last_claim
            # Look for tasks on the first check, when a task was queued for this node (on any
            # replica: the wake-up says so), and at least every poll interval as a safety net.
            now = time.monotonic()
            hinted = notifier.take_task_hint(node_id)
            tasks: list[dict[str, Any]] = []
            if body.claim and (hinted or now - last_claim >= settings.poll_interval):
                last_claim = now
                tasks = coord.claim_tasks(node_id, body.claim, node.identity_public_key, admitted=body.admitted)
            jobs = coord.read_events(node_id, cursors)
            return bool(tasks or jobs), {"tasks": tasks, "jobs": jobs}

        idle: dict[str, Any] = {"tasks": [], "jobs": []}
        gone: tuple[Callable[[], Awaitable[bool]], dict[str, Any]] = (request.is_disconnected, idle)
        out = await _long_poll(notifier, f"events:{node_id}", min(body.wait, settings.max_wait), settings.poll_interval,
                               check, gone=gone, runner=hot)  # fmt: skip
        return JSONResponse(out)

    @app.post("/v1/nodes/{node_id}/outbox", tags=["node API"], response_model=schemas.OutboxOut, openapi_extra=_NODE_AUTH_DOC)
    async def outbox(node_id: _ID, body: schemas.Outbox, node: SignedNode) -> JSONResponse:
        """Messages of several jobs and task results in one post; each job's messages and each
        result succeed or fail on their own (see API.md)."""
        same_node(node, node_id)
        return JSONResponse(await hot(coord.post_outbox, node, *body.items()))

    @app.post("/v1/nodes/{node_id}/witness", tags=["node API"], openapi_extra=_NODE_AUTH_DOC)
    async def request_witness(node_id: _ID, node: SignedNode) -> JSONResponse:
        """The node asks the other holders of its keys to confirm its state (API.md §1.14): one
        ``witness`` job per active key it holds, with the holders seen lately."""
        same_node(node, node_id)
        return JSONResponse(await hot(coord.request_witness, node))

    @app.websocket("/v1/nodes/{node_id}/stream")
    async def stream(ws: WebSocket, node_id: _ID) -> None:
        """The event stream and the outbox on one WebSocket (API.md §1.11, ``stream`` module)."""
        await serve_stream(ws, node_id, coord, notifier, hot)

    @app.get("/v1/jobs/{job_id}", tags=["node API"], openapi_extra=_NODE_AUTH_DOC)
    async def job_status(job_id: _ID, node: SignedNode, wait: Annotated[float, Query(ge=0, le=300)] = 0.0) -> dict[str, Any]:
        """A participant's view of its job; ``wait``: long-poll until it is done or failed."""

        def check() -> tuple[bool, dict[str, Any]]:
            out = coord.job_for_node(job_id, node.node_id)
            return out["status"] in ("done", "failed"), out

        return await _long_poll(
            notifier, f"job:{job_id}", min(wait, settings.max_wait), settings.poll_interval, check, runner=hot
        )

    @app.post("/v1/tasks/{task_id}/result", tags=["node API"], response_model=schemas.ResultAck, openapi_extra=_NODE_AUTH_DOC)
    async def task_result(task_id: _ID, body: schemas.TaskResult, node: SignedNode) -> JSONResponse:
        error = body.error.model_dump() if body.error is not None else None
        return JSONResponse(
            await hot(coord.post_result, task_id, node.node_id, body.status, body.result, error, node.identity_public_key)
        )

    @app.post("/v1/nodes/{node_id}/commitments", tags=["node API"], openapi_extra=_NODE_AUTH_DOC)
    async def publish_commitments(node_id: _ID, body: schemas.PublishCommitments, node: SignedNode) -> JSONResponse:
        """FROST nonce commitments the node made ahead (API.md §1.13): each handed to at most one
        signing, which then takes one step; ``stock`` says how many unused ones are kept."""
        same_node(node, node_id)
        items = [(c.id, c.hiding, c.binding, c.signature) for c in body.commitments]
        return JSONResponse(await hot(coord.publish_commitments, node, body.scheme, items))

    @app.get("/v1/nodes/{node_id}/audit/head", tags=["node API"], openapi_extra=_NODE_AUTH_DOC)
    async def audit_head(node_id: _ID, node: SignedNode) -> JSONResponse:
        """The newest entry the mirror holds of this node (API.md §1.8): a node whose audit log
        is empty (its state was lost) continues its chain after it."""
        same_node(node, node_id)
        return JSONResponse(await hot(coord.audit_head, node))

    @app.post("/v1/audit", tags=["node API"], response_model=schemas.Counts, openapi_extra=_NODE_AUTH_DOC)
    async def post_audit(body: schemas.AuditPost, node: SignedNode) -> JSONResponse:
        entries = [(e.seq, e.entry, e.hash, e.signature, bytes.fromhex(e.signer) if e.signer else None) for e in body.entries]
        return JSONResponse(await hot(coord.post_audit, node, entries))
