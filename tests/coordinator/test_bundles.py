"""Sign bundles (API.md §1.6, "Bundles"): FROST signatures of one key beyond ``sign_inflight``
wait, then start together as one job; each request ends with its bundle, done with its own
signature or failed with the bundle's reason. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import concurrent.futures
import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shardguard.coordinator.service import Coordinator
from shardguard.interop import verify_independently
from shardguard.protocols.dealer import trusted_dealer_keygen
from shardguard.protocols.frost import FrostBatchSigner
from shardguard.protocols.frost._batch import _round2_size
from shardguard.protocols.suites import suite_by_scheme

from .conftest import ADMIN, FakeNode, coord, run_dkg, sign_result


def _cluster(
    make_client: Callable[..., TestClient], scheme: str = "ed25519", **settings: Any
) -> tuple[TestClient, list[FakeNode], str]:
    client = make_client(**settings)
    nodes = [FakeNode(client, f"node-{c}") for c in "abc"]
    for n in nodes:
        assert n.register().status_code == 200
    return client, nodes, run_dkg(client, nodes, scheme=scheme)


def _sign(client: TestClient, key_id: str, message: bytes, signers: list[str] | None = None) -> str:
    body: dict[str, Any] = {"message_hex": message.hex(), "signers": signers or ["node-a", "node-b"]}
    r = client.post(f"/v1/keys/{key_id}/sign", json=body, headers=ADMIN)
    assert r.status_code == 202, r.text
    return str(r.json()["request_id"])


def _request(client: TestClient, rid: str) -> dict[str, Any]:
    r = client.get(f"/v1/requests/{rid}", headers=ADMIN)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _tasks(node: FakeNode) -> list[dict[str, Any]]:
    out = []
    while (task := node.next_task()) is not None:
        out.append(task)
    return out


_SIGNED: dict[str, dict[str, Any]] = {}


def _report_all(nodes: list[FakeNode], tasks: dict[str, list[dict[str, Any]]]) -> None:
    """Every task reported done with a valid result, the same for all signers of a job (a
    FROST signature is randomised: computed once per job)."""
    for n in nodes:
        for t in tasks[n.node_id]:
            result = _SIGNED.setdefault(t["job_id"], sign_result(t))
            r = n.report(t["task_id"], result=result)
            assert r.status_code == 200, r.text


def test_waiting_signatures_start_as_one_bundle_and_each_gets_its_own_signature(make_client: Callable[..., TestClient]) -> None:
    client, nodes, key_id = _cluster(make_client, sign_inflight=2)
    a, b, _c = nodes
    messages = [bytes([i]) * (i + 1) for i in range(6)]
    rids = [_sign(client, key_id, m) for m in messages]
    # Two in flight (sign_inflight = 2), the other four wait.
    assert [_request(client, r)["status"] for r in rids] == ["running"] * 2 + ["queued"] * 4
    first = {n.node_id: _tasks(n) for n in (a, b)}
    assert [t["job_id"] for t in first["node-a"]] == rids[:2]
    _report_all([a, b], {k: v[:1] for k, v in first.items()})  # the first one ends: the four start, bundled
    bundled = {n.node_id: _tasks(n) for n in (a, b)}
    assert len(bundled["node-a"]) == len(bundled["node-b"]) == 1
    task = bundled["node-a"][0]
    assert task["kind"] == "bundle" and task["job_id"].startswith("bdl_")
    assert task["params"]["bundle"] == [
        {"request_id": r, "message_hex": m.hex()} for r, m in zip(rids[2:], messages[2:], strict=True)
    ]
    assert task["params"]["signers"] == ["node-a", "node-b"]
    for r in rids[2:]:
        req = _request(client, r)
        assert req["status"] == "running" and req["bundle"] == task["job_id"] and req["attempts"] == 1
        assert [p["task_status"] for p in req["participants"]] == ["running", "running"]  # the bundle's tasks
    _report_all([a, b], {k: v[1:] for k, v in first.items()})
    _report_all([a, b], bundled)
    pk = bytes.fromhex(_request(client, rids[0])["result"]["public_key"])
    for r, m in zip(rids, messages, strict=True):
        req = _request(client, r)
        assert req["status"] == "done" and [p["task_status"] for p in req["participants"]] == ["done", "done"], req
        assert req["result"]["public_key"] == pk.hex()
        assert verify_independently("ed25519", pk, m, bytes.fromhex(req["result"]["signature"]))
    assert _request(client, task["job_id"])["kind"] == "bundle"
    listed = client.get("/v1/requests", headers=ADMIN).json()
    assert all(x["kind"] != "bundle" for x in listed), "a bundle is not a client request"
    assert "shardguard_bundle_requests_count 1.0" in client.get("/metrics").text


def test_bundle_size_and_bytes_are_bounded(make_client: Callable[..., TestClient]) -> None:
    client, nodes, key_id = _cluster(make_client, sign_inflight=1, bundle_max=3, bundle_max_bytes=5)
    a = nodes[0]
    rids = [_sign(client, key_id, b"xx") for _ in range(7)]
    (single,) = _tasks(a)
    _report_all(nodes[:2], {"node-a": [single], "node-b": _tasks(nodes[1])})
    (bundle,) = _tasks(a)  # one in flight at a time: the next bundle starts when this one ends
    # bundle_max_bytes = 5: two 2-byte messages fit, a third would not.
    assert [i["request_id"] for i in bundle["params"]["bundle"]] == rids[1:3]
    _report_all(nodes[:2], {"node-a": [bundle], "node-b": _tasks(nodes[1])})
    (bundle,) = _tasks(a)
    assert [i["request_id"] for i in bundle["params"]["bundle"]] == rids[3:5]


def test_a_bundle_with_one_bad_signature_fails_every_request_in_it(make_client: Callable[..., TestClient]) -> None:
    client, nodes, key_id = _cluster(make_client, sign_inflight=1)
    a, b, _c = nodes
    rids = [_sign(client, key_id, bytes([i])) for i in range(4)]
    _report_all([a, b], {"node-a": _tasks(a), "node-b": _tasks(b)})
    (bundle,) = _tasks(a)
    good = sign_result(bundle)
    bad = good | {"signatures": [good["signatures"][1], *good["signatures"][1:]]}  # request 0 signed with 1's
    r = a.report(bundle["task_id"], result=bad)
    assert r.status_code == 200 and r.json()["job_status"] == "failed"
    for rid in rids[1:]:
        req = _request(client, rid)
        assert req["status"] == "failed" and req["error"]["reason"] == "invalid_signature"
        assert req["error"]["culprits"] == ["node-a"] and bundle["job_id"] in req["error"]["detail"]
        assert f"request 0 ({rids[1]})" in req["error"]["detail"]
    assert _request(client, rids[0])["status"] == "done"


def test_a_result_with_the_wrong_number_of_signatures_is_refused(make_client: Callable[..., TestClient]) -> None:
    client, nodes, key_id = _cluster(make_client, sign_inflight=1)
    a, b, _c = nodes
    for i in range(3):
        _sign(client, key_id, bytes([i]))
    _report_all([a, b], {"node-a": _tasks(a), "node-b": _tasks(b)})
    (bundle,) = _tasks(a)
    good = sign_result(bundle)
    for sigs, field in (
        (good["signatures"][:1], "result.signatures"),
        ([*good["signatures"], good["signatures"][0]], "result.signatures"),
        ("ab", "result.signatures"),
        ([good["signatures"][0], "XYZ"], "result.signatures[1]"),
    ):
        r = a.report(bundle["task_id"], result=good | {"signatures": sigs})
        assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text
    assert a.report(bundle["task_id"], result=good).status_code == 200


def test_a_failed_or_timed_out_bundle_fails_its_requests_with_its_reason(make_client: Callable[..., TestClient]) -> None:
    client, nodes, key_id = _cluster(make_client, sign_inflight=1, job_timeout=0.5)
    a, b, _c = nodes
    rids = [_sign(client, key_id, bytes([i])) for i in range(5)]
    _report_all([a, b], {"node-a": _tasks(a), "node-b": _tasks(b)})
    (bundle,) = _tasks(a)
    r = a.report(bundle["task_id"], status="failed", error={"reason": "POLICY", "culprits": [], "detail": "refused"})
    assert r.status_code == 200
    for rid in rids[1:]:
        err = _request(client, rid)["error"]
        assert (
            err["reason"] == "POLICY" and err["party"] == "node-a" and err["detail"].startswith(f"in bundle {bundle['job_id']}")
        )
    # A bundle past its deadline: its requests fail with it, "timeout", never on their own first.
    more = [_sign(client, key_id, bytes([i])) for i in range(2)]
    (single,) = _tasks(a)
    assert single["job_id"] == more[0]
    time.sleep(0.6)
    coord(client).sweep()  # the single times out; the other starts (alone: a bundle of one is a plain job)
    assert _request(client, more[0])["error"]["reason"] == "timeout"
    assert _request(client, more[1])["status"] == "running" and _request(client, more[1])["bundle"] is None


def test_a_bundle_member_never_expires_on_its_own(make_client: Callable[..., TestClient]) -> None:
    client, nodes, key_id = _cluster(make_client, sign_inflight=1, job_timeout=0.5)
    a, b, _c = nodes
    rids = [_sign(client, key_id, bytes([i])) for i in range(3)]
    _report_all([a, b], {"node-a": _tasks(a), "node-b": _tasks(b)})
    (bundle,) = _tasks(a)
    time.sleep(0.6)
    assert coord(client).sweep()["expired"] == 1  # the bundle; its two requests end with it
    for rid in rids[1:]:
        err = _request(client, rid)["error"]
        assert err["reason"] == "timeout" and bundle["job_id"] in err["detail"]


def test_a_stalled_signature_stops_holding_the_queue(make_client: Callable[..., TestClient]) -> None:
    # Running for longer than sign_inflight_seconds, it no longer counts as in flight: the
    # requests behind it start at the next dispatch (the sweeper's), long before its deadline.
    client, nodes, key_id = _cluster(make_client, sign_inflight=1, sign_inflight_seconds=2.0)
    a = nodes[0]
    t0 = time.monotonic()
    rids = [_sign(client, key_id, bytes([i])) for i in range(3)]
    (stalled,) = _tasks(a)
    assert stalled["job_id"] == rids[0]
    started = coord(client).dispatch()
    assert started == 0 or time.monotonic() - t0 > 2.0  # (a host so slow that 2 s passed already)
    time.sleep(max(0.0, 2.1 - (time.monotonic() - t0)))
    assert started + coord(client).dispatch() == 1
    (bundle,) = _tasks(a)
    assert [i["request_id"] for i in bundle["params"]["bundle"]] == rids[1:]


def test_ecdsa_signatures_are_never_held_or_bundled(make_client: Callable[..., TestClient]) -> None:
    client, nodes, key_id = _cluster(make_client, scheme="ecdsa")
    rids = []
    for i in range(5):
        r = client.post(
            f"/v1/keys/{key_id}/sign", json={"digest_hex": f"{i:064x}", "signers": ["node-a", "node-b"]}, headers=ADMIN
        )
        assert r.status_code == 202
        rids.append(r.json()["request_id"])
    assert all(_request(client, rid)["status"] == "running" for rid in rids)
    assert [t["kind"] for t in _tasks(nodes[0])] == ["sign"] * 5


def test_each_signer_set_has_its_own_slots_and_bundles(make_client: Callable[..., TestClient]) -> None:
    client, nodes, key_id = _cluster(make_client)  # sign_inflight = 1 (the default)
    a, b, c = nodes
    first = _sign(client, key_id, b"0")
    ab = [_sign(client, key_id, bytes([i]), ["node-a", "node-b"]) for i in range(2)]
    ac = [_sign(client, key_id, bytes([i]), ["node-a", "node-c"]) for i in range(3)]
    # a,b has one in flight: its next ones wait; a,c had none: its first one runs at once.
    assert [_request(client, r)["status"] for r in [first, *ab, *ac]] == [
        "running",
        "queued",
        "queued",
        "running",
        "queued",
        "queued",
    ]
    tasks = {n.node_id: _tasks(n) for n in nodes}
    assert [t["job_id"] for t in tasks["node-a"]] == [first, ac[0]]
    _report_all([a, b], {"node-a": tasks["node-a"][:1], "node-b": tasks["node-b"]})
    # a,b ended: its waiting ones start as one bundle; a,c's wait for theirs.
    (bundle,) = _tasks(b)
    assert [i["request_id"] for i in bundle["params"]["bundle"]] == ab
    assert _tasks(c) == []
    _report_all([a, c], {"node-a": tasks["node-a"][1:], "node-c": tasks["node-c"]})
    (bundle2,) = _tasks(c)
    assert [i["request_id"] for i in bundle2["params"]["bundle"]] == ac[1:]


def test_requests_after_a_refresh_wait_for_it_and_then_bundle(make_client: Callable[..., TestClient]) -> None:
    client, nodes, key_id = _cluster(make_client)
    before = _sign(client, key_id, b"before")
    r = client.post(f"/v1/keys/{key_id}/refresh", headers=ADMIN)
    assert r.status_code == 202, r.text
    refresh = r.json()["request_id"]
    after = [_sign(client, key_id, bytes([i])) for i in range(3)]
    assert _request(client, refresh)["status"] == "queued"
    assert all(_request(client, x)["status"] == "queued" for x in after)
    tasks = {n.node_id: _tasks(n) for n in nodes[:2]}
    assert [t["job_id"] for t in tasks["node-a"]] == [before]
    assert _request(client, before)["status"] == "running"
    _report_all(nodes[:2], tasks)
    assert _request(client, refresh)["status"] == "running"
    assert all(_request(client, x)["status"] == "queued" for x in after)


def test_a_request_queued_while_the_one_in_flight_ends_is_started_by_that_end(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    """Review finding (PostgreSQL): a submit that saw the one in flight still running queued
    behind it, while the ending report had already looked for waiting requests: only the
    sweeper started it. The end now holds the key row before it looks, so it sees the submit."""
    client, nodes, key_id = _cluster(make_client)  # the sweeper is off
    c = coord(client)
    first = _sign(client, key_id, b"\x00")
    tasks = [nodes[0].next_task(), nodes[1].next_task()]
    assert all(t is not None and t["job_id"] == first for t in tasks)
    checked, go = threading.Event(), threading.Event()
    real = Coordinator._in_flight

    def slow(self: Coordinator, conn: Any, key: str, now: Any) -> Any:
        out = real(self, conn, key, now)
        if threading.current_thread().name == "submitter":
            checked.set()
            go.wait(10)  # hold the submit's transaction open while the in-flight one ends
        return out

    monkeypatch.setattr(Coordinator, "_in_flight", slow)
    out: dict[str, Any] = {}
    t = threading.Thread(
        name="submitter",
        target=lambda: out.update(
            c.submit_sign(key_id, digest=None, message=b"\x01", path=None, signers=["node-a", "node-b"], requested_by="t")
        ),
    )
    t.start()
    assert checked.wait(10)
    result = sign_result(tasks[0])  # type: ignore[arg-type]
    reports = concurrent.futures.ThreadPoolExecutor(2)
    ends = [reports.submit(n.report, task["task_id"], result=result) for n, task in zip(nodes[:2], tasks, strict=True)]  # type: ignore[index]
    time.sleep(0.5 if db_url.startswith("postgresql") else 0.0)
    go.set()
    t.join(10)
    assert all(e.result(timeout=10).status_code == 200 for e in ends)
    reports.shutdown()
    assert _request(client, out["request_id"])["status"] == "running"


N_WIDE = 40


def _batch_sizes(k: int, n: int) -> tuple[int, int]:
    """Real round-1 and round-2 payload sizes of a batch of k Ed25519 signings by n signers."""
    suite = suite_by_scheme("ed25519")
    shares = trusted_dealer_keygen(suite, None, 2, [1, 2], rng=secrets.token_bytes)
    party = FrostBatchSigner(shares[0], signers=[1, 2], messages=[b"m"] * k, instance=b"i" * 32, rng=secrets.token_bytes)
    return len(party.start()[0].payload), _round2_size(suite, list(range(1, n + 1)), k)


def test_a_bundle_of_many_signers_fits_its_mailbox(make_client: Callable[..., TestClient]) -> None:
    """Review finding: the nodes seal every broadcast once per peer, so a job's mailbox holds
    n(n-1) copies of each round; bundles of 32 at 40 signers overflowed the 64 MiB mailbox and
    failed, where each request alone would have signed. The bundle is now sized to fit."""
    client = make_client()
    nodes = [FakeNode(client, f"node-{i:02}") for i in range(N_WIDE)]
    for n in nodes:
        assert n.register().status_code == 200
    key_id = run_dkg(client, nodes, t=2)
    ids = [n.node_id for n in nodes]
    for i in range(33):
        r = client.post(f"/v1/keys/{key_id}/sign", json={"message_hex": f"{i:02x}", "signers": ids}, headers=ADMIN)
        assert r.status_code == 202, r.text
    first = [n.next_task() for n in nodes]
    result = sign_result(first[0])  # type: ignore[arg-type]
    for n, t in zip(nodes, first, strict=True):
        assert n.report(t["task_id"], result=result).status_code == 200  # type: ignore[index]
    bundle = [n.next_task() for n in nodes]
    k = len(bundle[0]["params"]["bundle"])  # type: ignore[index]
    assert 1 < k < 32
    r1, r2 = _batch_sizes(k, N_WIDE)
    for rnd, size in ((1, r1), (2, r2)):
        for n in nodes:
            out = [(o, rnd, os.urandom(size)) for o in ids if o != n.node_id]
            resp = n.send(bundle[0]["job_id"], out)  # type: ignore[index]
            assert resp.status_code == 200, resp.text


def test_one_keys_waiting_signatures_never_hide_another_keys_jobs(make_client: Callable[..., TestClient]) -> None:
    """Review finding: dispatch() looks at the 256 oldest queued jobs; 260 signatures of key X
    waiting behind its one in flight hid key Y's refresh, whose turn had come, from every sweep.
    Waiting FROST signatures now start per key, outside that window."""
    client, nodes, x = _cluster(make_client, sign_inflight_seconds=60)  # X's one in flight stays in flight
    c = coord(client)
    y = run_dkg(client, nodes)
    ysign = _sign(client, y, b"y")
    held = {n.node_id: _tasks(n) for n in nodes}
    for i in range(261):
        c.submit_sign(x, digest=None, message=i.to_bytes(2, "big"), path=None, signers=["node-a", "node-b"], requested_by="t")
    r = client.post(f"/v1/keys/{y}/refresh", headers=ADMIN)
    refresh = r.json()["request_id"]
    assert _request(client, refresh)["status"] == "queued"
    _report_all(nodes[:2], {n: [t for t in held[n] if t["job_id"] == ysign] for n in ("node-a", "node-b")})
    assert _request(client, ysign)["status"] == "done"
    assert _request(client, refresh)["status"] == "running"  # started by the end of Y's signature


def test_one_keys_backlog_of_any_kind_never_hides_another_keys_jobs(client: TestClient, nodes: list[FakeNode]) -> None:
    """Review finding: only FROST signatures were kept out of dispatch()'s window of the 256
    oldest queued jobs; 260 ECDSA signatures of key X waiting behind X's refresh hid key Y's
    refresh, whose turn had come, from every sweep until X's backlog drained. The window now
    holds at most 64 jobs of one key."""
    c = coord(client)
    x, y = run_dkg(client, nodes, "ecdsa"), run_dkg(client, nodes, "ecdsa")
    r = client.post(f"/v1/keys/{x}/refresh", headers=ADMIN)
    assert r.status_code == 202, r.text
    xrefresh = r.json()["request_id"]
    for i in range(260):
        digest = i.to_bytes(32, "big").hex()
        assert client.post(f"/v1/keys/{x}/sign", json={"digest_hex": digest}, headers=ADMIN).status_code == 202
    r = client.post(f"/v1/keys/{y}/sign", json={"digest_hex": "11" * 32, "signers": ["node-a", "node-b"]}, headers=ADMIN)
    ysign = r.json()["request_id"]
    yrefresh = client.post(f"/v1/keys/{y}/refresh", headers=ADMIN).json()["request_id"]
    assert _request(client, yrefresh)["status"] == "queued"  # behind Y's signature
    for n in nodes:  # X's refresh is handed out and stays running
        task = n.next_task()
        assert task is not None and task["job_id"] == xrefresh, task
    for n in nodes[:2]:
        task = n.next_task()
        assert task is not None and task["job_id"] == ysign, task
        assert n.report(task["task_id"], result=sign_result(task)).status_code == 200
    assert _request(client, ysign)["status"] == "done"
    c.sweep()
    assert _request(client, yrefresh)["status"] == "running"
