"""Nodes run DKG, signing and refresh over attested channels through an in-memory relay.

Each node has its own simulated platform and keys; peers are admitted only after their
evidence verifies under the policy; every protocol message travels as a sealed, signed
envelope the relay cannot read.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from shardguard.attestation.errors import AttestationError
from shardguard.attestation.policy import VerificationPolicy
from shardguard.attestation.verify import verify_evidence
from shardguard.channel import AdmittedPeer, NodeKeys, admit_peer, binding
from shardguard.enclave.simulated import SimulatedPlatform
from shardguard.node.engine import EngineTimeout
from shardguard.node.tasks import Task, TaskError, run_task
from shardguard.protocols.errors import ProtocolAbort


class Hub:
    """The untrusted mailbox: stores envelopes per job, hands them to their recipient."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.boxes: dict[str, list[tuple[int, str, str, bytes]]] = {}
        self.tamper: Any = None

    def relay(self, node: str) -> Any:
        hub = self

        class _Relay:
            def post(self, job: str, envelopes: Sequence[tuple[str, bytes]], *, hold: bool = False) -> None:
                with hub.cv:
                    box = hub.boxes.setdefault(job, [])
                    for to, env in envelopes:
                        if hub.tamper is not None:
                            env = hub.tamper(node, to, env)
                            if env is None:
                                continue
                        box.append((len(box) + 1, node, to, env))
                    hub.cv.notify_all()

            def fetch(self, job: str, after: int, wait: float) -> list[tuple[int, str, bytes]]:
                end = time.monotonic() + wait
                with hub.cv:
                    while True:
                        got = [(c, f, e) for c, f, t, e in hub.boxes.get(job, []) if c > after and t == node]
                        if got or time.monotonic() >= end:
                            return got
                        hub.cv.wait(end - time.monotonic())

        return _Relay()


class DictStore:
    def __init__(self) -> None:
        self.current: dict[str, Any] = {}
        self.staged: dict[str, Any] = {}
        self.lock = threading.Lock()

    def load(self, key_id: str) -> Any:
        return self.current[key_id]

    def stage(self, key_id: str, share: Any) -> None:
        self.staged[key_id] = share

    def commit(self, key_id: str, epoch: int) -> None:
        assert self.staged[key_id].public.epoch == epoch
        self.current[key_id] = self.staged.pop(key_id)

    def replace(self, key_id: str, share: Any) -> None:
        self.current[key_id] = share

    def add_bans(self, key_id: str, setup_id: bytes, parties: frozenset[int]) -> None:
        with self.lock:
            share = self.current[key_id]
            if share.setup_id == setup_id:
                self.current[key_id] = share.with_bans(parties)


class Node:
    def __init__(self, name: str, state: Path) -> None:
        self.keys = NodeKeys.generate(name)
        self.card = self.keys.card()
        self.platform = SimulatedPlatform(state_dir=state / name)
        self.store = DictStore()
        self.peers: dict[str, AdmittedPeer] = {}


def admit(verifier: Node, peer: Node, policy: VerificationPolicy) -> AdmittedPeer:
    nonce = os.urandom(32)  # the verifier's challenge
    evidence = peer.platform.attest(binding(peer.card, nonce))
    now = dt.datetime.now(dt.UTC)
    verified = verify_evidence(evidence.platform, evidence.blob, policy=policy, at=now)
    return admit_peer(peer.card, verified, nonce=nonce, policy=policy, now=now)


@pytest.fixture(autouse=True)
def fresh_ban_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    from shardguard.protocols.dkls23 import _rounds
    from shardguard.protocols.dkls23.bans import BanRegistry

    monkeypatch.setattr(_rounds, "REGISTRY", BanRegistry())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> list[Node]:
    state = tmp_path_factory.mktemp("nodes")
    nodes = [Node(f"node-{i}", state) for i in (1, 2, 3)]
    policy = VerificationPolicy(allow_simulated=True, measurements={"simulated": {"pcr0": (nodes[0].platform.measurement,)}})
    for a in nodes:
        for b in nodes:
            if a is not b:
                a.peers[b.card.node_id] = admit(a, b, policy)
    return nodes


