"""The result of a DKLs23 signing session, and how it is made from the signers' ``(u, w)``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from shardguard.crypto.group import Point
from shardguard.crypto.secp256k1 import SECP256K1
from shardguard.crypto.suites.ecdsa import ECDSA_SECP256K1

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
    """``s = Σw / Σu`` over every signer's ``(u_i, w_i)`` with nonce point ``R`` (spec §4
    "Output"), normalised to low-s (flipping the recovery id's parity), and verified against
    ``public_key`` by libsecp256k1; None if it is no valid signature (``Σu = 0``, ``r = 0``,
    ``s = 0`` or not verifying: a wrong share, which cannot be told apart here, spec P12)."""
    q = SECP256K1.order
    u = w = 0
    for u_i, w_i in shares:
        u += u_i
        w += w_i
    u, w = u % q, w % q
    if big_r.is_identity:
        return None
    enc_r = SECP256K1.encode(big_r)
    x_r = int.from_bytes(enc_r[1:], "big")
    r = x_r % q
    if u == 0 or r == 0:
        return None
    s = w * pow(u, -1, q) % q
    recovery_id = (enc_r[0] & 1) | (2 if x_r >= q else 0)
    if s > q // 2:
        s = q - s
        recovery_id ^= 1
    if s == 0:
        return None
    sig = EcdsaSignature(r=r, s=s, recovery_id=recovery_id, public_key=SECP256K1.encode(public_key), digest=digest, path=path)
    return sig if ECDSA_SECP256K1.verify(public_key, digest, sig.to_bytes()) else None
