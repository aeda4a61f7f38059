"""The sealed, crash-safe state store of one signer node (ARCHITECTURE §7, issue 6 "Keystore").

What it keeps, in one state directory:

* **shares** — per key id, the node's share (FROST :class:`KeyShare` or DKLs23
  :class:`EcdsaKeyShare`) of the *current* epoch and of any *pending* epochs (two-phase refresh,
  reshare or repair: :meth:`Keystore.stage` / :meth:`Keystore.commit` / :meth:`Keystore.abort`);
* **node state** — small named JSON values (the identity-key seed, policy, the audit log's
  head, …): :meth:`Keystore.put_state` / :meth:`Keystore.get_state` (:meth:`Keystore.put_state_json`
  for a caller that keeps the value's canonical JSON itself), each in a record file of its own
  or, written with ``inline=True``, in the manifest itself (values written often and not
  secret: one file and two fsyncs per write instead of two and four);
* **the witness file** — the latest ``(counter, digest)`` each *peer* announced to this node
  (:meth:`Keystore.record_peer_counter`), used to tell a restarted peer whether it is stale;
* **the journal** — small sealed records appended one ``write`` and one ``fdatasync`` at a time
  (:meth:`Keystore.journal_append`; format in :mod:`shardguard.node.journal`), for a value that
  grows by small pieces often (the audit log's entries): no manifest rewrite per piece. Its
  owner folds it into an inline state value now and then (:meth:`Keystore.compact_journal`,
  which starts a new generation of it).

Files (nothing else in the directory is touched)::

    ks-manifest.sealed                            the manifest (the commit point)
    ks-share.<key id>.e<epoch>.c<counter>.sealed  one share record
    ks-state.<name>.e0.c<counter>.sealed          one node-state record
    ks-witness.sealed                             peers' announced counters
    ks-journal.g<gen>.log                         the journal of the manifest's generation
    ks.lock                                       flock (opened read-only): one writer at a time
    .ks-<random>.tmp                              a write in progress (removed at open)

Key ids and state names match ``[A-Za-z0-9][A-Za-z0-9_-]{0,127}``.

**File format** (every ``.sealed`` file)::

    "SGKS" ‖ 0x01 ‖ u32 BE len(H) ‖ H ‖ u32 BE len(S) ‖ S ‖ SHA-256(everything before)
    H = canonical JSON {"counter", "epoch", "key_id", "kind"}            (clear, for diagnostics)
    S = platform.seal(P, label = "shardguard/keystore/v1" 0x00 kind 0x00 key_id)
    P = canonical JSON {"format": "shardguard-keystore/v1", "store": <store id>, "kind", "key_id",
                        "epoch", "counter", "payload": <JSON>, "payload_sha256": <hex>}

Canonical JSON: sorted keys, no whitespace, ASCII, no NaN. Writes splice P and the manifest
payload from pieces kept encoded (names and hex need no escaping) instead of encoding them whole:
the bytes are the same, tested, and a manifest whose pieces would differ at open is encoded whole
from then on. The manifest payload lists per key
its group key id and the ``{epoch, counter, file, sha256}`` of the current and pending records,
the same for each state record, the values of the inline state (``inline``: name -> value;
the field is left out when there are none, as manifests before it had none), the SHA-256 of
the previous manifest (``prev``) and the last :data:`HISTORY` ``(counter, digest)`` pairs.
``sha256`` pins the exact bytes of each record file.
:meth:`Keystore.state_digest` is SHA-256(``"shardguard/keystore/state/v1" 0x00`` ‖ P) of the
manifest; it commits to the whole state and, through ``prev``, to its history.

Reading checks, in order (first failure wins; :class:`KeystoreError` with a
:class:`KeystoreReason` and the path, never the content): size (``TOO_LARGE``), framing
(``TRUNCATED`` / ``MALFORMED``), file checksum (``CHECKSUM``), clear header against what the
manifest expects (``WRONG_KEY`` / ``WRONG_EPOCH``), file SHA-256 against the manifest
(``DIGEST_MISMATCH``), unsealing under the expected label (``UNSEAL_FAILED``), the sealed fields
(store id ``WRONG_STORE``, kind/key id/epoch/counter), the payload digest, then the payload
itself (a share must decode, carry the record's epoch and the key's group key:
``INVALID_RECORD``).

**Crash-safety rules**

1. Every file is written as a new temp file in the state directory (``O_EXCL``, mode 0600),
   written completely, fsynced, and renamed to its final name. A record file is never modified:
   each write creates a new file whose name carries kind, key id, epoch and the new counter.
2. An operation writes its record files, fsyncs the directory, then writes the manifest (same
   way) and fsyncs the directory again. The manifest rename is the single commit point: the
   durable manifest *is* the state, and the store-wide ``counter`` grows by one per commit.
3. Files a commit made obsolete (the old epoch after :meth:`~Keystore.commit`, a dropped pending
   epoch, a replaced record) are deleted only after that manifest is durable.
4. At open: temp files are deleted. A record file the manifest does not name, with counter
   ≤ manifest counter + 1, is deleted: it is either an obsolete file whose deletion was
   interrupted (≤ counter) or the record of an operation interrupted before its manifest
   (counter + 1). That operation never returned, so it did not happen: an interrupted
   :meth:`~Keystore.stage` leaves no pending epoch, the node never confirmed the new epoch, and
   the refresh cannot commit anywhere (it needs every holder). An *authentic* record with a
   counter > manifest counter + 1 cannot come from a crash (one write in flight at a time): the
   manifest was rolled back → ``STALE_STATE``, nothing is deleted.
5. Pending epochs are durable: a node restarted between :meth:`~Keystore.stage` and
   :meth:`~Keystore.commit` still has both epochs and resolves the pending one with the
   coordinator (commit if every holder confirmed, else abort). The current epoch stays usable
   meanwhile.
6. Every file the manifest names is read and fully validated at open; any failure raises and no
   store object is returned — a state file is never half-read.
7. A write that fails before the commit point (ENOSPC → ``DISK_FULL``; EROFS/EACCES/EPERM →
   ``READ_ONLY``; other → ``IO_ERROR``) removes its temp and record files (best effort), leaves
   memory and disk as they were (except a witness file it wrote first, which holds deferred
   values memory already had: see the rollback defence), and the previous state stays
   loadable. If the directory fsync *after* the manifest rename fails, the outcome on disk is
   unknown: the store answers ``BROKEN`` to everything until it is reopened (which reads
   whatever the disk holds).
8. A journal append writes its records, as one frame, at the end of the file and calls
   ``fdatasync`` on it (the first append of a generation in each process fsyncs the directory
   too, so the file's name is durable even if an earlier process died before it could); only
   then does it return. A failed append cuts the file back to its length before (``BROKEN`` if
   that fails too). Every
   manifest names its journal's generation and how many records the journal held when it was
   written (the *anchor*); a compaction commits a manifest naming the next generation, empty,
   and deletes the old file after (rule 3).
9. At open the journal must hold at least the anchored number of records, each whole frame
   authentic and in place (sealed with its generation and first index): fewer → ``TRUNCATED``
   (``MISSING`` without the file). The journal ends at a frame cut short, with a damaged
   header, or failing its checksum as the file's last frame — a torn tail, from a crash during
   its append, which never returned — and a writable open cuts it off; a frame failing its
   checksum with more after it, or a damaged header with a whole frame after it →
   ``CHECKSUM``. A journal of an older generation is deleted (writable opens); one of a newer
   generation with an authentic frame means the manifest was rolled back →
   ``STALE_STATE`` (while the sealing key is unavailable it is not judged: the open fails
   ``SEALING_UNAVAILABLE``); one with no frame of this store is left alone, and that
   generation's first append replaces it.

**Rollback defence** (ARCHITECTURE §7, ROTE-style). None of the supported platforms gives the
enclave a trusted monotonic counter, and sealing alone cannot tell an old sealed copy from the
newest one: a state directory copied back from a snapshot unseals fine. So the peers are the
witness. After every write the node announces :meth:`Keystore.announcement` ``(counter,
digest)`` to its peers; each peer stores it with :meth:`Keystore.record_peer_counter`
(monotonic: a lower counter, or a different digest at the same counter, is refused with
``PEER_ROLLBACK``) in its witness file — kept outside the manifest so that witnessing does not
change the witness's own counter (no announcement ping-pong). With ``defer=True`` the value is
taken at once and written by the next transaction or journal append of the store (before its
records and manifest, sharing its directory fsyncs) or by :meth:`Keystore.flush_witness`: the
node records a task's witness notes so and they are durable with the task's audit entry, before
its result leaves the node. A restarted node asks peers for
the last value they saw from it and calls :meth:`Keystore.require_fresh`: any peer that saw a
higher counter, or a different digest at a counter we passed through (a fork), is proof that
this directory is an old copy → ``STALE_STATE``; fewer than ``t`` verifiable confirmations →
``UNCONFIRMED`` (retry later). Until then :meth:`Keystore.assert_fresh` refuses, and the node
must not sign. What the peers never saw is not protected: anything whose loss matters (a
committed refresh, a ban, the audit head) must be announced and acknowledged by t peers before
the node acts on it. Locally, a manifest older than the records it should name is detected by
rule 4, and a journal cut below its anchor by rule 9. Journal appends change neither the counter
nor the digest: the records appended since the manifest's last write are covered by neither,
and a copy restored without them passes the peers (the audit log's mirror at the coordinator
sees a restored node's reused sequence numbers: ``audit_conflict``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import fcntl
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import struct
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final, NoReturn

from shardguard.enclave.platform import NotSupported, Platform, SealingError, SealingReason
from shardguard.node.journal import JOURNAL_RE as _JOURNAL_RE
from shardguard.node.journal import MAX_JOURNAL, JournalCorrupt, Parsed, encode_frame, journal_name
from shardguard.node.journal import parse as _parse_journal
from shardguard.protocols.dkls23 import EcdsaKeyShare
from shardguard.protocols.keys import KeyShare

__all__ = [
    "HISTORY",
    "AnyShare",
    "FreshnessReport",
    "KeyStatus",
    "Keystore",
    "KeystoreError",
    "KeystoreReason",
    "PeerCounter",
]

#: A FROST share or a DKLs23 (``ecdsa``) share.
AnyShare = KeyShare | EcdsaKeyShare

FORMAT: Final = "shardguard-keystore/v1"
MAGIC: Final = b"SGKS"
FRAME_VERSION: Final = 1
MANIFEST: Final = "ks-manifest.sealed"
WITNESS: Final = "ks-witness.sealed"
LOCK: Final = "ks.lock"
TMP_PREFIX: Final = ".ks-"
TMP_SUFFIX: Final = ".tmp"
#: How many previous ``(counter, digest)`` pairs the manifest keeps, to check a peer that
#: witnessed an older counter of ours (announce after every write to stay within it).
HISTORY: Final = 256
#: Largest record file: a DKLs23 share carries ~50 KB of OT state per other holder (≤ 254).
MAX_RECORD: Final = 32 << 20
MAX_MANIFEST: Final = 16 << 20
MAX_WITNESS: Final = 4 << 20
MAX_HEADER: Final = 4096
MAX_PEER_ID: Final = 256

_LABEL_PREFIX = b"shardguard/keystore/v1\x00"
_STATE_DIGEST_PREFIX = b"shardguard/keystore/state/v1\x00"
_U32 = struct.Struct(">I")
_NAME = "[A-Za-z0-9][A-Za-z0-9_-]{0,127}"
_NAME_RE = re.compile(f"^{_NAME}$")
_RECORD_RE = re.compile(rf"^ks-(share|state)\.({_NAME})\.e(0|[1-9][0-9]{{0,17}})\.c(0|[1-9][0-9]{{0,17}})\.sealed$")
_SHARE = "share"
_STATE = "state"
_MANIFEST_KIND = "manifest"
_WITNESS_KIND = "witness"
_RECORD_KEYS = frozenset({"format", "store", "kind", "key_id", "epoch", "counter", "payload", "payload_sha256"})
_HEADER_KEYS = frozenset({"kind", "key_id", "epoch", "counter"})


# -- errors ---------------------------------------------------------------------------------


class KeystoreReason(enum.Enum):
    MISSING = "a file the store needs is missing"
    TRUNCATED = "file is truncated"
    MALFORMED = "not a keystore file, or its framing is invalid"
    TOO_LARGE = "file is larger than any the store writes"
    CHECKSUM = "file checksum mismatch (bit rot or tampering)"
    WRONG_KEY = "file belongs to another key id or record kind"
    WRONG_EPOCH = "file belongs to another epoch or counter than the manifest names"
    WRONG_STORE = "record belongs to another keystore"
    DIGEST_MISMATCH = "record does not match the digest the manifest or the record carries"
    UNSEAL_FAILED = "sealed content does not open (tampered, wrong label, or sealed by another platform key)"
    INVALID_RECORD = "record opens but its content is invalid"
    SEALING_UNAVAILABLE = "the platform cannot seal or unseal (no sealing key)"
    STALE_STATE = "this state is older than its peers have witnessed (restored from an old copy?)"
    UNCONFIRMED = "too few peers have confirmed that this state is the newest"
    PEER_ROLLBACK = "a peer announced a state older than, or forked from, one it announced before"
    DISK_FULL = "no space left on the state disk"
    READ_ONLY = "the state disk or directory is read-only or not writable"
    IO_ERROR = "I/O error on the state disk"
    LOCKED = "another process has this keystore open"
    BROKEN = "a write failed after its commit point; reopen the keystore"
    CLOSED = "the keystore is closed"
    NO_SUCH_KEY = "no such key in the keystore"
    NO_SUCH_EPOCH = "no such epoch of this key"
    CONFLICT = "the operation conflicts with the stored state"
    INVALID_ARGUMENT = "invalid argument"


class KeystoreError(Exception):
    """A keystore operation failed; ``reason`` says how, ``path`` where. Messages never carry
    record contents (shares, seeds): only fixed texts, names, epochs and counters."""

    def __init__(self, reason: KeystoreReason, path: Path | str, detail: str = "", *, os_errno: int | None = None) -> None:
        self.reason = reason
        self.path = str(path)
        self.detail = detail
        self.errno = os_errno
        super().__init__(f"{self.path}: {reason.value}{': ' + detail if detail else ''}")


def _os_reason(e: OSError) -> KeystoreReason:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return KeystoreReason.DISK_FULL
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return KeystoreReason.READ_ONLY
    return KeystoreReason.IO_ERROR


def _sync_path(path: Path, *, directory: bool = False) -> None:
    """fsync a directory, or fdatasync a file, through a descriptor of its own."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0))
    try:
        if directory:
            os.fsync(fd)
        else:
            os.fdatasync(fd)
    finally:
        os.close(fd)


