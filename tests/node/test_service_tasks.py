"""NodeService task handling in one process (two nodes, an in-memory stream instead of the
coordinator): when a task's result is reported, its audit entry and the peer counters it
recorded are already durable; concurrent tasks share audit writes."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from shardguard import local
from shardguard.attestation.policy import VerificationPolicy
from shardguard.channel import Challenge, binding, challenge_nonce, challenges_to_wire
from shardguard.enclave.simulated import SimulatedPlatform
from shardguard.interop import verify_independently
from shardguard.node import committee
from shardguard.node import keystore as ks_module
from shardguard.node.audit import verify_chain
from shardguard.node.service import NodeService
from shardguard.node.sessions import SessionRegister
from shardguard.node.tasks import TaskError, deadline_at

NODES = ("node-1", "node-2")


class Hub:
    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.boxes: dict[str, list[tuple[int, str, str, bytes]]] = {}
        self.results: dict[str, dict[str, Any]] = {}
        # (node, job) -> how many of that node's posts in that job get through (the rest are lost)
        self.allow: dict[tuple[str, str], int] = {}
        self.posts: dict[tuple[str, str], int] = {}
        # node -> what the (untrusted) coordinator tells it of a job's end
        self.job_end: dict[str, str] = {}


class MemStream:
    """The parts of EventStream a task uses; ``report`` checks what is durable at that moment."""

    def __init__(self, hub: Hub, svc: NodeService) -> None:
        self.hub, self.svc, self.node = hub, svc, svc.node_id
        # The witness generation of the last peer counter each task thread recorded.
        self.recorded = threading.local()
        real = svc.keystore.record_peer_counter

        def record(*args: Any, **kwargs: Any) -> bool:
            changed = real(*args, **kwargs)
            self.recorded.gen = svc.keystore.witness_generation
            return changed

        svc.keystore.record_peer_counter = record  # type: ignore[method-assign]

    def post(self, job: str, envelopes: Sequence[tuple[str, bytes]], *, hold: bool = False) -> None:
        with self.hub.cv:
            n = self.hub.posts[self.node, job] = self.hub.posts.get((self.node, job), 0) + 1
            if n > self.hub.allow.get((self.node, job), n):
                return
            box = self.hub.boxes.setdefault(job, [])
            for to, env in envelopes:
                box.append((len(box) + 1, self.node, to, env))
            self.hub.cv.notify_all()

    def fetch(self, job: str, after: int, wait: float) -> list[tuple[int, str, bytes]]:
        end = time.monotonic() + wait
        with self.hub.cv:
            while True:
                got = [(c, f, e) for c, f, t, e in self.hub.boxes.get(job, []) if c > after and t == self.node]
                if got or time.monotonic() >= end:
                    return got
                self.hub.cv.wait(end - time.monotonic())

    def report(self, task_id: str, body: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        ks = self.svc.keystore
        with ks._mutex:
            # Nothing of the task leaves before its entry and its recorded peer counters are
            # durable: the audit state on disk (inline in the manifest, and the journal's records
            # after it) holds an entry of this job ...
            expect = ks_module._Expect("manifest", "manifest")
            _, _, _, manifest = ks._read(ks_module.MANIFEST, expect, ks_module.MAX_MANIFEST, store=None)
            kept = manifest.get("inline", {}).get("audit", {"pending": []})["pending"]
            kept += [json.loads(p) for p in ks.journal_records()]
            jobs = [json.loads(base64.b64decode(r["entry"])).get("job") for r in kept]
            # ... and the peer counters this task recorded are on disk too.
            unsaved = ks._witness_saved < getattr(self.recorded, "gen", 0)
            self.recorded.gen = 0
        self.hub.results[task_id] = {**body, "entry_durable": task_id.rsplit("-", 1)[0] in jobs, "witness_unsaved": unsaved}
        return {"job_status": self.hub.job_end.get(self.node, "running")}

    def wait_ended(self, job: str, timeout: float) -> str:
        return self.hub.job_end.get(self.node, "running")

    def close(self, job: str) -> None:
        pass


def _start(hub: Hub, state: Path, nid: str) -> NodeService:
    plat = SimulatedPlatform(state_dir=state / nid / "platform")
    policy = VerificationPolicy(allow_simulated=True, measurements={"simulated": {"pcr0": (plat.measurement,)}})
    svc = NodeService(coordinator="http://127.0.0.1:9", state=state / nid, node_id=nid, platform=plat, policy=policy)
    svc.stream = svc.relay = MemStream(hub, svc)  # type: ignore[assignment]
    return svc


def _parts(services: dict[str, NodeService], ids: Sequence[str] = NODES) -> list[dict[str, Any]]:
    """Each node's card with evidence answering the other nodes' challenges (no coordinator here)."""
    parts = []
    for i, nid in enumerate(ids, start=1):
        svc = services[nid]
        asked = [Challenge(o, services[o].admissions.book.issue(nid)) for o in ids if o != nid]
        nonce = challenge_nonce(asked)
        ev = svc.platform.attest(binding(svc.card, nonce))
        parts.append({"index": i, "node_id": nid, "peer_card": base64.b64encode(svc.card.encode()).decode(),
                      "platform": ev.platform, "evidence": base64.b64encode(ev.blob).decode(),
                      "evidence_nonce": nonce.hex(), "evidence_challenges": challenges_to_wire(asked),
                      "generation": 1})  # fmt: skip
    return parts


def _stop(svc: NodeService) -> None:
    svc._pool.shutdown(wait=False)
    svc.link.close()
    svc.keystore.close()


def two_nodes(tmp_path: Path, shares: Sequence[Any]) -> Iterator[tuple[Hub, dict[str, NodeService], list[dict[str, Any]]]]:
    """Both nodes started, each holding its share of key ``k1`` at epoch 0; stopped after."""
    hub = Hub()
    services = {nid: _start(hub, tmp_path, nid) for nid in NODES}
    for i, nid in enumerate(NODES, start=1):
        svc = services[nid]
        committee.record(svc.keystore, "k1", dict(enumerate(NODES, start=1)))
        svc.keystore.stage("k1", shares[i - 1])
        svc.keystore.commit("k1", 0)
    yield hub, services, _parts(services)
    for svc in services.values():
        _stop(svc)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[Hub, dict[str, NodeService], list[dict[str, Any]]]]:
    yield from two_nodes(tmp_path, local.keygen("ed25519", 2, 2))


def _sign(
    hub: Hub, services: dict[str, NodeService], parts: list[dict[str, Any]], job: str, seconds: float = 60
) -> list[dict[str, Any]]:
    return _run_all(hub, services, parts, "sign", job, {"message_hex": secrets.token_bytes(32).hex()}, 0, seconds)


def test_results_leave_only_after_their_entry_and_witness_are_durable(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]],
) -> None:
    hub, services, parts = nodes
    for k in range(3):  # the first task awaits the notes; later ones read them after the protocol
        results = _sign(hub, services, parts, f"job{k}")
        for r in results:
            assert r["status"] == "done", r
            assert r["entry_durable"] and not r["witness_unsaved"], r
        assert results[0]["result"] == results[1]["result"]
    for svc in services.values():
        assert svc._fresh
        peer = next(n for n in NODES if n != svc.node_id)
        assert svc.keystore.peer_counters()[peer].counter == services[peer].keystore.counter - 1
        verify_chain(svc.audit.pending(), svc.card.identity_public_key)


def test_concurrent_tasks(nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]]) -> None:
    hub, services, parts = nodes
    _sign(hub, services, parts, "warm")
    out: list[dict[str, Any]] = []
    threads = [threading.Thread(target=lambda k=k: out.extend(_sign(hub, services, parts, f"c{k}"))) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 24
    assert all(r["status"] == "done" and r["entry_durable"] and not r["witness_unsaved"] for r in out), out
    for svc in services.values():
        pending = svc.audit.pending()
        assert len(pending) == 13
        verify_chain(pending, svc.card.identity_public_key)


def test_a_task_waits_while_its_key_s_new_epoch_is_being_decided(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]],
) -> None:
    """After reporting a DKG or refresh result the node waits for the job's end to commit (or
    drop) the staged epoch. The coordinator may hand out the key's next task as soon as the job
    is done — before that end reaches the node (over a connection that died, a second later):
    the task waits for the decision instead of failing with no committed epoch."""
    hub, services, parts = nodes
    settling = services["node-1"]._settling_begin("k1")
    out: list[list[dict[str, Any]]] = []
    t = threading.Thread(target=lambda: out.append(_sign(hub, services, parts, "job-s")))
    t.start()
    time.sleep(0.5)
    assert not out and "job-s-1" not in hub.results  # node-1 holds its task back
    services["node-1"]._settling_end("k1", settling)
    t.join(30)
    assert out and [r["status"] for r in out[0]] == ["done", "done"]
    assert services["node-1"]._settling == {}


def test_a_stale_peer_seen_early_is_distrusted_even_if_the_task_then_fails(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]],
) -> None:
    """Witness notes are read as soon as all have arrived (the engine's idle hook). If they are
    inconsistent (here: a peer saw this node further on than it is), the node stops trusting
    what it witnessed at once: the read after the protocol never runs for a task that fails
    (here: the peer's round 2 is lost)."""
    hub, services, parts = nodes
    for k in range(3):  # both witnessed: later notes are read during the protocol
        _sign(hub, services, parts, f"warm{k}")
    one, two = services["node-1"], services["node-2"]
    assert one._fresh
    # node-2 "saw" node-1 much further on than node-1 is: node-1's state looks like an old copy.
    two.keystore.record_peer_counter("node-1", one.keystore.counter + 100, secrets.token_bytes(32))
    hub.allow["node-2", "cold"] = 2  # its witness note and round 1 arrive; its round 2 is lost
    results = _sign(hub, services, parts, "cold", seconds=5)
    assert results[0]["status"] == "failed", results[0]
    assert not one._fresh and not one._witness_keys


class FakeLink:
    """CoordinatorLink.request as a script: each call takes the next step (a value or an exception)."""

    def __init__(self, steps: list[Any], done: threading.Event, rest: Any = None) -> None:
        self.steps, self.done, self.rest = steps, done, rest
        self.calls: list[tuple[str, str, Any]] = []

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        body: Any = None,
        timeout: float | None = None,
        bearer: str | None = None,
    ) -> Any:
        self.calls.append((method, path, body if body is not None else params))
        if not self.steps:
            self.done.set()
            time.sleep(0.05)
            return self.rest
        step = self.steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step

    def close(self) -> None:
        pass


def test_the_challenge_follower_survives_every_error(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An odd answer, an unreachable coordinator, a platform that fails to attest once: the
    loop goes on and registers evidence over the challenges in the end (review, high)."""
    _, services, _ = nodes
    svc = services["node-1"]
    nonce = secrets.token_bytes(32)
    listed = {"digest": "d1", "challenges": [{"from": "node-2", "nonce": nonce.hex()}]}
    done = threading.Event()
    link = FakeLink([ValueError("not JSON"), {"nope": 1}, listed, listed, {}, listed], done, rest=listed)
    real_attest = svc.platform.attest
    failures = [RuntimeError("transient device error")]

    def attest(user_data: bytes) -> Any:
        if failures:
            raise failures.pop()
        return real_attest(user_data)

    monkeypatch.setattr(svc.platform, "attest", attest)
    svc.link = link  # type: ignore[assignment]
    monkeypatch.setattr(svc._stop, "wait", lambda t=None: svc._stop.is_set())  # no back-off pauses here
    follower = threading.Thread(target=svc._answer_challenges)
    follower.start()
    assert done.wait(10)
    svc._stop.set()
    follower.join(5)
    registered = [body for method, path, body in link.calls if path == "/v1/nodes/register"]
    assert len(registered) == 1
    assert registered[0]["challenges"] == listed["challenges"]
    assert registered[0]["evidence_nonce"] == challenge_nonce([Challenge("node-2", nonce)]).hex()


def test_a_challenge_is_posted_again_until_answered(nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]]) -> None:
    _, services, _ = nodes
    svc = services["node-1"]
    import httpx

    link = FakeLink([httpx.ConnectError("cut"), {"answered": False}, {"answered": True, "node_id": "node-2"}], threading.Event())
    svc.link = link  # type: ignore[assignment]
    out = svc._ask_peer("node-2", b"\x01" * 32, 5.0)
    assert out["answered"] is True and [c[0] for c in link.calls] == ["POST"] * 3
    # Out of time: the last answer, not answered, is returned for the caller to refuse.
    link.steps = [{"answered": False}]
    assert svc._ask_peer("node-2", b"\x01" * 32, 0.0)["answered"] is False


def deadline_in(seconds: float) -> str:
    """A task deadline ``seconds`` from now (nodes refuse one far ahead or long past)."""
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).isoformat()


# -- the committee on record (committee.py) ----------------------------------------------------------
def _task(parts: list[dict[str, Any]], kind: str, index: int, params: dict[str, Any], job: str) -> dict[str, Any]:
    deadline = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)).isoformat()
    return {"task_id": f"{job}-{index}", "job_id": job, "kind": kind, "scheme": "ed25519", "threshold": 2,
            "participants": parts, "you": {"index": index}, "instance": secrets.token_hex(32), "key_id": "k1",
            "committee": [{"node_id": p["node_id"], "index": p["index"]} for p in parts], "params": params,
            "deadline": deadline, "epoch": 0}  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "relabel", "params", "field"),
    [
        # Review finding: a repair "for" index 2 naming another node as its holder would rebuild
        # node-2's share at that node.
        ("repair", {2: "node-z"}, {"lost": "node-z"}, "participants"),
        # ... or a signing that puts a node at another's index (a DKLs23 abort would ban it).
        ("sign", {2: "node-z"}, {"message_hex": "00"}, "participants"),
        ("sign", {1: "node-2", 2: "node-1"}, {"message_hex": "00"}, "participants"),
        ("dkg", {}, {}, "key_id"),  # a keygen for a key this node holds: redefining its holders
    ],
)
def test_a_task_that_disagrees_with_the_committee_on_record_is_refused_before_any_message(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]],
    kind: str,
    relabel: dict[int, str],
    params: dict[str, Any],
    field: str,
) -> None:
    hub, services, parts = nodes
    forged = [{**p, "node_id": relabel.get(p["index"], p["node_id"])} for p in parts]
    raw = _task(forged, kind, 1, params, f"forged-{kind}")
    services["node-1"].handle(raw)
    out = hub.results[raw["task_id"]]
    assert out["status"] == "failed" and out["error"]["reason"] == "TaskError", out
    assert f"({field})" in out["error"]["detail"], out
    assert not hub.boxes.get(raw["job_id"]), "nothing may be sent"


def test_a_repair_naming_a_node_that_still_holds_its_share_is_refused_by_it(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]],
) -> None:
    """The coordinator calls node-2 lost: node-2 refuses before any message, so node-1 never
    forgets what it witnessed of node-2 (an old copy of node-2's state would then pass)."""
    hub, services, parts = nodes
    _sign(hub, services, parts, "warm")  # node-1 has witnessed node-2
    seen = services["node-1"].keystore.peer_counters()["node-2"]
    raws = [_task(parts, "repair", i, {"lost": "node-2"}, "bogus-repair") for i in (1, 2)]
    raws[0]["deadline"] = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=6)).isoformat()
    threads = [threading.Thread(target=services[n].handle, args=(r,)) for n, r in zip(NODES, raws, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lost_side = hub.results["bogus-repair-2"]
    assert lost_side["status"] == "failed" and "(lost)" in lost_side["error"]["detail"], lost_side
    assert hub.results["bogus-repair-1"]["status"] == "failed"
    assert services["node-1"].keystore.peer_counters()["node-2"] == seen


def test_a_repaired_share_whose_job_end_was_missed_is_repaired_again(tmp_path: Path) -> None:
    """Review finding: the lost node staged its repaired share and then never learned the
    repair's end (its answer lost, a restart): the share stayed pending for good — no later
    task commits a repaired share — and a second repair was refused ("still holds the key").
    A key held only as a pending epoch is repaired again, and the share then signs."""
    ids = ("node-1", "node-2", "node-3")
    hub = Hub()
    services = {nid: _start(hub, tmp_path, nid) for nid in ids}
    try:
        shares = local.keygen("ed25519", 2, 3)
        for i, nid in enumerate(ids[:2], start=1):  # node-3 lost its state
            committee.record(services[nid].keystore, "k1", dict(enumerate(ids, start=1)))
            services[nid].keystore.stage("k1", shares[i - 1])
            services[nid].keystore.commit("k1", 0)
        lost = services["node-3"]
        committee.record(lost.keystore, "k1", dict(enumerate(ids, start=1)))
        lost.keystore.stage("k1", shares[2])  # what the first repair staged; its end never came
        parts = _parts(services, ids)
        hub.job_end.update(dict.fromkeys(ids, "done"))
        results = _run_all(hub, services, parts, "repair", "rep2", {"lost": "node-3"}, 0, ids=ids)
        assert [r["status"] for r in results] == ["done"] * 3, results
        assert lost.keystore.key_status("k1").current == 0
        assert lost.keystore.share("k1", 0).signing_share == shares[2].signing_share  # the same share, rebuilt
        # It signs with a helper (2-of-3): both reports hold one signature libsodium accepts.
        message = secrets.token_bytes(32)
        params = {"message_hex": message.hex(), "signers": ["node-1", "node-3"]}
        raws = [_task([parts[0], parts[2]], "sign", i, params, "s-after") for i in (1, 3)]
        raws[1]["instance"] = raws[0]["instance"]
        threads = [threading.Thread(target=services[p["node_id"]].handle, args=(r,)) for p, r in zip((parts[0], parts[2]), raws)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        signed = [hub.results[f"s-after-{i}"] for i in (1, 3)]
        assert [r["status"] for r in signed] == ["done", "done"], signed
        sig = signed[0]["result"]
        assert verify_independently("ed25519", bytes.fromhex(sig["public_key"]), message, bytes.fromhex(sig["signature"]))
    finally:
        for svc in services.values():
            _stop(svc)


def test_a_full_audit_backlog_fails_the_signing_with_its_reason_and_releases_nothing(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]],
) -> None:
    """audit.py: entries the coordinator has not acknowledged are never dropped; when they fill
    the backlog, the decision is not taken and the task says why."""
    hub, services, parts = nodes
    svc = services["node-1"]
    _sign(hub, services, parts, "before")
    svc.audit._max_pending = len(svc.audit.pending())  # full: nothing was mirrored in this test
    results = _sign(hub, services, parts, "backlog", seconds=8)
    mine = hub.results["backlog-1"]
    assert mine["status"] == "failed" and mine["error"]["reason"] == "AUDIT_BACKLOG_FULL", mine
    assert results[1]["status"] == "failed"  # node-2 got no signature share from node-1
    # The witness note and round one left; round two (the signature share) never did.
    assert hub.posts[("node-1", "backlog")] == hub.posts[("node-1", "before")] - 1 == 2


def test_a_caught_rollback_stays_caught_for_the_process_caught(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]], tmp_path: Path
) -> None:
    """Review finding: after node-2 caught node-1's restored state directory, node-1 took the
    next tasks without awaiting the notes, wrote on, and once its counter passed what node-2
    had recorded, node-2 recorded the fork and confirmed it."""
    hub, services, parts = nodes
    for k in range(2):
        _sign(hub, services, parts, f"a{k}")
    snapshot = tmp_path / "snapshot"
    shutil.copytree(tmp_path / "node-1" / "keystore", snapshot, ignore=shutil.ignore_patterns("ks.lock"))
    for k in range(3):
        _sign(hub, services, parts, f"b{k}")
    witnessed = services["node-2"].keystore.peer_counters()["node-1"]
    _stop(services["node-1"])
    shutil.rmtree(tmp_path / "node-1" / "keystore")
    shutil.copytree(snapshot, tmp_path / "node-1" / "keystore")
    services["node-1"] = _start(hub, tmp_path, "node-1")  # the restored copy, a new process
    parts = _parts(services)
    for k in range(4):  # caught on the first; refused on every later one, before any message
        out = _sign(hub, services, parts, f"c{k}", seconds=6)
        assert out[1]["status"] == "failed" and out[1]["error"]["reason"] == "STALE_PEER", (k, out[1])
        assert out[0]["status"] == "failed", (k, out[0])
        if k == 0:
            assert out[0]["error"]["reason"] == "STALE_STATE", out[0]
        else:
            assert "caught before" in out[1]["error"]["detail"], out[1]
            assert not [e for e in hub.boxes.get(f"c{k}", []) if e[1] == "node-2"], "node-2 sent nothing"
        assert services["node-1"]._fresh is False  # so it awaits every note, every time
    # node-2's record of node-1 was never overtaken by the fork.
    assert services["node-2"].keystore.peer_counters()["node-1"] == witnessed


