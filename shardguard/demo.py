"""``make demo``: the whole story against a developer cluster on this machine (issue 6).

A coordinator and three signer nodes start as separate processes (simulated enclaves) in a
temporary directory. Through the coordinator's API only (:class:`shardguard.client.Client`):
attested DKG of an ``ecdsa``, an ``ed25519`` and a ``bip340`` key (2-of-3); a signature of each
(ECDSA over an EIP-191 digest, with the key's Ethereum address recovered from the signature);
every signature checked by a library that is not ShardGuard's; a refresh of each key and a
signature again; a burst of Ed25519 requests at once, which the coordinator runs in bundles
(coordinator API.md §1.6); ``kill -9`` of one node and signatures by the other two; the node restarted
from its sealed state and signing again; the nodes' audit entries, each signature over its hash
checked with OpenSSL; tear-down, always (also on an error or Ctrl-C). A progress display while
it runs, then a summary table (step, scheme, result, time). Exit status 1 if any step failed,
130 if interrupted.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

import shardguard
from shardguard import dev
from shardguard.client import Client
from shardguard.interop import recover_ecdsa, verify_ecdsa, verify_independently
from shardguard.keyfiles import ethereum_address, keccak256

NODES = ("node-1", "node-2", "node-3")
SCHEMES = ("ecdsa", "ed25519", "bip340")
VICTIM = "node-2"
#: Seconds a job may run in the demo cluster: a stuck step fails instead of hanging the demo.
JOB_TIMEOUT = 20.0
VERIFIERS = {"ecdsa": "OpenSSL + libsecp256k1", "ed25519": "libsodium + OpenSSL", "bip340": "libsecp256k1 schnorrsig"}
WARNING = (
    "SIMULATED ENCLAVES: every node runs on the simulated platform, which protects nothing "
    "(its sealing key sits in clear in the state directory and its evidence is signed by a "
    "public development key). This demo shows the protocols and the service, not a secure "
    "deployment."
)
# The node's audit record format (shardguard/node/audit.py), checked here with OpenSSL only:
#   hash = SHA-256(AUDIT_CONTEXT ‖ 0x00 ‖ entry)
#   sig  = Ed25519(identity key) over frame(IDENTITY_DOMAIN) ‖ frame(AUDIT_CONTEXT) ‖ hash
AUDIT_CONTEXT = b"shardguard/audit/v1"
IDENTITY_DOMAIN = b"shardguard/attested-channel/v1"


#: Requests of the demo's burst (one signer set, all at once).
BURST = 12


class StepFailed(Exception):
    """A check of the story did not hold."""


def _eip191_digest(message: bytes) -> bytes:
    """What an Ethereum wallet signs for ``personal_sign`` (EIP-191 version 0x45)."""
    return keccak256(b"\x19Ethereum Signed Message:\n" + str(len(message)).encode() + message)


def _frame(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data


def audit_signature_ok(identity_public_key: bytes, entry_hash_hex: str, signature: bytes) -> bool:
    """The node's Ed25519 signature over an audit entry's hash, checked by OpenSSL."""
    signed = _frame(IDENTITY_DOMAIN) + _frame(AUDIT_CONTEXT) + bytes.fromhex(entry_hash_hex)
    try:
        Ed25519PublicKey.from_public_bytes(identity_public_key).verify(signature, signed)
    except (InvalidSignature, ValueError):
        return False
    return True


def check_audit(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Check every mirrored entry: its hash, its signature by the identity key the coordinator
    recorded for it — which must be one the same node announced in a ``node_started`` entry (an
    entry written before a restart is mirrored after it, with the key that signed it) — and the
    hash chain between consecutive entries of one node. Returns per-node counts and what failed."""
    by_node: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_node.setdefault(str(e["node_id"]), []).append(e)
    report: dict[str, Any] = {"nodes": {}, "bad": []}
    for node, recs in sorted(by_node.items()):
        recs.sort(key=lambda r: int(r["seq"]))
        bodies = [json.loads(base64.b64decode(r["entry"])) for r in recs]
        known = {bytes.fromhex(b["identity_public_key"]) for b in bodies if b.get("identity_public_key")}
        events: Counter[str] = Counter()
        prev: tuple[int, str] | None = None
        for r, body in zip(recs, bodies, strict=True):
            seq = int(r["seq"])
            events[str(body.get("event"))] += 1
            raw = base64.b64decode(r["entry"])
            if hashlib.sha256(AUDIT_CONTEXT + b"\x00" + raw).hexdigest() != r["hash"]:
                report["bad"].append(f"{node}#{seq}: hash")
            sig = base64.b64decode(r["signature"])
            key = bytes.fromhex(r["identity_public_key"]) if r.get("identity_public_key") else b""
            if not key or not audit_signature_ok(key, r["hash"], sig):
                report["bad"].append(f"{node}#{seq}: signature")
            elif key not in known:
                report["bad"].append(f"{node}#{seq}: signed by a key the node never announced")
            if body.get("seq") != seq or body.get("node") != node:
                report["bad"].append(f"{node}#{seq}: seq/node inside")
            if prev is not None and prev[0] + 1 == seq and body.get("prev") != prev[1]:
                report["bad"].append(f"{node}#{seq}: chain")
            prev = (seq, str(r["hash"]))
        report["nodes"][node] = {"entries": len(recs), "events": events, "bodies": bodies}
    return report


