"""Soak: random configurations, random signer subsets, refresh and repair interleaved.

Bounded in ``make test``; ``SHARDGUARD_SLOW=1`` runs the long version."""

from __future__ import annotations

import os
import random

import pytest

from shardguard import local
from shardguard.interop import verify_independently
from shardguard.protocols.suites import SCHEMES
from tests.helpers.rng import DeterministicRng

ROUNDS = 300 if os.environ.get("SHARDGUARD_SLOW") == "1" else 6


@pytest.mark.slow
@pytest.mark.parametrize("scheme", SCHEMES)
def test_soak(scheme: str) -> None:
    rnd = random.Random(f"soak/{scheme}")  # test-only PRNG: picks configurations, not secrets
    for k in range(ROUNDS):
        n = rnd.randint(2, 7)
        t = rnd.randint(2, n)
        rng = DeterministicRng(f"{scheme}/{k}".encode())
        shares = local.keygen(scheme, t, n, rng=rng)
        for step in range(3):
            signers = rnd.sample(shares, rnd.randint(t, n))
            msg = rng(rnd.randint(0, 64))
            sig = local.sign(signers, msg, rng=rng)
            assert verify_independently(scheme, shares[0].public.public_key_bytes, msg, sig), (k, step)
            action = rnd.choice(["refresh", "repair", "none"])
            if action == "refresh":
                shares = local.refresh(shares, rng=rng)
            elif action == "repair" and t < n:
                lost = rnd.choice(shares)
                helpers = rnd.sample([s for s in shares if s is not lost], t)
                rebuilt = local.repair(helpers, lost.identifier, lost.public, rng=rng)
                assert rebuilt.signing_share == lost.signing_share
