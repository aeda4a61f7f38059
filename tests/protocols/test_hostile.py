"""Hostile-peer tests: every way a peer (or the network) can break DKG, signing, refresh and
repair, with the exact error type, reason and culprit set, and no result after a fatal abort.

Each test drives parties by hand through :class:`tests.protocols.conftest.Router`; the ``net``
fixture checks on teardown that no recorded error's text contains a secret value.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import itertools
import pickle

import cbor2
import pytest

from shardguard.crypto.shamir import interpolate
from shardguard.crypto.suites import SUITES
from shardguard.protocols.dkg import DkgConfirm, DkgEcho, DkgRound1, DkgSecretShare, RefreshRound1
from shardguard.protocols.errors import AbortReason, MessageRejected, ProtocolAbort, UsageError
from shardguard.protocols.frost import CheaterDetection, FrostSigner, SignRound1, SignRound2
from shardguard.protocols.frost._messages import commitment_digest
from shardguard.protocols.keys import KeyShare
from shardguard.protocols.message import BROADCAST, MAX_PAYLOAD, Message
from shardguard.protocols.party import PartyState
from shardguard.protocols.refresh import Refresh
from shardguard.protocols.repair import RepairCommitments, RepairDelta, RepairHelper, RepairSigma, RepairTarget
from shardguard.protocols.session import derive_session_id
from shardguard.protocols.wire import WireError, WireReason, decode_payload, encode_payload

from .conftest import (
    INSTANCE,
    SUITE_LIST,
    DeterministicRng,
    Router,
    assert_abort,
    assert_dead,
    assert_no_result,
    assert_no_secrets,
    assert_rejected,
    bad_points,
    dealer_shares,
    dkg_parties,
    from_party,
    mutate,
    payload_of,
    refresh_parties,
    repair_parties,
    secret_renderings,
    signer_parties,
    with_payload,
)

IDS3 = [1, 2, 3]


def first_sent(router: Router, sender: int, round: int, *, broadcast: bool = True, to: int | None = None) -> Message:
    for m in router.sent:
        if m.sender == sender and m.round == round and m.is_broadcast == broadcast and (to is None or m.recipient == to):
            return m
    raise AssertionError(f"no round-{round} message from {sender}")


def twin_round1(suite, parties, sender, rng, **kw):
    """A second, valid round-1 message from ``sender`` for the same session (an equivocation)."""
    p = parties[sender]
    if isinstance(p, FrostSigner):
        twin = FrostSigner(p._key, signers=p.signers, message=p.message, instance=INSTANCE, rng=rng.fork("twin"))
    else:
        twin = type(p)(
            suite, identifier=sender, participants=p.participants, threshold=p.threshold, instance=INSTANCE, rng=rng.fork("twin")
        )
    (m,) = twin.start()
    assert m.session_id == p.session_id and m.is_broadcast
    return m


def keys_agree(results):
    publics = {r.public.to_dict().__repr__() for r in results.values()}
    assert len(publics) == 1


def assert_echo_blame(exc, equivocator, views, me, *, secrets=(), round=None):
    """An EQUIVOCATION abort after an echo mismatch (``Party._echo_blame``).

    ``views[i]`` is what party ``i`` received from ``equivocator``. Without signed messages
    party ``me`` cannot tell whether the equivocator or an echo sender lies, so it names the
    equivocator and every echo sender whose view differs from its own — never itself, and
    never anyone else. (An echo of the equivocator's own broadcast by the equivocator itself
    is known to be the sender's word, so only the equivocator is named for it.)
    """
    expected = {equivocator} | {i for i, v in views.items() if i not in (me, equivocator) and v != views[me]}
    e = assert_abort(exc, AbortReason.EQUIVOCATION, expected, secrets=secrets)
    assert equivocator in e.culprits
    assert me not in e.culprits
    assert e.culprits <= {equivocator} | set(views)
    if round is not None:
        assert e.round == round
    return e


# =================================================================================================
# DKG: envelope checks (non-fatal)
# =================================================================================================
def test_dkg_wrong_session_is_rejected_and_party_finishes(suite, rng, net):
    ids = IDS3
    other = dkg_parties(suite, ids, 2, rng.fork("other"), instance=b"\x07" * 32)
    foreign = other[1].start()[0]
    parties = dkg_parties(suite, ids, 2, rng)
    assert foreign.session_id != parties[1].session_id

    def hook(to, m):
        # Before every real message to party 2, a message from another session (another
        # instance, same participants) and one with a random session id.
        if to != 2:
            return [(to, m)]
        alien = dataclasses.replace(m, session_id=hashlib.sha256(m.payload).digest())
        return [(2, foreign), (2, alien), (to, m)]

    r = net(parties, hook).start().run()
    rej = r.rejections(2)
    assert len(rej) >= 2
    for e in rej:
        assert_rejected(e, AbortReason.WRONG_SESSION)
        assert e.session_id == parties[2].session_id
    assert not r.aborts
    assert all(p.done for p in parties.values())
    keys_agree(r.results())


def test_dkg_replayed_messages_are_rejected_and_party_finishes(suite, rng, net):
    parties = dkg_parties(suite, IDS3, 2, rng)
    # Duplicate every delivery (round-1 broadcasts, echoes and the P2P secret shares).
    r = net(parties, lambda to, m: [(to, m), (to, m)]).start().run()
    assert not r.aborts
    assert all(p.done for p in parties.values())
    assert r.rejected
    for _, e in r.rejected:
        assert_rejected(e, AbortReason.REPLAYED_MESSAGE)
    round1_replays = [e for _, e in r.rejected if e.round == 1]
    assert len(round1_replays) == 6  # 3 senders x 2 recipients
    keys_agree(r.results())
    # A replay after DONE is still only a rejection; the result is untouched.
    before = parties[2].result
    m = first_sent(r, 1, 1)
    with pytest.raises(MessageRejected) as ei:
        parties[2].receive(m)
    assert_rejected(ei.value, AbortReason.REPLAYED_MESSAGE)
    assert parties[2].done and parties[2].result is before


def test_dkg_message_after_done_is_rejected_not_fatal(suite, rng, net):
    parties = dkg_parties(suite, IDS3, 2, rng)
    r = net(parties).start().run()
    assert all(p.done for p in parties.values())
    before = parties[2].result
    m = first_sent(r, 1, 1)
    # Round 4 does not exist: unexpected, but only a rejection once the party is done.
    with pytest.raises(MessageRejected) as ei:
        parties[2].receive(dataclasses.replace(m, round=4))
    assert_rejected(ei.value, AbortReason.UNEXPECTED_MESSAGE)
    # Round 3 (DkgConfirm) is legal: a second, different round-3 payload from party 1 is an
    # equivocation, and the very same confirmation again a replay — both only rejected.
    with pytest.raises(MessageRejected) as ei:
        parties[2].receive(dataclasses.replace(m, round=3))
    assert_rejected(ei.value, AbortReason.EQUIVOCATION)
    confirm = first_sent(r, 1, 3)
    assert payload_of(suite, confirm, DkgConfirm).package_digest == before.public.digest
    with pytest.raises(MessageRejected) as ei:
        parties[2].receive(confirm)
    assert_rejected(ei.value, AbortReason.REPLAYED_MESSAGE)
    assert parties[2].done and parties[2].result is before


def test_dkg_unknown_sender_is_rejected(suite, rng, net):
    parties = dkg_parties(suite, IDS3, 2, rng)

    def hook(to, m):
        if to == 2 and m.round == 1 and m.sender == 1:
            return [(2, dataclasses.replace(m, sender=9)), (2, dataclasses.replace(m, sender=2)), (to, m)]
        return [(to, m)]

    r = net(parties, hook).start().run()
    rej = r.rejections(2)
    assert len(rej) == 2
    for e in rej:
        assert_rejected(e, AbortReason.UNKNOWN_SENDER)
    assert not r.aborts
    assert all(p.done for p in parties.values())


def test_dkg_wrong_recipient_is_rejected(suite, rng, net):
    parties = dkg_parties(suite, IDS3, 2, rng)

    def hook(to, m):
        # The secret share 1 -> 2 is also delivered to 3 (a misrouting network).
        if m.sender == 1 and to == 2 and not m.is_broadcast:
            return [(2, m), (3, m)]
        return [(to, m)]

    r = net(parties, hook).start().run()
    (e,) = r.rejections(3)
    assert_rejected(e, AbortReason.WRONG_RECIPIENT)
    assert e.round == 2
    assert not r.aborts
    assert all(p.done for p in parties.values())


def test_dkg_own_broadcast_reflected_is_rejected(suite, rng, net):
    parties = dkg_parties(suite, IDS3, 2, rng)
    r = net(parties).start()
    own = first_sent(r, 2, 1)
    with pytest.raises(MessageRejected) as ei:
        parties[2].receive(own)
    assert_rejected(ei.value, AbortReason.UNKNOWN_SENDER)
    r.run()
    assert all(p.done for p in parties.values())


# =================================================================================================
# DKG: fatal aborts with a named culprit
# =================================================================================================
def _broadcast_tamper(sender, round, change):
    return mutate(from_party(sender, round, broadcast=True), lambda to, m: change(m))


def _assert_all_honest_dead(parties, r, cheaters, reason, culprits, *, field=None):
    honest = [i for i in parties if i not in cheaters]
    for i in honest:
        assert i in r.aborts, f"party {i} did not abort"
        assert_abort(r.aborts[i], reason, culprits, field=field, secrets=r.secrets)
        assert_dead(parties[i])
    for p in parties.values():
        if p.me in honest:
            assert_no_result(p)


def test_dkg_invalid_pok(suite, rng, net):
    parties = dkg_parties(suite, IDS3, 2, rng)

    def change(m):
        p = payload_of(suite, m, DkgRound1)
        return with_payload(m, dataclasses.replace(p, pok_mu=(p.pok_mu + 1) % suite.group.order))

    r = net(parties, _broadcast_tamper(1, 1, change)).start().run()
    _assert_all_honest_dead(parties, r, {1}, AbortReason.INVALID_PROOF, {1})
    assert r.aborts[2].round == 1


def test_dkg_pok_replayed_from_another_session(suite, rng, net):
    """A proof of knowledge is bound to the session id: the same round-1 payload that is valid
    in one DKG fails the PoK in another with the same participants."""
    other = dkg_parties(suite, IDS3, 2, rng.fork("other"), instance=b"\x09" * 32)
    foreign = other[1].start()[0]
    parties = dkg_parties(suite, IDS3, 2, rng)
    r = net(parties, _broadcast_tamper(1, 1, lambda m: with_payload(m, foreign.payload))).start().run()
    _assert_all_honest_dead(parties, r, {1}, AbortReason.INVALID_PROOF, {1})


@pytest.mark.parametrize("delta", [-1, +1], ids=["short", "long"])
def test_dkg_commitment_of_wrong_length(suite, rng, net, delta):
    parties = dkg_parties(suite, [1, 2, 3, 4], 3, rng)
    g = suite.group

    def change(m):
        p = payload_of(suite, m, DkgRound1)
        c = p.commitment[:-1] if delta < 0 else (*p.commitment, g.base_mul(12345))
        return with_payload(m, dataclasses.replace(p, commitment=c))

    r = net(parties, _broadcast_tamper(1, 1, change)).start().run()
    _assert_all_honest_dead(parties, r, {1}, AbortReason.INVALID_COMMITMENT, {1})


_BAD_POINT_CASES = [(s, name) for s in SUITE_LIST for name in bad_points(s)]


@pytest.mark.parametrize(("bad_suite", "bad_name"), _BAD_POINT_CASES, ids=[f"{s.scheme}-{n}" for s, n in _BAD_POINT_CASES])
def test_dkg_invalid_point_in_commitment(bad_suite, bad_name, rng, net):
    suite = bad_suite
    bad = bad_points(suite)[bad_name]
    parties = dkg_parties(suite, IDS3, 3, rng)

    def change(m):
        obj = cbor2.loads(m.payload)
        obj[3][1] = bad
        return with_payload(m, cbor2.dumps(obj, canonical=True))

    r = net(parties, _broadcast_tamper(2, 1, change)).start().run()
    _assert_all_honest_dead(parties, r, {2}, AbortReason.MALFORMED_PAYLOAD, {2}, field="commitment[1]")
    # The same bytes fail decoding directly with the field named.
    with pytest.raises(WireError) as ei:
        decode_payload(suite, change(first_sent(r, 2, 1)).payload, DkgRound1)
    assert ei.value.reason is WireReason.BAD_FIELD and ei.value.field == "commitment[1]"


@pytest.mark.parametrize("field", ["pok_r", "commitment[0]"])
def test_dkg_identity_point_elsewhere(suite, rng, net, field):
    parties = dkg_parties(suite, IDS3, 2, rng)
    ident = bad_points(suite)["identity"]

    def change(m):
        obj = cbor2.loads(m.payload)
        if field == "pok_r":
            obj[4] = ident
        else:
            obj[3][0] = ident
        return with_payload(m, cbor2.dumps(obj, canonical=True))

    r = net(parties, _broadcast_tamper(1, 1, change)).start().run()
    _assert_all_honest_dead(parties, r, {1}, AbortReason.MALFORMED_PAYLOAD, {1}, field=field)


def test_dkg_invalid_share_to_every_recipient(suite, rng, net):
    parties = dkg_parties(suite, IDS3, 2, rng)
    n = suite.group.order

    def change(to, m):
        p = payload_of(suite, m, DkgSecretShare)
        return with_payload(m, DkgSecretShare(suite=suite, share=(p.share + 1) % n))

    r = net(parties, mutate(from_party(1, 2, broadcast=False), change)).start().run()
    _assert_all_honest_dead(parties, r, {1}, AbortReason.INVALID_SHARE, {1})
    assert r.aborts[2].round == 2


def test_dkg_invalid_share_to_one_victim(suite, rng, net):
    """Only the victim can see a bad share; it aborts naming the dealer of the share.

    The others saw nothing wrong, but no key is output before every participant confirmed
    the same package in round 3: they wait for the victim's confirmation, which never comes,
    so nobody ends up holding a key in which the victim has no share."""
    parties = dkg_parties(suite, IDS3, 2, rng)
    n = suite.group.order

    def change(to, m):
        return with_payload(m, DkgSecretShare(suite=suite, share=(payload_of(suite, m, DkgSecretShare).share + 7) % n))

    r = net(parties, mutate(from_party(1, 2, broadcast=False, to=2), change)).start().run()
    assert set(r.aborts) == {2}
    assert_abort(r.aborts[2], AbortReason.INVALID_SHARE, {1}, secrets=r.secrets)
    assert r.aborts[2].round == 2
    assert_dead(parties[2])
    assert not r.results()
    assert not any(p.done for p in parties.values())
    for i in (1, 3):
        # Stuck in round 3, confirmations exchanged with each other only, no key.
        assert parties[i].state is PartyState.RUNNING and parties[i].round == 3
        assert_no_result(parties[i])
        assert any(m.sender == i and m.round == 3 for m in r.sent)
    assert not any(m.sender == 2 and m.round == 3 for m in r.sent)


def test_dkg_equivocation_detected_by_echo(suite, rng, net):
    """Party 1 broadcasts one valid round-1 payload to 2 and 3 and another valid one to 4.

    Every honest party names 1. Each also names the echo senders whose view of 1 differs
    from its own (2 and 3 name 4; 4 names 2 and 3): unsigned, either side could be lying."""
    parties = dkg_parties(suite, [1, 2, 3, 4], 2, rng)
    alt = twin_round1(suite, parties, 1, rng)
    r = net(parties, mutate(from_party(1, 1, to=4), lambda to, m: alt)).start().run()
    views = {1: "X", 2: "X", 3: "X", 4: "Y"}
    for i in (2, 3, 4):
        assert_echo_blame(r.aborts[i], 1, views, i, secrets=r.secrets, round=2)
        assert_dead(parties[i])
    assert r.aborts[2].culprits == r.aborts[3].culprits == {1, 4}
    assert r.aborts[4].culprits == {1, 2, 3}
    assert not any(p.done for p in parties.values())


def test_dkg_equivocation_two_payloads_same_recipient(suite, rng, net):
    parties = dkg_parties(suite, IDS3, 2, rng)
    alt = twin_round1(suite, parties, 1, rng)

    def hook(to, m):
        return [(to, m), (to, alt)] if (m.sender == 1 and m.round == 1 and to == 2) else [(to, m)]

    r = net(parties, hook).start().run()
    assert_abort(r.aborts[2], AbortReason.EQUIVOCATION, {1}, secrets=r.secrets)
    assert r.aborts[2].round == 1
    assert_dead(parties[2])
    assert not any(p.done for p in parties.values())


def test_dkg_echo_with_wrong_number_of_digests(suite, rng, net):
    parties = dkg_parties(suite, IDS3, 2, rng)

    def change(m):
        p = payload_of(suite, m, DkgEcho)
        return with_payload(m, DkgEcho(suite=suite, digests=p.digests[:-1]))

    r = net(parties, _broadcast_tamper(3, 2, change)).start().run()
    _assert_all_honest_dead(parties, r, {3}, AbortReason.MALFORMED_PAYLOAD, {3}, field="digests")


def test_dkg_several_round1_failures_report_the_first_reason_in_enum_order(suite, rng, net):
    """Party 1's proof of knowledge is wrong, party 2's commitment has the wrong length. One
    abort carries one reason: the first in AbortReason order, with exactly the parties that
    failed that check."""
    assert list(AbortReason).index(AbortReason.INVALID_PROOF) < list(AbortReason).index(AbortReason.INVALID_COMMITMENT)
    parties = dkg_parties(suite, [1, 2, 3, 4], 3, rng)
    n = suite.group.order

    def bad_pok(m):
        p = payload_of(suite, m, DkgRound1)
        return with_payload(m, dataclasses.replace(p, pok_mu=(p.pok_mu + 1) % n))

    def short_commitment(m):
        p = payload_of(suite, m, DkgRound1)
        return with_payload(m, dataclasses.replace(p, commitment=p.commitment[:-1]))

    def hook(to, m):
        if m.round == 1 and m.sender == 1:
            return [(to, bad_pok(m))]
        if m.round == 1 and m.sender == 2:
            return [(to, short_commitment(m))]
        return [(to, m)]

    r = net(parties, hook).start().run()
    _assert_all_honest_dead(parties, r, {1, 2}, AbortReason.INVALID_PROOF, {1})
    for i in (3, 4):
        assert r.aborts[i].round == 1
    # The cheaters run the same checks: each sees only the other's failure.
    assert_abort(r.aborts[1], AbortReason.INVALID_COMMITMENT, {2}, secrets=r.secrets)
    assert_abort(r.aborts[2], AbortReason.INVALID_PROOF, {1}, secrets=r.secrets)


def test_dkg_several_parties_failing_the_same_check_are_all_named(suite, rng, net):
    parties = dkg_parties(suite, [1, 2, 3, 4], 3, rng)
    n = suite.group.order

    def change(m):
        p = payload_of(suite, m, DkgRound1)
        return with_payload(m, dataclasses.replace(p, pok_mu=(p.pok_mu + 1) % n))

    r = net(parties, mutate(lambda to, m: m.round == 1 and m.sender in (1, 3), lambda to, m: change(m))).start().run()
    _assert_all_honest_dead(parties, r, {1, 3}, AbortReason.INVALID_PROOF, {1, 3})


def test_dkg_confirmation_with_a_different_package_digest(suite, rng, net):
    """Round 3: a participant confirming another package than ours aborts the DKG with
    INCONSISTENT_KEY naming it; no honest party outputs a key."""
    parties = dkg_parties(suite, [1, 2, 3, 4], 2, rng)

    def change(m):
        p = payload_of(suite, m, DkgConfirm)
        return with_payload(m, DkgConfirm(suite=suite, package_digest=hashlib.sha256(p.package_digest).digest()))

    r = net(parties, _broadcast_tamper(3, 3, change)).start().run()
    for i in (1, 2, 4):
        assert_abort(r.aborts[i], AbortReason.INCONSISTENT_KEY, {3}, secrets=r.secrets)
        assert r.aborts[i].round == 3
        assert_dead(parties[i])
    # The liar itself saw every honest confirmation match its own package: only it finishes
    # (it holds nothing the others will ever use with it).
    assert set(r.results()) == {3}


def test_dkg_confirmations_from_two_liars(suite, rng, net):
    """A party aborts at the first differing confirmation (it does not wait for the rest),
    naming the liars it has seen so far: never an honest party, never nobody."""
    parties = dkg_parties(suite, [1, 2, 3, 4], 2, rng)

    def change(to, m):
        return with_payload(m, DkgConfirm(suite=suite, package_digest=bytes([m.sender]) * 32))

    r = net(parties, mutate(lambda to, m: m.round == 3 and m.sender in (2, 4), change)).start().run()
    for i in (1, 3):
        e = r.aborts[i]
        assert isinstance(e, ProtocolAbort) and e.reason is AbortReason.INCONSISTENT_KEY
        assert e.culprits and e.culprits <= {2, 4}
        assert_dead(parties[i])
    assert not any(parties[i].done for i in (1, 3))


def test_dkg_waits_for_every_confirmation(suite, rng, net):
    """Pinned, inherent to any last round: a dropped confirmation leaves its recipient waiting
    (no key, no abort) while the parties that did get every confirmation finish. The waiting
    party is still in the finished key package, so its share can be repaired later."""
    parties = dkg_parties(suite, IDS3, 2, rng)
    r = net(parties, mutate(from_party(1, 3, to=2), lambda to, m: None)).start().run()
    assert not r.aborts and not r.rejected
    assert parties[2].state is PartyState.RUNNING and parties[2].round == 3
    assert_no_result(parties[2])
    assert parties[1].done and parties[3].done
    keys_agree({i: parties[i].result for i in (1, 3)})
    assert set(parties[1].result.public.verifying_shares) == {1, 2, 3}
    # The late confirmation completes it with the same package.
    parties[2].receive(first_sent(r, 1, 3))
    assert parties[2].done
    keys_agree({i: p.result for i, p in parties.items()})


def test_dkg_lying_echo_never_makes_a_party_blame_itself(suite, rng, net):
    parties = dkg_parties(suite, IDS3, 2, rng)

    def change(m):
        p = payload_of(suite, m, DkgEcho)
        return with_payload(m, DkgEcho(suite=suite, digests=(b"\xee" * 32, *p.digests[1:])))

    r = net(parties, _broadcast_tamper(3, 2, change)).start().run()
    # Party 1 knows what it broadcast: only the echo's author (3) can be at fault.
    assert_abort(r.aborts[1], AbortReason.EQUIVOCATION, {3}, secrets=r.secrets)
    # Party 2 cannot tell whether 1 equivocated or 3 lies about 1: it names both, not itself.
    assert_abort(r.aborts[2], AbortReason.EQUIVOCATION, {1, 3}, secrets=r.secrets)
    for i in (1, 2):
        assert r.aborts[i].round == 2
        assert_dead(parties[i])
    assert not any(p.done for p in parties.values())


# -- malformed payloads ---------------------------------------------------------------------------
def _items(data):
    obj = cbor2.loads(data)
    return obj, [cbor2.dumps(x, canonical=True) for x in obj]


def _array(encoded_items, *, indefinite=False):
    assert len(encoded_items) < 24
    head = b"\x9f" if indefinite else bytes([0x80 | len(encoded_items)])
    return head + b"".join(encoded_items) + (b"\xff" if indefinite else b"")


def _other_suite(suite):
    return next(s for s in SUITE_LIST if s.context != suite.context)


def _malform(kind, suite, data):
    obj, enc = _items(data)
    if kind == "truncated":
        return data[:-1]
    if kind == "truncated_half":
        return data[: len(data) // 2]
    if kind == "empty":
        return b""
    if kind == "trailing_byte":
        return data + b"\x00"
    if kind == "indefinite_array":
        return _array(enc, indefinite=True)
    if kind == "indefinite_inner_array":
        inner = b"\x9f" + b"".join(cbor2.dumps(x, canonical=True) for x in obj[3]) + b"\xff"
        return _array([*enc[:3], inner, *enc[4:]])
    if kind == "non_minimal_int":
        return _array([b"\x18\x01", *enc[1:]])
    if kind == "non_minimal_int_64":
        return _array([b"\x1b" + (1).to_bytes(8, "big"), *enc[1:]])
    if kind == "non_minimal_bytes_length":
        mu = obj[5]
        return _array([*enc[:5], b"\x59" + len(mu).to_bytes(2, "big") + mu])
    if kind == "indefinite_bytes":
        mu = obj[5]
        return _array([*enc[:5], b"\x5f" + cbor2.dumps(mu[:16]) + cbor2.dumps(mu[16:]) + b"\xff"])
    if kind == "wrong_suite":
        return cbor2.dumps([obj[0], _other_suite(suite).context, *obj[2:]], canonical=True)
    if kind == "wrong_version":
        return cbor2.dumps([2, *obj[1:]], canonical=True)
    if kind == "version_zero":
        return cbor2.dumps([0, *obj[1:]], canonical=True)
    if kind == "wrong_type":
        return cbor2.dumps([obj[0], obj[1], DkgEcho.TAG, *obj[3:]], canonical=True)
    if kind == "bignum_tag_version":
        return _array([b"\xc2\x41\x01", *enc[1:]])
    if kind == "bignum_huge_version":
        return cbor2.dumps([2**64, *obj[1:]], canonical=True)
    if kind == "datetime_tag_field":
        return _array([*enc[:5], b"\xc0" + cbor2.dumps("2020-01-01T00:00:00Z")])
    if kind == "epoch_datetime_tag_field":
        return _array([*enc[:5], b"\xc1\x1a\x5e\x0b\xe1\x00"])
    if kind == "unknown_tag_field":
        return _array([*enc[:5], b"\xd9\x03\xe7" + enc[5]])
    if kind == "self_describe_tag":
        return b"\xd9\xd9\xf7" + data
    if kind == "float_version":
        return _array([b"\xf9\x3c\x00", *enc[1:]])
    if kind == "bool_version":
        return _array([b"\xf5", *enc[1:]])
    if kind == "null_field":
        return _array([*enc[:5], b"\xf6"])
    if kind == "map_instead_of_array":
        return cbor2.dumps(dict(enumerate(obj)), canonical=True)
    if kind == "extra_field":
        return cbor2.dumps([*obj, b"\x00" * 32], canonical=True)
    if kind == "missing_field":
        return cbor2.dumps(obj[:-1], canonical=True)
    if kind == "header_only":
        return cbor2.dumps(obj[:3], canonical=True)
    if kind == "text_instead_of_bytes":
        return cbor2.dumps([*obj[:5], obj[5].hex()], canonical=True)
    if kind == "nested_too_deep":
        return cbor2.dumps([*obj[:5], [[[[[obj[5]]]]]]], canonical=True)
    if kind == "scalar_out_of_range":
        n = suite.group.order
        return cbor2.dumps([*obj[:5], suite.group.scalar_encode(n - 1)[:0] + _raw_scalar(suite, n)], canonical=True)
    raise AssertionError(kind)


def _raw_scalar(suite, k):
    return k.to_bytes(32, "little" if suite.group.name == "ed25519" else "big")


# kind -> (acceptable WireReasons, expected abort field; None = not checked)
MALFORMED_KINDS = {
    "truncated": ({WireReason.NOT_CBOR}, ""),
    "truncated_half": ({WireReason.NOT_CBOR}, ""),
    "empty": ({WireReason.NOT_CBOR}, ""),
    "trailing_byte": ({WireReason.NOT_CANONICAL}, ""),
    "indefinite_array": ({WireReason.NOT_CANONICAL}, ""),
    "indefinite_inner_array": ({WireReason.NOT_CANONICAL}, ""),
    "non_minimal_int": ({WireReason.NOT_CANONICAL}, ""),
    "non_minimal_int_64": ({WireReason.NOT_CANONICAL}, ""),
    "non_minimal_bytes_length": ({WireReason.NOT_CANONICAL}, ""),
    "indefinite_bytes": ({WireReason.NOT_CANONICAL}, ""),
    "wrong_suite": ({WireReason.WRONG_SUITE}, "suite"),
    "wrong_version": ({WireReason.WRONG_VERSION}, "version"),
    "version_zero": ({WireReason.WRONG_VERSION}, "version"),
    "wrong_type": ({WireReason.WRONG_TYPE}, "type"),
    "bignum_tag_version": ({WireReason.NOT_CANONICAL}, ""),
    "bignum_huge_version": ({WireReason.WRONG_VERSION}, "version"),
    "datetime_tag_field": ({WireReason.BAD_SHAPE}, "datetime"),
    "epoch_datetime_tag_field": ({WireReason.BAD_SHAPE}, "datetime"),
    "unknown_tag_field": ({WireReason.BAD_SHAPE}, "CBORTag"),
    "self_describe_tag": ({WireReason.NOT_CANONICAL, WireReason.BAD_SHAPE}, None),
    "float_version": ({WireReason.BAD_SHAPE}, "float"),
    "bool_version": ({WireReason.BAD_SHAPE}, "bool"),
    "null_field": ({WireReason.BAD_SHAPE}, "NoneType"),
    "map_instead_of_array": ({WireReason.BAD_SHAPE}, "dict"),
    "extra_field": ({WireReason.BAD_SHAPE}, "expected 3 fields, got 4"),
    "missing_field": ({WireReason.BAD_SHAPE}, "expected 3 fields, got 2"),
    "header_only": ({WireReason.BAD_SHAPE}, "expected 3 fields, got 0"),
    "text_instead_of_bytes": ({WireReason.BAD_SHAPE}, "pok_mu"),
    "nested_too_deep": ({WireReason.BAD_SHAPE}, "nesting"),
    "scalar_out_of_range": ({WireReason.BAD_FIELD}, "pok_mu"),
}


@pytest.mark.parametrize("kind", list(MALFORMED_KINDS))
def test_dkg_malformed_round1_payload(suite, rng, net, kind):
    parties = dkg_parties(suite, IDS3, 2, rng)
    # decode_payload refuses the bytes with the expected reason...
    r0 = net(dkg_parties(suite, IDS3, 2, rng.fork("probe"))).start()
    data = _malform(kind, suite, first_sent(r0, 1, 1).payload)
    with pytest.raises(WireError) as ei:
        decode_payload(suite, data, DkgRound1)
    assert type(ei.value) is WireError
    reasons, field = MALFORMED_KINDS[kind]
    assert ei.value.reason in reasons, (kind, ei.value)
    # ...and every honest party aborts, naming the sender, with the field when there is one.
    r = net(parties, _broadcast_tamper(1, 1, lambda m: with_payload(m, _malform(kind, suite, m.payload)))).start().run()
    _assert_all_honest_dead(parties, r, {1}, AbortReason.MALFORMED_PAYLOAD, {1}, field=field)


def test_oversized_payload(suite, rng, net):
    big = b"\x00" * (MAX_PAYLOAD + 1)
    sid = b"\x01" * 32
    with pytest.raises(UsageError):
        Message(session_id=sid, round=1, sender=1, recipient=BROADCAST, payload=big)
    for typ in (DkgRound1, DkgSecretShare, SignRound2, RepairSigma):
        with pytest.raises(WireError) as ei:
            decode_payload(suite, big, typ)
        assert ei.value.reason is WireReason.OVERSIZED
    # Canonical CBOR of the right header that fills exactly MAX_PAYLOAD still reaches the
    # decoder (Message accepts it) and is refused as a payload.
    parties = dkg_parties(suite, IDS3, 2, rng)
    r = net(parties).start()
    m1 = first_sent(r, 1, 1)
    obj = cbor2.loads(m1.payload)
    base = len(cbor2.dumps([*obj[:5], b""], canonical=True))
    pad = next(
        k for k in range(MAX_PAYLOAD - base, 0, -1) if len(cbor2.dumps([*obj[:5], b"\x00" * k], canonical=True)) <= MAX_PAYLOAD
    )
    data = cbor2.dumps([*obj[:5], b"\x00" * pad], canonical=True)
    assert len(data) == MAX_PAYLOAD
    with pytest.raises(ProtocolAbort) as ei2:
        parties[2].receive(with_payload(m1, data))
    assert_abort(ei2.value, AbortReason.MALFORMED_PAYLOAD, {1}, field="pok_mu")
    assert_dead(parties[2])


@pytest.mark.parametrize(
    "how", ["round4", "round16", "round1_p2p", "round3_p2p", "round2_echo_as_p2p_decodes_wrong", "round3_not_a_confirm"]
)
def test_dkg_unexpected_round(suite, rng, net, how):
    parties = dkg_parties(suite, IDS3, 2, rng)
    r = net(parties).start()
    m = first_sent(r, 1, 1)
    if how == "round4":  # round 3 (DkgConfirm) is legal since the confirmation round
        bad = dataclasses.replace(m, round=4)
    elif how == "round3_p2p":  # a confirmation is a broadcast
        confirm = DkgConfirm(suite=suite, package_digest=b"\x00" * 32)
        bad = Message(session_id=m.session_id, round=3, sender=1, recipient=2, payload=encode_payload(confirm))
    elif how == "round3_not_a_confirm":  # a round-1 payload relabelled round 3 is read as a DkgConfirm
        bad = dataclasses.replace(m, round=3)
    elif how == "round16":
        bad = dataclasses.replace(m, round=16)
    elif how == "round1_p2p":
        bad = dataclasses.replace(m, recipient=2)
    else:
        # A round-2 echo sent point-to-point is read as a DkgSecretShare: wrong type tag.
        echo = DkgEcho(suite=suite, digests=(b"\x00" * 32,) * 3)
        bad = Message(session_id=m.session_id, round=2, sender=1, recipient=2, payload=encode_payload(echo))
    with pytest.raises(ProtocolAbort) as ei:
        parties[2].receive(bad)
    if how in ("round2_echo_as_p2p_decodes_wrong", "round3_not_a_confirm"):
        assert_abort(ei.value, AbortReason.MALFORMED_PAYLOAD, {1}, field="type")
    else:
        assert_abort(ei.value, AbortReason.UNEXPECTED_MESSAGE, {1})
        assert ei.value.round == bad.round
    assert_dead(parties[2])


def test_dkg_usage_errors(suite, rng, net):
    parties = dkg_parties(suite, IDS3, 2, rng)
    other = dkg_parties(suite, IDS3, 2, rng.fork("x"))
    m = other[1].start()[0]
    # receive() before start()
    with pytest.raises(UsageError):
        parties[2].receive(m)
    assert parties[2].state is PartyState.READY
    parties[2].start()
    # start() twice
    with pytest.raises(UsageError):
        parties[2].start()
    # Kill party 2 with a malformed payload, then receive() after abort.
    with pytest.raises(ProtocolAbort):
        parties[2].receive(dataclasses.replace(m, session_id=parties[2].session_id, payload=b"\xff"))
    with pytest.raises(UsageError):
        parties[2].receive(m)
    with pytest.raises(UsageError):
        parties[2].start()
    assert_dead(parties[2])


def test_dkg_constructor_usage_errors(suite, rng):
    with pytest.raises(UsageError):
        dkg_parties(suite, [1, 2, 2], 2, rng)
    with pytest.raises(UsageError):
        dkg_parties(suite, [1, 2, 3], 4, rng)
    with pytest.raises(UsageError):
        dkg_parties(suite, [1, 2, 3], 1, rng)  # t = 1 needs allow_single
    with pytest.raises(UsageError):
        dkg_parties(suite, [0, 1, 2], 2, rng)
    with pytest.raises(UsageError):
        dkg_parties(suite, [1, 2, 256], 2, rng)


# =================================================================================================
# FROST signing
# =================================================================================================
MSG = b"hostile frost test message"


@pytest.fixture
def shares5(suite, rng):
    return dealer_shares(suite, 5, 3, rng)


def test_frost_honest_baseline(suite, rng, net, shares5):
    parties = signer_parties(shares5, [1, 3, 5], MSG, rng)
    r = net(parties).start().run()
    sigs = set(r.results().values())
    assert len(sigs) == 1
    assert suite.verify(shares5[1].public.group_key, MSG, sigs.pop())
    for p in parties.values():
        assert p._nonces is None


def test_frost_constructor_usage_errors(suite, rng, shares5):
    s = shares5
    with pytest.raises(UsageError, match="duplicate"):
        FrostSigner(s[1], signers=[1, 2, 2, 3], message=MSG, instance=INSTANCE, rng=rng)
    with pytest.raises(UsageError, match="hold"):
        FrostSigner(s[1], signers=[1, 2, 9], message=MSG, instance=INSTANCE, rng=rng)
    with pytest.raises(UsageError, match="not among the signers"):
        FrostSigner(s[1], signers=[2, 3, 4], message=MSG, instance=INSTANCE, rng=rng)
    with pytest.raises(UsageError, match="too few"):
        FrostSigner(s[1], signers=[1, 2], message=MSG, instance=INSTANCE, rng=rng)
    with pytest.raises(UsageError):
        FrostSigner(s[1], signers=[1, 2, 0], message=MSG, instance=INSTANCE, rng=rng)
    with pytest.raises(UsageError):
        FrostSigner(s[1], signers=[1, 2, 3], message="text", instance=INSTANCE, rng=rng)


def _tamper_z(suite, cheaters, delta=1):
    n = suite.group.order

    def pred(to, m):
        return m.sender in cheaters and m.round == 2

    def change(to, m):
        p = payload_of(suite, m, SignRound2)
        return with_payload(m, SignRound2(suite=suite, share=(p.share + delta) % n, commitment_digests=p.commitment_digests))

    return mutate(pred, change)


def test_frost_invalid_signature_share_names_exactly_that_signer(suite, rng, net, shares5):
    parties = signer_parties(shares5, [1, 2, 4], MSG, rng)
    r = net(parties, _tamper_z(suite, {2})).start().run()
    for i in (1, 4):
        assert_abort(r.aborts[i], AbortReason.INVALID_SIGNATURE_SHARE, {2}, secrets=r.secrets)
        assert r.aborts[i].round == 2
        assert_dead(parties[i])
        assert parties[i]._nonces is None


@pytest.mark.parametrize("signers", [[1, 2, 3, 4, 5], [2, 3, 5]], ids=["5-signers", "3-signers"])
def test_frost_two_cheaters_both_named(suite, rng, net, shares5, signers):
    cheaters = {signers[1], signers[-1]}
    parties = signer_parties(shares5, signers, MSG, rng)
    r = net(parties, _tamper_z(suite, cheaters)).start().run()
    honest = [i for i in signers if i not in cheaters]
    for i in honest:
        assert_abort(r.aborts[i], AbortReason.INVALID_SIGNATURE_SHARE, cheaters, secrets=r.secrets)
        assert_dead(parties[i])


def test_frost_first_cheater_mode_names_one(suite, rng, net, shares5):
    parties = signer_parties(shares5, [1, 2, 3, 4, 5], MSG, rng, cheater_detection=CheaterDetection.FIRST_CHEATER)
    r = net(parties, _tamper_z(suite, {2, 4})).start().run()
    for i in (1, 3, 5):
        e = r.aborts[i]
        assert type(e) is ProtocolAbort and e.reason is AbortReason.INVALID_SIGNATURE_SHARE
        assert len(e.culprits) == 1 and e.culprits <= {2, 4}
        assert_dead(parties[i])


def test_frost_detection_disabled_still_refuses_bad_signature(suite, rng, net, shares5):
    parties = signer_parties(shares5, [1, 2, 3], MSG, rng, cheater_detection=CheaterDetection.DISABLED)
    r = net(parties, _tamper_z(suite, {3})).start().run()
    for i in (1, 2):
        assert_abort(r.aborts[i], AbortReason.INVALID_SIGNATURE, set(), secrets=r.secrets)
        assert_dead(parties[i])


def test_frost_round1_equivocation_names_the_equivocator(suite, rng, net, shares5):
    """Signer 1 sends one commitment to 2 and 3, another to 4 and 5. Every honest signer names
    1, plus the co-signers whose round-2 echo of 1's commitment differs from its own view."""
    signers = [1, 2, 3, 4, 5]
    parties = signer_parties(shares5, signers, MSG, rng)
    alt = twin_round1(suite, parties, 1, rng)
    r = net(parties, mutate(lambda to, m: m.sender == 1 and m.round == 1 and to in (4, 5), lambda to, m: alt)).start().run()
    views = {1: "X", 2: "X", 3: "X", 4: "Y", 5: "Y"}
    for i in (2, 3, 4, 5):
        assert_echo_blame(r.aborts[i], 1, views, i, secrets=r.secrets, round=1)
        assert_dead(parties[i])
    assert r.aborts[2].culprits == r.aborts[3].culprits == {1, 4, 5}
    assert r.aborts[4].culprits == r.aborts[5].culprits == {1, 2, 3}
    assert not any(p.done for p in parties.values())


def test_frost_round2_echo_digests_are_per_signer_commitment_hashes(suite, rng, net, shares5):
    parties = signer_parties(shares5, [1, 3, 5], MSG, rng)
    r = net(parties).start().run()
    assert len(set(r.results().values())) == 1
    commitments = []
    for i in (1, 3, 5):
        c = payload_of(suite, first_sent(r, i, 1), SignRound1)
        commitments.append((i, c.hiding, c.binding))
    g = suite.group
    expected = tuple((i, hashlib.sha256(g.encode(d) + g.encode(e)).digest()) for i, d, e in commitments)
    assert expected == tuple((i, commitment_digest(suite, c)) for i, c in zip((1, 3, 5), commitments, strict=True))
    for i in (1, 3, 5):
        assert payload_of(suite, first_sent(r, i, 2), SignRound2).commitment_digests == expected


def test_frost_round1_two_commitments_same_recipient(suite, rng, net, shares5):
    parties = signer_parties(shares5, [1, 2, 3], MSG, rng)
    alt = twin_round1(suite, parties, 3, rng)

    def hook(to, m):
        return [(to, m), (to, alt)] if (m.sender == 3 and m.round == 1 and to == 1) else [(to, m)]

    r = net(parties, hook).start().run()
    assert_abort(r.aborts[1], AbortReason.EQUIVOCATION, {3}, secrets=r.secrets)
    assert_dead(parties[1])
    assert not parties[1].done


def test_frost_lying_echo_never_makes_a_signer_blame_itself(suite, rng, net, shares5):
    g = suite.group

    def change(to, m):
        p = payload_of(suite, m, SignRound2)
        fake = commitment_digest(suite, (1, g.base_mul(11), g.base_mul(12)))
        forged = tuple((i, fake) if i == 1 else (i, d) for i, d in p.commitment_digests)
        return with_payload(m, SignRound2(suite=suite, share=p.share, commitment_digests=forged))

    parties = signer_parties(shares5, [1, 2, 3], MSG, rng)
    r = net(parties, mutate(from_party(3, 2), change)).start().run()
    # Signer 1 knows its own commitment: only 3 can be lying.
    assert_abort(r.aborts[1], AbortReason.EQUIVOCATION, {3}, secrets=r.secrets)
    # Signer 2 cannot tell whether 1 equivocated or 3 lies about 1: it names both, not itself.
    assert_abort(r.aborts[2], AbortReason.EQUIVOCATION, {1, 3}, secrets=r.secrets)
    for i in (1, 2):
        assert r.aborts[i].round == 1
        assert_dead(parties[i])
    # The liar got honest echoes and shares: its signature is valid (a lying echo only denies
    # service; it never yields a bad signature).
    assert set(r.results()) == {3}
    assert suite.verify(shares5[1].public.group_key, MSG, parties[3].result)


def test_frost_lying_echo_about_its_own_commitment_names_only_the_liar(suite, rng, net, shares5):
    def change(to, m):
        p = payload_of(suite, m, SignRound2)
        forged = tuple((i, b"\x33" * 32) if i == 3 else (i, d) for i, d in p.commitment_digests)
        return with_payload(m, SignRound2(suite=suite, share=p.share, commitment_digests=forged))

    parties = signer_parties(shares5, [1, 2, 3], MSG, rng)
    r = net(parties, mutate(from_party(3, 2), change)).start().run()
    for i in (1, 2):
        assert_abort(r.aborts[i], AbortReason.EQUIVOCATION, {3}, secrets=r.secrets)
        assert_dead(parties[i])


@pytest.mark.parametrize("how", ["missing", "extra"])
def test_frost_round2_commitment_list_with_missing_signer(suite, rng, net, shares5, how):
    def change(to, m):
        p = payload_of(suite, m, SignRound2)
        digests = p.commitment_digests[:-1] if how == "missing" else (*p.commitment_digests, (9, b"\x09" * 32))
        return with_payload(m, SignRound2(suite=suite, share=p.share, commitment_digests=digests))

    parties = signer_parties(shares5, [1, 2, 3], MSG, rng)
    r = net(parties, mutate(from_party(2, 2), change)).start().run()
    for i in (1, 3):
        assert_abort(r.aborts[i], AbortReason.MALFORMED_PAYLOAD, {2}, field="commitment_digests", secrets=r.secrets)
        assert_dead(parties[i])


def test_frost_nonce_reuse_is_impossible(suite, rng, net, shares5):
    parties = signer_parties(shares5, [1, 2, 3], MSG, rng)
    p = parties[1]
    # Not pickled or copied, before or after start.
    for fn in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError):
            fn(p)
    r = net(parties).start()
    assert p._nonces is not None
    with pytest.raises(UsageError):
        p.start()
    for fn in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError):
            fn(p)
    r.run()
    assert all(q.done for q in parties.values())
    for q in parties.values():
        assert q._nonces is None
        with pytest.raises(UsageError):
            q.start()
    # A new signer object for the same session (a caller's retry) draws fresh nonces from a
    # fresh rng: its round-1 commitment differs.
    again = FrostSigner(shares5[1], signers=[1, 2, 3], message=MSG, instance=INSTANCE, rng=rng.fork("retry"))
    m_again = again.start()[0]
    m_first = first_sent(r, 1, 1)
    assert m_again.session_id == m_first.session_id
    assert payload_of(suite, m_again, SignRound1) != payload_of(suite, m_first, SignRound1)


