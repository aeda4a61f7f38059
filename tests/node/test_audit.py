"""The node's audit log: hash chain, signatures, persistence across restarts, offline check,
bounded backlog (refused, never dropped)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from shardguard.channel import NodeKeys
from shardguard.enclave.simulated import SimulatedPlatform
from shardguard.node.audit import (
    GENESIS,
    MAX_ENTRY_BYTES,
    MAX_PENDING,
    AuditBacklogFull,
    AuditChainError,
    AuditEntryTooLarge,
    AuditLog,
    AuditRefused,
    ChainFault,
    verify_chain,
)
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

    def full(name: str, value: bytes, *, inline: bool = False) -> bool:
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
    verify_chain(log.pending(), keys.card().identity_public_key, start=3)  # 1 and 2 were acknowledged


# -- the backlog: bounded, refused when full, never dropped (a dropped entry is erased history) --


def _on_disk(store: Keystore) -> list[int]:
    return [int(r["seq"]) for r in json.loads(store._state["audit"])["pending"]]


def test_a_full_backlog_refuses_the_entry_and_drops_nothing(store: Keystore) -> None:
    keys = NodeKeys.generate("node-1")
    log = AuditLog(store, keys, max_pending=5)
    for i in range(5):
        log.append("signing", job=f"j{i}")
    with pytest.raises(AuditBacklogFull) as e:
        log.append("signing", job="j5")
    assert isinstance(e.value, AuditRefused) and e.value.reason == "BACKLOG_FULL"
    assert (e.value.event, e.value.pending, e.value.max_pending) == ("signing", 5, 5)
    assert 0 < e.value.pending_bytes <= e.value.max_pending_bytes
    assert "j5" not in str(e.value)  # counts and the event name only
    # Nothing dropped, nothing taken: the refused entry has no sequence number.
    assert [r["seq"] for r in log.pending()] == [1, 2, 3, 4, 5] == _on_disk(store)
    verify_chain(log.pending(), keys.card().identity_public_key)
    # A restarted node over the same record refuses too (until the coordinator acknowledges).
    with pytest.raises(AuditBacklogFull):
        AuditLog(store, NodeKeys.generate("node-1"), max_pending=5).append("node_started")
    assert _on_disk(store) == [1, 2, 3, 4, 5]


def test_the_backlog_drains_once_the_coordinator_acknowledges_again(store: Keystore) -> None:
    keys = NodeKeys.generate("node-1")
    pk = keys.card().identity_public_key
    log = AuditLog(store, keys, max_pending=4)
    mirror: list[dict[str, Any]] = []
    for i in range(4):
        log.append("signing", job=f"j{i}")
    with pytest.raises(AuditBacklogFull):
        log.append("signing", job="late")
    mirror += log.pending()[:2]  # the coordinator is back: it acknowledges 1 and 2
    log.mirrored([1, 2])
    assert [log.append("signing", job=f"j{i}")["seq"] for i in (4, 5)] == [5, 6]  # room at once
    with pytest.raises(AuditBacklogFull) as e:
        log.append("signing", job="j6")
    assert e.value.pending == 4
    assert _on_disk(store) == [3, 4, 5, 6]  # the acknowledged ones left with the next write
    mirror += log.pending()
    log.mirrored(r["seq"] for r in log.pending())
    assert log.append("signing", job="j6")["seq"] == 7
    mirror += log.pending()
    # What the coordinator mirrored is the whole chain: from entry 1, without a gap.
    assert [b["seq"] for b in verify_chain(mirror, pk)] == [1, 2, 3, 4, 5, 6, 7]


def test_the_backlog_is_bounded_in_bytes_too(store: Keystore) -> None:
    keys = NodeKeys.generate("node-1")
    limit = 8000
    log = AuditLog(store, keys, max_pending=1000, max_pending_bytes=limit)
    with pytest.raises(AuditBacklogFull) as e:
        for i in range(100):
            log.append("signing", job=f"j{i}", note="x" * 1000)
    assert e.value.pending == len(log.pending()) < 10
    assert e.value.pending_bytes <= limit
    assert len(store._state["audit"]) <= limit + 200  # the keystore record: the kept records, a head
    verify_chain(log.pending(), keys.card().identity_public_key)
    log.mirrored([1])
    assert log.append("signing", job="j", note="x" * 1000)["seq"] == e.value.pending + 1


def test_an_entry_the_coordinator_would_not_mirror_is_refused(store: Keystore) -> None:
    keys = NodeKeys.generate("node-1")
    log = AuditLog(store, keys)
    log.append("node_started")
    with pytest.raises(AuditEntryTooLarge) as e:
        log.append("signing", job="j" * MAX_ENTRY_BYTES)
    assert isinstance(e.value, AuditRefused) and e.value.reason == "ENTRY_TOO_LARGE"
    assert e.value.size > e.value.limit == MAX_ENTRY_BYTES
    assert log.append("signing", job="j")["seq"] == 2


def test_the_reviewed_scenario_refuses_at_the_default_bound(store: Keystore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The review's reproducer: the coordinator acknowledges three entries, then stops. Before,
    the oldest entries past 1,000 left the keystore record and the mirror's gap verified. Now
    the node refuses the next decision, and what it keeps verifies after the mirrored ones."""
    written: list[bytes] = []

    def fast(name: str, data: bytes, *, inline: bool = False) -> bool:  # a fast disk (1,000 real writes take seconds)
        written.append(data)
        return True

    monkeypatch.setattr(store, "put_state_json", fast)
    keys = NodeKeys.generate("node-1")
    log = AuditLog(store, keys)
    first = [log.append("signing", job=f"j{i}") for i in range(3)]
    log.mirrored(r["seq"] for r in first)
    with pytest.raises(AuditBacklogFull) as e:
        for i in range(3, 1010):
            log.append("signing", job=f"j{i}")
    assert (e.value.pending, e.value.max_pending) == (MAX_PENDING, MAX_PENDING)
    pending = log.pending()
    assert [r["seq"] for r in pending] == list(range(4, 4 + MAX_PENDING))
    assert [r["seq"] for r in json.loads(written[-1])["pending"]] == list(range(4, 4 + MAX_PENDING))
    assert len(verify_chain(first + pending, keys.card().identity_public_key)) == 3 + MAX_PENDING


