"""Prime-order groups: one interface for secp256k1 and Ed25519.

.. danger:: hazmat. These are raw group operations. They validate every decoded input, but the
   scalar arithmetic runs on Python ``int``, which is **not constant-time**; the point
   multiplications run in libsecp256k1 / libsodium, which are. See ``docs/SECURITY.md``.

Scalars are plain ``int`` in ``[0, order)``. Points are :class:`Point` values bound to their
group; the backend representation is private to each group module.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence

from shardguard.crypto.errors import DecodeError, DecodeReason

__all__ = ["Group", "Point", "Rng"]

#: An injected source of randomness: ``rng(n)`` returns ``n`` uniformly random bytes.
#: Production code passes :func:`secrets.token_bytes`; tests may pass a seeded one.
Rng = Callable[[int], bytes]


class Point:
    """An element of a prime-order group. Immutable; compare with ``==``."""

    __slots__ = ("group", "raw")

    def __init__(self, group: Group, raw: object) -> None:
        self.group = group
        self.raw = raw

    def __add__(self, other: Point) -> Point:
        return self.group.add(self, other)

    def __sub__(self, other: Point) -> Point:
        return self.group.add(self, self.group.neg(other))

    def __neg__(self) -> Point:
        return self.group.neg(self)

    def __mul__(self, k: int) -> Point:
        return self.group.mul(self, k)

    __rmul__ = __mul__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Point) or other.group is not self.group:
            return NotImplemented
        return self.group.eq(self, other)

    def __hash__(self) -> int:
        return hash((self.group.name, self.group.encode_any(self)))

    def __repr__(self) -> str:
        return f"Point({self.group.name}, {self.group.encode_any(self).hex()})"

    @property
    def is_identity(self) -> bool:
        return self.group.is_identity(self)

    def to_bytes(self) -> bytes:
        """Canonical encoding; raises :class:`DecodeError` for the identity."""
        return self.group.encode(self)


class Group(abc.ABC):
    """A prime-order group with its scalar field (RFC 9591 §3.1 "Prime-Order Group")."""

    name: str
    order: int
    element_size: int
    scalar_size: int

    # -- points -----------------------------------------------------------------------------
    @abc.abstractmethod
    def identity(self) -> Point: ...

    @abc.abstractmethod
    def generator(self) -> Point: ...

    @abc.abstractmethod
    def base_mul(self, k: int) -> Point:
        """``k·G``."""

    @abc.abstractmethod
    def mul(self, p: Point, k: int) -> Point:
        """``k·P``."""

    @abc.abstractmethod
    def add(self, p: Point, q: Point) -> Point: ...

    @abc.abstractmethod
    def neg(self, p: Point) -> Point: ...

    @abc.abstractmethod
    def sum(self, points: Iterable[Point]) -> Point:
        """Sum of many points in one backend call where the backend allows it."""

    @abc.abstractmethod
    def is_identity(self, p: Point) -> bool: ...

    @abc.abstractmethod
    def eq(self, p: Point, q: Point) -> bool: ...

    @abc.abstractmethod
    def encode(self, p: Point) -> bytes:
        """SerializeElement (RFC 9591 §3.1); the identity has no encoding."""

    @abc.abstractmethod
    def encode_any(self, p: Point) -> bytes:
        """Like :meth:`encode` but gives the identity a fixed encoding (for hashing/repr)."""

    @abc.abstractmethod
    def decode(self, data: bytes, *, field: str = "") -> Point:
        """DeserializeElement: reject wrong length, non-canonical, off-curve, identity,
        small-order and out-of-subgroup encodings."""

    def msm(self, scalars: Sequence[int], points: Sequence[Point]) -> Point:
        """``Σ k_i·P_i`` (a coefficient of 1 costs no multiplication)."""
        return self.sum(p if k == 1 else self.mul(p, k) for k, p in zip(scalars, points, strict=True))

    # -- scalars ----------------------------------------------------------------------------
    @abc.abstractmethod
    def scalar_encode(self, k: int) -> bytes:
        """SerializeScalar."""

    @abc.abstractmethod
    def scalar_decode(self, data: bytes, *, field: str = "", allow_zero: bool = True) -> int:
        """DeserializeScalar: reject wrong length and values >= order."""

    def random_scalar(self, rng: Rng) -> int:
        """A uniform non-zero scalar (64 random bytes reduced: bias < 2^-250)."""
        while True:
            k = int.from_bytes(rng(64), "big") % self.order
            if k:
                return k

    def _check_scalar(self, k: int, data_len: int, field: str, allow_zero: bool) -> int:
        if data_len != self.scalar_size:
            raise DecodeError(DecodeReason.WRONG_LENGTH, field=field, suite=self.name)
        if k >= self.order:
            raise DecodeError(DecodeReason.SCALAR_OUT_OF_RANGE, field=field, suite=self.name)
        if k == 0 and not allow_zero:
            raise DecodeError(DecodeReason.ZERO_SCALAR, field=field, suite=self.name)
        return k

    def __repr__(self) -> str:
        return f"<Group {self.name}>"
