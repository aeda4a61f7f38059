"""FROST signing with nonce commitments made ahead (API.md §1.13; coordinator/precommit.py): the
coordinator keeps each node's published commitments, hands one of every signer's to a signing
(at most once), and sums the signers' shares into a signature it verifies."""

from __future__ import annotations

import concurrent.futures
import secrets
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from shardguard import local
from shardguard.channel.identity import verify_signature
from shardguard.coordinator.models import Commitment
from shardguard.interop import verify_independently
from shardguard.node.nonces import COMMITMENT_CONTEXT, commitment_message
from shardguard.node.tasks import precommitted_items
from shardguard.protocols.frost import NoncePool, sign_precommitted
from shardguard.protocols.keys import KeyShare

from .conftest import ADMIN, FakeNode, _frost_shares, coord, dkg_result, frost_public_result, run_dkg

SCHEME = "ed25519"


class Signer:
    """A fake node with a nonce pool and its share of the scheme's test key."""

    def __init__(self, node: FakeNode, index: int, scheme: str = SCHEME) -> None:
        self.node = node
        self.index = index
        self.scheme = scheme
        self.share: KeyShare = _frost_shares(scheme)[index - 1]
        self.pool = NoncePool(self.share.public.suite, secrets.token_bytes)

    def wire(self, count: int) -> list[dict[str, str]]:
        g = self.pool.suite.group
        out = []
        for c in self.pool.commit(count, now=time.monotonic()):
            hiding, binding = g.encode(c.hiding), g.encode(c.binding)
            sig = self.node.keys.sign(
                COMMITMENT_CONTEXT, commitment_message(self.node.node_id, self.scheme, c.id, hiding, binding)
            )
            out.append({"id": c.id.hex(), "hiding": hiding.hex(), "binding": binding.hex(), "signature": sig.hex()})
        return out

    def publish(self, count: int = 4) -> dict[str, Any]:
        r = self.node.request(
            "POST", f"/v1/nodes/{self.node.node_id}/commitments", {"scheme": self.scheme, "commitments": self.wire(count)}
        )
        assert r.status_code == 200, r.text
        return dict(r.json())

    def answer(self, task: dict[str, Any], peers: dict[int, Signer]) -> dict[str, Any]:
        """What an honest node reports: its shares, after checking every co-signer's signature."""
        params = task["params"]
        participants = {int(p["index"]): str(p["node_id"]) for p in task["participants"]}
        messages = (
            [bytes.fromhex(i["message_hex"]) for i in params["bundle"]]
            if task["kind"] == "bundle"
            else [bytes.fromhex(params["message_hex"])]
        )

        def signed_by(index: int, cid: bytes, hiding: bytes, binding: bytes, signature: bytes) -> bool:
            peer = peers[index].node
            message = commitment_message(peer.node_id, self.scheme, cid, hiding, binding)
            return verify_signature(peer.keys.card().identity_public_key, COMMITMENT_CONTEXT, message, signature)

        items = precommitted_items(self.share, self.index, participants, messages, params["commitments"], signed_by)
        shares = sign_precommitted(self.share, signers=sorted(participants), items=items, pool=self.pool)
        g = self.share.public.suite.group
        return {"shares": [{"r": s.group_commitment.hex(), "z": g.scalar_encode(s.share).hex()} for s in shares]}


def _registered(client: TestClient, names: str = "abc") -> list[FakeNode]:
    nodes = [FakeNode(client, f"node-{c}") for c in names]
    for n in nodes:
        assert n.register().status_code == 200
    return nodes


def _stock(client: TestClient, node_id: str | None = None) -> int:
    with coord(client).db.read() as s:
        q = select(func.count()).select_from(Commitment)
        if node_id is not None:
            q = q.where(Commitment.node_id == node_id)
        return int(s.scalar(q) or 0)


def _setup(client: TestClient, nodes: list[FakeNode], scheme: str = SCHEME) -> tuple[str, dict[int, Signer]]:
    key_id = run_dkg(client, nodes, scheme)
    return key_id, {i + 1: Signer(n, i + 1, scheme) for i, n in enumerate(nodes)}


