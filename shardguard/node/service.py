"""The signer node as a process: ``shardguard node run`` (ARCHITECTURE §2, §6, §7; issue 6).

At start the node opens its platform (the simulated one says so loudly), makes its identity and
channel keys inside it, binds them into fresh evidence and registers with the coordinator —
outbound connections only. Then it pulls tasks (long-poll). For each task it first verifies
every other participant's evidence against its own verification policy and admits only those
(a peer outside policy never receives a byte), then runs the protocol through
:mod:`shardguard.node.engine` with every message sealed to the peer, and reports only the public
result. New epochs (key generation, refresh) are staged in the sealed keystore and committed
only when the coordinator reports the whole job done; a failed or interrupted job leaves the
old epoch in use.

Evidence freshness: the node binds its keys with a nonce it picks and re-registers with new
evidence every ``reattest_seconds``; verifiers enforce ``max_age_seconds`` of their policy on
the evidence's own timestamp (Nitro format, as the simulated platform emits). Platforms whose
evidence carries no time (SEV-SNP, TDX, SGX) need a verifier-chosen nonce, which the relay
flow does not provide yet: see docs/NODE.md.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import functools
import gc
import hashlib
import json
import logging
import math
import os
import re
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as futures_wait
from pathlib import Path
from typing import Any, TypeVar

import httpx

from shardguard.attestation.errors import AttestationError
from shardguard.attestation.policy import VerificationPolicy
from shardguard.channel import (
    AdmittedPeer,
    Challenge,
    ChallengeError,
    NodeKeys,
    binding,
    challenge_nonce,
    challenges_from_wire,
    challenges_to_wire,
)
from shardguard.channel.identity import is_node_id, verify_signature
from shardguard.enclave.platform import Platform, open_platform
from shardguard.keyfiles import write_file_atomic
from shardguard.node import committee
from shardguard.node.admission import REPORT_MARGIN, Admissions, PeerNotAdmitted
from shardguard.node.audit import GENESIS, AuditBacklogFull, AuditLog, AuditRefused
from shardguard.node.engine import EngineError, EngineTimeout, Inbox, Notes, drive, exchange
from shardguard.node.keystore import Keystore, KeystoreError, KeystoreReason
from shardguard.node.link import CoordinatorLink, CoordinatorRefused, EventStream
from shardguard.node.nonces import COMMITMENT_CONTEXT, NonceStock, commitment_message
from shardguard.node.presignatures import PresignaturePool
from shardguard.node.sessions import SessionRegister
from shardguard.node.tasks import (
    OneStepUnavailable,
    Task,
    TaskError,
    check_wire,
    clocked_rng,
    deadline_at,
    precommitted_items,
    run_task,
    session_instance,
    share_scheme,
)
from shardguard.protocols.dkls23 import EcdsaKeyShare
from shardguard.protocols.dkls23.bans import REGISTRY
from shardguard.protocols.errors import ProtocolAbort, ProtocolError
from shardguard.protocols.frost import NonceError
from shardguard.protocols.keys import PublicKeyPackage
from shardguard.protocols.repair import RepairHelper, RepairTarget
from shardguard.protocols.suites import SCHEMES

__all__ = ["CoordinatorLink", "KeystoreShares", "NodeService", "main"]  # CoordinatorLink: from .link

log = logging.getLogger("shardguard.node")
_T = TypeVar("_T")
#: Attestations answering challenges: a burst of this many, then one per second at most
#: (however fast registered nodes send new challenges).
_ANSWER_BURST = 5
#: The coordinator's job kinds, as tasks.py names them; a bundle is several signings in one
#: session (API.md §1.6, "Bundles").
_KINDS = {
    "dkg": "keygen", "sign": "sign", "bundle": "sign", "presign": "presign", "refresh": "refresh", "repair": "repair",
    "witness": "witness",
}  # fmt: skip
#: Threads for pre-signing tasks (the coordinator runs at most ``presign_inflight`` per signer
#: set), and their nice value (the other task threads keep 0).
_BACKGROUND_WORKERS = 4
_BACKGROUND_NICE = 10
#: Most requests in one bundle (FrostBatchSigner's limit).
_BUNDLE_MAX = 64
_LOWER_HEX = re.compile(r"(?:[0-9a-f]{2})*")
#: A request id as the coordinator makes them (``req_`` and 20 hex digits), with room to spare:
#: what a task names as a request goes into this node's audit log.
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class StalePeer(Exception):
    """A peer announced an older keystore state than it had shown us: it was rolled back."""

    def __init__(self, node: str, detail: str) -> None:
        self.node = node
        super().__init__(f"{node} is serving an older state than it announced before: {detail}")


class KeystoreShares:
    """:class:`~shardguard.node.tasks.ShareStore` on the sealed keystore."""

    def __init__(self, keystore: Keystore) -> None:
        self._ks = keystore
        self._lock = threading.Lock()

    def load(self, key_id: str) -> Any:
        with self._lock:
            return self._ks.share(key_id)

    def stage(self, key_id: str, share: Any) -> None:
        with self._lock:
            self._ks.stage(key_id, share)

    def commit(self, key_id: str, epoch: int) -> None:
        with self._lock:
            self._ks.commit(key_id, epoch)

    def abort(self, key_id: str, epoch: int) -> None:
        with self._lock:
            self._ks.abort(key_id, epoch)

    def add_bans(self, key_id: str, setup_id: bytes, parties: frozenset[int]) -> None:
        with self._lock:
            current = self._ks.share(key_id)
            if isinstance(current, EcdsaKeyShare) and current.setup_id == setup_id:
                self._ks.update_share(key_id, current.with_bans(parties))


#: How long a failed signing waits for its audit write in flight, even past its deadline (s).
_WRITE_GRACE = 5.0
#: How long a signature waits for the other holders to confirm a restarted node's state (s).
_QUORUM_WAIT = 10.0
#: How long before the others stop waiting the asker of a witness job acknowledges at the
#: latest (s; at most a third of the job's time).
_ACK_MARGIN = 3.0
#: Most bytes of audit records in one ``POST /v1/audit`` (the coordinator takes 4 MiB bodies).
_AUDIT_POST_BYTES = 2 * 1024 * 1024
#: How many session instances whose deadlines are in reach a node remembers, to refuse one used
#: again (≈ 200 B each; sessions.py).
_INSTANCES = 100_000
#: Processes (identity keys) of one peer remembered as witnessed (_witnessed): restarts of it
#: within this process's life.
_PROCESSES_KEPT = 64


class NodeService:
    def __init__(
        self,
        *,
        coordinator: str,
        state: Path,
        node_id: str,
        platform: Platform,
        policy: VerificationPolicy,
        workers: int = 32,
        reattest_seconds: float = 240.0,
        enroll_token: str | None = None,
    ) -> None:
        self.node_id = node_id
        # The coordinator's token of scope nodes:register (API.md §1.2): it lets this node
        # register; it grants nothing else, and peers trust the node on its evidence alone.
        self._enroll_token = enroll_token
        self.platform = platform
        self.policy = policy
        self.keys = NodeKeys.generate(node_id)
        self.card = self.keys.card()
        self.keystore = Keystore.open(state / "keystore", platform)
        self.shares = KeystoreShares(self.keystore)
        self.audit = AuditLog(self.keystore, self.keys)
        self.link = CoordinatorLink(coordinator, self.keys)
        self._workers = workers
        self._busy = 0
        self._busy_lock = threading.Lock()
        # Peers we admitted, on evidence answering our own challenges (admission.py); and the
        # challenges to us that our registered evidence answers (_answer_challenges).
        self.admissions = Admissions(node_id, policy, ask=self._ask_peer, nudge=self._nudge_peer)
        self.stream = EventStream(
            self.link, node_id, on_task=self._submit, free_slots=self._free_slots, admitted=self.admissions.advertised
        )
        self.relay = self.stream
        self._open_challenges: tuple[Challenge, ...] = ()
        self._register_lock = threading.Lock()
        # Identity key of each peer when we last recorded its counter, and whether peers have
        # confirmed our own state since this process started (see _witness).
        self._witness_keys: dict[str, bytes] = {}
        # Every process (identity key) of each peer whose counter we recorded in this process,
        # the newest _PROCESSES_KEPT: never cleared (distrust, _latch_stale clear the above).
        # A lower counter from one of them is an old message, not a rollback (_check_witness).
        self._witnessed: dict[str, collections.OrderedDict[bytes, None]] = {}
        self._witness_lock = threading.Lock()
        self._changing: set[str] = set()  # keys with a keygen, refresh or repair running here
        self._fresh = False
        # Peers (node id → identity key) that confirmed our state since this process started:
        # a signature waits for t other holders of its key among them (_await_confirmed).
        self._vouched: dict[str, bytes] = {}
        self._vouched_cv = threading.Condition(threading.Lock())
        self._stale: str | None = None  # the last STALE_STATE a peer's note proved, if any
        self._quorum_keys: set[str] = set()  # keys whose quorum of holders has vouched
        self._witness_asked = -math.inf  # when we last asked for witness jobs (monotonic)
        # Peer processes (node id → identity key, reason) caught serving an old state copy.
        self._caught: dict[str, tuple[bytes, str]] = {}
        # Session instances this process has run: a coordinator that hands out a finished
        # session's instance again could replay its peers' messages (sessions.py).
        self._sessions = SessionRegister(_INSTANCES)
        # Keys whose new epoch this node staged and has not yet committed or dropped (waiting
        # for the job's end, _settle), with an event set when that is decided. A task for such
        # a key waits for it: the coordinator may hand it out as soon as the job is done, before
        # the end reaches us (or, over a connection that died, a second later).
        self._settling: dict[str, threading.Event] = {}
        self._settling_lock = threading.Lock()
        self._changing_cv = threading.Condition(threading.Lock())
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="task")
        # Pre-signings run on threads of their own at a lower scheduling priority: they make
        # stock for later requests and should take the cores a signing in flight needs last.
        self._background = ThreadPoolExecutor(
            max_workers=_BACKGROUND_WORKERS, thread_name_prefix="presign", initializer=_lower_priority
        )
        # Audit writes that a task's protocol goes on beside (a signing's entry, see _run).
        self._writes = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="audit-write")
        # Challenges sent ahead of an admission's end (admission.py), off the tasks' path.
        self._nudges = ThreadPoolExecutor(max_workers=2, thread_name_prefix="challenge")
        self._stop = threading.Event()
        self._audit_due = threading.Event()
        # FROST nonce pairs committed ahead, published once peers confirmed our state (nonces.py).
        self.nonces = NonceStock(self._publish_commitments, node_id=node_id, sign=self.keys.sign, ready=lambda: self._fresh)
        # DKLs23 pre-signatures made with co-signers, each for one digest, in memory only.
        self.presignatures = PresignaturePool()
        self._reattest = reattest_seconds
        self._registered_at = 0.0

    # -- registration ---------------------------------------------------------------------
    def register(self) -> None:
        """Attest our card with the challenges open for us (``channel.challenge``) and register
        card and evidence with the coordinator."""
        with self._register_lock:
            challenges = self._open_challenges
            nonce = challenge_nonce(challenges)
            evidence = self.platform.attest(binding(self.card, nonce))
            body: dict[str, Any] = {
                "peer_card": base64.b64encode(self.card.encode()).decode(),
                "platform": evidence.platform,
                "evidence": base64.b64encode(evidence.blob).decode(),
                "evidence_nonce": nonce.hex(),
                "challenges": challenges_to_wire(challenges),
            }
            coll = evidence.collateral.get("auxblob") or evidence.collateral.get("collateral")
            if coll:
                body["collateral"] = base64.b64encode(coll).decode()
            self.link.request("POST", "/v1/nodes/register", body=body, bearer=self._enroll_token)
            self._registered_at = time.monotonic()
        log.info("registered %s (%s evidence, answering %d challenges)", self.node_id, evidence.platform, len(challenges))

    def _answer_challenges(self) -> None:
        """Follow the challenges open for us; whenever they change, attest over all of them and
        register that evidence. A burst of ``_ANSWER_BURST`` attestations, then at most one per
        second: challenges that come meanwhile are answered together by the next one. Nothing
        ends this loop but ``stop()``: a node that no longer answered would soon be admitted by
        no peer."""
        known = ""
        tokens, refilled = float(_ANSWER_BURST), time.monotonic()
        while not self._stop.is_set():
            try:
                out = self.link.request(
                    "GET", f"/v1/nodes/{self.node_id}/challenges", params={"known": known, "wait": 25}, timeout=60
                )
                digest = str(out["digest"])
                if digest == known:
                    self._stop.wait(0.05)  # nothing new (however soon the coordinator said so)
                    continue
                now = time.monotonic()
                tokens = min(float(_ANSWER_BURST), tokens + (now - refilled))
                refilled = now
                if tokens < 1:
                    self._stop.wait(1 - tokens)
                    continue  # fetch again: what came meanwhile is answered in the same attestation
                try:
                    challenges = challenges_from_wire(out["challenges"])
                except ChallengeError as e:
                    log.warning("challenges: the coordinator sent a malformed list (%s); not answered", e)
                    known = digest
                    self._stop.wait(1.0)
                    continue
                tokens -= 1
                self._open_challenges = challenges
                self.register()
                known = digest
            except Exception as e:  # unreachable coordinator, odd answer, platform error: retry
                log.warning("challenges: could not answer (retrying in 1 s): %s: %s", type(e).__name__, e)
                self._stop.wait(1.0)

    # -- peers ----------------------------------------------------------------------------
    def _ask_peer(self, node: str, nonce: bytes, wait: float) -> Mapping[str, Any]:
        """Post our challenge to ``node`` and wait (up to ``wait`` s) for evidence answering it.
        A cut connection, a 5xx, or a coordinator that answers before the evidence does, is met
        by posting the same challenge again (harmless), backing off from 0.1 to 2 s, until the
        wait is over."""
        end = time.monotonic() + wait
        pause = 0.1
        while True:
            left = max(0.0, end - time.monotonic())
            try:
                out = self.link.request(
                    "POST", f"/v1/nodes/{node}/challenges", body={"nonce": nonce.hex(), "wait": left}, timeout=left + 30
                )
            except (httpx.TransportError, ValueError, CoordinatorRefused) as e:
                if isinstance(e, CoordinatorRefused) and e.status < 500:
                    raise
                out = None
                failure = e
            except httpx.HTTPError as e:
                raise EngineError(f"challenging {node}: {type(e).__name__}") from None
            if out is not None and not isinstance(out, dict):
                raise EngineError(f"the coordinator answered our challenge to {node} with no record")
            if out is not None and out.get("answered") is True:
                return out
            if time.monotonic() >= end or self._stop.wait(min(pause, max(0.0, end - time.monotonic()))):
                if out is None:
                    raise EngineError(f"challenging {node}: coordinator unreachable: {type(failure).__name__}") from None
                return out
            pause = min(2.0, pause * 2)

    def _nudge_peer(self, node: str, nonce: bytes, failed: Callable[[], None]) -> None:
        def post() -> None:
            try:
                self._ask_peer(node, nonce, 0.0)
            except Exception as e:
                log.warning("could not challenge %s ahead of time: %s", node, e)
                failed()

        self._nudges.submit(post)

    # -- tasks ----------------------------------------------------------------------------
    def handle(self, raw: Mapping[str, Any]) -> None:
        task_id = str(raw["task_id"])
        job = str(raw["job_id"])
        try:
            check_wire(raw)
        except TaskError as e:
            # Reported, with an entry naming only what is safe to name (the fields are junk).
            kind = raw.get("kind") if isinstance(raw.get("kind"), str) and len(raw["kind"]) <= 32 else None
            refusal = self._error(e, raw)
            log.warning("task %s refused: %s", task_id, refusal)
            self._finish({"task_id": task_id, "job_id": job, "kind": kind}, task_id, job, "failed", None, refusal)
            return
        # One key-changing task (keygen, refresh, repair) per key at a time here, through its
        # settling: a second one staged over the first's epoch (review finding). The coordinator
        # runs them one at a time; one that does not is refused.
        changing = str(raw.get("key_id") or "") if raw.get("kind") in ("dkg", "refresh", "repair") else ""
        entered = False
        try:
            if changing:
                self._changing_enter(changing, time.monotonic() + max(5.0, deadline_at(raw) - time.time()))
                entered = True
            status, result, error = "done", self._run(raw), None
        except Exception as e:  # every failure is reported with a reason, never lost
            status, result, error = "failed", None, self._error(e, raw)
            log.warning("task %s (%s) failed: %s", task_id, raw.get("kind"), error)
        try:
            self._finish(raw, task_id, job, status, result, error)
        finally:
            if entered:
                self._changing_exit(changing)

    def _changing_enter(self, key_id: str, deadline: float) -> None:
        """Wait (until ``deadline``) for the key's previous keygen, refresh or repair to end
        here, settling included — the next may be handed out as soon as the job is done."""
        with self._changing_cv:
            if not self._changing_cv.wait_for(lambda: key_id not in self._changing, max(0.0, deadline - time.monotonic())):
                raise TaskError(f"another keygen, refresh or repair of key {key_id} is still running here", "key_id")
            self._changing.add(key_id)

    def _changing_exit(self, key_id: str) -> None:
        with self._changing_cv:
            self._changing.discard(key_id)
            self._changing_cv.notify_all()

    def _finish(
        self, raw: Mapping[str, Any], task_id: str, job: str, status: str, result: Any, error: Mapping[str, Any] | None
    ) -> None:
        try:
            witnessed = self.keystore.witness_generation
            self._record(raw, status, result, error)
            # Peer counters this task recorded (deferred: witness notes read after the
            # protocol) are durable by now: the audit write above wrote them first. This only
            # makes sure, before anything of the task leaves the node.
            self.keystore.flush_witness(witnessed)
        except Exception as e:
            # The decision could not be logged (e.g. the state disk is full): release nothing
            # whose audit entry is missing, and say why instead of leaving the task unreported.
            status, result, error = "failed", None, self._error(e, raw)
            log.warning("task %s (%s) failed: its audit entry could not be written: %s", task_id, raw.get("kind"), error)
        lost_here = raw["kind"] == "repair" and (raw.get("params") or {}).get("lost") == self.node_id
        settling = None
        if status == "done" and (raw["kind"] in ("dkg", "refresh") or lost_here):
            # Before the result leaves: the next task for this key can come only after it.
            settling = self._settling_begin(str(raw["key_id"]))
        try:
            ack = self.stream.report(task_id, {"status": status, "result": result, "error": error})
            if settling is not None:
                self._settle(job, raw, result or {}, ack.get("job_status"))
        finally:
            if settling is not None:
                self._settling_end(str(raw["key_id"]), settling)
            self.stream.close(job)

    def _settling_begin(self, key_id: str) -> threading.Event:
        event = threading.Event()
        with self._settling_lock:
            self._settling[key_id] = event
        return event

    def _settling_end(self, key_id: str, event: threading.Event) -> None:
        with self._settling_lock:
            if self._settling.get(key_id) is event:
                del self._settling[key_id]
        event.set()

    def _await_settled(self, key_id: str, deadline: float) -> None:
        """Wait (until ``deadline``) while this node is still deciding the key's new epoch."""
        with self._settling_lock:
            event = self._settling.get(key_id)
        if event is not None and not event.wait(max(0.0, deadline - time.monotonic())):
            log.warning("key %s: the previous job's end has not arrived; running the task with the current epoch", key_id)

    # -- audit ----------------------------------------------------------------------------
    def _record(
        self, raw: Mapping[str, Any], status: str, result: Mapping[str, Any] | None, error: Mapping[str, Any] | None
    ) -> None:
        """One audit entry per decision (public facts only), then mirror what is pending. A
        signing that ran has its entry already (``signing``, written before its shares left)."""
        if status == "done" and raw.get("kind") in ("sign", "bundle"):
            return
        if status == "done" and raw.get("kind") == "presign":
            # Nothing is signed or changed; the signing that uses it names it in its entry.
            return
        fields = self._audit_fields(raw)
        event = {"dkg": "key_generated", "refresh": "refresh_staged", "repair": "repair"}.get(
            str(raw.get("kind")), "task"
        )
        if status == "done" and result is not None:
            fields["public_key"] = result.get("public_key")
            if "signature" in result:
                fields["signature"] = result["signature"]
            self._audit(event, **fields)
        else:
            err = error or {}
            self._audit("refused", task=raw.get("kind"), reason=err.get("reason"), culprits=err.get("culprits"), **fields)
            if err.get("reason") in ("OT_CONSISTENCY", "MULTIPLICATION_CHECK", "PAIRWISE_CONSISTENCY"):
                self._audit("peer_banned", culprits=err.get("culprits"), **fields)

    @staticmethod
    def _audit_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
        params = raw.get("params") or {}
        fields: dict[str, Any] = {"job": raw.get("job_id"), "key_id": raw.get("key_id"), "scheme": raw.get("scheme")}
        if raw.get("kind") == "sign":
            payload = params.get("digest_hex") or params.get("message_hex") or ""
            fields["payload_sha256"] = hashlib.sha256(bytes.fromhex(payload)).hexdigest() if payload else ""
            fields["signers"] = [p.get("node_id") for p in raw.get("participants", [])]
            if _is_request_id(raw.get("carries")):  # a rerun: the request it signs for (API.md §1.6)
                fields["request"] = raw["carries"]
        elif raw.get("kind") == "bundle":  # one entry for the decision to sign them all
            try:
                items = _bundle_items(params)
            except TaskError:
                items = []  # refused as malformed (the task's error says why)
            fields["requests"] = [
                {"request": item["request_id"], "payload_sha256": hashlib.sha256(bytes.fromhex(item["message_hex"])).hexdigest()}
                for item in items
            ]
            fields["signers"] = [p.get("node_id") for p in raw.get("participants", [])]
        return fields

    def _audit(self, event: str, **fields: Any) -> None:
        self._entry(self.audit.append, event, fields)

    def _audit_journaled(self, event: str, **fields: Any) -> None:
        """:meth:`_audit` for a signing in one step: no peer witnesses its state (AuditLog.append_journaled)."""
        self._entry(self.audit.append_journaled, event, fields)

    def _entry(self, append: Callable[..., Any], event: str, fields: Mapping[str, Any]) -> None:
        try:
            append(event, **fields)
        except AuditRefused as e:  # the decision is not taken: the task fails with this reason
            log.warning("audit entry %s refused: %s", event, e)
            raise
        except Exception:  # an audit write failure must be visible, never silent
            log.exception("audit entry %s could not be written", event)
            raise
        self._audit_due.set()  # mirrored by the background flusher, off the signing path

    def _audit_flusher(self) -> None:
        while not self._stop.is_set():
            if self._audit_due.wait(2.0):
                # Gather what the tasks running now will append, then mirror it in one post.
                self._stop.wait(0.2)
            self._audit_due.clear()
            self.flush_audit()

    def flush_audit(self) -> None:
        """Mirror the oldest pending entries: one post of at most 256 (the coordinator's limit)
        and :data:`_AUDIT_POST_BYTES` of records (its body limit is 4 MiB; an entry may be 64 KB)."""
        batch: list[dict[str, Any]] = []
        size = 0
        for r in self.audit.pending()[:256]:
            n = len(r["entry"]) + len(r["signature"]) + 200  # the record as JSON, about
            if batch and size + n > _AUDIT_POST_BYTES:
                break
            batch.append(r)
            size += n
        if not batch:
            return
        try:
            answer = self.link.request("POST", "/v1/audit", body={"entries": batch})
        except (httpx.HTTPError, EngineError) as e:
            log.warning("audit mirror deferred: %s", e)
            return
        # Forgotten only once the coordinator says it kept every one (review finding: any 2xx
        # answer was taken for "kept"); else they stay pending and go again.
        kept: list[Any] = [answer.get("accepted"), answer.get("duplicates")] if isinstance(answer, dict) else []
        if not (len(kept) == 2 and all(type(n) is int for n in kept) and sum(kept) == len(batch)):
            log.warning("audit mirror deferred: the coordinator kept %s of %d entries", kept, len(batch))
            return
        self.audit.mirrored(r["seq"] for r in batch)

    def _run(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        kind = _KINDS.get(str(raw["kind"]))
        if kind is None:
            raise TaskError(f"task kind {raw['kind']!r} is not supported by this node", "kind")
        if self._stale is not None:
            # A peer proved this state old: take part in nothing, send no note (a peer whose
            # record lags would take our counter for a newer state of ours).
            raise KeystoreError(KeystoreReason.STALE_STATE, self.keystore.directory, self._stale)
        at = deadline_at(raw)
        self._sessions.check(at)  # again when the session is recorded (_remember_instance)
        me = int(raw["you"]["index"])
        participants = {int(p["index"]): str(p["node_id"]) for p in raw["participants"]}
        if len(participants) != len(raw["participants"]):
            raise TaskError("a participant index is named twice", "participants")
        params = dict(raw.get("params") or {})
        task_params: dict[str, Any] = {}
        if "carries" in raw and (
            raw["kind"] != "sign" or "commitments" in params or "presignature" in params or not _is_request_id(raw["carries"])
        ):
            # What the signing entry names as the request a rerun (in rounds) signs for.
            raise TaskError(
                "only a signing in rounds carries a request, named by its id (1 to 64 of A-Z a-z 0-9 _ -)", "carries"
            )
        if raw["kind"] == "bundle":
            # Only what the audit entry names is signed: the bundle's messages, nothing beside
            # them (a digest or message the coordinator adds would be signed unrecorded).
            if set(params) - {"signers", "bundle", "commitments"}:
                raise TaskError("a bundle holds its signers and requests (and commitments) only", "params")
            if raw["scheme"] == "ecdsa":  # and tasks.py refuses one for an ECDSA share whatever is claimed
                raise TaskError("ecdsa keys sign one digest per task, never a bundle", "scheme")
            task_params = {"signers": sorted(participants), "path": "m"}
            task_params["messages"] = [item["message_hex"] for item in _bundle_items(params)]
        elif kind == "sign":
            # One payload, and only what the audit entry names (review finding: a decoy
            # digest_hex beside the message a FROST key signs was what the entry hashed).
            unknown = set(params) - {"signers", "digest_hex", "message_hex", "path", "commitments", "presignature"}
            if unknown or ("digest_hex" in params) == ("message_hex" in params):
                raise TaskError("a signing names exactly one of digest_hex and message_hex, and nothing else", "params")
            if "commitments" in params and "message_hex" not in params:
                raise TaskError("commitments made ahead are for FROST signing", "commitments")
            if "presignature" in params and ("digest_hex" not in params or params.get("path", "m") != "m"):
                raise TaskError("a pre-signature signs an ecdsa digest with the key itself (no path)", "presignature")
            task_params["signers"] = sorted(participants)
            if "digest_hex" in params:
                task_params["digest"] = params["digest_hex"]
            if "message_hex" in params:
                task_params["message"] = params["message_hex"]
            task_params["path"] = params.get("path") or "m"
        elif kind == "presign":
            if set(params) != {"signers"} or raw["scheme"] != "ecdsa":
                raise TaskError("a pre-signing is for an ecdsa key and names its signers only", "params")
            task_params = {"signers": sorted(participants)}
        elif kind == "witness" and (set(params) != {"for"} or params["for"] not in participants.values()):
            raise TaskError("a witness job names the participant it is for, and nothing else", "params")
        task = Task(
            job=str(raw["job_id"]),
            kind=kind,
            scheme=str(raw["scheme"]),
            threshold=int(raw["threshold"]),
            participants=participants,
            me=me,
            instance=session_instance(bytes.fromhex(str(raw["instance"])), at),
            key_id=str(raw["key_id"]),
            params=task_params,
        )
        # Who holds which index is ours to know, not the coordinator's to say (committee.py).
        # A keygen records it once its peers are admitted and its session is recorded (below):
        # one refused before that must leave no record behind (review finding).
        if kind == "keygen":
            committee.refuse_existing(self.keystore, task.key_id)
        elif not (kind == "repair" and params.get("lost") == self.node_id):  # the lost node records it in _repair
            lost = str(params.get("lost", "")) if kind == "repair" else None
            committee.check(self.keystore, task.key_id, participants, me, self.node_id, lost=lost)
        deadline = time.monotonic() + max(5.0, at - time.time())
        if kind == "witness":
            return self._witness_job(raw, task, params, deadline, at)
        peers = {int(p["index"]): self.admissions.admit(p, deadline) for p in raw["participants"] if int(p["index"]) != me}
        self._check_rollbacks(peers)
        # A signing in one step (FROST commitments made ahead, an ECDSA pre-signature) sends
        # nothing to the peers and takes nothing from them: no envelope to replay.
        one_step = kind == "sign" and (
            ("commitments" in params and task.scheme in SCHEMES) or "presignature" in params
        )
        if not one_step:
            self._remember_instance(task, at)
        if kind == "keygen":  # one key-changing task per key at a time (handle): no race here
            committee.record(self.keystore, task.key_id, participants)
        if task.key_id:
            self._await_settled(task.key_id, deadline)
            if kind != "keygen":
                self._resolve_pending(task.key_id, raw.get("epoch"))
            if kind == "refresh":
                self._revoke_confirmation(task.key_id)
            if kind in ("refresh", "repair"):
                self.presignatures.drop(task.key_id)  # made with the shares about to change
        if kind == "sign" and task.scheme in SCHEMES:  # FROST
            self.nonces.enable(task.scheme)  # signs with it: keep nonces committed ahead from now on
        if one_step and "commitments" in params:
            return self._sign_precommitted(raw, task, params, peers, deadline)
        if one_step:
            return self._sign_presigned(raw, task, params, deadline)
        inbox = Inbox()
        if kind == "repair":
            return self._repair(raw, participants, me, peers, inbox, deadline, task.instance)
        if kind == "presign":
            # No witness notes: recording peers' counters is a disk write, and a pre-signing
            # changes nothing and signs nothing. What guards the one-step signing it enables is
            # the quorum's confirmation of our state, awaited below as for any signing.
            later: Callable[[], None] = _nothing
            early: Callable[[], bool] | None = None
        else:
            later, early = self._witness(task, peers, inbox, deadline)
        if kind in ("sign", "presign"):
            self._await_confirmed(task.key_id, deadline)
        release = None
        writing: list[Future[None]] = []
        if kind == "sign":
            # The decision to sign is logged, durably, while the first round is computed and
            # in flight and the peers' first round is worked on, and before any share that
            # helps make the signature leaves this node. Started once the party is built (every
            # check of the task passed), so a task refused before it has no entry.
            fields = self._audit_fields(raw)

            def start() -> None:
                writing.append(self._writes.submit(self._audit, "signing", **fields))

            def gate() -> None:
                try:
                    writing[0].result(timeout=max(0.0, deadline - time.monotonic()))
                except FutureTimeout:
                    raise EngineTimeout(task.job, 1) from None

            release = (start, gate)
        try:
            result = run_task(
                task, store=self.shares, me=self.keys, card=self.card, peers=peers, relay=self.relay, deadline=deadline,
                inbox=inbox, release=release, idle=early, keep=functools.partial(self.presignatures.add, task.key_id),
            )  # fmt: skip
        finally:
            if writing and not writing[0].cancel() and not writing[0].done():
                # A signing that stopped before its gate, its entry still being written (one
                # not yet started is cancelled: nothing after the first round left, so no entry
                # is owed). Let it settle — written, or its failure logged — before the task's
                # own outcome is recorded after it; past the deadline too, briefly.
                futures_wait(writing, timeout=max(deadline - time.monotonic(), _WRITE_GRACE))
        later()
        if kind in ("keygen", "refresh"):
            self._confirm_staged(task, peers, inbox, deadline, result)
        return result

    def _remember_instance(self, task: Task, at: int) -> None:
        """Refuse a session instance this process has run before (sessions.py). Called only
        once the task passed its checks: tasks refused at once must not push a finished
        session's instance out of memory (review finding)."""
        self._sessions.run_once(task.instance, at)

    # -- signing in one step, with nonces committed ahead ----------------------------------------
    def _sign_precommitted(
        self, raw: Mapping[str, Any], task: Task, params: Mapping[str, Any], peers: Mapping[int, AdmittedPeer], deadline: float
    ) -> dict[str, Any]:
        """A FROST signing (or bundle) in one step (docs/NODE.md, "Signing in one step"): each
        message's commitment list names one of our nonce pairs committed ahead; our shares go
        to the coordinator, which sums them. Nothing goes to the peers, and no witness notes are
        exchanged: this node offers commitments only once its peers have confirmed its state
        (a two-round task), and a precommitted signing changes no share, epoch or ban.

        Every check passes before anything is logged; the ``signing`` entry is then written
        while the shares are computed (their nonces are taken for good), and the shares leave
        only once it is durable."""
        if not self._fresh:
            raise OneStepUnavailable(
                "peers have not confirmed this node's state since it started: it signs in two rounds", "commitments"
            )
        self._await_confirmed(task.key_id, deadline)
        share = self.shares.load(task.key_id)
        if share_scheme(share) != task.scheme:  # the scheme the commitments are signed for, and logged
            raise TaskError(f"the key is {share_scheme(share)}, the task says {task.scheme}", "scheme")
        if raw.get("epoch") != share.public.epoch:
            # The coordinator checks our share against the verifying share of its epoch and
            # names us if it fails (API.md §1.13). A holder left on the previous epoch (a refresh
            # it could not commit, NODE.md) says why instead. Two rounds sign with the share we
            # hold whatever the task says: the signers check each other's shares there.
            raise TaskError(f"the task signs at epoch {raw.get('epoch')!r}; our share is of epoch {share.public.epoch}", "epoch")
        messages = [bytes.fromhex(m) for m in task.params["messages"]] if "messages" in task.params else [
            bytes.fromhex(str(task.params["message"]))]  # fmt: skip
        scheme = task.scheme

        def signed_by(index: int, cid: bytes, hiding: bytes, binding: bytes, signature: bytes) -> bool:
            peer = peers[index]  # admitted: its identity key is the one its evidence binds
            message = commitment_message(peer.node_id, scheme, cid, hiding, binding)
            return verify_signature(peer.card.identity_public_key, COMMITMENT_CONTEXT, message, signature)

        items = precommitted_items(share, task.me, task.participants, messages, params.get("commitments"), signed_by)
        with self.nonces.claimed(share, items):  # every pair ours, unused, ours alone: a refusal before the entry
            fields = self._audit_fields(raw) | {"precommitted": True}
            sign = functools.partial(self.nonces.sign, share, sorted(task.participants), items)
            shares = self._entry_first(fields, sign, task.job, deadline)
        g = share.public.suite.group
        return {"shares": [{"r": s.group_commitment.hex(), "z": g.scalar_encode(s.share).hex()} for s in shares]}

    # -- ECDSA in one step, with a pre-signature -------------------------------------------------
    def _sign_presigned(self, raw: Mapping[str, Any], task: Task, params: Mapping[str, Any], deadline: float) -> dict[str, Any]:
        """A DKLs23 signing in one step (docs/NODE.md, "ECDSA in one step"; API.md §1.15): the
        task names one of our pre-signatures, made with these signers at this epoch, and the
        coordinator's fresh seed; our ``(u, w)`` goes to the coordinator, which combines them.
        No peer round and no witness notes: the ``presign`` task that made it, in this process
        (they live in memory only), waited for the key's quorum to confirm our state, as a
        three-round signing does, and so does this; a peer proving it old since stops every
        task (``_stale``, checked first in :meth:`_run`).

        The pre-signature leaves the pool first, for good (spec P9); any check that fails after
        that wastes it and releases nothing. The ``signing`` entry is written while the share
        is computed, and the share leaves only once the entry is durable."""
        self._await_confirmed(task.key_id, deadline)
        ref = params["presignature"]
        if not isinstance(ref, dict) or set(ref) != {"id", "R", "seed"} or not all(isinstance(v, str) for v in ref.values()):
            raise TaskError('must be {"id", "R", "seed"}, each hex', "presignature")
        try:
            pid, big_r, seed = bytes.fromhex(ref["id"]), bytes.fromhex(ref["R"]), bytes.fromhex(ref["seed"])
            digest = bytes.fromhex(str(params["digest_hex"]))
        except ValueError:
            raise TaskError("must be hex", "presignature") from None
        if len(pid) != 32 or len(seed) != 32 or len(digest) != 32:
            raise TaskError("the id, the seed and the digest are 32 bytes each", "presignature")
        share = self.shares.load(task.key_id)
        if not isinstance(share, EcdsaKeyShare) or task.scheme != "ecdsa":
            raise TaskError("pre-signatures are for ecdsa (DKLs23) keys", "scheme")
        presig = self.presignatures.take(task.key_id, pid)
        signers = sorted(task.participants)
        if presig.epoch != share.public.epoch or raw.get("epoch") != share.public.epoch or presig.setup_id != share.setup_id:
            raise TaskError(f"the pre-signature is of epoch {presig.epoch}; our share is of epoch {share.public.epoch}", "epoch")
        if list(presig.signers) != signers:
            raise TaskError("the pre-signature was made with other signers", "participants")
        if share.public.suite.group.encode(presig.big_r) != big_r:
            raise TaskError("the pre-signature's nonce point is not the one named", "presignature.R")
        banned = REGISTRY.among(share.setup_id, task.me, share.banned, signers)
        if banned:
            raise TaskError(f"parties {sorted(banned)} are banned by this share after a failed check", "participants")
        fields = self._audit_fields(raw) | {"presignature": pid.hex()}
        made = self._entry_first(fields, lambda: presig.share(digest, seed), task.job, deadline)
        g = share.public.suite.group
        out = {"u": g.scalar_encode(made.u).hex(), "w": g.scalar_encode(made.w).hex(), "R": g.encode(made.big_r).hex()}
        return {"share": out}

    def _entry_first(self, fields: Mapping[str, Any], compute: Callable[[], _T], job: str, deadline: float) -> _T:
        """A one-step signing's ``signing`` entry (a journal append) written while ``compute``
        makes what it releases; that is returned only once the entry is durable."""
        writing = self._writes.submit(self._audit_journaled, "signing", **fields)
        try:
            out = compute()
        except BaseException:
            # Our entry, if it is being written, settles before the refusal's (ordered log).
            futures_wait([writing], timeout=max(deadline - time.monotonic(), _WRITE_GRACE))
            raise
        try:
            writing.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            raise EngineTimeout(job, 1) from None
        return out

    def _publish_commitments(self, scheme: str, commitments: list[dict[str, str]]) -> Any:
        return self.link.request(
            "POST", f"/v1/nodes/{self.node_id}/commitments", body={"scheme": scheme, "commitments": commitments}
        )

    # -- two-phase commit of a new epoch ----------------------------------------------------------
    # Phase one: every holder stages the new epoch (run_task), then tells every other holder,
    # signed and sealed, that it has: job, key, epoch and the digest of the public package
    # (_confirm_staged). Phase two (_settle): a node commits — makes the epoch current and
    # deletes the old one — only when it holds every other holder's confirmation AND the
    # coordinator says the job is done; it never drops a staged epoch, since another holder
    # may have committed on its confirmation. A node that missed the job's end commits at its
    # next task for the key at that epoch (_resolve_pending): the coordinator moves a key's
    # epoch only once the job is done, and the confirmations say every holder has it. So
    # neither a lying coordinator nor a crash can leave fewer than t holders of an epoch.

    def _confirm_staged(
        self, task: Task, peers: Mapping[int, AdmittedPeer], inbox: Inbox, deadline: float, result: Mapping[str, Any]
    ) -> None:
        epoch = int(result["epoch"])
        key_id = task.key_id or str(result["key_id"])
        package = _package_digest(result["public"])
        statement = json.dumps({"job": task.job, "key_id": key_id, "epoch": epoch, "public": package}, sort_keys=True).encode()
        # Written before our statement leaves (complete once every statement arrived): the epoch
        # is then never dropped here, and replaced only by a refresh that revoked this record
        # first (_revoke_confirmation).
        record = {"job": task.job, "epoch": epoch, "public": package, "complete": False}
        self.keystore.put_state(_staged_name(key_id), record)
        sid = hashlib.sha256(b"shardguard/node/staged/v1\x00" + task.job.encode() + b"\x00" + task.instance).digest()
        got = exchange(job=task.job, session_id=sid, me=self.keys, card=self.card, peers=peers, relay=self.relay,
                       inbox=inbox, messages=dict.fromkeys(peers, statement), deadline=deadline)  # fmt: skip
        differ = sorted(peers[i].node_id for i, said in got.items() if said != statement)
        if differ:
            raise TaskError(f"holders {differ} staged another epoch or public package", "staged")
        self.keystore.put_state(_staged_name(key_id), {**record, "complete": True})

    def _confirmed(self, key_id: str, epoch: int, job: str | None = None) -> bool:
        """Whether every other holder confirmed staging ``epoch`` (in ``job``, if given) — the
        very share this node has pending at that epoch (its package digest), not another."""
        rec = self.keystore.get_state(_staged_name(key_id))
        if not isinstance(rec, dict) or rec.get("epoch") != epoch or rec.get("complete") is not True:
            return False
        if job is not None and rec.get("job") != job:
            return False
        try:
            pending = self.keystore.share(key_id, epoch)
        except KeystoreError:
            return False
        return rec.get("public") == _package_digest(pending.public.to_dict())

    def _revoke_confirmation(self, key_id: str) -> None:
        """Before a refresh sends anything: give up the confirmation of a pending epoch, for
        good, so that this node never commits it later. The refresh may then stage its own epoch
        over it. Why that is safe: the refresh needs every holder, each from the current epoch.
        A holder that committed the pending epoch no longer has the current one, so it cannot
        take part and the refresh never stages anywhere. Every holder that does take part
        revokes first, so none of them commits the old pending epoch afterwards (second
        review: two refreshes had left different shares of one epoch at two nodes)."""
        rec = self.keystore.get_state(_staged_name(key_id))
        status = self.keystore.find_key(key_id)
        if isinstance(rec, dict) and status is not None and rec.get("epoch") in status.pending:
            self.keystore.delete_state(_staged_name(key_id))
            self._audit("epoch_confirmation_revoked", key_id=key_id, epoch=rec.get("epoch"), job=rec.get("job"))

    def _resolve_pending(self, key_id: str, epoch: Any) -> None:
        """Commit a pending epoch the coordinator already uses (it moved the key's epoch, so the
        job was done) and that every holder confirmed staging: this node missed the job's end."""
        status = self.keystore.find_key(key_id)  # on every task: no scan of every key
        if not isinstance(epoch, int) or status is None:
            return
        if epoch in status.pending and (status.current is None or status.current < epoch) and self._confirmed(key_id, epoch):
            self.shares.commit(key_id, epoch)
            self._audit("epoch_committed", key_id=key_id, epoch=epoch, late=True)
            log.info("key %s epoch %d committed late (its job's end was missed)", key_id, epoch)

    def _repair(
        self,
        raw: Mapping[str, Any],
        participants: Mapping[int, str],
        me: int,
        peers: Mapping[int, AdmittedPeer],
        inbox: Inbox,
        deadline: float,
        instance: bytes,
    ) -> dict[str, Any]:
        """Share repair (RTS) for a node that lost its state (FROST keys). The helpers tell the
        lost node the public key package over the sealed channels — all must agree, so the
        coordinator cannot substitute one — and its record of their counters starts afresh.
        ``instance``: the task's, bound to its deadline (sessions.py), as every session's."""
        key_id = str(raw["key_id"])
        lost_node = str((raw.get("params") or {}).get("lost", ""))
        index = {n: i for i, n in participants.items()}
        if lost_node not in index:
            raise TaskError("the lost node is not among the participants", "lost")
        lost = index[lost_node]
        helpers = sorted(i for i in participants if i != lost)
        job = str(raw["job_id"])
        sid = hashlib.sha256(b"shardguard/node/repair-package/v1\x00" + job.encode() + b"\x00" + instance).digest()
        held = self.keystore.find_key(key_id) if me == lost else None
        if me == lost:
            # Before any message: the helpers must not forget us. A share an earlier repair
            # staged, whose job's end this node never learned (a restart, a lost answer), is
            # only pending, never used: it is repaired again (and replaced when staged).
            if held is not None and held.current is not None:
                raise TaskError(f"this node still holds key {key_id}: it has nothing to repair", "lost")
            got = exchange(job=job, session_id=sid, me=self.keys, card=self.card, peers=peers, relay=self.relay, inbox=inbox,
                           messages=dict.fromkeys(peers, b"{}"), deadline=deadline)  # fmt: skip
            packages = {bytes(v) for v in got.values()}
            if len(packages) != 1:
                raise TaskError("the helpers disagree on the key's public package or committee", "package")
            try:
                told = json.loads(packages.pop())
                public = PublicKeyPackage.from_dict(told["public"])
                holders = {int(i): str(n) for i, n in told["committee"].items()}
            except (ValueError, KeyError, TypeError, AttributeError, ProtocolError):
                raise TaskError("the helpers' package is malformed", "package") from None
            party: Any = RepairTarget(public, identifier=lost, helpers=helpers, instance=instance)
        else:
            share = self.shares.load(key_id)
            if isinstance(share, EcdsaKeyShare):
                raise TaskError("share repair through the service is offered for FROST keys only", "key_id")
            # The public package and the committee on record, both: the lost node takes its
            # committee from its helpers (all must agree), not from the coordinator's task.
            known = committee.recorded(self.keystore, key_id)
            package = json.dumps({"public": share.public.to_dict(), "committee": {str(i): n for i, n in (known or {}).items()}},
                                 sort_keys=True).encode()  # fmt: skip
            exchange(job=job, session_id=sid, me=self.keys, card=self.card, peers={lost: peers[lost]}, relay=self.relay,
                     inbox=inbox, messages={lost: package}, deadline=deadline)  # fmt: skip
            party = RepairHelper(share, helpers=helpers, lost=lost, instance=instance, rng=clocked_rng(secrets.token_bytes))
            public = share.public
        result = drive(party, job=job, me=self.keys, card=self.card, peers=peers if me == lost else
                       {i: p for i, p in peers.items() if i in (*helpers, lost)}, relay=self.relay, inbox=inbox,
                       deadline=deadline)  # fmt: skip
        if me == lost:
            told_holders = committee.from_helpers(holders, me, self.node_id, participants, set(public.verifying_shares))
            for epoch in held.pending if held else ():
                self.shares.abort(key_id, epoch)  # the earlier repair's, never confirmed: this one replaces it
            committee.record(self.keystore, key_id, told_holders, replace=True)
            self.shares.stage(key_id, result)
        else:
            # Its state is gone (it repaired, so it had no share): witness it afresh. Only now —
            # forgetting a node the coordinator merely calls lost would let an old copy of its
            # state directory pass as fresh.
            self._forget(lost_node)
        return {"repaired": lost_node, "public_key": public.public_key_bytes.hex(), "epoch": public.epoch}

    def _witness(
        self, task: Task, peers: Mapping[int, AdmittedPeer], inbox: Inbox, deadline: float
    ) -> tuple[Callable[[], None], Callable[[], bool] | None]:
        """Rollback defence (ARCHITECTURE §7, ROTE-style): every participant tells every other
        its keystore's (counter, digest) and the last one it recorded for that peer. A peer that
        went backwards, or a peer that saw us at a newer state than the one we loaded (this
        state directory is an old copy), stops the task here.

        The notes are always sent (in the same post as the protocol's first round). They are
        awaited before the protocol only while they can still change a decision: until peers
        have confirmed our own state since this process started, and for a peer whose current
        process (identity key) we have not yet witnessed. A rollback needs a restart, and a
        restart brings a new identity key — so a peer already witnessed in its current process
        cannot have been rolled back since. Otherwise the notes are read once they have all
        arrived (the second callable, the engine's ``idle``: while a later round crosses the
        network, with the witness write) or at the latest after the protocol (the first), to
        keep the recorded counters current."""
        sid = hashlib.sha256(b"shardguard/node/witness/v1\x00" + task.job.encode() + b"\x00" + task.instance).digest()
        needed = (
            not self._fresh
            or any(self._witness_keys.get(p.node_id) != p.card.identity_public_key for p in peers.values())
            or (task.kind == "sign" and not self._quorum_met(task.key_id))  # the co-signers' notes count now
        )
        # Not awaited: the notes ride with the protocol's first round (one frame fewer).
        notes = Notes(job=task.job, session_id=sid, me=self.keys, card=self.card, peers=peers, relay=self.relay, inbox=inbox,
                      messages=self._witness_notes(peers), hold=not needed)  # fmt: skip
        if needed:
            self._check_witness(notes.receive(deadline), peers)
            return (lambda: None), None
        taken = False

        def distrust(e: Exception) -> None:
            # Cannot happen without a restart (see above); if it does, trust nothing already
            # witnessed: the next task waits for every note again.
            log.error("witness notes of job %s: %s", task.job, e)
            self._fresh = False
            with self._witness_lock:
                self._witness_keys.clear()

        def take(final: bool) -> bool:
            nonlocal taken
            if taken:
                return True
            got = notes.received()
            if not final and len(got) < len(peers):
                return False  # not all here yet: look again at the next wait
            if not final:
                try:
                    self._check_witness(got, peers, defer=True)
                except (StalePeer, KeystoreError, TaskError) as e:
                    distrust(e)  # at once: the read after the protocol does not run if the task fails
                    return True
                except Exception as e:  # the read after the protocol runs the same checks again
                    log.warning("witness notes of job %s, read early: %s", task.job, e)
                    return True
                taken = True
                try:
                    self.keystore.flush_witness()  # now, while the next round is on its way
                except KeystoreError as e:
                    log.warning("witness notes of job %s not yet durable: %s (the task's end tries again)", task.job, e)
                return True
            taken = True
            if not got:
                return True
            try:
                # Deferred: durable before the task's result leaves (handle's flush_witness).
                self._check_witness(got, peers, defer=True)
            except (StalePeer, KeystoreError, TaskError) as e:
                distrust(e)
            return True

        def later() -> None:
            take(True)

        return later, functools.partial(take, False)

    def _witness_notes(self, peers: Mapping[int, AdmittedPeer]) -> dict[int, bytes]:
        """Our witness note for each peer: our keystore's (counter, digest) and the last pair we
        recorded for that peer."""
        counter, digest = self.keystore.announcement()
        seen = self.keystore.peer_counters()
        out = {}
        for i, p in peers.items():
            pc = seen.get(p.node_id)
            note = {"counter": counter, "digest": digest.hex(), "seen_you": None if pc is None else [pc.counter, pc.digest.hex()]}
            out[i] = json.dumps(note).encode()
        return out

    def _witness_job(
        self, raw: Mapping[str, Any], task: Task, params: Mapping[str, Any], deadline: float, at: int
    ) -> dict[str, Any]:
        """A ``witness`` job (docs/NODE.md, "Rollback witness"; coordinator API.md §1.14): the
        node it is ``for`` started and asks the other holders of a key, those the coordinator
        saw lately, to confirm its state before it signs. Only witness notes cross, between that
        node and each other participant. It admits them all and takes every note that comes by
        the deadline (a peer that cannot be admitted is skipped: it confirms nothing); every
        other participant admits it alone and records its counter, which catches it if it went
        back (``STALE_PEER``, as in any task). A counter above the record of a new process of
        that node is recorded only once it acknowledges, after every note it got passed its
        checks: an old copy that another holder caught never does, so a holder whose record
        lags does not take the copy's counter for a newer state. Reports an empty result."""
        asker = str(params["for"])
        mine = asker == self.node_id
        by_index = {int(p["index"]): p for p in raw["participants"]}  # one per index (_run checked)
        wanted = [p for i, p in sorted(by_index.items()) if i != task.me and (mine or p["node_id"] == asker)]
        self._remember_instance(task, at)
        peers: dict[int, AdmittedPeer] = {}
        waiting: dict[int, Notes] = {}
        checked: list[int] = []  # the asker: peers whose notes passed; they get an acknowledgement
        held: dict[int, bytes] = {}  # another participant: the asker's note, until checked

        def sid(kind: bytes, other: str) -> bytes:  # one session per pair: the asker and this peer
            parts = (b"shardguard/node/witness-job/v1", kind, task.job.encode(), task.instance, other.encode())
            return hashlib.sha256(b"\x00".join(parts)).digest()

        # Every peer's note and acknowledgement has a session of its own, all read through one
        # inbox: it holds exactly those, however many holders (review finding: past 4 sessions
        # the notes of the 6th holder on were dropped, and a quorum above 5 was never reached).
        pairs = [p["node_id"] for p in wanted] if mine else [self.node_id]
        inbox = Inbox(expected=frozenset(sid(kind, other) for other in pairs for kind in (b"note", b"ack")))

        end = deadline - REPORT_MARGIN
        # The asker stops collecting notes a while before the others stop waiting for its
        # acknowledgement: a holder that never answers must not make every acknowledgement late.
        collect = end - min(_ACK_MARGIN, (end - time.monotonic()) / 3) if mine else end
        caught: StalePeer | None = None
        # Admitted side by side, and each peer's note taken as it comes: a holder that went down
        # after the coordinator last saw it holds up nobody else's confirmation.
        admitting = ThreadPoolExecutor(max_workers=max(1, min(len(wanted), 16)), thread_name_prefix="witness")
        try:
            pending = {admitting.submit(self.admissions.admit, p, deadline): p for p in wanted}
            while pending or waiting:
                done = [f for f in pending if f.done()]
                for f in done:
                    p = pending.pop(f)
                    i = int(p["index"])
                    try:
                        peers[i] = f.result()
                        self._check_rollbacks({i: peers[i]})
                    except StalePeer as e:
                        if mine:
                            log.warning("witness job %s: %s confirms nothing: %s", task.job, p["node_id"], e)
                            continue
                        # The asker is a process we caught: our note still goes, so that it
                        # learns its state is old (and acknowledges nobody); we record nothing.
                        caught = e
                    except PeerNotAdmitted as e:
                        if not mine:
                            raise
                        log.warning("witness job %s: %s confirms nothing: %s", task.job, p["node_id"], e)
                        continue
                    other = p["node_id"] if mine else self.node_id
                    waiting[i] = Notes(job=task.job, session_id=sid(b"note", other), me=self.keys, card=self.card,
                                       peers={i: peers[i]}, relay=self.relay, inbox=inbox,
                                       messages=self._witness_notes({i: peers[i]}))  # fmt: skip
                    if caught is not None:
                        raise caught
                for i, notes in list(waiting.items()):
                    try:
                        got = notes.receive(min(collect, time.monotonic() + 0.05))
                    except EngineTimeout:
                        continue
                    except EngineError as e:  # the job ended at the coordinator: no more notes come
                        log.warning("witness job %s: %s", task.job, e)
                        end = collect = time.monotonic()
                        break
                    del waiting[i]
                    if not mine:
                        held[i] = got[i]
                        continue
                    try:
                        self._check_witness(dict(got), {i: peers[i]})  # a confirmation counts at once
                        checked.append(i)
                    except (StalePeer, TaskError, KeystoreError) as e:
                        if isinstance(e, KeystoreError) and e.reason is KeystoreReason.STALE_STATE:
                            raise
                        log.warning("witness job %s: %s confirms nothing: %s", task.job, peers[i].node_id, e)
                if time.monotonic() >= collect:
                    break
                if not waiting and pending:
                    futures_wait(list(pending), timeout=0.05)
        finally:
            admitting.shutdown(wait=False, cancel_futures=True)
        if waiting:
            log.warning("witness job %s: no note in time from %s", task.job, ", ".join(peers[i].node_id for i in waiting))
        if mine:  # every note that came passed: this state is not older than any of them saw
            with self._vouched_cv:
                if self._stale is not None:  # proved old meanwhile (another key's job): nobody
                    raise KeystoreError(KeystoreReason.STALE_STATE, self.keystore.directory, self._stale)
            for i in checked:
                Notes(job=task.job, session_id=sid(b"ack", peers[i].node_id), me=self.keys, card=self.card,
                      peers={i: peers[i]}, relay=self.relay, inbox=inbox, messages={i: b"ack"})  # fmt: skip
            return {}
        # Another participant: only the asker's note, checked below.
        for i, note in held.items():
            if self._raises_record(peers[i], note):
                # Both sides of the pair post on the acknowledgement session; only ours is read.
                acks = Notes(job=task.job, session_id=sid(b"ack", self.node_id), me=self.keys, card=self.card,
                             peers={i: peers[i]}, relay=self.relay, inbox=inbox, messages={i: b"ack"})  # fmt: skip
                try:
                    acks.receive(end)
                except (EngineTimeout, EngineError):
                    log.warning("witness job %s: %s did not acknowledge our note; its counter is not recorded",
                                task.job, peers[i].node_id)  # fmt: skip
                    continue
            self._check_witness({i: note}, {i: peers[i]})
        return {}

    def _raises_record(self, peer: AdmittedPeer, note: bytes) -> bool:
        """Whether ``note`` is a new process of ``peer`` announcing a counter above our record of
        it (what an old copy of its state, not yet caught, would announce to a holder that lags)."""
        try:
            counter = int(json.loads(note)["counter"])
        except (ValueError, KeyError, TypeError, OverflowError):
            return False  # malformed: _check_witness says so
        recorded = self.keystore.peer_counters().get(peer.node_id)
        with self._witness_lock:
            new_process = self._witness_keys.get(peer.node_id) != peer.card.identity_public_key
        return new_process and (recorded is None or counter > recorded.counter)

    def _quorum_met(self, key_id: str) -> bool:
        """Whether signatures with ``key_id`` no longer wait for confirmations (_await_confirmed)."""
        return self.keystore.created or key_id in self._quorum_keys

    def _quorum(self, key_id: str) -> tuple[set[str], int]:
        """The key's other holders (our committee record) and how many must confirm us: t, the
        threshold of our own share, or all of them if fewer."""
        holders = committee.recorded(self.keystore, key_id) or {}
        others = {n for n in holders.values() if n != self.node_id}
        return others, min(self.shares.load(key_id).public.threshold, len(others))

    def _unconfirmed(self) -> list[str]:
        """The keys held here whose holders have not yet confirmed this process's state."""
        out = []
        for key_id in list(self.keystore.keys()):
            if self._quorum_met(key_id):
                continue
            try:
                others, need = self._quorum(key_id)
            except (KeystoreError, TaskError):
                continue  # no share or committee to go by: not ours to sign with
            with self._vouched_cv:
                if self._stale is not None or len(self._vouched_for(key_id, others, need)) < need:
                    out.append(key_id)
        return out

    def _vouched_for(self, key_id: str, others: set[str], need: int) -> set[str]:
        """Which of the key's other holders have vouched; once ``need`` have, the key's
        signatures wait no more (vouching is taken back only by _latch_stale). Hold
        ``_vouched_cv``."""
        have = others & self._vouched.keys()
        if len(have) >= need:
            self._quorum_keys.add(key_id)
        return have

    def _confirming(self) -> None:
        """After a start with keys: ask for witness jobs until every key's holders have
        confirmed our state, so signatures need not wait for it. A holder that never saw us
        confirms only in the round after the one that recorded us."""
        delay = 2.0
        while self._stale is None and self._unconfirmed():
            self._ask_witness(every=0.0)
            if self._stop.wait(delay):
                return
            delay = min(delay * 1.5, 30.0)  # a holder that is down may stay down

    def _await_confirmed(self, key_id: str, deadline: float) -> None:
        """Rollback defence before a signature (ARCHITECTURE §7): wait until t other holders of
        the key (t its threshold, from our own share; all others if fewer) have confirmed our
        state since this process started — through a task's witness notes or a witness job,
        which this asks for while they are missing. A store made empty by this process needs
        none: every state in it is newer than anything a peer saw. Raises ``UNCONFIRMED``
        (reason ``KEYSTORE_UNCONFIRMED``) after :data:`_QUORUM_WAIT` (or at the deadline), naming
        who confirmed; ``STALE_STATE`` once any peer has proved our state old in this process."""
        if self._quorum_met(key_id):
            return
        others, need = self._quorum(key_id)
        # Not to the task's deadline: waiting tasks hold task slots, which the witness jobs
        # that would let them go on need too.
        until = time.monotonic() + _QUORUM_WAIT
        with self._vouched_cv:
            while True:
                if self._stale is not None:  # a peer saw a newer state of ours: whoever else vouches
                    raise KeystoreError(KeystoreReason.STALE_STATE, self.keystore.directory, self._stale)
                have = self._vouched_for(key_id, others, need)
                if len(have) >= need:
                    return
                left = min(deadline - REPORT_MARGIN, until) - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    raise KeystoreError(
                        KeystoreReason.UNCONFIRMED,
                        self.keystore.directory,
                        f"{len(have)} of the {need} other holders of key {key_id} needed confirmed this node's state "
                        f"since it started ({', '.join(sorted(have)) or 'none'}): it does not sign before they do",
                    )
                self._ask_witness()
                self._vouched_cv.wait(min(left, 1.0))

    def _ask_witness(self, *, every: float = 2.0) -> None:
        """Ask the coordinator for witness jobs (``POST /v1/nodes/{id}/witness``), at most once
        every ``every`` seconds, off the caller's thread."""
        now = time.monotonic()
        if now - self._witness_asked < every:
            return
        self._witness_asked = now

        def post() -> None:
            try:
                self.link.request("POST", f"/v1/nodes/{self.node_id}/witness", body={})
            except (httpx.HTTPError, EngineError, CoordinatorRefused) as e:
                log.warning("witness jobs not asked for: %s", e)

        with contextlib.suppress(RuntimeError):  # shut down: nobody signs any more
            self._nudges.submit(post)

    def _check_witness(self, got: Mapping[int, bytes], peers: Mapping[int, AdmittedPeer], *, defer: bool = False) -> None:
        confirmations: dict[str, tuple[int, bytes] | None] = {}
        for i, raw in got.items():
            node = peers[i].node_id
            try:
                msg = json.loads(raw)
                peer_counter, peer_digest = int(msg["counter"]), bytes.fromhex(msg["digest"])
                sy = msg["seen_you"]
                confirmations[node] = None if sy is None else (int(sy[0]), bytes.fromhex(sy[1]))
            except (ValueError, KeyError, TypeError, IndexError, OverflowError):
                raise TaskError(f"malformed witness message from {node}", "witness") from None
            identity = peers[i].card.identity_public_key
            # One lock over recording a counter and the identity key it came with: a concurrent
            # task must not see the counter recorded and the key not yet (a false STALE_PEER).
            with self._witness_lock:
                try:
                    self.keystore.record_peer_counter(node, peer_counter, peer_digest, defer=defer)
                    self._witness_keys[node] = identity
                    seen = self._witnessed.setdefault(node, collections.OrderedDict())
                    seen[identity] = None
                    seen.move_to_end(identity)
                    if len(seen) > _PROCESSES_KEPT:
                        seen.popitem(last=False)
                except KeystoreError as e:
                    if e.reason is not KeystoreReason.PEER_ROLLBACK:
                        raise
                    # A rollback needs a restart, and a restarted node has a new identity key.
                    # A process of it we recorded before announcing a lower counter is only an
                    # old message — two of its tasks out of order, or a note of its previous
                    # process the coordinator held back (review finding: that was taken for a
                    # rollback, and once distrust() had cleared _witness_keys, so was a late
                    # note of its current process): nothing to record, nothing wrong.
                    if identity not in self._witnessed.get(node, ()):
                        self._caught[node] = (identity, str(e))  # this process stays caught (_check_rollbacks)
                        raise StalePeer(node, str(e)) from None
        try:
            report = self.keystore.check_witnessed(confirmations)
        except KeystoreError as e:
            if e.reason is KeystoreReason.STALE_STATE:  # refuse, loudly, and from now on
                self._latch_stale(e.detail)
            raise
        # A peer that saw a state on our history confirms it; so does one whose record is older
        # than the history we keep (it saw no newer state; its digest cannot be checked, so a
        # fork that far back passes — as it would one round later, once the peer recorded us).
        # One that never saw us (a new cluster, a peer re-provisioned by repair) proves nothing
        # either way. Nothing counts once a peer proved this state old (_latch_stale).
        vouching = {*report.confirmed, *report.unverifiable}
        with self._vouched_cv:
            if self._stale is not None:
                return
            for p in peers.values():
                if p.node_id in vouching:
                    self._vouched[p.node_id] = p.card.identity_public_key
            self._vouched_cv.notify_all()
        if report.confirmed and not self._fresh:
            self._fresh = True
            self.nonces.wake()  # commitments may be published now

    # -- rollbacks, once caught, stay caught for the process caught -------------------------------
    # A restored state directory that a peer caught (STALE_STATE here, STALE_PEER there) must
    # not pass on a later task of the same process: the restored node would take tasks without
    # awaiting the notes again, and write on (each failed task's "refused" entry raises its
    # counter). So the restored node awaits every peer's note again, and the peer refuses the
    # caught process (its identity key) before any message. Neither is kept across restarts: a
    # lie by one corrupt peer must not disable an honest node for good (docs/NODE.md).

    def _latch_stale(self, detail: str) -> None:
        self._fresh = False
        with self._witness_lock:
            self._witness_keys.clear()
        with self._vouched_cv:
            self._vouched.clear()
            self._quorum_keys.clear()
            self._stale = detail
            self._vouched_cv.notify_all()
        log.error("this state directory looks like an old copy (a peer saw a newer state): %s", detail)

    def _check_rollbacks(self, peers: Mapping[int, AdmittedPeer]) -> None:
        for p in peers.values():
            caught = self._caught.get(p.node_id)
            if caught is not None and caught[0] == p.card.identity_public_key:
                raise StalePeer(p.node_id, f"this process of it was caught before: {caught[1]}")

    def _forget(self, node: str) -> None:
        """A node re-provisioned by repair: witness it afresh."""
        self.keystore.forget_peer(node)
        self._caught.pop(node, None)

    def _settle(self, job: str, raw: Mapping[str, Any], result: Mapping[str, Any], job_status: Any) -> None:
        """Phase two (see _confirm_staged): commit the staged epoch once the job is done and every
        holder confirmed staging it; otherwise keep it pending (a repaired share is dropped if
        its job failed: no other holder relies on it)."""
        key_id = str(raw["key_id"])
        epoch = int(result.get("epoch", result.get("public", {}).get("epoch", 0)))
        deadline = time.monotonic() + max(5.0, deadline_at(raw) - time.time()) + 30
        if job_status == "running":
            job_status = self.stream.wait_ended(job, max(0.0, deadline - time.monotonic()))
        repaired = raw["kind"] == "repair"  # one node stages, at the key's current epoch: no phase one
        if job_status == "done" and (repaired or self._confirmed(key_id, epoch, job)):
            self.shares.commit(key_id, epoch)
            self._audit("epoch_committed", job=job, key_id=key_id, epoch=epoch)
            log.info("key %s epoch %d committed", key_id, epoch)
        elif job_status == "done":
            self._audit("epoch_kept_pending", job=job, key_id=key_id, epoch=epoch, reason="done without every confirmation")
            log.error("key %s epoch %d: the coordinator says done, but not every holder confirmed staging it; kept pending",
                      key_id, epoch)  # fmt: skip
        elif job_status == "failed" and repaired:
            self.shares.abort(key_id, epoch)  # the repaired share only: no other holder relies on it
            self._audit("epoch_dropped", job=job, key_id=key_id, epoch=epoch, reason="job failed")
        elif job_status == "failed":
            # Never dropped: a holder with every confirmation may have committed it already.
            self._audit("epoch_kept_pending", job=job, key_id=key_id, epoch=epoch, reason="job failed")
            log.warning("key %s epoch %d kept pending: the job failed (committed later if the key moves to it)", key_id, epoch)

    def _error(self, e: BaseException, raw: Mapping[str, Any]) -> dict[str, Any]:
        try:
            nodes = {int(p["index"]): str(p["node_id"]) for p in raw.get("participants", [])}
        except (KeyError, TypeError, ValueError, AttributeError):  # the task itself is malformed: still report
            nodes = {}
        if isinstance(e, ProtocolAbort):
            return {
                "reason": e.reason.name,
                "culprits": sorted(nodes.get(i, str(i)) for i in e.culprits),
                "detail": str(e)[:2000],
            }
        if isinstance(e, PeerNotAdmitted):
            return {"reason": "ATTESTATION", "culprits": [e.node], "detail": str(e)[:2000]}
        if isinstance(e, StalePeer):
            return {"reason": "STALE_PEER", "culprits": [e.node], "detail": str(e)[:2000]}
        if isinstance(e, KeystoreError) and e.reason is KeystoreReason.STALE_STATE:
            return {"reason": "STALE_STATE", "culprits": [self.node_id], "detail": str(e)[:2000]}
        if isinstance(e, KeystoreError):
            # DISK_FULL, READ_ONLY, IO_ERROR, …: this node's state disk, named as such.
            return {"reason": f"KEYSTORE_{e.reason.name}", "culprits": [], "detail": str(e)[:2000]}
        if isinstance(e, AttestationError):
            return {"reason": "ATTESTATION", "culprits": [], "detail": str(e)[:2000]}
        if isinstance(e, AuditRefused):
            # The decision cannot be recorded (unmirrored backlog full, or entry too large).
            return {"reason": f"AUDIT_{e.reason}", "culprits": [], "detail": str(e)[:2000]}
        if isinstance(e, EngineTimeout):
            return {"reason": "TIMEOUT", "culprits": [], "detail": str(e)[:2000]}
        if isinstance(e, NonceError):  # a commitment we never made, used already, or forged
            return {"reason": f"NONCE_{e.reason.upper()}", "culprits": [], "detail": str(e)[:2000]}
        if isinstance(e, OneStepUnavailable):  # nothing released: the coordinator runs it in rounds
            return {"reason": "ONE_STEP_UNAVAILABLE", "culprits": [], "detail": str(e)[:2000]}
        if isinstance(e, (ProtocolError, TaskError, EngineError, ValueError)):
            return {"reason": type(e).__name__, "culprits": [], "detail": str(e)[:2000]}
        return {"reason": "INTERNAL", "culprits": [], "detail": type(e).__name__}

    # -- main loop ------------------------------------------------------------------------
    def run_forever(self) -> None:
        # The first write comes before registration: a node that cannot write its state (full
        # or read-only disk) stops here, before the coordinator hands it any task.
        started: dict[str, Any] = {"platform": self.platform.kind, "identity_public_key": self.card.identity_public_key.hex()}
        # An empty log registers first, to ask where to continue (no task comes before the
        # stream starts below) — after a write all the same, which a full disk fails here.
        registered = self.audit.head[0] == 0
        if registered:
            self.audit.continue_after(0, GENESIS)
            if not self._continue_mirrored_chain(started):
                return
        try:
            self._audit("node_started", **started)
        except AuditBacklogFull:
            # The last run's entries still fill the backlog: mirror them first (posting needs
            # registration; no task comes before the stream starts below), then log the start.
            self.register()
            while True:
                self.flush_audit()
                try:
                    self._audit("node_started", **started)
                    break
                except AuditBacklogFull:
                    if self._stop.wait(2.0):
                        return
        else:
            if not registered:
                self.register()
        if self.keystore.keys() and not self.keystore.created:
            # The other holders confirm our state before we sign (_await_confirmed).
            threading.Thread(target=self._confirming, name="witness", daemon=True).start()
        threading.Thread(target=self._audit_flusher, name="audit", daemon=True).start()
        threading.Thread(target=self._answer_challenges, name="challenges", daemon=True).start()
        threading.Thread(target=self.nonces.run, args=(self._stop,), name="nonces", daemon=True).start()
        self.stream.start()
        while not self._stop.is_set():
            left = self._reattest - (time.monotonic() - self._registered_at)
            if left > 0:
                self._stop.wait(min(left, 5.0))
                continue
            try:
                self.register()
            except (httpx.HTTPError, EngineError) as e:
                log.warning("re-registration failed (retrying): %s", e)
                self._stop.wait(1.0)

    def _continue_mirrored_chain(self, started: dict[str, Any]) -> bool:
        """An empty audit log (a new node, or one whose state was lost and is being repaired):
        register, ask the coordinator for the newest entry it mirrors of this node, and start
        after it — numbering from 1 again, every entry of a node that lost its state would be
        an ``audit_conflict`` at the mirror, and after ``MAX_PENDING`` of them the node would
        refuse every task. The head is the coordinator's word: ``node_started`` records it
        (``continues``), and a lie shows in the mirror as a conflict or a gap. False if stopped
        before it could ask."""
        self.register()
        while True:
            try:
                try:
                    head = self.link.request("GET", f"/v1/nodes/{self.node_id}/audit/head")
                except CoordinatorRefused as e:
                    if e.status != 404:
                        raise
                    # A coordinator from before this route: start at 1, as nodes did then.
                    log.warning("the coordinator does not tell the audit mirror's head: this log starts at entry 1")
                    return True
                seq, h = head["seq"], head["hash"]
                if seq:
                    self.audit.continue_after(seq, h)
                    started["continues"] = {"seq": seq, "hash": h, "from": "coordinator mirror"}
                return True
            except (httpx.HTTPError, EngineError, KeyError, TypeError, ValueError) as e:
                log.warning("the audit mirror's head could not be read (retrying): %s", e)
                if self._stop.wait(2.0):
                    return False

    def _free_slots(self) -> int:
        with self._busy_lock:
            return self._workers - self._busy

    def _submit(self, task: Mapping[str, Any]) -> None:
        with self._busy_lock:
            self._busy += 1
        pool = self._background if task.get("kind") == "presign" else self._pool
        pool.submit(self._handle_logged, task)

    def _handle_logged(self, task: Mapping[str, Any]) -> None:
        try:
            self.handle(task)
        except Exception:  # the pool would swallow it
            log.exception("task %s could not be completed or reported", task.get("task_id"))
        finally:
            with self._busy_lock:
                self._busy -= 1
            self.stream.room_changed()

    def stop(self) -> None:
        self._stop.set()
        self.flush_audit()
        self.audit.forget_mirrored()  # mirrored() only forgets in memory until the next write
        try:
            self.keystore.flush_witness()
        except KeystoreError as e:
            log.warning("peer counters not written at shutdown: %s", e)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._background.shutdown(wait=False, cancel_futures=True)
        self._writes.shutdown(wait=False, cancel_futures=True)
        self._nudges.shutdown(wait=False, cancel_futures=True)
        self.stream.stop()
        self.link.close()
        self.keystore.close()


def _nothing() -> None:
    pass


def _lower_priority() -> None:
    """Nice the calling thread (on Linux the nice value is per thread). Where the platform does
    not allow it (an enclave runtime without setpriority) the thread keeps the usual priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, _BACKGROUND_NICE)
    except (OSError, AttributeError) as e:
        log.debug("pre-signing threads keep their priority: %s", e)


def _bundle_items(params: Mapping[str, Any]) -> list[dict[str, str]]:
    """A bundle's requests as the coordinator sent them, checked: 1 to 64 of
    ``{request_id, message_hex}`` (TaskError otherwise)."""
    items = params.get("bundle")
    if not isinstance(items, list) or not 1 <= len(items) <= _BUNDLE_MAX:
        raise TaskError(f"a bundle names 1 to {_BUNDLE_MAX} requests", "bundle")
    out = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not _is_request_id(item.get("request_id")):
            raise TaskError("each request names its request_id (1 to 64 of A-Z a-z 0-9 _ -)", f"bundle[{i}]")
        if item["request_id"] in seen:  # the audit entry names each request once, with its message
            raise TaskError(f"request {item['request_id']!r} is listed twice", f"bundle[{i}].request_id")
        seen.add(item["request_id"])
        message = item.get("message_hex")
        if not isinstance(message, str) or not _LOWER_HEX.fullmatch(message):
            raise TaskError("message_hex must be lower-case hex", f"bundle[{i}].message_hex")
        out.append({"request_id": item["request_id"], "message_hex": message})
    return out


def _is_request_id(value: Any) -> bool:
    return isinstance(value, str) and _REQUEST_ID.fullmatch(value) is not None


def _package_digest(public: Any) -> str:
    """SHA-256 of a public key package's canonical JSON: what phase one's statements name."""
    return hashlib.sha256(json.dumps(public, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _staged_name(key_id: str) -> str:
    """Keystore state: the epoch of ``key_id`` that every holder confirmed staging, and its job."""
    return f"staged-{key_id}"


def _policy(args: argparse.Namespace, platform: Platform) -> VerificationPolicy:
    if args.policy:
        return VerificationPolicy.from_toml(Path(args.policy).read_text())
    if args.allow_simulated:
        # Development: peers must run the same simulated image as we do.
        return VerificationPolicy(allow_simulated=True, measurements={"simulated": {"pcr0": (platform.measurement,)}})
    return VerificationPolicy()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="shardguard node run", description="Run one signer node.")
    ap.add_argument("--coordinator", required=True, help="coordinator base URL, e.g. http://127.0.0.1:8700")
    ap.add_argument("--state", required=True, type=Path, help="state directory (sealed keystore)")
    ap.add_argument("--node-id", help="node id (default: kept in the state directory, else a random one)")
    ap.add_argument("--platform", default="auto", help="auto | simulated | nitro | tsm | gramine")
    ap.add_argument("--policy", help="verification policy TOML for peers")
    ap.add_argument("--allow-simulated", action="store_true", help="development: accept peers on the simulated platform")
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument(
        "--enroll-token-file",
        type=Path,
        help="file holding the coordinator token of scope nodes:register (default: $SHARDGUARD_ENROLL_TOKEN)",
    )
    args = ap.parse_args(argv)
    enroll = os.environ.get("SHARDGUARD_ENROLL_TOKEN")
    if args.enroll_token_file is not None:
        enroll = args.enroll_token_file.read_text().strip()
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args.state.mkdir(parents=True, exist_ok=True)
    id_file = args.state / "node-id"
    kept = id_file.read_text(encoding="ascii", errors="replace").strip() if id_file.exists() else None
    if kept is not None and not is_node_id(kept):
        ap.error(f"{id_file} holds no valid node id ({kept[:40]!r}); restore it or pass --node-id")
    node_id = args.node_id or kept or "node-" + secrets.token_hex(4)
    if not is_node_id(node_id):
        ap.error(f"--node-id {node_id[:40]!r} is not a valid node id")
    if kept != node_id:
        # Atomic: a power cut must not leave an empty or cut id, under which the node would come
        # back as another node. Only when it changes: a read-only disk fails in the keystore, clearly.
        write_file_atomic(id_file, f"{node_id}\n".encode(), 0o644)
    platform = open_platform(args.platform, state_dir=args.state / "platform")
    policy = _policy(args, platform)
    if policy.allow_simulated and platform.kind != "simulated":
        # The development root's private key is public: a hardware node that admitted simulated
        # peers would trust evidence anyone can make, with the shares its enclave unseals
        # (review finding: the host chooses the command line unless the image measures it).
        ap.error(f"allow_simulated on a {platform.kind} node would admit peers anyone can forge; refused")
    service = NodeService(
        coordinator=args.coordinator, state=args.state, node_id=node_id, platform=platform, policy=policy,
        enroll_token=enroll,
    )
    (args.state / "node.pid").write_text(f"{os.getpid()}\n")
    gc.freeze()  # as the coordinator: what exists now lives as long as the process
    signal.signal(signal.SIGTERM, lambda *_: service._stop.set())
    try:
        service.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
