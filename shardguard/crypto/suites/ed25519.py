"""FROST(Ed25519, SHA-512) — RFC 9591 §6.1."""

from __future__ import annotations

import hashlib

from nacl import bindings as _na
from nacl.exceptions import BadSignatureError

from shardguard.crypto.ciphersuite import Ciphersuite
from shardguard.crypto.ed25519 import ED25519
from shardguard.crypto.group import Point

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

    def verify(self, group_key: Point, msg: bytes, sig: bytes) -> bool:
        """RFC 8032 §5.1.7 verification by libsodium (``crypto_sign_open``): FROST(Ed25519)
        signatures are plain Ed25519 signatures (RFC 9591 §6.1), and libsodium also refuses
        non-canonical and small-order ``R``."""
        if len(sig) != 64 or group_key.is_identity:
            return False
        try:
            _na.crypto_sign_open(sig + msg, ED25519.encode(group_key))
        except (BadSignatureError, ValueError):
            return False
        return True


FROST_ED25519 = FrostEd25519()
