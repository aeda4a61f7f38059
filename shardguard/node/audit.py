"""The node's hash-chained, signed audit log (ARCHITECTURE §7).

Every decision of the node — a key generated, a signature made or refused (and why), a refresh
committed or dropped, a ban — is an entry::

    entry = canonical JSON {"seq", "time", "node", "event", "prev", …fields}
    hash  = SHA-256("shardguard/audit/v1" 0x00 ‖ entry)        (so "prev" chains every entry)
    sig   = Ed25519 by the node's identity key over frame(AUDIT_CONTEXT) ‖ frame(hash)

The head (``seq``, ``hash``) and the entries not yet mirrored are kept in one sealed keystore
record, so the chain continues across restarts (a restarted node signs with its new identity
key; the coordinator's mirror records which attested key signed each entry). The coordinator mirrors the
entries but cannot forge, reorder or drop one unnoticed: :func:`verify_chain` checks the chain
and every signature offline. Entries hold public facts only (ids, digests, reasons) — never a
share, nonce or plaintext payload.

**Writes.** :meth:`AuditLog.append` returns only once its entry is durable in that record; the
caller releases nothing before. Entries appended while a write is in flight are made durable
together by the next one (group commit: one keystore transaction for all of them, each caller
still waits for the write that holds its entry). The record is written as canonical JSON
spliced from each entry's encoding, made once (:meth:`Keystore.put_state_json`).

**Mirroring.** :meth:`AuditLog.pending` lists durable entries only (an entry whose write fails
is never mirrored; its sequence number is used again). :meth:`AuditLog.mirrored` does not write:
acknowledged entries leave :meth:`AuditLog.pending` at once and the record with the next write
(:meth:`AuditLog.forget_mirrored` writes at once, at shutdown). A crash before that loses only
the acknowledgement: the restarted node sends those entries again, byte for byte, and the
coordinator takes identical entries as duplicates (``POST /v1/audit`` is idempotent per
``seq``). A full or read-only state disk: :meth:`AuditLog.append` raises the keystore's error (an
entry that cannot be kept is never reported as written); mirroring goes on.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from shardguard.channel import NodeKeys
from shardguard.channel.identity import verify_signature
from shardguard.coordinator import wire
from shardguard.node.keystore import Keystore, KeystoreError

__all__ = ["AUDIT_CONTEXT", "AuditLog", "entry_hash", "verify_chain"]

AUDIT_CONTEXT = wire.AUDIT_CONTEXT
_GENESIS = "00" * 32
_STATE = "audit"  # {"seq", "hash", "pending": [...]}: one keystore write per entry
_MAX_PENDING = 1000

log = logging.getLogger("shardguard.node.audit")


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


entry_hash = wire.audit_entry_hash


class _Kept:
    """One entry's mirror record and its canonical JSON (encoded once, spliced into every write)."""

    __slots__ = ("json", "record", "seq")

    def __init__(self, record: dict[str, Any]) -> None:
        self.seq = int(record["seq"])
        self.record = record
        self.json = _canonical(record)


class _Batch:
    """The entries appended while one write was in flight: made durable together by the next."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = False
        self.error: BaseException | None = None


class AuditLog:
    """The node's audit log on its keystore. One instance per keystore: it keeps the head and
    the kept entries in memory (read once here) and is the only writer of their record."""

    def __init__(self, keystore: Keystore, keys: NodeKeys, *, clock: Callable[[], dt.datetime] | None = None) -> None:
        self._ks = keystore
        self._keys = keys
        self._signer = keys.card().identity_public_key.hex()
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._cv = threading.Condition(threading.Lock())
        state = keystore.get_state(_STATE, None) or {"seq": 0, "hash": _GENESIS, "pending": []}
        kept = [_Kept(r) for r in state["pending"]]
        # What the keystore holds (the durable head and record) ...
        self._durable: tuple[int, str] = (int(state["seq"]), str(state["hash"]))
        # ... and the head with the entries appended since, not yet durable; ``_kept`` lists
        # both, in sequence order.
        self._head = self._durable
        self._kept = kept
        # Sequence numbers the coordinator acknowledged that the durable record still lists:
        # the next write drops them (mirrored() writes nothing of its own).
        self._acked: set[int] = set()
        self._batch = _Batch()  # entries waiting for the next write
        self._writing = False  # a write is in flight (its writer does not hold _cv meanwhile)

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Add one entry; return its mirror record once the entry is durable (and never before).

        Group commit: entries appended while a write is in flight wait for it and are then made
        durable together by one write, so concurrent tasks share a keystore transaction. If the
        write fails, every entry not yet durable fails with it (those appended meanwhile chain
        to the failed ones) and the head goes back to the durable one: a failed entry was never
        returned, mirrored or released, and its sequence number is used again."""
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
            self._commit(self._batch)
            return dict(record)

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
        kept = [k for k in self._kept if k.seq not in acked]
        if len(kept) > _MAX_PENDING:
            log.error("%d audit entries were never mirrored; the oldest are dropped from the keystore", len(kept))
            kept = kept[-_MAX_PENDING:]
        data = b"".join(
            (b'{"hash":"', head[1].encode(), b'","pending":[', b",".join([k.json for k in kept]), b'],"seq":', b"%d}" % head[0])
        )
        self._writing = True
        self._cv.release()
        error: BaseException | None = None
        try:
            self._ks.put_state_json(_STATE, data)
        except BaseException as e:
            error = e
        finally:
            self._cv.acquire()
            self._writing = False
        writing.done = True
        if error is None:
            self._durable = head
            self._kept = kept + [k for k in self._kept if k.seq > head[0]]
            self._acked -= acked
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
            try:
                self._commit(self._batch)
            except KeystoreError as e:
                log.warning("mirrored audit entries stay in the keystore record until it can be written: %s", e)


def verify_chain(
    records: Iterable[Mapping[str, Any]], identity_keys: Mapping[int, bytes] | bytes | None = None
) -> list[dict[str, Any]]:
    """Check a node's mirrored entries offline: hashes, ``prev`` links for consecutive ``seq``,
    and every signature by the identity key that signed it (one key, or per-seq keys after
    restarts; None: the key each record names — ``signer`` as the node keeps it,
    ``identity_public_key`` as the coordinator's mirror lists it — and then it is the caller's
    part to check that those keys are the node's attested ones). Returns the decoded entries;
    raises ``ValueError`` naming the first bad one."""
    out: list[dict[str, Any]] = []
    prev: tuple[int, str] | None = None
    for r in sorted(records, key=lambda r: int(r["seq"])):
        seq = int(r["seq"])
        entry = base64.b64decode(r["entry"])
        h = entry_hash(entry)
        if h != r["hash"]:
            raise ValueError(f"audit entry {seq}: hash does not match its content")
        if identity_keys is None:
            named = r.get("signer") or r.get("identity_public_key")
            if not isinstance(named, str):
                raise ValueError(f"audit entry {seq}: names no signing key")
            pk = bytes.fromhex(named)
        else:
            pk = identity_keys if isinstance(identity_keys, bytes) else identity_keys[seq]
        if not verify_signature(pk, AUDIT_CONTEXT, bytes.fromhex(h), base64.b64decode(r["signature"])):
            raise ValueError(f"audit entry {seq}: signature does not verify")
        body = json.loads(entry)
        if body.get("seq") != seq:
            raise ValueError(f"audit entry {seq}: sequence number inside differs")
        if prev is not None and prev[0] + 1 == seq and body.get("prev") != prev[1]:
            raise ValueError(f"audit entry {seq}: does not chain to entry {prev[0]}")
        prev = (seq, h)
        out.append(body)
    return out
