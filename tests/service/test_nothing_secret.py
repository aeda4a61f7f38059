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
from shardguard.channel.channel import Channel
from shardguard.client import Client
from shardguard.coordinator.app import create_app
from shardguard.coordinator.settings import Settings
from shardguard.enclave.simulated import SimulatedPlatform
from shardguard.interop import verify_independently
from shardguard.node import tasks as node_tasks
from shardguard.node.service import NodeService
from shardguard.protocols.frost import _party as frost_party

BOOT = "nothing-secret-bootstrap"
NODES = ("node-1", "node-2", "node-3")
Stack = tuple[Client, "Recorder", Path, io.StringIO, list[NodeService]]


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[str, bytes]] = []

    def add(self, what: str, data: bytes) -> None:
        if len(data) >= 16:  # shorter values could match public bytes by chance
            with self.lock:
                self.items.append((what, bytes(data)))


def _until(check: Callable[[], bool], seconds: float) -> None:
    end = time.monotonic() + seconds
    while not check():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.02)


def _record_secrets(rec: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    seal = Channel.seal

    def recording_seal(self: Channel, plaintext: bytes, *, seq: int) -> bytes:
        rec.add("sealed plaintext", plaintext)
        return seal(self, plaintext, seq=seq)

    monkeypatch.setattr(Channel, "seal", recording_seal)
    default_rng = node_tasks.run_task.__kwdefaults__["rng"]

    def recording_rng(n: int) -> bytes:
        out: bytes = default_rng(n)
        rec.add("protocol randomness", out)
        return out

    monkeypatch.setitem(node_tasks.run_task.__kwdefaults__, "rng", recording_rng)
    sign_share = frost_party.sign_share

    def recording_sign_share(suite: Any, **kw: Any) -> int:
        for name in ("hiding", "binding"):
            v = kw[name] % suite.group.order
            rec.add(f"FROST {name} nonce", v.to_bytes(32, "big"))
            rec.add(f"FROST {name} nonce", v.to_bytes(32, "little"))
        out: int = sign_share(suite, **kw)
        return out

    monkeypatch.setattr(frost_party, "sign_share", recording_sign_share)


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    rec = Recorder()
    _record_secrets(rec, monkeypatch)
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    coord_log = logging.getLogger("shardguard.coordinator")
    coord_log.addHandler(handler)
    monkeypatch.setattr(coord_log, "level", logging.DEBUG)

    db = tmp_path / "coordinator.sqlite3"
    settings = Settings(db_url=f"sqlite:///{db}", bootstrap_token=BOOT, poll_interval=0.2)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning", lifespan="on", ws="websockets-sansio"))
    server_thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    server_thread.start()
    _until(lambda: server.started, 15)

    services: list[NodeService] = []
    for nid in NODES:
        plat = SimulatedPlatform(state_dir=tmp_path / nid / "platform")
        policy = VerificationPolicy(allow_simulated=True, measurements={"simulated": {"pcr0": (plat.measurement,)}})
        services.append(NodeService(coordinator=url, state=tmp_path / nid, node_id=nid, platform=plat, policy=policy))
    threads = [threading.Thread(target=s.run_forever, daemon=True) for s in services]
    for t in threads:
        t.start()
    client = Client(url, BOOT, timeout=60)
    try:
        _until(lambda: len(client.nodes()) == len(NODES), 30)
        yield client, rec, db, log, services
    finally:
        client.close()
        for s in services:
            with contextlib.suppress(Exception):
                s.stop()
        for t in threads:
            t.join(10)
        server.should_exit = True
        server_thread.join(10)
        coord_log.removeHandler(handler)


def _forms(data: bytes) -> list[bytes]:
    out = []
    for piece in {data, data[:32]}:
        out += [piece, piece.hex().encode(), base64.b64encode(piece), base64.urlsafe_b64encode(piece)]
    return out


def test_no_share_nonce_or_plaintext_reaches_the_coordinator(stack: Stack) -> None:
    client, rec, db, log, services = stack
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
    for s in services:
        for key_id in s.keystore.keys():  # noqa: SIM118 - a keystore, not a dict
            share = s.keystore.share(key_id)
            base = getattr(share, "share", share)
            rec.add(f"{s.node_id}'s share of {key_id}", base.suite.group.scalar_encode(base.signing_share))
    kinds = {what for what, _ in rec.items}
    assert {"sealed plaintext", "protocol randomness", "FROST hiding nonce", "FROST binding nonce"} <= kinds, kinds
    assert sum("share of" in what for what, _ in rec.items) == 3 * 2
    assert len(rec.items) > 1000, len(rec.items)
    haystack = db.read_bytes() + log.getvalue().encode()
    for extra in db.parent.glob("coordinator.sqlite3-*"):
        haystack += extra.read_bytes()
    assert len(haystack) > 100_000  # the database holds the relayed ciphertexts
    assert any(form in haystack for form in _forms(pk)), "the scan must see what the coordinator does hold"
    leaked = [what for what, data in rec.items for form in _forms(data) if form in haystack]
    assert leaked == [], f"visible to the coordinator: {sorted(set(leaked))}"
