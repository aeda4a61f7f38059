"""FROST nonce pairs this node commits ahead, kept stocked at the coordinator (docs/NODE.md,
"Signing in one step"; coordinator API.md §1.13).

For each FROST scheme the node has signed with in this process, a
:class:`~shardguard.protocols.frost.NoncePool` holds nonce pairs made ahead, in memory only,
and a background loop keeps about :data:`TARGET` of them published: whenever fewer remain it
makes more and posts their public commitments. A precommitted signing takes its pair out of
the pool (:meth:`NonceStock.sign`), so each is used once; a restart leaves none (the
coordinator drops a restarted node's commitments when it registers its new identity key).

Each commitment is signed with the node's identity key (:func:`commitment_message`, context
:data:`COMMITMENT_CONTEXT`) and every co-signer checks that signature against the attested
identity key of the node it names. Without it, a coordinator holding a share stolen from some
node (outside its enclave) could make up that node's commitments, know their nonces, and have
the honest signers complete a signature with it; with it, it needs that node's enclave, as the
two-round protocol's attested channels require.

Publishing waits until ``ready()``: the node's own state has been confirmed by its peers since
it started (the rollback witness, docs/NODE.md). A precommitted signing exchanges no witness
notes, so a node only offers it once that check has passed in a two-round task.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from shardguard.crypto.group import Rng
from shardguard.crypto.suites import suite_by_scheme
from shardguard.protocols.frost import (
    NoncePool,
    PrecommittedItem,
    PrecommittedShare,
    PublishedCommitment,
    sign_precommitted,
)
from shardguard.protocols.keys import KeyShare

__all__ = ["BATCH", "COMMITMENT_CONTEXT", "KEEP_SECONDS", "LOW", "TARGET", "NonceStock", "commitment_message"]

log = logging.getLogger("shardguard.node")

#: Unused pairs per scheme the node keeps published; it posts more when fewer than ``LOW``
#: remain, at most ``BATCH`` per post (the coordinator's limit per request).
TARGET = 512
LOW = 384
BATCH = 256
#: Pairs are made in chunks of this many, the pool's lock held only while one chunk is made
#: (a signing waiting for the lock waits that long at most).
CHUNK = 32
#: A pair is forgotten this long after it was made. The coordinator hands out commitments only
#: while younger than its ``commitment_ttl`` (300 s by default), to jobs that run 120 s at most.
KEEP_SECONDS = 900.0
#: Pause after a refused or failed post.
BACKOFF = 5.0
#: The identity-key signature context of a published commitment (channel.identity.NodeKeys.sign).
COMMITMENT_CONTEXT = b"shardguard/frost-commitment/v1"


def commitment_message(node_id: str, scheme: str, commitment_id: bytes, hiding: bytes, binding: bytes) -> bytes:
    """What a node signs of one commitment it publishes: whose, for which scheme, its id and
    both points as encoded (node ids and schemes hold no NUL; the rest has fixed lengths)."""
    return b"\x00".join((node_id.encode("ascii"), scheme.encode("ascii"), commitment_id + hiding + binding))



class NonceStock:
    """The node's nonce pools, one per FROST scheme it signs with, and their publication."""

    def __init__(
        self,
        post: Callable[[str, list[dict[str, str]]], Any],
        *,
        node_id: str,
        sign: Callable[[bytes, bytes], bytes],
        ready: Callable[[], bool],
        rng: Rng = secrets.token_bytes,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._post = post
        self._node_id = node_id
        self._sign = sign
        self._ready = ready
        self._rng = rng
        self._clock = clock
        self._pools: dict[str, tuple[NoncePool, threading.Lock]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._paused_until: dict[str, float] = {}

    def enable(self, scheme: str) -> None:
        """Keep nonces for ``scheme`` stocked from now on (this node signs with it)."""
        with self._lock:
            if scheme not in self._pools:
                self._pools[scheme] = (NoncePool(suite_by_scheme(scheme), self._rng, capacity=4 * TARGET), threading.Lock())
                self._wake.set()

    def wake(self) -> None:
        """Look at the pools now (e.g. ``ready()`` just became true)."""
        self._wake.set()

    def unused(self, scheme: str) -> int:
        entry = self._pools.get(scheme)
        return len(entry[0]) if entry is not None else 0

    def check(self, key_share: KeyShare, items: Sequence[PrecommittedItem]) -> None:
        """Raise :class:`~shardguard.protocols.frost.NonceError` unless every item names one of
        our pairs, unused, with its points: a request we can sign, checked before it is logged."""
        entry = self._pools.get(key_share.public.suite.scheme) or self._empty(key_share.public.suite.scheme)
        pool, lock = entry
        me = key_share.identifier
        with lock:
            for item in items:
                own = next(c for c in item.commitments if c[0] == me)
                pool.check(item.commitment_id, own[1], own[2])

    def sign(self, key_share: KeyShare, signers: Sequence[int], items: Sequence[PrecommittedItem]) -> list[PrecommittedShare]:
        """:func:`~shardguard.protocols.frost.sign_precommitted` with this node's pool for the
        key's scheme (its nonces taken for good), then a wake-up for the publisher."""
        entry = self._pools.get(key_share.public.suite.scheme)
        if entry is None:
            entry = self._empty(key_share.public.suite.scheme)
        pool, lock = entry
        try:
            with lock:
                return sign_precommitted(key_share, signers=signers, items=items, pool=pool)
        finally:
            self._wake.set()

    def _empty(self, scheme: str) -> tuple[NoncePool, threading.Lock]:
        # No pool: nothing published in this process, so every commitment named is unknown.
        self.enable(scheme)
        return self._pools[scheme]

    def run(self, stop: threading.Event) -> None:
        """The publisher: until ``stop``, top each pool up whenever it runs low (and forget what
        is too old). Survives every error: a post that fails forgets its pairs and waits."""
        while not stop.is_set():
            try:
                self.top_up()
            except Exception as e:  # never stop stocking; the next round tries again
                log.warning("nonce commitments: %s: %s", type(e).__name__, e)
                stop.wait(BACKOFF)
            self._wake.wait(1.0)
            self._wake.clear()

    def top_up(self) -> int:
        """One round of the publisher; how many commitments it posted."""
        posted = 0
        now = self._clock()
        for scheme, (pool, lock) in list(self._pools.items()):
            with lock:
                pool.expire(now - KEEP_SECONDS)
            if not self._ready() or self._paused_until.get(scheme, 0.0) > now or len(pool) >= LOW:
                continue
            while len(pool) < TARGET:
                want = min(BATCH, TARGET - len(pool))
                made: list[PublishedCommitment] = []
                while len(made) < want:
                    with lock:
                        hedge = time.time_ns().to_bytes(8, "big")  # differs in a clone made by a snapshot
                        made += pool.commit(min(CHUNK, want - len(made)), now=now, hedge=hedge)
                g = pool.suite.group
                wire = []
                for c in made:
                    hiding, binding = g.encode(c.hiding), g.encode(c.binding)
                    signature = self._sign(COMMITMENT_CONTEXT, commitment_message(self._node_id, scheme, c.id, hiding, binding))
                    wire.append(
                        {"id": c.id.hex(), "hiding": hiding.hex(), "binding": binding.hex(), "signature": signature.hex()}
                    )
                try:
                    self._post(scheme, wire)
                except Exception as e:
                    status = getattr(e, "status", None)
                    if isinstance(status, int) and 400 <= status < 500:
                        # Refused, so never handed out: forgotten now. (A post whose fate is
                        # unknown keeps its pairs: the coordinator may hand them out.)
                        with lock:
                            pool.discard([c.id for c in made])
                    self._paused_until[scheme] = now + BACKOFF
                    raise
                posted += len(made)
        return posted
