"""Bounded memos of pure verification steps, keyed by their exact input bytes.

A verifier sees the same certificates again and again: every Nitro document of a region carries
the same AWS intermediates, every SEV-SNP report of a product the same ARK and ASK, every DCAP
quote of a platform the same collateral. A step whose result depends only on bytes (a
signature, a parse) is computed once and remembered; a step that depends on the time (validity
windows, evidence age) is never stored and runs on every call.

Only successes are stored: a failing step raises again every time. ``clear_caches`` forgets
everything except the trust anchors (benchmarks use it to time cold verifications).

A memo of steps that *prove a signature* (``signed=True``) keeps its new results aside while
a verification defers its signature checks (``sigbatch.py``): they are stored only once every
deferred check has held (:func:`staging`), so nothing taken on trust is ever remembered.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Hashable
from typing import Any, Final, TypeVar

__all__ = ["Memo", "Staged", "clear_caches", "staging"]

_T = TypeVar("_T")
_MISSING: Final = object()
_CLEARABLE: list[Memo] = []
#: The results of signed memos kept aside in this thread's current verification, if it defers.
_STAGED: contextvars.ContextVar[Staged | None] = contextvars.ContextVar("shardguard_memo_staged", default=None)


class Memo:
    """A bounded map from exact input bytes to the result of a pure check (FIFO eviction).

    ``anchor=True``: a memo of the trust store's own checks (a pinned root's self-signature),
    which ``clear_caches`` keeps: they belong to the configuration, not to the evidence.
    ``signed=True``: its steps prove signatures, or are reached only once one is proven; see
    :func:`staging`.
    """

    def __init__(self, maxsize: int = 256, *, anchor: bool = False, signed: bool = False) -> None:
        self._data: dict[Hashable, Any] = {}
        self._lock = threading.Lock()
        self._maxsize = maxsize
        self._signed = signed
        if not anchor:
            _CLEARABLE.append(self)

    def get(self, key: Hashable, compute: Callable[[], _T]) -> _T:
        # A dict read needs no lock; a sentinel, because a raised KeyError costs more than the
        # look-up on every cold call.
        value = self._data.get(key, _MISSING)
        if value is not _MISSING:
            return value  # type: ignore[no-any-return]
        if self._signed:
            staged = _STAGED.get()
            if staged is not None:
                return staged.get(self, key, compute)
        value = compute()
        self._store(key, value)
        return value

    def _store(self, key: Hashable, value: object) -> None:
        with self._lock:
            if len(self._data) >= self._maxsize:
                del self._data[next(iter(self._data))]
            self._data[key] = value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class Staged:
    """Results of signed memos computed while signature checks were deferred: visible to the
    verification that made them (so a step it repeats is not redone), stored by :meth:`commit`."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[tuple[int, Hashable], tuple[Memo, Any]] = {}

    def get(self, memo: Memo, key: Hashable, compute: Callable[[], _T]) -> _T:
        entry = self._entries.get((id(memo), key))
        if entry is not None:
            return entry[1]  # type: ignore[no-any-return]
        value = compute()
        self._entries[(id(memo), key)] = (memo, value)
        return value

    def commit(self) -> None:
        """Every deferred check held: store what was kept aside."""
        for (_, key), (memo, value) in self._entries.items():
            memo._store(key, value)
        self._entries.clear()


class staging:  # lower case: used as a context manager, like contextlib's
    """``with staging() as staged:`` — signed memos of this thread keep new results in
    ``staged`` until ``staged.commit()``; leaving the block without it forgets them."""

    def __init__(self) -> None:
        self.staged = Staged()
        self._token: contextvars.Token[Staged | None] | None = None

    def __enter__(self) -> Staged:
        self._token = _STAGED.set(self.staged)
        return self.staged

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _STAGED.reset(self._token)


def clear_caches() -> None:
    """Forget every memoised check of the evidence (not the trust anchors')."""
    for memo in _CLEARABLE:
        memo.clear()
