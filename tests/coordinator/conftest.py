"""Fixtures of the coordinator suite: databases (SQLite file, throwaway PostgreSQL cluster), apps
and clients, and a fake node that signs its requests like a real one."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import coincurve
import httpx
import psycopg
import pytest

warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")

from fastapi.testclient import TestClient  # noqa: E402

from shardguard import local  # noqa: E402
from shardguard.channel.identity import NodeKeys  # noqa: E402
from shardguard.coordinator import wire  # noqa: E402
from shardguard.coordinator.app import create_app  # noqa: E402
from shardguard.coordinator.db import Database, migrate  # noqa: E402
from shardguard.coordinator.models import Base  # noqa: E402
from shardguard.coordinator.service import Coordinator  # noqa: E402
from shardguard.coordinator.settings import Settings  # noqa: E402
from shardguard.crypto.bip32 import derive_public, parse_path  # noqa: E402
from shardguard.crypto.secp256k1 import SECP256K1  # noqa: E402

from .pg import PgCluster, PostgresUnavailable  # noqa: E402

BOOT = "test-bootstrap-token"
ADMIN = {"Authorization": f"Bearer {BOOT}"}


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    problem = ""
    try:
        cluster = PgCluster().start()
    except PostgresUnavailable as e:
        problem = str(e)
    if problem:  # a failure, not a skip: CI must never pass without the PostgreSQL tests
        pytest.fail(problem, pytrace=False)
    try:
        # One migrated database for the suite, emptied before each test (TRUNCATE is much
        # cheaper than a database per test).
        name = cluster.create_database()
        db = Database(Settings(db_url=cluster.url(name)).database_url())
        migrate(db)
        db.dispose()
        cluster.template = name
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    assert pg_cluster.template is not None
    url = pg_cluster.url(pg_cluster.template)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(Base.metadata.tables)} RESTART IDENTITY CASCADE")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'coordinator.sqlite3'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def make_client(db_url: str) -> Iterator[Callable[..., TestClient]]:
    """``make_client(**settings)`` → a TestClient (lifespan entered) on this test's database.
    The sweeper is off unless asked for: tests call ``coord(client).sweep()`` themselves. So is
    pre-signing (``presign_stock``): its jobs would come between the tasks the tests play by
    hand; test_presigned.py turns it on."""
    made: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        kw: dict[str, Any] = {
            "db_url": db_url, "bootstrap_token": BOOT, "sweep_interval": 0, "poll_interval": 0.05, "presign_stock": 0,
        }  # fmt: skip
        kw.update(overrides)
        client = TestClient(create_app(Settings(**kw)), raise_server_exceptions=False)
        client.__enter__()
        made.append(client)
        return client

    yield make
    for c in made:
        c.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def coord(client: TestClient) -> Coordinator:
    c = client.app.state.coordinator  # type: ignore[attr-defined]
    assert isinstance(c, Coordinator)
    return c


def token(client: httpx.Client, *scopes: str) -> dict[str, str]:
    r = client.post("/v1/tokens", json={"scopes": list(scopes)}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


class FakeNode:
    """A node as the coordinator sees it: keys, signed requests, no protocol."""

    def __init__(self, client: httpx.Client, node_id: str) -> None:
        self.client = client
        self.node_id = node_id
        self.keys = NodeKeys.generate(node_id)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, Any] | None = None,
        timestamp: int | None = None,
        nonce: bytes | None = None,
        sign_as: NodeKeys | None = None,
        tamper: Callable[[dict[str, str]], None] | None = None,
        client: httpx.Client | None = None,
    ) -> httpx.Response:
        target = path + ("?" + urllib.parse.urlencode(params) if params else "")
        raw = json.dumps(body).encode() if body is not None else b""
        headers = wire.sign_request(sign_as or self.keys, method, target, raw, timestamp=timestamp, nonce=nonce)
        if body is not None:
            headers["Content-Type"] = "application/json"
        if tamper is not None:
            tamper(headers)
        return (client or self.client).request(method, target, content=raw, headers=headers)

    def register(
        self,
        *,
        platform: str = "nitro",
        evidence: bytes = b"not evidence",
        client: httpx.Client | None = None,
        enroll: str | None = BOOT,
        **extra: Any,
    ) -> httpx.Response:
        """Register with ``enroll`` as the enrollment token (scope nodes:register; None: none)."""
        body = {
            "peer_card": base64.b64encode(self.keys.card().encode()).decode(),
            "platform": platform,
            "evidence": base64.b64encode(evidence).decode(),
            **extra,
        }

        def bearer(headers: dict[str, str]) -> None:
            if enroll is not None:
                headers["Authorization"] = f"Bearer {enroll}"

        return self.request("POST", "/v1/nodes/register", body, client=client, tamper=bearer)

    def restart(self) -> None:
        self.keys = NodeKeys.generate(self.node_id)

    def next_task(self, wait: float = 0, client: httpx.Client | None = None) -> dict[str, Any] | None:
        r = self.request("GET", f"/v1/nodes/{self.node_id}/tasks", params={"wait": wait}, client=client)
        assert r.status_code == 200, r.text
        task = r.json()["task"]
        return task if task is None else dict(task)

    def send(self, job_id: str, messages: list[tuple[str, int, bytes]], client: httpx.Client | None = None) -> httpx.Response:
        body = {"messages": [{"to": to, "seq": seq, "blob": base64.b64encode(b).decode()} for to, seq, b in messages]}
        return self.request("POST", f"/v1/jobs/{job_id}/messages", body, client=client)

    def inbox(self, job_id: str, after: int = 0, wait: float = 0, client: httpx.Client | None = None) -> httpx.Response:
        return self.request(
            "GET", f"/v1/nodes/{self.node_id}/inbox", params={"job": job_id, "after": after, "wait": wait}, client=client
        )

    def report(
        self,
        task_id: str,
        status: str = "done",
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        client: httpx.Client | None = None,
    ) -> httpx.Response:
        body: dict[str, Any] = {"status": status}
        if result is not None:
            body["result"] = result
        if error is not None:
            body["error"] = error
        return self.request("POST", f"/v1/tasks/{task_id}/result", body, client=client)


@pytest.fixture
def nodes(client: TestClient) -> list[FakeNode]:
    out = [FakeNode(client, f"node-{c}") for c in "abc"]
    for n in out:
        r = n.register()
        assert r.status_code == 200, r.text
    return out


PUBLIC_KEY = "02" + "11" * 32  # a key that verifies nothing: for tests that never sign with it

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def derived_tweak(parent: bytes, chain_code: bytes, path: str) -> int:
    """BIP32 CKDpub's tweak of ``path`` (0 for ``m``)."""
    if path == "m":
        return 0
    return derive_public(SECP256K1.decode(parent), chain_code, parse_path(path)).tweak


