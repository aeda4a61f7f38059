"""Local key directories for the CLI: ``public.json`` plus one ``share-<id>.json`` per party.

Local mode keeps shares **unprotected** on disk (every share file says so): it is for
development, tests and demos. Nodes seal shares inside their enclave instead.

Every write is atomic (temp file, fsync, rename, directory fsync). A refresh replaces the
whole set in two phases: the new set is written and fsynced into ``.pending/``, then the
commit marker ``.pending/COMMIT`` is written, then files are moved into place. A reader first
runs :func:`recover`: with the marker it finishes the move (roll forward), without it it
deletes ``.pending/`` (roll back), so old shares stay valid until the new set is committed
and a mixed set is never loaded.

ECDSA (DKLs23) keys: each share file also holds the party's pairwise OT state and its ban list
(the ``dkls23`` section); ``public.json`` also holds the BIP32 ``chain_code``, the ``setup_id``
of the OT setup the shares belong to, and the key's ``ethereum_address`` (EIP-55). Every share
is checked against those, so shares of two different OT setups never meet in one session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import coincurve

from shardguard.protocols import KeyFileError, KeyShare, PublicKeyPackage
from shardguard.protocols.dkls23 import EcdsaKeyShare

__all__ = [
    "AnyShare",
    "EcdsaInfo",
    "KeyStoreError",
    "ethereum_address",
    "keccak256",
    "load_ecdsa_info",
    "load_ecdsa_share",
    "load_ecdsa_shares",
    "load_frost_shares",
    "load_public",
    "load_share",
    "load_shares",
    "record_bans",
    "recover",
    "replace_set",
    "write_file_atomic",
    "write_new",
    "write_share",
]

#: A FROST share or a DKLs23 (``ecdsa``) share.
AnyShare = KeyShare | EcdsaKeyShare

PUBLIC = "public.json"
PENDING = ".pending"
COMMIT = "COMMIT"
SHARE_FORMAT = "shardguard-local-share/v1"
PUBLIC_FORMAT = "shardguard-public-key/v1"
WARNING = "UNPROTECTED local share: plaintext on disk, for development only. Production nodes seal shares in an enclave."
MAX_FILE = 1 << 20
#: A DKLs23 share file carries ~49 KiB of OT state per other holder (up to 254 of them).
MAX_SHARE_FILE = 16 << 20


class KeyStoreError(Exception):
    """A key directory or file that cannot be used; ``path`` says which."""

    def __init__(self, what: str, path: Path | str) -> None:
        self.what = what
        self.path = str(path)
        super().__init__(f"{path}: {what}")


def share_name(identifier: int) -> str:
    return f"share-{identifier}.json"


# -- Ethereum address (Keccak-256, EIP-55) ----------------------------------------------------
#
# No runtime dependency offers Keccak-256 (original Keccak padding, not SHA3-256; the
# OpenSSL 3.0 behind hashlib has no KECCAK-256), so it is written out here from the Keccak
# reference (FIPS 202 §3 permutation, pad10*1 with domain byte 0x01). Tests check it against
# pycryptodome and ``hashlib.sha3_256`` (same permutation, domain byte 0x06).

_MASK = (1 << 64) - 1
_ROTATIONS = (  # r[x][y], FIPS 202 Table 2; lane (x, y) is index x + 5y
    (0, 36, 3, 41, 18),
    (1, 44, 10, 45, 2),
    (62, 6, 43, 15, 61),
    (28, 55, 25, 21, 56),
    (27, 20, 39, 8, 14),
)


def _round_constants() -> tuple[int, ...]:
    """FIPS 202 Algorithm 5 (rc) and ι: 24 round constants from the degree-8 LFSR."""
    out, r = [], 1
    bits = []
    for _ in range(7 * 24):
        bits.append(r & 1)
        r <<= 1
        if r & 0x100:
            r ^= 0x171
    for ir in range(24):
        out.append(sum(bits[7 * ir + j] << ((1 << j) - 1) for j in range(7)))
    return tuple(out)


_RC = _round_constants()


def _rotl(v: int, n: int) -> int:
    return ((v << n) | (v >> (64 - n))) & _MASK if n else v


def _keccak_f(a: list[int]) -> list[int]:
    for rc in _RC:
        c = [a[x] ^ a[x + 5] ^ a[x + 10] ^ a[x + 15] ^ a[x + 20] for x in range(5)]
        d = [c[(x - 1) % 5] ^ _rotl(c[(x + 1) % 5], 1) for x in range(5)]
        a = [a[i] ^ d[i % 5] for i in range(25)]
        b = [0] * 25
        for x in range(5):
            for y in range(5):
                b[y + 5 * ((2 * x + 3 * y) % 5)] = _rotl(a[x + 5 * y], _ROTATIONS[x][y])
        a = [b[i] ^ (~b[(i + 1) % 5 + i - i % 5] & b[(i + 2) % 5 + i - i % 5]) for i in range(25)]
        a[0] ^= rc
    return a


def _sponge256(data: bytes, domain: int) -> bytes:
    rate = 136  # (1600 - 2·256) / 8
    padded = bytearray(data) + bytes([domain]) + bytes(-(len(data) + 1) % rate)
    padded[-1] |= 0x80
    a = [0] * 25
    for off in range(0, len(padded), rate):
        block = padded[off : off + rate]
        for i in range(rate // 8):
            a[i] ^= int.from_bytes(block[8 * i : 8 * i + 8], "little")
        a = _keccak_f(a)
    return b"".join(lane.to_bytes(8, "little") for lane in a[:4])


def keccak256(data: bytes) -> bytes:
    """Keccak-256 as Ethereum uses it (original Keccak padding)."""
    return _sponge256(bytes(data), 0x01)


def ethereum_address(public_key: bytes) -> str:
    """EIP-55 checksummed address of a secp256k1 key (33-byte compressed or 65-byte):
    the last 20 bytes of ``keccak256(X ‖ Y)``."""
    xy = coincurve.PublicKey(bytes(public_key)).format(compressed=False)[1:]
    lower = keccak256(xy)[-20:].hex()
    check = keccak256(lower.encode()).hex()
    return "0x" + "".join(c.upper() if int(h, 16) >= 8 else c for c, h in zip(lower, check))


# -- atomic file primitives ------------------------------------------------------------------


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` via a fsynced temp file and rename, then fsync the directory:
    after a crash the file is the old one or the new one, never empty or cut short."""
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


