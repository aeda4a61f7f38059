"""Two coordinator replicas (two server processes) on one PostgreSQL database serve a burst of
requests: every task is handed out exactly once, every job runs exactly once, and every request
runs in exactly one job (its own or a bundle's)."""

from __future__ import annotations

import collections
import concurrent.futures
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from shardguard.node.link import CoordinatorLink, EventStream

from ..node.test_link import until
from .conftest import ADMIN, BOOT, FakeNode, dkg_result, run_dkg, sign_result
from .pg import PgCluster
from .procs import servers

N_SIGN = 30
WORKERS_PER_NODE = 3


def test_two_replicas_never_hand_out_a_task_twice(pg_cluster: PgCluster, tmp_path: Path) -> None:
    # An empty database: both replicas migrate it at once (the advisory lock keeps them in turn).
    url = pg_cluster.url(pg_cluster.create_database())
    args = [["--port", "0", "--db", url, "--replica-id", f"r{i}", "--log-level", "warning"] for i in (1, 2)]
    with servers(*args, tmp=tmp_path) as procs:
        clients = [httpx.Client(base_url=p.url, timeout=30) for p in procs]
        try:
            key_id = _burst(clients)
            _cross_replica_wakeup(clients, key_id)
        finally:
            for c in clients:
                c.close()
    for p in procs:
        assert "Traceback" not in p.log.read_text(), p.log.read_text()[-3000:]
    with psycopg.connect(url) as conn:
        per_job = conn.execute("SELECT job_id, count(*) FROM tasks GROUP BY job_id").fetchall()
        owners = dict(
            conn.execute("SELECT lease_owner, count(*) FROM tasks WHERE claimed_at IS NOT NULL GROUP BY lease_owner").fetchall()
        )
        bundles = conn.execute("SELECT count(*) FROM jobs WHERE kind = 'bundle'").fetchone()
        bundled = conn.execute("SELECT count(*) FROM jobs WHERE bundle_id IS NOT NULL").fetchone()
    # dkg + the jobs the burst ran (requests alone, and bundles) + the wake-up probe (of which
    # only node-a's task was handed out)
    assert bundles is not None and bundled is not None
    ran = N_SIGN - bundled[0] + bundles[0]
    assert bundles[0] > 0, "a burst of 30 on one key runs partly in bundles"
    assert len(per_job) == ran + 2 and all(n in (2, 3) for _job, n in per_job)
    assert set(owners) <= {"r1", "r2"} and sum(owners.values()) == 2 * ran + 3 + 1


