"""The keystore's journal (shardguard/node/journal.py, keystore rules 8 and 9): appends that
change no counter, the manifest's anchor, a torn last record cut off, and every other damage
refused with its reason — cut short below the anchor, a record flipped, moved, swapped, from
another generation or another store, a manifest rolled back behind its journal."""

from __future__ import annotations

import errno
import hashlib
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardguard.channel import NodeKeys
from shardguard.enclave.nitro import NitroPlatform
from shardguard.enclave.platform import DeviceError, SealingError, SealingReason
from shardguard.enclave.simulated import SimulatedPlatform
from shardguard.node import audit as audit_module
from shardguard.node import journal as journal_module
from shardguard.node import keystore as ks_module
from shardguard.node.audit import AuditLog, durable_record, verify_chain
from shardguard.node.journal import JournalCorrupt, encode_frame, journal_name, parse
from shardguard.node.keystore import Keystore, KeystoreError, KeystoreReason
from tests.enclave.test_platforms import FakeNsm
from tests.node.test_keystore import FaultyOs

R = KeystoreReason


def _file(s: Keystore) -> Path:
    return s.directory / journal_name(s._manifest.journal[0])


def _reopen(s: Keystore, *, read_only: bool = False) -> Keystore:
    s.close()
    return Keystore.open(s.directory, s._platform, read_only=read_only)


def _offsets(data: bytes) -> list[int]:
    """Where each frame (one append) of a journal file starts."""
    out, pos = [], 0
    while pos < len(data):
        out.append(pos)
        pos += 8 + struct.unpack_from(">I", data, pos + 4)[0] + 16
    return out


def _append_each(s: Keystore, *records: bytes) -> None:
    for r in records:
        s.journal_append([r])


def _refused(s: Keystore) -> KeystoreError:
    s.close()
    with pytest.raises(KeystoreError) as e:
        Keystore.open(s.directory, s._platform)
    return e.value


# -- appends ---------------------------------------------------------------------------------


def test_appends_are_durable_and_change_no_counter(store: Keystore) -> None:
    store.put_state("policy", {"v": 1})
    counter, digest = store.announcement()
    store.journal_append([b"one"])
    store.journal_append([b"two", b"three"])
    store.journal_append([])  # nothing to write: no write
    assert store.announcement() == (counter, digest)  # the peers' witness sees no change
    assert store.journal_records() == [b"one", b"two", b"three"] and store.journal_size[0] == 3
    with _reopen(store) as again:
        assert again.journal_records() == [b"one", b"two", b"three"]
        assert again.announcement() == (counter, digest)
        again.journal_append([b"four"])
        assert again.journal_records()[-1] == b"four"


def test_every_manifest_write_anchors_the_journal(store: Keystore) -> None:
    store.journal_append([b"a", b"b"])
    assert store._manifest.journal == (0, 0)
    store.put_state("policy", {"v": 1})
    assert store._manifest.journal == (0, 2)  # and so the digest peers witness commits to it
    assert b'"journal":{"gen":0,"records":2}' in store._manifest_bytes(store._manifest)
    assert store._manifest_bytes(store._manifest) == ks_module._canonical(store._manifest.to_payload())
    with _reopen(store) as again:
        assert again._fast_manifest and again._manifest.journal == (0, 2)


def test_compaction_starts_a_new_generation_and_deletes_the_old_file(store: Keystore) -> None:
    store.journal_append([b"a", b"b"])
    old = _file(store)
    counter = store.counter
    store.compact_journal("audit", b'{"head":2}')
    assert store.counter == counter + 1 and store._manifest.journal == (1, 0)
    assert not old.exists() and store.journal_records() == [] and store.get_state("audit") == {"head": 2}
    store.journal_append([b"c"])
    assert _file(store).name == "ks-journal.g1.log"
    with _reopen(store) as again:
        assert again.journal_records() == [b"c"] and again.get_state("audit") == {"head": 2}


def test_an_old_generation_left_by_a_crash_is_deleted_at_open(store: Keystore) -> None:
    store.journal_append([b"a"])
    kept = _file(store).read_bytes()
    store.compact_journal("audit", b"{}")
    (store.directory / journal_name(0)).write_bytes(kept)  # the deletion after the commit was lost
    with _reopen(store) as again:
        assert not (again.directory / journal_name(0)).exists() and again.journal_records() == []


