"""Nothing secret reaches the coordinator (issue 6): the real coordinator app under uvicorn and
three real node services, in this process so that every secret they make can be recorded —
every plaintext they seal (protocol messages, witness notes), every random value their
protocols draw (DKLs23 and FROST nonces and masks come from it), the FROST nonce scalars
themselves, and in the end every share. After DKG and signing for ECDSA and Ed25519 keys and
a refresh, none of them appears in the coordinator's database or its log, raw, as hex
or as base64. (tests/service/test_cluster.py checks the shares again with separate processes.)"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from shardguard.attestation.policy import VerificationPolicy
from shardguard.channel import channel as channel_module
from shardguard.channel.channel import Channel
from shardguard.channel.identity import NodeKeys
from shardguard.client import Client
from shardguard.coordinator.app import create_app
from shardguard.coordinator.settings import Settings
from shardguard.crypto.group import Group
from shardguard.enclave.simulated import SimulatedPlatform
from shardguard.interop import verify_independently
from shardguard.node import tasks as node_tasks
from shardguard.node.service import KeystoreShares, NodeService
from shardguard.protocols.dkls23 import _rounds as dkls_rounds
from shardguard.protocols.frost import _party as frost_party
from shardguard.protocols.frost import _precommit as frost_precommit

BOOT = "nothing-secret-bootstrap"
NODES = ("node-1", "node-2", "node-3")
Stack = tuple[Client, "Recorder", Path, io.StringIO, list[NodeService], "Tap"]


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[str, bytes]] = []

    def add(self, what: str, data: bytes) -> None:
        if len(data) >= 16 and len(set(data)) >= 8:  # shorter or plainer values could match public bytes
            with self.lock:
                self.items.append((what, bytes(data)))


def _until(check: Callable[[], bool], seconds: float) -> None:
    end = time.monotonic() + seconds
    while not check():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.02)


def _scalar(rec: Recorder, what: str, group: Group, k: int) -> None:
    rec.add(what, group.scalar_encode(k % group.order))
    rec.add(what, (k % group.order).to_bytes(32, "big"))
    rec.add(what, (k % group.order).to_bytes(32, "little"))


def _record_secrets(rec: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    seal = Channel.seal

    def recording_seal(self: Channel, plaintext: bytes, *, seq: int) -> bytes:
        rec.add("sealed plaintext", plaintext)
        return seal(self, plaintext, seq=seq)

    monkeypatch.setattr(Channel, "seal", recording_seal)

    class ChannelSecrets:  # the channel module's randomness: link keys
        @staticmethod
        def token_bytes(n: int) -> bytes:
            out = os.urandom(n)
            rec.add("link key", out)
            return out

    monkeypatch.setattr(channel_module, "secrets", ChannelSecrets)
    default_rng = node_tasks.run_task.__kwdefaults__["rng"]

    def recording_rng(n: int) -> bytes:
        out: bytes = default_rng(n)
        rec.add("protocol randomness", out)
        return out

    monkeypatch.setitem(node_tasks.run_task.__kwdefaults__, "rng", recording_rng)
    random_scalar = Group.random_scalar

    def recording_random_scalar(self: Group, rng: Any) -> int:
        k: int = random_scalar(self, rng)
        _scalar(rec, "random scalar", self, k)
        return k

    monkeypatch.setattr(Group, "random_scalar", recording_random_scalar)
    stream = dkls_rounds._HedgedStream.__call__

    def recording_stream(self: Any, n: int) -> bytes:
        out: bytes = stream(self, n)
        rec.add("DKLs23 session randomness", out)
        return out

    monkeypatch.setattr(dkls_rounds._HedgedStream, "__call__", recording_stream)
    sign_share = frost_party.sign_share

    def recording_sign_share(suite: Any, **kw: Any) -> int:
        for name in ("hiding", "binding"):
            _scalar(rec, f"FROST {name} nonce", suite.group, kw[name])
        out: int = sign_share(suite, **kw)
        return out

    monkeypatch.setattr(frost_party, "sign_share", recording_sign_share)
    monkeypatch.setattr(frost_precommit, "sign_share", recording_sign_share)
    commit = frost_precommit.NoncePool.commit

    def recording_commit(self: Any, count: int, *, now: float, hedge: bytes = b"") -> Any:
        made = commit(self, count, now=now, hedge=hedge)
        _scalar(rec, "nonce pool secret", self.suite.group, self._secret)
        for c in made:  # the nonces behind each published commitment (signed over or not)
            d, e, *_ = self._entries[c.id]
            _scalar(rec, "FROST precommitted nonce", self.suite.group, d)
            _scalar(rec, "FROST precommitted nonce", self.suite.group, e)
        return made

    monkeypatch.setattr(frost_precommit.NoncePool, "commit", recording_commit)
    stage = KeystoreShares.stage

    def recording_stage(self: KeystoreShares, key_id: str, share: Any) -> None:
        base = getattr(share, "share", share)
        _scalar(rec, f"share of {key_id}", base.suite.group, base.signing_share)
        stage(self, key_id, share)

    monkeypatch.setattr(KeystoreShares, "stage", recording_stage)


def _record_keys(rec: Recorder, keys: NodeKeys) -> None:
    rec.add("identity private key", bytes(keys._identity))
    rec.add("channel private key", keys._hpke_sk.private_bytes_raw())  # type: ignore[union-attr]


class Tap:
    """ASGI middleware: keeps every request body and WebSocket frame the coordinator receives."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.received: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def tapped() -> Any:
            message = await receive()
            for field in ("body", "bytes", "text"):
                value = message.get(field)
                if value:
                    self.received.append(value.encode() if isinstance(value, str) else bytes(value))
            return message

        await self.app(scope, tapped, send)


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    rec = Recorder()
    _record_secrets(rec, monkeypatch)
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)  # every logger of this process: coordinator, uvicorn, nodes, httpx
    level = root.level
    root.setLevel(logging.INFO)
    ours = logging.getLogger("shardguard")
    ours_level = ours.level
    ours.setLevel(logging.DEBUG)

    db = tmp_path / "coordinator.sqlite3"
    settings = Settings(db_url=f"sqlite:///{db}", bootstrap_token=BOOT, poll_interval=0.2)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    tap = Tap(create_app(settings))
    server = uvicorn.Server(uvicorn.Config(tap, log_level="warning", lifespan="on", ws="websockets-sansio"))
    server_thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    server_thread.start()
    _until(lambda: server.started, 15)

    services: list[NodeService] = []
    for nid in NODES:
        plat = SimulatedPlatform(state_dir=tmp_path / nid / "platform")
        policy = VerificationPolicy(allow_simulated=True, measurements={"simulated": {"pcr0": (plat.measurement,)}})
        services.append(NodeService(coordinator=url, state=tmp_path / nid, node_id=nid, platform=plat, policy=policy,
                                    enroll_token=BOOT))
        _record_keys(rec, services[-1].keys)
    threads = [threading.Thread(target=s.run_forever, daemon=True) for s in services]
    for t in threads:
        t.start()
    client = Client(url, BOOT, timeout=60)
    try:
        _until(lambda: len(client.nodes()) == len(NODES), 30)
        yield client, rec, db, log, services, tap
    finally:
        client.close()
        for s in services:
            with contextlib.suppress(Exception):
                s.stop()
        for t in threads:
            t.join(10)
        server.should_exit = True
        server_thread.join(10)
        root.removeHandler(handler)
        root.setLevel(level)
        ours.setLevel(ours_level)


