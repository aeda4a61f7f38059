"""Canonical CBOR payloads (ARCHITECTURE §4; STYLE-ANCHORS 2 and 10).

A payload is one CBOR array ``[FORMAT_VERSION, suite context, type tag, field…]`` in RFC 8949
§4.2.1 core deterministic encoding. Decoding is strict: size limit first, then CBOR, then only
``int``/``bytes``/``str``/``list`` are allowed, then the bytes must re-encode identically (so
each payload has exactly one encoding), then every field is validated by the payload's own
constructor (points on the curve and not identity, scalars in range, lengths).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

import cbor2

from shardguard.crypto.ciphersuite import Ciphersuite
from shardguard.crypto.errors import DecodeError
from shardguard.crypto.group import Point
from shardguard.protocols.message import MAX_PAYLOAD

__all__ = ["FORMAT_VERSION", "Payload", "WireError", "WireReason", "decode_payload", "encode_payload"]

FORMAT_VERSION = 1
_MAX_DEPTH = 4


class WireReason(enum.Enum):
    OVERSIZED = "payload too large"
    NOT_CBOR = "not well-formed CBOR"
    NOT_CANONICAL = "not the canonical encoding"
    BAD_SHAPE = "wrong structure or field type"
    WRONG_VERSION = "unsupported wire format version"
    WRONG_SUITE = "payload is for another ciphersuite"
    WRONG_TYPE = "unexpected payload type"
    BAD_FIELD = "invalid field value"


class WireError(ValueError):
    """A payload that cannot be accepted. ``field`` names the culprit field."""

    def __init__(self, reason: WireReason, field: str = "") -> None:
        self.reason = reason
        self.field = field
        super().__init__(f"{reason.value}{f' ({field})' if field else ''}")


class Payload:
    """Base of every payload type. Subclasses are frozen, slotted, keyword-only dataclasses
    whose ``__post_init__`` validates every field, and which define ``TAG``, ``_fields`` and
    ``_from_fields``."""

    __slots__ = ()
    TAG: ClassVar[int]
    SECRET: ClassVar[bool] = False
    suite: Ciphersuite

    def _fields(self) -> list[Any]:
        raise NotImplementedError

    @classmethod
    def _from_fields(cls, suite: Ciphersuite, fields: list[Any]) -> Payload:
        raise NotImplementedError

    def __reduce__(self) -> Any:
        if self.SECRET:
            raise TypeError(f"{type(self).__name__} holds secret material and cannot be pickled")
        return super().__reduce__()

    def __repr__(self) -> str:
        if self.SECRET:
            return f"{type(self).__name__}(<redacted>)"
        names = getattr(self, "__dataclass_fields__", {})
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in names if n != 'suite')})"


P = TypeVar("P", bound=Payload)


def encode_payload(payload: Payload) -> bytes:
    return cbor2.dumps([FORMAT_VERSION, payload.suite.context, payload.TAG, *payload._fields()], canonical=True)


def _check_shape(obj: object, depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        raise WireError(WireReason.BAD_SHAPE, "nesting")
    if isinstance(obj, list):
        for item in obj:
            if type(item) not in (int, bytes, str):  # fast path for flat lists
                _check_shape(item, depth + 1)
    elif type(obj) not in (int, bytes, str):
        raise WireError(WireReason.BAD_SHAPE, type(obj).__name__)


def decode_payload(suite: Ciphersuite, data: bytes, expected: type[P]) -> P:
    """Decode and validate ``data`` as an ``expected`` payload, or raise :class:`WireError`."""
    if len(data) > MAX_PAYLOAD:
        raise WireError(WireReason.OVERSIZED)
    try:
        obj = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, OverflowError, RecursionError, MemoryError):
        raise WireError(WireReason.NOT_CBOR) from None
    _check_shape(obj)
    if not isinstance(obj, list) or len(obj) < 3:
        raise WireError(WireReason.BAD_SHAPE, "header")
    if cbor2.dumps(obj, canonical=True) != data:
        raise WireError(WireReason.NOT_CANONICAL)
    version, context, tag, *fields = obj
    if version != FORMAT_VERSION:
        raise WireError(WireReason.WRONG_VERSION, "version")
    if context != suite.context:
        raise WireError(WireReason.WRONG_SUITE, "suite")
    if tag != expected.TAG:
        raise WireError(WireReason.WRONG_TYPE, "type")
    try:
        payload = expected._from_fields(suite, fields)
    except DecodeError as e:
        raise WireError(WireReason.BAD_FIELD, e.field) from None
    except (TypeError, ValueError, IndexError) as e:
        if isinstance(e, WireError):
            raise
        raise WireError(WireReason.BAD_FIELD, str(e)[:80]) from None
    return payload  # type: ignore[return-value]


# -- field helpers used by the payload modules --------------------------------------------------


def expect_len(fields: Sequence[Any], n: int) -> None:
    if len(fields) != n:
        raise WireError(WireReason.BAD_SHAPE, f"expected {n} fields, got {len(fields)}")


def as_bytes(x: object, field: str) -> bytes:
    if type(x) is not bytes:
        raise WireError(WireReason.BAD_SHAPE, field)
    return x


def as_list(x: object, field: str, max_len: int = 256) -> list[Any]:
    if type(x) is not list or len(x) > max_len:
        raise WireError(WireReason.BAD_SHAPE, field)
    return x


def as_id(x: object, field: str) -> int:
    if type(x) is not int or not 1 <= x <= 255:
        raise WireError(WireReason.BAD_FIELD, field)
    return x


def point(suite: Ciphersuite, x: object, field: str) -> Point:
    return suite.group.decode(as_bytes(x, field), field=field)


def scalar(suite: Ciphersuite, x: object, field: str) -> int:
    return suite.group.scalar_decode(as_bytes(x, field), field=field)


def check_point(suite: Ciphersuite, p: object, field: str) -> None:
    """Constructor check: a non-identity point of the suite's group."""
    if not isinstance(p, Point) or p.group is not suite.group or p.is_identity:
        raise WireError(WireReason.BAD_FIELD, field)


def check_scalar(suite: Ciphersuite, k: object, field: str) -> None:
    if type(k) is not int or not 0 <= k < suite.group.order:
        raise WireError(WireReason.BAD_FIELD, field)


def check_ids(ids: Sequence[object], field: str) -> None:
    """Strictly increasing party ids in 1..255."""
    prev = 0
    for i in ids:
        if type(i) is not int or not prev < i <= 255:
            raise WireError(WireReason.BAD_FIELD, field)
        prev = i
