"""The node's write path after issue 6's speed work: what is spliced instead of encoded must be
byte for byte what the canonical encoder gives; deferred witness values become durable with the
next transaction; audit entries are group-committed, never listed or returned before they are
durable, and acknowledgements ride with the next write."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from shardguard.channel import NodeKeys
from shardguard.enclave.simulated import SimulatedPlatform
from shardguard.node import keystore as ks_module
from shardguard.node.audit import AuditLog, verify_chain
from shardguard.node.keystore import Keystore, KeystoreError, KeystoreReason
from tests.node.test_keystore import FROST_A, FROST_B, FaultyOs, at

R = KeystoreReason


# -- keystore: spliced encodings ---------------------------------------------------------------


def test_manifest_pieces_equal_the_canonical_encoding(store: Keystore) -> None:
    store.stage("k1", FROST_A[0])
    store.commit("k1", 0)
    for epoch in (2, 9, 10, 11):  # "10" sorts before "9" as a JSON key
        store.stage("k1", at(FROST_A[0], epoch))
    store.stage("k-2_x", FROST_B[0])
    for i in range(300):  # history fills up to HISTORY and then slides
        store.put_state(f"s{i % 7}", {"i": i, "nested": {"b": [1, 2], "a": None}})
        m = store._manifest
        # what the last write used (history pieces carried over from write to write)
        assert store._manifest_bytes(m) == ks_module._canonical(m.to_payload()), i
        if i % 50 == 0:
            assert ks_module._manifest_json(m) == ks_module._canonical(m.to_payload())
    assert len(store._manifest.history) == ks_module.HISTORY
    assert store._fast_manifest
    store.close()
    with Keystore.open(store.directory, store._platform) as again:  # every check passes on reading
        assert again._fast_manifest and again.get_state("s6") == {"i": 293, "nested": {"b": [1, 2], "a": None}}


def test_record_plaintext_equals_the_canonical_record(store: Keystore, platform: SimulatedPlatform) -> None:
    payload = {"z": [1, "two", {"x": True}], "a": "é", "n": None}
    canonical = ks_module._canonical(payload)
    data, plaintext = store._encode("state", "name-1", 0, 42, canonical)
    record = {
        "format": ks_module.FORMAT,
        "store": store.store_id,
        "kind": "state",
        "key_id": "name-1",
        "epoch": 0,
        "counter": 42,
        "payload": payload,
        "payload_sha256": hashlib.sha256(canonical).hexdigest(),
    }
    assert plaintext == ks_module._canonical(record)
    header, sealed = Keystore._unframe(data, Path("x"))
    assert header == {"kind": "state", "key_id": "name-1", "epoch": 0, "counter": 42}
    assert platform.unseal(sealed, label=ks_module._label("state", "name-1")) == plaintext


def test_a_manifest_the_pieces_do_not_reproduce_is_encoded_whole(tmp_path: Path, platform: SimulatedPlatform) -> None:
    """Pieces are used only where they reproduce the stored manifest exactly (checked at open)."""
    with Keystore.open(tmp_path / "ks", platform) as s:
        s.put_state("a", 1)
    real = ks_module._manifest_json
    try:
        ks_module._manifest_json = lambda m: b"{}"  # type: ignore[assignment]
        with Keystore.open(tmp_path / "ks", platform) as s:
            assert not s._fast_manifest
            s.put_state("b", 2)
    finally:
        ks_module._manifest_json = real
    with Keystore.open(tmp_path / "ks", platform) as s:
        assert s._fast_manifest and (s.get_state("a"), s.get_state("b")) == (1, 2)


def test_put_state_json(tmp_path: Path, platform: SimulatedPlatform) -> None:
    with Keystore.open(tmp_path / "ks", platform) as s:
        value = {"seq": 3, "pending": [{"b": 1, "a": "x"}], "hash": "ab"}
        assert s.put_state_json("audit", ks_module._canonical(value))
        assert not s.put_state_json("audit", ks_module._canonical(value))  # equal: no write
        assert not s.put_state("audit", value)
        for bad in ("text", bytearray(b"{}"), "é".encode()):
            with pytest.raises(KeystoreError) as e:
                s.put_state_json("audit", bad)  # type: ignore[arg-type]
            assert e.value.reason is R.INVALID_ARGUMENT
    with Keystore.open(tmp_path / "ks", platform) as s:
        assert s.get_state("audit") == value


# -- keystore: deferred witness values ---------------------------------------------------------


def _witness_on_disk(s: Keystore) -> dict[str, int]:
    _, _, _, payload = s._read(ks_module.WITNESS, ks_module._Expect("witness", "witness"), ks_module.MAX_WITNESS)
    return {p: v["counter"] for p, v in payload["peers"].items()}


def test_deferred_peer_counters_are_written_by_the_next_transaction(tmp_path: Path, platform: SimulatedPlatform) -> None:
    d1, d2, d3 = (bytes([i]) * 32 for i in (1, 2, 3))
    with Keystore.open(tmp_path / "ks", platform) as s:
        s.record_peer_counter("p", 1, d1)
        assert s.record_peer_counter("p", 2, d2, defer=True)
        assert s.peer_counters()["p"].counter == 2  # taken at once ...
        with pytest.raises(KeystoreError) as e:  # ... and checked against
            s.record_peer_counter("p", 1, d1)
        assert e.value.reason is R.PEER_ROLLBACK
        assert not s.record_peer_counter("p", 2, d2, defer=True)
        gen = s.witness_generation
        assert _witness_on_disk(s) == {"p": 1}  # not written yet
        s.put_state("x", 1)  # any transaction writes it first
        assert _witness_on_disk(s) == {"p": 2}
        assert not s.flush_witness(gen)
        s.record_peer_counter("q", 7, d3, defer=True)
    with Keystore.open(tmp_path / "ks", platform) as s:  # closed without a flush: q is lost, p is not
        assert {p: v.counter for p, v in s.peer_counters().items()} == {"p": 2}
        s.record_peer_counter("q", 7, d3, defer=True)
        assert s.flush_witness()
        assert not s.flush_witness()
    with Keystore.open(tmp_path / "ks", platform) as s:
        assert {p: v.counter for p, v in s.peer_counters().items()} == {"p": 2, "q": 7}


@pytest.mark.parametrize("fail_at", range(1, 7))
def test_a_failing_witness_write_fails_the_transaction_and_is_retried(
    fail_at: int, tmp_path: Path, platform: SimulatedPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deferred witness goes first in a transaction: a fault there or later fails the
    transaction (old state kept), the values stay deferred and the next write takes them."""
    d = bytes([9]) * 32
    with Keystore.open(tmp_path / "ks", platform) as s:
        s.put_state("x", 0)
        s.record_peer_counter("p", 5, d, defer=True)
        monkeypatch.setattr(ks_module, "os", FaultyOs(fail_at))
        try:
            s.put_state("x", 1)
        except KeystoreError as e:
            assert e.reason is R.DISK_FULL
            assert s.get_state("x") == 0
        finally:
            monkeypatch.setattr(ks_module, "os", __import__("os"))
        s.put_state("x", 2)
        assert not s.flush_witness()
    with Keystore.open(tmp_path / "ks", platform) as s:
        assert s.get_state("x") == 2 and s.peer_counters()["p"].counter == 5


