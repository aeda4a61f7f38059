"""Intel DCAP ECDSA quotes, verified offline: TDX quotes v4 and v5, SGX quotes v3 (ARCHITECTURE §5).

:mod:`.tdx` and :mod:`.sgx` are thin wrappers: this module parses the quote, proves it and,
given collateral, assesses its TCB; they turn the verdict into a :class:`Verified`.

Sources (facts only; no code was taken from any implementation):

* [QL-TDX] Intel TDX DCAP Quoting Library API, appendix "Quote Format": v4 quote (48-byte header,
  584-byte TD quote body, quote signature data, certification data types 5 and 6) and v5 quote
  (body descriptor ``u16 type, u32 size``: 2 = TDX 1.0 body, 3 = TDX 1.5 body of 648 bytes).
* [QL-SGX] Intel SGX ECDSA Quote Library API, appendix "Quote Format" (v3: header, 384-byte ISV
  enclave report, signature data in which the QE report comes first, then certification data).
  Both layouts are summarised, with offsets, in ``shared/specs/enclave-backends.md`` §4.2 and §5.3.
* [PCK] Intel SGX PCK Certificate and CRL Profile: the SGX extensions (OID
  1.2.840.113741.1.13.1: PPID, TCB with 16 component SVNs, PCESVN and CPUSVN, PCE-ID, FMSPC, SGX
  Type, and for platform CAs the PlatformInstanceID and Configuration).
* [PCS] Intel PCS API v4, "Get TCB Info" (tcbInfo v3 JSON and its TCB-level matching algorithm,
  TDX module identities) and "Get Quoting Enclave Identity" (enclaveIdentity v2 JSON).
* [QVL] Intel SGX/TDX DCAP Quote Verification Library, quote verification steps 4.1.2.4.x and
  enclave identity steps 4.1.2.9.x; comments cite them by number.
* [TDX-ABI] Intel TDX Module ABI specification, "TD_ATTRIBUTES": a little-endian u64 in groups.
  TUD (bit 0 DEBUG, 3:1 reserved) and TUP (profiling: 4 HGS_PLUS_PROF, 5 PERF_PROF, 6 PMT_PROF,
  7 reserved) make the TD untrusted when set. SEC (31:8) holds bits that strengthen security
  (16 ICSSD, 17 SERVTD_EXT, 27 LASS, 30 PKS, 31 KL; 22:18 reserved for future ones) and bits
  that weaken it (28 SEPT_VE_DISABLE when clear, 29 MIGRATABLE; 26:23 reserved for future ones;
  15:8 reserved). OTHER (63:32): 62 TPA, 63 PERFMON, the rest reserved.
* [RFC5280] §4.2: a certificate with a critical extension that is not recognised and processed
  must be rejected; §5.2-5.3: likewise a CRL with such a CRL or CRL entry extension.

Check order: syntax (by declared lengths, so nothing is read past its container), then the PCK
chain to a root pinned by key (Intel's *test* roots carry the production root's exact subject),
then the QE report signature by the PCK leaf (and that the QE is not a debug enclave), the QE's
binding of the attestation key, and the quote signature by that key; then, for TDX, the
TD_ATTRIBUTES bits no policy may accept. Trust in each key is established before it is used.
Certificates may carry no critical extension but basicConstraints and keyUsage, and both are
processed ([RFC5280]). Collateral (optional) is checked last: its signing chain, the signatures
over the *exact* JSON text, the CRLs (none with a critical extension; the root, the
intermediates and the PCK leaf looked up), the FMSPC/PCE-ID match, the QE identity, then the
TCB level. DEBUG, SEPT_VE_DISABLE and MRSERVICETD are reported for the policy to judge. Without collateral the TCB
status is "Unknown": signatures and chains are proven, the TCB is not assessed.

Every check is a pure function of bytes except certificate and collateral validity, which
depend on ``at``. The pure parts are memoised by their exact input bytes (``clear_caches``), so
verifying against the same collateral again costs little more than the quote signature;
validity windows are re-checked on every call.

A first ("cold") verification is dominated by its nine ECDSA P-256 verifications; the rest is
kept small without skipping any check: each certificate is decoded once per verification
(``_Cert``: cryptography loads it and its key; the TBSCertificate, names and SPKI are sliced
from the DER, never re-encoded), names are compared as encoded (decoded only when the
encodings differ), the pinned Intel root is decoded and its self-signature checked once at
import, CRLs are asked only about the serials that matter, and fast paths take the layouts Intel
uses (strict PEM in 64-column lines, plain names, the extension kinds and encodings of Intel's
certificates, the SGX extension, TCB levels) while anything else goes through the general code
(cryptography decodes every extension); ``tests/attestation/test_dcap_fastpaths.py`` checks
that they agree.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import operator
import re
import struct
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeGuard, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import NameOID

from shardguard.attestation.errors import AttestationError, AttestationReason
from shardguard.attestation.memo import Memo
from shardguard.attestation.memo import clear_caches as _clear_all
from shardguard.attestation.result import TCB_ORDER
from shardguard.attestation.sigbatch import deferred, signature_holds
from shardguard.attestation.x509chain import load_pem_chain, verify_issued_by

__all__ = [
    "INTEL_QE_VENDOR_ID",
    "INTEL_ROOTS",
    "MAX_QUOTE_SIZE",
    "Collateral",
    "DcapVerdict",
    "EnclaveReport",
    "PckInfo",
    "QeIdentity",
    "Quote",
    "TcbInfo",
    "TcbLevel",
    "TcbVerdict",
    "TdReport",
    "clear_caches",
    "evaluate_tcb",
    "load_collateral",
    "load_pcs_collateral",
    "parse_pck_extensions",
    "parse_qe_identity",
    "parse_quote",
    "parse_tcb_info",
    "verify_quote",
    "verify_signed_json",
]

#: Pinned Intel roots: SHA-256 of the DER SubjectPublicKeyInfo → name. Only the production Intel
#: SGX Root CA (CN=Intel SGX Root CA, 2018-05-21 to 2049-12-31), computed from
#: fixtures/attestation/sgx/intel_sgx_root_ca.der, whose DER SHA-256 is
#: 44A0196B2B99F889B8E149E95B807A350E7424964399E885A7CBB8CCFAB674D3. Intel's test roots have the
#: same subject and different keys, so they are refused here by key.
INTEL_ROOTS: Final[Mapping[bytes, str]] = types.MappingProxyType(
    {bytes.fromhex("a0af031289f5d5d4132f9186068a7fc13628633ba235777472e29b6b6c67a49e"): "intel-sgx-root-ca"}
)

#: Genuine quotes are about 5 KB (Gramine caps them at 8 KiB, specs §5.1; GCP pads to 8000 B).
#: The cap bounds the work unauthenticated input can cause.
MAX_QUOTE_SIZE: Final = 64 * 1024

_R = AttestationReason

# -- quote layout constants ([QL-TDX], [QL-SGX]; specs/enclave-backends.md §4.2) -----------------
_REPORT_LEN: Final = 384  # SGX REPORTBODY: the SGX quote body and the QE report
_TD10_LEN: Final = 584
_TD15_LEN: Final = 648
_SIG_LEN: Final = 64  # ECDSA P-256 r‖s, 32 bytes each, big-endian
_KEY_LEN: Final = 64  # P-256 point x‖y
_ATT_KEY_ECDSA_P256: Final = 2
#: Quote header (specs §4.2, §5.3): version, attestation key type, TEE type, two u16, QE vendor
#: ID, user data.
_HEADER: Final = struct.Struct("<HHIHH16s20s")
#: REPORTBODY (specs §5.3): CPUSVN, MISCSELECT, reserved, ISVEXTPRODID, ATTRIBUTES, MRENCLAVE,
#: reserved, MRSIGNER, reserved, CONFIGID, ISVPRODID, ISVSVN, CONFIGSVN, reserved, ISVFAMILYID,
#: REPORTDATA.
_REPORT_BODY: Final = struct.Struct("<16sI12x16s16s32s32x32s32x64sHHH42x16s64s")
#: TD quote body (specs §4.2): TEE_TCB_SVN, MRSEAM, MRSIGNERSEAM, SEAMATTRIBUTES, TDATTRIBUTES,
#: XFAM, MRTD, MRCONFIGID, MROWNER, MROWNERCONFIG, RTMR0-3, REPORTDATA (+ TEE_TCB_SVN2, MRSERVICETD).
_TD10_BODY: Final = struct.Struct("<16s48s48s8s8s8s48s48s48s48s48s48s48s48s64s")
_TD15_BODY: Final = struct.Struct("<16s48s48s8s8s8s48s48s48s48s48s48s48s48s64s16s48s")
#: TD_ATTRIBUTES ([TDX-ABI]), as a little-endian u64. DEBUG and SEPT_VE_DISABLE are the policy's
#: (``allow_debug``, ``require_sept_ve_disable``). ``_TDA_REFUSED`` are refused by the verifier
#: whatever the policy, exactly the bits dcap-qvl 0.7.0 always refuses: the reserved TUD bits,
#: the TUP profiling bits (the host observes the TD), the reserved bits outside the "future
#: positive" range 22:18, MIGRATABLE (a migration TD can move the TD's state elsewhere) and
#: SERVTD_EXT (the report's service-TD information then has a layout this verifier does not
#: read). Every other bit (ICSSD, 22:18, LASS, PKS, KL, TPA, PERFMON) only strengthens the TD or
#: does not bear on its security, and is accepted.
_TDA_DEBUG: Final = 1 << 0
_TDA_SEPT_VE_DISABLE: Final = 1 << 28
_TDA_BIT_NAMES: Final = {4: "HGS_PLUS_PROF", 5: "PERF_PROF", 6: "PMT_PROF", 17: "SERVTD_EXT", 29: "MIGRATABLE"}
_TDA_REFUSED: Final = sum(1 << b for b in (*range(1, 16), 17, *range(23, 27), 29, *range(32, 62)))
_TEE_SGX: Final = 0x00000000
_TEE_TDX: Final = 0x00000081
_BODY_TD10: Final = 2
_BODY_TD15: Final = 3
_CERT_PCK_CHAIN: Final = 5  # PCK leaf → intermediate CA → root, PEM
_CERT_QE_REPORT: Final = 6  # QE report certification data, wrapping a type 5 entry
#: The QE vendor ID of Intel's quoting enclaves; this verifier knows only their reports.
INTEL_QE_VENDOR_ID: Final = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

# -- PCK SGX extensions ([PCK]) -----------------------------------------------------------------
_SGX_EXT_OID: Final = "1.2.840.113741.1.13.1"
_SGX_EXT: Final = x509.ObjectIdentifier(_SGX_EXT_OID)
#: Its DER content octets (X.690 §8.19): 1.2 → 0x2a, 840 → 86 48, 113741 → 86 f8 4d, 1, 13, 1.
_SGX_EXT_DER: Final = bytes.fromhex("2a864886f84d010d01")

#: TCB statuses a TCB level may carry ([PCS] "Get TCB Info" v3, tcbStatus); "NoMatchingTcbLevel"
#: and "Unknown" are our own verdicts, never Intel's.
_LEVEL_STATUSES: Final = frozenset(TCB_ORDER[:7])
_STATUS_NO_MATCH: Final = "NoMatchingTcbLevel"
_STATUS_UNKNOWN: Final = "Unknown"


def _fail(reason: AttestationReason, detail: str, *, platform: str, field: str = "") -> AttestationError:
    return AttestationError(reason, detail, platform=platform, field=field)


def _utc(at: dt.datetime | None) -> dt.datetime:
    if at is None:
        return dt.datetime.now(dt.UTC)
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)


# -- memoisation of pure checks --------------------------------------------------------------------
_T = TypeVar("_T")


def _record(cls: type[_T]) -> Callable[..., _T]:
    """A constructor for the frozen slots dataclass ``cls`` taking every field, in order (by
    position or name, no defaults), for the verification's hot paths. It fills the slots through
    their descriptors, as the generated ``__init__`` does through ``object.__setattr__``, at a
    third of the cost. Only for classes without ``__post_init__`` or default factories: the
    object is exactly the one ``cls(**fields)`` builds."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    if hasattr(cls, "__post_init__") or not all(isinstance(cls.__dict__[n], types.MemberDescriptorType) for n in names):
        raise TypeError(f"{cls.__name__}: only slotted dataclasses without __post_init__")  # at import, by our own code
    env: dict[str, Any] = {"_new": object.__new__, "_cls": cls} | {f"_set_{n}": cls.__dict__[n].__set__ for n in names}
    body = "".join(f"    _set_{n}(o, {n})\n" for n in names)
    exec(f"def make({', '.join(names)}):\n    o = _new(_cls)\n{body}    return o\n", env)  # noqa: S102
    make: Callable[..., _T] = env["make"]
    make.__qualname__ = f"_record({cls.__name__})"
    return make


_PEM_CHAINS = Memo()
_CHAIN_SIGS = Memo(signed=True)
_SIG_OK = Memo(1024, signed=True)
# The collateral's JSON is parsed only once its signature is proven (sequentially), so its
# parses are kept aside like signatures while they are only assumed (no cache pollution).
_PARSED_JSON = Memo(signed=True)
_CRLS = Memo()
_CRL_SIGS = Memo(signed=True)
_PCK_EXT = Memo()


def clear_caches() -> None:
    """Forget every memoised check (benchmarks use it to time cold verifications)."""
    _clear_all()


# -- the quote ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class EnclaveReport:
    """An SGX REPORTBODY (384 B, specs §5.3): the SGX quote body, and the QE report of every quote."""

    raw: bytes
    cpu_svn: bytes
    misc_select: int
    isv_ext_prod_id: bytes
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    isv_family_id: bytes
    report_data: bytes

    @classmethod
    def parse(cls, raw: bytes) -> EnclaveReport:
        if len(raw) != _REPORT_LEN:  # the callers slice exactly this much
            raise _fail(_R.MALFORMED, f"report of {len(raw)} bytes, not {_REPORT_LEN}", platform="dcap", field="report")
        # The struct's fields are the dataclass's, in order, after ``raw``.
        return _new_enclave_report(raw, *_REPORT_BODY.unpack(raw))

    @property
    def debug(self) -> bool:
        """ATTRIBUTES.FLAGS bit 1 (DEBUG): the enclave's memory is readable by its host (specs §5.3)."""
        return bool(self.attributes[0] & 0x02)

    def to_fields(self) -> dict[str, Any]:
        return {
            "cpu_svn": self.cpu_svn.hex(),
            "misc_select": hex(self.misc_select),
            "attributes": self.attributes.hex(),
            "mr_enclave": self.mr_enclave.hex(),
            "mr_signer": self.mr_signer.hex(),
            "isv_prod_id": self.isv_prod_id,
            "isv_svn": self.isv_svn,
            "report_data": self.report_data.hex(),
            "isv_ext_prod_id": self.isv_ext_prod_id.hex(),
            "config_id": self.config_id.hex(),
            "config_svn": self.config_svn,
            "isv_family_id": self.isv_family_id.hex(),
        }


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TdReport:
    """A TD quote body: TDX 1.0 (584 B) or TDX 1.5 (648 B) [QL-TDX]; offsets in specs §4.2."""

    raw: bytes
    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None  # TDX 1.5 only
    mr_servicetd: bytes | None  # TDX 1.5 only

    @classmethod
    def parse(cls, raw: bytes) -> TdReport:
        if len(raw) not in (_TD10_LEN, _TD15_LEN):  # the callers slice exactly this much
            raise _fail(_R.MALFORMED, f"TD report of {len(raw)} bytes", platform="tdx", field="body")
        v15 = len(raw) == _TD15_LEN
        f = (_TD15_BODY if v15 else _TD10_BODY).unpack(raw)
        return _new_td_report(raw, *f[:10], f[10:14], f[14], f[15] if v15 else None, f[16] if v15 else None)

    @property
    def debug(self) -> bool:
        """TD_ATTRIBUTES bit 0 (TUD.DEBUG): the host can read and write the TD's state (specs §4.2).
        The other TUD and TUP bits (7:1: reserved, and profiling) are refused by
        :func:`verify_quote` whatever the policy, so of that group only this bit can be set in an
        accepted quote, and the policy judges it."""
        return bool(self.td_attributes[0] & _TDA_DEBUG)

    @property
    def refused_attributes(self) -> int:
        """The TD_ATTRIBUTES bits set that the verifier refuses whatever the policy (``_TDA_REFUSED``)."""
        refused: int = int.from_bytes(self.td_attributes, "little") & _TDA_REFUSED
        return refused

    @property
    def sept_ve_disable(self) -> bool:
        """TD_ATTRIBUTES bit 28 (SEPT_VE_DISABLE): an access to a private page the host has not
        yet mapped exits to the host instead of raising a #VE inside the TD. When clear, the host
        can make the TD take a #VE at almost any instruction; Linux guests refuse to run so
        unless they are debug TDs."""
        return bool(self.td_attributes[3] & (_TDA_SEPT_VE_DISABLE >> 24))

    @property
    def service_td(self) -> bool:
        """A service TD (e.g. a migration TD) is bound to this TD: MRSERVICETD, which exists in
        TDX 1.5 bodies only, is not zero. A bound service TD can reach the TD's state."""
        return self.mr_servicetd is not None and self.mr_servicetd.count(0) != len(self.mr_servicetd)

    def to_fields(self) -> dict[str, Any]:
        out = {
            "tee_tcb_svn": self.tee_tcb_svn.hex(),
            "mr_seam": self.mr_seam.hex(),
            "mr_signer_seam": self.mr_signer_seam.hex(),
            "seam_attributes": self.seam_attributes.hex(),
            "td_attributes": self.td_attributes.hex(),
            "xfam": self.xfam.hex(),
            "mr_td": self.mr_td.hex(),
            "mr_config_id": self.mr_config_id.hex(),
            "mr_owner": self.mr_owner.hex(),
            "mr_owner_config": self.mr_owner_config.hex(),
            "rtmr0": self.rtmrs[0].hex(),
            "rtmr1": self.rtmrs[1].hex(),
            "rtmr2": self.rtmrs[2].hex(),
            "rtmr3": self.rtmrs[3].hex(),
            "report_data": self.report_data.hex(),
        }
        if self.tee_tcb_svn2 is not None and self.mr_servicetd is not None:
            out["tee_tcb_svn2"] = self.tee_tcb_svn2.hex()
            out["mr_servicetd"] = self.mr_servicetd.hex()
        return out


