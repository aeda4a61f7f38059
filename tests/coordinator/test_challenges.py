"""Verifier challenges through the coordinator (API.md §1.12): a node challenges another, the
challenged node follows its open challenges and registers evidence answering them, and the
challenger's long-poll returns that evidence. Every refusal is a precise 4xx."""

from __future__ import annotations

import base64
import concurrent.futures
import datetime as dt
import os
import time
from pathlib import Path

from fastapi.testclient import TestClient

from shardguard.channel import Challenge, binding, challenge_nonce, challenges_from_wire
from shardguard.coordinator.models import NodeChallenge
from shardguard.coordinator.service import utc_now
from shardguard.enclave.simulated import SimulatedPlatform

from .conftest import ADMIN, FakeNode, coord, run_dkg
from .test_api import err


def answer(node: FakeNode, platform: SimulatedPlatform) -> dict[str, object]:
    """What a real node does: read its open challenges, attest over them, register."""
    r = node.request("GET", f"/v1/nodes/{node.node_id}/challenges")
    assert r.status_code == 200, r.text
    items = r.json()["challenges"]
    nonce = challenge_nonce(challenges_from_wire(items))
    ev = platform.attest(binding(node.keys.card(), nonce))
    out = node.register(platform=ev.platform, evidence=ev.blob, evidence_nonce=nonce.hex(), challenges=items)
    assert out.status_code == 200, out.text
    return dict(out.json())


def test_challenge_answer_and_wait(client: TestClient, nodes: list[FakeNode], tmp_path: Path) -> None:
    a, b, c = nodes
    run_dkg(client, nodes)  # challengers are nodes with a job in common
    plat = SimulatedPlatform(state_dir=tmp_path)
    first = a.request("GET", f"/v1/nodes/{a.node_id}/challenges").json()
    assert first["challenges"] == []
    # Nobody answers within the wait: the record as it is, not answered.
    nonce_b = os.urandom(32)
    r = b.request("POST", f"/v1/nodes/{a.node_id}/challenges", {"nonce": nonce_b.hex(), "wait": 0})
    assert r.status_code == 200, r.text
    assert r.json()["answered"] is False and r.json()["node_id"] == "node-a" and r.json()["evidence_challenges"] is None
    now = a.request("GET", f"/v1/nodes/{a.node_id}/challenges").json()
    assert now["challenges"] == [{"from": "node-b", "nonce": nonce_b.hex()}] and now["digest"] != first["digest"]
    # A's follow of its challenges wakes on a new one (known digest given).
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        follow = pool.submit(
            a.request, "GET", f"/v1/nodes/{a.node_id}/challenges", params={"known": now["digest"], "wait": 10}
        )
        time.sleep(0.2)
        assert not follow.done()
        nonce_c = os.urandom(32)
        waiting = pool.submit(c.request, "POST", f"/v1/nodes/{a.node_id}/challenges", {"nonce": nonce_c.hex(), "wait": 10})
        listed = follow.result(timeout=10).json()
        assert listed["challenges"] == [{"from": "node-b", "nonce": nonce_b.hex()}, {"from": "node-c", "nonce": nonce_c.hex()}]
        assert listed["digest"] != now["digest"]
        time.sleep(0.2)
        assert not waiting.done()  # C waits for evidence answering its challenge
        answer(a, plat)
        got = waiting.result(timeout=10).json()
    assert got["answered"] is True
    assert challenges_from_wire(got["evidence_challenges"]) == (Challenge("node-b", nonce_b), Challenge("node-c", nonce_c))
    assert got["evidence_nonce"] == challenge_nonce([Challenge("node-b", nonce_b), Challenge("node-c", nonce_c)]).hex()
    assert base64.b64decode(got["peer_card"]) == a.keys.card().encode()
    # Unchanged digest: the follow waits its whole wait, then answers the same list.
    t0 = time.monotonic()
    same = a.request("GET", f"/v1/nodes/{a.node_id}/challenges", params={"known": listed["digest"], "wait": 0.3}).json()
    assert time.monotonic() - t0 >= 0.25 and same == listed
    # A newer challenge from B replaces its older one.
    nonce_b2 = os.urandom(32)
    assert b.request("POST", f"/v1/nodes/{a.node_id}/challenges", {"nonce": nonce_b2.hex()}).json()["answered"] is False
    items = a.request("GET", f"/v1/nodes/{a.node_id}/challenges").json()["challenges"]
    assert items == [{"from": "node-b", "nonce": nonce_b2.hex()}, {"from": "node-c", "nonce": nonce_c.hex()}]
    # What tasks and the node listing hand out carries the list the evidence answers.
    one = client.get("/v1/nodes/node-a", headers=ADMIN).json()
    assert one["evidence_challenges"] == got["evidence_challenges"] and one["attestation"]["bound_to_card"] is True
    key_id = run_dkg(client, nodes)
    r = client.post(f"/v1/keys/{key_id}/sign", json={"message_hex": "00"}, headers=ADMIN)
    assert r.status_code == 202, r.text
    task = b.next_task()
    assert task is not None
    mine = next(p for p in task["participants"] if p["node_id"] == "node-a")
    assert mine["evidence_challenges"] == got["evidence_challenges"] and mine["evidence_nonce"] == got["evidence_nonce"]