def fetch_audit(client: Client, nodes: tuple[str, ...] = NODES) -> list[dict[str, Any]]:
    """Every mirrored entry of every node (GET /v1/audit, paged per node)."""
    out: list[dict[str, Any]] = []
    for node in nodes:
        after: int | None = None
        while True:
            params: dict[str, Any] = {"node": node, "limit": 1000}
            if after is not None:
                params["after"] = after
            page = client.audit(**params)
            got = page.get("entries", []) if isinstance(page, dict) else list(page)
            out.extend(got)
            if len(got) < 1000:
                break
            after = int(got[-1]["seq"])
    return out


def _reap(pid: int, timeout: float = 5.0) -> None:
    """Wait until a killed process is gone (reaping it if it is our child)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return
        if "zombie" in status.lower():
            return
        time.sleep(0.05)


class Story:
    """The steps, in order; each returns ``(scheme, result)`` and raises on a failed check."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.client: Client | None = None
        self.keys: dict[str, dict[str, Any]] = {}
        self.address = ""
        self.audit_rows: list[tuple[str, str, str, str, str]] = []
        self.url = self.token = ""

    @property
    def c(self) -> Client:
        if self.client is None:
            raise RuntimeError("the demo's client is used before the cluster is up")
        return self.client

    def steps(self) -> list[tuple[str, Callable[[], tuple[str, str]]]]:
        sign, each = self.sign, SCHEMES
        return [
            ("bring up a coordinator and 3 nodes", self.up),
            *((f"attested DKG 2-of-3 ({s})", partial(self.dkg, s)) for s in each),
            *(("sign with node-1, node-3", partial(sign, s, ["node-1", "node-3"])) for s in each),
            *(("refresh (all holders)", partial(self.refresh, s)) for s in each),
            *(("sign again with node-2, node-3", partial(sign, s, ["node-2", "node-3"])) for s in each),
            (f"{BURST} signatures at once (node-1, node-2)", partial(self.burst, "ed25519")),
            (f"kill -9 {VICTIM}", self.kill),
            *((f"sign without {VICTIM} (node-1, node-3)", partial(sign, s, ["node-1", "node-3"])) for s in each),
            (f"restart {VICTIM} from its sealed state", self.restart),
            *((f"sign with the restarted {VICTIM}", partial(sign, s, ["node-1", VICTIM])) for s in ("ecdsa",)),
            ("audit entries of every node", self.audit),
        ]

    # -- steps -------------------------------------------------------------------------------
    def up(self) -> tuple[str, str]:
        cluster = dev.up(self.dir, len(NODES), job_timeout=JOB_TIMEOUT)
        self.url, self.token = str(cluster["url"]), str(cluster["token"])
        self.client = Client(self.url, self.token, timeout=JOB_TIMEOUT + 10)
        nodes = self.c.nodes()
        kinds = Counter(
            f"{(n.get('attestation') or {}).get('verdict', '?')}"
            f"{' simulated' if (n.get('attestation') or {}).get('simulated') else ''} {n['platform']}-format"
            for n in nodes
        )
        evidence = ", ".join(f"{count}× {kind}" for kind, count in sorted(kinds.items()))
        return "", f"{cluster['url']}; {len(nodes)} nodes registered with evidence: {evidence}"

    def dkg(self, scheme: str) -> tuple[str, str]:
        key = self.c.create_key(scheme, 2, list(NODES))
        if key.get("status") != "active" or not key.get("public_key"):
            raise StepFailed(f"key not active: {key.get('status')}")
        self.keys[scheme] = key
        pk = str(key["public_key"])
        extra = ""
        if scheme == "ecdsa":
            self.address = ethereum_address(bytes.fromhex(pk))
            extra = f"; Ethereum address {self.address}"
        return scheme, f"{key['key_id']}, public key {pk[:20]}…{extra}"

    def burst(self, scheme: str) -> tuple[str, str]:
        """``BURST`` clients sign at once with one signer set: those beyond the one in flight
        wait and run together, as bundles; each request still gets its own signature."""
        key = self.keys[scheme]
        pk = bytes.fromhex(str(key["public_key"]))
        messages = [f"ShardGuard demo: payout {i} ({time.time_ns()})".encode() for i in range(BURST)]

        def one(message: bytes) -> dict[str, Any]:
            with Client(self.url, self.token, timeout=JOB_TIMEOUT + 10) as c:
                return c.sign_request(key["key_id"], message=message, signers=["node-1", "node-2"])

        with concurrent.futures.ThreadPoolExecutor(BURST) as pool:
            done = list(pool.map(one, messages))
        for req, message in zip(done, messages, strict=True):
            if not verify_independently(scheme, pk, message, bytes.fromhex(str(req["result"]["signature"]))):
                raise StepFailed(f"{VERIFIERS[scheme]}: INVALID signature")
        sizes = sorted(Counter(r["bundle"] for r in done if r.get("bundle")).values(), reverse=True)
        alone = BURST - sum(sizes)
        how = f"{sum(sizes)} in {len(sizes)} bundle(s) of {', '.join(map(str, sizes))}" if sizes else "none bundled"
        return scheme, f"{how}, {alone} alone; every signature {VERIFIERS[scheme]} VALID"

    def sign(self, scheme: str, signers: list[str]) -> tuple[str, str]:
        key = self.keys[scheme]
        pk = bytes.fromhex(str(key["public_key"]))
        if scheme == "ecdsa":
            payload = _eip191_digest(f"ShardGuard demo: pay 1 ETH to Alice ({time.time_ns()})".encode())
            out = self.c.sign(key["key_id"], digest=payload, signers=signers)
        else:
            payload = (
                hashlib.sha256(f"ShardGuard demo: taproot spend {time.time_ns()}".encode()).digest()
                if scheme == "bip340"
                else f"ShardGuard demo: pay 1 unit to Alice ({time.time_ns()})".encode()
            )
            out = self.c.sign(key["key_id"], message=payload, signers=signers)
        sig = bytes.fromhex(str(out["signature"]))
        if not verify_independently(scheme, pk, payload, sig):
            raise StepFailed(f"{VERIFIERS[scheme]}: INVALID signature")
        flipped = bytes([payload[0] ^ 1]) + payload[1:]
        if verify_independently(scheme, pk, flipped, sig):
            raise StepFailed("a signature verified for another message")
        what = {"ecdsa": "EIP-191 digest", "ed25519": f"{len(payload)}-byte message", "bip340": "32-byte message"}[scheme]
        result = f"{what}: {VERIFIERS[scheme]} VALID"
        if scheme == "ecdsa":
            if out.get("public_key") != key["public_key"] or not verify_ecdsa(pk, payload, sig):
                raise StepFailed("not the key's signature")
            recovered = recover_ecdsa(payload, sig, int(out["recovery_id"]))
            signer = ethereum_address(recovered) if recovered else "nothing"
            if signer != self.address:
                raise StepFailed(f"ecrecover gave {signer}, not {self.address}")
            result += f" (low-s); ecrecover → {signer} ✓"
        return scheme, result

    def refresh(self, scheme: str) -> tuple[str, str]:
        key = self.keys[scheme]
        self.c.refresh(key["key_id"])
        now = self.c.key(key["key_id"])
        if now["public_key"] != key["public_key"]:
            raise StepFailed("the public key changed")
        if int(now["epoch"]) != int(key.get("epoch", 0)) + 1:
            raise StepFailed(f"epoch {now['epoch']} after the refresh")
        self.keys[scheme] = now
        return scheme, f"new shares, epoch {now['epoch']}; same public key"

    def kill(self) -> tuple[str, str]:
        pid = int(next(n["pid"] for n in dev.Cluster.load(self.dir)["nodes"] if n["node_id"] == VICTIM))
        os.kill(pid, signal.SIGKILL)
        _reap(pid)
        return "", f"SIGKILL to PID {pid} (its shares stay sealed in its state directory)"

    def restart(self) -> tuple[str, str]:
        before = {n["node_id"]: n.get("generation") for n in self.c.nodes()}
        pid = dev.start_node(self.dir, VICTIM)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            now = {n["node_id"]: n.get("generation") for n in self.c.nodes()}
            if now.get(VICTIM) != before.get(VICTIM):
                return "", f"PID {pid}; re-registered with fresh evidence (generation {now[VICTIM]})"
            time.sleep(0.1)
        raise StepFailed(f"{VICTIM} did not re-register within 30 s")

    def audit(self) -> tuple[str, str]:
        entries = fetch_audit(self.c)
        report = check_audit(entries)
        if report["bad"]:
            raise StepFailed(f"{len(report['bad'])} bad entries: {', '.join(report['bad'][:5])}")
        for node, info in report["nodes"].items():
            for body in info["bodies"]:
                detail = " ".join(
                    f"{k}={str(body[k])[:18]}"
                    for k in ("scheme", "key_id", "epoch", "reason", "platform")
                    if body.get(k) is not None
                )
                self.audit_rows.append((node, str(body["seq"]), str(body.get("time", ""))[11:23], str(body.get("event")), detail))
        counts = ", ".join(f"{n} {i['entries']}" for n, i in report["nodes"].items()) or "none yet"
        if not entries:
            return "", "no entries mirrored yet"
        return "", f"{len(entries)} entries ({counts}); every hash, Ed25519 signature (OpenSSL) and chain link valid"

    def down(self) -> str:
        if self.client is not None:
            self.client.close()
        if not (self.dir / dev.CLUSTER_FILE).exists():
            return "nothing to stop"
        return f"stopped PIDs {dev.down(self.dir)}"


