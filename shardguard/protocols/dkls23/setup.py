"""DKLs23 pairwise setup: base OTs, zero-share seeds and the chain code (DKLs23 spec §1.2–1.4).

Runs among all holders of a key right after the DKG, and again after every refresh (fresh base
OTs and seeds: pitfall P15 / ToB-4). Three rounds:

1. broadcast a commitment to a chain-code contribution; to every peer ``j``, the endemic-OT
   receiver message for the pair where we will be the OT-extension sender ("Alice") and ``j``
   the receiver ("Bob"), and from the lower id of each pair the zero-share seed;
2. broadcast the opening and the echo of round 1; to every peer, the endemic-OT answer;
3. broadcast a digest of everything we will store; keep it only if every digest agrees.

The chain code is ``H(sid, contributions)`` for a new key, or carried over on refresh (then it
is bound into the session id, so holders that disagree on it never share a session).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from shardguard.crypto.errors import DecodeError
from shardguard.crypto.group import Rng
from shardguard.crypto.ot import base as base_ot
from shardguard.crypto.transcript import Transcript
from shardguard.protocols.dkls23._messages import SetupCommit, SetupConfirm, SetupOtAnswer, SetupOtStart, SetupReveal
from shardguard.protocols.dkls23.keys import EcdsaKeyShare, PairwiseSetup
from shardguard.protocols.errors import AbortReason, UsageError
from shardguard.protocols.keys import KeyShare
from shardguard.protocols.message import Message
from shardguard.protocols.party import Party
from shardguard.protocols.wire import encode_payload

__all__ = ["OtSetup", "pair_session"]

_ZERO = b"\x00" * 32


def pair_session(sid: bytes, label: bytes, bob: int, alice: int, extra: bytes = b"") -> bytes:
    """Session id of one ordered pair's sub-protocol (spec P8: both indices, the session)."""
    t = Transcript(b"shardguard/dkls23/pair").append(b"sid", sid).append(b"label", label)
    return t.append_int(b"bob", bob).append_int(b"alice", alice).append(b"extra", extra).digest()


def _commit(sid: bytes, me: int, value: bytes, salt: bytes) -> bytes:
    return (
        Transcript(b"shardguard/dkls23/chain-code-commit")
        .append(b"sid", sid)
        .append_int(b"party", me)
        .append(b"value", value)
        .append(b"salt", salt)
        .digest()
    )