# -- two-phase commit of a new epoch (service.py _confirm_staged, _settle, _resolve_pending) -----------
def _run_all(hub: Hub, services: dict[str, NodeService], parts: list[dict[str, Any]], kind: str, job: str,
             params: dict[str, Any], epoch: int, seconds: float = 30,
             scheme: str = "ed25519", extra: dict[str, Any] | None = None,
             ids: Sequence[str] = NODES) -> list[dict[str, Any]]:  # fmt: skip
    instance = secrets.token_hex(32)
    deadline = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).isoformat()
    threads = []
    for i, nid in enumerate(ids, start=1):
        raw = {"task_id": f"{job}-{i}", "job_id": job, "kind": kind, "scheme": scheme, "threshold": 2,
               "participants": parts, "you": {"index": i}, "instance": instance, "key_id": "k1", "epoch": epoch,
               "params": params, "deadline": deadline} | (extra or {})  # fmt: skip
        threads.append(threading.Thread(target=services[nid].handle, args=(raw,)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [hub.results[f"{job}-{i}"] for i in range(1, len(ids) + 1)]


def test_a_coordinator_that_says_done_to_one_holder_and_failed_to_another_loses_no_epoch(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]],
) -> None:
    """Review finding (HIGH): node-1 committed epoch 1 and deleted epoch 0 on "done", node-2
    dropped epoch 1 on "failed": a 2-of-2 key had no epoch left that both held. Now a staged
    epoch is never dropped; node-2 commits it at its next task at epoch 1."""
    hub, services, parts = nodes
    hub.job_end.update({"node-1": "done", "node-2": "failed"})
    out = _run_all(hub, services, parts, "refresh", "refresh-1", {}, epoch=0)
    assert [r["status"] for r in out] == ["done", "done"], out
    ks1, ks2 = services["node-1"].keystore, services["node-2"].keystore
    assert (ks1.key_status("k1").current, ks1.key_status("k1").pending) == (1, ())
    assert (ks2.key_status("k1").current, ks2.key_status("k1").pending) == (0, (1,))  # kept, not dropped
    hub.job_end.clear()
    # The coordinator moved the key to epoch 1 (it saw every holder done): node-2 commits first.
    signed = _run_all(hub, services, parts, "sign", "sign-1", {"message_hex": "00"}, epoch=1)
    assert [r["status"] for r in signed] == ["done", "done"], signed
    assert (ks2.key_status("k1").current, ks2.key_status("k1").pending) == (1, ())


