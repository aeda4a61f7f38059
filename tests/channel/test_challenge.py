"""Verifier-chosen nonces (channel.challenge): the nonce that answers a list of challenges, the
wire form as hostile input, and a verifier's book of its own challenges."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardguard.channel import (
    Challenge,
    ChallengeBook,
    ChallengeError,
    ChannelUsageError,
    challenge_nonce,
    challenges_from_wire,
    challenges_to_wire,
)
from shardguard.channel.challenge import CHALLENGE_LEN, MAX_CHALLENGES

A, B = Challenge("node-1", b"\x01" * 32), Challenge("node-2", b"\x02" * 32)


def test_the_nonce_is_the_documented_hash_in_any_order() -> None:
    tag = b"shardguard/channel/challenges/v1\x00"
    expected = hashlib.sha256(tag + b"\x00\x02" + b"\x06node-1" + b"\x01" * 32 + b"\x06node-2" + b"\x02" * 32).digest()
    assert challenge_nonce([A, B]) == challenge_nonce([B, A]) == expected
    assert challenge_nonce([]) == hashlib.sha256(tag + b"\x00\x00").digest()
    assert len(expected) == 32


names = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)
lists = st.dictionaries(names, st.binary(min_size=32, max_size=32), max_size=6).map(
    lambda d: [Challenge(k, v) for k, v in d.items()]
)


@given(lists, lists)
def test_different_lists_give_different_nonces(a: list[Challenge], b: list[Challenge]) -> None:
    assert (challenge_nonce(a) == challenge_nonce(b)) == (set(a) == set(b))


@given(lists)
def test_the_wire_form_round_trips(a: list[Challenge]) -> None:
    wire = challenges_to_wire(a)
    assert [w["from"] for w in wire] == sorted(c.challenger for c in a)
    assert set(challenges_from_wire(wire)) == set(a)


@pytest.mark.parametrize(
    ("wire", "field"),
    [
        ("node-1", "challenges"),
        ({"from": "node-1"}, "challenges"),
        ([{"from": "node-1"}], "challenges[0]"),
        ([{"from": "node-1", "nonce": "00" * 32, "extra": 1}], "challenges[0]"),
        ([["node-1", "00" * 32]], "challenges[0]"),
        ([{"from": 7, "nonce": "00" * 32}], "challenges[0].from"),
        ([{"from": "Node 1", "nonce": "00" * 32}], "challenges[0].from"),
        ([{"from": "", "nonce": "00" * 32}], "challenges[0].from"),
        ([{"from": "n" * 65, "nonce": "00" * 32}], "challenges[0].from"),
        ([{"from": "node-1", "nonce": "00" * 31}], "challenges[0].nonce"),
        ([{"from": "node-1", "nonce": "00" * 33}], "challenges[0].nonce"),
        ([{"from": "node-1", "nonce": "zz" * 32}], "challenges[0].nonce"),
        ([{"from": "node-1", "nonce": 0}], "challenges[0].nonce"),
        ([{"from": "node-1", "nonce": "00" * 32}, {"from": "node-1", "nonce": "11" * 32}], "challenges[1].from"),
        ([{"from": f"n{i}", "nonce": "00" * 32} for i in range(MAX_CHALLENGES + 1)], "challenges"),
    ],
)
def test_malformed_wire_lists_are_refused_naming_the_field(wire: Any, field: str) -> None:
    with pytest.raises(ChallengeError) as e:
        challenges_from_wire(wire)
    assert e.value.field == field


def test_challenge_nonce_refuses_local_misuse() -> None:
    for bad in ([A, A], [Challenge("node-1", b"x")], [Challenge("NODE", b"\x00" * 32)], ["node-1"]):
        with pytest.raises(ChannelUsageError):
            challenge_nonce(bad)  # type: ignore[arg-type]
    challenge_nonce([Challenge(f"n{i}", bytes(32)) for i in range(MAX_CHALLENGES)])  # the maximum is fine


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_the_book_answers_only_our_own_live_challenges() -> None:
    clock = Clock()
    book = ChallengeBook("node-1", 600, clock=clock)
    assert book.newest("node-2") is None and book.answered("node-2", []) is None
    first = book.issue("node-2")
    assert len(first) == CHALLENGE_LEN
    assert book.answered("node-2", [Challenge("node-1", first)]) == 1600.0
    # Our nonce under another challenger's name, another peer's book entry, or a guess: no.
    assert book.answered("node-2", [Challenge("node-9", first)]) is None
    assert book.answered("node-3", [Challenge("node-1", first)]) is None
    assert book.answered("node-2", [Challenge("node-1", bytes(32))]) is None
    clock.t += 100
    second = book.issue("node-2")
    assert book.newest("node-2") == (second, 0.0)
    # The one before stays good until it runs out; the newest wins when both are answered.
    assert book.answered("node-2", [Challenge("node-1", first)]) == 1600.0
    assert book.answered("node-2", [Challenge("node-1", first), Challenge("node-1", second)]) == 1700.0
    clock.t += 100
    third = book.issue("node-2")  # only the newest two are kept
    assert book.answered("node-2", [Challenge("node-1", first)]) is None
    assert book.answered("node-2", [Challenge("node-1", second)]) == 1700.0
    clock.t = 1700.0  # the second ran out
    assert book.answered("node-2", [Challenge("node-1", second)]) is None
    assert book.answered("node-2", [Challenge("node-1", third)]) == 1800.0
    clock.t = 1800.0
    assert book.newest("node-2") is None and book.answered("node-2", [Challenge("node-1", third)]) is None
    book.forget("node-2")
    assert book.newest("node-2") is None


def test_a_book_without_lifetime_keeps_challenges_good() -> None:
    clock = Clock()
    book = ChallengeBook("node-1", None, clock=clock)
    nonce = book.issue("node-2")
    clock.t += 1e9
    assert book.answered("node-2", [Challenge("node-1", nonce)]) == math.inf


def test_the_book_checks_its_arguments() -> None:
    with pytest.raises(ChannelUsageError):
        ChallengeBook("node-1", 0)
    with pytest.raises(ChannelUsageError):
        ChallengeBook("node-1", 60, rng=lambda n: b"short").issue("node-2")
