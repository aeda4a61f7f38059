"""The node's hash-chained, signed audit log (ARCHITECTURE §7).

Every decision of the node — a key generated, a signature made or refused (and why), a refresh
committed or dropped, a ban — is an entry::

    entry = canonical JSON {"seq", "time", "node", "event", "prev", …fields}
    hash  = SHA-256("shardguard/audit/v1" 0x00 ‖ entry)        (so "prev" chains every entry)
    sig   = Ed25519 by the node's identity key over frame(AUDIT_CONTEXT) ‖ frame(hash)

The head (``seq``, ``hash``) and the entries not yet mirrored are kept in one sealed keystore
record (one durable write per entry),
so the chain continues across restarts (a restarted node signs with its new identity key; the
coordinator's mirror records which attested key signed each entry). The coordinator mirrors the
entries but cannot forge, reorder or drop one unnoticed: :func:`verify_chain` checks the chain
and every signature offline. Entries hold public facts only (ids, digests, reasons) — never a
share, nonce or plaintext payload.

A full or read-only state disk: :meth:`AuditLog.append` raises the keystore's error (an entry
that cannot be kept is never reported as written). :meth:`AuditLog.mirrored` does not raise for
it: the coordinator already holds those entries and only *forgetting* them failed, so they are
kept out of :meth:`AuditLog.pending` in memory and dropped from the record by the next write
that succeeds (a restart before that re-sends them; the coordinator takes identical entries as
duplicates). The background flusher calling it therefore survives the fault.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from shardguard.channel import NodeKeys
from shardguard.channel.identity import verify_signature
from shardguard.node.keystore import Keystore, KeystoreError

__all__ = ["AUDIT_CONTEXT", "AuditLog", "entry_hash", "verify_chain"]

AUDIT_CONTEXT = b"shardguard/audit/v1"
_GENESIS = "00" * 32
_STATE = "audit"  # {"seq", "hash", "pending": [...]}: one keystore write per entry
_MAX_PENDING = 1000

log = logging.getLogger("shardguard.node.audit")


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def entry_hash(entry: bytes) -> str:
    return hashlib.sha256(AUDIT_CONTEXT + b"\x00" + entry).hexdigest()


class AuditLog:
    def __init__(self, keystore: Keystore, keys: NodeKeys, *, clock: Callable[[], dt.datetime] | None = None) -> None:
        self._ks = keystore
        self._keys = keys
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._lock = threading.Lock()
        # Sequence numbers the coordinator acknowledged but the record still lists as pending
        # (the write that forgets them failed); empty again after the next successful write.
        self._acked: set[int] = set()

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Add one entry (persisted before this returns); return its mirror record."""
        with self._lock:
            state = self._ks.get_state(_STATE, {"seq": 0, "hash": _GENESIS, "pending": []})
            seq = int(state["seq"]) + 1
            body = {
                **fields,
                "seq": seq,
                "time": self._clock().isoformat(timespec="milliseconds"),
                "node": self._keys.node_id,
                "event": event,
                "prev": state["hash"],
            }
            entry = _canonical(body)
            h = entry_hash(entry)
            sig = self._keys.sign(AUDIT_CONTEXT, bytes.fromhex(h))
            record = {
                "seq": seq,
                "entry": base64.b64encode(entry).decode(),
                "hash": h,
                "signature": base64.b64encode(sig).decode(),
            }
            kept = [r for r in state["pending"] if r["seq"] not in self._acked]
            pending = [*kept[-(_MAX_PENDING - 1) :], record]
            self._ks.put_state(_STATE, {"seq": seq, "hash": h, "pending": pending})
            self._acked.clear()
            return record

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self._ks.get_state(_STATE, {"pending": []})["pending"] if r["seq"] not in self._acked]

    def mirrored(self, seqs: Iterable[int]) -> None:
        """Forget entries the coordinator has acknowledged. If the keystore cannot write (full
        or read-only disk), they are forgotten in memory only and the next successful write
        drops them (see the module docstring); this does not raise for that."""
        with self._lock:
            state = self._ks.get_state(_STATE, None)
            if state is None:
                return
            done = set(seqs) | self._acked
            left = [r for r in state["pending"] if r["seq"] not in done]
            if len(left) == len(state["pending"]):
                return
            try:
                self._ks.put_state(_STATE, {**state, "pending": left})
            except KeystoreError as e:
                self._acked = {int(r["seq"]) for r in state["pending"] if r["seq"] in done}
                log.warning("mirrored audit entries stay in the keystore record until it can be written: %s", e)
                return
            self._acked.clear()


def verify_chain(records: Iterable[Mapping[str, Any]], identity_keys: Mapping[int, bytes] | bytes) -> list[dict[str, Any]]:
    """Check a node's mirrored entries offline: hashes, ``prev`` links for consecutive ``seq``,
    and every signature by the identity key that signed it (one key, or per-seq keys after
    restarts). Returns the decoded entries; raises ``ValueError`` naming the first bad one."""
    out: list[dict[str, Any]] = []
    prev: tuple[int, str] | None = None
    for r in sorted(records, key=lambda r: int(r["seq"])):
        seq = int(r["seq"])
        entry = base64.b64decode(r["entry"])
        h = entry_hash(entry)
        if h != r["hash"]:
            raise ValueError(f"audit entry {seq}: hash does not match its content")
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
