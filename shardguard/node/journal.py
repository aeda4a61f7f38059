"""The keystore's journal: an append-only file of small sealed records (the audit log's entries).

A value written often and whole (the audit log's entries not yet mirrored) costs a manifest
rewrite per write — a temp file, its fsync, a rename and a directory fsync, with every other
inline value and the 256 pairs of history re-encoded and re-sealed. The journal takes such
writes instead: each append is one ``write`` of the new records and one ``fdatasync``. The
keystore (:mod:`shardguard.node.keystore`) owns the file and its place in the crash-safety and
rollback rules; this module holds only the format, pure (no I/O)::

    file    ks-journal.g<gen>.log         one generation; the manifest names the current one
    record  "SGKJ" ‖ u32 BE len(S) ‖ S
    S       platform.seal(P, label = "shardguard/keystore/v1" 0x00 "journal" 0x00 store id)
    P       "SGKJ" 0x01 ‖ u64 BE gen ‖ u64 BE index ‖ payload

``index`` counts from 0 within a generation. The sealed ``gen`` and ``index`` keep the host
from reordering, repeating or moving records between generations, and the label from moving them
between stores; the host can only cut the file short — which the manifest's anchor (the number
of records the journal had at its last write) catches below that number, and which is otherwise
the same power as rolling the whole directory back (see the keystore's rollback defence).

A crash during an append can leave the *last* record incomplete (short, or, after a power loss,
zero-filled). :func:`parse` reports such a tail as torn instead of failing: that append never
returned, so nothing depended on it. A bad record with a whole record or more after it cannot
come from a crash and is an error.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from typing import Final

from shardguard.enclave.platform import NotSupported, Platform, SealingError, SealingReason

__all__ = [
    "JOURNAL_RE",
    "MAX_JOURNAL",
    "MAX_JOURNAL_RECORD",
    "JournalCorrupt",
    "Parsed",
    "encode_record",
    "journal_name",
    "parse",
]

MAGIC: Final = b"SGKJ"
_VERSION: Final = 1
_LABEL_PREFIX: Final = b"shardguard/keystore/v1\x00journal\x00"
_FRAME = struct.Struct(">4sI")
_PLAIN = struct.Struct(">4sBQQ")
#: Largest sealed record (an audit entry is at most 64 KiB, its mirror record about 4/3 of it).
MAX_JOURNAL_RECORD: Final = 1 << 20
#: Largest journal file read at open (the keystore starts a new generation long before).
MAX_JOURNAL: Final = 64 << 20
JOURNAL_RE: Final = re.compile(r"^ks-journal\.g(0|[1-9][0-9]{0,17})\.log$")


def journal_name(gen: int) -> str:
    return f"ks-journal.g{gen}.log"


def _label(store: str) -> bytes:
    return _LABEL_PREFIX + store.encode()


def encode_record(platform: Platform, store: str, gen: int, index: int, payload: bytes) -> bytes:
    """One record, ready to append. Raises the platform's :class:`SealingError` / :class:`NotSupported`."""
    sealed = platform.seal(_PLAIN.pack(MAGIC, _VERSION, gen, index) + payload, label=_label(store))
    if len(sealed) > MAX_JOURNAL_RECORD:
        raise ValueError(f"a journal record of {len(sealed)} bytes is larger than {MAX_JOURNAL_RECORD}")
    return _FRAME.pack(MAGIC, len(sealed)) + sealed


class JournalCorrupt(Exception):
    """Record ``index`` of the journal is bad and is not a torn tail. ``reason`` is the name of
    the :class:`~shardguard.node.keystore.KeystoreReason` the keystore raises for it."""

    def __init__(self, reason: str, index: int, detail: str) -> None:
        self.reason = reason
        self.index = index
        self.detail = detail
        super().__init__(f"journal record {index}: {detail}")


@dataclasses.dataclass(frozen=True)
class Parsed:
    """The payloads of a journal's whole records, the byte length they take (``end``), and
    whether bytes after them were a torn last record (to cut off before the next append)."""

    payloads: list[bytes]
    end: int
    torn: bool


def parse(data: bytes, platform: Platform, store: str, gen: int) -> Parsed:
    """Read every record of generation ``gen`` of ``store``'s journal. Raises
    :class:`JournalCorrupt` for a bad record that is not the torn last one."""
    payloads: list[bytes] = []
    pos = 0
    while pos < len(data):
        index = len(payloads)
        rest = len(data) - pos
        if rest < _FRAME.size and MAGIC.startswith(data[pos : pos + len(MAGIC)]):
            return Parsed(payloads, pos, True)  # cut short by a crash during the append
        magic, length = _FRAME.unpack_from(data, pos) if rest >= _FRAME.size else (b"", 0)
        if magic != MAGIC:
            if not data[pos:].strip(b"\x00"):
                return Parsed(payloads, pos, True)  # zero-filled by a power loss during the append
            raise JournalCorrupt("MALFORMED", index, "bad magic")
        if length > MAX_JOURNAL_RECORD:
            raise JournalCorrupt("MALFORMED", index, "record length out of range")
        end = pos + _FRAME.size + length
        if end > len(data):
            return Parsed(payloads, pos, True)  # cut short by a crash during the append
        try:
            plain = platform.unseal(data[pos + _FRAME.size : end], label=_label(store))
        except NotSupported:
            raise JournalCorrupt("SEALING_UNAVAILABLE", index, "the platform cannot unseal") from None
        except SealingError as e:
            if e.reason is SealingReason.KEY:
                raise JournalCorrupt("SEALING_UNAVAILABLE", index, "the platform cannot unseal") from None
            if end == len(data):
                return Parsed(payloads, pos, True)  # the last record, not all of it written
            raise JournalCorrupt("UNSEAL_FAILED", index, "sealed content does not open") from None
        if len(plain) < _PLAIN.size:
            raise JournalCorrupt("INVALID_RECORD", index, "sealed content too short")
        pmagic, version, rgen, rindex = _PLAIN.unpack_from(plain)
        if pmagic != MAGIC or version != _VERSION:
            raise JournalCorrupt("INVALID_RECORD", index, "unknown record format")
        if rgen != gen or rindex != index:
            detail = f"sealed as record {rindex} of generation {rgen}, found as record {index} of generation {gen}"
            raise JournalCorrupt("WRONG_EPOCH", index, detail)
        payloads.append(plain[_PLAIN.size :])
        pos = end
    return Parsed(payloads, pos, False)