def test_frost_nonces_are_hedged_with_the_session_id(suite, rng, shares5):
    """A replayed RNG stream (a restored VM snapshot) gives the same nonces only for the same
    session: another message, instance or signer set gives other nonces. With no extra input
    nonce_generate is the RFC 9591 value."""
    g = suite.group
    seed = rng.fork("snapshot")

    def commit(**kw):
        args = {"signers": [1, 2, 3], "message": MSG, "instance": INSTANCE, **kw}
        p = FrostSigner(shares5[1], rng=DeterministicRng(seed.seed), **args)
        (m,) = p.start()
        return p.session_id, payload_of(suite, m, SignRound1)

    sid, base = commit()
    assert commit() == (sid, base)  # same session and stream: same nonces (deterministic rng)
    for kw in ({"message": b"other"}, {"instance": b"\x01" * 32}, {"signers": [1, 2, 4]}):
        other_sid, other = commit(**kw)
        assert other_sid != sid
        assert other.hiding != base.hiding and other.binding != base.binding
    # The signer draws d then e, each from 32 random bytes, bound to its session id.
    stream = DeterministicRng(seed.seed)
    s1 = shares5[1].signing_share
    d, e = (suite.nonce_generate(s1, stream, sid) for _ in range(2))
    assert (g.base_mul(d), g.base_mul(e)) == (base.hiding, base.binding)
    raw = rng.fork("rfc")(32)
    assert suite.nonce_generate(s1, lambda n: raw[:n]) == suite.h3(raw + g.scalar_encode(s1))
    assert suite.nonce_generate(s1, lambda n: raw[:n], sid) == suite.h3(raw + g.scalar_encode(s1) + sid)


