"""How a node authenticates its requests to the coordinator (API.md "Node authentication").

Pure functions, no web framework: the node imports this module to sign, the coordinator to
verify. A signed request carries four headers:

* ``X-ShardGuard-Node``: the node id;
* ``X-ShardGuard-Timestamp``: Unix time in whole seconds, ASCII decimal (within ±60 s of the
  coordinator's clock);
* ``X-ShardGuard-Nonce``: 16..64 fresh random bytes, lower-case hex (never reused: the
  coordinator refuses a nonce it saw from that node in the last few minutes);
* ``X-ShardGuard-Signature``: the 64-byte Ed25519 signature, lower-case hex, made with
  ``NodeKeys.sign(REQUEST_CONTEXT, request_message(...))``, i.e. over
  ``frame(DOMAIN_TAG) ‖ frame(REQUEST_CONTEXT) ‖ request_message(...)``.

``request_message`` frames (8-byte big-endian length prefix, as everywhere in ShardGuard) the
method, the request target, SHA-256 of the body, the timestamp, the nonce and the node id, so
a signature is valid for exactly one request of one node.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time

from shardguard.channel.identity import NodeKeys, verify_signature

__all__ = [
    "HEADER_NODE",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "MAX_NONCE_LEN",
    "MIN_NONCE_LEN",
    "REQUEST_CONTEXT",
    "parse_nonce",
    "parse_signature",
    "parse_timestamp",
    "request_message",
    "sign_request",
    "verify_request",
]

#: Signature context of coordinator requests (``NodeKeys.sign(context, …)``): a request
#: signature can never be taken for an envelope or audit-log signature, and vice versa.
REQUEST_CONTEXT = b"shardguard/coordinator-request/v1"

HEADER_NODE = "X-ShardGuard-Node"
HEADER_TIMESTAMP = "X-ShardGuard-Timestamp"
HEADER_NONCE = "X-ShardGuard-Nonce"
HEADER_SIGNATURE = "X-ShardGuard-Signature"

MIN_NONCE_LEN = 16
MAX_NONCE_LEN = 64
_HEX_RE = re.compile(r"[0-9a-f]+")
_TS_RE = re.compile(r"0|[1-9][0-9]{0,11}")


def _frame(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data


def request_message(method: str, target: str, body: bytes, timestamp: int, nonce: bytes, node_id: str) -> bytes:
    """The bytes a node signs for one request.

    ``frame(METHOD) ‖ frame(target) ‖ frame(SHA-256(body)) ‖ frame(timestamp) ‖ frame(nonce)
    ‖ frame(node_id)``, where METHOD is upper-case ASCII, ``target`` the request target exactly
    as on the HTTP request line (path, plus ``?`` and the query string when there is one; no
    scheme or host), ``timestamp`` ASCII decimal and ``nonce`` the raw bytes.
    """
    return b"".join(
        _frame(part)
        for part in (
            method.upper().encode("ascii"),
            target.encode("ascii"),
            hashlib.sha256(body).digest(),
            str(timestamp).encode("ascii"),
            nonce,
            node_id.encode("ascii"),
        )
    )


def sign_request(
    keys: NodeKeys,
    method: str,
    target: str,
    body: bytes = b"",
    *,
    timestamp: int | None = None,
    nonce: bytes | None = None,
) -> dict[str, str]:
    """The four headers that authenticate ``method target`` with ``body`` as ``keys``' node."""
    ts = int(time.time()) if timestamp is None else timestamp
    n = secrets.token_bytes(32) if nonce is None else nonce
    sig = keys.sign(REQUEST_CONTEXT, request_message(method, target, body, ts, n, keys.node_id))
    return {
        HEADER_NODE: keys.node_id,
        HEADER_TIMESTAMP: str(ts),
        HEADER_NONCE: n.hex(),
        HEADER_SIGNATURE: sig.hex(),
    }


def parse_timestamp(value: str) -> int | None:
    """Whole seconds in canonical ASCII decimal, else None."""
    return int(value) if _TS_RE.fullmatch(value) else None


def parse_nonce(value: str) -> bytes | None:
    """Lower-case hex of 16..64 bytes, else None."""
    if not (2 * MIN_NONCE_LEN <= len(value) <= 2 * MAX_NONCE_LEN) or len(value) % 2 or not _HEX_RE.fullmatch(value):
        return None
    return bytes.fromhex(value)


def parse_signature(value: str) -> bytes | None:
    """Lower-case hex of 64 bytes, else None."""
    if len(value) != 128 or not _HEX_RE.fullmatch(value):
        return None
    return bytes.fromhex(value)


def verify_request(
    identity_public_key: bytes,
    method: str,
    target: str,
    body: bytes,
    timestamp: int,
    nonce: bytes,
    node_id: str,
    signature: bytes,
) -> bool:
    """True when ``signature`` is the node's signature of this exact request."""
    message = request_message(method, target, body, timestamp, nonce, node_id)
    return verify_signature(identity_public_key, REQUEST_CONTEXT, message, signature)