def test_a_manifest_rolled_back_behind_its_journal_is_stale(store: Keystore) -> None:
    manifest = (store.directory / ks_module.MANIFEST).read_bytes()
    store.journal_append([b"a"])
    store.compact_journal("audit", b"{}")
    store.journal_append([b"b"])  # an authentic record of generation 1
    store.close()
    (store.directory / ks_module.MANIFEST).write_bytes(manifest)  # the copy still names generation 0
    with pytest.raises(KeystoreError) as e:
        Keystore.open(store.directory, store._platform)
    assert e.value.reason is R.STALE_STATE and "generation 1" in str(e.value)


# -- the anchor: cut short below it is refused --------------------------------------------------


def test_a_journal_cut_below_its_anchor_is_refused(store: Keystore) -> None:
    _append_each(store, b"a", b"b", b"c")
    store.put_state("policy", {"v": 1})  # anchors 3
    data = _file(store).read_bytes()
    _file(store).write_bytes(data[: _offsets(data)[2]])  # two whole records left
    e = _refused(store)
    assert e.reason is R.TRUNCATED and "2 whole records, the manifest names 3" in str(e)
    _file(store).unlink()
    assert _refused(store).reason is R.MISSING


def test_records_after_the_anchor_may_be_cut_off(store: Keystore) -> None:
    """What the host can do without being seen locally (the keystore's rollback defence): drop
    records appended since the manifest's last write."""
    store.journal_append([b"a"])
    store.put_state("policy", {"v": 1})
    store.journal_append([b"b"])
    data = _file(store).read_bytes()
    _file(store).write_bytes(data[: _offsets(data)[1]])
    with _reopen(store) as again:
        assert again.journal_records() == [b"a"]


