"""Admission of peers on evidence that answers our own challenge (node.admission): when we ask,
what we accept, what we refuse (stale, replayed, tampered, outside policy), and renewal ahead
of expiry without a task waiting."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from shardguard.attestation.errors import AttestationReason
from shardguard.attestation.policy import VerificationPolicy
from shardguard.channel import Challenge, NodeKeys, binding, challenge_nonce, challenges_to_wire
from shardguard.coordinator.schemas import Events
from shardguard.enclave.simulated import SimulatedPlatform
from shardguard.node import admission
from shardguard.node.admission import Admissions, PeerNotAdmitted

LIFE = 600


class Clock:
    def __init__(self) -> None:
        self.t = 5000.0

    def __call__(self) -> float:
        return self.t


class Peer:
    """node-2 as the coordinator holds it: a card and evidence over some challenges."""

    def __init__(self, tmp_path: Path) -> None:
        self.platform = SimulatedPlatform(state_dir=tmp_path / "p2")
        self.keys = NodeKeys.generate("node-2")
        self.record: dict[str, Any] = {}
        self.answer([])

    def answer(self, challenges: Sequence[Challenge], *, bind: Sequence[Challenge] | None = None) -> dict[str, Any]:
        """Attest over ``bind`` (default: ``challenges``) and publish ``challenges`` beside it."""
        nonce = challenge_nonce(challenges if bind is None else bind)
        ev = self.platform.attest(binding(self.keys.card(), nonce))
        self.record = {
            "node_id": "node-2",
            "peer_card": base64.b64encode(self.keys.card().encode()).decode(),
            "platform": ev.platform,
            "evidence": base64.b64encode(ev.blob).decode(),
            "collateral": None,
            "evidence_nonce": nonce.hex(),
            "evidence_challenges": challenges_to_wire(challenges),
        }
        return dict(self.record)


@dataclasses.dataclass
class Relay:
    """The coordinator's side of a challenge: the peer answers (or not) when asked."""

    peer: Peer
    answers: bool = True
    asked: list[tuple[str, bytes, float]] = dataclasses.field(default_factory=list)
    nudged: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)
    failed: list[Callable[[], None]] = dataclasses.field(default_factory=list)

    def ask(self, node: str, nonce: bytes, wait: float) -> Mapping[str, Any]:
        self.asked.append((node, nonce, wait))
        if self.answers:
            self.peer.answer([Challenge("node-1", nonce)])
        return dict(self.peer.record)

    def nudge(self, node: str, nonce: bytes, failed: Callable[[], None]) -> None:
        self.nudged.append((node, nonce))
        self.failed.append(failed)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Admissions, Peer, Relay, Clock]:
    peer = Peer(tmp_path)
    policy = VerificationPolicy(
        allow_simulated=True, max_age_seconds=LIFE, measurements={"simulated": {"pcr0": (peer.platform.measurement,)}}
    )
    relay = Relay(peer)
    clock = Clock()
    return Admissions("node-1", policy, ask=relay.ask, nudge=relay.nudge, clock=clock), peer, relay, clock


def test_a_peer_is_challenged_once_then_admitted_from_the_cache(setup: tuple[Admissions, Peer, Relay, Clock]) -> None:
    adm, peer, relay, clock = setup
    first = adm.admit(peer.record, deadline=clock.t + 60)  # evidence over no challenge of ours: ask
    assert first.card == peer.keys.card()
    assert len(relay.asked) == 1 and relay.asked[0][0] == "node-2" and relay.asked[0][2] == 30.0
    again = adm.admit(peer.record, deadline=clock.t + 60)
    assert again is first and len(relay.asked) == 1 and relay.nudged == []


def test_evidence_already_answering_our_challenge_needs_no_wait(setup: tuple[Admissions, Peer, Relay, Clock]) -> None:
    adm, peer, relay, clock = setup
    nonce = adm.book.issue("node-2")
    record = peer.answer([Challenge("node-1", nonce), Challenge("node-3", b"\x03" * 32)])
    adm.admit(record, deadline=clock.t + 60)
    assert relay.asked == []


def test_the_wait_is_bounded_by_the_deadline(setup: tuple[Admissions, Peer, Relay, Clock]) -> None:
    adm, peer, relay, clock = setup
    adm.admit(peer.record, deadline=clock.t + 4.5)
    assert relay.asked[0][2] == 2.5  # the rest is left to report why, should it run out


