"""The keystore's journal: an append-only file of small sealed records (the audit log's entries).

A value written often and whole (the audit log's entries not yet mirrored) costs a manifest
rewrite per write — a temp file, its fsync, a rename and a directory fsync, with every other
inline value and the 256 pairs of history re-encoded and re-sealed. The journal takes such
writes instead: each append is one ``write`` of one frame and one ``fdatasync``. The keystore
(:mod:`shardguard.node.keystore`) owns the file and its place in the crash-safety and rollback
rules; this module holds only the format, pure (no I/O)::

    file    ks-journal.g<gen>.log         one generation; the manifest names the current one
    frame   "SGKJ" ‖ u32 BE len(S) ‖ S ‖ SHA-256("SGKJ" ‖ len ‖ S)[:16]
    S       platform.seal(P, label = "shardguard/keystore/v1" 0x00 "journal" 0x00 store id)
    P       "SGKJ" 0x02 ‖ u64 BE gen ‖ u64 BE first ‖ u32 BE count ‖ count × (u32 BE len ‖ record)

One frame holds the records of one append (a group commit writes several): ``first`` is the
index of its first record, counted from 0 within a generation. The sealed ``gen`` and ``first``
keep the host from reordering, repeating or moving frames between generations, and the label
from moving them between stores; the host can only cut the file short — which the manifest's
anchor (the number of records the journal held at the manifest's last write) catches below that
number, and which is otherwise the same power as rolling the whole directory back (see the
keystore's rollback defence).

**Torn tails.** Appends are serial and each returns only after its ``fdatasync``, so a crash can
damage only the frame being appended: cut short, or, after a power loss, with blocks of it
zero-filled or lost anywhere inside. The checksum tells such a frame from a whole one, so
:func:`parse` ends the journal at a frame that is cut short (its header's length runs past the
file), whose header is damaged, or that fails its checksum as the file's last frame (the *torn*
tail: that append never returned, nothing depended on it; the keystore cuts it off). A frame
that fails its checksum with more after it, or a damaged header with a whole frame somewhere
after it, cannot come from a crash (bit rot, tampering): an error (``CHECKSUM``). A frame whose
checksum holds was written whole: if it does not open, or is out of place, that is an error,
never a torn tail — a transient failure of the platform's sealing key must not drop durable
records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import struct
from collections.abc import Sequence
from typing import Final

from shardguard.enclave.platform import NotSupported, Platform, SealingError, SealingReason

__all__ = [
    "JOURNAL_RE",
    "MAX_JOURNAL",
    "MAX_JOURNAL_FRAME",
    "JournalCorrupt",
    "Parsed",
    "encode_frame",
    "journal_name",
    "parse",
]

MAGIC: Final = b"SGKJ"
_VERSION: Final = 2
_LABEL_PREFIX: Final = b"shardguard/keystore/v1\x00journal\x00"
_FRAME = struct.Struct(">4sI")
_CHECK = 16  # bytes of SHA-256 after each frame
_PLAIN = struct.Struct(">4sBQQI")
_LEN = struct.Struct(">I")
#: Largest sealed frame (an audit entry is at most 64 KiB, its mirror record about 4/3 of it; a
#: group commit writes the entries of the tasks that finished meanwhile).
MAX_JOURNAL_FRAME: Final = 8 << 20
#: Largest journal file read at open (the keystore starts a new generation long before).
MAX_JOURNAL: Final = 64 << 20
_SCAN_BUDGET = 4 * MAX_JOURNAL_FRAME
JOURNAL_RE: Final = re.compile(r"^ks-journal\.g(0|[1-9][0-9]{0,17})\.log$")


def journal_name(gen: int) -> str:
    return f"ks-journal.g{gen}.log"


def _label(store: str) -> bytes:
    return _LABEL_PREFIX + store.encode()


def encode_frame(platform: Platform, store: str, gen: int, first: int, records: Sequence[bytes]) -> bytes:
    """One frame holding ``records`` (indices ``first``, ``first + 1``, …), ready to append.
    Raises the platform's :class:`SealingError` / :class:`NotSupported`, and ``ValueError`` for a
    frame larger than :data:`MAX_JOURNAL_FRAME`."""
    body = b"".join(_LEN.pack(len(r)) + r for r in records)
    sealed = platform.seal(_PLAIN.pack(MAGIC, _VERSION, gen, first, len(records)) + body, label=_label(store))
    if len(sealed) > MAX_JOURNAL_FRAME:
        raise ValueError(f"a journal frame of {len(sealed)} bytes is larger than {MAX_JOURNAL_FRAME}")
    head = _FRAME.pack(MAGIC, len(sealed)) + sealed
    return head + hashlib.sha256(head).digest()[:_CHECK]


class JournalCorrupt(Exception):
    """The frame at record ``index`` of the journal was written whole but is bad. ``reason`` is
    the name of the :class:`~shardguard.node.keystore.KeystoreReason` the keystore raises."""

    def __init__(self, reason: str, index: int, detail: str) -> None:
        self.reason = reason
        self.index = index
        self.detail = detail
        super().__init__(f"journal record {index}: {detail}")


@dataclasses.dataclass(frozen=True)
class Parsed:
    """The records of a journal's whole frames, the byte length those frames take (``end``), and
    whether bytes after them were a torn frame (to cut off before the next append)."""

    records: list[bytes]
    end: int
    torn: bool


def parse(data: bytes, platform: Platform, store: str, gen: int) -> Parsed:
    """Read every frame of generation ``gen`` of ``store``'s journal, up to a torn tail. Raises
    :class:`JournalCorrupt` for a whole frame (its checksum holds) that is bad."""
    records: list[bytes] = []
    pos = 0
    while pos < len(data):
        index = len(records)
        end = _frame_end(data, pos)
        if end is None:
            # Cut short, or its header is damaged: a torn tail — unless a whole frame follows,
            # which a crash (it damages only the last append) cannot leave behind a torn one.
            if _whole_frame_after(data, pos + 1):
                raise JournalCorrupt("CHECKSUM", index, "a damaged frame header before a whole frame")
            return Parsed(records, pos, True)
        if not _checksum_holds(data, pos, end):
            if end == len(data):
                return Parsed(records, pos, True)  # the last frame, not written whole
            # A crash damages only the last append: a damaged frame with more after it is not one.
            raise JournalCorrupt("CHECKSUM", index, "a frame before the last fails its checksum")
        try:
            plain = platform.unseal(data[pos + _FRAME.size : end - _CHECK], label=_label(store))
        except NotSupported:
            raise JournalCorrupt("SEALING_UNAVAILABLE", index, "the platform cannot unseal") from None
        except SealingError as e:
            if e.reason is SealingReason.KEY:
                raise JournalCorrupt("SEALING_UNAVAILABLE", index, "the platform's sealing key is not available") from None
            raise JournalCorrupt("UNSEAL_FAILED", index, "sealed content does not open") from None
        records.extend(_records(plain, gen, index))
        pos = end
    return Parsed(records, pos, False)


def _whole_frame_after(data: bytes, start: int) -> bool:
    """Whether a frame whose checksum holds starts anywhere at or after ``start`` (only looked
    for when a header is damaged, so the scan's cost is paid on damage alone). Bounded: a torn
    frame is sealed bytes, where the magic hardly ever occurs; a file that makes the scan pass
    :data:`_SCAN_BUDGET` bytes of hashing or 4,096 magics was not torn by a crash, and counts as
    damaged."""
    budget, candidates = _SCAN_BUDGET, 4096
    at = data.find(MAGIC, start)
    while at != -1:
        candidates -= 1
        if candidates < 0:
            return True
        end = _frame_end(data, at)
        if end is not None:
            budget -= end - at
            if budget < 0 or _checksum_holds(data, at, end):
                return True
        at = data.find(MAGIC, at + 1)
    return False


def _frame_end(data: bytes, pos: int) -> int | None:
    """Where the frame at ``pos`` ends by its header, or None if the header is damaged or the
    frame runs past the data."""
    if len(data) - pos < _FRAME.size:
        return None
    magic, length = _FRAME.unpack_from(data, pos)
    end = pos + _FRAME.size + length + _CHECK
    return end if magic == MAGIC and length <= MAX_JOURNAL_FRAME and end <= len(data) else None


def _checksum_holds(data: bytes, pos: int, end: int) -> bool:
    return hmac.compare_digest(hashlib.sha256(data[pos : end - _CHECK]).digest()[:_CHECK], data[end - _CHECK : end])


def _records(plain: bytes, gen: int, index: int) -> list[bytes]:
    if len(plain) < _PLAIN.size:
        raise JournalCorrupt("INVALID_RECORD", index, "sealed content too short")
    pmagic, version, rgen, first, count = _PLAIN.unpack_from(plain)
    if pmagic != MAGIC or version != _VERSION:
        raise JournalCorrupt("INVALID_RECORD", index, "unknown frame format")
    if rgen != gen or first != index:
        detail = f"sealed as record {first} of generation {rgen}, found as record {index} of generation {gen}"
        raise JournalCorrupt("WRONG_EPOCH", index, detail)
    out: list[bytes] = []
    pos = _PLAIN.size
    for _ in range(count):
        if pos + _LEN.size > len(plain):
            raise JournalCorrupt("INVALID_RECORD", index, "the frame's records run past its end")
        (n,) = _LEN.unpack_from(plain, pos)
        pos += _LEN.size
        if pos + n > len(plain):
            raise JournalCorrupt("INVALID_RECORD", index, "the frame's records run past its end")
        out.append(plain[pos : pos + n])
        pos += n
    if pos != len(plain) or not out:
        raise JournalCorrupt("INVALID_RECORD", index, "the frame holds bytes beyond its records, or none")
    return out