def run_all(nodes: list[Node], kind: str, scheme: str, *, key_id: str = "", params: dict[str, Any] | None = None,
            hub: Hub | None = None, timeout: float = 60,
            hooks: Callable[[int], dict[str, Any]] | None = None) -> dict[int, Any]:  # fmt: skip
    """Run a task on ``nodes``; their protocol index is their node number (node-3 is 3)."""
    hub = hub or Hub()
    participants = {int(n.card.node_id.split("-")[1]): n.card.node_id for n in nodes}
    job = os.urandom(8).hex()
    instance = os.urandom(32)
    results: dict[int, Any] = {}

    def work(idx: int, node: Node) -> None:
        task = Task(job=job, kind=kind, scheme=scheme, threshold=2, participants=participants, me=idx, instance=instance,
                    key_id=key_id, params=params or {})  # fmt: skip
        peers = {i: node.peers[nid] for i, nid in participants.items() if i != idx}
        try:
            results[idx] = run_task(task, store=node.store, me=node.keys, card=node.card, peers=peers,
                                    relay=hub.relay(node.card.node_id), deadline=time.monotonic() + timeout,
                                    **(hooks(idx) if hooks else {}))  # fmt: skip
        except Exception as e:  # collected for the test to inspect
            results[idx] = e

    threads = [threading.Thread(target=work, args=(i, n)) for i, n in zip(participants, nodes, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def commit_all(nodes: list[Node], key_id: str) -> None:
    for n in nodes:
        n.store.commit(key_id, n.store.staged[key_id].public.epoch)


@pytest.mark.parametrize("scheme", ["ed25519", "bip340", "ecdsa"])
def test_keygen_sign_refresh_over_attested_channels(cluster: list[Node], scheme: str) -> None:
    out = run_all(cluster, "keygen", scheme)
    assert all(isinstance(r, dict) for r in out.values()), out
    assert len({r["public"]["public_key"] for r in out.values()}) == 1
    key_id = out[1]["key_id"]
    commit_all(cluster, key_id)
    if scheme == "ecdsa":
        params: dict[str, Any] = {"digest": hashlib.sha256(b"pay 1 BTC").hexdigest(), "path": "m/0/1", "signers": [1, 3]}
    else:
        params = {"message": b"pay 1 BTC".hex(), "signers": [1, 3]}
    signers = [cluster[0], cluster[2]]
    sig = run_all(signers, "sign", scheme, key_id=key_id, params=params)
    assert sig[1] == sig[3] and "signature" in sig[1], sig
    ref = run_all(cluster, "refresh", scheme, key_id=key_id)
    assert all(r["public"]["epoch"] == 1 for r in ref.values()), ref
    commit_all(cluster, key_id)
    again = run_all([cluster[1], cluster[2]], "sign", scheme, key_id=key_id, params={**params, "signers": [2, 3]})
    assert "signature" in again[2], again


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"signers": [1, 3]}, "message"),  # no message: never a signature over b""
        ({"message": 5, "signers": [1, 3]}, "message"),
        ({"message": "zz", "signers": [1, 3]}, "message"),
        ({"message": "00", "path": "m/0", "signers": [1, 3]}, "path"),  # FROST takes no child key
    ],
)
def test_a_frost_signing_task_is_refused_before_any_message(cluster: list[Node], params: dict[str, Any], field: str) -> None:
    key_id = run_all(cluster, "keygen", "bip340")[1]["key_id"]
    commit_all(cluster, key_id)
    hub = Hub()
    out = run_all([cluster[0], cluster[2]], "sign", "bip340", key_id=key_id, params=params, hub=hub, timeout=5)
    for r in out.values():
        assert isinstance(r, TaskError) and r.field == field, out
    assert not hub.boxes  # nothing was sent


