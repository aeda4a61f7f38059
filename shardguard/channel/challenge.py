"""Verifier-chosen nonces through an untrusted relay (ARCHITECTURE §5: freshness is "the
verifier's nonce is inside ``user_data``").

A verifier V that wants to admit node N sends N a fresh 32-byte **challenge** (through the
coordinator, which may read it: a challenge must be unpredictable, not secret). N cannot
attest once per verifier, so it attests once over *every* challenge open for it: its evidence
binds ``binding(card, challenge_nonce(challenges))`` and N publishes that list beside it. V
admits N only if

1. the evidence is genuine and passes V's policy, and binds N's card and
   ``challenge_nonce(list)`` (:func:`~shardguard.channel.peer.admit_peer`), and
2. the list holds a challenge V itself issued to N, at most the challenge lifetime ago
   (:class:`ChallengeBook`).

Then the evidence was made after V asked, on every platform — SEV-SNP, TDX and SGX evidence
carries no time of its own. The list is bound by a hash, so a relay that adds, drops or swaps
entries only makes step 1 or 2 fail: it can delay an admission, never make stale evidence pass.

A verifier keeps its challenges in memory only: a restarted verifier challenges every peer
again, so its first admission of each is fresh too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from shardguard.channel.identity import MAX_NODE_ID_LEN, ChannelError, ChannelUsageError, is_node_id

__all__ = [
    "CHALLENGE_LEN",
    "MAX_CHALLENGES",
    "Challenge",
    "ChallengeBook",
    "ChallengeError",
    "challenge_nonce",
    "challenges_from_wire",
    "challenges_to_wire",
]

#: Bytes of one challenge.
CHALLENGE_LEN = 32
#: Challenges one piece of evidence may answer (one per verifier: a verifier's newer challenge
#: replaces its older one at the relay).
MAX_CHALLENGES = 256
_TAG = b"shardguard/channel/challenges/v1\x00"


class ChallengeError(ChannelError, ValueError):
    """A challenge list received from the network is malformed; ``field`` names where."""

    def __init__(self, detail: str, *, field: str = "challenges") -> None:
        self.detail = detail
        self.field = field
        super().__init__(f"invalid challenge list [{field}]: {detail}")


@dataclasses.dataclass(frozen=True, slots=True)
class Challenge:
    """One verifier's challenge: who issued it (node id) and the 32 random bytes."""

    challenger: str
    nonce: bytes


def _check(challenges: Sequence[Challenge], error: Callable[[str, str], Exception]) -> None:
    if len(challenges) > MAX_CHALLENGES:
        raise error(f"more than {MAX_CHALLENGES} challenges", "challenges")
    seen: set[str] = set()
    for i, c in enumerate(challenges):
        where = f"challenges[{i}]"
        if not isinstance(c, Challenge) or type(c.challenger) is not str or type(c.nonce) is not bytes:
            raise error("not a Challenge(str, bytes)", where)
        if not is_node_id(c.challenger):
            raise error(f"challenger must be a node id ([a-z0-9][a-z0-9._-]{{0,{MAX_NODE_ID_LEN - 1}}})", f"{where}.from")
        if len(c.nonce) != CHALLENGE_LEN:
            raise error(f"nonce must be {CHALLENGE_LEN} bytes", f"{where}.nonce")
        if c.challenger in seen:
            raise error(f"challenger {c.challenger!r} appears twice", f"{where}.from")
        seen.add(c.challenger)


def _usage(detail: str, field: str) -> Exception:
    return ChannelUsageError(f"{field}: {detail}")


def challenge_nonce(challenges: Iterable[Challenge]) -> bytes:
    """The nonce whose :func:`~shardguard.channel.identity.binding` answers every challenge in
    ``challenges`` (order does not matter): SHA-256 over the tag, the count and each
    ``(challenger, nonce)`` sorted by challenger, every field length-framed. 32 bytes."""
    items = sorted(challenges, key=lambda c: c.challenger if isinstance(c, Challenge) else "")
    _check(items, _usage)
    h = hashlib.sha256(_TAG + len(items).to_bytes(2, "big"))
    for c in items:
        name = c.challenger.encode("ascii")
        h.update(len(name).to_bytes(1, "big") + name + c.nonce)
    return h.digest()


