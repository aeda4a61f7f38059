"""Each session instance once (node/sessions.py): a relay can never make a node run a session it
ran before, whatever it hands out and whatever the node's clock does, in bounded memory."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shardguard.node.sessions import SessionRegister
from shardguard.node.tasks import TaskError, clocked_rng, deadline_at, session_instance
from tests.helpers.rng import DeterministicRng

EXAMPLES = 2000 if os.environ.get("SHARDGUARD_SLOW") == "1" else 200
NOW = 1_800_000_000.0


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _refused(register: SessionRegister, instance: bytes, deadline: float, field: str) -> None:
    with pytest.raises(TaskError) as e:
        register.run_once(instance, deadline)
    assert e.value.field == field, e.value


def test_an_instance_runs_once() -> None:
    register = SessionRegister(clock=Clock())
    register.run_once(b"a" * 32, NOW + 120)
    _refused(register, b"a" * 32, NOW + 120, "instance")
    register.run_once(b"b" * 32, NOW + 120)
    assert len(register) == 2


def test_deadlines_long_past_or_far_ahead_are_refused() -> None:
    register = SessionRegister(skew=60, ahead=3600, clock=Clock())
    _refused(register, b"a" * 32, NOW - 61, "deadline")
    _refused(register, b"a" * 32, NOW + 3601, "deadline")
    register.run_once(b"a" * 32, NOW - 59)  # the coordinator's clock may run a little ahead of ours
    register.run_once(b"b" * 32, NOW + 3599)
    with pytest.raises(TaskError):
        register.check(NOW - 61)


def test_a_forgotten_instance_stays_refused_when_the_clock_goes_back() -> None:
    clock = Clock()
    register = SessionRegister(skew=60, clock=clock)
    register.run_once(b"a" * 32, NOW + 120)
    clock.t = NOW + 1000  # its deadline is out of reach: forgotten at the next task
    register.run_once(b"b" * 32, NOW + 1100)
    assert len(register) == 1 and register.floor == NOW + 120
    clock.t = NOW  # the host sets the clock back: the deadline would be taken again ...
    _refused(register, b"a" * 32, NOW + 120, "deadline")  # ... but it is not after the floor
    register.run_once(b"c" * 32, NOW + 121)  # later deadlines still run


def test_a_full_register_forgets_the_earliest_deadline_and_refuses_it_after() -> None:
    register = SessionRegister(capacity=3, clock=Clock())
    for k, d in enumerate((30, 10, 20)):
        register.run_once(bytes([k]) * 32, NOW + d)
    register.run_once(b"\x09" * 32, NOW + 40)  # the one at +10 goes
    assert len(register) == 3 and register.floor == NOW + 10
    _refused(register, b"\x01" * 32, NOW + 10, "deadline")
    _refused(register, b"\x08" * 32, NOW + 5, "deadline")
    # A new one whose deadline is earlier than all it holds is the one that goes: refused.
    _refused(register, b"\x07" * 32, NOW + 15, "deadline")
    assert register.floor == NOW + 15 and len(register) == 3
    # Of one deadline, the session recorded first goes (the new one runs).
    register.run_once(b"\x06" * 32, NOW + 20)
    assert register.floor == NOW + 20 and len(register) == 3
    _refused(register, b"\x02" * 32, NOW + 20, "deadline")
    register.run_once(b"\x05" * 32, NOW + 50)


def test_the_session_is_bound_to_the_deadline_in_whole_seconds() -> None:
    instance = secrets.token_bytes(32)
    at = deadline_at({"deadline": "2026-12-03T10:00:00.250000+00:00"})
    assert at == deadline_at({"deadline": "2026-12-03T11:00:00.250+01:00"})  # one instant, two offsets
    assert at == deadline_at({"deadline": "2026-12-03T10:00:00.999999+00:00"})  # whole seconds, rounded down
    assert session_instance(instance, at) != session_instance(instance, at + 1)
    assert session_instance(instance, at) != session_instance(secrets.token_bytes(32), at)


@pytest.mark.parametrize(
    "deadline", [None, 17, "", "tomorrow", "2026-12-03T10:00:00", "2026-12-03T10:00:00+00:00" + " " * 64]
)
def test_a_task_without_a_usable_deadline_is_refused(deadline: object) -> None:
    with pytest.raises(TaskError) as e:
        deadline_at({"deadline": deadline})
    assert e.value.field == "deadline"


# Operations: move the clock (either way), or hand out an (instance, deadline) pair, as a relay
# might: old pairs again, old instances under new deadlines, deadlines near the edges.
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("clock"), st.sampled_from([-400, -100, -30, 0.5, 30, 100, 160.5, 400])),
        st.tuples(st.just("task"), st.integers(0, 2), st.sampled_from([-70, -50, 0, 0.9, 50, 100, 100.9, 200, 350, 450])),
    ),
    max_size=40,
)


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


@settings(max_examples=EXAMPLES, deadline=None)
@given(steps=_steps, capacity=st.integers(1, 4))
# Forgotten as its deadline went out of reach, then the clock set back:
@example(steps=[("task", 0, 100), ("clock", 400), ("task", 1, 450), ("clock", -400), ("task", 0, 100)], capacity=4)
# Pushed out of a full register by a later deadline, then handed out again:
@example(steps=[("task", 0, 100), ("task", 1, 200), ("task", 0, 100), ("task", 2, 50)], capacity=1)
# Review finding: forgotten at X.0, handed out again at X.9 (one session: whole seconds).
@example(steps=[("task", 0, 100), ("clock", 160.5), ("task", 1, 200), ("task", 0, 100.9)], capacity=4)
@example(steps=[("task", 0, 100), ("task", 1, 100.9), ("task", 2, 200), ("task", 0, 100.9)], capacity=2)
def test_no_session_ever_runs_twice(steps: list[tuple[object, ...]], capacity: int) -> None:
    """As the node runs it (service.py): the deadline read by deadline_at, the session bound to
    it, the register given the same value."""
    clock = Clock()
    register = SessionRegister(capacity, skew=60, ahead=300, clock=clock)
    ran: set[bytes] = set()
    for step in steps:
        if step[0] == "clock":
            clock.t += float(step[1])  # type: ignore[arg-type]
            continue
        _, which, offset = step
        deadline = deadline_at({"deadline": _iso(NOW + float(offset))})  # type: ignore[arg-type]
        session = session_instance(bytes([int(which)]) * 32, deadline)  # type: ignore[call-overload]
        try:
            register.run_once(session, deadline)
        except TaskError:
            continue
        assert session not in ran, "a session ran twice"
        ran.add(session)
        assert len(register) <= capacity


def test_a_replayed_rng_stream_draws_afresh_in_a_task() -> None:
    """Review finding: the register is memory only, so a restored snapshot (its RNG stream
    replayed) could be handed a session it ran; a co-signer changing only its own draws then
    recovers the ECDSA key from two signatures of one digest. Every task's RNG mixes the clock."""
    first, again = clocked_rng(DeterministicRng(7)), clocked_rng(DeterministicRng(7))
    a = first(32)
    time.sleep(0.001)
    assert again(32) != a and len(a) == 32
