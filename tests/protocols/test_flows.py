"""End-to-end protocol flows in memory: DKG, signing by every t-subset, refresh, repair,
dealer import. Every signature is also verified by an implementation that is not ours."""

from __future__ import annotations

import itertools
import pickle

import pytest

from shardguard import local
from shardguard.crypto.shamir import interpolate
from shardguard.interop import verify_independently
from shardguard.protocols import KeyShare, MessageRejected, UsageError
from shardguard.protocols.suites import SCHEMES, verify_signature
from tests.helpers.rng import DeterministicRng

CONFIGS = [(2, 2), (2, 3), (3, 5)]


def _check(shares: list[KeyShare], msg: bytes) -> bytes:
    sig = local.sign(shares, msg, rng=DeterministicRng(msg))
    pub = shares[0].public
    assert verify_signature(pub, msg, sig)
    assert verify_independently(pub.suite.scheme, pub.public_key_bytes, msg, sig)
    assert not verify_independently(pub.suite.scheme, pub.public_key_bytes, msg + b"!", sig)
    return sig


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(("t", "n"), CONFIGS, ids=[f"{t}of{n}" for t, n in CONFIGS])
def test_dkg_then_every_t_subset_signs(scheme: str, t: int, n: int) -> None:
    shares = local.keygen(scheme, t, n, rng=DeterministicRng(t * 100 + n))
    pub = shares[0].public
    assert all(s.public == pub for s in shares) and pub.threshold == t and pub.participants == tuple(range(1, n + 1))
    pub.check_consistent()
    for subset in itertools.combinations(shares, t):
        _check(list(subset), f"{scheme}/{[s.identifier for s in subset]}".encode())
    _check(shares, b"all n signers")  # more than t is fine too


@pytest.mark.parametrize("scheme", SCHEMES)
def test_larger_groups(scheme: str) -> None:
    shares = local.keygen(scheme, 5, 9, rng=DeterministicRng(59))
    _check([shares[i] for i in (0, 2, 4, 6, 8)], b"5 of 9")
    _check(shares[4:], b"the other 5 of 9")


def test_max_parties_dkg_is_refused_beyond_255() -> None:
    with pytest.raises(UsageError):
        local.keygen("ed25519", 2, 256)
    with pytest.raises(UsageError):
        local.keygen("ed25519", 4, 3)  # T > N


def test_single_party_threshold_needs_explicit_consent() -> None:
    with pytest.raises(UsageError, match="allow_single"):
        local.keygen("ed25519", 1, 3)
    shares = local.keygen("ed25519", 1, 2, allow_single=True, rng=DeterministicRng(3))
    _check([shares[1]], b"alone")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_refresh_keeps_key_changes_shares(scheme: str) -> None:
    shares = local.keygen(scheme, 2, 3, rng=DeterministicRng(7))
    new = local.refresh(shares, rng=DeterministicRng(8))
    pub, npub = shares[0].public, new[0].public
    assert npub.group_key == pub.group_key and npub.epoch == pub.epoch + 1
    assert all(a.signing_share != b.signing_share for a, b in zip(shares, new))
    assert all(npub.verifying_shares[i] != pub.verifying_shares[i] for i in pub.participants)
    npub.check_consistent()
    for subset in itertools.combinations(new, 2):
        _check(list(subset), b"after refresh")
    # Old and new shares never combine: the key they interpolate to is not the group key.
    g = pub.suite.group
    mixed = interpolate({1: shares[0].signing_share, 2: new[1].signing_share}, g.order)
    assert g.base_mul(mixed) != pub.group_key
    with pytest.raises(MessageRejected):  # and the protocol refuses them anyway: epochs differ
        local.sign([shares[0], new[1]], b"mix")


