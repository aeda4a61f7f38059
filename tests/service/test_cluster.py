"""The product end to end: a real coordinator process and real node processes on loopback.

Every signature is verified by an independent library; faults (kill -9 of a node mid-DKG,
mid-sign and mid-refresh, of the coordinator mid-request; a peer refusing evidence) end every
request done or failed with a reason, lose no share, and the key signs afterwards.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from coincurve import PublicKey
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

from shardguard import dev
from shardguard.channel import challenge_nonce, challenges_from_wire
from shardguard.client import Client, RequestFailed
from shardguard.enclave.simulated import SimulatedPlatform
from shardguard.interop import verify_independently
from shardguard.node.audit import verify_chain
from shardguard.node.keystore import Keystore, KeystoreError, KeystoreReason
from tests.service.imaged import imaged_cluster

NODES = ["node-1", "node-2", "node-3"]
JOB_TIMEOUT = 12.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Client]]:
    d = tmp_path_factory.mktemp("cluster")
    with imaged_cluster(d, 3, job_timeout=JOB_TIMEOUT) as client:
        yield d, client


def check_signature(key: dict[str, Any], result: dict[str, Any], payload: bytes) -> None:
    """libsodium / OpenSSL / libsecp256k1, never our own verifier."""
    sig = bytes.fromhex(result["signature"])
    if key["scheme"] == "ecdsa":
        pk = bytes.fromhex(result["public_key"])
        r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), pk).verify(
            encode_dss_signature(r, s), payload, ec.ECDSA(Prehashed(hashes.SHA256()))
        )
        rec = PublicKey.from_signature_and_message(sig + bytes([result["recovery_id"]]), payload, hasher=None)
        assert rec.format() == pk
    else:
        assert verify_independently(key["scheme"], bytes.fromhex(key["public_key"]), payload, sig)


def sign(client: Client, key: dict[str, Any], signers: list[str] | None = None, path: str | None = None) -> dict[str, Any]:
    payload = hashlib.sha256(os.urandom(16)).digest()
    if key["scheme"] == "ecdsa":
        out = client.sign(key["key_id"], digest=payload, signers=signers, path=path)
    else:
        out = client.sign(key["key_id"], message=payload, signers=signers)
    check_signature(key, out, payload)
    return out


def open_when_released(path: Path, platform: SimulatedPlatform) -> Keystore:
    """The killed node's lock goes away once the kernel has closed its files."""
    end = time.monotonic() + 10
    while True:
        try:
            return Keystore.open(path, platform, read_only=True)
        except KeystoreError as e:
            if e.reason is not KeystoreReason.LOCKED or time.monotonic() > end:
                raise
            time.sleep(0.1)


def node_pid(d: Path, node: str) -> int:
    return int(next(n["pid"] for n in dev.Cluster.load(d)["nodes"] if n["node_id"] == node))


def kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower():
            return
        time.sleep(0.05)


def restart(d: Path, client: Client, node: str) -> None:
    before = {n["node_id"]: n.get("generation") for n in client.nodes()}
    dev.start_node(d, node)
    end = time.monotonic() + 30
    while time.monotonic() < end:
        now = {n["node_id"]: n.get("generation") for n in client.nodes()}
        if now.get(node) != before.get(node):
            return
        time.sleep(0.2)
    raise AssertionError(f"{node} did not re-register")


def witnessed(client: Client, node: str, timeout: float = 30.0) -> None:
    """Wait until, for every key ``node`` holds, a witness job it asked for since it last
    registered is done: that key's other holders confirmed its state (docs/NODE.md, "t holders
    before a signature"). A restarted node whose holders go down before that does not sign."""
    since = next(n["registered_at"] for n in client.nodes() if n["node_id"] == node)
    listed = client.keys()
    held = {k["key_id"] for k in listed if k["status"] == "active" and node in {n["node_id"] for n in k["nodes"]}}
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done = {r["key_id"] for r in client.requests(limit=500) if r["kind"] == "witness"
                and r["params"].get("for") == node and r["created_at"] >= since and r["status"] == "done"}  # fmt: skip
        if held <= done:
            return
        time.sleep(0.2)
    raise AssertionError(f"{node}'s holders did not confirm it")


