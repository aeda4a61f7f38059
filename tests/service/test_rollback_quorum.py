"""The rollback defence asks t holders, not only a task's co-signers (ARCHITECTURE §7,
docs/NODE.md "Rollback witness"): real coordinator and node processes on loopback.

A restarted node signs only once t other holders of the key have confirmed its state since it
started. It asks for that with witness jobs (API.md §1.14), so a holder outside the signing
counts too: an old copy of a state directory is caught by the holder that saw the newer state,
even when the signing names a co-signer that never did.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardguard import dev
from shardguard.client import Client, RequestFailed
from tests.service.imaged import imaged_cluster
from tests.service.test_cluster import kill9, node_pid, restart, sign

JOB_TIMEOUT = 8.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Client, dict[str, Any]]]:
    d = tmp_path_factory.mktemp("quorum")
    with imaged_cluster(d, 3, job_timeout=JOB_TIMEOUT) as client:
        yield d, client, client.create_key("ed25519", 2, ["node-1", "node-2", "node-3"])


def _state(d: Path, node: str) -> Path:
    return Path(next(n["state"] for n in dev.Cluster.load(d)["nodes"] if n["node_id"] == node))


def _witness_jobs(client: Client, node: str) -> list[dict[str, Any]]:
    return [r for r in client.requests() if r["kind"] == "witness" and r["params"].get("for") == node]


def test_a_restarted_node_signs_once_t_holders_confirmed_it(cluster: tuple[Path, Client, dict[str, Any]]) -> None:
    d, client, key = cluster
    kill9(node_pid(d, "node-2"))
    restart(d, client, "node-2")
    sign(client, key, ["node-2", "node-3"])  # node-1 confirmed it too, by a witness job
    jobs = _witness_jobs(client, "node-2")
    assert jobs and {p["node_id"] for p in jobs[0]["participants"]} == {"node-1", "node-2", "node-3"}


def test_an_old_copy_is_caught_by_the_holder_outside_the_signing(cluster: tuple[Path, Client, dict[str, Any]]) -> None:
    """node-1 is down while node-2 moves on; node-3 witnesses the newer state. node-2's old copy
    is put back and signs with node-1, which never saw the newer state: node-3 still catches it."""
    d, client, key = cluster
    state = _state(d, "node-2")
    kill9(node_pid(d, "node-1"))
    kill9(node_pid(d, "node-2"))
    snapshot = state.parent / "node-2-snapshot"
    shutil.copytree(state, snapshot)
    restart(d, client, "node-2")
    # t = 2 other holders: with node-1 down, node-2 does not sign yet — node-3 alone confirmed it.
    with pytest.raises(RequestFailed) as e:
        client.sign(key["key_id"], message=b"one holder is down", signers=["node-2", "node-3"])
    assert e.value.reason == "KEYSTORE_UNCONFIRMED", e.value
    assert "node-3" in str(e.value), e.value
    kill9(node_pid(d, "node-2"))
    newest = state.parent / "node-2-newest"
    state.rename(newest)
    shutil.copytree(snapshot, state)
    restart(d, client, "node-2")
    restart(d, client, "node-1")
    with pytest.raises(RequestFailed) as e:
        client.sign(key["key_id"], message=b"rolled back", signers=["node-1", "node-2"])
    assert e.value.reason == "STALE_STATE", e.value
    assert "node-2" in e.value.culprits, e.value
    # node-1, whose record lagged, never took the old copy's counter for a newer state (the
    # copy, once caught, sends nobody a note): the newest state signs again with it.
    kill9(node_pid(d, "node-2"))
    shutil.rmtree(state)
    newest.rename(state)
    restart(d, client, "node-2")
    sign(client, key, ["node-1", "node-2"])