def test_refresh_can_remove_a_holder() -> None:
    shares = local.keygen("bip340", 2, 4, rng=DeterministicRng(9))
    new = local.refresh(shares[:3], rng=DeterministicRng(10))
    assert new[0].public.participants == (1, 2, 3)
    _check([new[0], new[2]], b"without party 4")
    with pytest.raises(UsageError):
        local.refresh(shares[:1])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_repair_rebuilds_exactly_the_lost_share(scheme: str) -> None:
    shares = local.keygen(scheme, 3, 5, rng=DeterministicRng(11))
    rebuilt = local.repair([shares[0], shares[2], shares[4]], 2, shares[0].public, rng=DeterministicRng(12))
    assert rebuilt.signing_share == shares[1].signing_share and rebuilt.identifier == 2
    _check([rebuilt, shares[3], shares[4]], b"with a repaired share")
    with pytest.raises(UsageError):
        local.repair([shares[0], shares[2]], 2, shares[0].public)  # fewer than t helpers


@pytest.mark.parametrize("scheme", SCHEMES)
def test_trusted_dealer_import(scheme: str) -> None:
    secret = 0x1234567890ABCDEF
    shares = local.split(scheme, secret, 2, 3, rng=DeterministicRng(13))
    g = shares[0].suite.group
    if scheme != "bip340":
        assert shares[0].public.group_key == g.base_mul(secret)
    _check(shares[1:], b"imported")


def test_secrets_are_not_printable_or_picklable() -> None:
    share = local.keygen("ed25519", 2, 2, rng=DeterministicRng(14))[0]
    s = share.signing_share
    text = repr(share) + str(share)
    assert "redacted" in text
    for form in (hex(s)[2:], str(s), share.suite.group.scalar_encode(s).hex()):
        assert form not in text
    with pytest.raises(TypeError):
        pickle.dumps(share)


def test_aborting_party_still_hands_out_its_confirmation() -> None:
    """A lying confirmation already buffered when a party finishes round 2 aborts it at once;
    its own confirmation is still handed to the caller (``ProtocolAbort.outgoing``), so the
    other honest parties abort too instead of waiting forever."""
    from shardguard.crypto.suites import FROST_ED25519 as suite
    from shardguard.protocols import BROADCAST, AbortReason, Message, ProtocolAbort
    from shardguard.protocols.dkg import Dkg, DkgConfirm
    from shardguard.protocols.wire import encode_payload

    rng = DeterministicRng(21)
    parties = {i: Dkg(suite, identifier=i, participants=[1, 2, 3], threshold=2, instance=b"x" * 32, rng=rng) for i in (1, 2, 3)}
    round1 = [m for p in parties.values() for m in p.start()]
    round2 = [out for m in round1 for i, p in parties.items() if i != m.sender for out in p.receive(m)]
    lie = Message(
        session_id=parties[1].session_id,
        round=3,
        sender=3,
        recipient=BROADCAST,
        payload=encode_payload(DkgConfirm(suite=suite, package_digest=bytes(32))),
    )
    assert parties[1].receive(lie) == []  # buffered: party 1 is still in round 2
    with pytest.raises(ProtocolAbort) as e:
        for m in round2:
            if m.sender != 1 and m.recipient in (BROADCAST, 1):
                parties[1].receive(m)
    assert e.value.reason is AbortReason.INCONSISTENT_KEY and e.value.culprits == {3}
    assert [(m.round, m.sender) for m in e.value.outgoing] == [(3, 1)]
    for m in round2:
        if m.sender != 2 and m.recipient in (BROADCAST, 2):
            parties[2].receive(m)
    parties[2].receive(e.value.outgoing[0])  # party 1's honest confirmation
    with pytest.raises(ProtocolAbort) as e2:
        parties[2].receive(lie)
    assert e2.value.culprits == {3} and not parties[2].done


def test_255_parties() -> None:
    """The largest group: 255 holders (t = 2 keeps it quick); the first and last sign."""
    shares = local.keygen("secp256k1", 2, 255, rng=DeterministicRng(255))
    assert shares[-1].identifier == 255 and len(shares[0].public.participants) == 255
    _check([shares[0], shares[-1]], b"255")
