"""Verification by implementations that are not ours (used by the demo and the tests).

* Ed25519: libsodium (PyNaCl ``VerifyKey``) **and** OpenSSL (``cryptography``).
* BIP340: libsecp256k1 ``secp256k1_schnorrsig_verify`` (coincurve ``PublicKeyXOnly``).
* FROST(secp256k1, SHA-256) (no library verifies it): the RFC 9591 §6.5 challenge is
  recomputed here from the RFC text, independently of ``shardguard.crypto``, and the equation
  ``z·G == R + c·PK`` is checked with libsecp256k1 point operations only.
* ECDSA (DKLs23) over a 32-byte digest: OpenSSL (``cryptography``, prehashed) **and**
  libsecp256k1 (coincurve) — which accepts only low-s, so both together mean "valid and low-s",
  what Bitcoin and Ethereum require; public-key recovery by libsecp256k1.

Nothing here imports ``shardguard.crypto``.
"""

from __future__ import annotations

import hashlib

import coincurve
import nacl.exceptions
import nacl.signing
from coincurve.ecdsa import cdata_to_der, deserialize_compact
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

__all__ = [
    "recover_ecdsa",
    "verify_bip340",
    "verify_ecdsa",
    "verify_ed25519",
    "verify_frost_secp256k1",
    "verify_independently",
]

_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def verify_ed25519(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True only if both libsodium and OpenSSL accept."""
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_bip340(xonly_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        return bool(coincurve.PublicKeyXOnly(xonly_key).verify(signature, message))
    except (ValueError, TypeError):
        return False


def _xmd_sha256(msg: bytes, dst: bytes, n: int) -> bytes:
    # RFC 9380 §5.3.1, written out again on purpose (independent of shardguard.crypto.hashing).
    z_pad, l_i_b, dst_p = bytes(64), n.to_bytes(2, "big"), dst + bytes([len(dst)])
    b0 = hashlib.sha256(z_pad + msg + l_i_b + b"\0" + dst_p).digest()
    blocks = [hashlib.sha256(b0 + b"\1" + dst_p).digest()]
    while len(blocks) * 32 < n:
        x = bytes(a ^ b for a, b in zip(b0, blocks[-1]))
        blocks.append(hashlib.sha256(x + bytes([len(blocks) + 1]) + dst_p).digest())
    return b"".join(blocks)[:n]


def verify_frost_secp256k1(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """RFC 9591 §6.5 signature ``ser(R) ‖ z`` (65 bytes) against a 33-byte key."""
    if len(signature) != 65 or len(public_key) != 33:
        return False
    r_enc, z = signature[:33], int.from_bytes(signature[33:], "big")
    if not 0 < z < _N:
        return False
    ctx = b"FROST-secp256k1-SHA256-v1"
    c = int.from_bytes(_xmd_sha256(r_enc + public_key + message, ctx + b"chal", 48), "big") % _N
    try:
        pk = coincurve.PublicKey(public_key)
        r = coincurve.PublicKey(r_enc)
        lhs = coincurve.PublicKey.from_valid_secret(z.to_bytes(32, "big"))
        rhs = coincurve.PublicKey.combine_keys([r, pk.multiply(c.to_bytes(32, "big"))]) if c else r
    except ValueError:
        return False
    return bool(lhs.format() == rhs.format())


def verify_ecdsa(public_key: bytes, digest: bytes, signature: bytes) -> bool:
    """ECDSA/secp256k1 ``r ‖ s`` (64 bytes) over a 32-byte digest against a 33- or 65-byte key.

    True only if OpenSSL (prehashed, so the digest is used as is) **and** libsecp256k1 accept;
    libsecp256k1 refuses high-s signatures, so a malleated ``(r, n − s)`` is False.
    """
    if len(digest) != 32 or len(signature) != 64:
        return False
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    if not (0 < r < _N and 0 < s < _N):
        return False
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), public_key)
        key.verify(encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        return False
    try:
        der = cdata_to_der(deserialize_compact(signature))
        return bool(coincurve.PublicKey(public_key).verify(der, digest, hasher=None))
    except (ValueError, TypeError):
        return False


def recover_ecdsa(digest: bytes, signature: bytes, recovery_id: int) -> bytes | None:
    """The 33-byte compressed key that made ``signature`` (``r ‖ s``) over ``digest``, by
    libsecp256k1 public-key recovery; None if nothing can be recovered."""
    if len(digest) != 32 or len(signature) != 64 or recovery_id not in (0, 1, 2, 3):
        return None
    try:
        key = coincurve.PublicKey.from_signature_and_message(signature + bytes([recovery_id]), digest, hasher=None)
    except (ValueError, TypeError):
        return None
    return bytes(key.format(compressed=True))


def verify_independently(scheme: str, public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Dispatch on the CLI scheme name; ``public_key`` as the CLI prints it (``ecdsa``: the
    message is the 32-byte digest)."""
    if scheme == "ed25519":
        return verify_ed25519(public_key, message, signature)
    if scheme == "bip340":
        return verify_bip340(public_key, message, signature)
    if scheme == "secp256k1":
        return verify_frost_secp256k1(public_key, message, signature)
    if scheme == "ecdsa":
        return verify_ecdsa(public_key, message, signature)
    raise ValueError(f"no independent verifier for {scheme!r}")
