"""The node's FROST nonce pairs committed ahead and their publication (node/nonces.py)."""

from __future__ import annotations

import secrets
import threading
from typing import Any

import pytest

from shardguard.channel.identity import NodeKeys, verify_signature
from shardguard.crypto.suites import suite_by_scheme
from shardguard.node import nonces
from shardguard.node.link import CoordinatorRefused
from shardguard.node.nonces import COMMITMENT_CONTEXT, NonceStock, commitment_message


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _stock(posts: list[tuple[str, list[dict[str, str]]]], *, ready: bool = True, fail: Any = None):  # type: ignore[no-untyped-def]
    keys = NodeKeys.generate("node-1")
    clock = Clock()

    def post(scheme: str, wire: list[dict[str, str]]) -> None:
        if fail is not None:
            raise fail
        posts.append((scheme, wire))

    state = {"ready": ready}
    stock = NonceStock(post, node_id="node-1", sign=keys.sign, ready=lambda: state["ready"], clock=clock)
    return stock, keys, clock, state


def test_nothing_is_published_before_the_node_is_ready_then_the_target_is_kept() -> None:
    posts: list[tuple[str, list[dict[str, str]]]] = []
    stock, keys, _, state = _stock(posts, ready=False)
    stock.enable("ed25519")
    assert stock.top_up() == 0 and posts == []
    state["ready"] = True
    assert stock.top_up() == nonces.TARGET
    assert all(len(w) <= nonces.BATCH for _, w in posts) and stock.unused("ed25519") == nonces.TARGET
    g = suite_by_scheme("ed25519").group
    for scheme, wire in posts:
        for c in wire:
            message = commitment_message(
                "node-1", scheme, bytes.fromhex(c["id"]), bytes.fromhex(c["hiding"]), bytes.fromhex(c["binding"])
            )
            assert verify_signature(keys.card().identity_public_key, COMMITMENT_CONTEXT, message, bytes.fromhex(c["signature"]))
            g.decode(bytes.fromhex(c["hiding"]))
    assert stock.top_up() == 0  # full: nothing more until it runs low


def test_a_refused_post_forgets_its_pairs_and_one_of_unknown_fate_keeps_them() -> None:
    refused = CoordinatorRefused("POST", "/v1/nodes/node-1/commitments", 409, "commitments_full")
    stock, _, _, _ = _stock([], fail=refused)
    stock.enable("secp256k1")
    with pytest.raises(CoordinatorRefused):
        stock.top_up()
    assert stock.unused("secp256k1") == 0
    lost = _stock([], fail=ConnectionError("cut"))[0]
    lost.enable("secp256k1")
    with pytest.raises(ConnectionError):
        lost.top_up()
    assert lost.unused("secp256k1") == min(nonces.BATCH, nonces.TARGET)  # the coordinator may hold them
    assert lost.stock("secp256k1") == 0  # but they are not counted as its stock
    assert lost.top_up() == 0  # and it rests before trying again


def test_old_pairs_are_forgotten() -> None:
    stock, _, clock, _ = _stock([])
    stock.enable("bip340")
    stock.top_up()
    clock.now += nonces.KEEP_SECONDS + 1
    stock.top_up()  # expires the old ones, then makes new ones
    entries = stock._schemes["bip340"].pool._entries
    assert len(entries) == nonces.TARGET and all(e[4] == clock.now for e in entries.values())


