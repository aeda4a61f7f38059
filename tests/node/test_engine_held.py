"""Envelopes the relay says belong to a later session of the job are kept unauthenticated
until that session starts: within limits (engine.HELD_*), so a hostile relay cannot grow the
node's memory (512 MiB for a node), while the early envelopes of a job's next phase — the
DKLs23 setup after its DKG or refresh, the witness notes — are still all kept."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence

import pytest

from shardguard.node.engine import HELD_BYTES, HELD_ENVELOPES, HELD_SESSIONS, EngineTimeout, Inbox, _pump

CURRENT = b"\x01" * 32


def envelope(session: bytes, size: int) -> bytes:
    return b"\x02" + session + b"\x00" * (size - 33)


class FloodRelay:
    """Every fetch: 1000 envelopes of 4 KB, each of a session of its own."""

    fetches = 0

    def post(self, job: str, envelopes: Sequence[tuple[str, bytes]], *, hold: bool = False) -> None:
        pass

    def fetch(self, job: str, after: int, wait: float) -> list[tuple[int, str, bytes]]:
        self.fetches += 1
        return [(after + k + 1, "node-b", envelope(os.urandom(32), 4000)) for k in range(1000)]


def test_a_flood_of_other_sessions_is_held_within_limits(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="shardguard.node")
    relay = FloodRelay()
    inbox = Inbox()
    t = itertools.count()
    with pytest.raises(EngineTimeout):
        _pump(relay, "req_1", inbox, CURRENT, lambda: False, lambda s, e: None, deadline=50, clock=lambda: next(t),
              poll=1.0, round_now=lambda: 1)  # fmt: skip
    assert relay.fetches >= 20
    assert len(inbox.held) <= HELD_SESSIONS
    assert inbox.held_envelopes == sum(len(v) for v in inbox.held.values()) <= HELD_ENVELOPES
    assert inbox.held_bytes == sum(len(e) for v in inbox.held.values() for _, e in v) <= HELD_BYTES
    assert inbox.dropped == relay.fetches * 1000 - inbox.held_envelopes
    drops = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert drops and len(drops) < 20  # logged, not once per envelope
    assert drops[0].getMessage().startswith("job req_1: 1 envelope(s) of sessions not started dropped")


def test_each_limit_holds() -> None:
    a, b, c = b"\x0a" * 32, b"\x0b" * 32, b"\x0c" * 32
    inbox = Inbox(max_sessions=2, max_envelopes=3, max_bytes=1000)
    assert inbox.hold("j", a, "n", envelope(a, 100)) and inbox.hold("j", b, "n", envelope(b, 100))
    assert not inbox.hold("j", c, "n", envelope(c, 100))  # a third session
    assert not inbox.hold("j", a, "n", envelope(a, 801))  # over the bytes
    assert inbox.hold("j", a, "n", envelope(a, 800))
    assert not inbox.hold("j", b, "n", envelope(b, 40))  # over the count
    assert inbox.dropped == 3 and inbox.held_envelopes == 3 and inbox.held_bytes == 1000
    assert [len(e) for _, e in inbox.take(a)] == [100, 800]
    assert inbox.held_envelopes == 1 and inbox.held_bytes == 100 and list(inbox.held) == [b]
    assert inbox.hold("j", c, "n", envelope(c, 40))  # room again
    assert inbox.take(b"\xff" * 32) == []


def test_the_next_phase_of_the_largest_job_is_held_whole() -> None:
    """A 255-party ECDSA keygen: while this node is still in its DKG, every peer may have sent
    its witness note and its first OT-setup envelope (about 17 KiB, with header and key wrap
    under 18.5 KiB). All are kept, and handed over when each session starts."""
    notes, setup = b"\x0e" * 32, b"\x0f" * 32
    arrived = [(c, f"node-{c}", envelope(notes, 1500)) for c in range(1, 255)]
    arrived += [(254 + c, f"node-{c}", envelope(setup, 18_500)) for c in range(1, 255)]

    class Relay:
        def post(self, job: str, envelopes: Sequence[tuple[str, bytes]], *, hold: bool = False) -> None:
            pass

        def fetch(self, job: str, after: int, wait: float) -> list[tuple[int, str, bytes]]:
            return [m for m in arrived if m[0] > after]

    inbox = Inbox()
    t = itertools.count()
    with pytest.raises(EngineTimeout):
        _pump(Relay(), "req_1", inbox, CURRENT, lambda: False, lambda s, e: None, deadline=3, clock=lambda: next(t),
              poll=1.0, round_now=lambda: 3)  # fmt: skip
    assert inbox.dropped == 0 and inbox.held_envelopes == 508
    taken: list[tuple[str, bytes]] = []
    _pump(Relay(), "req_1", inbox, setup, lambda: len(taken) == 254, lambda s, e: taken.append((s, e)), deadline=10,
          clock=lambda: 0.0, poll=1.0, round_now=lambda: 1)  # fmt: skip
    assert [s for s, _ in taken] == [f"node-{c}" for c in range(1, 255)]
    assert list(inbox.held) == [notes] and len(inbox.take(notes)) == 254
    assert inbox.held_envelopes == 0 and inbox.held_bytes == 0