def test_challenge_refusals(client: TestClient, nodes: list[FakeNode]) -> None:
    a, b, _c = nodes
    path = f"/v1/nodes/{a.node_id}/challenges"
    # A node that shares no job with a cannot challenge it (it could fill a's 256 slots).
    err(b.request("POST", path, {"nonce": "00" * 32}), 403, "forbidden", "node_id")
    run_dkg(client, nodes)
    err(client.post(path, json={"nonce": "00" * 32}), 401, "missing_signature")
    err(b.request("POST", path, {"nonce": "00" * 31}), 422, "validation_error", "nonce")
    err(b.request("POST", path, {"nonce": "zz" * 32}), 422, "validation_error", "nonce")
    err(b.request("POST", path, {"nonce": "00" * 32, "wait": -1}), 422, "validation_error", "wait")
    err(b.request("POST", path, {"nonce": "00" * 32, "more": 1}), 422, "validation_error")
    err(a.request("POST", path, {"nonce": "00" * 32}), 422, "validation_error", "node_id")
    err(b.request("POST", "/v1/nodes/node-z/challenges", {"nonce": "00" * 32}), 404, "not_found", "node_id")
    # Only the node itself follows its challenges.
    err(b.request("GET", path), 403, "forbidden")
    err(client.get(path), 401, "missing_signature")


def test_registration_with_challenges_is_checked(client: TestClient, nodes: list[FakeNode], tmp_path: Path) -> None:
    a = nodes[0]
    items = [{"from": "node-b", "nonce": "11" * 32}]
    right = challenge_nonce(challenges_from_wire(items)).hex()
    err(a.register(evidence_nonce=os.urandom(32).hex(), challenges=items), 422, "validation_error", "evidence_nonce")
    err(a.register(evidence_nonce=right, challenges=[{"from": "node-b"}]), 422, "validation_error", "challenges[0]")
    err(a.register(evidence_nonce=right, challenges=[{"from": "B", "nonce": "11" * 32}]), 422, "validation_error",
        "challenges[0].from")  # fmt: skip
    dup = [*items, {"from": "node-b", "nonce": "22" * 32}]
    err(a.register(evidence_nonce=right, challenges=dup), 422, "validation_error", "challenges[1].from")
    too_many = [{"from": f"n{i}", "nonce": "00" * 32} for i in range(257)]
    err(a.register(evidence_nonce=right, challenges=too_many), 422, "validation_error", "challenges")
    ok = a.register(evidence_nonce=right, challenges=items)
    assert ok.status_code == 200, ok.text
    assert client.get("/v1/nodes/node-a", headers=ADMIN).json()["evidence_challenges"] == items


def test_old_challenges_are_swept(client: TestClient, nodes: list[FakeNode]) -> None:
    a, b, c = nodes
    run_dkg(client, nodes)
    for n in (b, c):
        assert n.request("POST", f"/v1/nodes/{a.node_id}/challenges", {"nonce": os.urandom(32).hex()}).status_code == 200
    service = coord(client)
    with service.db.write() as s:
        row = s.get(NodeChallenge, (a.node_id, b.node_id))
        assert row is not None
        row.created_at = utc_now() - dt.timedelta(seconds=service.settings.challenge_retention + 1)
    service.sweep()
    left = a.request("GET", f"/v1/nodes/{a.node_id}/challenges").json()["challenges"]
    assert [x["from"] for x in left] == ["node-c"]
