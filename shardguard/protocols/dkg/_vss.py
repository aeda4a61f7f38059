"""Two-round Pedersen VSS machinery shared by the DKG and proactive refresh.

Round 1: every participant broadcasts a Feldman commitment to a random polynomial (the DKG
adds a proof of knowledge of its constant term).
Round 2: every participant broadcasts an echo of all round-1 payloads it saw, and sends
``f_i(j)`` to each other participant ``j`` over the confidential channel.
Round 3: check the echoes (equivocation) and each received share against its sender's
commitment, derive the key package, broadcast its digest.
Finish: once every participant confirmed the same digest, output the key share.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from shardguard.crypto.ciphersuite import Ciphersuite
from shardguard.crypto.group import Point, Rng
from shardguard.crypto.shamir import eval_commitment, eval_polynomial, feldman_commit
from shardguard.protocols.dkg._messages import DkgConfirm, DkgEcho, DkgSecretShare
from shardguard.protocols.errors import AbortReason, ProtocolAbort
from shardguard.protocols.keys import KeyShare
from shardguard.protocols.message import Message
from shardguard.protocols.party import Party
from shardguard.protocols.wire import Payload, encode_payload

__all__ = ["PedersenVss"]


class PedersenVss(Party[KeyShare]):
    ROUND1: type[Payload]

    def __init__(
        self, suite: Ciphersuite, *, identifier: int, participants: Sequence[int], threshold: int, session_id: bytes, rng: Rng
    ) -> None:
        super().__init__(suite, identifier, [p for p in participants if p != identifier], session_id)
        self.participants = tuple(sorted(participants))
        self.threshold = threshold
        self._rng = rng
        self._coefficients: list[int] | None = None
        self._own_round1: Payload | None = None
        self._own_digest = b""
        self._own_share = 0
        self._pending: KeyShare | None = None
        self._pending_digest = b""

    # -- hooks --------------------------------------------------------------------------------
    def _polynomial(self) -> list[int]:
        raise NotImplementedError

    def _round1_payload(self, coefficients: list[int], commitment: list[Point]) -> Payload:
        raise NotImplementedError

    def _check_round1(self, sender: int, payload: Any) -> AbortReason | None:
        raise NotImplementedError

    def _full_commitment(self, payload: Any) -> Sequence[Point]:
        raise NotImplementedError

    def _complete(self, share_sum: int, summed: list[Point]) -> KeyShare:
        raise NotImplementedError

    # -- rounds -------------------------------------------------------------------------------
    def _start(self) -> list[Message]:
        """Round 1 (ePrint 2020/852 Fig. 1, steps 1–4)."""
        coeffs = self._polynomial()
        self._coefficients = coeffs
        payload = self._round1_payload(coeffs, feldman_commit(self.suite.group, coeffs))
        self._own_round1 = payload
        self._own_digest = hashlib.sha256(encode_payload(payload)).digest()
        return [self._broadcast(payload)]

    def _advance(self) -> list[Message]:
        out: list[Message] = []
        if self.round == 1 and self._have_all(1, self.ROUND1):
            out += self._round2()
        if self.round == 2 and self._have_all(2, DkgEcho) and self._have_all(2, DkgSecretShare):
            out += self._round3()
        if self.round == 3:
            try:
                self._confirm()
            except ProtocolAbort as e:
                # Our own confirmation still goes out, so the others abort too, not hang.
                e.outgoing = out
                raise
        return out

    def _round2(self) -> list[Message]:
        """Round 1 checks (step 5: commitment length, PoK), then echo and shares (round 2 step 1)."""
        received = self._received(1, self.ROUND1)
        culprits: dict[int, AbortReason] = {}
        for sender, payload in received.items():
            why = self._check_round1(sender, payload)
            if why is not None:
                culprits[sender] = why
        if culprits:
            # One abort carries one reason: report the first reason (in enum order) with
            # exactly the parties that failed that check.
            reason = min(set(culprits.values()), key=list(AbortReason).index)
            raise self._abort(reason, {s for s, r in culprits.items() if r is reason})
        self.round = 2
        digests = tuple(self._own_digest if p == self.me else self._payload_digest(1, self.ROUND1, p) for p in self.participants)
        coeffs = self._coefficients
        if coeffs is None:  # pragma: no cover - guarded by the state machine
            raise RuntimeError("polynomial already consumed")
        order = self.suite.group.order
        out = [self._broadcast(DkgEcho(suite=self.suite, digests=digests))]
        for j in self.peers:
            out.append(self._send(j, DkgSecretShare(suite=self.suite, share=eval_polynomial(coeffs, j, order))))
        self._own_share = eval_polynomial(coeffs, self.me, order)
        self._coefficients = None  # the polynomial is never needed again
        return out

    def _round3(self) -> list[Message]:
        """Round 2 steps 2–4: echo consistency, share verification, sum; then confirm."""
        mine = tuple(self._own_digest if p == self.me else self._payload_digest(1, self.ROUND1, p) for p in self.participants)
        equivocators: set[int] = set()
        for sender, echo in self._received(2, DkgEcho).items():
            digests: tuple[bytes, ...] = echo.digests  # type: ignore[attr-defined]
            if len(digests) != len(mine):
                raise self._abort(AbortReason.MALFORMED_PAYLOAD, {sender}, field="digests")
            for p, a, b in zip(self.participants, digests, mine, strict=True):
                if a != b:
                    equivocators |= self._echo_blame(sender, p)
        if equivocators:
            raise self._abort(AbortReason.EQUIVOCATION, equivocators)
        g = self.suite.group
        round1 = self._received(1, self.ROUND1)
        shares = {s: p.share for s, p in self._received(2, DkgSecretShare).items()}  # type: ignore[attr-defined]
        commitments = {s: self._full_commitment(round1[s]) for s in self.peers}
        commitments[self.me] = self._full_commitment(self._own_round1)
        summed = [g.sum(c[k] for c in commitments.values()) for k in range(self.threshold)]
        share_sum = (self._own_share + sum(shares.values())) % g.order
        # All shares checked at once against the summed commitment (t multiplications, not
        # (n−1)·t); only on failure is each share checked to name the culprits.
        if g.base_mul(share_sum) != eval_commitment(g, summed, self.me):
            bad = {s for s, share in shares.items() if g.base_mul(share) != eval_commitment(g, commitments[s], self.me)}
            raise self._abort(AbortReason.INVALID_SHARE, bad)
        self._own_share = 0
        self._pending = self._complete(share_sum, summed)
        self._pending_digest = self._pending.public.digest
        self.round = 3
        return [self._broadcast(DkgConfirm(suite=self.suite, package_digest=self._pending_digest))]

    def _confirm(self) -> None:
        """Round 3: abort on the first differing confirmation; finish once all agree."""
        pending = self._pending
        if pending is None:  # pragma: no cover - state machine
            raise RuntimeError("no pending key")
        mine = self._pending_digest
        differ = {s for s, p in self._received(3, DkgConfirm).items() if p.package_digest != mine}  # type: ignore[attr-defined]
        if differ:
            self._pending = None
            raise self._abort(AbortReason.INCONSISTENT_KEY, differ)
        if self._have_all(3, DkgConfirm):
            self._pending = None
            self._finish(pending)