def test_done_without_every_holders_confirmation_commits_nothing(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]],
) -> None:
    """A coordinator's "done" alone never makes a node delete its current epoch: it must also
    hold every other holder's signed confirmation that it staged the new one."""
    services = nodes[1]
    svc = services["node-1"]
    new = local.refresh([services[n].keystore.share("k1") for n in NODES])
    assert new[0].public.epoch == 1
    svc.keystore.stage("k1", new[0])
    raw = {"job_id": "forged", "key_id": "k1", "kind": "refresh", "deadline": dt.datetime.now(dt.UTC).isoformat()}
    svc._settle("forged", raw, {"epoch": 1}, "done")  # no confirmations on record for this job
    assert (svc.keystore.key_status("k1").current, svc.keystore.key_status("k1").pending) == (0, (1,))
    svc._settle("forged", raw, {"epoch": 1}, "failed")
    assert svc.keystore.key_status("k1").pending == (1,)  # and "failed" never drops it


def test_a_session_instance_used_before_is_refused_before_any_message(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]],
) -> None:
    """Review finding: the coordinator re-issued a finished signing's instance and replayed the
    peer's envelopes; the node accepted them (same session ids) and blamed the honest peer."""
    hub, services, parts = nodes
    raw = _task(parts, "sign", 1, {"message_hex": "00"}, "first")
    raw2 = _task(parts, "sign", 2, {"message_hex": "00"}, "first")
    raw2["instance"] = raw["instance"]
    threads = [threading.Thread(target=services[n].handle, args=(r,)) for n, r in zip(NODES, (raw, raw2), strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert hub.results["first-1"]["status"] == "done", hub.results["first-1"]
    again = {**raw, "task_id": "again-1", "job_id": "again"}  # a new job, the old instance
    services["node-1"].handle(again)
    out = hub.results["again-1"]
    assert out["status"] == "failed" and "(instance)" in out["error"]["detail"], out
    assert not hub.boxes.get("again"), "nothing may be sent"


def test_a_forgotten_session_instance_never_runs_again(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]],
) -> None:
    """A node remembers the instances it ran in bounded memory (node/sessions.py). One it forgot
    stays refused under its deadline; under a new deadline it is another session, in which the
    first run's envelopes replayed by the relay do not open: no progress, nobody blamed."""
    hub, services, parts = nodes
    for svc in services.values():
        svc._sessions = SessionRegister(1)  # forgets each instance at the next task
    session = {"instance": secrets.token_hex(32), "deadline": deadline_in(2)}
    assert _run_all(hub, services, parts, "sign", "first", {"message_hex": "00"}, 0, extra=session)[0]["status"] == "done"
    raw = _task(parts, "sign", 1, {"message_hex": "00"}, "first") | session  # node-1's task of it
    assert [r["status"] for r in _sign(hub, services, parts, "later", 3.5)] == ["done", "done"]  # "first" forgotten
    assert services["node-1"]._sessions.floor >= deadline_at(raw)
    services["node-1"].handle({**raw, "task_id": "again-1", "job_id": "again"})
    out = hub.results["again-1"]
    assert out["status"] == "failed" and "(deadline)" in out["error"]["detail"], out
    assert not hub.boxes.get("again"), "nothing may be sent"
    # The old instance under a new deadline, with node-2's envelopes of "first" replayed to node-1.
    hub.boxes["replayed"] = [m for m in hub.boxes["first"] if m[1] == "node-2" and m[2] == "node-1"]
    assert hub.boxes["replayed"]
    services["node-1"].handle({**raw, "task_id": "replayed-1", "job_id": "replayed", "deadline": deadline_in(5)})
    out = hub.results["replayed-1"]
    assert out["status"] == "failed" and out["error"]["reason"] == "TIMEOUT" and not out["error"]["culprits"], out
    assert "round 1" in out["error"]["detail"], out  # not one of the replayed envelopes was taken


