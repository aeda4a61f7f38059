"""AWS Nitro Enclaves backend: the Nitro Security Module at ``/dev/nsm`` (``specs/enclave-backends.md`` §1).

The driver takes one ioctl, ``NSM_IOCTL_RAW`` = ``_IOWR(0x0A, 0, struct nsm_raw)`` =
``0xC0200A00``; ``struct nsm_raw`` is two ``{u64 addr; u64 len}`` iovecs, request @0x00 and
response @0x10. Requests are at most 4096 bytes, the response buffer is 12288 bytes and the
kernel writes the response's actual length back into ``response.len`` (§1.1).

Messages are CBOR in serde's externally tagged form (§1.2): a unit variant is a bare text
string (``"GetRandom"``, ``"DescribeNSM"``), a struct variant a one-entry map
``{name: {field: value}}``, ``None`` is ``null`` and every field is sent. Failures come back as
``{"Error": "<code>"}``. :func:`encode_request` and :func:`decode_response` are pure and
strict: a response must be exactly one canonical CBOR item of the expected shape, or
:class:`MalformedNsmResponse` is raised; an ``Error`` reply raises :class:`NsmError`.

Sealing on Nitro has no local key: it is AWS KMS ``GenerateDataKey``/``Decrypt`` with a
``Recipient`` attestation, reached over vsock through the parent's proxy (§1.4, §1.5). Unless
a :class:`KmsClient` is configured, ``seal``/``unseal`` raise :class:`NotSupported`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import fcntl
import io
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import cbor2

from shardguard.attestation.errors import AttestationError
from shardguard.attestation.nitro import parse_document
from shardguard.enclave.platform import (
    DeviceError,
    Evidence,
    NotSupported,
    Platform,
    Rng,
    SealingError,
    SealingReason,
    check_user_data,
    iowr,
)

__all__ = [
    "MAX_REQUEST",
    "MAX_RESPONSE",
    "NSM_IOCTL_RAW",
    "AttestationRequest",
    "AttestationResponse",
    "DescribeNsmRequest",
    "DescribeNsmResponse",
    "DescribePcrRequest",
    "DescribePcrResponse",
    "GetRandomRequest",
    "GetRandomResponse",
    "KmsClient",
    "MalformedNsmResponse",
    "NitroPlatform",
    "NsmDevice",
    "NsmError",
    "NsmErrorCode",
    "NsmRequest",
    "NsmResponse",
    "decode_response",
    "encode_request",
]

MAX_REQUEST = 0x1000
MAX_RESPONSE = 0x3000
PCR_LEN = 48
#: Field limits kept so strict verifiers accept the document (§1.2: the CDDL and AWS's validation
#: section disagree; 512/512/1024 satisfies both).
MAX_USER_DATA = 512
MAX_NONCE = 512
MAX_PUBLIC_KEY = 1024


class _Iovec(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _NsmRaw(ctypes.Structure):
    _fields_ = [("request", _Iovec), ("response", _Iovec)]


NSM_IOCTL_RAW = iowr(0x0A, 0, ctypes.sizeof(_NsmRaw))  # 0xC0200A00


# -- errors ---------------------------------------------------------------------------------


class NsmErrorCode(enum.Enum):
    """The NSM's ``ErrorCode`` variants, in the API's order (§1.2)."""

    SUCCESS = "Success"
    INVALID_ARGUMENT = "InvalidArgument"
    INVALID_INDEX = "InvalidIndex"
    INVALID_RESPONSE = "InvalidResponse"
    READ_ONLY_INDEX = "ReadOnlyIndex"
    INVALID_OPERATION = "InvalidOperation"
    BUFFER_TOO_SMALL = "BufferTooSmall"
    INPUT_TOO_LARGE = "InputTooLarge"
    INTERNAL_ERROR = "InternalError"


class NsmError(DeviceError):
    """The NSM answered ``{"Error": code}``."""

    def __init__(self, code: NsmErrorCode) -> None:
        self.code = code
        super().__init__("nitro", "NSM request", f"the NSM answered Error {code.value!r}")


class MalformedNsmResponse(DeviceError):
    """The NSM's answer is not one canonical CBOR item of a known, expected shape."""

    def __init__(self, detail: str) -> None:
        super().__init__("nitro", "NSM response", detail)


# -- requests -------------------------------------------------------------------------------