def _burst(clients: list[httpx.Client]) -> str:
    nodes = [FakeNode(clients[0], f"node-{c}") for c in "abc"]
    for n in nodes:
        assert n.register(client=clients[1] if n.node_id == "node-b" else None).status_code == 200

    claimed: list[tuple[str, str, str]] = []  # (task id, job id, node id)
    lock = threading.Lock()
    signed: dict[str, dict[str, Any]] = {}  # job id -> the result its signers report
    stop = threading.Event()
    errors: list[str] = []

    def worker(node: FakeNode, seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            poll, report = rng.sample(clients, 2)
            try:
                task = node.next_task(wait=0.5, client=poll)
                if task is None:
                    continue
                with lock:
                    claimed.append((task["task_id"], task["job_id"], node.node_id))
                if task["kind"] == "dkg":
                    result = dkg_result("ed25519")
                else:
                    with lock:  # the signers of one job report the same signature
                        result = signed.setdefault(task["job_id"], sign_result(task))
                r = node.report(task["task_id"], result=result, client=report)
                if r.status_code != 200:
                    errors.append(r.text)
            except Exception as e:  # surfaced by the assertions below
                errors.append(repr(e))

    with concurrent.futures.ThreadPoolExecutor(len(nodes) * WORKERS_PER_NODE + 4) as pool:
        for i, n in enumerate(nodes):
            for w in range(WORKERS_PER_NODE):
                pool.submit(worker, n, 10 * i + w)
        try:
            r = clients[1].post(
                "/v1/keys", json={"scheme": "ed25519", "threshold": 2, "nodes": ["node-a", "node-b", "node-c"]}, headers=ADMIN
            )
            key_id = r.json()["key_id"]
            _wait(clients[0], r.json()["request_id"])

            def submit(i: int) -> str:
                body: dict[str, Any] = {
                    "message_hex": f"{i:08x}",
                    "signers": random.Random(i).sample(["node-a", "node-b", "node-c"], 2),
                }
                resp = clients[i % 2].post(f"/v1/keys/{key_id}/sign", json=body, headers=ADMIN)
                assert resp.status_code == 202, resp.text
                return str(resp.json()["request_id"])

            rids = list(pool.map(submit, range(N_SIGN)))
            finals = [_wait(clients[i % 2], rid) for i, rid in enumerate(rids)]
        finally:
            stop.set()
    assert not errors, errors[:5]
    assert all(f["status"] == "done" and f["attempts"] == 1 for f in finals), [f for f in finals if f["status"] != "done"][:3]
    task_ids = [t for t, _j, _n in claimed]
    jobs_run = {f["bundle"] or f["request_id"] for f in finals}
    assert len(task_ids) == len(set(task_ids)) == 2 * len(jobs_run) + 3, "a task was handed out twice"
    runs = collections.Counter((j, n) for _t, j, n in claimed)
    assert max(runs.values()) == 1, "a node ran one job twice"
    for f in finals:
        ran = sorted(n for (j, n) in runs if j == (f["bundle"] or f["request_id"]))
        assert ran == f["params"]["signers"], (f["request_id"], ran)
    # Each request in exactly one bundle (or none), and signed with its own message there.
    by_id = {f["request_id"]: f for f in finals}
    for bundle_id in {f["bundle"] for f in finals} - {None}:
        items = clients[0].get(f"/v1/requests/{bundle_id}", headers=ADMIN).json()["params"]["bundle"]
        assert {i["request_id"] for i in items} == {f["request_id"] for f in finals if f["bundle"] == bundle_id}
        assert len(items) == len({i["request_id"] for i in items}) > 1
        for i in items:
            assert i["message_hex"] == by_id[i["request_id"]]["params"]["message_hex"]
    metrics = [c.get("/metrics").text for c in clients]
    handed = [float(_metric(m, "shardguard_tasks_claimed_total")) for m in metrics]
    assert sum(handed) == 2 * len(jobs_run) + 3
    return str(key_id)


def _cross_replica_wakeup(clients: list[httpx.Client], key_id: str) -> None:
    """A node long-polling replica 2 hears of a job submitted to replica 1 at once
    (LISTEN/NOTIFY), well before the 2 s safety-net re-read."""
    a = FakeNode(clients[1], "node-a")
    a.restart()
    assert a.register().status_code == 200
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(a.next_task, 10)
        time.sleep(0.5)
        t0 = time.monotonic()
        r = clients[0].post(f"/v1/keys/{key_id}/sign", json={"message_hex": "ff", "signers": ["node-a", "node-b"]}, headers=ADMIN)
        assert r.status_code == 202
        task = fut.result(timeout=15)
        elapsed = time.monotonic() - t0
    assert task is not None and task["job_id"] == r.json()["request_id"]
    assert elapsed < 1.0, elapsed


def _wait(client: httpx.Client, rid: str, timeout: float = 40) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        req = client.get(f"/v1/requests/{rid}", params={"wait": 5}, headers=ADMIN).json()
        if req["status"] in ("done", "failed") or time.monotonic() > deadline:
            return dict(req)


def _metric(text: str, name: str) -> str:
    return next(line.split()[1] for line in text.splitlines() if line.startswith(name + " "))


def test_node_streams_on_two_replicas_hear_each_other_at_once(pg_cluster: PgCluster, tmp_path: Path) -> None:
    """Node a's WebSocket stream is on replica 1, node b's on replica 2: a job submitted to
    replica 1 reaches b, and a's message reaches b, at once (LISTEN/NOTIFY wakes b's stream on
    the other replica), well before the 2 s safety-net re-read."""
    url = pg_cluster.url(pg_cluster.create_database())
    args = [["--port", "0", "--db", url, "--replica-id", f"r{i}", "--log-level", "warning"] for i in (1, 2)]
    with servers(*args, tmp=tmp_path) as procs:
        clients = [httpx.Client(base_url=p.url, timeout=30) for p in procs]
        streams: list[EventStream] = []
        links: list[CoordinatorLink] = []
        try:
            nodes = [FakeNode(clients[0], f"node-{c}") for c in "ab"]
            for n in nodes:
                assert n.register().status_code == 200
            key_id = run_dkg(clients[0], nodes)
            got: dict[str, list[Any]] = {"node-a": [], "node-b": []}
            for n, p in zip(nodes, procs, strict=True):
                links.append(CoordinatorLink(p.url, n.keys))
                streams.append(EventStream(links[-1], n.node_id, on_task=got[n.node_id].append, free_slots=lambda: 4))
                streams[-1].start()
            sa, sb = streams
            time.sleep(0.5)  # both streams open and waiting
            t0 = time.monotonic()
            body = {"message_hex": "01", "signers": ["node-a", "node-b"]}
            r = clients[0].post(f"/v1/keys/{key_id}/sign", json=body, headers=ADMIN)
            job = r.json()["request_id"]
            until(lambda: len(got["node-b"]) == 1, 10)
            assert time.monotonic() - t0 < 1.0
            until(lambda: len(got["node-a"]) == 1, 10)
            sa.open(job), sb.open(job)
            t0 = time.monotonic()
            sa.post(job, [("node-b", b"across replicas")])
            msgs = sb.fetch(job, 0, 10)
            assert [m[1:] for m in msgs] == [("node-a", b"across replicas")]
            assert time.monotonic() - t0 < 1.0
        finally:
            for s in streams:
                s.stop()
            for link in links:
                link.close()
            for c in clients:
                c.close()
    for p in procs:
        assert "Traceback" not in p.log.read_text(), p.log.read_text()[-3000:]


def test_real_nodes_switching_replicas_at_every_cut_still_sign(pg_cluster: PgCluster, tmp_path: Path) -> None:
    """Three real node processes behind a proxy that sends each new connection to the other of
    two replicas and cuts every connection every 50-300 ms while signatures run: a node's tasks
    claimed by one replica reach it through the other (API.md §1.11), its messages cross
    between replicas through PostgreSQL, and every request ends done well before its deadline,
    every signature verified independently."""
    from shardguard.client import Client

    from ..service.test_stream_chaos import CuttingProxy, nodes_behind, sign_through_cuts

    url = pg_cluster.url(pg_cluster.create_database())
    args = [["--port", "0", "--db", url, "--replica-id", f"r{i}", "--log-level", "warning", "--job-timeout", "30"]
            for i in (1, 2)]  # fmt: skip
    with servers(*args, tmp=tmp_path) as procs:
        ups = [(u.rsplit("//", 1)[1].rsplit(":", 1)[0], int(u.rsplit(":", 1)[1])) for u in (p.url for p in procs)]
        proxy = CuttingProxy(*ups)
        client = Client(procs[0].url, BOOT, timeout=60)
        try:
            with nodes_behind(proxy, tmp_path, client):
                sign_through_cuts(client, proxy, "ed25519", 20)
        finally:
            client.close()
            proxy.close()
    for p in procs:
        assert "Traceback" not in p.log.read_text(), p.log.read_text()[-3000:]
