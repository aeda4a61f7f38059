"""Drive the sans-I/O protocols over attested channels through an untrusted relay.

One :func:`drive` call runs one protocol party to its end (ARCHITECTURE §4, §6): every
outgoing :class:`~shardguard.protocols.message.Message` is encoded, HPKE-sealed and signed for
each recipient by a :class:`~shardguard.channel.Channel` (broadcasts once per peer), posted to
the relay; envelopes fetched from the relay are opened by the sender's channel and fed to the
party. The relay (the coordinator) sees only envelopes: it can delay or drop them, never read,
forge, re-target or replay them.

Envelopes of a later session of the same job (a DKLs23 setup that follows its DKG) can arrive
early: they are kept by session id until that session starts — within limits
(:data:`HELD_SESSIONS`, :data:`HELD_ENVELOPES`, :data:`HELD_BYTES` per job), since whatever
the relay claims is of another session is kept unauthenticated; beyond them an envelope is
dropped with a log line, as the relay itself could drop it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeVar

import cbor2

from shardguard.channel import AdmittedPeer, Channel, ChannelError, NodeKeys, PeerCard
from shardguard.protocols.errors import MessageRejected
from shardguard.protocols.message import BROADCAST, Message
from shardguard.protocols.party import Party

__all__ = [
    "HELD_BYTES",
    "HELD_ENVELOPES",
    "HELD_SESSIONS",
    "EngineError",
    "EngineTimeout",
    "Inbox",
    "Notes",
    "Relay",
    "decode_message",
    "drive",
    "encode_message",
    "exchange",
]

R = TypeVar("R")
_SESSION = slice(1, 33)  # envelope header: version (1 byte), then the 32-byte session id

log = logging.getLogger("shardguard.node")

#: What one job's :class:`Inbox` keeps for sessions that have not started yet. A job runs at
#: most three sessions (witness notes, the protocol, a DKLs23 setup after its DKG or refresh),
#: and what arrives early is at most a round or two of every peer: the largest is the first
#: OT-setup round of a 255-party ECDSA key, 254 envelopes of about 17 KiB plus their headers
#: and key wraps (under 5 MiB with the witness notes). Worst case for a node running 32 tasks:
#: 32 × 8 MiB.
HELD_SESSIONS = 4
HELD_ENVELOPES = 1024
HELD_BYTES = 8 * 1024 * 1024


class EngineError(Exception):
    """The task cannot go on for a reason outside the protocol (transport, time)."""


class EngineTimeout(EngineError):
    def __init__(self, job: str, round: int) -> None:
        self.job = job
        self.round = round
        super().__init__(f"job {job}: no progress before the deadline (round {round})")


class Relay(Protocol):
    """The transport to the coordinator's mailbox of one job."""

    def post(self, job: str, envelopes: Sequence[tuple[str, bytes]], *, hold: bool = False) -> None:
        """Queue ``(recipient node id, envelope)`` pairs. ``hold``: nobody waits for these, so
        they may go out with the job's next post (one request or frame fewer)."""

    def fetch(self, job: str, after: int, wait: float) -> Sequence[tuple[int, str, bytes]]:
        """``(cursor, sender node id, envelope)`` addressed to us with cursor > ``after``;
        waits up to ``wait`` seconds for the first one."""


def encode_message(m: Message) -> bytes:
    return cbor2.dumps([m.round, m.sender, m.recipient, m.payload], canonical=True)


def decode_message(data: bytes, session_id: bytes) -> Message:
    """The inner message of an opened envelope (its session id is the channel's)."""
    try:
        obj = cbor2.loads(data)
        rnd, sender, recipient, payload = obj
        if cbor2.dumps(obj, canonical=True) != data:
            raise ValueError("not canonical")
        return Message(session_id=session_id, round=rnd, sender=sender, recipient=recipient, payload=payload)
    except (ValueError, TypeError, cbor2.CBORDecodeError) as e:
        raise EngineError(f"malformed inner message: {type(e).__name__}") from None


