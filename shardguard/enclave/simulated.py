"""The simulated enclave: runs anywhere, protects nothing (ARCHITECTURE §5).

Every start prints and logs :data:`BANNER`. Evidence is a Nitro-format attestation document
(``fixtures/attestation/README.md`` "AWS Nitro Enclaves", ``specs/enclave-backends.md`` §1.3):
an untagged COSE_Sign1 ``[protected {1: -35}, {}, payload, signature]``, ES384 with a 96-byte
raw r‖s signature over ``["Signature1", protected, h'', payload]``. The payload carries
``module_id`` = ``"shardguard-simulated"``, ``digest`` = ``"SHA384"``, ``timestamp`` (ms),
``pcrs`` 0–15 (48 B each), ``certificate`` (a fresh P-384 leaf valid from one minute before
the timestamp for three hours, like Nitro's), ``cabundle`` = ``[development root]`` (root
first), ``public_key`` = null, ``user_data`` = the 64 bytes, ``nonce`` = null. The leaf is
signed by the development root of :mod:`shardguard.attestation.dev_root`, whose private key
is public: ``verify_nitro`` reports such documents as ``simulated`` and every policy refuses
them unless ``allow_simulated``.

PCRs:
* PCR0 = SHA-384 of the *code manifest* of the installed ``shardguard`` package: one line
  ``<sha384 hex of the file>  <path>`` per ``.py`` file, paths relative to the package's parent
  directory with ``/`` separators, sorted by path (byte order), each line ending in ``\\n``.
  It equals ``find shardguard -name '*.py' -type f | LC_ALL=C sort | xargs sha384sum | sha384sum``
  run in the directory holding the package. ``measurement`` is PCR0 in hex.
* PCR1 = SHA-384 of ``"<implementation> <sys.version>"`` (the interpreter; stands in for
  Nitro's kernel/boot-ramfs PCR1).
* PCR2–15 = zero.

Sealing: AES-256-GCM (format in :mod:`shardguard.enclave.platform`) under a 32-byte key kept
in clear in ``<state_dir>/sealing-key.INSECURE`` (a comment line, then 64 hex digits; created
once, atomically, mode 0600), so sealed blobs survive restarts — and anyone who can read the
file can open them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import logging
import os
import stat
import sys
import tempfile
from pathlib import Path

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from shardguard.attestation.dev_root import DEV_ROOT_PEM
from shardguard.enclave._dev_root_key import DEV_ROOT_KEY_PEM
from shardguard.enclave.platform import (
    Clock,
    Evidence,
    Platform,
    Rng,
    SealingError,
    SealingReason,
    UsageError,
    check_user_data,
    utc_now,
)

__all__ = ["BANNER", "KEY_FILE", "MODULE_ID", "SimulatedPlatform", "code_manifest"]

BANNER = "SIMULATED ENCLAVE: no hardware protection; for development only; verifiers refuse its evidence unless allow_simulated"
MODULE_ID = "shardguard-simulated"
KEY_FILE = "sealing-key.INSECURE"
KEY_FILE_COMMENT = (
    b"# INSECURE simulated-enclave sealing key, stored in clear: whoever reads this file can unseal. Development only.\n"
)
LEAF_LIFETIME = dt.timedelta(hours=3)
PCR_COUNT = 16
PCR_LEN = 48

_PROTECTED = cbor2.dumps({1: -35})  # ES384
_P384_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_PACKAGE_DIR = Path(__file__).resolve().parents[1]

_log = logging.getLogger(__name__)


def code_manifest(package_dir: Path = _PACKAGE_DIR) -> bytes:
    """The listing PCR0 hashes (module docstring): ``sha384sum`` lines of every ``.py`` file."""
    base = package_dir.parent
    files = sorted((p.relative_to(base).as_posix(), p) for p in package_dir.rglob("*.py") if p.is_file())
    return "".join(f"{hashlib.sha384(p.read_bytes()).hexdigest()}  {rel}\n" for rel, p in files).encode()


@functools.cache
def _dev_root() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = serialization.load_pem_private_key(DEV_ROOT_KEY_PEM, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError("the development root key is not an EC key")
    return key, x509.load_pem_x509_certificate(DEV_ROOT_PEM)


def _announce() -> None:
    frame = "!" * (len(BANNER) + 8)
    print(f"{frame}\n!!! {BANNER} !!!\n{frame}", file=sys.stderr, flush=True)
    _log.warning(BANNER)


class SimulatedPlatform(Platform):
    """Development backend: Nitro-shaped evidence under the public development root, sealing
    under a key file in ``state_dir``. ``clock`` (aware UTC datetimes) and ``rng`` are
    injectable; with both fixed, ``attest`` is deterministic (RFC 6979 signatures)."""

    kind = "simulated"

    def __init__(
        self,
        *,
        state_dir: Path,
        clock: Clock = utc_now,
        rng: Rng = os.urandom,
        package_dir: Path = _PACKAGE_DIR,
    ) -> None:
        super().__init__(rng=rng)
        _announce()
        self._clock = clock
        manifest = code_manifest(package_dir)
        interpreter = f"{sys.implementation.name} {sys.version}".encode()
        self._pcrs = {i: bytes(PCR_LEN) for i in range(PCR_COUNT)}
        self._pcrs[0] = hashlib.sha384(manifest).digest()
        self._pcrs[1] = hashlib.sha384(interpreter).digest()
        self._key_path = Path(state_dir) / KEY_FILE
        self._sealing_key = _load_or_create_key(self._key_path, rng)

    @property
    def measurement(self) -> str:
        return self._pcrs[0].hex()

    @property
    def pcrs(self) -> dict[int, bytes]:
        return dict(self._pcrs)

    def attest(self, user_data: bytes) -> Evidence:
        """A Nitro-format document binding ``user_data`` (module docstring), signed now."""
        user_data = check_user_data(user_data)
        now = self._clock()
        if now.tzinfo is None:
            raise UsageError("the clock must return timezone-aware datetimes")
        root_key, root_cert = _dev_root()
        leaf_key = ec.derive_private_key(int.from_bytes(self._rng(64), "big") % (_P384_ORDER - 1) + 1, ec.SECP384R1())
        leaf = self._leaf_certificate(leaf_key, root_key, root_cert, now)
        payload = cbor2.dumps(
            {
                "module_id": MODULE_ID,
                "digest": "SHA384",
                "timestamp": (now - _EPOCH) // dt.timedelta(milliseconds=1),
                "pcrs": self._pcrs,
                "certificate": leaf.public_bytes(serialization.Encoding.DER),
                "cabundle": [root_cert.public_bytes(serialization.Encoding.DER)],
                "public_key": None,
                "user_data": user_data,
                "nonce": None,
            }
        )
        to_sign = cbor2.dumps(["Signature1", _PROTECTED, b"", payload])
        r, s = decode_dss_signature(leaf_key.sign(to_sign, ec.ECDSA(hashes.SHA384(), deterministic_signing=True)))
        document = cbor2.dumps([_PROTECTED, {}, payload, r.to_bytes(48, "big") + s.to_bytes(48, "big")])
        return Evidence("nitro", document)

    def _leaf_certificate(
        self, leaf_key: ec.EllipticCurvePrivateKey, root_key: ec.EllipticCurvePrivateKey, root: x509.Certificate, now: dt.datetime
    ) -> x509.Certificate:
        not_before = now.astimezone(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)
        serial = int.from_bytes(self._rng(16), "big") >> 1 | 1
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "ZZ"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ShardGuard"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "SIMULATED ENCLAVE - INSECURE"),
                x509.NameAttribute(NameOID.COMMON_NAME, MODULE_ID),
            ]
        )
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=True,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(root.subject)
            .public_key(leaf_key.public_key())
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_before + LEAF_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA384(), ecdsa_deterministic=True)
        )

    def _sealing_secret(self, context: bytes) -> bytes:
        if context:
            raise SealingError(SealingReason.MALFORMED, "unexpected sealing context")
        return self._sealing_key


def _parse_key_file(data: bytes, path: Path) -> bytes:
    lines = data.split(b"\n")
    if len(lines) != 3 or not lines[0].startswith(b"#") or lines[2] != b"" or len(lines[1]) != 64:
        raise SealingError(SealingReason.KEY, f"{path}: expected a comment line and 64 hex digits")
    try:
        return bytes.fromhex(lines[1].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise SealingError(SealingReason.KEY, f"{path}: key is not hex") from None


def _load_or_create_key(path: Path, rng: Rng) -> bytes:
    """Read the key file, creating it first if absent: written to a 0600 temp file, fsynced,
    then hard-linked into place, so it appears complete or not at all and a key another
    process created meanwhile is never replaced."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            key = rng(32)
            if len(key) != 32:
                raise SealingError(SealingReason.KEY, "the RNG returned a short key")
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                os.fchmod(fd, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(KEY_FILE_COMMENT + key.hex().encode() + b"\n")
                    f.flush()
                    os.fsync(f.fileno())
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)
            finally:
                os.unlink(tmp)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            _log.warning("%s is readable by group or others", path)
        return _parse_key_file(path.read_bytes(), path)
    except OSError as e:
        raise SealingError(SealingReason.KEY, f"{path}: {e.strerror or e}") from None
