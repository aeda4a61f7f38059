"""Session ids: one 32-byte value binding everything a session is about (ARCHITECTURE §4).

Protocol name and version, ciphersuite, key id, epoch and the digest of the whole public key
package (so two diverging refreshes of one epoch never share a session), threshold, the exact participant
set, for signing the message, and a caller-agreed ``instance`` value (fresh per session, so
two signatures of one message are two sessions). A party derives its session id itself from
these parameters, so a message from any other session is refused.
"""

from __future__ import annotations

from collections.abc import Iterable

from shardguard.crypto.transcript import Transcript

__all__ = ["derive_session_id"]

PROTOCOL_VERSION = 1


def derive_session_id(
    protocol: str,
    suite_context: str,
    *,
    participants: Iterable[int],
    threshold: int,
    instance: bytes,
    key_id: bytes = b"",
    package: bytes = b"",
    epoch: int = 0,
    message: bytes = b"",
    extra: bytes = b"",
) -> bytes:
    t = Transcript(b"shardguard/session-id")
    t.append(b"protocol", protocol.encode()).append_int(b"version", PROTOCOL_VERSION)
    t.append(b"suite", suite_context.encode())
    t.append(b"participants", bytes(sorted(participants)))
    t.append_int(b"threshold", threshold)
    t.append(b"key_id", key_id).append(b"package", package).append_int(b"epoch", epoch)
    t.append(b"message", message).append(b"extra", extra)
    t.append(b"instance", instance)
    return t.digest()
