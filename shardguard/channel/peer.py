"""Admission: a peer card becomes something we may encrypt to only after its evidence passed.

ARCHITECTURE §6: "A peer sends nothing secret until it has verified that evidence against its
policy." That rule is enforced by types, not by discipline: :class:`~.channel.Channel` takes an
:class:`AdmittedPeer`, and the only way to make one is :func:`admit_peer`, which

1. applies the :class:`VerificationPolicy` to the verified evidence (platform, simulated,
   debug, TCB status, freshness of evidence that carries a time, measurements), then
2. requires the evidence's report data to equal :func:`~.identity.binding` of *this* card and
   *our* nonce. Without step 2 the evidence would prove that some genuine enclave exists, not
   that the keys on the card belong to it: a host could staple any card to a genuine report.

Step 2 also gives freshness on platforms whose evidence has no timestamp (SEV-SNP, TDX, SGX):
the nonce is ours, so the report was made after we asked. The caller must draw the nonce from a
CSPRNG, send it to that one peer, and use it for one admission only.

Proving the evidence itself (signature chains to pinned roots, collateral) is the
attestation layer's job (:mod:`shardguard.attestation`); this module starts from its
:class:`Verified` result.
"""

from __future__ import annotations

import datetime as dt
import hmac
from typing import Any, NoReturn

from shardguard.attestation.errors import AttestationError, AttestationReason
from shardguard.attestation.policy import VerificationPolicy
from shardguard.attestation.result import Verified
from shardguard.channel.identity import ChannelUsageError, PeerCard, binding

__all__ = ["AdmittedPeer", "admit_peer"]

# Only this module holds the key to AdmittedPeer's constructor.
_ADMIT = object()


class AdmittedPeer:
    """A peer card whose attested evidence passed our policy and is bound to that card.

    Immutable; made only by :func:`admit_peer`. It cannot be built directly, pickled or copied
    into a new object (an admission is a local, time-bound fact: to persist or move it,
    verify the evidence again).

    Attributes:
        card: the admitted card (node id, identity key, channel key, KEM id).
        verified: what the attestation verifier proved about the evidence.
        admitted_at: the ``now`` the policy was applied at.
    """

    __slots__ = ("_admitted_at", "_card", "_verified")

    _card: PeerCard
    _verified: Verified
    _admitted_at: dt.datetime

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("an AdmittedPeer is made only by admit_peer()")

    @classmethod
    def _make(cls, token: object, card: PeerCard, verified: Verified, admitted_at: dt.datetime) -> AdmittedPeer:
        if token is not _ADMIT:
            raise TypeError("an AdmittedPeer is made only by admit_peer()")
        self = object.__new__(cls)
        object.__setattr__(self, "_card", card)
        object.__setattr__(self, "_verified", verified)
        object.__setattr__(self, "_admitted_at", admitted_at)
        return self

    @property
    def card(self) -> PeerCard:
        return self._card

    @property
    def node_id(self) -> str:
        return self._card.node_id

    @property
    def verified(self) -> Verified:
        return self._verified

    @property
    def admitted_at(self) -> dt.datetime:
        return self._admitted_at

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("AdmittedPeer is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("AdmittedPeer is immutable")

    def __copy__(self) -> AdmittedPeer:
        return self  # immutable: a copy may be the object itself, never a rebuilt one

    def __deepcopy__(self, memo: Any) -> AdmittedPeer:
        return self

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        # Unpickling would rebuild the object without admit_peer(): refuse.
        raise TypeError("an AdmittedPeer cannot be pickled; verify the peer's evidence again")

    def __repr__(self) -> str:
        v = self._verified
        sim = ", SIMULATED" if v.simulated else ""
        return f"AdmittedPeer(node_id={self.node_id!r}, kem={self._card.kem_id.name}, platform={v.platform}{sim})"


def admit_peer(
    card: PeerCard,
    verified: Verified,
    *,
    nonce: bytes,
    policy: VerificationPolicy,
    now: dt.datetime,
) -> AdmittedPeer:
    """Admit ``card`` on the strength of ``verified`` evidence.

    Args:
        card: the peer's card, as received (untrusted until this returns).
        verified: the verifier's result for the peer's evidence.
        nonce: the fresh nonce we sent that peer (16..1024 bytes).
        policy: our verification policy.
        now: the current time, timezone-aware (the caller reads the clock, not this module).

    Returns:
        an :class:`AdmittedPeer`, the only thing :class:`~.channel.Channel` will encrypt to.

    Raises:
        AttestationError: the policy refuses the evidence (its reason: SIMULATED, PLATFORM,
            DEBUG, TCB_STATUS, STALE, MEASUREMENT), or the report data is not
            ``binding(card, nonce)`` (NONCE).
        ChannelUsageError: wrong argument types, a naive ``now``, or a bad nonce length.
    """
    if not isinstance(card, PeerCard):
        raise ChannelUsageError("card must be a PeerCard")
    if not isinstance(verified, Verified):
        raise ChannelUsageError("verified must be a shardguard.attestation.Verified")
    if not isinstance(policy, VerificationPolicy):
        raise ChannelUsageError("policy must be a VerificationPolicy")
    if not isinstance(now, dt.datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise ChannelUsageError("now must be a timezone-aware datetime")
    expected = binding(card, nonce)  # validates the nonce before any verdict is given

    policy.check(verified, now=now)
    # Public values, but compare_digest costs nothing and keeps the habit.
    if type(verified.report_data) is not bytes or not hmac.compare_digest(verified.report_data, expected):
        raise AttestationError(
            AttestationReason.NONCE,
            f"report data is not binding(card of {card.node_id!r}, our nonce)",
            platform=verified.platform,
            field="report_data",
        )
    return AdmittedPeer._make(_ADMIT, card, verified, now)
