"""Database tables (SQLAlchemy 2 ORM). The schema itself is made by the Alembic migrations in
``migrations/versions``; a test checks that they agree.

Nothing secret is stored: node cards and evidence are public, relayed blobs are ciphertexts the
coordinator cannot open, results are public keys and signatures, and API tokens are stored as
SHA-256 hashes only.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "ApiToken",
    "AuditEntry",
    "Base",
    "Commitment",
    "Job",
    "Key",
    "MailboxMessage",
    "Node",
    "NodeChallenge",
    "NodeNonce",
    "Task",
    "UTCDateTime",
]


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone: naive = UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON(), bytes: LargeBinary()}


class Node(Base):
    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    identity_public_key: Mapped[bytes]
    kem_id: Mapped[int] = mapped_column(Integer)
    peer_card: Mapped[bytes]
    platform: Mapped[str] = mapped_column(String(16))
    evidence: Mapped[bytes]
    collateral: Mapped[bytes | None]
    evidence_nonce: Mapped[bytes | None]
    #: The verifiers' challenges the evidence answers (``evidence_nonce`` is their
    #: ``challenge_nonce``), as ``[{"from": node id, "nonce": hex}, …]``; None when the node
    #: registered without any.
    evidence_challenges: Mapped[list[Any] | None]
    attestation: Mapped[dict[str, Any]]
    #: Incremented whenever the node registers a new identity key (a restarted process).
    generation: Mapped[int] = mapped_column(Integer, default=1)
    #: The enrollment token (id) the node first registered with; only it (or an admin token)
    #: may register this node id again (API.md §1.2). None: registered before migration 0004.
    enrolled_by: Mapped[str | None] = mapped_column(String(32))
    registered_at: Mapped[dt.datetime]
    last_seen: Mapped[dt.datetime]


class NodeNonce(Base):
    """Nonces of signed node requests, kept until their timestamp window has passed."""

    __tablename__ = "node_nonces"

    node_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[bytes] = mapped_column(LargeBinary(64), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class NodeChallenge(Base):
    """A verifier's newest challenge to a node (``channel.challenge``): one per (node,
    challenger), replaced by the next. Public: the node attests over all of its challenges."""

    __tablename__ = "node_challenges"

    node_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    challenger: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[dt.datetime]


class Presignature(Base):
    """A DKLs23 pre-signature the signers of one key made together (API.md §1.15): its id and
    nonce point ``R`` (public; the secrets stay in the nodes' memory), handed to at most one
    signing (deleted when claimed). ``generations``: each signer's process when it was made —
    a restarted node holds none of its old ones."""

    __tablename__ = "presignatures"

    key_id: Mapped[str] = mapped_column(String(32), ForeignKey("keys.id"), primary_key=True)
    id: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    #: The signers' node ids in party-index order, comma-joined (the claim's equality test).
    signer_set: Mapped[str] = mapped_column(Text)
    epoch: Mapped[int] = mapped_column(Integer)
    generations: Mapped[dict[str, int]] = mapped_column(JSON)
    big_r: Mapped[bytes] = mapped_column(LargeBinary(33))
    created_at: Mapped[dt.datetime]

    __table_args__ = (
        Index("ix_presignatures_stock", "key_id", "signer_set", "epoch", "created_at"),
        Index("ix_presignatures_created_at", "created_at"),  # the sweep
    )


class Commitment(Base):
    """A signer's FROST nonce commitment made ahead (RFC 9591 §5.1; API.md §1.13): public
    ``(D, E)`` points, handed to at most one signing (deleted when claimed). ``generation`` is the
    node's when it published: a restarted node (a new generation) holds none of its old nonces."""

    __tablename__ = "commitments"

    node_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[bytes] = mapped_column(LargeBinary(16), primary_key=True)
    scheme: Mapped[str] = mapped_column(String(16))
    generation: Mapped[int] = mapped_column(Integer)
    hiding: Mapped[bytes] = mapped_column(LargeBinary(33))
    binding: Mapped[bytes] = mapped_column(LargeBinary(33))
    #: The node's identity-key signature of the commitment: co-signers check it, so a
    #: commitment the node did not make (one the coordinator made up) is never signed over.
    signature: Mapped[bytes] = mapped_column(LargeBinary(64))
    created_at: Mapped[dt.datetime]

    __table_args__ = (
        Index("ix_commitments_stock", "node_id", "scheme", "generation", "created_at"),
        Index("ix_commitments_created_at", "created_at"),  # the sweep
    )


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: SHA-256 (hex) of the token; tokens are 32 random bytes, so a plain hash suffices.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[Any]]
    label: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None]


