"""The protocol message envelope (ARCHITECTURE §4).

``Message(session_id, round, sender, recipient | BROADCAST, payload)``. The payload is the
canonical CBOR encoding of a typed payload (:mod:`shardguard.protocols.wire`).
"""

from __future__ import annotations

import dataclasses

from shardguard.protocols.errors import UsageError

__all__ = ["BROADCAST", "MAX_PARTY_ID", "MAX_PAYLOAD", "Message", "check_party_id"]

#: ``recipient`` of a broadcast message.
BROADCAST = 0
#: Party identifiers are 1..255.
MAX_PARTY_ID = 255
#: No payload of ours is larger (a 255-party commitment is ~8.5 KB).
MAX_PAYLOAD = 64 * 1024


def check_party_id(i: object, what: str = "party id") -> int:
    if type(i) is not int or not 1 <= i <= MAX_PARTY_ID:
        raise UsageError(f"{what} must be an integer in 1..{MAX_PARTY_ID}, got {i!r}")
    return i


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    session_id: bytes
    round: int
    sender: int
    recipient: int
    payload: bytes

    def __post_init__(self) -> None:
        if type(self.session_id) is not bytes or len(self.session_id) != 32:
            raise UsageError("session_id must be 32 bytes")
        if type(self.round) is not int or not 1 <= self.round <= 16:
            raise UsageError("round must be in 1..16")
        check_party_id(self.sender, "sender")
        if self.recipient != BROADCAST:
            check_party_id(self.recipient, "recipient")
        if type(self.payload) is not bytes or len(self.payload) > MAX_PAYLOAD:
            raise UsageError(f"payload must be bytes of at most {MAX_PAYLOAD}")

    @property
    def is_broadcast(self) -> bool:
        return self.recipient == BROADCAST