def test_the_relay_sees_only_ciphertext(cluster: list[Node]) -> None:
    hub = Hub()
    seen: list[bytes] = []
    hub.tamper = lambda frm, to, env: seen.append(env) or env
    out = run_all(cluster, "keygen", "ed25519", hub=hub)
    share = cluster[0].store.staged[out[1]["key_id"]]
    secret = share.suite.group.scalar_encode(share.signing_share)
    assert seen and not any(secret in env for env in seen)


def test_tampered_envelope_is_dropped_and_the_session_times_out(cluster: list[Node]) -> None:
    hub = Hub()

    def flip(frm: str, to: str, env: bytes) -> bytes:
        if frm == "node-2":
            b = bytearray(env)
            b[-70] ^= 1  # inside the ciphertext: the signature no longer verifies
            return bytes(b)
        return env

    hub.tamper = flip
    out = run_all(cluster, "keygen", "ed25519", hub=hub, timeout=3)
    assert all(isinstance(r, EngineTimeout) for i, r in out.items() if i != 2), out


def test_a_peer_outside_policy_is_never_admitted(cluster: list[Node], tmp_path: Path) -> None:
    strict = VerificationPolicy(allow_simulated=False)
    with pytest.raises(AttestationError):
        admit(cluster[0], cluster[1], strict)


def test_cheating_peer_is_banned_and_the_ban_is_persisted(cluster: list[Node], monkeypatch: pytest.MonkeyPatch) -> None:
    from shardguard.protocols.dkls23 import _messages, sign

    out = run_all(cluster, "keygen", "ecdsa")
    key_id = out[1]["key_id"]
    commit_all(cluster, key_id)
    original = sign.DklsSigner._send

    def cheat(self: Any, to: int, payload: Any) -> Any:
        if self.me == 3 and isinstance(payload, _messages.SignMultiply):  # node-3 sends a wrong μ
            payload = dataclasses.replace(payload, mu=bytes(64))
        return original(self, to, payload)

    monkeypatch.setattr(sign.DklsSigner, "_send", cheat)
    params = {"digest": "11" * 32, "signers": [1, 3]}
    res = run_all([cluster[0], cluster[2]], "sign", "ecdsa", key_id=key_id, params=params, timeout=20)
    assert isinstance(res[1], ProtocolAbort) and res[1].culprits == {3} and res[1].reason.bans, res
    assert cluster[0].store.load(key_id).banned == {3}  # persisted before the error was reported
    monkeypatch.setattr(sign.DklsSigner, "_send", original)
    again = run_all([cluster[0], cluster[2]], "sign", "ecdsa", key_id=key_id, params=params, timeout=3)
    assert type(again[1]).__name__ == "PeerBanned"
    assert isinstance(again[3], EngineTimeout)
    ok = run_all([cluster[0], cluster[1]], "sign", "ecdsa", key_id=key_id, params={**params, "signers": [1, 2]})
    assert "signature" in ok[1]


