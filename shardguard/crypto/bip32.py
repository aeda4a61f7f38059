"""BIP32 public (non-hardened) child key derivation on secp256k1, and ``xpub`` strings.

.. danger:: hazmat; see :mod:`shardguard.crypto.group`.

Written from BIP32 ("Child key derivation (CKD) functions", "Public parent key → public child
key", "Serialization format", "Key identifiers"). Only ``CKDpub`` exists here: a threshold key
has no whole private key, so hardened derivation, which needs one, is refused everywhere.

Unlike the BIP's wallet advice ("proceed with the next value for i"), an invalid child
(``I_L ≥ n`` or a child at infinity, probability < 2^-127) raises
:class:`DerivationError` ``INVALID_CHILD``: a threshold signer must never silently sign under a
key of another path than the one it was asked for.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from shardguard.crypto.errors import CryptoError, DecodeError, DecodeReason
from shardguard.crypto.group import Point
from shardguard.crypto.secp256k1 import SECP256K1

__all__ = [
    "HARDENED_OFFSET",
    "MAX_DEPTH",
    "DerivationError",
    "DerivationReason",
    "Derived",
    "ExtendedKeyError",
    "ExtendedKeyReason",
    "ExtendedPublicKey",
    "derive_public",
    "fingerprint",
    "format_path",
    "hash160",
    "parse_path",
    "xpub_decode",
    "xpub_encode",
]

#: First hardened index (``2^31``); every valid non-hardened index is below it.
HARDENED_OFFSET = 0x80000000
#: Depth is one byte in the serialization format.
MAX_DEPTH = 255
CHAIN_CODE_SIZE = 32

_N = SECP256K1.order
_MAX_INDEX_DIGITS = 10  # 2^32 - 1 = 4294967295: longer decimal strings are out of range anyway
_HARDENED_MARKS = ("'", "h", "H")


# -- errors ----------------------------------------------------------------------------------------
class DerivationReason(enum.Enum):
    HARDENED = "hardened derivation needs the whole private key, which a threshold key never has"
    BAD_SYNTAX = "not a derivation path of the form m/<decimal>/<decimal>/..."
    INDEX_OUT_OF_RANGE = "child index outside [0, 2^32)"
    TOO_DEEP = f"deeper than {MAX_DEPTH} levels"
    INVALID_CHILD = "invalid child key (I_L >= n or child at infinity); no other index is tried"
    BAD_CHAIN_CODE = f"chain code must be {CHAIN_CODE_SIZE} bytes"


class DerivationError(CryptoError, ValueError):
    """A path that ShardGuard will not derive.

    Attributes:
        reason: what was wrong (:class:`DerivationReason`).
        path: the path as given (a string), or rendered as ``m/...`` from the indices.
        index: the child index concerned when it is known as a number, else ``None``.
    """

    def __init__(self, reason: DerivationReason, *, path: str, index: int | None = None) -> None:
        self.reason = reason
        self.path = path
        self.index = index
        at = f" at index {index}" if index is not None else ""
        super().__init__(f"BIP32 path {path!r}: {reason.value}{at}")


class ExtendedKeyReason(enum.Enum):
    BAD_BASE58 = "not Base58"
    BAD_CHECKSUM = "Base58Check checksum mismatch"
    WRONG_LENGTH = "payload is not 78 bytes"
    PRIVATE_KEY = "an extended private key (xprv/tprv), not an xpub"
    UNKNOWN_VERSION = "unknown extended key version"
    WRONG_NETWORK = "extended key of the other network"
    BAD_KEY = "public key is not a valid compressed secp256k1 point"
    BAD_ZERO_DEPTH = "depth 0 with a non-zero parent fingerprint or child index"


class ExtendedKeyError(CryptoError, ValueError):
    """A string that is not a valid BIP32 extended public key."""

    def __init__(self, reason: ExtendedKeyReason) -> None:
        self.reason = reason
        super().__init__(f"xpub: {reason.value}")


# -- paths -----------------------------------------------------------------------------------------
def parse_path(path: str) -> tuple[int, ...]:
    """Parse ``"m"`` or ``"m/i/j/..."`` with decimal, non-hardened indices (``0 ≤ i < 2^31``).

    Refused: hardened markers (``'``, ``h``, ``H``) and indices ``≥ 2^31`` (``HARDENED``),
    indices ``≥ 2^32`` (``INDEX_OUT_OF_RANGE``), more than 255 levels (``TOO_DEEP``), and
    anything else that is not ASCII decimal without sign, spaces or leading zeros (``BAD_SYNTAX``).
    """
    if not isinstance(path, str):
        raise TypeError("path must be a str")
    head, *parts = path.split("/")
    if head != "m":
        raise DerivationError(DerivationReason.BAD_SYNTAX, path=path)
    if len(parts) > MAX_DEPTH:
        raise DerivationError(DerivationReason.TOO_DEEP, path=path)
    indices = []
    for part in parts:
        hardened = part.endswith(_HARDENED_MARKS)
        digits = part[:-1] if hardened else part
        if not digits or any(c not in "0123456789" for c in digits) or (digits[0] == "0" and len(digits) > 1):
            raise DerivationError(DerivationReason.BAD_SYNTAX, path=path)
        if len(digits) > _MAX_INDEX_DIGITS:
            raise DerivationError(DerivationReason.INDEX_OUT_OF_RANGE, path=path)
        index = int(digits)
        if index >= 2**32:
            raise DerivationError(DerivationReason.INDEX_OUT_OF_RANGE, path=path, index=index)
        if hardened or index >= HARDENED_OFFSET:
            raise DerivationError(DerivationReason.HARDENED, path=path, index=index)
        indices.append(index)
    return tuple(indices)


def format_path(indices: Sequence[int]) -> str:
    """``"m/i/j/..."`` (indices printed as given, ``H`` suffix for hardened ones)."""
    return "/".join(["m", *(f"{i - HARDENED_OFFSET}H" if HARDENED_OFFSET <= i < 2**32 else str(i) for i in indices)])


def _check_indices(indices: Sequence[int], depth: int) -> None:
    if depth + len(indices) > MAX_DEPTH:
        raise DerivationError(DerivationReason.TOO_DEEP, path=format_path(indices))
    for i in indices:
        if not 0 <= i < 2**32:
            raise DerivationError(DerivationReason.INDEX_OUT_OF_RANGE, path=format_path(indices), index=i)
        if i >= HARDENED_OFFSET:
            raise DerivationError(DerivationReason.HARDENED, path=format_path(indices), index=i)


# -- derivation ------------------------------------------------------------------------------------
def hash160(data: bytes) -> bytes:
    """``RIPEMD160(SHA256(data))`` (BIP32 "Key identifiers").

    RIPEMD-160 comes from Python's OpenSSL; OpenSSL 3 has it in its default provider again
    since 3.0.7 (older 3.0.x only in the legacy provider).
    """
    try:
        ripemd = hashlib.new("ripemd160", hashlib.sha256(data).digest())
    except ValueError as exc:  # pragma: no cover - depends on the OpenSSL build
        raise CryptoError("RIPEMD-160 is unavailable in this Python's OpenSSL (needs OpenSSL >= 3.0.7)") from exc
    return ripemd.digest()


def fingerprint(public_key: Point) -> bytes:
    """First 4 bytes of the key identifier ``HASH160(serP(K))``."""
    return hash160(SECP256K1.encode(public_key))[:4]


@dataclass(frozen=True)
class Derived:
    """A public child key and how it relates to the parent it was derived from.

    ``public_key == parent + tweak·G``, where ``tweak`` is the sum of the ``I_L`` values along
    the path mod n: a t-of-n group signs for the child by adding ``tweak`` to its secret
    (e.g. to one party's share, or ``λ_i``-weighted to all of them).
    """

    public_key: Point
    chain_code: bytes
    tweak: int
    parent_fingerprint: bytes  # of the last parent; b"\0" * 4 for the empty path
    depth: int
    index: int  # the last child index; 0 for the empty path

    def xpub(self, *, testnet: bool = False) -> str:
        return xpub_encode(self.public_key, self.chain_code, self.depth, self.parent_fingerprint, self.index, testnet=testnet)


def derive_public(parent: Point, chain_code: bytes, path: Sequence[int], *, depth: int = 0) -> Derived:
    """``CKDpub`` along ``path`` (non-hardened indices) from ``(parent, chain_code)``.

    ``depth`` is the parent's own depth (0 for a master key); the child's is ``depth + len(path)``.
    """
    if isinstance(path, str):
        raise TypeError("path is a sequence of child indices; parse a string with parse_path()")
    if parent.group is not SECP256K1:
        raise TypeError("BIP32 derivation is defined on secp256k1 points only")
    if parent.is_identity:
        raise DecodeError(DecodeReason.IDENTITY, field="bip32 parent key", suite=SECP256K1.name)
    if not isinstance(chain_code, bytes | bytearray) or len(chain_code) != CHAIN_CODE_SIZE:
        raise DerivationError(DerivationReason.BAD_CHAIN_CODE, path=format_path(path))
    if not 0 <= depth <= MAX_DEPTH:
        raise ValueError(f"parent depth must be in [0, {MAX_DEPTH}]")
    _check_indices(path, depth)

    key, code, tweak = parent, bytes(chain_code), 0
    parent_fp = b"\x00" * 4
    for i in path:
        encoded = SECP256K1.encode(key)
        digest = hmac.digest(code, encoded + i.to_bytes(4, "big"), "sha512")
        il = int.from_bytes(digest[:32], "big")
        if il >= _N:
            raise DerivationError(DerivationReason.INVALID_CHILD, path=format_path(path), index=i)
        child = key + SECP256K1.base_mul(il)
        if child.is_identity:
            raise DerivationError(DerivationReason.INVALID_CHILD, path=format_path(path), index=i)
        parent_fp = hash160(encoded)[:4]
        key, code, tweak = child, digest[32:], (tweak + il) % _N
    return Derived(key, code, tweak, parent_fp, depth + len(path), path[-1] if path else 0)


# -- serialization ---------------------------------------------------------------------------------
_VERSION_XPUB = 0x0488B21E
_VERSION_TPUB = 0x043587CF
_PRIVATE_VERSIONS = (0x0488ADE4, 0x04358394)  # xprv, tprv
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}
_PAYLOAD_SIZE = 78
_MAX_XPUB_CHARS = 120  # a 78+4 byte Base58Check string has 111 or 112 characters


@dataclass(frozen=True)
class ExtendedPublicKey:
    public_key: Point
    chain_code: bytes
    depth: int
    parent_fingerprint: bytes
    index: int
    testnet: bool


def _b58check_encode(payload: bytes) -> str:
    data = payload + hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    n, out = int.from_bytes(data, "big"), []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    zeros = len(data) - len(data.lstrip(b"\x00"))
    return "1" * zeros + "".join(reversed(out))


def _b58check_decode(s: str) -> bytes:
    if not s or len(s) > _MAX_XPUB_CHARS or any(c not in _B58_INDEX for c in s):
        raise ExtendedKeyError(ExtendedKeyReason.BAD_BASE58)
    n = 0
    for c in s:
        n = n * 58 + _B58_INDEX[c]
    zeros = len(s) - len(s.lstrip("1"))
    data = b"\x00" * zeros + (n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b"")
    if len(data) < 4:
        raise ExtendedKeyError(ExtendedKeyReason.WRONG_LENGTH)
    payload, checksum = data[:-4], data[-4:]
    if not hmac.compare_digest(hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4], checksum):
        raise ExtendedKeyError(ExtendedKeyReason.BAD_CHECKSUM)
    return payload


def xpub_encode(
    public_key: Point, chain_code: bytes, depth: int, parent_fingerprint: bytes, index: int, *, testnet: bool = False
) -> str:
    """BIP32 "Serialization format" of an extended public key (``xpub``, or ``tpub`` on testnet)."""
    if len(chain_code) != CHAIN_CODE_SIZE:
        raise DerivationError(DerivationReason.BAD_CHAIN_CODE, path="")
    if not 0 <= depth <= MAX_DEPTH or len(parent_fingerprint) != 4 or not 0 <= index < 2**32:
        raise ValueError("depth must fit one byte, the parent fingerprint 4 bytes and the index 4 bytes")
    if depth == 0 and (index or any(parent_fingerprint)):
        raise ValueError("a depth-0 key has a zero parent fingerprint and index")
    version = _VERSION_TPUB if testnet else _VERSION_XPUB
    payload = b"".join(
        [
            version.to_bytes(4, "big"),
            bytes([depth]),
            bytes(parent_fingerprint),
            index.to_bytes(4, "big"),
            bytes(chain_code),
            SECP256K1.encode(public_key),
        ]
    )
    return _b58check_encode(payload)


def xpub_decode(s: str, *, testnet: bool | None = False) -> ExtendedPublicKey:
    """Parse and validate an ``xpub`` (``testnet=True``: a ``tpub``; ``None``: either)."""
    payload = _b58check_decode(s)
    if len(payload) != _PAYLOAD_SIZE:
        raise ExtendedKeyError(ExtendedKeyReason.WRONG_LENGTH)
    version = int.from_bytes(payload[:4], "big")
    if version in _PRIVATE_VERSIONS:
        raise ExtendedKeyError(ExtendedKeyReason.PRIVATE_KEY)
    if version not in (_VERSION_XPUB, _VERSION_TPUB):
        raise ExtendedKeyError(ExtendedKeyReason.UNKNOWN_VERSION)
    is_testnet = version == _VERSION_TPUB
    if testnet is not None and is_testnet != testnet:
        raise ExtendedKeyError(ExtendedKeyReason.WRONG_NETWORK)
    depth, parent_fp, index = payload[4], payload[5:9], int.from_bytes(payload[9:13], "big")
    if depth == 0 and (index or any(parent_fp)):
        raise ExtendedKeyError(ExtendedKeyReason.BAD_ZERO_DEPTH)
    try:
        key = SECP256K1.decode(payload[45:78], field="xpub key")
    except DecodeError:
        raise ExtendedKeyError(ExtendedKeyReason.BAD_KEY) from None
    return ExtendedPublicKey(key, payload[13:45], depth, parent_fp, index, is_testnet)
