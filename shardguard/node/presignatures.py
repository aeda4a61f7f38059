"""DKLs23 pre-signatures this node made with its co-signers, each waiting for one digest
(docs/NODE.md, "ECDSA in one step"; coordinator API.md §1.15; DKLs23 spec §4.1, P9).

A ``presign`` task runs rounds 1–3 of DKLs23 with the job's signers and leaves here one
:class:`~shardguard.protocols.dkls23.Presignature`; a later ``sign`` task naming it takes it out
(:meth:`PresignaturePool.take`) and answers with its share in one step. Kept **in memory
only**: a restarted node holds none (the coordinator hands out only those made by the signers'
current processes), and no copy of the state directory can bring a used one back — which a
sealed file could, and a pre-signature used for two digests gives the key away.

Taking is atomic and final: the entry leaves the pool before anything is checked, so two tasks
naming one pre-signature (a coordinator's mistake, or a hostile one) get it at most once.
Entries go when a refresh or repair of their key starts (:meth:`drop`), when a key holds more
than :data:`PER_KEY` (the oldest first), and after :data:`KEEP_SECONDS`.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

from shardguard.node.tasks import OneStepUnavailable
from shardguard.protocols.dkls23 import Presignature

__all__ = ["KEEP_SECONDS", "PER_KEY", "PresignaturePool"]

#: Most unused pre-signatures kept per key (all signer sets together); the coordinator keeps
#: far fewer in stock per signer set (``presign_stock``).
PER_KEY = 256
#: How long one is kept: the coordinator hands one out for ``presign_ttl`` (an hour by default)
#: and a signing may run its job timeout more.
KEEP_SECONDS = 3600.0 + 600.0


class PresignaturePool:
    """Unused pre-signatures by key id and pre-signature id. Thread-safe."""

    def __init__(
        self, *, per_key: int = PER_KEY, keep_seconds: float = KEEP_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._per_key = per_key
        self._keep = keep_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, collections.OrderedDict[bytes, tuple[float, Presignature]]] = {}

    def add(self, key_id: str, presignature: Presignature) -> None:
        with self._lock:
            now = self._clock()
            entries = self._keys.setdefault(key_id, collections.OrderedDict())
            entries[presignature.presignature_id] = (now, presignature)
            while len(entries) > self._per_key or now - next(iter(entries.values()))[0] > self._keep:
                entries.popitem(last=False)

    def take(self, key_id: str, presignature_id: bytes) -> Presignature:
        """The pre-signature, out of the pool for good; OneStepUnavailable if this process holds
        no unused one of that id for the key (never made here, used, dropped or expired)."""
        with self._lock:
            entries = self._keys.get(key_id)
            got = entries.pop(presignature_id, None) if entries is not None else None
        if got is None or self._clock() - got[0] > self._keep:
            raise OneStepUnavailable("this node holds no unused pre-signature of that id for the key", "presignature.id")
        return got[1]

    def drop(self, key_id: str) -> int:
        """Forget every pre-signature of ``key_id`` (its shares are about to change)."""
        with self._lock:
            return len(self._keys.pop(key_id, {}))

    def count(self, key_id: str | None = None) -> int:
        with self._lock:
            if key_id is not None:
                return len(self._keys.get(key_id, {}))
            return sum(len(e) for e in self._keys.values())
