"""``POST /v1/keys/{key_id}/sign`` without FastAPI's per-request machinery, for the commonest request.

Every signature is one such request, and FastAPI spends about 0.4 ms of CPU on each before and
after the route itself (dependency resolution, routing over every route, request and response
objects), measured against a bare ASGI handler on this machine: as much as the database work
of the submission. This middleware answers the request itself when it is plainly well formed —
the exact path, a ``Bearer`` token with the ``sign:write`` scope, a JSON body that validates as
:class:`~.schemas.SignRequest`, at most a ``wait`` query parameter and an ``Idempotency-Key``
header in the route's own formats — and otherwise hands it, untouched, to the application.
Nothing it refuses has had an effect (it only read the token), so the route then answers
every malformed or unauthorised request itself, with its usual error.

What it runs once it accepts is the route's own code (``answer``: submit, then long-poll), and
its errors are answered as the application's handlers answer them. It sits inside the body
limit and the metrics, which see it as the route (``scope["route"]``); the OpenAPI document
still describes the route.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shardguard.coordinator import schemas
from shardguard.coordinator.errors import ApiError, api_error_response, database_error_response
from shardguard.coordinator.service import TokenInfo

__all__ = ["SignAnswer", "SignFastPath", "replay_body"]

#: The route's constraints (app._ID, app._IdemKey, ``wait`` 0..300), as strict patterns: a
#: value they do not match goes to the route, which decides.
_PATH = re.compile(r"/v1/keys/([A-Za-z0-9._-]{1,64})/sign")
_WAIT = re.compile(rb"wait=([0-9]{1,3}(?:\.[0-9]{1,6})?)")
_IDEMPOTENCY = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_BEARER = re.compile(rb"Bearer ([!-~]+)")
_JSON = (b"application/json", b"application/json; charset=utf-8")

#: ``answer(key_id, body, token_id, wait, idempotency_key)``: the route's own handling.
SignAnswer = Callable[[str, schemas.SignRequest, str, float, str | None], Awaitable[Response]]
Authenticate = Callable[[str], Awaitable[TokenInfo | None]]


class SignFastPath:
    def __init__(self, app: ASGIApp, *, answer: SignAnswer, authenticate: Authenticate, route: Any) -> None:
        self.app = app
        self.answer = answer
        self.authenticate = authenticate
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        match = _PATH.fullmatch(scope["path"])
        parsed = _parse(scope) if match else None
        if match is None or parsed is None:
            await self.app(scope, receive, send)
            return
        token, wait, idempotency_key = parsed
        body = b""
        while True:  # the body limit outside has bounded it
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        scope["route"] = self.route  # so the metrics name the route (the router sets it again on fall-through)
        try:
            request = await self._accepted(token, body)
            if request is None:
                await self.app(scope, replay_body(body, receive), send)
                return
            response = await self.answer(match.group(1), request[0], request[1], wait, idempotency_key)
        except ApiError as e:
            response = api_error_response(e)
        except DBAPIError as e:  # the token look-up too: 503 while the database is unreachable, as the route
            response = database_error_response(e)
        await response(scope, receive, send)

    async def _accepted(self, token: str, body: bytes) -> tuple[schemas.SignRequest, str] | None:
        """The validated body and the token's id, or None for the route to answer."""
        try:
            request = schemas.SignRequest.model_validate(json.loads(body))
        except (ValueError, RecursionError, ValidationError):  # not JSON (or nested too deep), or not valid
            return None
        info = await self.authenticate(token)
        if info is None or not info.allows("sign:write"):
            return None
        return request, info.token_id


def _parse(scope: Scope) -> tuple[str, float, str | None] | None:
    """Token, ``wait`` and ``Idempotency-Key`` when the headers and query are in the plain
    form; None (the route answers) for anything else, a repeated header included."""
    token = content_type = idempotency_key = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if token is not None or not (m := _BEARER.fullmatch(value)):
                return None
            token = m.group(1).decode("ascii")
        elif name == b"content-type":
            if content_type is not None:
                return None
            content_type = value.lower()
        elif name == b"idempotency-key":
            if idempotency_key is not None or not _IDEMPOTENCY.fullmatch(value):
                return None
            idempotency_key = value.decode("ascii")
    if token is None or content_type not in _JSON:
        return None
    query = scope.get("query_string", b"")
    wait = 0.0
    if query:
        m = _WAIT.fullmatch(query)
        if m is None or (wait := float(m.group(1))) > 300:
            return None
    return token, wait, idempotency_key


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the whole ``body`` (already read) once, then what ``receive``
    gives (the disconnect)."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again