def _share_doc(share: AnyShare) -> bytes:
    return _dump({"format": SHARE_FORMAT, "warning": WARNING, **share.to_dict()})


def _is_ecdsa(public: PublicKeyPackage) -> bool:
    return not public.suite.frost


def _public_doc(public: PublicKeyPackage, ecdsa: EcdsaKeyShare | None = None) -> bytes:
    doc = {"format": PUBLIC_FORMAT, **public.to_dict()}
    if ecdsa is not None:
        doc["chain_code"] = ecdsa.chain_code.hex()
        doc["setup_id"] = ecdsa.setup_id.hex()
        doc["ethereum_address"] = ethereum_address(public.public_key_bytes)
    return _dump(doc)


def _files_for(shares: Sequence[AnyShare]) -> dict[str, tuple[bytes, int]]:
    if not shares:
        raise KeyStoreError("no shares to write", ".")
    public = shares[0].public
    if any(s.public != public for s in shares):
        raise KeyStoreError("shares belong to different key packages", ".")
    ecdsa: EcdsaKeyShare | None = None
    if _is_ecdsa(public):
        ecdsa_shares = [s for s in shares if isinstance(s, EcdsaKeyShare)]
        if len(ecdsa_shares) != len(shares):
            raise KeyStoreError("an ecdsa key needs DKLs23 shares (DKG followed by the OT setup)", ".")
        ecdsa = ecdsa_shares[0]
        if any((s.chain_code, s.setup_id) != (ecdsa.chain_code, ecdsa.setup_id) for s in ecdsa_shares):
            raise KeyStoreError("shares belong to different OT setups or chain codes", ".")
    elif any(isinstance(s, EcdsaKeyShare) for s in shares):
        raise KeyStoreError("DKLs23 shares of a non-ecdsa key", ".")
    files = {PUBLIC: (_public_doc(public, ecdsa), 0o644)}
    files.update({share_name(s.identifier): (_share_doc(s), 0o600) for s in shares})
    return files