def challenges_to_wire(challenges: Iterable[Challenge]) -> list[dict[str, str]]:
    """JSON form, sorted by challenger: ``[{"from": node id, "nonce": hex}, …]``."""
    return [{"from": c.challenger, "nonce": c.nonce.hex()} for c in sorted(challenges, key=lambda c: c.challenger)]


def challenges_from_wire(obj: Any) -> tuple[Challenge, ...]:
    """Parse and validate the JSON form (hostile input): :class:`ChallengeError` naming the
    entry and field on anything malformed."""
    if not isinstance(obj, list):
        raise ChallengeError("must be a list")
    if len(obj) > MAX_CHALLENGES:
        raise ChallengeError(f"more than {MAX_CHALLENGES} challenges")
    out = []
    for i, item in enumerate(obj):
        if not isinstance(item, dict) or set(item) != {"from", "nonce"}:
            raise ChallengeError('must be {"from": …, "nonce": …}', field=f"challenges[{i}]")
        who, nonce_hex = item["from"], item["nonce"]
        if type(who) is not str:
            raise ChallengeError("must be a string", field=f"challenges[{i}].from")
        if type(nonce_hex) is not str or len(nonce_hex) != 2 * CHALLENGE_LEN:
            raise ChallengeError(f"must be {2 * CHALLENGE_LEN} hex digits", field=f"challenges[{i}].nonce")
        try:
            nonce = bytes.fromhex(nonce_hex)
        except ValueError:
            raise ChallengeError("not hex", field=f"challenges[{i}].nonce") from None
        out.append(Challenge(who, nonce))
    _check(out, lambda detail, field: ChallengeError(detail, field=field))
    return tuple(out)


class ChallengeBook:
    """The challenges this verifier issued, per peer node id: the newest and the one before it
    (evidence made for the older one stays good while the peer answers the newer), each good
    for ``lifetime`` seconds after it was issued (``None``: for as long as this process runs).
    In memory only. Thread-safe."""

    def __init__(
        self,
        me: str,
        lifetime: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if lifetime is not None and not lifetime > 0:
            raise ChannelUsageError("lifetime must be positive or None")
        self.me = me
        self.lifetime = lifetime
        self._clock = clock
        self._rng = rng
        self._lock = threading.Lock()
        self._issued: dict[str, list[tuple[bytes, float]]] = {}

    def _expires(self, issued: float) -> float:
        return math.inf if self.lifetime is None else issued + self.lifetime

    def issue(self, peer: str) -> bytes:
        """A fresh challenge for ``peer``; it becomes the newest, the newest before it is kept."""
        nonce = self._rng(CHALLENGE_LEN)
        if type(nonce) is not bytes or len(nonce) != CHALLENGE_LEN:
            raise ChannelUsageError(f"rng must return {CHALLENGE_LEN} bytes")
        with self._lock:
            kept = self._issued.get(peer, [])[-1:]
            self._issued[peer] = [*kept, (nonce, self._clock())]
        return nonce

    def newest(self, peer: str) -> tuple[bytes, float] | None:
        """The newest challenge to ``peer`` still good, with its age in seconds."""
        now = self._clock()
        with self._lock:
            for nonce, issued in reversed(self._issued.get(peer, [])):
                if now < self._expires(issued):
                    return nonce, now - issued
        return None

    def answered(self, peer: str, challenges: Iterable[Challenge]) -> float | None:
        """When admission on evidence answering ``challenges`` ends (this clock's time): the
        expiry of the newest of our good challenges to ``peer`` among them; None if none is."""
        mine = {c.nonce for c in challenges if c.challenger == self.me}
        now = self._clock()
        with self._lock:
            for nonce, issued in reversed(self._issued.get(peer, [])):
                expires = self._expires(issued)
                if nonce in mine and now < expires:
                    return expires
        return None

    def forget(self, peer: str) -> None:
        with self._lock:
            self._issued.pop(peer, None)
