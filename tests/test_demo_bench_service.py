"""``make bench-service`` (bench/bench_service.py): the parts that turn raw data into its report.

The bench itself needs a cluster and a minute; these check its parsers on fixed inputs.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_service.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_service", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_service"] = module
    spec.loader.exec_module(module)
    return module


METRICS = """\
# HELP shardguard_http_request_seconds HTTP request latency by route (long-polls included)
# TYPE shardguard_http_request_seconds histogram
shardguard_http_request_seconds_bucket{le="0.001",method="GET",route="/v1/nodes/{node_id}/inbox"} 3.0
shardguard_http_request_seconds_count{method="GET",route="/v1/nodes/{node_id}/inbox"} 45.0
shardguard_http_request_seconds_sum{method="GET",route="/v1/nodes/{node_id}/inbox"} 0.9
shardguard_http_request_seconds_count{method="POST",route="/v1/keys/{key_id}/sign"} 5.0
shardguard_http_request_seconds_sum{method="POST",route="/v1/keys/{key_id}/sign"} 0.05
shardguard_jobs_submitted_total{kind="sign"} 5.0
"""


def test_metrics_routes_with_braces_are_parsed(bench: ModuleType) -> None:
    m = bench.parse_metrics(METRICS)
    assert m == {
        ("count", "GET /v1/nodes/{node_id}/inbox"): 45.0,
        ("sum", "GET /v1/nodes/{node_id}/inbox"): 0.9,
        ("count", "POST /v1/keys/{key_id}/sign"): 5.0,
        ("sum", "POST /v1/keys/{key_id}/sign"): 0.05,
    }
    out = bench.server_breakdown({}, m, 5)
    assert out["http_requests_per_signature"] == 10.0
    assert out["routes"]["GET /v1/nodes/{node_id}/inbox"] == {"per_signature": 9.0, "mean_ms": 20.0, "ms_per_signature": 180.0}


def test_percentiles(bench: ModuleType) -> None:
    p = bench.percentiles([float(x) for x in range(1, 101)])
    assert (p["p50"], p["p90"], p["p99"], p["min"], p["max"], p["n"]) == (50.5, 90.0, 99.0, 1.0, 100.0, 100)
    assert bench.percentiles([])["p50"] is None


def test_hot_frames_from_py_spy_raw_output(bench: ModuleType, tmp_path: Path) -> None:
    raw = tmp_path / "spy.txt"
    raw.write_text(
        "thread (0x1);main (shardguard/node/service.py:10);request (shardguard/node/service.py:79);send (httpx/_client.py:5) 3\n"
        "thread (0x1);main (shardguard/node/service.py:10);seal (shardguard/channel/channel.py:40) 1\n"
    )
    hot = bench.hot_frames(raw)
    assert hot["samples"] == 4
    assert hot["inclusive"]["shardguard/node/service.py:10 main"] == 1.0
    assert hot["inclusive"]["shardguard/node/service.py:79 request"] == 0.75
    assert hot["leaf"] == {"send (_client.py)": 0.75, "seal (channel.py)": 0.25}


def test_bundles_are_counted_from_the_coordinator_database(bench: ModuleType, tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "c.sqlite3"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, bundle_id TEXT)")
    rows = [("r1", None), ("r2", "b1"), ("r3", "b1"), ("r4", "b1"), ("r5", "b2"), ("r6", "b2"), ("other", "b2")]
    con.executemany("INSERT INTO jobs VALUES (?, ?)", rows)
    con.commit()
    con.close()
    out = bench.bundles(db, ["r1", "r2", "r3", "r4", "r5", "r6"])
    assert out == {
        "requests_alone": 1, "requests_bundled": 5, "bundles": 2, "mean_requests_per_bundle": 2.5, "max_requests_per_bundle": 3
    }  # fmt: skip


def test_signer_choice(bench: ModuleType) -> None:
    # The default names no signers (the coordinator picks, as for a normal client); "rotate"
    # walks the three pairs of the 2-of-3 key.
    assert [bench.signers_for("coordinator", i) for i in range(3)] == [None, None, None]
    assert [bench.signers_for("rotate", i) for i in range(4)] == [
        ["node-1", "node-2"],
        ["node-1", "node-3"],
        ["node-2", "node-3"],
        ["node-1", "node-2"],
    ]


def test_the_paced_phase_sends_on_a_fixed_schedule_and_counts_from_it(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Open loop: request i is planned at start + i / rate, sent by client i mod N; a request
    planned while its client still waits counts its lateness (no coordinated omission)."""
    sent: list[tuple[int, float]] = []
    lock = threading.Lock()

    class FakeClient:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def __enter__(self) -> FakeClient:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def health(self) -> None:
            pass

        def sign_request(self, key_id: str, **kw: object) -> dict[str, object]:
            with lock:
                n = len(sent)
                sent.append((threading.get_ident(), time.perf_counter()))
            time.sleep(0.25 if n == 0 else 0.001)  # the first answer is slow: its client's next request is late
            return {"request_id": f"r{n}", "result": {"signature": "00"}, "created_at": None}

    monkeypatch.setattr(bench, "Client", FakeClient)
    key = {"key_id": "k", "scheme": "ed25519", "public_key": "00"}
    out, wall = bench.run_paced("http://x", "t", key, clients=4, rate=40.0, seconds=1.0)
    assert len(out.latency_ms) == len(sent) == 40 and not out.errors
    assert len({t for t, _ in sent}) == 4
    gaps = [b - a for (_, a), (_, b) in zip(sorted(sent, key=lambda x: x[1]), sorted(sent, key=lambda x: x[1])[1:])]
    assert statistics.median(gaps) == pytest.approx(0.025, abs=0.01)
    # Request 4 (client 0's second, planned at +100 ms) waited for request 0's 250 ms answer.
    assert max(out.latency_ms) >= 140
    assert 0.9 <= wall <= 1.6
