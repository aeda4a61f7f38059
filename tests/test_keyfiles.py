"""Key directories: atomic writes, two-phase refresh, crash recovery, full disk."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import coincurve
import pytest

from shardguard import keyfiles, local
from shardguard.keyfiles import KeyStoreError
from shardguard.protocols.dkls23 import EcdsaKeyShare
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
    real = keyfiles.write_file_atomic

    def crash_on_commit(path: Path, data: bytes, mode: int) -> None:
        if path.name == keyfiles.COMMIT:
            raise KeyboardInterrupt("killed")  # like kill -9 just before the commit point
        real(path, data, mode)

    with monkeypatch.context() as mp:
        mp.setattr(keyfiles, "write_file_atomic", crash_on_commit)
        with pytest.raises(KeyboardInterrupt):
            keyfiles.replace_set(d, new)
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

    with monkeypatch.context() as mp:
        mp.setattr(os, "replace", crash_mid_move)
        with pytest.raises(KeyboardInterrupt):
            keyfiles.replace_set(d, new)
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

    with monkeypatch.context() as mp:
        mp.setattr(os, "fsync", enospc)
        with pytest.raises(OSError):
            keyfiles.replace_set(d, new)
    assert _epoch(d) == 0
    assert not [p for p in (d / keyfiles.PENDING).glob("*.tmp")] if (d / keyfiles.PENDING).exists() else True


def test_write_new_is_all_or_nothing(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    shares = local.keygen("bip340", 2, 3, rng=DeterministicRng(5))
    real = keyfiles.write_file_atomic

    def fail_third(path: Path, data: bytes, mode: int) -> None:
        if path.name == "share-3.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data, mode)

    monkeypatch.setattr(keyfiles, "write_file_atomic", fail_third)
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


# -- ECDSA (DKLs23) key directories ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ecdsa_shares() -> list[EcdsaKeyShare]:
    return local.ecdsa_keygen(2, 3, rng=DeterministicRng(7))


def _resetup(shares: list[EcdsaKeyShare], setup_id: bytes, *, new_epoch: bool = False) -> list[EcdsaKeyShare]:
    """The same OT state under another setup id (and, optionally, refreshed Shamir shares):
    well-formed files for the store's checks, without paying for a real OT setup."""
    plain = local.refresh([s.share for s in shares], rng=DeterministicRng(8)) if new_epoch else [s.share for s in shares]
    return [
        EcdsaKeyShare(
            share=p,
            chain_code=s.chain_code,
            setup_id=setup_id,
            pairs={j: s.pair(j) for j in p.public.participants if j != p.identifier},
        )
        for p, s in zip(plain, shares)
    ]


