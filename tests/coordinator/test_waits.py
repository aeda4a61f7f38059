"""coordinator/waits.py: sleeping on a wake-up, with a timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from shardguard.coordinator.app import Notifier, _long_poll
from shardguard.coordinator.waits import LET_WOKEN_RUN, woken

#: The server runs on uvloop (uvicorn's default when it is installed); the tests on asyncio's loop.
RUNNERS = pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
Run = Callable[[Coroutine[Any, Any, None]], None]


@RUNNERS
def test_woken_when_resolved_and_not_when_the_time_runs_out(run: Run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        done.set_result(None)
        assert await woken(done, 0.0)
        later: asyncio.Future[None] = loop.create_future()
        loop.call_later(0.01, later.set_result, None)
        assert await woken(later, 5.0)
        never: asyncio.Future[None] = loop.create_future()
        t0 = time.monotonic()
        assert not await woken(never, 0.02)
        assert 0.015 <= time.monotonic() - t0 < 1.0

    run(main())


@RUNNERS
def test_a_woken_task_runs_within_let_woken_run_steps(run: Run) -> None:
    """What the stream relies on to let the streams a post woke go before its ack: a waiter
    resolved the way Notifier resolves it (call_soon_threadsafe) has run after that many
    yields of the waker."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        order: list[str] = []

        async def sleeper() -> None:
            await woken(fut, 5.0)
            order.append("woken")

        task = asyncio.create_task(sleeper())
        await asyncio.sleep(0)  # the sleeper waits
        loop.call_soon_threadsafe(fut.set_result, None)
        for _ in range(LET_WOKEN_RUN):
            await asyncio.sleep(0)
        order.append("waker")
        await task
        assert order == ["woken", "waker"]

    run(main())


async def _sleeping_poll(notifier: Notifier) -> tuple[asyncio.Task[None], asyncio.Future[None]]:
    """A long-poll on ``job:x`` asleep on the oldest waiter, and a second waiter after it."""

    async def inline(fn: Callable[[], Any]) -> Any:
        return fn()

    poll = asyncio.create_task(_long_poll(notifier, "job:x", 30.0, 30.0, lambda: (False, None), runner=inline, check_first=False))
    await asyncio.sleep(0.01)
    return poll, notifier.waiter("job:x")


def test_a_long_poll_cancelled_with_its_client_passes_no_wake_on() -> None:
    """Only a long-poll that was woken and leaves passes its wake-up on to the next waiter; one
    cancelled while it slept (its client gone) was never woken."""

    async def main() -> None:
        notifier = Notifier()
        poll, other = await _sleeping_poll(notifier)
        poll.cancel()
        with pytest.raises(asyncio.CancelledError):
            await poll
        await asyncio.sleep(0.01)
        assert not other.done()
        notifier.notify("job:x", None)  # and the other waiter still hears a real wake-up
        assert await woken(other, 1.0)

    asyncio.run(main())


def test_a_wake_up_taken_by_a_long_poll_cancelled_before_it_ran_is_passed_on() -> None:
    """The wake-up chose this long-poll's waiter, and the poll was cancelled before the wake
    resolved it: it is passed on to the next waiter, not lost."""

    async def main() -> None:
        notifier = Notifier()
        poll, other = await _sleeping_poll(notifier)
        notifier.notify("job:x", 1)  # takes the poll's waiter …
        poll.cancel()  # … which is cancelled before the wake resolves it
        with pytest.raises(asyncio.CancelledError):
            await poll
        assert await woken(other, 1.0)

    asyncio.run(main())
