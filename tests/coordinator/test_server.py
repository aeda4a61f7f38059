"""The coordinator as a real uvicorn server process."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .conftest import ADMIN, FakeNode
from .procs import ServerProcess


def test_server_process_serves_and_stops_cleanly(tmp_path: Path) -> None:
    db = tmp_path / "coordinator.sqlite3"
    server = ServerProcess("--port", "0", "--db", str(db), "--replica-id", "solo", log=tmp_path / "server.log")
    url = server.wait_ready()
    try:
        assert url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=url, timeout=10) as http:
            health = http.get("/v1/health").json()
            assert health == {"status": "ok", "database": "ok", "replica_id": "solo", "version": health["version"]}
            assert http.get("/docs").status_code == 200
            assert "/v1/nodes/register" in http.get("/openapi.json").json()["paths"]
            nodes = [FakeNode(http, f"node-{c}") for c in "ab"]
            for n in nodes:
                assert n.register().status_code == 200
            # A long-poll whose client went away hands nothing out: the task waits for the next poll.
            with httpx.Client(base_url=url, timeout=0.5) as impatient, contextlib.suppress(httpx.ReadTimeout):
                nodes[0].next_task(wait=10, client=impatient)
                raise AssertionError("the long-poll should have outlived the client")
            r = http.post("/v1/keys", json={"scheme": "ed25519", "threshold": 2, "nodes": ["node-a", "node-b"]}, headers=ADMIN)
            assert r.status_code == 202
            time.sleep(0.3)
            for n in nodes:
                task = n.next_task(wait=5)
                assert task is not None and task["kind"] == "dkg"
                assert n.report(task["task_id"], result={"public_key": "aa" * 32}).status_code == 200
            req = http.get(f"/v1/requests/{r.json()['request_id']}", headers=ADMIN).json()
            assert req["status"] == "done"
            too_big = http.post("/v1/keys", content=b"x" * (5 * 1024 * 1024), headers=ADMIN)
            assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "payload_too_large"
            assert "shardguard_tasks_claimed_total 2.0" in http.get("/metrics").text
    finally:
        # uvicorn shuts down gracefully on SIGTERM, then ends by that same signal.
        assert server.stop() in (0, -15)
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log and "Application startup complete" in log and "Application shutdown complete" in log
    assert db.exists()


def test_server_reports_a_bad_database_and_exits_2(tmp_path: Path) -> None:
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "shardguard.coordinator.server",
            "run",
            "--port",
            "0",
            "--db",
            "postgresql://nobody@127.0.0.1:1/x",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("shardguard coordinator: error:") and "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 30
