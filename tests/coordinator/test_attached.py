"""Frame bodies with binary attachments (coordinator/attached.py, API.md §1.11): every length
accounted for, every attachment referred to exactly once, every refusal typed and naming where."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardguard.coordinator import attached
from shardguard.coordinator.attached import AttachedFrameError


def _body(header: Any, *blobs: bytes, length: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return (len(raw) if length is None else length).to_bytes(4, "big") + raw + b"".join(blobs)


_json = st.recursive(
    st.one_of(st.text(max_size=20), st.integers(), st.none(), st.booleans()),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20,
)


@given(
    st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ("attachments", "messages")), _json, max_size=5),
    st.lists(st.binary(max_size=300), max_size=6),
)
def test_round_trip(extra: dict[str, Any], payloads: list[bytes]) -> None:
    blobs: list[bytes] = []
    messages = attached.lift([{"to": "node-b", "seq": i, "blob": b} for i, b in enumerate(payloads)], blobs)
    header, got = attached.decode(attached.encode({**extra, "messages": messages}, blobs))
    taken: set[int] = set()
    assert [attached.take(m["blob"], got, taken, "blob") for m in header.pop("messages")] == payloads
    attached.check_all_taken(got, taken)
    assert header == extra


def test_a_blob_costs_its_length_and_no_more() -> None:
    blob = bytes(range(256)) * 200
    blobs: list[bytes] = []
    body = attached.encode({"op": "outbox", "data": {"messages": attached.lift([{"blob": blob}], blobs)}}, blobs)
    assert body.endswith(blob) and len(body) < len(blob) + 100
    header, got = attached.decode(body)
    assert header == {"op": "outbox", "data": {"messages": [{"blob": 0}]}} and got == [blob]


@pytest.mark.parametrize(
    ("body", "field", "problem"),
    [
        (b"", "frame", "shorter than"),
        (b"\x00\x00\x00", "frame", "shorter than"),
        (_body({"a": 1}, length=100), "frame", "runs past"),
        ((3).to_bytes(4, "big") + b"\xff\xfe{", "frame", "not JSON"),
        (_body([1, 2]), "frame", "not a JSON object"),
        ((5).to_bytes(4, "big") + b"[" * 5, "frame", "not JSON"),
        (_body({"attachments": {"0": 3}}), "attachments", "list"),
        (
            _body({"attachments": [1] * (attached.MAX_ATTACHMENTS + 1)}, b"x" * (attached.MAX_ATTACHMENTS + 1)),
            "attachments",
            "list",
        ),
        (_body({"attachments": [-1]}), "attachments", "non-negative"),
        (_body({"attachments": [True]}, b"x"), "attachments", "non-negative"),
        (_body({"attachments": [1.0]}, b"x"), "attachments", "non-negative"),
        (_body({"attachments": ["1"]}, b"x"), "attachments", "non-negative"),
        (_body({"attachments": [3]}, b"ab"), "attachments", "add up to 3 bytes, the frame holds 2"),
        (_body({"attachments": [1]}, b"ab"), "attachments", "add up to 1 bytes, the frame holds 2"),
        (_body({}, b"trailing"), "attachments", "add up to 0 bytes"),
    ],
    ids=[
        "empty",
        "truncated-length",
        "header-past-end",
        "not-utf8",
        "not-object",
        "truncated-json",
        "lengths-not-list",
        "too-many",
        "negative",
        "bool",
        "float",
        "string",
        "too-long",
        "too-short",
        "trailing",
    ],
)
def test_malformed_bodies_are_refused(body: bytes, field: str, problem: str) -> None:
    with pytest.raises(AttachedFrameError) as e:
        attached.decode(body)
    assert e.value.field == field and problem in e.value.problem


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_are_refused(body: bytes) -> None:
    try:
        header, blobs = attached.decode(body)
    except AttachedFrameError:
        return
    assert isinstance(header, dict) and sum(map(len, blobs)) <= len(body)


@pytest.mark.parametrize(
    ("ref", "problem"),
    [
        ("0", "an attachment index"),
        (True, "an attachment index"),
        (0.0, "an attachment index"),
        (None, "an attachment index"),
        (-1, "does not exist"),
        (2, "does not exist"),
        (2**70, "does not exist"),
    ],
)
def test_a_reference_is_an_index_of_an_attachment(ref: Any, problem: str) -> None:
    with pytest.raises(AttachedFrameError) as e:
        attached.take(ref, [b"a", b"b"], set(), "messages[3].blob")
    assert e.value.field == "messages[3].blob" and problem in e.value.problem


def test_each_attachment_is_taken_once_and_none_is_left_unread() -> None:
    blobs = [b"a", b"b", b"c"]
    taken: set[int] = set()
    assert attached.take(1, blobs, taken, "x") == b"b"
    with pytest.raises(AttachedFrameError, match="referred to twice"):
        attached.take(1, blobs, taken, "y")
    attached.take(2, blobs, taken, "z")
    with pytest.raises(AttachedFrameError, match="attachment 0 is not referred to"):
        attached.check_all_taken(blobs, taken)


def test_each_side_lifts_the_blobs_of_its_own_frames_only() -> None:
    outbox = {"seq": 3, "op": "outbox", "data": {"messages": [{"job": "j", "to": "b", "seq": 1, "blob": b"one"}], "results": []}}
    header, blobs = attached.decode(attached.node_frame(outbox))
    assert header["data"]["messages"][0]["blob"] == 0 and blobs == [b"one"]
    assert outbox["data"]["messages"][0]["blob"] == b"one"  # the caller's frame is left as it was
    job = {"job_id": "j", "messages": [{"blob": b"a"}, {"blob": b"b"}]}
    events = {"op": "events", "tasks": [{"task_id": "t"}], "jobs": [job]}
    header, blobs = attached.decode(attached.coordinator_frame(events))
    assert [m["blob"] for m in header["jobs"][0]["messages"]] == [0, 1] and blobs == [b"a", b"b"]
    plain = [
        ({"seq": 4, "op": "want", "data": {"claim": 1}}, attached.node_frame),
        ({"op": "ack", "seq": 4}, attached.coordinator_frame),
    ]
    for frame, encode in plain:
        header, blobs = attached.decode(encode(frame))
        assert header == frame and blobs == []
