"""An ECDSA signature from additive shares of ``k·φ`` and ``φ·(m + r·x)`` (DKLs23 spec §4
"Output"), and the re-randomiser of a pre-signature's nonce (spec §4.1; Groth & Shoup 2022).

The combination takes public inputs only: the signers' round-3 values ``(u_i, w_i)`` are
broadcast in DKLs23, and the coordinator combines a pre-signed signing's (it may not import the
protocols, ARCHITECTURE §3) with the re-randomised nonce point the signers report.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from shardguard.crypto.group import Point
from shardguard.crypto.secp256k1 import SECP256K1
from shardguard.crypto.suites.ecdsa import ECDSA_SECP256K1
from shardguard.crypto.transcript import Transcript

__all__ = ["SEED_BYTES", "combine", "rerandomizer"]

#: Bytes of the combiner's fresh seed in the re-randomiser.
SEED_BYTES = 32


def rerandomizer(
    presignature_id: bytes, public_key: Point, big_r: Point, digest: bytes, seed: bytes, private_nonce: bytes
) -> int:
    """``δ`` for one signing with one pre-signature: a hash of the pre-signature (its id, ``R``
    and the 32 bytes only its signers know), the key, the digest and the combiner's fresh seed,
    reduced mod q from 48 bytes (bias ≤ 2^-128). ValueError for an input of the wrong size."""
    if type(seed) is not bytes or len(seed) != SEED_BYTES:
        raise ValueError(f"the re-randomising seed must be exactly {SEED_BYTES} bytes")
    if type(digest) is not bytes or len(digest) != 32:
        raise ValueError("the digest must be exactly 32 bytes")
    if type(private_nonce) is not bytes or len(private_nonce) != 32:
        raise ValueError("the signers' private nonce must be exactly 32 bytes")
    t = Transcript(b"shardguard/dkls23/presign-rerandomize/v1").append(b"id", presignature_id)
    t.append(b"PK", SECP256K1.encode(public_key)).append(b"R", SECP256K1.encode(big_r)).append(b"digest", digest)
    t.append(b"seed", seed).append(b"private", private_nonce)
    return int.from_bytes(hashlib.shake_256(t.digest()).digest(48), "big") % SECP256K1.order


def combine(public_key: Point, big_r: Point, shares: Iterable[tuple[int, int]], digest: bytes) -> tuple[int, int, int] | None:
    """``(r, s, recovery_id)`` with ``s = Σw / Σu`` and nonce point ``R``, normalised to low-s
    (flipping the recovery id's parity), verified against ``public_key`` by libsecp256k1; None
    if it is no valid signature (``R = O``, ``Σu = 0``, ``r = 0``, ``s = 0`` or not verifying:
    a wrong share, which cannot be told apart here, spec P12)."""
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
    if s == 0 or not ECDSA_SECP256K1.verify(public_key, digest, r.to_bytes(32, "big") + s.to_bytes(32, "big")):
        return None
    return r, s, recovery_id
