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

import contextlib
import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from shardguard.crypto.group import Rng
from shardguard.crypto.suites import suite_by_scheme
from shardguard.protocols.frost import (
    NonceError,
    NoncePool,
    PrecommittedItem,
    PrecommittedShare,
    PublishedCommitment,
    sign_precommitted,
)
from shardguard.protocols.keys import KeyShare

__all__ = ["BATCH", "COMMITMENT_CONTEXT", "KEEP_SECONDS", "LOW", "TARGET", "TTL_SECONDS", "NonceStock", "commitment_message"]

log = logging.getLogger("shardguard.node")

#: Unused pairs per scheme the node keeps published; it posts more when fewer than ``LOW``
#: remain, at most ``BATCH`` per post (the coordinator's limit per request).
TARGET = 512
LOW = 384
BATCH = 256
#: Pairs are made in chunks of this many, the pool's lock held only while one chunk is made
#: (a signing waiting for the lock waits that long at most).
CHUNK = 32
#: How long the coordinator hands a commitment out, and how long after it was made a signing
#: may still name it, until its answers say (``ttl_seconds``, ``keep_seconds``: its
#: ``commitment_ttl`` and that plus its job timeout and a minute).
TTL_SECONDS = 300.0
KEEP_SECONDS = 480.0
#: A published pair stops counting as stock this long before the coordinator stops handing it
#: out, so that new ones are there in time.
RENEW_BEFORE = 30.0
#: Pause after a refused or failed post.
BACKOFF = 5.0
#: The identity-key signature context of a published commitment (channel.identity.NodeKeys.sign).
COMMITMENT_CONTEXT = b"shardguard/frost-commitment/v1"


def commitment_message(node_id: str, scheme: str, commitment_id: bytes, hiding: bytes, binding: bytes) -> bytes:
    """What a node signs of one commitment it publishes: whose, for which scheme, its id and
    both points as encoded (node ids and schemes hold no NUL; the rest has fixed lengths)."""
    return b"\x00".join((node_id.encode("ascii"), scheme.encode("ascii"), commitment_id + hiding + binding))


