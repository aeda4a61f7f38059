"""Ciphersuites: small bindings of a group and its hashes (RFC 9591 §6, BIP340, ECDSA)."""

from __future__ import annotations

from shardguard.crypto.ciphersuite import Ciphersuite
from shardguard.crypto.errors import UnsupportedSuite
from shardguard.crypto.suites.bip340 import BIP340
from shardguard.crypto.suites.ecdsa import ECDSA_SECP256K1
from shardguard.crypto.suites.ed25519 import FROST_ED25519
from shardguard.crypto.suites.secp256k1 import FROST_SECP256K1

__all__ = [
    "ALL_SUITES",
    "BIP340",
    "ECDSA_SECP256K1",
    "FROST_ED25519",
    "FROST_SECP256K1",
    "SUITES",
    "suite_by_context",
    "suite_by_scheme",
]

#: The FROST suites, by their CLI scheme name.
SUITES: dict[str, Ciphersuite] = {s.scheme: s for s in (FROST_ED25519, FROST_SECP256K1, BIP340)}
#: Every suite, FROST and ECDSA (DKLs23), by scheme name.
ALL_SUITES: dict[str, Ciphersuite] = {**SUITES, ECDSA_SECP256K1.scheme: ECDSA_SECP256K1}
_BY_CONTEXT: dict[str, Ciphersuite] = {s.context: s for s in ALL_SUITES.values()}


def suite_by_scheme(scheme: str) -> Ciphersuite:
    try:
        return ALL_SUITES[scheme]
    except KeyError:
        raise UnsupportedSuite(scheme) from None


def suite_by_context(context: str) -> Ciphersuite:
    try:
        return _BY_CONTEXT[context]
    except KeyError:
        raise UnsupportedSuite(context) from None
