"""The node's hash-chained, signed audit log (ARCHITECTURE §7).

Every decision of the node — a key generated, a signature made or refused (and why), a refresh
committed or dropped, a ban — is an entry::

    entry = canonical JSON {"seq", "time", "node", "event", "prev", …fields}
    hash  = SHA-256("shardguard/audit/v1" 0x00 ‖ entry)        (so "prev" chains every entry)
    sig   = Ed25519 by the node's identity key over frame(AUDIT_CONTEXT) ‖ frame(hash)

The head (``seq``, ``hash``) and the entries not yet mirrored are kept in the sealed keystore,
so the chain continues across restarts (a restarted node signs with its new identity
key; the coordinator's mirror records which attested key signed each entry). The coordinator mirrors the
entries but cannot forge, reorder or drop one unnoticed: :func:`verify_chain` checks the chain
and every signature offline. Entries hold public facts only (ids, digests, reasons) — never a
share, nonce or plaintext payload.

**Writes.** :meth:`AuditLog.append` returns only once its entry is durable; the caller releases
nothing before. Its write is a *compaction*: one manifest write (:meth:`Keystore.compact_journal`)
of an inline state value holding the head and the entries not yet acknowledged, spliced from
each entry's encoding, made once — so the keystore's counter moves and the peers that witness
the new state witness the entry. :meth:`AuditLog.append_journaled` is for the decisions whose
state change no peer witnesses anyway (a signing in one step, which exchanges no notes): its
entry is appended to the keystore's journal instead (:meth:`Keystore.journal_append`: one
``write`` and one ``fdatasync``, sealed, no manifest rewrite), and the next manifest write
anchors the journal (keystore rule 8), committing the counter to it. A journaled write compacts
too once the journal holds :data:`COMPACT_RECORDS` records or :data:`COMPACT_BYTES`. At open the
log reads the inline value and the journal after it, and checks that every journal entry chains
to the one before. Entries appended while a write is in flight are made durable together by the
next one (group commit: one write for all of them — a compaction if any of them needs one —
each caller still waits for the write that holds its entry).

**Mirroring.** :meth:`AuditLog.pending` lists durable entries only (an entry whose write fails
is never mirrored; its sequence number is used again). :meth:`AuditLog.mirrored` does not write:
acknowledged entries leave :meth:`AuditLog.pending` at once and the record with the next
compaction (:meth:`AuditLog.forget_mirrored` compacts at once, at shutdown). A crash before that loses only
the acknowledgement: the restarted node sends those entries again, byte for byte, and the
coordinator takes identical entries as duplicates (``POST /v1/audit`` is idempotent per
``seq``). A full or read-only state disk: :meth:`AuditLog.append` raises the keystore's error (an
entry that cannot be kept is never reported as written); mirroring goes on.

**Backlog.** An entry is never dropped before the coordinator has acknowledged it: dropping one
would leave a gap that erases history. So the entries not yet acknowledged (the backlog) are
bounded instead — at most ``max_pending`` entries and ``max_pending_bytes`` of their records —
and once the backlog is full :meth:`AuditLog.append` refuses the entry with
:class:`AuditBacklogFull`: the decision it would record must not be taken (the node refuses the
task) until acknowledgements make room. An entry larger than the coordinator takes
(:data:`MAX_ENTRY_BYTES`) could never be mirrored and is refused with :class:`AuditEntryTooLarge`.
Both are :class:`AuditRefused`; a refused entry is not signed and takes no sequence number.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from shardguard.channel import NodeKeys
from shardguard.channel.identity import verify_signature
from shardguard.coordinator import wire
from shardguard.node.keystore import Keystore, KeystoreError, KeystoreReason

__all__ = [
    "AUDIT_CONTEXT",
    "COMPACT_BYTES",
    "COMPACT_RECORDS",
    "GENESIS",
    "MAX_ENTRY_BYTES",
    "MAX_PENDING",
    "MAX_PENDING_BYTES",
    "AuditBacklogFull",
    "AuditChainError",
    "AuditEntryTooLarge",
    "AuditLog",
    "AuditRefused",
    "ChainFault",
    "durable_record",
    "entry_hash",
    "verify_chain",
]

AUDIT_CONTEXT = wire.AUDIT_CONTEXT
#: The ``prev`` of entry 1.
GENESIS: Final = "00" * 32
_STATE = "audit"  # {"seq", "hash", "pending": [...]}: written at each compaction
#: The journal is folded into the manifest once it holds this many records ...
COMPACT_RECORDS: Final = 256
#: ... or this many bytes.
COMPACT_BYTES: Final = 1 << 20
#: Default bound on the backlog (entries not acknowledged by the coordinator): entries ...
MAX_PENDING: Final = 1000
#: ... and bytes of their kept records (canonical JSON; the keystore record is about this size).
MAX_PENDING_BYTES: Final = 4 << 20
#: Largest entry (canonical JSON bytes) the coordinator mirrors (``max_audit_entry_bytes``).
MAX_ENTRY_BYTES: Final = 64 * 1024

log = logging.getLogger("shardguard.node.audit")
_HEX64 = re.compile("[0-9a-f]{64}")


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


entry_hash = wire.audit_entry_hash


class AuditRefused(Exception):
    """:meth:`AuditLog.append` would not take the entry: the decision it records must not be
    taken (the node refuses the task instead). ``reason`` names which refusal (``BACKLOG_FULL``,
    ``ENTRY_TOO_LARGE``). Messages carry counts and event names only."""

    reason = "REFUSED"


class AuditBacklogFull(AuditRefused):
    """The coordinator has not acknowledged ``pending`` entries (``pending_bytes`` of records)
    and one more would pass ``max_pending`` / ``max_pending_bytes``. Nothing is dropped: the
    backlog drains as the coordinator acknowledges entries (:meth:`AuditLog.mirrored`)."""

    reason = "BACKLOG_FULL"

    def __init__(self, *, event: str, pending: int, pending_bytes: int, max_pending: int, max_pending_bytes: int) -> None:
        self.event = event
        self.pending = pending
        self.pending_bytes = pending_bytes
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        super().__init__(
            f"audit entry {event!r} refused: {pending} entries ({pending_bytes} bytes) not yet mirrored by the "
            f"coordinator, at most {max_pending} entries and {max_pending_bytes} bytes are kept unmirrored"
        )


class AuditEntryTooLarge(AuditRefused):
    """The entry would be ``size`` bytes, more than the coordinator mirrors (``limit``)."""

    reason = "ENTRY_TOO_LARGE"

    def __init__(self, *, event: str, size: int, limit: int) -> None:
        self.event = event
        self.size = size
        self.limit = limit
        super().__init__(f"audit entry {event!r} refused: {size} bytes, more than the {limit} the coordinator mirrors")


class ChainFault(enum.Enum):
    """Why :func:`verify_chain` rejected an entry."""

    MALFORMED = "malformed record"
    HASH = "hash does not match its content"
    NO_KEY = "no signing key for it"
    SIGNATURE = "signature does not verify"
    SEQ_MISMATCH = "sequence number inside differs"
    ORDER = "out of sequence order"
    DUPLICATE = "sequence number given twice"
    START = "the chain does not start where expected"
    GAP = "entries are missing before it"
    LINK = "does not chain to the entry before"


class AuditChainError(ValueError):
    """:func:`verify_chain` rejected the records at entry ``seq`` (None: the record's own
    ``seq`` is unreadable) for ``fault``; ``expected`` is the sequence number that should have
    come there (for ``START``, ``GAP``, ``ORDER``, ``DUPLICATE``; for ``GAP`` the first missing one)."""

    def __init__(self, seq: int | None, fault: ChainFault, detail: str = "", *, expected: int | None = None) -> None:
        self.seq = seq
        self.fault = fault
        self.expected = expected
        self.detail = detail
        where = "audit record" if seq is None else f"audit entry {seq}"
        super().__init__(f"{where}: {fault.value}{': ' + detail if detail else ''}")


class _Kept:
    """One entry's mirror record and its canonical JSON (encoded once, spliced into every write)."""

    __slots__ = ("json", "record", "seq")

    def __init__(self, record: dict[str, Any], encoded: bytes | None = None) -> None:
        self.seq = int(record["seq"])
        self.record = record
        self.json = _canonical(record) if encoded is None else encoded