_new_enclave_report = _record(EnclaveReport)
_new_td_report = _record(TdReport)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Quote:
    """A quote whose every length is consistent; nothing in it is proven yet.

    ``signed`` is the byte range the attestation key signs (header and body, for v5 with the
    body descriptor). ``size`` is the declared end of the quote; ``padding`` counts the zero bytes
    after it (which carry nothing and are tolerated, README "Pitfalls").
    """

    version: int
    att_key_type: int
    tee_type: int
    header_svns: tuple[int, int]  # v3: QE SVN, PCE SVN; v4/v5: reserved
    qe_vendor_id: bytes
    user_data: bytes
    body_type: int  # v5 descriptor; v3 = 1 (SGX), v4 = 2 (TDX 1.0), as in the v5 numbering
    body: EnclaveReport | TdReport
    signed: bytes
    signature: bytes
    attestation_key: bytes
    qe_report: EnclaveReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    outer_cert_data_type: int | None  # 6 in v4/v5, None in v3 (the QE report is not wrapped)
    cert_data_type: int  # the type of the entry that holds the PCK chain: always 5 here
    pck_chain_pem: bytes
    size: int
    padding: int

    @property
    def tee(self) -> str:
        return _TEE_NAMES[self.body_type]

    @property
    def platform(self) -> str:
        return "sgx" if self.tee_type == _TEE_SGX else "tdx"

    def to_fields(self) -> dict[str, Any]:
        return {
            "tee": self.tee,
            "quote_version": self.version,
            "att_key_type": self.att_key_type,
            "tee_type": hex(self.tee_type),
            "qe_vendor_id": self.qe_vendor_id.hex(),
            "header_svns": list(self.header_svns),
            "user_data": self.user_data.hex(),
            "quote_size": self.size,
            "bytes_after_signature_data": self.padding,
            "file_size": self.size + self.padding,
            "outer_cert_data_type": self.outer_cert_data_type,
            "cert_data_type": self.cert_data_type,
            "body": self.body.to_fields(),
            "qe_report": self.qe_report.to_fields(),
            "qe_auth_data": self.qe_auth_data.hex(),
            "attestation_key": self.attestation_key.hex(),
        }


_new_quote = _record(Quote)
_TEE_NAMES: Final = {1: "SGX", _BODY_TD10: "TDX1.0", _BODY_TD15: "TDX1.5"}


_U16: Final = struct.Struct("<H")
_U16_U32: Final = struct.Struct("<HI")


def _sig_data_fast(sd: bytes, version: int) -> tuple[bytes, bytes, int | None, bytes, bytes, bytes, int, bytes] | None:
    """The signature data of a well-formed quote in one pass: (signature, attestation key, outer
    certification data type, QE report, its signature, QE auth data, certification data type,
    PCK chain). None unless every declared length fits exactly and both types are the supported
    ones; ``parse_quote`` then reads it field by field to say what is wrong."""
    n = len(sd)
    pos = _SIG_LEN + _KEY_LEN
    outer_type: int | None = None
    if version >= 4:
        if n < pos + 6:
            return None
        outer_type, size = _U16_U32.unpack_from(sd, pos)
        pos += 6
        if outer_type != _CERT_QE_REPORT or pos + size != n:
            return None
    qe = pos
    pos += _REPORT_LEN + _SIG_LEN
    if n < pos + 2:
        return None
    auth_end = pos + 2 + _U16.unpack_from(sd, pos)[0]
    if n < auth_end + 6:
        return None
    cert_type, pem_len = _U16_U32.unpack_from(sd, auth_end)
    if cert_type != _CERT_PCK_CHAIN or auth_end + 6 + pem_len != n:
        return None
    return (
        sd[:_SIG_LEN],
        sd[_SIG_LEN : _SIG_LEN + _KEY_LEN],
        outer_type,
        sd[qe : qe + _REPORT_LEN],
        sd[qe + _REPORT_LEN : pos],
        sd[pos + 2 : auth_end],
        cert_type,
        sd[auth_end + 6 :],
    )


class _Cursor:
    """Reads a container strictly by declared lengths. Running past the end of the outer quote is
    TRUNCATED; running past the end of an inner container (whose length the quote declared) is
    MALFORMED: the bytes are there, the lengths contradict each other."""

    def __init__(self, buf: bytes, *, platform: str, reason: AttestationReason, what: str) -> None:
        self.buf = buf
        self.pos = 0
        self._platform = platform
        self._reason = reason
        self._what = what

    def take(self, n: int, field: str) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise _fail(
                self._reason,
                f"{field} needs {n} bytes at offset {self.pos} of the {self._what}, which has {len(self.buf)}",
                platform=self._platform,
                field=field,
            )
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def u16(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "little")

    def u32(self, field: str) -> int:
        return int.from_bytes(self.take(4, field), "little")

    def done(self, field: str) -> None:
        if self.pos != len(self.buf):
            raise _fail(
                _R.MALFORMED,
                f"{len(self.buf) - self.pos} unparsed bytes inside the {self._what}",
                platform=self._platform,
                field=field,
            )


def parse_quote(data: bytes, *, platform: str) -> Quote:
    """Parse a DCAP quote by its declared lengths ([QL-TDX] / [QL-SGX] "Quote Format").

    Accepted: v3 SGX (tee_type 0), v4 TDX (tee_type 0x81, 584-byte body) and v5 TDX (body type 2
    or 3), attestation key type 2 (ECDSA-256-with-P-256), Intel's QE vendor ID, and certification
    data that embeds the PCK chain (type 5, inside type 6 for v4/v5). Zero bytes after the
    declared end are counted as ``padding``; any other trailing byte is TRAILING_DATA.

    Raises:
        AttestationError: TRUNCATED, MALFORMED, UNSUPPORTED or TRAILING_DATA.
    """
    data = bytes(data)
    if len(data) > MAX_QUOTE_SIZE:
        raise _fail(_R.MALFORMED, f"{len(data)} bytes is larger than any quote ({MAX_QUOTE_SIZE})", platform=platform)
    cur = _Cursor(data, platform=platform, reason=_R.TRUNCATED, what="quote")
    # Header, 48 bytes: version, att_key_type, tee_type (v3: reserved), 2×u16, QE vendor ID, user data.
    if len(data) >= _HEADER.size:
        version, att_key_type, tee_type, svn0, svn1, qe_vendor_id, user_data = _HEADER.unpack_from(data)
        svns = (svn0, svn1)
        cur.pos = _HEADER.size
    else:  # field by field, to say which one is cut off
        version = cur.u16("header.version")
        att_key_type = cur.u16("header.att_key_type")
        tee_type = cur.u32("header.tee_type")
        svns = (cur.u16("header.svn0"), cur.u16("header.svn1"))
        qe_vendor_id = cur.take(16, "header.qe_vendor_id")
        user_data = cur.take(20, "header.user_data")
    if version not in (3, 4, 5):
        raise _fail(_R.UNSUPPORTED, f"quote version {version} (3, 4 and 5 are known)", platform=platform, field="header.version")
    if att_key_type != _ATT_KEY_ECDSA_P256:
        raise _fail(
            _R.UNSUPPORTED,
            f"attestation key type {att_key_type} (only 2 = ECDSA-256-with-P-256)",
            platform=platform,
            field="header.att_key_type",
        )
    if version == 3 and tee_type != _TEE_SGX:
        raise _fail(_R.UNSUPPORTED, f"v3 quote with reserved field {tee_type:#x} (SGX only)", platform=platform, field="header")
    if version >= 4 and tee_type != _TEE_TDX:
        # SGX quotes in v4/v5 layout exist but are not produced by our backends (Gramine emits v3).
        raise _fail(
            _R.UNSUPPORTED,
            f"v{version} quote with TEE type {tee_type:#x} (only TDX, 0x81)",
            platform=platform,
            field="header.tee_type",
        )
    if qe_vendor_id != INTEL_QE_VENDOR_ID:
        raise _fail(
            _R.UNSUPPORTED, f"QE vendor {qe_vendor_id.hex()} is not Intel's", platform=platform, field="header.qe_vendor_id"
        )

    body: EnclaveReport | TdReport
    if version == 3:
        body_type = 1
        body = EnclaveReport.parse(cur.take(_REPORT_LEN, "body"))
    elif version == 4:
        body_type = _BODY_TD10
        body = TdReport.parse(cur.take(_TD10_LEN, "body"))
    else:
        body_type = cur.u16("body.type")
        body_size = cur.u32("body.size")
        expected = {_BODY_TD10: _TD10_LEN, _BODY_TD15: _TD15_LEN}.get(body_type)
        if expected is None:
            raise _fail(
                _R.UNSUPPORTED, f"v5 body type {body_type} (2 = TDX 1.0, 3 = TDX 1.5)", platform=platform, field="body.type"
            )
        if body_size != expected:
            raise _fail(
                _R.MALFORMED,
                f"v5 body type {body_type} declares {body_size} bytes, not {expected}",
                platform=platform,
                field="body.size",
            )
        body = TdReport.parse(cur.take(body_size, "body"))
    signed = data[: cur.pos]

    sig_len = cur.u32("signature_data.length")
    sig_data = cur.take(sig_len, "signature_data")
    size = cur.pos
    tail = data[size:]
    if tail.count(0) != len(tail):
        raise _fail(
            _R.TRAILING_DATA,
            f"{len(tail)} bytes after the {size}-byte quote are not zero padding",
            platform=platform,
            field="trailing",
        )

    # Signature data: quote signature, attestation key, then the certification data.
    fast = _sig_data_fast(sig_data, version)
    if fast is not None:
        signature, attestation_key, outer_type, qe_raw, qe_report_signature, qe_auth_data, cert_type, pem = fast
        return _new_quote(
            version=version,
            att_key_type=att_key_type,
            tee_type=tee_type,
            header_svns=svns,
            qe_vendor_id=qe_vendor_id,
            user_data=user_data,
            body_type=body_type,
            body=body,
            signed=signed,
            signature=signature,
            attestation_key=attestation_key,
            qe_report=EnclaveReport.parse(qe_raw),
            qe_report_signature=qe_report_signature,
            qe_auth_data=qe_auth_data,
            outer_cert_data_type=outer_type,
            cert_data_type=cert_type,
            pck_chain_pem=pem,
            size=size,
            padding=len(tail),
        )
    sd = _Cursor(sig_data, platform=platform, reason=_R.MALFORMED, what="signature data")
    signature = sd.take(_SIG_LEN, "signature")
    attestation_key = sd.take(_KEY_LEN, "attestation_key")
    outer_type = None
    if version >= 4:
        outer_type = sd.u16("cert_data.type")
        if outer_type != _CERT_QE_REPORT:
            raise _fail(
                _R.UNSUPPORTED,
                f"certification data type {outer_type} (only 6, QE report)",
                platform=platform,
                field="cert_data.type",
            )
        outer = _Cursor(
            sd.take(sd.u32("cert_data.size"), "cert_data"), platform=platform, reason=_R.MALFORMED, what="QE report data"
        )
        sd.done("signature_data")
    else:
        outer = sd
    qe_report = EnclaveReport.parse(outer.take(_REPORT_LEN, "qe_report"))
    qe_report_signature = outer.take(_SIG_LEN, "qe_report_signature")
    qe_auth_data = outer.take(outer.u16("qe_auth_data.length"), "qe_auth_data")
    cert_type = outer.u16("pck_cert_data.type")
    if cert_type != _CERT_PCK_CHAIN:
        # Types 1-4 (PPID or a bare PCK leaf) need the PCK chain from elsewhere: not offline.
        raise _fail(
            _R.UNSUPPORTED,
            f"certification data type {cert_type} (only 5, the embedded PCK chain)",
            platform=platform,
            field="pck_cert_data.type",
        )
    pem = outer.take(outer.u32("pck_cert_data.size"), "pck_cert_data")
    outer.done("cert_data")
    return _new_quote(
        version=version,
        att_key_type=att_key_type,
        tee_type=tee_type,
        header_svns=svns,
        qe_vendor_id=qe_vendor_id,
        user_data=user_data,
        body_type=body_type,
        body=body,
        signed=signed,
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        outer_cert_data_type=outer_type,
        cert_data_type=cert_type,
        pck_chain_pem=pem,
        size=size,
        padding=len(tail),
    )


#: cryptography decodes names, extensions, keys and algorithms lazily: any of these can come out
#: of a malformed certificate on first access, and each means "malformed evidence".
_LAZY_PARSE_ERRORS: Final = (ValueError, TypeError, x509.InvalidVersion, x509.DuplicateExtension, UnsupportedAlgorithm)


# -- PCK certificate SGX extensions ([PCK]) -----------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PckInfo:
    """The PCK leaf's SGX extensions: the platform's TCB as Intel certified it."""

    ppid: bytes
    tcb_comp_svn: tuple[int, ...]  # 16 SGX TCB component SVNs
    pcesvn: int
    cpusvn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: int
    platform_instance_id: bytes | None
    configuration: Mapping[str, bool]

    def to_fields(self) -> dict[str, Any]:
        return {
            "FMSPC": self.fmspc.hex(),
            "PCE-ID": self.pce_id.hex(),
            "SGX Type": self.sgx_type,
            "TCB": {"sgx_tcb_comp_svn": list(self.tcb_comp_svn), "pcesvn": self.pcesvn, "cpusvn": self.cpusvn.hex()},
        }


_new_pck_info = _record(PckInfo)


def _der(buf: bytes, pos: int) -> tuple[int, bytes, int]:
    """One DER TLV at ``pos`` → (tag, content, next position). X.690 §8.1: single-byte tags,
    definite minimal lengths. Raises ValueError."""
    if pos + 2 > len(buf):
        raise ValueError("TLV header past the end")
    tag, first = buf[pos], buf[pos + 1]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte tag")
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 3 or pos + n > len(buf) or buf[pos] == 0:
            raise ValueError("bad length")
        length = int.from_bytes(buf[pos : pos + n], "big")
        if length < 0x80:
            raise ValueError("non-minimal length")
        pos += n
    end = pos + length
    if end > len(buf):
        raise ValueError("content past the end")
    return tag, buf[pos:end], end


def _der_seq(content: bytes) -> list[tuple[int, bytes]]:
    items, pos = [], 0
    while pos < len(content):
        tag, value, pos = _der(content, pos)
        items.append((tag, value))
    return items


def _der_uint(content: bytes, limit: int) -> int:
    if not content or content[0] & 0x80 or (len(content) > 1 and content[0] == 0 and not content[1] & 0x80):
        raise ValueError("not a minimal non-negative INTEGER")
    value = int.from_bytes(content, "big")
    if value > limit:
        raise ValueError("INTEGER out of range")
    return value