class Recorder(Hub):
    """A hub that also records, per node, each post and each hook call, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.events: dict[int, list[str]] = {}

    def note(self, idx: int, what: str) -> None:
        with self.cv:
            self.events.setdefault(idx, []).append(what)

    def relay(self, node: str) -> Any:
        inner, idx = super().relay(node), int(node.split("-")[1])
        hub = self

        class _Relay:
            def post(self, job: str, envelopes: Sequence[tuple[str, bytes]], *, hold: bool = False) -> None:
                hub.note(idx, "post")
                inner.post(job, envelopes, hold=hold)

            def fetch(self, job: str, after: int, wait: float) -> list[tuple[int, str, bytes]]:
                return list(inner.fetch(job, after, wait))

        return _Relay()


@pytest.mark.parametrize("scheme", ["ed25519", "ecdsa"])
def test_release_hooks_run_at_the_first_round_and_before_any_later_one(cluster: list[Node], scheme: str) -> None:
    """A signing's audit write starts in ``at_start``, just before the first round is computed
    and posted (so it overlaps that round's work and trip), and ``gate`` waits for it before
    anything later can leave.
    ``idle`` is called while the party waits, until it says it is done."""
    out = run_all(cluster, "keygen", scheme)
    key_id = out[1]["key_id"]
    commit_all(cluster, key_id)
    hub = Recorder()
    idle_calls: dict[int, int] = {1: 0, 3: 0}

    def hooks(idx: int) -> dict[str, Any]:
        def idle() -> bool:
            idle_calls[idx] += 1
            hub.note(idx, "idle")
            return idle_calls[idx] >= 2

        return {"release": (lambda: hub.note(idx, "at_start"), lambda: hub.note(idx, "gate")), "idle": idle}

    if scheme == "ecdsa":
        params: dict[str, Any] = {"digest": hashlib.sha256(b"x").hexdigest(), "signers": [1, 3]}
    else:
        params = {"message": b"x".hex(), "signers": [1, 3]}
    sig = run_all([cluster[0], cluster[2]], "sign", scheme, key_id=key_id, params=params, hub=hub, hooks=hooks)
    assert sig[1] == sig[3] and "signature" in sig[1], sig
    for idx in (1, 3):
        ev = hub.events[idx]
        assert ev[:2] == ["at_start", "post"], ev  # the write starts, then round 1 goes out
        posts = [i for i, e in enumerate(ev) if e == "post"]
        assert ev.count("at_start") == ev.count("gate") == 1 and len(posts) >= 2, ev
        assert posts[0] < ev.index("gate") < posts[1], ev  # nothing after round 1 leaves before the gate
        # Called while it waits, until it returned True, never after. Once, if the peer's later
        # round was already there at the first fetch (a busy host).
        assert 1 <= idle_calls[idx] <= 2, ev


def test_a_failing_gate_releases_nothing_more(cluster: list[Node]) -> None:
    out = run_all(cluster, "keygen", "ed25519")
    key_id = out[1]["key_id"]
    commit_all(cluster, key_id)
    hub = Recorder()

    class DiskFull(Exception):
        pass

    def hooks(idx: int) -> dict[str, Any]:
        def refuse() -> None:
            raise DiskFull

        return {"release": (lambda: None, refuse)} if idx == 1 else {}

    res = run_all([cluster[0], cluster[2]], "sign", "ed25519", key_id=key_id, hub=hub, hooks=hooks, timeout=3,
                  params={"message": b"x".hex(), "signers": [1, 3]})  # fmt: skip
    assert isinstance(res[1], DiskFull)
    assert hub.events[1] == ["post"]  # its first round only: no share of round 2 left
    assert isinstance(res[3], EngineTimeout)  # the peer never got node 1's share


def test_a_single_signer_passes_the_gate_before_its_signature_is_returned(cluster: list[Node]) -> None:
    """With one signer (t = 1) the party finishes inside start(): no later round is ever posted,
    so the gate must still be passed before the result is handed back (and a failing gate
    means no signature at all)."""
    from shardguard import local
    from shardguard.node.engine import Inbox, drive
    from shardguard.protocols.frost import FrostSigner

    share = local.keygen("ed25519", 1, 2, allow_single=True)[0]
    node = cluster[0]
    events: list[str] = []

    def run(gate: Callable[[], None]) -> bytes:
        party = FrostSigner(share, signers=[1], message=b"alone", instance=os.urandom(32), rng=os.urandom)
        out: bytes = drive(party, job="j", me=node.keys, card=node.card, peers={}, relay=Hub().relay(node.card.node_id),
                           inbox=Inbox(), deadline=time.monotonic() + 5, at_start=lambda: events.append("at_start"),
                           gate=gate)  # fmt: skip
        return out

    sig = run(lambda: events.append("gate"))
    assert len(sig) == 64 and events == ["at_start", "gate"]

    class DiskFull(Exception):
        pass

    def refuse() -> None:
        raise DiskFull

    with pytest.raises(DiskFull):
        run(refuse)
