"""FrostBatchSigner: k FROST signatures of one key in one two-round session.

Every item is a standard RFC 9591 signature: each is checked by an implementation that is
not ours (libsodium/OpenSSL, libsecp256k1), here and by the suite-wide hook on every inner
FrostSigner (tests/conftest.py). Hostile cases check reason, culprits and that an aborted
batch keeps no nonces.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardguard.crypto.suites import ALL_SUITES, SUITES
from shardguard.interop import verify_independently
from shardguard.protocols.dealer import trusted_dealer_keygen
from shardguard.protocols.errors import AbortReason, MessageRejected, ProtocolAbort, UsageError
from shardguard.protocols.frost import FrostBatchSigner, FrostSigner, SignBatchRound1, SignBatchRound2, SignRound1, SignRound2
from shardguard.protocols.frost._batch import _round2_size, item_instance, messages_digest
from shardguard.protocols.frost._messages import MAX_BATCH
from shardguard.protocols.message import BROADCAST, MAX_PAYLOAD, Message
from shardguard.protocols.party import PartyState
from shardguard.protocols.wire import WireError, decode_payload, encode_payload

from .conftest import (
    INSTANCE,
    DeterministicRng,
    Router,
    assert_abort,
    assert_dead,
    assert_no_result,
    assert_rejected,
    dealer_shares,
    from_party,
    mutate,
    payload_of,
    with_payload,
)

CONFIGS = {"2of3": (2, 3, [1, 3]), "3of5": (3, 5, [2, 3, 5])}
SIZES = [1, 2, 7]


def batch_messages(k: int) -> list[bytes]:
    """k messages of distinct lengths, the first one empty."""
    return [f"item {i};".encode() * i for i in range(k)]


def batch_parties(shares, signers, messages, rng, *, instance=INSTANCE, **kw):
    return {
        i: FrostBatchSigner(shares[i], signers=signers, messages=messages, instance=instance, rng=rng.fork(f"batch{i}"), **kw)
        for i in signers
    }


def start(net, parties, hook=None) -> Router:
    """Start the parties and record every item's nonces as secrets the errors must not show."""
    r = net(parties, hook).start()
    for p in parties.values():
        for item in p._items:
            r.secrets.update(item._nonces or ())
    return r


def assert_batch_verifies(shares, messages, results) -> tuple[bytes, ...]:
    sigs = set(results.values())
    assert len(sigs) == 1, "signers output different signatures"
    (batch,) = sigs
    assert len(batch) == len(messages) and len(set(batch)) == len(batch)
    public = next(iter(shares.values())).public
    for msg, sig in zip(messages, batch, strict=True):
        assert verify_independently(public.suite.scheme, public.public_key_bytes, msg, sig)
        assert not verify_independently(public.suite.scheme, public.public_key_bytes, msg + b"!", sig)
    return batch


def assert_no_nonces_left(party: FrostBatchSigner) -> None:
    assert all(item._nonces is None for item in party._items)


# -- honest runs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("k", SIZES, ids=[f"k{k}" for k in SIZES])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_batch_signs_every_message(suite, rng, net, config, k):
    t, n, signers = CONFIGS[config]
    shares = dealer_shares(suite, n, t, rng)
    messages = batch_messages(k)
    parties = batch_parties(shares, signers, messages, rng)
    r = start(net, parties).run()
    assert not r.aborts and not r.rejected
    assert_batch_verifies(shares, messages, r.results())
    # One broadcast per signer and round, whatever k is.
    assert len(r.sent) == 2 * len(signers)
    for m in r.sent:
        assert m.is_broadcast
        assert len(payload_of(suite, m, SignBatchRound1 if m.round == 1 else SignBatchRound2).items) == k
        if m.round == 2:  # the construction-time size bound is exact
            assert len(m.payload) == _round2_size(suite, signers, k)
    for p in parties.values():
        assert p.done and p.state is PartyState.DONE and p._items == ()


