"""ECDSA signing with pre-signatures (API.md §1.15; coordinator/presigned.py): an ECDSA signing
of the key itself restocks its signers' pre-signatures with ``presign`` jobs; the next one
claims one (at most once), the signers answer in one step and the coordinator combines and
verifies. Fake nodes holding real DKLs23 shares (``local``) play the tasks by hand."""

from __future__ import annotations

import datetime as dt
import functools
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from shardguard import local
from shardguard.coordinator import presigned as presigned_mod
from shardguard.coordinator.models import Job, Presignature
from shardguard.crypto.secp256k1 import SECP256K1
from shardguard.protocols.dkls23 import EcdsaKeyShare, EcdsaSignature
from shardguard.protocols.dkls23 import Presignature as NodePresignature
from tests.conftest import check_ecdsa_independently

from .conftest import ADMIN, FakeNode, coord

DIGEST = bytes(range(32))


@functools.cache
def _shares() -> tuple[EcdsaKeyShare, ...]:
    return tuple(local.ecdsa_keygen(2, 3))


class Cluster:
    """Three fake nodes with real shares of one 2-of-3 ECDSA key, and the parts of the
    pre-signatures they made together (by presignature id), as their memory would hold them."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.nodes = [FakeNode(client, f"node-{c}") for c in "abc"]
        for n in self.nodes:
            assert n.register().status_code == 200
        self.index = {n.node_id: i + 1 for i, n in enumerate(self.nodes)}
        self.made: dict[str, dict[str, NodePresignature]] = {}
        r = client.post("/v1/keys", json={"scheme": "ecdsa", "threshold": 2, "nodes": [n.node_id for n in self.nodes]},
                        headers=ADMIN)  # fmt: skip
        assert r.status_code == 202, r.text
        self.key_id = str(r.json()["key_id"])
        share = _shares()[0]
        result = {"public_key": share.public.public_key_bytes.hex(), "chain_code": share.chain_code.hex()}
        for n in self.nodes:
            task = n.next_task()
            assert task is not None and task["kind"] == "dkg"
            assert n.report(task["task_id"], result=result).status_code == 200
        self.public_key = result["public_key"]

    def node(self, node_id: str) -> FakeNode:
        return self.nodes[self.index[node_id] - 1]

    def sign(self, digest: bytes = DIGEST, **body: Any) -> str:
        r = self.client.post(f"/v1/keys/{self.key_id}/sign", json={"digest_hex": digest.hex(), **body}, headers=ADMIN)
        assert r.status_code == 202, r.text
        return str(r.json()["request_id"])

    def tasks(self, node_id: str) -> list[dict[str, Any]]:
        out = []
        while (task := self.node(node_id).next_task()) is not None:
            out.append(task)
        return out

    def presign(self, tasks_by_node: dict[str, list[dict[str, Any]]]) -> list[str]:
        """Play every presign task: the signers make one pre-signature per job and report it."""
        jobs: dict[str, dict[str, dict[str, Any]]] = {}
        for nid, tasks in tasks_by_node.items():
            for t in tasks:
                if t["kind"] == "presign":
                    jobs.setdefault(t["job_id"], {})[nid] = t
        for job_id, by_node in jobs.items():
            ids = sorted(by_node, key=self.index.__getitem__)
            parts = local.ecdsa_presign([_shares()[self.index[nid] - 1] for nid in ids])
            pid = parts[0].presignature_id.hex()
            self.made[pid] = dict(zip(ids, parts, strict=True))
            for nid in ids:
                result = {"presignature": pid, "R": SECP256K1.encode(parts[0].big_r).hex(), "epoch": 0}
                ack = self.node(nid).report(by_node[nid]["task_id"], result=result)
                assert ack.status_code == 200, ack.text
        return list(jobs)

    def answer(self, task: dict[str, Any], node_id: str) -> dict[str, Any]:
        ref = task["params"]["presignature"]
        share = self.made[ref["id"]][node_id].share(bytes.fromhex(task["params"]["digest_hex"]), bytes.fromhex(ref["seed"]))
        return {"share": {"u": share.u.to_bytes(32, "big").hex(), "w": share.w.to_bytes(32, "big").hex(),
                          "R": SECP256K1.encode(share.big_r).hex()}}  # fmt: skip

    def stock(self) -> int:
        with coord(self.client).db.read() as s:
            return int(s.scalar(select(func.count()).select_from(Presignature)) or 0)

    def request(self, rid: str) -> dict[str, Any]:
        return dict(self.client.get(f"/v1/requests/{rid}", headers=ADMIN).json())


@pytest.fixture
def cluster(make_client: Callable[..., TestClient]) -> Cluster:
    return Cluster(make_client(presign_stock=2, presign_inflight=2))


def _restart_into_rerun(c: Cluster, rid: str) -> str:
    """node-b restarts before answering ``rid``'s one step: the request runs again in rounds;
    returns the rerun's id."""
    c.node("node-b").restart()
    assert c.node("node-b").register().status_code == 200
    return str(c.request(rid)["bundle"])