def _is_read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _os_error(e: OSError, path: Path | str, what: str) -> KeystoreError:
    return KeystoreError(_os_reason(e), path, f"{what}: {e.strerror or type(e).__name__}", os_errno=e.errno)


# -- public value types ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KeyStatus:
    """Epochs held for one key id: ``current`` (``None`` while only pending epochs exist)."""

    key_id: str
    current: int | None
    pending: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class PeerCounter:
    """The latest ``(counter, digest)`` a peer announced to this node."""

    counter: int
    digest: bytes


@dataclasses.dataclass(frozen=True)
class FreshnessReport:
    """Outcome of :meth:`Keystore.check_witnessed` (and of a successful
    :meth:`Keystore.require_fresh`): ``confirmed`` peers witnessed a state on our history
    (``lag`` = our counter − theirs); ``unverifiable`` peers saw a counter older than our kept
    history (or more than ``max_lag`` behind); ``unknown`` peers had never seen us."""

    counter: int
    digest: bytes
    confirmed: tuple[str, ...]
    lag: Mapping[str, int]
    unverifiable: tuple[str, ...]
    unknown: tuple[str, ...]


# -- internal model -------------------------------------------------------------------------


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _label(kind: str, key_id: str) -> bytes:
    return _LABEL_PREFIX + kind.encode() + b"\x00" + key_id.encode()


def _record_name(kind: str, key_id: str, epoch: int, counter: int) -> str:
    return f"ks-{kind}.{key_id}.e{epoch}.c{counter}.sealed"


def _is_int(v: object) -> bool:
    return type(v) is int and v >= 0


def _payload_bytes(payload: Any, where: Path) -> bytes:
    try:
        return _canonical(payload)
    except (TypeError, ValueError):
        raise KeystoreError(KeystoreReason.INVALID_ARGUMENT, where, "value is not JSON-serialisable") from None


# Canonical JSON built from pieces, without encoding whole dicts again on every write. Only
# strings that need no JSON escaping go through these (names matching _NAME, lowercase hex,
# file names made of both): each piece is exactly what _canonical would emit for it, and the
# manifest's pieces are checked against _canonical at every open (Keystore._fast_manifest).


def _entry_json(e: _Entry) -> str:
    return f'{{"counter":{e.counter},"epoch":{e.epoch},"file":"{e.file}","sha256":"{e.sha256}"}}'


def _history_json(history: list[tuple[int, str]]) -> str:
    return ",".join([f'[{c},"{d}"]' for c, d in history])


def _manifest_json(m: _Manifest, history: str | None = None) -> bytes:
    """``_canonical(m.to_payload())``, built from pieces (keys sorted as _canonical sorts them);
    ``history``: the pieces of ``m.history`` if the caller has them."""
    if history is None:
        history = _history_json(m.history)
    keys = []
    for kid in sorted(m.keys):
        k = m.keys[kid]
        current = "null" if k.current is None else _entry_json(k.current)
        pending = ",".join([f'"{ep}":{_entry_json(k.pending[e])}' for ep, e in sorted((str(e), e) for e in k.pending)])
        keys.append(f'"{kid}":{{"current":{current},"group":"{k.group}","pending":{{{pending}}}}}')
    state = ",".join([f'"{name}":{_entry_json(m.state[name])}' for name in sorted(m.state)])
    head = f'{{"history":[{history}],'.encode()
    if m.inline:  # only when there is any: a manifest without inline values reads as before
        head += b'"inline":{' + b",".join([b'"%s":%s' % (name.encode(), m.inline[name]) for name in sorted(m.inline)]) + b"},"
    if m.journal != (0, 0):  # likewise: a store that never used its journal reads as before
        head += b'"journal":{"gen":%d,"records":%d},' % m.journal
    tail = f',"witness":{{"seq":{m.witness[0]},"sha256":"{m.witness[1]}"}}' if m.witness != (0, "") else ""
    return head + f'"keys":{{{",".join(keys)}}},"prev":"{m.prev}","state":{{{state}}}{tail}}}'.encode()


@dataclasses.dataclass(frozen=True)
class _Entry:
    kind: str
    key_id: str
    epoch: int
    counter: int
    sha256: str

    @functools.cached_property  # (frozen: set in __dict__ once; every write lists the files)
    def file(self) -> str:
        return _record_name(self.kind, self.key_id, self.epoch, self.counter)

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "counter": self.counter, "file": self.file, "sha256": self.sha256}

    @classmethod
    def from_json(cls, kind: str, key_id: str, d: object, max_counter: int) -> _Entry:
        if not isinstance(d, dict) or set(d) != {"epoch", "counter", "file", "sha256"}:
            raise ValueError("entry")
        epoch, counter, digest = d["epoch"], d["counter"], d["sha256"]
        if not (_is_int(epoch) and _is_int(counter) and 0 < counter <= max_counter):
            raise ValueError("entry numbers")
        if not isinstance(digest, str) or len(digest) != 64 or digest != digest.lower():
            raise ValueError("entry digest")
        bytes.fromhex(digest)
        entry = cls(kind, key_id, epoch, counter, digest)
        if d["file"] != entry.file:
            raise ValueError("entry file name")
        return entry


@dataclasses.dataclass
class _KeyEntry:
    group: str
    current: _Entry | None
    pending: dict[int, _Entry]