def test_frost_aborted_signer_drops_nothing_it_can_reuse(suite, rng, net, shares5):
    parties = signer_parties(shares5, [1, 2, 3], MSG, rng)
    r = net(parties, _tamper_z(suite, {2})).start().run()
    assert set(r.aborts) == {1, 3}
    for i in (1, 3):
        assert parties[i]._nonces is None
        with pytest.raises(UsageError):
            parties[i].start()


def test_frost_different_message_means_different_session(suite, rng, net, shares5):
    parties = signer_parties(shares5, [1, 2, 3], MSG, rng)
    parties[3] = FrostSigner(shares5[3], signers=[1, 2, 3], message=b"another message", instance=INSTANCE, rng=rng.fork("s3"))
    assert parties[3].session_id != parties[1].session_id
    r = net(parties).start().run()
    assert not r.aborts
    assert r.rejected
    for _, e in r.rejected:
        assert_rejected(e, AbortReason.WRONG_SESSION)
    assert {i for i, _ in r.rejected} == {1, 2, 3}
    for p in parties.values():
        assert_no_result(p)
        assert p.state is PartyState.RUNNING


def test_frost_share_from_another_epoch_means_different_session(suite, rng, net, shares5):
    new = run_refresh(shares5, [1, 2, 3, 4, 5], rng)
    assert new[1].public.epoch == 1 and new[1].public.group_key == shares5[1].public.group_key
    mixed = {1: new[1], 2: shares5[2], 3: shares5[3]}
    parties = signer_parties(mixed, [1, 2, 3], MSG, rng)
    assert parties[1].session_id != parties[2].session_id == parties[3].session_id
    r = net(parties).start().run()
    assert not r.aborts
    for _, e in r.rejected:
        assert_rejected(e, AbortReason.WRONG_SESSION)
    assert {i for i, _ in r.rejected} == {1, 2, 3}
    for p in parties.values():
        assert_no_result(p)


