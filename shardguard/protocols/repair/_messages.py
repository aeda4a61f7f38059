"""Share-repair payloads (Repairable Threshold Scheme, ePrint 2017/1155; ZF ``repairable.rs``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from shardguard.crypto.ciphersuite import Ciphersuite
from shardguard.crypto.group import Point
from shardguard.protocols import wire as w

__all__ = ["RepairCommitments", "RepairDelta", "RepairSigma"]

PointList = tuple[tuple[int, Point], ...]


def _encode_points(suite: Ciphersuite, items: PointList) -> list[Any]:
    return [[i, suite.group.encode(p)] for i, p in items]


def _decode_points(suite: Ciphersuite, raw: object, field: str) -> PointList:
    out = []
    for k, entry in enumerate(w.as_list(raw, field)):
        entry = w.as_list(entry, f"{field}[{k}]", 2)
        w.expect_len(entry, 2)
        i = w.as_id(entry[0], f"{field}[{k}].id")
        out.append((i, w.point(suite, entry[1], f"{field}[{i}]")))
    return tuple(out)


def _check_points(suite: Ciphersuite, items: object, field: str) -> None:
    if type(items) is not tuple or not 1 <= len(items) <= 255:
        raise w.WireError(w.WireReason.BAD_FIELD, field)
    w.check_ids([i for i, _ in items], f"{field}.id")
    for i, p in items:
        w.check_point(suite, p, f"{field}[{i}]")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class RepairDelta(w.Payload):
    """Helper → helper: one random summand ``δ_{i→j}`` of ``λ_i·s_i`` and its image ``δ·G``."""

    TAG = 20
    SECRET = True
    suite: Ciphersuite
    delta: int
    commitment: Point

    def __post_init__(self) -> None:
        w.check_scalar(self.suite, self.delta, "delta")
        w.check_point(self.suite, self.commitment, "commitment")

    def _fields(self) -> list[Any]:
        g = self.suite.group
        return [g.scalar_encode(self.delta), g.encode(self.commitment)]

    @classmethod
    def _from_fields(cls, suite: Ciphersuite, fields: list[Any]) -> RepairDelta:
        w.expect_len(fields, 2)
        return cls(suite=suite, delta=w.scalar(suite, fields[0], "delta"), commitment=w.point(suite, fields[1], "commitment"))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class RepairCommitments(w.Payload):
    """Helper → lost party: ``δ_{i→j}·G`` for every helper ``j`` (public images only)."""

    TAG = 21
    suite: Ciphersuite
    commitments: PointList

    def __post_init__(self) -> None:
        _check_points(self.suite, self.commitments, "commitments")

    def _fields(self) -> list[Any]:
        return [_encode_points(self.suite, self.commitments)]

    @classmethod
    def _from_fields(cls, suite: Ciphersuite, fields: list[Any]) -> RepairCommitments:
        w.expect_len(fields, 1)
        return cls(suite=suite, commitments=_decode_points(suite, fields[0], "commitments"))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class RepairSigma(w.Payload):
    """Helper → lost party: ``σ_j = Σ_i δ_{i→j}`` and the images ``δ_{i→j}·G`` it received."""

    TAG = 22
    SECRET = True
    suite: Ciphersuite
    sigma: int
    received: PointList

    def __post_init__(self) -> None:
        w.check_scalar(self.suite, self.sigma, "sigma")
        _check_points(self.suite, self.received, "received")

    def _fields(self) -> list[Any]:
        return [self.suite.group.scalar_encode(self.sigma), _encode_points(self.suite, self.received)]

    @classmethod
    def _from_fields(cls, suite: Ciphersuite, fields: list[Any]) -> RepairSigma:
        w.expect_len(fields, 2)
        return cls(suite=suite, sigma=w.scalar(suite, fields[0], "sigma"), received=_decode_points(suite, fields[1], "received"))
