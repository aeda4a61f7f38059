"""Test harness for the sans-I/O protocol parties.

* :class:`DeterministicRng` — SHA-256 counter-mode bytes, seeded per test (``rng`` fixture).
* ``suite`` — parametrized over every ciphersuite (ids = scheme names).
* :class:`Router` — delivers messages by hand. A ``hook(to, message)`` sees every delivery
  once, when it is sent, and returns the deliveries to make instead: ``[]`` drops it, two
  entries duplicate it, another recipient redirects it, a new ``Message`` mutates it.
  Outcomes are recorded per recipient (``aborts``, ``rejected``) rather than raised.
* Builders for DKG, signing, refresh and repair parties, and assertion helpers that also check
  no secret value ever appears in an exception's text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pytest

from shardguard.crypto.suites import SUITES
from shardguard.protocols.dealer import trusted_dealer_keygen
from shardguard.protocols.dkg import Dkg, DkgSecretShare
from shardguard.protocols.errors import AbortReason, MessageRejected, ProtocolAbort, UsageError
from shardguard.protocols.frost import FrostSigner
from shardguard.protocols.keys import KeyShare
from shardguard.protocols.message import Message
from shardguard.protocols.party import Party, PartyState
from shardguard.protocols.refresh import Refresh
from shardguard.protocols.repair import RepairDelta, RepairHelper, RepairSigma, RepairTarget
from shardguard.protocols.wire import Payload, WireError, decode_payload, encode_payload

SUITE_LIST = list(SUITES.values())
SUITE_IDS = [s.scheme for s in SUITE_LIST]

INSTANCE = b"\x42" * 32

Delivery = tuple[int, Message]
Hook = Callable[[int, Message], Iterable[Delivery]]


# -- randomness -----------------------------------------------------------------------------------
class DeterministicRng:
    """``rng(n) -> n bytes``: SHA-256(seed ‖ counter) blocks. Never reuses a block."""

    def __init__(self, seed: bytes) -> None:
        self.seed = hashlib.sha256(b"shardguard-tests/rng\x00" + seed).digest()
        self.counter = 0

    def __call__(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            out += hashlib.sha256(self.seed + self.counter.to_bytes(8, "big")).digest()
            self.counter += 1
        return bytes(out[:n])

    def fork(self, label: str | bytes) -> DeterministicRng:
        """An independent stream (e.g. for an equivocating twin of a party)."""
        lab = label.encode() if isinstance(label, str) else label
        return DeterministicRng(self.seed + b"/" + lab)


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> DeterministicRng:
    return DeterministicRng(request.node.nodeid.encode())


@pytest.fixture(params=SUITE_LIST, ids=SUITE_IDS)
def suite(request: pytest.FixtureRequest) -> Any:
    return request.param


# -- router ---------------------------------------------------------------------------------------
SECRET_TYPES: tuple[tuple[type[Payload], str], ...] = ((DkgSecretShare, "share"), (RepairDelta, "delta"), (RepairSigma, "sigma"))


class Router:
    """Hand-driven in-memory network for a set of parties."""

    def __init__(self, parties: Mapping[int, Party[Any]], hook: Hook | None = None) -> None:
        self.parties: dict[int, Party[Any]] = dict(parties)
        self.hook = hook
        self.queue: deque[Delivery] = deque()
        self.sent: list[Message] = []
        self.delivered: list[Delivery] = []
        self.undeliverable: list[Delivery] = []
        self.rejected: list[tuple[int, MessageRejected]] = []
        self.aborts: dict[int, ProtocolAbort] = {}
        self.secrets: set[int] = set()
        suites = {p.suite for p in self.parties.values()}
        self.suite = suites.pop() if len(suites) == 1 else None
        for p in self.parties.values():
            self._note_party_secrets(p)

    # sending
    def start(self, ids: Iterable[int] | None = None) -> Router:
        for i in self.parties if ids is None else ids:
            self.post(self.parties[i].start())
            self._note_party_secrets(self.parties[i])
        return self

    def targets(self, m: Message) -> list[int]:
        return [i for i in self.parties if i != m.sender] if m.is_broadcast else [m.recipient]

    def post(self, messages: Iterable[Message]) -> None:
        for m in messages:
            self.sent.append(m)
            self._note_message_secrets(m)
            for to in self.targets(m):
                self.queue.extend([(to, m)] if self.hook is None else self.hook(to, m))

    def inject(self, to: int, m: Message) -> None:
        """Queue a delivery that bypasses the hook."""
        self._note_message_secrets(m)
        self.queue.append((to, m))

    # delivering
    def deliver(self, to: int, m: Message) -> None:
        party = self.parties.get(to)
        if party is None or party.state is PartyState.ABORTED:
            self.undeliverable.append((to, m))
            return
        self.delivered.append((to, m))
        try:
            out = party.receive(m)
        except MessageRejected as e:
            self.rejected.append((to, e))
            return
        except ProtocolAbort as e:
            self.aborts[to] = e
            return
        self.post(out)
        # After every step, not only when done: a party that never finishes (a DKG waiting
        # for a round-3 confirmation) still holds secrets its later errors must not show.
        self._note_party_secrets(party)

    def step(self) -> bool:
        if not self.queue:
            return False
        self.deliver(*self.queue.popleft())
        return True

    def run(self, max_steps: int = 100_000) -> Router:
        for _ in range(max_steps):
            if not self.step():
                return self
        raise AssertionError("router did not quiesce")

    # outcomes
    def results(self) -> dict[int, Any]:
        return {i: p.result for i, p in self.parties.items() if p.done}

    def rejections(self, to: int | None = None) -> list[MessageRejected]:
        return [e for i, e in self.rejected if to is None or i == to]

    def errors(self) -> list[ProtocolAbort]:
        return [*self.aborts.values(), *(e for _, e in self.rejected)]

    # secrets seen by the network (to check that no error text ever shows one)
    def _note_party_secrets(self, p: Party[Any]) -> None:
        # _pending: the DKG/refresh key share held back until every round-3 confirmation is in.
        for attr in ("_key", "_old", "_pending"):
            ks = getattr(p, attr, None)
            if isinstance(ks, KeyShare):
                self.secrets.add(ks.signing_share)
        if p.done and isinstance(p._result, KeyShare):
            self.secrets.add(p._result.signing_share)
        for attr in ("_own_share", "_own_delta"):
            own = getattr(p, attr, 0)
            if own:
                self.secrets.add(own)
        nonces = getattr(p, "_nonces", None)
        if nonces:
            self.secrets.update(nonces)

    def _note_message_secrets(self, m: Message) -> None:
        if m.is_broadcast or self.suite is None:
            return
        for typ, attr in SECRET_TYPES:
            with contextlib.suppress(WireError):
                self.secrets.add(getattr(decode_payload(self.suite, m.payload, typ), attr))


@pytest.fixture
def net() -> Any:
    """``net(parties, hook=None) -> Router``; on teardown every recorded error is checked for
    secret values (key shares, DKG/repair shares that crossed the network)."""
    routers: list[Router] = []

    def make(parties: Mapping[int, Party[Any]], hook: Hook | None = None) -> Router:
        r = Router(parties, hook)
        routers.append(r)
        return r

    yield make
    for r in routers:
        for e in r.errors():
            assert_no_secrets(e, r.secrets, r.suite)


# -- secrets in error text ------------------------------------------------------------------------
def secret_renderings(value: int, suite: Any = None) -> list[str]:
    """Ways a scalar could leak into text: both byte orders in hex, and decimal."""
    out = [str(value)]
    for order in ("big", "little"):
        h = value.to_bytes(32, order).hex()  # type: ignore[arg-type]
        out += [h, h.upper()]
    if suite is not None:
        out.append(suite.group.scalar_encode(value).hex())
    return [s for s in out if len(s) >= 16]


def assert_no_secrets(exc: BaseException, secrets: Iterable[int], suite: Any = None) -> None:
    texts = [str(exc), repr(exc), repr(exc.args), str(getattr(exc, "field", ""))]
    for v in secrets:
        if not v:
            continue
        for s in secret_renderings(v, suite):
            for t in texts:
                assert s not in t, f"secret value rendered in {type(exc).__name__}: {t!r}"


# -- assertions -----------------------------------------------------------------------------------
def assert_abort(
    exc: BaseException | None,
    reason: AbortReason,
    culprits: Iterable[int],
    *,
    field: str | None = None,
    secrets: Iterable[int] = (),
) -> ProtocolAbort:
    """A fatal abort (exactly ProtocolAbort, not MessageRejected) with this reason and culprit set."""
    assert exc is not None, f"expected ProtocolAbort {reason.name}, got none"
    assert type(exc) is ProtocolAbort, f"expected ProtocolAbort, got {type(exc).__name__}: {exc}"
    assert exc.reason is reason, f"expected {reason.name}, got {exc.reason.name} ({exc})"
    assert exc.culprits == frozenset(culprits), f"culprits {sorted(exc.culprits)} != {sorted(culprits)}"
    if exc.culprits:
        assert reason.blames
    if field is not None:
        assert exc.field == field, f"field {exc.field!r} != {field!r}"
    assert_no_secrets(exc, secrets)
    return exc


def assert_rejected(exc: BaseException | None, reason: AbortReason) -> MessageRejected:
    """A non-fatal rejection: MessageRejected, no culprit named."""
    assert exc is not None, f"expected MessageRejected {reason.name}, got none"
    assert type(exc) is MessageRejected, f"expected MessageRejected, got {type(exc).__name__}: {exc}"
    assert exc.reason is reason, f"expected {reason.name}, got {exc.reason.name}"
    assert exc.culprits == frozenset()
    return exc


def assert_dead(party: Party[Any]) -> None:
    """An aborted party: no result, and it refuses any further use."""
    assert party.state is PartyState.ABORTED
    assert not party.done
    with pytest.raises(UsageError):
        _ = party.result
    probe = Message(session_id=party.session_id, round=1, sender=party.peers[0], recipient=0, payload=b"")
    with pytest.raises(UsageError):
        party.receive(probe)


def assert_no_result(party: Party[Any]) -> None:
    assert not party.done
    with pytest.raises(UsageError):
        _ = party.result


# -- payload surgery ------------------------------------------------------------------------------
def payload_of(suite: Any, m: Message, typ: type[Any]) -> Any:
    return decode_payload(suite, m.payload, typ)


def with_payload(m: Message, payload: Payload | bytes) -> Message:
    raw = payload if isinstance(payload, bytes) else encode_payload(payload)
    return dataclasses.replace(m, payload=raw)


def mutate(pred: Callable[[int, Message], bool], change: Callable[[int, Message], Message | None]) -> Hook:
    """Hook: deliveries matching ``pred`` become ``change(to, m)`` (None drops them)."""

    def hook(to: int, m: Message) -> list[Delivery]:
        if not pred(to, m):
            return [(to, m)]
        new = change(to, m)
        return [] if new is None else [(to, new)]

    return hook


def from_party(
    sender: int, round: int | None = None, *, broadcast: bool | None = None, to: int | None = None
) -> Callable[..., bool]:
    def pred(recipient: int, m: Message) -> bool:
        return (
            m.sender == sender
            and (round is None or m.round == round)
            and (broadcast is None or m.is_broadcast == broadcast)
            and (to is None or recipient == to)
        )

    return pred


# -- builders -------------------------------------------------------------------------------------
def dkg_parties(
    suite: Any, ids: Sequence[int], threshold: int, rng: DeterministicRng, *, instance: bytes = INSTANCE
) -> dict[int, Dkg]:
    return {
        i: Dkg(suite, identifier=i, participants=ids, threshold=threshold, instance=instance, rng=rng.fork(f"dkg{i}"))
        for i in ids
    }


def dealer_shares(suite: Any, n: int, threshold: int, rng: DeterministicRng) -> dict[int, KeyShare]:
    shares = trusted_dealer_keygen(suite, None, threshold, list(range(1, n + 1)), rng=rng.fork("dealer"))
    return {s.identifier: s for s in shares}


def signer_parties(
    shares: Mapping[int, KeyShare],
    signers: Sequence[int],
    message: bytes,
    rng: DeterministicRng,
    *,
    instance: bytes = INSTANCE,
    **kw: Any,
) -> dict[int, FrostSigner]:
    return {
        i: FrostSigner(shares[i], signers=signers, message=message, instance=instance, rng=rng.fork(f"sign{i}"), **kw)
        for i in signers
    }


def refresh_parties(
    shares: Mapping[int, KeyShare], ids: Sequence[int], rng: DeterministicRng, *, instance: bytes = INSTANCE
) -> dict[int, Refresh]:
    return {i: Refresh(shares[i], participants=ids, instance=instance, rng=rng.fork(f"refresh{i}")) for i in ids}


def repair_parties(
    shares: Mapping[int, KeyShare], helpers: Sequence[int], lost: int, rng: DeterministicRng, *, instance: bytes = INSTANCE
) -> dict[int, Party[Any]]:
    parties: dict[int, Party[Any]] = {
        i: RepairHelper(shares[i], helpers=helpers, lost=lost, instance=instance, rng=rng.fork(f"repair{i}")) for i in helpers
    }
    parties[lost] = RepairTarget(shares[helpers[0]].public, identifier=lost, helpers=helpers, instance=instance)
    return parties


def run_honest(parties: Mapping[int, Party[Any]]) -> dict[int, Any]:
    r = Router(parties).start().run()
    assert not r.aborts and not r.rejected, (r.aborts, r.rejected)
    assert all(p.done for p in parties.values())
    return r.results()


@pytest.fixture
def honest() -> Callable[[Mapping[int, Party[Any]]], dict[int, Any]]:
    return run_honest


# -- hostile point encodings ----------------------------------------------------------------------
_SECP_P = 2**256 - 2**32 - 977
_ED_P = 2**255 - 19
_ED_D = -121665 * pow(121666, -1, _ED_P) % _ED_P
_ED_SMALL_ORDER = {
    "small_order_2": "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "small_order_4": "0000000000000000000000000000000000000000000000000000000000000000",
    "small_order_4_neg": "0000000000000000000000000000000000000000000000000000000000000080",
    "small_order_8": "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "small_order_8_b": "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "identity_negzero": "0100000000000000000000000000000000000000000000000000000000000080",
}


def _secp_off_curve() -> bytes:
    x = 1
    while pow((x**3 + 7) % _SECP_P, (_SECP_P - 1) // 2, _SECP_P) == 1:
        x += 1
    return b"\x02" + x.to_bytes(32, "big")


def _ed_off_curve() -> bytes:
    y = 2
    while True:
        u = (y * y - 1) % _ED_P
        v = (_ED_D * y * y + 1) % _ED_P
        if pow(u * pow(v, -1, _ED_P) % _ED_P, (_ED_P - 1) // 2, _ED_P) == _ED_P - 1:
            return y.to_bytes(32, "little")
        y += 1


def bad_points(suite: Any) -> dict[str, bytes]:
    """Encodings every suite must refuse as a group element (name -> bytes)."""
    g = suite.group
    valid = g.encode(g.generator())
    out = {"wrong_length_short": valid[:-1], "wrong_length_long": valid + b"\x00"}
    if g.name == "ed25519":
        from nacl import bindings

        out["off_curve"] = _ed_off_curve()
        out["identity"] = b"\x01" + b"\x00" * 31
        out["non_canonical_y_eq_p"] = (_ED_P).to_bytes(32, "little")
        out["non_canonical_y_p_plus_1"] = (_ED_P + 1).to_bytes(32, "little")
        out.update({k: bytes.fromhex(v) for k, v in _ED_SMALL_ORDER.items()})
        out["mixed_order"] = bindings.crypto_core_ed25519_add(valid, bytes.fromhex(_ED_SMALL_ORDER["small_order_8"]))
    else:
        out["off_curve"] = _secp_off_curve()
        out["identity"] = b"\x00" * 33
        out["non_canonical_x_ge_p"] = b"\x02" + (_SECP_P + 1).to_bytes(32, "big")
        out["bad_prefix_04"] = b"\x04" + valid[1:]
        out["bad_prefix_00"] = b"\x00" + valid[1:]
    return out