class OtSetup(Party[EcdsaKeyShare]):
    """One holder's side of the pairwise setup; ``result`` is its :class:`EcdsaKeyShare`."""

    PROTOCOL = "dkls23-setup"
    EXPECTS = {
        (1, SetupCommit): True,
        (1, SetupOtStart): False,
        (2, SetupReveal): True,
        (2, SetupOtAnswer): False,
        (3, SetupConfirm): True,
    }

    def __init__(self, key_share: KeyShare, *, instance: bytes, rng: Rng, chain_code: bytes | None = None) -> None:
        public = key_share.public
        if public.suite.frost:
            raise UsageError("DKLs23 setup needs an ECDSA key (scheme 'ecdsa')")
        if chain_code is not None and (type(chain_code) is not bytes or len(chain_code) != 32):
            raise UsageError("chain code must be 32 bytes")
        if public.threshold < 2:
            raise UsageError("DKLs23 needs a threshold of at least 2")
        ids = public.participants
        sid = public.session_id(self.PROTOCOL, ids, instance, extra=chain_code or b"")
        super().__init__(public.suite, key_share.identifier, [i for i in ids if i != key_share.identifier], sid)
        self.participants = ids
        self._key = key_share
        self._rng = rng
        self._carried = chain_code
        self._receivers: dict[int, base_ot.ReceiverState] = {}
        self._deltas: dict[int, bytes] = {}
        self._zero: dict[int, bytes] = {}
        self._senders: dict[int, tuple[bytes, bytes]] = {}
        self._contribution = b""
        self._salt = b""
        self._own_commit = b""
        self._echo: tuple[bytes, ...] = ()
        self._own_reveal = b""
        self._pending: EcdsaKeyShare | None = None
        self._digest = b""

    def _start(self) -> list[Message]:
        self._contribution, self._salt = self._rng(32), self._rng(32)
        commit = SetupCommit(suite=self.suite, commitment=_commit(self.session_id, self.me, self._contribution, self._salt))
        self._own_commit = hashlib.sha256(encode_payload(commit)).digest()
        out = [self._broadcast(commit)]
        for j in self.peers:
            self._deltas[j] = self._rng(32)
            state, msg = base_ot.receiver_start(pair_session(self.session_id, b"base-ot", j, self.me), self._deltas[j], self._rng)
            self._receivers[j] = state
            seed = self._rng(32) if self.me < j else _ZERO
            if self.me < j:
                self._zero[j] = seed
            out.append(self._send(j, SetupOtStart(suite=self.suite, base_ot=msg, zero_seed=seed)))
        return out

    def _advance(self) -> list[Message]:
        # Chained, as DklsSigner._advance (review finding).
        out: list[Message] = []
        with self._sending_on_abort(out):
            if self.round == 1 and self._have_all(1, SetupCommit) and self._have_all(1, SetupOtStart):
                out += self._round2()
            if self.round == 2 and self._have_all(2, SetupReveal) and self._have_all(2, SetupOtAnswer):
                out += self._round3()
            if self.round == 3 and self._have_all(3, SetupConfirm):
                self._finish_setup()
        return out

    def _round2(self) -> list[Message]:
        self.round = 2
        starts: dict[int, Any] = self._received(1, SetupOtStart)
        answers = []
        for j in self.peers:
            start = starts[j]
            if j < self.me:
                if start.zero_seed == _ZERO:
                    raise self._abort(AbortReason.MALFORMED_PAYLOAD, {j}, field="zero_seed")
                self._zero[j] = start.zero_seed
            elif start.zero_seed != _ZERO:
                raise self._abort(AbortReason.MALFORMED_PAYLOAD, {j}, field="zero_seed")
            try:
                m0, m1, msg = base_ot.sender_respond(
                    pair_session(self.session_id, b"base-ot", self.me, j), start.base_ot, self._rng
                )
            except DecodeError as e:
                raise self._abort(AbortReason.MALFORMED_PAYLOAD, {j}, field=e.field) from None
            self._senders[j] = (b"".join(m0), b"".join(m1))
            answers.append(self._send(j, SetupOtAnswer(suite=self.suite, base_ot=msg)))
        self._echo = tuple(
            self._own_commit if i == self.me else self._payload_digest(1, SetupCommit, i) for i in self.participants
        )
        reveal = SetupReveal(suite=self.suite, contribution=self._contribution, salt=self._salt, echo=self._echo)
        self._own_reveal = hashlib.sha256(encode_payload(reveal)).digest()
        return [self._broadcast(reveal), *answers]

    def _round3(self) -> list[Message]:
        self.round = 3
        reveals: dict[int, Any] = self._received(2, SetupReveal)
        commits: dict[int, Any] = self._received(1, SetupCommit)
        self._check_echoes(self._echo, {j: reveals[j].echo for j in self.peers}, self.participants)
        for j in self.peers:
            r = reveals[j]
            if not hmac.compare_digest(_commit(self.session_id, j, r.contribution, r.salt), commits[j].commitment):
                raise self._abort(AbortReason.INVALID_COMMITMENT, {j}, field="contribution")
        contributions = {j: reveals[j].contribution for j in self.peers} | {self.me: self._contribution}
        if self._carried is not None:
            chain_code = self._carried
        else:
            t = Transcript(b"shardguard/dkls23/chain-code").append(b"sid", self.session_id)
            for i in self.participants:
                t.append(b"contribution", contributions[i])
            chain_code = t.digest()
        answers: dict[int, Any] = self._received(2, SetupOtAnswer)
        pairs = {}
        for j in self.peers:
            try:
                chosen = base_ot.receiver_finish(
                    self._receivers[j], pair_session(self.session_id, b"base-ot", j, self.me), answers[j].base_ot
                )
            except DecodeError as e:
                raise self._abort(AbortReason.MALFORMED_PAYLOAD, {j}, field=e.field) from None
            s0, s1 = self._senders[j]
            pairs[j] = PairwiseSetup(
                seeds0=s0, seeds1=s1, delta=self._deltas[j], chosen=b"".join(chosen), zero_seed=self._zero[j]
            )
        self._receivers.clear()
        self._pending = EcdsaKeyShare(share=self._key, chain_code=chain_code, setup_id=self.session_id, pairs=pairs)
        t = Transcript(b"shardguard/dkls23/setup-confirm").append(b"sid", self.session_id)
        t.append(b"package", self._key.public.digest).append(b"chain_code", chain_code)
        for i in self.participants:
            t.append(b"reveal", self._own_reveal if i == self.me else self._payload_digest(2, SetupReveal, i))
        self._digest = t.digest()
        return [self._broadcast(SetupConfirm(suite=self.suite, digest=self._digest))]

    def _finish_setup(self) -> None:
        confirms: dict[int, Any] = self._received(3, SetupConfirm)
        bad = {j for j in self.peers if not hmac.compare_digest(confirms[j].digest, self._digest)}
        if bad:
            raise self._abort(AbortReason.INCONSISTENT_KEY, bad)
        if self._pending is None:  # round 3 always follows round 2, which sets it
            raise UsageError("setup finished before its share was built")
        self._finish(self._pending)
