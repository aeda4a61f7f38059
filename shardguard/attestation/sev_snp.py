"""AMD SEV-SNP attestation reports: parse and verify offline (ARCHITECTURE §5).

Facts come from two public AMD documents, cited by table title:

* [ABI] "SEV Secure Nested Paging Firmware ABI Specification" (AMD pub. 56860): tables
  "ATTESTATION_REPORT Structure", "TCB_VERSION Structure" (and its family 1Ah / Turin variant),
  "Guest Policy Structure" and "ECDSA P-384 with SHA-384 Signature" (the signature format).
* [VCEK] "Versioned Chip Endorsement Key (VCEK) Certificate and KDS Interface Specification"
  (AMD pub. 57230): the VCEK/VLEK X.509 extension table (OIDs 1.3.6.1.4.1.3704.1.*) and the
  certificate chain VCEK → ASK → ARK, VLEK → ASVK → ARK.

The report is 1184 bytes; the PSP signs bytes ``[0, 0x2A0)`` with ECDSA P-384/SHA-384 using the
chip's VCEK (or a cloud provider's VLEK). AMD signs the certificates with RSASSA-PSS. A report
has no timestamp, so certificates are checked at a caller-given time (default: now).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import warnings
from collections.abc import Mapping
from importlib import resources
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from shardguard.attestation.errors import AttestationError, AttestationReason
from shardguard.attestation.result import Verified
from shardguard.attestation.x509chain import load_der, load_pem_chain, verify_chain

__all__ = [
    "REPORT_SIZE",
    "SIGNED_SIZE",
    "SNP_ROOTS",
    "SUPPORTED_VERSIONS",
    "SnpReport",
    "TcbVersion",
    "decode_tcb",
    "parse_report",
    "verify_sev_snp",
]

PLATFORM = "sev-snp"

#: [ABI] ATTESTATION_REPORT is 0x4A0 bytes; the signature covers everything before 0x2A0.
REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
#: Report versions seen on real hardware (2: firmware < 1.55, 3: adds CPUID, 5: adds
#: mitigation vectors). Version 4 and anything newer are refused until a genuine sample exists.
SUPPORTED_VERSIONS = frozenset({2, 3, 5})

#: AMD Root Keys pinned by the SHA-256 of their SubjectPublicKeyInfo (never by name). Computed
#: from the public KDS certificates in ``data/amd/``; the comments give the SHA-256 of each whole
#: DER certificate as published in fixtures/attestation/README.md, so the pin can be re-derived.
#: The names double as product selectors (see ``_ROOT_PRODUCT``): keep them when adding roots.
SNP_ROOTS: dict[bytes, str] = {
    # ARK-Milan, DER cert SHA-256 69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd
    bytes.fromhex("9f056bee44377e29308cb5ffa895bdfb62d18881fa6bed8d6f075b0204089cb9"): "ARK-Milan",
    # ARK-Genoa, DER cert SHA-256 4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1
    bytes.fromhex("429a69c9422aa258ee4d8db5fcda9c6470ef15f8cd5a9cebd6cbc7d90b863831"): "ARK-Genoa",
    # ARK-Turin, DER cert SHA-256 1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a
    bytes.fromhex("4f125410563a2ab9a50356f9243f6fe0b6f73de98603f53f90339c70e9d7ad08"): "ARK-Turin",
}
_ROOT_PRODUCT = {"ARK-Milan": "Milan", "ARK-Genoa": "Genoa", "ARK-Turin": "Turin"}

#: Bundled KDS ``cert_chain`` files (intermediate first, then ARK), tried in this order when the
#: caller gives no chain. There is no bundled Genoa/Turin ASVK: pass ``chain`` for those VLEKs.
_BUNDLED_CHAINS = ("milan_ask_ark.pem", "milan_asvk_ark.pem", "genoa_ask_ark.pem", "turin_ask_ark.pem")

# [VCEK] extension OIDs. The SPLs are DER INTEGERs; hwID is the raw chip id (64 bytes, 8 on
# Turin), productName1 and csp_id (VLEK only) are IA5Strings.
_AMD_OID = "1.3.6.1.4.1.3704.1."
_EXT_NAMES = {
    "1": "structVersion",
    "2": "productName1",
    "3.1": "blSPL",
    "3.2": "teeSPL",
    "3.3": "snpSPL",
    "3.4": "spl_4",
    "3.5": "spl_5",
    "3.6": "spl_6",
    "3.7": "spl_7",
    "3.8": "ucodeSPL",
    "3.9": "fmcSPL",
    "4": "hwID",
    "5": "csp_id",
}
_INT_EXTS = frozenset({"structVersion", "blSPL", "teeSPL", "snpSPL", "spl_4", "spl_5", "spl_6", "spl_7", "ucodeSPL", "fmcSPL"})

# [ABI] "Guest Policy Structure" (bits 0-15 are the minimum ABI minor/major) and PLATFORM_INFO.
_POLICY_BITS = {
    16: "smt",
    17: "reserved_must_be_one",
    18: "migrate_ma",
    19: "debug",
    20: "single_socket",
    21: "cxl_allow",
    22: "mem_aes_256_xts",
    23: "rapl_dis",
    24: "ciphertext_hiding",
    25: "page_swap_disable",
}
_POLICY_DEBUG = 1 << 19
_POLICY_MIGRATE_MA = 1 << 18
_POLICY_MUST_BE_ONE = 1 << 17
#: The ABI version bits (0-15) and every named bit; any other bit is one this verifier cannot
#: judge, and is refused (as TDX's reserved TD_ATTRIBUTES bits are).
_POLICY_KNOWN = 0xFFFF | sum(1 << bit for bit in _POLICY_BITS)
_NO_MIGRATION_AGENT = b"\xff" * 32  # REPORT_ID_MA of a guest with no migration agent
_PLATFORM_INFO_BITS = {
    0: "smt_en",
    1: "tsme_en",
    2: "ecc_en",
    3: "rapl_dis",
    4: "ciphertext_hiding_en",
    5: "alias_check_complete",
    7: "tio_en",
}
_SIGNING_KEYS = {0: "VCEK", 1: "VLEK"}  # [ABI] SIGNING_KEY, bits 4:2 at 0x48; 7 means "unsigned"


def _err(reason: AttestationReason, detail: str, field: str = "") -> AttestationError:
    return AttestationError(reason, detail, platform=PLATFORM, field=field)


# -- TCB_VERSION -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TcbVersion:
    """One decoded TCB_VERSION ([ABI] "TCB_VERSION Structure").

    Milan and Genoa: byte 0 boot loader, 1 TEE, 2-5 reserved, 6 SNP, 7 microcode.
    Turin (family 1Ah) moved the fields: byte 0 FMC, 1 boot loader, 2 TEE, 3 SNP, 4-6 reserved,
    7 microcode. Reading a Turin TCB with the Milan layout would compare the wrong SPLs, so the
    layout is always chosen by product.
    """

    raw: bytes
    product: str
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    def components(self) -> dict[str, int]:
        """The SPLs keyed by their [VCEK] extension names (the KDS query parameters)."""
        out = {"blSPL": self.bootloader, "teeSPL": self.tee, "snpSPL": self.snp, "ucodeSPL": self.microcode}
        if self.fmc is not None:
            out["fmcSPL"] = self.fmc
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"raw": self.raw.hex()}
        if self.fmc is not None:
            out["fmc"] = self.fmc
        out.update(bootloader=self.bootloader, tee=self.tee, snp=self.snp, microcode=self.microcode)
        return out


def decode_tcb(raw: bytes, product: str) -> TcbVersion:
    """Decode the 8 raw bytes of a TCB_VERSION with ``product``'s layout (see :class:`TcbVersion`)."""
    if len(raw) != 8:
        raise _err(AttestationReason.MALFORMED, f"TCB_VERSION is 8 bytes, got {len(raw)}", "tcb")
    if product == "Turin":
        return TcbVersion(bytes(raw), product, bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7], fmc=raw[0])
    if product in ("Milan", "Genoa"):
        return TcbVersion(bytes(raw), product, bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])
    raise _err(AttestationReason.UNSUPPORTED, f"no TCB_VERSION layout known for product {product!r}", "tcb")


