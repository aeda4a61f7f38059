"""A P2TR key-path spend signed by a 2-of-3 FROST group is valid under Bitcoin Core's own
script interpreter (libbitcoinkernel via py-bitcoinkernel)."""

from __future__ import annotations

import itertools

import pytest

from shardguard import local
from tests.chain.bitcoin_taproot import build_keypath_spend, taproot_output_key, verify_keypath_spend
from tests.helpers.rng import DeterministicRng


@pytest.mark.parametrize("seed", range(4))
def test_frost_group_spends_p2tr_keypath(seed: int) -> None:
    shares = local.keygen("bip340", 2, 3, rng=DeterministicRng(seed))
    output_key = shares[0].public.public_key_bytes  # already the BIP341 output key Q
    for signers in itertools.combinations(shares, 2):
        tx, spk, amount = build_keypath_spend(output_key, 50_000, lambda sighash, s=signers: local.sign(list(s), sighash))
        assert verify_keypath_spend(tx, spk, amount)
        assert not verify_keypath_spend(tx, spk, amount + 1)  # the signature commits to the amount


def test_group_key_is_the_bip341_output_key_of_the_internal_key() -> None:
    """Shares are of Q = P + H_TapTweak(P)·G (key-path only, no hidden script path); the
    harness computes Q independently from the imported internal key P = d·G."""
    import coincurve

    for d in (1, 2, 6, 11, 0xC0FFEE):  # both parities of P and of Q occur among these
        shares = local.split("bip340", d, 2, 3, rng=DeterministicRng(d))
        internal = coincurve.PublicKey.from_valid_secret(d.to_bytes(32, "big")).format()[1:]
        assert shares[0].public.public_key_bytes == taproot_output_key(internal)
        tx, spk, amount = build_keypath_spend(taproot_output_key(internal), 20_000, lambda h, s=shares: local.sign(s[:2], h))
        assert verify_keypath_spend(tx, spk, amount)


def test_refreshed_group_still_spends() -> None:
    shares = local.refresh(local.keygen("bip340", 2, 3, rng=DeterministicRng(5)), rng=DeterministicRng(6))
    tx, spk, amount = build_keypath_spend(shares[0].public.public_key_bytes, 10_000, lambda h: local.sign(shares[1:], h))
    assert verify_keypath_spend(tx, spk, amount)