def _sign(client: TestClient, key_id: str, message: bytes, signers: list[str]) -> str:
    r = client.post(f"/v1/keys/{key_id}/sign", json={"message_hex": message.hex(), "signers": signers}, headers=ADMIN)
    assert r.status_code == 202, r.text
    return str(r.json()["request_id"])


def _request(client: TestClient, rid: str) -> dict[str, Any]:
    return dict(client.get(f"/v1/requests/{rid}", headers=ADMIN).json())


@pytest.mark.parametrize("scheme", ["ed25519", "secp256k1", "bip340"])
def test_a_signing_with_commitments_made_ahead_is_one_step_summed_here(
    client: TestClient, nodes: list[FakeNode], scheme: str
) -> None:
    key_id, signers = _setup(client, nodes, scheme)
    for i in (1, 2):
        assert signers[i].publish(3)["stock"] == 3
    message = b"pay 1 BTC to bob"
    rid = _sign(client, key_id, message, [nodes[0].node_id, nodes[1].node_id])
    tasks = {i: nodes[i - 1].next_task() for i in (1, 2)}
    for i, task in tasks.items():
        assert task is not None and task["kind"] == "sign"
        lists = task["params"]["commitments"]
        assert len(lists) == 1 and [c["index"] for c in lists[0]] == [1, 2]
    assert _stock(client) == 4  # one of each signer's taken, for good
    acks = [nodes[i - 1].report(tasks[i]["task_id"], result=signers[i].answer(tasks[i], signers)) for i in (1, 2)]  # type: ignore[arg-type]
    assert [a.status_code for a in acks] == [200, 200], [a.text for a in acks]
    assert acks[-1].json()["job_status"] == "done"
    req = _request(client, rid)
    assert req["status"] == "done"
    result = req["result"]
    pk = _frost_shares(scheme)[0].public.public_key_bytes
    assert result["scheme"] == scheme and result["public_key"] == pk.hex()
    assert verify_independently(scheme, pk, message, bytes.fromhex(result["signature"]))


def test_a_signer_without_commitments_means_two_rounds_and_nothing_is_taken(client: TestClient, nodes: list[FakeNode]) -> None:
    key_id, signers = _setup(client, nodes)
    signers[1].publish(2)
    _sign(client, key_id, b"m", [nodes[0].node_id, nodes[1].node_id])
    task = nodes[0].next_task()
    assert task is not None and "commitments" not in task["params"]
    assert _stock(client, nodes[0].node_id) == 2


def test_the_setting_turns_it_off(make_client: Callable[..., TestClient]) -> None:
    client = make_client(sign_precommitted=False)
    nodes = _registered(client)
    key_id, signers = _setup(client, nodes)
    for i in (1, 2):
        signers[i].publish(2)
    _sign(client, key_id, b"m", [nodes[0].node_id, nodes[1].node_id])
    task = nodes[0].next_task()
    assert task is not None and "commitments" not in task["params"]


def test_a_commitment_is_handed_to_one_signing_only(make_client: Callable[..., TestClient]) -> None:
    client = make_client(sign_inflight=0)  # every request starts at once: no bundles
    nodes = _registered(client)
    key_id, signers = _setup(client, nodes)
    for i in (1, 2):
        signers[i].publish(3)
    for k in range(5):
        _sign(client, key_id, b"m%d" % k, [nodes[0].node_id, nodes[1].node_id])
    seen: list[str] = []
    precommitted = 0
    while (task := nodes[0].next_task()) is not None:
        if "commitments" in task["params"]:
            precommitted += 1
            seen += [c["id"] for c in task["params"]["commitments"][0]]
    assert precommitted == 3 and len(seen) == len(set(seen)) == 6
    assert _stock(client) == 0


