"""``make demo`` (shardguard.demo): the whole story against a real developer cluster.

The demo runs as a subprocess (``python -m shardguard.demo``), exactly as ``make demo`` runs it:
exit 0, every step in the table, the checks it prints, and no process left behind; Ctrl-C in
the middle still tears the cluster down. The audit checks are tested on their own against the
node's real record format (tampering detected).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import coincurve
import pytest
from eth_hash.auto import keccak

from shardguard import demo
from shardguard.channel import DOMAIN_TAG, NodeKeys
from shardguard.keyfiles import ethereum_address
from shardguard.node.audit import AUDIT_CONTEXT, entry_hash

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return dict(os.environ, COLUMNS="250", PYTHONUNBUFFERED="1", TERM="dumb")


def _leftovers(marker: str) -> list[int]:
    """PIDs of live (non-zombie) processes whose command line mentions ``marker``."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            out.append(int(p.name))
    return out


def _cluster_dir(out: str) -> str:
    m = re.search(r"cluster directory: (\S+)", out)
    assert m, out
    return m.group(1)


def test_demo_runs_the_whole_story_against_a_cluster() -> None:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "shardguard.demo"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=180
    )
    elapsed = time.perf_counter() - t0
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "SIMULATED ENCLAVES" in out.split("bring up")[0]  # the warning comes first
    rows = [line for line in out.splitlines() if line.startswith("│ ")]
    table: dict[str, list[list[str]]] = {}
    for line in rows:
        cells = [c.strip() for c in line.strip("│").split("│")]
        if len(cells) == 4 and cells[0]:
            table.setdefault(cells[0], []).append(cells)

    def row(step: str, scheme: str = "") -> str:
        hits = [c for c in table.get(step, []) if c[1] == scheme]
        assert hits, f"no row {step!r} {scheme!r} in\n{out}"
        return hits[0][2]

    assert "3 nodes registered" in row("bring up a coordinator and 3 nodes") and "verified simulated" in out
    for scheme in demo.SCHEMES:
        assert row("attested DKG 2-of-3 (" + scheme + ")", scheme).startswith("key_")
        for step in ("sign with node-1, node-3", "sign again with node-2, node-3", "sign without node-2 (node-1, node-3)"):
            assert f"{demo.VERIFIERS[scheme]} VALID" in row(step, scheme)
        assert "epoch 1; same public key" in row("refresh (all holders)", scheme)
    burst = row(f"{demo.BURST} signatures at once (node-1, node-2)", "ed25519")
    assert re.match(r"[1-9]\d* in [1-9]\d* bundle\(s\) of [\d, ]+", burst), burst  # a cell's first line
    assert "SIGKILL to PID" in row("kill -9 node-2")
    assert "re-registered" in row("restart node-2 from its sealed state")
    assert "VALID" in row("sign with the restarted node-2", "ecdsa")
    address = re.search(r"Ethereum address (0x[0-9a-fA-F]{40})", out)
    assert address
    assert f"ecrecover → {address.group(1)} ✓" in out
    audit = row("audit entries of every node")
    m = re.match(r"(\d+) entries \(node-1 (\d+), node-2 (\d+), node-3 (\d+)\)", audit)
    assert m and int(m.group(1)) >= 3 * 10, audit  # node start, 3 DKGs, 3 refreshes… per node
    assert "every hash, Ed25519 signature (OpenSSL) and chain link valid" in audit
    assert "stopped PIDs" in row("tear down")
    assert "FAILED" not in out and "INVALID" not in out
    assert "All 22 steps passed" in out
    assert not _leftovers(_cluster_dir(out)), "the demo left cluster processes running"
    # The brief: under 60 s on this machine (shared cores: the bound is for the test's own run).
    assert elapsed < 90, f"demo took {elapsed:.1f} s"


def _default_sigint() -> None:
    # A suite started in the background by a shell (`make test &`, nohup) inherits SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler: give the demo Ctrl-C back.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_tears_the_cluster_down() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardguard.demo"],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_default_sigint,
    )
    assert proc.stdout is not None
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "cluster directory:" in line:  # printed before the story starts
                break
        directory = _cluster_dir("".join(seen))
        # Interrupt as soon as the cluster is up (cluster.json is written once every node has
        # registered): the rest of the story takes only a few seconds, so waiting for a later
        # line of output would race with its end.
        end = time.monotonic() + 120
        while not (Path(directory) / "cluster.json").exists():
            assert time.monotonic() < end and proc.poll() is None, "the cluster never came up"
            time.sleep(0.01)
        assert _leftovers(directory), "no cluster processes to tear down?"
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(seen) + rest
    assert proc.returncode == 130, out
    assert "INTERRUPTED" in out or "interrupted" in out
    assert "stopped PIDs" in out
    assert not _leftovers(directory)
    assert not Path(directory).exists()  # the temporary directory is gone too


