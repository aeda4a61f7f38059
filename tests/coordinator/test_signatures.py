"""``signature_problem``: the coordinator's (and the client's) check of a reported signature."""

from __future__ import annotations

import nacl.signing

from shardguard.coordinator import signatures
from shardguard.coordinator.signatures import signature_problem


def _ed25519() -> tuple[str, bytes, bytes]:
    sk = nacl.signing.SigningKey.generate()
    msg = b"pay 1 to bob"
    return sk.verify_key.encode().hex(), msg, sk.sign(msg).signature


def test_ed25519_signature_checked_against_the_request() -> None:
    key, msg, sig = _ed25519()
    params = {"message_hex": msg.hex()}
    good = {"public_key": key, "signature": sig.hex()}
    for _ in range(2):  # the second time with the key's decoded point kept
        assert signature_problem("ed25519", key, None, params, good) is None
    assert "does not verify" in str(signature_problem("ed25519", key, None, {"message_hex": (msg + b"!").hex()}, good))
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    assert "does not verify" in str(signature_problem("ed25519", key, None, params, {**good, "signature": flipped.hex()}))


def test_a_key_that_does_not_decode_is_refused_every_time_and_not_kept() -> None:
    _, msg, sig = _ed25519()
    # y = p - 1: the point (0, -1) of order 2, which the subgroup check refuses.
    bad = "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"
    signatures._public_point.cache_clear()
    for _ in range(2):
        problem = signature_problem("ed25519", bad, None, {"message_hex": msg.hex()}, {"public_key": bad, "signature": sig.hex()})
        assert problem is not None and problem.startswith("cannot check the signature")
    assert signatures._public_point.cache_info().currsize == 0
