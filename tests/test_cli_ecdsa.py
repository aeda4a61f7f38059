"""The CLI contract for threshold ECDSA (DKLs23): keygen, sign a digest, verify, refresh,
repair, ban persistence, and the refusals (raw messages, wrong digest length, bad paths)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import coincurve
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from eth_hash.auto import keccak

from shardguard import cli, keyfiles, local
from shardguard.crypto.bip32 import derive_public
from shardguard.crypto.suites import ECDSA_SECP256K1
from shardguard.interop import recover_ecdsa, verify_ecdsa, verify_independently
from shardguard.protocols import wire
from shardguard.protocols.dkls23 import EcdsaKeyShare
from shardguard.protocols.dkls23._messages import SignOtStart
from shardguard.protocols.dkls23.bans import REGISTRY
from shardguard.protocols.dkls23.keys import PairwiseSetup
from shardguard.protocols.message import Message
from tests.helpers.rng import DeterministicRng
from tests.test_cli import fails, ok, sg

DIGEST = hashlib.sha256(b"shardguard cli ecdsa").hexdigest()
N = ECDSA_SECP256K1.group.order


def eth_address(public_key: bytes) -> str:
    """Reference address: pycryptodome's Keccak (via eth-hash) and EIP-55 written out again."""
    lower = keccak(coincurve.PublicKey(public_key).format(compressed=False)[1:])[-20:].hex()
    check = keccak(lower.encode()).hex()
    return "0x" + "".join(c.upper() if int(h, 16) >= 8 else c for c, h in zip(lower, check))


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real 2-of-3 DKLs23 key (DKG + OT setup) for the module; tests get a copy."""
    d = tmp_path_factory.mktemp("ecdsa") / "key"
    keyfiles.write_new(d, local.ecdsa_keygen(2, 3, rng=DeterministicRng(2023)))
    return d


@pytest.fixture(autouse=True)
def _fresh_ban_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process cheats below ban peers in the process-wide registry, keyed by setup id; every
    test copies one template key, so each gets an empty registry (as each CLI process has)."""
    monkeypatch.setattr(REGISTRY, "_bans", {})


@pytest.fixture
def key(template: Path, tmp_path: Path) -> Path:
    d = tmp_path / "key"
    shutil.copytree(template, d)
    return d


def fails_inproc(capsys: pytest.CaptureFixture[str], *args: str | Path, code: int = 2) -> str:
    """``fails`` without a subprocess (for the many parametrized refusals)."""
    capsys.readouterr()
    assert cli.main([str(a) for a in args]) == code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shardguard: error:"), err
    return err


def check_openssl(public_key: bytes, digest: bytes, sig: bytes) -> None:
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    k = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), public_key)
    k.verify(encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(hashes.SHA256())))  # raises if invalid


# -- the whole flow through real subprocesses ---------------------------------------------------


