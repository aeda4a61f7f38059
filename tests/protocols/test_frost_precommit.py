"""FROST with nonces committed ahead (protocols/frost/_precommit.py): one step per signer."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardguard.crypto.ciphersuite import Ciphersuite
from shardguard.crypto.suites import SUITES, suite_by_context
from shardguard.interop import verify_independently
from shardguard.protocols.dealer import trusted_dealer_keygen
from shardguard.protocols.errors import UsageError
from shardguard.protocols.frost import (
    NonceError,
    NoncePool,
    PrecommittedItem,
    PrecommittedShare,
    PublishedCommitment,
    sign_precommitted,
)
from shardguard.protocols.keys import KeyShare, PublicKeyPackage
from tests.helpers.vectors import h, load, vector_files, vector_id

from .conftest import DeterministicRng

FROST_FILES = vector_files("frost")


def aggregate(suite: Ciphersuite, shares: Sequence[PrecommittedShare]) -> bytes:
    """RFC 9591 §5.3, as the Coordinator does it: every R the same, the shares summed."""
    assert len({s.group_commitment for s in shares}) == 1
    g = suite.group
    return suite.encode_signature(g.decode(shares[0].group_commitment), sum(s.share for s in shares) % g.order)


def keys(suite: Ciphersuite, rng: DeterministicRng, t: int = 2, n: int = 3) -> list[KeyShare]:
    return trusted_dealer_keygen(suite, None, t, list(range(1, n + 1)), rng=rng)


def sign_all(
    signers: Sequence[KeyShare], pools: dict[int, NoncePool], messages: Sequence[bytes]
) -> tuple[list[bytes], dict[int, list[PublishedCommitment]]]:
    published = {s.identifier: pools[s.identifier].commit(len(messages), now=0.0) for s in signers}
    ids = [s.identifier for s in signers]
    shares: dict[int, list[PrecommittedShare]] = {}
    for s in signers:
        items = [
            PrecommittedItem(
                m, tuple((i, published[i][k].hiding, published[i][k].binding) for i in ids), published[s.identifier][k].id
            )
            for k, m in enumerate(messages)
        ]
        shares[s.identifier] = sign_precommitted(s, signers=ids, items=items, pool=pools[s.identifier])
    suite = signers[0].public.suite
    return [aggregate(suite, [shares[i][k] for i in ids]) for k in range(len(messages))], published


def _small_ids(path: Path) -> bool:
    return max(s["identifier"] for s in load(path)["inputs"]["participant_shares"]) <= 255


#: Vectors whose holder ids fit ShardGuard's (1..255); the ZF "big identifier" runs do not
#: (their two-round math is checked in test_vectors.py).
SMALL_ID_FILES = [p for p in FROST_FILES if _small_ids(p)]


@pytest.mark.parametrize("path", SMALL_ID_FILES, ids=[vector_id(p) for p in SMALL_ID_FILES])
def test_the_published_vectors_sign_alike_with_their_nonces_committed_ahead(path: Path) -> None:
    """RFC 9591 Appendix E (and ZF frost runs): each signer's nonces are put in its pool as if
    committed ahead; every signature share and the final signature are the vector's."""
    v = load(path)
    suite = suite_by_context(v["config"]["suite"])
    g = suite.group
    inp = v["inputs"]
    msg = h(inp["message"])
    raw = {s["identifier"]: g.scalar_decode(h(s["participant_share"])) for s in inp["participant_shares"]}
    ids = inp["participant_list"]
    public = PublicKeyPackage(
        suite=suite,
        threshold=int(v["config"]["min_participants"]),
        group_key=g.decode(h(inp["group_public_key"])),
        verifying_shares={i: g.base_mul(x) for i, x in raw.items()},
    )
    key_shares = {i: KeyShare(identifier=i, signing_share=raw[i], public=public) for i in ids}
    pools: dict[int, NoncePool] = {}
    commitments = []
    for out in v["round_one_outputs"]["outputs"]:
        i = out["identifier"]
        d = g.scalar_decode(h(out["hiding_nonce"]))
        e = g.scalar_decode(h(out["binding_nonce"]))
        pools[i] = NoncePool(suite, DeterministicRng(f"vector {i}".encode()))
        pools[i]._entries[bytes([i]) * 16] = (d, e, g.base_mul(d), g.base_mul(e), 0.0)
        commitments.append((i, g.base_mul(d), g.base_mul(e)))
    shares = []
    for out in v["round_two_outputs"]["outputs"]:
        i = out["identifier"]
        item = PrecommittedItem(msg, tuple(commitments), bytes([i]) * 16)
        (share,) = sign_precommitted(key_shares[i], signers=ids, items=[item], pool=pools[i])
        assert g.scalar_encode(share.share).hex() == out["sig_share"]
        assert len(pools[i]) == 0  # used, gone
        shares.append(share)
    sig = aggregate(suite, shares)
    assert sig.hex() == v["final_output"]["sig"]
    assert verify_independently(suite.scheme, suite.encode_public_key(key_shares[ids[0]].public.group_key), msg, sig)


