"""Hash helpers shared by the ciphersuites.

.. danger:: hazmat.
"""

from __future__ import annotations

import hashlib

__all__ = ["expand_message_xmd_sha256", "hash_to_field_sha256", "hash_to_field_sha256_multi", "tagged_hash"]


def expand_message_xmd_sha256(msg: bytes, dst: bytes, length: int) -> bytes:
    """RFC 9380 §5.3.1 ``expand_message_xmd`` with SHA-256 (b = 32, s = 64 bytes)."""
    if len(dst) > 255:
        raise ValueError("DST longer than 255 bytes")
    ell = -(-length // 32)
    if ell > 255 or length > 65535:
        raise ValueError("requested output too long")
    dst_prime = dst + bytes([len(dst)])
    b0 = hashlib.sha256(b"\x00" * 64 + msg + length.to_bytes(2, "big") + b"\x00" + dst_prime).digest()
    bi = hashlib.sha256(b0 + b"\x01" + dst_prime).digest()
    out = [bi]
    b0_int = int.from_bytes(b0, "big")
    for i in range(2, ell + 1):
        xored = (b0_int ^ int.from_bytes(bi, "big")).to_bytes(32, "big")
        bi = hashlib.sha256(xored + bytes([i]) + dst_prime).digest()
        out.append(bi)
    return b"".join(out)[:length]


def hash_to_field_sha256(msg: bytes, dst: bytes, modulus: int) -> int:
    """RFC 9380 §5.2 ``hash_to_field`` for one element, L = 48 (k = 128), big-endian."""
    return int.from_bytes(expand_message_xmd_sha256(msg, dst, 48), "big") % modulus


def hash_to_field_sha256_multi(msg: bytes, dst: bytes, count: int, modulus: int) -> list[int]:
    """RFC 9380 §5.2 ``hash_to_field(msg, count)`` over a prime field (m = 1), L = 48 (k = 128).

    One ``expand_message_xmd`` call (§5.3.1) of ``count · 48`` bytes; element ``i`` is
    ``OS2IP(uniform_bytes[48·i : 48·(i+1)]) mod modulus``. ``count = 1`` equals
    :func:`hash_to_field_sha256`.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    uniform = expand_message_xmd_sha256(msg, dst, 48 * count)
    return [int.from_bytes(uniform[48 * i : 48 * (i + 1)], "big") % modulus for i in range(count)]


_TAG_PREFIXES: dict[bytes, bytes] = {}


def tagged_hash(tag: bytes, msg: bytes) -> bytes:
    """BIP340 "tagged hash": ``SHA256(SHA256(tag) ‖ SHA256(tag) ‖ msg)``."""
    prefix = _TAG_PREFIXES.get(tag)
    if prefix is None:
        t = hashlib.sha256(tag).digest()
        prefix = _TAG_PREFIXES[tag] = t + t
    return hashlib.sha256(prefix + msg).digest()