def _check_bytes(name: str, value: bytes | None, lo: int, hi: int) -> None:
    if value is not None and (not isinstance(value, bytes) or not lo <= len(value) <= hi):
        raise ValueError(f"{name} must be None or {lo}..{hi} bytes")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AttestationRequest:
    """``{"Attestation": {"user_data", "nonce", "public_key"}}``; ``public_key`` is a DER SPKI
    (the KMS Recipient flow, §1.5)."""

    user_data: bytes | None = None
    nonce: bytes | None = None
    public_key: bytes | None = None

    def __post_init__(self) -> None:
        _check_bytes("user_data", self.user_data, 0, MAX_USER_DATA)
        _check_bytes("nonce", self.nonce, 0, MAX_NONCE)
        _check_bytes("public_key", self.public_key, 1, MAX_PUBLIC_KEY)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DescribePcrRequest:
    """``{"DescribePCR": {"index": u16}}``."""

    index: int

    def __post_init__(self) -> None:
        if isinstance(self.index, bool) or not isinstance(self.index, int) or not 0 <= self.index <= 0xFFFF:
            raise ValueError("index must be a u16")


@dataclasses.dataclass(frozen=True, slots=True)
class DescribeNsmRequest:
    """The unit variant ``"DescribeNSM"``."""


@dataclasses.dataclass(frozen=True, slots=True)
class GetRandomRequest:
    """The unit variant ``"GetRandom"``."""


NsmRequest = AttestationRequest | DescribePcrRequest | DescribeNsmRequest | GetRandomRequest


def encode_request(request: NsmRequest) -> bytes:
    """The CBOR bytes the NSM expects for ``request`` (§1.2), e.g. for an attestation over 64
    bytes: ``A1 6B "Attestation" A3 69 "user_data" 58 40 <64 B> 65 "nonce" F6 6A "public_key" F6``."""
    obj: object
    if isinstance(request, AttestationRequest):
        obj = {"Attestation": {"user_data": request.user_data, "nonce": request.nonce, "public_key": request.public_key}}
    elif isinstance(request, DescribePcrRequest):
        obj = {"DescribePCR": {"index": request.index}}
    elif isinstance(request, DescribeNsmRequest):
        obj = "DescribeNSM"
    elif isinstance(request, GetRandomRequest):
        obj = "GetRandom"
    else:
        raise TypeError(f"not an NSM request: {type(request).__name__}")
    data = cbor2.dumps(obj)
    if len(data) > MAX_REQUEST:
        raise ValueError(f"NSM request is {len(data)} bytes, the driver takes at most {MAX_REQUEST}")
    return data


# -- responses ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AttestationResponse:
    document: bytes


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DescribePcrResponse:
    lock: bool
    data: bytes


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DescribeNsmResponse:
    version_major: int
    version_minor: int
    version_patch: int
    module_id: str
    max_pcrs: int
    locked_pcrs: tuple[int, ...]
    digest: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GetRandomResponse:
    random: bytes


NsmResponse = AttestationResponse | DescribePcrResponse | DescribeNsmResponse | GetRandomResponse
_R = TypeVar("_R", AttestationResponse, DescribePcrResponse, DescribeNsmResponse, GetRandomResponse)


def _decode_cbor(data: bytes) -> Any:
    """Exactly one CBOR item filling ``data``, in canonical form (what serde_cbor emits:
    definite lengths, shortest heads, no tags): re-encoding must give the same bytes back."""
    fp = io.BytesIO(data)
    try:
        obj = cbor2.CBORDecoder(fp, max_depth=4, allow_indefinite=False, allow_duplicate_keys=False).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError) as e:
        raise MalformedNsmResponse(f"not CBOR ({type(e).__name__}: {e})") from None
    if fp.tell() != len(data):
        raise MalformedNsmResponse(f"{len(data) - fp.tell()} bytes after the CBOR item")
    try:
        canonical = cbor2.dumps(obj) == data
    except (cbor2.CBOREncodeError, TypeError, ValueError):
        canonical = False
    if not canonical:
        raise MalformedNsmResponse("not in canonical CBOR form (tags, long heads or other encodings)")
    return obj