def _product_from_cpuid(family: int, model: int) -> str | None:
    """AMD product line from the report's CPUID family/model (v3+). Family 19h models 00-0Fh are
    Milan, 10-1Fh and A0-AFh Genoa (incl. Bergamo/Siena, which use the Genoa ARK); family 1Ah
    models 00-1Fh are Turin. Anything else is unknown and the verifier refuses it."""
    if family == 0x19 and model <= 0x0F:
        return "Milan"
    if family == 0x19 and (0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF):
        return "Genoa"
    if family == 0x1A and model <= 0x1F:
        return "Turin"
    return None


# -- the report -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SnpReport:
    """A parsed ATTESTATION_REPORT ([ABI] "ATTESTATION_REPORT Structure"). Integers are
    little-endian in the report. TCB fields are kept raw (8 bytes): their layout depends on the
    product, which a v2 report does not state; use :func:`decode_tcb`."""

    raw: bytes = dataclasses.field(repr=False)
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: bytes
    platform_info: int
    signer_info: int
    author_key_en: bool
    mask_chip_key: bool
    signing_key: str
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: bytes
    cpuid_fam_id: int | None
    cpuid_mod_id: int | None
    cpuid_step: int | None
    chip_id: bytes
    committed_tcb: bytes
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb: bytes
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: int
    signature_s: int

    @property
    def debug(self) -> bool:
        """Guest policy bit 19: the hypervisor may debug (read and write) guest memory."""
        return bool(self.policy & _POLICY_DEBUG)

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def cpuid_product(self) -> str | None:
        """Product line from the CPUID fields (v3+), or None (v2, or an unknown part)."""
        if self.cpuid_fam_id is None or self.cpuid_mod_id is None:
            return None
        return _product_from_cpuid(self.cpuid_fam_id, self.cpuid_mod_id)

    @property
    def current_version(self) -> str:
        return f"{self.current_major}.{self.current_minor}.{self.current_build}"

    @property
    def committed_version(self) -> str:
        return f"{self.committed_major}.{self.committed_minor}.{self.committed_build}"

    def fields(self, product: str) -> dict[str, Any]:
        """Every parsed field, JSON-safe (hex strings for bytes and 64-bit bit fields)."""
        out: dict[str, Any] = {
            "version": self.version,
            "guest_svn": self.guest_svn,
            "policy": hex(self.policy),
            "policy_abi_minor": self.policy & 0xFF,
            "policy_abi_major": (self.policy >> 8) & 0xFF,
            "policy_bits": {name: bool(self.policy >> bit & 1) for bit, name in _POLICY_BITS.items()},
            "policy_debug_allowed": self.debug,
            "migrate_ma": bool(self.policy & _POLICY_MIGRATE_MA),
            "family_id": self.family_id.hex(),
            "image_id": self.image_id.hex(),
            "vmpl": self.vmpl,
            "signature_algo": self.signature_algo,
            "current_tcb": self.current_tcb.hex(),
            "platform_info": hex(self.platform_info),
            "platform_info_bits": {name: bool(self.platform_info >> bit & 1) for bit, name in _PLATFORM_INFO_BITS.items()},
            "signer_info": hex(self.signer_info),
            "author_key_en": self.author_key_en,
            "mask_chip_key": self.mask_chip_key,
            "signing_key": self.signing_key,
            "report_data": self.report_data.hex(),
            "measurement": self.measurement.hex(),
            "host_data": self.host_data.hex(),
            "id_key_digest": self.id_key_digest.hex(),
            "author_key_digest": self.author_key_digest.hex(),
            "report_id": self.report_id.hex(),
            "report_id_ma": self.report_id_ma.hex(),
            "reported_tcb": self.reported_tcb.hex(),
            "chip_id": self.chip_id.hex(),
            "committed_tcb": self.committed_tcb.hex(),
            "current_version": self.current_version,
            "committed_version": self.committed_version,
            "launch_tcb": self.launch_tcb.hex(),
            "tcb": {
                name: decode_tcb(raw, product).to_dict()
                for name, raw in (
                    ("current", self.current_tcb),
                    ("reported", self.reported_tcb),
                    ("committed", self.committed_tcb),
                    ("launch", self.launch_tcb),
                )
            },
        }
        if self.cpuid_fam_id is not None:
            out.update(
                cpuid_fam_id=hex(self.cpuid_fam_id),
                cpuid_mod_id=hex(self.cpuid_mod_id or 0),
                cpuid_step=hex(self.cpuid_step or 0),
            )
        if self.launch_mit_vector is not None:
            out.update(launch_mit_vector=hex(self.launch_mit_vector), current_mit_vector=hex(self.current_mit_vector or 0))
        return out


