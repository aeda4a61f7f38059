"""Self-test of the libbitcoinkernel P2WPKH harness with single keys signed by libsecp256k1
(coincurve), and against the BIP143 "Native P2WPKH" example transaction."""

from __future__ import annotations

import struct
from collections.abc import Callable

import coincurve
import pytest

from tests.chain.bitcoin_p2wpkh import (
    SECP256K1_ORDER,
    bip143_sighash,
    build_p2wpkh_spend,
    der_encode_signature,
    hash160,
    p2wpkh_script_code,
    p2wpkh_script_pubkey,
    verify_input,
    verify_p2wpkh_spend,
)

AMOUNT_SAT = 100_000
SECRETS = [1, 2, 3, 0xC0FFEE, SECP256K1_ORDER - 1]

# BIP143 "Example" / "Native P2WPKH" (bitcoin/bips bip-0143.mediawiki): the unsigned
# transaction's parts, the spent outputs, the expected sighash of input 1 and the signed
# transaction.
BIP143_OUTPOINTS = [
    bytes.fromhex("fff7f7881a8099afa6940d42d1e7f6362bec38171ea3edf433541db4e4ad969f00000000"),
    bytes.fromhex("ef51e1b804cc89d182d279655c3aa89e815b1b309fe287d9b2b55d57b90ec68a01000000"),
]
BIP143_SEQUENCES = [0xFFFFFFEE, 0xFFFFFFFF]
BIP143_OUTPUTS = [
    bytes.fromhex("202cb206000000001976a9148280b37df378db99f66f85c95a783a76ac7a6d5988ac"),
    bytes.fromhex("9093510d000000001976a9143bde42dbee7e4dbe6a21b2d50ce2f0167faa815988ac"),
]
BIP143_SPENT = [
    (bytes.fromhex("2103c9f4836b9a4f77fc0d81f7bcb01b7f1b35916864b9476c241ce9fc198bd25432ac"), 625_000_000),
    (bytes.fromhex("00141d0f172a0ecb48aee1be1f2687d2963ae33f71a1"), 600_000_000),
]
BIP143_PUBKEY = bytes.fromhex("025476c2e83188368da1ff3e292e7acafcdb3566bb0ad253f62fc70f07aeee6357")
BIP143_SIGHASH = bytes.fromhex("c37af31116d1b27caf68aae9e3ac82f1477929014d5b917657d0eb49478cb670")
BIP143_SIGNATURE = bytes.fromhex(
    "304402203609e17b84f6a7d30c80bfa610b5b4542f32a8a0d5447a12fb1366d7f01cc44a"
    "0220573a954c4518331561406f90300e8f3358f51928d43c212a8caed02de67eebee01"
)
BIP143_SIGNED_TX = bytes.fromhex(
    "01000000000102fff7f7881a8099afa6940d42d1e7f6362bec38171ea3edf433541db4e4ad969f000000004948"
    "30450221008b9d1dc26ba6a9cb62127b02742fa9d754cd3bebf337f7a55d114c8e5cdd30be022040529b194ba3"
    "f9281a99f2b1c0a19c0489bc22ede944ccf4ecbab4cc618ef3ed01eeffffffef51e1b804cc89d182d279655c3a"
    "a89e815b1b309fe287d9b2b55d57b90ec68a0100000000ffffffff02202cb206000000001976a9148280b37df3"
    "78db99f66f85c95a783a76ac7a6d5988ac9093510d000000001976a9143bde42dbee7e4dbe6a21b2d50ce2f016"
    "7faa815988ac000247304402203609e17b84f6a7d30c80bfa610b5b4542f32a8a0d5447a12fb1366d7f01cc44a"
    "0220573a954c4518331561406f90300e8f3358f51928d43c212a8caed02de67eebee0121025476c2e83188368d"
    "a1ff3e292e7acafcdb3566bb0ad253f62fc70f07aeee635711000000"
)


def _key(secret: int) -> coincurve.PrivateKey:
    return coincurve.PrivateKey(secret.to_bytes(32, "big"))


def _signer(key: coincurve.PrivateKey) -> Callable[[bytes], bytes]:
    return lambda sighash: key.sign_recoverable(sighash, hasher=None)[:64]  # libsecp256k1 signs low-s


def test_bip143_native_p2wpkh_example() -> None:
    assert p2wpkh_script_pubkey(BIP143_PUBKEY) == BIP143_SPENT[1][0]
    sighash = bip143_sighash(
        version=1,
        locktime=0x11,
        outpoints=BIP143_OUTPOINTS,
        sequences=BIP143_SEQUENCES,
        outputs=BIP143_OUTPUTS,
        input_index=1,
        script_code=p2wpkh_script_code(hash160(BIP143_PUBKEY)),
        amount=BIP143_SPENT[1][1],
    )
    assert sighash == BIP143_SIGHASH
    der = BIP143_SIGNATURE[:-1]
    r, s = int.from_bytes(der[4:36], "big"), int.from_bytes(der[38:70], "big")
    assert der_encode_signature(r, s) == der
    # Core accepts both inputs of the published transaction (input 0 is a legacy P2PK).
    assert verify_input(BIP143_SIGNED_TX, BIP143_SPENT, 1)
    assert verify_input(BIP143_SIGNED_TX, BIP143_SPENT, 0)
    assert not verify_input(BIP143_SIGNED_TX, [BIP143_SPENT[0], (BIP143_SPENT[1][0], BIP143_SPENT[1][1] + 1)], 1)


