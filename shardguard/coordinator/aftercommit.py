"""Work to do once the current write transaction has committed — the metrics of a job's end —
and never if it rolls back: a transaction retried after a rollback (a PostgreSQL deadlock
victim, a serialisation failure, a node's report sent again) would count its job twice."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

__all__ = ["after_commit", "transaction_hooks"]

_local = threading.local()


@contextlib.contextmanager
def transaction_hooks() -> Iterator[None]:
    """Around a write transaction, its commit included: what :func:`after_commit` was given
    inside runs when the block ends without an exception, in order."""
    stack: list[list[Callable[[], None]]] = _local.__dict__.setdefault("stack", [])
    hooks: list[Callable[[], None]] = []
    stack.append(hooks)
    try:
        yield
    finally:
        stack.pop()
    for hook in hooks:
        hook()


def after_commit(hook: Callable[[], None]) -> None:
    """Run ``hook`` after the innermost write transaction of this thread commits (at once
    outside one)."""
    stack = getattr(_local, "stack", None)
    if stack:
        stack[-1].append(hook)
    else:
        hook()