@pytest.fixture(scope="module")
def keys(cluster: tuple[Path, Client]) -> dict[str, dict[str, Any]]:
    _, client = cluster
    return {s: client.create_key(s, 2, NODES) for s in ("ecdsa", "ed25519", "bip340")}


@pytest.mark.parametrize("scheme", ["ecdsa", "ed25519", "bip340"])
def test_attested_dkg_sign_refresh_sign(cluster: tuple[Path, Client], keys: dict[str, dict[str, Any]], scheme: str) -> None:
    _, client = cluster
    key = keys[scheme]
    assert key["status"] == "active" and key["public_key"]
    sign(client, key, ["node-1", "node-3"], path="m/0/1" if scheme == "ecdsa" else None)
    client.refresh(key["key_id"])
    assert client.key(key["key_id"])["epoch"] == 1
    sign(client, key, ["node-2", "node-3"])


def _signs_started(d: Path) -> dict[str, float]:
    url = json.loads((d / "cluster.json").read_text())["url"]
    text = httpx.get(url.rstrip("/") + "/metrics", timeout=10).text
    return {m[0]: float(m[1]) for m in re.findall(r'^shardguard_signs_started_total\{mode="(\w+)"\} (\S+)$', text, re.M)}


def test_ecdsa_signs_in_one_step_once_its_signers_pre_signed(
    cluster: tuple[Path, Client], keys: dict[str, dict[str, Any]]
) -> None:
    """API.md §1.15: a signing restocks its signers' pre-signatures; the next ones take one step,
    and their signatures verify with OpenSSL and libsecp256k1 (re-randomised nonce, low-s,
    recovery id)."""
    d, client = cluster
    key = keys["ecdsa"]
    before = _signs_started(d)
    sign(client, key, ["node-1", "node-2"])
    end = time.monotonic() + 30
    presigned = 0.0
    while time.monotonic() < end and presigned < 3:
        sign(client, key, ["node-1", "node-2"])
        presigned = _signs_started(d).get("presigned", 0.0) - before.get("presigned", 0.0)
    assert presigned >= 3, _signs_started(d)


@pytest.mark.parametrize("scheme", ["ed25519", "bip340"])
def test_a_burst_of_frost_signatures_runs_in_bundles(
    cluster: tuple[Path, Client], keys: dict[str, dict[str, Any]], scheme: str
) -> None:
    """Concurrent FROST requests of one key and signer set: those beyond the one in flight wait
    and run as bundles (API.md §1.6); each gets its own signature over its own message, verified
    here by libsodium/OpenSSL (ed25519) or libsecp256k1 (bip340)."""
    d, _ = cluster
    info = dev.Cluster.load(d)
    key = keys[scheme]
    messages = [os.urandom(n) for n in range(1, 17)]

    def one(message: bytes) -> dict[str, Any]:
        with Client(info["url"], info["token"]) as c:
            return c.sign_request(key["key_id"], message=message, signers=["node-1", "node-2"], timeout=60)

    with concurrent.futures.ThreadPoolExecutor(len(messages)) as pool:
        done = list(pool.map(one, messages))
    for req, message in zip(done, messages, strict=True):
        assert req["status"] == "done" and req["params"]["message_hex"] == message.hex()
        check_signature(key, req["result"], message)
    bundles = {req["bundle"] for req in done} - {None}
    assert bundles, "16 requests at once: some waited and ran together"
    for b in bundles:
        with Client(info["url"], info["token"]) as c:
            job = c.request(b)
        assert job["kind"] == "bundle" and job["status"] == "done"
        assert {i["request_id"] for i in job["params"]["bundle"]} == {r["request_id"] for r in done if r["bundle"] == b}


def test_every_peer_was_admitted_on_evidence_answering_its_verifiers(
    cluster: tuple[Path, Client], keys: dict[str, dict[str, Any]]
) -> None:
    """The DKGs above ran only after each node challenged its peers and they answered: each
    node's registered evidence binds the challenges of the other two (docs/NODE.md "A task")."""
    _, client = cluster
    for n in NODES:
        node = client.node(n)
        challenges = challenges_from_wire(node["evidence_challenges"])
        assert {c.challenger for c in challenges} == set(NODES) - {n}, node["evidence_challenges"]
        assert node["evidence_nonce"] == challenge_nonce(challenges).hex()
        assert node["attestation"]["verdict"] == "verified" and node["attestation"]["bound_to_card"] is True


