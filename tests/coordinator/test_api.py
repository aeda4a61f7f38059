"""The coordinator's API, run against SQLite and a real PostgreSQL server (every test twice)."""

from __future__ import annotations

import base64
import concurrent.futures
import datetime as dt
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import false as sa_false
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from shardguard.channel.identity import NodeKeys, binding
from shardguard.coordinator import wire
from shardguard.coordinator.models import ApiToken, MailboxMessage, Node, Task
from shardguard.coordinator.service import utc_now
from shardguard.coordinator.settings import Settings
from shardguard.enclave.simulated import SimulatedPlatform

from .conftest import ADMIN, BOOT, FakeNode, coord, dkg_result, run_dkg, sign_result, token


def err(r: Any, status: int, code: str | None = None, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    e = body["error"]
    assert {"code", "message", "field"} <= set(e)
    assert "Traceback" not in r.text
    if code is not None:
        assert e["code"] == code, e
    if field is not None:
        assert e["field"] == field, e
    return dict(e)


# -- service endpoints ---------------------------------------------------------------------------
def test_health_docs_openapi(client: TestClient) -> None:
    r = client.get("/v1/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["database"] == "ok"
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    for path in ("/v1/keys", "/v1/keys/{key_id}/sign", "/v1/nodes/register", "/v1/nodes/{node_id}/tasks", "/v1/audit"):
        assert path in spec["paths"], path
    assert all(p.startswith("/v1/") or p == "/metrics" for p in spec["paths"])


def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    err(client.get("/v1/nope"), 404, "not_found")
    err(client.put("/v1/keys", headers=ADMIN), 405, "method_not_allowed")


def test_internal_errors_never_show_a_stack_trace(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(coord(client), "list_keys", boom)
    e = err(client.get("/v1/keys", headers=ADMIN), 500, "internal")
    assert "secret internals" not in json.dumps(e)

    def down() -> None:
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("secret dsn"))

    monkeypatch.setattr(coord(client), "list_keys", down)
    e = err(client.get("/v1/keys", headers=ADMIN), 503, "unavailable")
    assert "secret" not in json.dumps(e)


# -- client authentication -----------------------------------------------------------------------
def test_bearer_tokens_and_scopes(client: TestClient, nodes: list[FakeNode]) -> None:
    err(client.get("/v1/keys"), 401, "unauthorized")
    err(client.get("/v1/keys", headers={"Authorization": "Bearer nope"}), 401, "unauthorized")
    err(client.get("/v1/keys", headers={"Authorization": "Basic Zm9vOmJhcg=="}), 401, "unauthorized")
    reader = token(client, "read")
    keys = token(client, "keys:write")
    signer = token(client, "sign:write")
    body = {"scheme": "ed25519", "threshold": 2, "nodes": [n.node_id for n in nodes]}
    assert client.get("/v1/keys", headers=reader).status_code == 200
    assert "keys:write" in err(client.post("/v1/keys", json=body, headers=reader), 403, "forbidden")["message"]
    err(client.post("/v1/keys", json=body, headers=signer), 403)
    err(client.get("/v1/keys", headers=keys), 403)
    err(client.post("/v1/tokens", json={"scopes": ["read"]}, headers=reader), 403)
    r = client.post("/v1/keys", json=body, headers=keys)
    assert r.status_code == 202
    key_id = r.json()["key_id"]
    err(client.post(f"/v1/keys/{key_id}/sign", json={"message_hex": "00"}, headers=keys), 403)
    # Tokens are listed without secrets, revoked for good, and stored only as SHA-256.
    listed = client.get("/v1/tokens", headers=ADMIN).json()
    assert len(listed) == 3 and all("token" not in t and "token_hash" not in t for t in listed)
    rid = next(t["token_id"] for t in listed if t["scopes"] == ["read"])
    assert client.delete(f"/v1/tokens/{rid}", headers=ADMIN).json()["revoked_at"] is not None
    err(client.get("/v1/keys", headers=reader), 401, "unauthorized")
    err(client.delete("/v1/tokens/tok_missing", headers=ADMIN), 404, "not_found", "token_id")
    with coord(client).db.read() as s:
        stored = [t.token_hash for t in s.scalars(select(ApiToken))]
    secret = reader["Authorization"].split()[1]
    assert secret not in stored and all(len(h) == 64 for h in stored)


def test_cli_created_admin_token(db_url: str, make_client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from shardguard.coordinator.server import main

    assert main(["token", "create", "--scopes", "admin", "--label", "first", "--db", db_url]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["scopes"] == ["admin"] and created["token"].startswith("sgt_")
    client = make_client(bootstrap_token=None)
    assert client.get("/v1/tokens", headers={"Authorization": f"Bearer {created['token']}"}).status_code == 200
    err(client.get("/v1/tokens", headers=ADMIN), 401)  # no bootstrap token configured here
    assert main(["token", "create", "--scopes", "root", "--db", db_url]) == 2


@pytest.mark.parametrize("value", ["0", "-5", "nan", "3001", "1e9", "soon"])
def test_cli_refuses_a_job_timeout_nodes_would_refuse(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Nodes refuse a task whose deadline lies more than an hour ahead (node/sessions.py)."""
    from shardguard.coordinator.server import _parser

    with pytest.raises(SystemExit) as e:
        _parser().parse_args(["run", "--job-timeout", value])
    assert e.value.code == 2 and "--job-timeout" in capsys.readouterr().err
    assert _parser().parse_args(["run", "--job-timeout", "3000"]).job_timeout == 3000.0
    if value not in ("soon",):  # and for an embedded coordinator, its Settings
        with pytest.raises(ValueError, match="job_timeout"):
            Settings(job_timeout=float(value))


# -- validation ----------------------------------------------------------------------------------
KEY_CASES: list[tuple[Any, str]] = [
    ({"scheme": "rsa", "threshold": 2, "nodes": ["node-a", "node-b"]}, "scheme"),
    ({"scheme": "ed25519", "threshold": "2", "nodes": ["node-a", "node-b"]}, "threshold"),
    ({"scheme": "ed25519", "threshold": 0, "nodes": ["node-a", "node-b"]}, "threshold"),
    ({"scheme": "ed25519", "threshold": 3, "nodes": ["node-a", "node-b"]}, "threshold"),
    ({"scheme": "ed25519", "threshold": 1, "nodes": ["node-a", "node-b"]}, "threshold"),
    ({"scheme": "ecdsa", "threshold": 1, "nodes": ["node-a"], "allow_single": True}, "threshold"),
    ({"scheme": "ed25519", "threshold": 2, "nodes": ["node-a", "Node B"]}, "nodes[1]"),
    ({"scheme": "ed25519", "threshold": 2, "nodes": ["node-a", "node-x"]}, "nodes[1]"),
    ({"scheme": "ed25519", "threshold": 2, "nodes": ["node-a", "node-a"]}, "nodes[1]"),
    ({"scheme": "ed25519", "threshold": 2, "nodes": []}, "nodes"),
    ({"scheme": "ed25519", "threshold": 2}, "nodes"),
    ({"scheme": "ed25519", "threshold": 2, "nodes": ["node-a", "node-b"], "allow_single": "yes"}, "allow_single"),
    ({"scheme": "ed25519", "threshold": 2, "nodes": ["node-a", "node-b"], "colour": "red"}, "colour"),
    ([1, 2], "body"),
]


def test_key_validation_names_the_field(client: TestClient, nodes: list[FakeNode]) -> None:
    for body, field in KEY_CASES:
        err(client.post("/v1/keys", json=body, headers=ADMIN), 422, "validation_error", field)
    assert client.get("/v1/keys", headers=ADMIN).json() == []
    r = client.post(
        "/v1/keys", json={"scheme": "ed25519", "threshold": 1, "nodes": ["node-a"], "allow_single": True}, headers=ADMIN
    )
    assert r.status_code == 202


def test_malformed_json_is_422(client: TestClient) -> None:
    r = client.post("/v1/keys", content=b"{not json", headers={**ADMIN, "Content-Type": "application/json"})
    assert "JSON" in err(r, 422, "validation_error")["message"]


SIGN_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("ecdsa", {"digest_hex": "ab" * 31}, "digest_hex"),
    ("ecdsa", {"digest_hex": "ab" * 33}, "digest_hex"),
    ("ecdsa", {"digest_hex": "zz" * 32}, "digest_hex"),
    ("ecdsa", {"digest_hex": 5}, "digest_hex"),
    ("ecdsa", {"message_hex": "ab" * 32}, "message_hex"),
    ("ecdsa", {}, "digest_hex"),
    ("ed25519", {"digest_hex": "ab" * 32}, "digest_hex"),
    ("ed25519", {"message_hex": "abc"}, "message_hex"),
    ("ed25519", {"message_hex": "00" * (64 * 1024 + 1)}, "message_hex"),
    ("ed25519", {"message_hex": "00", "path": "m/0"}, "path"),
    ("bip340", {"message_hex": "00", "path": "m/0'"}, "path"),
    ("bip340", {"message_hex": "00", "path": "m/2147483648"}, "path"),
    ("bip340", {"message_hex": "00", "path": "0/1"}, "path"),
    ("ecdsa", {"digest_hex": "ab" * 32, "signers": ["node-a", "node-x"]}, "signers[1]"),
    ("ecdsa", {"digest_hex": "ab" * 32, "signers": ["node-a"]}, "signers"),
    ("ecdsa", {"digest_hex": "ab" * 32, "signers": ["node-a", "node-a"]}, "signers[1]"),
    ("ecdsa", {"digest_hex": "ab" * 32, "extra": 1}, "extra"),
]


def test_sign_validation_names_the_field(client: TestClient, nodes: list[FakeNode]) -> None:
    keys = {scheme: run_dkg(client, nodes, scheme) for scheme in ("ecdsa", "ed25519", "bip340")}
    for scheme, body, field in SIGN_CASES:
        err(client.post(f"/v1/keys/{keys[scheme]}/sign", json=body, headers=ADMIN), 422, "validation_error", field)
    assert client.get("/v1/requests", params={"status": "queued"}, headers=ADMIN).json() == []
    bip340_path = client.post(f"/v1/keys/{keys['bip340']}/sign", json={"message_hex": "", "path": "m/0"}, headers=ADMIN)
    err(bip340_path, 422, "validation_error", "path")
    ok = client.post(f"/v1/keys/{keys['ecdsa']}/sign", json={"digest_hex": "ab" * 32, "path": "m/0/2147483647"}, headers=ADMIN)
    assert ok.status_code == 202


def test_an_idempotency_key_makes_a_retry_answer_the_first_request(
    client: TestClient, nodes: list[FakeNode], monkeypatch: pytest.MonkeyPatch
) -> None:
    """API.md §2: the same ``Idempotency-Key`` from the same token answers the first request (a
    retry after a lost answer signs once, makes one key); with another request it is refused;
    other tokens have their own keys; without it, every call is a new request."""
    key_id = run_dkg(client, nodes)
    body = {"message_hex": "00", "signers": ["node-a", "node-b"]}
    h = ADMIN | {"Idempotency-Key": "pay-42"}
    first = client.post(f"/v1/keys/{key_id}/sign", json=body, headers=h)
    assert first.status_code == 202
    again = client.post(f"/v1/keys/{key_id}/sign", json=body, headers=h)
    assert again.status_code == 202 and again.json() == first.json()
    err(client.post(f"/v1/keys/{key_id}/sign", json=body | {"message_hex": "01"}, headers=h), 422, "idempotency_key_reused",
        "Idempotency-Key")  # fmt: skip
    other = token(client, "sign:write") | {"Idempotency-Key": "pay-42"}
    assert client.post(f"/v1/keys/{key_id}/sign", json=body, headers=other).json() != first.json()
    assert client.post(f"/v1/keys/{key_id}/sign", json=body, headers=ADMIN).json() != first.json()
    err(client.post(f"/v1/keys/{key_id}/sign", json=body, headers=ADMIN | {"Idempotency-Key": "a b"}), 422, "validation_error")
    err(client.post(f"/v1/keys/{key_id}/sign", json=body, headers=ADMIN | {"Idempotency-Key": "k" * 129}), 422,
        "validation_error")  # fmt: skip
    # With ?wait the retry long-polls the same request.
    waited = client.post(f"/v1/keys/{key_id}/sign", json=body, headers=h, params={"wait": 0.05})
    assert waited.status_code == 200 and waited.json()["request_id"] == first.json()["request_id"]
    # Key creation: one key per idempotency key.
    create = {"scheme": "ed25519", "threshold": 2, "nodes": ["node-a", "node-b"]}
    k1 = client.post("/v1/keys", json=create, headers=ADMIN | {"Idempotency-Key": "new-key-1"})
    k2 = client.post("/v1/keys", json=create, headers=ADMIN | {"Idempotency-Key": "new-key-1"})
    assert k1.status_code == k2.status_code == 202 and k1.json() == k2.json()
    single = create | {"threshold": 1, "allow_single": True}
    err(client.post("/v1/keys", json=single, headers=ADMIN | {"Idempotency-Key": "new-key-1"}), 422, "idempotency_key_reused")
    # Refresh and repair: the same, each under its own key.
    r1 = client.post(f"/v1/keys/{key_id}/refresh", headers=ADMIN | {"Idempotency-Key": "rot-1"})
    r2 = client.post(f"/v1/keys/{key_id}/refresh", headers=ADMIN | {"Idempotency-Key": "rot-1"})
    assert r1.status_code == r2.status_code == 202 and r1.json() == r2.json()
    fix = {"lost": "node-c", "helpers": ["node-a", "node-b"]}
    p1 = client.post(f"/v1/keys/{key_id}/repair", json=fix, headers=ADMIN | {"Idempotency-Key": "fix-1"})
    p2 = client.post(f"/v1/keys/{key_id}/repair", json=fix, headers=ADMIN | {"Idempotency-Key": "fix-1"})
    assert p1.status_code == p2.status_code == 202 and p1.json() == p2.json() != r1.json()
    err(client.post(f"/v1/keys/{key_id}/repair", json=fix | {"lost": "node-b", "helpers": ["node-a", "node-c"]},
                    headers=ADMIN | {"Idempotency-Key": "fix-1"}), 422, "idempotency_key_reused")  # fmt: skip
    # Two retries racing: the later one looked before the first committed, so its insert hits
    # the unique index; it looks again and answers the first request.
    from shardguard.coordinator import service as service_module

    coordinator = coord(client)
    real_submit, real_stmt = coordinator._submit_sign, service_module._JOB_BY_IDEMPOTENCY

    def looked_too_early(*args: Any) -> Any:
        monkeypatch.setattr(service_module, "_JOB_BY_IDEMPOTENCY", real_stmt.where(sa_false()))
        try:
            return real_submit(*args)
        finally:
            monkeypatch.setattr(service_module, "_JOB_BY_IDEMPOTENCY", real_stmt)
            monkeypatch.setattr(coordinator, "_submit_sign", real_submit)

    monkeypatch.setattr(coordinator, "_submit_sign", looked_too_early)
    assert client.post(f"/v1/keys/{key_id}/sign", json=body, headers=h).json() == first.json()
    assert coordinator._submit_sign == real_submit  # the stale look-up ran (and was undone)


def test_sign_with_wait_reads_a_new_request_only_once_woken(
    make_client: Any, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    """``POST …/sign?wait`` on SQLite: a request this call created cannot have ended, so the
    long-poll's first read is after a wake-up (here: its deadline, nothing happens). On
    PostgreSQL it reads at once too (another replica may have ended it already). An idempotent
    replay of a request that ended answers at once (from the record kept when a report on this
    replica ended it)."""
    client = make_client(poll_interval=5.0)
    nodes = [FakeNode(client, f"node-{c}") for c in "abc"]
    for n in nodes:
        assert n.register().status_code == 200
    key_id = run_dkg(client, nodes)
    coordinator = coord(client)
    reads: list[str] = []
    real_get = coordinator.get_request

    def counted(request_id: str) -> dict[str, Any]:
        reads.append(request_id)
        return real_get(request_id)

    monkeypatch.setattr(coordinator, "get_request", counted)
    body = {"message_hex": "aa", "signers": ["node-a", "node-b"]}
    h = ADMIN | {"Idempotency-Key": "wait-once"}
    r = client.post(f"/v1/keys/{key_id}/sign", json=body, headers=h, params={"wait": 0.2})
    assert r.status_code == 200 and r.json()["status"] in ("queued", "running")
    # SQLite: one read, at the deadline, not one before it too; PostgreSQL: both.
    assert reads == [r.json()["request_id"]] * (2 if db_url.startswith("postgresql") else 1)
    # The signers finish it; a retry under the same key then answers at once with the result.
    tasks = [n.next_task() for n in nodes[:2]]
    result = sign_result(tasks[0])  # type: ignore[arg-type]  # one signature, reported by both
    for n, task in zip(nodes[:2], tasks, strict=True):
        assert task is not None and n.report(task["task_id"], result=result).status_code == 200
    reads.clear()
    t0 = time.monotonic()
    again = client.post(f"/v1/keys/{key_id}/sign", json=body, headers=h, params={"wait": 30})
    assert again.status_code == 200 and again.json()["status"] == "done"
    # Ended by a report on this replica: answered from the record kept then, not read back.
    assert time.monotonic() - t0 < 4.0 and reads == []
    assert again.json() == real_get(again.json()["request_id"])

def test_sign_needs_an_active_key(client: TestClient, nodes: list[FakeNode]) -> None:
    err(client.post("/v1/keys/key_missing/sign", json={"message_hex": "00"}, headers=ADMIN), 404, "not_found", "key_id")
    r = client.post("/v1/keys", json={"scheme": "ed25519", "threshold": 2, "nodes": ["node-a", "node-b"]}, headers=ADMIN)
    key_id = r.json()["key_id"]
    err(client.post(f"/v1/keys/{key_id}/sign", json={"message_hex": "00"}, headers=ADMIN), 409, "key_not_active")
    err(client.post(f"/v1/keys/{key_id}/refresh", headers=ADMIN), 409, "key_not_active")
    err(client.get("/v1/requests/req_missing", headers=ADMIN), 404, "not_found")


def test_body_size_limit(make_client: Any) -> None:
    client = make_client(max_body_bytes=2048)
    big = {"scheme": "ed25519", "threshold": 2, "nodes": ["n" * 60] * 60}
    err(client.post("/v1/keys", json=big, headers=ADMIN), 413, "payload_too_large")

    def chunks() -> Any:  # no Content-Length: counted while streaming
        for _ in range(10):
            yield b" " * 1000

    err(
        client.post("/v1/keys", content=chunks(), headers={**ADMIN, "Content-Type": "application/json"}), 413, "payload_too_large"
    )
    # Under the limit the request goes through to validation as usual.
    err(client.post("/v1/keys", json={"scheme": "x"}, headers=ADMIN), 422)


# -- node registration and signed requests -------------------------------------------------------
def test_registration_and_node_listing(client: TestClient) -> None:
    a = FakeNode(client, "node-a")
    r = a.register()
    assert r.status_code == 200, r.text
    att = r.json()["attestation"]
    assert att["informational"] is True and att["verdict"] == "refused" and att["reason"] in ("MALFORMED", "TRUNCATED")
    reader = token(client, "read")
    listed = client.get("/v1/nodes", headers=reader).json()
    assert [n["node_id"] for n in listed] == ["node-a"]
    assert listed[0]["identity_public_key"] == a.keys.card().identity_public_key.hex() and listed[0]["alive"] is True
    one = client.get("/v1/nodes/node-a", headers=reader).json()
    assert base64.b64decode(one["peer_card"]) == a.keys.card().encode()
    assert base64.b64decode(one["evidence"]) == b"not evidence"
    err(client.get("/v1/nodes/node-z", headers=reader), 404, "not_found")
    err(a.register(platform="tpm"), 422, "validation_error", "platform")
    err(a.register(evidence_nonce="00" * 15), 422, "validation_error", "evidence_nonce")
    err(a.register(evidence_nonce="0"), 422, "validation_error", "evidence_nonce")
    enroll = lambda h: h.update(Authorization=f"Bearer {BOOT}")  # noqa: E731
    body = {"peer_card": "AAAA", "platform": "nitro", "evidence": ""}
    e = err(a.request("POST", "/v1/nodes/register", body, tamper=enroll), 422)
    assert e["field"] == "peer_card"
    body["peer_card"] = "!!"
    err(a.request("POST", "/v1/nodes/register", body, tamper=enroll), 422, field="peer_card")


def test_registration_needs_an_enrollment_token(client: TestClient) -> None:
    """Review finding: anyone could register as an existing node id and take it over (its
    running jobs failed, its tasks, mailbox and audit mirror went to the newcomer's key)."""
    a = FakeNode(client, "node-a")
    assert a.register(enroll=token(client, "nodes:register")["Authorization"].split()[1]).status_code == 200
    before = client.get("/v1/nodes/node-a", headers=ADMIN).json()["identity_public_key"]
    thief = FakeNode(client, "node-a")  # same id, another key
    err(thief.register(enroll=None), 401, "unauthorized")
    err(thief.register(enroll="sgt_not-a-token"), 401, "unauthorized")
    err(thief.register(enroll=token(client, "read", "sign:write", "keys:write")["Authorization"].split()[1]), 403, "forbidden")
    assert client.get("/v1/nodes/node-a", headers=ADMIN).json()["identity_public_key"] == before
    assert a.next_task() is None  # the node's own key still works


def test_a_node_id_is_bound_to_the_token_that_enrolled_it(client: TestClient) -> None:
    """Second review: one node's enrollment token (a corrupt node has its own) must not
    register another node's id. The enrolling token may (a restart), and so may an admin."""
    tok_a = token(client, "nodes:register")["Authorization"].split()[1]
    tok_b = token(client, "nodes:register")["Authorization"].split()[1]
    assert FakeNode(client, "node-a").register(enroll=tok_a).status_code == 200
    assert FakeNode(client, "node-b").register(enroll=tok_b).status_code == 200
    err(FakeNode(client, "node-a").register(enroll=tok_b), 403, "forbidden", "node_id")
    restarted = FakeNode(client, "node-a")
    assert restarted.register(enroll=tok_a).json()["generation"] == 2
    assert FakeNode(client, "node-a").register(enroll=BOOT).json()["generation"] == 3  # an admin may
    err(FakeNode(client, "node-a").register(enroll=tok_b), 403, "forbidden", "node_id")  # still bound to a


def test_registration_with_simulated_evidence(client: TestClient, tmp_path: Path) -> None:
    a = FakeNode(client, "node-a")
    nonce = os.urandom(32)
    evidence = SimulatedPlatform(state_dir=tmp_path).attest(binding(a.keys.card(), nonce))
    r = a.register(platform=evidence.platform, evidence=evidence.blob, evidence_nonce=nonce.hex())
    att = r.json()["attestation"]
    assert att["verdict"] == "verified" and att["simulated"] is True and att["bound_to_card"] is True
    assert len(att["measurements"]["pcr0"]) == 96
    b = FakeNode(client, "node-b")  # someone else's evidence: genuine, but not bound to this card
    att_b = b.register(platform=evidence.platform, evidence=evidence.blob, evidence_nonce=nonce.hex()).json()["attestation"]
    assert att_b["verdict"] == "verified" and att_b["bound_to_card"] is False


def test_signed_request_refusals(client: TestClient, nodes: list[FakeNode]) -> None:
    a, b, _c = nodes
    path = f"/v1/nodes/{a.node_id}/tasks"
    assert a.request("GET", path).status_code == 200
    err(client.get(path), 401, "missing_signature")
    err(a.request("GET", path, sign_as=b.keys, tamper=lambda h: h.update({"X-ShardGuard-Node": "node-a"})), 401, "bad_signature")
    err(a.request("GET", path, timestamp=int(time.time()) - 120), 401, "stale_timestamp")
    err(a.request("GET", path, timestamp=int(time.time()) + 120), 401, "stale_timestamp")

    nonce = os.urandom(16)
    assert a.request("GET", path, nonce=nonce).status_code == 200
    err(a.request("GET", path, nonce=nonce), 401, "replayed_nonce")
    err(a.request("GET", path, tamper=lambda h: h.update({"X-ShardGuard-Nonce": "xyz"})), 401, "malformed_signature")
    err(a.request("GET", path, tamper=lambda h: h.update({"X-ShardGuard-Timestamp": "01"})), 401, "malformed_signature")
    err(a.request("GET", path, tamper=lambda h: h.update({"X-ShardGuard-Node": b.node_id})), 401, "bad_signature")
    stranger = FakeNode(client, "node-z")
    err(stranger.request("GET", "/v1/nodes/node-z/tasks"), 401, "unknown_node")
    # A's valid signature on B's task queue: authenticated, but not allowed.
    err(a.request("GET", f"/v1/nodes/{b.node_id}/tasks"), 403, "forbidden")
    # The query string is signed: the same signature with another wait is refused.
    headers: dict[str, str] = {}

    def keep(h: dict[str, str]) -> None:
        headers.update(h)

    a.request("GET", path, params={"wait": 0}, tamper=keep)
    headers["X-ShardGuard-Nonce"] = os.urandom(16).hex()
    err(client.get(path + "?wait=0", headers=headers), 401, "bad_signature")
    # Registration must be signed by the key on the card it presents.
    body = {"peer_card": base64.b64encode(a.keys.card().encode()).decode(), "platform": "nitro", "evidence": ""}
    err(a.request("POST", "/v1/nodes/register", body, sign_as=b.keys, tamper=lambda h: h.update(Authorization=f"Bearer {BOOT}")),
        401, "bad_signature")  # fmt: skip
    metrics = client.get("/metrics").text
    assert 'shardguard_node_auth_failures_total{reason="replayed_nonce"} 1.0' in metrics


def test_a_restarted_node_fails_its_running_jobs(client: TestClient, nodes: list[FakeNode]) -> None:
    a, b, _c = nodes
    r = client.post("/v1/keys", json={"scheme": "ed25519", "threshold": 2, "nodes": [n.node_id for n in nodes]}, headers=ADMIN)
    rid = r.json()["request_id"]
    assert a.next_task() is not None
    old = a.keys
    a.restart()
    assert a.register().json()["generation"] == 2
    req = client.get(f"/v1/requests/{rid}", headers=ADMIN).json()
    assert req["status"] == "failed"
    assert req["error"]["reason"] == "node_restarted" and req["error"]["culprits"] == ["node-a"]
    assert client.get(f"/v1/keys/{r.json()['key_id']}", headers=ADMIN).json()["status"] == "failed"
    err(a.request("GET", "/v1/nodes/node-a/tasks", sign_as=old), 401, "bad_signature")
    assert b.next_task() is None  # b's queued task was cancelled


def test_a_replica_with_a_stale_node_key_refuses_the_old_key_and_learns_the_new(make_client: Any) -> None:
    """Each replica keeps the node keys it read; the nonce insert re-checks the key, so a key
    replaced through another replica is refused at once and the new one is learned."""
    one, two, three = make_client(), make_client(), make_client()
    a = FakeNode(one, "node-a")
    assert a.register().status_code == 200
    path = "/v1/nodes/node-a/tasks"
    for replica in (two, three):  # both now hold the first key
        assert a.request("GET", path, client=replica).status_code == 200
    old = a.keys
    a.restart()
    assert a.register().json()["generation"] == 2  # through replica one
    # two: the new key does not verify with the stale one, so it reads the key again
    assert a.request("GET", path, client=two).status_code == 200
    err(a.request("GET", path, sign_as=old, client=two), 401, "bad_signature")
    # three: the old key verifies with its stale copy, but the nonce insert checks the current key
    err(a.request("GET", path, sign_as=old, client=three), 401, "bad_signature")
    assert a.request("GET", path, client=three).status_code == 200
    err(a.request("GET", path, sign_as=old, client=one), 401, "bad_signature")


# -- tasks and jobs ------------------------------------------------------------------------------
def test_dkg_tasks_are_handed_out_once_and_complete(client: TestClient, nodes: list[FakeNode]) -> None:
    r = client.post("/v1/keys", json={"scheme": "bip340", "threshold": 2, "nodes": [n.node_id for n in nodes]}, headers=ADMIN)
    assert r.status_code == 202
    key_id, rid = r.json()["key_id"], r.json()["request_id"]
    assert client.get(f"/v1/keys/{key_id}", headers=ADMIN).json()["status"] == "pending"
    req = client.get(f"/v1/requests/{rid}", headers=ADMIN).json()
    assert req["status"] == "running" and req["kind"] == "dkg" and req["attempts"] == 1
    tasks = {}
    for i, n in enumerate(nodes):
        t = n.next_task()
        assert t is not None
        assert t["job_id"] == rid and t["kind"] == "dkg" and t["scheme"] == "bip340" and t["threshold"] == 2
        assert t["you"] == {"node_id": n.node_id, "index": i + 1}
        assert [(p["node_id"], p["index"]) for p in t["participants"]] == [("node-a", 1), ("node-b", 2), ("node-c", 3)]
        for p, peer in zip(t["participants"], nodes):
            assert base64.b64decode(p["peer_card"]) == peer.keys.card().encode() and p["platform"] == "nitro"
            if peer is n:  # its own evidence is named by digest (API.md §1.3, Evidence by reference)
                assert p["evidence_sha256"] == hashlib.sha256(b"not evidence").hexdigest() and "evidence" not in p
            else:
                assert base64.b64decode(p["evidence"]) == b"not evidence"
        assert len(bytes.fromhex(t["instance"])) == 32
        tasks[n.node_id] = t
        assert n.next_task() is None  # handed out once
    assert len({t["instance"] for t in tasks.values()}) == 1
    statuses = [p["task_status"] for p in client.get(f"/v1/requests/{rid}", headers=ADMIN).json()["participants"]]
    assert statuses == ["running"] * 3
    package = {"public_key": "aa" * 32, "verifying_shares": {"1": "bb" * 33}}
    for n in nodes[:2]:
        assert n.report(tasks[n.node_id]["task_id"], result=package).json() == {"task_status": "done", "job_status": "running"}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a node waiting for the whole job's outcome
        fut = pool.submit(nodes[0].request, "GET", f"/v1/jobs/{rid}", params={"wait": 10})
        time.sleep(0.2)
        assert nodes[2].report(tasks["node-c"]["task_id"], result=package).json()["job_status"] == "done"
        view = fut.result(timeout=10).json()
    assert view["job_id"] == rid and view["status"] == "done" and view["result"] == package
    assert [p["task_status"] for p in view["participants"]] == ["done"] * 3
    outsider = FakeNode(client, "node-d")
    outsider.register()
    err(outsider.request("GET", f"/v1/jobs/{rid}"), 403, "forbidden")
    err(outsider.request("GET", "/v1/jobs/req_missing"), 404, "not_found")
    req = client.get(f"/v1/requests/{rid}", headers=ADMIN).json()
    assert req["status"] == "done" and req["result"] == package and req["error"] is None
    key = client.get(f"/v1/keys/{key_id}", headers=token(client, "read")).json()
    assert key["status"] == "active" and key["public_key"] == "aa" * 32 and key["epoch"] == 0
    assert key["nodes"] == [
        {"node_id": "node-a", "index": 1},
        {"node_id": "node-b", "index": 2},
        {"node_id": "node-c", "index": 3},
    ]
    assert [k["key_id"] for k in client.get("/v1/keys", headers=ADMIN).json()] == [key_id]


def test_sign_with_default_and_chosen_signers(client: TestClient, nodes: list[FakeNode]) -> None:
    key_id = run_dkg(client, nodes, "ecdsa")
    a, b, c = nodes
    r = client.post(
        f"/v1/keys/{key_id}/sign", json={"digest_hex": "cd" * 32, "path": "m/0/7"}, headers=token(client, "sign:write")
    )
    assert r.status_code == 202
    rid = r.json()["request_id"]
    ta, tb = a.next_task(), b.next_task()
    assert c.next_task() is None
    assert ta is not None and tb is not None
    assert ta["params"] == {"digest_hex": "cd" * 32, "path": "m/0/7", "signers": ["node-a", "node-b"]}
    assert ta["public_key"] == dkg_result("ecdsa")["public_key"] and ta["epoch"] == 0
    assert [p["node_id"] for p in ta["participants"]] == ["node-a", "node-b"]
    assert [p["node_id"] for p in ta["committee"]] == ["node-a", "node-b", "node-c"]
    sig = sign_result(ta)
    assert sign_result(tb) == sig  # RFC 6979: the same signature
    a.report(ta["task_id"], result=sig)
    # A waiting client is woken by the last report.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(client.get, f"/v1/requests/{rid}", params={"wait": 10}, headers=ADMIN)
        time.sleep(0.2)
        b.report(tb["task_id"], result=sig)
        t0 = time.monotonic()
        done = fut.result(timeout=10).json()
        assert time.monotonic() - t0 < 3
    assert done["status"] == "done" and done["result"] == sig
    r = client.post(f"/v1/keys/{key_id}/sign", json={"digest_hex": "cd" * 32, "signers": ["node-c", "node-b"]}, headers=ADMIN)
    assert r.status_code == 202
    assert a.next_task() is None
    tc = c.next_task()
    assert tc is not None and tc["params"]["signers"] == ["node-b", "node-c"] and tc["you"]["index"] == 3


def test_default_signers_skip_silent_nodes(client: TestClient, nodes: list[FakeNode]) -> None:
    key_id = run_dkg(client, nodes)
    with coord(client).db.write() as s:
        s.execute(update(Node).where(Node.id == "node-a").values(last_seen=utc_now() - dt.timedelta(hours=1)))
    r = client.post(f"/v1/keys/{key_id}/sign", json={"message_hex": "68656c6c6f"}, headers=ADMIN)
    req = client.get(f"/v1/requests/{r.json()['request_id']}", headers=ADMIN).json()
    assert req["params"]["signers"] == ["node-b", "node-c"]


def test_disagreeing_results_fail_the_job(client: TestClient, nodes: list[FakeNode]) -> None:
    key_id = run_dkg(client, nodes)
    rid = client.post(
        f"/v1/keys/{key_id}/sign", json={"message_hex": "00", "signers": [n.node_id for n in nodes]}, headers=ADMIN
    ).json()["request_id"]
    tasks = [n.next_task() for n in nodes]
    assert all(t is not None for t in tasks)
    first, other = sign_result(tasks[0]), sign_result(tasks[0])  # FROST: two valid signatures
    assert first != other
    for n, t, result in zip(nodes, tasks, [first, first, other]):
        n.report(t["task_id"], result=result)  # type: ignore[index]
    req = client.get(f"/v1/requests/{rid}", headers=ADMIN).json()
    assert req["status"] == "failed"
    assert req["error"]["reason"] == "result_mismatch" and req["error"]["culprits"] == ["node-c"]


def test_a_failed_task_fails_the_job_with_its_reason(client: TestClient, nodes: list[FakeNode]) -> None:
    key_id = run_dkg(client, nodes)
    a, b, _c = nodes
    rid = client.post(f"/v1/keys/{key_id}/sign", json={"message_hex": "00"}, headers=ADMIN).json()["request_id"]
    ta, tb = a.next_task(), b.next_task()
    assert ta is not None and tb is not None
    bad = a.report(ta["task_id"], "failed", error={"reason": "ProtocolAbort", "culprits": ["node-z"]})
    err(bad, 422, "validation_error", "error.culprits[0]")
    err(a.report(ta["task_id"], "failed"), 422, "validation_error", "error")
    err(a.report(ta["task_id"], "failed", error={"reason": "bad reason!"}), 422, "validation_error", "error.reason")
    r = a.report(
        ta["task_id"], "failed", error={"reason": "INVALID_SHARE", "culprits": ["node-b"], "detail": "z_b does not verify"}
    )
    assert r.json() == {"task_status": "failed", "job_status": "failed"}
    req = client.get(f"/v1/requests/{rid}", headers=ADMIN).json()
    assert req["error"] == {"reason": "INVALID_SHARE", "culprits": ["node-b"], "party": "node-a", "detail": "z_b does not verify"}
    assert [p["task_status"] for p in req["participants"]] == ["failed", "cancelled"]
    e = err(b.report(tb["task_id"], result={"signature": "aa" * 64}), 409, "job_not_running")
    assert e["job_status"] == "failed"
    # The key is untouched by a failed signing.
    assert client.get(f"/v1/keys/{key_id}", headers=ADMIN).json()["status"] == "active"


def test_result_reports_are_checked(client: TestClient, nodes: list[FakeNode]) -> None:
    key_id = run_dkg(client, nodes)
    a, b, c = nodes
    client.post(f"/v1/keys/{key_id}/sign", json={"message_hex": "00"}, headers=ADMIN)
    ta = a.next_task()
    assert ta is not None
    err(a.report("task_missing", result={"signature": "aa"}), 404, "not_found")
    err(b.report(ta["task_id"], result={"signature": "aa"}), 403, "forbidden")
    err(a.report(ta["task_id"]), 422, "validation_error", "result")
    err(a.report(ta["task_id"], result={"sig": "aa"}), 422, "validation_error", "result.signature")
    err(a.report(ta["task_id"], result={"signature": "AZ"}), 422, "validation_error", "result.signature")
    err(a.report(ta["task_id"], status="maybe"), 422, "validation_error", "status")
    good = sign_result(ta)
    assert a.report(ta["task_id"], result=good).status_code == 200
    assert a.report(ta["task_id"], result=good).status_code == 200  # idempotent
    err(a.report(ta["task_id"], result=sign_result(ta)), 409, "already_reported")
    # b's task exists but was never claimed
    with coord(client).db.read() as s:
        tb_id = s.scalars(select(Task.id).where(Task.node_id == "node-b", Task.status == "queued")).one()
    err(b.report(tb_id, result=good), 409, "task_not_claimed")
    assert c.next_task() is None


@pytest.mark.parametrize("scheme", ["ed25519", "bip340", "secp256k1", "ecdsa"])
def test_a_signature_that_does_not_verify_fails_the_job_naming_its_reporter(
    client: TestClient, nodes: list[FakeNode], scheme: str
) -> None:
    """coordinator/signatures.py: ``done`` means a signature valid under the key (for ecdsa: the
    child at the request's path) over the request's own message or digest."""
    key_id = run_dkg(client, nodes, scheme)
    a, b, _c = nodes
    body = {"digest_hex": "cd" * 32, "path": "m/1/2"} if scheme == "ecdsa" else {"message_hex": "6869"}
    rid = client.post(f"/v1/keys/{key_id}/sign", json=body, headers=ADMIN).json()["request_id"]
    ta, tb = a.next_task(), b.next_task()
    assert ta is not None and tb is not None
    good = sign_result(ta)
    other = sign_result({**ta, "params": {**ta["params"], "message_hex": "00", "digest_hex": "00" * 32}})
    forged = [
        {**good, "signature": "aa" * 64},  # not a signature
        {**good, "signature": other["signature"]},  # valid, but over another message
        {**good, "public_key": dkg_result(scheme)["public_key"]} if scheme == "ecdsa" else {**good, "public_key": "bb" * 32},
    ]
    if scheme == "ecdsa":
        forged.append({**good, "path": "m"})
    for i, result in enumerate(forged):
        assert a.report(ta["task_id"], result=good).status_code == 200
        r = b.report(tb["task_id"], result=result)
        assert r.json() == {"task_status": "failed", "job_status": "failed"}, (i, r.text)
        req = client.get(f"/v1/requests/{rid}", headers=ADMIN).json()
        assert (req["status"], req["error"]["reason"], req["error"]["culprits"], req["error"]["party"]) == (
            "failed", "invalid_signature", ["node-b"], None)  # fmt: skip
        assert "result" not in req or req["result"] is None
        rid = client.post(f"/v1/keys/{key_id}/sign", json=body, headers=ADMIN).json()["request_id"]
        ta, tb = a.next_task(), b.next_task()
        assert ta is not None and tb is not None
        good = sign_result(ta)
    # The next request, signed correctly, is done: nothing was left locked or half-failed.
    assert a.report(ta["task_id"], result=good).status_code == 200
    assert b.report(tb["task_id"], result=good).json() == {"task_status": "done", "job_status": "done"}


def test_deadline_ends_a_job_failed_never_hung(make_client: Any) -> None:
    client = make_client(job_timeout=0.5, sweep_interval=0.1)
    nodes = [FakeNode(client, f"node-{c}") for c in "abc"]
    for n in nodes:
        n.register()
    r = client.post("/v1/keys", json={"scheme": "ed25519", "threshold": 2, "nodes": [n.node_id for n in nodes]}, headers=ADMIN)
    rid = r.json()["request_id"]
    ta = nodes[0].next_task()
    assert ta is not None
    req = client.get(f"/v1/requests/{rid}", params={"wait": 5}, headers=ADMIN).json()
    assert req["status"] == "failed", req
    assert req["error"]["reason"] == "timeout" and req["error"]["culprits"] == ["node-a", "node-b", "node-c"]
    assert "no result from node-a" in req["error"]["detail"] and "never picked up by node-b, node-c" in req["error"]["detail"]
    assert client.get(f"/v1/keys/{r.json()['key_id']}", headers=ADMIN).json()["status"] == "failed"
    err(nodes[0].report(ta["task_id"], result={"public_key": "aa"}), 409, "job_not_running")
    assert nodes[1].next_task() is None
    assert 'shardguard_jobs_finished_total{kind="dkg",reason="timeout",status="failed"} 1.0' in client.get("/metrics").text


def test_task_long_poll_wakes_on_dispatch(client: TestClient, nodes: list[FakeNode]) -> None:
    a = nodes[0]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        t0 = time.monotonic()
        fut = pool.submit(a.next_task, 10)
        time.sleep(0.3)
        client.post("/v1/keys", json={"scheme": "ed25519", "threshold": 2, "nodes": ["node-a", "node-b"]}, headers=ADMIN)
        task = fut.result(timeout=10)
    assert task is not None and task["kind"] == "dkg"
    assert time.monotonic() - t0 < 3
    t0 = time.monotonic()
    assert nodes[1].next_task(wait=0.3) is not None
    assert nodes[2].next_task(wait=0.3) is None
    assert 0.25 < time.monotonic() - t0 < 3


def test_refresh_runs_alone_and_bumps_the_epoch(client: TestClient, nodes: list[FakeNode]) -> None:
    key_id = run_dkg(client, nodes)
    a, b, _c = nodes
    s1 = client.post(f"/v1/keys/{key_id}/sign", json={"message_hex": "01"}, headers=ADMIN).json()["request_id"]
    ref = client.post(f"/v1/keys/{key_id}/refresh", headers=token(client, "keys:write"))
    assert ref.status_code == 202
    s2 = client.post(f"/v1/keys/{key_id}/sign", json={"message_hex": "02"}, headers=ADMIN).json()["request_id"]
    get = lambda rid: client.get(f"/v1/requests/{rid}", headers=ADMIN).json()  # noqa: E731
    assert [get(r)["status"] for r in (s1, ref.json()["request_id"], s2)] == ["running", "queued", "queued"]
    for n in (a, b):
        t = n.next_task()
        assert t is not None and t["job_id"] == s1
        n.report(t["task_id"], result=sign_result(t))
    assert get(ref.json()["request_id"])["status"] == "running"
    assert get(s2)["status"] == "queued"
    for n in nodes:
        t = n.next_task()
        assert t is not None and t["kind"] == "refresh" and t["epoch"] == 0
        n.report(t["task_id"], result={"public_key": dkg_result("ed25519")["public_key"], "epoch": 1})
    assert client.get(f"/v1/keys/{key_id}", headers=ADMIN).json()["epoch"] == 1
    t = a.next_task()
    assert t is not None and t["job_id"] == s2 and t["epoch"] == 1
    # A refresh that changes the group key is refused.
    rid = client.post(f"/v1/keys/{key_id}/refresh", headers=ADMIN).json()["request_id"]
    tb = b.next_task()
    assert tb is not None
    b.report(tb["task_id"], result=sign_result(tb))
    a.report(t["task_id"], result=sign_result(t))
    for n in nodes:
        task = n.next_task()
        assert task is not None and task["job_id"] == rid
        n.report(task["task_id"], result={"public_key": "ff" * 33})
    assert get(rid)["error"]["reason"] == "public_key_changed"
    assert client.get(f"/v1/keys/{key_id}", headers=ADMIN).json()["epoch"] == 1


def test_repair_request(client: TestClient, nodes: list[FakeNode]) -> None:
    ecdsa = run_dkg(client, nodes, "ecdsa")
    key_id = run_dkg(client, nodes)
    err(client.post(f"/v1/keys/{key_id}/repair", json={"lost": "node-x"}, headers=ADMIN), 422, field="lost")
    err(client.post(f"/v1/keys/{key_id}/repair", json={"lost": "node-b", "helpers": ["node-b", "node-c"]}, headers=ADMIN), 422)
    err(
        client.post(f"/v1/keys/{key_id}/repair", json={"lost": "node-b", "helpers": ["node-c"]}, headers=ADMIN),
        422,
        field="helpers",
    )
    r = client.post(f"/v1/keys/{key_id}/repair", json={"lost": "node-b"}, headers=ADMIN)
    assert r.status_code == 202
    req = client.get(f"/v1/requests/{r.json()['request_id']}", headers=ADMIN).json()
    assert req["params"] == {"lost": "node-b", "helpers": ["node-a", "node-c"]}
    assert [p["node_id"] for p in req["participants"]] == ["node-a", "node-b", "node-c"]
    err(client.post(f"/v1/keys/{ecdsa}/repair", json={"lost": "node-b"}, headers=ADMIN), 422, field="key_id")


def test_request_listing(client: TestClient, nodes: list[FakeNode]) -> None:
    key_id = run_dkg(client, nodes)
    client.post(f"/v1/keys/{key_id}/sign", json={"message_hex": "00"}, headers=ADMIN)
    listed = client.get("/v1/requests", params={"key_id": key_id}, headers=ADMIN).json()
    assert [r["kind"] for r in listed] == ["sign", "dkg"]
    assert [r["kind"] for r in client.get("/v1/requests", params={"status": "done"}, headers=ADMIN).json()] == ["dkg"]
    err(client.get("/v1/requests", params={"status": "lost"}, headers=ADMIN), 422, field="status")
    err(client.get("/v1/requests", params={"limit": 0}, headers=ADMIN), 422, field="limit")


# -- relay ---------------------------------------------------------------------------------------
def test_relay_mailbox(make_client: Any) -> None:
    client = make_client(max_message_bytes=1000, max_job_mailbox_bytes=5000)
    a, b, c = (FakeNode(client, f"node-{x}") for x in "abc")
    for n in (a, b, c):
        n.register()
    outsider = FakeNode(client, "node-d")
    outsider.register()
    rid = client.post(
        "/v1/keys", json={"scheme": "ed25519", "threshold": 2, "nodes": ["node-a", "node-b", "node-c"]}, headers=ADMIN
    ).json()["request_id"]
    err(a.send(rid, [("*", 0, b"early")]), 409, "task_not_claimed")
    tasks = {n.node_id: n.next_task() for n in (a, b, c)}
    assert all(tasks.values())
    assert a.send(rid, [("*", 0, b"round1 broadcast"), ("node-b", 1, b"to b")]).json() == {"accepted": 2, "duplicates": 0}
    assert c.send(rid, [("node-b", 0, b"c to b")]).json()["accepted"] == 1
    inbox_b = b.inbox(rid).json()
    assert inbox_b["job_status"] == "running"
    got = [(m["from"], m["to"], m["seq"], base64.b64decode(m["blob"])) for m in inbox_b["messages"]]
    assert got == [("node-a", "*", 0, b"round1 broadcast"), ("node-a", "node-b", 1, b"to b"), ("node-c", "node-b", 0, b"c to b")]
    assert [m["from"] for m in c.inbox(rid).json()["messages"]] == ["node-a"]
    assert a.inbox(rid).json()["messages"] == []  # never one's own messages
    assert b.inbox(rid, after=inbox_b["next_after"]).json()["messages"] == []
    assert len(b.inbox(rid, after=inbox_b["messages"][0]["cursor"]).json()["messages"]) == 2
    # Re-sending the same bytes is harmless; other bytes under the same seq are refused.
    assert a.send(rid, [("*", 0, b"round1 broadcast")]).json() == {"accepted": 0, "duplicates": 1}
    err(a.send(rid, [("*", 0, b"equivocation")]), 409, "conflict", "messages[0].seq")
    err(a.send(rid, [("node-b", 5, b"x"), ("node-b", 5, b"y")]), 422, "validation_error", "messages[1].seq")
    err(a.send(rid, [("node-d", 2, b"x")]), 422, "validation_error", "messages[0].to")
    err(a.send(rid, [("node-a", 2, b"x")]), 422, "validation_error", "messages[0].to")
    err(a.send(rid, [("node-b", -1, b"x")]), 422, "validation_error", "messages[0].seq")
    err(
        a.request("POST", f"/v1/jobs/{rid}/messages", {"messages": [{"to": "*", "seq": 3, "blob": "%%%"}]}),
        422,
        field="messages[0].blob",
    )
    err(a.request("POST", f"/v1/jobs/{rid}/messages", {"messages": []}), 422, field="messages")
    err(a.send(rid, [("node-b", 2, b"")]), 422, field="messages[0].blob")
    err(a.send(rid, [("node-b", 2, b"x" * 1001)]), 413, "payload_too_large", "messages[0].blob")
    err(outsider.send(rid, [("*", 0, b"x")]), 403, "forbidden")
    err(outsider.inbox(rid), 403, "forbidden")
    err(a.send("req_missing", [("*", 0, b"x")]), 404, "not_found")
    err(b.inbox("req_missing"), 404, "not_found")
    err(b.request("GET", "/v1/nodes/node-b/inbox"), 422, field="job")
    for i in range(4):
        assert a.send(rid, [("node-c", 10 + i, b"y" * 1000)]).status_code == 200
    err(a.send(rid, [("node-c", 20, b"y" * 1000)]), 413, "mailbox_full")
    # Only ciphertext is stored, exactly as sent.
    with coord(client).db.read() as s:
        blobs = [m.blob for m in s.scalars(select(MailboxMessage).order_by(MailboxMessage.job_seq))]
    assert blobs == [b"round1 broadcast", b"to b", b"c to b", *[b"y" * 1000] * 4]
    # After the job ends nothing more is relayed, and the inbox says why.
    task_b = tasks["node-b"]
    assert task_b is not None
    b.report(task_b["task_id"], "failed", error={"reason": "ABORT"})
    err(a.send(rid, [("*", 50, b"late")]), 409, "job_not_running")
    assert b.inbox(rid, after=1000, wait=5).json()["job_status"] == "failed"


def test_inbox_long_poll_wakes_on_message(client: TestClient, nodes: list[FakeNode]) -> None:
    a, b, _c = nodes
    rid = client.post(
        "/v1/keys", json={"scheme": "ed25519", "threshold": 2, "nodes": ["node-a", "node-b"]}, headers=ADMIN
    ).json()["request_id"]
    a.next_task()
    b.next_task()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(b.inbox, rid, 0, 10)
        time.sleep(0.3)
        t0 = time.monotonic()
        a.send(rid, [("node-b", 0, b"hello")])
        r = fut.result(timeout=10)
    assert time.monotonic() - t0 < 3
    assert [base64.b64decode(m["blob"]) for m in r.json()["messages"]] == [b"hello"]


def test_finished_mailboxes_are_purged(make_client: Any) -> None:
    client = make_client(mailbox_retention=0)
    a, b = FakeNode(client, "node-a"), FakeNode(client, "node-b")
    a.register()
    b.register()
    rid = client.post(
        "/v1/keys", json={"scheme": "ed25519", "threshold": 2, "nodes": ["node-a", "node-b"]}, headers=ADMIN
    ).json()["request_id"]
    ta, tb = a.next_task(), b.next_task()
    assert ta is not None and tb is not None
    a.send(rid, [("node-b", 0, b"ciphertext")])
    a.report(ta["task_id"], result={"public_key": "aa" * 32})
    b.report(tb["task_id"], result={"public_key": "aa" * 32})
    coord(client).sweep()
    with coord(client).db.read() as s:
        assert s.scalars(select(MailboxMessage)).first() is None


# -- audit mirror --------------------------------------------------------------------------------
def test_audit_mirror_posted_twice_at_once_is_a_duplicate(
    client: TestClient, nodes: list[FakeNode], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same entries posted again while the first post is still in its transaction (a retry
    after a lost connection, reaching another replica): both read "not there yet", one insert
    wins; the other reads again and answers duplicates instead of a 500."""
    from shardguard.coordinator import service as service_module

    a = nodes[0]
    text = b"signed x"
    h = wire.audit_entry_hash(text)
    body = {"entries": [{"seq": 0, "entry": base64.b64encode(text).decode(), "hash": h,
                         "signature": base64.b64encode(a.keys.sign(wire.AUDIT_CONTEXT, bytes.fromhex(h))).decode()}]}  # fmt: skip
    real = service_module._AUDIT_EXISTING
    stale = {"left": 1}
    coordinator = coord(client)
    mirror = coordinator._mirror

    def racing(*args: Any) -> Any:
        if stale["left"]:
            stale["left"] -= 1
            monkeypatch.setattr(service_module, "_AUDIT_EXISTING", real.where(sa_false()))  # reads nothing
            try:
                assert mirror(*args) == (1, 0)  # the other post commits first ...
                return mirror(*args)  # ... and this one read "not there" too: its insert collides
            finally:
                monkeypatch.setattr(service_module, "_AUDIT_EXISTING", real)
        return mirror(*args)

    monkeypatch.setattr(coordinator, "_mirror", racing)
    assert a.request("POST", "/v1/audit", body).json() == {"accepted": 0, "duplicates": 1}


def test_audit_mirror(client: TestClient, nodes: list[FakeNode]) -> None:
    a, b, _c = nodes

    def entry(n: FakeNode, seq: int, text: bytes, keys: NodeKeys | None = None) -> dict[str, Any]:
        h = wire.audit_entry_hash(text)
        out = {
            "seq": seq,
            "entry": base64.b64encode(text).decode(),
            "hash": h,
            "signature": base64.b64encode((keys or n.keys).sign(wire.AUDIT_CONTEXT, bytes.fromhex(h))).decode(),
        }
        if keys is not None:
            out["signer"] = keys.card().identity_public_key.hex()
        return out

    post = lambda n, entries: n.request("POST", "/v1/audit", {"entries": entries})  # noqa: E731
    assert post(a, [entry(a, 0, b"genesis"), entry(a, 1, b"signed x")]).json() == {"accepted": 2, "duplicates": 0}
    assert post(b, [entry(b, 0, b"genesis b")]).json()["accepted"] == 1
    assert post(a, [entry(a, 1, b"signed x"), entry(a, 2, b"refused y")]).json() == {"accepted": 1, "duplicates": 1}
    err(post(a, [entry(a, 2, b"rewritten history")]), 409, "audit_conflict", "entries[0].seq")
    err(post(a, [entry(a, 5, b"x"), entry(a, 5, b"x")]), 422, field="entries[1].seq")
    err(post(a, [{**entry(a, 6, b"x"), "hash": "XYZ"}]), 422, field="entries[0].hash")
    err(post(a, [{**entry(a, 6, b"x"), "hash": "00" * 32}]), 422, "audit_invalid", "entries[0].hash")
    err(post(a, [{**entry(a, 6, b"x"), "entry": base64.b64encode(b"y").decode()}]), 422, "audit_invalid", "entries[0].hash")
    err(post(a, [entry(a, 6, b"x", keys=b.keys) | {"signer": None}]), 422, "audit_invalid", "entries[0].signature")
    err(post(a, [entry(a, 6, b"x", keys=b.keys) | {"signer": a.keys.card().identity_public_key.hex()}]), 422,
        "audit_invalid", "entries[0].signature")  # fmt: skip
    # An entry written before a restart is signed by the node's old key: it says so, and the
    # mirror records that key (not the posting one).
    old_keys = a.keys
    a.restart()
    assert a.register().status_code == 200
    assert post(a, [entry(a, 3, b"before the restart", keys=old_keys)]).json()["accepted"] == 1
    err(client.post("/v1/audit", json={"entries": [entry(a, 7, b"x")]}), 401, "missing_signature")
    reader = token(client, "read")
    log = client.get("/v1/audit", params={"node": "node-a"}, headers=reader).json()["entries"]
    assert [e["seq"] for e in log] == [0, 1, 2, 3]
    for e in log:  # verifiable offline, each with the key that signed it
        pk = bytes.fromhex(e["identity_public_key"])
        assert wire.verify_audit_entry(pk, base64.b64decode(e["entry"]), e["hash"], base64.b64decode(e["signature"]))
    assert log[3]["identity_public_key"] == old_keys.card().identity_public_key.hex()
    assert [
        e["seq"] for e in client.get("/v1/audit", params={"node": "node-a", "after": 0}, headers=reader).json()["entries"]
    ] == [1, 2, 3]
    assert len(client.get("/v1/audit", headers=reader).json()["entries"]) == 5
    err(client.get("/v1/audit", params={"after": 1}, headers=reader), 422, field="after")


# -- metrics -------------------------------------------------------------------------------------
def test_the_audit_head_is_a_nodes_own_newest_mirrored_entry(client: TestClient, nodes: list[FakeNode]) -> None:
    """A node whose audit log is empty (its state was lost) asks where its mirrored chain ends,
    to continue it (API.md §1.8): its own newest entry, or 0 and the genesis value."""
    a, b, _c = nodes
    head = lambda n, who=None: n.request("GET", f"/v1/nodes/{who or n.keys.node_id}/audit/head")  # noqa: E731
    assert head(a).json() == {"seq": 0, "hash": "00" * 32}
    for seq, text in ((1, b"one"), (2, b"two"), (7, b"seven")):
        h = wire.audit_entry_hash(text)
        sig = base64.b64encode(a.keys.sign(wire.AUDIT_CONTEXT, bytes.fromhex(h))).decode()
        body = {"entries": [{"seq": seq, "entry": base64.b64encode(text).decode(), "hash": h, "signature": sig}]}
        assert a.request("POST", "/v1/audit", body).status_code == 200
    assert head(a).json() == {"seq": 7, "hash": wire.audit_entry_hash(b"seven")}
    assert head(b).json() == {"seq": 0, "hash": "00" * 32}  # another node's entries are not its own
    err(head(b, a.keys.node_id), 403, "forbidden", "node_id")
    err(client.get(f"/v1/nodes/{a.keys.node_id}/audit/head"), 401)


def test_metrics(client: TestClient, nodes: list[FakeNode]) -> None:
    key_id = run_dkg(client, nodes)
    client.post(f"/v1/keys/{key_id}/sign", json={"message_hex": "00"}, headers=ADMIN)
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for line in (
        'shardguard_jobs{kind="dkg",status="done"} 1.0',
        'shardguard_jobs{kind="sign",status="running"} 1.0',
        'shardguard_jobs_submitted_total{kind="sign"} 1.0',
        'shardguard_jobs_finished_total{kind="dkg",reason="",status="done"} 1.0',
        "shardguard_tasks_claimed_total 3.0",
        'shardguard_nodes{state="alive"} 3.0',
        "shardguard_coordinator_db_up 1.0",
        'shardguard_http_requests_total{method="GET",route="/v1/keys/{key_id}",status="200"} 1.0',
        'shardguard_job_seconds_count{kind="dkg"} 1.0',
    ):
        assert line in text, line


def test_metrics_can_require_a_token(make_client: Any) -> None:
    client = make_client(metrics_public=False)
    err(client.get("/metrics"), 401)
    assert client.get("/metrics", headers={"Authorization": f"Bearer {BOOT}"}).status_code == 200


# -- stale identities, hostile input, the node listing -----------------------------------------
def test_a_claim_without_the_probe_hands_out_the_same_tasks_once(client: TestClient, nodes: list[FakeNode]) -> None:
    """``probe=False`` (a stream told of a new task) skips the read that looks for one first:
    nothing queued → nothing; a queued task → handed out once, as with the probe."""
    key_id = run_dkg(client, nodes)
    c = coord(client)
    assert c.claim_tasks("node-a", 4, probe=False) == []
    job = client.post(f"/v1/keys/{key_id}/sign", json={"message_hex": "01", "signers": ["node-a", "node-b"]}, headers=ADMIN)
    got = c.claim_tasks("node-a", 4, probe=False)
    assert [t["job_id"] for t in got] == [job.json()["request_id"]]
    assert c.claim_tasks("node-a", 4, probe=False) == c.claim_tasks("node-a", 4) == []
    assert [t["job_id"] for t in c.claim_tasks("node-b", 4)] == [job.json()["request_id"]]


def test_claims_and_reports_with_a_replaced_identity_key_are_refused_in_their_transaction(
    client: TestClient, nodes: list[FakeNode]
) -> None:
    """What a long-poll or stream signed with the node's old key asks after the node
    registered a new one: nothing is handed out, appended or reported (401 stale_identity)."""
    from shardguard.coordinator.service import NodeIdentity, StaleIdentity

    key_id = run_dkg(client, nodes)
    a, b, _c = nodes
    c = coord(client)
    old = a.keys.card().identity_public_key
    job1 = client.post(f"/v1/keys/{key_id}/sign", json={"message_hex": "01", "signers": ["node-a", "node-b"]}, headers=ADMIN)
    t1 = c.claim_tasks("node-a", 4, identity=old)  # the current key: handed out as before
    assert [t["job_id"] for t in t1] == [job1.json()["request_id"]]
    assert c.claimed_tasks("node-a", identity=old) == t1
    a.restart()
    assert a.register().json()["generation"] == 2
    new = a.keys.card().identity_public_key
    job = client.post(f"/v1/keys/{key_id}/sign", json={"message_hex": "02", "signers": ["node-a", "node-b"]}, headers=ADMIN)
    job_id = job.json()["request_id"]
    for call in (lambda: c.claim_tasks("node-a", 4, identity=old), lambda: c.claim_task("node-a", old),
                 lambda: c.claimed_tasks("node-a", identity=old)):  # fmt: skip
        with pytest.raises(StaleIdentity) as e:
            call()
        assert (e.value.status, e.value.code) == (401, "stale_identity")
    task = c.claim_task("node-a", new)  # still queued: the new key gets it
    assert task is not None and task["job_id"] == job_id
    tb = b.next_task()
    assert tb is not None
    stale = NodeIdentity("node-a", old)
    with pytest.raises(StaleIdentity):
        c.post_outbox(stale, [(job_id, "node-b", 1, b"old")], [])
    with pytest.raises(StaleIdentity):
        c.post_outbox(stale, [], [(task["task_id"], "done", sign_result(task), None)])
    with pytest.raises(StaleIdentity):  # the general path (a failed report)
        c.post_result(task["task_id"], "node-a", "failed", None, {"reason": "X", "culprits": [], "detail": ""}, old)
    assert b.inbox(job_id).json()["messages"] == []
    assert c.get_request(job_id)["participants"][0]["task_status"] == "running"
    assert a.report(task["task_id"], result=sign_result(task)).json()["task_status"] == "done"


def test_results_with_non_finite_numbers_are_refused(client: TestClient, nodes: list[FakeNode]) -> None:
    """NaN and Infinity parse as JSON in Python but are not JSON: PostgreSQL's json type refuses
    them (it was a 500) and SQLite stored null. A 422 naming the field, everywhere."""
    key_id = run_dkg(client, nodes)
    a, b, _c = nodes
    job = client.post(f"/v1/keys/{key_id}/sign", json={"message_hex": "00", "signers": ["node-a", "node-b"]}, headers=ADMIN)
    job_id = job.json()["request_id"]
    ta, tb = a.next_task(), b.next_task()
    assert ta is not None and tb is not None
    good = sign_result(ta)
    for bad in (float("nan"), float("inf"), -float("inf")):
        result = {**good, "extra": {"deep": [1, bad]}}
        err(a.report(ta["task_id"], result=result), 422, "validation_error", "result")
        out = a.request("POST", "/v1/nodes/node-a/outbox", {"results": [{"task_id": ta["task_id"], "status": "done",
                                                                          "result": result}]})  # fmt: skip
        assert out.status_code == 200, out.text
        e = out.json()["results"][ta["task_id"]]["error"]
        assert (e["status"], e["code"], e["field"]) == (422, "validation_error", "results[0].result")
    assert coord(client).get_request(job_id)["participants"][0]["task_status"] == "running"
    assert a.report(ta["task_id"], result=good).json()["task_status"] == "done"
    assert b.report(tb["task_id"], result=good).json()["job_status"] == "done"


def test_integer_query_parameters_beyond_64_bits_are_422(client: TestClient, nodes: list[FakeNode]) -> None:
    key_id = run_dkg(client, nodes)
    a = nodes[0]
    job = client.post(f"/v1/keys/{key_id}/sign", json={"message_hex": "00", "signers": ["node-a", "node-b"]}, headers=ADMIN)
    job_id = job.json()["request_id"]
    assert a.next_task() is not None
    for after in (2**63, 10**30):
        err(a.inbox(job_id, after=after), 422, "validation_error", "after")
        err(client.get("/v1/audit", params={"node": "node-a", "after": after}, headers=ADMIN), 422, "validation_error", "after")
    assert a.inbox(job_id, after=2**63 - 1).json()["messages"] == []
    assert client.get("/v1/audit", params={"node": "node-a", "after": 2**63 - 1}, headers=ADMIN).json() == {"entries": []}


def test_node_listing_pages_and_reads_no_blobs(client: TestClient) -> None:
    """GET /v1/nodes returns none of the nodes' cards, evidence or collateral, so it must not
    read them (megabytes each, from anyone who can register); it pages by node id."""
    from sqlalchemy import event

    for name in ("node-c", "node-a", "node-b"):
        r = FakeNode(client, name).register(evidence=os.urandom(4096), collateral=base64.b64encode(b"c").decode())
        assert r.status_code == 200, r.text
    reader = token(client, "read")
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    engine = coord(client).db.engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        page = client.get("/v1/nodes", params={"limit": 2}, headers=reader)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert [n["node_id"] for n in page.json()] == ["node-a", "node-b"]
    assert "evidence" not in page.json()[0] and "peer_card" not in page.json()[0]
    listing = [s for s in statements if "FROM nodes" in s]
    assert listing and not any(col in s for s in listing for col in ("evidence", "collateral", "peer_card")), listing
    rest = client.get("/v1/nodes", params={"after": "node-b", "limit": 2}, headers=reader).json()
    assert [n["node_id"] for n in rest] == ["node-c"]
    assert [n["node_id"] for n in client.get("/v1/nodes", headers=reader).json()] == ["node-a", "node-b", "node-c"]
    err(client.get("/v1/nodes", params={"limit": 0}, headers=reader), 422, "validation_error", "limit")
    err(client.get("/v1/nodes", params={"limit": 1001}, headers=reader), 422, "validation_error", "limit")


@pytest.mark.parametrize(
    "url", ["/v1/requests?key_id=%00", "/v1/nodes?after=a%00", "/v1/audit?node=%00", "/v1/requests?key_id=a%20b"]
)
def test_query_ids_are_ids(client: TestClient, url: str) -> None:
    """Review finding: a NUL byte in a query id reached psycopg (a 500 on PostgreSQL)."""
    err(client.get(url, headers=ADMIN), 422, "validation_error")


@pytest.mark.parametrize(
    ("result", "field"),
    [({"epoch": 2**31}, "result.epoch"), ({"epoch": -1}, "result.epoch"), ({"epoch": "1"}, "result.epoch"), (None, "result")],
)
def test_a_report_the_database_cannot_hold_is_a_422(client: TestClient, result: Any, field: str) -> None:
    """Review findings: an epoch past the INTEGER column, or a result nested ~950 deep, failed
    every report with a 500 (and the job then ran into its timeout)."""
    from shardguard.coordinator.errors import ApiError

    if result is None:  # nested deeper than json.dumps recurses
        result = {"x": 0}
        for _ in range(5000):
            result = {"x": result}
    with pytest.raises(ApiError) as e:
        coord(client).post_result("task_nope", "node-a", "done", result, None)
    assert e.value.status == 422 and e.value.field == field, e.value


def test_queue_gauges_are_read_at_most_once_per_interval() -> None:
    """Review finding: every scrape (unauthenticated by default) counted every job ever made."""
    from prometheus_client import generate_latest

    from shardguard.coordinator.metrics import Metrics

    m = Metrics()
    reads: list[int] = []
    m.add_queue_collector(lambda: reads.append(1) or {"jobs": {"sign/done": 3}, "nodes": {"alive": 1}})
    texts = [generate_latest(m.registry).decode() for _ in range(5)]
    assert len(reads) == 1 and all('shardguard_jobs{kind="sign",status="done"} 3.0' in t for t in texts)