# One real key per scheme, so the coordinator's check of every reported signature passes
# (coordinator/signatures.py): FROST suites by a dealer's shares, ECDSA by one secret.
_ECDSA_SECRET = int.from_bytes(hashlib.sha256(b"test ecdsa key").digest(), "big") % SECP256K1_N
_CHAIN_CODE = hashlib.sha256(b"test chain code").digest()


@functools.cache
def _frost_shares(scheme: str) -> tuple[Any, ...]:
    return tuple(local.split(scheme, 7, 2, 3))


def dkg_result(scheme: str) -> dict[str, Any]:
    """What every node reports at the end of a DKG of the scheme's test key."""
    if scheme == "ecdsa":
        pk = coincurve.PrivateKey(_ECDSA_SECRET.to_bytes(32, "big")).public_key.format().hex()
        return {"public_key": pk, "chain_code": _CHAIN_CODE.hex()}
    public = _frost_shares(scheme)[0].public
    return frost_public_result(public)


def frost_public_result(public: Any) -> dict[str, Any]:
    """What a node reports at the end of a FROST DKG or refresh (node/tasks.py ``_public``)."""
    return {
        "public_key": public.public_key_bytes.hex(),
        "epoch": public.epoch,
        "public": public.to_dict(),
        "key_id": public.key_id.hex(),
    }


def sign_result(task: dict[str, Any]) -> dict[str, Any]:
    """A valid result for a sign task on the scheme's test key (what honest signers report)."""
    scheme, params = str(task["scheme"]), task["params"]
    if scheme == "ecdsa":
        digest, path = bytes.fromhex(params["digest_hex"]), params.get("path") or "m"
        parent = coincurve.PublicKey(bytes.fromhex(dkg_result("ecdsa")["public_key"]))
        tweak = derived_tweak(parent.format(), _CHAIN_CODE, path)
        child = coincurve.PrivateKey(((_ECDSA_SECRET + tweak) % SECP256K1_N).to_bytes(32, "big"))
        rec = child.sign_recoverable(digest, hasher=None)
        return {"scheme": "ecdsa", "public_key": child.public_key.format().hex(), "path": path, "digest": digest.hex(),
                "signature": rec[:64].hex(), "recovery_id": rec[64]}  # fmt: skip
    shares = _frost_shares(scheme)
    pk = shares[0].public.public_key_bytes.hex()
    if task.get("kind") == "bundle":  # one signature per request, in the bundle's order
        sigs = [local.sign(shares[:2], bytes.fromhex(item["message_hex"])).hex() for item in params["bundle"]]
        return {"scheme": scheme, "public_key": pk, "signatures": sigs}
    sig = local.sign(shares[:2], bytes.fromhex(params["message_hex"]))
    return {"scheme": scheme, "public_key": pk, "signature": sig.hex()}


def run_dkg(client: httpx.Client, nodes: list[FakeNode], scheme: str = "ed25519", t: int = 2, pk: str | None = None) -> str:
    """Create a key and play every node's DKG task to completion; returns the key id. The key is
    the scheme's test key (``sign_result`` signs for it) unless ``pk`` names another."""
    r = client.post("/v1/keys", json={"scheme": scheme, "threshold": t, "nodes": [n.node_id for n in nodes]}, headers=ADMIN)
    assert r.status_code == 202, r.text
    key_id = r.json()["key_id"]
    result = dkg_result(scheme) if pk is None else {"public_key": pk}
    for n in nodes:
        task = n.next_task()
        assert task is not None and task["kind"] == "dkg"
        assert n.report(task["task_id"], result=result).status_code == 200
    assert client.get(f"/v1/keys/{key_id}", headers=ADMIN).json()["status"] == "active"
    return str(key_id)
