"""Key directories: atomic writes, two-phase refresh, crash recovery, full disk."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from shardguard import keyfiles, local
from shardguard.keyfiles import KeyStoreError
from tests.helpers.rng import DeterministicRng


@pytest.fixture
def keydir(tmp_path: Path) -> tuple[Path, list]:  # type: ignore[type-arg]
    shares = local.keygen("ed25519", 2, 3, rng=DeterministicRng(1))
    d = tmp_path / "key"
    keyfiles.write_new(d, shares)
    return d, shares


def _epoch(d: Path) -> int:
    pub = keyfiles.load_public(d)
    shares = keyfiles.load_shares(d, pub.participants)  # full validation of every file
    assert all(s.public.epoch == pub.epoch for s in shares)
    return pub.epoch


def test_roundtrip(keydir) -> None:  # type: ignore[no-untyped-def]
    d, shares = keydir
    loaded = keyfiles.load_shares(d, [1, 2, 3])
    assert [s.signing_share for s in loaded] == [s.signing_share for s in shares]
    assert not [p for p in d.iterdir() if p.name.startswith(".")]


def test_refresh_interrupted_before_commit_rolls_back(keydir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    d, shares = keydir
    new = local.refresh(shares, rng=DeterministicRng(2))
    real = keyfiles._write_file

    def crash_on_commit(path: Path, data: bytes, mode: int) -> None:
        if path.name == keyfiles.COMMIT:
            raise KeyboardInterrupt("killed")  # like kill -9 just before the commit point
        real(path, data, mode)

    monkeypatch.setattr(keyfiles, "_write_file", crash_on_commit)
    with pytest.raises(KeyboardInterrupt):
        keyfiles.replace_set(d, new)
    monkeypatch.undo()
    assert (d / keyfiles.PENDING).exists()
    assert _epoch(d) == 0  # old set intact and whole
    assert not (d / keyfiles.PENDING).exists()
    local.sign(keyfiles.load_shares(d, [1, 3]), b"old epoch still signs")


def test_refresh_interrupted_after_commit_rolls_forward(keydir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    d, shares = keydir
    new = local.refresh(shares, rng=DeterministicRng(3))
    real_replace, calls = os.replace, []

    def crash_mid_move(src, dst) -> None:  # type: ignore[no-untyped-def]
        if str(src).startswith(str(d / keyfiles.PENDING)) and not str(src).endswith(".tmp"):
            calls.append(src)
            if len(calls) == 2:
                raise KeyboardInterrupt("killed while moving files into place")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_mid_move)
    with pytest.raises(KeyboardInterrupt):
        keyfiles.replace_set(d, new)
    monkeypatch.undo()
    # One new share is in place, the rest still old: a mixed set on disk...
    raw = {json.loads((d / f"share-{i}.json").read_text())["public"]["epoch"] for i in (1, 2, 3)}
    assert raw == {0, 1}
    # ...which no reader ever sees: loading finishes the committed move first.
    assert _epoch(d) == 1
    local.sign(keyfiles.load_shares(d, [2, 3]), b"new epoch signs")


def test_full_disk_during_refresh_keeps_old_set(keydir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    d, shares = keydir
    new = local.refresh(shares, rng=DeterministicRng(4))
    real_fsync = os.fsync
    count = []

    def enospc(fd: int) -> None:
        count.append(fd)
        if len(count) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(OSError):
        keyfiles.replace_set(d, new)
    monkeypatch.undo()
    assert _epoch(d) == 0
    assert not [p for p in (d / keyfiles.PENDING).glob("*.tmp")] if (d / keyfiles.PENDING).exists() else True


def test_write_new_is_all_or_nothing(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    shares = local.keygen("bip340", 2, 3, rng=DeterministicRng(5))
    real = keyfiles._write_file

    def fail_third(path: Path, data: bytes, mode: int) -> None:
        if path.name == "share-3.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data, mode)

    monkeypatch.setattr(keyfiles, "_write_file", fail_third)
    with pytest.raises(OSError):
        keyfiles.write_new(tmp_path / "k", shares)
    assert list(tmp_path.iterdir()) == []


def test_rejects_mismatched_and_tampered_files(keydir, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d, _ = keydir
    other = tmp_path / "other"
    keyfiles.write_new(other, local.keygen("ed25519", 2, 3, rng=DeterministicRng(6)))
    (d / "share-2.json").write_bytes((other / "share-2.json").read_bytes())
    with pytest.raises(KeyStoreError, match="another key"):
        keyfiles.load_share(d, 2)
    pub = json.loads((d / "public.json").read_text())
    pub["threshold"] = 3  # public.json alone is consistent, but the shares disagree
    (d / "public.json").write_text(json.dumps(pub))
    with pytest.raises(KeyStoreError, match="another key"):
        keyfiles.load_share(d, 1)
    pub["threshold"] = 1  # a lowered threshold contradicts the verifying shares
    (d / "public.json").write_text(json.dumps(pub))
    with pytest.raises(KeyStoreError, match="interpolate"):
        keyfiles.load_public(d)
    (d / "public.json").write_bytes(b"\x00" * (keyfiles.MAX_FILE + 1))
    with pytest.raises(KeyStoreError, match="too large"):
        keyfiles.load_public(d)
