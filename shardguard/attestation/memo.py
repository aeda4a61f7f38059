"""Bounded memos of pure verification steps, keyed by their exact input bytes.

A verifier sees the same certificates again and again: every Nitro document of a region carries
the same AWS intermediates, every SEV-SNP report of a product the same ARK and ASK, every DCAP
quote of a platform the same collateral. A step whose result depends only on bytes (a
signature, a parse) is computed once and remembered; a step that depends on the time (validity
windows, evidence age) is never stored and runs on every call.

Only successes are stored: a failing step raises again every time. ``clear_caches`` forgets
everything except the trust anchors (benchmarks use it to time cold verifications).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, Final, TypeVar

__all__ = ["Memo", "clear_caches"]

_T = TypeVar("_T")
_MISSING: Final = object()
_CLEARABLE: list[Memo] = []


class Memo:
    """A bounded map from exact input bytes to the result of a pure check (FIFO eviction).

    ``anchor=True``: a memo of the trust store's own checks (a pinned root's self-signature),
    which ``clear_caches`` keeps: they belong to the configuration, not to the evidence.
    """

    def __init__(self, maxsize: int = 256, *, anchor: bool = False) -> None:
        self._data: dict[Hashable, Any] = {}
        self._lock = threading.Lock()
        self._maxsize = maxsize
        if not anchor:
            _CLEARABLE.append(self)

    def get(self, key: Hashable, compute: Callable[[], _T]) -> _T:
        # A dict read needs no lock; a sentinel, because a raised KeyError costs more than the
        # look-up on every cold call.
        value = self._data.get(key, _MISSING)
        if value is not _MISSING:
            return value  # type: ignore[no-any-return]
        value = compute()
        with self._lock:
            if len(self._data) >= self._maxsize:
                del self._data[next(iter(self._data))]
            self._data[key] = value
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


def clear_caches() -> None:
    """Forget every memoised check of the evidence (not the trust anchors')."""
    for memo in _CLEARABLE:
        memo.clear()
