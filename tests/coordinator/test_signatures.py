"""``signature_problem``: the coordinator's (and the client's) check of a reported signature."""

from __future__ import annotations

import secrets
from typing import Any

import nacl.signing
import pytest

from shardguard import local
from shardguard.coordinator import signatures
from shardguard.coordinator.signatures import frost_share_culprits, signature_problem
from shardguard.crypto.suites import suite_by_scheme
from shardguard.protocols.frost import NoncePool, PrecommittedItem, sign_precommitted


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


# -- frost_share_culprits: RFC 9591 §5.4 at the coordinator ----------------------------------


def _one_step(scheme: str) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, dict[str, str]], dict[str, int], bytes]:
    """A 2-of-3 one-step signing of a fresh key by holders 1 and 3, as the coordinator sees it."""
    shares = local.split(scheme, None, 2, 3)
    suite = shares[0].public.suite
    g = suite.group
    message = b"pay 1 to bob"
    pools = {s.identifier: NoncePool(suite, secrets.token_bytes) for s in (shares[0], shares[2])}
    made = {i: pool.commit(1, now=0.0)[0] for i, pool in pools.items()}
    listed = tuple((i, c.hiding, c.binding) for i, c in sorted(made.items()))
    out: dict[str, dict[str, str]] = {}
    for s in (shares[0], shares[2]):
        item = PrecommittedItem(message, listed, made[s.identifier].id)
        (share,) = sign_precommitted(s, signers=[1, 3], items=[item], pool=pools[s.identifier])
        out[f"node-{s.identifier}"] = {"r": share.group_commitment.hex(), "z": g.scalar_encode(share.share).hex()}
    commitments = [{"index": i, "hiding": g.encode(d).hex(), "binding": g.encode(e).hex()} for i, d, e in listed]
    package = {"public": shares[0].public.to_dict()}
    return package, commitments, out, {"node-1": 1, "node-3": 3}, message


@pytest.mark.parametrize("scheme", ["ed25519", "secp256k1", "bip340"])
def test_the_signer_of_a_wrong_share_is_named_and_nobody_else(scheme: str) -> None:
    package, commitments, shares, index_of, message = _one_step(scheme)
    g = suite_by_scheme(scheme).group
    assert frost_share_culprits(scheme, package, 0, message, commitments, shares, index_of) == []
    z = g.scalar_decode(bytes.fromhex(shares["node-3"]["z"]))
    bad = {**shares, "node-3": {**shares["node-3"], "z": g.scalar_encode((z + 1) % g.order).hex()}}
    assert frost_share_culprits(scheme, package, 0, message, commitments, bad, index_of) == ["node-3"]


def test_no_signer_is_named_when_the_coordinator_s_own_view_cannot_be_trusted() -> None:
    """Another epoch's package, no package, a commitment list that does not give the R the
    signers reported, a malformed value: None (nobody blamed), never an exception."""
    scheme = "ed25519"
    package, commitments, shares, index_of, message = _one_step(scheme)
    g = suite_by_scheme(scheme).group
    z = g.scalar_decode(bytes.fromhex(shares["node-1"]["z"]))
    bad = {**shares, "node-1": {**shares["node-1"], "z": g.scalar_encode((z + 1) % g.order).hex()}}
    args = (message, commitments, bad, index_of)
    assert frost_share_culprits(scheme, package, 0, *args) == ["node-1"]
    assert frost_share_culprits(scheme, package, 1, *args) is None
    assert frost_share_culprits(scheme, None, 0, *args) is None
    assert frost_share_culprits(scheme, {"public_key": "00"}, 0, *args) is None
    swapped = [dict(commitments[0], hiding=commitments[1]["hiding"]), commitments[1]]
    assert frost_share_culprits(scheme, package, 0, message, swapped, bad, index_of) is None
    assert frost_share_culprits(scheme, package, 0, message + b"!", commitments, bad, index_of) is None
    broken = dict(package["public"], verifying_shares={"1": "zz"})
    assert frost_share_culprits(scheme, {"public": broken}, 0, *args) is None
    assert frost_share_culprits(scheme, package, 0, message, commitments, bad, {"node-1": 1}) is None
