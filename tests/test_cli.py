"""The CLI contract (issue #3 §5), run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shardguard.interop import verify_independently

PK_LEN = {"ed25519": 32, "secp256k1": 33, "bip340": 32}
SIG_LEN = {"ed25519": 64, "secp256k1": 65, "bip340": 64}


def sg(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shardguard.cli", *map(str, args)], capture_output=True, text=True, timeout=120)


def ok(*args: str | Path) -> dict:  # type: ignore[type-arg]
    r = sg(*args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def fails(*args: str | Path, code: int = 2) -> str:
    r = sg(*args)
    assert r.returncode == code, (r.stdout, r.stderr)
    if code == 2:
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("shardguard: error:"), r.stderr
        assert "Traceback" not in r.stderr
    return r.stderr


@pytest.mark.parametrize("scheme", ["ed25519", "secp256k1", "bip340"])
def test_keygen_sign_verify_refresh_repair(tmp_path: Path, scheme: str) -> None:
    key = tmp_path / "k"
    info = ok("keygen", "--scheme", scheme, "--threshold", 2, "--parties", 3, "--out", key)
    assert sorted(p.name for p in key.iterdir()) == ["public.json", "share-1.json", "share-2.json", "share-3.json"]
    public = json.loads((key / "public.json").read_text())
    assert public["scheme"] == scheme and public["threshold"] == 2 and public["parties"] == 3
    assert len(public["verifying_shares"]) == 3 and public["public_key"] == info["public_key"]
    share = json.loads((key / "share-1.json").read_text())
    assert "UNPROTECTED" in share["warning"]
    assert oct((key / "share-1.json").stat().st_mode & 0o777) == "0o600"

    msg = "68656c6c6f"
    out = ok("sign", "--key", key, "--signers", "1,3", "--message-hex", msg)
    assert set(out) >= {"scheme", "public_key", "message", "signature"}
    assert out["scheme"] == scheme and out["message"] == msg
    pk, sig = bytes.fromhex(out["public_key"]), bytes.fromhex(out["signature"])
    assert len(pk) == PK_LEN[scheme] and len(sig) == SIG_LEN[scheme]
    assert verify_independently(scheme, pk, bytes.fromhex(msg), sig)
    assert sg("verify", "--key", key, "--message-hex", msg, "--signature-hex", out["signature"]).returncode == 0
    assert sg("verify", "--key", key, "--message-hex", msg + "00", "--signature-hex", out["signature"]).returncode == 1

    assert ok("refresh", "--key", key)["epoch"] == 1
    assert json.loads((key / "public.json").read_text())["public_key"] == info["public_key"]
    out2 = ok("sign", "--key", key, "--signers", "2,3", "--message-hex", msg)
    assert verify_independently(scheme, pk, bytes.fromhex(msg), bytes.fromhex(out2["signature"]))

    before = (key / "share-2.json").read_text()
    (key / "share-2.json").unlink()
    fails("sign", "--key", key, "--signers", "1,2", "--message-hex", msg)  # missing share
    ok("repair", "--key", key, "--lost", 2, "--helpers", "1,3")
    assert json.loads((key / "share-2.json").read_text())["signing_share"] == json.loads(before)["signing_share"]
    assert sg("sign", "--key", key, "--signers", "1,2", "--message-hex", msg).returncode == 0


def test_error_paths_print_one_line_and_exit_2(tmp_path: Path) -> None:
    key = tmp_path / "k"
    fails("keygen", "--scheme", "rsa", "--threshold", 2, "--parties", 3, "--out", key)
    fails("keygen", "--scheme", "ed25519", "--threshold", 4, "--parties", 3, "--out", key)
    fails("keygen", "--scheme", "ed25519", "--threshold", 1, "--parties", 3, "--out", key)
    assert not key.exists()  # nothing half-written
    ok("keygen", "--scheme", "ed25519", "--threshold", 2, "--parties", 3, "--out", key)
    fails("keygen", "--scheme", "ed25519", "--threshold", 2, "--parties", 3, "--out", key)  # no overwrite
    fails("sign", "--key", key, "--signers", "1", "--message-hex", "00")  # too few signers
    fails("sign", "--key", key, "--signers", "1,1", "--message-hex", "00")  # duplicate
    fails("sign", "--key", key, "--signers", "1,9", "--message-hex", "00")  # not a holder
    fails("sign", "--key", key, "--signers", "1,2", "--message-hex", "zz")  # bad hex
    fails("sign", "--key", tmp_path / "nope", "--signers", "1,2", "--message-hex", "00")
    fails("repair", "--key", key, "--lost", 2, "--helpers", "1,3")  # share 2 is not lost
    fails("repair", "--key", key, "--lost", 2, "--helpers", "1,2")  # lost among helpers

    (key / "share-3.json").write_text('{"format": "shardguard-local-share/v1", "identifier": 3')  # corrupt
    err = fails("sign", "--key", key, "--signers", "1,3", "--message-hex", "00")
    assert "share-3.json" in err
    doc = json.loads((key / "share-1.json").read_text())
    doc["signing_share"] = "00" * 31 + "01"  # a valid scalar that is not party 1's share
    (key / "share-1.json").write_text(json.dumps(doc))
    err = fails("sign", "--key", key, "--signers", "1,2", "--message-hex", "00")
    assert doc["signing_share"] not in err  # never echo secret material
    fails("verify", "--key", key, "--message-hex", "00", "--signature-hex", "00", code=1)


def test_import_existing_key(tmp_path: Path) -> None:
    key = tmp_path / "imp"
    secret = "0" * 62 + "2a"
    out = ok("import", "--scheme", "secp256k1", "--threshold", 2, "--parties", 3, "--secret-hex", secret, "--out", key)
    import coincurve

    assert out["public_key"] == coincurve.PrivateKey(bytes.fromhex(secret)).public_key.format().hex()
    fails("import", "--scheme", "secp256k1", "--threshold", 2, "--parties", 3, "--secret-hex", "00" * 32, "--out", tmp_path / "z")


def test_help_reads_well() -> None:
    r = sg("--help")
    assert r.returncode == 0
    for cmd in ("keygen", "sign", "verify", "refresh", "repair"):
        assert cmd in r.stdout
    r = sg("sign", "--help")
    assert "--signers" in r.stdout and "--message-hex" in r.stdout


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "shardguard"
    if not exe.exists():
        pytest.skip("package not installed as a console script in this interpreter")
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, env={**os.environ}, timeout=60)
    assert r.returncode == 0 and "shardguard" in r.stdout
