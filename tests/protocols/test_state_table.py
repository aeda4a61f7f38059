"""Every (round, payload type, direction) outside a party's EXPECTS table is refused with a
ProtocolAbort naming the sender (STYLE-ANCHORS 3); every AbortReason says whether it blames."""

from __future__ import annotations

import itertools

import pytest

from shardguard import local
from shardguard.crypto.suites import FROST_ED25519 as SUITE
from shardguard.protocols import BROADCAST, AbortReason, Message, MessageRejected, ProtocolAbort
from shardguard.protocols.dkg import Dkg
from shardguard.protocols.frost import FrostSigner
from shardguard.protocols.party import PartyState
from shardguard.protocols.refresh import Refresh
from shardguard.protocols.repair import RepairHelper, RepairTarget
from shardguard.protocols.wire import encode_payload
from tests.helpers.rng import DeterministicRng
from tests.protocols.test_wire_golden import _examples

SHARES = local.keygen("ed25519", 2, 3, rng=DeterministicRng(1))
INSTANCE = b"i" * 32


def _parties():  # type: ignore[no-untyped-def]
    rng = DeterministicRng(2)
    pub = SHARES[0].public
    return {
        "dkg": lambda: Dkg(SUITE, identifier=1, participants=[1, 2, 3], threshold=2, instance=INSTANCE, rng=rng),
        "refresh": lambda: Refresh(SHARES[0], participants=[1, 2, 3], instance=INSTANCE, rng=rng),
        "sign": lambda: FrostSigner(SHARES[0], signers=[1, 2], message=b"m", instance=INSTANCE, rng=rng),
        "repair-helper": lambda: RepairHelper(SHARES[0], helpers=[1, 3], lost=2, instance=INSTANCE, rng=rng),
        "repair-target": lambda: RepairTarget(pub, identifier=2, helpers=[1, 3], instance=INSTANCE),
    }


PAYLOADS = _examples(SUITE)
CASES = [(name, pname, rnd, bc) for name, pname, rnd, bc in itertools.product(_parties(), PAYLOADS, (1, 2, 3), (True, False))]


@pytest.mark.parametrize(
    ("party", "payload", "rnd", "broadcast"), CASES, ids=[f"{a}-{b}-r{c}-{'bc' if d else 'p2p'}" for a, b, c, d in CASES]
)
def test_illegal_messages_abort_with_the_sender_named(party: str, payload: str, rnd: int, broadcast: bool) -> None:
    p = _parties()[party]()
    p.start()
    # A repair helper's peers include the lost party, which never sends it anything legal.
    sender = next(i for i in p.peers if i != getattr(p, "lost", None))
    legal = p.EXPECTS.get((rnd, type(PAYLOADS[payload]))) is broadcast
    msg = Message(
        session_id=p.session_id,
        round=rnd,
        sender=sender,
        recipient=BROADCAST if broadcast else p.me,
        payload=encode_payload(PAYLOADS[payload]),
    )
    if legal:
        try:
            p.receive(msg)  # a legal kind of message: admitted (its content may still be judged)
        except MessageRejected:
            pytest.fail("a legal message kind was rejected")
        except ProtocolAbort as e:
            assert e.reason not in (AbortReason.UNEXPECTED_MESSAGE, AbortReason.MALFORMED_PAYLOAD)
        return
    with pytest.raises(ProtocolAbort) as e:
        p.receive(msg)
    assert e.value.reason in (AbortReason.UNEXPECTED_MESSAGE, AbortReason.MALFORMED_PAYLOAD)
    assert e.value.culprits == {sender} and e.value.session_id == p.session_id
    assert p.state is PartyState.ABORTED


@pytest.mark.parametrize("reason", list(AbortReason), ids=[r.name for r in AbortReason])
def test_every_abort_reason_declares_blame(reason: AbortReason) -> None:
    assert isinstance(reason.blames, bool) and reason.text
    network_injectable = {
        AbortReason.WRONG_SESSION,
        AbortReason.WRONG_RECIPIENT,
        AbortReason.UNKNOWN_SENDER,
        AbortReason.REPLAYED_MESSAGE,
    }
    if reason in network_injectable:
        assert not reason.blames  # the network can forge these: never blame a party for them
