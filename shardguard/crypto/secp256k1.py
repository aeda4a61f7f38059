"""secp256k1 on libsecp256k1 (through coincurve).

.. danger:: hazmat; see :mod:`shardguard.crypto.group`.

libsecp256k1 cannot represent the point at infinity, so the identity is a ``None`` backend
value handled here; every backend call sees only valid, non-identity points.
"""

from __future__ import annotations

from collections.abc import Iterable

from coincurve import PublicKey

from shardguard.crypto.errors import DecodeError, DecodeReason
from shardguard.crypto.group import Group, Point

__all__ = ["SECP256K1", "Secp256k1"]

_P = 2**256 - 2**32 - 977
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_G_COMPRESSED = bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
# Encoding used only for hashing/printing the identity (never on the wire).
_IDENTITY_TAG = b"\x00" * 33


class Secp256k1(Group):
    name = "secp256k1"
    order = _N
    field_prime = _P
    element_size = 33
    scalar_size = 32

    def __init__(self) -> None:
        self._identity = Point(self, None)
        self._generator = Point(self, PublicKey(_G_COMPRESSED))

    def identity(self) -> Point:
        return self._identity

    def generator(self) -> Point:
        return self._generator

    def base_mul(self, k: int) -> Point:
        k %= _N
        if k == 0:
            return self._identity
        return Point(self, PublicKey.from_valid_secret(k.to_bytes(32, "big")))

    def mul(self, p: Point, k: int) -> Point:
        k %= _N
        if k == 0 or p.raw is None:
            return self._identity
        raw: PublicKey = p.raw  # type: ignore[assignment]
        return Point(self, raw.multiply(k.to_bytes(32, "big")))

    def add(self, p: Point, q: Point) -> Point:
        if p.raw is None:
            return q
        if q.raw is None:
            return p
        return self._combine([p.raw, q.raw])  # type: ignore[list-item]

    def sum(self, points: Iterable[Point]) -> Point:
        return self._combine([p.raw for p in points if p.raw is not None])  # type: ignore[misc]

    def _combine(self, raws: list[PublicKey]) -> Point:
        if not raws:
            return self._identity
        if len(raws) == 1:
            return Point(self, raws[0])
        try:
            return Point(self, PublicKey.combine_keys(raws))
        except ValueError:
            # libsecp256k1 refuses a sum at infinity: that sum is the identity.
            return self._identity

    def neg(self, p: Point) -> Point:
        if p.raw is None:
            return p
        enc = bytearray(p.raw.format(compressed=True))  # type: ignore[attr-defined]
        enc[0] ^= 0x01  # 0x02 <-> 0x03: same x, other y
        return Point(self, PublicKey(bytes(enc)))

    def is_identity(self, p: Point) -> bool:
        return p.raw is None

    def eq(self, p: Point, q: Point) -> bool:
        if p.raw is None or q.raw is None:
            return p.raw is q.raw
        return bool(p.raw.format() == q.raw.format())  # type: ignore[attr-defined]

    def encode(self, p: Point) -> bytes:
        if p.raw is None:
            raise DecodeError(DecodeReason.IDENTITY, field="serialize", suite=self.name)
        return bytes(p.raw.format(compressed=True))  # type: ignore[attr-defined]

    def encode_any(self, p: Point) -> bytes:
        return _IDENTITY_TAG if p.raw is None else self.encode(p)

    def decode(self, data: bytes, *, field: str = "") -> Point:
        """SEC1 compressed point (RFC 9591 §6.5 DeserializeElement)."""
        if len(data) != 33:
            raise DecodeError(DecodeReason.WRONG_LENGTH, field=field, suite=self.name)
        if data[0] not in (2, 3):
            reason = DecodeReason.IDENTITY if data == _IDENTITY_TAG else DecodeReason.NOT_CANONICAL
            raise DecodeError(reason, field=field, suite=self.name)
        if int.from_bytes(data[1:], "big") >= _P:
            raise DecodeError(DecodeReason.NOT_CANONICAL, field=field, suite=self.name)
        try:
            return Point(self, PublicKey(bytes(data)))
        except ValueError:
            raise DecodeError(DecodeReason.NOT_ON_CURVE, field=field, suite=self.name) from None

    def decode_xonly(self, data: bytes, *, field: str = "") -> Point:
        """BIP340 ``lift_x``: the point with even Y and this x coordinate."""
        if len(data) != 32:
            raise DecodeError(DecodeReason.WRONG_LENGTH, field=field, suite=self.name)
        return self.decode(b"\x02" + data, field=field)

    def has_even_y(self, p: Point) -> bool:
        return self.encode(p)[0] == 2

    def scalar_encode(self, k: int) -> bytes:
        return k.to_bytes(32, "big")

    def scalar_decode(self, data: bytes, *, field: str = "", allow_zero: bool = True) -> int:
        return self._check_scalar(int.from_bytes(data, "big"), len(data), field, allow_zero)


SECP256K1 = Secp256k1()
