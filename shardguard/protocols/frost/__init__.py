"""FROST threshold Schnorr signing (RFC 9591), Ed25519, secp256k1 and BIP340/Taproot."""

from shardguard.crypto.frost import CheaterDetection, SigningContext, prepare
from shardguard.protocols.frost._batch import FrostBatchSigner
from shardguard.protocols.frost._messages import SignBatchRound1, SignBatchRound2, SignRound1, SignRound2
from shardguard.protocols.frost._party import FrostSigner, signer_ids
from shardguard.protocols.frost._precommit import (
    COMMITMENT_ID_BYTES,
    NonceError,
    NoncePool,
    PrecommittedItem,
    PrecommittedShare,
    PublishedCommitment,
    sign_precommitted,
)

__all__ = [
    "COMMITMENT_ID_BYTES",
    "CheaterDetection",
    "FrostBatchSigner",
    "FrostSigner",
    "NonceError",
    "NoncePool",
    "PrecommittedItem",
    "PrecommittedShare",
    "PublishedCommitment",
    "SignBatchRound1",
    "SignBatchRound2",
    "SignRound1",
    "SignRound2",
    "SigningContext",
    "prepare",
    "sign_precommitted",
    "signer_ids",
]
