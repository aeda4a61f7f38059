"""Live ban registry shared by every DKLs23 session of this process (spec pitfall P3).

A failed OT-extension, multiplication or consistency check must stop *all* sessions with that
counterparty at once, not only future ones: otherwise a cheater runs many sessions in parallel
and learns one secret bit from each. So each check against a peer runs under a per-(share,
peer) lock, re-reads the ban set first, and records a ban before the lock is released.

The persisted ban list lives in the share (:meth:`EcdsaKeyShare.with_bans`, written by the
caller); this registry covers the window until the caller has written it, and sessions that
loaded the share before the ban. It is keyed by the share's setup id, so a refresh (new setup)
starts clean. A lock is the only shared state a party touches; there is no I/O here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

__all__ = ["REGISTRY", "BanRegistry"]


class BanRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bans: dict[tuple[bytes, int], set[int]] = {}
        self._pair_locks: dict[tuple[bytes, int, int], threading.Lock] = {}

    def banned(self, setup_id: bytes, me: int) -> frozenset[int]:
        with self._lock:
            return frozenset(self._bans.get((setup_id, me), ()))

    def among(self, setup_id: bytes, me: int, persisted: Iterable[int], parties: Iterable[int]) -> frozenset[int]:
        """Which of ``parties`` a share (``persisted``: its own ban list) refuses to sign with:
        banned in the share or, since it was loaded, in this process."""
        return (frozenset(persisted) | self.banned(setup_id, me)) & frozenset(parties)

    def add(self, setup_id: bytes, me: int, peers: Iterable[int]) -> None:
        with self._lock:
            self._bans.setdefault((setup_id, me), set()).update(peers)

    @contextmanager
    def checking(self, setup_id: bytes, me: int, peer: int) -> Iterator[None]:
        """Hold the (share, peer) lock for one check: concurrent checks against one peer run
        one after the other, so the first failure bans the peer before the next check."""
        with self._lock:
            lock = self._pair_locks.setdefault((setup_id, me, peer), threading.Lock())
        with lock:
            yield


REGISTRY = BanRegistry()
