"""Full and read-only state disks, for real.

A 256 KiB tmpfs is mounted for each test (``mount -t tmpfs -o size=256k``; needs root or
CAP_SYS_ADMIN — without it these tests skip, and the same code paths are still covered with
emulated ENOSPC/EROFS/EACCES at every system call by
``test_keystore.py::test_write_faults_leave_old_state_intact``). Read-only is a real
``mount -o remount,ro``; an unwritable directory (chmod 0555) is checked as a non-root user
(a forked child that drops to uid/gid 65534 when the suite runs as root).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardguard.enclave.simulated import SimulatedPlatform
from shardguard.node.keystore import MANIFEST, Keystore, KeystoreError, KeystoreReason
from tests.node.test_keystore import FROST_A, FROST_B, assert_clean, at, ecdsa_shares, observe, our_files

R = KeystoreReason
PAGE = 4096


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimulatedPlatform:
    return SimulatedPlatform(state_dir=tmp_path_factory.mktemp("platform"))


def _mount(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["mount", *args], capture_output=True, check=False)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) here; emulated ENOSPC/EROFS in test_keystore.py cover these paths")
    r = _mount("-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mnt))
    if r.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs ({r.stderr.decode().strip()}); emulated ENOSPC/EROFS in test_keystore.py cover these paths"
        )
    try:
        yield mnt
    finally:
        _mount("-o", "remount,rw", str(mnt))
        if subprocess.run(["umount", str(mnt)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def fill(directory: Path) -> Path:
    """Fill the file system with page-sized writes until ENOSPC; returns the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                if os.write(fd, b"\xaa" * PAGE) < PAGE:
                    break
            except OSError as e:
                assert e.errno == errno.ENOSPC
                break
    finally:
        os.close(fd)
    size = filler.stat().st_size
    os.truncate(filler, size - size % PAGE)
    return filler


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def setup_store(directory: Path, platform: SimulatedPlatform) -> Keystore:
    s = Keystore.open(directory, platform)
    s.stage("k1", FROST_A[0])
    s.commit("k1", 0)
    s.put_state("identity", {"seed": "11" * 32})
    return s


def test_full_disk_keeps_the_old_state(tmpfs: Path, platform: SimulatedPlatform) -> None:
    d = tmpfs / "ks"
    s = setup_store(d, platform)
    before = observe(s)
    files_before = our_files(d)
    filler = fill(tmpfs)
    assert free_bytes(tmpfs) < PAGE
    for op in (
        lambda: s.stage("k2", ecdsa_shares()[0]),  # ~100 KB record
        lambda: s.stage("k1", at(FROST_A[0], 1)),
        lambda: s.put_state("identity", {"seed": "22" * 32}),
        lambda: s.commit("k1", 0) or s.delete_key("k1"),  # a manifest-only write
    ):
        with pytest.raises(KeystoreError) as info:
            op()
        assert (info.value.reason, info.value.errno) == (R.DISK_FULL, errno.ENOSPC)
        assert observe(s) == before
        assert our_files(d) == files_before  # no temp file, no half record
    s.close()
    with Keystore.open(d, platform) as s:  # loads, even on a full disk
        assert observe(s) == before
        assert_clean(s)
    filler.unlink()
    with Keystore.open(d, platform) as s:  # space again: writes work
        s.stage("k2", ecdsa_shares()[0])
        s.commit("k2", 0)
        assert s.share("k2").to_dict() == ecdsa_shares()[0].to_dict()


