"""DKG and refresh payloads (FROST paper ePrint 2020/852 Fig. 1; ZF ``keys/dkg.rs``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from shardguard.crypto.ciphersuite import Ciphersuite
from shardguard.crypto.group import Point
from shardguard.protocols import wire as w

__all__ = ["DkgConfirm", "DkgEcho", "DkgRound1", "DkgSecretShare", "RefreshRound1"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class DkgRound1(w.Payload):
    """Round 1 broadcast: Feldman commitment ``φ_0..φ_{t−1}`` and PoK ``(R, μ)`` of ``a_0``."""

    TAG = 1
    suite: Ciphersuite
    commitment: tuple[Point, ...]
    pok_r: Point
    pok_mu: int

    def __post_init__(self) -> None:
        if type(self.commitment) is not tuple or not 1 <= len(self.commitment) <= 255:
            raise w.WireError(w.WireReason.BAD_FIELD, "commitment")
        for k, p in enumerate(self.commitment):
            w.check_point(self.suite, p, f"commitment[{k}]")
        w.check_point(self.suite, self.pok_r, "pok_r")
        w.check_scalar(self.suite, self.pok_mu, "pok_mu")

    def _fields(self) -> list[Any]:
        g = self.suite.group
        return [[g.encode(p) for p in self.commitment], g.encode(self.pok_r), g.scalar_encode(self.pok_mu)]

    @classmethod
    def _from_fields(cls, suite: Ciphersuite, fields: list[Any]) -> DkgRound1:
        w.expect_len(fields, 3)
        items = w.as_list(fields[0], "commitment")
        return cls(
            suite=suite,
            commitment=tuple(w.point(suite, x, f"commitment[{k}]") for k, x in enumerate(items)),
            pok_r=w.point(suite, fields[1], "pok_r"),
            pok_mu=w.scalar(suite, fields[2], "pok_mu"),
        )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class RefreshRound1(w.Payload):
    """Refresh round 1 broadcast: ``φ_1..φ_{t−1}`` of a polynomial with zero constant term
    (``φ_0`` is the identity, so it is not sent: ZF ``refresh_dkg_part1``)."""

    TAG = 2
    suite: Ciphersuite
    commitment: tuple[Point, ...]

    def __post_init__(self) -> None:
        if type(self.commitment) is not tuple or len(self.commitment) > 254:
            raise w.WireError(w.WireReason.BAD_FIELD, "commitment")
        for k, p in enumerate(self.commitment):
            w.check_point(self.suite, p, f"commitment[{k + 1}]")

    def _fields(self) -> list[Any]:
        return [[self.suite.group.encode(p) for p in self.commitment]]

    @classmethod
    def _from_fields(cls, suite: Ciphersuite, fields: list[Any]) -> RefreshRound1:
        w.expect_len(fields, 1)
        items = w.as_list(fields[0], "commitment")
        return cls(suite=suite, commitment=tuple(w.point(suite, x, f"commitment[{k + 1}]") for k, x in enumerate(items)))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class DkgEcho(w.Payload):
    """Round 2 broadcast: SHA-256 of every participant's round-1 payload as the sender saw it
    (participants in ascending id order). Equal lists prove every round-1 broadcast was
    consistent; a differing entry names the equivocating sender."""

    TAG = 3
    suite: Ciphersuite
    digests: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if type(self.digests) is not tuple or not 1 <= len(self.digests) <= 255:
            raise w.WireError(w.WireReason.BAD_FIELD, "digests")
        if not all(type(d) is bytes and len(d) == 32 for d in self.digests):  # n² per DKG: keep it lean
            k = next(k for k, d in enumerate(self.digests) if type(d) is not bytes or len(d) != 32)
            raise w.WireError(w.WireReason.BAD_FIELD, f"digests[{k}]")

    def _fields(self) -> list[Any]:
        return [list(self.digests)]

    @classmethod
    def _from_fields(cls, suite: Ciphersuite, fields: list[Any]) -> DkgEcho:
        w.expect_len(fields, 1)
        return cls(suite=suite, digests=tuple(w.as_list(fields[0], "digests")))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class DkgSecretShare(w.Payload):
    """Round 2 point-to-point: ``f_sender(recipient)``. Secret: goes only over a confidential,
    authenticated channel; never logged or pickled."""

    TAG = 4
    SECRET = True
    suite: Ciphersuite
    share: int

    def __post_init__(self) -> None:
        w.check_scalar(self.suite, self.share, "share")

    def _fields(self) -> list[Any]:
        return [self.suite.group.scalar_encode(self.share)]

    @classmethod
    def _from_fields(cls, suite: Ciphersuite, fields: list[Any]) -> DkgSecretShare:
        w.expect_len(fields, 1)
        return cls(suite=suite, share=w.scalar(suite, fields[0], "share"))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class DkgConfirm(w.Payload):
    """Round 3 broadcast: digest of the public key package the sender derived. A party
    outputs its new key (or epoch) only once every participant has confirmed the same
    package, so an abort anywhere before the confirmations leaves nobody on the new key.
    (A confirmation lost in transit can still leave one party waiting while the others
    finish: the last-message problem; the node's two-phase commit handles it.)"""

    TAG = 5
    suite: Ciphersuite
    package_digest: bytes

    def __post_init__(self) -> None:
        if type(self.package_digest) is not bytes or len(self.package_digest) != 32:
            raise w.WireError(w.WireReason.BAD_FIELD, "package_digest")

    def _fields(self) -> list[Any]:
        return [self.package_digest]

    @classmethod
    def _from_fields(cls, suite: Ciphersuite, fields: list[Any]) -> DkgConfirm:
        w.expect_len(fields, 1)
        return cls(suite=suite, package_digest=w.as_bytes(fields[0], "package_digest"))