def test_a_peer_that_does_not_answer_is_refused_by_name(setup: tuple[Admissions, Peer, Relay, Clock]) -> None:
    adm, peer, relay, clock = setup
    relay.answers = False
    with pytest.raises(PeerNotAdmitted) as e:
        adm.admit(peer.record, deadline=clock.t + 60)
    assert e.value.node == "node-2" and e.value.error.reason is AttestationReason.NONCE


def test_stale_evidence_is_not_accepted_once_our_challenge_has_run_out(setup: tuple[Admissions, Peer, Relay, Clock]) -> None:
    """Evidence that once answered us, replayed after the challenge's lifetime: refused."""
    adm, peer, relay, clock = setup
    adm.admit(peer.record, deadline=clock.t + 60)
    old = dict(peer.record)
    clock.t += LIFE + 1
    relay.answers = False  # the peer cannot attest any more (its enclave is gone)
    with pytest.raises(PeerNotAdmitted) as e:
        adm.admit(old, deadline=clock.t + 60)
    assert e.value.error.reason is AttestationReason.NONCE and len(relay.asked) == 2


def test_evidence_answering_another_verifier_is_not_ours(setup: tuple[Admissions, Peer, Relay, Clock]) -> None:
    adm, peer, relay, clock = setup
    someone_elses = adm.book.issue("node-2")  # the same bytes, but issued as node-3's challenge
    record = peer.answer([Challenge("node-3", someone_elses)])
    relay.answers = False
    with pytest.raises(PeerNotAdmitted):
        adm.admit(record, deadline=clock.t + 60)


def test_a_list_that_the_evidence_does_not_bind_is_refused(setup: tuple[Admissions, Peer, Relay, Clock]) -> None:
    """The relay adds our challenge to the list of old evidence: the binding no longer holds."""
    adm, peer, relay, clock = setup
    ours = adm.book.issue("node-2")
    record = peer.answer([Challenge("node-1", ours)], bind=[Challenge("node-3", b"\x03" * 32)])
    with pytest.raises(PeerNotAdmitted) as e:
        adm.admit(record, deadline=clock.t + 60)
    assert e.value.error.reason is AttestationReason.NONCE and relay.asked == []


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("evidence_challenges", [{"from": "node-1"}], AttestationReason.NONCE),
        ("evidence_challenges", "nope", AttestationReason.NONCE),
        ("peer_card", None, AttestationReason.MALFORMED),
        ("peer_card", "!!", AttestationReason.MALFORMED),
        ("peer_card", base64.b64encode(b"\x01card").decode(), AttestationReason.MALFORMED),
        ("evidence", base64.b64encode(b"garbage").decode(), AttestationReason.MALFORMED),
        ("platform", "sgx", AttestationReason.MALFORMED),
    ],
)
def test_malformed_records_are_refused_with_a_reason(
    setup: tuple[Admissions, Peer, Relay, Clock], field: str, value: Any, reason: AttestationReason
) -> None:
    adm, peer, _relay, clock = setup
    record = peer.answer([Challenge("node-1", adm.book.issue("node-2"))])
    record[field] = value
    with pytest.raises(PeerNotAdmitted) as e:
        adm.admit(record, deadline=clock.t + 60)
    assert e.value.node == "node-2"
    if field != "peer_card" or value is None:
        assert e.value.error.reason in (reason, AttestationReason.TRUNCATED, AttestationReason.UNSUPPORTED)


def test_a_card_of_another_node_is_refused(setup: tuple[Admissions, Peer, Relay, Clock]) -> None:
    adm, peer, _relay, clock = setup
    record = peer.answer([Challenge("node-1", adm.book.issue("node-2"))])
    record["node_id"] = "node-4"
    adm.book.issue("node-4")
    with pytest.raises(PeerNotAdmitted) as e:
        adm.admit(record, deadline=clock.t + 60)
    assert e.value.node == "node-4"


def test_evidence_outside_policy_is_refused_with_its_reason(setup: tuple[Admissions, Peer, Relay, Clock]) -> None:
    _adm, peer, relay, clock = setup
    strict = Admissions(
        "node-1", VerificationPolicy(allow_simulated=True, measurements={"simulated": {"pcr0": ("00" * 48,)}}),
        ask=relay.ask, nudge=relay.nudge, clock=clock,
    )  # fmt: skip
    with pytest.raises(PeerNotAdmitted) as e:
        strict.admit(peer.record, deadline=clock.t + 60)
    assert e.value.error.reason is AttestationReason.MEASUREMENT