def test_items_are_ordinary_frost_sessions(suite, rng, net):
    """Item i carries the payloads of a FrostSigner session whose instance is derived from the
    batch's session id and i: its own nonces, commitments and message."""
    shares = dealer_shares(suite, 3, 2, rng)
    messages = [b"a", b"a", b"b"]  # a repeated message is still two independent signings
    parties = batch_parties(shares, [1, 2], messages, rng)
    p = parties[1]
    assert p.session_id == shares[1].public.session_id("frost-sign-batch", (1, 2), INSTANCE, message=messages_digest(messages))
    for i, item in enumerate(p._items):
        single = FrostSigner(shares[1], signers=[1, 2], message=messages[i], instance=item_instance(p.session_id, i), rng=rng)
        assert item.session_id == single.session_id
    assert len({item.session_id for item in p._items} | {p.session_id}) == len(messages) + 1
    r = start(net, parties).run()
    (m1,) = [m for m in r.sent if m.sender == 1 and m.round == 1]
    commitments = [decode_payload(suite, raw, SignRound1) for raw in payload_of(suite, m1, SignBatchRound1).items]
    assert len({(c.hiding, c.binding) for c in commitments}) == 3
    batch = assert_batch_verifies(shares, messages, r.results())
    assert batch[0] != batch[1]


def test_single_signer_batch_finishes_at_start(rng):
    suite = SUITES["ed25519"]
    shares = {s.identifier: s for s in trusted_dealer_keygen(suite, None, 1, [1, 2], rng=rng, allow_single=True)}
    p = FrostBatchSigner(shares[2], signers=[2], messages=[b"x", b""], instance=INSTANCE, rng=rng)
    out = p.start()
    assert p.done and [m.round for m in out] == [1, 2]
    assert_batch_verifies(shares, [b"x", b""], {2: p.result})


_SHARES_23 = dealer_shares(SUITES["ed25519"], 3, 2, DeterministicRng(b"batch-hypothesis"))


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(st.binary(max_size=80), min_size=1, max_size=MAX_BATCH), seed=st.binary(min_size=1, max_size=8))
def test_any_message_list_signs(messages, seed):
    rng = DeterministicRng(seed)
    parties = batch_parties(_SHARES_23, [1, 2], messages, rng)
    r = Router(parties).start().run()
    assert not r.aborts and not r.rejected
    assert_batch_verifies(_SHARES_23, messages, r.results())


# -- session binding -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "other",
    [[b"m0", b"m1", b"m3"], [b"m1", b"m0", b"m2"], [b"m0", b"m1"], [b"m0", b"m1", b"m2", b""], [b"m0m1", b"", b"m2"]],
    ids=["one-differs", "reordered", "shorter", "longer", "re-split"],
)
def test_different_message_lists_never_share_a_session(suite, rng, net, other):
    shares = dealer_shares(suite, 3, 2, rng)
    messages = [b"m0", b"m1", b"m2"]
    parties = batch_parties(shares, [1, 2, 3], messages, rng)
    parties[3] = FrostBatchSigner(shares[3], signers=[1, 2, 3], messages=other, instance=INSTANCE, rng=rng.fork("other"))
    assert parties[3].session_id != parties[1].session_id == parties[2].session_id
    r = start(net, parties).run()
    assert not r.aborts
    assert {i for i, _ in r.rejected} == {1, 2, 3}
    for _, e in r.rejected:
        assert_rejected(e, AbortReason.WRONG_SESSION)
    for p in parties.values():
        assert_no_result(p)
        assert p.state is PartyState.RUNNING


def test_batch_and_single_sessions_are_distinct(suite, rng):
    shares = dealer_shares(suite, 3, 2, rng)
    batch = FrostBatchSigner(shares[1], signers=[1, 2], messages=[b"m"], instance=INSTANCE, rng=rng)
    single = FrostSigner(shares[1], signers=[1, 2], message=b"m", instance=INSTANCE, rng=rng)
    assert single.session_id not in {batch.session_id, batch._items[0].session_id}
    other_instance = FrostBatchSigner(shares[1], signers=[1, 2], messages=[b"m"], instance=b"\x01" * 32, rng=rng)
    assert other_instance._items[0].session_id != batch._items[0].session_id


# -- hostile peers ---------------------------------------------------------------------------------
def _edit_items(suite, typ, change):
    """A Router change: rebuild the batch payload from ``change(list of items)``."""

    def edit(to, m):
        items = list(payload_of(suite, m, typ).items)
        return with_payload(m, typ(suite=suite, items=tuple(change(items))))

    return edit