def _u32(b: bytes, off: int) -> int:
    return int.from_bytes(b[off : off + 4], "little")


def _u64(b: bytes, off: int) -> int:
    return int.from_bytes(b[off : off + 8], "little")


def _mbz(b: bytes, start: int, end: int, name: str) -> None:
    # Only regions that the ABI marks reserved/MBZ *and* that are zero in all five genuine
    # samples are checked: a stricter parser would refuse reports from newer firmware.
    if any(b[start:end]):
        raise _err(AttestationReason.MALFORMED, f"reserved bytes [{start:#x}, {end:#x}) are not zero", name)


def parse_report(data: bytes) -> SnpReport:
    """Parse one ATTESTATION_REPORT ([ABI] "ATTESTATION_REPORT Structure"); no signature check.

    Refuses: a wrong size (TRUNCATED / TRAILING_DATA), a version other than 2, 3 or 5, a
    SIGNATURE_ALGO other than 1 (ECDSA P-384 with SHA-384) or a SIGNING_KEY other than VCEK/VLEK
    (UNSUPPORTED), and non-zero reserved bytes (MALFORMED).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _err(AttestationReason.MALFORMED, f"report must be bytes, not {type(data).__name__}")
    b = bytes(data)
    # The version decides the layout, so an unknown version is reported as such even when the
    # size is also wrong (a future, larger report should say "unsupported", not "trailing data").
    if len(b) >= 4 and _u32(b, 0x00) not in SUPPORTED_VERSIONS:
        raise _err(AttestationReason.UNSUPPORTED, f"report version {_u32(b, 0)} (supported: 2, 3, 5)", "version")
    if len(b) < REPORT_SIZE:
        raise _err(AttestationReason.TRUNCATED, f"report is {len(b)} bytes, expected {REPORT_SIZE}")
    if len(b) > REPORT_SIZE:
        raise _err(AttestationReason.TRAILING_DATA, f"report is {len(b)} bytes, expected {REPORT_SIZE}")
    version = _u32(b, 0x00)
    algo = _u32(b, 0x34)
    if algo != 1:
        raise _err(AttestationReason.UNSUPPORTED, f"signature algorithm {algo} (only 1 = ECDSA P-384/SHA-384)", "signature_algo")
    signer_info = _u32(b, 0x48)
    key_sel = (signer_info >> 2) & 0x7
    if key_sel not in _SIGNING_KEYS:
        raise _err(AttestationReason.UNSUPPORTED, f"signing key {key_sel} (0 = VCEK, 1 = VLEK)", "signing_key")

    _mbz(b, 0x04C, 0x050, "reserved_0x4c")
    # v2 reserves 0x188..0x1A0 entirely; v3 put CPUID family/model/stepping in its first 3 bytes.
    has_cpuid = version >= 3
    _mbz(b, 0x18B if has_cpuid else 0x188, 0x1A0, "reserved_0x188")
    _mbz(b, 0x1EB, 0x1EC, "reserved_0x1eb")
    _mbz(b, 0x1EF, 0x1F0, "reserved_0x1ef")
    # v5 added LAUNCH_MIT_VECTOR / CURRENT_MIT_VECTOR at 0x1F8 / 0x200; before, they are reserved.
    has_mit = version >= 5
    _mbz(b, 0x208 if has_mit else 0x1F8, SIGNED_SIZE, "reserved_0x1f8")
    # [ABI] signature format: R (72 B) and S (72 B) little-endian, then reserved. The tail is not
    # signed, so a non-zero tail would make two byte strings carry "the same" report.
    _mbz(b, 0x330, REPORT_SIZE, "signature_reserved")

    return SnpReport(
        raw=b,
        version=version,
        guest_svn=_u32(b, 0x04),
        policy=_u64(b, 0x08),
        family_id=b[0x10:0x20],
        image_id=b[0x20:0x30],
        vmpl=_u32(b, 0x30),
        signature_algo=algo,
        current_tcb=b[0x38:0x40],
        platform_info=_u64(b, 0x40),
        signer_info=signer_info,
        author_key_en=bool(signer_info & 1),
        mask_chip_key=bool(signer_info & 2),
        signing_key=_SIGNING_KEYS[key_sel],
        report_data=b[0x50:0x90],
        measurement=b[0x90:0xC0],
        host_data=b[0xC0:0xE0],
        id_key_digest=b[0xE0:0x110],
        author_key_digest=b[0x110:0x140],
        report_id=b[0x140:0x160],
        report_id_ma=b[0x160:0x180],
        reported_tcb=b[0x180:0x188],
        cpuid_fam_id=b[0x188] if has_cpuid else None,
        cpuid_mod_id=b[0x189] if has_cpuid else None,
        cpuid_step=b[0x18A] if has_cpuid else None,
        chip_id=b[0x1A0:0x1E0],
        committed_tcb=b[0x1E0:0x1E8],
        current_build=b[0x1E8],
        current_minor=b[0x1E9],
        current_major=b[0x1EA],
        committed_build=b[0x1EC],
        committed_minor=b[0x1ED],
        committed_major=b[0x1EE],
        launch_tcb=b[0x1F0:0x1F8],
        launch_mit_vector=_u64(b, 0x1F8) if has_mit else None,
        current_mit_vector=_u64(b, 0x200) if has_mit else None,
        signature_r=int.from_bytes(b[0x2A0:0x2E8], "little"),
        signature_s=int.from_bytes(b[0x2E8:0x330], "little"),
    )


# -- certificates -----------------------------------------------------------------------------------


def _der_tlv(value: bytes, tag: int, what: str) -> bytes:
    """The contents of one DER TLV of ``tag`` filling ``value`` exactly (short or long length)."""
    if len(value) >= 2 and value[0] == tag:
        n, header = value[1], 2
        if n & 0x80:  # long form: the next 1-2 bytes hold the length
            k = n & 0x7F
            n = int.from_bytes(value[2 : 2 + k], "big") if 0 < k <= 2 and len(value) >= 2 + k else -1
            header += k
        if n >= 0 and len(value) == header + n:
            return value[header:]
    raise _err(AttestationReason.MALFORMED, f"{what}: bad DER encoding", what)


def _der_uint(value: bytes, what: str) -> int:
    body = _der_tlv(value, 0x02, what)
    if not body or len(body) > 8 or body[0] & 0x80:
        raise _err(AttestationReason.MALFORMED, f"{what}: not a small non-negative INTEGER", what)
    return int.from_bytes(body, "big")


@dataclasses.dataclass(frozen=True)
class _SignerCert:
    cert: x509.Certificate
    key: ec.EllipticCurvePublicKey
    kind: str  # "VCEK" or "VLEK"
    ints: dict[str, int]  # the INTEGER extensions by [VCEK] name
    hwid: bytes | None
    display: dict[str, Any]  # every AMD extension, JSON-safe


def _amd_extensions(cert: x509.Certificate) -> tuple[dict[str, int], bytes | None, dict[str, Any]]:
    exts = list(cert.extensions)  # already parsed by _materialize
    ints: dict[str, int] = {}
    hwid: bytes | None = None
    display: dict[str, Any] = {}
    for ext in exts:
        oid = ext.oid.dotted_string
        if not oid.startswith(_AMD_OID) or not isinstance(ext.value, x509.UnrecognizedExtension):
            continue
        name = _EXT_NAMES.get(oid[len(_AMD_OID) :])
        if name is None:
            continue
        raw = ext.value.value
        if name in _INT_EXTS:
            ints[name] = display[name] = _der_uint(raw, name)
        elif name == "hwID":
            # KDS writes the chip id raw (64 bytes; 8 on Turin); accept an OCTET STRING wrapper too.
            hwid = _der_tlv(raw, 0x04, name) if len(raw) in (66, 10) and raw[0] == 0x04 else raw
            display[name] = hwid.hex()
        else:  # productName1, csp_id: IA5String, display only (a surprise encoding is shown as hex)
            try:
                display[name] = _der_tlv(raw, 0x16, name).decode("ascii")
            except (AttestationError, UnicodeDecodeError):
                display[name] = raw.hex()
    return ints, hwid, display


def _materialize(cert: x509.Certificate, what: str) -> x509.Certificate:
    """Parse every lazily decoded part of ``cert`` now. pyca/cryptography decodes names,
    extensions, keys and algorithm parameters on first access and raises ValueError, TypeError
    or UnsupportedAlgorithm from there; verify_chain would let those escape untyped."""
    try:
        # Odd-but-parsable names and serial 0 (every AMD VCEK) only warn; the verdict is ours.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _ = (cert.subject, cert.issuer, cert.extensions, cert.public_key())
            _ = (cert.signature_hash_algorithm, cert.signature_algorithm_parameters, cert.signature, cert.tbs_certificate_bytes)
            _ = (cert.not_valid_before_utc, cert.not_valid_after_utc)
    except UnsupportedAlgorithm as e:
        raise _err(AttestationReason.UNSUPPORTED, f"{what}: {e}", what) from None
    except (ValueError, TypeError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as e:
        raise _err(AttestationReason.MALFORMED, f"{what}: {e}", what) from None
    return cert


def _load_certs(data: bytes, what: str) -> list[x509.Certificate]:
    """DER (one certificate) or PEM (one or more). x509.InvalidVersion is not a ValueError,
    so load_der/load_pem_chain let it through: typed here."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return load_pem_chain(data, platform=PLATFORM, what=what)
        return [load_der(data, platform=PLATFORM, what=what)]
    except x509.InvalidVersion as e:
        raise _err(AttestationReason.MALFORMED, f"{what}: {e}", what) from None


