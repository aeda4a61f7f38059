"""Key material: the public key package and one party's key share.

A :class:`KeyShare` holds a secret. Its ``repr`` is redacted, it refuses pickling, and it is
written out only through the explicit :meth:`KeyShare.to_dict` (the CLI's local, unprotected
share files; nodes seal it instead).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from shardguard.crypto.ciphersuite import Ciphersuite
from shardguard.crypto.errors import DecodeError, UnsupportedSuite
from shardguard.crypto.group import Point
from shardguard.crypto.suites import suite_by_context
from shardguard.protocols.errors import UsageError
from shardguard.protocols.message import check_party_id
from shardguard.protocols.session import derive_session_id

__all__ = ["KeyFileError", "KeyShare", "PublicKeyPackage", "check_participants", "check_threshold"]


class KeyFileError(ValueError):
    """A key or share document that is missing a field or fails validation."""

    def __init__(self, what: str, field: str = "") -> None:
        self.what = what
        self.field = field
        super().__init__(f"{what}{f' ({field})' if field else ''}")


def check_threshold(threshold: int, participants: int, *, allow_single: bool = False) -> None:
    """1 ≤ t ≤ n ≤ 255; t = 1 (any single party signs alone) only when asked for."""
    if type(threshold) is not int or type(participants) is not int:
        raise UsageError("threshold and participant count must be integers")
    if not 1 <= participants <= 255:
        raise UsageError(f"the number of parties must be in 1..255, got {participants}")
    if not 1 <= threshold <= participants:
        raise UsageError(f"threshold {threshold} must be in 1..{participants} (T ≤ N)")
    if threshold == 1 and not allow_single:
        raise UsageError("threshold 1 lets any single party sign alone; pass allow_single=True to accept that")


def check_participants(participants: Sequence[int], what: str = "participant") -> tuple[int, ...]:
    """Valid (1..255), distinct party ids, returned sorted."""
    ids = tuple(participants)
    for i in ids:
        check_party_id(i, f"{what} id")
    if len(set(ids)) != len(ids):
        raise UsageError(f"duplicate {what} ids in {list(ids)}")
    return tuple(sorted(ids))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PublicKeyPackage:
    """Group key, every holder's verifying share, threshold and epoch (all public)."""

    suite: Ciphersuite
    threshold: int
    group_key: Point
    verifying_shares: Mapping[int, Point]
    epoch: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "verifying_shares", MappingProxyType(dict(sorted(self.verifying_shares.items()))))
        for i in self.verifying_shares:
            check_party_id(i, "holder id")
        check_threshold(self.threshold, len(self.verifying_shares), allow_single=True)
        if self.epoch < 0:
            raise UsageError("epoch must be ≥ 0")

    @property
    def participants(self) -> tuple[int, ...]:
        return tuple(self.verifying_shares)

    @property
    def key_id(self) -> bytes:
        """Stable id of the group key (unchanged by refresh)."""
        return hashlib.sha256(
            b"shardguard/key-id\x00" + self.suite.context_bytes + b"\x00" + self.group.encode(self.group_key)
        ).digest()

    @property
    def digest(self) -> bytes:
        """SHA-256 of the canonical package: suite, threshold, epoch, key, verifying shares."""
        g = self.suite.group
        h = hashlib.sha256(b"shardguard/public-key-package/v1\x00" + self.suite.context_bytes + b"\x00")
        h.update(bytes([self.threshold]) + self.epoch.to_bytes(8, "big") + g.encode(self.group_key))
        for i, y in self.verifying_shares.items():
            h.update(bytes([i]) + g.encode(y))
        return h.digest()

    @property
    def group(self) -> Any:
        return self.suite.group

    @property
    def public_key_bytes(self) -> bytes:
        """The key as the user sees it (Ed25519 32 B, secp256k1 33 B, BIP340 x-only 32 B)."""
        return self.suite.encode_public_key(self.group_key)

    def quorum(self, ids: Sequence[int], role: str) -> tuple[int, ...]:
        """Check that ``ids`` are distinct holders of this key and at least t of them."""
        out = check_participants(ids, role)
        unknown = set(out) - set(self.verifying_shares)
        if unknown:
            raise UsageError(f"{role}s {sorted(unknown)} do not hold this key")
        if len(out) < self.threshold:
            raise UsageError(f"too few {role}s: {len(out)} < threshold {self.threshold}")
        return out

    def session_id(
        self, protocol: str, participants: Sequence[int], instance: bytes, *, message: bytes = b"", extra: bytes = b""
    ) -> bytes:
        """Session id of a protocol run on this key at this epoch (ARCHITECTURE §4)."""
        return derive_session_id(
            protocol,
            self.suite.context,
            participants=participants,
            threshold=self.threshold,
            instance=instance,
            key_id=self.key_id,
            package=self.digest,
            epoch=self.epoch,
            message=message,
            extra=extra,
        )

    def to_dict(self) -> dict[str, Any]:
        g = self.suite.group
        return {
            "suite": self.suite.context,
            "scheme": self.suite.scheme,
            "threshold": self.threshold,
            "parties": len(self.verifying_shares),
            "epoch": self.epoch,
            "public_key": self.public_key_bytes.hex(),
            "group_key": g.encode(self.group_key).hex(),
            "verifying_shares": {str(i): g.encode(p).hex() for i, p in self.verifying_shares.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PublicKeyPackage:
        try:
            suite = suite_by_context(_get(d, "suite", str))
            g = suite.group
            vs = _get(d, "verifying_shares", dict)
            pkg = cls(
                suite=suite,
                threshold=_get(d, "threshold", int),
                epoch=_get(d, "epoch", int),
                group_key=g.decode(_hex(d, "group_key"), field="group_key"),
                verifying_shares={int(i): g.decode(bytes.fromhex(p), field=f"verifying_shares[{i}]") for i, p in vs.items()},
            )
        except (DecodeError, UnsupportedSuite, UsageError) as e:
            raise KeyFileError(str(e)) from None
        except ValueError:
            raise KeyFileError("malformed value in public key package") from None
        if pkg.to_dict() != {k: d.get(k) for k in pkg.to_dict()}:
            raise KeyFileError("public key package fields are inconsistent")
        return pkg

    def check_consistent(self) -> None:
        """The verifying shares must interpolate to the group key (Feldman, in the exponent)."""
        from shardguard.crypto.shamir import lagrange_coefficient

        ids = list(self.verifying_shares)[: self.threshold]
        order = self.suite.group.order
        lam = [lagrange_coefficient(ids, i, order) for i in ids]
        if self.suite.group.msm(lam, [self.verifying_shares[i] for i in ids]) != self.group_key:
            raise KeyFileError("verifying shares do not interpolate to the group key")


class KeyShare:
    """One holder's secret signing share with the public package it belongs to."""

    __slots__ = ("_secret", "identifier", "public")

    def __init__(self, *, identifier: int, signing_share: int, public: PublicKeyPackage) -> None:
        check_party_id(identifier, "identifier")
        if identifier not in public.verifying_shares:
            raise UsageError(f"party {identifier} is not a holder of this key")
        g = public.suite.group
        if type(signing_share) is not int or not 0 < signing_share < g.order:
            raise UsageError("signing share out of range")
        if g.base_mul(signing_share) != public.verifying_shares[identifier]:
            raise UsageError(f"signing share of party {identifier} does not match its verifying share")
        self.identifier = identifier
        self.public = public
        self._secret = signing_share

    @property
    def signing_share(self) -> int:
        return self._secret

    @property
    def suite(self) -> Ciphersuite:
        return self.public.suite

    def __repr__(self) -> str:
        return (
            f"KeyShare(identifier={self.identifier}, scheme={self.suite.scheme}, "
            f"epoch={self.public.epoch}, signing_share=<redacted>)"
        )

    def __reduce__(self) -> Any:
        raise TypeError("KeyShare holds a secret and cannot be pickled")

    def to_dict(self) -> dict[str, Any]:
        """Explicit export (contains the secret share)."""
        return {
            "identifier": self.identifier,
            "signing_share": self.suite.group.scalar_encode(self._secret).hex(),
            "public": self.public.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KeyShare:
        public = PublicKeyPackage.from_dict(_get(d, "public", dict))
        try:
            k = public.suite.group.scalar_decode(_hex(d, "signing_share"), field="signing_share", allow_zero=False)
            return cls(identifier=_get(d, "identifier", int), signing_share=k, public=public)
        except (DecodeError, UsageError) as e:
            raise KeyFileError(str(e), "signing_share") from None


def _get(d: Mapping[str, Any], key: str, typ: type) -> Any:
    v = d.get(key) if isinstance(d, Mapping) else None
    if type(v) is not typ:
        raise KeyFileError("missing or wrong-typed field", key)
    return v


def _hex(d: Mapping[str, Any], key: str) -> bytes:
    try:
        return bytes.fromhex(_get(d, key, str))
    except ValueError:
        raise KeyFileError("not hex", key) from None