class Key(Base):
    __tablename__ = "keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    scheme: Mapped[str] = mapped_column(String(16))
    threshold: Mapped[int] = mapped_column(Integer)
    #: Node ids in party-index order: node_ids[i] holds share i + 1.
    node_ids: Mapped[list[Any]]
    public_key: Mapped[str | None] = mapped_column(String(256))
    #: The public package the DKG reported (public key, verifying shares, …), or None.
    public_package: Mapped[dict[str, Any] | None]
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    #: pending (DKG not done) | active | failed (DKG failed)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]


class Job(Base):
    """A client request (``request_id`` in the API) and its outcome."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_key_status", "key_id", "status"),
        # One job per client idempotency key and token (NULLs never collide).
        Index("uq_jobs_idempotency", "requested_by", "idempotency_key", unique=True),
        Index("ix_jobs_bundle_id", "bundle_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: dkg | sign | refresh | repair, or bundle: several queued FROST signatures of one key run
    #: as one job (API.md §1.6, "Bundles"); a bundle is no client request.
    kind: Mapped[str] = mapped_column(String(16))
    key_id: Mapped[str] = mapped_column(String(32), ForeignKey("keys.id"))
    params: Mapped[dict[str, Any]]
    #: queued | running | done | failed
    status: Mapped[str] = mapped_column(String(16))
    result: Mapped[dict[str, Any] | None]
    #: {reason, culprits, party, detail} when failed
    error: Mapped[dict[str, Any] | None]
    #: [{node_id, index}] of the nodes that take part, fixed at submission.
    participants: Mapped[list[Any]]
    #: 32 random bytes (hex) chosen when the job is dispatched.
    instance: Mapped[str | None] = mapped_column(String(64))
    #: Key epoch the job was dispatched at.
    epoch: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[dt.datetime | None]
    #: Next relay sequence number (per job, assigned under the job's row lock).
    next_msg_seq: Mapped[int] = mapped_column(BigInteger, default=1)
    mailbox_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    requested_by: Mapped[str | None] = mapped_column(String(32))
    #: The client's ``Idempotency-Key`` (API.md §2), and SHA-256 (hex) of what it asked with
    #: it: the same key again returns this job, with another request it is refused.
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    idempotency_fp: Mapped[str | None] = mapped_column(String(64))
    #: A sign request run inside a bundle, or rerun in rounds: that job's id (it has the tasks
    #: and the mailbox; this one ends when it does). None otherwise.
    bundle_id: Mapped[str | None] = mapped_column(String(32))
    #: A rerun: the sign request whose one-step signing could not run, run again here in rounds
    #: (API.md §1.13, §1.15); that request's ``bundle_id`` names this job, and it ends with it.
    carries: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]


class Task(Base):
    """One node's part in one job."""

    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("job_id", "node_id"), Index("ix_tasks_node_status", "node_id", "status"))

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id"), index=True)
    node_id: Mapped[str] = mapped_column(String(64))
    party_index: Mapped[int] = mapped_column(Integer)
    #: queued (waiting for its node) | running (handed out) | done | failed | cancelled
    status: Mapped[str] = mapped_column(String(16))
    result: Mapped[dict[str, Any] | None]
    error: Mapped[dict[str, Any] | None]
    #: Replica that handed the task out, and the job deadline it carries.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime]
    claimed_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]


class MailboxMessage(Base):
    """One relayed ciphertext. ``to_node`` is a node id or ``*`` (broadcast)."""

    __tablename__ = "mailbox"
    __table_args__ = (
        UniqueConstraint("job_id", "from_node", "to_node", "seq"),
        UniqueConstraint("job_id", "job_seq"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id"))
    #: Position in the job's mailbox (1, 2, …): readers page with ``after``.
    job_seq: Mapped[int] = mapped_column(BigInteger)
    from_node: Mapped[str] = mapped_column(String(64))
    to_node: Mapped[str] = mapped_column(String(64))
    #: The sender's own sequence number (opaque to the coordinator, unique per sender/recipient).
    seq: Mapped[int] = mapped_column(BigInteger)
    blob: Mapped[bytes]
    created_at: Mapped[dt.datetime]


class AuditEntry(Base):
    """A node's signed audit-log entry, mirrored as received."""

    __tablename__ = "audit"
    __table_args__ = (UniqueConstraint("node_id", "seq"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    entry: Mapped[bytes]
    entry_hash: Mapped[str] = mapped_column(String(128))
    signature: Mapped[bytes]
    #: The identity key the node had when it mirrored the entry (keys change on restart).
    identity_public_key: Mapped[bytes]
    received_at: Mapped[dt.datetime]
