"""The one enclave interface the node sees (ARCHITECTURE §5), its errors, and backend selection.

A :class:`Platform` attests (``attest(user_data) -> Evidence``, exactly 64 bytes bound, the
ShardGuard convention of ``specs/enclave-backends.md`` preamble and ARCHITECTURE §6), names
itself (``kind``, ``measurement``) and seals data to itself (``seal`` / ``unseal``).

Sealed blob format, shared by every backend (``SEAL_VERSION`` = 1)::

    0x01 ‖ u16 BE len(ctx) ‖ ctx ‖ nonce (12 B, random) ‖ AES-256-GCM ciphertext ‖ tag (16 B)
    AAD = everything before the nonce ‖ label
    key = HKDF-SHA256(ikm = platform secret(ctx), salt = none,
                      info = "shardguard/seal/v1" 0x00 kind 0x00 label, length 32)

``ctx`` is empty except where the platform must store something to find its secret again (the
KMS-wrapped data key on Nitro, spec §1.5). The platform secret is the simulated key file, the
SEV-SNP derived key (spec §3.1) or Gramine's ``_sgx_mrenclave`` key (spec §5.1). The label is
both in the key derivation and in the AAD: a blob opens only under the label it was sealed with.

Backend choice (:func:`detect`, spec §6): ``/dev/nsm`` → ``nitro``; ``/dev/attestation`` with
``attestation_type`` = ``dcap`` and a ``quote`` file → ``gramine``; ``/sys/kernel/config/tsm/report``
→ ``tsm``. Nothing found is an error: the simulated backend is chosen only by name, never as
a fallback. Detection only picks code paths; trust is decided by the verifier.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime as dt
import enum
import os
import struct
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shardguard.attestation.policy import PLATFORMS

__all__ = [
    "BACKENDS",
    "KINDS",
    "SEAL_VERSION",
    "USER_DATA_LEN",
    "Clock",
    "DetectionError",
    "DeviceError",
    "EnclaveError",
    "Evidence",
    "NotSupported",
    "Platform",
    "ReportFields",
    "Rng",
    "SealingError",
    "SealingReason",
    "UsageError",
    "check_binding",
    "check_user_data",
    "detect",
    "iowr",
    "open_platform",
    "report_fields",
    "utc_now",
]

#: Bytes every ``attest()`` binds (spec preamble: every hardware path takes exactly 64).
USER_DATA_LEN = 64
#: ``Platform.kind`` values.
KINDS = ("simulated", "nitro", "tsm-tdx", "tsm-sev-snp", "gramine-sgx")
#: Names accepted by :func:`open_platform` besides ``"auto"``.
BACKENDS = ("simulated", "nitro", "tsm", "gramine")
SEAL_VERSION = 1

_NONCE_LEN = 12
_TAG_LEN = 16
_SEAL_HEADER = struct.Struct(">BH")
_KDF_INFO = b"shardguard/seal/v1\x00"

NSM_DEVICE = "dev/nsm"
GRAMINE_DIR = "dev/attestation"
TSM_REPORT_DIR = "sys/kernel/config/tsm/report"

Rng = Callable[[int], bytes]
Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- errors ---------------------------------------------------------------------------------


class EnclaveError(Exception):
    """Base of every error raised by :mod:`shardguard.enclave`."""


class UsageError(EnclaveError, ValueError):
    """The caller broke the API (wrong user_data length, unknown backend name, …)."""


class DetectionError(EnclaveError):
    """No enclave backend found under ``root`` (spec §6). Never answered by falling back to simulated."""

    def __init__(self, root: Path | str, detail: str) -> None:
        self.root = str(root)
        self.detail = detail
        super().__init__(f"no enclave platform detected under {self.root}: {detail}")


class NotSupported(EnclaveError):
    """The platform cannot do ``operation`` at all (not a transient failure); ``reason`` says why."""

    def __init__(self, platform: str, operation: str, reason: str) -> None:
        self.platform = platform
        self.operation = operation
        self.reason = reason
        super().__init__(f"{platform}: {operation} is not supported: {reason}")


class DeviceError(EnclaveError):
    """The enclave device or kernel interface failed or answered something unusable."""

    def __init__(self, platform: str, operation: str, detail: str, *, errno: int | None = None) -> None:
        self.platform = platform
        self.operation = operation
        self.detail = detail
        self.errno = errno
        super().__init__(f"{platform}: {operation} failed: {detail}")


class SealingReason(enum.Enum):
    MALFORMED = "sealed blob is malformed"
    VERSION = "sealed blob has an unsupported format version"
    AUTHENTICATION = "sealed blob does not open (wrong key or label, or tampered)"
    KEY = "sealing key is unavailable or invalid"


class SealingError(EnclaveError):
    """Sealing or unsealing failed. Authentication failures carry one fixed message and no
    detail: wrong key, wrong label and a tampered blob are indistinguishable by design."""

    def __init__(self, reason: SealingReason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}{': ' + detail if detail else ''}")


# -- evidence -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Evidence:
    """What ``attest()`` returns: ``blob`` in the format named by ``platform``.

    ``platform`` is the *evidence format*, one of ``attestation.policy.PLATFORMS`` (``nitro``,
    ``sev-snp``, ``tdx``, ``sgx``), i.e. which verifier reads it. The simulated backend emits
    ``nitro``-format documents chained to the development root. ``collateral`` holds extra
    bytes a verifier may need, e.g. ``auxblob`` (the SEV-SNP certificate table, spec §3.4).
    """

    platform: str
    blob: bytes
    collateral: dict[str, bytes] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.platform not in PLATFORMS:
            raise UsageError(f"unknown evidence format {self.platform!r}; expected one of {PLATFORMS}")
        if not isinstance(self.blob, bytes) or not self.blob:
            raise UsageError("evidence blob must be non-empty bytes")


def check_user_data(user_data: bytes) -> bytes:
    if not isinstance(user_data, bytes | bytearray) or len(user_data) != USER_DATA_LEN:
        got = len(user_data) if isinstance(user_data, bytes | bytearray) else type(user_data).__name__
        raise UsageError(f"user_data must be exactly {USER_DATA_LEN} bytes (got {got})")
    return bytes(user_data)


@dataclasses.dataclass(frozen=True)
class ReportFields:
    measurement: str
    report_data: bytes


def report_fields(platform: str, blob: bytes) -> ReportFields:
    """The measurement (hex) and the 64 bound bytes of hardware evidence, read at the fixed
    offsets of the spec — a local self-check only; the verifiers in ``shardguard.attestation``
    do the real parsing. SEV-SNP report: MEASUREMENT @0x90, REPORT_DATA @0x50 (§3.2). TDX quote
    v4 body @0x30, v5 body @0x36: MRTD body+0x88, REPORTDATA body+0x208 (§4.2). SGX quote v3:
    MRENCLAVE @0x70, REPORTDATA @0x170 (§5.3)."""
    if platform == "sev-snp":
        meas, rd, minimum = 0x90, 0x50, 0x4A0
    elif platform == "tdx":
        version = struct.unpack_from("<H", blob, 0)[0] if len(blob) >= 2 else 0
        if version not in (4, 5):
            raise DeviceError(platform, "attest", f"quote version {version} is not 4 or 5")
        body = 0x30 if version == 4 else 0x36
        meas, rd, minimum = body + 0x88, body + 0x208, body + 0x248
    elif platform == "sgx":
        version = struct.unpack_from("<H", blob, 0)[0] if len(blob) >= 2 else 0
        if version != 3:
            raise DeviceError(platform, "attest", f"quote version {version} is not 3")
        meas, rd, minimum = 0x70, 0x170, 0x1B0
    else:
        raise UsageError(f"no fixed report layout for {platform!r}")
    if len(blob) < minimum:
        raise DeviceError(platform, "attest", f"evidence is {len(blob)} bytes, shorter than its header and body")
    width = 32 if platform == "sgx" else 48
    return ReportFields(measurement=blob[meas : meas + width].hex(), report_data=blob[rd : rd + USER_DATA_LEN])


def check_binding(platform: str, blob: bytes, user_data: bytes, *, kind: str) -> None:
    """Refuse evidence that does not carry the ``user_data`` just written (a stale or raced
    report would only be refused later, by the peer's verifier, with a vaguer reason)."""
    if report_fields(platform, blob).report_data != user_data:
        raise DeviceError(kind, "attest", "the evidence does not carry the user_data that was written (stale or raced report)")


def iowr(kind: int, nr: int, size: int) -> int:
    """Linux ``_IOWR(type, nr, size)``: direction 3 << 30 | size << 16 | type << 8 | nr."""
    if not (0 <= kind < 256 and 0 <= nr < 256 and 0 <= size < 1 << 14):
        raise UsageError("ioctl fields out of range")
    return (3 << 30) | (size << 16) | (kind << 8) | nr


# -- the interface --------------------------------------------------------------------------


class Platform(abc.ABC):
    """An enclave backend (ARCHITECTURE §5). Subclasses set ``kind``, provide ``measurement``
    and ``attest``, and override :meth:`_sealing_secret` (and :meth:`_new_sealing_secret` when
    the secret needs stored context) to support sealing."""

    def __init__(self, *, rng: Rng = os.urandom) -> None:
        self._rng = rng
        # AEADs derived from the platform's own secret (blobs without a context), per label: the
        # derivation is deterministic, so this only skips repeating HKDF for every seal.
        self._aeads: dict[tuple[bytes, bytes], AESGCM] = {}

    @property
    @abc.abstractmethod
    def kind(self) -> str:
        """One of :data:`KINDS`."""

    @property
    @abc.abstractmethod
    def measurement(self) -> str:
        """Lower-case hex of the value a verification policy pins for this platform: Nitro
        ``pcr0``, SEV-SNP ``measurement``, TDX ``mrtd``, SGX ``mrenclave``; simulated ``pcr0``."""

    @abc.abstractmethod
    def attest(self, user_data: bytes) -> Evidence:
        """Evidence binding exactly 64 bytes of ``user_data``; ``UsageError`` for any other length."""

    # sealing --------------------------------------------------------------------------------

    def _sealing_secret(self, context: bytes) -> bytes:
        """The platform secret for a blob sealed under ``context``."""
        raise NotSupported(self.kind, "seal", "this platform has no sealing key")

    def _new_sealing_secret(self) -> tuple[bytes, bytes]:
        """``(context, secret)`` for a new blob; ``context`` is stored in the blob in clear."""
        return b"", self._sealing_secret(b"")

    def _aead(self, secret: bytes, label: bytes) -> AESGCM:
        info = _KDF_INFO + self.kind.encode() + b"\x00" + label
        return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret))

    def _aead_for(self, context: bytes, secret: bytes, label: bytes) -> AESGCM:
        """:meth:`_aead`, kept per label for the platform's own secret (no ``context``). A
        context names a secret kept elsewhere (Nitro's KMS data keys, which NitroPlatform keeps itself):
        no AEAD of those is kept here."""
        if context:
            return self._aead(secret, label)
        aeads: dict[tuple[bytes, bytes], AESGCM] | None = getattr(self, "_aeads", None)  # if __init__ was not called
        if aeads is None:
            return self._aead(secret, label)
        key = (secret, label)
        aead = aeads.get(key)
        if aead is None:
            if len(aeads) >= 64:
                aeads.clear()
            aead = aeads[key] = self._aead(secret, label)
        return aead

    def seal(self, plaintext: bytes, *, label: bytes) -> bytes:
        """Encrypt ``plaintext`` so that only this platform (same measurement/key) can
        :meth:`unseal` it under the same ``label``. Format in the module docstring."""
        if not isinstance(plaintext, bytes | bytearray) or not isinstance(label, bytes | bytearray):
            raise UsageError("plaintext and label must be bytes")
        try:
            context, secret = self._new_sealing_secret()
        except DeviceError as e:
            raise SealingError(SealingReason.KEY, str(e)) from e
        if len(context) > 0xFFFF:
            raise SealingError(SealingReason.KEY, "sealing context longer than 65535 bytes")
        header = _SEAL_HEADER.pack(SEAL_VERSION, len(context)) + context
        nonce = self._rng(_NONCE_LEN)
        if len(nonce) != _NONCE_LEN:
            raise SealingError(SealingReason.KEY, "the RNG returned a short nonce")
        return header + nonce + self._aead_for(context, secret, bytes(label)).encrypt(nonce, bytes(plaintext), header + label)

    def unseal(self, blob: bytes, *, label: bytes) -> bytes:
        """Open a blob made by :meth:`seal`; :class:`SealingError` on any failure (a device
        failure while fetching the key included), :class:`NotSupported` where sealing does not exist."""
        if not isinstance(blob, bytes | bytearray) or not isinstance(label, bytes | bytearray):
            raise UsageError("blob and label must be bytes")
        blob = bytes(blob)
        if len(blob) < _SEAL_HEADER.size:
            raise SealingError(SealingReason.MALFORMED, "shorter than its header")
        version, ctx_len = _SEAL_HEADER.unpack_from(blob)
        if version != SEAL_VERSION:
            raise SealingError(SealingReason.VERSION, f"version {version}, expected {SEAL_VERSION}")
        start = _SEAL_HEADER.size + ctx_len
        if len(blob) < start + _NONCE_LEN + _TAG_LEN:
            raise SealingError(SealingReason.MALFORMED, "truncated")
        header, nonce, ciphertext = blob[:start], blob[start : start + _NONCE_LEN], blob[start + _NONCE_LEN :]
        try:
            secret = self._sealing_secret(header[_SEAL_HEADER.size :])
        except DeviceError as e:
            raise SealingError(SealingReason.KEY, str(e)) from e
        try:
            return self._aead_for(header[_SEAL_HEADER.size :], secret, bytes(label)).decrypt(nonce, ciphertext, header + label)
        except InvalidTag:
            raise SealingError(SealingReason.AUTHENTICATION) from None


