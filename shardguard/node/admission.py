"""Which peers this node may talk to: their evidence, checked against our policy and answering
a challenge we issued (ARCHITECTURE §5–6; :mod:`shardguard.channel.challenge`).

A task names its participants with the card and evidence the coordinator holds for each. We
admit a peer on that evidence only if it answers one of *our* live challenges to that peer.
Otherwise we challenge it and wait for evidence that does, which the coordinator hands us as
soon as the peer has attested and registered it. A task may use an admission only if the
challenge it answered will not have lived ``policy.max_age_seconds`` by the task's deadline
(a task longer than half that: only if half of it is left). Past half of that lifetime, a
task sends a newer challenge in the background and goes on; later tasks carry evidence that
answers it, so a busy peer is re-admitted without a task waiting for the answer.

The coordinator can delay or refuse to relay challenges and evidence (then the task fails,
naming the peer), but cannot make stale evidence pass: the binding, the challenge list's hash
and our own nonce are all checked here.

Tasks need not repeat evidence we hold: the node tells the coordinator which peers it admitted,
on evidence with which SHA-256 (:meth:`Admissions.advertised`, in the stream's ``want``), and a
task then names such a peer's evidence by that digest only. Nothing is taken on the
coordinator's word: a task without evidence is served by the admission we made ourselves, or,
if that does not cover it, by challenging the peer as for a peer never seen.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import functools
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from shardguard.attestation.errors import AttestationError, AttestationReason
from shardguard.attestation.policy import VerificationPolicy
from shardguard.attestation.verify import verify_evidence
from shardguard.channel import (
    AdmittedPeer,
    CardError,
    ChallengeBook,
    ChallengeError,
    PeerCard,
    admit_peer,
    challenge_nonce,
    challenges_from_wire,
)
from shardguard.channel.identity import is_node_id

__all__ = ["Admissions", "PeerNotAdmitted"]

log = logging.getLogger("shardguard.node")

#: ``ask(peer node id, our challenge, seconds to wait)``: post the challenge and return the
#: peer's record (card, platform, evidence, collateral, evidence_challenges) once its evidence
#: answers it, or as it is when the wait runs out.
Ask = Callable[[str, bytes, float], Mapping[str, Any]]
#: ``nudge(peer node id, our challenge, failed)``: post the challenge in the background, wait
#: for nothing; call ``failed()`` if it could not be posted.
Nudge = Callable[[str, bytes, Callable[[], None]], None]

#: Longest wait for a challenged peer's answer (a hardware attestation plus two trips).
ANSWER_WAIT = 30.0
#: Time left after a wait that ran out, to report why before the task's deadline.
REPORT_MARGIN = 2.0
#: Peers never admitted are forgotten once more than this many are known.
_MAX_PEERS = 1024
#: A peer leaves :meth:`Admissions.advertised` this long before its admission is due for
#: renewal, so that a task sent on an advert the coordinator has not yet seen withdrawn still
#: finds the admission good for it.
ADVERT_MARGIN = 30.0
#: Most peers advertised (the coordinator takes no more: API.md §1.9): those good longest.
ADVERT_MAX = 1024


class PeerNotAdmitted(Exception):
    """A participant's evidence was refused (``error``, with the attestation reason) or did not
    answer our challenge in time: we send that peer nothing."""

    def __init__(self, node: str, error: AttestationError) -> None:
        self.node = node
        self.error = error
        super().__init__(f"peer {node} not admitted: {error}")


@dataclasses.dataclass(frozen=True)
class _Admission:
    card: bytes  # the admitted card's encoding
    peer: AdmittedPeer
    evidence: bytes  # the evidence it was admitted on
    until: float  # monotonic: our challenge it answered runs out
    renew_at: float  # monotonic: challenge again, without waiting, from here on
    tried: bytes = b""  # evidence seen while renewing that gave nothing newer (not tried again)

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 (hex) of ``evidence``: how a task names it (coordinator API.md §1.3)."""
        return hashlib.sha256(self.evidence).hexdigest()