@pytest.mark.parametrize("suite", list(SUITES.values()), ids=list(SUITES))
def test_a_bundle_signs_with_one_commitment_per_message_and_verifies_independently(suite: Ciphersuite) -> None:
    rng = DeterministicRng(b"bundle " + suite.scheme.encode())
    shares = keys(suite, rng, 3, 5)
    pools = {s.identifier: NoncePool(suite, rng.fork(str(s.identifier))) for s in shares}
    signers = [shares[0], shares[2], shares[4]]
    messages = [b"pay alice", b"", b"x" * 1000]
    sigs, _ = sign_all(signers, pools, messages)
    pk = suite.encode_public_key(shares[0].public.group_key)
    for m, sig in zip(messages, sigs, strict=True):
        assert suite.verify(shares[0].public.group_key, m, sig)
        assert verify_independently(suite.scheme, pk, m, sig)
    assert all(len(p) == 0 for p in pools.values())


def _one(suite: Ciphersuite, seed: bytes) -> tuple[list[KeyShare], dict[int, NoncePool], dict[int, PublishedCommitment]]:
    rng = DeterministicRng(seed)
    shares = keys(suite, rng)[:2]
    pools = {s.identifier: NoncePool(suite, rng.fork(str(s.identifier))) for s in shares}
    published = {i: p.commit(1, now=0.0)[0] for i, p in pools.items()}
    return shares, pools, published


def _item(published: dict[int, PublishedCommitment], me: int, message: bytes = b"m", **override: Any) -> PrecommittedItem:
    commitments = tuple((i, c.hiding, c.binding) for i, c in sorted(published.items()))
    return PrecommittedItem(message, override.get("commitments", commitments), override.get("cid", published[me].id))


def test_a_nonce_pair_signs_once() -> None:
    suite = SUITES["ed25519"]
    shares, pools, published = _one(suite, b"once")
    me = shares[0]
    sign_precommitted(me, signers=[1, 2], items=[_item(published, 1)], pool=pools[1])
    with pytest.raises(NonceError) as e:
        sign_precommitted(me, signers=[1, 2], items=[_item(published, 1, b"another message")], pool=pools[1])
    assert (e.value.reason, e.value.commitment) == ("unknown", published[1].id.hex())


