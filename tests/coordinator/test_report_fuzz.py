"""Hostile reports (property test): whatever a signer posts as its task's report (API.md §1.6,
§1.15), the coordinator answers 200 or a precise 4xx — never a 5xx — and the request still
ends: done with a signature independent libraries accept, or failed with a reason.

Bounded in ``make test``; ``SHARDGUARD_SLOW=1`` runs more examples."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from shardguard import local
from shardguard.interop import verify_independently

from .conftest import ADMIN, FakeNode, run_dkg, sign_result
from .test_presigned import Cluster, _check_done, _shares

EXAMPLES = 400 if os.environ.get("SHARDGUARD_SLOW") == "1" else 40

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["00" * 32, "00" * 64, "ed25519", "ecdsa", "TIMEOUT", "ONE_STEP_UNAVAILABLE", "node-a"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip


#: Result fields the mutations pick from (a fixed list: what is drawn never depends on the
#: result at hand, so Hypothesis sees the same choices whatever the example's state).
FIELDS = ("scheme", "public_key", "signature", "recovery_id", "digest", "path", "share", "u", "w", "R", "extra")


@st.composite
def hostile_bodies(draw: st.DrawFn, valid: dict[str, Any]) -> Any:
    """A report body: a valid result with fields dropped, replaced or added (top level, or in
    a one-step ``share``); a failure with junk fields; or any JSON at all."""
    shape = draw(st.sampled_from(["mutated", "failed", "anything"]))
    if shape == "anything":
        return draw(JSON)
    if shape == "failed":
        error = draw(st.dictionaries(st.sampled_from(["reason", "culprits", "party", "detail", "x"]), JSON, max_size=4))
        return {"status": draw(st.sampled_from(["failed", "done", "running", ""])), "error": error}
    result = json.loads(json.dumps(valid))
    for field in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True)):
        drop, junk = draw(st.booleans()), draw(JSON)
        where = result["share"] if field in ("u", "w", "R") and isinstance(result.get("share"), dict) else result
        if drop:
            where.pop(field, None)
        else:
            where[field] = junk
    return {"status": "done", "result": result} | draw(st.dictionaries(st.sampled_from(["error", "x"]), JSON, max_size=1))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_hostile_report_is_refused_or_ends_the_request_with_a_reason(
    client: TestClient, nodes: list[FakeNode], data: st.DataObject
) -> None:
    key_id = run_dkg(client, nodes)  # a key of its own: nothing an example left running holds it up
    a, b, _ = nodes
    message = secrets.token_bytes(16)
    r = client.post(f"/v1/keys/{key_id}/sign", json={"message_hex": message.hex(), "signers": ["node-a", "node-b"]},
                    headers=ADMIN)  # fmt: skip
    assert r.status_code == 202, r.text
    rid = r.json()["request_id"]
    ta, tb = a.next_task(), b.next_task()
    assert ta is not None and tb is not None and ta["job_id"] == tb["job_id"] == rid, (ta, tb)
    body = data.draw(hostile_bodies(sign_result(ta)))
    got = a.request("POST", f"/v1/tasks/{ta['task_id']}/result", body)
    event(f"rounds: {got.status_code}")
    assert got.status_code in (200, 400, 409, 413, 422), (got.status_code, got.text)
    if got.status_code != 200:
        problem = got.json()
        assert problem["error"]["code"] and problem["error"]["message"], problem  # a precise, typed refusal
    # The honest signer reports; node-a, if its report was refused, then reports honestly.
    assert b.report(tb["task_id"], result=sign_result(tb)).status_code in (200, 409)
    if got.status_code != 200:
        assert a.report(ta["task_id"], result=sign_result(ta)).status_code in (200, 409)
    end = time.monotonic() + 10
    while (req := client.get(f"/v1/requests/{rid}", headers=ADMIN).json())["status"] == "running":
        assert time.monotonic() < end, req
        time.sleep(0.05)
    if req["status"] == "done":
        pk, sig = bytes.fromhex(req["result"]["public_key"]), bytes.fromhex(req["result"]["signature"])
        assert verify_independently("ed25519", pk, message, sig)
    else:
        assert req["status"] == "failed" and req["error"]["reason"], req


def _play(c: Cluster, digest: bytes, skip: str | None = None) -> None:
    """Play every task node-a and node-b hold, honestly (but ``skip``), until none is left:
    pre-signings, one-step signings with their pre-signature, signings in three rounds."""
    while True:
        held = {nid: [t for t in c.tasks(nid) if t["task_id"] != skip] for nid in ("node-a", "node-b")}
        if not any(held.values()):
            return
        c.presign(held)
        for nid, tasks in held.items():
            for t in tasks:
                if t["kind"] != "sign":
                    continue
                if "presignature" in t["params"]:
                    result = c.answer(t, nid)
                else:
                    result = local.ecdsa_sign(list(_shares()[:2]), digest).to_dict()
                assert c.node(nid).report(t["task_id"], result=result).status_code in (200, 409)


@settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
    phases=(Phase.explicit, Phase.generate),  # the stock carries over: a failure is reported as found, not shrunk
)  # fmt: skip
@given(data=st.data())
def test_a_hostile_one_step_ecdsa_share_is_refused_or_ends_the_request_with_a_reason(
    make_client: Callable[..., TestClient], data: st.DataObject
) -> None:
    """The same for a signing with a pre-signature (API.md §1.15): the coordinator combines the
    signers' ``(u, w)`` itself, so every report is hostile input to its arithmetic. A request
    that runs again in rounds (a report saying so) ends there."""
    c = _CLUSTERS.get(id(make_client)) or _CLUSTERS.setdefault(id(make_client), Cluster(make_client(presign_stock=2)))
    digest = secrets.token_bytes(32)
    rid = c.sign(digest)
    held = {nid: c.tasks(nid) for nid in ("node-a", "node-b")}
    c.presign(held)  # the restock, played before the signing's shares
    ta, tb = (next(t for t in held[nid] if t["kind"] == "sign") for nid in ("node-a", "node-b"))
    one_step = "presignature" in ta["params"]  # else no stock yet: three rounds (the next example has one)
    honest = {nid: c.answer(t, nid) if one_step else local.ecdsa_sign(list(_shares()[:2]), digest).to_dict()
              for nid, t in (("node-a", ta), ("node-b", tb))}  # fmt: skip
    body = data.draw(hostile_bodies(honest["node-a"]))
    got = c.node("node-a").request("POST", f"/v1/tasks/{ta['task_id']}/result", body)
    event(f"{'one step' if one_step else 'three rounds'}: {got.status_code}")
    assert got.status_code in (200, 400, 409, 413, 422), (got.status_code, got.text)
    if got.status_code != 200:
        problem = got.json()
        assert problem["error"]["code"] and problem["error"]["message"], problem
        assert c.node("node-a").report(ta["task_id"], result=honest["node-a"]).status_code == 200
    assert c.node("node-b").report(tb["task_id"], result=honest["node-b"]).status_code in (200, 409)
    _play(c, digest)  # a rerun in rounds, restocking
    req = c.request(rid)
    event(f"request {req['status']} after {req['attempts']} attempt(s)")
    if req["status"] == "done":
        _check_done(c, req, digest)
    else:
        assert req["status"] == "failed" and req["error"]["reason"], req


_CLUSTERS: dict[int, Cluster] = {}  # one cluster (key, nodes, stock) per test run, across examples