def test_keygen_sign_verify_refresh(tmp_path: Path) -> None:
    key = tmp_path / "k"
    info = ok("keygen", "--scheme", "ecdsa", "--threshold", 2, "--parties", 3, "--out", key)
    assert sorted(p.name for p in key.iterdir()) == ["public.json", "share-1.json", "share-2.json", "share-3.json"]
    assert oct((key / "share-2.json").stat().st_mode & 0o777) == "0o600"
    public = json.loads((key / "public.json").read_text())
    pk = bytes.fromhex(public["public_key"])
    assert public["scheme"] == "ecdsa" and public["threshold"] == 2 and len(pk) == 33
    assert len(bytes.fromhex(public["chain_code"])) == 32 and len(bytes.fromhex(public["setup_id"])) == 32
    assert public["ethereum_address"] == eth_address(pk) == info["ethereum_address"]
    assert info["chain_code"] == public["chain_code"] and info["public_key"] == public["public_key"]
    share = json.loads((key / "share-1.json").read_text())
    assert "UNPROTECTED" in share["warning"] and share["dkls23"]["banned"] == []

    out = ok("sign", "--key", key, "--signers", "1,3", "--digest-hex", DIGEST)
    assert set(out) >= {"scheme", "public_key", "path", "digest", "signature", "recovery_id"}
    assert out["scheme"] == "ecdsa" and out["public_key"] == public["public_key"] and out["path"] == "m"
    assert out["digest"] == DIGEST and out["ethereum_address"] == public["ethereum_address"]
    sig, digest = bytes.fromhex(out["signature"]), bytes.fromhex(DIGEST)
    assert len(sig) == 64 and int.from_bytes(sig[32:], "big") <= N // 2  # low-s
    check_openssl(pk, digest, sig)
    assert verify_independently("ecdsa", pk, digest, sig)
    assert recover_ecdsa(digest, sig, out["recovery_id"]) == pk
    assert sg("verify", "--key", key, "--digest-hex", DIGEST, "--signature-hex", out["signature"]).returncode == 0
    other = hashlib.sha256(b"other").hexdigest()
    assert sg("verify", "--key", key, "--digest-hex", other, "--signature-hex", out["signature"]).returncode == 1

    derived = ok("sign", "--key", key, "--signers", "2,3", "--digest-hex", DIGEST, "--path", "m/0/1")
    child = derive_public(
        ECDSA_SECP256K1.group.decode(pk), bytes.fromhex(public["chain_code"]), (0, 1)
    ).public_key  # reference derivation
    assert derived["path"] == "m/0/1" and derived["public_key"] == ECDSA_SECP256K1.group.encode(child).hex()
    dsig = bytes.fromhex(derived["signature"])
    check_openssl(bytes.fromhex(derived["public_key"]), digest, dsig)
    assert recover_ecdsa(digest, dsig, derived["recovery_id"]).hex() == derived["public_key"]  # type: ignore[union-attr]
    assert derived["ethereum_address"] == eth_address(bytes.fromhex(derived["public_key"]))
    verify = ("verify", "--key", key, "--digest-hex", DIGEST, "--signature-hex", derived["signature"])
    assert sg(*verify, "--path", "m/0/1").returncode == 0
    assert sg(*verify).returncode == 1  # not the master key's signature
    assert sg(*verify, "--path", "m/0/2").returncode == 1
    doc = ok(*verify, "--path", "m/0/1")
    assert doc["valid"] is True and doc["public_key"] == derived["public_key"] and doc["path"] == "m/0/1"

    before = json.loads((key / "share-1.json").read_text())
    assert ok("refresh", "--key", key)["epoch"] == 1
    after = json.loads((key / "public.json").read_text())
    assert after["public_key"] == public["public_key"] and after["chain_code"] == public["chain_code"]
    assert after["setup_id"] != public["setup_id"] and after["ethereum_address"] == public["ethereum_address"]
    new1 = json.loads((key / "share-1.json").read_text())
    assert new1["signing_share"] != before["signing_share"]
    assert new1["dkls23"]["pairs"]["2"]["delta"] != before["dkls23"]["pairs"]["2"]["delta"]  # fresh OT state
    again = ok("sign", "--key", key, "--signers", "1,2", "--digest-hex", DIGEST, "--path", "m/0/1")
    assert again["public_key"] == derived["public_key"] and again["epoch"] == 1
    verify = ("verify", "--key", key, "--digest-hex", DIGEST, "--signature-hex", again["signature"])
    assert sg(*verify, "--path", "m/0/1").returncode == 0


def test_human_output(key: Path) -> None:
    r = sg("sign", "--key", key, "--signers", "1,2", "--digest-hex", DIGEST)
    assert r.returncode == 0, r.stderr
    assert "recovery id:" in r.stdout and "ethereum address: 0x" in r.stdout


# -- refusals -----------------------------------------------------------------------------------