def run_refresh(shares, ids, rng, instance=INSTANCE):
    parties = refresh_parties(shares, ids, rng, instance=instance)
    r = Router(parties).start().run()
    assert not r.aborts and not r.rejected
    return r.results()


# =================================================================================================
# Refresh
# =================================================================================================
def test_refresh_threshold_cannot_change(suite, rng, shares5):
    params = inspect.signature(Refresh.__init__).parameters
    assert "threshold" not in params
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    with pytest.raises(TypeError):
        Refresh(shares5[1], participants=[1, 2, 3], instance=INSTANCE, rng=rng, threshold=2)  # type: ignore[call-arg]
    new = run_refresh(shares5, [1, 2, 3, 4, 5], rng)
    assert all(s.public.threshold == 3 for s in new.values())


def test_refresh_usage_errors(suite, rng, shares5):
    with pytest.raises(UsageError, match=r"too few|at least"):
        Refresh(shares5[1], participants=[1, 2], instance=INSTANCE, rng=rng)
    with pytest.raises(UsageError):
        Refresh(shares5[1], participants=[2, 3, 4], instance=INSTANCE, rng=rng)
    with pytest.raises(UsageError):
        Refresh(shares5[1], participants=[1, 2, 9], instance=INSTANCE, rng=rng)
    with pytest.raises(UsageError):
        Refresh(shares5[1], participants=[1, 2, 2, 3], instance=INSTANCE, rng=rng)