def _forms(data: bytes) -> list[bytes]:
    """Raw, hex and base64 of the value, and of 32-byte windows at its start, middle and end
    (a plaintext leaked in part); windows of few distinct bytes (zero padding) are public."""
    n = len(data)
    pieces = {data} | {w for w in (data[:32], data[n // 2 - 16 : n // 2 + 16], data[-32:]) if n > 32 and len(set(w)) >= 12}
    out = []
    for piece in pieces:
        out += [piece, piece.hex().encode(), base64.b64encode(piece), base64.urlsafe_b64encode(piece)]
    return out


def _scan(haystack: bytes, items: list[tuple[str, bytes]]) -> list[str]:
    """Every recorded value (in every form) found in ``haystack``: one pass over it with an
    index of 12-byte prefixes (a substring search per value and form would take minutes)."""
    k = 12
    index: dict[bytes, list[tuple[str, bytes]]] = {}
    for what, data in items:
        for form in _forms(data):
            index.setdefault(form[:k], []).append((what, form))
    hits = []
    for i in range(len(haystack) - k + 1):
        for what, form in index.get(haystack[i : i + k], ()):
            if haystack.startswith(form, i):
                hits.append(f"{what} as {form[:40]!r}: ...{haystack[max(0, i - 60) : i + 100]!r}...")
    return hits


def test_no_share_nonce_or_plaintext_reaches_the_coordinator(stack: Stack) -> None:
    client, rec, db, log, _services, tap = stack
    for scheme in ("ecdsa", "ed25519"):  # BIP340 runs FROST through the same relay path
        key = client.create_key(scheme, 2, list(NODES))
        # Two signings with a refresh between them for Ed25519 (ECDSA's refresh redoes every
        # OT setup: slow in one process, and the same relay path).
        rounds = [["node-1", "node-2"], ["node-2", "node-3"]] if scheme == "ed25519" else [["node-1", "node-3"]]
        for i, signers in enumerate(rounds):
            if i:
                client.refresh(key["key_id"])
            payload = os.urandom(32)
            kw: dict[str, Any] = {"digest": payload} if scheme == "ecdsa" else {"message": payload}
            out = client.sign(key["key_id"], signers=signers, **kw)
            sig, pk = bytes.fromhex(out["signature"]), bytes.fromhex(out["public_key"])
            assert verify_independently(scheme, pk, payload, sig), scheme
    # Ed25519 signings in one step (nonces committed ahead, shares summed by the coordinator):
    # the nodes publish commitments once peers confirmed their state (the signings above).
    one_step = 0
    for _ in range(40):
        payload = os.urandom(32)
        req = client.sign_request(key["key_id"], message=payload, signers=["node-1", "node-2"])
        assert verify_independently("ed25519", bytes.fromhex(req["result"]["public_key"]), payload,
                                    bytes.fromhex(req["result"]["signature"]))  # fmt: skip
        one_step += "commitments" in (req.get("params") or {})
        if one_step >= 3:
            break
        time.sleep(0.05)
    assert one_step >= 3, "no signing ran in one step"
    kinds = {what.split(" of ")[0] for what, _ in rec.items}
    assert kinds >= {
        "sealed plaintext", "link key", "protocol randomness", "random scalar", "DKLs23 session randomness",
        "FROST hiding nonce", "FROST binding nonce", "share", "identity private key", "channel private key",
        "FROST precommitted nonce", "nonce pool secret",
    }, kinds  # fmt: skip
    assert sum(what.startswith("share of") for what, _ in rec.items) >= 3 * 3 * 3  # 3 nodes, 3 stages, 3 encodings
    assert len(rec.items) > 1000, len(rec.items)
    stored = db.read_bytes()
    for extra in db.parent.glob("coordinator.sqlite3-*"):
        stored += extra.read_bytes()
    received = b"\n".join(tap.received)
    haystack = stored + received + log.getvalue().encode()
    assert len(stored) > 100_000 and len(received) > 100_000  # the relayed ciphertexts
    assert _scan(received, [("public key", pk)]), "the scan must see what the coordinator does receive"
    leaked = _scan(haystack, rec.items)
    assert leaked == [], "visible to the coordinator:\n" + "\n".join(leaked[:10])