def _fields(variant: str, body: object, spec: dict[str, type]) -> dict[str, Any]:
    if not isinstance(body, dict) or set(body) != set(spec):
        got = sorted(map(str, body)) if isinstance(body, dict) else type(body).__name__
        raise MalformedNsmResponse(f"{variant}: expected fields {sorted(spec)}, got {got}")
    for name, typ in spec.items():
        value = body[name]
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise MalformedNsmResponse(f"{variant}.{name}: expected {typ.__name__}, got {type(value).__name__}")
    return body


def _u16(variant: str, name: str, value: int) -> int:
    if not 0 <= value <= 0xFFFF:
        raise MalformedNsmResponse(f"{variant}.{name}: {value} is not a u16")
    return value


def _attestation(body: object) -> AttestationResponse:
    f = _fields("Attestation", body, {"document": bytes})
    if not f["document"]:
        raise MalformedNsmResponse("Attestation.document is empty")
    return AttestationResponse(document=f["document"])


def _describe_pcr(body: object) -> DescribePcrResponse:
    f = _fields("DescribePCR", body, {"lock": bool, "data": bytes})
    if len(f["data"]) != PCR_LEN:
        raise MalformedNsmResponse(f"DescribePCR.data is {len(f['data'])} bytes, expected {PCR_LEN}")
    return DescribePcrResponse(lock=f["lock"], data=f["data"])


def _describe_nsm(body: object) -> DescribeNsmResponse:
    spec = {
        "version_major": int,
        "version_minor": int,
        "version_patch": int,
        "module_id": str,
        "max_pcrs": int,
        "locked_pcrs": list,
        "digest": str,
    }
    f = _fields("DescribeNSM", body, spec)
    locked = f["locked_pcrs"]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in locked):
        raise MalformedNsmResponse("DescribeNSM.locked_pcrs: expected a list of integers")
    for name in ("version_major", "version_minor", "version_patch"):
        if f[name] < 0:
            raise MalformedNsmResponse(f"DescribeNSM.{name} is negative")
    return DescribeNsmResponse(
        version_major=f["version_major"],
        version_minor=f["version_minor"],
        version_patch=f["version_patch"],
        module_id=f["module_id"],
        max_pcrs=_u16("DescribeNSM", "max_pcrs", f["max_pcrs"]),
        locked_pcrs=tuple(_u16("DescribeNSM", "locked_pcrs", i) for i in locked),
        digest=f["digest"],
    )


def _get_random(body: object) -> GetRandomResponse:
    f = _fields("GetRandom", body, {"random": bytes})
    if not f["random"]:
        raise MalformedNsmResponse("GetRandom.random is empty")
    return GetRandomResponse(random=f["random"])


_PARSERS: dict[str, Callable[[object], NsmResponse]] = {
    "Attestation": _attestation,
    "DescribePCR": _describe_pcr,
    "DescribeNSM": _describe_nsm,
    "GetRandom": _get_random,
}


def decode_response(data: bytes) -> NsmResponse:
    """Parse an NSM response (§1.2). Raises :class:`NsmError` for ``{"Error": code}`` and
    :class:`MalformedNsmResponse` for anything that is not a known variant in canonical CBOR
    (unknown variants and unit answers such as ``"LockPCR"`` included: ShardGuard never asks)."""
    if not isinstance(data, bytes | bytearray) or not data:
        raise MalformedNsmResponse("empty response")
    if len(data) > MAX_RESPONSE:
        raise MalformedNsmResponse(f"{len(data)} bytes exceeds the {MAX_RESPONSE}-byte response buffer")
    obj = _decode_cbor(bytes(data))
    if isinstance(obj, str):
        raise MalformedNsmResponse(f"unexpected unit answer {obj[:40]!r}")
    if not isinstance(obj, dict) or len(obj) != 1:
        raise MalformedNsmResponse("expected a one-entry map {variant: body}")
    ((variant, body),) = obj.items()
    if variant == "Error":
        if not isinstance(body, str):
            raise MalformedNsmResponse("Error: the code must be a text string")
        try:
            code = NsmErrorCode(body)
        except ValueError:
            raise MalformedNsmResponse(f"Error: unknown code {body[:40]!r}") from None
        raise NsmError(code)
    parser = _PARSERS.get(variant) if isinstance(variant, str) else None
    if parser is None:
        raise MalformedNsmResponse(f"unexpected variant {str(variant)[:40]!r}")
    return parser(body)


# -- the device -----------------------------------------------------------------------------

Transport = Callable[[bytes], bytes]