class Admissions:
    """Admitted peers, per node id, with the challenges we issued them. Thread-safe: tasks
    admit their participants concurrently; one admission per peer runs at a time."""

    def __init__(
        self,
        me: str,
        policy: VerificationPolicy,
        *,
        ask: Ask,
        nudge: Nudge,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.policy = policy
        self.book = ChallengeBook(me, policy.max_age_seconds, clock=clock)
        self._ask = ask
        self._nudge = nudge
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._peer_locks: dict[str, threading.Lock] = {}
        self._admitted: dict[str, _Admission] = {}
        self._renewing: dict[str, bytes] = {}  # peer -> the challenge sent ahead, not yet answered

    def advertised(self) -> dict[str, str]:
        """Peers whose tasks may name their evidence by digest instead of repeating it: node id
        -> SHA-256 of the evidence we admitted it on, for admissions good for any task for a
        while yet (up to :data:`ADVERT_MARGIN` before renewal is due). What a task then leaves
        out we hold already; past that point tasks carry the evidence again, for the renewal."""
        now = self._clock()
        held = dict(self._admitted)  # one step under the GIL: admissions change on task threads
        good = [(min(a.renew_at, a.until), node, a) for node, a in held.items()]
        good = [g for g in good if now < g[0] - ADVERT_MARGIN]
        if len(good) > ADVERT_MAX:
            good = sorted(good, key=lambda g: g[0], reverse=True)[:ADVERT_MAX]
        return {node: a.digest for _, node, a in good}

    def admit(self, p: Mapping[str, Any], deadline: float) -> AdmittedPeer:
        """Admit the participant ``p`` (a task's entry: node_id, peer_card, platform, evidence,
        collateral, evidence_challenges) for a task that ends by ``deadline`` (this clock),
        waiting for its answer to our challenge until shortly before then at the latest.
        Raises :class:`PeerNotAdmitted`."""
        node = p.get("node_id")
        if not is_node_id(node):
            bad = AttestationError(AttestationReason.MALFORMED, "not a node id", field="node_id")
            raise PeerNotAdmitted(str(node)[:64], bad)
        with self._lock:
            peer_lock = self._peer_locks.setdefault(node, threading.Lock())
        # Tasks admitting the same peer wait for each other (one challenge, whose answer the
        # next one then finds), but not past their own deadline.
        if not peer_lock.acquire(timeout=max(0.0, deadline - self._clock() - REPORT_MARGIN)):
            bad = AttestationError(AttestationReason.NONCE, "still waiting behind another task's challenge to it")
            raise PeerNotAdmitted(node, bad)
        try:
            return self._admit(node, p, deadline)
        except PeerNotAdmitted:
            if node not in self._admitted:  # never admitted: keep nothing for it
                self.book.forget(node)
                with self._lock:
                    if len(self._peer_locks) > _MAX_PEERS:
                        self._peer_locks.pop(node, None)
            raise
        finally:
            peer_lock.release()

    def _admit(self, node: str, p: Mapping[str, Any], deadline: float) -> AdmittedPeer:
        card = _b64(p.get("peer_card"), node, "peer_card")
        now = self._clock()
        life = self.policy.max_age_seconds
        # Good enough for this task: lasts until its deadline, or (a task longer than half the
        # lifetime) for half the lifetime more; so max_age_seconds > 2 × the job timeout keeps
        # every task within its peers' admissions.
        need = deadline if life is None else min(deadline, now + life / 2)
        held = self._admitted.get(node)
        if held is not None and held.card == card and need < held.until:
            if now >= held.renew_at:
                self._renew(node, p, held)
            return self._admitted[node].peer
        got = self._try(node, p, card)
        if got is None or need >= got.until:
            nonce = self.book.issue(node)
            wait = max(0.0, min(ANSWER_WAIT, deadline - self._clock() - REPORT_MARGIN))
            try:
                record = self._ask(node, nonce, wait)
            except Exception as e:  # the relay refused or was unreachable: named as this peer's
                if getattr(e, "status", None) in (401, 403):  # our own request was refused: ours
                    raise
                raise PeerNotAdmitted(node, AttestationError(AttestationReason.NONCE, f"challenge not relayed: {e}")) from None
            if record.get("peer_card") != p.get("peer_card"):
                # It registered a new card meanwhile: a restarted process, whose task fails anyway.
                raise PeerNotAdmitted(node, AttestationError(AttestationReason.NONCE, "its card changed while we challenged it"))
            got = self._try(node, record, card)
            if got is None:
                raise PeerNotAdmitted(
                    node,
                    AttestationError(AttestationReason.NONCE, f"its evidence did not answer our challenge within {wait:.1f} s"),
                )
        self._admitted[node] = got
        with self._lock:
            self._renewing.pop(node, None)
        return got.peer

    def _renew(self, node: str, p: Mapping[str, Any], held: _Admission) -> None:
        """Past half its life: take evidence answering a newer challenge if the task brought
        one, else send a newer challenge (once) and go on with the current admission."""
        try:
            evidence = _b64(p.get("evidence"), node, "evidence")
        except PeerNotAdmitted:
            evidence = held.evidence  # nothing to try: the current admission stands
        if evidence not in (held.evidence, held.tried):
            try:
                newer = self._try(node, p, held.card)
            except PeerNotAdmitted as e:  # the current admission stands until it runs out
                log.warning("renewing the admission of %s: %s", node, e)
                newer = None
            if newer is not None and newer.until > held.until:
                self._admitted[node] = newer
                with self._lock:
                    self._renewing.pop(node, None)
                return
            self._admitted[node] = dataclasses.replace(held, tried=evidence)
        with self._lock:
            if node in self._renewing:
                return
            nonce = self.book.issue(node)
            self._renewing[node] = nonce

        def failed() -> None:  # the next task past half-life tries again (unless a newer one is out)
            with self._lock:
                if self._renewing.get(node) == nonce:
                    del self._renewing[node]

        try:
            self._nudge(node, nonce, failed)
        except Exception as e:
            failed()
            log.warning("could not challenge %s ahead of time: %s", node, e)

    def _try(self, node: str, p: Mapping[str, Any], card_raw: bytes) -> _Admission | None:
        """The admission ``p``'s evidence gives, or None if it answers none of our live
        challenges. Raises :class:`PeerNotAdmitted` for evidence that fails the policy."""
        try:
            challenges = challenges_from_wire(p.get("evidence_challenges") or [])
        except ChallengeError as e:
            raise PeerNotAdmitted(node, AttestationError(AttestationReason.NONCE, e.detail, field=e.field)) from None
        until = self.book.answered(node, challenges)
        if until is None:
            return None
        try:
            card = PeerCard.decode(card_raw)
        except CardError as e:
            raise PeerNotAdmitted(node, AttestationError(AttestationReason.MALFORMED, str(e), field="peer_card")) from None
        if card.node_id != node:
            bad = AttestationError(AttestationReason.MALFORMED, "the card names another node", field="peer_card")
            raise PeerNotAdmitted(node, bad)
        evidence = _b64(p.get("evidence"), node, "evidence")
        collateral = _b64(p.get("collateral"), node, "collateral") if p.get("collateral") else None
        now = self._wall()
        try:
            verified = verify_evidence(str(p.get("platform")), evidence, policy=self.policy, collateral=collateral, at=now)
            peer = admit_peer(card, verified, nonce=challenge_nonce(challenges), policy=self.policy, now=now)
        except AttestationError as e:
            raise PeerNotAdmitted(node, e) from None
        life = self.policy.max_age_seconds
        renew_at = math.inf if life is None else until - life / 2
        return _Admission(card_raw, peer, evidence, until, renew_at)


def _b64(value: Any, node: str, field: str) -> bytes:
    if type(value) is not str:
        raise PeerNotAdmitted(node, AttestationError(AttestationReason.MALFORMED, "missing", field=field))
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise PeerNotAdmitted(node, AttestationError(AttestationReason.MALFORMED, "not base64", field=field)) from None