def test_raw_message_and_bad_digests_refused(key: Path) -> None:
    before = snapshot(key)
    sign = ("sign", "--key", key, "--signers", "1,3")
    err = fails(*sign, "--message-hex", "68656c6c6f")
    assert "32-byte digest" in err and "--digest-hex" in err
    assert "32-byte digest" in fails(*sign, "--message-hex", "68656c6c6f", "--digest-hex", DIGEST)
    assert "32-byte digest" in fails(*sign)  # neither
    assert "exactly 32 bytes" in fails(*sign, "--digest-hex", DIGEST[:-2])  # 31 bytes
    assert "exactly 32 bytes" in fails(*sign, "--digest-hex", DIGEST + "00")  # 33 bytes
    assert "exactly 32 bytes" in fails(*sign, "--digest-hex", "")
    assert "not valid hex" in fails(*sign, "--digest-hex", "zz" * 32)
    verify = ("verify", "--key", key, "--signature-hex", "00" * 64)
    assert "32-byte digest" in fails(*verify, "--message-hex", "00" * 32)
    assert "exactly 32 bytes" in fails(*verify, "--digest-hex", "00" * 31)
    fails(*verify, "--digest-hex", DIGEST, code=1)  # well-formed but not a signature
    fails("verify", "--key", key, "--digest-hex", DIGEST, "--signature-hex", "00" * 65, code=1)
    fails(*sign[:-1], "1", "--digest-hex", DIGEST)  # too few signers
    fails(*sign[:-1], "1,4", "--digest-hex", DIGEST)  # not a holder
    assert snapshot(key) == before


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("0/1", "not a derivation path"),
        ("m/a", "not a derivation path"),
        ("m/01", "not a derivation path"),
        ("m//1", "not a derivation path"),
        ("m/-1", "not a derivation path"),
        ("M/0", "not a derivation path"),
        ("m/0'", "hardened"),
        ("m/44h/0", "hardened"),
        ("m/2147483648", "hardened"),
        ("m/4294967296", "outside"),
    ],
)
def test_bad_paths_refused(key: Path, path: str, why: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = fails_inproc(capsys, "sign", "--key", key, "--signers", "1,3", "--digest-hex", DIGEST, "--path", path)
    assert "--path" in err and why in err
    err = fails_inproc(capsys, "verify", "--key", key, "--digest-hex", DIGEST, "--signature-hex", "00" * 64, "--path", path)
    assert why in err


def test_frost_keys_refuse_digest_and_path(tmp_path: Path) -> None:
    key = tmp_path / "f"
    ok("keygen", "--scheme", "secp256k1", "--threshold", 2, "--parties", 3, "--out", key)
    assert "--digest-hex" in fails("sign", "--key", key, "--signers", "1,2", "--digest-hex", DIGEST)
    assert "--path" in fails("sign", "--key", key, "--signers", "1,2", "--message-hex", "00", "--path", "m/0")
    assert "--message-hex" in fails("sign", "--key", key, "--signers", "1,2")
    fails("verify", "--key", key, "--digest-hex", DIGEST, "--signature-hex", "00" * 65)
    assert sg("sign", "--key", key, "--signers", "1,2", "--message-hex", "00").returncode == 0


def test_keygen_refusals(tmp_path: Path) -> None:
    assert "at least 2" in fails("keygen", "--scheme", "ecdsa", "-t", 1, "-n", 3, "--allow-single", "--out", tmp_path / "a")
    assert "unknown scheme" in fails("keygen", "--scheme", "ECDSA", "-t", 2, "-n", 3, "--out", tmp_path / "a")
    fails("keygen", "--scheme", "ecdsa", "-t", 4, "-n", 3, "--out", tmp_path / "a")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    "damage",
    ["truncated", "no_dkls23", "short_seed", "bad_ban", "other_setup", "other_chain_code", "flipped_share", "public_address"],
)
def test_corrupted_share_file_exit_2_nothing_written(key: Path, damage: str, capsys: pytest.CaptureFixture[str]) -> None:
    target = key / ("public.json" if damage == "public_address" else "share-3.json")
    doc = json.loads(target.read_text())
    ext = doc.get("dkls23", {})
    if damage == "truncated":
        target.write_text(target.read_text()[:5000])
    else:
        if damage == "no_dkls23":
            del doc["dkls23"]
        elif damage == "short_seed":
            ext["pairs"]["1"]["seeds0"] = ext["pairs"]["1"]["seeds0"][:-2]
        elif damage == "bad_ban":
            ext["banned"] = [3]  # a share cannot ban its own holder
        elif damage == "other_setup":
            ext["setup_id"] = "11" * 32
        elif damage == "other_chain_code":
            ext["chain_code"] = "22" * 32
        elif damage == "flipped_share":
            doc["signing_share"] = "00" * 31 + "01"
        elif damage == "public_address":
            doc["ethereum_address"] = "0x" + "00" * 20
        target.write_text(json.dumps(doc))
    before = snapshot(key)
    for args in (
        ("sign", "--key", key, "--signers", "1,3", "--digest-hex", DIGEST),
        ("refresh", "--key", key),
    ):
        err = fails_inproc(capsys, *args)
        assert target.name in err
        assert "00" * 31 + "01" not in err  # never echo secret material
    assert snapshot(key) == before  # nothing written, no .pending left behind


# -- bans -----------------------------------------------------------------------------------------