@dataclasses.dataclass
class Inbox:
    """Cursor into a job's mailbox plus envelopes held for sessions not started yet (at most
    ``max_sessions`` sessions, ``max_envelopes`` envelopes and ``max_bytes`` bytes; the excess
    is dropped and counted in ``dropped``). ``expected``: the sessions the job will run, when
    it knows them all ahead (a witness job: two per peer); only those are held, however many."""

    cursor: int = 0
    held: dict[bytes, list[tuple[str, bytes]]] = dataclasses.field(default_factory=dict)
    expected: frozenset[bytes] | None = None
    max_sessions: int = HELD_SESSIONS
    max_envelopes: int = HELD_ENVELOPES
    max_bytes: int = HELD_BYTES
    held_envelopes: int = 0
    held_bytes: int = 0
    dropped: int = 0

    def hold(self, job: str, session_id: bytes, sender: str, envelope: bytes) -> bool:
        """Keep ``envelope`` for its session; False (dropped, logged) past the limits."""
        kept = self.held.get(session_id)
        if (
            (self.expected is not None and session_id not in self.expected)
            or (kept is None and self.expected is None and len(self.held) >= self.max_sessions)
            or self.held_envelopes >= self.max_envelopes
            or self.held_bytes + len(envelope) > self.max_bytes
        ):
            self.dropped += 1
            if self.dropped & (self.dropped - 1) == 0:  # 1, 2, 4, …: a flood logs little
                log.warning("job %s: %d envelope(s) of sessions not started dropped: at most %d sessions, %d envelopes "
                            "and %d bytes are held", job, self.dropped, self.max_sessions, self.max_envelopes,
                            self.max_bytes)  # fmt: skip
            return False
        if kept is None:
            kept = self.held[session_id] = []
        kept.append((sender, envelope))
        self.held_envelopes += 1
        self.held_bytes += len(envelope)
        return True

    def take(self, session_id: bytes) -> list[tuple[str, bytes]]:
        """What is held for ``session_id``, no longer held."""
        got = self.held.pop(session_id, [])
        self.held_envelopes -= len(got)
        self.held_bytes -= sum(len(e) for _, e in got)
        return got


def drive(
    party: Party[R],
    *,
    job: str,
    me: NodeKeys,
    card: PeerCard,
    peers: Mapping[int, AdmittedPeer],
    relay: Relay,
    inbox: Inbox,
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
    poll: float = 5.0,
    at_start: Callable[[], None] | None = None,
    gate: Callable[[], None] | None = None,
    idle: Callable[[], bool] | None = None,
) -> R:
    """Run ``party`` to completion; return its result.

    ``peers`` maps every other participant's protocol index to its admitted peer. Raises the
    party's :class:`~shardguard.protocols.errors.ProtocolAbort` (after posting the messages it
    carries, so the others abort too), or :class:`EngineTimeout`.

    ``at_start`` runs just before the first round is computed and posted; ``gate`` runs before
    anything after the first round is posted, and blocks until that may leave. The node starts
    a signing's audit write in the one and waits for it in the other, so the write overlaps the
    first round's work and trip and the party's own work on the peers' first round, and no
    share of a later round leaves without its entry (the first round holds only commitments).
    A party that finishes without a later round (one signer) passes the gate before its result
    is returned; abort messages wait for it too, and are dropped if it fails. If either raises,
    the party stops and the exception propagates.

    ``idle`` runs whenever the party has posted what it could and waits for peers, until it
    returns True: work that may use the time a round spends crossing the network.
    """
    sid = party.session_id
    channels = {i: Channel(me, card, peers[i], sid) for i in party.peers}
    index_of = {peers[i].node_id: i for i in party.peers}
    seq: dict[int, int] = dict.fromkeys(party.peers, 0)

    released = True  # the first round always goes out

    def pass_gate() -> None:
        nonlocal released
        if not released and gate is not None:
            gate()
        released = True

    def send(messages: Sequence[Message]) -> None:
        if messages:
            pass_gate()
        out = []
        for m in messages:
            plain = encode_message(m)
            for i in party.peers if m.recipient == BROADCAST else (m.recipient,):
                seq[i] += 1
                out.append((peers[i].node_id, channels[i].seal(plain, seq=seq[i])))
        if out:
            relay.post(job, out)

    def feed(sender: str, envelope: bytes) -> None:
        i = index_of.get(sender)
        if i is None:
            return  # not a participant of this session: ignore
        try:
            plain = channels[i].open(envelope)
            m = decode_message(plain, sid)
        except (ChannelError, EngineError):
            return  # forged, replayed or garbled: the channel already refused it
        if m.sender != i:
            return  # a peer speaking for another index
        try:
            send(party.receive(m))
        except MessageRejected:
            return
        except Exception as e:  # ProtocolAbort: let the others know, then stop
            with contextlib.suppress(Exception):  # the gate refused: nothing more leaves
                send(getattr(e, "outgoing", []) or [])
            raise  # the party's own error stands

    if at_start is not None:
        at_start()  # first: the write it starts is then under way while round 1 is computed
    send(party.start())
    released = gate is None
    _pump(relay, job, inbox, sid, lambda: party.done, feed, deadline, clock, poll, lambda: party.round, idle)
    pass_gate()  # a party done without a later round (one signer): its result is released here
    return party.result