# -- the audit checks, against the node's real record format -----------------------------------
def _records(keys: NodeKeys, n: int, event: str = "signing") -> list[dict[str, Any]]:
    out, prev = [], "00" * 32
    for seq in range(1, n + 1):
        body = {"seq": seq, "node": keys.node_id, "event": event, "prev": prev, "time": "2026-01-01T00:00:00.000+00:00"}
        if seq == 1:
            body["identity_public_key"] = keys.card().identity_public_key.hex()
        entry = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        h = entry_hash(entry)
        sig = keys.sign(AUDIT_CONTEXT, bytes.fromhex(h))
        out.append(
            {
                "node_id": keys.node_id,
                "seq": seq,
                "entry": base64.b64encode(entry).decode(),
                "hash": h,
                "signature": base64.b64encode(sig).decode(),
                "identity_public_key": keys.card().identity_public_key.hex(),
            }
        )
        prev = h
    return out


def test_audit_format_constants_match_the_node() -> None:
    assert demo.AUDIT_CONTEXT == AUDIT_CONTEXT
    assert demo.IDENTITY_DOMAIN == DOMAIN_TAG


def test_check_audit_accepts_a_real_chain_and_finds_tampering() -> None:
    keys = NodeKeys.generate("node-1")
    recs = _records(keys, 4)
    report = demo.check_audit(recs)
    assert report["bad"] == [] and report["nodes"]["node-1"]["entries"] == 4

    forged = [dict(r) for r in recs]
    body = json.loads(base64.b64decode(forged[1]["entry"]))
    body["event"] = "refused"
    forged[1]["entry"] = base64.b64encode(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).decode()
    assert demo.check_audit(forged)["bad"] == ["node-1#2: hash"]

    other = NodeKeys.generate("node-1")
    resigned = [dict(r) for r in recs]
    resigned[2]["signature"] = base64.b64encode(other.sign(AUDIT_CONTEXT, bytes.fromhex(recs[2]["hash"]))).decode()
    assert demo.check_audit(resigned)["bad"] == ["node-1#3: signature"]

    assert demo.check_audit([recs[0], *recs[2:]])["bad"] == []  # a gap in what was mirrored proves nothing
    spliced = [recs[0], _records(keys, 2, event="refused")[1]]  # entry 2 of another chain after entry 1
    assert demo.check_audit(spliced)["bad"] == ["node-1#2: chain"]


def test_entries_verify_under_the_key_recorded_for_them_and_that_key_was_announced() -> None:
    """The coordinator records the key that signed each entry (an entry written before a
    restart is mirrored after it with its old key); a wrong or unannounced key is flagged."""
    old, new = NodeKeys.generate("node-2"), NodeKeys.generate("node-2")
    recs = _records(old, 2)
    assert demo.check_audit(recs)["bad"] == []
    misattributed = [recs[0], {**recs[1], "identity_public_key": new.card().identity_public_key.hex()}]
    assert demo.check_audit(misattributed)["bad"] == ["node-2#2: signature"]
    stranger = _records(new, 2)[1] | {"entry": recs[1]["entry"], "hash": recs[1]["hash"]}
    stranger["signature"] = base64.b64encode(new.sign(AUDIT_CONTEXT, bytes.fromhex(recs[1]["hash"]))).decode()
    assert demo.check_audit([recs[0], stranger])["bad"] == ["node-2#2: signed by a key the node never announced"]


# -- the Ethereum parts ----------------------------------------------------------------------
def test_eip191_digest_is_what_wallets_sign() -> None:
    msg = b"ShardGuard demo: pay 1 ETH to Alice"
    assert demo._eip191_digest(msg) == keccak(b"\x19Ethereum Signed Message:\n" + str(len(msg)).encode() + msg)


def test_the_address_shown_matches_an_independent_derivation() -> None:
    """The address the demo shows is keccak(X‖Y)[-20:] of its key (checked with eth-hash)."""
    key = coincurve.PrivateKey(b"\x11" * 32).public_key
    expected = keccak(key.format(compressed=False)[1:])[-20:].hex()
    assert ethereum_address(key.format()).lower() == "0x" + expected


@pytest.mark.parametrize("scheme", demo.SCHEMES)
def test_every_scheme_has_an_independent_verifier(scheme: str) -> None:
    assert demo.VERIFIERS[scheme]