def test_a_peer_that_cannot_answer_a_fresh_challenge_is_not_admitted(
    cluster: tuple[Path, Client], keys: dict[str, dict[str, Any]]
) -> None:
    """node-3 is frozen (its enclave cannot attest any more); node-1 restarts, so it has
    admitted nobody and must challenge node-3. node-3's registered evidence, genuine but made
    before that challenge, is refused: the request fails naming node-3, and nothing was sent
    to it. Thawed, node-3 answers and the pair signs again."""
    d, client = cluster
    frozen = node_pid(d, "node-3")
    os.kill(frozen, signal.SIGSTOP)
    try:
        kill9(node_pid(d, "node-1"))
        restart(d, client, "node-1")
        with pytest.raises(RequestFailed) as e:
            client.sign(keys["ed25519"]["key_id"], message=b"fresh?", signers=["node-1", "node-3"])
        assert e.value.reason == "ATTESTATION" and "node-3" in e.value.culprits, e.value
        # Its own challenge unanswered, or (node-1's witness job, just after its restart, asked
        # node-3 first) waiting behind that one, also unanswered: either way refused for want of
        # an answer to a fresh challenge.
        assert "did not answer our challenge" in str(e.value.detail) or "waiting behind another task's challenge" in str(
            e.value.detail
        ), e.value
    finally:
        os.kill(frozen, signal.SIGCONT)
    sign(client, keys["ed25519"], ["node-1", "node-3"])


def test_nothing_secret_reaches_the_coordinator(cluster: tuple[Path, Client], keys: dict[str, dict[str, Any]]) -> None:
    d, client = cluster
    haystack = (d / "coordinator.sqlite3").read_bytes() + (d / "coordinator.log").read_bytes()
    for wal in d.glob("coordinator.sqlite3-*"):
        haystack += wal.read_bytes()
    found = 0
    for n in NODES:
        kill9(node_pid(d, n))  # the running node holds the keystore lock
    for n in NODES:
        platform = SimulatedPlatform(state_dir=d / n / "platform")
        with open_when_released(d / n / "keystore", platform) as ks:
            key_ids = ks.keys()  # a mapping of key id -> status
            for key_id in key_ids:
                share = ks.share(key_id)
                base = getattr(share, "share", share)
                secret = base.suite.group.scalar_encode(base.signing_share)
                for form in (secret, secret.hex().encode(), base64.b64encode(secret)):
                    assert form not in haystack, f"{n}'s share of {key_id} is visible to the coordinator"
                found += 1
    for n in NODES:
        restart(d, client, n)
    for n in NODES:  # the next test stops a node: each restarted one must be confirmed by then
        witnessed(client, n)
    assert found >= 3 * len(keys)


def test_kill_a_node_and_sign_with_the_other_two(cluster: tuple[Path, Client], keys: dict[str, dict[str, Any]]) -> None:
    d, client = cluster
    kill9(node_pid(d, "node-2"))
    for key in keys.values():
        sign(client, key, ["node-1", "node-3"])
    restart(d, client, "node-2")
    sign(client, keys["ecdsa"], ["node-1", "node-2"])


@pytest.mark.parametrize("scheme", ["ecdsa", "ed25519"])
def test_a_one_step_signing_whose_signer_restarts_runs_again_in_rounds(
    cluster: tuple[Path, Client], keys: dict[str, dict[str, Any]], scheme: str
) -> None:
    """A rolling restart (API.md §1.6, "Reruns"): a request that took a pre-signature or
    commitments made ahead while one of its signers was down would wait for a process that
    no longer holds them; the restart makes the coordinator run it again in rounds, and it is
    done with a signature OpenSSL / libsecp256k1 / libsodium accept."""
    d, client = cluster
    key = keys[scheme]
    pair = ["node-1", "node-2"]
    before = _signs_started(d)
    one_step = "presigned" if scheme == "ecdsa" else "precommitted"
    end = time.monotonic() + 30
    while time.monotonic() < end and _signs_started(d).get(one_step, 0.0) <= before.get(one_step, 0.0):
        sign(client, key, pair)  # until this pair signs in one step: it has stock
    time.sleep(1.0)  # and the restock after it has ended
    kill9(node_pid(d, "node-2"))
    payload = hashlib.sha256(os.urandom(16)).digest()
    if scheme == "ecdsa":
        req = client.sign(key["key_id"], digest=payload, signers=pair, wait=False)
    else:
        req = client.sign(key["key_id"], message=payload, signers=pair, wait=False)
    first = client.request(req["request_id"])
    assert ("presignature" if scheme == "ecdsa" else "commitments") in first["params"], first
    restart(d, client, "node-2")
    done = client.wait(req["request_id"], timeout=JOB_TIMEOUT + 40)
    assert done["attempts"] == 2 and done["bundle"].startswith("rrn"), done
    check_signature(key, done["result"], payload)
    # Each signer's log ties the rerun to the client's request, by its own signed entry.
    rid, digest = req["request_id"], hashlib.sha256(payload).hexdigest()
    for node in pair:
        bodies = _mirrored_chain(client, node, lambda b: any(x.get("request") == rid for x in b))
        (entry,) = [b for b in bodies if b.get("request") == rid]
        assert entry["event"] == "signing" and entry["job"] == done["bundle"] and entry["payload_sha256"] == digest


