"""Share repair: t helpers rebuild a lost share without revealing anything else.

Repairable Threshold Scheme (ePrint 2017/1155 §4; ZF ``keys/repairable.rs``), with public
images added so that the rebuilt share is checked and a cheating helper is named:

Round 1, helper ``i``: ``λ_i`` is its Lagrange coefficient for evaluating at the lost id over
the helper set; it splits ``λ_i·s_i`` into random summands ``δ_{i→j}`` (one per helper), sends
``(δ_{i→j}, δ_{i→j}·G)`` to helper ``j`` and all images ``δ_{i→j}·G`` to the lost party.
Round 2, helper ``j``: checks each received image, sends ``σ_j = Σ_i δ_{i→j}`` and the images
it received to the lost party.
Lost party: checks ``Σ_j δ_{i→j}·G = λ_i·Y_i`` (else helper ``i`` lied), that every helper
echoes the images it was sent (else the sender equivocated) and ``σ_j·G = Σ_i δ_{i→j}·G``
(else helper ``j`` lied); then ``s = Σ_j σ_j`` must match the stored verifying share.
The lost party learns only ``s`` and random images; each helper only random summands.
"""

from __future__ import annotations

from collections.abc import Sequence

from shardguard.crypto.group import Point, Rng
from shardguard.crypto.shamir import lagrange_coefficient
from shardguard.protocols.errors import AbortReason, UsageError
from shardguard.protocols.keys import KeyShare, PublicKeyPackage
from shardguard.protocols.message import Message, check_party_id
from shardguard.protocols.party import Party
from shardguard.protocols.repair._messages import RepairCommitments, RepairDelta, RepairSigma

__all__ = ["RepairHelper", "RepairTarget"]

PROTOCOL = "frost-repair"


def _session(public: PublicKeyPackage, helpers: Sequence[int], lost: int, instance: bytes) -> tuple[tuple[int, ...], bytes]:
    ids = public.quorum(helpers, "helper")
    check_party_id(lost, "lost party id")
    if lost in ids:
        raise UsageError("the lost party cannot be one of its helpers")
    if lost not in public.verifying_shares:
        raise UsageError(f"party {lost} does not hold this key")
    return ids, public.session_id(PROTOCOL, (*ids, lost), instance, extra=bytes([lost]))


class RepairHelper(Party[bool]):
    """A holder helping to rebuild party ``lost``'s share; ``result`` is True once done."""

    PROTOCOL = PROTOCOL
    EXPECTS = {(1, RepairDelta): False}

    def __init__(self, key_share: KeyShare, *, helpers: Sequence[int], lost: int, instance: bytes, rng: Rng) -> None:
        ids, sid = _session(key_share.public, helpers, lost, instance)
        if key_share.identifier not in ids:
            raise UsageError(f"party {key_share.identifier} is not among the helpers")
        super().__init__(key_share.suite, key_share.identifier, [i for i in ids if i != key_share.identifier] + [lost], sid)
        self.helpers = ids
        self.lost = lost
        self._key = key_share
        self._rng = rng
        self._own_delta = 0
        self._own_image: Point | None = None

    def _start(self) -> list[Message]:
        g = self.suite.group
        n = g.order
        lam = lagrange_coefficient(self.helpers, self.me, n, x=self.lost)
        target = lam * self._key.signing_share % n
        others = [j for j in self.helpers if j != self.me]
        deltas = {j: g.random_scalar(self._rng) for j in others}
        deltas[self.me] = (target - sum(deltas.values())) % n
        images = {j: g.base_mul(d) for j, d in deltas.items()}
        out = [self._send(j, RepairDelta(suite=self.suite, delta=deltas[j], commitment=images[j])) for j in others]
        out.append(
            self._send(
                self.lost, RepairCommitments(suite=self.suite, commitments=tuple(sorted(images.items(), key=lambda kv: kv[0])))
            )
        )
        self._own_delta, self._own_image = deltas[self.me], images[self.me]
        return out

    def _advance(self) -> list[Message]:
        if self.lost in self._received(1, RepairDelta):
            # The lost party is a peer (it receives from us) but never contributes a summand.
            raise self._abort(AbortReason.UNEXPECTED_MESSAGE, {self.lost}, round=1)
        others = [j for j in self.helpers if j != self.me]
        if self.round != 1 or not self._have_all(1, RepairDelta, others):
            return []
        g = self.suite.group
        received = self._received(1, RepairDelta)
        bad = {i for i, p in received.items() if g.base_mul(p.delta) != p.commitment}  # type: ignore[attr-defined]
        if bad:
            raise self._abort(AbortReason.INVALID_SHARE, bad)
        sigma = (self._own_delta + sum(p.delta for p in received.values())) % g.order  # type: ignore[attr-defined]
        images = {i: p.commitment for i, p in received.items()}  # type: ignore[attr-defined]
        if self._own_image is None:  # pragma: no cover - state machine
            raise UsageError("round 1 not started")
        images[self.me] = self._own_image
        self.round = 2
        msg = self._send(
            self.lost, RepairSigma(suite=self.suite, sigma=sigma, received=tuple(sorted(images.items(), key=lambda kv: kv[0])))
        )
        self._own_delta = 0
        self._finish(True)
        return [msg]


class RepairTarget(Party[KeyShare]):
    """The party whose share was lost; needs only the (public) key package."""

    PROTOCOL = PROTOCOL
    EXPECTS = {(1, RepairCommitments): False, (2, RepairSigma): False}

    def __init__(self, public: PublicKeyPackage, *, identifier: int, helpers: Sequence[int], instance: bytes) -> None:
        ids, sid = _session(public, helpers, identifier, instance)
        super().__init__(public.suite, identifier, ids, sid)
        self.helpers = ids
        self.public = public

    def _start(self) -> list[Message]:
        return []

    def _advance(self) -> list[Message]:
        if not (self._have_all(1, RepairCommitments) and self._have_all(2, RepairSigma)):
            return []
        g = self.suite.group
        n = g.order
        images = {i: dict(p.commitments) for i, p in self._received(1, RepairCommitments).items()}  # type: ignore[attr-defined]
        sigmas = self._received(2, RepairSigma)
        culprits: set[int] = set()
        for i, row in images.items():
            lam = lagrange_coefficient(self.helpers, i, n, x=self.me)
            if set(row) != set(self.helpers) or g.sum(row.values()) != g.mul(self.public.verifying_shares[i], lam):
                culprits.add(i)
        if culprits:
            raise self._abort(AbortReason.INCONSISTENT_REPAIR, culprits, round=1)
        for j, p in sigmas.items():  # each helper judged on its own, whatever the arrival order
            echoed = dict(p.received)  # type: ignore[attr-defined]
            if set(echoed) != set(self.helpers):
                culprits.add(j)
                continue
            mismatched = {i for i in self.helpers if echoed[i] != images[i][j]}
            if mismatched:
                culprits |= {b for i in mismatched for b in self._echo_blame(j, i)}
            elif g.base_mul(p.sigma) != g.sum(echoed.values()):  # type: ignore[attr-defined]
                culprits.add(j)
        if culprits:
            raise self._abort(AbortReason.INCONSISTENT_REPAIR, culprits, round=2)
        share = sum(p.sigma for p in sigmas.values()) % n  # type: ignore[attr-defined]
        if g.base_mul(share) != self.public.verifying_shares[self.me]:  # pragma: no cover - implied by the checks above
            raise self._abort(AbortReason.INCONSISTENT_REPAIR)
        self._finish(KeyShare(identifier=self.me, signing_share=share, public=self.public))
        return []