# -- verify_chain: the chain is whole, or the caller says it checks segments ----------------------


@pytest.fixture
def chain(store: Keystore) -> tuple[list[dict[str, Any]], bytes]:
    keys = NodeKeys.generate("node-1")
    log = AuditLog(store, keys)
    for i in range(6):
        log.append("signing", job=f"j{i}")
    return log.pending(), keys.card().identity_public_key


def _fault(records: list[dict[str, Any]], pk: bytes | dict[int, bytes], **kw: Any) -> tuple[int | None, ChainFault, int | None]:
    with pytest.raises(AuditChainError) as e:
        verify_chain(records, pk, **kw)
    assert isinstance(e.value, ValueError)  # callers catching ValueError still do
    return e.value.seq, e.value.fault, e.value.expected


def test_a_gap_is_rejected_unless_segments_are_allowed(chain: tuple[list[dict[str, Any]], bytes]) -> None:
    records, pk = chain
    gapped = records[:2] + records[4:]  # 3 and 4 erased
    assert _fault(gapped, pk) == (5, ChainFault.GAP, 3)
    with pytest.raises(AuditChainError, match=r"audit entry 5: .*entries 3\.\.4 missing"):
        verify_chain(gapped, pk)
    assert _fault(records[:2] + records[3:], pk) == (4, ChainFault.GAP, 3)
    assert [b["seq"] for b in verify_chain(gapped, pk, allow_segments=True)] == [1, 2, 5, 6]
    # A gap filled by another entry relabelled with the missing number: the signed seq differs.
    assert _fault([*records[:2], {**records[3], "seq": 3}, *records[3:]], pk) == (3, ChainFault.SEQ_MISMATCH, None)


def test_reordered_and_duplicated_entries_are_rejected(chain: tuple[list[dict[str, Any]], bytes]) -> None:
    records, pk = chain
    swapped = [records[0], records[2], records[1], *records[3:]]
    assert _fault(swapped, pk) == (3, ChainFault.GAP, 2)
    assert _fault(swapped, pk, allow_segments=True) == (2, ChainFault.ORDER, 4)
    assert _fault(list(reversed(records)), pk) == (6, ChainFault.START, 1)
    doubled = [*records[:3], records[2], *records[3:]]
    assert _fault(doubled, pk) == (3, ChainFault.DUPLICATE, 4)
    assert _fault(doubled, pk, allow_segments=True) == (3, ChainFault.DUPLICATE, 4)


