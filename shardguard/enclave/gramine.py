"""Intel SGX under Gramine: the ``/dev/attestation`` pseudo-files (``specs/enclave-backends.md`` §5).

* Requires ``attestation_type`` = ``dcap`` and a ``quote`` file (§5.1, §6): ``none`` or a tree
  with only ``keys/`` (``gramine-direct``) cannot attest remotely and is refused.
* ``attest``: write the 64 bytes to ``user_report_data`` in one write, then read ``quote`` in
  full — a DCAP quote v3 (§4.2) whose REPORTDATA must equal what was written. The files are
  process-local, so a lock is enough to keep this process's threads from interleaving.
* ``measurement``: MRENCLAVE, read from the local ``report`` (432 B ``sgx_report_t``: body
  384 B with MRENCLAVE @0x40, §5.3), which needs no quoting enclave.
* Sealing: the 16-byte ``keys/_sgx_mrenclave`` key (§5.1, Gramine ≥ 1.5) is never used
  directly (Gramine warns against it): HKDF-SHA256 with the label derives the AES-256-GCM key
  (format in :mod:`shardguard.enclave.platform`). It is bound to MRENCLAVE, so a new code
  version cannot unseal its predecessor's blobs and is re-provisioned by share repair.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from shardguard.enclave.platform import (
    GRAMINE_DIR,
    DeviceError,
    Evidence,
    NotSupported,
    Platform,
    Rng,
    SealingError,
    SealingReason,
    check_binding,
    check_user_data,
)

__all__ = ["QUOTE_MAX", "REPORT_LEN", "SEALING_KEY", "GraminePlatform"]

REPORT_LEN = 432  # sgx_report_t: body 384 + key_id 32 + MAC 16
QUOTE_MAX = 8192
SEALING_KEY = "_sgx_mrenclave"
_MRENCLAVE = slice(0x40, 0x60)  # in the report body (§5.3)


class GraminePlatform(Platform):
    """Gramine SGX backend; ``root`` is where ``dev/attestation`` is looked up (tests use a tree in tmp)."""

    kind = "gramine-sgx"

    def __init__(self, *, root: Path = Path("/"), rng: Rng = os.urandom) -> None:
        super().__init__(rng=rng)
        self._dir = Path(root) / GRAMINE_DIR
        self._lock = threading.Lock()
        has_type, has_quote = (self._dir / "attestation_type").exists(), (self._dir / "quote").exists()
        kind = self._read("attestation_type").decode("ascii", errors="replace").strip() if has_type else None
        if kind != "dcap" or not has_quote:
            raise NotSupported(
                self.kind,
                "attest",
                f"{self._dir}: attestation_type is {kind!r}, quote is {'present' if has_quote else 'absent'} "
                "(needs sgx.remote_attestation = 'dcap'; gramine-direct has no SGX)",
            )
        report = self._read("report")
        if len(report) != REPORT_LEN:
            raise DeviceError(self.kind, "read report", f"{len(report)} bytes, expected {REPORT_LEN}")
        self._mrenclave = report[_MRENCLAVE].hex()
        self._key: bytes | None = None

    def _read(self, name: str) -> bytes:
        try:
            with open(self._dir / name, "rb") as f:
                return f.read()
        except OSError as e:
            raise DeviceError(self.kind, f"read {name}", e.strerror or str(e), errno=e.errno) from None

    @property
    def measurement(self) -> str:
        return self._mrenclave

    def attest(self, user_data: bytes) -> Evidence:
        """A DCAP quote v3 whose REPORTDATA is ``user_data`` (module docstring)."""
        user_data = check_user_data(user_data)
        with self._lock:
            path = self._dir / "user_report_data"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    written = os.write(fd, user_data)
                finally:
                    os.close(fd)
            except OSError as e:
                raise DeviceError(self.kind, "write user_report_data", e.strerror or str(e), errno=e.errno) from None
            if written != len(user_data):
                raise DeviceError(self.kind, "write user_report_data", f"short write: {written} of {len(user_data)} bytes")
            quote = self._read("quote")
        if not quote or len(quote) > QUOTE_MAX:
            raise DeviceError(self.kind, "read quote", f"{len(quote)} bytes (expected 1..{QUOTE_MAX})")
        check_binding("sgx", quote, user_data, kind=self.kind)
        return Evidence("sgx", quote)

    def _sealing_secret(self, context: bytes) -> bytes:
        if context:
            raise SealingError(SealingReason.MALFORMED, "unexpected sealing context")
        if self._key is None:
            path = self._dir / "keys" / SEALING_KEY
            if not path.exists():
                raise NotSupported(self.kind, "seal", f"{path} is absent (Gramine < 1.5 exposes no SGX sealing key)")
            try:
                key = path.read_bytes()
            except OSError as e:
                raise SealingError(SealingReason.KEY, f"{path}: {e.strerror or e}") from None
            if len(key) != 16:
                raise SealingError(SealingReason.KEY, f"{path} holds {len(key)} bytes, expected 16")
            self._key = key
        return self._key
