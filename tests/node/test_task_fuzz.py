"""Hostile tasks (property test): whatever the coordinator sends in a task's fields, the node
neither crashes nor stays silent — it reports the task failed with a precise reason naming the
field — and it sends no protocol message and writes no ``signing`` entry for it.

Bounded in ``make test``; ``SHARDGUARD_SLOW=1`` runs more examples."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardguard import local
from shardguard.node.audit import verify_chain
from shardguard.node.service import NodeService

from .test_service_tasks import NODES, Hub, _task, two_nodes

EXAMPLES = 600 if os.environ.get("SHARDGUARD_SLOW") == "1" else 80

#: Any JSON value (what a hostile coordinator's task can hold after decoding).
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
#: Fields whose corruption alone must make the task fail (no value but the right one passes).
MUST_FAIL = ("you", "participants", "params", "instance")
OTHER = ("kind", "key_id", "scheme", "threshold", "epoch", "committee", "deadline", "public_key", "carries")
KINDS = st.sampled_from(["sign", "bundle", "presign", "dkg", "refresh", "repair", "witness", "keygen"]) | JSON


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Hub, NodeService, list[dict[str, Any]]]]:
    for hub, services, parts in two_nodes(tmp_path, local.keygen("ed25519", 2, 2)):
        yield hub, services["node-1"], parts


@st.composite
def hostile_tasks(draw: st.DrawFn, parts: list[dict[str, Any]]) -> dict[str, Any]:
    job = f"fz{secrets.token_hex(6)}"
    raw = _task(parts, "sign", 1, {"message_hex": "00", "signers": list(NODES)}, job)
    broken = draw(st.lists(st.sampled_from(MUST_FAIL), min_size=1, max_size=len(MUST_FAIL), unique=True))
    for field in broken + draw(st.lists(st.sampled_from(OTHER), max_size=3, unique=True)):
        if draw(st.booleans()):
            raw.pop(field, None)
        else:
            raw[field] = draw(KINDS if field == "kind" else JSON)
    return raw


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_hostile_task_is_reported_failed_naming_its_field(
    node: tuple[Hub, NodeService, list[dict[str, Any]]], data: st.DataObject
) -> None:
    hub, svc, parts = node
    raw = data.draw(hostile_tasks(parts))
    before = len(verify_chain(svc.audit.pending(), svc.card.identity_public_key))
    svc.handle(raw)  # never raises
    r = hub.results[raw["task_id"]]
    assert r["status"] == "failed" and r["result"] is None, r
    error = r["error"]
    assert error["reason"] not in ("INTERNAL", ""), error  # a precise reason, not an unexpected exception
    assert isinstance(error["detail"], str) and error["detail"], error
    assert (svc.node_id, raw["job_id"]) not in hub.posts  # nothing sent to a peer
    entries = verify_chain(svc.audit.pending(), svc.card.identity_public_key)[before:]
    assert not [e for e in entries if e["event"] == "signing"], entries


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("you", {"index": True}),  # a bool is no index
        ("you", {"index": 1.0}),
        ("participants", [{"index": 1, "node_id": "node-1"}, "node-2"]),
        ("participants", []),
        ("instance", "AB" * 32),
        ("instance", "00" * 31),
        ("threshold", 0),
        ("epoch", -1),
        ("deadline", "2030-01-01T00:00:00"),  # no offset: not comparable with now
        ("deadline", 5),
        ("params", ["message_hex", "00"]),
        ("committee", [{"index": 1}]),
        ("public_key", 7),
    ],
)
def test_each_malformed_field_is_named(node: tuple[Hub, NodeService, list[dict[str, Any]]], field: str, value: Any) -> None:
    hub, svc, parts = node
    raw = _task(parts, "sign", 1, {"message_hex": "00", "signers": list(NODES)}, "bad") | {field: value}
    svc.handle(raw)
    error = hub.results["bad-1"]["error"]
    assert error["reason"] == "TaskError" and (f"({field})" in error["detail"] or f"({field}[" in error["detail"]), error
    (refused,) = [e for e in verify_chain(svc.audit.pending(), svc.card.identity_public_key) if e["event"] == "refused"]
    assert refused["job"] == "bad" and refused["reason"] == "TaskError"