def test_a_card_changed_while_challenged_is_refused(setup: tuple[Admissions, Peer, Relay, Clock]) -> None:
    adm, peer, _relay, clock = setup
    task_record = dict(peer.record)
    peer.keys = NodeKeys.generate("node-2")  # restarted meanwhile: the relay answers with its new card
    with pytest.raises(PeerNotAdmitted) as e:
        adm.admit(task_record, deadline=clock.t + 60)
    assert "card changed" in str(e.value)


def test_a_restarted_peer_answering_our_live_challenge_is_admitted_without_asking(
    setup: tuple[Admissions, Peer, Relay, Clock],
) -> None:
    adm, peer, relay, clock = setup
    adm.admit(peer.record, deadline=clock.t + 60)
    ours = relay.asked[-1][1]
    peer.keys = NodeKeys.generate("node-2")  # new process, new card; it answers what is open
    record = peer.answer([Challenge("node-1", ours)])
    admitted = adm.admit(record, deadline=clock.t + 60)
    assert admitted.card == peer.keys.card() and len(relay.asked) == 1


def test_renewal_ahead_of_expiry_never_makes_a_task_wait(setup: tuple[Admissions, Peer, Relay, Clock]) -> None:
    adm, peer, relay, clock = setup
    start = clock.t
    adm.admit(peer.record, deadline=clock.t + 60)
    first_answer = dict(peer.record)
    clock.t += LIFE / 2 + 1  # past half-life: challenge again, without waiting, once
    adm.admit(first_answer, deadline=clock.t + 60)
    adm.admit(first_answer, deadline=clock.t + 60)
    assert len(relay.nudged) == 1 and len(relay.asked) == 1
    # The peer answers; the next task brings that evidence: admitted anew, for a full lifetime.
    newer = peer.answer([Challenge("node-1", relay.nudged[0][1])])
    adm.admit(newer, deadline=clock.t + 60)
    clock.t = start + LIFE + 0.5  # the first challenge has run out; the newer one is not half-way
    adm.admit(newer, deadline=clock.t + 60)
    assert len(relay.asked) == 1 and len(relay.nudged) == 1
    clock.t = start + LIFE / 2 + 1 + LIFE / 2 + 1  # now it is: one more nudge
    adm.admit(newer, deadline=clock.t + 60)
    assert len(relay.asked) == 1 and len(relay.nudged) == 2


def test_a_failed_nudge_is_tried_again_by_the_next_task(setup: tuple[Admissions, Peer, Relay, Clock]) -> None:
    adm, peer, relay, clock = setup
    adm.admit(peer.record, deadline=clock.t + 60)
    clock.t += LIFE / 2 + 1
    adm.admit(peer.record, deadline=clock.t + 60)
    adm.admit(peer.record, deadline=clock.t + 60)
    assert len(relay.nudged) == 1
    relay.failed[0]()  # the background post did not get through
    adm.admit(peer.record, deadline=clock.t + 60)
    assert len(relay.nudged) == 2

    def broken(node: str, nonce: bytes, failed: Callable[[], None]) -> None:
        raise RuntimeError("executor shut down")

    adm._nudge = broken
    relay.failed[1]()
    adm.admit(peer.record, deadline=clock.t + 60)  # a nudge that cannot even start: the task goes on
    adm._nudge = relay.nudge
    adm.admit(peer.record, deadline=clock.t + 60)
    assert len(relay.nudged) == 3


def test_an_admission_that_ends_before_the_task_is_renewed_first(setup: tuple[Admissions, Peer, Relay, Clock]) -> None:
    """A task that would outlive the challenge its peer's admission answered waits for a newer one."""
    adm, peer, relay, clock = setup
    adm.admit(peer.record, deadline=clock.t + 60)
    clock.t += LIFE - 100
    adm.admit(peer.record, deadline=clock.t + 50)  # ends before: the admission serves
    assert len(relay.asked) == 1
    adm.admit(peer.record, deadline=clock.t + 120)  # would end after: challenged again, waited for
    assert len(relay.asked) == 2


