"""Self-test of the libbitcoinkernel P2TR key-path harness with a single key.

Signing follows BIP341 "Constructing and spending Taproot outputs" (key-path-only
``taproot_tweak_seckey``) and BIP340 "Default Signing" (a secret whose point has odd
Y is negated), so the tweaked secret ``d'`` satisfies ``d'*G == lift_x(Q)``.
"""

from __future__ import annotations

from typing import NamedTuple

import coincurve
import pytest

from tests.chain.bitcoin_taproot import (
    SECP256K1_ORDER,
    build_keypath_spend,
    p2tr_script_pubkey,
    taproot_output_key,
    taptweak,
    verify_keypath_spend,
)

AMOUNT_SAT = 100_000
ODD_Y_PREFIX = 0x03
AUX = bytes(32)  # fixed BIP340 aux randomness keeps test signatures deterministic

# Internal secrets covering every (P has odd Y, Q has odd Y) combination.
SECRETS = {1: (False, True), 2: (False, False), 6: (True, True), 11: (True, False)}


class TweakedKey(NamedTuple):
    """A BIP341-tweaked single key and the parities seen while tweaking it."""

    internal_xonly: bytes
    output_xonly: bytes
    key: coincurve.PrivateKey
    p_odd: bool
    q_odd: bool


def _point(secret: int) -> bytes:
    """Compressed SEC1 encoding of ``secret * G``."""
    return coincurve.PublicKey.from_secret(secret.to_bytes(32, "big")).format()


def tweak_secret(secret: int) -> TweakedKey:
    """BIP341 key-path-only secret tweaking.

    ``d`` is negated if ``P = d*G`` has odd Y; ``d' = d + t mod n`` with
    ``t = hash_TapTweak(x(P))``; ``d'`` is negated if ``d'*G`` has odd Y.
    """
    p = _point(secret)
    p_odd = p[0] == ODD_Y_PREFIX
    d = SECP256K1_ORDER - secret if p_odd else secret
    d_tweaked = (d + taptweak(p[1:])) % SECP256K1_ORDER
    q = _point(d_tweaked)
    q_odd = q[0] == ODD_Y_PREFIX
    if q_odd:
        d_tweaked = SECP256K1_ORDER - d_tweaked
    key = coincurve.PrivateKey(d_tweaked.to_bytes(32, "big"))
    return TweakedKey(p[1:], q[1:], key, p_odd, q_odd)


def _spend(signer: coincurve.PrivateKey, output_xonly: bytes) -> tuple[bytes, bytes, int]:
    return build_keypath_spend(output_xonly, AMOUNT_SAT, lambda m: signer.sign_schnorr(m, AUX))


def test_output_key_matches_bip341_wallet_vector() -> None:
    """BIP341 wallet-test-vectors.json scriptPubKey[0] (key path only, no tree)."""
    internal = bytes.fromhex("d6889cb081036e0faefa3a35157ad71086b123b2b144b649798b494c300a961d")
    expected = bytes.fromhex("53a1f6e454df1aa2776a2814a721372d6258050de330b3c6d10ee8f4e0dda343")
    assert taproot_output_key(internal) == expected
    assert p2tr_script_pubkey(expected) == bytes.fromhex("5120") + expected


@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_single_key_spend_is_accepted(secret: int) -> None:
    """A correctly tweaked single-key BIP340 signature is accepted by Core."""
    tk = tweak_secret(secret)
    assert (tk.p_odd, tk.q_odd) == SECRETS[secret]
    assert taproot_output_key(tk.internal_xonly) == tk.output_xonly
    tx, spk, amount = _spend(tk.key, tk.output_xonly)
    assert spk == p2tr_script_pubkey(tk.output_xonly)
    assert amount == AMOUNT_SAT
    assert verify_keypath_spend(tx, spk, amount) is True


def test_flipped_signature_byte_is_rejected() -> None:
    """Flipping one bit of ``s`` makes the spend invalid."""
    tk = tweak_secret(6)

    def sign_and_corrupt(msg: bytes) -> bytes:
        sig = bytearray(tk.key.sign_schnorr(msg, AUX))
        sig[40] ^= 0x01  # inside s
        return bytes(sig)

    tx, spk, amount = build_keypath_spend(tk.output_xonly, AMOUNT_SAT, sign_and_corrupt)
    assert verify_keypath_spend(tx, spk, amount) is False


def test_signature_from_other_key_is_rejected() -> None:
    """A valid signature by a different tweaked key is rejected."""
    tk = tweak_secret(6)
    other = tweak_secret(11)
    tx, spk, amount = _spend(other.key, tk.output_xonly)
    assert verify_keypath_spend(tx, spk, amount) is False


def test_untweaked_internal_key_signature_is_rejected() -> None:
    """Signing with the internal (untweaked) key is rejected."""
    tk = tweak_secret(2)
    internal_key = coincurve.PrivateKey((2).to_bytes(32, "big"))
    tx, spk, amount = _spend(internal_key, tk.output_xonly)
    assert verify_keypath_spend(tx, spk, amount) is False


def test_wrong_amount_is_rejected() -> None:
    """The sighash commits to the spent amount (BIP341 sha_amounts)."""
    tk = tweak_secret(1)
    tx, spk, amount = _spend(tk.key, tk.output_xonly)
    assert verify_keypath_spend(tx, spk, amount) is True
    assert verify_keypath_spend(tx, spk, amount + 1) is False
    assert verify_keypath_spend(tx, spk, amount - 1) is False
