"""Pedersen distributed key generation with proofs of knowledge and echo broadcast."""

from shardguard.protocols.dkg._messages import DkgConfirm, DkgEcho, DkgRound1, DkgSecretShare, RefreshRound1
from shardguard.protocols.dkg._party import Dkg

__all__ = ["Dkg", "DkgConfirm", "DkgEcho", "DkgRound1", "DkgSecretShare", "RefreshRound1"]
