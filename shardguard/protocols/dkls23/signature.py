"""The result of a DKLs23 signing session."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["EcdsaSignature"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EcdsaSignature:
    """A low-s ECDSA signature over a 32-byte digest, verified before it was returned.

    ``public_key`` is the 33-byte compressed key that verifies it (the BIP32-derived key when
    a path was given); ``recovery_id`` (0/1; 2/3 only if ``x(R) ≥ q``, probability ~2^-128)
    recovers it from ``(digest, r, s)`` as Ethereum's ``yParity`` does.
    """

    r: int
    s: int
    recovery_id: int
    public_key: bytes
    digest: bytes
    path: str = "m"

    def to_bytes(self) -> bytes:
        """``r ‖ s``, 64 bytes."""
        return self.r.to_bytes(32, "big") + self.s.to_bytes(32, "big")

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": "ecdsa",
            "public_key": self.public_key.hex(),
            "path": self.path,
            "digest": self.digest.hex(),
            "signature": self.to_bytes().hex(),
            "recovery_id": self.recovery_id,
        }