# -- a torn last record ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "tail", ["half a frame", "half a header", "zeros", "a frame's length, zeros", "zeros inside", "a block lost"]
)
def test_a_torn_last_frame_is_cut_off_and_appends_go_on(store: Keystore, tail: str) -> None:
    store.journal_append([b"a", b"b"])
    whole = encode_frame(store._platform, store.store_id, 0, 2, [b"c" * 3000, b"d"])
    junk = {
        "half a frame": whole[: len(whole) // 2],
        "half a header": whole[:5],
        "zeros": bytes(300),
        "a frame's length, zeros": whole[:8] + bytes(len(whole) - 8),
        "zeros inside": whole[:100] + bytes(500) + whole[600:],  # a power loss kept later blocks
        "a block lost": whole[:40] + whole[1040:],
    }[tail]
    with open(_file(store), "ab") as f:
        f.write(junk)
    with _reopen(store) as again:
        assert again.journal_records() == [b"a", b"b"]
        assert _file(again).stat().st_size == again.journal_size[1]  # cut off
        again.journal_append([b"c"])
    with Keystore.open(store.directory, store._platform) as third:
        assert third.journal_records() == [b"a", b"b", b"c"]


def test_a_read_only_open_reads_past_a_torn_record_without_cutting(store: Keystore) -> None:
    store.journal_append([b"a"])
    with open(_file(store), "ab") as f:
        f.write(b"SGKJ\x00\x00")
    size = _file(store).stat().st_size
    with _reopen(store, read_only=True) as again:
        assert again.journal_records() == [b"a"]
        with pytest.raises(KeystoreError) as e:
            again.journal_append([b"b"])
        assert e.value.reason is R.READ_ONLY
    assert _file(store).stat().st_size == size


# -- damage that no crash makes ----------------------------------------------------------------


def test_a_damaged_frame_before_the_last_is_refused(store: Keystore) -> None:
    """A crash damages only the last append: a frame failing its checksum with more after it is
    bit rot or tampering, refused — not dropped with every durable frame after it (review)."""
    _append_each(store, b"a", b"b", b"c")
    data = bytearray(_file(store).read_bytes())
    data[_offsets(bytes(data))[1] + 40] ^= 1
    _file(store).write_bytes(bytes(data))
    e = _refused(store)
    assert e.reason is R.CHECKSUM and "record 1" in str(e)


@pytest.mark.parametrize("damage", ["zeros", "a length past the end"])
def test_a_damaged_header_before_a_whole_frame_is_refused(store: Keystore, damage: str) -> None:
    """A torn tail is the last append only: a header that does not parse with a whole frame
    somewhere after it is bit rot or tampering, refused — not a tail to cut off."""
    _append_each(store, b"a", b"b" * 500, b"c")
    data = bytearray(_file(store).read_bytes())
    o = _offsets(bytes(data))[1]
    data[o : o + 8] = bytes(8) if damage == "zeros" else b"SGKJ" + struct.pack(">I", 1 << 22)
    _file(store).write_bytes(bytes(data))
    e = _refused(store)
    assert e.reason is R.CHECKSUM and "record 1" in str(e)


def test_an_append_stopped_half_way_leaves_nothing_of_itself(store: Keystore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever stops it after part of the frame was written (here a signal's exception): the
    frame is cut back, so the next append does not land behind a half-frame (review finding)."""
    store.journal_append([b"a"])
    real = os.write

    def half_then_interrupted(fd: int, data: Any) -> int:
        real(fd, bytes(data[: len(data) // 2]))
        raise KeyboardInterrupt

    monkeypatch.setattr(ks_module.os, "write", half_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.journal_append([b"b"])
    monkeypatch.setattr(ks_module.os, "write", real)
    assert _file(store).stat().st_size == store.journal_size[1]
    store.journal_append([b"c"])
    with _reopen(store) as again:
        assert again.journal_records() == [b"a", b"c"]


def test_a_whole_frame_that_does_not_open_is_refused_even_last(store: Keystore) -> None:
    """Its checksum holds (the host made it, or the platform's key failed): never a torn tail, so
    a transient sealing failure cannot drop durable records."""
    _append_each(store, b"a", b"b")
    data = _file(store).read_bytes()
    o = _offsets(data)[1]
    sealed = bytearray(data[o + 8 : -16])
    sealed[20] ^= 1
    head = data[o : o + 8] + bytes(sealed)
    _file(store).write_bytes(data[:o] + head + hashlib.sha256(head).digest()[:16])
    e = _refused(store)
    assert e.reason is R.UNSEAL_FAILED and "record 1" in str(e)


def test_swapped_frames_are_refused(store: Keystore) -> None:
    _append_each(store, b"a", b"b", b"c")
    data = _file(store).read_bytes()
    o = _offsets(data)
    _file(store).write_bytes(data[o[1] : o[2]] + data[: o[1]] + data[o[2] :])
    e = _refused(store)
    assert e.reason is R.WRONG_EPOCH and "sealed as record 1" in str(e)


def test_a_record_of_another_generation_is_refused(store: Keystore) -> None:
    store.journal_append([b"a"])
    store.compact_journal("audit", b"{}")
    store.journal_append([b"b"])
    planted = encode_frame(store._platform, store.store_id, 0, 1, [b"from generation 0"])
    with open(_file(store), "ab") as f:
        f.write(planted)
    assert _refused(store).reason is R.WRONG_EPOCH


def test_a_record_of_another_store_does_not_open(tmp_path: Path, store: Keystore, platform: SimulatedPlatform) -> None:
    with Keystore.open(tmp_path / "other", platform) as other:
        foreign = encode_frame(platform, other.store_id, 0, 1, [b"foreign"])
    store.journal_append([b"a"])
    with open(_file(store), "ab") as f:
        f.write(foreign)
    assert _refused(store).reason is R.UNSEAL_FAILED


def test_a_damaged_header_ends_the_journal_there(store: Keystore, platform: SimulatedPlatform) -> None:
    frame = encode_frame(platform, store.store_id, 0, 0, [b"a"])
    second = encode_frame(platform, store.store_id, 0, 1, [b"b"])
    got = parse(frame + b"XXXX" + second[4:], platform, store.store_id, 0)
    assert (got.records, got.end, got.torn) == ([b"a"], len(frame), True)
    huge = frame[:4] + struct.pack(">I", journal_module.MAX_JOURNAL_FRAME + 1) + frame[8:]
    assert parse(huge, platform, store.store_id, 0).records == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=2000), flip=st.none() | st.integers(min_value=0, max_value=2000))
def test_any_cut_or_flip_opens_a_prefix_or_is_refused_with_a_reason(
    cut: int, flip: int | None, platform: SimulatedPlatform
) -> None:
    """Whatever the host does to the bytes: parse never crashes; it returns a prefix of the
    records, or refuses with a typed reason."""
    store = "ab" * 16
    payloads = [f"record {i}".encode() * (i + 1) for i in range(8)]
    data = bytearray(b"".join(encode_frame(platform, store, 0, i, [p]) for i, p in enumerate(payloads)))
    if flip is not None and flip < len(data):
        data[flip] ^= 0x40
    data = data[: len(data) - cut] if cut < len(data) else bytearray()
    try:
        got = parse(bytes(data), platform, store, 0)
    except JournalCorrupt as e:  # a flipped frame before the last
        assert e.reason == "CHECKSUM" and flip is not None
    else:
        assert got.records == payloads[: len(got.records)]
        assert got.end <= len(data) and got.torn == (got.end < len(data))


# -- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("at", [1, 2, 3])  # the open (the file made), the write, the fdatasync
def test_a_failed_append_leaves_nothing_of_itself(store: Keystore, monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    store.journal_append([b"a"])
    store._close_journal()  # the next append opens the file again: call 1
    faulty = FaultyOs(at, errno.ENOSPC)
    monkeypatch.setattr(ks_module, "os", faulty)
    with pytest.raises(KeystoreError) as e:
        store.journal_append([b"b"])
    monkeypatch.setattr(ks_module, "os", os)
    assert e.value.reason is R.DISK_FULL
    assert store.journal_records() == [b"a"] and _file(store).stat().st_size == store.journal_size[1]
    store.journal_append([b"c"])
    with _reopen(store) as again:
        assert again.journal_records() == [b"a", b"c"]


def test_a_failed_append_that_cannot_be_cut_back_breaks_the_store(store: Keystore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.journal_append([b"a"])
    monkeypatch.setattr(ks_module, "os", FaultyOs(2, errno.EIO, persistent=True))  # fdatasync, then ftruncate
    with pytest.raises(KeystoreError) as e:
        store.journal_append([b"b"])
    monkeypatch.setattr(ks_module, "os", os)
    assert e.value.reason is R.IO_ERROR
    with pytest.raises(KeystoreError) as e:
        store.journal_append([b"c"])
    assert e.value.reason is R.BROKEN
    with _reopen(store) as again:  # what the disk holds: the record whose fate was unknown is there
        assert again.journal_records() == [b"a", b"b"]


def test_the_journal_never_grows_past_what_an_open_reads(store: Keystore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ks_module, "MAX_JOURNAL", 400)
    store.journal_append([b"x" * 100])
    with pytest.raises(KeystoreError) as e:
        store.journal_append([b"y" * 300])
    assert e.value.reason is R.TOO_LARGE
    assert store.journal_records() == [b"x" * 100]


def test_the_first_append_of_each_process_makes_the_files_name_durable(store: Keystore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that died after creating the file, before the directory fsync, leaves a file
    whose name may not be durable: the next process's open fsyncs the directory (before it
    reads anything), so its appends need not."""
    fsyncs: list[int] = []
    real = os.fsync
    monkeypatch.setattr(ks_module.os, "fsync", lambda fd: (fsyncs.append(fd), real(fd))[1])
    store.journal_append([b"a"])
    store.journal_append([b"b"])
    assert len(fsyncs) == 1  # the directory, once (the records: fdatasync)
    with _reopen(store) as again:
        again.journal_append([b"c"])
        again.journal_append([b"d"])
        assert len(fsyncs) == 2


def test_a_failed_directory_fsync_is_tried_again_by_the_next_append(store: Keystore, monkeypatch: pytest.MonkeyPatch) -> None:
    failing = FaultyOs(4, errno.EIO)  # open, write, fdatasync, the directory's fsync
    monkeypatch.setattr(ks_module, "os", failing)
    with pytest.raises(KeystoreError):
        store.journal_append([b"a"])
    assert failing.failed == "fsync"
    fsyncs: list[int] = []
    real = os.fsync
    monkeypatch.setattr(ks_module, "os", os)
    monkeypatch.setattr(ks_module.os, "fsync", lambda fd: (fsyncs.append(fd), real(fd))[1])
    store.journal_append([b"b"])
    assert len(fsyncs) == 1 and store.journal_records() == [b"b"]


def test_a_newer_generation_is_not_judged_without_the_sealing_key(store: Keystore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A manifest restored behind its journal, opened while the platform's key is unavailable
    (a KMS throttled): the open fails, it does not take the evidence for a stray file that the
    next generation would overwrite (review finding)."""
    manifest = (store.directory / ks_module.MANIFEST).read_bytes()
    store.journal_append([b"a"])
    store.compact_journal("audit", b"{}")
    store.journal_append([b"b"])
    store.close()
    (store.directory / ks_module.MANIFEST).write_bytes(manifest)
    platform = store._platform
    real = platform.unseal

    def no_key_for_the_journal(blob: bytes, *, label: bytes) -> bytes:
        if b"journal" in label:
            raise SealingError(SealingReason.KEY, "KMS throttled")
        return real(blob, label=label)

    monkeypatch.setattr(platform, "unseal", no_key_for_the_journal)
    with pytest.raises(KeystoreError) as e:
        Keystore.open(store.directory, platform)
    assert e.value.reason is R.SEALING_UNAVAILABLE
    monkeypatch.setattr(platform, "unseal", real)
    with pytest.raises(KeystoreError) as e:
        Keystore.open(store.directory, platform)
    assert e.value.reason is R.STALE_STATE


def test_a_newer_generation_that_does_not_open_is_left_and_replaced_in_its_turn(store: Keystore) -> None:
    stray = store.directory / journal_name(1)
    stray.write_bytes(b"not a journal")
    with _reopen(store) as again:
        assert stray.exists()  # perhaps evidence that did not open this time: not deleted
        again.compact_journal("audit", b"{}")
        again.journal_append([b"first of generation 1"])
    with Keystore.open(store.directory, store._platform) as third:
        assert third.journal_records() == [b"first of generation 1"]


def test_deferred_peer_counters_are_written_before_the_append(store: Keystore) -> None:
    store.record_peer_counter("node-2", 5, b"\x01" * 32, defer=True)
    store.journal_append([b"a"])
    assert not store.flush_witness()  # durable already
    with _reopen(store) as again:
        assert again.peer_counters()["node-2"].counter == 5


# -- the audit log on the journal --------------------------------------------------------------


def test_journaled_entries_chain_on_and_compact_with_the_next_counted_one(store: Keystore) -> None:
    keys = NodeKeys.generate("node-1")
    log = AuditLog(store, keys)
    log.append("node_started")
    counter = store.counter
    for i in range(5):
        log.append_journaled("signing", job=f"j{i}")
    assert store.counter == counter and store.journal_size[0] == 5  # no manifest write
    assert [r["seq"] for r in durable_record(store)["pending"]] == [1, 2, 3, 4, 5, 6]
    log.mirrored([1, 2, 3])
    log.append("refused", job="j5")  # counted: a compaction, acknowledged entries leave
    assert store.counter == counter + 1 and store.journal_size == (0, 0)
    assert [r["seq"] for r in durable_record(store)["pending"]] == [4, 5, 6, 7]
    store.close()
    with Keystore.open(store.directory, store._platform) as again:
        log2 = AuditLog(again, NodeKeys.generate("node-1"))
        assert [r["seq"] for r in log2.pending()] == [4, 5, 6, 7]
        assert log2.append_journaled("signing", job="j6")["seq"] == 8
        verify_chain(log2.pending(), None, start=4, allow_segments=False)


def test_a_full_journal_compacts(store: Keystore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_module, "COMPACT_RECORDS", 4)
    log = AuditLog(store, NodeKeys.generate("node-1"))
    for i in range(10):
        log.append_journaled("signing", job=f"j{i}")
        assert store.journal_size[0] <= 4
    assert store.counter == 2  # two compactions in ten entries
    assert [r["seq"] for r in durable_record(store)["pending"]] == list(range(1, 11))


def test_a_torn_journaled_entry_was_never_released_and_its_number_is_used_again(store: Keystore) -> None:
    keys = NodeKeys.generate("node-1")
    log = AuditLog(store, keys)
    for i in range(3):
        log.append_journaled("signing", job=f"j{i}")
    path = _file(store)
    data = path.read_bytes()
    path.write_bytes(data[: _offsets(data)[2] + 20])  # the third append died half-way
    store.close()
    with Keystore.open(store.directory, store._platform) as again:
        log2 = AuditLog(again, keys)
        assert [r["seq"] for r in log2.pending()] == [1, 2]
        assert log2.append_journaled("signing", job="again")["seq"] == 3
        verify_chain(log2.pending(), keys.card().identity_public_key)


def test_a_journal_record_that_does_not_chain_is_refused(store: Keystore) -> None:
    keys = NodeKeys.generate("node-1")
    log = AuditLog(store, keys)
    log.append_journaled("signing", job="j0")
    record = log.pending()[0]
    store.journal_append([ks_module._canonical(record)])  # entry 1 again, where entry 2 belongs
    with pytest.raises(KeystoreError) as e:
        AuditLog(store, keys)
    assert e.value.reason is R.INVALID_RECORD and "journal record 1" in str(e.value)


class _Kms:
    """A KMS stand-in that, like KMS, refuses a damaged ciphertext blob."""

    def __init__(self) -> None:
        self.keys: dict[bytes, bytes] = {}

    def generate_data_key(self, attest: Callable[[bytes], bytes]) -> tuple[bytes, bytes]:
        blob = b"wrapped-key-blob-%04d" % len(self.keys) + bytes(range(100))
        self.keys[blob] = os.urandom(32)
        return blob, self.keys[blob]

    def decrypt(self, blob: bytes, attest: Callable[[bytes], bytes]) -> bytes:
        if blob not in self.keys:
            raise DeviceError("nitro", "KMS Decrypt", "InvalidCiphertextException")
        return self.keys[blob]


@pytest.mark.parametrize("kind", ["nitro", "simulated"])
@pytest.mark.parametrize("records", [1, 3])  # a group commit writes several records in one frame
def test_a_torn_frame_is_cut_off_on_every_platform(tmp_path: Path, kind: str, records: int) -> None:
    """Zeros from a power loss inside the last frame — in the KMS blob of its seal, where a
    Nitro unseal fails with the platform's key error — end the journal there (review finding)."""
    sim = SimulatedPlatform(state_dir=tmp_path / "sim")
    kms = _Kms()
    make = (lambda: NitroPlatform(transport=FakeNsm(sim), kms=kms)) if kind == "nitro" else (lambda: sim)
    s = Keystore.open(tmp_path / "ks", make())
    s.journal_append([b"durable"])
    before = s.journal_size[1]
    s.journal_append([b"torn" * 100] * records)  # it never returned
    s.close()
    f = tmp_path / "ks" / journal_name(0)
    data = bytearray(f.read_bytes())
    data[before + 8 + 33 : before + 8 + 63] = bytes(30)  # inside the context (the KMS blob)
    f.write_bytes(bytes(data))
    with Keystore.open(tmp_path / "ks", make()) as again:  # a restarted process: a new platform object
        assert again.journal_records() == [b"durable"]
        again.journal_append([b"next"])
    with Keystore.open(tmp_path / "ks", make()) as third:
        assert third.journal_records() == [b"durable", b"next"]


def test_a_file_full_of_false_frame_headers_is_refused_quickly(platform: SimulatedPlatform) -> None:
    """A damaged header makes parse look for a whole frame after it; a hostile file of false
    headers, each claiming the rest of the file, cannot make that scan quadratic."""
    store = "ab" * 16
    false_header = b"SGKJ" + struct.pack(">I", 1 << 20)
    data = b"XXXXXXXX" + false_header * ((8 << 20) // len(false_header)) + bytes(1 << 20)
    started = time.monotonic()
    with pytest.raises(JournalCorrupt) as e:
        parse(data, platform, store, 0)
    assert e.value.reason == "CHECKSUM" and time.monotonic() - started < 5
    short_headers = b"XXXXXXXX" + (b"SGKJ" + struct.pack(">I", 1 << 22)) * (1 << 20)  # each runs past the end
    started = time.monotonic()
    with pytest.raises(JournalCorrupt):
        parse(short_headers, platform, store, 0)
    assert time.monotonic() - started < 5