@pytest.mark.parametrize("rnd", [1, 2])
@pytest.mark.parametrize("how", ["missing", "extra"])
def test_wrong_number_of_items_names_the_sender(suite, rng, net, rnd, how):
    shares = dealer_shares(suite, 5, 3, rng)
    typ = SignBatchRound1 if rnd == 1 else SignBatchRound2
    change = (lambda items: items[:-1]) if how == "missing" else (lambda items: [*items, items[0]])
    parties = batch_parties(shares, [1, 2, 4], batch_messages(3), rng)
    r = start(net, parties, mutate(from_party(2, rnd), _edit_items(suite, typ, change))).run()
    for i in (1, 4):
        e = assert_abort(r.aborts[i], AbortReason.MALFORMED_PAYLOAD, {2}, field="items", secrets=r.secrets)
        assert e.round == rnd and e.session_id == parties[i].session_id and e.party == i
        assert_dead(parties[i])
        assert parties[i]._items == ()


@pytest.mark.parametrize(
    ("rnd", "garble"),
    [
        (1, lambda suite, raw: b"\x00garbage"),
        (1, lambda suite, raw: raw[:-1]),
        (1, lambda suite, raw: encode_payload(SignRound2(suite=suite, share=1, commitment_digests=((1, bytes(32)),)))),
        (2, lambda suite, raw: raw + b"\x00"),
        (2, lambda suite, raw: raw.replace(suite.context.encode(), b"x" * len(suite.context))),
    ],
    ids=["not-cbor", "truncated", "wrong-type", "trailing-byte", "wrong-suite"],
)
def test_garbled_item_names_the_sender(suite, rng, net, rnd, garble):
    shares = dealer_shares(suite, 5, 3, rng)
    typ = SignBatchRound1 if rnd == 1 else SignBatchRound2

    def change(items):
        items[1] = garble(suite, items[1])
        return items

    parties = batch_parties(shares, [1, 2, 4], batch_messages(3), rng)
    r = start(net, parties, mutate(from_party(4, rnd), _edit_items(suite, typ, change))).run()
    for i in (1, 2):
        e = assert_abort(r.aborts[i], AbortReason.MALFORMED_PAYLOAD, {4}, secrets=r.secrets)
        assert e.field.startswith("items[1]") and e.round == rnd
        assert_dead(parties[i])
        assert parties[i]._items == ()
    # The garbling party itself got honest payloads and may finish; nobody else does.
    assert set(r.results()) <= {4}


def test_malformed_batch_payload_names_the_sender(suite, rng, net):
    shares = dealer_shares(suite, 3, 2, rng)
    parties = batch_parties(shares, [1, 2], batch_messages(2), rng)
    r = start(net, parties, mutate(from_party(2, 1), lambda to, m: with_payload(m, m.payload[:-3]))).run()
    assert_abort(r.aborts[1], AbortReason.MALFORMED_PAYLOAD, {2}, secrets=r.secrets)
    assert_dead(parties[1])


def _tamper_share(suite, item):
    def change(items):
        p = decode_payload(suite, items[item], SignRound2)
        z = (p.share + 1) % suite.group.order
        items[item] = encode_payload(SignRound2(suite=suite, share=z, commitment_digests=p.commitment_digests))
        return items

    return _edit_items(suite, SignBatchRound2, change)


@pytest.mark.parametrize("item", [0, 4])
def test_bad_signature_share_in_one_item_names_the_culprit(suite, rng, net, item):
    shares = dealer_shares(suite, 5, 3, rng)
    parties = batch_parties(shares, [1, 2, 4], batch_messages(5), rng)
    r = start(net, parties, mutate(from_party(2, 2), _tamper_share(suite, item))).run()
    for i in (1, 4):
        e = assert_abort(r.aborts[i], AbortReason.INVALID_SIGNATURE_SHARE, {2}, secrets=r.secrets)
        assert e.round == 2 and e.field == f"items[{item}]"
        assert_dead(parties[i])
        assert parties[i]._items == ()
    assert not parties[1].done and not parties[4].done


def test_replayed_batch_is_dropped_and_the_session_finishes(suite, rng, net):
    shares = dealer_shares(suite, 3, 2, rng)

    def twice(to, m):
        return [(to, m), (to, m)]

    messages = batch_messages(3)
    parties = batch_parties(shares, [1, 2, 3], messages, rng)
    r = start(net, parties, twice).run()
    assert not r.aborts
    assert r.rejected and all(e.reason in (AbortReason.REPLAYED_MESSAGE, AbortReason.UNEXPECTED_MESSAGE) for _, e in r.rejected)
    assert_batch_verifies(shares, messages, r.results())