def test_a_malformed_node_id_is_refused_before_anything_is_sent(setup: tuple[Admissions, Peer, Relay, Clock]) -> None:
    adm, peer, relay, clock = setup
    for bad in (None, "", "../node-2", "node-2?x=1", "N", 7, "n" * 65):
        with pytest.raises(PeerNotAdmitted) as e:
            adm.admit({**peer.record, "node_id": bad}, deadline=clock.t + 60)
        assert e.value.error.reason is AttestationReason.MALFORMED and e.value.error.field == "node_id"
    assert relay.asked == []


def test_a_task_waiting_behind_another_s_challenge_stops_at_its_deadline(
    setup: tuple[Admissions, Peer, Relay, Clock],
) -> None:
    adm, peer, _relay, clock = setup
    started, release = threading.Event(), threading.Event()

    def stuck(node: str, nonce: bytes, wait: float) -> Mapping[str, Any]:
        started.set()
        release.wait(10)
        return dict(peer.record)

    adm._ask = stuck
    outcome: list[BaseException] = []

    def first_task() -> None:
        try:
            adm.admit(dict(peer.record), clock.t + 60)
        except PeerNotAdmitted as e:  # its peer never answered (the relay returns the old record)
            outcome.append(e)

    first = threading.Thread(target=first_task)
    first.start()
    assert started.wait(5)
    real = time.monotonic()
    adm._clock = lambda: clock.t + (time.monotonic() - real)  # let this clock run
    with pytest.raises(PeerNotAdmitted) as e:
        adm.admit(dict(peer.record), deadline=clock.t + 2.3)  # REPORT_MARGIN (2 s) is kept
    assert "behind another task" in str(e.value)
    release.set()
    first.join()
    assert len(outcome) == 1