def test_a_bundle_takes_one_commitment_per_message_from_every_signer(client: TestClient, nodes: list[FakeNode]) -> None:
    key_id, signers = _setup(client, nodes)
    for i in (1, 2):
        signers[i].publish(8)
    pair = [nodes[0].node_id, nodes[1].node_id]
    first = _sign(client, key_id, b"first", pair)  # in flight: the next ones wait, then bundle
    waiting = [_sign(client, key_id, b"next %d" % k, pair) for k in range(4)]
    tasks = {i: nodes[i - 1].next_task() for i in (1, 2)}
    for i in (1, 2):
        assert nodes[i - 1].report(tasks[i]["task_id"], result=signers[i].answer(tasks[i], signers)).status_code == 200  # type: ignore[index]
    assert _request(client, first)["status"] == "done"
    bundle = {i: nodes[i - 1].next_task() for i in (1, 2)}
    assert bundle[1] is not None and bundle[1]["kind"] == "bundle" and len(bundle[1]["params"]["commitments"]) == 4
    for i in (1, 2):
        assert nodes[i - 1].report(bundle[i]["task_id"], result=signers[i].answer(bundle[i], signers)).status_code == 200  # type: ignore[index]
    pk = _frost_shares(SCHEME)[0].public.public_key_bytes
    for k, rid in enumerate(waiting):
        req = _request(client, rid)
        assert req["status"] == "done", req
        assert verify_independently(SCHEME, pk, b"next %d" % k, bytes.fromhex(req["result"]["signature"]))


def _one_signing(client: TestClient, nodes: list[FakeNode]) -> tuple[str, dict[int, Signer], dict[int, dict[str, Any]]]:
    key_id, signers = _setup(client, nodes)
    for i in (1, 2):
        signers[i].publish(2)
    rid = _sign(client, key_id, b"m", [nodes[0].node_id, nodes[1].node_id])
    tasks = {i: nodes[i - 1].next_task() for i in (1, 2)}
    assert all(t is not None for t in tasks.values())
    return rid, signers, tasks  # type: ignore[return-value]


def test_shares_that_do_not_sum_to_a_signature_fail_the_request(client: TestClient, nodes: list[FakeNode]) -> None:
    rid, signers, tasks = _one_signing(client, nodes)
    good = signers[1].answer(tasks[1], signers)
    assert nodes[0].report(tasks[1]["task_id"], result=good).status_code == 200
    bad = signers[2].answer(tasks[2], signers)
    g = signers[2].share.public.suite.group
    bad["shares"][0]["z"] = g.scalar_encode((g.scalar_decode(bytes.fromhex(bad["shares"][0]["z"])) + 1) % g.order).hex()
    ack = nodes[1].report(tasks[2]["task_id"], result=bad)
    assert ack.status_code == 200 and ack.json()["job_status"] == "failed"
    err = _request(client, rid)["error"]
    # RFC 9591 §5.4: the coordinator checks each share against its signer's verifying share.
    assert err["reason"] == "invalid_signature_share" and err["culprits"] == [nodes[1].node_id], err
    assert "does not verify" in err["detail"]


def _off_by_one(signer: Signer, answer: dict[str, Any], k: int = 0) -> dict[str, Any]:
    g = signer.share.public.suite.group
    z = g.scalar_decode(bytes.fromhex(answer["shares"][k]["z"]))
    answer["shares"][k]["z"] = g.scalar_encode((z + 1) % g.order).hex()
    return answer


@pytest.mark.parametrize("scheme", ["ed25519", "secp256k1", "bip340"])
def test_every_signer_of_a_wrong_share_is_named(make_client: Callable[..., TestClient], scheme: str) -> None:
    """Both shares wrong: both named. BIP340 covers the parity rules (even Y of key and R)."""
    client = make_client()
    nodes = _registered(client)
    key_id, signers = _setup(client, nodes, scheme)
    for i in (1, 2):
        signers[i].publish(2)
    rid = _sign(client, key_id, b"pay", [nodes[0].node_id, nodes[1].node_id])
    tasks = {i: nodes[i - 1].next_task() for i in (1, 2)}
    for i in (1, 2):
        nodes[i - 1].report(tasks[i]["task_id"], result=_off_by_one(signers[i], signers[i].answer(tasks[i], signers)))  # type: ignore[index]
    err = _request(client, rid)["error"]
    assert err["reason"] == "invalid_signature_share" and err["culprits"] == [nodes[0].node_id, nodes[1].node_id], err