def _twin_round1(parties, sender, rng) -> Message:
    p = parties[sender]
    twin = FrostBatchSigner(p._key, signers=p.signers, messages=list(p.messages), instance=INSTANCE, rng=rng.fork("twin"))
    (m,) = twin.start()
    assert m.session_id == p.session_id
    return m


def test_two_round1_batches_to_one_recipient_is_equivocation(suite, rng, net):
    shares = dealer_shares(suite, 3, 2, rng)
    parties = batch_parties(shares, [1, 2, 3], batch_messages(2), rng)
    alt = _twin_round1(parties, 3, rng)

    def hook(to, m):
        return [(to, m), (to, alt)] if (m.sender == 3 and m.round == 1 and to == 1) else [(to, m)]

    r = start(net, parties, hook).run()
    assert_abort(r.aborts[1], AbortReason.EQUIVOCATION, {3}, secrets=r.secrets)
    assert_dead(parties[1])
    assert parties[1]._items == ()


def test_split_view_round1_is_caught_by_the_items_echo(suite, rng, net):
    """Signer 1 sends one round-1 batch to 2 and another to 3: the items' round-2 echoes of
    the commitments differ; each honest signer names 1 and the co-signer with the other view."""
    shares = dealer_shares(suite, 3, 2, rng)
    parties = batch_parties(shares, [1, 2, 3], batch_messages(2), rng)
    alt = _twin_round1(parties, 1, rng)
    r = start(net, parties, mutate(lambda to, m: m.sender == 1 and m.round == 1 and to == 3, lambda to, m: alt)).run()
    assert_abort(r.aborts[2], AbortReason.EQUIVOCATION, {1, 3}, secrets=r.secrets)
    assert_abort(r.aborts[3], AbortReason.EQUIVOCATION, {1, 2}, secrets=r.secrets)
    for i in (2, 3):
        assert r.aborts[i].round == 1 and r.aborts[i].field.startswith("items[0]")
        assert_dead(parties[i])


@pytest.mark.parametrize(
    ("rnd", "recipient", "typ"),
    [(1, BROADCAST, SignRound1), (1, 1, SignBatchRound1), (3, BROADCAST, SignBatchRound1), (2, BROADCAST, SignBatchRound1)],
    ids=["single-payload", "p2p", "round-3", "round1-payload-in-round2"],
)
def test_illegal_messages_abort_naming_the_sender(rng, rnd, recipient, typ):
    suite = SUITES["ed25519"]
    shares = dealer_shares(suite, 3, 2, rng)
    p = FrostBatchSigner(shares[1], signers=[1, 2], messages=[b"a", b"b"], instance=INSTANCE, rng=rng)
    p.start()
    g = suite.group
    single = encode_payload(SignRound1(suite=suite, hiding=g.base_mul(3), binding=g.base_mul(5)))
    payload = single if typ is SignRound1 else encode_payload(typ(suite=suite, items=(single, single)))
    m = Message(session_id=p.session_id, round=rnd, sender=2, recipient=recipient, payload=payload)
    with pytest.raises(ProtocolAbort) as e:
        p.receive(m)
    assert_abort(e.value, e.value.reason, {2})
    assert e.value.reason in (AbortReason.UNEXPECTED_MESSAGE, AbortReason.MALFORMED_PAYLOAD)
    assert_dead(p)


# -- wire format -----------------------------------------------------------------------------------
@pytest.mark.parametrize("typ", [SignBatchRound1, SignBatchRound2])
def test_batch_payload_bounds(typ):
    suite = SUITES["secp256k1"]
    ok = typ(suite=suite, items=(b"x",) * MAX_BATCH)
    assert decode_payload(suite, encode_payload(ok), typ) == ok
    for items in ((), (b"x",) * (MAX_BATCH + 1), (b"",), ("x",), [b"x"]):
        with pytest.raises(WireError):
            typ(suite=suite, items=items)
    for fields in ([[b"x"] * (MAX_BATCH + 1)], [[b"x", 1]], [[b"x", [b"y"]]], [[b"x", b""]], [b"x"], [[b"x"], [b"x"]], []):
        raw = cbor2.dumps([1, suite.context, typ.TAG, *fields], canonical=True)
        with pytest.raises(WireError):
            decode_payload(suite, raw, typ)