def _cheating_run(cheater: int, victim: int):  # type: ignore[no-untyped-def]
    """``local.run`` where ``cheater`` corrupts its OT-extension message to ``victim``."""

    def tamper(m: Message) -> Message:
        if m.sender == cheater and m.recipient == victim and m.round == 1 and not m.is_broadcast:
            payload = wire.decode_payload(ECDSA_SECP256K1, m.payload, SignOtStart)
            u = bytearray(payload.u)
            u[len(u) // 2] ^= 0x10
            return dataclasses.replace(m, payload=wire.encode_payload(dataclasses.replace(payload, u=bytes(u))))
        return m

    def run(parties: Mapping[int, object]) -> object:
        from collections import deque

        queue: deque[Message] = deque()
        for p in parties.values():
            queue.extend(p.start())  # type: ignore[attr-defined]
        while queue:
            m = tamper(queue.popleft())
            targets = [i for i in parties if i != m.sender] if m.is_broadcast else [m.recipient]
            for i in targets:
                queue.extend(parties[i].receive(m))  # type: ignore[attr-defined]
        return {i: p.result for i, p in parties.items()}  # type: ignore[attr-defined]

    return run


def test_ban_is_persisted_and_enforced_until_refresh(
    key: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sign = ["sign", "--key", str(key), "--digest-hex", DIGEST, "--signers"]
    before = snapshot(key)
    with monkeypatch.context() as mp:
        mp.setattr(local, "run", _cheating_run(cheater=2, victim=1))
        assert cli.main([*sign, "1,2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("shardguard: error: signing aborted: OT extension consistency check failed")
    assert "party 1 detected it" in err[0] and "[2]" in err[0] and "refresh" in err[0]

    after = snapshot(key)
    assert {n for n in after if after[n] != before[n]} == {"share-1.json"}  # only the detector's file
    assert set(after) == set(before)  # written in place (no temp file left)
    assert json.loads(after["share-1.json"])["dkls23"]["banned"] == [2]
    assert keyfiles.load_ecdsa_share(key, 1).banned == {2}
    assert oct((key / "share-1.json").stat().st_mode & 0o777) == "0o600"

    for signers in ("1,2", "2,1", "1,2,3"):
        r = sg(*sign, signers)
        assert r.returncode == 2
        assert "party 1: parties [2] are banned by this share after a failed check; refresh the key first" in r.stderr
    assert sg(*sign, "1,3").returncode == 0  # other peers are still fine
    assert sg(*sign, "2,3").returncode == 0  # party 3 has no ban

    assert ok("refresh", "--key", key)["epoch"] == 1
    assert all(not keyfiles.load_ecdsa_share(key, i).banned for i in (1, 2, 3))
    assert sg(*sign, "1,2").returncode == 0


def test_second_ban_adds_to_the_first(key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keyfiles.record_bans(key, keyfiles.load_ecdsa_share(key, 1), {2})
    monkeypatch.setattr(local, "run", _cheating_run(cheater=3, victim=1))
    assert cli.main(["sign", "--key", str(key), "--digest-hex", DIGEST, "--signers", "1,3"]) == 2
    assert keyfiles.load_ecdsa_share(key, 1).banned == {2, 3}


def test_non_banning_abort_writes_nothing(key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(key)

    def dropping_run(parties: Mapping[int, object]) -> object:
        from shardguard.protocols import AbortReason, ProtocolAbort

        raise ProtocolAbort(AbortReason.INVALID_SIGNATURE, party=1)

    monkeypatch.setattr(local, "run", dropping_run)
    assert cli.main(["sign", "--key", str(key), "--digest-hex", DIGEST, "--signers", "1,3"]) == 2
    assert snapshot(key) == before


# -- repair and import ----------------------------------------------------------------------------


def test_repair_rebuilds_the_share_and_renews_the_ot_setup(key: Path) -> None:
    keyfiles.record_bans(key, keyfiles.load_ecdsa_share(key, 3), {1})
    old = {i: keyfiles.load_ecdsa_share(key, i) for i in (1, 2, 3)}
    old_public = json.loads((key / "public.json").read_text())
    (key / "share-2.json").unlink()
    assert "present and valid" in fails("repair", "--key", key, "--lost", 3, "--helpers", "1,2")
    out = ok("repair", "--key", key, "--lost", 2, "--helpers", "1,3")
    assert out["repaired"] == 2 and out["epoch"] == 0
    new = {i: keyfiles.load_ecdsa_share(key, i) for i in (1, 2, 3)}
    assert new[2].share.signing_share == old[2].share.signing_share  # same Shamir share, same epoch
    assert all(n.setup_id != old[1].setup_id and n.chain_code == old[1].chain_code for n in new.values())
    assert new[3].banned == {1} and not new[1].banned and not new[2].banned  # bans survive until a refresh
    public = json.loads((key / "public.json").read_text())
    assert public["setup_id"] == new[1].setup_id.hex() != old_public["setup_id"]
    assert {k: v for k, v in public.items() if k != "setup_id"} == {k: v for k, v in old_public.items() if k != "setup_id"}
    assert not (key / keyfiles.PENDING).exists()
    for signers in ("1,2", "2,3"):
        out = ok("sign", "--key", key, "--signers", signers, "--digest-hex", DIGEST, "--path", "m/7")
        check_openssl(bytes.fromhex(out["public_key"]), bytes.fromhex(DIGEST), bytes.fromhex(out["signature"]))


def _fake_ecdsa_dir(d: Path, threshold: int, parties: int) -> None:
    """A well-formed ecdsa key directory whose OT state is random (cannot sign; cheap)."""
    plain = local.keygen("ecdsa", threshold, parties, rng=DeterministicRng(99))
    rng = DeterministicRng(100)
    shares = []
    for s in plain:
        pairs = {
            j: PairwiseSetup(seeds0=rng(8192), seeds1=rng(8192), delta=rng(32), chosen=rng(8192), zero_seed=rng(32))
            for j in s.public.participants
            if j != s.identifier
        }
        shares.append(EcdsaKeyShare(share=s, chain_code=b"\x07" * 32, setup_id=b"\x08" * 32, pairs=pairs))
    keyfiles.write_new(d, shares)


def test_repair_needs_every_other_holder(tmp_path: Path) -> None:
    key = tmp_path / "k"
    _fake_ecdsa_dir(key, 2, 4)
    (key / "share-2.json").unlink()
    (key / "share-4.json").write_text("{")
    before = snapshot(key)
    err = fails("repair", "--key", key, "--lost", 2, "--helpers", "1,3")
    assert "OT setup among all holders" in err and "share-4.json" in err
    assert snapshot(key) == before


def test_import_with_chain_code(tmp_path: Path) -> None:
    key = tmp_path / "imp"
    secret, chain = "0" * 62 + "2a", "33" * 32
    args = ("import", "--scheme", "ecdsa", "--threshold", 2, "--parties", 3, "--secret-hex", secret)
    out = ok(*args, "--chain-code-hex", chain, "--out", key)
    pk = coincurve.PrivateKey(bytes.fromhex(secret)).public_key.format()
    assert out["public_key"] == pk.hex() and out["chain_code"] == chain and out["ethereum_address"] == eth_address(pk)
    sig = ok("sign", "--key", key, "--signers", "1,3", "--digest-hex", DIGEST, "--path", "m/0")
    # BIP32 child of (sk = 42, chain code): sk' = sk + I_L, checked with coincurve's private-key maths.
    il = derive_public(ECDSA_SECP256K1.group.decode(pk), bytes.fromhex(chain), (0,)).tweak
    child = coincurve.PrivateKey(bytes.fromhex(secret)).add(il.to_bytes(32, "big")).public_key.format()
    assert sig["public_key"] == child.hex()
    assert "at least 2" in fails("import", *args[1:4], 1, *args[5:], "--out", tmp_path / "x")
    frost = ("import", "--scheme", "ed25519", "-t", 2, "-n", 3, "--secret-hex", secret)
    assert "ecdsa only" in fails(*frost, "--chain-code-hex", chain, "--out", tmp_path / "y")
    assert "32 bytes" in fails(*args, "--chain-code-hex", "33", "--out", tmp_path / "z")


def test_help_mentions_digest_and_path() -> None:
    r = sg("sign", "--help")
    assert "--digest-hex" in r.stdout and "--path" in r.stdout
    assert "ecdsa" in sg("keygen", "--help").stdout


# -- the independent verifier the CLI uses --------------------------------------------------------


def test_interop_verify_ecdsa_edges() -> None:
    sk = coincurve.PrivateKey(b"\x01" * 32)
    pk, digest = sk.public_key.format(), hashlib.sha256(b"x").digest()
    sig = sk.sign_recoverable(digest, hasher=None)
    rs, recid = sig[:64], sig[64]
    assert verify_ecdsa(pk, digest, rs) and verify_ecdsa(sk.public_key.format(compressed=False), digest, rs)
    assert recover_ecdsa(digest, rs, recid) == pk
    high = rs[:32] + (N - int.from_bytes(rs[32:], "big")).to_bytes(32, "big")
    check_openssl(pk, digest, high)  # OpenSSL alone accepts the malleated twin...
    assert not verify_ecdsa(pk, digest, high)  # ...libsecp256k1 (low-s only) does not
    assert not verify_ecdsa(pk, digest[:31], rs) and not verify_ecdsa(pk, digest, rs + b"\0")
    assert not verify_ecdsa(pk, bytes(32), rs)
    assert not verify_ecdsa(b"\x02" + b"\xff" * 32, digest, rs)  # not a point
    assert not verify_ecdsa(pk, digest, bytes(32) + rs[32:])  # r = 0
    assert not verify_ecdsa(pk, digest, N.to_bytes(32, "big") + rs[32:])  # r = n
    assert recover_ecdsa(digest, rs, 4) is None and recover_ecdsa(digest, bytes(64), 0) is None