def test_a_wrong_share_in_a_bundle_is_named_with_its_request(client: TestClient, nodes: list[FakeNode]) -> None:
    key_id, signers = _setup(client, nodes)
    for i in (1, 2):
        signers[i].publish(4)
    pair = [nodes[0].node_id, nodes[1].node_id]
    first = _sign(client, key_id, b"first", pair)  # runs alone; the next two wait and go together
    tasks = {i: nodes[i - 1].next_task() for i in (1, 2)}
    rids = [_sign(client, key_id, m, pair) for m in (b"second", b"third")]
    for i in (1, 2):
        nodes[i - 1].report(tasks[i]["task_id"], result=signers[i].answer(tasks[i], signers))  # type: ignore[index]
    assert _request(client, first)["status"] == "done"
    bundle = {i: nodes[i - 1].next_task() for i in (1, 2)}
    assert all(t is not None and t["kind"] == "bundle" for t in bundle.values())
    for i in (1, 2):
        answer = signers[i].answer(bundle[i], signers)  # type: ignore[arg-type]
        nodes[i - 1].report(bundle[i]["task_id"], result=_off_by_one(signers[i], answer, 1) if i == 1 else answer)  # type: ignore[index]
    for rid in rids:
        err = _request(client, rid)["error"]
        assert err["reason"] == "invalid_signature_share" and err["culprits"] == [nodes[0].node_id], err
        assert f"request 1 ({rids[1]}): the signature share of {nodes[0].node_id} does not verify" in err["detail"]


def test_without_the_holders_verifying_shares_no_signer_is_named(client: TestClient, nodes: list[FakeNode]) -> None:
    """A key whose DKG result carried no public key package (no verifying shares): the failure
    names nobody rather than guessing."""
    key_id = run_dkg(client, nodes, pk=dkg_result(SCHEME)["public_key"])
    signers = {i + 1: Signer(n, i + 1) for i, n in enumerate(nodes)}
    for i in (1, 2):
        signers[i].publish(1)
    rid = _sign(client, key_id, b"m", [nodes[0].node_id, nodes[1].node_id])
    tasks = {i: nodes[i - 1].next_task() for i in (1, 2)}
    nodes[0].report(tasks[1]["task_id"], result=signers[1].answer(tasks[1], signers))  # type: ignore[index]
    nodes[1].report(tasks[2]["task_id"], result=_off_by_one(signers[2], signers[2].answer(tasks[2], signers)))  # type: ignore[index]
    err = _request(client, rid)["error"]
    assert err["reason"] == "invalid_signature" and err["culprits"] == []


def test_after_a_refresh_the_new_verifying_shares_name_the_signer(client: TestClient, nodes: list[FakeNode]) -> None:
    """The refresh's result carries the holders' new package: the key keeps it (API.md §1.6),
    and a wrong share of epoch 1 is checked against epoch 1's verifying shares."""
    key_id, signers = _setup(client, nodes)
    refreshed = local.refresh(list(_frost_shares(SCHEME)))
    rid = client.post(f"/v1/keys/{key_id}/refresh", headers=ADMIN).json()["request_id"]
    for n in nodes:
        task = n.next_task()
        assert task is not None and task["kind"] == "refresh"
        assert n.report(task["task_id"], result=frost_public_result(refreshed[0].public)).status_code == 200
    assert _request(client, rid)["status"] == "done"
    key = client.get(f"/v1/keys/{key_id}", headers=ADMIN).json()
    assert key["epoch"] == 1 and key["public_package"]["public"]["epoch"] == 1
    for i in (1, 2):
        signers[i].share = refreshed[i - 1]
        signers[i].publish(1)
    rid = _sign(client, key_id, b"m", [nodes[0].node_id, nodes[1].node_id])
    tasks = {i: nodes[i - 1].next_task() for i in (1, 2)}
    nodes[0].report(tasks[1]["task_id"], result=_off_by_one(signers[1], signers[1].answer(tasks[1], signers)))  # type: ignore[index]
    nodes[1].report(tasks[2]["task_id"], result=signers[2].answer(tasks[2], signers))  # type: ignore[index]
    err = _request(client, rid)["error"]
    assert err["reason"] == "invalid_signature_share" and err["culprits"] == [nodes[0].node_id], err


def test_a_share_out_of_range_fails_the_request_naming_its_signer(client: TestClient, nodes: list[FakeNode]) -> None:
    rid, signers, tasks = _one_signing(client, nodes)
    assert nodes[0].report(tasks[1]["task_id"], result=signers[1].answer(tasks[1], signers)).status_code == 200
    bad = signers[2].answer(tasks[2], signers)
    bad["shares"][0]["z"] = "ff" * 32  # above the group order (scalars are little-endian here)
    assert nodes[1].report(tasks[2]["task_id"], result=bad).json()["job_status"] == "failed"
    err = _request(client, rid)["error"]
    assert err["reason"] == "invalid_signature_share" and err["culprits"] == [nodes[1].node_id]


