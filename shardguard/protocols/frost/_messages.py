"""FROST signing payloads (RFC 9591 §5.1, §5.2)."""

from __future__ import annotations

import dataclasses
from typing import Any

from shardguard.crypto.ciphersuite import Ciphersuite
from shardguard.crypto.group import Point
from shardguard.protocols import wire as w
from shardguard.protocols.frost._core import Commitment

__all__ = ["SignRound1", "SignRound2"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class SignRound1(w.Payload):
    """Round 1 broadcast: hiding and binding nonce commitments ``(D_i, E_i)``."""

    TAG = 10
    suite: Ciphersuite
    hiding: Point
    binding: Point

    def __post_init__(self) -> None:
        w.check_point(self.suite, self.hiding, "hiding")
        w.check_point(self.suite, self.binding, "binding")

    def _fields(self) -> list[Any]:
        g = self.suite.group
        return [g.encode(self.hiding), g.encode(self.binding)]

    @classmethod
    def _from_fields(cls, suite: Ciphersuite, fields: list[Any]) -> SignRound1:
        w.expect_len(fields, 2)
        return cls(suite=suite, hiding=w.point(suite, fields[0], "hiding"), binding=w.point(suite, fields[1], "binding"))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class SignRound2(w.Payload):
    """Round 2 broadcast: signature share ``z_i`` and an echo of the commitment list the
    sender signed over (so an equivocating round-1 sender is named, not an honest signer)."""

    TAG = 11
    suite: Ciphersuite
    share: int
    commitments: tuple[Commitment, ...]

    def __post_init__(self) -> None:
        w.check_scalar(self.suite, self.share, "share")
        if type(self.commitments) is not tuple or not 1 <= len(self.commitments) <= 255:
            raise w.WireError(w.WireReason.BAD_FIELD, "commitments")
        w.check_ids([c[0] for c in self.commitments], "commitments.id")
        for i, d, e in self.commitments:
            w.check_point(self.suite, d, f"commitments[{i}].hiding")
            w.check_point(self.suite, e, f"commitments[{i}].binding")

    def _fields(self) -> list[Any]:
        g = self.suite.group
        return [g.scalar_encode(self.share), [[i, g.encode(d), g.encode(e)] for i, d, e in self.commitments]]

    @classmethod
    def _from_fields(cls, suite: Ciphersuite, fields: list[Any]) -> SignRound2:
        w.expect_len(fields, 2)
        items = []
        for k, entry in enumerate(w.as_list(fields[1], "commitments")):
            entry = w.as_list(entry, f"commitments[{k}]", 3)
            w.expect_len(entry, 3)
            i = w.as_id(entry[0], f"commitments[{k}].id")
            items.append(
                (i, w.point(suite, entry[1], f"commitments[{i}].hiding"), w.point(suite, entry[2], f"commitments[{i}].binding"))
            )
        return cls(suite=suite, share=w.scalar(suite, fields[0], "share"), commitments=tuple(items))
