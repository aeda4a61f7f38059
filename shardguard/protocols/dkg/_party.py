"""Pedersen DKG with proofs of knowledge (ePrint 2020/852 Fig. 1; ZF ``keys/dkg.rs``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shardguard.crypto.ciphersuite import Ciphersuite
from shardguard.crypto.group import Point, Rng
from shardguard.crypto.pok import pok_prove, pok_verify
from shardguard.crypto.shamir import eval_commitment, random_polynomial
from shardguard.protocols.dkg._messages import DkgConfirm, DkgEcho, DkgRound1, DkgSecretShare
from shardguard.protocols.dkg._vss import PedersenVss
from shardguard.protocols.errors import AbortReason, UsageError
from shardguard.protocols.keys import KeyShare, PublicKeyPackage, check_participants, check_threshold
from shardguard.protocols.session import derive_session_id

__all__ = ["Dkg", "finish_key"]


class Dkg(PedersenVss):
    """One participant of a t-of-n Pedersen DKG.

    After the DKG the ciphersuite's ``post_keygen_tweak`` runs (BIP341 TapTweak for ``bip340``).
    """

    PROTOCOL = "frost-dkg"
    ROUND1 = DkgRound1
    EXPECTS = {(1, DkgRound1): True, (2, DkgEcho): True, (2, DkgSecretShare): False, (3, DkgConfirm): True}

    def __init__(
        self,
        suite: Ciphersuite,
        *,
        identifier: int,
        participants: Sequence[int],
        threshold: int,
        instance: bytes,
        rng: Rng,
        allow_single: bool = False,
    ) -> None:
        participants = check_participants(participants)
        check_threshold(threshold, len(participants), allow_single=allow_single)
        if identifier not in participants:
            raise UsageError(f"party {identifier} is not among the participants")
        sid = derive_session_id(self.PROTOCOL, suite.context, participants=participants, threshold=threshold, instance=instance)
        super().__init__(suite, identifier=identifier, participants=participants, threshold=threshold, session_id=sid, rng=rng)

    def _polynomial(self) -> list[int]:
        g = self.suite.group
        return random_polynomial(g, g.random_scalar(self._rng), self.threshold - 1, self._rng)

    def _round1_payload(self, coefficients: list[int], commitment: list[Point]) -> DkgRound1:
        r, mu = pok_prove(self.suite, self.me, coefficients[0], self._rng, context=self.session_id)
        return DkgRound1(suite=self.suite, commitment=tuple(commitment), pok_r=r, pok_mu=mu)

    def _check_round1(self, sender: int, payload: Any) -> AbortReason | None:
        if len(payload.commitment) != self.threshold:
            return AbortReason.INVALID_COMMITMENT
        if not pok_verify(self.suite, sender, payload.commitment[0], (payload.pok_r, payload.pok_mu), context=self.session_id):
            return AbortReason.INVALID_PROOF
        return None

    def _full_commitment(self, payload: Any) -> Sequence[Point]:
        return payload.commitment  # type: ignore[no-any-return]

    def _complete(self, share_sum: int, summed: list[Point]) -> KeyShare:
        return finish_key(self.suite, self.me, self.participants, self.threshold, share_sum, summed)


def finish_key(
    suite: Ciphersuite, me: int, participants: Sequence[int], threshold: int, share: int, summed: Sequence[Point]
) -> KeyShare:
    """Group key and verifying shares from the summed commitment (ZF
    ``PublicKeyPackage::from_dkg_commitments``), then the suite's post-keygen tweak."""
    g = suite.group
    group_key = summed[0]
    verifying = {j: eval_commitment(g, summed, j) for j in participants}
    factor, tweak = suite.post_keygen_tweak(group_key)
    if factor != 1 or tweak:
        t_g = g.base_mul(tweak)
        group_key = g.mul(group_key, factor) + t_g
        verifying = {j: g.mul(y, factor) + t_g for j, y in verifying.items()}
        share = (factor * share + tweak) % g.order
    public = PublicKeyPackage(suite=suite, threshold=threshold, group_key=group_key, verifying_shares=verifying)
    return KeyShare(identifier=me, signing_share=share, public=public)
