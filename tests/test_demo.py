"""``make demo`` (shardguard.demo): every scheme's story runs and its checks hold, ECDSA included."""

from __future__ import annotations

import re
import time

import coincurve
import pytest
from eth_hash.auto import keccak

from shardguard import demo


def test_demo_runs_every_story_fast(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # no truncated cells in the captured table
    t0 = time.perf_counter()
    demo.main()
    elapsed = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert "All signatures verified by libraries that are not ShardGuard's." in out
    for scheme in ("ed25519", "secp256k1", "bip340", "ecdsa"):
        assert re.search(rf"│ {scheme}\s+│ refresh", out), scheme
    assert "INVALID" not in out and "NOT REFUSED" not in out and "False" not in out
    ecdsa = [line for line in out.splitlines() if line.startswith("│ ecdsa")]
    assert any("OpenSSL + libsecp256k1: VALID (low-s)" in line for line in ecdsa)
    assert any("recover the signer" in line and "matches the key's address" in line for line in ecdsa)
    assert any("fresh OT setup: True" in line for line in ecdsa)
    addresses = {a for line in ecdsa for a in re.findall(r"0x[0-9a-fA-F]{40}", line)}
    assert len(addresses) == 2  # the key's (shown, then recovered) and the m/0/1 child's
    # Generous bound (shared CI cores); on an idle machine the whole demo takes well under 20 s.
    assert elapsed < 60, f"demo took {elapsed:.1f} s"


def test_eip191_digest_is_what_wallets_sign() -> None:
    msg = b"ShardGuard demo: pay 1 ETH to Alice"
    assert demo._eip191_digest(msg) == keccak(b"\x19Ethereum Signed Message:\n" + str(len(msg)).encode() + msg)


def test_ecdsa_story_address_matches_an_independent_derivation() -> None:
    """The address the story shows is keccak(X‖Y)[-20:] of its key, checked with pycryptodome."""
    from shardguard.keyfiles import ethereum_address

    key = coincurve.PrivateKey(b"\x11" * 32).public_key
    expected = keccak(key.format(compressed=False)[1:])[-20:].hex()
    assert ethereum_address(key.format()).lower() == "0x" + expected
