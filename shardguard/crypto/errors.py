"""Typed errors of the hazmat layer.

Every decoding failure names *what* was wrong and *which* field, never the secret value.
"""

from __future__ import annotations

import enum

__all__ = ["CryptoError", "DecodeError", "DecodeReason", "UnsupportedSuite"]


class CryptoError(Exception):
    """Base of every error raised by :mod:`shardguard.crypto`."""


class DecodeReason(enum.Enum):
    WRONG_LENGTH = "wrong length"
    NOT_CANONICAL = "non-canonical encoding"
    NOT_ON_CURVE = "not a point on the curve"
    IDENTITY = "the identity element is not allowed here"
    SMALL_ORDER = "point of small order / outside the prime-order subgroup"
    SCALAR_OUT_OF_RANGE = "scalar is not below the group order"
    ZERO_SCALAR = "zero scalar is not allowed here"


class DecodeError(CryptoError, ValueError):
    """Bytes that do not decode to a valid group element or scalar.

    Attributes:
        reason: what was wrong.
        field: which field was being decoded (caller supplied, e.g. ``"commitment[2]"``).
        suite: the ciphersuite / group name.
    """

    def __init__(self, reason: DecodeReason, *, field: str = "", suite: str = "") -> None:
        self.reason = reason
        self.field = field
        self.suite = suite
        where = f" in {field}" if field else ""
        super().__init__(f"{suite}: {reason.value}{where}")

    def with_field(self, field: str) -> DecodeError:
        """Return a copy naming the field being decoded."""
        return DecodeError(self.reason, field=field, suite=self.suite)


class UnsupportedSuite(CryptoError, LookupError):
    """A ciphersuite id that ShardGuard does not implement."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unsupported ciphersuite {name!r}")
