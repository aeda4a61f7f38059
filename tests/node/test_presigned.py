"""DKLs23 pre-signatures at the node (node/presignatures.py; NodeService._sign_presigned; docs/NODE.md
"ECDSA in one step"): a ``presign`` task leaves one in memory at each signer, a ``sign`` task
naming it answers in one step, once; every refusal releases nothing. Two nodes in one process
(test_service_tasks' harness) on a 2-of-2 ECDSA key."""

from __future__ import annotations

import base64
import json
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardguard import local
from shardguard.coordinator.signatures import assemble_presigned
from shardguard.node.audit import verify_chain
from shardguard.node.presignatures import PresignaturePool
from shardguard.node.service import NodeService
from shardguard.node.tasks import TaskError
from shardguard.protocols.dkls23 import EcdsaSignature, Presignature
from tests.conftest import check_ecdsa_independently

from .test_service_tasks import NODES, Hub, _run_all, deadline_in, two_nodes

Stack = tuple[Hub, dict[str, NodeService], list[dict[str, Any]]]
DIGEST = bytes(range(32))


@pytest.fixture
def ecdsa_nodes(tmp_path: Path) -> Iterator[Stack]:
    yield from two_nodes(tmp_path, local.ecdsa_keygen(2, 2))


def _run(stack: Stack, kind: str, job: str, params: dict[str, Any], epoch: int = 0) -> list[dict[str, Any]]:
    hub, services, parts = stack
    return _run_all(hub, services, parts, kind, job, params, epoch, scheme="ecdsa")


def _presign(stack: Stack, job: str = "p1") -> dict[str, str]:
    results = _run(stack, "presign", job, {"signers": list(NODES)})
    assert [r["status"] for r in results] == ["done", "done"], results
    assert results[0]["result"] == results[1]["result"], "both name the same pre-signature"
    made = results[0]["result"]
    assert set(made) == {"presignature", "R", "epoch"} and made["epoch"] == 0
    return {"id": made["presignature"], "R": made["R"], "seed": secrets.token_hex(32)}


def _entries(svc: NodeService, job: str) -> list[dict[str, Any]]:
    return [e for e in (json.loads(base64.b64decode(r["entry"])) for r in svc.audit.pending()) if e.get("job") == job]


def _public_key(svc: NodeService) -> str:
    return svc.shares.load("k1").public.public_key_bytes.hex()


def test_presign_then_one_step_with_the_entry_durable_before_the_share_leaves(ecdsa_nodes: Stack) -> None:
    hub, services, _ = ecdsa_nodes
    ref = _presign(ecdsa_nodes)
    assert all(svc.presignatures.count("k1") == 1 for svc in services.values())
    for svc in services.values():  # a pre-signing signs nothing: no entry of its own
        assert not [e for e in _entries(svc, "p1") if e["event"] not in ("refused",)]
    posts_before = dict(hub.posts)
    results = _run(ecdsa_nodes, "sign", "s1", {"digest_hex": DIGEST.hex(), "presignature": ref})
    assert [r["status"] for r in results] == ["done", "done"], results
    assert all(r["entry_durable"] for r in results)
    assert hub.posts == posts_before  # nothing went to the peer: no round, no witness notes
    assert all(svc.presignatures.count("k1") == 0 for svc in services.values())
    pk = _public_key(services["node-1"])
    made, _, _, _ = assemble_presigned(pk, DIGEST, {n: r["result"]["share"] for n, r in zip(NODES, results, strict=True)})
    assert made is not None
    sig = bytes.fromhex(made["signature"])
    check_ecdsa_independently(
        EcdsaSignature(r=int.from_bytes(sig[:32], "big"), s=int.from_bytes(sig[32:], "big"), recovery_id=made["recovery_id"],
                       public_key=bytes.fromhex(pk), digest=DIGEST)
    )  # fmt: skip
    for svc in services.values():
        (entry,) = _entries(svc, "s1")
        assert entry["event"] == "signing" and entry["presignature"] == ref["id"]
        verify_chain(svc.audit.pending(), svc.card.identity_public_key)
    # The same pre-signature again, for another digest (a replayed task, or a hostile coordinator):
    # it is gone — two digests with one nonce would give the key away (spec P9).
    again = _run(ecdsa_nodes, "sign", "s2", {"digest_hex": "ab" * 32, "presignature": ref})
    assert [r["status"] for r in again] == ["failed", "failed"], again
    assert all(r["error"]["reason"] == "ONE_STEP_UNAVAILABLE" and "no unused pre-signature" in r["error"]["detail"]
               for r in again)  # fmt: skip
    for svc in services.values():
        assert not [e for e in _entries(svc, "s2") if e["event"] == "signing"]


