"""TDX and SEV-SNP guests through Linux configfs-tsm (``specs/enclave-backends.md`` §2), and SEV-SNP
sealing keys through ``/dev/sev-guest`` (§3.1).

Attestation follows the sequence of §2 with one report entry per request:

1. ``mkdir /sys/kernel/config/tsm/report/<unique>``; read ``provider`` (``tdx_guest`` → kind
   ``tsm-tdx``, evidence ``tdx``; ``sev_guest`` → ``tsm-sev-snp``, evidence ``sev-snp``;
   anything else, e.g. ``arm_cca_guest``, is refused);
2. read ``generation`` → g; on SNP with ``privlevel_floor`` > 0 write ``privlevel`` (g + 1),
   since the default 0 would be rejected by the firmware;
3. write the 64 bytes to ``inblob`` in one write and close it (g + 1): configfs commits binary
   writes at close, so ``close()`` errors are reported and the generation is checked;
4. SNP: read ``auxblob`` (the host's certificate table, §3.4, returned as collateral
   ``auxblob``); read ``outblob`` (TDX: a DCAP quote, §4.2; SNP: the bare 1184-byte report,
   §3.2). After every read ``generation`` is read again: any change means another writer used
   the entry, and the request fails with :class:`GenerationMismatch` (a private entry should
   never see one). ``EBUSY`` (a TDX quote in flight) is retried, as Intel's library does;
5. ``rmdir`` the entry, also on error.

The file operations go through :class:`ConfigfsOps` so tests can run the sequence on a
directory tree that mimics the kernel (spec §7). The TDX quote and SNP report offsets are only
read for a local self-check (:func:`shardguard.enclave.platform.report_fields`).

Sealing: TDX has no sealing key in the upstream guest ABI (§4.1), so ``seal`` raises
:class:`NotSupported`. SEV-SNP derives one with ``SNP_GET_DERIVED_KEY`` (§3.1): by default VCEK
root, guest fields MEASUREMENT | GUEST_POLICY, VMPL = ``privlevel_floor`` (else 0), guest SVN
and TCB version 0. The key is chip-bound: a node moved to another host cannot unseal and is
re-provisioned by share repair (ARCHITECTURE §7).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import enum
import errno as errno_codes
import fcntl
import logging
import os
import secrets
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from shardguard.enclave.platform import (
    TSM_REPORT_DIR,
    DeviceError,
    Evidence,
    NotSupported,
    Platform,
    Rng,
    SealingError,
    SealingReason,
    check_binding,
    check_user_data,
    iowr,
    report_fields,
)

__all__ = [
    "PROVIDERS",
    "SNP_GET_DERIVED_KEY",
    "ConfigfsOps",
    "DerivedKeyRequest",
    "GenerationMismatch",
    "GuestField",
    "SevGuestDevice",
    "TsmPlatform",
    "decode_derived_key_response",
    "encode_derived_key_request",
    "split_exitinfo2",
]

#: provider → (Platform.kind, Evidence.platform)
PROVIDERS = {"tdx_guest": ("tsm-tdx", "tdx"), "sev_guest": ("tsm-sev-snp", "sev-snp")}

_ERRNO_MEANING = {
    errno_codes.EINVAL: "inblob missing or not exactly 64 bytes, or a bad option",
    errno_codes.ENXIO: "no attestation provider is registered",
    errno_codes.EBUSY: "busy (a TDX quote still in flight, or generation wrap)",
    errno_codes.ETIMEDOUT: "the TDX quote did not arrive within 30 s",
    errno_codes.EFBIG: "the evidence exceeds the outblob limit",
}

_log = logging.getLogger(__name__)


class GenerationMismatch(DeviceError):
    """``generation`` moved under us: another writer touched the report entry (spec §2 step 4)."""

    def __init__(self, kind: str, expected: int, got: int) -> None:
        self.expected = expected
        self.got = got
        super().__init__(kind, "attest", f"generation is {got}, expected {expected}: a concurrent writer used the entry")


class ConfigfsOps:
    """The file operations of the configfs-tsm sequence. The real kernel creates the
    attributes on ``mkdir``, bumps ``generation`` on writes and generates ``outblob`` on read;
    tests substitute a subclass that does the same on a plain directory tree."""

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def exists(self, path: Path) -> bool:
        return path.exists()

    def read(self, path: Path) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def write(self, path: Path, data: bytes) -> None:
        """One ``write`` then ``close``; configfs commits binary attributes at close, so a failed
        close is an error too (spec §2 step 3)."""
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):
            raise OSError(errno_codes.EIO, f"short write: {written} of {len(data)} bytes")


# -- SNP_GET_DERIVED_KEY (spec §3.1) ----------------------------------------------------------


class GuestField(enum.IntFlag):
    """``guest_field_select`` bits: which guest data is mixed into the derived key."""

    GUEST_POLICY = 1 << 0
    IMAGE_ID = 1 << 1
    FAMILY_ID = 1 << 2
    MEASUREMENT = 1 << 3
    GUEST_SVN = 1 << 4
    TCB_VERSION = 1 << 5
    LAUNCH_MIT_VECTOR = 1 << 6


_DERIVED_KEY_REQ = struct.Struct("<IIQIIQ")  # 32 B: root_key_select, rsvd, guest_field_select, vmpl, guest_svn, tcb_version
_DERIVED_KEY_RESP_LEN = 64  # u32 status @0, 28 rsvd, key[32] @0x20
_VALID_FIELDS = (1 << 7) - 1


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DerivedKeyRequest:
    """``struct snp_derived_key_req`` (msg_version 1, 32 bytes): ``root_key_select`` 0 = VCEK,
    1 = VMRK; ``vmpl`` ≥ the guest's current VMPL and ≤ 3; ``guest_svn`` ≤ the ID block's SVN;
    ``tcb_version`` ≤ the committed TCB (both only matter when selected)."""

    root_key_select: int = 0
    guest_field_select: int = GuestField.MEASUREMENT | GuestField.GUEST_POLICY
    vmpl: int = 0
    guest_svn: int = 0
    tcb_version: int = 0

    def __post_init__(self) -> None:
        for name in ("root_key_select", "guest_field_select", "vmpl", "guest_svn", "tcb_version"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer")
        if self.root_key_select not in (0, 1):
            raise ValueError("root_key_select must be 0 (VCEK) or 1 (VMRK)")
        if not 0 <= self.guest_field_select <= _VALID_FIELDS:
            raise ValueError("guest_field_select has bits above LAUNCH_MIT_VECTOR (bits 7-63 must be zero)")
        if not 0 <= self.vmpl <= 3:
            raise ValueError("vmpl must be 0..3")
        if not 0 <= self.guest_svn < 1 << 32:
            raise ValueError("guest_svn must be a u32")
        if not 0 <= self.tcb_version < 1 << 64:
            raise ValueError("tcb_version must be a u64")


def encode_derived_key_request(request: DerivedKeyRequest) -> bytes:
    """The 32 bytes of ``snp_derived_key_req``: ``u32 root_key_select`` @0, ``u32 rsvd`` @4,
    ``u64 guest_field_select`` @8, ``u32 vmpl`` @0x10, ``u32 guest_svn`` @0x14, ``u64 tcb_version`` @0x18."""
    r = request
    return _DERIVED_KEY_REQ.pack(int(r.root_key_select), 0, int(r.guest_field_select), r.vmpl, r.guest_svn, r.tcb_version)


def decode_derived_key_response(data: bytes) -> bytes:
    """The 32-byte key of ``snp_derived_key_resp`` (64 B: ``u32 status`` @0, key @0x20); a
    non-zero firmware status (e.g. 0x16, invalid parameter) is a :class:`DeviceError`."""
    if len(data) != _DERIVED_KEY_RESP_LEN:
        raise DeviceError("tsm-sev-snp", "SNP_GET_DERIVED_KEY", f"response is {len(data)} bytes, expected 64")
    (status,) = struct.unpack_from("<I", data, 0)
    if status != 0:
        raise DeviceError("tsm-sev-snp", "SNP_GET_DERIVED_KEY", f"firmware status {status:#x}")
    return bytes(data[0x20:0x40])


def split_exitinfo2(exitinfo2: int) -> tuple[int, int]:
    """``exitinfo2`` = ``{u32 fw_error; u32 vmm_error}`` (little-endian union) → ``(fw_error, vmm_error)``."""
    return exitinfo2 & 0xFFFFFFFF, (exitinfo2 >> 32) & 0xFFFFFFFF


class _SnpGuestRequestIoctl(ctypes.Structure):
    """``struct snp_guest_request_ioctl`` (32 B): ``u8 msg_version`` @0, ``u64 req_data`` @8,
    ``u64 resp_data`` @16, ``u64 exitinfo2`` @24."""

    _fields_ = [
        ("msg_version", ctypes.c_uint8),
        ("req_data", ctypes.c_uint64),
        ("resp_data", ctypes.c_uint64),
        ("exitinfo2", ctypes.c_uint64),
    ]


SNP_GET_DERIVED_KEY = iowr(ord("S"), 1, ctypes.sizeof(_SnpGuestRequestIoctl))  # 0xC0205301


class SevGuestDevice:
    """``SNP_GET_DERIVED_KEY`` on ``/dev/sev-guest`` (msg_version 1). Runs only in an SEV-SNP guest.
    Note (spec §3.1): an unexpected firmware error makes the kernel wipe the VMPCK, after which
    every guest request fails until reboot."""

    def __init__(self, device: Path = Path("/dev/sev-guest")) -> None:
        self.device = Path(device)

    def __call__(self, request: bytes) -> bytes:
        if len(request) != _DERIVED_KEY_REQ.size:
            raise DeviceError("tsm-sev-snp", "SNP_GET_DERIVED_KEY", f"request is {len(request)} bytes, expected 32")
        try:
            fd = os.open(self.device, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise DeviceError("tsm-sev-snp", "open", f"{self.device}: {e.strerror or e}", errno=e.errno) from None
        req = ctypes.create_string_buffer(request, len(request))
        resp = ctypes.create_string_buffer(_DERIVED_KEY_RESP_LEN)
        arg = _SnpGuestRequestIoctl(1, ctypes.addressof(req), ctypes.addressof(resp), 0)
        try:
            fcntl.ioctl(fd, SNP_GET_DERIVED_KEY, arg)
        except OSError as e:
            fw, vmm = split_exitinfo2(int(arg.exitinfo2))
            detail = f"{e.strerror or e} (fw_error {fw:#x}, vmm_error {vmm})"
            raise DeviceError("tsm-sev-snp", "SNP_GET_DERIVED_KEY", detail, errno=e.errno) from None
        finally:
            os.close(fd)
        return resp.raw


# -- the platform ---------------------------------------------------------------------------


class TsmPlatform(Platform):
    """configfs-tsm backend. ``root`` is where ``sys/kernel/config/tsm/report`` and
    ``dev/sev-guest`` are looked up; ``ops`` the file operations; ``derived_key`` answers an
    encoded ``snp_derived_key_req`` (default :class:`SevGuestDevice`)."""

    def __init__(
        self,
        *,
        root: Path = Path("/"),
        ops: ConfigfsOps | None = None,
        snp_key: DerivedKeyRequest | None = None,
        derived_key: Callable[[bytes], bytes] | None = None,
        busy_retries: int = 3,
        busy_wait: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: Rng = os.urandom,
    ) -> None:
        super().__init__(rng=rng)
        self._root = Path(root)
        self._dir = self._root / TSM_REPORT_DIR
        self._ops = ops if ops is not None else ConfigfsOps()
        self._busy_retries = busy_retries
        self._busy_wait = busy_wait
        self._sleep = sleep
        self._kind = "tsm"  # until the provider is known
        if not self._ops.exists(self._dir):
            raise DeviceError("tsm", "open", f"{self._dir} is missing (configfs not mounted, or kernel < 6.7)")
        floor = 0
        with self._entry() as entry:
            self._provider = self._read_provider(entry)
            if self._provider not in PROVIDERS:
                raise NotSupported("tsm", "attest", f"provider {self._provider!r}; supported: {sorted(PROVIDERS)}")
            if self._provider == "sev_guest" and self._ops.exists(entry / "privlevel_floor"):
                floor = self._read_int(entry / "privlevel_floor")
        self._kind, self._format = PROVIDERS[self._provider]
        self._privlevel = floor if floor > 0 else None
        self._snp_key = snp_key if snp_key is not None else DerivedKeyRequest(vmpl=floor)
        self._derived_key = derived_key
        self._snp_secret: bytes | None = None
        self._measurement: str | None = None

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def measurement(self) -> str:
        """TDX MRTD or SNP MEASUREMENT, read from a first report (made on first use: a TDX
        quote can take seconds)."""
        if self._measurement is None:
            self._measurement = report_fields(self._format, self._collect(bytes(64))[0]).measurement
        return self._measurement

    def attest(self, user_data: bytes) -> Evidence:
        """``outblob`` over ``user_data`` (module docstring), checked to carry it; SNP adds the
        ``auxblob`` certificate table as collateral when the host supplied one."""
        user_data = check_user_data(user_data)
        outblob, auxblob = self._collect(user_data)
        check_binding(self._format, outblob, user_data, kind=self._kind)
        return Evidence(self._format, outblob, {"auxblob": auxblob} if auxblob else {})

    # configfs sequence ------------------------------------------------------------------------

    def _fail(self, operation: str, e: OSError) -> DeviceError:
        meaning = _ERRNO_MEANING.get(e.errno or 0, e.strerror or str(e))
        return DeviceError(self._kind, operation, meaning, errno=e.errno)

    @contextlib.contextmanager
    def _entry(self) -> Iterator[Path]:
        path = self._dir / f"shardguard-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            self._ops.mkdir(path)
        except OSError as e:
            raise self._fail(f"mkdir {path}", e) from None
        try:
            yield path
        finally:
            try:
                self._ops.rmdir(path)
            except OSError as e:
                _log.warning("could not remove report entry %s: %s", path, e.strerror or e)

    def _read(self, path: Path) -> bytes:
        try:
            return self._ops.read(path)
        except OSError as e:
            raise self._fail(f"read {path.name}", e) from None

    def _write(self, path: Path, data: bytes) -> None:
        try:
            self._ops.write(path, data)
        except OSError as e:
            raise self._fail(f"write {path.name}", e) from None

    def _read_int(self, path: Path) -> int:
        text = self._read(path).decode("ascii", errors="replace").strip()
        if not text.isdigit():
            raise DeviceError("tsm", f"read {path.name}", f"{text[:20]!r} is not a decimal number")
        return int(text)

    def _read_provider(self, entry: Path) -> str:
        return self._read(entry / "provider").decode("ascii", errors="replace").strip()

    def _expect_generation(self, entry: Path, expected: int) -> None:
        got = self._read_int(entry / "generation")
        if got != expected:
            raise GenerationMismatch(self._kind, expected, got)

    def _read_outblob(self, path: Path) -> bytes:
        attempt = 0
        while True:
            try:
                return self._ops.read(path)
            except OSError as e:
                if e.errno != errno_codes.EBUSY or attempt >= self._busy_retries:
                    raise self._fail("read outblob", e) from None
            attempt += 1
            self._sleep(self._busy_wait)

    def _collect(self, user_data: bytes) -> tuple[bytes, bytes]:
        """Steps 1–5 of the module docstring: ``(outblob, auxblob)``."""
        with self._entry() as entry:
            provider = self._read_provider(entry)
            if provider != self._provider:
                raise DeviceError(self._kind, "attest", f"provider changed from {self._provider!r} to {provider!r}")
            generation = self._read_int(entry / "generation")
            if self._privlevel is not None:
                self._write(entry / "privlevel", f"{self._privlevel}\n".encode())
                generation += 1
                self._expect_generation(entry, generation)
            self._write(entry / "inblob", user_data)
            generation += 1
            self._expect_generation(entry, generation)
            auxblob = b""
            if self._provider == "sev_guest" and self._ops.exists(entry / "auxblob"):
                auxblob = self._read(entry / "auxblob")
                self._expect_generation(entry, generation)
            outblob = self._read_outblob(entry / "outblob")
            self._expect_generation(entry, generation)
        if not outblob:
            raise DeviceError(self._kind, "attest", "outblob is empty")
        return outblob, auxblob

    # sealing ----------------------------------------------------------------------------------

    def _sealing_secret(self, context: bytes) -> bytes:
        if self._provider == "tdx_guest":
            raise NotSupported(
                self._kind,
                "seal",
                "TDX has no sealing key in the upstream guest ABI (spec §4.1); state is recovered by peer repair",
            )
        if context:
            raise SealingError(SealingReason.MALFORMED, "unexpected sealing context")
        if self._snp_secret is None:
            transport = self._derived_key
            if transport is None:
                device = self._root / "dev/sev-guest"
                if not device.exists():
                    raise NotSupported(
                        self._kind, "seal", f"{device} is absent: SNP_GET_DERIVED_KEY has no configfs equivalent (spec §3.1)"
                    )
                transport = SevGuestDevice(device)
            self._snp_secret = decode_derived_key_response(transport(encode_derived_key_request(self._snp_key)))
        return self._snp_secret
