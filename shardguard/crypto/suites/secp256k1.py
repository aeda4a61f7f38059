"""FROST(secp256k1, SHA-256) — RFC 9591 §6.5.

Its signatures are ``ser(R) ‖ z`` = 65 bytes and are *not* BIP340 signatures (the challenge
hashes the full compressed R and key); use the ``bip340`` suite for Bitcoin.
"""

from __future__ import annotations

import hashlib

from shardguard.crypto.ciphersuite import Ciphersuite
from shardguard.crypto.hashing import hash_to_field_sha256
from shardguard.crypto.secp256k1 import SECP256K1

__all__ = ["FROST_SECP256K1", "FrostSecp256k1"]

_N = SECP256K1.order


class FrostSecp256k1(Ciphersuite):
    context = "FROST-secp256k1-SHA256-v1"
    scheme = "secp256k1"
    group = SECP256K1
    signature_size = 65

    def _h2f(self, label: bytes, m: bytes) -> int:
        return hash_to_field_sha256(m, self.context_bytes + label, _N)

    def h1(self, m: bytes) -> int:
        return self._h2f(b"rho", m)

    def h2(self, m: bytes) -> int:
        return self._h2f(b"chal", m)

    def h3(self, m: bytes) -> int:
        return self._h2f(b"nonce", m)

    def h4(self, m: bytes) -> bytes:
        return hashlib.sha256(self.context_bytes + b"msg" + m).digest()

    def h5(self, m: bytes) -> bytes:
        return hashlib.sha256(self.context_bytes + b"com" + m).digest()

    def hdkg(self, m: bytes) -> int:
        return self._h2f(b"dkg", m)


FROST_SECP256K1 = FrostSecp256k1()
