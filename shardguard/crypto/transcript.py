"""Domain-separated, length-prefixed transcript hashing.

.. danger:: hazmat.

Every item is framed as ``len(label) ‖ label ‖ len(data) ‖ data`` (8-byte big-endian lengths),
so no two different sequences of items hash alike. The domain tag opens the transcript.
Used for session ids and for the echo-broadcast digests.
"""

from __future__ import annotations

import hashlib

__all__ = ["Transcript"]


class Transcript:
    """An append-only SHA-256 transcript."""

    __slots__ = ("_h",)

    def __init__(self, domain: bytes) -> None:
        self._h = hashlib.sha256()
        self._frame(b"shardguard/transcript/v1", domain)

    def _frame(self, label: bytes, data: bytes) -> None:
        self._h.update(len(label).to_bytes(8, "big") + label + len(data).to_bytes(8, "big"))
        self._h.update(data)

    def append(self, label: bytes, data: bytes) -> Transcript:
        self._frame(label, data)
        return self

    def append_int(self, label: bytes, value: int) -> Transcript:
        if value < 0:
            raise ValueError("negative integers are not framed")
        return self.append(label, value.to_bytes(8, "big"))

    def copy(self) -> Transcript:
        t = Transcript.__new__(Transcript)
        t._h = self._h.copy()
        return t

    def digest(self) -> bytes:
        return self._h.digest()
