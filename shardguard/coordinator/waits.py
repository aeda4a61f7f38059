"""Sleeping on a wake-up from :class:`~shardguard.coordinator.app.Notifier`, with a timeout."""

from __future__ import annotations

import asyncio

__all__ = ["LET_WOKEN_RUN", "woken"]

#: Loop steps from a notification to the woken task running: the call that resolves its future,
#: then the task's own step (:func:`woken`). A post that wakes others yields this many times
#: before its own answer, so that what it woke goes first (stream.py).
LET_WOKEN_RUN = 2


async def woken(fut: asyncio.Future[None], timeout: float) -> bool:
    """Wait for ``fut`` (one waiter of ``Notifier.waiter``) at most ``timeout`` seconds: True if
    it was resolved, False if the time ran out.

    The future is awaited directly, not through ``wait_for(shield(fut))``: a wake-up then
    reaches the task in two loop steps instead of four. Each waiter's future is its own, so
    cancelling it when the time runs out (what ``asyncio.timeout`` does) concerns nobody else."""
    if fut.done():
        return True
    try:
        async with asyncio.timeout(timeout):
            await fut
    except TimeoutError:
        return False
    return True