def test_a_keygen_refused_before_it_runs_leaves_no_committee_record(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]],
) -> None:
    """Review finding: a keygen refused as a session run before had already recorded its
    committee, so the key id's genuine keygen was refused afterwards ("already exists")."""
    hub, services, parts = nodes
    session = {"instance": secrets.token_hex(32), "deadline": deadline_in(30)}
    signed = _run_all(hub, services, parts, "sign", "s", {"message_hex": "00"}, 0, extra=session)
    assert [r["status"] for r in signed] == ["done", "done"], signed
    raw = _task(parts, "sign", 1, {"message_hex": "00"}, "s") | session
    replay = raw | {"task_id": "replay-1", "job_id": "replay", "kind": "dkg", "key_id": "k9", "params": {}}
    services["node-1"].handle(replay)  # the signing's session again, as a keygen of a new key
    out = hub.results["replay-1"]
    assert out["status"] == "failed" and "(instance)" in out["error"]["detail"], out
    assert committee.recorded(services["node-1"].keystore, "k9") is None
    genuine = _run_all(hub, services, parts, "dkg", "gen", {}, 0, extra={"key_id": "k9"})  # a fresh session
    assert [r["status"] for r in genuine] == ["done", "done"], genuine


def test_a_repair_handed_out_again_under_a_new_deadline_takes_none_of_the_old_envelopes(tmp_path: Path) -> None:
    """Review finding: the repair's sessions were built from the coordinator's raw instance, so
    the same repair job handed to the lost node again under another deadline (another session
    in the register) opened the first run's envelopes and finished from them alone."""
    ids = ("node-1", "node-2", "node-3")
    hub = Hub()
    services = {nid: _start(hub, tmp_path, nid) for nid in ids}
    try:
        shares = local.keygen("ed25519", 2, 3)
        for i, nid in enumerate(ids[:2], start=1):
            committee.record(services[nid].keystore, "k1", dict(enumerate(ids, start=1)))
            services[nid].keystore.stage("k1", shares[i - 1])
            services[nid].keystore.commit("k1", 0)
        lost = services["node-3"]
        parts = _parts(services, ids)
        hub.job_end.update({"node-1": "done", "node-2": "done", "node-3": "failed"})  # node-3 drops what it staged
        instance = secrets.token_hex(32)

        def raw(i: int, task_id: str, deadline: str) -> dict[str, Any]:
            return {"task_id": task_id, "job_id": "rep", "kind": "repair", "scheme": "ed25519", "threshold": 2,
                    "participants": parts, "you": {"index": i}, "instance": instance, "key_id": "k1", "epoch": 0,
                    "params": {"lost": "node-3"}, "deadline": deadline}  # fmt: skip

        first = deadline_in(30)
        threads = [threading.Thread(target=services[n].handle, args=(raw(i, f"rep-{i}", first),)) for i, n in enumerate(ids, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [hub.results[f"rep-{i}"]["status"] for i in (1, 2, 3)] == ["done"] * 3, hub.results
        assert lost.keystore.find_key("k1") is None  # its job failed, as node-3 was told
        lost.handle(raw(3, "rep-3-again", deadline_in(4)))  # the helpers do nothing this time
        out = hub.results["rep-3-again"]
        assert out["status"] == "failed" and out["error"]["reason"] == "TIMEOUT" and not out["error"]["culprits"], out
        assert lost.keystore.find_key("k1") is None
    finally:
        for svc in services.values():
            _stop(svc)


def test_two_refreshes_never_leave_different_shares_of_one_epoch(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]],
) -> None:
    """Second review (HIGH), reproduced as key loss before the fix. A first refresh the
    coordinator called failed left epoch 1 pending and confirmed at both nodes. A second refresh
    completed at node-1 only (its last posts dropped) and staged another epoch 1 there. A later
    task at epoch 1 then committed R2's share at node-1 and R1's at node-2. Now a refresh
    revokes the confirmation it replaces before it sends anything, and a commit needs the
    confirmed share itself, so nothing mixed is ever committed."""
    hub, services, parts = nodes
    hub.job_end.update({"node-1": "failed", "node-2": "failed"})
    first = _run_all(hub, services, parts, "refresh", "r1", {}, epoch=0)
    assert [r["status"] for r in first] == ["done", "done"], first
    hub.allow[("node-1", "r2")] = hub.posts[("node-1", "r1")] - 2  # its last round and statement are lost
    second = _run_all(hub, services, parts, "refresh", "r2", {}, epoch=0, seconds=8)
    assert second[1]["status"] == "failed", second
    hub.job_end.clear()
    # A coordinator that now says the key is at epoch 1: nothing is committed; both sign at epoch 0.
    signed = _run_all(hub, services, parts, "sign", "s1", {"message_hex": "00"}, epoch=1)
    assert [r["status"] for r in signed] == ["done", "done"], signed
    for n in NODES:
        assert services[n].keystore.key_status("k1").current == 0, n
    # A third refresh, unhindered, moves both to a consistent epoch 1.
    hub.job_end.update({"node-1": "done", "node-2": "done"})
    third = _run_all(hub, services, parts, "refresh", "r3", {}, epoch=0)
    assert [r["status"] for r in third] == ["done", "done"], third
    assert [services[n].keystore.key_status("k1").current for n in NODES] == [1, 1]
    hub.job_end.clear()
    again = _run_all(hub, services, parts, "sign", "s2", {"message_hex": "01"}, epoch=1)
    assert [r["status"] for r in again] == ["done", "done"], again


