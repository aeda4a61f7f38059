"""A node signing in one step with nonces committed ahead (NodeService._sign_precommitted,
docs/NODE.md "Signing in one step"), two nodes in one process (test_service_tasks' harness)."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from typing import Any

import pytest

from shardguard.crypto.suites import suite_by_scheme
from shardguard.interop import verify_independently
from shardguard.node.audit import verify_chain
from shardguard.node.nonces import COMMITMENT_CONTEXT, commitment_message
from shardguard.node.service import NodeService

from .test_service_tasks import NODES, Hub, _run_all, _sign, _task, deadline_in, nodes  # noqa: F401 - nodes: the fixture

Stack = tuple[Hub, dict[str, NodeService], list[dict[str, Any]]]
G = suite_by_scheme("ed25519").group


def _warm(stack: Stack) -> None:
    hub, services, parts = stack
    for k in range(3):  # two-round signings: peers confirm each node's state; pools exist
        _sign(hub, services, parts, f"warm{k}")
    assert all(s._fresh for s in services.values())


def _commitments(services: dict[str, NodeService], count: int = 1) -> list[list[dict[str, Any]]]:
    """What the coordinator would hand out: ``count`` lists, one commitment of each node."""
    made: dict[str, list[dict[str, Any]]] = {}
    for nid in NODES:
        svc = services[nid]
        state = svc.nonces._schemes["ed25519"]
        with state.lock:
            fresh = state.pool.commit(count, now=time.monotonic())
        made[nid] = []
        for c in fresh:
            hiding, binding = G.encode(c.hiding), G.encode(c.binding)
            sig = svc.keys.sign(COMMITMENT_CONTEXT, commitment_message(nid, "ed25519", c.id, hiding, binding))
            made[nid].append({"id": c.id.hex(), "hiding": hiding.hex(), "binding": binding.hex(), "signature": sig.hex()})
    return [[{"index": i, **made[nid][k]} for i, nid in enumerate(NODES, start=1)] for k in range(count)]


def _entries(svc: NodeService, job: str) -> list[dict[str, Any]]:
    return [e for e in (json.loads(base64.b64decode(r["entry"])) for r in svc.audit.pending()) if e.get("job") == job]


def _signature(results: list[dict[str, Any]], k: int = 0) -> bytes:
    shares = [r["result"]["shares"][k] for r in results]
    assert len({s["r"] for s in shares}) == 1
    z = sum(G.scalar_decode(bytes.fromhex(s["z"])) for s in shares) % G.order
    return suite_by_scheme("ed25519").encode_signature(G.decode(bytes.fromhex(shares[0]["r"])), z)


def test_one_step_with_the_entry_durable_before_the_shares_leave(nodes: Stack) -> None:  # noqa: F811
    hub, services, parts = nodes
    _warm(nodes)
    message = secrets.token_bytes(40)
    lists = _commitments(services)
    posts_before = dict(hub.posts)
    results = _run_all(hub, services, parts, "sign", "pc1", {"message_hex": message.hex(), "commitments": lists}, 0)
    assert [r["status"] for r in results] == ["done", "done"], results
    assert all(r["entry_durable"] for r in results)
    assert hub.posts == posts_before  # nothing went to the peers: no round, no witness notes
    pk = services["node-1"].shares.load("k1").public.public_key_bytes
    assert verify_independently("ed25519", pk, message, _signature(results))
    for svc in services.values():
        (entry,) = _entries(svc, "pc1")
        assert entry["event"] == "signing" and entry["precommitted"] is True
        verify_chain(svc.audit.pending(), svc.card.identity_public_key)
    # The same commitments again (a replayed or duplicated task): our nonce is gone.
    again = _run_all(hub, services, parts, "sign", "pc2", {"message_hex": message.hex(), "commitments": lists}, 0)
    assert [r["status"] for r in again] == ["failed", "failed"]
    assert again[0]["error"]["reason"] == "NONCE_UNKNOWN"


def test_a_bundle_signs_every_message_in_one_step(nodes: Stack) -> None:  # noqa: F811
    hub, services, parts = nodes
    _warm(nodes)
    messages = [secrets.token_bytes(8) for _ in range(3)]
    bundle = [{"request_id": f"r{k}", "message_hex": m.hex()} for k, m in enumerate(messages)]
    results = _run_all(hub, services, parts, "bundle", "pcb", {"bundle": bundle, "commitments": _commitments(services, 3)}, 0)
    assert [r["status"] for r in results] == ["done", "done"], results
    pk = services["node-1"].shares.load("k1").public.public_key_bytes
    for k, m in enumerate(messages):
        assert verify_independently("ed25519", pk, m, _signature(results, k))


@pytest.mark.parametrize(
    "forge",
    ["peer signature", "peer point", "our point", "not fresh", "one list short", "ours twice", "scheme label", "alone"],
)
def test_a_refused_task_signs_nothing_and_spends_no_nonce(nodes: Stack, forge: str) -> None:  # noqa: F811
    hub, services, parts = nodes
    _warm(nodes)
    lists = _commitments(services)
    one = services["node-1"]
    pool = one.nonces._schemes["ed25519"].pool
    before = len(pool)
    mine, peer = lists[0][0], lists[0][1]
    other = G.encode(G.base_mul(7)).hex()
    if forge == "peer signature":  # a commitment the peer never made (the coordinator's own)
        peer["signature"] = one.keys.sign(COMMITMENT_CONTEXT, b"x").hex()
    elif forge == "peer point":
        peer["hiding"] = other  # signed over the old point: the signature no longer verifies
    elif forge == "our point":
        mine["binding"] = other
    elif forge == "not fresh":
        one._fresh = False
    params: dict[str, Any] = {"message_hex": "00", "commitments": [] if forge == "one list short" else lists}
    kind, participants = "sign", parts
    if forge == "ours twice":  # review finding: refused only after the entry was written
        kind = "bundle"
        twice = _commitments(services, 2)
        twice[1][0] = dict(twice[0][0])
        params = {"bundle": [{"request_id": f"r{k}", "message_hex": "00"} for k in range(2)], "commitments": twice}
    elif forge == "alone":  # one signer of a 2-of-2 key (review finding: refused after the entry)
        participants = parts[:1]
        params = {"message_hex": "00", "commitments": [lists[0][:1]]}
    raw = {"task_id": "x-1", "job_id": "x", "kind": kind, "scheme": "secp256k1" if forge == "scheme label" else "ed25519",
           "threshold": 2, "participants": participants, "you": {"index": 1}, "instance": secrets.token_hex(32),
           "key_id": "k1", "epoch": 0, "params": params, "deadline": deadline_in(60)}  # fmt: skip
    one.handle(raw)
    result = hub.results["x-1"]
    assert result["status"] == "failed", result
    expected = {"our point": "NONCE_MISMATCH", "not fresh": "ONE_STEP_UNAVAILABLE"}.get(forge, "TaskError")
    assert result["error"]["reason"] == expected, result
    assert not [e for e in _entries(one, "x") if e["event"] == "signing"]
    assert len(pool) >= before  # nothing spent (a mismatch leaves the pair: it was never used)


def test_a_signing_at_another_epoch_than_our_share_is_refused_saying_so(nodes: Stack) -> None:  # noqa: F811
    """A holder left on the previous epoch (a refresh it could not commit) refuses, naming the
    epochs, instead of making a share the coordinator would find wrong (API.md §1.13)."""
    hub, services, parts = nodes
    _warm(nodes)
    results = _run_all(hub, services, parts, "sign", "ep1", {"message_hex": "01", "commitments": _commitments(services)}, 1)
    for r in results:
        assert r["status"] == "failed" and r["error"]["reason"] == "TaskError", r
        assert "epoch 1" in r["error"]["detail"] and "epoch 0" in r["error"]["detail"]
    for svc in services.values():
        assert not [e for e in _entries(svc, "ep1") if e["event"] == "signing"]  # refused before the entry


def test_a_second_task_naming_a_commitment_in_use_is_refused_before_its_entry(nodes: Stack) -> None:  # noqa: F811
    """Review finding: two tasks naming one commitment (a coordinator handing it out twice)
    both passed the check and both wrote a ``signing`` entry; the second then failed to sign,
    its entry naming a payload never signed. The first now holds the pair from the check on:
    the second is refused (NONCE_UNKNOWN, as for a pair used already) before any entry."""
    hub, services, parts = nodes
    _warm(nodes)
    lists = _commitments(services)
    one = services["node-1"]
    inside, release = threading.Event(), threading.Event()
    sign = one.nonces.sign

    def slow_sign(*args: Any, **kwargs: Any) -> Any:
        inside.set()
        release.wait(10)
        return sign(*args, **kwargs)

    one.nonces.sign = slow_sign  # type: ignore[method-assign]
    task = _task(parts, "sign", 1, {"message_hex": "01", "commitments": lists}, "ja")
    first = threading.Thread(target=one.handle, args=(task,))
    first.start()
    assert inside.wait(10)
    one.handle(_task(parts, "sign", 1, {"message_hex": "02", "commitments": lists}, "jb"))
    release.set()
    first.join()
    assert hub.results["ja-1"]["status"] == "done", hub.results["ja-1"]
    second = hub.results["jb-1"]
    assert second["status"] == "failed" and second["error"]["reason"] == "NONCE_UNKNOWN", second
    assert [e["event"] for e in _entries(one, "jb")] == ["refused"]
    assert [e["event"] for e in _entries(one, "ja")] == ["signing"]