def test_full_disk_at_the_manifest_write(tmpfs: Path, platform: SimulatedPlatform, tmp_path: Path) -> None:
    """Room for the new record but not for the manifest: the record is removed again."""
    with setup_store(tmp_path / "scratch", platform) as scratch:  # the same history on a roomy disk
        scratch.stage("k2", ecdsa_shares()[0])
        (record,) = (tmp_path / "scratch").glob("ks-share.k2.*")
        record_pages = -(-record.stat().st_size // PAGE)
    d = tmpfs / "ks"
    s = setup_store(d, platform)
    before = observe(s)
    files_before = our_files(d)
    filler = fill(tmpfs)
    os.truncate(filler, filler.stat().st_size - record_pages * PAGE)
    assert free_bytes(tmpfs) == record_pages * PAGE
    with pytest.raises(KeystoreError) as info:
        s.stage("k2", ecdsa_shares()[0])
    assert (info.value.reason, info.value.path) == (R.DISK_FULL, str(d / MANIFEST))
    assert observe(s) == before and our_files(d) == files_before
    assert free_bytes(tmpfs) == record_pages * PAGE  # the record's space was given back
    s.close()
    with Keystore.open(d, platform) as s:
        assert observe(s) == before
        assert_clean(s)


def test_read_only_disk(tmpfs: Path, platform: SimulatedPlatform) -> None:
    d = tmpfs / "ks"
    s = setup_store(d, platform)
    s.stage("k1", at(FROST_A[0], 1))  # an interrupted refresh is part of the state too
    before = observe(s)
    assert _mount("-o", "remount,ro", str(tmpfs)).returncode == 0
    for op in (
        lambda: s.put_state("identity", {"seed": "22" * 32}),
        lambda: s.stage("k3", FROST_B[0]),
        lambda: s.commit("k1", 1),
        lambda: s.record_peer_counter("node-b", 1, b"\x00" * 32),
    ):
        with pytest.raises(KeystoreError) as info:
            op()
        assert (info.value.reason, info.value.errno) == (R.READ_ONLY, errno.EROFS)
        assert observe(s) == before
    s.close()
    with pytest.raises(KeystoreError) as info:
        Keystore.open(d, platform)
    assert info.value.reason is R.READ_ONLY and "read_only=True" in str(info.value)
    with Keystore.open(d, platform, read_only=True) as r:
        assert observe(r) == before
        assert r.share("k1").public.epoch == 0  # the old epoch still signs
    assert _mount("-o", "remount,rw", str(tmpfs)).returncode == 0
    with Keystore.open(d, platform) as s:
        assert observe(s) == before
        assert_clean(s)
        s.commit("k1", 1)


def test_unwritable_directory_as_non_root() -> None:
    """chmod 0555 on the state directory: EACCES → READ_ONLY, old state kept. Root ignores
    permissions, so as root this runs in a forked child that drops to uid/gid 65534."""
    base = Path(tempfile.mkdtemp(prefix="sg-keystore-perm-"))
    os.chmod(base, 0o755)
    r, w = os.pipe()
    as_root = os.geteuid() == 0
    pid = os.fork() if as_root else 0
    if pid == 0:
        result: dict[str, object] = {}
        try:
            # Made before dropping privileges: the simulated measurement hashes the package,
            # which uid 65534 may not read (a checkout in a 0700 directory, as from mktemp -d).
            platform = SimulatedPlatform(state_dir=base / "platform")
            if as_root:
                os.close(r)
                for p in [base, *base.rglob("*")]:
                    os.chown(p, 65534, 65534)
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            s = Keystore.open(base / "ks", platform)
            s.stage("k1", FROST_A[0])
            s.commit("k1", 0)
            before = observe(s)
            os.chmod(base / "ks", 0o555)
            try:
                s.put_state("identity", {"seed": "22" * 32})
            except KeystoreError as e:
                result["error"] = [e.reason.name, e.errno]
            result["unchanged"] = observe(s) == before
            s.close()
            try:
                Keystore.open(base / "ks", platform)
            except KeystoreError as e:
                result["reopen_error"] = [e.reason.name, e.errno]
            with Keystore.open(base / "ks", platform, read_only=True) as s2:
                result["reopened"] = observe(s2) == before
            result["uid"] = os.geteuid()
        except BaseException as e:
            result["crash"] = repr(e)
        if not as_root:
            os.close(r)
            os.close(w)
            _check_unwritable(result, expect_uid=os.geteuid())
            shutil.rmtree(base, ignore_errors=True)
            return
        with contextlib.suppress(BaseException):
            os.write(w, json.dumps(result).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    with contextlib.suppress(FileNotFoundError):  # the child may have failed before making it
        os.chmod(base / "ks", 0o755)
    shutil.rmtree(base, ignore_errors=True)
    _check_unwritable(json.loads(data), expect_uid=65534)


def _check_unwritable(result: dict[str, object], *, expect_uid: int) -> None:
    assert "crash" not in result, result
    assert result["uid"] == expect_uid
    assert result["error"] == ["READ_ONLY", errno.EACCES]
    assert result["reopen_error"] == ["READ_ONLY", errno.EACCES]
    assert result["unchanged"] is True and result["reopened"] is True