@pytest.mark.parametrize(
    "forge",
    ["R", "seed size", "id size", "fields", "not hex", "path", "commitments", "stale", "epoch", "unknown id", "alone"],
)
def test_a_refused_one_step_signing_releases_nothing(ecdsa_nodes: Stack, forge: str) -> None:
    hub, services, parts = ecdsa_nodes
    ref = _presign(ecdsa_nodes)
    one = services["node-1"]
    params: dict[str, Any] = {"digest_hex": DIGEST.hex(), "presignature": dict(ref)}
    epoch, participants = 0, parts
    if forge == "R":
        params["presignature"]["R"] = "02" + "11" * 32
    elif forge == "seed size":
        params["presignature"]["seed"] = "00"
    elif forge == "id size":
        params["presignature"]["id"] = ref["id"][:-2]
    elif forge == "fields":
        params["presignature"]["extra"] = "00"
    elif forge == "not hex":
        params["presignature"]["seed"] = "zz" * 32
    elif forge == "path":
        params["path"] = "m/1"
    elif forge == "commitments":
        params["commitments"] = []
    elif forge == "stale":  # a peer proved this process's state old since the pre-signing
        one._stale = "a peer holds a newer counter"
    elif forge == "epoch":
        epoch = 1
    elif forge == "unknown id":
        params["presignature"]["id"] = secrets.token_hex(32)
    elif forge == "alone":  # one signer of a 2-of-2 key: never the signers it was made with
        participants = parts[:1]
    raw = {"task_id": "x-1", "job_id": "x", "kind": "sign", "scheme": "ecdsa", "threshold": 2,
           "participants": participants, "you": {"index": 1}, "instance": secrets.token_hex(32), "key_id": "k1",
           "epoch": epoch, "params": params, "deadline": deadline_in(60)}  # fmt: skip
    one.handle(raw)
    result = hub.results["x-1"]
    assert result["status"] == "failed" and result["result"] is None, result
    # A pre-signature this process does not hold: the coordinator may run the request in rounds.
    expected = {"stale": "STALE_STATE", "unknown id": "ONE_STEP_UNAVAILABLE"}.get(forge, "TaskError")
    assert result["error"]["reason"] == expected, result
    assert not [e for e in _entries(one, "x") if e["event"] == "signing"]


def test_a_refresh_drops_the_key_s_pre_signatures(ecdsa_nodes: Stack) -> None:
    _, services, _ = ecdsa_nodes
    ref = _presign(ecdsa_nodes)
    refreshed = _run(ecdsa_nodes, "refresh", "r1", {})
    assert [r["status"] for r in refreshed] == ["done", "done"], refreshed
    assert all(svc.presignatures.count("k1") == 0 for svc in services.values())
    late = _run(ecdsa_nodes, "sign", "s1", {"digest_hex": DIGEST.hex(), "presignature": ref}, epoch=1)
    assert [r["status"] for r in late] == ["failed", "failed"], late


@pytest.mark.parametrize("params", [{"signers": list(NODES), "digest_hex": "00" * 32}, {}, {"signers": [], "x": 1}])
def test_a_pre_signing_names_its_signers_only(ecdsa_nodes: Stack, params: dict[str, Any]) -> None:
    results = _run(ecdsa_nodes, "presign", "p1", params)
    assert all(r["status"] == "failed" and r["error"]["reason"] == "TaskError" for r in results), results


# -- the pool ---------------------------------------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _made(n: int) -> list[Presignature]:
    """n real pre-signatures of one signer (node 1 of a 2-of-2 key)."""
    from shardguard.protocols.dkls23 import DklsPresigner
    from tests.protocols.test_dkls23 import run

    shares = local.ecdsa_keygen(2, 2)
    out = []
    for k in range(n):
        inst = secrets.token_bytes(32)
        parties = {s.identifier: DklsPresigner(s, signers=[1, 2], instance=inst, rng=secrets.token_bytes) for s in shares}
        out.append(run(parties)[1])  # type: ignore[arg-type]
    return out  # type: ignore[return-value]


def test_pool_hands_each_out_once_and_forgets_on_drop_expiry_and_cap() -> None:
    clock = _Clock()
    pool = PresignaturePool(per_key=2, keep_seconds=10, clock=clock)
    a, b, c = _made(3)
    pool.add("k", a)
    assert pool.take("k", a.presignature_id) is a
    with pytest.raises(TaskError):
        pool.take("k", a.presignature_id)
    with pytest.raises(TaskError):
        pool.take("other", b.presignature_id)
    for p in (a, b, c):  # over the cap: the oldest goes
        pool.add("k", p)
    assert pool.count("k") == 2
    with pytest.raises(TaskError):
        pool.take("k", a.presignature_id)
    clock.now = 11  # expired: refused, and gone
    with pytest.raises(TaskError):
        pool.take("k", b.presignature_id)
    pool.add("k", a)  # adding prunes the expired
    assert pool.count("k") == 1 and pool.count() == 1
    assert pool.drop("k") == 1 and pool.count() == 0


def test_pre_signing_tasks_run_on_niced_threads_of_their_own(ecdsa_nodes: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """They make stock for later requests: a signing in flight gets the cores first."""
    _, services, _ = ecdsa_nodes
    svc = services["node-1"]
    seen: dict[str, tuple[str, int]] = {}
    done = threading.Event()

    def record(task: dict[str, Any]) -> None:
        tid = threading.get_native_id()
        nice = int(Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[16])
        seen[task["kind"]] = (threading.current_thread().name, nice)
        if len(seen) == 2:
            done.set()

    monkeypatch.setattr(svc, "_handle_logged", record)
    svc._submit({"kind": "presign"})
    svc._submit({"kind": "sign"})
    assert done.wait(5)
    assert seen["presign"][0].startswith("presign") and seen["presign"][1] == 10, seen
    assert seen["sign"][0].startswith("task") and seen["sign"][1] == 0, seen