def test_another_commitment_under_our_id_is_refused_and_consumes_nothing() -> None:
    suite = SUITES["secp256k1"]
    shares, pools, published = _one(suite, b"mismatch")
    g = suite.group
    forged = dict(published)
    forged[1] = PublishedCommitment(published[1].id, g.base_mul(5), published[1].binding)
    with pytest.raises(NonceError) as e:
        sign_precommitted(shares[0], signers=[1, 2], items=[_item(forged, 1)], pool=pools[1])
    assert e.value.reason == "mismatch"
    assert len(pools[1]) == 1  # still there: the genuine request signs
    sign_precommitted(shares[0], signers=[1, 2], items=[_item(published, 1)], pool=pools[1])


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c[:1],  # a signer missing
        lambda c: (*c, (3, c[0][1], c[0][2])),  # one more than the signers
        lambda c: (c[0], c[0]),  # ours twice
        lambda c: ((c[0][0], c[0][1].group.identity, c[0][2]), c[1]),  # the identity
    ],
    ids=["missing", "extra", "twice", "identity"],
)
def test_a_wrong_commitment_list_is_refused_whole_before_any_nonce_is_taken(edit: Any) -> None:
    suite = SUITES["ed25519"]
    shares, pools, published = _one(suite, b"lists")
    good = _item(published, 1)
    bad = _item(published, 1, commitments=edit(good.commitments))
    pools[1].commit(1, now=0.0)
    second = next(c for c in pools[1]._entries if c != published[1].id)
    with pytest.raises(UsageError):
        sign_precommitted(shares[0], signers=[1, 2], items=[good, PrecommittedItem(b"n", bad.commitments, second)], pool=pools[1])
    assert len(pools[1]) == 2  # the good item's nonce was not taken either


def test_two_items_may_not_name_one_commitment() -> None:
    suite = SUITES["ed25519"]
    shares, pools, published = _one(suite, b"dup")
    with pytest.raises(UsageError, match="two items"):
        sign_precommitted(shares[0], signers=[1, 2], items=[_item(published, 1), _item(published, 1, b"n")], pool=pools[1])
    assert len(pools[1]) == 1


def test_the_pool_is_bounded_expires_and_is_never_copied_or_pickled() -> None:
    suite = SUITES["bip340"]
    pool = NoncePool(suite, DeterministicRng(b"pool"), capacity=3)
    old = pool.commit(2, now=10.0)
    with pytest.raises(UsageError, match="at most 3"):
        pool.commit(2, now=11.0)
    pool.commit(1, now=20.0)
    assert pool.expire(made_before=15.0) == 2 and len(pool) == 1
    with pytest.raises(NonceError):
        pool.check(old[0].id, old[0].hiding, old[0].binding)
    for action in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError):
            action(pool)
    assert repr(pool) == "<NoncePool bip340: 1 unused>"
    with pytest.raises(UsageError):
        NoncePool(suite, DeterministicRng(b"x"), capacity=0)


def test_a_pool_of_another_suite_is_refused() -> None:
    shares, _, published = _one(SUITES["ed25519"], b"suite")
    with pytest.raises(UsageError, match="pool is for"):
        sign_precommitted(
            shares[0], signers=[1, 2], items=[_item(published, 1)], pool=NoncePool(SUITES["secp256k1"], DeterministicRng(b"y"))
        )


def test_nonces_differ_even_when_the_rng_repeats() -> None:
    """A repeated RNG stream (a restored VM snapshot) still gives distinct nonces in a pool."""

    class Stuck:
        def __call__(self, n: int) -> bytes:
            return b"\x07" * n

    pool = NoncePool(SUITES["ed25519"], Stuck())
    made = pool.commit(1, now=0.0)
    # The same id again (the stuck RNG): only the hedge's counter tells the pairs apart.
    d1, e1, *_ = pool._entries[made[0].id]
    assert d1 != e1


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scheme=st.sampled_from(sorted(SUITES)),
    n=st.integers(2, 5),
    data=st.data(),
)
def test_any_signing_set_and_messages_give_valid_signatures(scheme: str, n: int, data: st.DataObject) -> None:
    suite = SUITES[scheme]
    t = data.draw(st.integers(2, n), label="t")
    rng = DeterministicRng(f"{scheme} {n} {t}".encode() + data.draw(st.binary(max_size=8), label="seed"))
    shares = keys(suite, rng, t, n)
    chosen = sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=t, max_size=n), label="signers"))
    signers = [shares[i] for i in chosen]
    messages = data.draw(st.lists(st.binary(max_size=64), min_size=1, max_size=4), label="messages")
    pools = {s.identifier: NoncePool(suite, rng.fork(str(s.identifier))) for s in signers}
    sigs, _ = sign_all(signers, pools, messages)
    for m, sig in zip(messages, sigs, strict=True):
        assert suite.verify(shares[0].public.group_key, m, sig)