def test_signers_that_derived_different_commitments_fail_the_request_naming_them(
    client: TestClient, nodes: list[FakeNode]
) -> None:
    rid, signers, tasks = _one_signing(client, nodes)
    mine = signers[1].answer(tasks[1], signers)
    other = signers[2].answer(tasks[2], signers)
    other["shares"][0]["r"] = mine["shares"][0]["r"][:-2] + ("00" if mine["shares"][0]["r"][-2:] != "00" else "01")
    assert nodes[0].report(tasks[1]["task_id"], result=mine).status_code == 200
    assert nodes[1].report(tasks[2]["task_id"], result=other).json()["job_status"] == "failed"
    err = _request(client, rid)["error"]
    assert err["reason"] == "result_mismatch" and err["culprits"] == sorted(n.node_id for n in nodes[:2])


@pytest.mark.parametrize(
    "result",
    [
        {"signature": "00"},
        {"shares": []},
        {"shares": [{"r": "00" * 32}]},
        {"shares": [{"r": "00" * 31, "z": "00" * 32}]},
        {"shares": [{"r": "AA" * 32, "z": "00" * 32}]},
        {"shares": [{"r": "00" * 32, "z": "00" * 32}], "extra": 1},
    ],
    ids=["a signature", "none", "no z", "short r", "upper case", "extra"],
)
def test_a_malformed_share_report_is_refused_naming_the_field(client: TestClient, nodes: list[FakeNode], result: Any) -> None:
    _, _, tasks = _one_signing(client, nodes)
    r = nodes[0].report(tasks[1]["task_id"], result=result)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"].startswith("result.shares")


def _post(node: FakeNode, body: Any, path_node: str | None = None) -> Any:
    return node.request("POST", f"/v1/nodes/{path_node or node.node_id}/commitments", body)


def test_published_commitments_are_validated(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_commitments=6)
    nodes = _registered(client, "ab")
    s = Signer(nodes[0], 1)
    one = s.wire(1)[0]
    cases: list[tuple[Any, int, str]] = [
        ({"scheme": "ecdsa", "commitments": [one]}, 422, "scheme"),
        ({"scheme": SCHEME, "commitments": []}, 422, "commitments"),
        ({"scheme": SCHEME, "commitments": [one | {"hiding": "00" * 33}]}, 422, "commitments[0].hiding"),
        ({"scheme": SCHEME, "commitments": [one | {"id": "00" * 15}]}, 422, "commitments[0].id"),
        ({"scheme": SCHEME, "commitments": [one | {"signature": "00" * 63}]}, 422, "commitments[0].signature"),
        ({"scheme": SCHEME, "commitments": [one, one]}, 422, "commitments[1].id"),
        ({"scheme": SCHEME, "commitments": [one | {"extra": "00"}]}, 422, ""),
    ]
    for body, status, field in cases:
        r = _post(nodes[0], body)
        assert r.status_code == status, (body, r.text)
        if field:
            assert r.json()["error"]["field"].endswith(field), r.text
    assert _post(nodes[1], {"scheme": SCHEME, "commitments": [one]}, path_node=nodes[0].node_id).status_code == 403
    assert _post(nodes[0], {"scheme": SCHEME, "commitments": [one]}).status_code == 200
    again = _post(nodes[0], {"scheme": SCHEME, "commitments": [one]})
    assert again.status_code == 409 and again.json()["error"]["code"] == "duplicate_commitment"
    full = _post(nodes[0], {"scheme": SCHEME, "commitments": s.wire(6)})
    assert full.status_code == 409 and full.json()["error"]["code"] == "commitments_full"
    assert full.json()["error"]["stock"] == 1