class NsmDevice:
    """The real transport: one ``NSM_IOCTL_RAW`` per message on ``device`` (§1.1). Runs only
    inside a Nitro enclave; nothing here can exercise it."""

    def __init__(self, device: Path = Path("/dev/nsm")) -> None:
        self.device = Path(device)

    def __call__(self, request: bytes) -> bytes:
        if not 0 < len(request) <= MAX_REQUEST:
            raise DeviceError("nitro", "NSM ioctl", f"request of {len(request)} bytes (1..{MAX_REQUEST})")
        try:
            fd = os.open(self.device, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise DeviceError("nitro", "open", f"{self.device}: {e.strerror or e}", errno=e.errno) from None
        try:
            req = ctypes.create_string_buffer(request, len(request))
            resp = ctypes.create_string_buffer(MAX_RESPONSE)
            raw = _NsmRaw(_Iovec(ctypes.addressof(req), len(request)), _Iovec(ctypes.addressof(resp), MAX_RESPONSE))
            fcntl.ioctl(fd, NSM_IOCTL_RAW, raw)  # the kernel writes the response length into raw.response.len
            n = int(raw.response.len)
        except OSError as e:
            raise DeviceError("nitro", "NSM ioctl", e.strerror or str(e), errno=e.errno) from None
        finally:
            os.close(fd)
        if n > MAX_RESPONSE:
            raise DeviceError("nitro", "NSM ioctl", f"response length {n} exceeds the buffer")
        return resp.raw[:n]


class KmsClient(Protocol):
    """AWS KMS with a ``Recipient`` attestation (§1.5), reached over vsock (§1.4). ShardGuard
    ships no implementation: it needs SigV4 credentials from the parent, TLS to
    ``kms.<region>.amazonaws.com`` and CMS EnvelopedData decoding of ``CiphertextForRecipient``.

    ``attest(spki_der)`` returns an attestation document whose ``public_key`` is the
    recipient's RSA-2048 key, to put in ``Recipient.AttestationDocument``.
    """

    def generate_data_key(self, attest: Callable[[bytes], bytes]) -> tuple[bytes, bytes]:
        """``GenerateDataKey`` (AES_256) with Recipient: ``(CiphertextBlob, 32-byte plaintext key)``."""
        ...

    def decrypt(self, ciphertext_blob: bytes, attest: Callable[[bytes], bytes]) -> bytes:
        """``Decrypt`` with Recipient: the 32-byte data key inside ``ciphertext_blob``."""
        ...


_NO_KMS = (
    "Nitro sealing is AWS KMS GenerateDataKey/Decrypt with a Recipient attestation (spec §1.5), reached over "
    "vsock through the parent's vsock-proxy (§1.4); the enclave has no local sealing key and no KMS client is configured"
)


#: A data key seals at most this many blobs ...
DATA_KEY_USES = 1 << 20
#: ... for at most this long (seconds), then KMS makes the next one.
DATA_KEY_SECONDS = 3600.0
#: Data keys KMS decrypted for unsealing, kept by their ciphertext blob (each at most
#: DATA_KEY_SECONDS: a KMS key disabled or a key policy changed takes effect within that).
_KEPT_KEYS = 64


class NitroPlatform(Platform):
    """The Nitro backend. ``transport`` defaults to :class:`NsmDevice` on ``device``; tests pass a
    function that answers encoded requests. At start it asks ``DescribeNSM`` (digest must be
    ``SHA384``, spec §6) and ``DescribePCR(0)`` (``measurement`` = PCR0, the image hash that
    KMS policies call ``ImageSha384``)."""

    kind = "nitro"

    def __init__(
        self,
        *,
        device: Path = Path("/dev/nsm"),
        transport: Transport | None = None,
        kms: KmsClient | None = None,
        rng: Rng = os.urandom,
    ) -> None:
        super().__init__(rng=rng)
        self._transport: Transport = transport if transport is not None else NsmDevice(device)
        self._kms = kms
        # Every seal would otherwise cost an attestation and a KMS GenerateDataKey round trip
        # through the vsock proxy, and every unseal a Decrypt — and the keystore seals once per
        # signing (its audit journal) and unseals every record at open. So one data key seals
        # many blobs (AES-GCM with random nonces, per-label keys derived from it: far below
        # the 2^32 messages a key takes) and is replaced after DATA_KEY_USES seals or
        # DATA_KEY_SECONDS; keys KMS gave us are kept by their blob for unsealing. They live in
        # enclave memory, as each did while it sealed.
        self._keys_lock = threading.Lock()
        self._data_key: tuple[bytes, bytes, float] | None = None  # (blob, key, when made)
        self._data_key_uses = 0
        self._known_keys: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self.description = self._call(DescribeNsmRequest(), DescribeNsmResponse)
        if self.description.digest != "SHA384":
            raise DeviceError("nitro", "DescribeNSM", f"digest {self.description.digest!r} is not SHA384")
        self._pcr0 = self._call(DescribePcrRequest(index=0), DescribePcrResponse).data.hex()

    def _call(self, request: NsmRequest, expected: type[_R]) -> _R:
        response = decode_response(self._transport(encode_request(request)))
        if not isinstance(response, expected):
            raise MalformedNsmResponse(f"{type(response).__name__} in answer to {type(request).__name__}")
        return response

    @property
    def measurement(self) -> str:
        return self._pcr0

    def attestation_document(
        self, *, user_data: bytes | None = None, nonce: bytes | None = None, public_key: bytes | None = None
    ) -> bytes:
        req = AttestationRequest(user_data=user_data, nonce=nonce, public_key=public_key)
        return self._call(req, AttestationResponse).document

    def attest(self, user_data: bytes) -> Evidence:
        """An NSM attestation document over exactly 64 bytes of ``user_data`` (nonce and public key
        null), checked to parse and to carry ``user_data`` before it is handed out."""
        user_data = check_user_data(user_data)
        document = self.attestation_document(user_data=user_data)
        try:
            bound = parse_document(document).user_data
        except AttestationError as e:
            raise DeviceError("nitro", "attest", f"the NSM returned an unparsable document ({e})") from None
        if bound != user_data:
            raise DeviceError("nitro", "attest", "the document does not carry the user_data that was sent")
        return Evidence("nitro", document)

    def get_random(self) -> bytes:
        """Bytes from the NSM's ``GetRandom`` (count chosen by the NSM, §1.2)."""
        return self._call(GetRandomRequest(), GetRandomResponse).random

    def _recipient_document(self, spki_der: bytes) -> bytes:
        return self.attestation_document(public_key=spki_der)

    def _new_sealing_secret(self) -> tuple[bytes, bytes]:
        if self._kms is None:
            raise NotSupported("nitro", "seal", _NO_KMS)
        with self._keys_lock:
            current = self._data_key
            if current is not None and self._data_key_uses < DATA_KEY_USES and time.monotonic() - current[2] < DATA_KEY_SECONDS:
                self._data_key_uses += 1
                return current[0], current[1]
        # A new one, without the lock (an attestation and a KMS round trip): seals meanwhile
        # may make their own; the last one installed seals on.
        blob, key = self._kms.generate_data_key(self._recipient_document)
        if not blob or len(key) != 32:
            raise SealingError(SealingReason.KEY, "the KMS client returned no ciphertext blob or a key that is not 32 bytes")
        made = (bytes(blob), bytes(key), time.monotonic())
        with self._keys_lock:
            self._data_key, self._data_key_uses = made, 1
            self._keep_key(made[0], made[1])
        return made[0], made[1]

    def _sealing_secret(self, context: bytes) -> bytes:
        if self._kms is None:
            raise NotSupported("nitro", "unseal", _NO_KMS)
        if not context:
            raise SealingError(SealingReason.MALFORMED, "no KMS ciphertext blob in the sealed blob")
        with self._keys_lock:
            kept = self._known_keys.get(context)
            if kept is not None and time.monotonic() - kept[1] < DATA_KEY_SECONDS:
                self._known_keys.move_to_end(context)
                return kept[0]
        key = self._kms.decrypt(context, self._recipient_document)
        if len(key) != 32:
            raise SealingError(SealingReason.KEY, "the KMS client returned a key that is not 32 bytes")
        with self._keys_lock:
            self._keep_key(context, key)
        return key

    def _keep_key(self, blob: bytes, key: bytes) -> None:
        """Called holding ``_keys_lock``."""
        self._known_keys[blob] = (key, time.monotonic())
        self._known_keys.move_to_end(blob)
        while len(self._known_keys) > _KEPT_KEYS:
            self._known_keys.popitem(last=False)