def _pump(
    relay: Relay,
    job: str,
    inbox: Inbox,
    session_id: bytes,
    finished: Callable[[], bool],
    take: Callable[[str, bytes], None],
    deadline: float,
    clock: Callable[[], float],
    poll: float,
    round_now: Callable[[], int],
    idle: Callable[[], bool] | None = None,
) -> None:
    """Hand ``take`` every envelope of ``session_id`` (those held earlier first) until
    ``finished()``; envelopes of other sessions of the job are held for later."""
    for sender, envelope in inbox.take(session_id):
        if finished():
            return
        take(sender, envelope)
    while not finished():
        remaining = deadline - clock()
        if remaining <= 0:
            raise EngineTimeout(job, round_now())
        if idle is not None and idle():
            idle = None
        for cursor, sender, envelope in relay.fetch(job, inbox.cursor, min(poll, remaining)):
            inbox.cursor = max(inbox.cursor, cursor)
            if envelope[_SESSION] != session_id:
                inbox.hold(job, bytes(envelope[_SESSION]), sender, envelope)
            elif not finished():
                take(sender, envelope)


class Notes:
    """One message to every peer and one from each, sealed and signed like protocol envelopes
    under their own ``session_id`` (one round, no party). Posting happens at construction; the
    answers are either awaited (:meth:`receive`) or taken only if they already came
    (:meth:`received`), so a caller that does not need them now sends its own without a
    round trip of its own."""

    def __init__(
        self,
        *,
        job: str,
        session_id: bytes,
        me: NodeKeys,
        card: PeerCard,
        peers: Mapping[int, AdmittedPeer],
        relay: Relay,
        inbox: Inbox,
        messages: Mapping[int, bytes],
        hold: bool = False,
    ) -> None:
        self._job = job
        self._sid = session_id
        self._relay = relay
        self._inbox = inbox
        self._peers = dict(peers)
        self._channels = {i: Channel(me, card, peers[i], session_id) for i in peers}
        self._index_of = {peers[i].node_id: i for i in peers}
        self.got: dict[int, bytes] = {}
        relay.post(job, [(peers[i].node_id, self._channels[i].seal(messages[i], seq=1)) for i in peers], hold=hold)

    def _take(self, sender: str, envelope: bytes) -> None:
        i = self._index_of.get(sender)
        if i is None or i in self.got:
            return
        try:
            self.got[i] = self._channels[i].open(envelope)
        except ChannelError:
            return

    def receive(self, deadline: float, clock: Callable[[], float] = time.monotonic, poll: float = 5.0) -> dict[int, bytes]:
        """Wait for one message from every peer (:class:`EngineTimeout` at ``deadline``)."""
        _pump(self._relay, self._job, self._inbox, self._sid, lambda: len(self.got) == len(self._peers), self._take,
              deadline, clock, poll, lambda: 0)  # fmt: skip
        return self.got

    def received(self) -> dict[int, bytes]:
        """The answers that have already arrived (held by the inbox), without waiting."""
        for sender, envelope in self._inbox.take(self._sid):
            self._take(sender, envelope)
        return self.got


def exchange(
    *,
    job: str,
    session_id: bytes,
    me: NodeKeys,
    card: PeerCard,
    peers: Mapping[int, AdmittedPeer],
    relay: Relay,
    inbox: Inbox,
    messages: Mapping[int, bytes],
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
    poll: float = 5.0,
) -> dict[int, bytes]:
    """Send ``messages[i]`` to every peer ``i`` and receive one message from each (:class:`Notes`)."""
    notes = Notes(job=job, session_id=session_id, me=me, card=card, peers=peers, relay=relay, inbox=inbox, messages=messages)
    return notes.receive(deadline, clock, poll)
