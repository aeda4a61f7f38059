"""Event-stream frame bodies with binary attachments (API.md §1.11, subprotocol ``ATTACHED``).

A relayed envelope is opaque bytes: DKLs23's rounds are 25–50 KB each, an OT setup's more. As
JSON, every blob is base64-encoded, escaped into a string, scanned back and decoded once per
hop (node → coordinator → node) — about a third more bytes and ~7 µs of CPU per KB per hop.
On a stream that negotiated ``ATTACHED``, a frame body is instead::

    u32 big-endian n ‖ header (n bytes of UTF-8 JSON, an object) ‖ attachment 0 ‖ attachment 1 ‖ …

The header is the frame's JSON object as before, plus ``"attachments": [len_0, len_1, …]``; a
blob field holds the *index* of its attachment (an integer) instead of base64 text. Which fields
may hold one is the reader's to say (:func:`take`): an index anywhere else is just an integer.
Every attachment must be taken exactly once (:func:`check_all_taken`), so nothing rides along
unread. Writers likewise name their blob fields (:func:`lift`). Pure functions; the node and the
coordinator both import this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "ATTACHED",
    "MAX_ATTACHMENTS",
    "AttachedFrameError",
    "check_all_taken",
    "coordinator_frame",
    "decode",
    "encode",
    "lift",
    "node_frame",
    "take",
]

#: The WebSocket subprotocol a node offers and the coordinator accepts for these bodies.
ATTACHED = "shardguard.attached.v1"
#: Most attachments in one frame: an outbox post holds at most 1,024 messages, and an events
#: frame's messages are capped to this too (``Coordinator.read_news``), whatever ``inbox_batch``.
MAX_ATTACHMENTS = 4096
_LEN = 4


class AttachedFrameError(ValueError):
    """A body that is not a well-formed attached frame, or a blob reference that is not one.
    ``field`` names where (``"frame"`` for the framing itself)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


def lift(items: Sequence[Mapping[str, Any]], blobs: list[bytes]) -> list[dict[str, Any]]:
    """``items`` (messages) with each ``blob`` moved to the end of ``blobs`` and replaced by its
    index. The writer names the fields, as the reader does: nothing else is walked (a frame's
    tasks are large nested objects, and a walk of them in Python cost more than the JSON)."""
    out = []
    for m in items:
        blobs.append(m["blob"])
        out.append({**m, "blob": len(blobs) - 1})
    return out


def encode(header: Mapping[str, Any], blobs: Sequence[bytes]) -> bytes:
    """An attached body: ``header`` (whose blob fields hold indices into ``blobs``, see
    :func:`lift`) with the attachments' lengths, then the attachments."""
    raw = json.dumps({**header, "attachments": [len(b) for b in blobs]}, separators=(",", ":")).encode()
    return b"".join([len(raw).to_bytes(_LEN, "big"), raw, *blobs])


def node_frame(frame: Mapping[str, Any]) -> bytes:
    """A node's frame (``{"seq", "op", "data"}``) as an attached body: an outbox's message blobs
    become attachments; nothing else carries any."""
    blobs: list[bytes] = []
    if frame.get("op") == "outbox":
        data = frame["data"]
        frame = {**frame, "data": {**data, "messages": lift(data["messages"], blobs)}}
    return encode(frame, blobs)


def coordinator_frame(frame: Mapping[str, Any]) -> bytes:
    """A coordinator's frame as an attached body: an events frame's message blobs become
    attachments (an ack has none)."""
    blobs: list[bytes] = []
    if frame.get("op") == "events":
        frame = {**frame, "jobs": [{**j, "messages": lift(j["messages"], blobs)} for j in frame["jobs"]]}
    return encode(frame, blobs)


def decode(body: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """``(header, attachments)`` of an attached body; ``header`` without its ``attachments``
    key. Raises :class:`AttachedFrameError` unless the lengths account for every byte."""
    if len(body) < _LEN:
        raise AttachedFrameError("frame", f"shorter than its {_LEN}-byte header length")
    n = int.from_bytes(body[:_LEN], "big")
    if n > len(body) - _LEN:
        raise AttachedFrameError("frame", f"header length {n} runs past the frame's end")
    try:
        header = json.loads(body[_LEN : _LEN + n].decode("utf-8"))  # UTF-8 only (bytes would admit UTF-16/32)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested too deep
        raise AttachedFrameError("frame", "the header is not JSON") from None
    if not isinstance(header, dict):
        raise AttachedFrameError("frame", "the header is not a JSON object")
    lengths = header.pop("attachments", [])
    if not isinstance(lengths, list) or len(lengths) > MAX_ATTACHMENTS:
        raise AttachedFrameError("attachments", f"expected a list of at most {MAX_ATTACHMENTS} lengths")
    if not all(type(x) is int and x >= 0 for x in lengths):
        raise AttachedFrameError("attachments", "every length is a non-negative integer")
    at = _LEN + n
    if at + sum(lengths) != len(body):
        raise AttachedFrameError("attachments", f"the lengths add up to {sum(lengths)} bytes, the frame holds {len(body) - at}")
    out = []
    for x in lengths:
        out.append(body[at : at + x])
        at += x
    return header, out


def take(value: Any, attachments: Sequence[bytes], taken: set[int], field: str) -> bytes:
    """The attachment a blob field refers to; each may be taken once."""
    if type(value) is not int:
        raise AttachedFrameError(field, "expected an attachment index (an integer)")
    if not 0 <= value < len(attachments):
        raise AttachedFrameError(field, f"attachment {value} does not exist (the frame has {len(attachments)})")
    if value in taken:
        raise AttachedFrameError(field, f"attachment {value} is referred to twice")
    taken.add(value)
    return attachments[value]


def check_all_taken(attachments: Sequence[bytes], taken: set[int]) -> None:
    """Refuse a frame with an attachment no field referred to."""
    if len(taken) != len(attachments):
        unread = min(set(range(len(attachments))) - taken)
        raise AttachedFrameError("attachments", f"attachment {unread} is not referred to by any field")
