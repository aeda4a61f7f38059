"""Python client of the coordinator's REST API, so no user writes raw HTTP (issue 6).

::

    from shardguard.client import Client
    with Client("http://127.0.0.1:8750", token) as c:
        key = c.create_key("ecdsa", threshold=2, nodes=["node-1", "node-2", "node-3"])
        sig = c.sign(key["key_id"], digest=bytes.fromhex("…32 bytes…"), path="m/0/1")

Errors from the API arrive as :class:`ApiError` with the server's ``code``, ``message`` and
``field``; a request that ends ``failed`` raises :class:`RequestFailed` with the job's typed
error (reason, culprits, party). A signature is verified here too before it is returned — under
the key's public key as this client first saw it, over the digest or message this call sent
(:class:`SignatureRejected` otherwise): the coordinator is not trusted with results.
"""

from __future__ import annotations

import json as jsonlib
import re
import secrets
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from shardguard import __version__
from shardguard.client.connections import Connections, TransportError
from shardguard.coordinator.signatures import signature_problem

__all__ = ["ApiError", "Client", "RequestFailed", "SignatureRejected", "TransportError"]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str = "") -> None:
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        super().__init__(f"{status} {code}: {message}{f' ({field})' if field else ''}")


class RequestFailed(Exception):
    def __init__(self, request: dict[str, Any]) -> None:
        self.request = request
        err = request.get("error") or {}
        self.reason = str(err.get("reason", "unknown"))
        self.culprits = list(err.get("culprits") or [])
        self.detail = str(err.get("detail", ""))
        blame = f"; culprits {self.culprits}" if self.culprits else ""
        super().__init__(
            f"request {request.get('request_id')} failed: {self.reason}{blame}{': ' + self.detail if self.detail else ''}"
        )


#: An id as the API takes it in a path (coordinator app.py ``_ID``).
_ID_CHARS = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _seg(value: str) -> str:
    """``value`` as one path segment: an id the caller passed in goes into the URL only if it is
    one (review finding: "?", "%", "/" or ".." in one went into the URL live)."""
    if not isinstance(value, str) or not _ID_CHARS.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"not an API path: {str(value)[:80]!r} is no id (1 to 64 of A-Z a-z 0-9 . _ -)")
    return value