@settings(max_examples=200, deadline=None, database=None)
@given(data=st.binary(max_size=300))
def test_batch_payload_decoder_refuses_garbage_with_wire_error(data):
    suite = SUITES["ed25519"]
    for typ in (SignBatchRound1, SignBatchRound2):
        try:
            p = decode_payload(suite, data, typ)
        except WireError:
            continue
        assert encode_payload(p) == data


# -- usage -----------------------------------------------------------------------------------------
def test_constructor_usage_errors(suite, rng):
    shares = dealer_shares(suite, 5, 3, rng)
    s1 = shares[1]

    def make(**kw):
        args = {"signers": [1, 2, 3], "messages": [b"m"], "instance": INSTANCE, "rng": rng, **kw}
        return FrostBatchSigner(s1, **args)

    make(messages=[b"m"] * MAX_BATCH)
    make(messages=(b"a", b""))
    for bad in ([], (), [b"m"] * (MAX_BATCH + 1)):
        with pytest.raises(UsageError, match=r"1\.\.64"):
            make(messages=bad)
    for bad in (b"m", iter([b"m"]), {b"m"}, None):
        with pytest.raises(UsageError, match=r"1\.\.64"):
            make(messages=bad)
    for bad in (["text"], [b"ok", bytearray(b"m")], [b"ok", None], [memoryview(b"m")]):
        with pytest.raises(UsageError, match="bytes"):
            make(messages=bad)
    with pytest.raises(UsageError, match="duplicate"):
        make(signers=[1, 2, 2, 3])
    with pytest.raises(UsageError, match="not among the signers"):
        make(signers=[2, 3, 4])
    with pytest.raises(UsageError, match="too few"):
        make(signers=[1, 2])
    with pytest.raises(UsageError, match="hold"):
        make(signers=[1, 2, 9])


def test_ecdsa_keys_are_refused(rng):
    (share, _) = trusted_dealer_keygen(ALL_SUITES["ecdsa"], None, 2, [1, 2], rng=rng)
    with pytest.raises(UsageError, match="not FROST"):
        FrostBatchSigner(share, signers=[1, 2], messages=[b"m"], instance=INSTANCE, rng=rng)


def test_a_batch_that_would_not_fit_one_payload_is_refused(rng):
    """Refused at construction, before any nonce is drawn: up to ~20 signers every batch
    size fits; with 30 signers the round-2 payload allows at most 55-56 messages."""
    suite = SUITES["ed25519"]
    shares = dealer_shares(suite, 30, 2, rng)
    signers = list(range(1, 31))
    fits = max(k for k in range(1, MAX_BATCH + 1) if _round2_size(suite, signers, k) <= MAX_PAYLOAD)
    assert 50 <= fits < MAX_BATCH
    FrostBatchSigner(shares[1], signers=signers, messages=[b"m"] * fits, instance=INSTANCE, rng=rng)
    with pytest.raises(UsageError, match="exceed one payload"):
        FrostBatchSigner(shares[1], signers=signers, messages=[b"m"] * (fits + 1), instance=INSTANCE, rng=rng)


def test_pickling_and_copying_are_refused(rng, net):
    suite = SUITES["bip340"]
    shares = dealer_shares(suite, 3, 2, rng)
    parties = batch_parties(shares, [1, 2], [b"a", b"b"], rng)
    p = parties[1]
    for when in ("before", "after"):
        for fn in (pickle.dumps, copy.copy, copy.deepcopy):
            with pytest.raises(TypeError):
                fn(p)
        if when == "before":
            start(net, parties)
    with pytest.raises(UsageError):
        p.start()


def test_late_and_foreign_messages_after_done(rng, net):
    suite = SUITES["ed25519"]
    shares = dealer_shares(suite, 3, 2, rng)
    parties = batch_parties(shares, [1, 2], [b"a"], rng)
    r = start(net, parties).run()
    assert all(p.done for p in parties.values())
    late = next(m for m in r.sent if m.sender == 2 and m.round == 2)
    with pytest.raises(MessageRejected) as e:
        parties[1].receive(late)
    assert_rejected(e.value, AbortReason.REPLAYED_MESSAGE)
    with pytest.raises(MessageRejected) as e:
        parties[1].receive(dataclasses.replace(late, session_id=bytes(32)))
    assert_rejected(e.value, AbortReason.WRONG_SESSION)
    assert parties[1].done