# -- audit log: group commit, durability before release, acknowledgements ----------------------


def _on_disk(store: Keystore) -> dict[str, Any]:
    return json.loads(store._state["audit"])


def test_concurrent_appends_share_writes_and_are_durable_when_returned(store: Keystore) -> None:
    keys = NodeKeys.generate("node-1")
    log = AuditLog(store, keys)
    writes = 0
    real = store.put_state_json

    def slow(name: str, data: bytes, *, inline: bool = False) -> bool:
        nonlocal writes
        writes += 1
        time.sleep(0.01)  # a slow disk: appends pile up behind the write in flight
        return real(name, data, inline=inline)

    store.put_state_json = slow  # type: ignore[method-assign]
    returned: list[dict[str, Any]] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        for j in range(10):
            rec = log.append("signed", job=f"j{i}-{j}")
            durable = {r["seq"] for r in _on_disk(store)["pending"]}
            assert rec["seq"] in durable  # durable before append returned
            with lock:
                returned.append(rec)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(returned) == 80 and writes < 80
    assert sorted(r["seq"] for r in returned) == list(range(1, 81))
    pending = log.pending()
    assert pending == sorted(returned, key=lambda r: r["seq"])
    verify_chain(pending, keys.card().identity_public_key)
    assert _on_disk(store)["seq"] == 80


