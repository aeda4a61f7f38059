"""Structured API errors: every 4xx/5xx is ``{"error": {"code", "message", "field"}}``, never a
stack trace."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["ApiError", "error_body", "install_handlers"]

_log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal",
    503: "unavailable",
}


class ApiError(Exception):
    """An error the API reports as is: HTTP status, machine code, message, offending field."""

    def __init__(
        self, status: int, code: str, message: str, *, field: str | None = None, extra: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.extra = extra or {}


def error_body(code: str, message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field, **extra}}


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("body", "nodes", 2)`` → ``nodes[2]``; ``("query", "wait")`` → ``wait``."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        where = parts.pop(0)
        if not parts:
            return "body" if where == "body" else str(where)
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out


def _validation_message(err: dict[str, Any]) -> str:
    msg = str(err.get("msg", "invalid value"))
    if err.get("type") == "json_invalid":
        return "request body is not valid JSON"
    if err.get("type") == "missing":
        return "field required"
    return msg


def api_error_response(exc: ApiError) -> JSONResponse:
    """How every ``ApiError`` is answered (the handler below, and the sign fast path)."""
    return JSONResponse(error_body(exc.code, exc.message, exc.field, **exc.extra), status_code=exc.status)


def database_error_response(exc: DBAPIError) -> JSONResponse:
    """How a database error is answered: 503 while it is unreachable, else a logged 500."""
    if exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError)):
        _log.warning("database unavailable: %s", exc.orig)
        return JSONResponse(error_body("unavailable", "the database is unavailable; retry later"), status_code=503)
    _log.exception("database error", exc_info=exc)
    return JSONResponse(error_body("internal", "internal error"), status_code=500)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return api_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        details = [{"field": _field(e.get("loc", ())), "message": _validation_message(e)} for e in errors[:20]]
        first = details[0] if details else {"field": None, "message": "invalid request"}
        return JSONResponse(
            error_body("validation_error", first["message"] or "invalid request", first["field"], details=details),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(DBAPIError)
    async def _database(_request: Request, exc: DBAPIError) -> JSONResponse:
        return database_error_response(exc)

    @app.exception_handler(Exception)
    async def _internal(_request: Request, exc: Exception) -> JSONResponse:
        _log.exception("unhandled error", exc_info=exc)
        return JSONResponse(error_body("internal", "internal error"), status_code=500)
