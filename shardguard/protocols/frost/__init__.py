"""FROST threshold Schnorr signing (RFC 9591), Ed25519, secp256k1 and BIP340/Taproot."""

from shardguard.protocols.frost._core import CheaterDetection, SigningContext, prepare
from shardguard.protocols.frost._messages import SignRound1, SignRound2
from shardguard.protocols.frost._party import FrostSigner

__all__ = ["CheaterDetection", "FrostSigner", "SignRound1", "SignRound2", "SigningContext", "prepare"]