def test_refresh_old_and_new_shares_never_mix(suite, rng, shares5):
    g = suite.group
    n = g.order
    group_key = shares5[1].public.group_key
    new = run_refresh(shares5, [1, 2, 3, 4, 5], rng)
    old = {i: s.signing_share for i, s in shares5.items()}
    fresh = {i: s.signing_share for i, s in new.items()}
    assert all(old[i] != fresh[i] for i in old)
    for ids in ([1, 2, 3], [2, 4, 5], [1, 3, 5]):
        assert g.base_mul(interpolate({i: old[i] for i in ids}, n)) == group_key
        assert g.base_mul(interpolate({i: fresh[i] for i in ids}, n)) == group_key
        for k in range(1, len(ids)):
            mixed = {i: (fresh[i] if j < k else old[i]) for j, i in enumerate(ids)}
            assert g.base_mul(interpolate(mixed, n)) != group_key
    # New shares sign under the unchanged key.
    parties = signer_parties(new, [2, 4, 5], MSG, rng)
    sig = set(Router(parties).start().run().results().values()).pop()
    assert suite.verify(group_key, MSG, sig)


def test_refresh_subset_drops_the_others(suite, rng, shares5):
    new = run_refresh(shares5, [1, 2, 4], rng)
    assert set(new[1].public.verifying_shares) == {1, 2, 4}
    with pytest.raises(UsageError):
        FrostSigner(new[1], signers=[1, 2, 3], message=MSG, instance=INSTANCE, rng=rng)