@pytest.mark.parametrize("kind", ["sign", "refresh", "dkg"])
def test_kill9_mid_protocol_then_restart(cluster: tuple[Path, Client], keys: dict[str, dict[str, Any]], kind: str) -> None:
    d, client = cluster
    key = keys["ecdsa"]
    epoch = client.key(key["key_id"])["epoch"]
    if kind == "sign":
        req = client.sign(key["key_id"], digest=bytes(32), signers=["node-1", "node-2"], wait=False)
    elif kind == "refresh":
        req = client.refresh(key["key_id"], wait=False)
    else:
        req = client.create_key("ecdsa", 2, NODES, wait=False)
    time.sleep(0.3)
    kill9(node_pid(d, "node-2"))
    try:
        client.wait(req["request_id"], timeout=JOB_TIMEOUT + 40)
        ended = "done"  # it may have finished before the kill landed
    except RequestFailed as e:
        ended = "failed"
        assert e.reason, e
    restart(d, client, "node-2")
    if kind == "refresh" and ended == "failed":
        assert client.key(key["key_id"])["epoch"] == epoch  # the old epoch stays in use
    sign(client, key, ["node-1", "node-2"])
    sign(client, key, ["node-2", "node-3"])


def test_coordinator_killed_mid_request(cluster: tuple[Path, Client], keys: dict[str, dict[str, Any]]) -> None:
    d, client = cluster
    key = keys["ed25519"]
    req = client.sign(key["key_id"], message=b"during a crash", wait=False)
    kill9(int(dev.Cluster.load(d)["coordinator"]["pid"]))
    dev.restart_coordinator(d)
    end = time.monotonic() + 20
    while True:
        try:
            client.health()
            break
        except Exception:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)
    try:
        client.wait(req["request_id"], timeout=JOB_TIMEOUT + 40)
    except RequestFailed as e:
        assert e.reason
    sign(client, key)


def test_a_node_that_refuses_its_peers_evidence(cluster: tuple[Path, Client], keys: dict[str, dict[str, Any]]) -> None:
    """node-3 restarts with a policy that refuses simulated evidence: it admits no peer, so it
    never sends them a byte, and the request fails naming the attestation refusal."""
    d, client = cluster
    kill9(node_pid(d, "node-3"))
    entry = next(n for n in dev.Cluster.load(d)["nodes"] if n["node_id"] == "node-3")
    policy = Path(entry["state"]) / "strict-policy.toml"
    policy.write_text('allowed_platforms = ["nitro"]\nallow_simulated = false\n')
    import subprocess
    import sys

    cl = dev.Cluster.load(d)
    with open(d / "node-3.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "shardguard.node.service", "--coordinator", cl["url"], "--state", entry["state"],
             "--node-id", "node-3", "--platform", "simulated", "--policy", str(policy)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=dev.node_env(entry["enroll_token"]),
        )  # fmt: skip
    try:
        time.sleep(2)
        with pytest.raises(RequestFailed) as e:
            client.sign(keys["ed25519"]["key_id"], message=b"x", signers=["node-1", "node-3"])
        assert "ATTESTATION" in e.value.reason or "ATTESTATION" in str(e.value), e.value
    finally:
        proc.kill()
        proc.wait()
    restart(d, client, "node-3")
    sign(client, keys["ed25519"], ["node-1", "node-3"])


