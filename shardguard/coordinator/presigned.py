"""DKLs23 pre-signatures of ECDSA keys, and the one-step signings that use them (API.md §1.15;
DKLs23 spec §4.1).

The signers of a key run a ``presign`` job — DKLs23 rounds 1–3, no digest — and each keeps its
part of one pre-signature in memory; they report its id and nonce point ``R``, and the
coordinator keeps those here per key, signer set and epoch, with each signer's process
``generation`` (a restarted node holds none of its old ones). An ECDSA request for the key
itself whose signers have one claims it — deleted in the same transaction, so no two signings
ever name one, and replicas on PostgreSQL skip each other's locked rows — and names it in the
job with a fresh random ``seed``. Each signer answers with its ``(u, w)`` and the re-randomised
nonce point ``R'`` in one step; the coordinator checks they agree on ``R'``, combines
(``signatures.assemble_presigned``) and verifies the signature.

Nothing here is secret: ``R`` and the id are public, the shares are DKLs23's round-3
broadcast. The signers shift the nonce by ``δ = H(id, PK, R, digest, seed, ρ)``: the seed,
drawn here after the request is fixed, keeps a client from knowing ``R'`` when it picks its
digest; ``ρ``, which only the signers know, keeps the coordinator from knowing it (Groth &
Shoup 2022). What a hostile coordinator could still do — name a
pre-signature twice, or one of other signers, or drop them — makes a signing fail or a
pre-signature go unused (each node takes one out of memory before it checks anything), never
signs twice with one nonce.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select

from shardguard.coordinator.models import Node, Presignature
from shardguard.coordinator.rawsql import RawConnection
from shardguard.coordinator.signatures import canonical_hex, compressed_point_hex

__all__ = ["PRESIGNATURE", "claim", "presigned", "result_problem", "signer_set", "stock", "stocked_sets"]

#: The job parameter that names the pre-signature: ``{"id", "R", "seed"}`` (hex).
PRESIGNATURE = "presignature"
_CANDIDATES = 8

_GENERATIONS = select(Node.id, Node.generation).where(Node.id.in_(bindparam("ids", expanding=True)))
_FRESH = (
    Presignature.key_id == bindparam("key"),
    Presignature.signer_set == bindparam("set"),
    Presignature.epoch == bindparam("epoch"),
    Presignature.created_at >= bindparam("fresh"),
)
_PICK = (
    select(Presignature.id, Presignature.big_r, Presignature.generations)
    .where(*_FRESH)
    .order_by(Presignature.created_at)
    .limit(1)
    .with_for_update(skip_locked=True)
)
_SETS = (
    select(Presignature.signer_set)
    .where(
        Presignature.key_id == bindparam("key"),
        Presignature.epoch == bindparam("epoch"),
        Presignature.created_at >= bindparam("fresh"),
    )
    .distinct()
)
_DROP = delete(Presignature).where(Presignature.key_id == bindparam("key"), Presignature.id.in_(bindparam("ids", expanding=True)))
_STOCK = select(func.count()).select_from(Presignature).where(*_FRESH)
INSERT = insert(Presignature)


def presigned(params: Mapping[str, Any] | None) -> bool:
    """Whether a sign job runs with a pre-signature."""
    return bool(params) and PRESIGNATURE in params  # type: ignore[operator]


def signer_set(node_ids: Sequence[str]) -> str:
    return ",".join(node_ids)


def generations(conn: RawConnection, node_ids: Sequence[str]) -> dict[str, int]:
    return {row.id: int(row.generation) for row in conn.execute(_GENERATIONS, {"ids": list(node_ids)})}


def _where(key_id: str, epoch: int, node_ids: Sequence[str], now: dt.datetime, ttl: float) -> dict[str, Any]:
    return {"key": key_id, "set": signer_set(node_ids), "epoch": epoch, "fresh": now - dt.timedelta(seconds=ttl)}


def claim(
    conn: RawConnection, key_id: str, epoch: int, node_ids: Sequence[str], now: dt.datetime, ttl: float
) -> dict[str, str] | None:
    """One unused pre-signature of these signers (in party-index order) at ``epoch``, made by
    their current processes within ``ttl`` seconds, taken for good, with a fresh seed; None if
    there is none. Candidates made by a process since restarted are deleted on the way. In the
    caller's write transaction."""
    current = generations(conn, node_ids)
    where = _where(key_id, epoch, node_ids, now, ttl)
    chosen = None
    # One row at a time (SKIP LOCKED): a concurrent claim for the same signers takes the next
    # one instead of finding every candidate locked (review finding).
    for _ in range(_CANDIDATES):
        row = conn.first(_PICK, where)
        if row is None:
            break
        conn.execute(_DROP, {"key": key_id, "ids": [bytes(row.id)]})
        if row.generations == current:
            chosen = row
            break
    if chosen is None:
        return None
    return {"id": bytes(chosen.id).hex(), "R": bytes(chosen.big_r).hex(), "seed": secrets.token_bytes(32).hex()}


def stocked_sets(conn: RawConnection, key_id: str, epoch: int, now: dt.datetime, ttl: float) -> set[tuple[str, ...]]:
    """The signer sets (node ids in party-index order) with fresh pre-signatures of the key."""
    fresh = now - dt.timedelta(seconds=ttl)
    return {tuple(r.signer_set.split(",")) for r in conn.execute(_SETS, {"key": key_id, "epoch": epoch, "fresh": fresh})}


def stock(conn: RawConnection, key_id: str, epoch: int, node_ids: Sequence[str], now: dt.datetime, ttl: float) -> int:
    """How many fresh pre-signatures these signers have at ``epoch`` (some may be of restarted
    processes: a claim deletes those)."""
    return int(conn.scalar(_STOCK, _where(key_id, epoch, node_ids, now, ttl)) or 0)


def result_problem(result: Mapping[str, Any], epoch: int | None) -> tuple[str, str] | None:
    """None if ``result`` is a ``presign`` task's report — ``{"presignature": 32 bytes hex,
    "R": 33 bytes hex (compressed point), "epoch": the job's}`` — otherwise (field, problem)."""
    if set(result) != {"presignature", "R", "epoch"}:
        return "result", 'must be {"presignature", "R", "epoch"}'
    if canonical_hex(result["presignature"], 32) is None:
        return "result.presignature", "must be 32 bytes of lower-case hex"
    if compressed_point_hex(result["R"]) is None:
        return "result.R", "must be a 33-byte compressed point, lower-case hex"
    if type(result["epoch"]) is not int or result["epoch"] != epoch:
        return "result.epoch", f"must be the job's epoch, {epoch}"
    return None