def _three_round_then_stock(c: Cluster) -> None:
    """The DKG's end started two presign jobs for the default signers (node-a, node-b); the
    first signing, before they end, finds no stock: three rounds, and no more jobs (two are in
    flight already). Then the jobs end and fill the stock."""
    rid = c.sign()
    a, b = c.tasks("node-a"), c.tasks("node-b")
    assert sorted(t["kind"] for t in a) == ["presign", "presign", "sign"], a
    sign_a, sign_b = (next(t for t in tasks if t["kind"] == "sign") for tasks in (a, b))
    assert "presignature" not in sign_a["params"]
    sig = local.ecdsa_sign(list(_shares()[:2]), DIGEST)
    for nid, t in (("node-a", sign_a), ("node-b", sign_b)):
        assert c.node(nid).report(t["task_id"], result=sig.to_dict()).status_code == 200
    assert c.request(rid)["status"] == "done"
    assert len(c.presign({"node-a": a, "node-b": b})) == 2
    assert c.stock() == 2
    assert c.tasks("node-a") == []  # the stock is full: nothing more


def test_an_ecdsa_key_s_default_signers_pre_sign_once_it_is_made(cluster: Cluster) -> None:
    """So that even the first signing can take one step; none for a FROST key."""
    c = cluster
    a, b, cc = c.tasks("node-a"), c.tasks("node-b"), c.tasks("node-c")
    assert [t["kind"] for t in a] == ["presign", "presign"] and cc == []
    assert all(t["params"] == {"signers": ["node-a", "node-b"]} for t in a + b)
    c.presign({"node-a": a, "node-b": b})
    rid = c.sign()
    (task,) = [t for t in c.tasks("node-a") if t["kind"] == "sign"]
    assert "presignature" in task["params"]
    assert c.request(rid)["status"] == "running"


def test_a_signing_with_a_pre_signature_is_one_step_combined_here(cluster: Cluster) -> None:
    c = cluster
    _three_round_then_stock(c)
    rid = c.sign(b"\x07" * 32)
    a, b = c.tasks("node-a"), c.tasks("node-b")
    assert [t["kind"] for t in a] == ["sign", "presign"], a  # and one presign job to restock
    ref = a[0]["params"]["presignature"]
    assert set(ref) == {"id", "R", "seed"} and ref == b[0]["params"]["presignature"]
    assert "carries" not in a[0] and "carries" not in a[1]  # only a rerun's task names a request
    assert c.stock() == 1
    for nid, t in (("node-a", a[0]), ("node-b", b[0])):
        assert c.node(nid).report(t["task_id"], result=c.answer(t, nid)).status_code == 200
    req = c.request(rid)
    assert req["status"] == "done", req
    result = req["result"]
    assert result["public_key"] == c.public_key and result["digest"] == (b"\x07" * 32).hex() and result["path"] == "m"
    sig = bytes.fromhex(result["signature"])
    check_ecdsa_independently(
        EcdsaSignature(r=int.from_bytes(sig[:32], "big"), s=int.from_bytes(sig[32:], "big"), recovery_id=result["recovery_id"],
                       public_key=bytes.fromhex(c.public_key), digest=b"\x07" * 32)
    )  # fmt: skip
    # The nonce was re-randomised: r is not x(R) of the pre-signature.
    assert sig[:32] != bytes.fromhex(ref["R"])[1:]
    # Requests list only what clients asked for.
    listed = c.client.get("/v1/requests", headers=ADMIN).json()
    assert all(not r["request_id"].startswith("pre") for r in (listed if isinstance(listed, list) else listed["requests"]))