def test_der_encoding_matches_libsecp256k1() -> None:
    key = _key(0xC0FFEE)
    pads = set()
    for i in range(64):
        msg = struct.pack(">Q", i) * 4
        compact = key.sign_recoverable(msg, hasher=None)[:64]
        r, s = int.from_bytes(compact[:32], "big"), int.from_bytes(compact[32:], "big")
        der = der_encode_signature(r, s)
        assert der == key.sign(msg, hasher=None)  # RFC 6979, the same signature in DER
        pads.add((compact[0] >= 0x80, compact[32] >= 0x80))
    assert (True, False) in pads and (False, False) in pads  # r with and without the 0x00 pad
    assert der_encode_signature(1, 0x80) == bytes.fromhex("3007020101020200 80".replace(" ", ""))
    for r, s in [(0, 1), (1, 0), (SECP256K1_ORDER, 1), (1, SECP256K1_ORDER)]:
        with pytest.raises(ValueError):
            der_encode_signature(r, s)


@pytest.mark.parametrize("secret", SECRETS)
def test_single_key_spend_is_accepted(secret: int) -> None:
    key = _key(secret)
    pubkey = key.public_key.format(compressed=True)
    tx, spk, amount = build_p2wpkh_spend(pubkey, AMOUNT_SAT, _signer(key))
    assert spk == b"\x00\x14" + hash160(pubkey)
    assert amount == AMOUNT_SAT
    assert verify_p2wpkh_spend(tx, spk, amount) is True


def test_wrong_amount_is_rejected() -> None:
    """The BIP143 sighash commits to the spent amount."""
    key = _key(7)
    tx, spk, amount = build_p2wpkh_spend(key.public_key.format(), AMOUNT_SAT, _signer(key))
    assert verify_p2wpkh_spend(tx, spk, amount) is True
    assert verify_p2wpkh_spend(tx, spk, amount + 1) is False
    assert verify_p2wpkh_spend(tx, spk, amount - 1) is False


@pytest.mark.parametrize("byte", [0, 17, 31, 40, 63])
def test_corrupted_signature_is_rejected(byte: int) -> None:
    key = _key(11)

    def sign_and_corrupt(sighash: bytes) -> bytes:
        sig = bytearray(key.sign_recoverable(sighash, hasher=None)[:64])
        sig[byte] ^= 0x01  # r stays below n and s stays low for this key and these bytes
        return bytes(sig)

    tx, spk, amount = build_p2wpkh_spend(key.public_key.format(), AMOUNT_SAT, sign_and_corrupt)
    assert verify_p2wpkh_spend(tx, spk, amount) is False


def test_signature_from_other_key_is_rejected() -> None:
    key, other = _key(5), _key(6)
    tx, spk, amount = build_p2wpkh_spend(key.public_key.format(), AMOUNT_SAT, _signer(other))
    assert verify_p2wpkh_spend(tx, spk, amount) is False


def test_signature_over_another_message_is_rejected() -> None:
    key = _key(5)
    tx, spk, amount = build_p2wpkh_spend(key.public_key.format(), AMOUNT_SAT, lambda h: _signer(key)(bytes(32)))
    assert verify_p2wpkh_spend(tx, spk, amount) is False


def test_high_s_is_refused_by_the_harness_but_is_consensus_valid() -> None:
    """BIP146 LOW_S is policy, not consensus, and libbitcoinkernel only has consensus flags:
    the harness itself must refuse high-s signatures, which nodes would not relay."""
    key = _key(13)

    def sign_high_s(sighash: bytes) -> bytes:
        compact = _signer(key)(sighash)
        s = int.from_bytes(compact[32:], "big")
        return compact[:32] + (SECP256K1_ORDER - s).to_bytes(32, "big")

    with pytest.raises(ValueError, match="high-s"):
        build_p2wpkh_spend(key.public_key.format(), AMOUNT_SAT, sign_high_s)
    tx, spk, amount = build_p2wpkh_spend(key.public_key.format(), AMOUNT_SAT, sign_high_s, enforce_low_s=False)
    assert verify_p2wpkh_spend(tx, spk, amount) is True


def test_uncompressed_key_is_refused() -> None:
    key = _key(3)
    with pytest.raises(ValueError, match="compressed"):
        build_p2wpkh_spend(key.public_key.format(compressed=False), AMOUNT_SAT, _signer(key))