def test_a_chain_must_start_where_the_caller_says(chain: tuple[list[dict[str, Any]], bytes], store: Keystore) -> None:
    records, pk = chain
    tail = records[2:]  # the first two erased
    assert _fault(tail, pk) == (3, ChainFault.START, 1)
    with pytest.raises(AuditChainError, match="audit entry 3: the chain does not start where expected: expected entry 1"):
        verify_chain(tail, pk)
    assert len(verify_chain(tail, pk, start=3)) == 4
    assert len(verify_chain(tail, pk, start=3, prev_hash=records[1]["hash"])) == 4  # linked to what was verified
    assert _fault(tail, pk, start=3, prev_hash=records[0]["hash"]) == (3, ChainFault.LINK, None)
    assert _fault(records, pk, start=2) == (1, ChainFault.START, 2)
    assert _fault(tail, pk, start=4) == (3, ChainFault.START, 4)
    assert _fault(tail, pk, start=4, allow_segments=True) == (3, ChainFault.START, 4)
    assert len(verify_chain(tail, pk, allow_segments=True)) == 4
    assert verify_chain([], pk) == []
    with pytest.raises(ValueError, match="start"):
        verify_chain(records, pk, start=0)


def test_entry_one_must_chain_to_the_genesis_value(store: Keystore) -> None:
    """A log whose first entry links elsewhere (a rewritten history's tail relabelled from 1)."""
    keys = NodeKeys.generate("node-1")
    store.put_state("audit", {"seq": 0, "hash": "ab" * 32, "pending": []})
    log = AuditLog(store, keys)
    log.append("node_started")
    pk = keys.card().identity_public_key
    assert _fault(log.pending(), pk) == (1, ChainFault.LINK, None)
    assert len(verify_chain(log.pending(), pk, prev_hash="ab" * 32)) == 1
    assert json.loads(base64.b64decode(AuditLog(store, keys).pending()[0]["entry"]))["prev"] != GENESIS


def test_a_record_without_a_key_or_readable_fields_is_rejected(chain: tuple[list[dict[str, Any]], bytes]) -> None:
    records, pk = chain
    assert _fault(records, {1: pk}) == (2, ChainFault.NO_KEY, None)
    with pytest.raises(AuditChainError) as e:
        verify_chain([{"entry": records[0]["entry"]}], pk)
    assert (e.value.seq, e.value.fault) == (None, ChainFault.MALFORMED)
    with pytest.raises(AuditChainError) as e:
        verify_chain([{**records[0], "signature": "abc"}], pk)
    assert (e.value.seq, e.value.fault) == (1, ChainFault.MALFORMED)


# -- a node that lost its state continues its mirrored chain --------------------------------------


def test_an_empty_log_continues_a_chain_kept_elsewhere(store: Keystore) -> None:
    old = AuditLog(store, NodeKeys.generate("node-1"))
    mirrored = [old.append("signing", job=f"j{i}") for i in range(3)]
    fresh_dir = store.directory.parent / "new-disk"
    with Keystore.open(fresh_dir, store._platform) as fresh:
        keys = NodeKeys.generate("node-1")
        log = AuditLog(fresh, keys)
        assert log.head == (0, GENESIS)
        bad_heads = [(-1, mirrored[-1]["hash"]), (3, "AB" * 32), (3, "ab" * 31), (True, mirrored[-1]["hash"]),
                     (3, "00" * 31 + "\n\n"),  # fromhex skips whitespace; the keystore's JSON would break (review)
                     ((1 << 63) - 1, mirrored[-1]["hash"])]  # the next entry could never be mirrored  # fmt: skip
        for bad in bad_heads:
            with pytest.raises(ValueError):
                log.continue_after(*bad)  # type: ignore[arg-type]
        log.continue_after(3, mirrored[-1]["hash"])
        assert log.head == (3, mirrored[-1]["hash"])
        assert log.append("node_started", continues={"seq": 3})["seq"] == 4
        with pytest.raises(ValueError, match="only an empty log"):
            log.continue_after(9, "00" * 32)
        # The mirror's chain runs on across the lost state: the new entries link to the old head.
        verify_chain(mirrored + log.pending(), None)
    with Keystore.open(fresh_dir, store._platform) as again:
        assert AuditLog(again, NodeKeys.generate("node-1")).head[0] == 4