def test_a_pre_signature_is_handed_to_one_signing_only(cluster: Cluster) -> None:
    c = cluster
    _three_round_then_stock(c)
    rids = [c.sign(bytes([k]) * 32) for k in range(3)]
    a = c.tasks("node-a")
    named = [t["params"]["presignature"]["id"] for t in a if t["kind"] == "sign" and "presignature" in t["params"]]
    assert len(named) == 2 and len(set(named)) == 2  # the third found none: three rounds
    assert [t["kind"] for t in a].count("sign") == 3 and c.stock() == 0
    assert all(c.request(r)["status"] == "running" for r in rids)


def test_a_restarted_signer_s_pre_signatures_are_never_handed_out(cluster: Cluster) -> None:
    c = cluster
    _three_round_then_stock(c)
    c.node("node-b").restart()  # a new process: its pre-signatures are gone with the old one
    assert c.node("node-b").register().status_code == 200
    c.sign()
    (task,) = [t for t in c.tasks("node-a") if t["kind"] == "sign"]
    assert "presignature" not in task["params"]
    assert c.stock() == 0  # the dead ones deleted on the way


@pytest.mark.parametrize("body", [{"path": "m/0/1"}, {"signers": ["node-a", "node-c"]}])
def test_a_child_key_or_other_signers_run_three_rounds(cluster: Cluster, body: dict[str, Any]) -> None:
    c = cluster
    _three_round_then_stock(c)
    c.sign(**body)
    tasks = c.tasks("node-a")
    (sign,) = [t for t in tasks if t["kind"] == "sign"]
    assert "presignature" not in sign["params"]
    assert c.stock() == 2
    presigns = [t for t in tasks if t["kind"] == "presign"]
    # A path signs a child key: no pre-signature is made for it. Other signers get their own.
    assert len(presigns) == (0 if "path" in body else 2)
    assert all(t["params"]["signers"] == ["node-a", "node-c"] for t in presigns)


def test_the_setting_turns_it_off(make_client: Callable[..., TestClient]) -> None:
    c = Cluster(make_client(presign_stock=0))
    c.sign()
    assert [t["kind"] for t in c.tasks("node-a")] == ["sign"]


def test_a_refresh_drops_the_stock_and_holds_pre_signing_back(cluster: Cluster) -> None:
    c = cluster
    _three_round_then_stock(c)
    r = c.client.post(f"/v1/keys/{c.key_id}/refresh", json={}, headers=ADMIN)
    assert r.status_code == 202, r.text
    assert c.stock() == 0  # the nodes drop theirs as it starts
    assert coord(c.client)._replenish(c.key_id, ["node-a", "node-b"]) == 0  # no pre-signing while it runs


def test_the_sweep_drops_old_pre_signatures(cluster: Cluster) -> None:
    c = cluster
    _three_round_then_stock(c)
    with coord(c.client).db.write() as s:
        s.execute(update(Presignature).values(created_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)))
    coord(c.client).sweep()
    assert c.stock() == 0


def _presign_tasks(c: Cluster) -> dict[str, dict[str, Any]]:
    """Each signer's task of one of the presign jobs a first signing starts."""
    c.sign()
    by_node = {nid: [t for t in c.tasks(nid) if t["kind"] == "presign"] for nid in ("node-a", "node-b")}
    job = by_node["node-a"][0]["job_id"]
    return {nid: next(t for t in tasks if t["job_id"] == job) for nid, tasks in by_node.items()}


@pytest.mark.parametrize(
    ("result", "field"),
    [
        ({"presignature": "00" * 32, "R": "02" + "11" * 32}, "result"),
        ({"presignature": "00" * 31, "R": "02" + "11" * 32, "epoch": 0}, "result.presignature"),
        ({"presignature": "AA" * 32, "R": "02" + "11" * 32, "epoch": 0}, "result.presignature"),
        ({"presignature": "00" * 32, "R": "04" + "11" * 32, "epoch": 0}, "result.R"),
        ({"presignature": "00" * 32, "R": "02" + "11" * 31, "epoch": 0}, "result.R"),
        ({"presignature": "00" * 32, "R": "02" + "11" * 32, "epoch": 1}, "result.epoch"),
        ({"presignature": "00" * 32, "R": "02" + "11" * 32, "epoch": True}, "result.epoch"),
        ({"presignature": "00" * 32, "R": "02" + "11" * 32, "epoch": 0, "phi": "00"}, "result"),
    ],
)
def test_a_malformed_pre_signing_report_is_refused_naming_the_field(cluster: Cluster, result: dict[str, Any], field: str) -> None:
    c = cluster
    tasks = _presign_tasks(c)
    r = c.node("node-a").report(tasks["node-a"]["task_id"], result=result)
    assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text
    assert c.stock() == 0


