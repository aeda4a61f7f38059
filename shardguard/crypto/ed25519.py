"""Ed25519 (the prime-order subgroup of edwards25519) on libsodium, through PyNaCl's bindings.

.. danger:: hazmat; see :mod:`shardguard.crypto.group`.

Points are their canonical 32-byte encodings. libsodium's ``*_noclamp`` multiplications refuse
the identity as input or output, so the identity is handled here before any backend call.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from nacl import bindings as _na

from shardguard.crypto.errors import DecodeError, DecodeReason
from shardguard.crypto.group import Group, Point

__all__ = ["ED25519", "Ed25519"]

_L = 2**252 + 27742317777372353535851937790883648493
_P = 2**255 - 19
_IDENTITY = b"\x01" + b"\x00" * 31
_BASE = bytes.fromhex("5866666666666666666666666666666666666666666666666666666666666666")


def _raw(p: Point) -> bytes:
    return cast(bytes, p.raw)


class Ed25519(Group):
    name = "ed25519"
    order = _L
    element_size = 32
    scalar_size = 32

    def __init__(self) -> None:
        self._identity = Point(self, _IDENTITY)
        self._generator = Point(self, _BASE)

    def identity(self) -> Point:
        return self._identity

    def generator(self) -> Point:
        return self._generator

    def base_mul(self, k: int) -> Point:
        k %= _L
        if k == 0:
            return self._identity
        return Point(self, _na.crypto_scalarmult_ed25519_base_noclamp(k.to_bytes(32, "little")))

    def mul(self, p: Point, k: int) -> Point:
        k %= _L
        if k == 0 or p.raw == _IDENTITY:
            return self._identity
        return Point(self, _na.crypto_scalarmult_ed25519_noclamp(k.to_bytes(32, "little"), _raw(p)))

    def add(self, p: Point, q: Point) -> Point:
        if p.raw == _IDENTITY:
            return q
        if q.raw == _IDENTITY:
            return p
        return Point(self, _na.crypto_core_ed25519_add(_raw(p), _raw(q)))

    def sum(self, points: Iterable[Point]) -> Point:
        acc: bytes | None = None
        for p in points:
            if p.raw == _IDENTITY:
                continue
            acc = _raw(p) if acc is None else _na.crypto_core_ed25519_add(acc, _raw(p))
        return self._identity if acc is None or acc == _IDENTITY else Point(self, acc)

    def neg(self, p: Point) -> Point:
        if p.raw == _IDENTITY:
            return p
        # -(x, y) = (-x, y): flip the sign bit. Exact for every prime-order point (x != 0).
        enc = bytearray(_raw(p))
        enc[31] ^= 0x80
        return Point(self, bytes(enc))

    def is_identity(self, p: Point) -> bool:
        return p.raw == _IDENTITY

    def eq(self, p: Point, q: Point) -> bool:
        return bool(p.raw == q.raw)

    def encode(self, p: Point) -> bytes:
        if p.raw == _IDENTITY:
            raise DecodeError(DecodeReason.IDENTITY, field="serialize", suite=self.name)
        return _raw(p)

    def encode_any(self, p: Point) -> bytes:
        return _raw(p)

    def decode(self, data: bytes, *, field: str = "") -> Point:
        """RFC 9591 §6.1 DeserializeElement: canonical, on the curve, in the prime-order
        subgroup, not the identity (libsodium ``crypto_core_ed25519_is_valid_point`` also
        refuses every small-order point)."""
        if len(data) != 32:
            raise DecodeError(DecodeReason.WRONG_LENGTH, field=field, suite=self.name)
        data = bytes(data)
        if data == _IDENTITY:
            raise DecodeError(DecodeReason.IDENTITY, field=field, suite=self.name)
        y = int.from_bytes(data, "little") & ((1 << 255) - 1)
        if y >= _P:
            raise DecodeError(DecodeReason.NOT_CANONICAL, field=field, suite=self.name)
        if not _na.crypto_core_ed25519_is_valid_point(data):
            raise DecodeError(self._why_invalid(data), field=field, suite=self.name)
        return Point(self, data)

    @staticmethod
    def _why_invalid(data: bytes) -> DecodeReason:
        # Error path only: libsodium's add decodes and checks the curve equation, nothing more.
        try:
            _na.crypto_core_ed25519_add(data, _BASE)
        except RuntimeError:
            return DecodeReason.NOT_ON_CURVE
        return DecodeReason.SMALL_ORDER

    def scalar_encode(self, k: int) -> bytes:
        return k.to_bytes(32, "little")

    def scalar_decode(self, data: bytes, *, field: str = "", allow_zero: bool = True) -> int:
        return self._check_scalar(int.from_bytes(data, "little"), len(data), field, allow_zero)


ED25519 = Ed25519()