def test_only_the_confirmed_share_is_committed(nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]]) -> None:
    hub, services, parts = nodes
    hub.job_end.update({"node-1": "failed", "node-2": "failed"})
    _run_all(hub, services, parts, "refresh", "r1", {}, epoch=0)
    svc = services["node-1"]
    other = local.refresh([services[n].keystore.share("k1", 0) for n in NODES])[0]  # another epoch-1 share
    svc.keystore.stage("k1", other)  # as if staged over the confirmed one
    svc._resolve_pending("k1", 1)
    assert (svc.keystore.key_status("k1").current, svc.keystore.key_status("k1").pending) == (0, (1,))


def test_a_keygen_for_a_key_id_on_record_is_refused_even_while_the_first_runs(tmp_path: Path) -> None:
    """Second review (HIGH): a second keygen sent while the first's DKG ran overwrote the
    committee record (it refused only once the share was staged)."""
    hub = Hub()
    svc = _start(hub, tmp_path, "node-1")
    try:
        committee.record(svc.keystore, "k9", {1: "node-1", 2: "node-2"})  # the first keygen, running
        with pytest.raises(TaskError, match="already exists") as e:
            committee.record(svc.keystore, "k9", {1: "node-1", 2: "node-x"})
        assert e.value.field == "key_id"
        assert committee.recorded(svc.keystore, "k9") == {1: "node-1", 2: "node-2"}
    finally:
        _stop(svc)


def test_a_bundle_signs_every_request_in_one_session_with_one_audit_entry(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]],
) -> None:
    """API.md §1.6, Bundles: one task, one FROST session for all the messages, one ``signing``
    entry naming every request before any share leaves, each signature verifiable on its own."""
    hub, services, parts = nodes
    _sign(hub, services, parts, "warm")
    messages = [b"", b"one", secrets.token_bytes(100), b"three"]
    items = [{"request_id": f"req{i}", "message_hex": m.hex()} for i, m in enumerate(messages)]
    results = _run_all(hub, services, parts, "bundle", "bdl1", {"bundle": items, "signers": NODES}, 0)
    assert all(r["status"] == "done" for r in results), results
    assert results[0]["result"] == results[1]["result"]
    pk = bytes.fromhex(results[0]["result"]["public_key"])
    sigs = [bytes.fromhex(s) for s in results[0]["result"]["signatures"]]
    assert len(sigs) == 4 and "signature" not in results[0]["result"]
    for m, sig in zip(messages, sigs, strict=True):
        assert verify_independently("ed25519", pk, m, sig)
    # One post per round (witness note with round 1, then round 2), as for one signature.
    assert hub.posts[("node-1", "bdl1")] == hub.posts[("node-1", "warm")]
    for svc in services.values():
        chain = verify_chain(svc.audit.pending(), svc.card.identity_public_key)
        entries = [e for e in chain if e.get("job") == "bdl1"]
        assert [e["event"] for e in entries] == ["signing"], entries
        assert entries[0]["requests"] == [
            {"request": f"req{i}", "payload_sha256": hashlib.sha256(m).hexdigest()} for i, m in enumerate(messages)
        ]


