"""Proactive share refresh, threshold kept (ZF ``keys/refresh.rs``, DKG mode).

The Pedersen VSS of the DKG with every constant term zero: each participant adds the sum of
the zero-sharings it receives to its share. The group key is unchanged, every verifying share
changes, the epoch goes up by one. Holders left out of ``participants`` are removed.

The threshold cannot change (ZF 2.2.0 fix): it is taken from the key, never from the caller.
Old and new shares do not combine: a mix interpolates to a wrong key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shardguard.crypto.group import Point, Rng
from shardguard.crypto.shamir import eval_commitment, random_polynomial
from shardguard.protocols.dkg._messages import DkgConfirm, DkgEcho, DkgSecretShare, RefreshRound1
from shardguard.protocols.dkg._vss import PedersenVss
from shardguard.protocols.errors import AbortReason, UsageError
from shardguard.protocols.keys import KeyShare, PublicKeyPackage

__all__ = ["Refresh"]


class Refresh(PedersenVss):
    PROTOCOL = "frost-refresh"
    ROUND1 = RefreshRound1
    EXPECTS = {(1, RefreshRound1): True, (2, DkgEcho): True, (2, DkgSecretShare): False, (3, DkgConfirm): True}

    def __init__(self, key_share: KeyShare, *, participants: Sequence[int], instance: bytes, rng: Rng) -> None:
        public = key_share.public
        ids = public.quorum(participants, "refresh participant")
        if key_share.identifier not in ids:
            raise UsageError(f"party {key_share.identifier} is not among the refresh participants")
        sid = public.session_id(self.PROTOCOL, ids, instance)
        super().__init__(
            public.suite, identifier=key_share.identifier, participants=ids, threshold=public.threshold, session_id=sid, rng=rng
        )
        self._old = key_share

    def _polynomial(self) -> list[int]:
        return random_polynomial(self.suite.group, 0, self.threshold - 1, self._rng)

    def _round1_payload(self, coefficients: list[int], commitment: list[Point]) -> RefreshRound1:
        return RefreshRound1(suite=self.suite, commitment=tuple(commitment[1:]))

    def _check_round1(self, sender: int, payload: Any) -> AbortReason | None:
        return None if len(payload.commitment) == self.threshold - 1 else AbortReason.INVALID_COMMITMENT

    def _full_commitment(self, payload: Any) -> Sequence[Point]:
        return (self.suite.group.identity(), *payload.commitment)

    def _complete(self, share_sum: int, summed: list[Point]) -> KeyShare:
        g = self.suite.group
        old = self._old.public
        verifying = {j: old.verifying_shares[j] + eval_commitment(g, summed, j) for j in self.participants}
        public = PublicKeyPackage(
            suite=self.suite, threshold=self.threshold, group_key=old.group_key, verifying_shares=verifying, epoch=old.epoch + 1
        )
        new_share = (self._old.signing_share + share_sum) % g.order
        return KeyShare(identifier=self.me, signing_share=new_share, public=public)
