"""Coordinator settings: one immutable dataclass, every limit in one place."""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path

__all__ = ["MAX_JOB_TIMEOUT", "Settings", "check_job_timeout"]

#: Longest ``job_timeout``: a node refuses a task whose deadline lies more than an hour ahead of
#: its clock (node/sessions.py), and this leaves ten minutes for the clocks to differ.
MAX_JOB_TIMEOUT = 3000.0


def check_job_timeout(seconds: float) -> None:
    """ValueError unless ``seconds`` is a job timeout nodes take (above 0, at most
    :data:`MAX_JOB_TIMEOUT`; a NaN fails too)."""
    if not 0 < seconds <= MAX_JOB_TIMEOUT:
        raise ValueError(f"job_timeout must be above 0 and at most {MAX_JOB_TIMEOUT:g} seconds")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a coordinator replica is configured with.

    Storage: ``db_url`` (an SQLAlchemy URL; ``postgresql://…`` uses psycopg 3) or, when it is
    None, the SQLite file ``sqlite_path``.
    """

    #: SQLAlchemy URL (``postgresql://user@host:port/db``, ``sqlite:///path``); None = SQLite file.
    db_url: str | None = None
    #: The SQLite database file used when ``db_url`` is None.
    sqlite_path: Path = Path("shardguard-coordinator.sqlite3")
    #: An admin token accepted without being stored (bootstrap); None to disable.
    bootstrap_token: str | None = None
    #: Name of this replica (lease owner); random by default.
    replica_id: str = dataclasses.field(default_factory=lambda: "replica-" + secrets.token_hex(4))

    #: Largest request body, bytes (413 beyond).
    max_body_bytes: int = 4 * 1024 * 1024
    #: Answer plain ``POST /v1/keys/{id}/sign`` requests without FastAPI's per-request
    #: machinery (``fastpath.py``; same answers). False: every request through FastAPI.
    sign_fast_path: bool = True
    #: Largest relayed ciphertext (one envelope), bytes after base64 decoding.
    max_message_bytes: int = 320 * 1024
    #: Most messages in one POST /v1/jobs/{job}/messages.
    max_messages_per_post: int = 256
    #: Total ciphertext bytes one job's mailbox may hold.
    max_job_mailbox_bytes: int = 64 * 1024 * 1024
    #: Largest FROST message to sign, bytes.
    max_sign_message_bytes: int = 64 * 1024
    #: Largest audit entry, bytes.
    max_audit_entry_bytes: int = 64 * 1024
    #: Largest public result JSON a node may report (bytes, as canonical JSON).
    max_result_bytes: int = 256 * 1024
    #: Most messages returned by one inbox read.
    inbox_batch: int = 256
    #: Accept the event stream's binary attachments when a node offers them (API.md §1.11);
    #: False: every stream speaks JSON, blobs in base64.
    stream_attachments: bool = True

    #: FROST signatures of one key by one signer set started within the last
    #: ``sign_inflight_seconds`` and still running, at most; requests beyond wait in the queue and
    #: start together, in bundles (API.md §1.6, "Bundles"). 0: no limit, no bundles.
    sign_inflight: int = 1
    sign_inflight_seconds: float = 1.0
    #: Most sign requests in one bundle, and most message bytes (hex-decoded) in one.
    bundle_max: int = 32
    bundle_max_bytes: int = 256 * 1024

    #: Sign FROST requests in one step when every signer has published nonce commitments
    #: ahead (API.md §1.13): the coordinator picks one of each signer's, and aggregates the
    #: signers' shares itself. False (or a signer without commitments): the two-round protocol.
    sign_precommitted: bool = True
    #: Seconds a published commitment may be handed to a signing; older ones are swept. Each
    #: answer to a node's post tells it to keep its pairs this plus ``job_timeout`` plus 60 s.
    commitment_ttl: float = 300.0
    #: Most unused commitments kept per node and scheme (a node publishing more is refused).
    max_commitments: int = 1024

    #: ECDSA pre-signatures kept in stock per key and signer set (API.md §1.15): an ECDSA
    #: request for the key itself (no path) whose signers have one signs in one step, and each
    #: use (or a three-round signing that found none) starts ``presign`` jobs until the stock is
    #: back. 0 turns pre-signing off: every ECDSA signing runs the three rounds.
    presign_stock: int = 8
    #: Most ``presign`` jobs of one key and signer set running at once.
    presign_inflight: int = 2
    #: Most signer sets of one key with pre-signatures in stock (or being made): a signing by
    #: another set runs three rounds and makes none (a node keeps at most 256 per key).
    presign_sets: int = 4
    #: Seconds a pre-signature may be handed to a signing; older ones are swept (the nodes keep
    #: theirs about ten minutes longer, node/presignatures.py).
    presign_ttl: float = 3600.0

    #: Seconds a dispatched job may run before it fails with reason ``timeout`` (at most
    #: :data:`MAX_JOB_TIMEOUT`).
    job_timeout: float = 120.0
    #: Seconds a job may wait in the queue (behind another job of its key) before it fails.
    queue_timeout: float = 600.0
    #: Seconds a verifier's challenge to a node is kept (API.md §1.12); older ones are swept.
    #: Verifiers renew theirs from half of their policy's ``max_age_seconds`` (600 s default).
    challenge_retention: float = 3600.0
    #: Longest long-poll a node may ask for (``wait``), seconds.
    max_wait: float = 30.0
    #: How often a waiting long-poll re-reads the database anyway (wake-ups come at once from this
    #: replica and, on PostgreSQL, from the others by LISTEN/NOTIFY; this is the safety net).
    poll_interval: float = 2.0
    #: How often the background sweeper runs (lease expiry, dispatch, clean-up); 0 disables it.
    sweep_interval: float = 1.0
    #: Accepted clock skew of signed node requests, seconds.
    max_clock_skew: int = 60
    #: A node seen within this many seconds counts as alive (default signer choice, listings).
    node_alive_seconds: float = 30.0
    #: A node's witness jobs (API.md §1.14) are made at most this often (s); asked sooner, it
    #: is answered the ones it has.
    witness_interval: float = 1.0
    #: ... and one still running after this long when the node asks again is replaced (a holder
    #: in it went quiet; the new one has the holders seen now).
    witness_restart: float = 5.0
    #: Seconds a finished job's mailbox is kept before it is deleted.
    mailbox_retention: float = 600.0

    #: Whether GET /metrics needs no token (else: a token with the ``read`` scope).
    metrics_public: bool = True

    def __post_init__(self) -> None:
        check_job_timeout(self.job_timeout)

    def database_url(self) -> str:
        """The effective SQLAlchemy URL (psycopg 3 driver for PostgreSQL)."""
        url = self.db_url or f"sqlite:///{self.sqlite_path}"
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url