def test_a_state_directory_restored_from_an_old_copy_is_refused(
    cluster: tuple[Path, Client], keys: dict[str, dict[str, Any]]
) -> None:
    """node-2's state is copied, the cluster moves on (peers witness newer counters), then the
    old copy is put back: node-2 refuses to sign (STALE_STATE) and its peers refuse it."""
    d, client = cluster
    state = Path(next(n["state"] for n in dev.Cluster.load(d)["nodes"] if n["node_id"] == "node-2"))
    kill9(node_pid(d, "node-2"))
    snapshot = state.parent / "node-2-snapshot"
    shutil.copytree(state, snapshot)
    restart(d, client, "node-2")
    for _ in range(2):
        sign(client, keys["ed25519"], ["node-1", "node-2"])
        sign(client, keys["ed25519"], ["node-2", "node-3"])
    # A two-round signing last, so that both peers witnessed the newer state: a one-step one
    # exchanges no notes, and a peer whose record lags would take the old copy's counter for
    # a newer one and call the newest state a fork later (docs/NODE.md, "Known limits").
    sign(client, keys["ecdsa"], ["node-1", "node-2"])
    sign(client, keys["ecdsa"], ["node-2", "node-3"])
    kill9(node_pid(d, "node-2"))
    newest = state.parent / "node-2-newest"
    state.rename(newest)
    shutil.copytree(snapshot, state)
    restart(d, client, "node-2")
    with pytest.raises(RequestFailed) as e:
        client.sign(keys["ed25519"]["key_id"], message=b"rolled back", signers=["node-1", "node-2"])
    assert e.value.reason in ("STALE_STATE", "STALE_PEER"), e.value
    assert "node-2" in e.value.culprits, e.value
    kill9(node_pid(d, "node-2"))
    shutil.rmtree(state)
    newest.rename(state)
    restart(d, client, "node-2")
    sign(client, keys["ed25519"], ["node-1", "node-2"])


def test_a_node_that_lost_its_state_is_repaired_by_its_peers(
    cluster: tuple[Path, Client], keys: dict[str, dict[str, Any]]
) -> None:
    d, client = cluster
    state = Path(next(n["state"] for n in dev.Cluster.load(d)["nodes"] if n["node_id"] == "node-2"))
    sign(client, keys["ed25519"], ["node-1", "node-2"])
    lost = _mirrored_chain(client, "node-2", lambda bodies: bool(bodies))[-1]["seq"]  # mirrored before the loss
    kill9(node_pid(d, "node-2"))
    shutil.rmtree(state)  # the disk is gone
    restart(d, client, "node-2")
    for scheme in ("ed25519", "bip340"):
        with pytest.raises(RequestFailed):
            client.sign(keys[scheme]["key_id"], message=b"before repair", signers=["node-2", "node-3"])
        client.repair(keys[scheme]["key_id"], "node-2")
        sign(client, keys[scheme], ["node-2", "node-3"])
        sign(client, keys[scheme], ["node-1", "node-2"])
    # Its new state's audit log continued the mirrored chain (numbering from 1 again, each entry
    # would be an audit_conflict, and the node would stop after MAX_PENDING of them).
    bodies = _mirrored_chain(client, "node-2", lambda b: sum(x["event"] == "signing" and x["seq"] > lost for x in b) >= 4)
    (restart_entry,) = [b for b in bodies if b["event"] == "node_started" and "continues" in b]
    assert restart_entry["seq"] > lost and restart_entry["continues"]["seq"] == restart_entry["seq"] - 1


def _mirrored_chain(client: Client, node: str, done: Any, timeout: float = 15.0) -> list[dict[str, Any]]:
    """The node's mirrored audit entries once ``done(bodies)``: one chain from entry 1, each
    entry verified with the key the mirror recorded for it."""
    end = time.monotonic() + timeout
    while True:
        records = client.audit(node=node, limit=1000)["entries"]
        bodies = verify_chain(records, {int(r["seq"]): bytes.fromhex(r["identity_public_key"]) for r in records})
        if done(bodies):
            return bodies
        assert time.monotonic() < end, f"{node}'s audit entries never reached the coordinator"
        time.sleep(0.3)
