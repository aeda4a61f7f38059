"""ECDSA over secp256k1 for the DKLs23 threshold protocol (SEC 1 v2 §4.1; DKLs23 §4).

Not a FROST suite (:attr:`frost` is False): only its DKG proof-of-knowledge hash and its
encodings are used by the shared DKG; signing is DKLs23 (:mod:`shardguard.protocols.dkls23`).
The message is always a 32-byte digest: nothing here hashes raw client input (DKLs23 spec
§4: signing a caller-chosen hash of an unhashed message invites forgeries).
"""

from __future__ import annotations

from coincurve import PublicKey
from coincurve.ecdsa import cdata_to_der, deserialize_compact

from shardguard.crypto.errors import DecodeError, DecodeReason
from shardguard.crypto.group import Point
from shardguard.crypto.secp256k1 import SECP256K1
from shardguard.crypto.suites.secp256k1 import FrostSecp256k1

__all__ = ["ECDSA_SECP256K1", "EcdsaSecp256k1", "recover_public_key"]

_N = SECP256K1.order


class EcdsaSecp256k1(FrostSecp256k1):
    """Shares the secp256k1 suite's hash-to-field construction under its own context string."""

    context = "DKLs23-secp256k1-ECDSA-v1"
    scheme = "ecdsa"
    signature_size = 64
    frost = False

    def h4(self, m: bytes) -> bytes:
        raise NotImplementedError("DKLs23 signs a 32-byte digest; it never hashes a message")

    def h5(self, m: bytes) -> bytes:
        raise NotImplementedError("no FROST commitment list in DKLs23")

    def decode_signature(self, sig: bytes) -> tuple[Point, int]:
        raise NotImplementedError("an ECDSA signature is (r, s), not (R, z)")

    def verify(self, group_key: Point, msg: bytes, sig: bytes) -> bool:
        """ECDSA verification of ``r ‖ s`` over the 32-byte digest ``msg`` by libsecp256k1
        (which accepts only low-s signatures, as Bitcoin and Ethereum do)."""
        if len(msg) != 32 or len(sig) != 64 or group_key.is_identity:
            return False
        r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
        if not (0 < r < _N and 0 < s < _N):
            return False
        try:
            der = cdata_to_der(deserialize_compact(sig))
            return bool(PublicKey(self.group.encode(group_key)).verify(der, msg, hasher=None))
        except ValueError:
            return False


def recover_public_key(digest: bytes, sig: bytes, recovery_id: int) -> Point:
    """The key that made ``sig`` (64 B ``r ‖ s``) over ``digest``, by libsecp256k1 recovery."""
    if len(digest) != 32 or len(sig) != 64 or recovery_id not in (0, 1, 2, 3):
        raise DecodeError(DecodeReason.WRONG_LENGTH, field="signature", suite=SECP256K1.name)
    try:
        pk = PublicKey.from_signature_and_message(sig + bytes([recovery_id]), digest, hasher=None)
    except ValueError:
        raise DecodeError(DecodeReason.NOT_ON_CURVE, field="signature", suite=SECP256K1.name) from None
    return SECP256K1.decode(pk.format(compressed=True), field="recovered key")


ECDSA_SECP256K1 = EcdsaSecp256k1()