def test_keccak256_and_eip55() -> None:
    from Crypto.Hash import keccak

    assert keyfiles.keccak256(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    for n in (0, 1, 55, 135, 136, 137, 272, 1000):
        data = bytes(range(256)) * 4
        assert keyfiles.keccak256(data[:n]) == keccak.new(digest_bits=256, data=data[:n]).digest(), n
        assert keyfiles._sponge256(data[:n], 0x06) == hashlib.sha3_256(data[:n]).digest(), n  # same permutation
    # EIP-55's own test vectors: the checksum is a function of the lower-case address alone.
    for addr in (
        "0x52908400098527886E0F7030069857D2E4169EE7",
        "0x8617E340B3D01FA5F11F306F4090FD50E238070D",
        "0xde709f2102306220921060314715629080e2fb77",
        "0x27b1fdb04752bbc536007a920d24acb045561c26",
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
        "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
        "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
    ):
        lower = addr[2:].lower()
        check = keyfiles.keccak256(lower.encode()).hex()
        assert "0x" + "".join(c.upper() if int(h, 16) >= 8 else c for c, h in zip(lower, check)) == addr
    # A known key: private key 1 is the generator, address 0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf.
    g = coincurve.PrivateKey((1).to_bytes(32, "big")).public_key
    assert keyfiles.ethereum_address(g.format()) == "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"
    assert keyfiles.ethereum_address(g.format(compressed=False)) == "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"


def test_ecdsa_roundtrip_and_public_fields(ecdsa_shares, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "k"
    keyfiles.write_new(d, ecdsa_shares)
    loaded = keyfiles.load_ecdsa_shares(d, [1, 2, 3])
    assert [s.to_dict() for s in loaded] == [s.to_dict() for s in ecdsa_shares]
    assert all(isinstance(keyfiles.load_share(d, i), EcdsaKeyShare) for i in (1, 2, 3))
    info = keyfiles.load_ecdsa_info(d)
    assert info.chain_code == ecdsa_shares[0].chain_code and info.setup_id == ecdsa_shares[0].setup_id
    pub = json.loads((d / "public.json").read_text())
    assert pub["ethereum_address"] == info.ethereum_address == keyfiles.ethereum_address(bytes.fromhex(pub["public_key"]))
    with pytest.raises(KeyStoreError, match="not a FROST key"):
        keyfiles.load_frost_shares(d, [1])


def test_frost_directory_is_not_ecdsa(keydir) -> None:  # type: ignore[no-untyped-def]
    d, _ = keydir
    assert "chain_code" not in json.loads((d / "public.json").read_text())
    with pytest.raises(KeyStoreError, match="not an ecdsa key"):
        keyfiles.load_ecdsa_info(d)
    with pytest.raises(KeyStoreError, match="not an ecdsa key"):
        keyfiles.load_ecdsa_share(d, 1)


def test_ecdsa_sets_must_agree(ecdsa_shares, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    other = _resetup(ecdsa_shares, b"\x05" * 32)
    with pytest.raises(KeyStoreError, match="different OT setups"):
        keyfiles.write_new(tmp_path / "a", [ecdsa_shares[0], other[1], ecdsa_shares[2]])
    with pytest.raises(KeyStoreError, match="DKLs23 shares"):
        keyfiles.write_new(tmp_path / "b", [s.share for s in ecdsa_shares])  # no OT state
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    d = tmp_path / "k"
    keyfiles.write_new(d, ecdsa_shares)
    keyfiles.write_share(d, other[2])  # a share of another OT setup of the same key and epoch
    with pytest.raises(KeyStoreError, match="another OT setup"):
        keyfiles.load_share(d, 3)
    pub = json.loads((d / "public.json").read_text())
    for field, value, match in (
        ("chain_code", "00" * 32, "another chain code"),
        ("chain_code", "00", "chain_code must be 32 bytes"),
        ("setup_id", None, "setup_id must be 32 bytes"),
        ("ethereum_address", "0x" + "11" * 20, "ethereum_address does not match"),
    ):
        (d / "public.json").write_text(json.dumps({**pub, field: value}))
        with pytest.raises(KeyStoreError, match=match):
            keyfiles.load_share(d, 1)


def test_ecdsa_refresh_interrupted_before_commit_rolls_back(ecdsa_shares, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "k"
    keyfiles.write_new(d, ecdsa_shares)
    new = _resetup(ecdsa_shares, b"\x06" * 32, new_epoch=True)
    real = keyfiles.write_file_atomic

    def crash_on_commit(path: Path, data: bytes, mode: int) -> None:
        if path.name == keyfiles.COMMIT:
            raise KeyboardInterrupt("killed")
        real(path, data, mode)

    with monkeypatch.context() as mp:
        mp.setattr(keyfiles, "write_file_atomic", crash_on_commit)
        with pytest.raises(KeyboardInterrupt):
            keyfiles.replace_set(d, new)
    old = keyfiles.load_ecdsa_shares(d, [1, 2, 3])  # recovery drops .pending: the old set, whole
    assert {s.setup_id for s in old} == {ecdsa_shares[0].setup_id} and old[0].public.epoch == 0
    local.ecdsa_sign(old[:2], hashlib.sha256(b"old epoch still signs").digest())
    keyfiles.replace_set(d, new)
    assert keyfiles.load_ecdsa_info(d).setup_id == b"\x06" * 32 and keyfiles.load_public(d).epoch == 1


def test_record_bans(ecdsa_shares, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "k"
    keyfiles.write_new(d, ecdsa_shares)
    loaded = keyfiles.load_ecdsa_share(d, 1)
    assert keyfiles.record_bans(d, loaded, {3}).banned == {3}
    assert keyfiles.record_bans(d, loaded, {2}).banned == {2, 3}  # bans already on disk are kept
    assert keyfiles.load_ecdsa_share(d, 1).banned == {2, 3}
    assert sorted(p.name for p in d.iterdir()) == ["public.json", "share-1.json", "share-2.json", "share-3.json"]
    keyfiles.replace_set(d, _resetup(ecdsa_shares, b"\x04" * 32, new_epoch=True))  # "refreshed" meanwhile
    with pytest.raises(KeyStoreError, match="changed on disk"):
        keyfiles.record_bans(d, loaded, {2})
    assert not keyfiles.load_ecdsa_share(d, 1).banned


def test_temp_copies_a_killed_write_left_are_swept(keydir, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Review finding: a write_file_atomic or write_new killed mid-way left a whole share in a
    temp file (0600) that outlived the next refresh."""
    d, shares = keydir
    left = d / ".share-1.json.abc123.tmp"  # what mkstemp names it
    left.write_bytes(b'{"share": "old"}')
    staging = tmp_path / ".key2.tmp-xyz"
    staging.mkdir()
    (staging / "share-1.json").write_bytes(b"old")
    keyfiles.load_shares(d, [1, 2, 3])  # every read recovers first
    assert not left.exists()
    keyfiles.write_new(tmp_path / "key2", shares)
    assert not staging.exists() and keyfiles.load_shares(tmp_path / "key2", [1, 2, 3])