def test_a_restarted_node_has_no_commitments_left(client: TestClient, nodes: list[FakeNode]) -> None:
    s = Signer(nodes[0], 1)
    s.publish(4)
    old = nodes[0].keys
    nodes[0].restart()
    assert nodes[0].register().status_code == 200
    assert _stock(client, nodes[0].node_id) == 0
    stale = nodes[0].request(
        "POST", f"/v1/nodes/{nodes[0].node_id}/commitments", {"scheme": SCHEME, "commitments": s.wire(1)}, sign_as=old
    )
    assert stale.status_code == 401


def test_commitments_past_their_time_are_not_handed_out_and_are_swept(make_client: Callable[..., TestClient]) -> None:
    client = make_client(commitment_ttl=0.2)
    nodes = _registered(client)
    key_id, signers = _setup(client, nodes)
    for i in (1, 2):
        signers[i].publish(2)
    time.sleep(0.3)
    _sign(client, key_id, b"m", [nodes[0].node_id, nodes[1].node_id])
    task = nodes[0].next_task()
    assert task is not None and "commitments" not in task["params"]
    coord(client).sweep()
    assert _stock(client) == 0


def test_the_metrics_count_the_signings_by_mode(client: TestClient, nodes: list[FakeNode]) -> None:
    _one_signing(client, nodes)
    text = client.get("/metrics").text
    assert 'shardguard_signs_started_total{mode="precommitted"} 1.0' in text


def test_two_replicas_never_hand_out_one_commitment_twice(make_client: Callable[..., TestClient]) -> None:
    """Two coordinators on one database (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: one writer)
    start signings side by side from many threads: each commitment goes to one signing at most,
    and a signing that found too few runs in two rounds."""
    replicas = [make_client(sign_inflight=0), make_client(sign_inflight=0)]
    nodes = _registered(replicas[0])
    key_id, signers = _setup(replicas[0], nodes)
    for i in (1, 2):
        signers[i].publish(10)
    pair = [nodes[0].node_id, nodes[1].node_id]

    def submit(k: int) -> str:
        return _sign(replicas[k % 2], key_id, b"burst %d" % k, pair)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        rids = list(pool.map(submit, range(24)))
    assert len(set(rids)) == 24
    named: list[str] = []
    one_step = 0
    while (task := nodes[0].next_task()) is not None:
        lists = task["params"].get("commitments")
        if lists:
            one_step += 1
            named += [c["id"] for c in lists[0]]
    assert one_step == 10 and len(named) == len(set(named)) == 20
    assert _stock(replicas[0]) == 0


def test_the_answer_kept_for_a_waiting_client_is_what_the_database_says(client: TestClient, nodes: list[FakeNode]) -> None:
    """A request that a report on this replica ended is answered from the record as written
    (Coordinator.take_answer), once: it must be exactly what get_request reads back."""
    key_id, signers = _setup(client, nodes)
    for i in (1, 2):
        signers[i].publish(2)
    service = coord(client)
    rid = _sign(client, key_id, b"m", [nodes[0].node_id, nodes[1].node_id])
    tasks = {i: nodes[i - 1].next_task() for i in (1, 2)}
    for i in (1, 2):
        nodes[i - 1].report(tasks[i]["task_id"], result=signers[i].answer(tasks[i], signers))  # type: ignore[index]
    kept = service.take_answer(rid)
    assert kept is not None and kept["status"] == "done"
    assert kept == service.get_request(rid) == _request(client, rid)
    assert service.take_answer(rid) is None  # once
    # Through the API: a client waiting on its sign call gets the same record.
    pair = [nodes[0].node_id, nodes[1].node_id]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        body = {"message_hex": "aa", "signers": pair}
        waiting = pool.submit(client.post, f"/v1/keys/{key_id}/sign", params={"wait": 10}, json=body, headers=ADMIN)
        tasks = {i: nodes[i - 1].next_task(wait=5) for i in (1, 2)}
        for i in (1, 2):
            nodes[i - 1].report(tasks[i]["task_id"], result=signers[i].answer(tasks[i], signers))  # type: ignore[index]
        answered = waiting.result(timeout=10)
    assert answered.status_code == 200, answered.text
    assert answered.json() == _request(client, answered.json()["request_id"]) and answered.json()["status"] == "done"


