"""FROST signing payloads (RFC 9591 §5.1, §5.2), single and batched."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from shardguard.crypto.ciphersuite import Ciphersuite
from shardguard.crypto.frost import Commitment
from shardguard.crypto.group import Point
from shardguard.protocols import wire as w

__all__ = ["MAX_BATCH", "SignBatchRound1", "SignBatchRound2", "SignRound1", "SignRound2", "commitment_digest"]

#: Most messages one :class:`~shardguard.protocols.frost.FrostBatchSigner` session signs.
MAX_BATCH = 64


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


def commitment_digest(suite: Ciphersuite, commitment: Commitment) -> bytes:
    """SHA-256 of one signer's ``ser(D) ‖ ser(E)``, as echoed in round 2."""
    _, d, e = commitment
    return hashlib.sha256(suite.group.encode(d) + suite.group.encode(e)).digest()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class SignRound2(w.Payload):
    """Round 2 broadcast: signature share ``z_i`` and, per signer, the digest of the round-1
    commitments the sender signed over (so an equivocating round-1 sender is caught, and
    no honest signer is blamed for a share computed over a different list)."""

    TAG = 11
    suite: Ciphersuite
    share: int
    commitment_digests: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        w.check_scalar(self.suite, self.share, "share")
        items = self.commitment_digests
        if type(items) is not tuple or not 1 <= len(items) <= 255:
            raise w.WireError(w.WireReason.BAD_FIELD, "commitment_digests")
        w.check_ids([c[0] for c in items], "commitment_digests.id")
        for i, digest in items:
            if type(digest) is not bytes or len(digest) != 32:
                raise w.WireError(w.WireReason.BAD_FIELD, f"commitment_digests[{i}]")

    def _fields(self) -> list[Any]:
        return [self.suite.group.scalar_encode(self.share), [[i, d] for i, d in self.commitment_digests]]

    @classmethod
    def _from_fields(cls, suite: Ciphersuite, fields: list[Any]) -> SignRound2:
        w.expect_len(fields, 2)
        items = []
        for k, entry in enumerate(w.as_list(fields[1], "commitment_digests")):
            entry = w.as_list(entry, f"commitment_digests[{k}]", 2)
            w.expect_len(entry, 2)
            i = w.as_id(entry[0], f"commitment_digests[{k}].id")
            items.append((i, w.as_bytes(entry[1], f"commitment_digests[{i}]")))
        return cls(suite=suite, share=w.scalar(suite, fields[0], "share"), commitment_digests=tuple(items))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class _SignBatch(w.Payload):
    """A batch round: item ``i`` is the canonical encoding of the single-signing payload of
    that round for the batch's ``i``-th signature. The count and each item's content are
    checked by the party (the count must be the batch size; an item must decode as the
    round's single-signing payload)."""

    suite: Ciphersuite
    items: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if type(self.items) is not tuple or not 1 <= len(self.items) <= MAX_BATCH:
            raise w.WireError(w.WireReason.BAD_FIELD, "items")
        for k, item in enumerate(self.items):
            if type(item) is not bytes or not item:
                raise w.WireError(w.WireReason.BAD_FIELD, f"items[{k}]")

    def _fields(self) -> list[Any]:
        return [list(self.items)]

    @classmethod
    def _from_fields(cls, suite: Ciphersuite, fields: list[Any]) -> _SignBatch:
        w.expect_len(fields, 1)
        items = w.as_list(fields[0], "items", MAX_BATCH)
        return cls(suite=suite, items=tuple(w.as_bytes(x, f"items[{k}]") for k, x in enumerate(items)))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class SignBatchRound1(_SignBatch):
    """Batch round 1 broadcast: one encoded :class:`SignRound1` per message."""

    TAG = 12


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class SignBatchRound2(_SignBatch):
    """Batch round 2 broadcast: one encoded :class:`SignRound2` per message."""

    TAG = 13
