"""Queue, dispatch, relay and job bookkeeping on the database (synchronous; the web layer runs it
in worker threads).

Life of a job (``request_id`` in the API):

1. **queued** — a client submitted it. Its participants are fixed now (all key nodes for dkg
   and refresh, the signers for sign, helpers + lost node for repair).
2. **running** — :meth:`Coordinator.dispatch` started it: it picked a random 32-byte
   ``instance``, set a deadline (``lease_until`` = now + ``job_timeout``) and made one task per
   participant. Jobs of one key run in submission order where it matters: dkg, refresh and
   repair run alone; sign jobs run side by side but never beside or before an earlier
   refresh/repair of their key.
3. Each node claims its task (:meth:`Coordinator.claim_task`, ``FOR UPDATE SKIP LOCKED``: a
   task is handed out at most once, whichever replica the node polls), runs the protocol over
   the relay, and reports a public result or a typed error.
4. **done** when every participant reported ``done`` with the same result; **failed** as soon
   as one reports ``failed``, results disagree, the node re-registers with a new identity key
   (its process restarted and lost the run), or the deadline passes (reason ``timeout``, the
   culprits being the nodes that did not finish). Nothing is retried silently.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy import and_, bindparam, case, delete, exists, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, aliased

from shardguard.channel.challenge import (
    CHALLENGE_LEN,
    MAX_CHALLENGES,
    Challenge,
    ChallengeError,
    challenge_nonce,
    challenges_from_wire,
    challenges_to_wire,
)
from shardguard.channel.identity import CardError, PeerCard
from shardguard.coordinator import attached, precommit, wire
from shardguard.coordinator import presigned as presigned_mod
from shardguard.coordinator.aftercommit import after_commit
from shardguard.coordinator.attest import summarize
from shardguard.coordinator.db import Database
from shardguard.coordinator.errors import ApiError
from shardguard.coordinator.metrics import Metrics
from shardguard.coordinator.models import (
    ApiToken,
    AuditEntry,
    Commitment,
    Job,
    Key,
    MailboxMessage,
    Node,
    NodeChallenge,
    NodeNonce,
    Presignature,
    Task,
)
from shardguard.coordinator.precommit import PRECOMMITTED, precommitted
from shardguard.coordinator.presigned import PRESIGNATURE, presigned
from shardguard.coordinator.rawsql import RawConnection
from shardguard.coordinator.settings import Settings
from shardguard.coordinator.signatures import (
    assemble_frost,
    assemble_presigned,
    frost_share_culprits,
    presigned_share_problem,
    share_shape_problem,
    signature_problem,
)
from shardguard.crypto.suites import suite_by_scheme

__all__ = [
    "EXCLUSIVE_KINDS",
    "JOB_KINDS",
    "SCHEMES",
    "SCOPES",
    "Coordinator",
    "StaleIdentity",
    "Submitted",
    "TokenInfo",
    "utc_now",
]

log = logging.getLogger("shardguard.coordinator")

SCHEMES = ("ecdsa", "ed25519", "secp256k1", "bip340")
FROST_SCHEMES = ("ed25519", "secp256k1", "bip340")
SCOPES = ("keys:write", "sign:write", "read", "nodes:register", "admin")
JOB_KINDS = ("dkg", "sign", "presign", "refresh", "repair", "witness")
#: Kinds that change the shares: they run alone on their key.
EXCLUSIVE_KINDS = ("dkg", "refresh", "repair")
#: Most queued jobs of one key that one dispatch() looks at (the rest: at the next one).
_DISPATCH_PER_KEY = 64
#: Most requests in one bundle (the nodes' FrostBatchSigner takes 64), and most requests ×
#: signers (its round-2 payload: 64 items × 22 signers, 6 × 255 fit 64 KiB).
_BUNDLE_MAX = 64
_BUNDLE_SIGNER_ITEMS = 1600
#: Upper bounds of one bundle item's round-1 + round-2 bytes for one recipient: a fixed part
#: (two points, a scalar, CBOR and the batch framing) and a part per signer (its id and commitment digest, 35 bytes).
_BUNDLE_ITEM_BYTES = 256
_BUNDLE_ITEM_BYTES_PER_SIGNER = 40
BROADCAST = "*"
#: A node's last_seen is written at most this often (every signed request refreshes it).
_LAST_SEEN_EVERY = 1.0
_HEX_RE = re.compile(r"(?:[0-9a-f]{2})+")
_PATH_RE = re.compile(r"m(/(0|[1-9][0-9]{0,9}))*")

_log = logging.getLogger(__name__)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode("ascii") if data is not None else None


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _fingerprint(kind: str, **fields: Any) -> str:
    """What a client asked for under an idempotency key (SHA-256 hex of canonical JSON)."""
    return hashlib.sha256(canonical_json({"kind": kind, **fields}).encode()).hexdigest()


def _seen_in(conn: Any, requested_by: str, key: str, fp: str | None) -> Any:
    """The job ``requested_by`` made under idempotency ``key`` (None if none), read on
    ``conn`` (an ORM session or a raw connection); it must be for the same request."""
    seen = conn.execute(_JOB_BY_IDEMPOTENCY, {"by": requested_by, "key": key}).first()
    if seen is not None and seen.idempotency_fp != fp:
        raise ApiError(
            422,
            "idempotency_key_reused",
            f"Idempotency-Key {key!r} was used for another request ({seen.id})",
            field="Idempotency-Key",
        )
    return seen


def _remember(kept: collections.OrderedDict[str, Any], node_id: str, value: Any, most: int = 10_000) -> None:
    """Keep ``value`` for ``node_id``, newest last; one per node, bounded all the same."""
    kept[node_id] = value
    kept.move_to_end(node_id)
    while len(kept) > most:
        kept.popitem(last=False)


def _hold_identity(conn: Session | RawConnection, node_id: str, identity: bytes) -> None:
    """In a node's write transaction, before it claims or posts anything: refuse
    (:class:`StaleIdentity`) unless ``identity`` is still the node's registered key, and keep it
    so until commit. The node row is held FOR KEY SHARE, which register_node's FOR UPDATE waits
    for (and which, on PostgreSQL, waits for a register in progress and then reads its new key);
    SQLite has one writer at a time anyway. Lock order: node row, then job rows, then tasks."""
    pk = conn.scalar(_NODE_KEY_HELD, {"node": node_id})
    if pk is None or bytes(pk) != identity:
        raise StaleIdentity(node_id)


class Submitted(dict[str, Any]):
    """What a submission answers when it created its request (not an idempotent replay of an
    earlier one): the same JSON, and a way for the API to know the request cannot have ended."""


def _once(submit: Callable[[], dict[str, Any]], idempotency_key: str | None) -> dict[str, Any]:
    """``submit()``; if a request with the same idempotency key committed between its look-up
    and its insert (the unique index refused the second), once more: it then finds that one."""
    try:
        return submit()
    except IntegrityError:
        if idempotency_key is None:
            raise
        return submit()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_path(path: str) -> None:
    """A non-hardened BIP32 path ``m/i/j/…`` (each index < 2^31, at most 255 levels)."""
    if not _PATH_RE.fullmatch(path) or path.count("/") > 255:
        raise ApiError(422, "validation_error", "must be m or m/<index>/… with decimal indices", field="path")
    if any(int(p) >= 2**31 for p in path.split("/")[1:]):
        raise ApiError(422, "validation_error", "hardened indices (>= 2^31) cannot be derived", field="path")


@dataclasses.dataclass(frozen=True)
class TokenInfo:
    token_id: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


@dataclasses.dataclass(frozen=True)
class NodeIdentity:
    node_id: str
    identity_public_key: bytes


class StaleIdentity(ApiError):
    """A node's write made with an identity key it no longer has: the node registered a new
    one (a restarted process) since the request or stream was authenticated. Raised inside the
    write's own transaction, so nothing of it is kept (API.md §1.1, §1.11)."""

    def __init__(self, node_id: str) -> None:
        super().__init__(
            401, "stale_identity", f"node {node_id} has registered a new identity key since this request or stream was signed"
        )


class _GeneralPath(Exception):
    """Leave a fast path (its transaction rolls back) for the general one."""


@dataclasses.dataclass(frozen=True)
class _Ended:
    """What :meth:`Coordinator._record_end` reads of a job."""

    kind: str
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


class TaskTaker(Protocol):
    """A node's event stream open on this replica that takes tasks claimed for it in the very
    transaction that queues them (:meth:`Coordinator._hand_over`): stream.py's connection
    state. Only from the thread its event loop runs on (``thread``), where nothing else
    touches that state meanwhile."""

    @property
    def identity(self) -> bytes: ...
    @property
    def admitted(self) -> Mapping[str, str]: ...
    @property
    def claim(self) -> int: ...
    @property
    def thread(self) -> int: ...
    def take(self, tasks: list[dict[str, Any]]) -> None: ...


#: What :meth:`Coordinator._append_messages` did: participants, accepted, duplicates, bytes,
#: and the recipients (``to``) of the accepted messages.
_Appended = tuple[list[str], int, int, int, list[str]]


