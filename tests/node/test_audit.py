"""The node's audit log: hash chain, signatures, persistence across restarts, offline check."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from shardguard.channel import NodeKeys
from shardguard.enclave.simulated import SimulatedPlatform
from shardguard.node.audit import AuditLog, verify_chain
from shardguard.node.keystore import Keystore


@pytest.fixture
def store(tmp_path: Path) -> Keystore:
    return Keystore.open(tmp_path / "ks", SimulatedPlatform(state_dir=tmp_path / "p"))


def test_entries_chain_and_verify(store: Keystore) -> None:
    keys = NodeKeys.generate("node-1")
    log = AuditLog(store, keys)
    for i in range(5):
        log.append("signed", job=f"j{i}", key_id="k", payload_sha256="ab" * 32)
    records = log.pending()
    body = verify_chain(records, keys.card().identity_public_key)
    assert [b["seq"] for b in body] == [1, 2, 3, 4, 5] and body[0]["prev"] == "00" * 32
    log.mirrored([1, 2])
    assert [r["seq"] for r in log.pending()] == [3, 4, 5]


def test_tampering_is_detected(store: Keystore) -> None:
    keys = NodeKeys.generate("node-1")
    log = AuditLog(store, keys)
    for i in range(3):
        log.append("signed", job=f"j{i}")
    records = log.pending()
    pk = keys.card().identity_public_key
    edited = dict(records[1])
    body = json.loads(base64.b64decode(edited["entry"]))
    body["job"] = "other"
    edited["entry"] = base64.b64encode(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).decode()
    with pytest.raises(ValueError, match="hash"):
        verify_chain([records[0], edited, records[2]], pk)
    with pytest.raises(ValueError, match="signature"):
        verify_chain(records, NodeKeys.generate("x").card().identity_public_key)
    forged = dict(records[2])
    forged["signature"] = records[1]["signature"]
    with pytest.raises(ValueError, match="signature"):
        verify_chain([records[0], records[1], forged], pk)


def test_the_chain_continues_after_a_restart_with_new_keys(tmp_path: Path) -> None:
    platform = SimulatedPlatform(state_dir=tmp_path / "p")
    k1 = NodeKeys.generate("node-1")
    with Keystore.open(tmp_path / "ks", platform) as ks:
        AuditLog(ks, k1).append("node_started")
    k2 = NodeKeys.generate("node-1")
    with Keystore.open(tmp_path / "ks", platform) as ks:
        log = AuditLog(ks, k2)
        log.append("node_started")
        records = log.pending()
    keys = {1: k1.card().identity_public_key, 2: k2.card().identity_public_key}
    body = verify_chain(records, keys)
    assert body[1]["prev"] == records[0]["hash"]
