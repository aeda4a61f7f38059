"""The sans-I/O party base class (ARCHITECTURE §4, STYLE-ANCHORS 3–4).

A party never does I/O, reads no clock and draws randomness only from the injected ``rng``::

    party = SomeProtocol(..., rng=secrets.token_bytes)
    outgoing = party.start()              # list[Message]
    outgoing = party.receive(message)     # list[Message]; raises ProtocolAbort
    party.result                          # set once done

What each round accepts is data: ``EXPECTS`` maps ``(round, payload type)`` to whether it
comes by broadcast. Envelope checks (session, sender, recipient, round, replay) run here, once,
for every protocol; the subclass sees only decoded, validated payloads.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import hmac
from collections.abc import Iterator, Mapping, Sequence
from typing import ClassVar, Generic, TypeVar

from shardguard.crypto.ciphersuite import Ciphersuite
from shardguard.protocols.errors import AbortReason, MessageRejected, ProtocolAbort, UsageError
from shardguard.protocols.message import BROADCAST, Message, check_party_id
from shardguard.protocols.wire import Payload, WireError, decode_payload, encode_payload

__all__ = ["Party", "PartyState"]

R = TypeVar("R")


class PartyState(enum.Enum):
    READY = "ready"
    RUNNING = "running"
    DONE = "done"
    ABORTED = "aborted"


class Party(Generic[R]):
    """Base of every protocol party."""

    PROTOCOL: ClassVar[str]
    #: ``(round, payload type) -> broadcast?``; anything else is refused.
    EXPECTS: ClassVar[dict[tuple[int, type[Payload]], bool]]

    def __init__(self, suite: Ciphersuite, me: int, peers: Sequence[int], session_id: bytes) -> None:
        check_party_id(me, "own id")
        for p in peers:
            check_party_id(p, "peer id")
        if me in peers or len(set(peers)) != len(peers):
            raise UsageError("peer ids must be distinct and must not include our own id")
        self.suite = suite
        self.me = me
        self.peers = tuple(sorted(peers))
        self.session_id = session_id
        self.state = PartyState.READY
        self.round = 0
        # (round, payload type) -> sender -> payload
        self._inbox: dict[tuple[int, type[Payload]], dict[int, Payload]] = {}
        # Digest of every admitted payload (never the payload: it may hold a secret share).
        self._seen: dict[tuple[int, type[Payload], int], bytes] = {}
        self._result: R | None = None

    # -- public API -------------------------------------------------------------------------
    @property
    def result(self) -> R:
        if self._result is None:
            raise UsageError(f"{self.PROTOCOL} party {self.me} has no result yet (state {self.state.value})")
        return self._result

    @property
    def done(self) -> bool:
        return self.state is PartyState.DONE

    def start(self) -> list[Message]:
        if self.state is not PartyState.READY:
            raise UsageError("start() may be called once")
        self.state = PartyState.RUNNING
        self.round = 1
        out = self._guard(self._start)
        # With no peers (a 1-party signing set) every round is complete at once.
        return out + self._guard(self._advance)

    def receive(self, message: Message) -> list[Message]:
        """Take one message; return the messages to send.

        Raises:
            MessageRejected: the message was dropped; the party goes on.
            ProtocolAbort: the session is over; ``culprits`` names who broke it.
            UsageError: called before ``start()`` or after an abort.
        Any other exception is a bug.
        """
        if self.state is PartyState.READY:
            raise UsageError("call start() before receive()")
        if self.state is PartyState.ABORTED:
            raise UsageError("this party has aborted; start a new session")
        self._admit(message)
        if self.state is PartyState.DONE:
            return []
        return self._guard(self._advance)

    # -- envelope checks --------------------------------------------------------------------
    def _reject(self, reason: AbortReason, message: Message, field: str = "") -> MessageRejected:
        return MessageRejected(reason, round=message.round, session_id=self.session_id, field=field)

    def _admit(self, m: Message) -> None:
        if m.session_id != self.session_id:
            raise self._reject(AbortReason.WRONG_SESSION, m)
        if m.sender not in self.peers:
            raise self._reject(AbortReason.UNKNOWN_SENDER, m)
        if m.recipient not in (BROADCAST, self.me):
            raise self._reject(AbortReason.WRONG_RECIPIENT, m)
        kinds = [typ for (rnd, typ), bc in self.EXPECTS.items() if rnd == m.round and bc == m.is_broadcast]
        if not kinds:
            if self.state is PartyState.DONE:
                raise self._reject(AbortReason.UNEXPECTED_MESSAGE, m)
            raise self._abort(AbortReason.UNEXPECTED_MESSAGE, {m.sender}, round=m.round)
        key = (m.round, kinds[0], m.sender)
        digest = hashlib.sha256(m.payload).digest()
        if key in self._seen:
            if hmac.compare_digest(self._seen[key], digest):
                raise self._reject(AbortReason.REPLAYED_MESSAGE, m)
            if self.state is PartyState.DONE:
                raise self._reject(AbortReason.EQUIVOCATION, m)
            raise self._abort(AbortReason.EQUIVOCATION, {m.sender}, round=m.round)
        if self.state is PartyState.DONE:
            raise self._reject(AbortReason.UNEXPECTED_MESSAGE, m)
        try:
            payload = decode_payload(self.suite, m.payload, kinds[0])
        except WireError as e:
            raise self._abort(AbortReason.MALFORMED_PAYLOAD, {m.sender}, round=m.round, field=e.field) from None
        self._seen[key] = digest
        self._inbox.setdefault(key[:2], {})[m.sender] = payload

    # -- helpers for subclasses -------------------------------------------------------------
    @contextlib.contextmanager
    def _sending_on_abort(self, out: list[Message]) -> Iterator[None]:
        """Rounds chained in one step: the messages ``out`` holds when a ProtocolAbort is
        raised inside ride on it (``outgoing``), as an in-order delivery would have sent them
        already, so the peers abort too rather than wait."""
        try:
            yield
        except ProtocolAbort as e:
            e.outgoing = out + e.outgoing
            raise

    def _guard(self, step: object) -> list[Message]:
        # Any exception (a ProtocolAbort, or a bug) leaves the party ABORTED: no half-states.
        try:
            return step()  # type: ignore[operator,no-any-return]
        except BaseException:
            self.state = PartyState.ABORTED
            raise

    def _abort(
        self, reason: AbortReason, culprits: set[int] | frozenset[int] = frozenset(), *, round: int | None = None, field: str = ""
    ) -> ProtocolAbort:
        self.state = PartyState.ABORTED
        return ProtocolAbort(
            reason,
            round=self.round if round is None else round,
            culprits=culprits,
            session_id=self.session_id,
            field=field,
            party=self.me,
        )

    def _echo_blame(self, sender: int, position: int) -> set[int]:
        """Whom to report when ``sender``'s echo of ``position``'s broadcast differs from ours.

        Our own broadcast and the sender's own are known to us, so then the sender lied.
        Otherwise either ``position`` equivocated or ``sender`` lies about it: without
        signed messages (the attested channels add them) both are reported.
        """
        return {sender} if position in (self.me, sender) else {position, sender}

    def _check_echoes(self, mine: Sequence[bytes], echoes: Mapping[int, Sequence[bytes]], order: Sequence[int]) -> None:
        """Compare every peer's echo of a broadcast round (digests in ``order``) with ours; a
        differing entry aborts with :meth:`_echo_blame`'s culprits."""
        for j in self.peers:
            echo = echoes[j]
            if len(echo) != len(order):
                raise self._abort(AbortReason.MALFORMED_PAYLOAD, {j}, field="echo")
            for pos, (ours, theirs) in enumerate(zip(mine, echo, strict=True)):
                if not hmac.compare_digest(ours, theirs):
                    raise self._abort(AbortReason.EQUIVOCATION, self._echo_blame(j, order[pos]), field="echo")

    def _received(self, rnd: int, typ: type[Payload]) -> dict[int, Payload]:
        """Payloads of one kind received so far, by sender."""
        return dict(self._inbox.get((rnd, typ), {}))

    def _have_all(self, rnd: int, typ: type[Payload], senders: Sequence[int] | None = None) -> bool:
        want = self.peers if senders is None else senders
        got = self._inbox.get((rnd, typ), {})
        return len(got) >= len(want) and all(s in got for s in want)

    def _payload_digest(self, rnd: int, typ: type[Payload], sender: int) -> bytes:
        return self._seen[(rnd, typ, sender)]

    def _broadcast(self, payload: Payload) -> Message:
        return Message(
            session_id=self.session_id, round=self.round, sender=self.me, recipient=BROADCAST, payload=encode_payload(payload)
        )

    def _send(self, to: int, payload: Payload) -> Message:
        return Message(
            session_id=self.session_id, round=self.round, sender=self.me, recipient=to, payload=encode_payload(payload)
        )

    def _finish(self, result: R) -> None:
        self._result = result
        self.state = PartyState.DONE
        # Drop buffered payloads: they may hold secret shares.
        self._inbox.clear()

    # -- to implement -----------------------------------------------------------------------
    def _start(self) -> list[Message]:
        raise NotImplementedError

    def _advance(self) -> list[Message]:
        """Called after every admitted message; move rounds forward when complete."""
        raise NotImplementedError

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("protocol parties hold secret state and cannot be pickled or reloaded")