def test_signers_naming_different_pre_signatures_store_none(cluster: Cluster) -> None:
    c = cluster
    tasks = _presign_tasks(c)
    for k, nid in enumerate(("node-a", "node-b")):
        result = {"presignature": (bytes([k]) * 32).hex(), "R": "02" + "11" * 32, "epoch": 0}
        assert c.node(nid).report(tasks[nid]["task_id"], result=result).status_code == 200
    job = c.request(tasks["node-a"]["job_id"])
    assert job["status"] == "failed" and job["error"]["reason"] == "result_mismatch", job
    assert c.stock() == 0


@pytest.mark.parametrize(
    ("share", "field"),
    [
        ({"u": "00" * 32, "w": "00" * 32}, "result.share"),
        ({"u": "00" * 32, "w": "00" * 31, "R": "02" + "11" * 32}, "result.share.w"),
        ({"u": "ff" * 32, "w": "00" * 32, "R": "02" + "11" * 32}, "result.share.u"),  # not below the group order
        ({"u": "0" * 64, "w": "XX" * 32, "R": "02" + "11" * 32}, "result.share.w"),
        ({"u": "00" * 32, "w": "00" * 32, "R": "04" + "11" * 32}, "result.share.R"),
        ({"u": "00" * 32, "w": "00" * 32, "R": "02" + "11" * 31}, "result.share.R"),
    ],
)
def test_a_malformed_share_is_refused_naming_the_field(cluster: Cluster, share: dict[str, str], field: str) -> None:
    c = cluster
    _three_round_then_stock(c)
    c.sign()
    (task,) = [t for t in c.tasks("node-a") if t["kind"] == "sign"]
    r = c.node("node-a").report(task["task_id"], result={"share": share})
    assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text


@pytest.mark.parametrize(
    ("tamper", "reason", "culprits"),
    [
        # DKLs23 spec P12: a wrong (u, w) cannot be told from the others.
        ("w", "invalid_signature", []),
        # Two signers reporting different nonce points: no majority, both named.
        ("R", "result_mismatch", ["node-a", "node-b"]),
    ],
)
def test_a_wrong_share_or_nonce_point_fails_the_signing(cluster: Cluster, tamper: str, reason: str, culprits: list[str]) -> None:
    c = cluster
    _three_round_then_stock(c)
    rid = c.sign()
    tasks = {nid: next(t for t in c.tasks(nid) if t["kind"] == "sign") for nid in ("node-a", "node-b")}
    for nid, t in tasks.items():
        answer = c.answer(t, nid)
        if nid == "node-b" and tamper == "w":
            answer["share"]["w"] = (int(answer["share"]["w"], 16) ^ 1).to_bytes(32, "big").hex()
        elif nid == "node-b":
            answer["share"]["R"] = SECP256K1.encode(SECP256K1.base_mul(5)).hex()
        assert c.node(nid).report(t["task_id"], result=answer).status_code == 200
    req = c.request(rid)
    assert req["status"] == "failed" and req["error"]["reason"] == reason, req
    assert req["error"]["culprits"] == culprits


def test_a_signer_restarting_before_the_pre_signing_ends_leaves_nothing_in_stock(
    make_client: Callable[..., TestClient],
) -> None:
    """Review finding: node-a reported, then its process died (its pre-signature with it) and
    registered again before node-b reported: the stock row named node-a's new process. Now the
    restart fails the job, and nothing is kept."""
    c = Cluster(make_client(presign_stock=1, presign_inflight=1))
    c.sign()  # three rounds; starts one presign job
    a = [t for t in c.tasks("node-a") if t["kind"] == "presign"]
    b = [t for t in c.tasks("node-b") if t["kind"] == "presign"]
    parts = local.ecdsa_presign([_shares()[0], _shares()[1]])
    result = {"presignature": parts[0].presignature_id.hex(), "R": SECP256K1.encode(parts[0].big_r).hex(), "epoch": 0}
    assert c.node("node-a").report(a[0]["task_id"], result=result).status_code == 200
    c.node("node-a").restart()
    assert c.node("node-a").register().status_code == 200
    job = c.request(a[0]["job_id"])
    assert job["status"] == "failed" and job["error"]["reason"] == "node_restarted", job
    assert c.node("node-b").report(b[0]["task_id"], result=result).status_code == 409
    assert c.stock() == 0