@pytest.mark.parametrize("delta", [-1, +1], ids=["short", "long"])
def test_refresh_commitment_of_wrong_length(suite, rng, net, shares5, delta):
    parties = refresh_parties(shares5, [1, 2, 3, 4], rng)
    g = suite.group

    def change(m):
        p = payload_of(suite, m, RefreshRound1)
        c = p.commitment[:-1] if delta < 0 else (*p.commitment, g.base_mul(99))
        return with_payload(m, RefreshRound1(suite=suite, commitment=c))

    r = net(parties, _broadcast_tamper(4, 1, change)).start().run()
    _assert_all_honest_dead(parties, r, {4}, AbortReason.INVALID_COMMITMENT, {4})


def test_refresh_share_with_nonzero_constant(suite, rng, net, shares5):
    """A refresher adding a constant to every share it deals (which would shift the group key)
    is caught by every recipient: the commitment's constant term is forced to the identity."""
    parties = refresh_parties(shares5, [1, 2, 3], rng)
    n = suite.group.order

    def change(to, m):
        p = payload_of(suite, m, DkgSecretShare)
        return with_payload(m, DkgSecretShare(suite=suite, share=(p.share + 5) % n))

    r = net(parties, mutate(from_party(3, 2, broadcast=False), change)).start().run()
    _assert_all_honest_dead(parties, r, {3}, AbortReason.INVALID_SHARE, {3})


