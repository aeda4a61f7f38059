"""Attested end-to-end channels between nodes (ARCHITECTURE §6).

A node makes its keys at boot (:class:`NodeKeys`), attests :func:`binding` of its
:class:`PeerCard` and a verifier's nonce, and is admitted by each peer with :func:`admit_peer`
only when that evidence passes the peer's policy. A :class:`Channel` then carries encrypted
(under link keys sealed with HPKE, RFC 9180), Ed25519-signed envelopes that the untrusted coordinator relays but cannot read,
forge, re-target or replay.

This package imports :mod:`shardguard.attestation` and :mod:`shardguard.crypto` only.
"""

from shardguard.channel.challenge import (
    Challenge,
    ChallengeBook,
    ChallengeError,
    challenge_nonce,
    challenges_from_wire,
    challenges_to_wire,
)
from shardguard.channel.channel import (
    MAX_ENVELOPE,
    MAX_PLAINTEXT,
    Channel,
    ChannelAuthError,
    ChannelReplayError,
    ReplayReason,
)
from shardguard.channel.identity import (
    BINDING_LEN,
    DOMAIN_TAG,
    CardError,
    ChannelError,
    ChannelUsageError,
    KemId,
    NodeKeys,
    PeerCard,
    binding,
)
from shardguard.channel.peer import AdmittedPeer, admit_peer

__all__ = (
    "BINDING_LEN",
    "DOMAIN_TAG",
    "MAX_ENVELOPE",
    "MAX_PLAINTEXT",
    "AdmittedPeer",
    "CardError",
    "Challenge",
    "ChallengeBook",
    "ChallengeError",
    "Channel",
    "ChannelAuthError",
    "ChannelError",
    "ChannelReplayError",
    "ChannelUsageError",
    "KemId",
    "NodeKeys",
    "PeerCard",
    "ReplayReason",
    "admit_peer",
    "binding",
    "challenge_nonce",
    "challenges_from_wire",
    "challenges_to_wire",
)