def _three_rounds(c: Cluster, rid: str, digest: bytes = DIGEST) -> dict[str, Any]:
    """Play the rerun of ``rid``: node-a and node-b each get one plain sign task (no
    pre-signature) in a new job that carries the request; they report the signature."""
    req = c.request(rid)
    rerun = req["bundle"]
    assert req["status"] == "running" and req["attempts"] == 2 and rerun.startswith("rrn"), req
    # The view shows the rerun's tasks, not the first attempt's cancelled ones.
    assert [p["task_status"] for p in req["participants"]] == ["queued", "queued"], req
    sig = local.ecdsa_sign(list(_shares()[:2]), digest)
    for nid in ("node-a", "node-b"):
        (task,) = [t for t in c.tasks(nid) if t["kind"] == "sign"]
        assert task["job_id"] == rerun and "presignature" not in task["params"], task
        assert task["carries"] == rid  # what the node's signing entry names (API.md §1.3)
        assert task["params"]["digest_hex"] == digest.hex() and task["params"]["signers"] == ["node-a", "node-b"]
        assert c.node(nid).report(task["task_id"], result=sig.to_dict()).status_code == 200
    done = c.request(rid)
    assert [p["task_status"] for p in done["participants"]] == ["done", "done"], done
    return done


def _job_seconds(c: Cluster) -> dict[str, float]:
    """``shardguard_job_seconds_sum`` by kind."""
    found = re.findall(r'^shardguard_job_seconds_sum\{kind="(\w+)"\} (\S+)$', c.client.get("/metrics").text, re.M)
    return {kind: float(v) for kind, v in found}


def _check_done(c: Cluster, req: dict[str, Any], digest: bytes = DIGEST) -> None:
    assert req["status"] == "done", req
    sig = bytes.fromhex(req["result"]["signature"])
    check_ecdsa_independently(
        EcdsaSignature(r=int.from_bytes(sig[:32], "big"), s=int.from_bytes(sig[32:], "big"),
                       recovery_id=req["result"]["recovery_id"], public_key=bytes.fromhex(c.public_key), digest=digest)
    )  # fmt: skip


def test_a_signer_restarting_before_it_took_its_pre_signed_task_reruns_the_signing_in_rounds(cluster: Cluster) -> None:
    """Its pre-signature died with the process: rather than fail the request (a rolling
    restart would fail every request in flight), the coordinator runs it again in three
    rounds, in a new job that carries it, and the request ends with that job."""
    c = cluster
    _three_round_then_stock(c)
    before = _job_seconds(c)
    rid = c.sign()
    time.sleep(0.3)  # the first attempt's time
    c.node("node-b").restart()
    assert c.node("node-b").register().status_code == 200
    req = _three_rounds(c, rid)  # node-a's first-attempt task, never taken, was cancelled
    _check_done(c, req)
    assert req["attempts"] == 2 and req["error"] is None
    assert c.request(req["bundle"])["attempts"] == 2
    # The request's duration counts from its own dispatch, the rerun's from its start: both
    # end together, so they differ by at least the first attempt's time.
    after = _job_seconds(c)
    request, rerun = (after[k] - before.get(k, 0.0) for k in ("sign", "rerun"))
    assert request - rerun >= 0.3, (before, after)
    listed = c.client.get("/v1/requests", headers=ADMIN).json()
    ids = [r["request_id"] for r in (listed if isinstance(listed, list) else listed["requests"])]
    assert rid in ids and not any(i.startswith("rrn") for i in ids)  # the rerun is no request of its own
    metrics = c.client.get("/metrics").text
    assert 'shardguard_signs_rerun_total{reason="node_restarted"} 1.0' in metrics


def test_a_signer_holding_no_such_pre_signature_reruns_the_signing_and_the_other_share_is_dropped(cluster: Cluster) -> None:
    """node-a answered its share; node-b has no such pre-signature (ONE_STEP_UNAVAILABLE,
    nothing released): the signing runs again in rounds and node-a's lone share is never used."""
    c = cluster
    _three_round_then_stock(c)
    rid = c.sign()
    (ta,) = [t for t in c.tasks("node-a") if t["kind"] == "sign"]
    (tb,) = [t for t in c.tasks("node-b") if t["kind"] == "sign"]
    assert c.node("node-a").report(ta["task_id"], result=c.answer(ta, "node-a")).status_code == 200
    error = {"reason": "ONE_STEP_UNAVAILABLE", "culprits": [], "detail": "no unused pre-signature of that id"}
    ack = c.node("node-b").report(tb["task_id"], status="failed", error=error)
    assert ack.status_code == 200 and ack.json()["job_status"] == "running", ack.text
    req = _three_rounds(c, rid)
    _check_done(c, req)
    assert req["carries"] is None and c.request(req["bundle"])["carries"] == rid