# -- writing ----------------------------------------------------------------------------------


def write_new(directory: Path, shares: Sequence[AnyShare]) -> None:
    """Create a key directory. It must not exist or be empty; it appears whole or not at all."""
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise KeyStoreError("already exists and is not an empty directory; refusing to overwrite", directory)
    parent = directory.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    for left in parent.glob(f".{glob.escape(directory.name)}.tmp-*"):  # a killed write_new's, whole shares
        shutil.rmtree(left, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{directory.name}.tmp-"))
    try:
        for name, (data, mode) in _files_for(shares).items():
            write_file_atomic(staging / name, data, mode)
        os.chmod(staging, 0o700)
        if directory.exists():
            directory.rmdir()
        os.replace(staging, directory)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_share(directory: Path, share: AnyShare) -> None:
    """Write (or atomically replace) one share file of the current set."""
    write_file_atomic(Path(directory) / share_name(share.identifier), _share_doc(share), 0o600)


def record_bans(directory: Path, share: EcdsaKeyShare, culprits: Iterable[int]) -> EcdsaKeyShare:
    """Persist, atomically, that ``share``'s holder refuses to sign with ``culprits`` (after a
    failed DKLs23 check) until the next refresh. The file on disk must still hold the same OT
    setup as ``share`` (no refresh in between); bans already on disk are kept."""
    directory = Path(directory)
    current = load_ecdsa_share(directory, share.identifier)
    if current.setup_id != share.setup_id or current.public != share.public:
        raise KeyStoreError("the share changed on disk since it was loaded (refreshed?); ban not recorded", directory)
    banned = current.with_bans(set(culprits) | share.banned)
    write_share(directory, banned)
    return banned


def replace_set(directory: Path, shares: Sequence[AnyShare], removed: Iterable[int] = ()) -> None:
    """Two-phase replacement of the whole set (refresh); see the module docstring."""
    directory = Path(directory)
    recover(directory)
    pending = directory / PENDING
    pending.mkdir(mode=0o700)
    for name, (data, mode) in _files_for(shares).items():
        write_file_atomic(pending / name, data, mode)
    write_file_atomic(pending / COMMIT, _dump({"remove": sorted(removed)}), 0o600)  # the commit point
    recover(directory)


def _sweep_temps(directory: Path) -> None:
    """Delete what a killed :func:`write_file_atomic` left behind in ``directory``: its temp
    files hold a whole share (0600), which a refresh must not leave behind (review finding)."""
    removed = False
    for p in directory.glob(".*.tmp"):
        if p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed = True
    if removed:
        _fsync_dir(directory)


def recover(directory: Path) -> None:
    """Finish (marker present) or undo (marker absent) an interrupted :func:`replace_set`, and
    delete temp files a killed write left."""
    directory = Path(directory)
    if directory.is_dir():
        _sweep_temps(directory)
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


def _read_json(path: Path, what: str, limit: int = MAX_FILE) -> dict[str, Any]:
    try:
        if path.stat().st_size > limit:
            raise KeyStoreError(f"{what} is too large", path)
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise KeyStoreError(f"{what} is missing", path) from None
    except (OSError, ValueError):
        raise KeyStoreError(f"{what} is unreadable or not JSON (corrupt?)", path) from None
    if not isinstance(doc, dict):
        raise KeyStoreError(f"{what} is not a JSON object", path)
    return doc


@dataclasses.dataclass(frozen=True)
class EcdsaInfo:
    """The ECDSA-only fields of ``public.json`` (all public)."""

    chain_code: bytes
    setup_id: bytes
    ethereum_address: str


def _load_public_doc(directory: Path) -> tuple[PublicKeyPackage, EcdsaInfo | None]:
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
    except KeyFileError as e:
        raise KeyStoreError(f"invalid public key file: {e}", path) from None
    if not _is_ecdsa(public):
        return public, None
    fields = {}
    for name in ("chain_code", "setup_id"):
        try:
            fields[name] = bytes.fromhex(doc[name])
        except (KeyError, TypeError, ValueError):
            fields[name] = b""
        if len(fields[name]) != 32:
            raise KeyStoreError(f"invalid public key file: {name} must be 32 bytes of hex", path)
    address = ethereum_address(public.public_key_bytes)
    if doc.get("ethereum_address", address) != address:
        raise KeyStoreError("invalid public key file: ethereum_address does not match the public key", path)
    return public, EcdsaInfo(chain_code=fields["chain_code"], setup_id=fields["setup_id"], ethereum_address=address)


def load_public(directory: Path) -> PublicKeyPackage:
    return _load_public_doc(directory)[0]


def load_ecdsa_info(directory: Path) -> EcdsaInfo:
    """Chain code, OT setup id and Ethereum address of an ``ecdsa`` key directory."""
    info = _load_public_doc(directory)[1]
    if info is None:
        raise KeyStoreError("not an ecdsa key", directory)
    return info


def load_share(directory: Path, identifier: int, public: PublicKeyPackage | None = None) -> AnyShare:
    """Load and fully validate one share; it must belong to the directory's public key (and,
    for ``ecdsa``, to its chain code and OT setup). Returns an :class:`EcdsaKeyShare` for an
    ``ecdsa`` key, a :class:`KeyShare` otherwise."""
    directory = Path(directory)
    info: EcdsaInfo | None = None
    if public is None:
        public, info = _load_public_doc(directory)
    elif _is_ecdsa(public):
        info = load_ecdsa_info(directory)
    if identifier not in public.participants:
        raise KeyStoreError(f"party {identifier} does not hold this key (holders {list(public.participants)})", directory)
    path = directory / share_name(identifier)
    doc = _read_json(path, f"share file of party {identifier}", MAX_SHARE_FILE)
    if doc.get("format") != SHARE_FORMAT:
        raise KeyStoreError("not a ShardGuard share file", path)
    try:
        share: AnyShare = KeyShare.from_dict(doc) if info is None else EcdsaKeyShare.from_dict(doc)
    except KeyFileError as e:
        raise KeyStoreError(f"invalid share file: {e}", path) from None
    if share.identifier != identifier:
        raise KeyStoreError(f"file holds the share of party {share.identifier}", path)
    if share.public != public:
        raise KeyStoreError("share belongs to another key or epoch than public.json", path)
    if isinstance(share, EcdsaKeyShare) and info is not None:
        if share.chain_code != info.chain_code:
            raise KeyStoreError("share has another chain code than public.json", path)
        if share.setup_id != info.setup_id:
            raise KeyStoreError("share belongs to another OT setup than public.json", path)
    return share


def load_shares(directory: Path, identifiers: Sequence[int]) -> list[AnyShare]:
    public = load_public(directory)
    return [load_share(directory, i, public) for i in identifiers]


def load_frost_shares(directory: Path, identifiers: Sequence[int]) -> list[KeyShare]:
    public = load_public(directory)
    out = []
    for i in identifiers:
        share = load_share(directory, i, public)
        if not isinstance(share, KeyShare):
            raise KeyStoreError("an ecdsa key, not a FROST key", directory)
        out.append(share)
    return out


def load_ecdsa_share(directory: Path, identifier: int, public: PublicKeyPackage | None = None) -> EcdsaKeyShare:
    share = load_share(directory, identifier, public)
    if not isinstance(share, EcdsaKeyShare):
        raise KeyStoreError("not an ecdsa key", directory)
    return share


def load_ecdsa_shares(directory: Path, identifiers: Sequence[int]) -> list[EcdsaKeyShare]:
    public = load_public(directory)
    return [load_ecdsa_share(directory, i, public) for i in identifiers]