@pytest.mark.parametrize(
    ("bundle", "field"),
    [
        ([], "bundle"),
        ([{"request_id": "r", "message_hex": "00"}] * 65, "bundle"),
        ("00", "bundle"),
        ([{"message_hex": "00"}], "bundle[0]"),
        ([{"request_id": "r", "message_hex": "0"}], "bundle[0].message_hex"),
        ([{"request_id": "r", "message_hex": "ZZ"}], "bundle[0].message_hex"),
        ([{"request_id": "r", "message_hex": "AB"}], "bundle[0].message_hex"),
        ([{"request_id": "", "message_hex": "00"}], "bundle[0]"),
        ([{"request_id": "r" * 65, "message_hex": "00"}], "bundle[0]"),
        ([{"request_id": "req 1", "message_hex": "00"}], "bundle[0]"),
        # Review finding: a digest beside the bundle was signed (for an ecdsa key) with no entry naming it.
        ({"extra": {"digest_hex": "00" * 32}, "items": [{"request_id": "r", "message_hex": "00"}]}, "params"),
        ({"extra": {"message_hex": "00"}, "items": [{"request_id": "r", "message_hex": "00"}]}, "params"),
        # Review finding: one request named twice, with two different messages.
        ([{"request_id": "r", "message_hex": "00"}, {"request_id": "r", "message_hex": "01"}], "bundle[1].request_id"),
    ],
)
def test_a_malformed_bundle_is_refused_before_any_message(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]], bundle: Any, field: str
) -> None:
    hub, services, parts = nodes
    params = {"bundle": bundle} if not isinstance(bundle, dict) else {"bundle": bundle["items"], **bundle["extra"]}
    services["node-1"].handle(_task(parts, "bundle", 1, params, "bad"))
    r = hub.results["bad-1"]
    assert r["status"] == "failed" and r["error"]["reason"] == "TaskError" and f"({field})" in r["error"]["detail"], r
    assert ("node-1", "bad") not in hub.posts


def test_a_bundle_for_an_ecdsa_key_is_refused_and_signs_nothing(tmp_path: Path) -> None:
    """Review finding: a hostile coordinator's "bundle" for an ECDSA key, with a digest beside
    decoy items, had the nodes sign that digest while their audit entry named only the decoys."""
    hub = Hub()
    services = {nid: _start(hub, tmp_path, nid) for nid in NODES}
    try:
        shares = local.ecdsa_keygen(2, 2)
        for i, nid in enumerate(NODES, start=1):
            svc = services[nid]
            committee.record(svc.keystore, "k1", dict(enumerate(NODES, start=1)))
            svc.keystore.stage("k1", shares[i - 1])
            svc.keystore.commit("k1", 0)
        parts = _parts(services)
        decoy = [{"request_id": "req_decoy", "message_hex": b"harmless".hex()}]
        for job, params, scheme in (
            ("b1", {"bundle": decoy, "signers": list(NODES), "digest_hex": "11" * 32}, "ecdsa"),
            ("b2", {"bundle": decoy, "signers": list(NODES)}, "ecdsa"),
            ("b3", {"bundle": decoy, "signers": list(NODES)}, "ed25519"),  # a false scheme: the share decides
        ):
            threads = []
            instance = secrets.token_hex(32)
            for i, nid in enumerate(NODES, start=1):
                raw = _task(parts, "bundle", i, params, job) | {"scheme": scheme, "epoch": 0, "instance": instance}
                threads.append(threading.Thread(target=services[nid].handle, args=(raw,)))
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for i in (1, 2):
                r = hub.results[f"{job}-{i}"]
                assert r["status"] == "failed" and r["error"]["reason"] == "TaskError", r
        for svc in services.values():
            entries = verify_chain(svc.audit.pending(), svc.card.identity_public_key)
            assert not [e for e in entries if e.get("event") == "signing"], entries
    finally:
        for svc in services.values():
            _stop(svc)


@pytest.mark.parametrize(
    "params",
    [
        # Review finding (before bundles): FROST signs message_hex, and the entry hashed the decoy digest.
        {"message_hex": b"pay mallory".hex(), "digest_hex": "11" * 32},
        {},  # nothing to sign: never b"" by default
        {"message_hex": "00", "note": "x"},
    ],
)
def test_a_signing_names_exactly_one_payload_and_nothing_else(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]], params: dict[str, Any]
) -> None:
    hub, services, parts = nodes
    results = _run_all(hub, services, parts, "sign", "one", params | {"signers": list(NODES)}, 0, seconds=8)
    for r in results:
        assert r["status"] == "failed" and r["error"]["reason"] == "TaskError" and "(params)" in r["error"]["detail"], r
    for svc in services.values():
        assert not [e for e in verify_chain(svc.audit.pending(), svc.card.identity_public_key) if e.get("event") == "signing"]


def test_a_rerun_s_signing_entry_names_the_request_it_carries(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]],
) -> None:
    """API.md §1.6, Reruns: a one-step signing run again in rounds is a job of its own
    (``rrn_…``); its task names the request it carries, and so does each signer's ``signing``
    entry, so the node's own signed log ties the signature to the client's request id (an id
    the coordinator gives, as every id) beside the payload's digest. A plain signing's entry
    has no such field."""
    hub, services, parts = nodes
    message = secrets.token_bytes(32)
    params = {"message_hex": message.hex(), "signers": list(NODES)}
    results = _run_all(hub, services, parts, "sign", "rrn_1", params, 0, extra={"carries": "req_0123abcd"})
    assert [r["status"] for r in results] == ["done", "done"], results
    sig = results[0]["result"]
    assert verify_independently("ed25519", bytes.fromhex(sig["public_key"]), message, bytes.fromhex(sig["signature"]))
    _sign(hub, services, parts, "plain")
    for svc in services.values():
        chain = verify_chain(svc.audit.pending(), svc.card.identity_public_key)
        (rerun,) = [e for e in chain if e.get("job") == "rrn_1" and e["event"] == "signing"]
        assert rerun["request"] == "req_0123abcd" and rerun["payload_sha256"] == hashlib.sha256(message).hexdigest()
        (plain,) = [e for e in chain if e.get("job") == "plain" and e["event"] == "signing"]
        assert "request" not in plain