@dataclasses.dataclass
class _Manifest:
    store: str
    counter: int
    prev: str
    history: list[tuple[int, str]]
    keys: dict[str, _KeyEntry]
    state: dict[str, _Entry]
    #: State values kept in the manifest itself (name -> canonical JSON), not in record files.
    inline: dict[str, bytes] = dataclasses.field(default_factory=dict)
    #: The journal's anchor: its generation and how many records it held at this commit.
    journal: tuple[int, int] = (0, 0)
    #: The witness file's anchor: its sequence number and the SHA-256 of its plaintext when this
    #: manifest was written ((0, "") before the first witness write, and in older manifests).
    witness: tuple[int, str] = (0, "")

    def files(self) -> set[str]:
        out = {e.file for e in self.state.values()}
        for k in self.keys.values():
            if k.current is not None:
                out.add(k.current.file)
            out.update(e.file for e in k.pending.values())
        return out

    def entries(self) -> Iterator[_Entry]:
        yield from self.state.values()
        for k in self.keys.values():
            if k.current is not None:
                yield k.current
            yield from k.pending.values()

    def copy(self) -> _Manifest:
        keys = {kid: _KeyEntry(k.group, k.current, dict(k.pending)) for kid, k in self.keys.items()}
        return _Manifest(
            self.store, self.counter, self.prev, list(self.history), keys, dict(self.state), dict(self.inline), self.journal,
            self.witness,
        )  # fmt: skip

    def to_payload(self) -> dict[str, Any]:
        optional: dict[str, Any] = {}  # fields left out when empty: older manifests had none
        if self.inline:
            optional["inline"] = {name: json.loads(v) for name, v in sorted(self.inline.items())}
        if self.journal != (0, 0):
            optional["journal"] = {"gen": self.journal[0], "records": self.journal[1]}
        if self.witness != (0, ""):
            optional["witness"] = {"seq": self.witness[0], "sha256": self.witness[1]}
        return optional | {
            "prev": self.prev,
            "history": [[c, d] for c, d in self.history],
            "keys": {
                kid: {
                    "group": k.group,
                    "current": None if k.current is None else k.current.to_json(),
                    "pending": {str(e): p.to_json() for e, p in sorted(k.pending.items())},
                }
                for kid, k in sorted(self.keys.items())
            },
            "state": {name: e.to_json() for name, e in sorted(self.state.items())},
        }

    @classmethod
    def from_payload(cls, store: str, counter: int, p: object) -> _Manifest:
        if not isinstance(p, dict) or set(p) - {"inline", "journal", "witness"} != {"prev", "history", "keys", "state"}:
            raise ValueError("manifest fields")
        witness = p.get("witness", {"seq": 0, "sha256": ""})
        if not isinstance(witness, dict) or set(witness) != {"seq", "sha256"}:
            raise ValueError("witness anchor")
        if not (_is_int(witness["seq"]) and isinstance(witness["sha256"], str) and len(witness["sha256"]) in (0, 64)):
            raise ValueError("witness anchor values")
        journal = p.get("journal", {"gen": 0, "records": 0})
        if not isinstance(journal, dict) or set(journal) != {"gen", "records"}:
            raise ValueError("journal anchor")
        if not (_is_int(journal["gen"]) and _is_int(journal["records"]) and journal["gen"] < 1 << 63):
            raise ValueError("journal anchor numbers")
        prev, history, keys, state, inline = p["prev"], p["history"], p["keys"], p["state"], p.get("inline", {})
        if not isinstance(prev, str) or len(prev) not in (0, 64):
            raise ValueError("prev")
        if (
            not isinstance(history, list)
            or len(history) > HISTORY
            or not isinstance(keys, dict)
            or not isinstance(state, dict)
            or not isinstance(inline, dict)
        ):
            raise ValueError("manifest field types")
        hist: list[tuple[int, str]] = []
        for item in history:
            if not (isinstance(item, list) and len(item) == 2 and _is_int(item[0]) and isinstance(item[1], str)):
                raise ValueError("history")
            if item[0] >= counter or (hist and item[0] <= hist[-1][0]) or len(item[1]) != 64:
                raise ValueError("history order")
            bytes.fromhex(item[1])
            hist.append((item[0], item[1]))
        out = cls(
            store, counter, prev, hist, {}, {}, journal=(journal["gen"], journal["records"]),
            witness=(witness["seq"], witness["sha256"]),
        )  # fmt: skip
        for name, e in state.items():
            if not _NAME_RE.match(name):
                raise ValueError("state name")
            out.state[name] = _Entry.from_json(_STATE, name, e, counter)
            if out.state[name].epoch != 0:
                raise ValueError("state epoch")
        for name, value in inline.items():
            if not _NAME_RE.match(name) or name in out.state:
                raise ValueError("inline state name")
            out.inline[name] = _canonical(value)
        for kid, k in keys.items():
            if not _NAME_RE.match(kid) or not isinstance(k, dict) or set(k) != {"group", "current", "pending"}:
                raise ValueError("key entry")
            group, cur, pend = k["group"], k["current"], k["pending"]
            if not isinstance(group, str) or len(group) != 64 or not isinstance(pend, dict):
                raise ValueError("key entry types")
            current = None if cur is None else _Entry.from_json(_SHARE, kid, cur, counter)
            pending: dict[int, _Entry] = {}
            for ep, pe in pend.items():
                entry = _Entry.from_json(_SHARE, kid, pe, counter)
                if str(entry.epoch) != ep or (current is not None and entry.epoch <= current.epoch):
                    raise ValueError("pending epoch")
                pending[entry.epoch] = entry
            if current is None and not pending:
                raise ValueError("empty key entry")
            out.keys[kid] = _KeyEntry(group, current, pending)
        return out


def _swap_entry(m: _Manifest, placeholder: _Entry, final: _Entry) -> None:
    """Replace the entry ``placeholder`` (digest not yet known) of manifest ``m`` with ``final``."""
    if placeholder.kind == _STATE:
        if m.state.get(placeholder.key_id) != placeholder:
            raise KeystoreError(KeystoreReason.CONFLICT, placeholder.file, "manifest entry changed under a write")
        m.state[placeholder.key_id] = final
        return
    k = m.keys[placeholder.key_id]
    if k.current == placeholder:
        k.current = final
    else:
        if k.pending.get(placeholder.epoch) != placeholder:
            raise KeystoreError(KeystoreReason.CONFLICT, placeholder.file, "manifest entry changed under a write")
        k.pending[placeholder.epoch] = final


@dataclasses.dataclass(frozen=True)
class _Expect:
    kind: str
    key_id: str
    epoch: int | None = None
    counter: int | None = None
    sha256: str | None = None


# -- the store ------------------------------------------------------------------------------