def _load_signer(data: bytes) -> _SignerCert:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _err(AttestationReason.MALFORMED, "signer certificate must be bytes", "signer_cert")
    certs = _load_certs(bytes(data), "signer_cert")
    if len(certs) != 1:
        raise _err(AttestationReason.MALFORMED, f"expected one signer certificate, got {len(certs)}", "signer_cert")
    cert = _materialize(certs[0], "signer_cert")
    # [VCEK]: subject CN is SEV-VCEK or SEV-VLEK; both keys are ECDSA P-384.
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    cn = cns[0].value if len(cns) == 1 else None
    kind = {"SEV-VCEK": "VCEK", "SEV-VLEK": "VLEK"}.get(cn) if isinstance(cn, str) else None
    if kind is None:
        raise _err(
            AttestationReason.CHAIN_INVALID, f"signer certificate CN {cn!r} is neither SEV-VCEK nor SEV-VLEK", "signer_cert"
        )
    key = cert.public_key()
    if not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1)):
        raise _err(AttestationReason.UNSUPPORTED, "signer key is not ECDSA P-384", "signer_cert")
    ints, hwid, display = _amd_extensions(cert)
    return _SignerCert(cert, key, kind, ints, hwid, display)


@functools.cache
def _bundled_chains() -> tuple[tuple[x509.Certificate, ...], ...]:
    """The bundled KDS chains, parsed once per process (they never change)."""
    base = resources.files("shardguard.attestation") / "data" / "amd"
    return tuple(
        tuple(load_pem_chain(base.joinpath(name).read_bytes(), platform=PLATFORM, what=name)) for name in _BUNDLED_CHAINS
    )


