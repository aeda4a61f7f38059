"""Local key directories for the CLI: ``public.json`` plus one ``share-<id>.json`` per party.

Local mode keeps shares **unprotected** on disk (every share file says so): it is for
development, tests and demos. Nodes seal shares inside their enclave instead.

Every write is atomic (temp file, fsync, rename, directory fsync). A refresh replaces the
whole set in two phases: the new set is written and fsynced into ``.pending/``, then the
commit marker ``.pending/COMMIT`` is written, then files are moved into place. A reader first
runs :func:`recover`: with the marker it finishes the move (roll forward), without it it
deletes ``.pending/`` (roll back), so old shares stay valid until the new set is committed
and a mixed set is never loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from shardguard.protocols import KeyFileError, KeyShare, PublicKeyPackage

__all__ = ["KeyStoreError", "load_public", "load_share", "load_shares", "recover", "replace_set", "write_new", "write_share"]

PUBLIC = "public.json"
PENDING = ".pending"
COMMIT = "COMMIT"
SHARE_FORMAT = "shardguard-local-share/v1"
PUBLIC_FORMAT = "shardguard-public-key/v1"
WARNING = "UNPROTECTED local share: plaintext on disk, for development only. Production nodes seal shares in an enclave."
MAX_FILE = 1 << 20


class KeyStoreError(Exception):
    """A key directory or file that cannot be used; ``path`` says which."""

    def __init__(self, what: str, path: Path | str) -> None:
        self.what = what
        self.path = str(path)
        super().__init__(f"{path}: {what}")


def share_name(identifier: int) -> str:
    return f"share-{identifier}.json"


# -- atomic file primitives ------------------------------------------------------------------


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` via a fsynced temp file and rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _dump(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def _share_doc(share: KeyShare) -> bytes:
    return _dump({"format": SHARE_FORMAT, "warning": WARNING, **share.to_dict()})


def _public_doc(public: PublicKeyPackage) -> bytes:
    return _dump({"format": PUBLIC_FORMAT, **public.to_dict()})


def _files_for(shares: Sequence[KeyShare]) -> dict[str, tuple[bytes, int]]:
    if not shares:
        raise KeyStoreError("no shares to write", ".")
    public = shares[0].public
    if any(s.public != public for s in shares):
        raise KeyStoreError("shares belong to different key packages", ".")
    files = {PUBLIC: (_public_doc(public), 0o644)}
    files.update({share_name(s.identifier): (_share_doc(s), 0o600) for s in shares})
    return files


# -- writing ----------------------------------------------------------------------------------


def write_new(directory: Path, shares: Sequence[KeyShare]) -> None:
    """Create a key directory. It must not exist or be empty; it appears whole or not at all."""
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise KeyStoreError("already exists and is not an empty directory; refusing to overwrite", directory)
    parent = directory.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{directory.name}.tmp-"))
    try:
        for name, (data, mode) in _files_for(shares).items():
            _write_file(staging / name, data, mode)
        os.chmod(staging, 0o700)
        if directory.exists():
            directory.rmdir()
        os.replace(staging, directory)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_share(directory: Path, share: KeyShare) -> None:
    """Write (or atomically replace) one share file of the current set."""
    _write_file(Path(directory) / share_name(share.identifier), _share_doc(share), 0o600)


def replace_set(directory: Path, shares: Sequence[KeyShare], removed: Iterable[int] = ()) -> None:
    """Two-phase replacement of the whole set (refresh); see the module docstring."""
    directory = Path(directory)
    recover(directory)
    pending = directory / PENDING
    pending.mkdir(mode=0o700)
    for name, (data, mode) in _files_for(shares).items():
        _write_file(pending / name, data, mode)
    _write_file(pending / COMMIT, _dump({"remove": sorted(removed)}), 0o600)  # the commit point
    recover(directory)


def recover(directory: Path) -> None:
    """Finish (marker present) or undo (marker absent) an interrupted :func:`replace_set`."""
    directory = Path(directory)
    pending = directory / PENDING
    if not pending.is_dir():
        return
    marker = pending / COMMIT
    if not marker.exists():
        shutil.rmtree(pending)
        _fsync_dir(directory)
        return
    try:
        plan = json.loads(marker.read_bytes())
        removed = [int(i) for i in plan["remove"]]
    except (ValueError, KeyError, TypeError):
        raise KeyStoreError("corrupt refresh commit marker; inspect it by hand", marker) from None
    # Shares first, public.json last: a reader that sees the new public.json sees new shares.
    names = sorted(p.name for p in pending.iterdir() if p.name.startswith("share-"))
    for name in [*names, PUBLIC]:
        src = pending / name
        if src.exists():
            os.replace(src, directory / name)
    for i in removed:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / share_name(i))
    _fsync_dir(directory)
    shutil.rmtree(pending)
    _fsync_dir(directory)


# -- reading ----------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_FILE:
            raise KeyStoreError(f"{what} is too large", path)
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise KeyStoreError(f"{what} is missing", path) from None
    except (OSError, ValueError):
        raise KeyStoreError(f"{what} is unreadable or not JSON (corrupt?)", path) from None
    if not isinstance(doc, dict):
        raise KeyStoreError(f"{what} is not a JSON object", path)
    return doc


def load_public(directory: Path) -> PublicKeyPackage:
    directory = Path(directory)
    if not directory.is_dir():
        raise KeyStoreError("key directory does not exist", directory)
    recover(directory)
    path = directory / PUBLIC
    doc = _read_json(path, "public key file")
    if doc.get("format") != PUBLIC_FORMAT:
        raise KeyStoreError("not a ShardGuard public key file", path)
    try:
        public = PublicKeyPackage.from_dict(doc)
        public.check_consistent()
        return public
    except KeyFileError as e:
        raise KeyStoreError(f"invalid public key file: {e}", path) from None


def load_share(directory: Path, identifier: int, public: PublicKeyPackage | None = None) -> KeyShare:
    """Load and fully validate one share; it must belong to the directory's public key."""
    directory = Path(directory)
    public = public or load_public(directory)
    if identifier not in public.participants:
        raise KeyStoreError(f"party {identifier} does not hold this key (holders {list(public.participants)})", directory)
    path = directory / share_name(identifier)
    doc = _read_json(path, f"share file of party {identifier}")
    if doc.get("format") != SHARE_FORMAT:
        raise KeyStoreError("not a ShardGuard share file", path)
    try:
        share = KeyShare.from_dict(doc)
    except KeyFileError as e:
        raise KeyStoreError(f"invalid share file: {e}", path) from None
    if share.identifier != identifier:
        raise KeyStoreError(f"file holds the share of party {share.identifier}", path)
    if share.public != public:
        raise KeyStoreError("share belongs to another key or epoch than public.json", path)
    return share


def load_shares(directory: Path, identifiers: Sequence[int]) -> list[KeyShare]:
    public = load_public(directory)
    return [load_share(directory, i, public) for i in identifiers]
