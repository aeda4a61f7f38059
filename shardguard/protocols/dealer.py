"""Trusted-dealer key generation, to import an existing key (RFC 9591 Appendix C).

The dealer sees the whole key: use it only to bring an existing key into ShardGuard, on a
machine you trust, then refresh. The suite's post-keygen tweak applies as after a DKG (for
``bip340`` the shares are of the BIP341 output key of the imported internal key).
"""

from __future__ import annotations

from collections.abc import Sequence

from shardguard.crypto.ciphersuite import Ciphersuite
from shardguard.crypto.group import Rng
from shardguard.crypto.shamir import feldman_commit, split_secret
from shardguard.protocols.dkg._party import finish_key
from shardguard.protocols.errors import UsageError
from shardguard.protocols.keys import KeyShare, check_participants, check_threshold

__all__ = ["trusted_dealer_keygen"]


def trusted_dealer_keygen(
    suite: Ciphersuite, secret: int | None, threshold: int, participants: Sequence[int], *, rng: Rng, allow_single: bool = False
) -> list[KeyShare]:
    """Shamir-split ``secret`` (a fresh random key when None) with Feldman commitments."""
    ids = check_participants(participants)
    check_threshold(threshold, len(ids), allow_single=allow_single)
    g = suite.group
    if secret is None:
        secret = g.random_scalar(rng)
    if type(secret) is not int or not 0 < secret < g.order:
        raise UsageError("secret key out of range")
    coeffs, shares = split_secret(g, secret, threshold, ids, rng)
    commitment = feldman_commit(g, coeffs)
    return [finish_key(suite, i, ids, threshold, shares[i], commitment) for i in ids]