@pytest.mark.parametrize("reason", ["TaskError", "NONCE_MISMATCH", "STALE_STATE"])
def test_other_refusals_of_a_one_step_signing_fail_it(cluster: Cluster, reason: str) -> None:
    c = cluster
    _three_round_then_stock(c)
    rid = c.sign()
    (tb,) = [t for t in c.tasks("node-b") if t["kind"] == "sign"]
    culprits = ["node-b"] if reason == "STALE_STATE" else []
    ack = c.node("node-b").report(tb["task_id"], status="failed", error={"reason": reason, "culprits": culprits, "detail": "x"})
    assert ack.status_code == 200
    req = c.request(rid)
    assert req["status"] == "failed" and req["error"]["reason"] == reason and req["attempts"] == 1, req


def test_a_failing_rerun_fails_its_request_and_is_never_rerun(cluster: Cluster) -> None:
    c = cluster
    _three_round_then_stock(c)
    rid = c.sign()
    rerun = _restart_into_rerun(c, rid)
    (tb,) = [t for t in c.tasks("node-b") if t["kind"] == "sign"]
    error = {"reason": "ONE_STEP_UNAVAILABLE", "culprits": [], "detail": "x"}  # a rerun takes no one step: a plain failure
    assert c.node("node-b").report(tb["task_id"], status="failed", error=error).status_code == 200
    req = c.request(rid)
    assert req["status"] == "failed" and req["error"]["reason"] == "ONE_STEP_UNAVAILABLE", req
    assert f"in rerun {rerun}" in req["error"]["detail"]
    assert c.request(rerun)["status"] == "failed"


def test_a_rerun_past_its_deadline_fails_its_request(cluster: Cluster) -> None:
    c = cluster
    _three_round_then_stock(c)
    rid = c.sign()
    rerun = _restart_into_rerun(c, rid)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    with coord(c.client).db.write() as s:
        s.execute(update(Job).where(Job.id == rerun).values(lease_until=past))
    coord(c.client).sweep()
    req = c.request(rid)
    assert req["status"] == "failed" and req["error"]["reason"] == "timeout", req