@pytest.mark.parametrize(
    ("kind", "carries"),
    [
        ("sign", ""),
        ("sign", "r" * 65),  # what a task names goes into the audit log: bounded
        ("sign", "req 1"),
        ("sign", "req_1\n"),
        ("sign", 7),
        ("sign", None),
        ("sign", ["req_1"]),
        ("bundle", "req_1"),  # only a single signing is a rerun of a request ...
        ("commitments", "req_1"),  # ... in rounds, never one-step
        ("presignature", "req_1"),
    ],
)
def test_a_task_carrying_a_malformed_request_is_refused_before_any_message(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]], kind: str, carries: Any
) -> None:
    hub, services, parts = nodes
    params: dict[str, Any] = {"message_hex": "00", "signers": list(NODES)}
    if kind == "bundle":
        params = {"bundle": [{"request_id": "req_1", "message_hex": "00"}], "signers": list(NODES)}
    elif kind == "commitments":
        params["commitments"] = {"node-1": {"hiding": "00", "binding": "00"}}
    elif kind == "presignature":
        params = {"digest_hex": "00" * 32, "signers": list(NODES), "presignature": {"id": "00", "R": "00", "seed": "00"}}
    task_kind = "bundle" if kind == "bundle" else "sign"
    services["node-1"].handle(_task(parts, task_kind, 1, params, "bad") | {"carries": carries})
    r = hub.results["bad-1"]
    assert r["status"] == "failed" and r["error"]["reason"] == "TaskError" and "(carries)" in r["error"]["detail"], r
    assert ("node-1", "bad") not in hub.posts
    signing = [e for e in verify_chain(services["node-1"].audit.pending(), services["node-1"].card.identity_public_key)
               if e.get("event") == "signing"]  # fmt: skip
    assert not signing


def test_a_restarted_node_signs_only_once_the_other_holders_confirmed_it(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]], tmp_path: Path
) -> None:
    """docs/NODE.md, "t holders before a signature": a store opened with a state waits for t
    other holders (here the one other holder of a 2-of-2 key); a witness job gives it; a
    STALE_STATE proved by a peer refuses at once."""
    hub, services, parts = nodes
    _sign(hub, services, parts, "before")
    assert services["node-1"].keystore.created  # made empty here: nothing to confirm
    services["node-1"]._await_confirmed("k1", time.monotonic() + 2.5)
    _stop(services["node-1"])
    services["node-1"] = svc = _start(hub, tmp_path, "node-1")  # the same state, a new process
    parts = _parts(services)
    asked = []
    svc._ask_witness = lambda **_: asked.append(1)  # type: ignore[method-assign]
    with pytest.raises(ks_module.KeystoreError) as e:
        svc._await_confirmed("k1", time.monotonic() + 2.6)
    assert e.value.reason is ks_module.KeystoreReason.UNCONFIRMED and "0 of the 1" in str(e.value)
    assert asked, "it asked for witness jobs while it waited"
    out = _run_all(hub, services, parts, "witness", "w1", {"for": "node-1"}, 0, seconds=10)
    assert [r["status"] for r in out] == ["done", "done"] and out[0]["result"] == {}, out
    svc._await_confirmed("k1", time.monotonic() + 2.5)  # node-2 confirmed it
    assert _sign(hub, services, parts, "after")[0]["status"] == "done"
    svc._latch_stale("a peer saw counter 99")
    with pytest.raises(ks_module.KeystoreError) as e:
        svc._await_confirmed("k1", time.monotonic() + 30)
    assert e.value.reason is ks_module.KeystoreReason.STALE_STATE and "counter 99" in str(e.value)


def test_a_witness_job_names_whom_it_is_for_and_nothing_else(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]],
) -> None:
    hub, services, parts = nodes
    for params in ({}, {"for": "node-9"}, {"for": "node-1", "message_hex": "00"}):
        out = _run_all(hub, services, parts, "witness", f"w{len(params)}{params.get('for', '')}", params, 0, seconds=5)
        assert all(r["status"] == "failed" and r["error"]["detail"].startswith("a witness job") for r in out), out


def test_a_holder_records_a_restarted_node_s_higher_counter_only_once_it_acknowledges(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]], tmp_path: Path
) -> None:
    """An old copy that another holder caught must not leave its counter with a holder whose
    record lagged (that holder would call the newest state a fork later): the asker of a
    witness job acknowledges the notes only once every note it got passed its checks."""
    hub, services, parts = nodes
    _sign(hub, services, parts, "before")
    _stop(services["node-1"])
    services["node-1"] = svc = _start(hub, tmp_path, "node-1")  # a new process: node_started raises its counter
    parts = _parts(services)
    recorded = services["node-2"].keystore.peer_counters()["node-1"].counter
    assert svc.keystore.counter > recorded

    def caught(*_: Any, **__: Any) -> None:  # as if a third holder had proved this state old
        raise ks_module.KeystoreError(ks_module.KeystoreReason.STALE_STATE, svc.keystore.directory, "a peer saw more")

    real, svc._check_witness = svc._check_witness, caught  # type: ignore[method-assign]
    out = _run_all(hub, services, parts, "witness", "w-caught", {"for": "node-1"}, 0, seconds=5)
    assert out[0]["status"] == "failed" and out[1]["status"] == "done", out
    assert services["node-2"].keystore.peer_counters()["node-1"].counter == recorded  # no acknowledgement
    svc._check_witness = real  # type: ignore[method-assign]
    out = _run_all(hub, services, parts, "witness", "w-ok", {"for": "node-1"}, 0, seconds=10)
    assert [r["status"] for r in out] == ["done", "done"], out
    assert services["node-2"].keystore.peer_counters()["node-1"].counter > recorded  # acknowledged: recorded


def test_a_holder_that_caught_the_asker_still_sends_its_note_then_refuses(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]],
) -> None:
    """So that the caught process learns its state is old (and acknowledges nobody)."""
    hub, services, parts = nodes
    _sign(hub, services, parts, "before")
    identity = services["node-1"].card.identity_public_key
    services["node-2"]._caught["node-1"] = (identity, "node-1 is serving an older state than it announced before")
    out = _run_all(hub, services, parts, "witness", "w-caught-asker", {"for": "node-1"}, 0, seconds=6)
    assert out[1]["status"] == "failed" and out[1]["error"]["reason"] == "STALE_PEER", out
    sent = [e for e in hub.boxes.get("w-caught-asker", []) if e[1] == "node-2"]
    assert len(sent) == 1 and sent[0][2] == "node-1", sent  # its note, nothing more


def test_audit_posts_stay_within_the_coordinator_s_body_limit(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]],
) -> None:
    """Entries may be 64 KB each and the backlog 4 MiB of records: one post of 256 of them
    would pass the coordinator's 4 MiB body limit and be refused on every retry."""
    _, services, _ = nodes
    svc = services["node-1"]
    for i in range(40):
        svc.audit.append("big", note="x" * 60_000, i=i)
    posts: list[int] = []

    def request(method: str, path: str, body: Any = None, **_: Any) -> dict[str, Any]:
        assert (method, path) == ("POST", "/v1/audit")
        posts.append(len(json.dumps(body)))
        return {"accepted": len(body["entries"]), "duplicates": 0}

    svc.link.request = request  # type: ignore[method-assign]
    while svc.audit.pending():
        svc.flush_audit()
    assert len(posts) >= 2 and max(posts) <= 2 * 1024 * 1024 + 100_000, posts