class Coordinator:
    """The coordinator's logic over one :class:`Database`. Thread-safe (one session per call)."""

    def __init__(self, settings: Settings, db: Database, metrics: Metrics, notify: Callable[[str, int | None], None]) -> None:
        self.settings = settings
        self.db = db
        self.metrics = metrics
        self.notify = notify
        self._bootstrap_hash = token_hash(settings.bootstrap_token) if settings.bootstrap_token else None
        # node id -> when this replica last wrote its last_seen
        self._last_seen_written: dict[str, float] = {}
        # node id -> its identity key as this replica last read it (checked again on every
        # nonce insert, so a stale entry can only refuse, never accept)
        self._node_keys: dict[str, bytes] = {}
        # request id -> its record as it ended here (take_answer): what a client waiting on this
        # replica is answered, without reading back what was just written.
        self._answers: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._answers_lock = threading.Lock()
        # When each node last asked for witness jobs (request_witness), on this replica.
        self._witness_asked: collections.OrderedDict[str, dt.datetime] = collections.OrderedDict()
        self._witness_lock = threading.Lock()
        # Node processes (node id → identity key) that reported their own state old
        # (STALE_STATE naming themselves): chosen last by default until they restart.
        self._proved_stale: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        #: node id -> its event stream on this replica, if one is open (stream.py registers it).
        self.takers: dict[str, TaskTaker] = {}

    # -- API tokens ---------------------------------------------------------------------------
    def create_token(self, scopes: Sequence[str], label: str = "") -> tuple[dict[str, Any], str]:
        token = "sgt_" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii").rstrip("=")
        row = ApiToken(
            id=new_id("tok"),
            token_hash=token_hash(token),
            scopes=sorted(set(scopes)),
            label=label,
            created_at=utc_now(),
            revoked_at=None,
        )
        with self.db.write() as s:
            s.add(row)
        return self._token_out(row), token

    @staticmethod
    def _token_out(row: ApiToken) -> dict[str, Any]:
        return {
            "token_id": row.id,
            "scopes": list(row.scopes),
            "label": row.label,
            "created_at": iso(row.created_at),
            "revoked_at": iso(row.revoked_at),
        }

    def authenticate_token(self, token: str) -> TokenInfo | None:
        h = token_hash(token)
        if self._bootstrap_hash is not None and hmac.compare_digest(h, self._bootstrap_hash):
            return TokenInfo("bootstrap", frozenset({"admin"}))
        # Read on every client request (no cache: a revocation takes effect at once, on every
        # replica); a prebuilt statement (rawsql).
        with self.db.raw.read() as conn:
            row = conn.first(_TOKEN_BY_HASH, {"hash": h})
        if row is None or row.revoked_at is not None:
            return None
        return TokenInfo(row.id, frozenset(row.scopes))

    def list_tokens(self) -> list[dict[str, Any]]:
        with self.db.read() as s:
            return [self._token_out(t) for t in s.scalars(select(ApiToken).order_by(ApiToken.created_at, ApiToken.id))]

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        with self.db.write() as s:
            row = s.get(ApiToken, token_id)
            if row is None:
                raise ApiError(404, "not_found", f"no token {token_id!r}", field="token_id")
            if row.revoked_at is None:
                row.revoked_at = utc_now()
            return self._token_out(row)

    # -- node authentication ------------------------------------------------------------------
    def _auth_fail(self, reason: str, message: str) -> ApiError:
        self.metrics.node_auth_failures.labels(reason).inc()
        return ApiError(401, reason, message)

    def authenticate_node(
        self,
        headers: dict[str, str | None],
        method: str,
        target: str,
        body: bytes,
        *,
        card: PeerCard | None = None,
    ) -> NodeIdentity:
        """Check a signed node request (``wire`` module). ``card``: registration, where the key
        to verify with is the one on the card in the body. Refusals are 401 with codes
        ``missing_signature``, ``malformed_signature``, ``stale_timestamp``, ``unknown_node``,
        ``bad_signature`` and ``replayed_nonce``."""
        node_id = headers.get(wire.HEADER_NODE)
        ts_s = headers.get(wire.HEADER_TIMESTAMP)
        nonce_s = headers.get(wire.HEADER_NONCE)
        sig_s = headers.get(wire.HEADER_SIGNATURE)
        if not node_id or not ts_s or not nonce_s or not sig_s:
            raise self._auth_fail("missing_signature", "signed node request headers are missing (see API.md)")
        ts = wire.parse_timestamp(ts_s)
        nonce = wire.parse_nonce(nonce_s)
        sig = wire.parse_signature(sig_s)
        if ts is None or nonce is None or sig is None or len(node_id) > 64:
            raise self._auth_fail("malformed_signature", "malformed node id, timestamp, nonce or signature header")
        now = utc_now()
        skew = self.settings.max_clock_skew
        if abs(now.timestamp() - ts) > skew:
            raise self._auth_fail("stale_timestamp", f"timestamp is more than {skew} s from the coordinator's clock")
        if card is not None and card.node_id != node_id:
            raise self._auth_fail("bad_signature", "the signing node is not the node on the card")
        seen = self._last_seen_written.get(node_id, 0.0)
        touch = card is None and time.monotonic() - seen > _LAST_SEEN_EVERY
        # The signature is checked before any write transaction (it needs no lock), against the
        # node's key as this replica last read it; the nonce is then recorded by one INSERT that
        # only inserts while that key is still the node's current one, so a request is accepted
        # only if it verifies with the key current when its nonce is recorded.
        pk = card.identity_public_key if card is not None else self._node_key(node_id, refresh=False)
        if not wire.verify_request(pk, method, target, body, ts, nonce, node_id, sig):
            if card is not None:
                raise self._auth_fail("bad_signature", "the request signature does not verify")
            # Maybe our copy of the node's key is stale (it re-registered): read it again.
            fresh = self._node_key(node_id, refresh=True)
            if fresh == pk or not wire.verify_request(fresh, method, target, body, ts, nonce, node_id, sig):
                raise self._auth_fail("bad_signature", "the request signature does not verify")
            pk = fresh
        expires = now + dt.timedelta(seconds=3 * skew)
        nonce_row = {"node": node_id, "nonce": nonce, "expires": expires, "pk": pk, "now": now}
        try:
            with self.db.raw.write() as conn:
                if card is not None:
                    conn.execute(_INSERT_NONCE, nonce_row)
                    recorded = True
                else:
                    # (RETURNING, not rowcount: psycopg reports -1 for INSERT … SELECT)
                    recorded = conn.execute(_INSERT_NONCE_IF_KEY, nonce_row).first() is not None
                    if recorded and touch:
                        conn.execute(_TOUCH_NODE, nonce_row)
        except IntegrityError:
            raise self._auth_fail("replayed_nonce", "this nonce was already used") from None
        if not recorded:
            # The node's key changed (or the node went) between our read and the insert.
            self._node_keys.pop(node_id, None)
            raise self._auth_fail("bad_signature", "the request signature does not verify with the node's current key")
        if touch:
            self._last_seen_written[node_id] = time.monotonic()
        return NodeIdentity(node_id, pk)

    def _node_key(self, node_id: str, *, refresh: bool) -> bytes:
        """The node's identity key as last read by this replica (``refresh``: read it now)."""
        pk = None if refresh else self._node_keys.get(node_id)
        if pk is None:
            pk = self._read_node_key(node_id)
            if pk is None:
                self._node_keys.pop(node_id, None)
                raise self._auth_fail("unknown_node", f"node {node_id!r} is not registered")
            self._node_keys[node_id] = pk
        return pk

    def _read_node_key(self, node_id: str) -> bytes | None:
        with self.db.raw.read() as conn:
            pk = conn.scalar(_NODE_KEY, {"node": node_id})
        return None if pk is None else bytes(pk)

    # -- nodes ----------------------------------------------------------------------------------
    def register_node(
        self,
        card: PeerCard,
        platform: str,
        evidence: bytes,
        collateral: bytes | None,
        evidence_nonce: bytes | None,
        challenges: Any = None,
        enroller: TokenInfo | None = None,
    ) -> dict[str, Any]:
        """Record a node's card and evidence. ``challenges`` (wire form): the verifiers'
        challenges the evidence answers; then ``evidence_nonce`` must be their
        ``challenge_nonce`` (checked here only to catch mistakes early: every verifier checks
        it again itself)."""
        answered = None
        if challenges is not None:
            try:
                parsed = challenges_from_wire(challenges)
            except ChallengeError as e:
                raise ApiError(422, "validation_error", e.detail, field=e.field) from None
            if evidence_nonce != challenge_nonce(parsed):
                raise ApiError(
                    422, "validation_error", "is not the challenge_nonce of the challenges given", field="evidence_nonce"
                )
            answered = challenges_to_wire(parsed)
        now = utc_now()
        summary = summarize(card, platform, evidence, collateral=collateral, evidence_nonce=evidence_nonce, now=now)
        restarted: list[str] = []
        rerun_nodes: set[str] = set()
        with self.db.write() as s:
            # The node row first, FOR UPDATE: the node's claims and reports hold it FOR KEY
            # SHARE while they check its key (_hold_identity), so none made with the old key
            # commits after this and none is missed by the look at its running tasks below.
            row = s.get(Node, card.node_id, with_for_update=True)
            taken = row is not None and row.enrolled_by not in (None, enroller.token_id if enroller else None)
            if enroller is not None and taken and "admin" not in enroller.scopes:
                # A node id belongs to the token that enrolled it: another enrolled node (its
                # token) must not take it over (review finding).
                raise ApiError(403, "forbidden", f"node {card.node_id} was enrolled with another token", field="node_id")
            if row is None:
                row = Node(id=card.node_id, generation=1, registered_at=now)
                s.add(row)
            elif row.identity_public_key != card.identity_public_key:
                # A new identity key: a new process, which lost whatever it was running — and
                # the nonces behind every commitment it published (API.md §1.13).
                row.generation += 1
                row.registered_at = now
                s.execute(delete(Commitment).where(Commitment.node_id == card.node_id))
                # So did every pre-signature it held (API.md §1.15): a presign job it took part
                # in is lost whatever its task's state, a pre-signed signing it has not answered.
                # Lock order everywhere: job row, then its tasks (post_result, sweep) — so the
                # jobs first, in id order, then the node's tasks in them.
                job_ids = sorted(
                    set(s.scalars(select(Task.job_id).where(Task.node_id == card.node_id, Task.status == "running")))
                    | set(
                        s.scalars(
                            select(Task.job_id)
                            .join(Job, Job.id == Task.job_id)
                            .where(Task.node_id == card.node_id, Task.status.in_(("queued", "done")),
                                   Job.status == "running", Job.kind.in_(("presign", "sign", "bundle")))
                        )
                    )
                )  # fmt: skip
                # A request carried by a bundle or rerun has no open task (its done task of a
                # first attempt may be found above): never locked here, so the lock order stays
                # carrier then request, as where they end (review finding: a deadlock).
                locked = (
                    select(Job).where(Job.id.in_(job_ids), Job.bundle_id.is_(None)).order_by(Job.id).with_for_update()
                )
                for job in s.scalars(locked).all() if job_ids else []:
                    if job.kind == "presign":
                        mine: tuple[str, ...] = ("running", "queued", "done")
                    elif _one_step(job.params):  # what it made ahead is gone, queued or not
                        mine = ("running", "queued")
                    else:
                        mine = ("running",)
                    handed = s.scalars(
                        select(Task.id)
                        .where(Task.job_id == job.id, Task.node_id == card.node_id, Task.status.in_(mine))
                        .with_for_update()
                    ).first()
                    if handed is None or job.status != "running":
                        continue
                    detail = f"node {card.node_id} re-registered with a new identity key while running its task"
                    if (rerun_key := self._reruns(s, job, "node_restarted")) is not None:
                        rerun_nodes.update(self._rerun(s, job, rerun_key, reason="node_restarted", detail=detail))
                        if job.status == "running":
                            continue  # a request: it goes on in its rerun
                    else:
                        self._fail_job(s, job, reason="node_restarted", culprits=[card.node_id], party=None, detail=detail)
                    restarted.append(job.id)
            row.identity_public_key = card.identity_public_key
            row.kem_id = int(card.kem_id)
            row.peer_card = card.encode()
            row.platform = platform
            row.evidence = evidence
            row.collateral = collateral
            row.evidence_nonce = evidence_nonce
            row.evidence_challenges = answered
            row.attestation = summary
            row.last_seen = now
            if enroller is not None and (row.enrolled_by is None or "admin" not in enroller.scopes):
                row.enrolled_by = enroller.token_id
            out = self._node_out(row, now, full=False)
        self._node_keys[card.node_id] = card.identity_public_key
        self.notify(f"evidence:{card.node_id}", None)
        for job_id in restarted:
            self._notify_job(job_id)
        for nid in sorted(rerun_nodes):
            self.notify(f"node:{nid}", 1)
        if restarted:
            self.dispatch()
        return out

    def _node_out(self, row: Any, now: dt.datetime, *, full: bool) -> dict[str, Any]:
        """A node as the API shows it (``row``: a Node, or a row of ``_NODE_LISTED``'s columns
        when not ``full``)."""
        out: dict[str, Any] = {
            "node_id": row.id,
            "identity_public_key": row.identity_public_key.hex(),
            "kem_id": row.kem_id,
            "platform": row.platform,
            "attestation": row.attestation,
            "generation": row.generation,
            "registered_at": iso(row.registered_at),
            "last_seen": iso(row.last_seen),
            "alive": (now - row.last_seen).total_seconds() <= self.settings.node_alive_seconds,
        }
        if full:
            out.update(_evidence_fields(row))
        return out

    def list_nodes(self, after: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Up to ``limit`` nodes by id, those after ``after`` (API.md §2, ``GET /v1/nodes``).
        Only the listed columns are read: a node's card, evidence and collateral (up to
        megabytes each, registered by anyone who can reach the coordinator) are not."""
        now = utc_now()
        q = _NODE_LISTED.order_by(Node.id).limit(limit)
        if after is not None:
            q = q.where(Node.id > after)
        with self.db.read() as s:
            return [self._node_out(n, now, full=False) for n in s.execute(q)]

    def get_node(self, node_id: str) -> dict[str, Any]:
        with self.db.read() as s:
            row = s.get(Node, node_id)
            if row is None:
                raise ApiError(404, "not_found", f"no node {node_id!r}", field="node_id")
            return self._node_out(row, utc_now(), full=True)

    # -- verifier challenges (channel.challenge) ----------------------------------------------
    def post_challenge(self, challenger: str, node_id: str, nonce: bytes) -> None:
        """Record ``challenger``'s newest challenge to ``node_id`` (it replaces that
        challenger's earlier one) and wake the node's wait for its challenges."""
        if len(nonce) != CHALLENGE_LEN:
            raise ApiError(422, "validation_error", f"must be {CHALLENGE_LEN} bytes, got {len(nonce)}", field="nonce")
        if challenger == node_id:
            raise ApiError(422, "validation_error", "a node does not challenge itself", field="node_id")
        now = utc_now()
        with self.db.write() as s:
            # The node's row is the lock that serializes its challenges across replicas: the
            # count below holds, and a challenger's concurrent first challenges do not collide.
            if s.get(Node, node_id, with_for_update=True) is None:
                raise ApiError(404, "not_found", f"no node {node_id!r}", field="node_id")
            # Only a node that has (had) a task in a job with this one: a verifier challenges
            # the peers of its own tasks. Others could fill the node's MAX_CHALLENGES slots and
            # lock its real verifiers out (review finding).
            if s.scalar(_SHARE_A_JOB, {"a": challenger, "b": node_id}) is None:
                raise ApiError(403, "forbidden", f"{challenger} has no job with {node_id}", field="node_id")
            row = s.get(NodeChallenge, (node_id, challenger), with_for_update=True, populate_existing=True)
            if row is None:
                count = s.scalar(select(func.count()).select_from(NodeChallenge).where(NodeChallenge.node_id == node_id))
                if (count or 0) >= MAX_CHALLENGES:
                    raise ApiError(409, "too_many_challenges", f"node {node_id} already has {MAX_CHALLENGES} challengers")
                s.add(NodeChallenge(node_id=node_id, challenger=challenger, nonce=nonce, created_at=now))
            else:
                row.nonce = nonce
                row.created_at = now
        self.notify(f"challenges:{node_id}", None)

    def challenges_for(self, node_id: str) -> list[dict[str, str]]:
        """The node's open challenges (wire form, by challenger), at most ``MAX_CHALLENGES``
        of the newest."""
        with self.db.read() as s:
            rows = s.execute(
                select(NodeChallenge.challenger, NodeChallenge.nonce)
                .where(NodeChallenge.node_id == node_id)
                .order_by(NodeChallenge.created_at.desc(), NodeChallenge.challenger)
                .limit(MAX_CHALLENGES)
            ).all()
        return challenges_to_wire(Challenge(c, bytes(n)) for c, n in rows)

    def evidence_answering(self, node_id: str, challenger: str, nonce: bytes) -> tuple[bool, dict[str, Any]]:
        """The node's card and evidence as a task hands them out, and whether that evidence
        answers ``challenger``'s challenge ``nonce`` (the verifier checks again itself)."""
        with self.db.read() as s:
            row = s.get(Node, node_id)
            if row is None:
                raise ApiError(404, "not_found", f"no node {node_id!r}", field="node_id")
            out = {"node_id": row.id, **_evidence_fields(row)}
        mine = {"from": challenger, "nonce": nonce.hex()}
        return mine in (out["evidence_challenges"] or []), out

    # -- keys and job submission ----------------------------------------------------------------
    def _check_nodes(self, s: Session, ids: Sequence[str], field: str) -> None:
        if len(set(ids)) != len(ids):
            dup = next(i for i, n in enumerate(ids) if n in ids[:i])
            raise ApiError(422, "validation_error", f"node {ids[dup]!r} is listed twice", field=f"{field}[{dup}]")
        known = set(s.scalars(select(Node.id).where(Node.id.in_(list(ids)))))
        for i, n in enumerate(ids):
            if n not in known:
                raise ApiError(422, "validation_error", f"node {n!r} is not registered", field=f"{field}[{i}]")

    def create_key(
        self,
        scheme: str,
        threshold: int,
        nodes: Sequence[str],
        allow_single: bool,
        requested_by: str,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """A new key: its DKG job. With ``idempotency_key``, the same request again (a retry)
        answers the first one's key and request instead of making another key."""
        fp = _fingerprint("dkg", scheme=scheme, threshold=threshold, nodes=list(nodes), allow_single=allow_single)
        return _once(lambda: self._create_key(scheme, threshold, nodes, allow_single, requested_by, idempotency_key, fp),
                     idempotency_key)  # fmt: skip

    def _create_key(
        self,
        scheme: str,
        threshold: int,
        nodes: Sequence[str],
        allow_single: bool,
        requested_by: str,
        idempotency_key: str | None,
        fp: str,
    ) -> dict[str, Any]:
        seen = self._seen(requested_by, idempotency_key, fp)
        if seen is not None:
            return {"key_id": seen.key_id, "request_id": seen.id}
        n = len(nodes)
        if threshold > n:
            raise ApiError(422, "validation_error", f"threshold {threshold} exceeds the {n} nodes", field="threshold")
        if threshold == 1 and not allow_single:
            raise ApiError(422, "validation_error", "t = 1 means any one node signs alone; set allow_single", field="threshold")
        if scheme == "ecdsa" and threshold < 2:
            raise ApiError(422, "validation_error", "DKLs23 ECDSA needs t >= 2", field="threshold")
        now = utc_now()
        key = Key(
            id=new_id("key"),
            scheme=scheme,
            threshold=threshold,
            node_ids=list(nodes),
            public_key=None,
            public_package=None,
            epoch=0,
            status="pending",
            created_at=now,
            updated_at=now,
        )
        participants = [{"node_id": nid, "index": i + 1} for i, nid in enumerate(nodes)]
        with self.db.write() as s:
            self._check_nodes(s, nodes, "nodes")
            s.add(key)
            s.flush()
            job = self._new_job(s, "dkg", key, {}, participants, requested_by, now, idempotency_key, fp)
            self._submit(s, job, key, now)
        return {"key_id": key.id, **self._started(job, "dkg")}

    def _new_job(
        self,
        s: Session,
        kind: str,
        key: Key,
        params: dict[str, Any],
        participants: list[dict[str, Any]],
        by: str,
        now: dt.datetime,
        idempotency_key: str | None = None,
        fp: str | None = None,
    ) -> Job:
        job = Job(
            id=new_id("req"),
            kind=kind,
            key_id=key.id,
            params=params,
            status="queued",
            result=None,
            error=None,
            participants=participants,
            attempts=0,
            next_msg_seq=1,
            mailbox_bytes=0,
            requested_by=by,
            idempotency_key=idempotency_key,
            idempotency_fp=fp if idempotency_key is not None else None,
            created_at=now,
            updated_at=now,
        )
        s.add(job)
        return job

    def _seen(self, requested_by: str, idempotency_key: str | None, fp: str) -> Any:
        """The job made earlier under ``idempotency_key`` by this token (None if none); the
        request must be the same (422 ``idempotency_key_reused`` otherwise)."""
        if idempotency_key is None:
            return None
        with self.db.read() as s:
            return _seen_in(s, requested_by, idempotency_key, fp)

    def _key_out(self, key: Key) -> dict[str, Any]:
        return {
            "key_id": key.id,
            "scheme": key.scheme,
            "threshold": key.threshold,
            "nodes": [{"node_id": nid, "index": i + 1} for i, nid in enumerate(key.node_ids)],
            "public_key": key.public_key,
            "public_package": key.public_package,
            "epoch": key.epoch,
            "status": key.status,
            "created_at": iso(key.created_at),
            "updated_at": iso(key.updated_at),
        }

    def list_keys(self) -> list[dict[str, Any]]:
        with self.db.read() as s:
            return [self._key_out(k) for k in s.scalars(select(Key).order_by(Key.created_at, Key.id))]

    def get_key(self, key_id: str) -> dict[str, Any]:
        with self.db.read() as s:
            key = s.get(Key, key_id)
            if key is None:
                raise ApiError(404, "not_found", f"no key {key_id!r}", field="key_id")
            return self._key_out(key)

    def _active_key(self, s: Session, key_id: str) -> Key:
        """The key a refresh or repair is submitted for, its row locked FOR UPDATE first thing in
        the submit's transaction: a job that must run alone (API.md §1.6, "Ordering per key")
        can only be started by one transaction of its key at a time, and that transaction then
        sees every job of the key submitted or started before it (on PostgreSQL each statement
        reads what is committed when it runs: the check in _blocked comes after the lock)."""
        key = s.get(Key, key_id, with_for_update=True)
        if key is None:
            raise ApiError(404, "not_found", f"no key {key_id!r}", field="key_id")
        if key.status != "active":
            raise ApiError(409, "key_not_active", f"key {key_id} is {key.status}, not active")
        return key

    def submit_sign(
        self,
        key_id: str,
        *,
        digest: bytes | None,
        message: bytes | None,
        path: str | None,
        signers: Sequence[str] | None,
        requested_by: str,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Queue a signature. With ``idempotency_key``, the same request again (a retry after a
        lost answer) answers the first one's request id instead of signing twice."""
        fp = None
        if idempotency_key is not None:
            fp = _fingerprint(
                "sign", key_id=key_id, digest_hex=digest.hex() if digest is not None else None,
                message_hex=message.hex() if message is not None else None, path=path,
                signers=list(signers) if signers is not None else None,
            )  # fmt: skip
        return _once(
            lambda: self._submit_sign(key_id, digest, message, path, signers, requested_by, idempotency_key, fp),
            idempotency_key,
        )

    def _submit_sign(
        self,
        key_id: str,
        digest: bytes | None,
        message: bytes | None,
        path: str | None,
        signers: Sequence[str] | None,
        requested_by: str,
        idempotency_key: str | None,
        fp: str | None,
    ) -> dict[str, Any]:
        now = utc_now()
        # Prebuilt statements on the raw connection (rawsql): one transaction per signature
        # request, the commonest write.
        with self.db.raw.write() as conn:
            seen = _seen_in(conn, requested_by, idempotency_key, fp) if idempotency_key is not None else None
            if seen is not None:
                return {"request_id": seen.id}
            key = conn.execute(_KEY_FOR_SIGN, {"key": key_id}).first()
            if key is None:
                raise ApiError(404, "not_found", f"no key {key_id!r}", field="key_id")
            if key.status != "active":
                raise ApiError(409, "key_not_active", f"key {key_id} is {key.status}, not active")
            params: dict[str, Any] = {}
            if key.scheme == "ecdsa":
                if message is not None:
                    raise ApiError(422, "validation_error", "ecdsa signs a 32-byte digest: give digest_hex", field="message_hex")
                if digest is None:
                    raise ApiError(422, "validation_error", "ecdsa needs digest_hex (32 bytes)", field="digest_hex")
                if len(digest) != 32:
                    raise ApiError(422, "validation_error", f"must be exactly 32 bytes, got {len(digest)}", field="digest_hex")
                params["digest_hex"] = digest.hex()
            else:
                if digest is not None:
                    raise ApiError(
                        422,
                        "validation_error",
                        f"{key.scheme} (FROST) signs the message itself: give message_hex",
                        field="digest_hex",
                    )
                if message is None:
                    raise ApiError(422, "validation_error", f"{key.scheme} needs message_hex", field="message_hex")
                if len(message) > self.settings.max_sign_message_bytes:
                    raise ApiError(
                        422,
                        "validation_error",
                        f"message longer than {self.settings.max_sign_message_bytes} bytes",
                        field="message_hex",
                    )
                params["message_hex"] = message.hex()
            if path is not None:
                if key.scheme != "ecdsa":
                    # FROST signing here always uses the key itself: a child key would need its
                    # tweak applied to the shares, which the nodes do not do.
                    raise ApiError(422, "validation_error", f"{key.scheme} keys sign without BIP32 derivation", field="path")
                check_path(path)
                params["path"] = path
            index = {nid: i + 1 for i, nid in enumerate(key.node_ids)}
            if signers is not None:
                for i, nid in enumerate(signers):
                    if nid not in index:
                        raise ApiError(422, "validation_error", f"node {nid!r} holds no share of {key_id}", field=f"signers[{i}]")
                    if nid in signers[:i]:
                        raise ApiError(422, "validation_error", f"node {nid!r} is listed twice", field=f"signers[{i}]")
                if len(signers) < key.threshold:
                    raise ApiError(
                        422, "validation_error", f"need at least t = {key.threshold} signers, got {len(signers)}", field="signers"
                    )
                chosen = sorted(signers, key=index.__getitem__)
            else:
                chosen = self._default_signers(conn, key, now)
            params["signers"] = chosen
            participants = [{"node_id": nid, "index": index[nid]} for nid in chosen]
            job_id = new_id("req")
            # A signature waits only for a key-changing job (refresh, repair) queued or running;
            # when it waits, dispatch() starts it later by the exact order rule (_blocked). The
            # key row is held FOR SHARE (_KEY_FOR_SIGN): a refresh or repair submitted or
            # dispatched at the same moment (FOR UPDATE) waits for this one and then sees it.
            run_now = conn.execute(_KEY_CHANGING, {"key": key_id}).first() is None
            if run_now and self._bundles(key.scheme):
                # Enough of this key's FROST signatures by these signers in flight, or some
                # already waiting: this one waits too, and _dispatch_signs starts the waiting
                # ones together, as one bundle, when one in flight ends (API.md §1.6, Bundles).
                signers_now = tuple(chosen)
                run_now = self._in_flight(conn, key_id, now)[signers_now] < self.settings.sign_inflight and not any(
                    tuple(r.params["signers"]) == signers_now for r in conn.execute(_QUEUED_SIGNS_SIGNERS, {"key": key_id})
                )
            job: dict[str, Any] = {
                "id": job_id, "kind": "sign", "key_id": key_id, "params": params, "status": "queued",
                "result": None, "error": None, "participants": participants, "attempts": 0, "next_msg_seq": 1,
                "mailbox_bytes": 0, "requested_by": requested_by, "created_at": now, "updated_at": now,
                "instance": None, "epoch": None, "lease_owner": None, "lease_until": None, "started_at": None,
            }  # fmt: skip
            if idempotency_key is not None:
                job |= {"idempotency_key": idempotency_key, "idempotency_fp": fp}
            if run_now:
                job |= {
                    "status": "running", "instance": secrets.token_bytes(32).hex(), "epoch": key.epoch, "attempts": 1,
                    "lease_owner": self.settings.replica_id,
                    "lease_until": now + dt.timedelta(seconds=self.settings.job_timeout), "started_at": now,
                }  # fmt: skip
                if key.scheme in FROST_SCHEMES:
                    self._precommit(conn, key.scheme, participants, params, 1, now)
                elif self._presigns(key.scheme, path):
                    ref = presigned_mod.claim(conn, key_id, key.epoch, chosen, now, self.settings.presign_ttl)
                    if ref is not None:
                        params[PRESIGNATURE] = ref
                    self.metrics.signs_started.labels("presigned" if ref is not None else "three_round").inc()
            conn.insert(_INSERT_JOB, job)
            handed: dict[str, list[dict[str, Any]]] = {}
            if run_now:
                conn.insert(
                    _INSERT_TASK,
                    [
                        {
                            "id": new_id("task"),
                            "job_id": job_id,
                            "node_id": p["node_id"],
                            "party_index": p["index"],
                            "status": "queued",
                            "created_at": now,
                        }
                        for p in participants
                    ],
                )
                handed = self._hand_over(conn, chosen, now)
        self.metrics.jobs_submitted.labels("sign").inc()
        if run_now:
            self._announce(chosen, handed)
        if self._presigns(key.scheme, path):
            # While the signers work: pre-sign for the next request of these signers. Best
            # effort: the request exists already, and its client must not be told otherwise.
            try:
                self._replenish(key_id, chosen)
            except SQLAlchemyError as e:
                log.warning("pre-signing for key %s not started: %s", key_id, e)
        return Submitted(request_id=job_id)

    def _presigns_wanted(
        self, conn: RawConnection, key_id: str, ids: list[str], now: dt.datetime, key_stmt: Any
    ) -> tuple[int, Any]:
        """How many ``presign`` jobs to start for these signers now (see :meth:`_replenish`),
        and the key row ``key_stmt`` read."""
        key = conn.first(key_stmt, {"key": key_id})
        if key is None or key.status != "active" or key.scheme != "ecdsa":
            return 0, key
        if conn.first(_KEY_CHANGING, {"key": key_id}) is not None:
            return 0, key
        flying = [tuple(r.params.get("signers") or ()) for r in conn.execute(_PRESIGNS_IN_FLIGHT, {"key": key_id})]
        in_flight = flying.count(tuple(ids))
        have = presigned_mod.stock(conn, key_id, key.epoch, ids, now, self.settings.presign_ttl)
        if not have and not in_flight:
            # A signer set new to the stock: only if fewer than presign_sets sets have some
            # (review finding: clients choosing many sets made every node keep, and evict,
            # hundreds, and cost a pre-signing each for nothing).
            sets = presigned_mod.stocked_sets(conn, key_id, key.epoch, now, self.settings.presign_ttl) | set(flying)
            if len(sets) >= self.settings.presign_sets:
                return 0, key
        return min(self.settings.presign_stock - have - in_flight, self.settings.presign_inflight - in_flight), key

    def _presigns(self, scheme: str, path: str | None) -> bool:
        """Whether an ECDSA signing of the key itself uses (and restocks) pre-signatures."""
        return scheme == "ecdsa" and (path is None or path == "m") and self.settings.presign_stock > 0

    def _replenish(self, key_id: str, node_ids: Sequence[str]) -> int:
        """Start ``presign`` jobs for ``key_id`` and these signers (party-index order) until
        the stock and the jobs in flight make ``presign_stock``, at most ``presign_inflight``
        in flight, for at most ``presign_sets`` signer sets of the key (API.md §1.15). None
        while a refresh or repair of the key is queued or running (the shares are about to
        change; its start drops the stock). Returns how many it started."""
        now = utc_now()
        started: list[str] = []
        ids = list(node_ids)
        with self.db.raw.read() as conn:  # most calls need nothing: no write transaction for them
            if self._presigns_wanted(conn, key_id, ids, now, _KEY_FOR_RESTOCK_READ)[0] <= 0:
                return 0
        with self.db.raw.write() as conn:
            # Again with the key row held FOR UPDATE: two calls at once (two submits, two
            # replicas) must not both count the same jobs in flight (review finding).
            want, key = self._presigns_wanted(conn, key_id, ids, now, _KEY_FOR_RESTOCK)
            if want <= 0:
                return 0
            index = {nid: i + 1 for i, nid in enumerate(key.node_ids)}
            participants = [{"node_id": nid, "index": index[nid]} for nid in ids]
            until = now + dt.timedelta(seconds=self.settings.job_timeout)
            for _ in range(want):
                job_id = new_id("pre")
                conn.insert(_INSERT_JOB, {
                    "id": job_id, "kind": "presign", "key_id": key_id, "params": {"signers": ids}, "status": "running",
                    "result": None, "error": None, "participants": participants, "attempts": 1, "next_msg_seq": 1,
                    "mailbox_bytes": 0, "requested_by": None, "created_at": now, "updated_at": now,
                    "instance": secrets.token_bytes(32).hex(), "epoch": key.epoch, "lease_owner": self.settings.replica_id,
                    "lease_until": until, "started_at": now,
                })  # fmt: skip
                conn.insert(_INSERT_TASK, [
                    {"id": new_id("task"), "job_id": job_id, "node_id": p["node_id"], "party_index": p["index"],
                     "status": "queued", "created_at": now}
                    for p in participants
                ])  # fmt: skip
                started.append(job_id)
            handed = self._hand_over(conn, ids, now)
        for _ in started:
            self.metrics.jobs_submitted.labels("presign").inc()
        self._announce(ids, handed)
        return len(started)

    def _default_signers(self, s: Session | RawConnection, key: Any, now: dt.datetime) -> list[str]:
        """t of the key's nodes: not proved stale in their current process first, then those
        seen recently (then by party index)."""
        seen: dict[str, dt.datetime] = {nid: ts for nid, ts in s.execute(_NODES_SEEN, {"ids": list(key.node_ids)})}
        alive_after = now - dt.timedelta(seconds=self.settings.node_alive_seconds)
        stale = self._stale_processes(s, key.node_ids)
        order = sorted(
            range(len(key.node_ids)),
            key=lambda i: (
                key.node_ids[i] in stale,
                not (key.node_ids[i] in seen and seen[key.node_ids[i]] >= alive_after),
                i,
            ),
        )
        return sorted((key.node_ids[i] for i in order[: key.threshold]), key=key.node_ids.index)

    def _witness_ended(self, s: Session, job: Job, tasks: Sequence[Task] | None = None) -> None:
        """A witness job's participants conclude on their own (API.md §1.14): one failing ends
        nobody else's task, and the job fails — with the first failure — once every task has
        ended (all done: :meth:`_complete_job`)."""
        if tasks is None:
            tasks = s.scalars(select(Task).where(Task.job_id == job.id)).all()
        if any(t.status in ("queued", "running") for t in tasks):
            return
        failed = next((t for t in tasks if t.status == "failed"), None)
        if failed is not None:
            error = failed.error or {}
            self._fail_job(s, job, reason=str(error.get("reason", "failed")), culprits=list(error.get("culprits", [])),
                           party=failed.node_id, detail=str(error.get("detail", "")))  # fmt: skip

    def _stale_processes(self, s: Session | RawConnection, node_ids: Sequence[str]) -> set[str]:
        """Which of ``node_ids`` run a process that reported its own state old (docs/NODE.md,
        "t holders before a signature"); a mark whose node has restarted since is dropped. On
        this replica only: a hint for the default choice, never a check."""
        with self._witness_lock:
            marked = {n: k for n, k in self._proved_stale.items() if n in node_ids}
        out = set()
        for node, identity in marked.items():
            current = s.scalar(_NODE_KEY, {"node": node})
            if current is not None and bytes(current) == identity:
                out.add(node)
            else:
                with self._witness_lock:
                    if self._proved_stale.get(node) == identity:
                        del self._proved_stale[node]
        return out

    def submit_refresh(self, key_id: str, requested_by: str, idempotency_key: str | None = None) -> dict[str, Any]:
        """A refresh; with ``idempotency_key``, a retry answers the first request."""
        fp = _fingerprint("refresh", key_id=key_id)
        return _once(lambda: self._submit_refresh(key_id, requested_by, idempotency_key, fp), idempotency_key)

    def _submit_refresh(self, key_id: str, requested_by: str, idempotency_key: str | None, fp: str) -> dict[str, Any]:
        seen = self._seen(requested_by, idempotency_key, fp)
        if seen is not None:
            return {"request_id": seen.id}
        now = utc_now()
        with self.db.write() as s:
            key = self._active_key(s, key_id)
            participants = [{"node_id": nid, "index": i + 1} for i, nid in enumerate(key.node_ids)]
            job = self._new_job(s, "refresh", key, {}, participants, requested_by, now, idempotency_key, fp)
            self._submit(s, job, key, now)
        return self._started(job, "refresh")

    def submit_repair(
        self, key_id: str, lost: str, helpers: Sequence[str] | None, requested_by: str, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """A share repair; with ``idempotency_key``, a retry answers the first request."""
        fp = _fingerprint("repair", key_id=key_id, lost=lost, helpers=list(helpers) if helpers is not None else None)
        return _once(lambda: self._submit_repair(key_id, lost, helpers, requested_by, idempotency_key, fp), idempotency_key)

    def _submit_repair(
        self, key_id: str, lost: str, helpers: Sequence[str] | None, requested_by: str, idempotency_key: str | None, fp: str
    ) -> dict[str, Any]:
        seen = self._seen(requested_by, idempotency_key, fp)
        if seen is not None:
            return {"request_id": seen.id}
        now = utc_now()
        with self.db.write() as s:
            key = self._active_key(s, key_id)
            if key.scheme == "ecdsa":
                raise ApiError(422, "validation_error", "share repair is offered for FROST keys only", field="key_id")
            index = {nid: i + 1 for i, nid in enumerate(key.node_ids)}
            if lost not in index:
                raise ApiError(422, "validation_error", f"node {lost!r} holds no share of {key_id}", field="lost")
            if helpers is None:
                helpers = [nid for nid in self._default_signers(s, key, now) if nid != lost]
                if len(helpers) < key.threshold:
                    others = [nid for nid in key.node_ids if nid != lost and nid not in helpers]
                    helpers = [*helpers, *others][: key.threshold]
            for i, nid in enumerate(helpers):
                if nid not in index or nid == lost:
                    raise ApiError(422, "validation_error", f"node {nid!r} cannot help repair {lost!r}", field=f"helpers[{i}]")
                if nid in helpers[:i]:
                    raise ApiError(422, "validation_error", f"node {nid!r} is listed twice", field=f"helpers[{i}]")
            if len(helpers) < key.threshold:
                raise ApiError(422, "validation_error", f"need at least t = {key.threshold} helpers", field="helpers")
            chosen = sorted(helpers, key=index.__getitem__)
            participants = [{"node_id": nid, "index": index[nid]} for nid in sorted([*chosen, lost], key=index.__getitem__)]
            params = {"lost": lost, "helpers": chosen}
            job = self._new_job(s, "repair", key, params, participants, requested_by, now, idempotency_key, fp)
            self._submit(s, job, key, now)
        return self._started(job, "repair")

    def request_witness(self, node: NodeIdentity) -> dict[str, Any]:
        """A node that started asks the other holders of its keys to confirm its state before
        it signs (docs/NODE.md, "Rollback witness"; API.md §1.14): one ``witness`` job per
        active key it holds, for itself and the holders seen within ``node_alive_seconds``. A
        key with such a job of this node's queued or running gets no second one (one asked
        before the node last registered, or ``witness_restart`` seconds ago or more, is failed,
        ``superseded``, and replaced), nor does a
        node that asked less than ``witness_interval`` seconds ago (it is answered the jobs it
        has). The keys' rows are held (FOR UPDATE, in id order) as a submit holds its key, so
        two replicas never make two, and a refresh or repair submitted meanwhile is ordered."""
        now = utc_now()
        alive_after = now - dt.timedelta(seconds=self.settings.node_alive_seconds)
        jobs: list[str] = []
        new: list[Job] = []
        superseded: list[Job] = []
        with self.db.write() as s:
            _hold_identity(s, node.node_id, node.identity_public_key)
            registered_at = s.scalar(select(Node.registered_at).where(Node.id == node.node_id))
            if registered_at is None:  # gone since _hold_identity: not this node's any more
                raise StaleIdentity(node.node_id)
            held = [
                k.id for k in s.execute(select(Key.id, Key.node_ids).where(Key.status == "active")) if node.node_id in k.node_ids
            ]
            keys = s.scalars(select(Key).where(Key.id.in_(held)).order_by(Key.id).with_for_update()).all() if held else []
            with self._witness_lock:
                last = self._witness_asked.get(node.node_id)
            # Per process: a node that registered again since (a restart) may ask at once.
            interval = dt.timedelta(seconds=self.settings.witness_interval)
            restart_after = dt.timedelta(seconds=self.settings.witness_restart)
            fresh_ask = last is None or last < registered_at or now - last >= interval
            for key in keys:
                if key.status != "active":
                    continue
                pending = None
                mine = select(Job).where(
                    Job.key_id == key.id,
                    Job.kind == "witness",
                    Job.requested_by == node.node_id,
                    Job.status.in_(("queued", "running")),
                )
                # Never wait for a job row while holding the key: a report ending that job
                # holds it and then takes the key (review finding: a PostgreSQL deadlock). A
                # job another transaction holds is about to change (ending, starting): taken
                # as pending, as it was when the node asked.
                olds = s.scalars(mine.with_for_update(skip_locked=True)).all()
                taken = {o.id for o in olds}
                busy = [jid for jid in s.scalars(mine.with_only_columns(Job.id)) if jid not in taken]
                if busy:
                    pending = busy[0]
                for old in olds:
                    if old.created_at < registered_at:  # asked by an earlier process: its notes never come
                        self._fail_job(s, old, reason="superseded", culprits=[], party=None,
                                       detail="the node registered again since it asked")  # fmt: skip
                        superseded.append(old)
                    elif fresh_ask and now - old.created_at >= restart_after:
                        # Waiting on a holder that went quiet (frozen, or down since it was
                        # last seen): a new job, with the holders seen now.
                        self._fail_job(s, old, reason="superseded", culprits=[], party=None,
                                       detail=f"asked again after {restart_after.total_seconds():g} s")  # fmt: skip
                        superseded.append(old)
                    else:
                        pending = old.id
                if pending is not None or not fresh_ask:
                    if pending is not None:
                        jobs.append(pending)
                    continue
                seen = {nid: ts for nid, ts in s.execute(_NODES_SEEN, {"ids": list(key.node_ids)})}
                participants = [
                    {"node_id": nid, "index": i + 1}
                    for i, nid in enumerate(key.node_ids)
                    if nid == node.node_id or (nid in seen and seen[nid] >= alive_after)
                ]
                if len(participants) < 2:
                    continue
                job = self._new_job(s, "witness", key, {"for": node.node_id}, participants, node.node_id, now)
                self._submit(s, job, key, now)
                new.append(job)
                jobs.append(job.id)
        if fresh_ask:
            with self._witness_lock:
                _remember(self._witness_asked, node.node_id, now)
        for job in new:
            self._started(job, "witness")
        # What a superseded job held back (a refresh queued behind it) starts now, and its
        # nodes hear that it ended (review finding: both waited for the sweep and the poll).
        for old in superseded:
            self._notify_job(old.id, [p["node_id"] for p in old.participants])
        for key_id in sorted({old.key_id for old in superseded}):
            self._next_jobs(key_id)
        return {"jobs": jobs}

    # -- requests -------------------------------------------------------------------------------
    def take_answer(self, job_id: str) -> dict[str, Any] | None:
        """The record of a request that a report on this replica just ended (``done``), once:
        what :meth:`get_request` would read back. None if there is none (ended elsewhere,
        failed, a bundle's, already taken, or pushed out by newer ones)."""
        with self._answers_lock:
            return self._answers.pop(job_id, None)

    def _keep_answer(self, record: dict[str, Any]) -> None:
        with self._answers_lock:
            self._answers[str(record["request_id"])] = record
            while len(self._answers) > _ANSWERS_KEPT:  # nobody waited for these
                self._answers.popitem(last=False)

    def get_request(self, job_id: str) -> dict[str, Any]:
        # Prebuilt statements (rawsql): clients long-poll this for every signature.
        with self.db.raw.read() as conn:
            job = conn.first(_REQUEST, {"job": job_id})
            if job is None:
                raise ApiError(404, "not_found", f"no request {job_id!r}", field="request_id")
            # A request in a bundle or a rerun runs in that job's tasks (its own first
            # attempt's, if any, were cancelled).
            tasks = {t.node_id: t for t in conn.execute(_REQUEST_TASKS, {"job": job.bundle_id or job_id})}
        return self._job_out(job, tasks)

    def list_requests(self, *, key_id: str | None, status: str | None, limit: int) -> list[dict[str, Any]]:
        with self.db.read() as s:
            q = select(Job).where(Job.kind.notin_(("bundle", "presign")), Job.carries.is_(None))  # no client asked for these
            q = q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
            if key_id is not None:
                q = q.where(Job.key_id == key_id)
            if status is not None:
                q = q.where(Job.status == status)
            return [self._job_out(j, None) for j in s.scalars(q)]

    @staticmethod
    def _job_out(job: Any, tasks: Mapping[str, Any] | None) -> dict[str, Any]:
        """A request as the API shows it (``job``: a Job or a row with its columns)."""
        parts = []
        for p in job.participants:
            entry = {"node_id": p["node_id"], "index": p["index"]}
            if tasks is not None:
                t = tasks.get(p["node_id"])
                entry["task_status"] = t.status if t is not None else None
            parts.append(entry)
        return {
            "request_id": job.id,
            "kind": job.kind,
            "key_id": job.key_id,
            "status": job.status,
            "params": job.params,
            "result": job.result,
            "error": job.error,
            "participants": parts,
            "instance": job.instance,
            "epoch": job.epoch,
            "attempts": job.attempts,
            "created_at": iso(job.created_at),
            "updated_at": iso(job.updated_at),
            "started_at": iso(job.started_at),
            "finished_at": iso(job.finished_at),
            "deadline": iso(job.lease_until),
            "bundle": job.bundle_id,
            "carries": job.carries,
        }

    # -- dispatch -------------------------------------------------------------------------------
    def _blocked(self, s: Session, job: Job) -> bool:
        earlier = or_(Job.created_at < job.created_at, and_(Job.created_at == job.created_at, Job.id < job.id))
        q = select(Job.id).where(Job.key_id == job.key_id, Job.status.in_(("queued", "running")), Job.id != job.id)
        if job.kind in EXCLUSIVE_KINDS:
            # Runs alone: wait for everything before it, and for anything already running.
            q = q.where(or_(earlier, Job.status == "running"))
        else:
            q = q.where(Job.kind.in_(EXCLUSIVE_KINDS), or_(earlier, Job.status == "running"))
        return s.scalars(q.limit(1)).first() is not None

    def _start_job(self, s: Session, job: Job, key: Key, now: dt.datetime) -> bool:
        """Dispatch one queued job that is not blocked: instance, deadline, one task per
        participant. False if it cannot run (its key is no longer active: it fails)."""
        if job.kind != "dkg" and key.status != "active":
            self._fail_job(s, job, reason="key_not_active", culprits=[], party=None, detail=f"key is {key.status}")
            return False
        if job.kind in ("refresh", "repair"):
            # Its nodes drop theirs as it starts (node/presignatures.py), whatever its end.
            s.execute(delete(Presignature).where(Presignature.key_id == key.id))
        job.status = "running"
        job.instance = secrets.token_bytes(32).hex()
        job.epoch = key.epoch
        job.attempts += 1
        job.lease_owner = self.settings.replica_id
        job.lease_until = now + dt.timedelta(seconds=self.settings.job_timeout)
        job.started_at = now
        job.updated_at = now
        for p in job.participants:
            s.add(
                Task(
                    id=new_id("task"),
                    job_id=job.id,
                    node_id=p["node_id"],
                    party_index=p["index"],
                    status="queued",
                    created_at=now,
                )
            )
        s.flush()
        return True

    def _next_jobs(self, key_id: str) -> None:
        """A job of ``key_id`` ended and others wait: start what may run now."""
        if self._dispatch_signs(key_id)[1]:
            self.dispatch()

    def _bundles(self, scheme: str) -> bool:
        """Whether this scheme's signatures wait when enough are in flight, and bundle."""
        return scheme != "ecdsa" and self.settings.sign_inflight > 0

    def _dispatch_signs(self, key_id: str) -> tuple[list[list[str]], bool]:
        """Start the FROST signatures of ``key_id`` that wait and may run: as many bundles (or
        single jobs, for one request) as ``sign_inflight`` allows, the oldest requests first,
        grouped by signer set (API.md §1.6, "Bundles"). Prebuilt statements (rawsql) in one
        transaction, the key row held FOR UPDATE as dispatch() holds it. Returns the node ids of
        each job started, and whether jobs of another kind wait for the key (then dispatch()
        must look at them)."""
        started: list[list[str]] = []
        now = utc_now()
        with self.db.raw.write() as conn:
            key = conn.first(_KEY_FOR_DISPATCH, {"key": key_id})
            if key is None or key.status != "active" or not self._bundles(key.scheme):
                return [], True
            # Ordering per key: a refresh or repair running holds every signature back; one
            # queued holds back those queued after it (dispatch() starts it when its turn comes).
            # One statement: the first refresh or repair (running first), else any other job
            # that is no signature and waits (a witness behind a refresh that just ended).
            first = conn.first(_KEY_WAITING_FIRST, {"key": key_id})
            changing = first if first is not None and first.kind in EXCLUSIVE_KINDS else None
            if changing is not None and changing.status == "running":
                return [], False
            rows = list(conn.execute(_QUEUED_SIGNS, {"key": key_id, "limit": 4 * max(1, self.settings.bundle_max)}))
            if changing is not None:
                rows = [r for r in rows if (r.created_at, r.id) < (changing.created_at, changing.id)]
            in_flight = self._in_flight(conn, key_id, now)
            groups: dict[tuple[str, ...], list[Any]] = {}
            for r in rows:
                groups.setdefault(tuple(r.params["signers"]), []).append(r)
            # Oldest waiting request first; each signer set has its own sign_inflight slots.
            for signers, group in sorted(groups.items(), key=lambda g: (g[1][0].created_at, g[1][0].id)):
                while group and in_flight[signers] < self.settings.sign_inflight:
                    take = self._next_bundle(group)
                    del group[: len(take)]
                    self._start_signs(conn, take, key, now)
                    in_flight[signers] += 1
                    started.append([p["node_id"] for p in take[0].participants])
            # Jobs of another kind (a witness queued behind a refresh that has just ended)
            # are dispatch()'s to start (review finding: they waited for the sweep).
            others = first is not None
            handed = self._hand_over(conn, {nid for nodes in started for nid in nodes}, now)
        for nodes in started:
            self._announce(nodes, handed)  # a node in two jobs takes its tasks once (popped)
        return started, others

    def _in_flight(self, conn: RawConnection, key_id: str, now: dt.datetime) -> collections.Counter[tuple[str, ...]]:
        """The key's signing jobs (requests alone, bundles) started within the last
        ``sign_inflight_seconds`` and still running, by signer set: one stalled longer holds
        nobody back (it still ends by its deadline)."""
        cutoff = now - dt.timedelta(seconds=self.settings.sign_inflight_seconds)
        rows = conn.execute(_SIGNS_IN_FLIGHT, {"key": key_id, "after": cutoff})
        return collections.Counter(tuple(r.params["signers"]) for r in rows)

    def _next_bundle(self, jobs: Sequence[Any]) -> list[Any]:
        """The oldest waiting signatures that fit one bundle (at least the first). The nodes'
        batch round 2 must fit one protocol message (64 KiB): about 1,600 signer-items; and the
        job's mailbox holds every round sealed once per ordered pair of signers, n(n-1) copies
        of items × (r1 + r2) bytes, r2 growing with n: half of ``max_job_mailbox_bytes`` at most
        (review finding: bundles of 32 at 38 signers overflowed the 64 MiB mailbox)."""
        out: list[Any] = []
        size = 0
        n = len(jobs[0].participants)
        per_item = n * (n - 1) * (_BUNDLE_ITEM_BYTES + _BUNDLE_ITEM_BYTES_PER_SIGNER * n)
        by_mailbox = self.settings.max_job_mailbox_bytes // 2 // max(1, per_item)
        cap = min(self.settings.bundle_max, _BUNDLE_MAX, _BUNDLE_SIGNER_ITEMS // n, by_mailbox)
        for job in jobs[: max(1, cap)]:
            size += len(job.params.get("message_hex", "")) // 2
            if out and size > self.settings.bundle_max_bytes:
                break
            out.append(job)
        return out

    def _start_signs(self, conn: RawConnection, jobs: Sequence[Any], key: Any, now: dt.datetime) -> None:
        """Start waiting signature requests: one alone as itself; several as a bundle — one
        job with one task per signer, one session of the nodes signing every message
        (``FrostBatchSigner``). Each request runs inside it and ends with it: done with its own
        signature, or failed with the bundle's reason (API.md §1.6, "Bundles")."""
        first = jobs[0]
        until = now + dt.timedelta(seconds=self.settings.job_timeout)
        running = {"status": "running", "epoch": key.epoch, "owner": self.settings.replica_id, "until": until, "now": now}
        if len(jobs) == 1:
            job_id = first.id
            conn.execute(_START_QUEUED, running | {"job": job_id, "instance": secrets.token_bytes(32).hex(), "bundle": None})
            params = dict(first.params)
            if self._precommit(conn, key.scheme, first.participants, params, 1, now):
                conn.execute(_SET_PARAMS, {"job": job_id, "params": params})
        else:
            job_id = new_id("bdl")
            bundle_params: dict[str, Any] = {
                "signers": first.params["signers"],
                "bundle": [{"request_id": j.id, "message_hex": j.params["message_hex"]} for j in jobs],
            }
            self._precommit(conn, key.scheme, first.participants, bundle_params, len(jobs), now)
            conn.insert(_INSERT_JOB, {
                "id": job_id, "kind": "bundle", "key_id": key.id, "status": "running", "result": None, "error": None,
                "params": bundle_params,
                "participants": first.participants, "attempts": 1, "next_msg_seq": 1, "mailbox_bytes": 0,
                "requested_by": None, "created_at": now, "updated_at": now, "instance": secrets.token_bytes(32).hex(),
                "epoch": key.epoch, "lease_owner": self.settings.replica_id, "lease_until": until, "started_at": now,
            })  # fmt: skip
            conn.execute(_START_QUEUED, [running | {"job": j.id, "instance": None, "bundle": job_id} for j in jobs])
            self.metrics.bundles_started.observe(len(jobs))
        conn.insert(_INSERT_TASK, [
            {"id": new_id("task"), "job_id": job_id, "node_id": p["node_id"], "party_index": p["index"], "status": "queued",
             "created_at": now}
            for p in first.participants
        ])  # fmt: skip

    def _precommit(
        self,
        conn: RawConnection,
        scheme: str,
        participants: Sequence[Mapping[str, Any]],
        params: dict[str, Any],
        count: int,
        now: dt.datetime,
    ) -> bool:
        """Give a FROST signing of ``count`` messages the commitments its signers made ahead
        (``params["commitments"]``: one step, aggregated here; API.md §1.13), if every signer
        has enough; otherwise it runs the two-round protocol. In the start's transaction."""
        lists = None
        if self.settings.sign_precommitted:
            lists = precommit.claim(conn, scheme, participants, count, now, self.settings.commitment_ttl)
        if lists is not None:
            params[PRECOMMITTED] = lists
        self.metrics.signs_started.labels("precommitted" if lists is not None else "two_round").inc()
        return lists is not None

    def publish_commitments(
        self, node: NodeIdentity, scheme: str, items: Sequence[tuple[bytes, bytes, bytes, bytes]]
    ) -> dict[str, Any]:
        """Keep a node's FROST nonce commitments ``(id, hiding, binding, signature)`` for its current
        process (API.md §1.13). Refused (409 ``commitments_full``) past ``max_commitments``
        unused ones for the node and scheme; the answer says how many it has (``stock``)."""
        if scheme not in FROST_SCHEMES:
            raise ApiError(422, "validation_error", f"commitments are for FROST schemes {list(FROST_SCHEMES)}", field="scheme")
        size = suite_by_scheme(scheme).group.element_size
        seen: set[bytes] = set()
        for i, (cid, hiding, binding, signature) in enumerate(items):
            if len(signature) != 64:
                raise ApiError(422, "validation_error", "an Ed25519 signature is 64 bytes", field=f"commitments[{i}].signature")
            if len(cid) != precommit.ID_BYTES or cid in seen:
                raise ApiError(422, "validation_error", f"{precommit.ID_BYTES} bytes, distinct", field=f"commitments[{i}].id")
            seen.add(cid)
            for name, point in (("hiding", hiding), ("binding", binding)):
                if len(point) != size:
                    raise ApiError(422, "validation_error", f"a {scheme} point is {size} bytes", field=f"commitments[{i}].{name}")
        now = utc_now()
        fresh = now - dt.timedelta(seconds=self.settings.commitment_ttl)
        try:
            with self.db.raw.write() as conn:
                _hold_identity(conn, node.node_id, node.identity_public_key)
                generation = conn.scalar(_NODE_GENERATION, {"node": node.node_id})
                stock = int(conn.scalar(precommit.STOCK, {"node": node.node_id, "scheme": scheme, "gen": generation,
                                                           "fresh": fresh}) or 0)  # fmt: skip
                if stock + len(items) > self.settings.max_commitments:
                    raise ApiError(
                        409, "commitments_full",
                        f"{stock} unused {scheme} commitments kept for {node.node_id}: at most "
                        f"{self.settings.max_commitments}", extra={"stock": stock},
                    )  # fmt: skip
                conn.insert(precommit.INSERT, [
                    {"node_id": node.node_id, "id": cid, "scheme": scheme, "generation": generation, "hiding": hiding,
                     "binding": binding, "signature": signature, "created_at": now}
                    for cid, hiding, binding, signature in items
                ])  # fmt: skip
        except IntegrityError:
            raise ApiError(409, "duplicate_commitment", "a commitment with one of these ids is kept already") from None
        # How long the node must keep a pair: handed out until commitment_ttl, used by a job
        # that may run job_timeout more (and a minute for the clocks and the trip).
        keep = self.settings.commitment_ttl + self.settings.job_timeout + 60
        return {"stored": len(items), "stock": stock + len(items), "ttl_seconds": self.settings.commitment_ttl,
                "keep_seconds": keep}  # fmt: skip

    def _submit(self, s: Session, job: Job, key: Key, now: dt.datetime) -> bool:
        """Start a just-submitted job in its own transaction when nothing of its key is ahead
        (no other replica can see it before commit, so it cannot be dispatched twice)."""
        s.flush()
        return not self._blocked(s, job) and self._start_job(s, job, key, now)

    def _started(self, job: Job, kind: str) -> dict[str, Any]:
        self.metrics.jobs_submitted.labels(kind).inc()
        if job.status == "running":
            for p in job.participants:
                self.notify(f"node:{p['node_id']}", 1)
        return {"request_id": job.id}

    @staticmethod
    def _has_queued(s: Session, key_id: str) -> bool:
        return s.scalars(select(Job.id).where(Job.key_id == key_id, Job.status == "queued").limit(1)).first() is not None

    def dispatch(self, limit: int = 256) -> int:
        """Start the queued jobs that may run now. Safe to call from any replica at any time.
        Waiting FROST signatures of one key and signer set start together, as bundles."""
        started: list[list[str]] = []
        now = utc_now()
        signing: set[str] = set()
        with self.db.write() as s:
            q = select(Job).where(Job.status == "queued")
            if self.settings.sign_inflight > 0:
                # FROST signatures wait by design, maybe many: they start per key below
                # (_dispatch_signs), and never crowd the other keys' jobs out of this window
                # (review finding: 256 waiting signatures of one key hid every other job).
                frost = Job.key_id.in_(select(Key.id).where(Key.scheme != "ecdsa"))
                signing.update(s.scalars(select(Job.key_id).where(Job.status == "queued", Job.kind == "sign", frost).distinct()))
                q = q.where(or_(Job.kind != "sign", ~frost))
            # At most _DISPATCH_PER_KEY of one key's oldest in the window, so that one key's
            # backlog (e.g. ECDSA signatures behind its refresh) never crowds the other keys'
            # jobs out of it (review finding). Ranked in a subquery: no FOR UPDATE beside a
            # window function.
            rank = func.row_number().over(partition_by=Job.key_id, order_by=(Job.created_at, Job.id))
            ranked = q.with_only_columns(Job.id, rank.label("rank")).subquery()
            window = select(ranked.c.id).where(ranked.c.rank <= _DISPATCH_PER_KEY)
            q = select(Job).where(Job.id.in_(window))
            queued = s.scalars(q.order_by(Job.created_at, Job.id).limit(limit).with_for_update(skip_locked=True)).all()
            # Lock the jobs' keys (FOR UPDATE, in id order so dispatches on two replicas cannot
            # deadlock) before _blocked looks at their jobs: a submit of the same key starting
            # its job at the same moment holds the key too (API.md §1.6, "Ordering per key").
            key_ids = sorted({job.key_id for job in queued})
            keys = (
                {k.id: k for k in s.scalars(select(Key).where(Key.id.in_(key_ids)).order_by(Key.id).with_for_update())}
                if key_ids
                else {}
            )
            for job in queued:
                key = keys.get(job.key_id)
                if key is None:  # a job always names an existing key (foreign key); never start one that doesn't
                    continue
                if self._blocked(s, job):
                    continue
                if self._start_job(s, job, key, now):
                    started.append([p["node_id"] for p in job.participants])
        for nodes in started:
            for nid in nodes:
                self.notify(f"node:{nid}", 1)
        # _dispatch_signs wakes the nodes of what it starts itself.
        return len(started) + sum(len(self._dispatch_signs(key_id)[0]) for key_id in sorted(signing))

    # -- tasks ----------------------------------------------------------------------------------
    def claim_task(self, node_id: str, identity: bytes | None = None) -> dict[str, Any] | None:
        """Hand ``node_id`` its oldest queued task, at most once across all replicas."""
        tasks = self.claim_tasks(node_id, 1, identity=identity)
        return tasks[0] if tasks else None

    def claim_tasks(
        self,
        node_id: str,
        limit: int,
        identity: bytes | None = None,
        *,
        probe: bool = True,
        admitted: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` of the node's queued tasks, oldest first, each handed out at most once
        across all replicas (``FOR UPDATE SKIP LOCKED``; SQLite: the one writer lock). Core
        statements on the raw connection (rawsql), one transaction for the whole batch: this
        runs on every task. ``identity``: the key the asking request or stream was signed
        with; nothing is handed out unless it is still the node's (:class:`StaleIdentity`):
        a long-poll or stream may outlive the registration it was signed under.
        ``probe``: look for a queued task in a read first, so that a look that finds none
        takes no write lock; a caller told that a task was just queued skips it.
        ``admitted``: the peers the node holds an admission for, with the SHA-256 of the
        evidence it admitted each on (:meth:`_task_payload`)."""
        if limit <= 0:
            return []
        if probe:
            with self.db.raw.read() as conn:
                if conn.first(_QUEUED_TASK, {"node": node_id}) is None:
                    return []
        with self.db.raw.write() as conn:
            return self._claim(conn, node_id, limit, identity, admitted, utc_now())

    def _claim(
        self,
        conn: RawConnection,
        node_id: str,
        limit: int,
        identity: bytes | None,
        admitted: Mapping[str, str] | None,
        now: dt.datetime,
    ) -> list[dict[str, Any]]:
        """:meth:`claim_tasks` in the caller's write transaction."""
        if identity is not None:
            _hold_identity(conn, node_id, identity)
        rows = conn.execute(_QUEUED_TASKS, {"node": node_id, "limit": limit})
        if not rows:
            return []
        out: list[dict[str, Any]] = []
        for task_id, party_index, job, key, nodes in self._task_rows(conn, rows):
            if job is None or key is None or job.status != "running":  # cannot happen: failing a job cancels its tasks
                conn.execute(_CANCEL_TASK, {"task": task_id})
                continue
            conn.execute(
                _CLAIM_TASK,
                {"task": task_id, "now": now, "owner": self.settings.replica_id, "until": job.lease_until},
            )
            out.append(self._task_payload(task_id, node_id, party_index, job, key, nodes, admitted))
        self.metrics.tasks_claimed.inc(len(out))
        return out

    def _hand_over(self, conn: RawConnection, node_ids: Iterable[str], now: dt.datetime) -> dict[str, list[dict[str, Any]]]:
        """In the write transaction that just queued tasks for ``node_ids``: claim them at once
        for those nodes whose event stream is open on this replica's event loop, the thread
        this runs on (on SQLite, where the hot paths run inline), as the stream itself would
        (:meth:`claim_tasks`: its identity key, its room, the evidence it admitted). That
        saves each task the stream's own claim — a write transaction, after a wake-up that
        waits its turn on the loop — between the dispatch and the push. A stream whose key is
        stale is left to find that out with its own claim (it is closed then). Node id ->
        tasks claimed; they are the stream's once committed (:meth:`_announce`)."""
        handed: dict[str, list[dict[str, Any]]] = {}
        me = threading.get_ident()
        for nid in sorted(node_ids):
            taker = self.takers.get(nid)
            if taker is None or taker.thread != me or taker.claim <= 0:
                continue
            try:
                tasks = self._claim(conn, nid, min(taker.claim, 64), taker.identity, taker.admitted, now)
            except StaleIdentity:
                continue
            except Exception:
                # Only a shortcut: never the reason a submission or a report fails. Whatever
                # this claim wrote (SQLite: kept) the stream pushes at its next look at the
                # tasks handed out and not reported (every poll interval).
                _log.exception("claiming the tasks of %s for its stream failed; it is told instead", nid)
                continue
            if tasks:
                handed[nid] = tasks
        return handed

    def _announce(self, node_ids: Iterable[str], handed: dict[str, list[dict[str, Any]]]) -> None:
        """After the commit that queued tasks for ``node_ids``: give each stream what was
        claimed for it (:meth:`_hand_over`; taken out of ``handed``, so once), and tell the
        other nodes a task waits."""
        for nid in node_ids:
            tasks = handed.pop(nid, None)
            taker = self.takers.get(nid)
            if tasks and taker is not None:
                taker.take(tasks)
            else:
                self.notify(f"node:{nid}", 1)

    def claimed_tasks(
        self, node_id: str, limit: int = 64, identity: bytes | None = None, *, admitted: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """The node's tasks handed out and not yet reported, of running jobs (oldest first), as
        handed out: pushed again on each new event-stream connection (API.md §1.11), because a
        frame written just before a connection died may never have reached the node. The
        node runs a task id it already has only once. Tasks of an earlier registration are
        not among them: registering anew fails them. ``identity``: as for :meth:`claim_tasks`
        (the stream asks every poll interval, so a stale one learns it within one)."""
        with self.db.raw.read() as conn:
            if identity is not None:
                pk = conn.scalar(_NODE_KEY, {"node": node_id})
                if pk is None or bytes(pk) != identity:
                    raise StaleIdentity(node_id)
            rows = conn.execute(_CLAIMED_TASKS, {"node": node_id, "limit": limit})
            if not rows:
                return []
            return [
                self._task_payload(task_id, node_id, party_index, job, key, nodes, admitted)
                for task_id, party_index, job, key, nodes in self._task_rows(conn, rows)
                if job is not None and key is not None and job.status == "running"
            ]

    @staticmethod
    def _task_rows(conn: RawConnection, rows: Sequence[Any]) -> list[tuple[str, int, Any, Any, dict[str, Any]]]:
        """Each ``(task id, job id, party index)`` row with its job, key and the participants'
        node rows (None where missing), read in three statements for the whole batch."""
        jobs = {r.id: r for r in conn.execute(_CLAIM_JOBS, {"ids": sorted({r.job_id for r in rows})})}
        keys = {k.id: k for k in conn.execute(_CLAIM_KEYS, {"ids": sorted({j.key_id for j in jobs.values()})})}
        ids = {p["node_id"] for j in jobs.values() for p in j.participants}
        nodes = {n.id: n for n in conn.execute(_CLAIM_NODES, {"ids": sorted(ids)})}
        out = []
        for task_id, job_id, party_index in rows:
            job = jobs.get(job_id)
            out.append((task_id, party_index, job, keys.get(job.key_id) if job is not None else None, nodes))
        return out

    @staticmethod
    def _task_payload(
        task_id: str,
        node_id: str,
        party_index: int,
        job: Any,
        key: Any,
        nodes: dict[str, Any],
        admitted: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """A task as API.md §1.3 shows it. A participant's evidence is named by its SHA-256
        instead of repeated when it is of no use to the node: its own, and a peer's the node
        says it admitted on exactly that evidence (``admitted``). A TDX or SGX quote with its
        collateral is tens of kilobytes, and every signing task names its signers."""
        participants = []
        for p in job.participants:
            n = nodes.get(p["node_id"])
            own = p["node_id"] == node_id
            held = admitted.get(p["node_id"]) if admitted else None
            fields = None
            if n is not None and n.evidence is not None and (own or held):
                digest = hashlib.sha256(n.evidence).hexdigest()
                if own or held == digest:  # by reference: the evidence is neither encoded nor sent
                    fields = _evidence_reference(n, digest)
            if fields is None:
                fields = _evidence_fields(n)
            participants.append({"node_id": p["node_id"], "index": p["index"], **fields})
        return {
            "task_id": task_id,
            "job_id": job.id,
            "kind": job.kind,
            "key_id": key.id,
            "scheme": key.scheme,
            "threshold": key.threshold,
            "epoch": job.epoch,
            "public_key": key.public_key,
            "instance": job.instance,
            "deadline": iso(job.lease_until),
            "you": {"node_id": node_id, "index": party_index},
            "committee": [{"node_id": nid, "index": i + 1} for i, nid in enumerate(key.node_ids)],
            "participants": participants,
            "params": job.params,
        } | ({"carries": job.carries} if job.carries else {})  # a rerun's sign task only

    def post_result(
        self,
        task_id: str,
        node_id: str,
        status: str,
        result: dict[str, Any] | None,
        error: dict[str, Any] | None,
        identity: bytes | None = None,
    ) -> dict[str, Any]:
        """A node's report of its task (API.md §1.6). ``identity``: as for :meth:`claim_tasks`,
        checked in the report's own transaction."""
        # What the task reports: its public result when done, its error when failed.
        reported = result if status == "done" else error
        if reported is None:
            if status == "done":
                raise ApiError(422, "validation_error", "a done task reports its public result", field="result")
            raise ApiError(422, "validation_error", "a failed task reports its error", field="error")
        for name, value in (("result", result), ("error", error)):
            # JSON bodies may spell NaN and Infinity (Python's parser takes them), but they are
            # not JSON: PostgreSQL's json type refuses them (a 500), SQLite stores null.
            try:
                size = len(json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False))
            except ValueError:
                raise ApiError(
                    422, "validation_error", "holds a number that is not finite (NaN or Infinity)", field=name
                ) from None
            except RecursionError:  # review finding: ~950 levels parsed, then failed here with a 500
                raise ApiError(422, "validation_error", "nested too deeply", field=name) from None
        epoch = result.get("epoch") if isinstance(result, dict) else None
        if epoch is not None and not (type(epoch) is int and 0 <= epoch < 2**31):
            # Stored in an INTEGER column (review finding: a larger one failed every report, 500).
            raise ApiError(422, "validation_error", "epoch must be an integer in 0..2**31-1", field="result.epoch")
            if name == "result" and size > self.settings.max_result_bytes:
                raise ApiError(
                    413, "payload_too_large", f"result larger than {self.settings.max_result_bytes} bytes", field="result"
                )
        if status == "done":
            fast = self._signed(task_id, node_id, reported, identity)
            if fast is not None:
                return fast
        now = utc_now()
        rerun_nodes: set[str] = set()
        with self.db.write() as s:
            if identity is not None:
                _hold_identity(s, node_id, identity)
            probe = s.get(Task, task_id)
            if probe is None:
                raise ApiError(404, "not_found", f"no task {task_id!r}", field="task_id")
            if probe.node_id != node_id:
                raise ApiError(403, "forbidden", "this task belongs to another node")
            # Lock order everywhere: job row, then its tasks.
            job = s.get(Job, probe.job_id, with_for_update=True, populate_existing=True)
            task = s.get(Task, task_id, with_for_update=True, populate_existing=True)
            key = s.get(Key, job.key_id) if job is not None else None
            if job is None or task is None or key is None:
                raise ApiError(404, "not_found", f"no task {task_id!r}", field="task_id")
            if task.status in ("done", "failed"):
                previous = task.result if task.status == "done" else task.error
                if task.status == status and canonical_json(previous) == canonical_json(reported):
                    return {"task_status": task.status, "job_status": job.status}
                raise ApiError(409, "already_reported", f"task already reported {task.status}", extra={"job_status": job.status})
            if task.status == "queued":
                raise ApiError(409, "task_not_claimed", "the task was never handed out")
            if task.status == "cancelled" or job.status != "running":
                why = f"the job is {job.status}" if job.status != "running" else "the task was cancelled: the request runs again"
                raise ApiError(409, "job_not_running", why, extra={"job_status": job.status})
            parts = {p["node_id"] for p in job.participants}
            task.finished_at = now
            if status == "failed":
                for i, c in enumerate(reported.get("culprits", [])):
                    if c not in parts:
                        raise ApiError(422, "validation_error", f"{c!r} is not a participant", field=f"error.culprits[{i}]")
                task.status = "failed"
                task.error = reported
                if reported.get("reason") == "STALE_STATE" and node_id in reported.get("culprits", []) and identity:
                    with self._witness_lock:  # a hint for the default signer choice (_stale_processes)
                        _remember(self._proved_stale, node_id, identity)
                if job.kind == "witness":
                    s.flush()
                    self._witness_ended(s, job)
                elif (rerun_key := self._reruns(s, job, reported["reason"])) is not None:
                    detail = f"{node_id} could not take its step: {reported.get('detail', '')}"[:2000]
                    rerun_nodes = self._rerun(s, job, rerun_key, reason=reported["reason"], detail=detail)
                else:
                    self._fail_job(
                        s,
                        job,
                        reason=reported["reason"],
                        culprits=list(reported.get("culprits", [])),
                        party=node_id,
                        detail=reported.get("detail", ""),
                    )
            else:
                self._check_result(job, key, reported)
                signing = job.kind in ("sign", "bundle") and not _one_step(job.params)  # shares: checked summed
                problem = self._signing_problem(job, key, reported) if signing else None
                if problem is not None:
                    # An honest signer verifies the signature before it reports it (FROST and
                    # DKLs23 both do): whoever reports an invalid one is the culprit.
                    task.status = "failed"
                    task.error = {"reason": "invalid_signature", "culprits": [node_id], "detail": problem}
                    self._fail_job(s, job, reason="invalid_signature", culprits=[node_id], party=None, detail=problem)
                else:
                    task.status = "done"
                    task.result = reported
                    s.flush()
                    tasks = s.scalars(select(Task).where(Task.job_id == job.id)).all()
                    if all(t.status == "done" for t in tasks):
                        self._complete_job(s, job, key, tasks)
                    elif job.kind == "witness":
                        self._witness_ended(s, job, tasks)
            out = {"task_status": task.status, "job_status": job.status}
            if job.status != "running":  # as in _signed: the key row before the look for waiting jobs
                s.execute(_KEY_HOLD, {"key": job.key_id})
            waiting = job.status != "running" and self._has_queued(s, job.key_id)
        for nid in sorted(rerun_nodes):
            self.notify(f"node:{nid}", 1)
        if out["job_status"] != "running":
            self._notify_job(job.id, [p["node_id"] for p in job.participants], _bundled(job))
            if waiting:
                self._next_jobs(job.key_id)  # jobs of this key that waited for it may start now
            if out["job_status"] == "done" and job.kind in ("presign", "dkg", "refresh", "repair"):
                self._restock(job)
        return out

    def _restock(self, job: Any) -> None:
        """After a pre-signing, until the stock is full; after an ECDSA key's DKG, refresh or
        repair (no stock: a new key, or the shares just changed), for the signers a request
        naming none would get — so even its first signing can take one step. Best effort."""
        try:
            if job.kind == "presign":
                self._replenish(job.key_id, job.params["signers"])
                return
            if self.settings.presign_stock <= 0:
                return
            with self.db.raw.read() as conn:
                key = conn.first(_KEY_FOR_RESTOCK_READ, {"key": job.key_id})
                if key is None or key.scheme != "ecdsa" or key.status != "active":
                    return
                signers = self._default_signers(conn, key, utc_now())
            self._replenish(job.key_id, signers)
        except SQLAlchemyError as e:
            log.warning("pre-signing for key %s not started: %s", job.key_id, e)

    def _signed(self, task_id: str, node_id: str, result: dict[str, Any], identity: bytes | None) -> dict[str, Any] | None:
        """The common report — a signer's ``done`` in a running sign job — on Core statements,
        with the same locks and checks as :meth:`post_result`. None for anything else (another
        kind, a repeated or late report, differing results): the general path answers it.
        Prebuilt statements on the raw connection (rawsql)."""
        now = utc_now()
        answer = None
        try:
            with self.db.raw.write() as conn:
                # The owner's key comes with the task, its row held as _hold_identity holds it:
                # the identity check costs no statement of its own here.
                probe = conn.first(_TASK_OWNER, {"task": task_id})
                if probe is None or probe.node_id != node_id:
                    return None
                if identity is not None and bytes(probe.identity_public_key) != identity:
                    raise StaleIdentity(node_id)
                job = conn.first(_SIGN_JOB_FOR_REPORT, {"job": probe.job_id})
                if job is None or job.kind not in ("sign", "bundle") or job.status != "running":
                    return None
                if job.attempts > 1 or job.carries is not None:
                    # A rerun (attempt 2 of the requests it runs for: rare; one made by an older
                    # replica has attempts 1) ends them by the general path, which times each
                    # from its own dispatch.
                    return None
                if conn.scalar(_TASK_FOR_REPORT, {"task": task_id}) != "running":
                    return None
                self._check_result(job, None, result)
                # The other signers' reports (the job row is held: none changes meanwhile). A
                # result equal to one already done was verified when that one came in.
                others = [t for t in conn.execute(_JOB_RESULTS, {"job": job.id}) if t.id != task_id]
                mine = canonical_json(result)
                shares = _one_step(job.params)  # each signer reports its own shares (API.md §1.13, §1.15)
                verified = shares or any(t.status == "done" and canonical_json(t.result) == mine for t in others)
                if not verified and self._signing_problem(job, job, result):
                    raise _GeneralPath  # invalid_signature: failed by the general path
                conn.execute(_TASK_DONE, {"task": task_id, "res": result, "now": now})
                job_status = "running"
                if all(t.status == "done" for t in others):
                    if shares:
                        reports = {t.node_id: t.result for t in others} | {node_id: result}
                        final, _, _, _ = self._one_step_end(job, job, reports)
                        if final is None:
                            raise _GeneralPath  # failed, with its reason, by the general path
                        result = final
                    elif any(canonical_json(t.result) != mine for t in others):
                        raise _GeneralPath  # result_mismatch: failed by the general path
                    conn.execute(_JOB_DONE, {"job": job.id, "res": result, "now": now})
                    job_status = "done"
                    if job.kind == "sign":  # as get_request would read it back
                        ended = job._asdict() | {"status": "done", "result": result, "finished_at": now, "updated_at": now}
                        tasks = {t.node_id: _TASK_DONE_ROW for t in others} | {node_id: _TASK_DONE_ROW}
                        answer = self._job_out(types.SimpleNamespace(**ended), tasks)
                    self._record_end(_Ended(job.kind, job.started_at, now), "done", "")
                    if job.kind == "bundle":
                        done = [
                            {"job": item["request_id"], "bundle": job.id, "now": now, "res": one}
                            for item, one in zip(job.params["bundle"], _request_results(result), strict=True)
                        ]
                        conn.execute(_MEMBER_DONE, done)
                        for _ in done:
                            self._record_end(_Ended("sign", job.started_at, now), "done", "")
                if job_status != "running":
                    # The key row first: a submit (FOR SHARE) that saw this job still running and
                    # queued behind it has committed before we look (review finding: on
                    # PostgreSQL it waited for the sweeper otherwise).
                    conn.execute(_KEY_HOLD, {"key": job.key_id})
                waiting = job_status != "running" and conn.first(_QUEUED_JOB, {"key": job.key_id}) is not None
        except _GeneralPath:
            return None
        if job_status != "running":
            if answer is not None:
                self._keep_answer(answer)
            self._notify_job(job.id, [p["node_id"] for p in job.participants], _bundled(job))
            if waiting:
                self._next_jobs(job.key_id)
        return {"task_status": "done", "job_status": job_status}

    @staticmethod
    def _check_result(job: Any, key: Key | None, result: dict[str, Any]) -> None:
        if (job.kind == "sign" and presigned(job.params)) or job.kind == "presign":
            wrong = presigned_share_problem(result) if job.kind == "sign" else presigned_mod.result_problem(result, job.epoch)
            if wrong is not None:
                raise ApiError(422, "validation_error", wrong[1], field=wrong[0])
            return
        if job.kind in ("sign", "bundle") and precommitted(job.params):
            # One signer's shares, one per message (API.md §1.13): checked whole here, summed
            # once every signer's is in (_precommitted_end).
            shares = result.get("shares")
            if set(result) != {"shares"} or not isinstance(shares, list) or len(shares) != len(job.params[PRECOMMITTED]):
                raise ApiError(
                    422, "validation_error", "a precommitted signing reports one share per message, and nothing else",
                    field="result.shares",
                )  # fmt: skip
            scheme = key.scheme if key is not None else job.scheme
            for i, share in enumerate(shares):
                problem = share_shape_problem(scheme, share)
                if problem is not None:
                    raise ApiError(422, "validation_error", problem, field=f"result.shares[{i}]")
            return
        if job.kind == "bundle":
            sigs = result.get("signatures")
            if not isinstance(sigs, list) or len(sigs) != len(job.params["bundle"]):
                raise ApiError(422, "validation_error", "one signature per request of the bundle", field="result.signatures")
            for i, value in enumerate(sigs):
                if not _short_hex(value):
                    raise ApiError(422, "validation_error", "must be lower-case hex", field=f"result.signatures[{i}]")
            return
        if job.kind == "witness":
            if result:
                raise ApiError(422, "validation_error", "a witness task reports an empty result", field="result")
            return
        need = {"dkg": "public_key", "sign": "signature", "refresh": "public_key", "repair": None}[job.kind]
        if need is not None and not _short_hex(result.get(need)):
            raise ApiError(422, "validation_error", "must be lower-case hex", field=f"result.{need}")

    @staticmethod
    def _signing_problem(job: Any, key: Any, result: Mapping[str, Any]) -> str | None:
        """:func:`signature_problem` for a sign job, or for every request of a bundle (the first
        wrong one). ``key``: a Key or a row with its scheme, public key and package."""
        if job.kind == "sign":
            return signature_problem(key.scheme, key.public_key, key.public_package, job.params, result)
        for i, (item, one) in enumerate(zip(job.params["bundle"], _request_results(result), strict=True)):
            problem = signature_problem(key.scheme, key.public_key, key.public_package, item, one)
            if problem is not None:
                return f"request {i} ({item['request_id']}): {problem}"
        return None

    @classmethod
    def _one_step_end(
        cls, job: Any, key: Any, results: Mapping[str, Mapping[str, Any]]
    ) -> tuple[dict[str, Any] | None, str, str, list[str]]:
        """A one-step signing's end once every signer reported: pre-signed ECDSA, or FROST
        with commitments made ahead (:meth:`_precommitted_end`)."""
        if not presigned(job.params):
            return cls._precommitted_end(job, key, results)
        shares = {node: r["share"] for node, r in results.items()}
        # Verified there, under the key and the request's digest (path m): no second check.
        return assemble_presigned(key.public_key, bytes.fromhex(job.params["digest_hex"]), shares)

    @staticmethod
    def _precommitted_end(
        job: Any, key: Any, results: Mapping[str, Mapping[str, Any]]
    ) -> tuple[dict[str, Any] | None, str, str, list[str]]:
        """A precommitted signing's end once every signer reported (``node id -> result``):
        each message's shares summed into its signature (RFC 9591 §5.3) and verified. Returns
        ``(result, "", "", [])`` — the shape a two-round signing reports — or ``(None, reason,
        detail, culprits)``."""
        public = {"scheme": key.scheme, "public_key": key.public_key}
        bundle = job.kind == "bundle"
        items = job.params["bundle"] if bundle else [job.params]
        signatures = []
        for k, item in enumerate(items):
            sig, reason, detail, culprits = assemble_frost(key.scheme, {node: r["shares"][k] for node, r in results.items()})
            where = f"request {k} ({item['request_id']}): " if bundle else ""
            if sig is None:
                return None, reason, where + detail, culprits
            problem = signature_problem(key.scheme, key.public_key, key.public_package, item, public | {"signature": sig})
            if problem is not None:
                # The shares sum to no valid signature: whose share is wrong (RFC 9591 §5.4).
                blamed = frost_share_culprits(
                    key.scheme, key.public_package, job.epoch, bytes.fromhex(item["message_hex"]),
                    job.params[PRECOMMITTED][k], {node: r["shares"][k] for node, r in results.items()},
                    {p["node_id"]: p["index"] for p in job.participants},
                )  # fmt: skip
                if blamed:
                    detail = f"the signature share of {', '.join(blamed)} does not verify (RFC 9591 §5.4)"
                    return None, "invalid_signature_share", where + detail, blamed
                return None, "invalid_signature", where + problem, []
            signatures.append(sig)
        return (public | {"signatures": signatures} if bundle else public | {"signature": signatures[0]}), "", "", []

    def _complete_job(self, s: Session, job: Job, key: Key, tasks: Sequence[Task]) -> None:
        if job.kind in ("sign", "bundle") and _one_step(job.params):
            final, reason, detail, culprits = self._one_step_end(job, key, {t.node_id: t.result or {} for t in tasks})
            if final is None:
                self._fail_job(s, job, reason=reason, culprits=culprits, party=None, detail=detail)
                return
            self._finish_job(s, job, key, final)
            return
        groups = collections.Counter(canonical_json(t.result) for t in tasks)
        if len(groups) > 1:
            top = groups.most_common()
            majority = top[0][0] if top[0][1] > top[1][1] else None
            culprits = sorted(t.node_id for t in tasks if canonical_json(t.result) != majority)
            self._fail_job(
                s,
                job,
                reason="result_mismatch",
                culprits=culprits,
                party=None,
                detail=f"{len(groups)} different results were reported",
            )
            return
        result = tasks[0].result
        if result is None:  # a done task always carries its result (post_result refuses one without)
            raise ApiError(500, "internal_error", f"task {tasks[0].id} is done without a result")
        self._finish_job(s, job, key, result, tasks)

    def _finish_job(self, s: Session, job: Job, key: Key, result: dict[str, Any], tasks: Sequence[Task] = ()) -> None:
        """A job ending with ``result``: done (key records updated for a keygen or refresh; a
        bundle's requests done with their own signature)."""
        now = utc_now()
        if job.kind == "refresh" and key.public_key is not None and result.get("public_key") != key.public_key:
            self._fail_job(
                s,
                job,
                reason="public_key_changed",
                culprits=sorted(t.node_id for t in tasks),
                party=None,
                detail="the refresh reported a different group public key",
            )
            return
        if job.kind == "dkg":
            key.public_key = str(result["public_key"])
            key.public_package = result
            key.status = "active"
            epoch = result.get("epoch")
            key.epoch = epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else 0
            key.updated_at = now
        elif job.kind == "refresh":
            epoch = result.get("epoch")
            key.epoch = epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else (job.epoch or 0) + 1
            # The holders' new verifying shares (what names the signer of a wrong share, §1.13).
            key.public_package = result
            key.updated_at = now
        elif job.kind == "presign":
            if job.epoch != key.epoch:  # a refresh ended meanwhile: made with shares now replaced
                self._fail_job(s, job, reason="key_changed", culprits=[], party=None, detail=f"the key is at epoch {key.epoch}")
                return
            ids = [p["node_id"] for p in job.participants]
            if s.get(Presignature, (key.id, bytes.fromhex(result["presignature"]))) is not None:
                # Only signers that all agree on an id made before can report it: keep one.
                detail = "the signers reported the id of a pre-signature kept already"
                self._fail_job(s, job, reason="result_mismatch", culprits=ids, party=None, detail=detail)
                return
            s.add(
                Presignature(
                    key_id=key.id, id=bytes.fromhex(result["presignature"]), signer_set=presigned_mod.signer_set(ids),
                    epoch=key.epoch, big_r=bytes.fromhex(result["R"]), created_at=now,
                    generations={n.id: n.generation for n in s.scalars(select(Node).where(Node.id.in_(ids)))},
                )
            )  # fmt: skip
        job.status = "done"
        job.result = result
        job.finished_at = now
        job.updated_at = now
        self._record_end(job, "done", "")
        if job.kind == "bundle":
            members = (item["request_id"] for item in job.params["bundle"])
            results = dict(zip(members, _request_results(result), strict=True))
            for member in s.scalars(select(Job).where(Job.bundle_id == job.id).with_for_update()):
                if member.status == "running" and member.id in results:
                    member.status = "done"
                    member.result = results[member.id]
                    member.finished_at = now
                    member.updated_at = now
                    self._record_end(member, "done", "")
        elif job.carries is not None:
            carried = s.get(Job, job.carries, with_for_update=True)
            if carried is not None and carried.status == "running" and carried.bundle_id == job.id:
                carried.status = "done"
                carried.result = result
                carried.finished_at = now
                carried.updated_at = now
                self._record_end(carried, "done", "")

    @staticmethod
    def _reruns(s: Session, job: Job, reason: str) -> Key | None:
        """The key of a running one-step signing that ``reason`` stops, if it runs again in
        rounds instead of failing (:meth:`_rerun`): a request or bundle not itself a rerun, its
        key active. ``None`` if it fails."""
        if reason not in _RERUN_REASONS or job.kind not in ("sign", "bundle") or not _one_step(job.params):
            return None
        if job.status != "running" or job.bundle_id is not None:
            return None
        key = s.get(Key, job.key_id)
        return key if key is not None and key.status == "active" else None

    def _rerun(self, s: Session, job: Job, key: Key, *, reason: str, detail: str) -> set[str]:
        """Run a one-step signing again in rounds (API.md §1.13, §1.15): a signer restarted and
        lost what it made ahead, or says it holds none of it (``ONE_STEP_UNAVAILABLE``,
        ``NONCE_UNKNOWN``), having released nothing. Each request gets a new sign job that
        ``carries`` it, with its payload and signers, never one-step; the request ends when that
        job ends (its ``bundle_id`` names it). The first attempt's open tasks are cancelled and
        the shares reported in it are never combined. Safe: its nonces and pre-signatures are
        used up, and the rerun signs the same payload with fresh ones. A bundle fails, and the
        requests still in it rerun together in a new bundle, in rounds. Returns the nodes to
        wake (the caller, after its commit)."""
        now = utc_now()
        until = now + dt.timedelta(seconds=self.settings.job_timeout)
        s.execute(
            update(Task)
            .where(Task.job_id == job.id, Task.status.in_(("queued", "running")))
            .values(status="cancelled", finished_at=now)
            .execution_options(synchronize_session="fetch")
        )
        if job.kind == "bundle":
            members = list(
                s.scalars(
                    select(Job).where(Job.bundle_id == job.id, Job.status == "running").order_by(Job.id).with_for_update()
                )
            )
        else:
            members = [job]
        if job.kind == "bundle":
            # One new bundle, in rounds, of the requests still in it (not one job each: a signer
            # refusing would otherwise turn a bundle into bundle_max jobs at once).
            kind, rerun_id, carries = "bundle", new_id("bdl"), None
            params: dict[str, Any] = {
                "signers": job.params["signers"],
                "bundle": [{"request_id": m.id, "message_hex": m.params["message_hex"]} for m in members],
            }
        else:
            kind, rerun_id, carries = "sign", new_id("rrn"), job.id
            params = {k: v for k, v in job.params.items() if k not in (PRECOMMITTED, PRESIGNATURE)}
        s.add(Job(
            id=rerun_id, kind=kind, key_id=job.key_id, params=params, status="running", result=None, error=None,
            participants=job.participants, instance=secrets.token_bytes(32).hex(), epoch=key.epoch, attempts=2,
            lease_owner=self.settings.replica_id, lease_until=until, next_msg_seq=1, mailbox_bytes=0,
            requested_by=job.requested_by if carries else None, carries=carries, created_at=now, updated_at=now,
            started_at=now,
        ))  # fmt: skip
        for p in job.participants:
            s.add(Task(id=new_id("task"), job_id=rerun_id, node_id=p["node_id"], party_index=p["index"], status="queued",
                       created_at=now))  # fmt: skip
        for member in members:
            member.bundle_id = rerun_id
            member.attempts += 1
            member.lease_until = until
            member.updated_at = now
            self.metrics.signs_rerun.labels(reason if reason in _RERUN_REASONS else "other").inc()
        self.metrics.signs_started.labels("three_round" if key.scheme == "ecdsa" else "two_round").inc()
        s.flush()
        if job.kind == "bundle":
            self._fail_job(s, job, reason=reason, culprits=[], party=None, detail=f"{detail}; its requests run again in rounds")
        return {p["node_id"] for p in job.participants}

    def _end_carried(self, job: Job, carrier: Job, now: dt.datetime) -> None:
        if carrier.status == "done" and carrier.result is not None:
            if carrier.kind == "bundle":
                items = [item["request_id"] for item in carrier.params["bundle"]]
                job.result = _request_results(carrier.result)[items.index(job.id)] if job.id in items else None
            else:
                job.result = carrier.result
        if job.result is not None:
            job.status = "done"
        else:
            job.status = "failed"
            job.error = (carrier.error or {"reason": "", "culprits": [], "party": None}) | {
                "detail": f"in {carrier.kind} {carrier.id}: " + str((carrier.error or {}).get("detail", "it ended without it"))}
        job.finished_at = job.updated_at = now
        self._record_end(job, job.status, (job.error or {}).get("reason", ""))

    def _fail_job(self, s: Session, job: Job, *, reason: str, culprits: list[str], party: str | None, detail: str) -> None:
        now = utc_now()
        job.status = "failed"
        job.error = {"reason": reason, "culprits": sorted(set(culprits)), "party": party, "detail": detail}
        job.finished_at = now
        job.updated_at = now
        s.execute(
            update(Task)
            .where(Task.job_id == job.id, Task.status.in_(("queued", "running")))
            .values(status="cancelled", finished_at=now)
            .execution_options(synchronize_session="fetch")
        )
        if job.kind == "dkg":
            key = s.get(Key, job.key_id)
            if key is not None and key.status == "pending":
                key.status = "failed"
                key.updated_at = now
        self._record_end(job, "failed", reason)
        if job.kind == "bundle" or job.carries is not None:  # every request in it fails with its reason
            what = "bundle" if job.kind == "bundle" else "rerun"
            for member in s.scalars(select(Job).where(Job.bundle_id == job.id, Job.status == "running").with_for_update()):
                member.status = "failed"
                member.error = job.error | {"detail": f"in {what} {job.id}: {detail}"}
                member.finished_at = now
                member.updated_at = now
                self._record_end(member, "failed", reason)

    def _record_end(self, job: Job | _Ended, status: str, reason: str) -> None:
        """Count a job's end once its transaction has committed (aftercommit.py)."""
        known = reason if reason in _REASONS or reason in _RERUN_REASONS else "other"
        kind = "rerun" if getattr(job, "carries", None) is not None else job.kind  # its request counts as "sign"
        took = None
        if job.started_at is not None and job.finished_at is not None:
            took = (job.finished_at - job.started_at).total_seconds()

        def count() -> None:
            self.metrics.jobs_finished.labels(kind, status, known).inc()
            if took is not None:
                self.metrics.job_seconds.labels(kind).observe(took)

        after_commit(count)

    def _notify_job(self, job_id: str, nodes: Iterable[str] | None = None, requests: Iterable[str] = ()) -> None:
        """Wake whoever waits for the end of ``job_id``: its client, the clients of
        ``requests`` (a bundle's, :func:`_bundled`), its nodes. Without ``nodes``, all of that is
        read from the job."""
        if nodes is None:
            with self.db.read() as s:
                job = s.get(Job, job_id)
                nodes = [p["node_id"] for p in job.participants] if job is not None else []
                requests = _bundled(job) if job is not None else []
        # The client waiting for the answer first: wake-ups run in the order they are made, and
        # the nodes only learn that their finished job ended.
        for waiting in (job_id, *requests):
            self.notify(f"job:{waiting}", None)
        for nid in nodes:
            self.notify(f"inbox:{nid}:{job_id}", None)

    def job_for_node(self, job_id: str, node_id: str) -> dict[str, Any]:
        """A participant's view of its job: status, public result or error (node API)."""
        with self.db.read() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise ApiError(404, "not_found", f"no job {job_id!r}", field="job_id")
            if node_id not in {p["node_id"] for p in job.participants}:
                raise ApiError(403, "forbidden", f"node {node_id} takes no part in job {job_id}")
            tasks = {t.node_id: t for t in s.scalars(select(Task).where(Task.job_id == job_id))}
            out = self._job_out(job, tasks)
            return {k: out[k] for k in ("request_id", "kind", "key_id", "status", "result", "error", "participants", "epoch")} | {
                "job_id": job.id
            }

    # -- relay ----------------------------------------------------------------------------------
    def post_messages(self, job_id: str, sender: str, messages: Sequence[tuple[str, int, bytes]]) -> dict[str, Any]:
        self._check_messages(messages)
        with self.db.raw.write() as conn:
            appended = self._append_messages(conn, job_id, sender, messages)
        return self._relayed(job_id, sender, appended)

    def _check_messages(self, messages: Sequence[tuple[str, int, bytes]]) -> None:
        limit = self.settings.max_message_bytes
        for i, (_to, _seq, blob) in enumerate(messages):
            if len(blob) > limit:
                raise ApiError(413, "payload_too_large", f"message larger than {limit} bytes", field=f"messages[{i}].blob")
            if not blob:
                raise ApiError(422, "validation_error", "empty message", field=f"messages[{i}].blob")
        seen: dict[tuple[str, int], int] = {}
        for i, (to, seq, _blob) in enumerate(messages):
            if (to, seq) in seen:
                raise ApiError(422, "validation_error", "the same (to, seq) twice in one batch", field=f"messages[{i}].seq")
            seen[(to, seq)] = i

    def _append_messages(
        self, conn: RawConnection, job_id: str, sender: str, messages: Sequence[tuple[str, int, bytes]]
    ) -> _Appended:
        """Append one sender's messages (checked by :meth:`_check_messages`) to a job's mailbox
        inside the caller's write transaction (prebuilt statements, rawsql: this runs for every
        round of every job). Raises :class:`ApiError` before writing anything."""
        now = utc_now()
        job = conn.first(_JOB_FOR_APPEND, {"job": job_id})
        if job is None:
            raise ApiError(404, "not_found", f"no job {job_id!r}", field="job_id")
        parts = [p["node_id"] for p in job.participants]
        if sender not in parts:
            raise ApiError(403, "forbidden", f"node {sender} takes no part in job {job_id}")
        if job.status != "running":
            raise ApiError(409, "job_not_running", f"the job is {job.status}", extra={"job_status": job.status})
        task_status = conn.scalar(_TASK_STATUS, {"job": job_id, "node": sender})
        if task_status not in ("running", "done"):
            raise ApiError(409, "task_not_claimed", "claim the task before sending messages")
        for i, (to, _seq, _blob) in enumerate(messages):
            if to != BROADCAST and (to not in parts or to == sender):
                raise ApiError(
                    422, "validation_error", f"{to!r} is not another participant of the job", field=f"messages[{i}].to"
                )
        existing = {
            (to_node, seq): blob
            for to_node, seq, blob in conn.execute(
                _SENT_BEFORE, {"job": job_id, "node": sender, "seqs": sorted({seq for _to, seq, _blob in messages})}
            )
        }
        fresh: list[tuple[str, int, bytes]] = []
        duplicates = 0
        for i, (to, seq, blob) in enumerate(messages):
            old = existing.get((to, seq))
            if old is None:
                fresh.append((to, seq, blob))
            elif old == blob:
                duplicates += 1
            else:
                raise ApiError(
                    409, "conflict", f"seq {seq} to {to} was already sent with other bytes", field=f"messages[{i}].seq"
                )
        total = sum(len(b) for _to, _seq, b in fresh)
        if job.mailbox_bytes + total > self.settings.max_job_mailbox_bytes:
            raise ApiError(413, "mailbox_full", f"the job's mailbox is limited to {self.settings.max_job_mailbox_bytes} bytes")
        if fresh:
            first = job.next_msg_seq
            conn.insert(
                _INSERT_MESSAGE,
                [
                    {
                        "job_id": job_id,
                        "job_seq": first + k,
                        "from_node": sender,
                        "to_node": to,
                        "seq": seq,
                        "blob": blob,
                        "created_at": now,
                    }
                    for k, (to, seq, blob) in enumerate(fresh)
                ],
            )
            conn.execute(_JOB_APPENDED, {"job": job_id, "next": first + len(fresh), "size": job.mailbox_bytes + total})
        return parts, len(fresh), duplicates, total, [to for to, _s, _b in fresh]

    def _relayed(self, job_id: str, sender: str, appended: _Appended) -> dict[str, Any]:
        """Metrics and wake-ups once the messages are committed."""
        parts, accepted, duplicates, total, targets = appended
        self.metrics.relay_messages.inc(accepted)
        self.metrics.relay_bytes.inc(total)
        recipients = {p for p in parts if p != sender} if BROADCAST in targets else set()
        recipients |= {to for to in targets if to != BROADCAST}
        for nid in recipients:
            self.notify(f"inbox:{nid}:{job_id}", None)
        return {"accepted": accepted, "duplicates": duplicates}

    def read_inbox(self, node_id: str, job_id: str, after: int) -> dict[str, Any]:
        # Prebuilt statements (rawsql): the relay's read for nodes without the event stream.
        with self.db.raw.read() as conn:
            row = conn.first(_JOB_STATUS, {"job": job_id})
            if row is None:
                raise ApiError(404, "not_found", f"no job {job_id!r}", field="job")
            status, participants = row
            if node_id not in {p["node_id"] for p in participants}:
                raise ApiError(403, "forbidden", f"node {node_id} takes no part in job {job_id}")
            out: list[dict[str, Any]] = []
            size = 0
            cursor = after
            limit = self.settings.max_body_bytes
            rows = conn.execute(_NEWS, {"job": job_id, "after": after, "node": node_id, "limit": self.settings.inbox_batch})
            for from_node, to_node, seq, blob, job_seq in rows:
                if out and size + len(blob) > limit:
                    break
                size += len(blob)
                cursor = job_seq
                out.append({"from": from_node, "to": to_node, "seq": seq, "blob": b64(blob), "cursor": job_seq})
            return {"job_id": job_id, "job_status": status, "messages": out, "next_after": cursor}

    # -- node event stream (one long-poll and one post per node, across its jobs) -----------------
    def read_events(self, node_id: str, cursors: Mapping[str, int]) -> list[dict[str, Any]]:
        """News of the node's jobs past its cursors: new messages (as :meth:`read_inbox`), and
        the status of every job that is no longer running. Jobs the node takes no part in, or
        that do not exist, are reported as ``not_found`` (the same answer for both)."""
        return self.read_news(node_id, cursors)[0]

    def read_news(
        self, node_id: str, cursors: Mapping[str, int], *, raw_blobs: bool = False
    ) -> tuple[list[dict[str, Any]], set[str]]:
        """:meth:`read_events`, and the running jobs the answer's limits (message count, bytes)
        may have cut short: their news continues past what is answered, so read them again.
        ``raw_blobs``: blobs as bytes, not base64 (a stream with attachments, API.md §1.11)."""
        if not cursors:
            return [], set()
        cut: set[str] = set()
        with self.db.raw.read() as conn:
            known: dict[str, str] = {}
            for job_id, status, participants in conn.execute(_JOBS_OF, {"jobs": sorted(cursors)}):
                if node_id in {p["node_id"] for p in participants}:
                    known[job_id] = status
            news: dict[str, dict[str, Any]] = {
                j: {"job_id": j, "job_status": known.get(j, "not_found"), "messages": [], "next_after": cursors[j]}
                for j in cursors
            }
            count = size = 0
            # A frame with attachments holds at most MAX_ATTACHMENTS blobs (the node refuses more).
            batch = min(self.settings.inbox_batch, attached.MAX_ATTACHMENTS) if raw_blobs else self.settings.inbox_batch
            order = sorted(known)
            for k, job_id in enumerate(order):
                item = news[job_id]
                rows = conn.execute(
                    _NEWS,
                    {"job": job_id, "after": cursors[job_id], "node": node_id, "limit": batch - count},
                )
                for from_node, to_node, seq, blob, job_seq in rows:
                    # A job's cursor only moves over what is answered: the rest comes next time.
                    if size and size + len(blob) > self.settings.max_body_bytes:
                        cut.add(job_id)
                        break
                    count += 1
                    size += len(blob)
                    item["next_after"] = job_seq
                    data = bytes(blob) if raw_blobs else b64(blob)
                    item["messages"].append({"from": from_node, "to": to_node, "seq": seq, "blob": data, "cursor": job_seq})
                if count >= batch:
                    cut.update(order[k:])  # this one may have more, the rest were not read
                    break
        cut = {j for j in cut if known.get(j) == "running"}
        return [n for n in news.values() if n["messages"] or n["job_status"] != "running"], cut

    def post_outbox(
        self,
        node: NodeIdentity,
        messages: Sequence[tuple[str, str, int, bytes]],
        results: Sequence[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]],
    ) -> dict[str, Any]:
        """Several jobs' messages, then task results, in one call. Each job and each result
        succeeds or fails on its own (a finished job refuses its late messages without
        affecting the others); failures come back as the error body the single-item
        endpoints would have answered."""
        by_job: dict[str, list[tuple[str, int, bytes]]] = {}
        where: dict[str, list[int]] = {}
        for i, (job_id, to, seq, blob) in enumerate(messages):
            by_job.setdefault(job_id, []).append((to, seq, blob))
            where.setdefault(job_id, []).append(i)
        jobs: dict[str, Any] = {}

        def refuse(job_id: str, e: ApiError) -> None:
            # Name the offending message by its place in this whole post.
            field = e.field
            m = _MESSAGE_FIELD_RE.match(field or "")
            if m is not None:
                field = f"messages[{where[job_id][int(m.group(1))]}]{m.group(2)}"
            jobs[job_id] = {"error": _error_item(e, field)}

        checked: dict[str, list[tuple[str, int, bytes]]] = {}
        for job_id, msgs in by_job.items():
            try:
                self._check_messages(msgs)
                checked[job_id] = msgs
            except ApiError as e:
                refuse(job_id, e)
        appended: dict[str, _Appended] = {}
        if checked:
            # One transaction for all jobs; job rows are locked in id order, as everywhere.
            with self.db.raw.write() as conn:
                # Nothing is appended unless the poster's key is still the node's (the stream may
                # have outlived its registration); the node row before the job rows.
                _hold_identity(conn, node.node_id, node.identity_public_key)
                for job_id in sorted(checked):
                    try:
                        appended[job_id] = self._append_messages(conn, job_id, node.node_id, checked[job_id])
                    except ApiError as e:
                        refuse(job_id, e)
        for job_id, done in appended.items():
            jobs[job_id] = self._relayed(job_id, node.node_id, done)
        acks: dict[str, Any] = {}
        for i, (task_id, status, result, error) in enumerate(results):
            try:
                acks[task_id] = self.post_result(task_id, node.node_id, status, result, error, node.identity_public_key)
            except StaleIdentity:
                raise  # the poster's, not the item's: the whole post is refused from here on
            except ApiError as e:
                acks[task_id] = {"error": _error_item(e, f"results[{i}].{e.field}" if e.field else f"results[{i}]")}
        return {"jobs": jobs, "results": acks}

    # -- audit ----------------------------------------------------------------------------------
    def post_audit(
        self, node: NodeIdentity, entries: Sequence[tuple[int, bytes, str, bytes, bytes | None]]
    ) -> dict[str, Any]:
        """Mirror signed audit entries. Each is checked before it is kept: its hash is the
        entry's, and its signature verifies with the key that signed it — ``signer`` (an entry
        written before the node restarted) or the posting node's current key — which is the key
        recorded with it, so the mirror verifies offline entry by entry."""
        for i, (_seq, entry, h, sig, signer) in enumerate(entries):
            if len(entry) > self.settings.max_audit_entry_bytes:
                raise ApiError(
                    413,
                    "payload_too_large",
                    f"entry larger than {self.settings.max_audit_entry_bytes} bytes",
                    field=f"entries[{i}].entry",
                )
            if h != wire.audit_entry_hash(entry):
                raise ApiError(422, "audit_invalid", "the hash is not the entry's", field=f"entries[{i}].hash")
            key = signer if signer is not None else node.identity_public_key
            if not wire.verify_audit_entry(key, entry, h, sig):
                where = "signer" if signer is not None else "the posting node's key"
                raise ApiError(
                    422, "audit_invalid", f"the signature does not verify with {where}", field=f"entries[{i}].signature"
                )
        seqs = [e[0] for e in entries]
        for i, seq in enumerate(seqs):
            if seq in seqs[:i]:
                raise ApiError(422, "validation_error", f"seq {seq} twice in one batch", field=f"entries[{i}].seq")
        for attempt in (1, 2):
            try:
                accepted, duplicates = self._mirror(node, entries, seqs)
                break
            except IntegrityError:
                # PostgreSQL: the same entries posted again at once (a retry after a lost
                # connection, reaching another replica) — both read "not there", one insert
                # wins. Read again: they are duplicates now, or a conflict.
                if attempt == 2:
                    raise
        self.metrics.audit_entries.inc(accepted)
        return {"accepted": accepted, "duplicates": duplicates}

    def _mirror(
        self, node: NodeIdentity, entries: Sequence[tuple[int, bytes, str, bytes, bytes | None]], seqs: list[int]
    ) -> tuple[int, int]:
        """Keep the entries not yet mirrored, in one transaction: (accepted, duplicates)."""
        now = utc_now()
        accepted = duplicates = 0
        fresh: list[dict[str, Any]] = []
        with self.db.raw.write() as conn:  # prebuilt statements (rawsql): every node mirrors often
            existing = {a.seq: a for a in conn.execute(_AUDIT_EXISTING, {"node": node.node_id, "seqs": seqs})}
            for i, (seq, entry, h, sig, signer) in enumerate(entries):
                old = existing.get(seq)
                if old is not None:
                    if old.entry == entry and old.entry_hash == h and old.signature == sig:
                        duplicates += 1
                        continue
                    raise ApiError(
                        409,
                        "audit_conflict",
                        f"entry {seq} of {node.node_id} was already mirrored with other bytes",
                        field=f"entries[{i}].seq",
                    )
                fresh.append(
                    {
                        "node_id": node.node_id,
                        "seq": seq,
                        "entry": entry,
                        "entry_hash": h,
                        "signature": sig,
                        "identity_public_key": signer if signer is not None else node.identity_public_key,
                        "received_at": now,
                    }
                )
                accepted += 1
            conn.insert(_INSERT_AUDIT, fresh)
        return accepted, duplicates

    def audit_head(self, node: NodeIdentity) -> dict[str, Any]:
        """The newest entry the mirror holds of ``node``: ``{"seq", "hash"}`` (0 and the genesis
        value when none). A node whose audit log is empty asks before its first entry, so that a
        node that lost its state continues its mirrored chain instead of numbering from 1 again
        (each of its entries would be an ``audit_conflict``; API.md §1.8)."""
        with self.db.read() as s:
            last = s.execute(
                select(AuditEntry.seq, AuditEntry.entry_hash)
                .where(AuditEntry.node_id == node.node_id)
                .order_by(AuditEntry.seq.desc())
                .limit(1)
            ).first()
        return {"seq": 0, "hash": "00" * 32} if last is None else {"seq": last.seq, "hash": last.entry_hash}

    def list_audit(self, node_id: str | None, after: int | None, limit: int) -> list[dict[str, Any]]:
        with self.db.read() as s:
            q = select(AuditEntry).order_by(AuditEntry.node_id, AuditEntry.seq).limit(limit)
            if node_id is not None:
                q = q.where(AuditEntry.node_id == node_id)
                if after is not None:
                    q = q.where(AuditEntry.seq > after)
            return [
                {
                    "node_id": a.node_id,
                    "seq": a.seq,
                    "entry": b64(a.entry),
                    "hash": a.entry_hash,
                    "signature": b64(a.signature),
                    "identity_public_key": a.identity_public_key.hex(),
                    "received_at": iso(a.received_at),
                }
                for a in s.scalars(q)
            ]

    # -- housekeeping ---------------------------------------------------------------------------
    def sweep(self) -> dict[str, int]:
        """Fail jobs past their deadline or queue time, dispatch what may run, purge old nonces
        and the mailboxes of long-finished jobs. Any replica may run it at any time."""
        now = utc_now()
        ended: list[Job] = []
        with self.db.write() as s:
            q = (
                select(Job)
                # A request inside a bundle ends with its bundle, never on its own.
                .where(Job.status == "running", Job.lease_until < now, Job.bundle_id.is_(None))
                .order_by(Job.lease_until)
                .limit(100)
                .with_for_update(skip_locked=True)
            )
            for job in s.scalars(q).all():
                tasks = s.scalars(select(Task).where(Task.job_id == job.id)).all()
                idle = sorted(t.node_id for t in tasks if t.status == "queued")
                silent = sorted(t.node_id for t in tasks if t.status == "running")
                parts = []
                if idle:
                    parts.append(f"never picked up by {', '.join(idle)}")
                if silent:
                    parts.append(f"no result from {', '.join(silent)}")
                self._fail_job(
                    s,
                    job,
                    reason="timeout",
                    culprits=idle + silent,
                    party=None,
                    detail=f"deadline of {self.settings.job_timeout:g} s passed: " + "; ".join(parts),
                )
                ended.append(job)
            cutoff = now - dt.timedelta(seconds=self.settings.queue_timeout)
            q2 = select(Job).where(Job.status == "queued", Job.created_at < cutoff).limit(100).with_for_update(skip_locked=True)
            for job in s.scalars(q2).all():
                self._fail_job(
                    s,
                    job,
                    reason="queue_timeout",
                    culprits=[],
                    party=None,
                    detail=f"waited more than {self.settings.queue_timeout:g} s behind other jobs of its key",
                )
                ended.append(job)
            for job, carrier in s.execute(_CARRIED_BY_ENDED).all():
                # A request whose bundle or rerun ended without ending it (a replica of an
                # older version ended that job): it ends as its carrier did.
                self._end_carried(job, carrier, now)
                ended.append(job)
        for job in ended:
            self._notify_job(job.id, [p["node_id"] for p in job.participants], _bundled(job))
        started = self.dispatch()
        with self.db.write() as s:
            s.execute(delete(NodeNonce).where(NodeNonce.expires_at < now))
            too_old = now - dt.timedelta(seconds=self.settings.challenge_retention)
            s.execute(delete(NodeChallenge).where(NodeChallenge.created_at < too_old))
            stale = now - dt.timedelta(seconds=self.settings.commitment_ttl)
            s.execute(delete(Commitment).where(Commitment.created_at < stale))
            stale = now - dt.timedelta(seconds=self.settings.presign_ttl)
            s.execute(delete(Presignature).where(Presignature.created_at < stale))
            old = select(Job.id).where(
                Job.status.in_(("done", "failed")),
                Job.finished_at < now - dt.timedelta(seconds=self.settings.mailbox_retention),
                Job.mailbox_bytes > 0,
            )
            ids = list(s.scalars(old.limit(500)))
            if ids:
                s.execute(delete(MailboxMessage).where(MailboxMessage.job_id.in_(ids)))
                s.execute(update(Job).where(Job.id.in_(ids)).values(mailbox_bytes=0))
        return {"expired": len(ended), "started": started}

    def queue_counts(self) -> dict[str, dict[str, int]]:
        now = utc_now()
        with self.db.read() as s:
            jobs = {
                f"{k}/{st}": n
                for k, st, n in s.execute(select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status))
            }
            alive_after = now - dt.timedelta(seconds=self.settings.node_alive_seconds)
            alive = s.scalar(select(func.count()).select_from(Node).where(Node.last_seen >= alive_after)) or 0
            total = s.scalar(select(func.count()).select_from(Node)) or 0
        return {"jobs": jobs, "nodes": {"alive": alive, "silent": total - alive}}


#: Why a one-step signing runs again in rounds (:meth:`Coordinator._rerun`): a signer's new
#: process lost what it made ahead, or a signer reports it holds none of it (released nothing).
_RERUN_REASONS = frozenset({"node_restarted", "ONE_STEP_UNAVAILABLE", "NONCE_UNKNOWN"})

_REASONS = frozenset(
    {"timeout", "queue_timeout", "node_restarted", "result_mismatch", "public_key_changed", "key_not_active", "invalid_signature",
     "invalid_signature_share", "key_changed", ""}
)  # fmt: skip


_TOKEN_BY_HASH = select(ApiToken.id, ApiToken.scopes, ApiToken.revoked_at).where(ApiToken.token_hash == bindparam("hash"))
# Prebuilt statements (compiled once) for the per-request node authentication.
_INSERT_NONCE = insert(NodeNonce).values(node_id=bindparam("node"), nonce=bindparam("nonce"), expires_at=bindparam("expires"))
_INSERT_NONCE_IF_KEY = (
    insert(NodeNonce)
    .from_select(
        ["node_id", "nonce", "expires_at"],
        select(
            bindparam("node", type_=NodeNonce.__table__.c.node_id.type),
            bindparam("nonce", type_=NodeNonce.__table__.c.nonce.type),
            bindparam("expires", type_=NodeNonce.__table__.c.expires_at.type),
        ).where(exists().where(Node.id == bindparam("node"), Node.identity_public_key == bindparam("pk"))),
    )
    .returning(NodeNonce.node_id)
)
_NODE_KEY = select(Node.identity_public_key).where(Node.id == bindparam("node"))
#: The node's key, the row held FOR KEY SHARE until commit (_hold_identity): conflicts only with
#: register_node's FOR UPDATE, not with other holders nor with last_seen updates.
_NODE_KEY_HELD = (
    select(Node.identity_public_key).where(Node.id == bindparam("node")).with_for_update(read=True, key_share=True)
)
#: What GET /v1/nodes shows of a node (no blobs).
_NODE_LISTED = select(
    Node.id, Node.identity_public_key, Node.kem_id, Node.platform, Node.attestation, Node.generation, Node.registered_at,
    Node.last_seen,
)  # fmt: skip
_TOUCH_NODE = update(Node).where(Node.id == bindparam("node")).values(last_seen=bindparam("now"))
# Prebuilt statements (compiled once) for the relay's append.
_JOB_FOR_APPEND = (
    select(Job.status, Job.participants, Job.next_msg_seq, Job.mailbox_bytes).where(Job.id == bindparam("job")).with_for_update()
)
_TASK_STATUS = select(Task.status).where(Task.job_id == bindparam("job"), Task.node_id == bindparam("node"))
_SENT_BEFORE = select(MailboxMessage.to_node, MailboxMessage.seq, MailboxMessage.blob).where(
    MailboxMessage.job_id == bindparam("job"),
    MailboxMessage.from_node == bindparam("node"),
    MailboxMessage.seq.in_(bindparam("seqs", expanding=True)),
)
_INSERT_MESSAGE = insert(MailboxMessage)
_JOB_APPENDED = (
    update(Job).where(Job.id == bindparam("job")).values(next_msg_seq=bindparam("next"), mailbox_bytes=bindparam("size"))
)
_JOB_STATUS = select(Job.status, Job.participants).where(Job.id == bindparam("job"))
# … and for a node's event stream.
_JOBS_OF = select(Job.id, Job.status, Job.participants).where(Job.id.in_(bindparam("jobs", expanding=True)))
_NEWS = (
    select(MailboxMessage.from_node, MailboxMessage.to_node, MailboxMessage.seq, MailboxMessage.blob, MailboxMessage.job_seq)
    .where(
        MailboxMessage.job_id == bindparam("job"),
        MailboxMessage.job_seq > bindparam("after"),
        MailboxMessage.from_node != bindparam("node"),
        or_(MailboxMessage.to_node == bindparam("node"), MailboxMessage.to_node == BROADCAST),
    )
    .order_by(MailboxMessage.job_seq)
    .limit(bindparam("limit"))
)
# … and for handing out tasks.
_QUEUED_TASKS = (
    select(Task.id, Task.job_id, Task.party_index)
    .where(Task.node_id == bindparam("node"), Task.status == "queued")
    .order_by(Task.created_at, Task.id)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
_JOB_BY_IDEMPOTENCY = select(Job.id, Job.key_id, Job.idempotency_fp).where(
    Job.requested_by == bindparam("by"), Job.idempotency_key == bindparam("key")
)
_CLAIMED_TASKS = (
    select(Task.id, Task.job_id, Task.party_index)
    .where(Task.node_id == bindparam("node"), Task.status == "running")
    .order_by(Task.claimed_at, Task.id)
    .limit(bindparam("limit"))
)
_CLAIM_JOBS = select(
    Job.id, Job.kind, Job.key_id, Job.status, Job.epoch, Job.instance, Job.lease_until, Job.participants, Job.params,
    Job.carries,
).where(Job.id.in_(bindparam("ids", expanding=True)))
_CLAIM_KEYS = select(Key.id, Key.scheme, Key.threshold, Key.public_key, Key.node_ids).where(
    Key.id.in_(bindparam("ids", expanding=True))
)
_CLAIM_NODES = select(
    Node.id, Node.peer_card, Node.platform, Node.evidence, Node.collateral, Node.evidence_nonce, Node.evidence_challenges,
    Node.generation,
).where(Node.id.in_(bindparam("ids", expanding=True)))
_CANCEL_TASK = update(Task).where(Task.id == bindparam("task")).values(status="cancelled")
_CLAIM_TASK = (
    update(Task)
    .where(Task.id == bindparam("task"))
    .values(status="running", claimed_at=bindparam("now"), lease_owner=bindparam("owner"), lease_until=bindparam("until"))
)
# … and for signature requests.
#: FOR SHARE, not FOR UPDATE: signatures of one key are submitted side by side; only a
#: key-changing submit or a dispatch (FOR UPDATE, or the epoch update of a refresh's end) waits.
_KEY_FOR_SIGN = (
    select(Key.id, Key.scheme, Key.status, Key.node_ids, Key.threshold, Key.epoch)
    .where(Key.id == bindparam("key"))
    .with_for_update(read=True)
)
_KEY_FOR_RESTOCK_READ = select(Key.id, Key.scheme, Key.status, Key.node_ids, Key.threshold, Key.epoch).where(
    Key.id == bindparam("key")
)
_KEY_FOR_RESTOCK = _KEY_FOR_RESTOCK_READ.with_for_update()
_PRESIGNS_IN_FLIGHT = select(Job.params).where(
    Job.key_id == bindparam("key"), Job.kind == "presign", Job.status.in_(("queued", "running"))
)
_KEY_CHANGING = (
    select(Job.id)
    .where(Job.key_id == bindparam("key"), Job.kind.in_(EXCLUSIVE_KINDS), Job.status.in_(("queued", "running")))
    .limit(1)
)
_NODES_SEEN = select(Node.id, Node.last_seen).where(Node.id.in_(bindparam("ids", expanding=True)))
_INSERT_JOB = insert(Job)
_INSERT_TASK = insert(Task)
_REQUEST = select(
    Job.id, Job.kind, Job.key_id, Job.status, Job.params, Job.result, Job.error, Job.participants, Job.instance, Job.epoch,
    Job.attempts, Job.created_at, Job.updated_at, Job.started_at, Job.finished_at, Job.lease_until, Job.bundle_id,
    Job.carries,
).where(Job.id == bindparam("job"))  # fmt: skip
_REQUEST_TASKS = select(Task.node_id, Task.status).where(Task.job_id == bindparam("job"))
# … and for a signer's report.
_TASK_OWNER = (
    select(Task.node_id, Task.job_id, Node.identity_public_key)
    .join(Node, Node.id == Task.node_id)
    .where(Task.id == bindparam("task"))
    .with_for_update(of=Node, read=True, key_share=True)
)
_TASK_A, _TASK_B = aliased(Task), aliased(Task)
_SHARE_A_JOB = (
    select(_TASK_A.job_id)
    .join(_TASK_B, _TASK_B.job_id == _TASK_A.job_id)
    .where(_TASK_A.node_id == bindparam("a"), _TASK_B.node_id == bindparam("b"))
    .limit(1)
)
_SIGN_JOB_FOR_REPORT = (
    select(
        Job.id, Job.kind, Job.status, Job.key_id, Job.participants, Job.started_at, Job.params, Job.epoch,
        Job.result, Job.error, Job.instance, Job.attempts, Job.created_at, Job.updated_at, Job.finished_at,
        Job.lease_until, Job.bundle_id, Job.carries,
        Key.scheme, Key.public_key, Key.public_package,
    )
    .join(Key, Key.id == Job.key_id)
    .where(Job.id == bindparam("job"))
    .with_for_update(of=Job)
)
#: Requests ended on this replica kept for their waiting client (Coordinator.take_answer).
_ANSWERS_KEPT = 1024
_TASK_DONE_ROW = types.SimpleNamespace(status="done")
_TASK_FOR_REPORT = select(Task.status).where(Task.id == bindparam("task")).with_for_update()
_TASK_DONE = (
    update(Task)
    .where(Task.id == bindparam("task"))
    .values(status="done", result=bindparam("res"), finished_at=bindparam("now"))
)
_JOB_RESULTS = select(Task.id, Task.node_id, Task.status, Task.result).where(Task.job_id == bindparam("job"))
_JOB_DONE = (
    update(Job)
    .where(Job.id == bindparam("job"))
    .values(status="done", result=bindparam("res"), finished_at=bindparam("now"), updated_at=bindparam("now"))
)
_KEY_HOLD = select(Key.id).where(Key.id == bindparam("key")).with_for_update()
_NODE_GENERATION = select(Node.generation).where(Node.id == bindparam("node"))
_QUEUED_JOB = select(Job.id).where(Job.key_id == bindparam("key"), Job.status == "queued").limit(1)
_CARRIER = aliased(Job)
#: Requests still running inside a bundle or rerun that has ended (see sweep).
_CARRIED_BY_ENDED = (
    select(Job, _CARRIER)
    .join(_CARRIER, _CARRIER.id == Job.bundle_id)
    .where(Job.status == "running", _CARRIER.status.in_(("done", "failed")))
    .limit(100)
    .with_for_update(of=Job, skip_locked=True)
)
_MEMBER_DONE = (
    update(Job)
    .where(Job.id == bindparam("job"), Job.bundle_id == bindparam("bundle"), Job.status == "running")
    .values(status="done", result=bindparam("res"), finished_at=bindparam("now"), updated_at=bindparam("now"))
)
_KEY_FOR_DISPATCH = (
    select(Key.id, Key.scheme, Key.status, Key.epoch).where(Key.id == bindparam("key")).with_for_update()
)
_KEY_WAITING_FIRST = (
    select(Job.id, Job.kind, Job.status, Job.created_at)
    .where(
        Job.key_id == bindparam("key"),
        Job.status.in_(("queued", "running")),  # ix_jobs_key_status: never the key's ended jobs
        or_(Job.kind.in_(EXCLUSIVE_KINDS), and_(Job.kind != "sign", Job.status == "queued")),
    )
    # A refresh or repair first (a running one first of those), then the others.
    .order_by(case((Job.kind.in_(EXCLUSIVE_KINDS), 0), else_=1), Job.status.desc(), Job.created_at, Job.id)
    .limit(1)
)
_QUEUED_SIGNS_SIGNERS = (
    select(Job.params).where(Job.key_id == bindparam("key"), Job.status == "queued", Job.kind == "sign").limit(256)
)
_QUEUED_SIGNS = (
    select(Job.id, Job.params, Job.participants, Job.created_at)
    .where(Job.key_id == bindparam("key"), Job.status == "queued", Job.kind == "sign")
    .order_by(Job.created_at, Job.id)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
_SET_PARAMS = update(Job).where(Job.id == bindparam("job")).values(params=bindparam("params"))
_START_QUEUED = (
    update(Job)
    .where(Job.id == bindparam("job"), Job.status == "queued")
    .values(
        status=bindparam("status"), instance=bindparam("instance"), epoch=bindparam("epoch"), attempts=Job.attempts + 1,
        lease_owner=bindparam("owner"), lease_until=bindparam("until"), started_at=bindparam("now"),
        updated_at=bindparam("now"), bundle_id=bindparam("bundle"),
    )
)  # fmt: skip
#: A key's signing jobs (requests run alone, and bundles) started recently and still running.
_SIGNS_IN_FLIGHT = select(Job.params).where(
    Job.key_id == bindparam("key"),
    Job.status == "running",
    Job.kind.in_(("sign", "bundle")),
    Job.bundle_id.is_(None),
    Job.started_at > bindparam("after"),
)
_QUEUED_TASK = select(Task.id).where(Task.node_id == bindparam("node"), Task.status == "queued").limit(1)
_AUDIT_EXISTING = select(AuditEntry.seq, AuditEntry.entry, AuditEntry.entry_hash, AuditEntry.signature).where(
    AuditEntry.node_id == bindparam("node"), AuditEntry.seq.in_(bindparam("seqs", expanding=True))
)
_INSERT_AUDIT = insert(AuditEntry)
_MESSAGE_FIELD_RE = re.compile(r"^messages\[(\d+)\](.*)$")


def _one_step(params: Mapping[str, Any] | None) -> bool:
    """Whether a sign job's signers each report their shares and the coordinator combines
    them: FROST with commitments made ahead (API.md §1.13), ECDSA with a pre-signature (§1.15)."""
    return precommitted(params) or presigned(params)


def _short_hex(value: Any) -> bool:
    """A reported key or signature: lower-case hex, at most 512 digits."""
    return isinstance(value, str) and len(value) <= 512 and _HEX_RE.fullmatch(value) is not None


def _request_results(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A bundle's result as each of its requests ends with it (a single signing's shape), in
    the bundle's order."""
    head = {"scheme": result.get("scheme"), "public_key": result.get("public_key")}
    return [head | {"signature": sig} for sig in result["signatures"]]


def _bundled(job: Any) -> list[str]:
    """The requests that end with ``job`` besides itself: a bundle's, or the one a rerun carries."""
    if job.kind == "bundle":
        return [item["request_id"] for item in job.params["bundle"]]
    return [job.carries] if job.carries is not None else []


def _card_fields(n: Any) -> dict[str, Any]:
    """A node row's card, platform and generation (all None for a missing node)."""
    return {"peer_card": b64(n.peer_card) if n else None, "platform": n.platform if n else None,
            "generation": n.generation if n else None}  # fmt: skip


def _evidence_fields(n: Any) -> dict[str, Any]:
    """What a verifier needs of a node row (all None for a missing node): card, platform,
    evidence, collateral, the nonce it binds and the challenges that nonce answers."""
    return _card_fields(n) | {
        "evidence": b64(n.evidence) if n else None,
        "collateral": b64(n.collateral) if n else None,
        "evidence_nonce": n.evidence_nonce.hex() if n and n.evidence_nonce is not None else None,
        "evidence_challenges": n.evidence_challenges if n else None,
    }


def _evidence_reference(n: Any, digest: str) -> dict[str, Any]:
    """A participant entry naming the evidence by its SHA-256 (API.md §1.3): the card fields
    of :func:`_evidence_fields`, and instead of the rest, ``evidence_sha256``."""
    return _card_fields(n) | {"evidence_sha256": digest}


def _error_item(e: ApiError, field: str | None) -> dict[str, Any]:
    """One item's failure inside a batch answer: what the single-item endpoint would answer."""
    return {"status": e.status, "code": e.code, "message": e.message, "field": field, **e.extra}


def decode_card(data: bytes) -> PeerCard:
    try:
        return PeerCard.decode(data)
    except CardError as e:
        raise ApiError(422, "validation_error", str(e), field="peer_card") from None