def test_a_failed_group_write_fails_every_entry_in_it(store: Keystore) -> None:
    """Entries of a failed write — and those appended meanwhile on top of them — raise, are never
    listed for mirroring, and their sequence numbers are used again by the next entries."""
    keys = NodeKeys.generate("node-1")
    log = AuditLog(store, keys)
    log.append("node_started")
    real = store.put_state_json
    entered, release = threading.Event(), threading.Event()
    calls = 0

    def failing(name: str, data: bytes, *, inline: bool = False) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            entered.set()
            release.wait(5)
            raise KeystoreError(R.DISK_FULL, store.directory, "write failed: No space left on device")
        return real(name, data, inline=inline)

    store.put_state_json = failing  # type: ignore[method-assign]
    errors: list[BaseException] = []

    def append(job: str) -> None:
        try:
            log.append("signed", job=job)
        except KeystoreError as e:
            errors.append(e)

    first = threading.Thread(target=append, args=("a",))
    first.start()
    assert entered.wait(5)
    later = [threading.Thread(target=append, args=(f"b{i}",)) for i in range(3)]
    for t in later:
        t.start()
    time.sleep(0.05)
    assert [r["seq"] for r in log.pending()] == [1]  # the one in flight is not listed
    release.set()
    for t in (first, *later):
        t.join()
    assert len(errors) == 4 and all(e.reason is R.DISK_FULL for e in errors)  # type: ignore[attr-defined]
    assert [r["seq"] for r in log.pending()] == [1]
    rec = log.append("signed", job="c")
    assert rec["seq"] == 2
    pending = log.pending()
    verify_chain(pending, keys.card().identity_public_key)
    assert [json.loads(base64.b64decode(r["entry"]))["job"] for r in pending[1:]] == ["c"]


def test_acknowledgements_ride_with_the_next_write(tmp_path: Path, platform: SimulatedPlatform) -> None:
    keys = NodeKeys.generate("node-1")
    with Keystore.open(tmp_path / "ks", platform) as ks:
        log = AuditLog(ks, keys)
        for i in range(3):
            log.append("signed", job=f"j{i}")
        counter = ks.counter
        log.mirrored([1, 2])
        assert ks.counter == counter  # no write of its own
        assert [r["seq"] for r in log.pending()] == [3]
        assert [r["seq"] for r in _on_disk(ks)["pending"]] == [1, 2, 3]
        before = {r["seq"]: r for r in _on_disk(ks)["pending"]}
    with Keystore.open(tmp_path / "ks", platform) as ks:  # a crash here: sent again, byte for byte
        log = AuditLog(ks, keys)
        again = log.pending()
        assert again == [before[1], before[2], before[3]]
        log.mirrored([1, 2])
        log.append("signed", job="j3")
        assert [r["seq"] for r in _on_disk(ks)["pending"]] == [3, 4]
        log.mirrored([3])
        log.forget_mirrored()
        assert [r["seq"] for r in _on_disk(ks)["pending"]] == [4]
        counter = ks.counter
        log.forget_mirrored()  # nothing acknowledged: no write
        assert ks.counter == counter
    with Keystore.open(tmp_path / "ks", platform) as ks:
        log = AuditLog(ks, keys)
        assert [r["seq"] for r in log.pending()] == [4]
        assert log.append("signed", job="j4")["seq"] == 5
