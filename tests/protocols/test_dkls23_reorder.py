"""DKLs23 parties finish whatever order their inputs arrive in (review finding): a peer's
later-round message may come before another peer's earlier one — the channel orders each
sender's envelopes only — and a party that took one step per delivery waited for ever with every
input in. Each signature is verified by libsecp256k1 and OpenSSL."""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Mapping
from typing import Any

import pytest

from shardguard import local
from shardguard.protocols.dkls23 import DklsPresigner, DklsSigner, EcdsaKeyShare, OtSetup
from shardguard.protocols.message import Message
from tests.conftest import check_ecdsa_independently
from tests.helpers.rng import DeterministicRng

DIGEST = hashlib.sha256(b"shardguard dkls23 reorder").digest()


@pytest.fixture(scope="module")
def key23() -> list[EcdsaKeyShare]:
    return local.ecdsa_keygen(2, 3, rng=DeterministicRng(21))


def _deliver_late(parties: Mapping[int, Any], victim: int, late: int) -> None:
    """Run every party, holding ``late``'s round-1 messages to ``victim`` back until nothing
    else can move (its later rounds go through); then hand them over."""
    queue: deque[tuple[int, Message]] = deque()
    held: list[tuple[int, Message]] = []

    def post(messages: list[Message]) -> None:
        for m in messages:
            for i in [i for i in parties if i != m.sender] if m.is_broadcast else [m.recipient]:
                queue.append((i, m))

    for p in parties.values():
        post(p.start())
    released = False
    while queue or held:
        if not queue:
            queue.extend(held)
            held.clear()
            released = True
        i, m = queue.popleft()
        if not released and i == victim and m.sender == late and m.round == 1:
            held.append((i, m))
            continue
        post(parties[i].receive(m))
    assert released, "the reordering this test is about did not happen"


@pytest.mark.parametrize(("victim", "late"), [(1, 2), (2, 1)])
def test_a_two_party_signing_finishes_with_its_peers_last_round_before_the_first(
    key23: list[EcdsaKeyShare], victim: int, late: int
) -> None:
    rng = DeterministicRng(22)
    instance = rng(32)
    parties = {s.identifier: DklsSigner(s, signers=[1, 2], digest=DIGEST, instance=instance, rng=rng) for s in key23[:2]}
    _deliver_late(parties, victim, late)
    assert all(p.done for p in parties.values()), {i: (p.state.value, p.round) for i, p in parties.items()}
    assert parties[1].result == parties[2].result
    check_ecdsa_independently(parties[1].result)


def test_a_three_party_presigning_finishes_out_of_order(key23: list[EcdsaKeyShare]) -> None:
    rng = DeterministicRng(23)
    instance = rng(32)
    parties = {s.identifier: DklsPresigner(s, signers=[1, 2, 3], instance=instance, rng=rng) for s in key23}
    _deliver_late(parties, victim=1, late=2)
    assert all(p.done for p in parties.values()), {i: (p.state.value, p.round) for i, p in parties.items()}
    assert len({p.result.big_r for p in parties.values()}) == 1


def test_a_setup_finishes_out_of_order(key23: list[EcdsaKeyShare]) -> None:
    rng = DeterministicRng(24)
    instance = rng(32)
    parties = {s.identifier: OtSetup(s.share, instance=instance, rng=rng) for s in key23}
    _deliver_late(parties, victim=3, late=1)
    assert all(p.done for p in parties.values()), {i: (p.state.value, p.round) for i, p in parties.items()}