class Keystore:
    """One node's sealed state store. Create with :meth:`open`; thread-safe; one process at a
    time per directory (``LOCKED`` otherwise). Close with :meth:`close` or ``with``."""

    def __init__(self, directory: Path, platform: Platform, *, read_only: bool, lock_fd: int | None) -> None:
        # Use Keystore.open(); this only sets fields.
        self._dir = directory
        self._dir_s = str(directory)
        self._dir_fd: int | None = None
        self._platform = platform
        self._read_only = read_only
        self._lock_fd = lock_fd
        self._mutex = threading.RLock()
        self._broken = False
        self._closed = False
        self._fresh = False
        self._created = False
        self._manifest = _Manifest("", 0, "", [], {}, {})
        self._digest = b""
        self._shares: dict[str, AnyShare] = {}  # file name -> decoded share
        self._state: dict[str, bytes] = {}  # state name -> canonical JSON of the value
        self._witness: dict[str, PeerCounter] = {}
        self._witness_seq = 0
        self._witness_sha = ""  # SHA-256 of the witness file's plaintext (its anchor, with the seq)
        # Changes of _witness in this process, and how many of them the witness file holds
        # (record_peer_counter(defer=True) makes the two differ until the next write).
        self._witness_gen = 0
        self._witness_saved = 0
        self._fast_manifest = True
        self._history_cache: tuple[int, int, str] | None = None  # (first, last counter, pieces)
        # The journal of the manifest's generation: how many records it holds now and their
        # bytes, and its descriptor (opened at the first append).
        self._journal_count = 0
        self._journal_size = 0
        self._journal_fd: int | None = None
        self._journal_dir_synced = False  # the directory was fsynced since the file was made

    # opening and closing --------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path | str, platform: Platform, *, create: bool = True, read_only: bool = False) -> Keystore:
        """Open (``create``: or initialise) the store in ``directory``: lock it, remove crash
        leftovers (rule 4 of the module docstring) and load and validate every record the
        manifest names. A writable open of a directory that cannot be written (read-only file
        system, permissions) raises ``READ_ONLY``; ``read_only=True`` then opens without writing
        anything (inspection, or signing from a read-only disk): shared lock, no cleanup, every
        write raises ``READ_ONLY``. A second writer, in this process or another, gets ``LOCKED``."""
        directory = Path(directory)
        lock_fd = cls._lock(directory, create=create and not read_only, read_only=read_only)
        store = cls(directory, platform, read_only=read_only, lock_fd=lock_fd)
        try:
            store._load(create=create and not read_only)
        except BaseException:
            store.close()
            raise
        return store

    @staticmethod
    def _lock(directory: Path, *, create: bool, read_only: bool) -> int | None:
        path = directory / LOCK
        try:
            if create and not directory.is_dir():
                made = [d for d in (directory, *directory.parents) if not d.exists()]
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                for d in made:  # each new name durable in its parent (POSIX: a directory fsync)
                    _sync_path(d.parent, directory=True)
            if not directory.is_dir():
                raise KeystoreError(KeystoreReason.MISSING, directory, "state directory does not exist")
            if read_only:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    return None
            else:
                # Read-only descriptor: flock needs no write access, and an open writable file
                # would keep the file system from being remounted read-only.
                fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
                if not os.access(directory, os.W_OK):
                    os.close(fd)
                    raise OSError(errno.EROFS if _is_read_only_fs(directory) else errno.EACCES, "state directory is not writable")
        except OSError as e:
            hint = "; open with read_only=True to inspect it" if _os_reason(e) is KeystoreReason.READ_ONLY else ""
            raise _os_error(e, path, f"cannot open the lock file{hint}") from None
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if read_only else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise KeystoreError(KeystoreReason.LOCKED, path) from None
        except OSError as e:
            os.close(fd)
            raise _os_error(e, path, "cannot lock") from None
        return fd

    def close(self) -> None:
        with self._mutex:
            self._close_journal()
            if self._dir_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._dir_fd)
                self._dir_fd = None
            if self._lock_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._lock_fd)
                self._lock_fd = None
            self._shares.clear()
            self._state.clear()
            self._closed = True
            self._fresh = False

    def __enter__(self) -> Keystore:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Keystore({str(self._dir)!r}, counter={self._manifest.counter}, keys={len(self._manifest.keys)})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("Keystore holds secrets and cannot be pickled")

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def read_only(self) -> bool:
        return self._read_only

    # loading --------------------------------------------------------------------------------

    def _load(self, *, create: bool) -> None:
        mpath = self._dir / MANIFEST
        names = self._listdir()
        if MANIFEST not in names:
            leftovers = sorted(n for n in names if _RECORD_RE.match(n) or _JOURNAL_RE.match(n) or n == WITNESS)
            if leftovers:
                detail = f"the manifest is gone but {len(leftovers)} record file(s) remain; refusing to start empty"
                raise KeystoreError(KeystoreReason.MISSING, mpath, detail)
            if not create:
                raise KeystoreError(KeystoreReason.MISSING, mpath, "no keystore here")
            self._cleanup_temps(names)
            self._initialise()
            self._created = True
            return
        if not self._read_only:
            self._sync_left_behind(names)
        expect = _Expect(_MANIFEST_KIND, _MANIFEST_KIND)
        store, counter, plaintext, payload = self._read(MANIFEST, expect, MAX_MANIFEST, store=None)
        try:
            if len(store) != 32 or bytes.fromhex(store).hex() != store:
                raise ValueError("store id")
            manifest = _Manifest.from_payload(store, counter, payload)
        except (ValueError, TypeError, KeyError):
            raise KeystoreError(KeystoreReason.INVALID_RECORD, mpath, "manifest content is invalid") from None
        self._manifest = manifest
        self._digest = _sha256(_STATE_DIGEST_PREFIX + plaintext)
        # Pieces for the writes only if they give exactly what _canonical gives for this one
        # (always, for a manifest this code wrote; otherwise every write encodes it whole).
        self._fast_manifest = _manifest_json(manifest) == _canonical(payload)
        if not self._read_only:
            self._cleanup_temps(names)
        self._check_orphans(names)
        for entry in manifest.entries():
            self._load_entry(entry)
        self._state.update(manifest.inline)
        self._load_journal(names)
        if WITNESS in names:
            self._load_witness()
        self._check_witness_anchor()

    def _check_witness_anchor(self) -> None:
        """The witness file must be at least the one the manifest anchors (review finding: an
        older copy, or none, opened silently, and this node then confirmed a rolled-back peer).
        A newer one (written after the manifest: deferred peer counters) is taken as it is."""
        seq, sha = self._manifest.witness
        if seq == 0:
            return
        path = self._dir / WITNESS
        if self._witness_seq < seq or (self._witness_seq == seq and self._witness_sha != sha):
            got = "missing" if self._witness_seq == 0 else f"at {self._witness_seq}"
            raise KeystoreError(
                KeystoreReason.STALE_STATE, path,
                f"the witness file is {got}, older than or other than the {seq} the manifest anchors: an older copy",
            )  # fmt: skip

    def _sync_left_behind(self, names: Iterable[str]) -> None:
        """Make durable what an earlier process wrote and may not have synced (killed between
        a write and its fsync), before any of it is read: this open would trust it — count a
        journal frame that is only in the page cache and anchor it in the next manifest, or
        announce a manifest's counter whose rename is not yet durable — and a power loss after
        that would leave a journal "cut short" or a counter peers saw and the disk lost. The
        directory (renames) and every journal file; a couple of syscalls per start."""
        for name in sorted(names):
            if _JOURNAL_RE.match(name):
                try:
                    _sync_path(self._dir / name)
                except OSError as e:
                    raise _os_error(e, self._dir / name, "cannot sync the journal left by an earlier process") from None
        self._fsync_dir()

    def _listdir(self) -> set[str]:
        try:
            return set(os.listdir(self._dir))
        except OSError as e:
            raise _os_error(e, self._dir, "cannot list the state directory") from None

    def _initialise(self) -> None:
        self._manifest = _Manifest(secrets.token_hex(16), 0, "", [], {}, {})
        data, plaintext = self._encode(_MANIFEST_KIND, _MANIFEST_KIND, 0, 0, self._manifest_bytes(self._manifest))
        try:
            self._write_file(MANIFEST, data)
            self._fsync_dir()
        except KeystoreError:
            self._manifest = _Manifest("", 0, "", [], {}, {})
            raise
        self._digest = _sha256(_STATE_DIGEST_PREFIX + plaintext)

    def _cleanup_temps(self, names: Iterable[str]) -> None:
        removed = False
        for name in names:
            if name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX):
                with contextlib.suppress(OSError):
                    os.unlink(self._dir / name)
                    removed = True
        if removed:
            self._fsync_dir_quietly()

    def _check_orphans(self, names: Iterable[str]) -> None:
        named = self._manifest.files()
        limit = self._manifest.counter + 1
        doomed = []
        for name in sorted(names):
            m = _RECORD_RE.match(name)
            if m is None or name in named:
                continue
            kind, key_id, epoch, counter = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
            if counter > limit:
                try:
                    self._read(name, _Expect(kind, key_id, epoch, counter), MAX_RECORD)
                except KeystoreError as e:
                    if e.reason is KeystoreReason.SEALING_UNAVAILABLE:
                        raise  # may be evidence of a rollback: not judged without the key (as journals)
                    # not an authentic record of this store: a stray file, ignore it
                else:
                    raise KeystoreError(
                        KeystoreReason.STALE_STATE,
                        self._dir / name,
                        f"an authentic record with counter {counter} is newer than the manifest's counter "
                        f"{self._manifest.counter} + 1: the manifest was restored from an older copy",
                    )
                continue
            doomed.append(name)
        if doomed and not self._read_only:
            for name in doomed:
                with contextlib.suppress(OSError):
                    os.unlink(self._dir / name)
            self._fsync_dir_quietly()

    def _load_journal(self, names: Iterable[str]) -> None:
        """Read the journal the manifest anchors (rules 8 and 9 of the module docstring): at
        least the anchored number of records, each authentic; a torn last record is cut off.
        Journals of other generations: older ones are obsolete (deleted), a newer one with an
        authentic record means the manifest was rolled back (``STALE_STATE``)."""
        gen, anchored = self._manifest.journal
        current = journal_name(gen)
        for name in sorted(names):
            m = _JOURNAL_RE.match(name)
            if m is None or name == current:
                continue
            if int(m.group(1)) > gen:
                data = self._read_journal(name)  # an I/O error here is raised, never taken for "not ours"
                try:
                    authentic = _parse_journal(data, self._platform, self._manifest.store, int(m.group(1))).records
                except JournalCorrupt as e:
                    if e.reason == "SEALING_UNAVAILABLE":  # may be evidence: not judged without the key
                        raise KeystoreError(KeystoreReason.SEALING_UNAVAILABLE, self._dir / name, str(e)) from None
                    authentic = []  # whole frames that are not this store's: a stray file
                if authentic:
                    raise KeystoreError(
                        KeystoreReason.STALE_STATE,
                        self._dir / name,
                        f"an authentic journal of generation {m.group(1)} is newer than the manifest's "
                        f"generation {gen}: the manifest was restored from an older copy",
                    )
                # Not this store's (no whole frame of it opens): left alone, as rule 4 leaves a
                # record it cannot read; the generation's first append replaces it.
                continue
            if not self._read_only:  # obsolete: a compaction's deletion was interrupted
                with contextlib.suppress(OSError):
                    os.unlink(f"{self._dir_s}/{name}")
        path = self._dir / current
        parsed = self._parse_journal(current, gen, self._read_journal(current) if current in names else b"")
        if len(parsed.records) < anchored:
            detail = f"{len(parsed.records)} whole records, the manifest names {anchored}: the journal was cut short"
            raise KeystoreError(KeystoreReason.TRUNCATED if current in names else KeystoreReason.MISSING, path, detail)
        if parsed.torn and not self._read_only:
            # The last append never returned (a crash during it): nothing depended on it.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.ftruncate(fd, parsed.end)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                raise _os_error(e, path, "cannot cut off the torn last record") from None
        self._journal_count = len(parsed.records)
        self._journal_size = parsed.end
        # The file's name may not have been durable (a crash before its directory fsync): a
        # writable open made it so (_sync_left_behind); a read-only one never appends.
        self._journal_dir_synced = not self._read_only

    def _parse_journal(self, name: str, gen: int, data: bytes) -> Parsed:
        try:
            return _parse_journal(data, self._platform, self._manifest.store, gen)
        except JournalCorrupt as e:
            raise KeystoreError(KeystoreReason[e.reason], self._dir / name, str(e)) from None

    def _read_journal(self, name: str) -> bytes:
        path = self._dir / name
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_JOURNAL + 1)
        except OSError as e:
            raise _os_error(e, path, "cannot read") from None
        if len(data) > MAX_JOURNAL:
            raise KeystoreError(KeystoreReason.TOO_LARGE, path, f"more than {MAX_JOURNAL} bytes")
        return data

    def _load_entry(self, entry: _Entry) -> None:
        expect = _Expect(entry.kind, entry.key_id, entry.epoch, entry.counter, entry.sha256)
        _, _, _, payload = self._read(entry.file, expect, MAX_RECORD)
        if entry.kind == _STATE:
            self._state[entry.key_id] = _canonical(payload)
            return
        share = self._decode_share(entry, payload)
        self._shares[entry.file] = share

    def _decode_share(self, entry: _Entry, payload: Any) -> AnyShare:
        path = self._dir / entry.file
        try:
            if not isinstance(payload, dict) or set(payload) != {"type", "share"}:
                raise ValueError
            share: AnyShare
            if payload["type"] == "frost":
                share = KeyShare.from_dict(payload["share"])
            elif payload["type"] == "dkls23":
                share = EcdsaKeyShare.from_dict(payload["share"])
            else:
                raise ValueError
        except Exception:  # any decoding failure is one fixed error without detail (it could quote secrets)
            raise KeystoreError(KeystoreReason.INVALID_RECORD, path, "the share does not decode or is inconsistent") from None
        if share.public.epoch != entry.epoch:
            detail = f"share is of epoch {share.public.epoch}, record says {entry.epoch}"
            raise KeystoreError(KeystoreReason.WRONG_EPOCH, path, detail)
        if share.public.key_id.hex() != self._manifest.keys[entry.key_id].group:
            raise KeystoreError(KeystoreReason.WRONG_KEY, path, "share belongs to another group key than this key id")
        return share

    def _load_witness(self) -> None:
        path = self._dir / WITNESS
        _, counter, plaintext, payload = self._read(WITNESS, _Expect(_WITNESS_KIND, _WITNESS_KIND), MAX_WITNESS)
        peers: dict[str, PeerCounter] = {}
        try:
            if not isinstance(payload, dict) or set(payload) != {"peers"} or not isinstance(payload["peers"], dict):
                raise ValueError
            for peer, v in payload["peers"].items():
                if not isinstance(v, dict) or set(v) != {"counter", "digest"} or not _is_int(v["counter"]):
                    raise ValueError
                digest = bytes.fromhex(v["digest"])
                if len(digest) != 32 or not 0 < len(peer) <= MAX_PEER_ID:
                    raise ValueError
                peers[peer] = PeerCounter(v["counter"], digest)
        except (ValueError, TypeError):
            raise KeystoreError(KeystoreReason.INVALID_RECORD, path, "witness file content is invalid") from None
        self._witness = peers
        self._witness_seq = counter
        self._witness_sha = hashlib.sha256(plaintext).hexdigest()

    # reading one file -------------------------------------------------------------------------

    def _read(self, name: str, expect: _Expect, limit: int, *, store: str | None = "") -> tuple[str, int, bytes, Any]:
        """Read and validate one sealed file; returns (store id, counter, plaintext, payload).
        ``store=""`` means "must be this store's id"; ``None`` accepts any (the manifest, which
        defines it)."""
        path = self._dir / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KeystoreError(KeystoreReason.MISSING, path) from None
        except OSError as e:
            raise _os_error(e, path, "cannot open") from None
        try:
            size = os.fstat(fd).st_size
            if size > limit:
                raise KeystoreError(KeystoreReason.TOO_LARGE, path, f"{size} bytes")
            chunks, total = [], 0
            while total <= limit:
                chunk = os.read(fd, min(1 << 20, limit + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        except OSError as e:
            raise _os_error(e, path, "cannot read") from None
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if len(data) > limit:
            raise KeystoreError(KeystoreReason.TOO_LARGE, path)
        header, sealed = self._unframe(data, path)
        if (header["kind"], header["key_id"]) != (expect.kind, expect.key_id):
            detail = f"file is a {header['kind']} record of {header['key_id']!r}, expected {expect.key_id!r}"
            raise KeystoreError(KeystoreReason.WRONG_KEY, path, detail)
        for field in ("epoch", "counter"):
            want = getattr(expect, field)
            if want is not None and header[field] != want:
                raise KeystoreError(KeystoreReason.WRONG_EPOCH, path, f"file has {field} {header[field]}, expected {want}")
        if expect.sha256 is not None and not hmac.compare_digest(hashlib.sha256(data).hexdigest(), expect.sha256):
            raise KeystoreError(KeystoreReason.DIGEST_MISMATCH, path, "file is not the one the manifest names")
        try:
            plaintext = self._platform.unseal(sealed, label=_label(expect.kind, expect.key_id))
        except SealingError as e:
            if e.reason is SealingReason.KEY:
                raise KeystoreError(KeystoreReason.SEALING_UNAVAILABLE, path) from None
            raise KeystoreError(KeystoreReason.UNSEAL_FAILED, path) from None
        except NotSupported:
            raise KeystoreError(KeystoreReason.SEALING_UNAVAILABLE, path) from None
        try:
            record = json.loads(plaintext)
        except ValueError:
            record = None
        if not isinstance(record, dict) or set(record) != _RECORD_KEYS or record["format"] != FORMAT:
            raise KeystoreError(KeystoreReason.INVALID_RECORD, path, "sealed record has the wrong structure")
        want_store = self._manifest.store if store == "" else store
        if not isinstance(record["store"], str) or (want_store is not None and record["store"] != want_store):
            raise KeystoreError(KeystoreReason.WRONG_STORE, path)
        for field in ("kind", "key_id"):
            if record[field] != header[field]:
                raise KeystoreError(KeystoreReason.WRONG_KEY, path, "sealed fields disagree with the file header")
        for field in ("epoch", "counter"):
            if record[field] != header[field]:
                raise KeystoreError(KeystoreReason.WRONG_EPOCH, path, "sealed fields disagree with the file header")
        payload = record["payload"]
        digest = record["payload_sha256"]
        if not isinstance(digest, str) or not hmac.compare_digest(hashlib.sha256(_canonical(payload)).hexdigest(), digest):
            raise KeystoreError(KeystoreReason.DIGEST_MISMATCH, path, "payload does not match the record's digest")
        return record["store"], header["counter"], plaintext, payload

    @staticmethod
    def _unframe(data: bytes, path: Path) -> tuple[dict[str, Any], bytes]:
        if data[: len(MAGIC)] != MAGIC[: len(data)]:
            raise KeystoreError(KeystoreReason.MALFORMED, path, "bad magic")
        fixed = len(MAGIC) + 1 + _U32.size
        if len(data) < fixed:
            raise KeystoreError(KeystoreReason.TRUNCATED, path)
        if data[len(MAGIC)] != FRAME_VERSION:
            raise KeystoreError(KeystoreReason.MALFORMED, path, f"unsupported frame version {data[len(MAGIC)]}")
        (hlen,) = _U32.unpack_from(data, len(MAGIC) + 1)
        if hlen > MAX_HEADER:
            raise KeystoreError(KeystoreReason.MALFORMED, path, "header length out of range")
        if len(data) < fixed + hlen + _U32.size:
            raise KeystoreError(KeystoreReason.TRUNCATED, path)
        (slen,) = _U32.unpack_from(data, fixed + hlen)
        end = fixed + hlen + _U32.size + slen
        if len(data) < end + 32:
            raise KeystoreError(KeystoreReason.TRUNCATED, path)
        if len(data) > end + 32:
            raise KeystoreError(KeystoreReason.MALFORMED, path, "trailing bytes")
        if not hmac.compare_digest(_sha256(data[:end]), data[end:]):
            raise KeystoreError(KeystoreReason.CHECKSUM, path)
        try:
            header = json.loads(data[fixed : fixed + hlen])
        except (ValueError, RecursionError):  # unauthenticated bytes: a deeply nested header too
            header = None
        if (
            not isinstance(header, dict)
            or set(header) != _HEADER_KEYS
            or not isinstance(header["kind"], str)
            or not isinstance(header["key_id"], str)
            or not _is_int(header["epoch"])
            or not _is_int(header["counter"])
        ):
            raise KeystoreError(KeystoreReason.MALFORMED, path, "invalid header")
        return header, data[fixed + hlen + _U32.size : end]

    # writing ----------------------------------------------------------------------------------

    def _encode(self, kind: str, key_id: str, epoch: int, counter: int, payload: bytes) -> tuple[bytes, bytes]:
        """The file bytes and the sealed plaintext of one record; ``payload`` is the canonical
        JSON of its payload. The plaintext is the canonical JSON of the record (P in the module
        docstring), spliced around ``payload`` instead of encoding it again: kind, key id and
        store id are names and hex, which JSON does not escape, and the keys are in sorted order."""
        plaintext = b"".join(
            (
                f'{{"counter":{counter},"epoch":{epoch},"format":"{FORMAT}","key_id":"{key_id}","kind":"{kind}","payload":'.encode(),
                payload,
                f',"payload_sha256":"{hashlib.sha256(payload).hexdigest()}","store":"{self._manifest.store}"}}'.encode(),
            )
        )
        try:
            sealed = self._platform.seal(plaintext, label=_label(kind, key_id))
        except (SealingError, NotSupported):
            raise KeystoreError(KeystoreReason.SEALING_UNAVAILABLE, self._dir, "sealing failed") from None
        header = f'{{"counter":{counter},"epoch":{epoch},"key_id":"{key_id}","kind":"{kind}"}}'.encode()
        body = MAGIC + bytes([FRAME_VERSION]) + _U32.pack(len(header)) + header + _U32.pack(len(sealed)) + sealed
        return body + _sha256(body), plaintext

    def _write_file(self, name: str, data: bytes) -> None:
        """Temp file (O_EXCL, 0600) in the state directory, write all, fsync, rename to ``name``.
        On failure the temp file is removed (best effort) and ``name`` is untouched."""
        # Plain string paths: pathlib costs more than the system calls on this path.
        tmp = f"{self._dir_s}/{TMP_PREFIX}{secrets.token_hex(8)}{TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise _os_error(e, self._dir / name, "cannot create a temp file") from None
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, f"{self._dir_s}/{name}")
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(e, OSError):
                raise _os_error(e, self._dir / name, "write failed") from None
            raise

    def _fsync_dir(self) -> None:
        try:
            if self._dir_fd is None:  # opened at the first write, kept until close()
                self._dir_fd = os.open(self._dir_s, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            os.fsync(self._dir_fd)
        except OSError as e:
            raise _os_error(e, self._dir, "directory fsync failed") from None

    def _fsync_dir_quietly(self) -> None:
        with contextlib.suppress(KeystoreError):
            self._fsync_dir()

    def _check_usable(self, *, write: bool) -> None:
        if self._closed:
            raise KeystoreError(KeystoreReason.CLOSED, self._dir)
        if self._broken:
            raise KeystoreError(KeystoreReason.BROKEN, self._dir)
        if write and self._read_only:
            raise KeystoreError(KeystoreReason.READ_ONLY, self._dir, "the keystore was opened read-only")

    def _manifest_bytes(self, m: _Manifest) -> bytes:
        if not self._fast_manifest:
            return _canonical(m.to_payload())
        return _manifest_json(m, self._history_pieces(m.history))

    def _history_pieces(self, history: list[tuple[int, str]]) -> str:
        """``_history_json(history)``, from the last one made where possible: a commit appends
        one ``(counter, digest)`` of a committed state (the counters are consecutive, and a
        committed counter's digest never changes) and drops the oldest beyond HISTORY."""
        if not history:
            return ""
        first, last = history[0][0], history[-1][0]
        cached = self._history_cache
        if len(history) != last - first + 1:  # not consecutive: not from this code, no shortcut
            text = _history_json(history)
        elif cached is not None and (cached[0], cached[1]) == (first, last):
            text = cached[2]
        elif cached is not None and cached[1] + 1 == last and first - cached[0] in (0, 1) and cached[2]:
            text = cached[2]
            if first == cached[0] + 1:
                text = text[text.index("],[") + 2 :] if "],[" in text else ""
            text = f'{text},[{last},"{history[-1][1]}"]' if text else f'[{last},"{history[-1][1]}"]'
        else:
            text = _history_json(history)
        self._history_cache = (first, last, text)
        return text

    def _transact(self, new: _Manifest, records: list[tuple[_Entry, bytes]]) -> None:
        """Commit ``new`` (whose counter is the current + 1) with ``records`` (each with the
        canonical JSON of its payload) written first (crash-safety rules 1–3 and 7 of the
        module docstring)."""
        old = self._manifest
        if new.counter != old.counter + 1:
            raise KeystoreError(
                KeystoreReason.CONFLICT, self._dir, f"manifest counter {new.counter} does not follow {old.counter}"
            )
        new.prev = self._digest.hex()
        new.history = [*old.history, (old.counter, new.prev)][-HISTORY:]
        if new.journal[0] == old.journal[0]:  # the anchor: what the journal holds now (rule 8)
            new.journal = (old.journal[0], self._journal_count)
        # Deferred witness values go first, in this transaction; the manifest anchors the file
        # it leaves (its sequence number and digest), so an older copy is refused at open.
        witness_due = self._encode_witness(self._witness) if self._witness_saved < self._witness_gen else None
        new.witness = (witness_due[0], witness_due[2]) if witness_due is not None else (self._witness_seq, self._witness_sha)
        encoded = []
        for entry, payload in records:
            data, _ = self._encode(entry.kind, entry.key_id, entry.epoch, entry.counter, payload)
            encoded.append((dataclasses.replace(entry, sha256=hashlib.sha256(data).hexdigest()), data, payload))
        for (placeholder, _), (entry, _, _) in zip(records, encoded):  # put the files' digests into the manifest
            _swap_entry(new, placeholder, entry)
        mdata, mplain = self._encode(_MANIFEST_KIND, _MANIFEST_KIND, 0, new.counter, self._manifest_bytes(new))
        if len(mdata) > MAX_MANIFEST:  # the next open would refuse it: refuse the write instead
            raise KeystoreError(KeystoreReason.TOO_LARGE, self._dir / MANIFEST, f"the manifest would be {len(mdata)} bytes")
        written: list[str] = []
        witness = None
        try:
            if witness_due is not None:
                # Deferred witness values (record_peer_counter(defer=True)) go first and share
                # this transaction's directory fsyncs. If this transaction fails later, the file
                # keeps the newer values (above the old manifest's anchor: taken at open).
                self._write_witness(witness_due, fsync_dir=False)
                witness = self._witness_gen
            for entry, data, _ in encoded:
                self._write_file(entry.file, data)
                written.append(entry.file)
            if written:
                self._fsync_dir()
            self._write_file(MANIFEST, mdata)  # the commit point
        except BaseException:
            for name in written:
                with contextlib.suppress(OSError):
                    os.unlink(f"{self._dir_s}/{name}")
            self._fsync_dir_quietly()
            raise
        try:
            self._fsync_dir()
        except KeystoreError as e:
            self._broken = True
            raise KeystoreError(
                KeystoreReason.BROKEN, self._dir, f"the manifest was renamed into place but {e.detail}; reopen", os_errno=e.errno
            ) from None
        if witness is not None:
            self._witness_saved = witness
        # Durable: adopt it in memory, then delete what it no longer names.
        obsolete = old.files() - new.files()
        if new.journal[0] != old.journal[0]:  # a new generation (compact_journal): start it empty
            self._close_journal()
            obsolete.add(journal_name(old.journal[0]))
            self._journal_count, self._journal_size, self._journal_dir_synced = 0, 0, False
        self._manifest = new
        self._digest = _sha256(_STATE_DIGEST_PREFIX + mplain)
        for entry, _, payload in encoded:
            if entry.kind == _STATE:
                self._state[entry.key_id] = payload
        # No directory fsync for these deletions: a deletion lost in a crash leaves a file the
        # manifest does not name, which the next open deletes (rule 4).
        for name in obsolete:
            self._shares.pop(name, None)
            with contextlib.suppress(OSError):
                os.unlink(f"{self._dir_s}/{name}")

    # shares: two-phase epochs -------------------------------------------------------------------

    def _check_name(self, name: str, what: str) -> None:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise KeystoreError(KeystoreReason.INVALID_ARGUMENT, self._dir, f"{what} must match {_NAME}")

    @staticmethod
    def _share_payload(share: AnyShare) -> dict[str, Any]:
        if isinstance(share, EcdsaKeyShare):
            return {"type": "dkls23", "share": share.to_dict()}
        if isinstance(share, KeyShare):
            if not share.suite.frost:
                raise KeystoreError(KeystoreReason.INVALID_ARGUMENT, ".", "an ecdsa key is stored as an EcdsaKeyShare (DKLs23)")
            return {"type": "frost", "share": share.to_dict()}
        raise KeystoreError(KeystoreReason.INVALID_ARGUMENT, ".", "not a KeyShare or EcdsaKeyShare")

    def stage(self, key_id: str, share: AnyShare) -> None:
        """Write ``share`` as a *pending* epoch (``share.public.epoch``) of ``key_id``, durably.
        The current epoch stays current and usable. A new key id starts with only this pending
        epoch; an existing one requires the same group key and an epoch newer than the current
        one. Staging an epoch that is already pending replaces it (a retried refresh)."""
        with self._mutex:
            self._check_usable(write=True)
            self._check_name(key_id, "key id")
            payload = _payload_bytes(self._share_payload(share), self._dir)
            epoch = share.public.epoch
            group = share.public.key_id.hex()
            new = self._manifest.copy()
            new.counter += 1
            k = new.keys.get(key_id)
            if k is None:
                k = new.keys[key_id] = _KeyEntry(group, None, {})
            elif k.group != group:
                raise KeystoreError(KeystoreReason.CONFLICT, self._dir, f"key {key_id!r} holds another group key")
            elif k.current is not None and epoch <= k.current.epoch:
                detail = f"epoch {epoch} is not newer than the current epoch {k.current.epoch} of {key_id!r}"
                raise KeystoreError(KeystoreReason.CONFLICT, self._dir, detail)
            entry = _Entry(_SHARE, key_id, epoch, new.counter, "")
            k.pending[epoch] = entry
            self._transact(new, [(entry, payload)])
            self._shares[new.keys[key_id].pending[epoch].file] = share

    def commit(self, key_id: str, epoch: int) -> bool:
        """Make pending ``epoch`` current — call only once every holder has confirmed it. Pending
        epochs older than it are dropped; the old current record is deleted after the manifest is
        durable. Committing the epoch that is already current is a no-op (returns ``False``)."""
        with self._mutex:
            self._check_usable(write=True)
            k = self._key(key_id)
            if k.current is not None and k.current.epoch == epoch:
                return False
            if epoch not in k.pending:
                raise KeystoreError(KeystoreReason.NO_SUCH_EPOCH, self._dir, f"epoch {epoch} of {key_id!r} is not pending")
            new = self._manifest.copy()
            new.counter += 1
            nk = new.keys[key_id]
            nk.current = nk.pending.pop(epoch)
            nk.pending = {e: p for e, p in nk.pending.items() if e > epoch}
            self._transact(new, [])
            return True

    def abort(self, key_id: str, epoch: int) -> bool:
        """Drop pending ``epoch`` (a failed or abandoned refresh); the current epoch is untouched.
        Aborting an epoch that is not pending is a no-op (``False``); aborting the current one is
        a ``CONFLICT``. A key id left with no epoch at all disappears."""
        with self._mutex:
            self._check_usable(write=True)
            k = self._manifest.keys.get(key_id)
            if k is None:
                return False
            if k.current is not None and k.current.epoch == epoch:
                raise KeystoreError(KeystoreReason.CONFLICT, self._dir, f"epoch {epoch} of {key_id!r} is committed")
            if epoch not in k.pending:
                return False
            new = self._manifest.copy()
            new.counter += 1
            nk = new.keys[key_id]
            del nk.pending[epoch]
            if nk.current is None and not nk.pending:
                del new.keys[key_id]
            self._transact(new, [])
            return True

    def update_share(self, key_id: str, share: AnyShare) -> None:
        """Rewrite the stored share of epoch ``share.public.epoch`` (current or pending) with
        ``share``, e.g. a DKLs23 share with new bans. It must be the same holder of the same
        public key package."""
        with self._mutex:
            self._check_usable(write=True)
            k = self._key(key_id)
            epoch = share.public.epoch
            old_entry = k.current if k.current is not None and k.current.epoch == epoch else k.pending.get(epoch)
            if old_entry is None:
                raise KeystoreError(KeystoreReason.NO_SUCH_EPOCH, self._dir, f"{key_id!r} has no epoch {epoch}")
            old = self._shares[old_entry.file]
            if old.identifier != share.identifier or old.public != share.public or type(old) is not type(share):
                raise KeystoreError(KeystoreReason.CONFLICT, self._dir, "not the same holder of the same key package")
            payload = _payload_bytes(self._share_payload(share), self._dir)
            new = self._manifest.copy()
            new.counter += 1
            nk = new.keys[key_id]
            entry = _Entry(_SHARE, key_id, epoch, new.counter, "")
            if nk.current is not None and nk.current.epoch == epoch:
                nk.current = entry
            else:
                nk.pending[epoch] = entry
            self._transact(new, [(entry, payload)])
            nk = self._manifest.keys[key_id]
            final = nk.current if nk.current is not None and nk.current.epoch == epoch else nk.pending[epoch]
            self._shares[final.file] = share

    def delete_key(self, key_id: str) -> bool:
        """Forget every epoch of ``key_id`` (records deleted after the manifest is durable)."""
        with self._mutex:
            self._check_usable(write=True)
            if key_id not in self._manifest.keys:
                return False
            new = self._manifest.copy()
            new.counter += 1
            del new.keys[key_id]
            self._transact(new, [])
            return True

    def _key(self, key_id: str) -> _KeyEntry:
        k = self._manifest.keys.get(key_id)
        if k is None:
            raise KeystoreError(KeystoreReason.NO_SUCH_KEY, self._dir, repr(key_id))
        return k

    def share(self, key_id: str, epoch: int | None = None) -> AnyShare:
        """The share of ``key_id`` at the current epoch (``epoch=None``) or at a given current
        or pending epoch. Validated when loaded or written."""
        with self._mutex:
            self._check_usable(write=False)
            k = self._key(key_id)
            if epoch is None:
                if k.current is None:
                    raise KeystoreError(KeystoreReason.NO_SUCH_EPOCH, self._dir, f"{key_id!r} has no committed epoch yet")
                return self._shares[k.current.file]
            entry = k.current if k.current is not None and k.current.epoch == epoch else k.pending.get(epoch)
            if entry is None:
                raise KeystoreError(KeystoreReason.NO_SUCH_EPOCH, self._dir, f"{key_id!r} has no epoch {epoch}")
            return self._shares[entry.file]

    def key_status(self, key_id: str) -> KeyStatus:
        with self._mutex:
            self._check_usable(write=False)
            k = self._key(key_id)
            return KeyStatus(key_id, None if k.current is None else k.current.epoch, tuple(sorted(k.pending)))

    def find_key(self, key_id: str) -> KeyStatus | None:
        """:meth:`key_status`, or None for a key this store does not hold (no scan of them all)."""
        with self._mutex:
            self._check_usable(write=False)
            return self.key_status(key_id) if key_id in self._manifest.keys else None

    def keys(self) -> dict[str, KeyStatus]:
        with self._mutex:
            self._check_usable(write=False)
            return {kid: self.key_status(kid) for kid in sorted(self._manifest.keys)}

    # small node state -----------------------------------------------------------------------

    def put_state(self, name: str, value: Any, *, inline: bool = False) -> bool:
        """Store a JSON value (dicts, lists, str, int, bool, None; bytes as hex) under ``name``.
        Returns ``False`` without writing when the stored value is already equal.

        ``inline``: keep the value in the manifest itself instead of a record file of its own:
        the write is then one file and two fsyncs instead of two and four. For values written
        often and not secret (the audit log's head): the manifest is rewritten, with every
        inline value, at every write of the store, and :meth:`state_digest` (announced to
        peers) is a hash over its content."""
        with self._mutex:
            self._check_usable(write=True)
            self._check_name(name, "state name")
            return self._put_state(name, _payload_bytes(value, self._dir), inline)

    def put_state_json(self, name: str, canonical: bytes, *, inline: bool = False) -> bool:
        """:meth:`put_state` for a value the caller has already encoded as canonical JSON
        (sorted keys, no whitespace, ASCII, no NaN: ``json.dumps(value, sort_keys=True,
        separators=(",", ":"), ensure_ascii=True, allow_nan=False)``), e.g. spliced from pieces it
        keeps encoded. The bytes are stored as they are, unchecked (checking would cost as much
        as encoding): bytes that are not canonical JSON make a record — ``inline``: a manifest —
        that does not pass the payload digest check at the next open."""
        self._check_canonical(canonical)
        with self._mutex:
            self._check_usable(write=True)
            self._check_name(name, "state name")
            return self._put_state(name, canonical, inline)

    def _check_canonical(self, canonical: bytes) -> None:
        if type(canonical) is not bytes or not canonical.isascii():
            raise KeystoreError(KeystoreReason.INVALID_ARGUMENT, self._dir, "canonical JSON must be ASCII bytes")

    def _put_state(self, name: str, canonical: bytes, inline: bool, *, new_journal: bool = False) -> bool:
        """``new_journal``: the value supersedes the journal, which starts a new generation in
        the same commit (always a write, even of an equal value)."""
        if self._state.get(name) == canonical and not new_journal:
            return False
        new = self._manifest.copy()
        new.counter += 1
        if new_journal:
            new.journal = (new.journal[0] + 1, 0)
        if inline:
            new.state.pop(name, None)  # its record file, if it had one, goes once this commits
            new.inline[name] = canonical
            self._transact(new, [])
            self._state[name] = canonical
            return True
        new.inline.pop(name, None)
        entry = new.state[name] = _Entry(_STATE, name, 0, new.counter, "")
        self._transact(new, [(entry, canonical)])
        return True

    # the journal ------------------------------------------------------------------------------

    def journal_records(self) -> list[bytes]:
        """The payloads the journal holds, oldest first, read from the disk (its owner reads
        them once, at start), with the checks of the open (rule 9)."""
        with self._mutex:
            self._check_usable(write=False)
            gen = self._manifest.journal[0]
            name = journal_name(gen)
            if not self._journal_size:
                return []
            parsed = self._parse_journal(name, gen, self._read_journal(name)[: self._journal_size])
            if len(parsed.records) != self._journal_count or parsed.torn:
                raise KeystoreError(KeystoreReason.TRUNCATED, self._dir / name, "the journal changed under the store")
            return parsed.records

    @property
    def journal_size(self) -> tuple[int, int]:
        """``(records, bytes)`` in the journal now: its owner compacts it past a bound."""
        return self._journal_count, self._journal_size

    def journal_append(self, payloads: Iterable[bytes]) -> None:
        """Append records to the journal and make them durable (one ``write``, one
        ``fdatasync``; rule 8): the manifest, its counter and digest do not change. Deferred
        witness values are written first, as a transaction would. On failure nothing of it
        stays in the file (cut back) and the error is the keystore's; if even cutting back
        fails, the store is ``BROKEN`` until reopened (the next open reads what the disk holds)."""
        with self._mutex:
            self._check_usable(write=True)
            gen = self._manifest.journal[0]
            path = self._dir / journal_name(gen)
            records = list(payloads)
            if not records:
                return
            try:
                # One frame for the whole append: a crash tears at most the last frame (journal.py).
                data = encode_frame(self._platform, self._manifest.store, gen, self._journal_count, records)
            except (SealingError, NotSupported):
                raise KeystoreError(KeystoreReason.SEALING_UNAVAILABLE, path, "sealing failed") from None
            except ValueError as e:
                raise KeystoreError(KeystoreReason.TOO_LARGE, path, str(e)) from None
            if self._journal_size + len(data) > MAX_JOURNAL:  # the next open would refuse it
                raise KeystoreError(KeystoreReason.TOO_LARGE, path, f"the journal would pass {MAX_JOURNAL} bytes; compact it")
            if self._witness_saved < self._witness_gen:
                witness = self._witness_gen
                self._write_witness(self._encode_witness(self._witness))
                self._witness_saved = witness
            try:
                if self._journal_fd is None:
                    # Empty so far (a stray file of this name, e.g. one a newer generation's
                    # check at open could not read, is replaced).
                    trunc = os.O_TRUNC if self._journal_size == 0 else 0
                    self._journal_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | trunc, 0o600)
                fd = self._journal_fd
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fdatasync(fd)
                if not self._journal_dir_synced:
                    self._fsync_dir()  # the file's name, once per generation and process
                    self._journal_dir_synced = True
            except BaseException as e:
                # Whatever stopped it (a signal's exception too) after part of the frame was
                # written: nothing of it may stay, or the next append would land behind it.
                self._cut_journal_back(path)
                if isinstance(e, OSError):
                    raise _os_error(e, path, "append failed") from None
                raise
            self._journal_count += len(records)
            self._journal_size += len(data)

    def _cut_journal_back(self, path: Path) -> None:
        """After a failed append: the file back to its last durable length, or ``BROKEN``."""
        try:
            if self._journal_fd is not None:
                os.ftruncate(self._journal_fd, self._journal_size)
                os.fdatasync(self._journal_fd)
        except OSError:
            self._broken = True

    def compact_journal(self, name: str, canonical: bytes) -> None:
        """Write inline state ``name`` (:meth:`put_state_json` with ``inline=True``) and start a
        new, empty journal generation in the same commit: the value supersedes every record of
        the journal. The old generation's file is deleted once the manifest is durable."""
        self._check_canonical(canonical)
        with self._mutex:
            self._check_usable(write=True)
            self._check_name(name, "state name")
            self._put_state(name, canonical, True, new_journal=True)

    def _close_journal(self) -> None:
        if self._journal_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._journal_fd)
            self._journal_fd = None

    def get_state(self, name: str, default: Any = None) -> Any:
        """A fresh copy of the value stored under ``name`` (``default`` if none)."""
        with self._mutex:
            self._check_usable(write=False)
            raw = self._state.get(name)
            return default if raw is None else json.loads(raw)

    def delete_state(self, name: str) -> bool:
        with self._mutex:
            self._check_usable(write=True)
            if name not in self._manifest.state and name not in self._manifest.inline:
                return False
            new = self._manifest.copy()
            new.counter += 1
            new.state.pop(name, None)
            new.inline.pop(name, None)
            self._transact(new, [])
            self._state.pop(name, None)
            return True

    def state_names(self) -> tuple[str, ...]:
        with self._mutex:
            self._check_usable(write=False)
            return tuple(sorted(self._manifest.state.keys() | self._manifest.inline.keys()))

    # rollback defence -----------------------------------------------------------------------

    @property
    def counter(self) -> int:
        """Store-wide counter: +1 per committed write (0 for a new store)."""
        return self._manifest.counter

    @property
    def store_id(self) -> str:
        return self._manifest.store

    def state_digest(self) -> bytes:
        """SHA-256 commitment to the current manifest (hence the whole state and its history)."""
        return self._digest

    def announcement(self) -> tuple[int, bytes]:
        """``(counter, state_digest())``: what to send to peers after every write."""
        with self._mutex:
            return self._manifest.counter, self._digest

    def digest_at(self, counter: int) -> bytes | None:
        """Our state digest at ``counter`` if it is current or within the kept history."""
        with self._mutex:
            if counter == self._manifest.counter:
                return self._digest
            for c, d in self._manifest.history:
                if c == counter:
                    return bytes.fromhex(d)
            return None

    def record_peer_counter(self, peer: str, counter: int, digest: bytes, *, defer: bool = False) -> bool:
        """Durably remember that ``peer`` announced ``(counter, digest)``. Monotonic: a lower
        counter, or another digest at the same counter, raises ``PEER_ROLLBACK`` (that peer was
        rolled back or forked; the stored value is kept). Returns ``False`` for a repeat.

        ``defer=True`` takes the value at once (:meth:`peer_counters`, the monotonic check) but
        writes it with the next write of this store — any transaction writes the witness file
        first and shares its directory fsync — or at :meth:`flush_witness`, whichever comes
        first; use it where that write is awaited anyway before anything depends on the value
        being durable (the node records a task's witness notes this way and makes them durable
        with the task's audit entry, before the task's result leaves)."""
        if not isinstance(peer, str) or not 0 < len(peer) <= MAX_PEER_ID:
            raise KeystoreError(KeystoreReason.INVALID_ARGUMENT, self._dir, "peer id must be a non-empty string")
        if not _is_int(counter) or not isinstance(digest, bytes | bytearray) or len(digest) != 32:
            raise KeystoreError(KeystoreReason.INVALID_ARGUMENT, self._dir, "counter must be an int ≥ 0 and digest 32 bytes")
        digest = bytes(digest)
        with self._mutex:
            self._check_usable(write=True)
            old = self._witness.get(peer)
            if old is not None:
                if counter < old.counter:
                    detail = f"{peer!r} announced counter {counter} after {old.counter}"
                    raise KeystoreError(KeystoreReason.PEER_ROLLBACK, self._dir / WITNESS, detail)
                if counter == old.counter:
                    if hmac.compare_digest(old.digest, digest):
                        return False
                    raise KeystoreError(
                        KeystoreReason.PEER_ROLLBACK, self._dir / WITNESS, f"{peer!r} announced two states at counter {counter}"
                    )
            peers = {**self._witness, peer: PeerCounter(counter, digest)}
            if not defer:
                self._write_witness(self._encode_witness(peers))
            self._witness = peers
            self._witness_gen += 1
            if not defer:
                self._witness_saved = self._witness_gen
            return True

    @property
    def witness_generation(self) -> int:
        """Counts the changes of :meth:`peer_counters` in this process (deferred ones included):
        ``flush_witness(g)`` makes every change up to generation ``g`` durable."""
        return self._witness_gen

    def flush_witness(self, upto: int | None = None) -> bool:
        """Write deferred :meth:`record_peer_counter` values now (those up to generation
        ``upto``, if given; nothing if they are durable already). Returns whether it wrote."""
        with self._mutex:
            if self._witness_saved >= (self._witness_gen if upto is None else upto):
                return False
            self._check_usable(write=True)
            self._write_witness(self._encode_witness(self._witness))
            self._witness_saved = self._witness_gen
            return True

    def forget_peer(self, peer: str) -> bool:
        """Drop what ``peer`` announced (the peer left the cluster)."""
        with self._mutex:
            self._check_usable(write=True)
            if peer not in self._witness:
                return False
            peers = {p: v for p, v in self._witness.items() if p != peer}
            self._write_witness(self._encode_witness(peers))
            self._witness = peers
            self._witness_gen += 1
            self._witness_saved = self._witness_gen
            return True

    def _encode_witness(self, peers: dict[str, PeerCounter]) -> tuple[int, bytes, str]:
        """The next witness file: (its sequence number, its bytes, its plaintext's SHA-256)."""
        seq = self._witness_seq + 1
        payload = {"peers": {p: {"counter": v.counter, "digest": v.digest.hex()} for p, v in sorted(peers.items())}}
        data, plain = self._encode(_WITNESS_KIND, _WITNESS_KIND, 0, seq, _payload_bytes(payload, self._dir))
        return seq, data, hashlib.sha256(plain).hexdigest()

    def _write_witness(self, encoded: tuple[int, bytes, str], *, fsync_dir: bool = True) -> None:
        """Write what :meth:`_encode_witness` made as the witness file (the caller adopts its
        peers). Without ``fsync_dir`` the caller fsyncs the directory (a transaction: with its
        own fsyncs)."""
        seq, data, sha = encoded
        self._write_file(WITNESS, data)
        self._witness_seq, self._witness_sha = seq, sha  # the file holds it now: the next write takes the next number
        if fsync_dir:
            try:
                self._fsync_dir()
            except KeystoreError as e:
                self._broken = True
                raise KeystoreError(KeystoreReason.BROKEN, self._dir, f"witness file renamed but {e.detail}; reopen") from None

    def peer_counters(self) -> dict[str, PeerCounter]:
        """The latest ``(counter, digest)`` each peer announced (what we answer a restarted peer)."""
        with self._mutex:
            return dict(self._witness)

    def require_fresh(
        self, confirmations: Mapping[str, tuple[int, bytes] | None], t: int, *, max_lag: int | None = None
    ) -> FreshnessReport:
        """Check this state against what peers last saw from us (``None``: never saw us).

        Raises ``STALE_STATE`` if any peer saw a counter higher than ours, or a digest other
        than ours at a counter we hold in history (this directory is an older copy, or a copy
        that diverged); the message names those peers. Raises ``UNCONFIRMED`` unless at least
        ``t`` peers confirm a state on our history (counter ≤ ours with our digest at that
        counter, and, with ``max_lag``, at most that many writes behind). On success the store
        is marked fresh (:meth:`assert_fresh`); announce :meth:`announcement` to the peers next.
        """
        if type(t) is not int or t < 1:
            raise KeystoreError(KeystoreReason.INVALID_ARGUMENT, self._dir, "t must be an int ≥ 1")
        with self._mutex:
            report = self.check_witnessed(confirmations, max_lag=max_lag)
            if len(report.confirmed) < t:
                raise KeystoreError(
                    KeystoreReason.UNCONFIRMED,
                    self._dir,
                    f"{len(report.confirmed)} of the required {t} peers confirmed counter ≤ {report.counter} on our "
                    f"history (unverifiable: {list(report.unverifiable) or 'none'}, never saw us: "
                    f"{list(report.unknown) or 'none'})",
                )
            self._fresh = True
            return report

    def check_witnessed(
        self, confirmations: Mapping[str, tuple[int, bytes] | None], *, max_lag: int | None = None
    ) -> FreshnessReport:
        """:meth:`require_fresh`'s checks without its quorum: raises ``STALE_STATE`` as it does,
        else says which peers confirm our state, which cannot tell, and which never saw us. The
        caller counts (the node asks for t holders of each key, docs/NODE.md)."""
        with self._mutex:
            self._check_usable(write=False)
            counter, digest = self._manifest.counter, self._digest
            confirmed: list[str] = []
            lag: dict[str, int] = {}
            unverifiable: list[str] = []
            unknown: list[str] = []
            stale: list[str] = []
            for peer, seen in sorted(confirmations.items()):
                if seen is None:
                    unknown.append(peer)
                    continue
                c, d = seen
                if not _is_int(c) or not isinstance(d, bytes | bytearray) or len(d) != 32:
                    raise KeystoreError(KeystoreReason.INVALID_ARGUMENT, self._dir, f"malformed confirmation from {peer!r}")
                if c > counter:
                    stale.append(f"{peer} saw counter {c}")
                    continue
                ours = self.digest_at(c)
                if ours is None:
                    unverifiable.append(peer)
                elif not hmac.compare_digest(ours, bytes(d)):
                    stale.append(f"{peer} saw another state at counter {c}")
                elif max_lag is None or counter - c <= max_lag:
                    confirmed.append(peer)
                    lag[peer] = counter - c
                else:
                    unverifiable.append(peer)
            if stale:
                self._fresh = False
                raise KeystoreError(
                    KeystoreReason.STALE_STATE,
                    self._dir,
                    f"loaded counter {counter}, but {'; '.join(stale)}: this state directory is an older (or diverged) copy. "
                    "Refusing to sign: restore the newest state, or wipe it and re-provision the shares by repair from peers",
                )
            return FreshnessReport(counter, digest, tuple(confirmed), lag, tuple(unverifiable), tuple(unknown))

    @property
    def created(self) -> bool:
        """Whether this store was made empty when it was opened (nothing older to roll back to:
        every state in it was written since)."""
        return self._created

    @property
    def fresh(self) -> bool:
        """Whether :meth:`require_fresh` has succeeded since this store was opened."""
        return self._fresh

    def assert_fresh(self) -> None:
        """Raise ``UNCONFIRMED`` unless peers confirmed this state since it was opened: call
        before every signature."""
        if not self._fresh:
            raise KeystoreError(KeystoreReason.UNCONFIRMED, self._dir, "no peer quorum confirmed this state since it was opened")
