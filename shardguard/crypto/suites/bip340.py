"""FROST(secp256k1, SHA-256) for BIP340 / Taproot key-path spends.

Wire-compatible with ZF ``frost-secp256k1-tr`` (context ``FROST-secp256k1-SHA256-TR-v1``):
RFC 9591 §6.5 with the BIP340 challenge, even-Y handling of the key and of R, and the BIP341
key-path-only TapTweak applied after key generation. Signatures are BIP340 ``x(R) ‖ z``.
"""

from __future__ import annotations

from shardguard.crypto.errors import DecodeError, DecodeReason
from shardguard.crypto.group import Point
from shardguard.crypto.hashing import tagged_hash
from shardguard.crypto.secp256k1 import SECP256K1
from shardguard.crypto.suites.secp256k1 import FrostSecp256k1

__all__ = ["BIP340", "Bip340Suite"]

_N = SECP256K1.order
_P = SECP256K1.field_prime


class Bip340Suite(FrostSecp256k1):
    context = "FROST-secp256k1-SHA256-TR-v1"
    scheme = "bip340"
    signature_size = 64

    def h2(self, m: bytes) -> int:
        # BIP340 "Specification": e = int(hash_{BIP0340/challenge}(bytes(R) ‖ bytes(P) ‖ m)) mod n
        return int.from_bytes(tagged_hash(b"BIP0340/challenge", m), "big") % _N

    def challenge(self, group_commitment: Point, group_key: Point, msg: bytes) -> int:
        g = self.group
        return self.h2(g.encode(group_commitment)[1:] + g.encode(group_key)[1:] + msg)

    def _parity_factor(self, p: Point) -> int:
        return 1 if SECP256K1.has_even_y(p) else _N - 1

    def key_sign_factor(self, group_key: Point) -> int:
        # BIP340 keys are x-only with implicit even Y: an odd-Y key is signed for as −P.
        return self._parity_factor(group_key)

    def nonce_sign_factor(self, group_commitment: Point) -> int:
        return self._parity_factor(group_commitment)

    def post_keygen_tweak(self, group_key: Point) -> tuple[int, int]:
        """BIP341 "Constructing and spending Taproot outputs", key-path only:
        ``Q = P + int(hash_{TapTweak}(bytes(P)))·G`` with ``P`` taken with even Y."""
        factor = self._parity_factor(group_key)
        t = int.from_bytes(tagged_hash(b"TapTweak", SECP256K1.encode(group_key)[1:]), "big")
        if t >= _N:
            raise DecodeError(DecodeReason.SCALAR_OUT_OF_RANGE, field="taptweak", suite=self.context)
        return factor, t

    def encode_signature(self, group_commitment: Point, z: int) -> bytes:
        return SECP256K1.encode(group_commitment)[1:] + SECP256K1.scalar_encode(z)

    def decode_signature(self, sig: bytes) -> tuple[Point, int]:
        if len(sig) != 64:
            raise DecodeError(DecodeReason.WRONG_LENGTH, field="signature", suite=self.context)
        r = SECP256K1.decode_xonly(sig[:32], field="signature.R")
        z = SECP256K1.scalar_decode(sig[32:], field="signature.z")
        return r, z

    def encode_public_key(self, group_key: Point) -> bytes:
        return SECP256K1.encode(group_key)[1:]

    def verify_xonly(self, public_key: bytes, msg: bytes, sig: bytes) -> bool:
        """BIP340 ``Verify(pk, m, sig)`` on an x-only key, any message length."""
        try:
            p = SECP256K1.decode_xonly(public_key, field="public_key")
        except DecodeError:
            return False
        return self.verify(p, msg, sig)

    def verify(self, group_key: Point, msg: bytes, sig: bytes) -> bool:
        """BIP340 verification: ``R = s·G − e·P``; fail if R is infinite, has odd Y, or
        ``x(R) ≠ r``. ``group_key`` may have either parity; only its x is used."""
        if len(sig) != 64:
            return False
        r = int.from_bytes(sig[:32], "big")
        s = int.from_bytes(sig[32:], "big")
        if r >= _P or s >= _N or group_key.is_identity:
            return False
        g = self.group
        p_even = SECP256K1.decode_xonly(g.encode(group_key)[1:])
        e = self.h2(sig[:32] + g.encode(p_even)[1:] + msg)
        big_r = g.base_mul(s) + g.mul(p_even, _N - e)
        if big_r.is_identity or not SECP256K1.has_even_y(big_r):
            return False
        return g.encode(big_r)[1:] == sig[:32]


BIP340 = Bip340Suite()
