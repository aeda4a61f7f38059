"""The result of a DKLs23 signing session, and how it is made from the signers' ``(u, w)``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from shardguard.crypto.ecdsa_combine import combine
from shardguard.crypto.group import Point
from shardguard.crypto.secp256k1 import SECP256K1

__all__ = ["EcdsaSignature", "assemble"]


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


def assemble(
    public_key: Point, big_r: Point, shares: Iterable[tuple[int, int]], digest: bytes, path: str
) -> EcdsaSignature | None:
    """The verified low-s signature the signers' ``(u_i, w_i)`` make with nonce point ``R``
    (:func:`~shardguard.crypto.ecdsa_combine.combine`); None if they make none."""
    made = combine(public_key, big_r, shares, digest)
    if made is None:
        return None
    r, s, recovery_id = made
    return EcdsaSignature(r=r, s=s, recovery_id=recovery_id, public_key=SECP256K1.encode(public_key), digest=digest, path=path)
