"""The bounded memos of pure verification steps (shardguard/attestation/memo.py)."""

from __future__ import annotations

import pytest

from shardguard.attestation import memo
from shardguard.attestation.memo import Memo


def test_a_result_is_computed_once_and_failures_are_never_stored() -> None:
    m = Memo(4)
    calls: list[int] = []

    def compute() -> int:
        calls.append(1)
        return 7

    assert m.get(b"k", compute) == m.get(b"k", compute) == 7
    assert len(calls) == 1

    def fail() -> int:
        calls.append(2)
        raise ValueError("bad signature")

    for _ in range(2):
        with pytest.raises(ValueError, match="bad signature"):
            m.get(b"bad", fail)
    assert calls == [1, 2, 2]


def test_the_memo_is_bounded_and_forgets_its_oldest_entry_first() -> None:
    m = Memo(2)
    for key in (b"a", b"b", b"c"):
        m.get(key, lambda: 0)
    seen: list[bytes] = []
    for key in (b"c", b"b", b"a"):
        m.get(key, lambda k=key: seen.append(k))  # type: ignore[misc]
    assert seen == [b"a"]


def test_clear_caches_keeps_the_trust_anchors_only() -> None:
    evidence, anchors = Memo(), Memo(anchor=True)
    evidence.get(b"x", lambda: 1)
    anchors.get(b"root", lambda: 1)
    memo.clear_caches()
    assert evidence.get(b"x", lambda: 2) == 2
    assert anchors.get(b"root", lambda: 2) == 1
