"""FROST(Ed25519, SHA-512) — RFC 9591 §6.1."""

from __future__ import annotations

import hashlib

from shardguard.crypto.ciphersuite import Ciphersuite
from shardguard.crypto.ed25519 import ED25519

__all__ = ["FROST_ED25519", "FrostEd25519"]

_L = ED25519.order


def _h(m: bytes) -> int:
    return int.from_bytes(hashlib.sha512(m).digest(), "little") % _L


class FrostEd25519(Ciphersuite):
    context = "FROST-ED25519-SHA512-v1"
    scheme = "ed25519"
    group = ED25519
    signature_size = 64

    def h1(self, m: bytes) -> int:
        return _h(self.context_bytes + b"rho" + m)

    def h2(self, m: bytes) -> int:
        # RFC 9591 §6.1: H2 has no context string, so signatures are plain RFC 8032 Ed25519.
        return _h(m)

    def h3(self, m: bytes) -> int:
        return _h(self.context_bytes + b"nonce" + m)

    def h4(self, m: bytes) -> bytes:
        return hashlib.sha512(self.context_bytes + b"msg" + m).digest()

    def h5(self, m: bytes) -> bytes:
        return hashlib.sha512(self.context_bytes + b"com" + m).digest()

    def hdkg(self, m: bytes) -> int:
        return _h(self.context_bytes + b"dkg" + m)


FROST_ED25519 = FrostEd25519()