class _Batch:
    """The entries appended while one write was in flight: made durable together by the next."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = False
        self.error: BaseException | None = None


class AuditLog:
    """The node's audit log on its keystore. One instance per keystore: it keeps the head and
    the kept entries in memory (read once here) and is the only writer of their record."""

    def __init__(
        self,
        keystore: Keystore,
        keys: NodeKeys,
        *,
        clock: Callable[[], dt.datetime] | None = None,
        max_pending: int = MAX_PENDING,
        max_pending_bytes: int = MAX_PENDING_BYTES,
    ) -> None:
        if max_pending < 1 or max_pending_bytes < 1:
            raise ValueError("the audit backlog bounds must be positive")
        self._max_pending = max_pending
        self._max_pending_bytes = max_pending_bytes
        self._ks = keystore
        self._keys = keys
        self._signer = keys.card().identity_public_key.hex()
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._cv = threading.Condition(threading.Lock())
        head, kept = _load(keystore)
        # What the keystore holds (the durable head and record) ...
        self._durable: tuple[int, str] = head
        # ... and the head with the entries appended since, not yet durable; ``_kept`` lists
        # both, in sequence order.
        self._head = self._durable
        self._kept = kept
        # Sequence numbers the coordinator acknowledged that the durable record still lists:
        # the next write drops them (mirrored() writes nothing of its own).
        self._acked: set[int] = set()
        self._batch = _Batch()  # entries waiting for the next write
        self._writing = False  # a write is in flight (its writer does not hold _cv meanwhile)
        # Entries (and forget_mirrored calls) that need a compaction, and how many of them the
        # last successful compaction covered: the next write compacts while these differ.
        self._counted = 0
        self._compacted = 0

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Add one entry; return its mirror record once the entry is durable (and never before).

        The write that makes it durable is a manifest write (a compaction of the journal): the
        keystore's counter moves, and peers that witness the new state witness the entry.

        Group commit: entries appended while a write is in flight wait for it and are then made
        durable together by one write, so concurrent tasks share a keystore transaction. If the
        write fails, every entry not yet durable fails with it (those appended meanwhile chain
        to the failed ones) and the head goes back to the durable one: a failed entry was never
        returned, mirrored or released, and its sequence number is used again.

        Raises :class:`AuditBacklogFull` when the entries the coordinator has not acknowledged
        (durable or not) fill the backlog, :class:`AuditEntryTooLarge` for an entry the
        coordinator would not mirror: nothing is signed or written then, and the caller must not
        take the decision the entry would have recorded."""
        return self._append(event, fields, journaled=False)

    def append_journaled(self, event: str, **fields: Any) -> dict[str, Any]:
        """:meth:`append`, made durable by a journal append (one ``write``, one ``fdatasync``)
        unless a compaction is due: the keystore's counter does not move. For the decisions
        whose state change no peer witnesses anyway (a signing in one step): the next manifest
        write anchors the journal, and so commits the counter peers witness to these entries."""
        return self._append(event, fields, journaled=True)

    def _append(self, event: str, fields: Mapping[str, Any], *, journaled: bool) -> dict[str, Any]:
        with self._cv:
            seq = self._head[0] + 1
            body = {
                **fields,
                "seq": seq,
                "time": self._clock().isoformat(timespec="milliseconds"),
                "node": self._keys.node_id,
                "event": event,
                "prev": self._head[1],
            }
            entry = _canonical(body)
            if len(entry) > MAX_ENTRY_BYTES:
                raise AuditEntryTooLarge(event=event, size=len(entry), limit=MAX_ENTRY_BYTES)
            self._check_backlog(event, len(entry))
            h = entry_hash(entry)
            sig = self._keys.sign(AUDIT_CONTEXT, bytes.fromhex(h))
            record = {
                "seq": seq,
                "entry": base64.b64encode(entry).decode(),
                "hash": h,
                "signature": base64.b64encode(sig).decode(),
                # Which key signed it: a restarted node (new key) mirrors older entries too.
                "signer": self._signer,
            }
            self._kept.append(_Kept(record))
            self._head = (seq, h)
            if not journaled:
                self._counted += 1
            self._commit(self._batch)
            return dict(record)

    @property
    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the newest entry (``(0, GENESIS)`` for an empty log)."""
        with self._cv:
            return self._head

    def continue_after(self, seq: int, prev_hash: str) -> None:
        """Start an empty log after entry ``seq`` (hash ``prev_hash``) of a chain kept elsewhere
        — the coordinator's mirror of a node whose state was lost — so that its next entry is
        ``seq + 1`` and links to that one. Durable when it returns (one keystore write). The
        caller records where it took the head from in its next entry: nothing here can check it."""
        # The next entry must be mirrorable (the coordinator takes seq ≤ 2^63 − 1), and the hash is
        # spliced into the keystore's JSON as it is: exactly 64 lower-case hex digits (fromhex
        # would let whitespace through).
        if type(seq) is not int or not 0 <= seq < (1 << 63) - 1:
            raise ValueError("seq must be an int in 0..2^63-2")
        if not isinstance(prev_hash, str) or not _HEX64.fullmatch(prev_hash):
            raise ValueError("prev_hash must be 64 lower-case hex digits")
        with self._cv:
            if self._head != (0, GENESIS) or self._kept or self._writing:
                raise ValueError("only an empty log continues another chain")
            self._ks.put_state_json(_STATE, b'{"hash":"%s","pending":[],"seq":%d}' % (prev_hash.encode(), seq), inline=True)
            self._head = self._durable = (seq, prev_hash)

    def _check_backlog(self, event: str, entry_size: int) -> None:
        """Raise :class:`AuditBacklogFull` if one more entry (``entry_size`` bytes, its record
        about 4/3 of that plus a fixed part) would pass the backlog's bounds. Acknowledged
        entries the record still lists do not count: the next write drops them. Called holding
        ``_cv``."""
        backlog = [k for k in self._kept if k.seq not in self._acked]
        size = sum(len(k.json) for k in backlog)
        record = (entry_size + 2) // 3 * 4 + 400  # base64 entry, hash, signature, signer, keys
        if len(backlog) + 1 > self._max_pending or size + record > self._max_pending_bytes:
            raise AuditBacklogFull(
                event=event,
                pending=len(backlog),
                pending_bytes=size,
                max_pending=self._max_pending,
                max_pending_bytes=self._max_pending_bytes,
            )

    def _commit(self, batch: _Batch) -> None:
        """Wait until ``batch`` is durable (raise its write's error if it failed), writing it and
        whatever else is appended meanwhile if no write is in flight. Called holding ``_cv``."""
        while not batch.done:
            if self._writing:
                self._cv.wait()
                continue
            self._write()
        if batch.error is not None:
            e = batch.error
            if isinstance(e, KeystoreError):  # one exception object per raising thread
                raise KeystoreError(e.reason, e.path, e.detail, os_errno=e.errno) from None
            raise e

    def _write(self) -> None:
        writing, self._batch = self._batch, _Batch()
        head, acked = self._head, set(self._acked)
        new = [k.json for k in self._kept if k.seq > self._durable[0]]
        # Read without the keystore's lock: this log is the journal's only writer, and one write
        # of it is in flight at a time (this one), so nothing changes it meanwhile.
        records, size = self._ks.journal_size
        counted = self._counted
        compact = counted > self._compacted or records + len(new) > COMPACT_RECORDS or size + sum(map(len, new)) > COMPACT_BYTES
        # Only acknowledged entries leave the record: append() bounds the rest (never dropped).
        kept = [k for k in self._kept if k.seq not in acked] if compact else []
        data = b"".join(
            (b'{"hash":"', head[1].encode(), b'","pending":[', b",".join([k.json for k in kept]), b'],"seq":', b"%d}" % head[0])
        ) if compact else b""  # fmt: skip
        self._writing = True
        self._cv.release()
        error: BaseException | None = None
        try:
            if compact and records:
                self._ks.compact_journal(_STATE, data)
            elif compact:  # the journal is empty: the same manifest, its generation kept
                self._ks.put_state_json(_STATE, data, inline=True)
            else:
                self._ks.journal_append(new)
        except BaseException as e:
            error = e
        finally:
            self._cv.acquire()
            self._writing = False
        writing.done = True
        if error is None:
            self._durable = head
            if compact:
                self._kept = kept + [k for k in self._kept if k.seq > head[0]]
                self._acked -= acked
                self._compacted = max(self._compacted, counted)
        else:
            writing.error = error
            if self._head != head:  # appended meanwhile, on top of entries that are not durable
                self._batch.done, self._batch.error = True, error
                self._batch = _Batch()
            self._head = self._durable
            self._kept = [k for k in self._kept if k.seq <= self._durable[0]]
        self._cv.notify_all()

    def pending(self) -> list[dict[str, Any]]:
        """Durable entries the coordinator has not acknowledged yet (oldest first)."""
        with self._cv:
            last = self._durable[0]
            return [dict(k.record) for k in self._kept if k.seq <= last and k.seq not in self._acked]

    def mirrored(self, seqs: Iterable[int]) -> None:
        """Forget entries the coordinator has acknowledged: at once in :meth:`pending`, and in
        the keystore record with the next write (no write of its own; see the module docstring)."""
        with self._cv:
            last = self._durable[0]
            self._acked.update(s for s in seqs if s <= last)

    def forget_mirrored(self) -> None:
        """Write the record without the acknowledged entries now (at shutdown, so that a restart
        does not send them again). Best effort: a failed write is logged, not raised."""
        with self._cv:
            while self._writing:
                self._cv.wait()
            if not self._acked:
                return
            self._counted += 1
            try:
                self._commit(self._batch)
            except KeystoreError as e:
                log.warning("mirrored audit entries stay in the keystore record until it can be written: %s", e)


def _load(keystore: Keystore) -> tuple[tuple[int, str], list[_Kept]]:
    """The durable head and kept entries: the inline value of the last compaction, then the
    journal's entries, each checked to follow the one before."""
    state = keystore.get_state(_STATE, None) or {"seq": 0, "hash": GENESIS, "pending": []}
    kept = [_Kept(r) for r in state["pending"]]
    head = (int(state["seq"]), str(state["hash"]))
    for i, payload in enumerate(keystore.journal_records()):
        record = _journal_entry(payload, head)
        if record is None:
            detail = f"journal record {i} is not the audit entry after entry {head[0]}"
            raise KeystoreError(KeystoreReason.INVALID_RECORD, keystore.directory, detail)
        kept.append(_Kept(record, payload))
        head = (record["seq"], record["hash"])
    return head, kept


def durable_record(keystore: Keystore) -> dict[str, Any]:
    """What the keystore holds of the audit log, as a restarted node reads it: ``{"seq",
    "hash"}`` of the head and ``pending``, every kept entry's mirror record, acknowledged or not
    (acknowledged ones leave at the next compaction)."""
    (seq, h), kept = _load(keystore)
    return {"seq": seq, "hash": h, "pending": [k.record for k in kept]}


def _journal_entry(payload: bytes, head: tuple[int, str]) -> dict[str, Any] | None:
    """The mirror record a journal payload holds if it is the entry after ``head`` (its
    ``seq`` next, its hash its entry's, its entry's ``prev`` the head's hash), else None. The
    records are sealed: this catches a fault of ours, not the host's."""
    try:
        record = json.loads(payload)
        entry = base64.b64decode(record["entry"], validate=True)
        body = json.loads(entry)
        if record["seq"] != head[0] + 1 or body["seq"] != record["seq"] or body["prev"] != head[1]:
            return None
        if record["hash"] != entry_hash(entry) or _canonical(record) != payload:
            return None
    except (ValueError, TypeError, KeyError, binascii.Error):
        return None
    return record if isinstance(record, dict) else None


def verify_chain(
    records: Iterable[Mapping[str, Any]],
    identity_keys: Mapping[int, bytes] | bytes | None = None,
    *,
    start: int = 1,
    prev_hash: str | None = None,
    allow_segments: bool = False,
) -> list[dict[str, Any]]:
    """Check a node's mirrored entries offline and return them decoded, in order.

    Every record's hash and its signature by the identity key that signed it: one key, or per-seq
    keys after restarts; None: the key each record names (``signer`` as the node keeps it,
    ``identity_public_key`` as the coordinator's mirror lists it) — and then it is the caller's
    part to check that those keys are the node's attested ones.

    And that the records are one unbroken chain: given in ``seq`` order (as ``pending()`` and
    the coordinator list them), the first one is entry ``start`` (default 1, the node's first
    entry), each next one is the one after it, and each entry's ``prev`` is the hash of the one
    before — for entry 1 the genesis value; for a chain that starts later, ``prev_hash`` (the
    hash of entry ``start - 1``, as verified before), else its first link is not checked. A
    missing, repeated or misplaced entry is rejected. The end is the caller's to check: entries
    dropped after the last given one look like a shorter log (compare the last ``seq`` with the
    head the node reports).

    ``allow_segments=True`` accepts verified segments instead: entries may start anywhere from
    ``start`` on and gaps are allowed (links are checked within each run of consecutive entries;
    order and duplicates still are). Only for a partial view (a page of the mirror, a node's
    ``pending()`` after acknowledgements), never to conclude that no entry is missing.

    Raises :class:`AuditChainError` (a ``ValueError``) naming the first bad entry's ``seq`` and
    its :class:`ChainFault`."""
    if start < 1:
        raise ValueError("start must be a sequence number (>= 1)")
    out: list[dict[str, Any]] = []
    # The entry before the next one: (seq, its hash; None when the caller does not know it).
    last: tuple[int, str | None] = (start - 1, GENESIS if start == 1 and prev_hash is None else prev_hash)
    first = True
    for r in records:
        try:
            seq = int(r["seq"])
        except (KeyError, TypeError, ValueError):
            raise AuditChainError(None, ChainFault.MALFORMED, "no sequence number") from None
        try:
            entry = base64.b64decode(r["entry"])
            signature = base64.b64decode(r["signature"])
        except (KeyError, TypeError, binascii.Error):
            raise AuditChainError(seq, ChainFault.MALFORMED, "entry or signature is not base64") from None
        expected = last[0] + 1
        if not first and seq == last[0]:
            raise AuditChainError(seq, ChainFault.DUPLICATE, expected=expected)
        if seq < expected:
            fault = ChainFault.START if first else ChainFault.ORDER
            raise AuditChainError(seq, fault, f"expected entry {expected}", expected=expected)
        if seq > expected and not allow_segments:
            if first:
                raise AuditChainError(seq, ChainFault.START, f"expected entry {expected}", expected=expected)
            missing = f"entry {expected}" if seq == expected + 1 else f"entries {expected}..{seq - 1}"
            raise AuditChainError(seq, ChainFault.GAP, f"{missing} missing", expected=expected)
        h = entry_hash(entry)
        if h != r.get("hash"):
            raise AuditChainError(seq, ChainFault.HASH)
        if identity_keys is None:
            named = r.get("signer") or r.get("identity_public_key")
            if not isinstance(named, str):
                raise AuditChainError(seq, ChainFault.NO_KEY, "the record names none")
            try:
                pk = bytes.fromhex(named)
            except ValueError:
                raise AuditChainError(seq, ChainFault.MALFORMED, "signing key is not hex") from None
        elif isinstance(identity_keys, bytes):
            pk = identity_keys
        elif seq in identity_keys:
            pk = identity_keys[seq]
        else:
            raise AuditChainError(seq, ChainFault.NO_KEY, "none given for it")
        if not verify_signature(pk, AUDIT_CONTEXT, bytes.fromhex(h), signature):
            raise AuditChainError(seq, ChainFault.SIGNATURE)
        try:
            body = json.loads(entry)
        except ValueError:
            raise AuditChainError(seq, ChainFault.MALFORMED, "entry is not JSON") from None
        if not isinstance(body, dict):
            raise AuditChainError(seq, ChainFault.MALFORMED, "entry is not a JSON object")
        if body.get("seq") != seq:
            raise AuditChainError(seq, ChainFault.SEQ_MISMATCH)
        if seq == expected and last[1] is not None and body.get("prev") != last[1]:
            before = f"the hash of entry {last[0]}" if seq > 1 else "the genesis value"
            raise AuditChainError(seq, ChainFault.LINK, f"its prev is not {before}")
        last = (seq, h)
        first = False
        out.append(body)
    return out