@pytest.mark.parametrize(
    "answer",
    [{}, None, {"accepted": 0, "duplicates": 0}, {"accepted": "3", "duplicates": 0}, {"accepted": 1, "duplicates": True}],
)
def test_audit_entries_stay_pending_unless_the_coordinator_kept_them_all(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]], answer: Any
) -> None:
    """Review finding: any 2xx answer to the mirror post made the node forget its entries."""
    _, services, _ = nodes
    svc = services["node-1"]
    for i in range(3):
        svc.audit.append("noted", i=i)
    before = len(svc.audit.pending())
    svc.link.request = lambda *a, **k: answer  # type: ignore[method-assign]
    svc.flush_audit()
    assert len(svc.audit.pending()) == before
    svc.link.request = lambda method, path, body=None, **_: {"accepted": len(body["entries"]) - 1, "duplicates": 1}  # type: ignore[method-assign]
    svc.flush_audit()
    assert svc.audit.pending() == []


def test_a_witness_job_with_many_holders_takes_every_note(tmp_path: Path) -> None:
    """Review finding: the asker reads each holder's note on a session of its own through one
    inbox, which held at most 4 sessions not started: with 8 holders the last ones' notes were
    dropped, and a quorum above 5 could never be reached. It now holds exactly the sessions
    the job runs."""
    ids = tuple(f"node-{i}" for i in range(1, 9))
    hub = Hub()
    services = {nid: _start(hub, tmp_path, nid) for nid in ids}
    try:
        shares = local.keygen("ed25519", 2, len(ids))
        for i, nid in enumerate(ids, start=1):
            committee.record(services[nid].keystore, "k1", dict(enumerate(ids, start=1)))
            services[nid].keystore.stage("k1", shares[i - 1])
            services[nid].keystore.commit("k1", 0)
        asker = services["node-1"]
        counter, digest = asker.keystore.announcement()
        for nid in ids[1:]:  # every holder saw the asker's current state
            services[nid].keystore.record_peer_counter("node-1", counter, digest)
        parts = _parts(services, ids)
        instance = secrets.token_hex(32)
        deadline = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=10)).isoformat()
        threads = []
        for i, nid in enumerate(ids, start=1):
            raw = {"task_id": f"w-{i}", "job_id": "w", "kind": "witness", "scheme": "ed25519", "threshold": 2,
                   "participants": parts, "you": {"index": i}, "instance": instance, "key_id": "k1", "epoch": 0,
                   "params": {"for": "node-1"}, "deadline": deadline}  # fmt: skip
            threads.append(threading.Thread(target=services[nid].handle, args=(raw,)))
        for t in threads[1:]:  # the holders' notes wait in the mailbox before the asker starts
            t.start()
        time.sleep(1.0)
        threads[0].start()
        for t in threads:
            t.join()
        assert all(hub.results[f"w-{i}"]["status"] == "done" for i in range(1, 9)), hub.results
        assert sorted(asker._vouched) == sorted(ids[1:])
    finally:
        for svc in services.values():
            _stop(svc)


def _sign_raw(parts: list[dict[str, Any]], index: int, job: str, deadline: str, instance: str) -> dict[str, Any]:
    return {"task_id": f"{job}-{index}", "job_id": job, "kind": "sign", "scheme": "ed25519", "threshold": 2,
            "participants": parts, "you": {"index": index}, "instance": instance, "key_id": "k1", "epoch": 0,
            "params": {"message_hex": "00"}, "deadline": deadline}  # fmt: skip


def _held_back(hub: Hub, job: str) -> list[tuple[int, str, str, bytes]]:
    """What the mailbox holds of ``job``, taken out (a coordinator delaying it)."""
    with hub.cv:
        return hub.boxes.pop(job, [])


def _let_through(hub: Hub, job: str, envelopes: list[tuple[int, str, str, bytes]]) -> None:
    with hub.cv:
        box = hub.boxes.setdefault(job, [])
        for _, sender, to, envelope in envelopes:
            box.append((len(box) + 1, sender, to, envelope))
        hub.cv.notify_all()


def test_old_notes_of_an_honestly_restarted_peer_never_make_it_stale(
    nodes: tuple[Hub, dict[str, NodeService], list[dict[str, Any]]], tmp_path: Path
) -> None:
    """Review finding: node-2 restarts honestly; the coordinator holds back a job its old
    process had posted its note in, and hands it to node-1 after node-1 recorded node-2's new,
    higher counter — node-1 took the old process's lower counter for a rollback (STALE_PEER),
    distrusted everything it had witnessed, and then caught node-2's *current* process on one of
    its notes arriving late: every later task with node-2 was refused until it restarted. A
    lower counter from a process node-1 recorded before is now an old message, nothing more."""
    hub, services, parts_old = nodes
    for k in range(3):
        assert [r["status"] for r in _sign(hub, services, parts_old, f"w{k}")] == ["done", "done"]
    one = services["node-1"]
    # One deadline for the job (its sessions are bound to it): node-2 gives up at it, node-1
    # starts after it passed and still waits the 5 s a node gives any task it takes.
    t_instance, t_deadline = secrets.token_hex(32), deadline_in(1)
    services["node-2"].handle(_sign_raw(parts_old, 2, "T", t_deadline, t_instance))  # its note and round 1
    t_held = _held_back(hub, "T")
    late = threading.Thread(target=one.handle, args=(_sign_raw(parts_old, 1, "T", t_deadline, t_instance),))
    late.start()
    time.sleep(0.5)
    _stop(services["node-2"])  # an honest restart: same state directory, new identity key
    services["node-2"] = _start(hub, tmp_path, "node-2")
    parts = _parts(services)
    assert [r["status"] for r in _sign(hub, services, parts, "n0")] == ["done", "done"]
    u_instance, u_deadline = secrets.token_hex(32), deadline_in(1)
    services["node-2"].handle(_sign_raw(parts, 2, "U", u_deadline, u_instance))  # a note of the new process
    u_held = _held_back(hub, "U")
    for k in (1, 2):  # node-1 records node-2's counter moving on
        assert [r["status"] for r in _sign(hub, services, parts, f"n{k}")] == ["done", "done"]
    _let_through(hub, "T", t_held)  # the old process's note, at a lower counter
    late.join()
    assert hub.results["T-1"]["error"]["reason"] != "STALE_PEER", hub.results["T-1"]
    _let_through(hub, "U", u_held)  # the current process's older note
    one.handle(_sign_raw(parts, 1, "U", u_deadline, u_instance))
    assert hub.results["U-1"]["error"]["reason"] != "STALE_PEER", hub.results["U-1"]
    assert not one._caught
    assert [r["status"] for r in _sign(hub, services, parts, "after")] == ["done", "done"]