def _identity(key: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """What must never change about a key: its scheme, group key and chain code."""
    return key.get("scheme"), key.get("public_key"), (key.get("public_package") or {}).get("chain_code")


class SignatureRejected(Exception):
    """A request came back ``done`` with a result that is not a valid signature of this call's
    digest or message under the key (``problem`` says what is wrong)."""

    def __init__(self, request_id: str, problem: str) -> None:
        self.request_id = request_id
        self.problem = problem
        super().__init__(f"request {request_id}: {problem}")


#: How often a create-key or sign call is sent in all when the network loses its answer.
RETRIES = 4


def new_idempotency_key() -> str:
    """A fresh random ``Idempotency-Key`` (128 bits)."""
    return secrets.token_urlsafe(16)


class Client:
    """A token-authenticated session with one coordinator."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        """``url``: the coordinator (``http://`` or ``https://``, a path prefix allowed);
        ``timeout``: for each request, in seconds, unless a call says otherwise."""
        self._connections = Connections(
            url,
            timeout=timeout,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "User-Agent": f"shardguard-client/{__version__}",
            },
        )
        self._keys: dict[str, dict[str, Any]] = {}  # key id -> the key as first seen (its public key)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._connections.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """One API call. A GET, or a call with ``idempotency_key`` (API.md §2), whose answer was
        lost to the network (connection reset, timeout, …) is sent again, up to ``RETRIES``
        times in all, with the same key: the coordinator answers the first request instead of
        making a second."""
        headers: dict[str, str] = {}
        body = None
        if json is not None:
            body = jsonlib.dumps(json, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        target = path + _query(params)
        for attempt in range(1, RETRIES + 1):
            try:
                r = self._connections.request(method, target, body=body, headers=headers, timeout=timeout)
                break
            except TransportError as e:
                # Reads are safe to repeat; writes only under an idempotency key.
                if not e.retry or (idempotency_key is None and method != "GET") or attempt == RETRIES:
                    raise
                time.sleep(0.2 * attempt)
        if r.status >= 400:
            try:
                err = jsonlib.loads(r.body)["error"]
                raise ApiError(r.status, str(err.get("code", "")), str(err.get("message", "")), str(err.get("field") or ""))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise ApiError(r.status, "http_error", r.body[:200].decode(errors="replace")) from None
        try:
            return jsonlib.loads(r.body)
        except ValueError:  # not UTF-8 or not JSON: the coordinator always answers JSON
            raise ApiError(r.status, "malformed_answer", f"the answer to {method} {path} is not JSON") from None

    # -- reads -------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return dict(self._call("GET", "/v1/health"))

    def nodes(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/nodes"))

    def node(self, node_id: str) -> dict[str, Any]:
        """One node with its card, evidence, collateral and the challenges the evidence answers."""
        return dict(self._call("GET", f"/v1/nodes/{_seg(node_id)}"))

    def keys(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/keys"))

    def key(self, key_id: str) -> dict[str, Any]:
        """The key as the coordinator shows it. Its group key, scheme and chain code are pinned
        the first time this client sees them (at creation, for a key it made) and every later
        answer must show the same (review finding: they were pinned at the first signature,
        so a coordinator could show one key at creation and sign under another)."""
        key = dict(self._call("GET", f"/v1/keys/{_seg(key_id)}"))
        self._pin(key_id, key)
        return key

    def _pin(self, key_id: str, key: dict[str, Any]) -> None:
        if not key.get("public_key"):
            return  # no group key yet (its DKG runs): nothing to pin
        pinned = self._keys.setdefault(key_id, key)
        if _identity(pinned) != _identity(key):
            raise SignatureRejected(
                "-", f"the coordinator now shows key {key_id} with another group key, scheme or chain code than it did"
            )

    def request(self, request_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/requests/{_seg(request_id)}"))

    def requests(self, *, key_id: str | None = None, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest requests (``GET /v1/requests``), of one key and in one status if given."""
        params = {"key_id": key_id, "status": status, "limit": limit}
        return list(self._call("GET", "/v1/requests", params={k: v for k, v in params.items() if v is not None}))

    def audit(self, **params: Any) -> Any:
        return self._call("GET", "/v1/audit", params=params)

    def wait(self, request_id: str, timeout: float = 180.0) -> dict[str, Any]:
        """Long-poll until the request is done (returned) or failed (:class:`RequestFailed`)."""
        end = time.monotonic() + timeout
        path = f"/v1/requests/{_seg(request_id)}"
        while True:
            left = end - time.monotonic()
            r = dict(self._call("GET", path, params={"wait": max(0.0, min(left, 25.0))}, timeout=60))
            if r["status"] == "done":
                return r
            if r["status"] == "failed":
                raise RequestFailed(r)
            if left <= 0:
                raise TimeoutError(f"request {request_id} still {r['status']} after {timeout:.0f} s")

    # -- writes ------------------------------------------------------------------------------
    def _write(self, path: str, body: Any = None, idempotency_key: str | None = None, **kw: Any) -> dict[str, Any]:
        """A POST under ``idempotency_key`` (a fresh one unless given), so its own retries of
        a lost answer are safe."""
        return dict(self._call("POST", path, json=body, idempotency_key=idempotency_key or new_idempotency_key(), **kw))

    def create_key(
        self, scheme: str, threshold: int, nodes: Sequence[str], *, wait: bool = True, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """A new key (its DKG). ``idempotency_key``: yours, to make a retry of this very call
        from elsewhere safe too; by default a fresh one, so the call's own retries are."""
        body = {"scheme": scheme, "threshold": threshold, "nodes": list(nodes)}
        out = self._write("/v1/keys", body, idempotency_key)
        if wait:
            self.wait(out["request_id"])
            return self.key(out["key_id"])
        return out

    def sign(
        self,
        key_id: str,
        *,
        digest: bytes | None = None,
        message: bytes | None = None,
        path: str | None = None,
        signers: Sequence[str] | None = None,
        wait: bool = True,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """ECDSA keys sign a 32-byte ``digest`` (never a raw message); FROST keys a ``message``.
        Returns the public result (``wait``) or the accepted request (``wait=False``).
        ``idempotency_key`` as for :meth:`create_key`: a lost answer is retried, never signed twice."""
        if not wait:
            body = _sign_body(digest, message, path, signers)
            return self._write(f"/v1/keys/{_seg(key_id)}/sign", body, idempotency_key)
        req = self.sign_request(
            key_id, digest=digest, message=message, path=path, signers=signers, idempotency_key=idempotency_key
        )
        return dict(req["result"])

    def sign_request(
        self,
        key_id: str,
        *,
        digest: bytes | None = None,
        message: bytes | None = None,
        path: str | None = None,
        signers: Sequence[str] | None = None,
        timeout: float = 180.0,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Submit a signature and wait for it: the whole request record once done (timestamps,
        signers, result), :class:`RequestFailed` if it failed. One call when the signature comes
        within the server's long-poll, as it normally does; a lost answer is asked again under
        the same idempotency key (a fresh one unless given), so the digest is signed once."""
        body = _sign_body(digest, message, path, signers)
        out = self._write(f"/v1/keys/{_seg(key_id)}/sign", body, idempotency_key, params={"wait": min(25.0, timeout)}, timeout=60)
        if out.get("status") == "failed":
            raise RequestFailed(out)
        done = out if out.get("status") == "done" else self.wait(out["request_id"], timeout=timeout)
        self._check_signature(key_id, body, done)
        return done

    def _check_signature(self, key_id: str, body: dict[str, Any], request: dict[str, Any]) -> None:
        key = self._keys.get(key_id)
        if key is None:  # pinned at first sight: a coordinator cannot swap the key later
            key = self._keys.setdefault(key_id, self.key(key_id))
        problem = signature_problem(
            str(key["scheme"]), key.get("public_key"), key.get("public_package"), body, request.get("result") or {}
        )
        if problem is not None:
            raise SignatureRejected(str(request.get("request_id")), problem)

    def refresh(self, key_id: str, *, wait: bool = True, idempotency_key: str | None = None) -> dict[str, Any]:
        out = self._write(f"/v1/keys/{_seg(key_id)}/refresh", None, idempotency_key)
        return self.wait(out["request_id"]) if wait else out

    def repair(
        self,
        key_id: str,
        lost: str,
        *,
        helpers: Sequence[str] | None = None,
        wait: bool = True,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Rebuild ``lost``'s share of a FROST key from t helpers (the node restarted empty)."""
        body: dict[str, Any] = {"lost": lost}
        if helpers is not None:
            body["helpers"] = list(helpers)
        out = self._write(f"/v1/keys/{_seg(key_id)}/repair", body, idempotency_key)
        return self.wait(out["request_id"]) if wait else out

    def create_token(self, scopes: Sequence[str], label: str = "") -> dict[str, Any]:
        return dict(self._call("POST", "/v1/tokens", json={"scopes": list(scopes), "label": label}))


def _sign_body(digest: bytes | None, message: bytes | None, path: str | None, signers: Sequence[str] | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if digest is not None:
        body["digest_hex"] = digest.hex()
    if message is not None:
        body["message_hex"] = message.hex()
    if path is not None:
        body["path"] = path
    if signers is not None:
        body["signers"] = list(signers)
    return body


def _query(params: dict[str, Any] | None) -> str:
    """``?name=value&…`` for ``params`` (empty for none), values written as httpx wrote them:
    ``true``/``false`` for booleans, nothing for None, a list as the name repeated."""
    if not params:
        return ""
    pairs = []
    for name, value in params.items():
        for v in value if isinstance(value, (list, tuple)) else (value,):
            pairs.append((name, "true" if v is True else "false" if v is False else "" if v is None else str(v)))
    return "?" + urllib.parse.urlencode(pairs)