def test_refresh_equivocation(suite, rng, net, shares5):
    parties = refresh_parties(shares5, [1, 2, 3], rng)
    p2 = parties[2]
    twin = Refresh(shares5[2], participants=[1, 2, 3], instance=INSTANCE, rng=rng.fork("twin"))
    (alt,) = twin.start()
    assert alt.session_id == p2.session_id
    r = net(parties, mutate(from_party(2, 1, to=3), lambda to, m: alt)).start().run()
    # 1 got X from 2, 3 got Y: each names 2 and the other (whose echo disagrees with its view);
    # 2's own echo of X tells 3 only that 2 equivocated.
    views = {1: "X", 2: "X", 3: "Y"}
    for i in (1, 3):
        assert_echo_blame(r.aborts[i], 2, views, i, secrets=r.secrets, round=2)
        assert_dead(parties[i])
    assert r.aborts[1].culprits == {2, 3}
    assert r.aborts[3].culprits == {1, 2}
    assert not any(p.done for p in parties.values())


def test_refresh_invalid_share_to_one_victim_leaves_nobody_on_the_new_epoch(suite, rng, net, shares5):
    """The victim aborts naming the dealer; the others wait for its round-3 confirmation and
    never move to the new epoch, so the old shares stay the only usable ones."""
    parties = refresh_parties(shares5, [1, 2, 3], rng)
    n = suite.group.order

    def change(to, m):
        return with_payload(m, DkgSecretShare(suite=suite, share=(payload_of(suite, m, DkgSecretShare).share + 1) % n))

    r = net(parties, mutate(from_party(3, 2, broadcast=False, to=1), change)).start().run()
    assert set(r.aborts) == {1}
    assert_abort(r.aborts[1], AbortReason.INVALID_SHARE, {3}, secrets=r.secrets)
    assert not r.results()
    for i in (2, 3):
        assert parties[i].state is PartyState.RUNNING and parties[i].round == 3
        assert_no_result(parties[i])


def test_refresh_confirmation_with_a_different_package_digest(suite, rng, net, shares5):
    parties = refresh_parties(shares5, [1, 2, 3], rng)

    def change(m):
        return with_payload(m, DkgConfirm(suite=suite, package_digest=shares5[1].public.digest))

    r = net(parties, _broadcast_tamper(2, 3, change)).start().run()
    for i in (1, 3):
        assert_abort(r.aborts[i], AbortReason.INCONSISTENT_KEY, {2}, secrets=r.secrets)
        assert r.aborts[i].round == 3
        assert_dead(parties[i])


def test_forked_refresh_packages_do_not_share_a_signing_session(suite, rng, net, shares5):
    """Two refreshes forked from one epoch give incompatible packages (same key id and epoch,
    other verifying shares). The session id binds the whole package, so a signing set mixing
    the forks never shares a session: every cross-fork message is refused as WRONG_SESSION
    and no honest signer is blamed."""
    fork_a = run_refresh(shares5, [1, 2, 3, 4, 5], rng.fork("a"), instance=b"\xaa" * 32)
    fork_b = run_refresh(shares5, [1, 2, 3, 4, 5], rng.fork("b"), instance=b"\xbb" * 32)
    pa, pb = fork_a[1].public, fork_b[1].public
    assert pa.epoch == pb.epoch == 1 and pa.key_id == pb.key_id
    assert pa.verifying_shares != pb.verifying_shares and pa.digest != pb.digest
    mixed = {1: fork_a[1], 2: fork_b[2], 3: fork_a[3]}
    parties = signer_parties(mixed, [1, 2, 3], MSG, rng)
    assert parties[1].session_id == parties[3].session_id != parties[2].session_id
    r = net(parties).start().run()
    assert not r.aborts
    assert not r.results()
    assert r.rejected
    for _, e in r.rejected:
        assert_rejected(e, AbortReason.WRONG_SESSION)
    assert {i for i, _ in r.rejected} == {1, 2, 3}
    for p in parties.values():
        assert_no_result(p)
        assert p.state is PartyState.RUNNING
    # Same for refresh and repair, the other key-scoped sessions.
    assert refresh_parties(mixed, [1, 2, 3], rng)[1].session_id != refresh_parties(mixed, [1, 2, 3], rng)[2].session_id
    assert repair_parties(fork_a, [1, 2, 3], 5, rng)[5].session_id != repair_parties(fork_b, [1, 2, 3], 5, rng)[5].session_id


# =================================================================================================
# Repair
# =================================================================================================
def test_repair_honest_baseline(suite, rng, net, shares5):
    parties = repair_parties(shares5, [1, 2, 4], 5, rng)
    r = net(parties).start().run()
    assert not r.aborts and not r.rejected
    rebuilt = r.results()[5]
    assert isinstance(rebuilt, KeyShare)
    assert rebuilt.signing_share == shares5[5].signing_share


def test_repair_usage_errors(suite, rng, shares5):
    s = shares5
    pub = s[1].public
    with pytest.raises(UsageError, match="cannot be one of its helpers"):
        RepairHelper(s[1], helpers=[1, 2, 3], lost=3, instance=INSTANCE, rng=rng)
    with pytest.raises(UsageError, match="cannot be one of its helpers"):
        RepairTarget(pub, identifier=3, helpers=[1, 2, 3], instance=INSTANCE)
    with pytest.raises(UsageError, match=r"too few|at least"):
        RepairHelper(s[1], helpers=[1, 2], lost=5, instance=INSTANCE, rng=rng)
    with pytest.raises(UsageError, match=r"too few|at least"):
        RepairTarget(pub, identifier=5, helpers=[1, 2], instance=INSTANCE)
    with pytest.raises(UsageError):
        RepairHelper(s[1], helpers=[1, 2, 3], lost=9, instance=INSTANCE, rng=rng)
    with pytest.raises(UsageError):
        RepairHelper(s[1], helpers=[1, 2, 8], lost=5, instance=INSTANCE, rng=rng)
    with pytest.raises(UsageError):
        RepairHelper(s[1], helpers=[2, 3, 4], lost=5, instance=INSTANCE, rng=rng)


def _repair_abort_checks(parties, r, lost, reason, culprits, *, at):
    assert_abort(r.aborts[at], reason, culprits, secrets=r.secrets)
    assert_dead(parties[at])
    assert_no_result(parties[lost])


def test_repair_delta_not_matching_its_image(suite, rng, net, shares5):
    parties = repair_parties(shares5, [1, 2, 3], 5, rng)
    n = suite.group.order

    def change(to, m):
        p = payload_of(suite, m, RepairDelta)
        return with_payload(m, RepairDelta(suite=suite, delta=(p.delta + 1) % n, commitment=p.commitment))

    r = net(parties, mutate(from_party(2, 1, to=3), change)).start().run()
    _repair_abort_checks(parties, r, 5, AbortReason.INVALID_SHARE, {2}, at=3)


def test_repair_wrong_delta_with_matching_image(suite, rng, net, shares5):
    """Helper 2 gives helper 3 a different (self-consistent) summand than it announced to the
    lost party. Helper 3's echo of the image it got then differs from 2's announcement: the
    lost party cannot tell which of them lies, so it names both."""
    parties = repair_parties(shares5, [1, 2, 3], 5, rng)
    g = suite.group

    def change(to, m):
        d = (payload_of(suite, m, RepairDelta).delta + 1) % g.order
        return with_payload(m, RepairDelta(suite=suite, delta=d, commitment=g.base_mul(d)))

    r = net(parties, mutate(from_party(2, 1, to=3), change)).start().run()
    _repair_abort_checks(parties, r, 5, AbortReason.INCONSISTENT_REPAIR, {2, 3}, at=5)
    assert r.aborts[5].round == 2


def test_repair_lying_echo_of_own_image_names_only_the_liar(suite, rng, net, shares5):
    """Helper 3 misreports, in its σ message, the image of its own summand: helper 3 alone
    knows that value, so only 3 is named."""
    parties = repair_parties(shares5, [1, 2, 3], 5, rng)
    g = suite.group

    def change(to, m):
        p = payload_of(suite, m, RepairSigma)
        forged = tuple((i, pt + g.generator()) if i == 3 else (i, pt) for i, pt in p.received)
        return with_payload(m, RepairSigma(suite=suite, sigma=p.sigma, received=forged))

    r = net(parties, mutate(from_party(3, 2, to=5), change)).start().run()
    _repair_abort_checks(parties, r, 5, AbortReason.INCONSISTENT_REPAIR, {3}, at=5)
    assert r.aborts[5].round == 2


def test_repair_images_that_do_not_add_up(suite, rng, net, shares5):
    parties = repair_parties(shares5, [1, 2, 3], 5, rng)
    g = suite.group

    def change(to, m):
        p = payload_of(suite, m, RepairCommitments)
        forged = tuple((i, pt + g.generator()) if i == 3 else (i, pt) for i, pt in p.commitments)
        return with_payload(m, RepairCommitments(suite=suite, commitments=forged))

    r = net(parties, mutate(from_party(1, 1, to=5), change)).start().run()
    _repair_abort_checks(parties, r, 5, AbortReason.INCONSISTENT_REPAIR, {1}, at=5)
    assert r.aborts[5].round == 1