def test_concurrent_tasks_share_one_challenge(setup: tuple[Admissions, Peer, Relay, Clock]) -> None:
    adm, peer, relay, clock = setup
    slow = relay.ask

    def ask(node: str, nonce: bytes, wait: float) -> Mapping[str, Any]:
        time.sleep(0.05)
        return slow(node, nonce, wait)

    adm._ask = ask
    record = dict(peer.record)
    got: list[Any] = []
    threads = [threading.Thread(target=lambda: got.append(adm.admit(record, deadline=clock.t + 60))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 6 and len({id(g) for g in got}) == 1 and len(relay.asked) == 1


def test_renewal_tries_each_new_evidence_once(
    setup: tuple[Admissions, Peer, Relay, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past half-life, evidence re-made over the same (old) challenge, or garbled, is looked at
    once: tasks do not verify it again and again while the newer challenge is unanswered."""
    adm, peer, relay, clock = setup
    adm.admit(peer.record, deadline=clock.t + 60)
    calls: list[str] = []
    real = admission.verify_evidence

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append("verify")
        return real(*args, **kwargs)

    monkeypatch.setattr(admission, "verify_evidence", counting)
    clock.t += LIFE / 2 + 1
    remade = peer.answer([Challenge("node-1", relay.asked[0][1])])  # periodic re-attestation: same list
    for _ in range(3):
        adm.admit(remade, deadline=clock.t + 60)
    garbled = {**remade, "evidence": "!!"}
    adm.admit(garbled, deadline=clock.t + 60)  # a garbled renewal leaves the admission as it is
    assert calls == ["verify"] and len(relay.nudged) == 1


def test_a_task_longer_than_half_the_lifetime_asks_once(setup: tuple[Admissions, Peer, Relay, Clock]) -> None:
    """A deadline beyond the lifetime would make every admission "too short": a fresh one is
    good for such a task, and so is any with half its lifetime left (no challenge per task)."""
    adm, peer, relay, clock = setup
    adm.admit(peer.record, deadline=clock.t + 10 * LIFE)
    adm.admit(peer.record, deadline=clock.t + 10 * LIFE)
    clock.t += LIFE / 2 - 1
    adm.admit(peer.record, deadline=clock.t + 10 * LIFE)
    assert len(relay.asked) == 1


class Refused(Exception):
    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(f"HTTP {status}")


def test_a_relay_that_refuses_or_fails_is_named_as_the_peer_s_failure(setup: tuple[Admissions, Peer, Relay, Clock]) -> None:
    adm, peer, _relay, clock = setup
    for failure in (Refused(404), Refused(409), Refused(503), OSError("unreachable")):

        def ask(node: str, nonce: bytes, wait: float, failure: Exception = failure) -> Mapping[str, Any]:
            raise failure

        adm._ask = ask
        with pytest.raises(PeerNotAdmitted) as e:
            adm.admit(peer.record, deadline=clock.t + 60)
        assert e.value.node == "node-2" and "not relayed" in str(e.value)
    for own in (Refused(401), Refused(403)):  # our own request refused: not the peer's doing

        def ask_own(node: str, nonce: bytes, wait: float, failure: Exception = own) -> Mapping[str, Any]:
            raise failure

        adm._ask = ask_own
        with pytest.raises(Refused):
            adm.admit(peer.record, deadline=clock.t + 60)


def _by_reference(record: Mapping[str, Any], digest: str) -> dict[str, Any]:
    """A participant entry as a task names it when the node said it holds its evidence."""
    out = {k: v for k, v in record.items() if k not in ("evidence", "collateral", "evidence_nonce", "evidence_challenges")}
    out["evidence_sha256"] = digest
    return out


def test_admitted_peers_are_advertised_by_evidence_digest_until_renewal_nears(
    setup: tuple[Admissions, Peer, Relay, Clock],
) -> None:
    adm, peer, _relay, clock = setup
    assert adm.advertised() == {}
    adm.admit(peer.record, deadline=clock.t + 60)
    evidence = base64.b64decode(peer.record["evidence"])
    digest = hashlib.sha256(evidence).hexdigest()
    assert adm.advertised() == {"node-2": digest}
    # Withdrawn ADVERT_MARGIN before renewal is due (half the lifetime), while still good.
    clock.t += LIFE / 2 - admission.ADVERT_MARGIN - 1
    assert adm.advertised() == {"node-2": digest}
    clock.t += 2
    assert adm.advertised() == {}


def test_a_task_naming_the_evidence_by_digest_is_served_by_our_own_admission(
    setup: tuple[Admissions, Peer, Relay, Clock],
) -> None:
    adm, peer, relay, clock = setup
    first = adm.admit(peer.record, deadline=clock.t + 60)
    digest = adm.advertised()["node-2"]
    # The digest is the coordinator's word only: what serves the task is our admission.
    for claimed in (digest, "00" * 32):
        assert adm.admit(_by_reference(peer.record, claimed), deadline=clock.t + 60) is first
    assert len(relay.asked) == 1 and relay.nudged == []
    # Past renewal, a task without evidence gives nothing to renew on: a challenge goes out
    # in the background and the task goes on with the admission it has.
    clock.t += LIFE / 2 + 1
    assert adm.admit(_by_reference(peer.record, digest), deadline=clock.t + 60) is first
    assert len(relay.nudged) == 1 and len(relay.asked) == 1


def test_a_task_naming_evidence_we_do_not_hold_challenges_the_peer(setup: tuple[Admissions, Peer, Relay, Clock]) -> None:
    """Without an admission (say the coordinator acted on an advert of an earlier process, or
    lies), a task without evidence is served as for a peer never seen: challenge, then admit
    on the evidence that answers it."""
    adm, peer, relay, clock = setup
    got = adm.admit(_by_reference(peer.record, "11" * 32), deadline=clock.t + 60)
    assert got.card == peer.keys.card() and len(relay.asked) == 1
    # Our admission ran out: the same, even though the entry names evidence we once held.
    digest = adm.advertised()["node-2"]
    clock.t += LIFE + 1
    again = adm.admit(_by_reference(peer.record, digest), deadline=clock.t + 60)
    assert again.card == peer.keys.card() and len(relay.asked) == 2


def test_the_advert_holds_at_most_advert_max_peers_those_good_longest(
    setup: tuple[Admissions, Peer, Relay, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coordinator takes at most 1024 (API.md §1.9): a node that holds more admissions lists
    those good longest, and the rest come whole in tasks."""
    adm, _peer, _relay, clock = setup
    limit = next(m.max_length for m in Events.model_fields["admitted"].metadata if hasattr(m, "max_length"))
    assert limit == admission.ADVERT_MAX  # what the coordinator's schema takes
    monkeypatch.setattr(admission, "ADVERT_MAX", 2)
    for k, left in enumerate([100.0, 400.0, 300.0, 200.0]):
        until = clock.t + left + LIFE / 2
        adm._admitted[f"node-{k + 5}"] = admission._Admission(b"card", None, b"e%d" % k, until, until - LIFE / 2)  # type: ignore[arg-type]
    assert sorted(adm.advertised()) == ["node-6", "node-7"]
