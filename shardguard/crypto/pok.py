"""Schnorr proof of knowledge of a discrete log, as used by the Pedersen DKG.

.. danger:: hazmat.

FROST paper (ePrint 2020/852) Fig. 1 round 1 steps 2 and 5; challenge as ZF frost
``dkg::challenge``: ``c = HDKG(context ‖ ser(id) ‖ ser(φ_0) ‖ ser(R))``. With an empty
``context`` this is exactly ZF's; the DKG passes its session id so a proof cannot be replayed
into another session.
"""

from __future__ import annotations

from shardguard.crypto.ciphersuite import Ciphersuite
from shardguard.crypto.group import Point, Rng

__all__ = ["pok_challenge", "pok_prove", "pok_verify"]


def pok_challenge(suite: Ciphersuite, identifier: int, public: Point, r: Point, context: bytes = b"") -> int:
    g = suite.group
    return suite.hdkg(context + g.scalar_encode(identifier) + g.encode(public) + g.encode(r))


def pok_prove(suite: Ciphersuite, identifier: int, secret: int, rng: Rng, context: bytes = b"") -> tuple[Point, int]:
    """Prove knowledge of ``secret`` for ``secret·G``; returns ``(R, μ)``."""
    g = suite.group
    k = g.random_scalar(rng)
    r = g.base_mul(k)
    c = pok_challenge(suite, identifier, g.base_mul(secret), r, context)
    return r, (k + secret * c) % g.order


def pok_verify(suite: Ciphersuite, identifier: int, public: Point, proof: tuple[Point, int], context: bytes = b"") -> bool:
    """Check ``R == μ·G − c·φ_0`` (as ``μ·G == R + c·φ_0``)."""
    g = suite.group
    r, mu = proof
    c = pok_challenge(suite, identifier, public, r, context)
    return g.base_mul(mu) == r + g.mul(public, c)
