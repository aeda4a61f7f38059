"""The node's audit log: hash chain, signatures, persistence across restarts, offline check."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from shardguard.channel import NodeKeys
from shardguard.enclave.simulated import SimulatedPlatform
from shardguard.node.audit import AuditLog, verify_chain
from shardguard.node.keystore import Keystore, KeystoreError, KeystoreReason


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
    # Each kept record names the key that signed it, so the entry written before the restart
    # is mirrored (and checked by the coordinator) with the old key, not the posting one.
    assert [r["signer"] for r in records] == [keys[1].hex(), keys[2].hex()]
    assert verify_chain(records) == body
    with pytest.raises(ValueError, match="signature"):
        verify_chain([{**records[0], "signer": keys[2].hex()}])


def test_mirrored_survives_a_disk_that_cannot_be_written(store: Keystore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forgetting acknowledged entries on a full or read-only disk does not raise (the node's
    mirroring thread would die); they leave ``pending()`` at once and the record at the next
    successful write. Appending still raises: an entry is never reported kept when it is not."""
    keys = NodeKeys.generate("node-1")
    log = AuditLog(store, keys)
    for i in range(3):
        log.append("signed", job=f"j{i}")
    real = store.put_state_json

    def full(name: str, value: bytes) -> bool:
        raise KeystoreError(KeystoreReason.DISK_FULL, store.directory, "write failed: No space left on device")

    monkeypatch.setattr(store, "put_state_json", full)
    log.mirrored([1, 2])
    assert [r["seq"] for r in log.pending()] == [3]
    assert [r["seq"] for r in AuditLog(store, keys).pending()] == [1, 2, 3]  # on disk: not yet forgotten
    with pytest.raises(KeystoreError) as e:
        log.append("signed", job="j3")
    assert e.value.reason is KeystoreReason.DISK_FULL
    assert [r["seq"] for r in log.pending()] == [3]
    monkeypatch.setattr(store, "put_state_json", real)
    log.append("signed", job="j3")
    assert [r["seq"] for r in AuditLog(store, keys).pending()] == [3, 4]
    verify_chain(log.pending(), keys.card().identity_public_key)
