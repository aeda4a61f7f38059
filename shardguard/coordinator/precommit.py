"""FROST nonce commitments the signers made ahead, and the one-step signings that use them
(API.md §1.13; RFC 9591 §5: the Coordinator's part).

A node publishes batches of public commitments ``(id, D, E)`` for a scheme; they are kept per
node process (``nodes.generation``: a restarted node has none of its old nonces). Starting a
FROST signing (a request alone, or a bundle of k), the coordinator takes k unused commitments of
every signer — deleting them in the same transaction, so no two signings ever name one (and two
replicas on PostgreSQL skip each other's locked rows) — and puts the lists in the job's
parameters. Each signer answers with its share in one step; the coordinator sums them
(``signatures.assemble_frost``) and verifies the signature before the request is done.

Nothing here is secret: the points are public by design (RFC 9591 §5.1 broadcasts them), and
so are the shares (§5.2 sends them to the Coordinator). Unforgeability does not rest on the
coordinator; what it could still do — hand signers different lists, or drop commitments — makes a
signing fail or a nonce go unused (the node forgets it later), never reveals a key.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select

from shardguard.coordinator.models import Commitment, Node
from shardguard.coordinator.rawsql import RawConnection

__all__ = ["ID_BYTES", "PRECOMMITTED", "claim", "precommitted"]

#: A commitment's id: 16 random bytes chosen by the node.
ID_BYTES = 16
#: The job parameter that holds the commitment lists: ``[[{"index", "id", "hiding", "binding",
#: "signature"}, …one per signer], …one per message]``.
PRECOMMITTED = "commitments"

_GENERATIONS = select(Node.id, Node.generation).where(Node.id.in_(bindparam("ids", expanding=True)))
_PICK = (
    select(Commitment.id, Commitment.hiding, Commitment.binding, Commitment.signature)
    .where(
        Commitment.node_id == bindparam("node"),
        Commitment.scheme == bindparam("scheme"),
        Commitment.generation == bindparam("gen"),
        Commitment.created_at >= bindparam("fresh"),
    )
    .order_by(Commitment.created_at)
    .limit(bindparam("k"))
    .with_for_update(skip_locked=True)
)
_DROP = delete(Commitment).where(Commitment.node_id == bindparam("node"), Commitment.id.in_(bindparam("ids", expanding=True)))
STOCK = (
    select(func.count())
    .select_from(Commitment)
    .where(
        Commitment.node_id == bindparam("node"),
        Commitment.scheme == bindparam("scheme"),
        Commitment.generation == bindparam("gen"),
        Commitment.created_at >= bindparam("fresh"),
    )
)
INSERT = insert(Commitment)


def precommitted(params: Mapping[str, Any] | None) -> bool:
    """Whether a sign or bundle job runs with commitments made ahead."""
    return bool(params) and PRECOMMITTED in params  # type: ignore[operator]


def claim(
    conn: RawConnection, scheme: str, participants: Sequence[Mapping[str, Any]], count: int, now: dt.datetime, ttl: float
) -> list[list[dict[str, Any]]] | None:
    """``count`` unused commitments of every participant (its current process's, published
    within ``ttl`` seconds), taken for good; None (and nothing taken) if one has too few. In
    the caller's write transaction."""
    ids = [str(p["node_id"]) for p in participants]
    generation = {row.id: row.generation for row in conn.execute(_GENERATIONS, {"ids": ids})}
    fresh = now - dt.timedelta(seconds=ttl)
    picked: list[list[Any]] = []
    for node in ids:
        if node not in generation:
            return None
        got = conn.execute(_PICK, {"node": node, "scheme": scheme, "gen": generation[node], "fresh": fresh, "k": count})
        if len(got) < count:
            return None
        picked.append(list(got))
    for node, taken in zip(ids, picked, strict=True):
        conn.execute(_DROP, {"node": node, "ids": [bytes(r.id) for r in taken]})
    return [
        [
            {"index": int(p["index"]), "id": bytes(rows[k].id).hex(), "hiding": bytes(rows[k].hiding).hex(),
             "binding": bytes(rows[k].binding).hex(), "signature": bytes(rows[k].signature).hex()}
            for p, rows in zip(participants, picked, strict=True)
        ]
        for k in range(count)
    ]  # fmt: skip