# -- detection and construction -------------------------------------------------------------


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def detect(root: Path = Path("/")) -> str:
    """The backend this machine offers (spec §6 order): ``nitro``, ``gramine`` or ``tsm``.

    ``root`` lets tests point at a fake tree. Raises :class:`DetectionError` when none is
    found or when the interface present cannot attest remotely (Gramine without DCAP, a TDX
    or SNP guest without configfs-tsm); never falls back to ``simulated``.
    """
    root = Path(root)
    if (root / NSM_DEVICE).exists():
        return "nitro"
    gramine = root / GRAMINE_DIR
    if gramine.is_dir():
        kind = _read_text(gramine / "attestation_type")
        if kind == "dcap" and (gramine / "quote").exists():
            return "gramine"
        raise DetectionError(
            root,
            f"{gramine} exists but offers no remote attestation (attestation_type={kind!r}; gramine-direct or "
            "sgx.remote_attestation != 'dcap')",
        )
    if (root / TSM_REPORT_DIR).is_dir():
        return "tsm"
    hints = []
    if (root / "dev/sev-guest").exists():
        hints.append("/dev/sev-guest without configfs-tsm (kernel < 6.7 or configfs not mounted): legacy SNP ioctls only")
    if (root / "dev/tdx_guest").exists():
        hints.append("/dev/tdx_guest without configfs-tsm: no quote path upstream, cannot attest remotely")
    checked = f"checked /{NSM_DEVICE}, /{GRAMINE_DIR}, /{TSM_REPORT_DIR}"
    detail = "; ".join([checked, *hints]) + "; the simulated backend must be asked for by name"
    raise DetectionError(root, detail)


def open_platform(name: str = "auto", *, root: Path = Path("/"), state_dir: Path | None = None) -> Platform:
    """Open backend ``name`` (one of :data:`BACKENDS`, or ``"auto"`` = :func:`detect`).

    ``state_dir`` is where the simulated backend keeps its (insecure) sealing key file; it is
    required for ``simulated`` and unused by the hardware backends.
    """
    chosen = detect(root) if name == "auto" else name
    if chosen == "simulated":
        if state_dir is None:
            raise UsageError("the simulated platform needs state_dir (its sealing key file lives there)")
        from shardguard.enclave.simulated import SimulatedPlatform

        return SimulatedPlatform(state_dir=state_dir)
    if chosen == "nitro":
        from shardguard.enclave.nitro import NitroPlatform

        return NitroPlatform(device=Path(root) / NSM_DEVICE)
    if chosen == "tsm":
        from shardguard.enclave.tsm import TsmPlatform

        return TsmPlatform(root=Path(root))
    if chosen == "gramine":
        from shardguard.enclave.gramine import GraminePlatform

        return GraminePlatform(root=Path(root))
    raise UsageError(f"unknown platform {name!r}; expected 'auto' or one of {BACKENDS}")