@contextmanager
def pinned_code_image(directory: Path) -> Iterator[Path]:
    """Run the cluster's processes from a copy of the package taken now.

    A node's measurement (PCR0 of the simulated platform) is the hash of the package's code,
    and its peers admit only their own measurement. Like an enclave image, the copy keeps it
    fixed while the demo runs, so a node restarted after the checkout was edited is still the
    same image (a node running other code would be refused, and rightly so). The processes
    are started with the copy first on ``PYTHONPATH``, from ``directory`` as working directory.
    """
    image = directory / "image"
    shutil.copytree(Path(shardguard.__file__).resolve().parent, image / "shardguard")
    old_cwd, old_path = os.getcwd(), os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(image), *([old_path] if old_path else [])])
    os.chdir(directory)
    try:
        yield image
    finally:
        os.chdir(old_cwd)
        if old_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old_path


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def raise_interrupt(_sig: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: list[str] | None = None) -> int:
    del argv
    console = Console()
    console.print(Panel(WARNING, title="[bold red]WARNING[/bold red]", border_style="red"))
    console.print("[bold]ShardGuard demo[/bold]: a coordinator and 3 signer nodes, each its own process, on loopback.")
    rows: list[tuple[str, str, str, str]] = []
    status = 0
    t_start = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="shardguard-demo-") as tmp,
        _sigterm_as_interrupt(),
        pinned_code_image(Path(tmp)),
    ):
        story = Story(Path(tmp) / "cluster")
        console.print(f"[dim]cluster directory: {story.dir}[/dim]")
        steps = story.steps()
        progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), console=console, transient=True,
        )  # fmt: skip
        try:
            with progress:
                bar = progress.add_task("starting", total=len(steps) + 1)
                for name, step in steps:
                    progress.update(bar, description=name)
                    t0 = time.perf_counter()
                    try:
                        scheme, result = step()
                    except (Exception, KeyboardInterrupt) as e:
                        ms = (time.perf_counter() - t0) * 1000
                        interrupted = isinstance(e, KeyboardInterrupt)
                        rows.append((name, "", "INTERRUPTED" if interrupted else f"FAILED: {type(e).__name__}: {e}", f"{ms:.0f}"))
                        progress.console.print(f"[red]✗ {name}: {rows[-1][2]}[/red]")
                        status = 130 if interrupted else 1
                        break
                    ms = (time.perf_counter() - t0) * 1000
                    rows.append((name, scheme, result, f"{ms:.0f}"))
                    progress.console.print(f"[green]✓[/green] {name} {scheme} [dim]({ms:.0f} ms)[/dim]")
                    progress.advance(bar)
                progress.update(bar, description="tear down")
                t0 = time.perf_counter()
                rows.append(("tear down", "", story.down(), f"{(time.perf_counter() - t0) * 1000:.0f}"))
                progress.advance(bar)
        except (Exception, KeyboardInterrupt) as e:  # tear down whatever happened
            status = status or (130 if isinstance(e, KeyboardInterrupt) else 1)
            try:
                rows.append(("tear down", "", story.down(), ""))
            except Exception as down_error:  # report it, never mask the first error
                rows.append(("tear down", "", f"FAILED: {down_error}", ""))
    elapsed = time.perf_counter() - t_start

    if story.audit_rows:
        audit = Table(title="Audit entries mirrored by the coordinator (each signed by its node's identity key)")
        for col in ("node", "seq", "time (UTC)", "event", "details"):
            audit.add_column(col)
        for r in story.audit_rows:
            audit.add_row(*r)
        console.print(audit)
    table = Table(title="ShardGuard demo: DKG → sign → verify → refresh → sign → kill a node → sign → audit")
    for col in ("step", "scheme", "result"):
        table.add_column(col)
    table.add_column("ms", justify="right")
    for step_name, scheme, result, took in rows:
        style = "red" if result.startswith(("FAILED", "INTERRUPTED")) else None
        table.add_row(step_name, scheme, result, took, style=style)
    console.print(table)
    if status == 0:
        console.print(
            f"[green]All {len(steps) + 1} steps passed in {elapsed:.1f} s; "
            "every signature verified by libraries that are not ShardGuard's.[/green]"
        )
    else:
        console.print(f"[red]The demo {'was interrupted' if status == 130 else 'FAILED'} after {elapsed:.1f} s.[/red]")
    return status


if __name__ == "__main__":
    sys.exit(main())
