"""Hostile reports (property test): whatever a signer posts as its task's report (API.md §1.6),
the coordinator answers 200 or a precise 4xx — never a 5xx — and the request still ends: done
with a signature libsodium and OpenSSL accept, or failed with a reason.

Bounded in ``make test``; ``SHARDGUARD_SLOW=1`` runs more examples."""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardguard.interop import verify_independently

from .conftest import ADMIN, FakeNode, run_dkg, sign_result

EXAMPLES = 400 if os.environ.get("SHARDGUARD_SLOW") == "1" else 40

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12) | st.sampled_from(["00" * 32, "00" * 64, "ed25519", "ecdsa", "TIMEOUT", "node-a"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip


@st.composite
def hostile_bodies(draw: st.DrawFn, valid: dict[str, Any]) -> Any:
    """A report body: a valid result with fields dropped, replaced or added; a failure with
    junk fields; or any JSON at all."""
    shape = draw(st.sampled_from(["mutated", "failed", "anything"]))
    if shape == "anything":
        return draw(JSON)
    if shape == "failed":
        error = draw(st.dictionaries(st.sampled_from(["reason", "culprits", "party", "detail", "x"]), JSON, max_size=4))
        return {"status": draw(st.sampled_from(["failed", "done", "running", ""])), "error": error}
    result = dict(valid)
    for field in draw(st.lists(st.sampled_from([*valid, "extra"]), min_size=1, max_size=3, unique=True)):
        if draw(st.booleans()):
            result.pop(field, None)
        else:
            result[field] = draw(JSON)
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