@functools.lru_cache(maxsize=64)
def _parse_chain(pem: bytes) -> tuple[x509.Certificate, ...]:
    # Callers usually pass the same KDS chain every time; parsing it is most of the fixed cost.
    if not pem.lstrip().startswith(b"-----BEGIN"):
        raise _err(AttestationReason.MALFORMED, "chain must be PEM", "chain")
    return tuple(_materialize(c, "chain") for c in _load_certs(pem, "chain"))


def _select_chain(leaf: x509.Certificate, chain: bytes | None) -> tuple[x509.Certificate, ...]:
    if chain is not None:
        if not isinstance(chain, bytes | bytearray | memoryview):
            raise _err(AttestationReason.MALFORMED, "chain must be PEM bytes", "chain")
        certs = _parse_chain(bytes(chain))
        if len(certs) != 2:
            raise _err(
                AttestationReason.CHAIN_INVALID, f"chain must be ASK/ASVK then ARK, got {len(certs)} certificates", "chain"
            )
        return certs
    # Names are only a filter: verify_chain then checks the issuer's signature and the pinned root.
    for certs in _bundled_chains():
        if leaf.issuer == certs[0].subject:
            return certs
    raise _err(
        AttestationReason.CHAIN_INVALID,
        f"no bundled AMD ASK/ASVK issued the signer certificate (issuer {leaf.issuer.rfc4514_string()}); pass its chain",
        "chain",
    )


