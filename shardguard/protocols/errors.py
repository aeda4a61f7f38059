"""Typed protocol errors (ARCHITECTURE §4; h11 ``_util.py``; ZF frost ``error.rs``).

* :class:`UsageError` — the *local caller* broke the API (bad parameters, wrong order of calls).
* :class:`ProtocolAbort` — a *peer* (or the network) broke the protocol; the party is dead.
* :class:`MessageRejected` — a :class:`ProtocolAbort` for one message that was dropped while
  the party lives on (another session's message, a replay): the network can inject those, so
  they must not kill an honest session.

Errors carry fields (reason, round, culprits, session id, field), never secret values.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = ["AbortReason", "MessageRejected", "PeerBanned", "ProtocolAbort", "ProtocolError", "UsageError"]


class AbortReason(enum.Enum):
    """Why a message or a session was refused. ``blames`` says whether a culprit is named."""

    WRONG_SESSION = ("message belongs to another session", False)
    WRONG_RECIPIENT = ("message is addressed to another party", False)
    UNKNOWN_SENDER = ("sender is not a participant of this session", False)
    UNEXPECTED_MESSAGE = ("no such message is expected in this round", True)
    REPLAYED_MESSAGE = ("the same message was received twice", False)
    EQUIVOCATION = ("a party sent conflicting messages", True)
    MALFORMED_PAYLOAD = ("payload does not decode or fails validation", True)
    INVALID_PROOF = ("proof of knowledge does not verify", True)
    INVALID_COMMITMENT = ("commitment has the wrong length", True)
    INVALID_SHARE = ("secret share does not match its commitment", True)
    INVALID_SIGNATURE_SHARE = ("signature share does not verify", True)
    INCONSISTENT_REPAIR = ("repair contributions do not add up", True)
    INCONSISTENT_KEY = ("parties derived different key packages", True)
    INVALID_SIGNATURE = ("aggregate signature does not verify", False)
    # DKLs23 (spec pitfall P3): these name the counterparty and ban it until the next refresh.
    OT_CONSISTENCY = ("OT extension consistency check failed", True, True)
    MULTIPLICATION_CHECK = ("two-party multiplication check failed", True, True)
    PAIRWISE_CONSISTENCY = ("pairwise nonce or key consistency check failed", True, True)
    PEER_BANNED = ("counterparty was banned by a concurrent session", True)

    def __init__(self, text: str, blames: bool, bans: bool = False) -> None:
        self.text = text
        self.blames = blames
        #: The checking party must refuse every further session with the culprits (persisted
        #: with its share) until a refresh: retrying would leak its secret bit by bit.
        self.bans = bans


class ProtocolError(Exception):
    """Abstract base; instantiate a subclass."""

    def __new__(cls, *args: object, **kwargs: object) -> ProtocolError:
        if cls is ProtocolError:
            raise TypeError("ProtocolError is abstract; raise UsageError or ProtocolAbort")
        return super().__new__(cls)


class UsageError(ProtocolError, ValueError):
    """The caller used the API wrongly; nothing was sent or changed."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(what)


class ProtocolAbort(ProtocolError):
    """A peer broke the protocol; the session is over (no silent retry).

    Attributes:
        reason: an :class:`AbortReason`.
        round: protocol round in which it was detected.
        culprits: the parties proven (or, for equivocation without transport signatures,
            reported) at fault; empty when none can be named.
        session_id: the session concerned.
        field: the payload field at fault, when there is one.
    """

    def __init__(
        self,
        reason: AbortReason,
        *,
        round: int = 0,
        culprits: frozenset[int] | set[int] = frozenset(),
        session_id: bytes = b"",
        field: str = "",
        party: int = 0,
    ) -> None:
        self.reason = reason
        #: The party that detected the failure (0 when raised outside a party).
        self.party = party
        self.round = round
        self.culprits = frozenset(culprits)
        self.session_id = session_id
        self.field = field
        #: Messages the party produced in the same step before aborting; the caller should
        #: still deliver them (e.g. our own confirmation, so the others abort too).
        self.outgoing: list[Any] = []
        blame = f"; culprits {sorted(self.culprits)}" if self.culprits else ""
        where = f" ({field})" if field else ""
        super().__init__(f"{reason.text}{where} in round {round}{blame}")


class PeerBanned(UsageError):
    """A session was asked with counterparties this share has banned (DKLs23 pitfall P3)."""

    def __init__(self, parties: frozenset[int]) -> None:
        self.parties = parties
        super().__init__(f"parties {sorted(parties)} are banned by this share after a failed check; refresh the key first")


class MessageRejected(ProtocolAbort):
    """One message was refused; the party's state is unchanged and it can go on."""