def _der_pairs(content: bytes, prefix: bytes) -> dict[int, tuple[int, bytes]]:
    """SEQUENCE OF SEQUENCE {OID, value} → {last OID arc: (tag, value)}, for OIDs that are
    ``prefix`` (DER content octets of the parent OID) plus one arc below 128, as every SGX
    extension OID is. Comparing encoded bytes avoids decoding each OID to text."""
    out: dict[int, tuple[int, bytes]] = {}
    pos, n, oid_len = 0, len(content), len(prefix) + 1
    while pos < n:
        tag, item, pos = _der(content, pos)
        if tag != 0x30:
            raise ValueError("entry is not a SEQUENCE")
        oid_tag, oid, inner = _der(item, 0) if item else (0, b"", 0)
        if oid_tag != 0x06 or inner >= len(item):
            raise ValueError("entry is not {OID, value}")
        value_tag, value, inner = _der(item, inner)
        if inner != len(item):
            raise ValueError("entry is not {OID, value}")
        if len(oid) != oid_len or not oid.startswith(prefix) or oid[-1] & 0x80:
            raise ValueError(f"unexpected OID {oid.hex()}")
        if oid[-1] in out:
            raise ValueError(f"duplicate OID {oid.hex()}")
        out[oid[-1]] = (value_tag, value)
    return out


def _tcb_pattern(capture: bool) -> bytes:
    """The TCB entry's content as Intel encodes it: components 1..16, PCESVN (17) and CPUSVN
    (18) in order, each SEQUENCE {OID, minimal INTEGER ≤ 255 / ≤ 65535 | 16-byte OCTET STRING}.
    What it matches, the general decoder accepts with the same values. With ``capture``, group
    2i-1 or 2i holds component i as its one value byte (after the sign octet, if any), one of
    33..36 the PCESVN's value bytes, 37 the CPUSVN."""

    def entry(arc: int, values: Sequence[tuple[int, bytes]]) -> bytes:
        oid = _SGX_EXT_DER + bytes([2, arc])
        head = bytes([0x06, len(oid)]) + oid
        alts = (re.escape(bytes([0x30, len(head) + n]) + head) + value for n, value in values)
        return b"(?:" + b"|".join(alts) + b")"

    o = b"(" if capture else b"(?:"
    u8 = [(3, rb"\x02\x01" + o + rb"[\x00-\x7f])"), (4, rb"\x02\x02\x00" + o + rb"[\x80-\xff])")]
    u16 = [*u8, (4, rb"\x02\x02" + o + rb"[\x01-\x7f][\x00-\xff])"), (5, rb"\x02\x03" + o + rb"\x00[\x80-\xff][\x00-\xff])")]
    parts = [entry(i, u8) for i in range(1, 17)] + [entry(17, u16), entry(18, [(18, rb"\x04\x10" + o + rb".{16})")])]
    return b"".join(parts)


def _sgx_extension_pattern() -> bytes:
    """The whole SGX extension value as Intel encodes it for PCK certificates of the Processor CA
    (PPID, TCB, PCE-ID, FMSPC, SGX Type) and of the Platform CA (then also PlatformInstanceID and
    a Configuration of its three flags), in that order. The three two-byte DER lengths (the
    value, the TCB entry and the TCB SEQUENCE) are checked by ``_decode_sgx_extension_fast``."""

    def head(n: int, *arcs: int) -> bytes:
        oid = _SGX_EXT_DER + bytes(arcs)
        return re.escape(bytes([0x30, n, 0x06, len(oid)]) + oid)

    oid2 = _SGX_EXT_DER + b"\x02"
    return (
        rb"\x30\x82(?P<n_all>..)"
        + head(0x1E, 1)
        + rb"\x04\x10(?P<ppid>.{16})"
        + rb"(?P<tcb_entry>\x30\x82(?P<n_entry>..)"
        + re.escape(bytes([0x06, len(oid2)]) + oid2)
        + rb"\x30\x82(?P<n_tcb>..)(?P<tcb>"
        + _tcb_pattern(capture=False)
        + rb"))"
        + head(0x10, 3)
        + rb"\x04\x02(?P<pce_id>..)"
        + head(0x14, 4)
        + rb"\x04\x06(?P<fmspc>.{6})"
        + rb"(?:"
        + head(0x0F, 5)
        + rb"\x0a\x01(?P<sgx_type>[\x00-\x7f])|"
        + head(0x10, 5)
        + rb"\x0a\x02(?P<sgx_type2>\x00[\x80-\xff]))"
        + rb"(?:"
        + head(0x1E, 6)
        + rb"\x04\x10(?P<platform_instance_id>.{16})"
        + head(0x44, 7)
        + rb"\x30\x36"
        + head(0x10, 7, 1)
        + rb"\x01\x01(?P<dynamic_platform>.)"
        + head(0x10, 7, 2)
        + rb"\x01\x01(?P<cached_keys>.)"
        + head(0x10, 7, 3)
        + rb"\x01\x01(?P<smt_enabled>.)"
        + rb")?"
    )


_TCB_ENTRY: Final = re.compile(_tcb_pattern(capture=True), re.DOTALL)
_SGX_EXT_LAYOUT: Final = re.compile(_sgx_extension_pattern(), re.DOTALL)


def _decode_sgx_extension_fast(value: bytes) -> PckInfo | None:
    """``_decode_sgx_extension`` of a value in Intel's layout (``_SGX_EXT_LAYOUT``), with the same
    result; None for any other value."""
    m = _SGX_EXT_LAYOUT.fullmatch(value)
    if m is None:
        return None
    tcb_start, tcb_end = m.span("tcb")
    # Long-form lengths: minimal (first byte non-zero, so ≥ 0x100) and equal to what they cover.
    n_all, n_entry, n_tcb = m.group("n_all", "n_entry", "n_tcb")
    if (
        not (n_all[0] and n_entry[0] and n_tcb[0])
        or n_all[0] << 8 | n_all[1] != len(value) - 4
        or n_entry[0] << 8 | n_entry[1] != tcb_end - m.start("tcb_entry") - 4
        or n_tcb[0] << 8 | n_tcb[1] != tcb_end - tcb_start
    ):
        return None
    tcb = _TCB_ENTRY.fullmatch(value, tcb_start, tcb_end)
    if tcb is None:  # cannot happen (the same pattern, capturing): the general path decides
        return None
    g = tcb.groups()
    flags = m.group("dynamic_platform", "cached_keys", "smt_enabled")
    return _new_pck_info(
        ppid=m["ppid"],
        # Exactly one group of each pair matched, capturing that component's one value byte;
        # likewise one of the PCESVN's four (a matched group is never empty).
        tcb_comp_svn=tuple(b"".join(filter(None, g[:32]))),
        pcesvn=int.from_bytes(g[32] or g[33] or g[34] or g[35], "big"),
        cpusvn=g[36],
        pce_id=m["pce_id"],
        fmspc=m["fmspc"],
        sgx_type=int.from_bytes(m["sgx_type"] or m["sgx_type2"], "big"),
        platform_instance_id=m["platform_instance_id"],
        configuration=types.MappingProxyType(
            {}
            if flags[0] is None
            else {"dynamic_platform": flags[0] != b"\x00", "cached_keys": flags[1] != b"\x00", "smt_enabled": flags[2] != b"\x00"}
        ),
    )


def _octets(entry: tuple[int, bytes] | None, n: int, name: str) -> bytes:
    if entry is None or entry[0] != 0x04 or len(entry[1]) != n:
        raise ValueError(f"{name} is not a {n}-byte OCTET STRING")
    return entry[1]


def _decode_sgx_extension(value: bytes) -> PckInfo:
    fast = _decode_sgx_extension_fast(value)
    if fast is not None:
        return fast
    tag, content, end = _der(value, 0)
    if tag != 0x30 or end != len(value):
        raise ValueError("extension value is not one SEQUENCE")
    top = _der_pairs(content, _SGX_EXT_DER)
    tcb_entry = top.get(2)
    if tcb_entry is None or tcb_entry[0] != 0x30:
        raise ValueError("TCB is missing")
    tcb_match = _TCB_ENTRY.fullmatch(tcb_entry[1])
    pce: tuple[int, bytes] | None
    if tcb_match is not None:
        g = tcb_match.groups()
        comps = [int.from_bytes(g[i] if g[i] is not None else g[i + 1], "big") for i in range(0, 32, 2)]
        pce = (0x02, next(v for v in g[32:36] if v is not None))
        tcb = {18: (0x04, g[36])}
    else:
        tcb = _der_pairs(tcb_entry[1], _SGX_EXT_DER + b"\x02")
        comps = []
        for i in range(1, 17):
            entry = tcb.get(i)
            if entry is None or entry[0] != 0x02:
                raise ValueError(f"TCB component {i} is missing")
            comps.append(_der_uint(entry[1], 255))
        pce = tcb.get(17)
        if pce is None or pce[0] != 0x02:
            raise ValueError("PCESVN is missing")
    sgx_type = top.get(5)
    if sgx_type is None or sgx_type[0] != 0x0A:
        raise ValueError("SGX Type is missing")
    config: dict[str, bool] = {}
    if 7 in top:
        names = {1: "dynamic_platform", 2: "cached_keys", 3: "smt_enabled"}
        if top[7][0] != 0x30:
            raise ValueError("Configuration is not a SEQUENCE")
        for arc, (t, v) in _der_pairs(top[7][1], _SGX_EXT_DER + b"\x07").items():
            if t != 0x01 or len(v) != 1 or arc not in names:
                raise ValueError("bad Configuration entry")
            config[names[arc]] = v != b"\x00"
    return PckInfo(
        ppid=_octets(top.get(1), 16, "PPID"),
        tcb_comp_svn=tuple(comps),
        pcesvn=_der_uint(pce[1], 0xFFFF),
        cpusvn=_octets(tcb.get(18), 16, "CPUSVN"),
        pce_id=_octets(top.get(3), 2, "PCE-ID"),
        fmspc=_octets(top.get(4), 6, "FMSPC"),
        sgx_type=_der_uint(sgx_type[1], 255),
        platform_instance_id=_octets(top[6], 16, "PlatformInstanceID") if 6 in top else None,
        configuration=types.MappingProxyType(config),
    )


def parse_pck_extensions(leaf: x509.Certificate, *, platform: str) -> PckInfo:
    """The SGX extensions of a PCK certificate ([PCK]; OID 1.2.840.113741.1.13.1).

    Raises:
        AttestationError: MALFORMED if the extension is missing or does not decode.
    """
    try:
        ext = leaf.extensions.get_extension_for_oid(_SGX_EXT).value
    except x509.ExtensionNotFound:
        raise _fail(
            _R.MALFORMED, "PCK certificate has no SGX extensions", platform=platform, field="pck.sgx_extensions"
        ) from None
    except _LAZY_PARSE_ERRORS as e:  # duplicate or undecodable extensions
        raise _fail(
            _R.MALFORMED, f"PCK certificate extensions: {type(e).__name__}: {e}", platform=platform, field="pck.sgx_extensions"
        ) from None
    if not isinstance(ext, x509.UnrecognizedExtension):
        raise _fail(_R.MALFORMED, "SGX extensions are not raw DER", platform=platform, field="pck.sgx_extensions")
    return _sgx_extension(ext.value, platform=platform)


def _sgx_extension(raw: bytes, *, platform: str) -> PckInfo:
    try:
        return _PCK_EXT.get(("sgx-ext", raw), lambda: _decode_sgx_extension(raw))
    except (ValueError, IndexError) as e:
        raise _fail(_R.MALFORMED, f"SGX extensions: {e}", platform=platform, field="pck.sgx_extensions") from None


# -- signatures, PEM chains -------------------------------------------------------------------------
_PEM_BLOCK: Final = re.compile(rb"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\r\n]*-----END CERTIFICATE-----")
_PEM_FILLER: Final = re.compile(rb"[\s\x00]*")
#: The layout every PCK and TCB Signing chain has (RFC 7468 "strict": BEGIN line, base64 lines
#: ending in LF or CRLF, END line), which every PEM parser reads alike; other layouts go through
#: cryptography's PEM parser (see :func:`_pem_ders`).
_PEM_STRICT: Final = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n((?:[A-Za-z0-9+/=]+\r?\n)+)-----END CERTIFICATE-----")