def test_pairs_the_coordinator_no_longer_hands_out_are_replaced_in_time() -> None:
    """Review finding (MEDIUM): the node counted pairs the coordinator no longer hands out (older
    than its commitment_ttl) and published nothing until they expired. Now a pair is stock only
    until shortly before the coordinator's ttl_seconds, and kept for its keep_seconds."""
    ttl, keep = 120.0, 300.0
    coordinator: list[float] = []
    clock = Clock()

    def post(scheme: str, wire: list[dict[str, str]]) -> dict[str, Any]:
        coordinator.extend([clock.now] * len(wire))
        return {"stored": len(wire), "stock": len(wire), "ttl_seconds": ttl, "keep_seconds": keep}

    keys = NodeKeys.generate("node-1")
    stock = NonceStock(post, node_id="node-1", sign=keys.sign, ready=lambda: True, clock=clock)
    stock.enable("ed25519")
    starved = 0.0
    for _ in range(120):  # ten minutes without a signing, a publisher round every 5 s
        stock.top_up()
        if not any(c >= clock.now - ttl for c in coordinator):
            starved += 5.0
        clock.now += 5.0
    assert starved == 0.0
    pool = stock._schemes["ed25519"].pool
    assert all(e[4] >= clock.now - keep - 5.0 for e in pool._entries.values())  # kept keep_seconds, no longer
    # A new generation every ttl - 30 s, each kept keep_seconds: bounded by that ratio.
    assert len(pool) <= (keep // (ttl - nonces.RENEW_BEFORE) + 2) * nonces.TARGET


def test_a_used_pair_leaves_the_stock() -> None:
    stock, _, _, _ = _stock([])
    stock.enable("ed25519")
    stock.top_up()
    state = stock._schemes["ed25519"]
    used = next(iter(state.published))
    state.published.pop(used)  # what sign() does for the pairs it takes
    assert stock.stock("ed25519") == nonces.TARGET - 1


def test_a_pair_used_before_its_post_is_answered_is_no_stock() -> None:
    """Review finding: the coordinator may hand a pair out (and the node sign with it) before
    the post that published it has been answered; the answer then counted the used pair as
    stock until it went stale, and the node published fewer than it should."""
    stock: NonceStock | None = None
    posts: list[int] = []

    def post(scheme: str, wire: list[dict[str, str]]) -> None:
        assert stock is not None
        posts.append(len(wire))
        state = stock._schemes[scheme]
        first = wire[0]
        g = suite_by_scheme(scheme).group
        with state.lock:  # handed out and used meanwhile
            state.pool.take(bytes.fromhex(first["id"]), g.decode(bytes.fromhex(first["hiding"])),
                            g.decode(bytes.fromhex(first["binding"])))  # fmt: skip

    keys = NodeKeys.generate("node-1")
    stock = NonceStock(post, node_id="node-1", sign=keys.sign, ready=lambda: True, clock=Clock())
    stock.enable("ed25519")
    posted = stock.top_up()
    assert posted == sum(posts) and stock.stock("ed25519") == posted - len(posts)  # one used per post: not stock
    assert stock.stock("ed25519") < nonces.TARGET  # and a round ends when a post adds no stock


def test_a_refused_post_keeps_a_pair_a_task_already_holds() -> None:
    """Review finding: a coordinator handed a just-posted pair to a task, which claimed it and
    wrote its ``signing`` entry, and then answered the post 4xx: the pair was discarded under
    the task, which failed with NONCE_UNKNOWN after its entry (the case ``claimed`` exists for)."""
    stock: NonceStock | None = None
    held: list[bytes] = []

    def post(scheme: str, wire: list[dict[str, str]]) -> None:
        assert stock is not None
        state = stock._schemes[scheme]
        with state.lock:  # a task claims the first pair (NonceStock.claimed) ...
            held.append(bytes.fromhex(wire[0]["id"]))
            state.claimed.add(held[0])
        raise CoordinatorRefused("POST", "/v1/nodes/node-1/commitments", 409, "commitments_full")  # ... then 4xx

    keys = NodeKeys.generate("node-1")
    stock = NonceStock(post, node_id="node-1", sign=keys.sign, ready=lambda: True, clock=Clock())
    stock.enable("ed25519")
    with pytest.raises(CoordinatorRefused):
        stock.top_up()
    state = stock._schemes["ed25519"]
    assert stock.unused("ed25519") == 1 and held[0] in state.pool._entries  # the held pair only
    assert stock.stock("ed25519") == 0  # and it is no stock


def test_the_publisher_loop_survives_errors_and_stops() -> None:
    calls: list[int] = []

    def post(scheme: str, wire: list[dict[str, str]]) -> None:
        calls.append(len(wire))
        raise RuntimeError("coordinator gone")

    keys = NodeKeys.generate("node-1")
    stock = NonceStock(post, node_id="node-1", sign=keys.sign, ready=lambda: True, rng=secrets.token_bytes)
    stock.enable("ed25519")
    stop = threading.Event()
    t = threading.Thread(target=stock.run, args=(stop,))
    t.start()
    stock.wake()
    stop.wait(0.3)
    stop.set()
    stock.wake()
    t.join(10)
    assert not t.is_alive() and calls