def test_concurrent_restocking_keeps_to_presign_inflight(make_client: Callable[..., TestClient]) -> None:
    """Review finding (PostgreSQL): two calls at once each counted nothing in flight and each
    started presign_inflight jobs. The key row is now held FOR UPDATE while they count."""
    c = Cluster(make_client(presign_stock=8, presign_inflight=2))
    co = coord(c.client)
    started: list[int] = []
    pair = ["node-a", "node-c"]  # not the default signers (pre-signing since the DKG)
    threads = [threading.Thread(target=lambda: started.append(co._replenish(c.key_id, pair))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with co.db.read() as s:
        flying = [j.params["signers"] for j in s.scalars(select(Job).where(Job.kind == "presign", Job.status == "running"))]
    assert flying.count(pair) == sum(started) == 2, (started, flying)


def test_concurrent_claims_take_different_pre_signatures(make_client: Callable[..., TestClient], db_url: str) -> None:
    """Review finding (PostgreSQL): a claim locked every candidate row but took one, so a claim
    at the same moment found none. Now each locks and takes one row at a time."""
    c = Cluster(make_client(presign_stock=8))
    co = coord(c.client)
    now = dt.datetime.now(dt.UTC)
    ids = ["node-a", "node-b"]
    with co.db.raw.write() as conn:
        gens = presigned_mod.generations(conn, ids)
    with co.db.write() as s:
        for k in range(4):
            s.add(Presignature(key_id=c.key_id, id=bytes([k]) * 32, signer_set=presigned_mod.signer_set(ids), epoch=0,
                               generations=gens, big_r=b"\x02" + b"\x11" * 32, created_at=now))  # fmt: skip
    first_claimed, release = threading.Event(), threading.Event()
    got: dict[str, Any] = {}

    def first() -> None:
        with co.db.raw.write() as conn:
            got["first"] = presigned_mod.claim(conn, c.key_id, 0, ids, dt.datetime.now(dt.UTC), 3600)
            first_claimed.set()
            release.wait(5)

    t = threading.Thread(target=first)
    t.start()
    first_claimed.wait(5)
    if db_url.startswith("sqlite"):  # SQLite serialises write transactions: let the first end
        release.set()
    with co.db.raw.write() as conn:
        got["second"] = presigned_mod.claim(conn, c.key_id, 0, ids, dt.datetime.now(dt.UTC), 3600)
    release.set()
    t.join()
    assert got["first"] is not None and got["second"] is not None
    assert got["first"]["id"] != got["second"]["id"]
    assert c.stock() == 2


def test_signer_sets_beyond_presign_sets_get_no_stock(make_client: Callable[..., TestClient]) -> None:
    """Review finding: clients choosing many signer sets made each node keep (and evict) hundreds
    of pre-signatures, each costing a session. At most presign_sets sets are stocked."""
    c = Cluster(make_client(presign_stock=1, presign_inflight=1, presign_sets=2))
    for pair in (["node-a", "node-b"], ["node-a", "node-c"], ["node-b", "node-c"]):
        c.sign(signers=pair)
    presigns = {tuple(t["params"]["signers"]) for nid in ("node-a", "node-b", "node-c") for t in c.tasks(nid)
                if t["kind"] == "presign"}  # fmt: skip
    assert presigns == {("node-a", "node-b"), ("node-a", "node-c")}, presigns


def test_a_pre_signature_id_reported_twice_is_kept_once(cluster: Cluster) -> None:
    """Review finding: signers that all report an id kept already got a 500 (a duplicate key)."""
    c = cluster
    c.sign()
    by_node = {nid: [t for t in c.tasks(nid) if t["kind"] == "presign"] for nid in ("node-a", "node-b")}
    result = {"presignature": "07" * 32, "R": "02" + "11" * 32, "epoch": 0}
    jobs = [t["job_id"] for t in by_node["node-a"]]
    for job in jobs:
        for nid in ("node-a", "node-b"):
            task = next(t for t in by_node[nid] if t["job_id"] == job)
            assert c.node(nid).report(task["task_id"], result=result).status_code == 200
    ends = [c.request(job) for job in jobs]
    assert [e["status"] for e in ends] == ["done", "failed"], ends
    assert ends[1]["error"]["reason"] == "result_mismatch"
    assert c.stock() == 1


def test_a_signer_restarting_again_after_a_rerun_does_not_deadlock_with_its_end(cluster: Cluster) -> None:
    """Review finding: node-a's registration locked the request (its done first-attempt task)
    before the rerun, while the rerun's end locks the rerun, then the request. The request is
    never locked there now; node-a's restart fails the rerun it is running, and the request."""
    c = cluster
    _three_round_then_stock(c)
    rid = c.sign()
    (ta,) = [t for t in c.tasks("node-a") if t["kind"] == "sign"]
    assert c.node("node-a").report(ta["task_id"], result=c.answer(ta, "node-a")).status_code == 200
    rerun = _restart_into_rerun(c, rid)
    (ra,) = [t for t in c.tasks("node-a") if t["kind"] == "sign"]
    assert ra["job_id"] == rerun
    c.node("node-a").restart()
    assert c.node("node-a").register().status_code == 200
    req = c.request(rid)
    assert req["status"] == "failed" and req["error"]["reason"] == "node_restarted", req
    assert f"in rerun {rerun}" in req["error"]["detail"]


def test_the_sweep_ends_a_request_whose_rerun_ended_without_it(cluster: Cluster) -> None:
    """A replica of an older version ends the rerun but not the request it carries: the sweep
    ends the request as its rerun ended."""
    c = cluster
    _three_round_then_stock(c)
    rid = c.sign()
    rerun = _restart_into_rerun(c, rid)
    sig = local.ecdsa_sign(list(_shares()[:2]), DIGEST).to_dict()
    now = dt.datetime.now(dt.UTC)
    with coord(c.client).db.write() as s:
        s.execute(update(Job).where(Job.id == rerun).values(status="done", result=sig, finished_at=now))
    assert c.request(rid)["status"] == "running"
    coord(c.client).sweep()
    req = c.request(rid)
    assert req["status"] == "done" and req["result"] == sig, req