def _hdr(buf: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, end) of the TLV at ``pos``, for DER that cryptography has already
    parsed (so well formed); raises IndexError past the end."""
    tag, first = buf[pos], buf[pos + 1]
    if first < 0x80:
        return tag, pos + 2, pos + 2 + first
    start = pos + 2 + (first & 0x7F)
    return tag, start, start + int.from_bytes(buf[pos + 2 : start], "big")


def _tbs_parts(der: bytes) -> tuple[bytes, bytes, bytes, bytes, bool, bytes]:
    """The exact TBSCertificate, issuer, subject and SubjectPublicKeyInfo encodings of a
    certificate (RFC 5280 §4.1), sliced from its DER: nothing is re-encoded; whether the
    serial number is a positive INTEGER (the only thing cryptography warns about on loading);
    and what follows the SubjectPublicKeyInfo in the TBSCertificate (the unique IDs, if any, and
    the extensions). Meaningful only for DER that cryptography parses; raises IndexError past
    the end."""
    _, c, _ = _hdr(der, 0)
    _, t, end = _hdr(der, c)
    tag, serial, pos = _hdr(der, t)  # [0] version, or the serial number (v1)
    if tag == 0xA0:
        tag, serial, pos = _hdr(der, pos)  # serial number
    positive = tag == 0x02 and serial < pos and der[serial] < 0x80 and der[serial:pos].count(0) != pos - serial
    _, _, pos = _hdr(der, pos)  # signature algorithm
    _, _, e = _hdr(der, pos)
    issuer, pos = der[pos:e], e
    _, _, pos = _hdr(der, pos)  # validity
    _, _, e = _hdr(der, pos)
    subject, pos = der[pos:e], e
    _, _, e = _hdr(der, pos)
    if e > end:
        raise IndexError("SubjectPublicKeyInfo past the TBSCertificate")
    return der[c:end], issuer, subject, der[pos:e], positive, der[e:end]


#: RFC 4514 short names of the attributes (2.5.4.<arc>) that Intel's names use, as cryptography
#: renders them; with the length limits under which cryptography renders them without warning.
_NAME_ARCS: Final = {
    arc: (name, lo, hi, name + "=")
    for arc, name, lo, hi in (
        (3, "CN", 1, 64),
        (6, "C", 2, 2),
        (7, "L", 0, 255),
        (8, "ST", 0, 255),
        (10, "O", 0, 255),
        (11, "OU", 0, 255),
    )
}
#: One RDN of a plain name, up to its value: SET, SEQUENCE, OID 2.5.4.<arc in _NAME_ARCS>, tag.
_PLAIN_RDN: Final = re.compile(
    rb"\x31[\x09-\x7f]\x30[\x07-\x7d]\x06\x03\x55\x04[\x03\x06\x07\x08\x0a\x0b][\x0c\x13][\x00-\x76]", re.DOTALL
)
#: Attribute values that RFC 4514 (and cryptography's escaping) leave as they are: as a UTF8String,
#: printable ASCII without the characters it escapes, no space first or last, no "#" first; as a
#: PrintableString, the same within its character set (X.680 §41.4), which cryptography enforces.
_PLAIN_VALUE: Final = re.compile(
    rb"[^\x00-\x20#\\\"+,;<>\x7f-\xff](?:[^\x00-\x1f\\\"+,;<>\x7f-\xff]*[^\x00-\x20\\\"+,;<>\x7f-\xff])?"
)
_PLAIN_PRINTABLE: Final = re.compile(rb"[A-Za-z0-9'()\-./:=?](?:[A-Za-z0-9 '()\-./:=?]*[A-Za-z0-9'()\-./:=?])?")


def _plain_name(raw: bytes) -> tuple[str, str] | None:
    """(RFC 4514 string, first CN) of a DER Name, exactly as cryptography renders them, when the
    name is plain: every RDN one attribute of a type in ``_NAME_ARCS`` whose value is a short
    PrintableString or UTF8String of printable ASCII needing no escape. None otherwise (the
    caller asks cryptography). cryptography decodes every plain name without error."""
    n = len(raw)
    if n < 2 or raw[0] != 0x30:
        return None
    first = raw[1]
    if first < 0x80:
        pos, length = 2, first
    elif first == 0x81 and n > 2:
        pos, length = 3, raw[2]
    elif first == 0x82 and n > 3:
        pos, length = 4, raw[2] << 8 | raw[3]
    else:
        return None
    if pos + length != n:
        return None
    parts: list[str] = []
    cn = ""
    rdn, arcs = _PLAIN_RDN.match, _NAME_ARCS
    while pos < n:
        # SET { SEQUENCE { OID 2.5.4.<arc>, PrintableString | UTF8String } }, all lengths short
        # and consistent: SET = value + 9, SEQUENCE = value + 7.
        m = rdn(raw, pos)
        if m is None:
            return None
        lv, spec = raw[pos + 10], arcs[raw[pos + 8]]
        end = pos + 11 + lv
        if raw[pos + 1] != lv + 9 or raw[pos + 3] != lv + 7 or end > n or not spec[1] <= lv <= spec[2]:
            return None
        if lv and not (_PLAIN_PRINTABLE if raw[pos + 9] == 0x13 else _PLAIN_VALUE).fullmatch(raw, pos + 11, end):
            return None
        text = raw[pos + 11 : end].decode("ascii")
        if spec[0] == "CN" and not cn:
            cn = text
        parts.append(spec[3] + text)
        pos = end
    if not parts:
        return None
    parts.reverse()
    return ",".join(parts), cn


def _rendered_names(cns: Sequence[str]) -> Mapping[bytes, tuple[str, str]]:
    """DER → (RFC 4514 string, CN) for Intel's certificate names (CN, then O=Intel Corporation,
    L=Santa Clara, ST=CA, C=US, encoded as Intel encodes them), rendered once at import by
    cryptography itself: a name that is exactly one of these needs no decoding. This is display
    text only; no trust decision reads it except the CN checks on chain shape, which get the
    same CN cryptography would."""
    out: dict[bytes, tuple[str, str]] = {}
    for cn in cns:
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Intel Corporation"),
                x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
                x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
                x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            ]
        )
        der, text = name.public_bytes(), name.rfc4514_string()
        if _plain_name(der) != (text, cn):  # the general fast path must agree (checked at import)
            raise RuntimeError(f"the name fast path disagrees with cryptography on {text!r}")
        out[der] = (text, cn)
    return types.MappingProxyType(out)


_INTEL_NAMES: Final = _rendered_names(
    (
        "Intel SGX PCK Certificate",
        "Intel SGX PCK Platform CA",
        "Intel SGX PCK Processor CA",
        "Intel SGX TCB Signing",
        "Intel SGX Root CA",
    )
)


def _ymd(t: dt.datetime) -> str:
    """``f"{t:%Y-%m-%d}"``, without strftime for the usual four-digit years."""
    return t.date().isoformat() if t.year >= 1000 else f"{t:%Y-%m-%d}"


def _cn(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


@dataclasses.dataclass(slots=True)
class _Cert:
    """One certificate of a chain, decoded once: everything the checks read, from its exact DER.
    (Not frozen only because a frozen dataclass is slower to build; nothing assigns to it.)"""

    cert: x509.Certificate
    der: bytes
    tbs: bytes  # the signed TBSCertificate, as it is in ``der``
    issuer_der: bytes
    subject_der: bytes
    spki_der: bytes  # as it is in ``der``: identifies the key (memo keys)
    key: object
    hash_alg: hashes.HashAlgorithm | None
    subject: str  # RFC 4514
    cn: str
    not_before: dt.datetime
    not_after: dt.datetime
    #: Set only for the pinned roots decoded at import: their self-signature is proven.
    self_signed: bool = False
    _label: str | None = None
    #: Filled by ``_scan``, in one pass over the extensions, or by ``_decode_cert`` from
    #: ``_intel_extensions``: basicConstraints, keyUsage (each None when absent) and the OID of
    #: the first critical extension that is neither.
    _scanned: bool = False
    _bc: x509.BasicConstraints | None = None
    _ku: x509.KeyUsage | None = None
    _unknown_critical: str | None = None
    #: The SGX extension's value (None: absent), when ``_intel_extensions`` read the extensions.
    _sgx_ext: bytes | None = None

    @property
    def extensions(self) -> x509.Extensions:
        return self.cert.extensions

    @property
    def label(self) -> str:
        """ "subject [from..to]", for display."""
        if self._label is None:
            self._label = f"{self.subject} [{_ymd(self.not_before)}..{_ymd(self.not_after)}]"
        return self._label

    def _scan(self) -> None:
        # cryptography has decoded every extension already (``_decode_cert``); this only reads
        # them. Exact types: cryptography's extension value classes are not subclassed.
        for ext in self.cert.extensions:
            value = ext.value
            kind = type(value)
            if kind is x509.BasicConstraints:
                self._bc = value
            elif kind is x509.KeyUsage:
                self._ku = value
            elif ext.critical and self._unknown_critical is None:
                self._unknown_critical = ext.oid.dotted_string
        self._scanned = True

    def basic_constraints(self) -> x509.BasicConstraints | None:
        if not self._scanned:
            self._scan()
        return self._bc

    def key_usage(self) -> x509.KeyUsage | None:
        if not self._scanned:
            self._scan()
        return self._ku

    def unknown_critical(self) -> str | None:
        """The OID of a critical extension this verifier does not process, if there is one. The
        only critical extensions Intel's SGX/TDX certificates carry are basicConstraints and
        keyUsage (every genuine PCK, PCK CA, TCB Signing and root certificate); both are
        processed (CA flag and path length; the key usages each role needs). The SGX extension
        (1.2.840.113741.1.13.1) is not critical."""
        if not self._scanned:
            self._scan()
        return self._unknown_critical


def _decode_cert(der: bytes, cert: x509.Certificate | None = None) -> _Cert:
    """Decode a certificate and every part of it the checks use, so a malformed one is refused
    here (cryptography decodes lazily; each access may raise one of ``_LAZY_PARSE_ERRORS``, and
    ``_tbs_parts`` IndexError) and not from deep inside a check. The subject is rendered without
    cryptography when it is plain (:func:`_plain_name`).

    cryptography warns about a serial number ≤ 0 when it loads a certificate, and about odd
    attribute lengths when it decodes a name; those warnings are silenced (evidence is not the
    caller's code to fix). Silencing costs more than a decode, so it is done only when one of
    them can happen: a serial that is not positive, or a name that is not plain."""
    tbs, issuer_der, subject_der, spki_der, serial_positive, rest = _tbs_parts(der)
    plain = _INTEL_NAMES.get(subject_der) or _plain_name(subject_der)
    if plain is None or not (serial_positive or cert is not None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if cert is None:
                cert = x509.load_der_x509_certificate(der)
            if plain is None:
                plain = (cert.subject.rfc4514_string(), _cn(cert))
    elif cert is None:
        cert = x509.load_der_x509_certificate(der)
    intel = _intel_extensions(rest)
    if intel is None:
        _ = cert.extensions  # decoded (and cached by cryptography) now, so a bad one fails here
    hash_alg = cert.signature_hash_algorithm
    key = cert.public_key()
    c = _Cert(  # positionally: the fields in order
        cert,
        der,
        tbs,
        issuer_der,
        subject_der,
        spki_der,
        key,
        hash_alg,
        plain[0],
        plain[1],
        cert.not_valid_before_utc,
        cert.not_valid_after_utc,
    )
    if intel is not None:
        c._bc, c._ku, c._sgx_ext = intel
        c._scanned = True
    return c


#: The extensions Intel's SGX/TDX certificates carry, each as one exact DER Extension (RFC 5280
#: §4.1: SEQUENCE {OID, critical, OCTET STRING}) → its decoded value. keyUsage and
#: basicConstraints are critical; each encoding is produced by cryptography itself from the
#: value (DER has one encoding per value), so the map is exactly cryptography's decoding of
#: these bytes.
def _exact_extensions() -> Mapping[bytes, x509.BasicConstraints | x509.KeyUsage]:
    def ku(**bits: bool) -> x509.KeyUsage:
        names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement")
        return x509.KeyUsage(
            **{n: bits.get(n, False) for n in names},
            key_cert_sign=bits.get("key_cert_sign", False),
            crl_sign=bits.get("crl_sign", False),
            encipher_only=False,
            decipher_only=False,
        )

    values: list[x509.BasicConstraints | x509.KeyUsage] = [
        ku(digital_signature=True, content_commitment=True),  # PCK and TCB Signing certificates
        ku(key_cert_sign=True, crl_sign=True),  # the CAs
        x509.BasicConstraints(ca=False, path_length=None),
        x509.BasicConstraints(ca=True, path_length=0),
        x509.BasicConstraints(ca=True, path_length=1),
        x509.BasicConstraints(ca=True, path_length=None),
    ]
    out: dict[bytes, x509.BasicConstraints | x509.KeyUsage] = {}
    for value in values:
        oid = value.oid.dotted_string.split(".")
        if oid[:3] != ["2", "5", "29"]:  # id-ce: the one-byte encoding below
            raise RuntimeError(f"not an id-ce extension: {value.oid.dotted_string}")
        body = b"\x06\x03\x55\x1d" + bytes([int(oid[3])]) + b"\x01\x01\xff"
        inner = value.public_bytes()
        body += bytes([0x04, len(inner)]) + inner
        out[bytes([0x30, len(body)]) + body] = value
    return types.MappingProxyType(out)


_EXACT_EXTENSIONS: Final = _exact_extensions()
_AKI_HEAD: Final = b"\x30\x1f\x06\x03\x55\x1d\x23\x04\x18\x30\x16\x80\x14"  # keyIdentifier only, 20 bytes
_SKI_HEAD: Final = b"\x30\x1d\x06\x03\x55\x1d\x0e\x04\x16\x04\x14"  # 20 bytes
_CRLDP_OID: Final = b"\x06\x03\x55\x1d\x1f"
_SGX_EXT_HEAD: Final = bytes([0x06, len(_SGX_EXT_DER)]) + _SGX_EXT_DER + b"\x04"


def _intel_extensions(rest: bytes) -> tuple[x509.BasicConstraints | None, x509.KeyUsage | None, bytes | None] | None:
    """(basicConstraints, keyUsage, SGX extension value) of a certificate whose extensions are
    exactly of the kinds and encodings Intel uses, read without building cryptography's objects;
    None for anything else (the caller then has cryptography decode them, and the checks read
    those). ``rest`` is what follows the SubjectPublicKeyInfo in the TBSCertificate, which
    cryptography has parsed (so every TLV in it is well formed). Accepted, each at most once, in
    any order: authorityKeyIdentifier (a 20-byte keyIdentifier only), cRLDistributionPoints (one
    distribution point with one URI, short lengths), subjectKeyIdentifier (20 bytes), the
    critical keyUsage and basicConstraints of ``_EXACT_EXTENSIONS``, and the non-critical SGX
    extension (1.2.840.113741.1.13.1, whose value :func:`_decode_sgx_extension` checks). These
    are values cryptography decodes without error, and every one of them is non-critical or
    processed, so none is an unknown critical extension."""
    n = len(rest)
    if n < 4 or rest[0] != 0xA3:  # the extensions, right after the key (no unique IDs)
        return None
    # [3] EXPLICIT SEQUENCE OF Extension: cryptography has checked that both cover the rest.
    first = rest[1]
    pos = 2 if first < 0x80 else 2 + (first & 0x7F)
    if rest[pos] != 0x30:
        return None
    first = rest[pos + 1]
    pos += 2 if first < 0x80 else 2 + (first & 0x7F)
    bc: x509.BasicConstraints | None = None
    ku: x509.KeyUsage | None = None
    sgx: bytes | None = None
    aki = ski = dp = False
    exact = _EXACT_EXTENSIONS.get
    while pos < n:
        if rest[pos] != 0x30:
            return None
        first = rest[pos + 1]
        if first < 0x80:
            nxt = pos + 2 + first
            elem = rest[pos:nxt]
            value = exact(elem)
            if value is not None:
                if type(value) is x509.KeyUsage:
                    if ku is not None:  # a duplicate: cryptography refuses it
                        return None
                    ku = value
                else:
                    if bc is not None:
                        return None
                    bc = value  # type: ignore[assignment]
            elif first == 31 and elem.startswith(_AKI_HEAD):
                if aki:
                    return None
                aki = True
            elif first == 29 and elem.startswith(_SKI_HEAD):
                if ski:
                    return None
                ski = True
            elif elem.startswith(_CRLDP_OID, 2):
                # SEQUENCE {OID, OCTET STRING {SEQUENCE {SEQUENCE {[0] {[0] {[6] URI}}}}}}, all short.
                uri = first - 17
                if (
                    dp
                    or not 0 <= uri < 0x80 - 12
                    or elem[7:19]
                    != bytes((0x04, uri + 10, 0x30, uri + 8, 0x30, uri + 6, 0xA0, uri + 4, 0xA0, uri + 2, 0x86, uri))
                    or not elem[19:].isascii()  # an IA5String
                ):
                    return None
                dp = True
            else:
                return None
        elif first == 0x82 and sgx is None and rest.startswith(_SGX_EXT_HEAD, pos + 4):
            # SEQUENCE {OID, OCTET STRING}, both with two-byte lengths: not critical.
            nxt = pos + 4 + (rest[pos + 2] << 8 | rest[pos + 3])
            h = pos + 4 + len(_SGX_EXT_HEAD)
            if rest[h] != 0x82 or h + 3 + (rest[h + 1] << 8 | rest[h + 2]) != nxt:
                return None
            sgx = rest[h + 3 : nxt]
        else:
            return None
        pos = nxt
    if pos != n or not (aki or ski or dp or bc is not None or ku is not None or sgx is not None):
        return None
    return bc, ku, sgx


_BEGIN_CERT: Final = b"-----BEGIN CERTIFICATE-----"
_END_CERT: Final = b"-----END CERTIFICATE-----"
_FILLER_BYTES: Final = b" \t\n\r\x0b\x0c\x00"  # what _PEM_FILLER matches
_B64_VALUE: Final = {c: i for i, c in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _b64_canonical(b64: bytes) -> bytes | None:
    """Decode ``b64`` if it is canonical base64 (RFC 4648 §3.5: padded to a multiple of 4, only
    the alphabet, zero pad bits), the only form cryptography's PEM parser decodes; else None."""
    if not b64 or len(b64) & 3:
        return None
    try:
        der = binascii.a2b_base64(b64, strict_mode=True)
    except binascii.Error:
        return None
    if b64[-1] == 0x3D:  # "=": the bits below the last character's must be zero
        pad = 2 if b64[-2] == 0x3D else 1
        last = _B64_VALUE.get(b64[-pad - 1])
        if last is None or last & (0x0F if pad == 2 else 0x03):
            return None
    return der


def _pem_64_columns(body: bytes) -> bool:
    """Whether ``body`` (a line break, then lines each ending in one) is in 64-column lines, the
    last one possibly shorter but not empty: RFC 7468's layout, which every PCK and TCB Signing
    chain uses. Such a body has no empty line. (Cheaper than searching it for two line breaks:
    the line breaks at every 65th byte, and no others.)"""
    starts = body[::65]
    if starts.count(b"\n") != len(starts):
        return False
    breaks, tail = body.count(b"\n"), len(body) % 65
    if tail == 1:  # the last line is full: its break is at a multiple of 65 too
        return breaks == len(starts)
    # One more break, the last byte (``body`` ends in one), after a line of 1 to 63 bytes.
    return tail != 2 and breaks == len(starts) + 1


def _pem_ders(pem: bytes) -> list[bytes] | None:
    """The DER of each certificate of a PEM chain in the strict layout (``_PEM_STRICT`` with LF
    line ends: the BEGIN line, non-empty base64 lines, the END line; only whitespace and NULs
    between blocks; canonical base64), which cryptography's PEM parser also accepts and decodes
    to the same bytes. None for anything else (the general path then decides). Checked without
    a regular expression: the blocks are found with ``bytes.find``, their line structure checked
    by their line breaks, their base64 by a strict decoder."""
    if b"\r" in pem:
        return None
    ders: list[bytes] = []
    pos = 0
    while True:
        start = pem.find(_BEGIN_CERT, pos)
        if start < 0:
            break
        if pem[pos:start].strip(_FILLER_BYTES):
            return None
        start += len(_BEGIN_CERT)
        end = pem.find(_END_CERT, start)
        if end < 0:
            return None
        body = pem[start:end]
        if body[:1] != b"\n" or body[-1:] != b"\n" or not (_pem_64_columns(body) or b"\n\n" not in body):
            return None
        der = _INTEL_ROOT_DER if body == _INTEL_ROOT_PEM_BODY else _b64_canonical(body.replace(b"\n", b""))
        if der is None:
            return None
        ders.append(der)
        pos = end + len(_END_CERT)
    if not ders or pem[pos:].strip(_FILLER_BYTES):
        return None
    return ders


@dataclasses.dataclass(frozen=True, slots=True)
class _Chain:
    """A parsed PEM chain (leaf first) and what every verification needs of it, computed once per
    exact bytes."""

    pem: bytes
    items: tuple[_Cert, ...]
    root_spki_sha256: bytes  # SHA-256 of the root's DER SubjectPublicKeyInfo: how roots are pinned

    @property
    def certs(self) -> tuple[x509.Certificate, ...]:
        return tuple(c.cert for c in self.items)

    @property
    def cns(self) -> tuple[str, ...]:
        return tuple(c.cn for c in self.items)

    @property
    def labels(self) -> tuple[str, ...]:
        """ "subject [from..to]" of each certificate, for display."""
        return tuple(c.label for c in self.items)

    @property
    def not_before(self) -> dt.datetime:
        """The start of the overlap of every certificate's validity."""
        return max([c.not_before for c in self.items])

    @property
    def not_after(self) -> dt.datetime:
        return min([c.not_after for c in self.items])

    def p256(self, i: int, *, platform: str, what: str) -> ec.EllipticCurvePublicKey:
        key = self.items[i].key
        if not _is_p256(key):
            raise _fail(_R.UNSUPPORTED, f"{what} key is not ECDSA P-256", platform=platform, field=what)
        return key


_new_chain = _record(_Chain)


#: Intel SGX Root CA (fixtures/attestation/sgx/intel_sgx_root_ca.der, DER SHA-256 44A0196B…74D3),
#: the certificate every genuine PCK and TCB Signing chain ends with. It is decoded and its
#: self-signature checked once, at import; a chain whose last certificate is exactly these bytes
#: reuses that. Whether it is *trusted* is still decided per call, by ``roots``.
_INTEL_ROOTS_KEY: Final = tuple(sorted(INTEL_ROOTS.items()))

_INTEL_ROOT_DER: Final = base64.b64decode(
    "MIICjzCCAjSgAwIBAgIUImUM1lqdNInzg7SVUr9QGzknBqwwCgYIKoZIzj0EAwIwaDEaMBgGA1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0Ex"
    "GjAYBgNVBAoMEUludGVsIENvcnBvcmF0aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJBgNVBAYTAlVTMB4X"
    "DTE4MDUyMTEwNDUxMFoXDTQ5MTIzMTIzNTk1OVowaDEaMBgGA1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENv"
    "cnBvcmF0aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJBgNVBAYTAlVTMFkwEwYHKoZIzj0CAQYIKoZIzj0D"
    "AQcDQgAEC6nEwMDIYZOj/iPWsCzaEKi71OiOSLRFhWGjbnBVJfVnkY4u3IjkDYYL0MxO4mqsyYjlBalTVYxFP2sJBK5zlKOBuzCBuDAf"
    "BgNVHSMEGDAWgBQiZQzWWp00ifODtJVSv1AbOScGrDBSBgNVHR8ESzBJMEegRaBDhkFodHRwczovL2NlcnRpZmljYXRlcy50cnVzdGVk"
    "c2VydmljZXMuaW50ZWwuY29tL0ludGVsU0dYUm9vdENBLmRlcjAdBgNVHQ4EFgQUImUM1lqdNInzg7SVUr9QGzknBqwwDgYDVR0PAQH/"
    "BAQDAgEGMBIGA1UdEwEB/wQIMAYBAf8CAQEwCgYIKoZIzj0EAwIDSQAwRgIhAOW/5QkR+S9CiSDcNoowLuPRLsWGf/Yi7GSX94BgwTwg"
    "AiEA4J0lrHoMs+Xo5o/sX6O9QWxHRAvZUGOdRQ7cvqRXaqI="
)


#: Its PEM body (64-column lines, LF), as the genuine chains carry it: recognised without decoding.
_INTEL_ROOT_PEM_BODY: Final = (
    b"\n"
    + b"\n".join(base64.b64encode(_INTEL_ROOT_DER)[i : i + 64] for i in range(0, 4 * -(-len(_INTEL_ROOT_DER) // 3), 64))
    + b"\n"
)


def _decode_pinned_root(der: bytes) -> tuple[_Cert, bytes]:
    # At import, on our own constant: any failure here is a broken package, never input.
    if hashlib.sha256(der).hexdigest() != "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3":
        raise RuntimeError("the pinned Intel root certificate is not the expected one")
    root = _decode_cert(der)
    key = root.key
    if not (isinstance(key, ec.EllipticCurvePublicKey) and root.hash_alg is not None and root.issuer_der == root.subject_der):
        raise RuntimeError("the pinned Intel root is not a self-issued EC certificate")
    key.verify(root.cert.signature, root.tbs, ec.ECDSA(root.hash_alg))  # raises if it were not self-signed
    spki = hashlib.sha256(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest()
    if INTEL_ROOTS.get(spki) != "intel-sgx-root-ca":
        raise RuntimeError("the pinned Intel root's key is not in INTEL_ROOTS")
    root.self_signed = True
    _ = root.basic_constraints(), root.label  # looked up and rendered once, here
    return root, spki


#: DER → (decoded root, SHA-256 of its SPKI), for the roots proven at import.
_KNOWN_ROOTS: Final[Mapping[bytes, tuple[_Cert, bytes]]] = types.MappingProxyType(
    {_INTEL_ROOT_DER: _decode_pinned_root(_INTEL_ROOT_DER)}
)


def _pem_chain(pem: bytes, *, platform: str, what: str) -> _Chain:
    """Certificates of a PEM chain. Besides the certificate blocks only whitespace and NULs (the
    QE NUL-terminates the chain) may appear: other bytes would be unsigned, ignored content."""

    def load() -> _Chain:
        ders = _pem_ders(pem)
        certs: list[x509.Certificate | None]
        if ders is None:
            if not _PEM_FILLER.fullmatch(_PEM_BLOCK.sub(b"", pem)):
                raise _fail(_R.MALFORMED, f"{what}: bytes outside the PEM certificate blocks", platform=platform, field=what)
            try:
                # load_pem_chain turns ValueError into MALFORMED; InvalidVersion is not a ValueError.
                loaded = load_pem_chain(pem, platform=platform, what=what)
            except x509.InvalidVersion as e:
                raise _fail(_R.MALFORMED, f"{what}: {e}", platform=platform, field=what) from None
            certs = list(loaded)
            ders = [c.public_bytes(serialization.Encoding.DER) for c in loaded]
        else:
            certs = [None] * len(ders)
        items: list[_Cert] = []
        root_spki: bytes | None = None
        try:
            for i, (der, cert) in enumerate(zip(ders, certs, strict=True)):
                known = _KNOWN_ROOTS.get(der) if i == len(ders) - 1 else None
                if known is not None:
                    items.append(known[0])
                    root_spki = known[1]
                else:
                    items.append(_decode_cert(der, cert))  # silences the warnings loading may cause
            # An issuer name that is not byte for byte the next certificate's subject (which
            # decoded) is decoded too: a chain check compares it.
            for i, c in enumerate(items):
                nxt = items[i + 1] if i + 1 < len(items) else c
                if c.issuer_der != nxt.subject_der:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # odd attribute lengths are warned about
                        _ = c.cert.issuer
            if root_spki is None:
                root_key = items[-1].cert.public_key()
                root_spki = hashlib.sha256(
                    root_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
                ).digest()
        except (*_LAZY_PARSE_ERRORS, IndexError) as e:
            raise _fail(
                _R.MALFORMED, f"{what}: undecodable certificate ({type(e).__name__}: {e})", platform=platform, field=what
            ) from None
        return _new_chain(pem, tuple(items), root_spki)

    return _PEM_CHAINS.get(pem, load)


#: cryptography's EC public key class. ``isinstance`` against its ABC goes through ABCMeta (slow);
#: the exact class is checked first, the ABC only for anything else.
_EC_PUBLIC_KEY_CLASS: Final = type(ec.derive_private_key(1, ec.SECP256R1()).public_key())


def _is_p256(key: object) -> TypeGuard[ec.EllipticCurvePublicKey]:
    if type(key) is _EC_PUBLIC_KEY_CLASS or isinstance(key, ec.EllipticCurvePublicKey):
        curve = key.curve
        return type(curve) is ec.SECP256R1 or isinstance(curve, ec.SECP256R1)
    return False


#: ECDSA with each hash algorithm a certificate may name, built once.
_ECDSA_WITH: Final[Mapping[type[hashes.HashAlgorithm], ec.ECDSA]] = {
    h: ec.ECDSA(h()) for h in (hashes.SHA256, hashes.SHA384, hashes.SHA512)
}


def _roots_key(roots: Mapping[bytes, str]) -> tuple[tuple[bytes, str], ...]:
    return _INTEL_ROOTS_KEY if roots is INTEL_ROOTS else tuple(sorted(roots.items()))  # INTEL_ROOTS is read-only


def _issued_by(cert: _Cert, issuer: _Cert, *, platform: str, what: str) -> None:
    """:func:`.x509chain.verify_issued_by` on decoded certificates: names compared as encoded
    (as decoded when the encodings differ), the signature over the TBSCertificate as encoded."""
    if cert.issuer_der != issuer.subject_der and cert.cert.issuer != issuer.cert.subject:
        raise _fail(_R.CHAIN_INVALID, f"{what}: issuer name does not match", platform=platform, field=what)
    key, hash_alg = issuer.key, cert.hash_alg
    if hash_alg is None or not (type(key) is _EC_PUBLIC_KEY_CLASS or isinstance(key, ec.EllipticCurvePublicKey)):
        verify_issued_by(cert.cert, issuer.cert, platform=platform, what=what)  # RSA, or refused there
        return
    check = functools.partial(key.verify, cert.cert.signature, cert.tbs, _ECDSA_WITH.get(type(hash_alg)) or ec.ECDSA(hash_alg))
    try:
        holds = signature_holds(check)
    except UnsupportedAlgorithm:
        raise _fail(_R.UNSUPPORTED, f"{what}: signature algorithm", platform=platform, field=what) from None
    if not holds:
        raise _fail(_R.BAD_SIGNATURE, f"{what}: certificate signature", platform=platform, field=what)


def _check_validity(c: _Cert, at: dt.datetime, *, platform: str, what: str) -> None:
    if at < c.not_before:
        raise _fail(_R.CERT_NOT_YET_VALID, f"{what} valid from {c.not_before.isoformat()}", platform=platform, field=what)
    if at > c.not_after:
        raise _fail(_R.CERT_EXPIRED, f"{what} expired {c.not_after.isoformat()}", platform=platform, field=what)


def _verify_chain(chain: _Chain, *, roots: Mapping[bytes, str], at: dt.datetime, platform: str, names: Sequence[str]) -> str:
    """:func:`.x509chain.verify_chain` on a decoded chain, check for check and in its order: root
    key pinned, root self-signed, each certificate signed by the next, CA flag (and path length)
    on every issuer, all valid at ``at``; and, for Intel's chains, [RFC5280] §4.2 in full: no
    certificate carries a critical extension other than basicConstraints and keyUsage, and where
    keyUsage is present it allows the certificate's role (keyCertSign on every issuer,
    digitalSignature on the leaf, which signs the QE report or the collateral JSON). Returns
    the pinned root's name."""
    items = chain.items
    root = items[-1]
    root_name = roots.get(chain.root_spki_sha256)
    if root_name is None:
        raise _fail(
            _R.UNTRUSTED_ROOT,
            f"root key {chain.root_spki_sha256.hex()[:16]}… is not pinned",
            platform=platform,
            field=names[-1],
        )
    try:
        if not root.self_signed:
            _issued_by(root, root, platform=platform, what=names[-1])
        for i, c in enumerate(items):
            unknown = c.unknown_critical()
            if unknown is not None:
                raise _fail(
                    _R.CHAIN_INVALID,
                    f"{names[i]} has a critical extension {unknown} this verifier does not process",
                    platform=platform,
                    field=names[i],
                )
            ku = c.key_usage()
            if ku is not None and not (ku.key_cert_sign if i else ku.digital_signature):
                use = "certificate signing" if i else "digital signatures"
                raise _fail(_R.CHAIN_INVALID, f"{names[i]} keyUsage does not allow {use}", platform=platform, field=names[i])
        for i in range(len(items) - 1):
            bc = items[i + 1].basic_constraints()
            if bc is None or not bc.ca:
                raise _fail(_R.CHAIN_INVALID, f"{names[i + 1]} is not a CA", platform=platform, field=names[i + 1])
            # RFC 5280 §4.2.1.9: at most path_length CA certificates may follow this one.
            if bc.path_length is not None and i > bc.path_length:
                raise _fail(
                    _R.CHAIN_INVALID,
                    f"{names[i + 1]} path length {bc.path_length} exceeded",
                    platform=platform,
                    field=names[i + 1],
                )
            _issued_by(items[i], items[i + 1], platform=platform, what=names[i])
    except AttestationError:
        raise
    except _LAZY_PARSE_ERRORS as e:
        raise _fail(_R.MALFORMED, f"certificate: {type(e).__name__}", platform=platform) from None
    for c, label in zip(items, names, strict=True):
        if not c.not_before <= at <= c.not_after:  # the call only to say which bound failed
            _check_validity(c, at, platform=platform, what=label)
    return root_name


def _verify_chain_memo(chain: _Chain, *, roots: Mapping[bytes, str], at: dt.datetime, platform: str, names: Sequence[str]) -> str:
    """``_verify_chain`` at ``at``; once a chain (by its exact bytes) has passed under these pins,
    only the part that depends on ``at`` — every certificate's validity — is checked again."""
    done: list[str] = []

    def first_time() -> str:
        done.append(_verify_chain(chain, roots=roots, at=at, platform=platform, names=names))
        return done[0]

    root_name = _CHAIN_SIGS.get((chain.pem, _roots_key(roots)), first_time)
    if not done:
        for c, label in zip(chain.items, names, strict=True):
            if not c.not_before <= at <= c.not_after:  # the call only to say which bound failed
                _check_validity(c, at, platform=platform, what=label)
    return root_name


class _BadSignature(Exception):
    """Internal: a signature check failed (raised inside a memoised check so nothing is stored)."""


_ECDSA_SHA256: Final = ec.ECDSA(hashes.SHA256())
_ECDSA_PREHASHED_SHA256: Final = ec.ECDSA(utils.Prehashed(hashes.SHA256()))


def _dss_der(sig: bytes) -> bytes:
    """The DER ECDSA-Sig-Value (RFC 3279 §2.2.3) of a 64-byte ``r‖s``: each half as a minimal
    non-negative INTEGER; what ``utils.encode_dss_signature`` gives for the two numbers."""
    r = sig[:32].lstrip(b"\x00")
    s = sig[32:].lstrip(b"\x00")
    if not r or r[0] & 0x80:
        r = b"\x00" + r
    if not s or s[0] & 0x80:
        s = b"\x00" + s
    return bytes((0x30, len(r) + len(s) + 4, 0x02, len(r))) + r + bytes((0x02, len(s))) + s


def _raw_sig_valid(key: ec.EllipticCurvePublicKey, data: bytes, sig: bytes, *, digest: bytes | None = None) -> bool:
    """ECDSA P-256/SHA-256 with a raw 64-byte ``r‖s`` signature (over ``data``, whose SHA-256
    ``digest`` may be given when already computed)."""
    der = _dss_der(sig)
    if digest is None:
        return signature_holds(functools.partial(key.verify, der, data, _ECDSA_SHA256))
    return signature_holds(functools.partial(key.verify, der, digest, _ECDSA_PREHASHED_SHA256))


def _sig_ok(key: ec.EllipticCurvePublicKey, key_id: bytes, data: bytes, sig: bytes) -> bool:
    """ECDSA P-256/SHA-256 with a raw ``r‖s`` signature, how every DCAP structure is signed.
    Memoised by (key, SHA-256 of the data, signature): a signature check never changes its mind."""
    if len(sig) != _SIG_LEN:
        return False
    digest = hashlib.sha256(data).digest()

    def check() -> bool:
        if not _raw_sig_valid(key, data, sig, digest=digest):
            raise _BadSignature
        return True

    try:
        return _SIG_OK.get((key_id, digest, sig), check)
    except _BadSignature:
        return False


# -- collateral -------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Collateral:
    """What a verifier needs besides the quote to assess its TCB ([PCS]; [QVL] 4.1.2.4).

    ``tcb_info`` and ``qe_identity`` are the *exact* JSON text Intel signed (the ``tcbInfo`` /
    ``enclaveIdentity`` member as it appears in the PCS response); their signatures are the raw
    64-byte ``r‖s``; the issuer chains are PEM (TCB Signing certificate, then the root). CRLs are
    DER. The QE identity and the CRLs are optional (PCS-format samples often lack them): what was
    not given is not checked, and the verdict's fields say so.
    """

    tcb_info: str
    tcb_info_signature: bytes
    tcb_info_issuer_chain: bytes
    qe_identity: str | None = None
    qe_identity_signature: bytes | None = None
    qe_identity_issuer_chain: bytes | None = None
    root_ca_crl: bytes | None = None
    pck_crl: bytes | None = None
    #: Carried for completeness: the PCK CRL is checked with the quote's own PCK CA, which has
    #: already been proven to chain to a pinned root.
    pck_crl_issuer_chain: bytes | None = None

    def __post_init__(self) -> None:
        if len(self.tcb_info_signature) != _SIG_LEN:
            raise _fail(_R.COLLATERAL_INVALID, "TCB info signature is not 64 bytes", platform="dcap", field="tcb_info_signature")
        qe = (self.qe_identity, self.qe_identity_signature, self.qe_identity_issuer_chain)
        if any(v is None for v in qe) and any(v is not None for v in qe):
            raise _fail(
                _R.COLLATERAL_INVALID, "QE identity needs its signature and issuer chain", platform="dcap", field="qe_identity"
            )
        if self.qe_identity_signature is not None and len(self.qe_identity_signature) != _SIG_LEN:
            raise _fail(
                _R.COLLATERAL_INVALID, "QE identity signature is not 64 bytes", platform="dcap", field="qe_identity_signature"
            )


def _coll_fail(detail: str, field: str = "") -> AttestationError:
    return _fail(_R.COLLATERAL_INVALID, detail, platform="dcap", field=field)


def _hexbytes(v: object, field: str, n: int | None = None) -> bytes:
    if isinstance(v, str):
        try:
            out = bytes.fromhex(v)
        except ValueError:
            raise _coll_fail("not hex", field) from None
    else:
        raise _coll_fail(f"must be a hex string, is {type(v).__name__}", field)
    if n is not None and len(out) != n:
        raise _coll_fail(f"must be {n} bytes, is {len(out)}", field)
    return out


def load_collateral(data: bytes | str) -> Collateral:
    """Collateral in dcap-qvl's ``QuoteCollateralV3`` JSON (the ``dcapqvl_*_collateral.json``
    files): ``tcb_info``/``qe_identity`` as signed JSON text, ``*_signature`` and the CRLs as hex
    (DER CRLs), ``*_issuer_chain`` as PEM. All nine keys are required.

    Raises:
        AttestationError: COLLATERAL_INVALID.
    """
    text = _text(data, "collateral")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise _coll_fail(f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise _coll_fail("not a JSON object")
    keys = (
        "pck_crl_issuer_chain",
        "root_ca_crl",
        "pck_crl",
        "tcb_info_issuer_chain",
        "tcb_info",
        "tcb_info_signature",
        "qe_identity_issuer_chain",
        "qe_identity",
        "qe_identity_signature",
    )
    missing = [k for k in keys if k not in doc]
    if missing:
        raise _coll_fail(f"missing {missing}")
    for k in ("pck_crl_issuer_chain", "tcb_info_issuer_chain", "tcb_info", "qe_identity_issuer_chain", "qe_identity"):
        if not isinstance(doc[k], str):
            raise _coll_fail("must be a string", k)
    return Collateral(
        tcb_info=doc["tcb_info"],
        tcb_info_signature=_hexbytes(doc["tcb_info_signature"], "tcb_info_signature", _SIG_LEN),
        tcb_info_issuer_chain=doc["tcb_info_issuer_chain"].encode(),
        qe_identity=doc["qe_identity"],
        qe_identity_signature=_hexbytes(doc["qe_identity_signature"], "qe_identity_signature", _SIG_LEN),
        qe_identity_issuer_chain=doc["qe_identity_issuer_chain"].encode(),
        root_ca_crl=_hexbytes(doc["root_ca_crl"], "root_ca_crl"),
        pck_crl=_hexbytes(doc["pck_crl"], "pck_crl"),
        pck_crl_issuer_chain=doc["pck_crl_issuer_chain"].encode(),
    )


_JSON_WS: Final = re.compile(r"[ \t\n\r]*")


def _ws(text: str, pos: int) -> int:
    m = _JSON_WS.match(text, pos)
    return pos if m is None else m.end()  # it matches the empty string: never None


def _raw_members(text: str, field: str) -> dict[str, str]:
    """The top-level members of a JSON object as their exact source text. A PCS response body is
    ``{"tcbInfo": {...}, "signature": "..."}`` and the signature covers the bytes of the first
    member's value exactly as sent, so it must not be re-serialised. Duplicate keys are refused:
    two parsers could pick different ones."""
    dec = json.JSONDecoder()
    members: dict[str, str] = {}
    try:
        pos = _ws(text, 0)
        if text[pos : pos + 1] != "{":
            raise ValueError("not a JSON object")
        pos = _ws(text, pos + 1)
        if text[pos : pos + 1] == "}":
            pos += 1
        else:
            while True:
                key, pos = dec.raw_decode(text, pos)
                if not isinstance(key, str):
                    raise ValueError("key is not a string")
                pos = _ws(text, pos)
                if text[pos : pos + 1] != ":":
                    raise ValueError("':' expected")
                start = _ws(text, pos + 1)
                _, end = dec.raw_decode(text, start)
                if key in members:
                    raise ValueError(f"duplicate key {key!r}")
                members[key] = text[start:end]
                pos = _ws(text, end)
                if text[pos : pos + 1] == ",":
                    pos = _ws(text, pos + 1)
                    continue
                if text[pos : pos + 1] != "}":
                    raise ValueError("',' or '}' expected")
                pos += 1
                break
        if _ws(text, pos) != len(text):
            raise ValueError("data after the object")
    except (ValueError, RecursionError) as e:
        raise _coll_fail(f"not a JSON object: {e}", field) from None
    return members


def _text(data: bytes | str, field: str) -> str:
    if isinstance(data, str):
        return data
    try:
        return bytes(data).decode("utf-8", "strict")
    except UnicodeDecodeError as e:
        raise _coll_fail(f"not UTF-8: {e}", field) from None


def _pcs_signed(body: bytes | str, member: str, field: str) -> tuple[str, bytes]:
    text = _text(body, field)
    members = _raw_members(text, field)
    if set(members) != {member, "signature"}:
        raise _coll_fail(f"expected exactly {member!r} and 'signature', found {sorted(members)}", field)
    sig = json.loads(members["signature"])
    return members[member], _hexbytes(sig, f"{field}.signature", _SIG_LEN)


def _crl_der(data: bytes | None, field: str) -> bytes | None:
    if data is None:
        return None
    if data.lstrip().startswith(b"-----BEGIN X509 CRL-----"):
        try:
            return x509.load_pem_x509_crl(data).public_bytes(serialization.Encoding.DER)
        except (ValueError, x509.InvalidVersion) as e:
            raise _coll_fail(f"not a PEM CRL: {e}", field) from None
    return bytes(data)


def load_pcs_collateral(
    *,
    tcb_info: bytes | str,
    tcb_signing_chain: bytes | str,
    qe_identity: bytes | str | None = None,
    root_crl: bytes | None = None,
    pck_crl: bytes | None = None,
) -> Collateral:
    """Collateral from Intel PCS responses ([PCS] v4): the ``/tcb`` body ``{"tcbInfo", "signature"}``,
    the ``/qe/identity`` body ``{"enclaveIdentity", "signature"}``, the CRLs (DER or PEM) and the
    TCB Signing chain, which PCS sends in the ``TCB-Info-Issuer-Chain`` header rather than in the
    body (the same chain signs the QE identity).

    Raises:
        AttestationError: COLLATERAL_INVALID.
    """
    chain = tcb_signing_chain.encode() if isinstance(tcb_signing_chain, str) else bytes(tcb_signing_chain)
    tcb_raw, tcb_sig = _pcs_signed(tcb_info, "tcbInfo", "tcb_info")
    qe_raw: str | None = None
    qe_sig: bytes | None = None
    if qe_identity is not None:
        qe_raw, qe_sig = _pcs_signed(qe_identity, "enclaveIdentity", "qe_identity")
    return Collateral(
        tcb_info=tcb_raw,
        tcb_info_signature=tcb_sig,
        tcb_info_issuer_chain=chain,
        qe_identity=qe_raw,
        qe_identity_signature=qe_sig,
        qe_identity_issuer_chain=chain if qe_raw is not None else None,
        root_ca_crl=_crl_der(root_crl, "root_ca_crl"),
        pck_crl=_crl_der(pck_crl, "pck_crl"),
    )


# -- TCB info and QE identity ([PCS]) -----------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TcbLevel:
    """One TCB level. For QE and TDX-module identities only ``isvsvn`` is set."""

    sgx_svns: tuple[int, ...] = ()
    pcesvn: int = 0
    tdx_svns: tuple[int, ...] | None = None
    isvsvn: int = 0
    tcb_date: str
    status: str
    advisory_ids: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TdxModuleIdentity:
    id: str
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes
    levels: tuple[TcbLevel, ...]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TcbInfo:
    """A tcbInfo v3 body ([PCS] "Get TCB Info"); levels in Intel's order, best first."""

    id: str
    version: int
    issue_date: dt.datetime
    next_update: dt.datetime
    fmspc: bytes
    pce_id: bytes
    tcb_type: int
    evaluation_data_number: int
    levels: tuple[TcbLevel, ...]
    tdx_module: TdxModuleIdentity | None
    tdx_module_identities: tuple[TdxModuleIdentity, ...]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class QeIdentity:
    """An enclaveIdentity v2 body ([PCS] "Get Quoting Enclave Identity")."""

    id: str
    version: int
    issue_date: dt.datetime
    next_update: dt.datetime
    evaluation_data_number: int
    miscselect: bytes
    miscselect_mask: bytes
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isvprodid: int
    levels: tuple[TcbLevel, ...]


_new_tcb_level = _record(TcbLevel)
_new_module = _record(TdxModuleIdentity)
_new_tcb_info = _record(TcbInfo)
_new_qe_identity = _record(QeIdentity)


def _obj(v: object, field: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _coll_fail("must be an object", field)
    return v


def _int(d: Mapping[str, Any], key: str, field: str, hi: int = 2**32 - 1) -> int:
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= hi:
        raise _coll_fail(f"{key} must be an integer in 0..{hi}", f"{field}.{key}")
    return v


def _str(d: Mapping[str, Any], key: str, field: str) -> str:
    v = d.get(key)
    if not isinstance(v, str):
        raise _coll_fail(f"{key} must be a string", f"{field}.{key}")
    return v


def _date(d: Mapping[str, Any], key: str, field: str) -> dt.datetime:
    s = _str(d, key, field)
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError:
        raise _coll_fail(f"{key} is not an ISO 8601 time: {s!r}", f"{field}.{key}") from None
    if t.tzinfo is None:
        raise _coll_fail(f"{key} has no time zone", f"{field}.{key}")
    return t.astimezone(dt.UTC)


def _list(d: Mapping[str, Any], key: str, field: str, *, optional: bool = False) -> list[Any]:
    v = d.get(key)
    if v is None and optional:
        return []
    if not isinstance(v, list):
        raise _coll_fail(f"{key} must be a list", f"{field}.{key}")
    return v


def _level_common(lv: Mapping[str, Any], field: str) -> dict[str, Any]:
    status = _str(lv, "tcbStatus", field)
    if status not in _LEVEL_STATUSES:
        raise _coll_fail(f"unknown tcbStatus {status!r}", f"{field}.tcbStatus")
    advisories = _list(lv, "advisoryIDs", field, optional=True)
    if not all(isinstance(a, str) for a in advisories):
        raise _coll_fail("advisoryIDs must be strings", f"{field}.advisoryIDs")
    return {"tcb_date": _str(lv, "tcbDate", field), "status": status, "advisory_ids": tuple(advisories)}


# The fast paths below accept exactly what the field-by-field checks accept (parsed JSON has
# exact types, so ``type(x) is int`` is ``isinstance(x, int) and not a bool``), in a few C-level
# operations; on anything else they return None and the field-by-field checks raise the error.
_GET_SVN: Final = operator.itemgetter("svn")


def _svns_fast(v: object, bools: bool = True) -> tuple[int, ...] | None:
    """16 ``{"svn": 0..255}``. ``bools=False``: the JSON text has no ``true``/``false`` at all,
    so no value can be a bool (which ``bytes()`` would take for 0 or 1)."""
    if type(v) is list and len(v) == 16:
        try:
            svns = tuple(map(_GET_SVN, v))  # TypeError unless every component is a dict
            bytes(svns)  # TypeError unless all are ints (or bools), ValueError unless in 0..255
        except (TypeError, KeyError, ValueError):
            return None
        if not bools or set(map(type, svns)) == {int}:
            return svns
    return None


def _svns(v: object, field: str) -> tuple[int, ...]:
    svns = _svns_fast(v)
    if svns is not None:
        return svns
    if not isinstance(v, list) or len(v) != 16:
        raise _coll_fail("must list 16 components", field)
    return tuple(_int(_obj(c, field), "svn", field, 255) for c in v)


def _common_fast(lv: dict[str, Any]) -> tuple[str, str, tuple[str, ...]] | None:
    """(tcbDate, tcbStatus, advisoryIDs) of a level, or None (see ``_level_common``)."""
    status, date, advisories = lv.get("tcbStatus"), lv.get("tcbDate"), lv.get("advisoryIDs")
    if type(status) is not str or status not in _LEVEL_STATUSES or type(date) is not str:
        return None
    if advisories is None:
        return date, status, ()
    if type(advisories) is not list or set(map(type, advisories)) - {str}:
        return None
    return date, status, tuple(advisories)


def _isv_level_fast(lv: object) -> TcbLevel | None:
    if type(lv) is not dict:
        return None
    tcb, common = lv.get("tcb"), _common_fast(lv)
    if type(tcb) is not dict or common is None:
        return None
    isvsvn = tcb.get("isvsvn")
    if type(isvsvn) is not int or not 0 <= isvsvn <= 0xFFFF:
        return None
    return _new_tcb_level((), 0, None, isvsvn, *common)


def _tcb_level_fast(lv: object, tdx: bool, bools: bool) -> TcbLevel | None:
    # _common_fast and, for SGX, _svns_fast written out: this runs for every level of every TCB
    # info, and a Python call costs as much as the checks it would wrap.
    if type(lv) is not dict:
        return None
    tcb, status, date, advisories = lv.get("tcb"), lv.get("tcbStatus"), lv.get("tcbDate"), lv.get("advisoryIDs")
    if type(tcb) is not dict or type(status) is not str or status not in _LEVEL_STATUSES or type(date) is not str:
        return None
    if advisories is None:
        advisories = ()
    elif type(advisories) is not list or set(map(type, advisories)) - {str}:
        return None
    comps, pcesvn = tcb.get("sgxtcbcomponents"), tcb.get("pcesvn")
    if type(comps) is not list or len(comps) != 16 or type(pcesvn) is not int or not 0 <= pcesvn <= 0xFFFF:
        return None
    try:
        sgx_svns = tuple(map(_GET_SVN, comps))  # TypeError unless every component is a dict
        bytes(sgx_svns)  # TypeError unless all are ints (or bools), ValueError unless in 0..255
    except (TypeError, KeyError, ValueError):
        return None
    if bools and set(map(type, sgx_svns)) != {int}:
        return None
    tdx_svns = None
    if tdx:
        tdx_svns = _svns_fast(tcb.get("tdxtcbcomponents"), bools)
        if tdx_svns is None:
            return None
    return _new_tcb_level(sgx_svns, pcesvn, tdx_svns, 0, date, status, tuple(advisories))


def _isv_levels(levels: list[Any], field: str) -> tuple[TcbLevel, ...]:
    out = []
    for i, lv in enumerate(levels):
        level = _isv_level_fast(lv)
        if level is None:
            f = f"{field}[{i}]"
            lv = _obj(lv, f)
            level = TcbLevel(isvsvn=_int(_obj(lv.get("tcb"), f + ".tcb"), "isvsvn", f + ".tcb", 0xFFFF), **_level_common(lv, f))
        out.append(level)
    return tuple(out)


def _module(d: Mapping[str, Any], field: str, ident: str) -> TdxModuleIdentity:
    mrsigner, attributes, mask, levels = d.get("mrsigner"), d.get("attributes"), d.get("attributesMask"), d.get("tcbLevels")
    if type(mrsigner) is str and type(attributes) is str and type(mask) is str and type(levels) is list:
        try:  # the common case; anything else is refused below, field by field
            raw = bytes.fromhex(mrsigner), bytes.fromhex(attributes), bytes.fromhex(mask)
        except ValueError:
            pass
        else:
            parsed = []
            for lv in levels:
                level = _isv_level_fast(lv)
                if level is None:
                    break
                parsed.append(level)
            else:
                if len(raw[0]) == 48 and len(raw[1]) == 8 and len(raw[2]) == 8:
                    return _new_module(ident, *raw, tuple(parsed))
    return _new_module(
        id=ident,
        mrsigner=_hexbytes(d.get("mrsigner"), f"{field}.mrsigner", 48),
        attributes=_hexbytes(d.get("attributes"), f"{field}.attributes", 8),
        attributes_mask=_hexbytes(d.get("attributesMask"), f"{field}.attributesMask", 8),
        levels=_isv_levels(_list(d, "tcbLevels", field, optional=True), f"{field}.tcbLevels"),
    )


def _parse_tcb_info(raw: str) -> TcbInfo:
    f = "tcb_info"
    try:
        doc = _obj(json.loads(raw), f)
    except (ValueError, RecursionError) as e:
        raise _coll_fail(f"not JSON: {e}", f) from None
    version = _int(doc, "version", f)
    if version != 3:
        raise _coll_fail(f"TCB info version {version} (only 3)", f + ".version")
    ident = _str(doc, "id", f)
    if ident not in ("SGX", "TDX"):
        raise _coll_fail(f"TCB info id {ident!r}", f + ".id")
    tcb_type = _int(doc, "tcbType", f)
    if tcb_type != 0:
        # [PCS]: type 0 compares the 16 SVNs one by one; no other type is defined.
        raise _coll_fail(f"tcbType {tcb_type} (only 0)", f + ".tcbType")
    levels = []
    tdx = ident == "TDX"
    bools = "true" in raw or "false" in raw
    for i, lv in enumerate(_list(doc, "tcbLevels", f)):
        level = _tcb_level_fast(lv, tdx, bools)
        if level is not None:
            levels.append(level)
            continue
        lf = f"{f}.tcbLevels[{i}]"
        lv = _obj(lv, lf)
        tcb = _obj(lv.get("tcb"), lf + ".tcb")
        tdx_svns = _svns(tcb.get("tdxtcbcomponents"), lf + ".tcb.tdxtcbcomponents") if tdx else None
        levels.append(
            TcbLevel(
                sgx_svns=_svns(tcb.get("sgxtcbcomponents"), lf + ".tcb.sgxtcbcomponents"),
                pcesvn=_int(tcb, "pcesvn", lf + ".tcb", 0xFFFF),
                tdx_svns=tdx_svns,
                **_level_common(lv, lf),
            )
        )
    module = None
    if "tdxModule" in doc:
        module = _module(_obj(doc["tdxModule"], f + ".tdxModule"), f + ".tdxModule", "tdxModule")
    identities = []
    for i, m in enumerate(_list(doc, "tdxModuleIdentities", f, optional=True)):
        mf = f"{f}.tdxModuleIdentities[{i}]"
        m = _obj(m, mf)
        identities.append(_module(m, mf, _str(m, "id", mf).upper()))
    return _new_tcb_info(
        id=ident,
        version=version,
        issue_date=_date(doc, "issueDate", f),
        next_update=_date(doc, "nextUpdate", f),
        fmspc=_hexbytes(doc.get("fmspc"), f + ".fmspc", 6),
        pce_id=_hexbytes(doc.get("pceId"), f + ".pceId", 2),
        tcb_type=tcb_type,
        evaluation_data_number=_int(doc, "tcbEvaluationDataNumber", f),
        levels=tuple(levels),
        tdx_module=module,
        tdx_module_identities=tuple(identities),
    )


def _parse_qe_identity(raw: str) -> QeIdentity:
    f = "qe_identity"
    try:
        doc = _obj(json.loads(raw), f)
    except (ValueError, RecursionError) as e:
        raise _coll_fail(f"not JSON: {e}", f) from None
    version = _int(doc, "version", f)
    if version != 2:
        raise _coll_fail(f"enclave identity version {version} (only 2)", f + ".version")
    return _new_qe_identity(
        id=_str(doc, "id", f),
        version=version,
        issue_date=_date(doc, "issueDate", f),
        next_update=_date(doc, "nextUpdate", f),
        evaluation_data_number=_int(doc, "tcbEvaluationDataNumber", f),
        miscselect=_hexbytes(doc.get("miscselect"), f + ".miscselect", 4),
        miscselect_mask=_hexbytes(doc.get("miscselectMask"), f + ".miscselectMask", 4),
        attributes=_hexbytes(doc.get("attributes"), f + ".attributes", 16),
        attributes_mask=_hexbytes(doc.get("attributesMask"), f + ".attributesMask", 16),
        mrsigner=_hexbytes(doc.get("mrsigner"), f + ".mrsigner", 32),
        isvprodid=_int(doc, "isvprodid", f, 0xFFFF),
        levels=_isv_levels(_list(doc, "tcbLevels", f), f + ".tcbLevels"),
    )


def parse_tcb_info(raw: str) -> TcbInfo:
    """Parse a tcbInfo v3 body (the exact signed JSON text). Raises COLLATERAL_INVALID."""
    return _PARSED_JSON.get(("tcb", raw), lambda: _parse_tcb_info(raw))


def parse_qe_identity(raw: str) -> QeIdentity:
    """Parse an enclaveIdentity v2 body (the exact signed JSON text). Raises COLLATERAL_INVALID."""
    return _PARSED_JSON.get(("qe", raw), lambda: _parse_qe_identity(raw))


# -- TCB evaluation ([PCS] "Get TCB Info", [QVL] 4.1.2.4.9-17) ------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TcbVerdict:
    """The TCB assessment: ``status`` is the converged verdict; the others are its inputs."""

    status: str
    advisory_ids: tuple[str, ...]
    platform_status: str  # the matched TCB level's own status, or NoMatchingTcbLevel
    tcb_date: str | None
    tdx_module_status: str | None  # None: SGX, or TDX module version 0 (no identity to check)
    qe_status: str | None  # None: no QE identity was given

    def to_fields(self) -> dict[str, Any]:
        return {
            "tcb_status": self.status,
            "advisory_ids": list(self.advisory_ids),
            "platform_tcb_status": self.platform_status,
            "tcb_date": self.tcb_date,
            "tdx_module_tcb_status": self.tdx_module_status,
            "qe_tcb_status": self.qe_status,
        }


_new_tcb_verdict = _record(TcbVerdict)


def _converge(status: str, component: str | None) -> str:
    """Fold a QE or TDX-module status into the platform's ([QVL] convergeTcbStatusWith…): an
    out-of-date component makes a current platform OutOfDate (or OutOfDateConfigurationNeeded
    when configuration is also needed); a revoked component revokes the whole TCB."""
    if component is None or component == "UpToDate" or status == _STATUS_NO_MATCH:
        return status
    if component == _STATUS_NO_MATCH:
        return _STATUS_NO_MATCH
    if component == "Revoked":
        return "Revoked"
    if status in ("UpToDate", "SWHardeningNeeded"):
        return "OutOfDate"
    if status in ("ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"):
        return "OutOfDateConfigurationNeeded"
    return status


def _isv_match(levels: Sequence[TcbLevel], isvsvn: int) -> TcbLevel | None:
    # [QVL] 4.1.2.9.9: the first level whose isvsvn the report's ISVSVN reaches.
    return next((lv for lv in levels if isvsvn >= lv.isvsvn), None)


def _masked(value: bytes, mask: bytes) -> bytes:
    if len(value) != len(mask):
        raise ValueError("value and mask differ in length")
    return (int.from_bytes(value, "big") & int.from_bytes(mask, "big")).to_bytes(len(value), "big")


def _check_qe_identity(qe: EnclaveReport, ident: QeIdentity, *, tdx: bool, platform: str) -> TcbLevel | None:
    want = "TD_QE" if tdx else "QE"
    if ident.id != want:
        # [QVL] 4.1.2.4.14: a TDX quote needs the TD_QE identity, an SGX quote the QE identity.
        raise _fail(
            _R.COLLATERAL_INVALID,
            f"QE identity is for {ident.id!r}, this quote needs {want!r}",
            platform=platform,
            field="qe_identity.id",
        )
    misc = qe.misc_select.to_bytes(4, "little")  # the identity's hex is the report's byte order
    checks = (
        # [QVL] 4.1.2.9.5-8, in Intel's order.
        ("miscselect", _masked(misc, ident.miscselect_mask) == ident.miscselect),
        ("attributes", _masked(qe.attributes, ident.attributes_mask) == ident.attributes),
        ("mrsigner", qe.mr_signer == ident.mrsigner),
        ("isvprodid", qe.isv_prod_id == ident.isvprodid),
    )
    for name, ok in checks:
        if not ok:
            raise _fail(
                _R.QE_IDENTITY,
                f"QE report {name} does not match the {ident.id} identity",
                platform=platform,
                field=f"qe_report.{name}",
            )
    return _isv_match(ident.levels, qe.isv_svn)


def _tdx_module(td: TdReport, info: TcbInfo, *, platform: str) -> TcbLevel | str | None:
    """[QVL] 4.1.2.4.11 and 4.1.2.4.17.4: TEE_TCB_SVN[1] is the TDX module's major version; 0
    means the legacy ``tdxModule`` entry (no TCB levels), >0 selects identity ``TDX_<version>``,
    whose levels are matched against TEE_TCB_SVN[0]. Returns the matched level, "none" when the
    identity has no level low enough, or None when there is no module status (version 0)."""
    version, isvsvn = td.tee_tcb_svn[1], td.tee_tcb_svn[0]
    if version == 0:
        module = info.tdx_module
        if module is None:
            raise _fail(_R.COLLATERAL_INVALID, "TDX TCB info has no tdxModule", platform=platform, field="tcb_info.tdxModule")
    else:
        ident = f"TDX_{version:02X}"
        module = next((m for m in info.tdx_module_identities if m.id == ident), None)
        if module is None:
            raise _fail(
                _R.TCB_MISMATCH, f"TCB info has no identity {ident} for this TDX module", platform=platform, field="tee_tcb_svn"
            )
    if td.mr_signer_seam != module.mrsigner:
        raise _fail(_R.TCB_MISMATCH, f"MRSIGNERSEAM is not the {module.id} signer", platform=platform, field="mr_signer_seam")
    if _masked(td.seam_attributes, module.attributes_mask) != _masked(module.attributes, module.attributes_mask):
        raise _fail(_R.TCB_MISMATCH, f"SEAMATTRIBUTES do not match {module.id}", platform=platform, field="seam_attributes")
    if version == 0:
        return None
    return _isv_match(module.levels, isvsvn) or "none"


def evaluate_tcb(quote: Quote, pck: PckInfo, tcb_info: TcbInfo, qe_identity: QeIdentity | None, *, platform: str) -> TcbVerdict:
    """The TCB status of a quote under (already authenticated) TCB info and QE identity.

    [QVL] 4.1.2.4.9-10: the TCB info must be for this TEE, FMSPC and PCE-ID. [PCS] "Get TCB
    Info": the platform's level is the first one whose 16 SGX component SVNs and PCESVN are all ≤
    the PCK certificate's and, for TDX, whose 16 TDX component SVNs are ≤ TEE_TCB_SVN (from
    index 2 when TEE_TCB_SVN[1] > 0: bytes 0-1 then belong to the TDX module identity). No such
    level: "NoMatchingTcbLevel". The TDX module's and the QE's statuses are folded in
    ([QVL] 4.1.2.4.17) and all three levels' advisory IDs are reported.

    Not implemented: the TDX 1.5 "TDRelaunchAdvised" refinement ([QVL] 4.1.2.4.17.4.3), which can
    only soften an OutOfDate verdict; we keep the stricter status.

    Raises:
        AttestationError: COLLATERAL_INVALID, TCB_MISMATCH or QE_IDENTITY.
    """
    tdx = isinstance(quote.body, TdReport)
    want = "TDX" if tdx else "SGX"
    if tcb_info.id != want:
        raise _fail(
            _R.COLLATERAL_INVALID, f"TCB info is for {tcb_info.id}, the quote is {want}", platform=platform, field="tcb_info.id"
        )
    if tcb_info.fmspc != pck.fmspc:
        raise _fail(
            _R.COLLATERAL_INVALID,
            f"TCB info is for FMSPC {tcb_info.fmspc.hex()}, the PCK certificate's is {pck.fmspc.hex()}",
            platform=platform,
            field="tcb_info.fmspc",
        )
    if tcb_info.pce_id != pck.pce_id:
        raise _fail(
            _R.COLLATERAL_INVALID,
            f"TCB info is for PCE-ID {tcb_info.pce_id.hex()}, the PCK certificate's is {pck.pce_id.hex()}",
            platform=platform,
            field="tcb_info.pceId",
        )
    module_level: TcbLevel | str | None = None
    if isinstance(quote.body, TdReport):
        module_level = _tdx_module(quote.body, tcb_info, platform=platform)
    qe_level: TcbLevel | str | None = None
    if qe_identity is not None:
        qe_level = _check_qe_identity(quote.qe_report, qe_identity, tdx=tdx, platform=platform) or "none"

    level: TcbLevel | None = None
    # Both sides always have 16 components (the parsers insist), so map() compares them all.
    tee_tcb_svn = tuple(quote.body.tee_tcb_svn) if isinstance(quote.body, TdReport) else None
    start = 2 if tee_tcb_svn is not None and tee_tcb_svn[1] > 0 else 0
    for lv in tcb_info.levels:
        if lv.pcesvn > pck.pcesvn or not all(map(operator.ge, pck.tcb_comp_svn, lv.sgx_svns)):
            continue
        if tee_tcb_svn is not None:
            if lv.tdx_svns is None:  # cannot happen: the TDX parser requires them
                raise _coll_fail("a TDX TCB level without tdxtcbcomponents", "tcb_info.tcbLevels")
            if not all(map(operator.ge, tee_tcb_svn[start:], lv.tdx_svns[start:])):
                continue
        level = lv
        break

    def status_of(x: TcbLevel | str | None) -> str | None:
        return None if x is None else _STATUS_NO_MATCH if isinstance(x, str) else x.status

    module_status, qe_status = status_of(module_level), status_of(qe_level)
    platform_status = level.status if level is not None else _STATUS_NO_MATCH
    status = _converge(_converge(platform_status, module_status), qe_status)
    advisories: list[str] = []
    if status != _STATUS_NO_MATCH:
        for x in (level, module_level, qe_level):
            if isinstance(x, TcbLevel):
                advisories.extend(a for a in x.advisory_ids if a not in advisories)
    return _new_tcb_verdict(
        status=status,
        advisory_ids=tuple(advisories),
        platform_status=platform_status,
        tcb_date=level.tcb_date if level is not None else None,
        tdx_module_status=module_status,
        qe_status=qe_status,
    )


# -- collateral authentication --------------------------------------------------------------------------
def verify_signed_json(
    body: str,
    signature: bytes,
    issuer_chain: bytes,
    *,
    roots: Mapping[bytes, str],
    at: dt.datetime,
    platform: str,
    what: str,
) -> _Chain:
    """Authenticate a TCB info or QE identity body: its issuer chain (TCB Signing certificate →
    pinned root) is valid at ``at``, and ECDSA P-256/SHA-256 ``signature`` (raw ``r‖s``) verifies
    over the exact UTF-8 bytes of ``body``. Returns the chain.

    Raises:
        AttestationError: BAD_SIGNATURE, UNTRUSTED_ROOT, CERT_* or CHAIN_INVALID.
    """
    chain = _pem_chain(issuer_chain, platform=platform, what=f"{what}_issuer_chain")
    if len(chain.items) != 2 or chain.items[0].cn != "Intel SGX TCB Signing":
        raise _fail(
            _R.CHAIN_INVALID,
            "expected the Intel SGX TCB Signing certificate and the root",
            platform=platform,
            field=f"{what}_issuer_chain",
        )
    _verify_chain_memo(chain, roots=roots, at=at, platform=platform, names=("tcb_signing", "tcb_signing_root"))
    key = chain.p256(0, platform=platform, what="tcb_signing")
    if not _sig_ok(key, chain.items[0].spki_der, body.encode("utf-8"), signature):
        raise _fail(_R.BAD_SIGNATURE, f"{what} signature does not verify over its JSON text", platform=platform, field=what)
    return chain


@dataclasses.dataclass(slots=True)
class _Crl:
    crl: x509.CertificateRevocationList
    issuer_der: bytes  # as encoded in the CRL
    this_update: dt.datetime
    next_update: dt.datetime
    tbs: bytes  # the signed TBSCertList, as it is in the DER
    signature: bytes
    hash_algorithm: hashes.HashAlgorithm
    _looked_up: dict[int, bool]  # given, not a default factory: that makes __init__ slower

    def revokes(self, serial: int) -> bool:
        """Whether ``serial`` is on the CRL. Only the serials asked about are looked up (the
        entries were all decoded when the CRL was loaded), and each answer is kept."""
        hit = self._looked_up.get(serial)
        if hit is None:
            if serial > 0:
                # Every entry holds its serial as a DER INTEGER, minimal (cryptography refuses any
                # other encoding): a serial whose encoding is nowhere in the TBSCertList is on no
                # entry. Otherwise (or for a long one) cryptography looks it up.
                n = serial.bit_length() // 8 + 1  # with the sign octet when the top bit is set
                if n < 0x80 and b"\x02" + bytes((n,)) + serial.to_bytes(n, "big") not in self.tbs:
                    hit = False
                else:
                    hit = self.crl.get_revoked_certificate_by_serial_number(serial) is not None
            else:  # cryptography looks up only positive serials; compare every entry's
                hit = any(r.serial_number == serial for r in self.crl)
            self._looked_up[serial] = hit
        return hit


def _crl_parts(der: bytes) -> tuple[bytes, bytes]:
    """The exact TBSCertList and issuer encodings of a CRL (RFC 5280 §5.1) cryptography parsed."""
    _, c, _ = _hdr(der, 0)
    _, t, end = _hdr(der, c)
    tag, _, pos = _hdr(der, t)  # version (v2), or the signature algorithm (v1)
    if tag == 0x02:
        _, _, pos = _hdr(der, pos)  # signature algorithm
    _, _, e = _hdr(der, pos)
    if e > end:
        raise IndexError("issuer past the TBSCertList")
    return der[c:end], der[pos:e]


def _load_crl(der: bytes, *, platform: str, field: str) -> _Crl:
    def load() -> _Crl:
        try:
            # cryptography decodes most of a CRL lazily: every access may raise ValueError.
            # (Its revoked entries are all decoded here; the issuer name in _check_crl.) None of
            # this warns, not even serial numbers ≤ 0 (tests: test_crl_loading_does_not_warn).
            crl = x509.load_der_x509_crl(der)
            next_update = crl.next_update_utc
            algo = crl.signature_hash_algorithm
            this_update = crl.last_update_utc
            tbs, issuer_der = _crl_parts(der)
        except (ValueError, TypeError, x509.InvalidVersion, IndexError) as e:
            raise _fail(_R.COLLATERAL_INVALID, f"not a DER CRL: {e}", platform=platform, field=field) from None
        if (
            next_update is None
            or algo is None
            or not (type(algo) in _ECDSA_WITH or isinstance(algo, hashes.SHA256 | hashes.SHA384 | hashes.SHA512))
        ):
            raise _fail(
                _R.COLLATERAL_INVALID, "CRL without nextUpdate or an ECDSA-SHA2 signature", platform=platform, field=field
            )
        # [RFC5280] §5.2-5.3: a CRL with a critical CRL or entry extension that is not processed
        # must not be used. None is processed (Intel's CRLs carry cRLNumber, AKI and, per entry,
        # cRLReason, none critical; an issuingDistributionPoint or certificateIssuer would change
        # what the CRL covers). DER encodes TRUE only as 01 01 FF (cryptography refuses anything
        # else), so a CRL without those bytes has no critical extension and is not walked.
        if b"\x01\x01\xff" in tbs:
            critical = _crl_critical_extension(crl)
            if critical is not None:
                raise _fail(
                    _R.COLLATERAL_INVALID,
                    f"CRL has a critical extension {critical} this verifier does not process",
                    platform=platform,
                    field=field,
                )
        return _Crl(crl, issuer_der, this_update, next_update, tbs, crl.signature, algo, {})

    return _CRLS.get(der, load)


def _crl_critical_extension(crl: x509.CertificateRevocationList) -> str | None:
    """The OID of the first critical extension of the CRL or of one of its entries, if any."""
    for ext in crl.extensions:
        if ext.critical:
            return str(ext.oid.dotted_string)
    for entry in crl:
        for ext in entry.extensions:
            if ext.critical:
                return str(ext.oid.dotted_string)
    return None


def _check_crl(der: bytes, issuer: _Chain, index: int, *, platform: str, field: str) -> _Crl:
    """[QVL] 4.1.2.4.6: the CRL is issued (name and signature) by certificate ``index`` of ``issuer``."""
    crl = _load_crl(der, platform=platform, field=field)

    def check() -> bool:
        subject = issuer.items[index]
        if crl.issuer_der != subject.subject_der:  # else the same name, encoded alike
            try:
                name = crl.crl.issuer
            except (ValueError, TypeError, x509.InvalidVersion) as e:
                raise _fail(_R.COLLATERAL_INVALID, f"not a DER CRL: {e}", platform=platform, field=field) from None
            if name != subject.cert.subject:
                raise _fail(
                    _R.COLLATERAL_INVALID,
                    f"CRL issuer {name.rfc4514_string()} is not {subject.subject}",
                    platform=platform,
                    field=field,
                )
        ku = subject.key_usage()
        if ku is not None and not ku.crl_sign:
            raise _fail(
                _R.COLLATERAL_INVALID,
                f"CRL issuer {subject.subject} may not sign CRLs (keyUsage)",
                platform=platform,
                field=field,
            )
        key = issuer.p256(index, platform=platform, what=f"{field} issuer")
        algorithm = _ECDSA_WITH.get(type(crl.hash_algorithm)) or ec.ECDSA(crl.hash_algorithm)
        if not signature_holds(functools.partial(key.verify, crl.signature, crl.tbs, algorithm)):
            raise _fail(_R.BAD_SIGNATURE, "CRL signature does not verify", platform=platform, field=field)
        return True

    _CRL_SIGS.get((der, issuer.pem, index), check)
    return crl


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class DcapVerdict:
    """What :func:`verify_quote` proved: the parsed quote, the PCK's certified TCB, and the TCB
    verdict (status "Unknown" without collateral)."""

    quote: Quote
    pck: PckInfo
    pck_chain: tuple[x509.Certificate, ...]
    pck_chain_labels: tuple[str, ...]
    pck_chain_window: tuple[dt.datetime, dt.datetime]
    root_name: str
    tcb: TcbVerdict | None
    collateral_fields: Mapping[str, Any]

    @property
    def tcb_status(self) -> str:
        return self.tcb.status if self.tcb is not None else _STATUS_UNKNOWN

    @property
    def advisory_ids(self) -> tuple[str, ...]:
        return self.tcb.advisory_ids if self.tcb is not None else ()

    def to_fields(self) -> dict[str, Any]:
        """Everything parsed and decided, JSON-safe (the keys of ``expected_fields.json``)."""
        out = self.quote.to_fields()
        out.update(
            {
                "pck": self.pck.to_fields(),
                "pck_chain": list(self.pck_chain_labels),
                "pck_chain_valid_window": [t.isoformat() for t in self.pck_chain_window],
                "pck_ca": "processor" if "Processor" in self.pck_chain_labels[1] else "platform",
                "root": self.root_name,
                "fmspc": self.pck.fmspc.hex(),
                "pce_id": self.pck.pce_id.hex(),
                "tcb_status": self.tcb_status,
                "advisory_ids": list(self.advisory_ids),
                "qe_tcb_status": self.tcb.qe_status if self.tcb is not None else None,
                "tcb": self.tcb.to_fields() if self.tcb is not None else None,
                "collateral": dict(self.collateral_fields) if self.tcb is not None else None,
            }
        )
        return out


_new_dcap_verdict = _record(DcapVerdict)


def _as_platform(parse: Callable[[str], _T], raw: str, platform: str) -> _T:
    """Collateral parsers report as platform "dcap"; inside a verification the error belongs to it."""
    try:
        return parse(raw)
    except AttestationError as e:
        raise _fail(e.reason, e.detail, platform=platform, field=e.field) from None


def _check_collateral(
    quote: Quote,
    pck: PckInfo,
    chain: _Chain,
    coll: Collateral,
    *,
    roots: Mapping[bytes, str],
    at: dt.datetime,
    platform: str,
) -> tuple[TcbVerdict, dict[str, Any]]:
    pck_leaf, pck_ca = chain.items[0].cert, chain.items[1].cert
    # Windows: [issueDate/thisUpdate, nextUpdate] of every piece; all must hold at `at`.
    windows: list[tuple[str, dt.datetime, dt.datetime]] = []

    # TCB info: [QVL] 4.1.2.4.8 (signature, issuer chain); 4.1.2.4.9-10 (TEE, FMSPC, PCE-ID).
    tcb_chain = verify_signed_json(
        coll.tcb_info, coll.tcb_info_signature, coll.tcb_info_issuer_chain, roots=roots, at=at, platform=platform, what="tcb_info"
    )
    signers = [tcb_chain]
    tcb_info = _as_platform(parse_tcb_info, coll.tcb_info, platform)
    windows.append(("tcb_info", tcb_info.issue_date, tcb_info.next_update))
    qe_identity: QeIdentity | None = None
    if coll.qe_identity is not None:
        if coll.qe_identity_signature is None or coll.qe_identity_issuer_chain is None:  # load_collateral pairs them
            raise _coll_fail("QE identity without its signature or issuer chain", "qe_identity")
        signers.append(
            verify_signed_json(
                coll.qe_identity,
                coll.qe_identity_signature,
                coll.qe_identity_issuer_chain,
                roots=roots,
                at=at,
                platform=platform,
                what="qe_identity",
            )
        )
        qe_identity = _as_platform(parse_qe_identity, coll.qe_identity, platform)
        windows.append(("qe_identity", qe_identity.issue_date, qe_identity.next_update))
    for signer_chain in signers:
        if signer_chain.root_spki_sha256 != chain.root_spki_sha256:
            raise _fail(_R.COLLATERAL_INVALID, "collateral is signed under another root than the quote", platform=platform)

    # CRLs: [QVL] 4.1.2.4.6-7. The root CA CRL revokes the root itself (as dcap-qvl checks: the
    # pin trusts a key, and Intel would withdraw a compromised root this way first) and the
    # intermediates (the PCK CA, the TCB Signing certificate); the PCK CA's CRL revokes PCK leaves.
    if coll.root_ca_crl is not None:
        crl = _check_crl(coll.root_ca_crl, chain, 2, platform=platform, field="root_ca_crl")
        windows.append(("root_ca_crl", crl.this_update, crl.next_update))
        revocable = [(chain.items[2].cert, "intel_root"), (pck_ca, "pck_ca")]
        for c in signers:  # the signers' root has the quote's root key, but may be another certificate
            if c.items[1] is not chain.items[2]:
                revocable.append((c.items[1].cert, "tcb_signing_root"))
            revocable.append((c.items[0].cert, "tcb_signing"))
        for cert, label in revocable:
            if crl.revokes(cert.serial_number):
                raise _fail(_R.CERT_REVOKED, f"{label} is on the root CA CRL", platform=platform, field=label)
    if coll.pck_crl is not None:
        crl = _check_crl(coll.pck_crl, chain, 1, platform=platform, field="pck_crl")
        windows.append(("pck_crl", crl.this_update, crl.next_update))
        if crl.revokes(pck_leaf.serial_number):
            raise _fail(_R.CERT_REVOKED, "the PCK certificate is on the PCK CA's CRL", platform=platform, field="pck")

    for name, start, end in windows:
        if not start <= at <= end:
            raise _fail(
                _R.COLLATERAL_INVALID,
                f"{name} is valid {start.isoformat()} .. {end.isoformat()}, not at {at.isoformat()}",
                platform=platform,
                field=name,
            )
    verdict = evaluate_tcb(quote, pck, tcb_info, qe_identity, platform=platform)
    fields = {
        "window": [max([w[1] for w in windows]).isoformat(), min([w[2] for w in windows]).isoformat()],
        "tcb_info_issue_date": tcb_info.issue_date.isoformat(),
        "tcb_evaluation_data_number": tcb_info.evaluation_data_number,
        "qe_identity_evaluation_data_number": qe_identity.evaluation_data_number if qe_identity is not None else None,
        "checked": [w[0] for w in windows],
        "qe_identity_checked": qe_identity is not None,
        "revocation_checked": {"root_ca_crl": coll.root_ca_crl is not None, "pck_crl": coll.pck_crl is not None},
    }
    return verdict, fields


# -- the whole verification -------------------------------------------------------------------------------
_PCK_NAMES: Final = ("pck", "pck_ca", "intel_root")
_PCK_CA_NAMES: Final = frozenset({"Intel SGX PCK Platform CA", "Intel SGX PCK Processor CA"})


def verify_quote(
    data: bytes,
    *,
    platform: str,
    collateral: Collateral | None = None,
    at: dt.datetime | None = None,
    roots: Mapping[bytes, str] = INTEL_ROOTS,
) -> DcapVerdict:
    """Prove a DCAP quote of ``platform`` ("tdx" or "sgx") and, given collateral, assess its TCB.

    Steps ([QVL] 4.1.2.4): parse (:func:`parse_quote`); the PCK chain — leaf "Intel SGX PCK
    Certificate" → "Intel SGX PCK Platform/Processor CA" → a root in ``roots`` — valid at ``at``
    (4.1.2.4.4-5); the QE report signed by the PCK key (4.1.2.4.12); the QE report_data =
    SHA-256(attestation key ‖ QE auth data) ‖ 32 zero bytes, which is how the QE certifies the
    attestation key (4.1.2.4.13); the quote signature over header and body by that key
    (4.1.2.4.16); then the collateral, if given (see :func:`evaluate_tcb`). ``at`` defaults to now.

    Raises:
        AttestationError: with the first reason the quote is refused.
    """
    at = _utc(at)
    # Its signature checks are proven together at the end, on two cores (sigbatch.py); the
    # outcome, and the first failure's reason, are those of checking each in place.
    return deferred(functools.partial(_verify_quote, data, platform=platform, collateral=collateral, at=at, roots=roots))


def _verify_quote(
    data: bytes,
    *,
    platform: str,
    collateral: Collateral | None,
    at: dt.datetime,
    roots: Mapping[bytes, str],
) -> DcapVerdict:
    quote = parse_quote(data, platform=platform)
    if quote.platform != platform:
        raise _fail(_R.UNSUPPORTED, f"this is a {quote.platform.upper()} quote", platform=platform, field="header.tee_type")

    chain = _pem_chain(quote.pck_chain_pem, platform=platform, what="pck_chain")
    if len(chain.items) != 3:
        raise _fail(
            _R.CHAIN_INVALID, f"PCK chain has {len(chain.items)} certificates, not 3", platform=platform, field="pck_chain"
        )
    if chain.items[0].cn != "Intel SGX PCK Certificate" or chain.items[1].cn not in _PCK_CA_NAMES:
        raise _fail(_R.CHAIN_INVALID, "not an Intel SGX PCK certificate chain", platform=platform, field="pck_chain")
    root_name = _verify_chain_memo(chain, roots=roots, at=at, platform=platform, names=_PCK_NAMES)
    leaf = chain.items[0]
    if leaf._scanned and leaf._sgx_ext is not None:  # read from the DER by _intel_extensions
        pck = _sgx_extension(leaf._sgx_ext, platform=platform)
    else:
        pck = parse_pck_extensions(leaf.cert, platform=platform)

    pck_key = chain.p256(0, platform=platform, what="pck")
    if not _sig_ok(pck_key, chain.items[0].spki_der, quote.qe_report.raw, quote.qe_report_signature):
        raise _fail(_R.BAD_SIGNATURE, "QE report is not signed by the PCK key", platform=platform, field="qe_report_signature")
    if quote.qe_report.debug:
        # A debug QE's memory, and so the attestation key, is readable by its host: nothing it
        # certifies means anything. Always refused, with or without a QE identity (whose masked
        # ATTRIBUTES also cover the bit); allow_debug governs the workload only, as in dcap-qvl.
        raise _fail(_R.QE_IDENTITY, "the QE report is from a debug enclave", platform=platform, field="qe_report.attributes")
    binding = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest() + bytes(32)
    if quote.qe_report.report_data != binding:
        raise _fail(
            _R.BAD_SIGNATURE,
            "QE report_data does not certify this attestation key and auth data",
            platform=platform,
            field="qe_report.report_data",
        )
    try:
        att_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + quote.attestation_key)
    except ValueError:
        raise _fail(_R.MALFORMED, "attestation key is not a P-256 point", platform=platform, field="attestation_key") from None
    # Never memoised: every quote carries its own report data, so its signature is always new.
    if not _raw_sig_valid(att_key, quote.signed, quote.signature):
        raise _fail(_R.BAD_SIGNATURE, "quote is not signed by its attestation key", platform=platform, field="signature")
    body = quote.body
    if type(body) is TdReport:
        # [TDX-ABI]: the bits in _TDA_REFUSED are reserved or weaken the TD in ways no policy
        # here can bound; refused as dcap-qvl refuses them. The policy decides DEBUG,
        # SEPT_VE_DISABLE and a bound service TD (MRSERVICETD).
        refused = body.refused_attributes
        if refused:
            names = [_TDA_BIT_NAMES.get(b, f"reserved bit {b}") for b in range(64) if refused >> b & 1]
            raise _fail(
                _R.TD_ATTRIBUTES,
                f"TD_ATTRIBUTES {body.td_attributes.hex()} sets {', '.join(names)}",
                platform=platform,
                field="td_attributes",
            )

    verdict: TcbVerdict | None = None
    coll_fields: dict[str, Any] = {}
    if collateral is not None:
        verdict, coll_fields = _check_collateral(quote, pck, chain, collateral, roots=roots, at=at, platform=platform)
    return _new_dcap_verdict(
        quote=quote,
        pck=pck,
        pck_chain=chain.certs,
        pck_chain_labels=chain.labels,
        pck_chain_window=(chain.not_before, chain.not_after),
        root_name=root_name,
        tcb=verdict,
        collateral_fields=types.MappingProxyType(coll_fields),
    )
