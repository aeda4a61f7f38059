"""FROST batch signing: k messages, one key, one two-round session (RFC 9591 §5, k times).

A :class:`FrostBatchSigner` runs k independent RFC 9591 §5 signings, one per message, each
with its own nonces, commitments, binding factors and challenge, and only carries their
round-1 and round-2 payloads together: one broadcast per round holds the k single-signing
payloads. Each item is an ordinary :class:`~shardguard.protocols.frost.FrostSigner` session,
so each signature is a standard FROST signature and every check of the single protocol
(share verification of §5.4, echoed commitment digests, nonce single use) applies per item.

Why a batch is as safe as k separate sessions:

* Nothing is shared between items but the key share: item ``i`` draws fresh nonces bound to
  its own session id, and its binding factors (§4.4) are computed over its own message and
  its own commitment list, so no share of one item helps forge or extract anything in
  another (the ROS-style attacks that reusing or combining nonces across messages enables
  need exactly what this rules out).
* The outer session id binds the whole ordered message list; each item's session id is
  derived from the outer one and the item's index. Two signers given different lists (or the
  same list in another order) are in different sessions and never exchange a message.
* An abort of any item aborts the batch, with that item's reason and culprits: no partial
  batch is ever output.
"""

from __future__ import annotations

from collections.abc import Sequence

from shardguard.crypto.ciphersuite import Ciphersuite
from shardguard.crypto.frost import CheaterDetection
from shardguard.crypto.group import Rng
from shardguard.crypto.transcript import Transcript
from shardguard.protocols.errors import AbortReason, ProtocolAbort, UsageError
from shardguard.protocols.frost._messages import MAX_BATCH, SignBatchRound1, SignBatchRound2, SignRound2
from shardguard.protocols.frost._party import FrostSigner, signer_ids
from shardguard.protocols.keys import KeyShare
from shardguard.protocols.message import BROADCAST, MAX_PAYLOAD, Message
from shardguard.protocols.party import Party
from shardguard.protocols.wire import encode_payload

__all__ = ["FrostBatchSigner"]

_ROUNDS = {1: SignBatchRound1, 2: SignBatchRound2}


def messages_digest(messages: Sequence[bytes]) -> bytes:
    """Digest of the ordered message list (each message length-prefixed), bound into the
    session id."""
    t = Transcript(b"shardguard/frost-sign-batch/messages")
    for m in messages:
        t.append(b"message", m)
    return t.digest()


def item_instance(session_id: bytes, index: int) -> bytes:
    """The ``instance`` of item ``index``'s signing session, from the batch's session id."""
    return Transcript(b"shardguard/frost-sign-batch/item").append(b"batch", session_id).append_int(b"index", index).digest()


class FrostBatchSigner(Party[tuple[bytes, ...]]):
    """One signer of k FROST signatures in one session; ``result[i]`` signs ``messages[i]``.

    ``messages`` holds 1..64 byte strings; the batch's round-2 payload must also fit one
    message (``MAX_PAYLOAD``), which every batch size does up to 22 signers (with 30 signers at
    most 56 messages): a larger batch is refused here, before any nonce is drawn.
    """

    PROTOCOL = "frost-sign-batch"
    EXPECTS = {(1, SignBatchRound1): True, (2, SignBatchRound2): True}

    def __init__(
        self,
        key_share: KeyShare,
        *,
        signers: Sequence[int],
        messages: Sequence[bytes],
        instance: bytes,
        rng: Rng,
        cheater_detection: CheaterDetection = CheaterDetection.ALL_CHEATERS,
    ) -> None:
        public = key_share.public
        ids = signer_ids(key_share, signers)
        if type(messages) not in (list, tuple) or not 1 <= len(messages) <= MAX_BATCH:
            raise UsageError(f"messages must be a list of 1..{MAX_BATCH} messages")
        if any(type(m) is not bytes for m in messages):
            raise UsageError("every message must be bytes")
        if _round2_size(public.suite, ids, len(messages)) > MAX_PAYLOAD:
            raise UsageError(f"{len(messages)} messages for {len(ids)} signers exceed one payload; sign fewer at once")
        sid = public.session_id(self.PROTOCOL, ids, instance, message=messages_digest(messages))
        super().__init__(public.suite, key_share.identifier, [i for i in ids if i != key_share.identifier], sid)
        self.signers = ids
        self.messages = tuple(messages)
        self._key = key_share
        self._items = tuple(
            FrostSigner(
                key_share, signers=ids, message=m, instance=item_instance(sid, i), rng=rng, cheater_detection=cheater_detection
            )
            for i, m in enumerate(self.messages)
        )
        self._fed: set[tuple[int, int]] = set()  # (round, sender) already handed to the items

    def _start(self) -> list[Message]:
        """Round 1 of every item (RFC 9591 §5.1), in one broadcast."""
        return self._combine([p.start() for p in self._items])

    def _advance(self) -> list[Message]:
        outs: list[list[Message]] = [[] for _ in self._items]
        for rnd, typ in self.EXPECTS:
            for sender, payload in self._received(rnd, typ).items():
                if (rnd, sender) in self._fed:
                    continue
                self._fed.add((rnd, sender))
                items: tuple[bytes, ...] = payload.items  # type: ignore[attr-defined]
                if len(items) != len(self._items):
                    raise self._abort(AbortReason.MALFORMED_PAYLOAD, {sender}, round=rnd, field="items")
                for i, (party, raw) in enumerate(zip(self._items, items, strict=True)):
                    m = Message(session_id=party.session_id, round=rnd, sender=sender, recipient=BROADCAST, payload=raw)
                    try:
                        outs[i] += party.receive(m)
                    except ProtocolAbort as e:  # (never a MessageRejected: the envelope was checked above)
                        raise self._abort(e.reason, e.culprits, round=e.round, field=_item_field(i, e.field)) from None
        out = self._combine(outs)
        if all(p.done for p in self._items):
            results = tuple(p.result for p in self._items)
            self._items = ()
            self._finish(results)
        return out

    def _combine(self, outs: list[list[Message]]) -> list[Message]:
        """The items' messages of one step, as one batch broadcast per round. The items run in
        lockstep (each outer message reaches all of them), so they send the same rounds."""
        rounds = [m.round for m in outs[0]]
        if any([m.round for m in o] != rounds or not all(m.is_broadcast for m in o) for o in outs):  # pragma: no cover
            raise UsageError("batch items out of step")
        out = []
        for k, rnd in enumerate(rounds):
            self.round = rnd
            out.append(self._broadcast(_ROUNDS[rnd](suite=self.suite, items=tuple(o[k].payload for o in outs))))
        self.round = max(p.round for p in self._items)
        return out

    def _abort(
        self, reason: AbortReason, culprits: set[int] | frozenset[int] = frozenset(), *, round: int | None = None, field: str = ""
    ) -> ProtocolAbort:
        # The batch is over: drop the items, with the nonces of those that have not used theirs.
        self._items = ()
        return super()._abort(reason, culprits, round=round, field=field)


def _item_field(index: int, field: str) -> str:
    return f"items[{index}]" + (f".{field}" if field else "")


def _round2_size(suite: Ciphersuite, ids: Sequence[int], k: int) -> int:
    """Exact size of a batch round-2 payload (the larger round): scalars and digests have
    fixed-length encodings, so zero values give the real length."""
    item = encode_payload(SignRound2(suite=suite, share=0, commitment_digests=tuple((i, bytes(32)) for i in ids)))
    return len(encode_payload(SignBatchRound2(suite=suite, items=(item,) * k)))
