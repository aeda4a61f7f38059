"""A P2WPKH spend signed by a 2-of-3 DKLs23 threshold ECDSA group is valid under Bitcoin Core's
own script interpreter (libbitcoinkernel via py-bitcoinkernel), for the group key and for a
BIP32 non-hardened child of it."""

from __future__ import annotations

import itertools

import coincurve
import pytest
from bip_utils import Bip32KeyData, Bip32Secp256k1

from shardguard import local
from tests.chain.bitcoin_p2wpkh import build_p2wpkh_spend, der_encode_signature, p2wpkh_script_pubkey, verify_p2wpkh_spend
from tests.helpers.rng import DeterministicRng

AMOUNT_SAT = 50_000


@pytest.fixture(scope="module")
def shares() -> list[local.EcdsaKeyShare]:
    return local.ecdsa_keygen(2, 3, rng=DeterministicRng(143))


def test_threshold_group_spends_p2wpkh(shares: list[local.EcdsaKeyShare]) -> None:
    group_key = shares[0].public.public_key_bytes
    for signers in itertools.combinations(shares, 2):
        made = []

        def sign(sighash: bytes, signers: tuple[local.EcdsaKeyShare, ...] = signers) -> bytes:
            sig = local.ecdsa_sign(list(signers), sighash)
            made.append(sig)
            return sig.to_bytes()

        tx, spk, amount = build_p2wpkh_spend(group_key, AMOUNT_SAT, sign)
        assert made[0].public_key == group_key
        assert spk == p2wpkh_script_pubkey(group_key)
        assert verify_p2wpkh_spend(tx, spk, amount)
        assert not verify_p2wpkh_spend(tx, spk, amount + 1)  # the BIP143 sighash commits to the amount


def test_threshold_group_spends_p2wpkh_of_derived_key(shares: list[local.EcdsaKeyShare]) -> None:
    """``path=(0, 7)``, i.e. m/0/7: the P2WPKH key is the BIP32 child, computed here independently by bip_utils."""
    group_key, chain_code = shares[0].public.public_key_bytes, shares[0].chain_code
    child = Bip32Secp256k1.FromPublicKey(group_key, Bip32KeyData(chain_code=chain_code)).DerivePath("0/7")
    child_key = child.PublicKey().RawCompressed().ToBytes()
    assert child_key != group_key

    signed = []

    def sign(sighash: bytes) -> bytes:
        sig = local.ecdsa_sign([shares[0], shares[2]], sighash, path=(0, 7))
        signed.append(sig)
        return sig.to_bytes()

    tx, spk, amount = build_p2wpkh_spend(child_key, AMOUNT_SAT, sign)
    assert signed[0].public_key == child_key
    assert signed[0].path == "m/0/7"
    assert verify_p2wpkh_spend(tx, spk, amount)
    # libsecp256k1: the signature is by the child key, not by the group key.
    der = der_encode_signature(signed[0].r, signed[0].s)
    assert coincurve.PublicKey(child_key).verify(der, signed[0].digest, hasher=None)
    assert not coincurve.PublicKey(group_key).verify(der, signed[0].digest, hasher=None)


def test_corrupted_threshold_signature_is_refused(shares: list[local.EcdsaKeyShare]) -> None:
    group_key = shares[0].public.public_key_bytes

    def sign_and_corrupt(sighash: bytes) -> bytes:
        sig = bytearray(local.ecdsa_sign(shares[1:], sighash).to_bytes())
        sig[5] ^= 0x04  # inside r
        return bytes(sig)

    tx, spk, amount = build_p2wpkh_spend(group_key, AMOUNT_SAT, sign_and_corrupt)
    assert not verify_p2wpkh_spend(tx, spk, amount)

    def sign_other_message(sighash: bytes) -> bytes:
        return local.ecdsa_sign(shares[1:], bytes(32)).to_bytes()

    tx, spk, amount = build_p2wpkh_spend(group_key, AMOUNT_SAT, sign_other_message)
    assert not verify_p2wpkh_spend(tx, spk, amount)