@dataclasses.dataclass
class _Scheme:
    """One scheme's pool and what the coordinator has of it."""

    pool: NoncePool
    lock: threading.Lock
    #: Pairs the coordinator confirmed it stores (id -> when made), until used or too old to be
    #: handed out: the stock. Pairs of a post whose fate is unknown stay in the pool (they may
    #: be named) but are not stock: the node publishes others.
    published: dict[bytes, float] = dataclasses.field(default_factory=dict)
    #: Pairs a task has checked and is about to sign with (:meth:`NonceStock.claimed`).
    claimed: set[bytes] = dataclasses.field(default_factory=set)
    ttl: float = TTL_SECONDS
    keep: float = KEEP_SECONDS
    paused_until: float = 0.0


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
        self._schemes: dict[str, _Scheme] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def enable(self, scheme: str) -> None:
        """Keep nonces for ``scheme`` stocked from now on (this node signs with it)."""
        self._state(scheme)

    def _state(self, scheme: str) -> _Scheme:
        with self._lock:
            state = self._schemes.get(scheme)
            if state is None:
                # Room for the generations a coordinator's times ask for (one per ttl, each kept
                # keep_seconds); past it a round fails with a warning until pairs expire.
                pool = NoncePool(suite_by_scheme(scheme), self._rng, capacity=8 * TARGET)
                state = self._schemes[scheme] = _Scheme(pool, threading.Lock())
                self._wake.set()
            return state

    def wake(self) -> None:
        """Look at the pools now (e.g. ``ready()`` just became true)."""
        self._wake.set()

    def unused(self, scheme: str) -> int:
        state = self._schemes.get(scheme)
        return len(state.pool) if state is not None else 0

    def stock(self, scheme: str) -> int:
        """Pairs the coordinator stores and may still hand out, as far as this node knows."""
        state = self._schemes.get(scheme)
        return len(state.published) if state is not None else 0

    @contextlib.contextmanager
    def claimed(self, key_share: KeyShare, items: Sequence[PrecommittedItem]) -> Iterator[None]:
        """Raise :class:`~shardguard.protocols.frost.NonceError` unless every item names one of
        our pairs, unused, with its points — a request we can sign, checked before it is logged
        — and hold those pairs for this task until the block ends: another task naming one of
        them meanwhile is refused here, before its entry (review finding: both passed the
        check, both logged a ``signing`` entry, and the second then failed to sign), and the
        publisher expires none of them in between."""
        state = self._state(key_share.public.suite.scheme)
        me = key_share.identifier
        ids = [item.commitment_id for item in items]
        with state.lock:
            for item in items:
                own = next(c for c in item.commitments if c[0] == me)
                state.pool.check(item.commitment_id, own[1], own[2])
                if item.commitment_id in state.claimed:
                    raise NonceError("unknown", item.commitment_id)  # another task's now
            state.claimed.update(ids)
        try:
            yield
        finally:
            with state.lock:
                state.claimed.difference_update(ids)

    def sign(self, key_share: KeyShare, signers: Sequence[int], items: Sequence[PrecommittedItem]) -> list[PrecommittedShare]:
        """:func:`~shardguard.protocols.frost.sign_precommitted` with this node's pool for the
        key's scheme (its nonces taken for good), then a wake-up for the publisher."""
        state = self._state(key_share.public.suite.scheme)
        try:
            with state.lock:
                out = sign_precommitted(key_share, signers=signers, items=items, pool=state.pool)
                for item in items:  # used: no longer stock (a refused request left them stock)
                    state.published.pop(item.commitment_id, None)
                return out
        finally:
            self._wake.set()

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
        for scheme, state in list(self._schemes.items()):
            with state.lock:
                if not state.claimed:  # a pair a task holds is never expired under it
                    state.pool.expire(now - state.keep)
                stale = now - max(0.0, state.ttl - RENEW_BEFORE)
                # Oldest first (published in time order): only the stale ones are looked at, as
                # this runs after every signing.
                while state.published:
                    cid, made = next(iter(state.published.items()))
                    if made >= stale:
                        break
                    del state.published[cid]
            if not self._ready() or state.paused_until > now or len(state.published) >= LOW:
                continue
            while len(state.published) < TARGET:
                before = len(state.published)
                posted += self._publish(scheme, state, min(BATCH, TARGET - len(state.published)), now)
                if len(state.published) <= before:  # all used before the answer came: next round
                    break
        return posted

    def _publish(self, scheme: str, state: _Scheme, want: int, now: float) -> int:
        made: list[PublishedCommitment] = []
        while len(made) < want:
            with state.lock:
                hedge = time.time_ns().to_bytes(8, "big")  # differs in a clone made by a snapshot
                made += state.pool.commit(min(CHUNK, want - len(made)), now=now, hedge=hedge)
        g = state.pool.suite.group
        wire = []
        for c in made:
            hiding, binding = g.encode(c.hiding), g.encode(c.binding)
            signature = self._sign(COMMITMENT_CONTEXT, commitment_message(self._node_id, scheme, c.id, hiding, binding))
            wire.append({"id": c.id.hex(), "hiding": hiding.hex(), "binding": binding.hex(), "signature": signature.hex()})
        try:
            answer = self._post(scheme, wire)
        except Exception as e:
            status = getattr(e, "status", None)
            if isinstance(status, int) and 400 <= status < 500:
                # Refused, so never handed out: forgotten now — except one a task holds
                # already (a coordinator that handed it out and then refused the post: review
                # finding; the task signs with it or it expires). A post whose fate is unknown
                # keeps its pairs, uncounted: the coordinator may hand them out.
                with state.lock:
                    state.pool.discard([c.id for c in made if c.id not in state.claimed])
            state.paused_until = now + BACKOFF
            raise
        with state.lock:
            for c in made:
                try:  # one handed out and used before this answer came is no stock (review finding)
                    state.pool.check(c.id, c.hiding, c.binding)
                except NonceError:
                    continue
                state.published[c.id] = now
            if isinstance(answer, dict):
                ttl, keep = answer.get("ttl_seconds"), answer.get("keep_seconds")
                # Within sane bounds whatever the coordinator says: the pool's capacity bounds
                # what it holds anyway.
                if isinstance(ttl, int | float) and not isinstance(ttl, bool) and 1 <= ttl <= 3600:
                    state.ttl = float(ttl)
                if isinstance(keep, int | float) and not isinstance(keep, bool) and state.ttl <= keep <= 7200:
                    state.keep = float(keep)
        return len(made)