def _play_reruns(client: TestClient, nodes: list[FakeNode], rids: list[str], messages: list[bytes]) -> None:
    """Each request runs again in its own two-round job that carries it: play those (the
    signature the signers would agree on) and check every request ends done with it."""
    reruns = set()
    for rid in rids:
        req = _request(client, rid)
        assert req["status"] == "running" and req["attempts"] == 2, req
        reruns.add(req["bundle"])
    if len(rids) > 1:  # a bundle's requests rerun together, in one bundle in rounds
        (bundle,) = reruns
        assert bundle.startswith("bdl")
    else:
        assert next(iter(reruns)).startswith("rrn")
    shares = list(_frost_shares(SCHEME)[:2])
    by_message = {m: local.sign(shares, m).hex() for m in messages}
    pk = _frost_shares(SCHEME)[0].public.public_key_bytes
    for node in nodes[:2]:
        tasks = []
        while (t := node.next_task()) is not None:
            tasks.append(t)
        assert sorted(t["job_id"] for t in tasks) == sorted(reruns), tasks
        for t in tasks:
            assert "commitments" not in t["params"], t
            if t["kind"] == "bundle":
                sigs = [by_message[bytes.fromhex(i["message_hex"])] for i in t["params"]["bundle"]]
                result = {"scheme": SCHEME, "public_key": pk.hex(), "signatures": sigs}
            else:
                assert t["kind"] == "sign"
                signature = by_message[bytes.fromhex(t["params"]["message_hex"])]
                result = {"scheme": SCHEME, "public_key": pk.hex(), "signature": signature}
            assert node.report(t["task_id"], result=result).status_code == 200
    for rid, message in zip(rids, messages, strict=True):
        req = _request(client, rid)
        assert req["status"] == "done", req
        assert verify_independently(SCHEME, pk, message, bytes.fromhex(req["result"]["signature"]))


def test_a_signer_restarting_before_its_one_step_task_reruns_the_signing_in_two_rounds(
    client: TestClient, nodes: list[FakeNode]
) -> None:
    """The new process holds none of the nonces the old one committed to: the coordinator
    runs the request again in two rounds rather than fail it (a rolling restart)."""
    key_id, signers = _setup(client, nodes)
    for i in (1, 2):
        signers[i].publish(2)
    rid = _sign(client, key_id, b"m", [nodes[0].node_id, nodes[1].node_id])
    first = nodes[0].next_task()
    assert first is not None and "commitments" in first["params"]
    share = signers[1].answer(first, signers)
    nodes[1].restart()
    assert nodes[1].register().status_code == 200
    late = nodes[0].report(first["task_id"], result=share)  # cancelled: never summed
    assert late.status_code == 409 and late.json()["error"]["code"] == "job_not_running", late.text
    _play_reruns(client, nodes, [rid], [b"m"])


def test_a_signer_that_lost_its_nonce_reruns_a_bundle_as_one_bundle_in_rounds(client: TestClient, nodes: list[FakeNode]) -> None:
    key_id, signers = _setup(client, nodes)
    for i in (1, 2):
        signers[i].publish(8)
    pair = [nodes[0].node_id, nodes[1].node_id]
    first = _sign(client, key_id, b"first", pair)
    messages = [b"next %d" % k for k in range(3)]
    waiting = [_sign(client, key_id, m, pair) for m in messages]
    tasks = {i: nodes[i - 1].next_task() for i in (1, 2)}
    for i in (1, 2):
        assert nodes[i - 1].report(tasks[i]["task_id"], result=signers[i].answer(tasks[i], signers)).status_code == 200  # type: ignore[index]
    assert _request(client, first)["status"] == "done"
    bundle = {i: nodes[i - 1].next_task() for i in (1, 2)}
    assert bundle[1] is not None and bundle[2] is not None and bundle[1]["kind"] == "bundle"
    error = {"reason": "NONCE_UNKNOWN", "culprits": [], "detail": "not a commitment of this process"}
    ack = nodes[1].report(bundle[2]["task_id"], status="failed", error=error)
    assert ack.status_code == 200 and ack.json()["job_status"] == "failed", ack.text
    failed = _request(client, bundle[1]["job_id"])
    assert failed["status"] == "failed" and "run again in rounds" in failed["error"]["detail"]
    _play_reruns(client, nodes, waiting, messages)
    metrics = client.get("/metrics").text
    assert 'shardguard_signs_rerun_total{reason="NONCE_UNKNOWN"} 3.0' in metrics