def test_repair_wrong_sigma(suite, rng, net, shares5):
    parties = repair_parties(shares5, [1, 2, 3], 5, rng)
    n = suite.group.order

    def change(to, m):
        p = payload_of(suite, m, RepairSigma)
        return with_payload(m, RepairSigma(suite=suite, sigma=(p.sigma + 1) % n, received=p.received))

    r = net(parties, mutate(from_party(3, 2, to=5), change)).start().run()
    _repair_abort_checks(parties, r, 5, AbortReason.INCONSISTENT_REPAIR, {3}, at=5)
    assert r.aborts[5].round == 2


def _two_liars_repair(suite, rng, net, shares5, sigma_order):
    """Helper 1 gives helper 2 a wrong (self-consistent) summand; helper 3 lies about σ. The
    σ messages reach the lost party in ``sigma_order``.

    The lost party judges each helper's σ on its own: 2's echo of 1's image disagrees with
    what 1 announced (either could be lying: {1, 2}), 3's σ does not match its own echo ({3})."""
    parties = repair_parties(shares5, [1, 2, 3], 5, rng)
    g = suite.group
    held = {}

    def hook(to, m):
        if m.sender == 1 and m.round == 1 and to == 2:
            d = (payload_of(suite, m, RepairDelta).delta + 1) % g.order
            return [(to, with_payload(m, RepairDelta(suite=suite, delta=d, commitment=g.base_mul(d))))]
        if m.round == 2 and to == 5:
            if m.sender == 3:
                p = payload_of(suite, m, RepairSigma)
                m = with_payload(m, RepairSigma(suite=suite, sigma=(p.sigma + 1) % g.order, received=p.received))
            held[m.sender] = m
            return []
        return [(to, m)]

    r = net(parties, hook).start().run()
    assert set(held) == {1, 2, 3}
    for j in sigma_order:
        r.inject(5, held[j])
    r.run()
    return parties, r


def test_repair_two_liars_named_when_liar_sigma_arrives_first(suite, rng, net, shares5):
    parties, r = _two_liars_repair(suite, rng, net, shares5, [3, 2, 1])
    _repair_abort_checks(parties, r, 5, AbortReason.INCONSISTENT_REPAIR, {1, 2, 3}, at=5)
    assert r.aborts[5].round == 2


@pytest.mark.parametrize("order", list(itertools.permutations([1, 2, 3])), ids=lambda o: "".join(map(str, o)))
def test_repair_two_liars_named_regardless_of_arrival_order(suite, rng, net, shares5, order):
    parties, r = _two_liars_repair(suite, rng, net, shares5, list(order))
    _repair_abort_checks(parties, r, 5, AbortReason.INCONSISTENT_REPAIR, {1, 2, 3}, at=5)
    assert r.aborts[5].round == 2


# =================================================================================================
# Payload secrecy
# =================================================================================================
def _renders(value, suite):
    return secret_renderings(value, suite)


def test_secret_payloads_and_key_shares_are_redacted(suite, rng, shares5):
    g = suite.group
    secret = int.from_bytes(hashlib.sha256(b"a secret").digest(), "big") % g.order
    objs = [
        DkgSecretShare(suite=suite, share=secret),
        RepairDelta(suite=suite, delta=secret, commitment=g.base_mul(secret)),
        RepairSigma(suite=suite, sigma=secret, received=((1, g.base_mul(3)),)),
    ]
    for o in objs:
        for text in (repr(o), str(o), f"{o}", f"{o!r}"):
            for s in _renders(secret, suite):
                assert s not in text, text
            assert "redacted" in text
    for ks in shares5.values():
        for text in (repr(ks), str(ks)):
            for s in _renders(ks.signing_share, suite):
                assert s not in text
            assert "redacted" in text


def test_secret_payloads_and_key_shares_refuse_pickling(suite, shares5):
    g = suite.group
    objs = [
        DkgSecretShare(suite=suite, share=5),
        RepairDelta(suite=suite, delta=5, commitment=g.base_mul(5)),
        RepairSigma(suite=suite, sigma=5, received=((1, g.base_mul(3)),)),
        shares5[1],
    ]
    for o in objs:
        for proto in range(pickle.HIGHEST_PROTOCOL + 1):
            with pytest.raises(TypeError):
                pickle.dumps(o, protocol=proto)
        for fn in (copy.copy, copy.deepcopy):
            with pytest.raises(TypeError):
                fn(o)


def test_protocol_parties_refuse_pickling(suite, rng, shares5):
    parties = [
        dkg_parties(suite, IDS3, 2, rng)[1],
        refresh_parties(shares5, [1, 2, 3], rng)[1],
        repair_parties(shares5, [1, 2, 3], 5, rng)[1],
        repair_parties(shares5, [1, 2, 3], 5, rng)[5],
        signer_parties(shares5, [1, 2, 3], MSG, rng)[1],
    ]
    for p in parties:
        with pytest.raises(TypeError):
            pickle.dumps(p)


def test_abort_texts_never_show_shares(suite, rng, net, shares5):
    """Every abort of a run where real secret shares crossed the network: none shows one.
    (The ``net`` fixture runs the same check on every test's router.)"""
    errors = []
    secrets = set()
    n = suite.group.order
    # DKG with a bad share, refresh with a bad share, repair with a bad delta and a bad σ.
    parties = dkg_parties(suite, IDS3, 2, rng)
    r = (
        net(
            parties,
            mutate(from_party(1, 2, broadcast=False), lambda to, m: with_payload(m, DkgSecretShare(suite=suite, share=1))),
        )
        .start()
        .run()
    )
    errors += r.errors()
    secrets |= r.secrets
    r = (
        net(
            refresh_parties(shares5, [1, 2, 3], rng),
            mutate(from_party(2, 2, broadcast=False), lambda to, m: with_payload(m, DkgSecretShare(suite=suite, share=2))),
        )
        .start()
        .run()
    )
    errors += r.errors()
    secrets |= r.secrets
    for hook in (
        mutate(
            from_party(2, 1, to=3),
            lambda to, m: with_payload(
                m, dataclasses.replace(payload_of(suite, m, RepairDelta), delta=(payload_of(suite, m, RepairDelta).delta + 1) % n)
            ),
        ),
        mutate(
            from_party(3, 2, to=5),
            lambda to, m: with_payload(
                m, dataclasses.replace(payload_of(suite, m, RepairSigma), sigma=(payload_of(suite, m, RepairSigma).sigma + 1) % n)
            ),
        ),
    ):
        r = net(repair_parties(shares5, [1, 2, 3], 5, rng), hook).start().run()
        errors += r.errors()
        secrets |= r.secrets
    secrets |= {s.signing_share for s in shares5.values()}
    assert len(errors) >= 4
    assert len(secrets) >= 10
    for e in errors:
        assert isinstance(e, ProtocolAbort)
        assert_no_secrets(e, secrets, suite)


def test_suites_cover_every_scheme():
    assert {s.scheme for s in SUITE_LIST} == set(SUITES) == {"ed25519", "secp256k1", "bip340"}
    sids = {derive_session_id("frost-dkg", s.context, participants=[1, 2, 3], threshold=2, instance=INSTANCE) for s in SUITE_LIST}
    assert len(sids) == 3


@pytest.mark.parametrize("when", ["first", "last"])
def test_repair_helper_refuses_a_delta_from_the_lost_party(suite, rng, net, shares5, when):
    """The lost party is a peer of every helper (it receives from them) but never contributes
    a summand: a RepairDelta from it aborts the helper naming it, before or after the real
    deltas arrived, and no honest helper is ever blamed."""
    parties = repair_parties(shares5, [1, 2, 3], 5, rng)
    g = suite.group
    forged = Message(
        session_id=parties[2].session_id,
        round=1,
        sender=5,
        recipient=2,
        payload=encode_payload(RepairDelta(suite=suite, delta=7, commitment=g.base_mul(7))),
    )
    # "last": helper 2 has every summand but helper 3's when the forged one comes in.
    held = []
    hook = mutate(from_party(3, 1, to=2), lambda to, m: held.append(m)) if when == "last" else None
    r = net(parties, hook).start()
    if when == "last":
        r.run()
        assert parties[2].state is PartyState.RUNNING and len(held) == 1
    with pytest.raises(ProtocolAbort) as ei:
        parties[2].receive(forged)
    assert_abort(ei.value, AbortReason.UNEXPECTED_MESSAGE, {5}, secrets=r.secrets)
    assert ei.value.round == 1
    assert_dead(parties[2])
    r.run()
    # Helpers 1 and 3 finish; the lost party never gets helper 2's σ: no key, nobody blamed.
    assert set(r.aborts) == set()
    assert parties[1].done and parties[3].done
    assert_no_result(parties[5])
    assert parties[5].state is PartyState.RUNNING


def test_harness_detects_a_leaked_secret(suite):
    """Self-test of the secrecy check used on every abort above."""
    g = suite.group
    secret = int.from_bytes(hashlib.sha256(b"leak").digest(), "big") % g.order
    for text in (g.scalar_encode(secret).hex(), str(secret), secret.to_bytes(32, "big").hex().upper()):
        leaky = ProtocolAbort(AbortReason.INVALID_SHARE, culprits={1}, field=f"share={text}")
        with pytest.raises(AssertionError):
            assert_no_secrets(leaky, {secret}, suite)
    assert_no_secrets(ProtocolAbort(AbortReason.INVALID_SHARE, culprits={1}, field="share"), {secret}, suite)
