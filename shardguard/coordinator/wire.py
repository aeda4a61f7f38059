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

The event stream (API.md §1.11) is one WebSocket per node, opened by a signed ``GET``; every
frame the node sends on it is ``signature(64) ‖ body``, signed with ``STREAM_CONTEXT`` over
``frame_message(node_id, handshake nonce, seq, body)``: bound to that connection (its nonce was
recorded once, at the handshake) and to its place in it (``seq`` = 1, 2, …), so a frame cannot
be replayed, reordered or moved to another connection.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time

from shardguard.channel.identity import NodeKeys, verify_signature

__all__ = [
    "AUDIT_CONTEXT",
    "HEADER_NODE",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "MAX_NONCE_LEN",
    "MIN_NONCE_LEN",
    "REQUEST_CONTEXT",
    "STREAM_CONTEXT",
    "audit_entry_hash",
    "frame_message",
    "parse_nonce",
    "parse_signature",
    "parse_timestamp",
    "request_message",
    "sign_frame",
    "sign_request",
    "verify_audit_entry",
    "verify_frame",
    "verify_request",
]

#: Signature context of coordinator requests (``NodeKeys.sign(context, …)``): a request
#: signature can never be taken for an envelope or audit-log signature, and vice versa.
REQUEST_CONTEXT = b"shardguard/coordinator-request/v1"
#: … and of the frames a node sends on its event stream.
STREAM_CONTEXT = b"shardguard/coordinator-stream/v1"
#: Audit-log entries (``node/audit.py``): hashed with this tag, and their hash signed with it as
#: the context. Here because both sides check an entry: the node when it writes it, the
#: coordinator before it mirrors it.
AUDIT_CONTEXT = b"shardguard/audit/v1"

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


def frame_message(node_id: str, conn_nonce: bytes, seq: int, body: bytes) -> bytes:
    """The bytes a node signs for frame ``seq`` of the stream opened with ``conn_nonce``."""
    return b"".join(_frame(p) for p in (node_id.encode("utf-8"), conn_nonce, str(seq).encode("ascii"), body))


def sign_frame(keys: NodeKeys, conn_nonce: bytes, seq: int, body: bytes) -> bytes:
    """``signature ‖ body``: one frame of the node's event stream."""
    return keys.sign(STREAM_CONTEXT, frame_message(keys.node_id, conn_nonce, seq, body)) + body


def verify_frame(identity_public_key: bytes, node_id: str, conn_nonce: bytes, seq: int, frame: bytes) -> bytes | None:
    """The body of ``frame`` if it is the node's signed frame ``seq`` of this connection."""
    if len(frame) < 64:
        return None
    sig, body = frame[:64], frame[64:]
    if not verify_signature(identity_public_key, STREAM_CONTEXT, frame_message(node_id, conn_nonce, seq, body), sig):
        return None
    return body


def audit_entry_hash(entry: bytes) -> str:
    """SHA-256 (hex) of ``AUDIT_CONTEXT ‖ 0x00 ‖ entry``: what an audit entry's signature covers."""
    return hashlib.sha256(AUDIT_CONTEXT + b"\x00" + entry).hexdigest()


def verify_audit_entry(identity_public_key: bytes, entry: bytes, entry_hash: str, signature: bytes) -> bool:
    """True when ``entry_hash`` is the entry's hash and ``signature`` its signature by that key."""
    return entry_hash == audit_entry_hash(entry) and verify_signature(
        identity_public_key, AUDIT_CONTEXT, bytes.fromhex(entry_hash), signature
    )