def _verify_report_signature(rep: SnpReport, key: ec.EllipticCurvePublicKey) -> None:
    # [ABI] R and S are zero-extended 72-byte little-endian integers; a P-384 value never needs
    # more than 384 bits, so anything larger (or zero) cannot be a valid signature.
    r, s = rep.signature_r, rep.signature_s
    if not (0 < r < 1 << 384 and 0 < s < 1 << 384):
        raise _err(AttestationReason.BAD_SIGNATURE, "signature R/S out of range", "signature")
    try:
        key.verify(encode_dss_signature(r, s), rep.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise _err(AttestationReason.BAD_SIGNATURE, "report signature does not verify with the signer key", "signature") from None


def _check_tcb(rep: SnpReport, signer: _SignerCert, product: str) -> TcbVersion:
    """The signer certificate was issued for one TCB: its SPL extensions must equal the
    report's REPORTED_TCB, or the report was signed under a key for another firmware level."""
    reported = decode_tcb(rep.reported_tcb, product)
    wrong = []
    for name, value in reported.components().items():
        cert_value = signer.ints.get(name)
        if cert_value != value:
            wrong.append(f"{name} report {value} cert {cert_value}")
    if wrong:
        raise _err(AttestationReason.TCB_MISMATCH, "; ".join(wrong), "reported_tcb")
    if signer.kind == "VCEK":
        # Turin VCEKs carry an 8-byte hwID: the first 8 bytes of CHIP_ID ([VCEK] KDS interface).
        if signer.hwid is None:
            raise _err(AttestationReason.TCB_MISMATCH, "VCEK has no hwID extension", "chip_id")
        if len(signer.hwid) not in (8, 64) or rep.chip_id[: len(signer.hwid)] != signer.hwid:
            detail = "chip_id is masked (all zero)" if not any(rep.chip_id) else "chip_id differs from the VCEK hwID"
            raise _err(AttestationReason.TCB_MISMATCH, detail, "chip_id")
    elif signer.hwid is not None and any(rep.chip_id) and rep.chip_id[: len(signer.hwid)] != signer.hwid:
        # VLEKs are not chip-bound and normally have no hwID; if one does, it must still agree.
        raise _err(AttestationReason.TCB_MISMATCH, "chip_id differs from the VLEK hwID", "chip_id")
    return reported


def _check_guest(rep: SnpReport) -> None:
    """What the signed report says of the guest that no policy may accept (review finding):
    a report the hypervisor asked for (VMPL 0xFFFFFFFF: its REPORT_DATA is not the guest's),
    guest policy bits this verifier does not know or that the ABI fixes, and a migration agent
    named while the policy allows none. (MIGRATE_MA and DEBUG are the policy's to judge.)"""
    if rep.vmpl > 3:
        raise _err(AttestationReason.UNSUPPORTED, f"VMPL {rep.vmpl:#x}: a report the hypervisor requested, not the guest", "vmpl")
    if not rep.policy & _POLICY_MUST_BE_ONE:
        raise _err(AttestationReason.MALFORMED, "guest policy bit 17 (reserved, must be one) is clear", "policy")
    unknown = rep.policy & ~_POLICY_KNOWN
    if unknown:
        raise _err(AttestationReason.UNSUPPORTED, f"guest policy sets bits {unknown:#x} this verifier cannot judge", "policy")
    if not rep.policy & _POLICY_MIGRATE_MA and rep.report_id_ma != _NO_MIGRATION_AGENT:
        raise _err(
            AttestationReason.MIGRATION_AGENT, "REPORT_ID_MA names a migration agent the guest policy forbids", "report_id_ma"
        )
    if rep.signer_info & ~0x1F:  # AUTHOR_KEY_EN, MASK_CHIP_KEY, SIGNING_KEY; the rest is reserved
        raise _err(AttestationReason.MALFORMED, f"SIGNER_INFO sets reserved bits {rep.signer_info & ~0x1F:#x}", "signer_info")


def verify_sev_snp(
    report: bytes,
    *,
    signer_cert: bytes,
    chain: bytes | None = None,
    at: dt.datetime | None = None,
    roots: Mapping[bytes, str] = SNP_ROOTS,
) -> Verified:
    """Verify an SEV-SNP attestation report offline and return what it proves.

    ``signer_cert``: the VCEK or VLEK (DER or PEM) — from AMD KDS or the host's certificate
    table. ``chain``: PEM of the ASK (VCEK) or ASVK (VLEK) followed by the ARK; by default the
    bundled AMD chain whose intermediate issued the signer is used. ``at``: when the
    certificates must be valid (default now; reports have no timestamp). ``roots``: pinned ARK
    keys, SPKI SHA-256 → "ARK-<product>".

    Checks, in order: the report parses; the signer kind matches the report's SIGNING_KEY
    (CHAIN_INVALID); ECDSA P-384/SHA-384 over ``[0, 0x2A0)`` (BAD_SIGNATURE); signer → ASK/ASVK
    → pinned ARK, all valid at ``at``; the report's CPUID names the same product as the root;
    REPORTED_TCB equals the certificate's SPLs and CHIP_ID its hwID (TCB_MISMATCH); the guest
    (:func:`_check_guest`: VMPL, guest policy bits, REPORT_ID_MA, SIGNER_INFO). Policy (debug,
    migration agent, alias check, TCB floor, measurements) is for :class:`VerificationPolicy`.
    """
    rep = parse_report(report)
    signer = _load_signer(signer_cert)
    # Before the signature: a VLEK report checked against a VCEK (or the reverse) is a
    # configuration error, and should say so rather than "bad signature".
    if signer.kind != rep.signing_key:
        raise _err(
            AttestationReason.CHAIN_INVALID,
            f"report is signed by a {rep.signing_key}, certificate is a {signer.kind}",
            "signer_cert",
        )
    _verify_report_signature(rep, signer.key)

    certs = _select_chain(signer.cert, chain)
    when = at if at is not None else dt.datetime.now(dt.UTC)
    inter = "ASVK" if signer.kind == "VLEK" else "ASK"
    root_name = verify_chain([signer.cert, *certs], pinned=roots, at=when, platform=PLATFORM, names=[signer.kind, inter, "ARK"])
    # A VLEK must come from an ASVK (CN SEV-VLEK-<product>) and a VCEK from an ASK: both are
    # AMD-signed names now, so this catches a chain of the wrong kind, not a forgery.
    inter_cn = certs[0].subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    is_asvk = bool(inter_cn) and str(inter_cn[0].value).startswith("SEV-VLEK-")
    if is_asvk != (signer.kind == "VLEK"):
        raise _err(AttestationReason.CHAIN_INVALID, f"a {signer.kind} must be issued by an {inter}", "chain")
    product = _ROOT_PRODUCT.get(root_name)
    if product is None:
        raise _err(AttestationReason.UNSUPPORTED, f"pinned root {root_name!r} names no known product", "chain")
    if rep.cpuid_fam_id is not None and rep.cpuid_product != product:
        raise _err(
            AttestationReason.CHAIN_INVALID,
            f"report CPUID family {rep.cpuid_fam_id:#x} model {rep.cpuid_mod_id or 0:#x} is not {product} (root {root_name})",
            "cpuid",
        )
    _check_tcb(rep, signer, product)
    _check_guest(rep)

    fields = rep.fields(product)
    fields.update(
        product=product,
        root=root_name,
        signer_cert_extensions=signer.display,
        signer_valid_from=signer.cert.not_valid_before_utc.isoformat(),
        signer_valid_until=signer.cert.not_valid_after_utc.isoformat(),
    )
    return Verified(
        platform=PLATFORM,
        measurements={
            "measurement": rep.measurement.hex(),
            "host_data": rep.host_data.hex(),
            "id_key_digest": rep.id_key_digest.hex(),
            "author_key_digest": rep.author_key_digest.hex(),
            "family_id": rep.family_id.hex(),
            "image_id": rep.image_id.hex(),
            # Pinnable: with an SVSM or a paravisor at VMPL 0 the guest OS runs (and asks for
            # its reports) at a higher VMPL; the measurement is the launch image's.
            "vmpl": rep.vmpl.to_bytes(4, "big").hex(),
        },
        tcb_status="n/a",  # SNP has no Intel-style status: the decoded TCBs are in fields["tcb"]
        debug=rep.debug,
        report_data=rep.report_data,
        fields=fields,
    )
