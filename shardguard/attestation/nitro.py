"""AWS Nitro Enclaves attestation documents, verified offline (ARCHITECTURE §5).

A document is a COSE_Sign1 message (RFC 9052 §4.2), tagged with CBOR tag 18 or, as the Nitro
Security Module actually emits it, untagged (RFC 9052 §2). Its protected header is ``{1: -35}``
(alg = ES384, RFC 9052 §3.1 / RFC 9053 §2.1), its payload is the attestation document map and its
signature is the raw 96-byte ``r‖s`` of an ECDSA P-384/SHA-384 signature (RFC 9053 §2.1) over the
Sig_structure ``["Signature1", protected, h'', payload]`` (RFC 9052 §4.4), made with the key of
the payload's leaf ``certificate``.

The payload layout and its syntactic limits follow AWS's "Nitro Enclaves Attestation Process"
(aws/aws-nitro-enclaves-nsm-api ``docs/attestation_process.md``: §2.2 the document, §3.2.2 the
field checks, §3.2.3 the chain ``certificate → cabundle[N-1] → … → cabundle[0] = root``) and the
Nitro Enclaves User Guide, "Verifying the root of trust". The root is pinned by the SHA-256 of
its SubjectPublicKeyInfo (never by name), and every certificate is checked *as of the document's
own timestamp*: the leaf lives about three hours, so "now" would reject every stored document,
and freshness is the policy's ``max_age_seconds`` check, not the verifier's.

Check order: syntax, then the certificate chain, then the COSE signature. Trust in the signing
key is established before the key is used, as in AWS's flow (§3.2), and a swapped root is
reported as ``UNTRUSTED_ROOT`` rather than as the signature failure it also causes.

Base64 input (as some SDKs hand documents around) is the caller's business: this module takes
the raw CBOR bytes and guesses nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import io
import types
import warnings
from collections.abc import Mapping
from typing import Any, Final, TypeGuard

import cbor2
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from shardguard.attestation.errors import AttestationError, AttestationReason
from shardguard.attestation.memo import Memo
from shardguard.attestation.result import Verified
from shardguard.attestation.sigbatch import deferred, signature_holds
from shardguard.attestation.x509chain import load_der, spki_sha256, verify_chain

__all__ = ["MAX_DOCUMENT_SIZE", "NITRO_ROOTS", "NitroDocument", "parse_document", "verify_nitro"]

PLATFORM: Final = "nitro"

#: Pinned Nitro roots: SHA-256 of the DER SubjectPublicKeyInfo → name. The AWS Nitro Enclaves
#: root G1 (CN=aws.nitro-enclaves, 2019-10-28 to 2049-10-28), computed from
#: fixtures/attestation/nitro/aws_nitro_enclaves_root_g1.pem. The SHA-256 of that DER
#: certificate is 641A0321A3E244EFE456463195D606317ED7CDCC3C1756E09893F3C68F79BB5B, the value AWS
#: publishes. The certificate itself is not needed at run time: every document carries it as
#: ``cabundle[0]``; only its key is trusted.
NITRO_ROOTS: Final[Mapping[bytes, str]] = types.MappingProxyType(
    {bytes.fromhex("f2caf5ecc6190b4a8399b78bc58a2bbcd0382375db8a1bfd78a82743874fd225"): "aws-nitro-enclaves-root-g1"}
)

#: Real documents are about 4.5 KiB (AWS caps the payload at 16 KiB, §3.1); the cap bounds the
#: work an unauthenticated input can cause before any signature is checked.
MAX_DOCUMENT_SIZE: Final = 64 * 1024

_NO_ROOTS: Final[Mapping[bytes, str]] = types.MappingProxyType({})
_TAG_COSE_SIGN1: Final = 18  # RFC 9052 §2, Table 1
_HEADER_ALG: Final = 1  # RFC 9052 §3.1
_ALG_ES384: Final = -35  # RFC 9053 §2.1
_SIGNATURE_LEN: Final = 96  # r‖s, 48 bytes each for P-384 (RFC 9053 §2.1)
_COORD_LEN: Final = 48
_PCR_LEN: Final = 48  # SHA-384 digests: "SHA384" is the only digest AWS defines
_PCR_INDICES: Final = range(32)  # AWS §2.2: index = 0..31
_DEBUG_PCRS: Final = (0, 1, 2)  # all zero in debug mode (specs/enclave-backends.md §1.3; fixture evervault_debug_*)
_MAX_PUBLIC_KEY: Final = 1024  # AWS §3.2.2.2
_MAX_USER_DATA: Final = 512  # AWS §3.2.2.2
_MAX_NONCE: Final = 512  # AWS §3.2.2.2
# Real bundles hold 4 certificates. Every link below the root is checked before the root's
# signature fails, so a long self-made bundle would buy an attacker that many ECDSA checks.
_MAX_CABUNDLE: Final = 16
# The deepest genuine nesting is payload → pcrs → value; anything much deeper is hostile.
_MAX_CBOR_DEPTH: Final = 8
_MAX_TIMESTAMP_MS: Final = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last instant datetime holds
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

_REQUIRED_KEYS: Final = frozenset({"module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle"})
_OPTIONAL_KEYS: Final = frozenset({"public_key", "user_data", "nonce"})

# cbor2 6.3 raises CBORDecodeError (not a ValueError) for most bad input, but hostile input can
# still surface the others from its C decoder or from the semantic-tag decoders it runs.
_DECODE_ERRORS: Final = (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError, MemoryError, EOFError)

# What cryptography raises for a damaged certificate, found by fuzzing genuine documents: most
# are not ValueErrors (TypeError: a name attribute of the wrong ASN.1 type).
_CERT_ERRORS: Final = (
    ValueError,
    TypeError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)

_R = AttestationReason


def _fail(reason: AttestationReason, detail: str, field: str = "") -> AttestationError:
    return AttestationError(reason, detail, platform=PLATFORM, field=field)


def _is_int(v: object) -> TypeGuard[int]:
    # CBOR true/false decode to bool, a subclass of int: True must not pass for PCR index 1.
    return isinstance(v, int) and not isinstance(v, bool)


def _hex(v: bytes | None) -> str | None:
    return None if v is None else v.hex()


def _short(v: object) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclasses.dataclass(frozen=True, kw_only=True)
class NitroDocument:
    """A syntactically valid attestation document; nothing about it is proven yet.

    ``protected``, ``payload`` and ``signature`` are the COSE_Sign1 members exactly as received
    (the signature covers those bytes, not a re-encoding). The other fields are the payload's
    (AWS §2.2); ``None`` stands for an absent or null optional field.
    """

    protected: bytes
    payload: bytes
    signature: bytes
    tagged: bool
    module_id: str
    digest: str
    timestamp_ms: int
    pcrs: Mapping[int, bytes]
    certificate: bytes
    cabundle: tuple[bytes, ...]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None

    @property
    def timestamp(self) -> dt.datetime:
        """The document's creation time (aware UTC), millisecond precision."""
        return _EPOCH + dt.timedelta(milliseconds=self.timestamp_ms)

    @property
    def debug(self) -> bool:
        """Debug-mode enclaves report PCR0, PCR1 and PCR2 as all zeros (AWS Nitro Enclaves docs, as
        summarised in specs/enclave-backends.md §1.3). A policy that pins PCR0 refuses them anyway;
        one that does not relies on this flag."""
        return all(not any(self.pcrs[i]) for i in _DEBUG_PCRS)

    def to_be_signed(self) -> bytes:
        """The CBOR-encoded Sig_structure ``["Signature1", protected, h'', payload]`` (RFC 9052 §4.4)."""
        return cbor2.dumps(["Signature1", self.protected, b"", self.payload])


def _decode(data: bytes, *, what: str, field: str, outer: bool) -> Any:
    """Decode exactly one CBOR item that fills ``data``.

    Duplicate map keys and indefinite lengths are refused: the NSM never emits them, and
    duplicate keys are where two parsers can read different documents from the same bytes.
    Only a cut-off outer document is TRUNCATED; an inner item that ends early is a malformed
    (and, for the payload, signed) byte string.
    """
    fp = io.BytesIO(data)
    try:
        decoder = cbor2.CBORDecoder(fp, max_depth=_MAX_CBOR_DEPTH, allow_indefinite=False, allow_duplicate_keys=False)
        obj = decoder.decode()
    except cbor2.CBORDecodeEOF:
        reason = _R.TRUNCATED if outer else _R.MALFORMED
        raise _fail(reason, f"{what} ends before its CBOR item does", field) from None
    except _DECODE_ERRORS as e:
        raise _fail(_R.MALFORMED, f"{what} is not valid CBOR ({type(e).__name__}: {e})", field) from None
    if fp.tell() != len(data):
        raise _fail(_R.TRAILING_DATA, f"{len(data) - fp.tell()} bytes after the {what}", field)
    return obj


def _check_protected(protected: bytes) -> None:
    """The protected header must be exactly ``{1: -35}`` (alg = ES384), the only one the NSM uses.

    Any other algorithm, a missing one, or extra parameters (e.g. ``crit``, RFC 9052 §3.1, which
    we would be obliged to understand) is UNSUPPORTED rather than silently ignored.
    """
    if not protected:
        # RFC 9052 §3: a zero-length bstr encodes the empty map, i.e. no algorithm at all.
        raise _fail(_R.UNSUPPORTED, "protected header is empty: no algorithm", "protected")
    hdr = _decode(protected, what="protected header", field="protected", outer=False)
    if not isinstance(hdr, Mapping):
        raise _fail(_R.MALFORMED, "protected header is not a map", "protected")
    if len(hdr) != 1:
        raise _fail(_R.UNSUPPORTED, f"protected header must be exactly {{1: -35}}, has {len(hdr)} parameters", "protected")
    ((label, alg),) = hdr.items()
    if not _is_int(label) or label != _HEADER_ALG:
        raise _fail(_R.UNSUPPORTED, f"protected header has no alg, only label {_short(label)}", "protected")
    if not _is_int(alg) or alg != _ALG_ES384:
        raise _fail(_R.UNSUPPORTED, f"algorithm {_short(alg)} is not ES384 (-35)", "protected")


def _bstr(doc: Mapping[str, Any], key: str, *, lo: int, hi: int | None) -> bytes:
    v = doc[key]
    if not isinstance(v, bytes):
        raise _fail(_R.MALFORMED, f"must be a byte string, is {type(v).__name__}", key)
    if len(v) < lo or (hi is not None and len(v) > hi):
        bound = f"{lo}..{hi}" if hi is not None else f"at least {lo}"
        raise _fail(_R.MALFORMED, f"length {len(v)} is outside {bound}", key)
    return v


def _optional_bstr(doc: Mapping[str, Any], key: str, hi: int) -> bytes | None:
    # AWS §3.2.2.1 says no field may be null, but genuine documents (every fixture) carry
    # explicit nulls for unset optional fields: null is read as absent.
    if doc.get(key) is None:
        return None
    return _bstr(doc, key, lo=0, hi=hi)


def _parse_pcrs(raw: object) -> Mapping[int, bytes]:
    if not isinstance(raw, Mapping):
        raise _fail(_R.MALFORMED, f"must be a map, is {type(raw).__name__}", "pcrs")
    pcrs: dict[int, bytes] = {}
    for index, value in raw.items():
        if not _is_int(index) or index not in _PCR_INDICES:
            raise _fail(_R.MALFORMED, f"PCR index {_short(index)} is not an integer 0..31", "pcrs")
        if not isinstance(value, bytes) or len(value) != _PCR_LEN:
            raise _fail(_R.MALFORMED, f"PCR{index} is not a {_PCR_LEN}-byte SHA-384 value", f"pcrs.{index}")
        pcrs[index] = value
    missing = [i for i in _DEBUG_PCRS if i not in pcrs]
    if missing:
        # PCR0-2 identify the image, kernel and application: a document without them says nothing.
        raise _fail(_R.MALFORMED, f"PCR{missing[0]} is missing (PCR0-2 are required)", "pcrs")
    return types.MappingProxyType(dict(sorted(pcrs.items())))


def _parse_cabundle(raw: object) -> tuple[bytes, ...]:
    if not isinstance(raw, list):
        raise _fail(_R.MALFORMED, f"must be an array, is {type(raw).__name__}", "cabundle")
    if not 1 <= len(raw) <= _MAX_CABUNDLE:
        raise _fail(_R.MALFORMED, f"{len(raw)} certificates, expected 1..{_MAX_CABUNDLE}", "cabundle")
    for i, der in enumerate(raw):
        if not isinstance(der, bytes) or not der:
            raise _fail(_R.MALFORMED, "must be a non-empty byte string (DER certificate)", f"cabundle[{i}]")
    return tuple(raw)


def parse_document(data: bytes) -> NitroDocument:
    """Parse a COSE_Sign1 attestation document (RFC 9052 §4.2; AWS §3.1, §3.2.2) without
    checking any signature or certificate. Raises :class:`AttestationError` on anything else.
    """
    data = bytes(data)
    if len(data) > MAX_DOCUMENT_SIZE:
        raise _fail(_R.MALFORMED, f"{len(data)} bytes exceeds the {MAX_DOCUMENT_SIZE}-byte limit", "document")
    outer = _decode(data, what="document", field="document", outer=True)
    tagged = False
    if isinstance(outer, cbor2.CBORTag):
        if outer.tag != _TAG_COSE_SIGN1:
            raise _fail(_R.UNSUPPORTED, f"CBOR tag {outer.tag} is not COSE_Sign1 (18)", "document")
        outer, tagged = outer.value, True  # cbor2 hands a tagged array over as a tuple
    if not isinstance(outer, list | tuple) or len(outer) != 4:
        raise _fail(_R.MALFORMED, "COSE_Sign1 must be an array [protected, unprotected, payload, signature]", "document")
    protected, unprotected, payload, signature = outer
    if not isinstance(protected, bytes):
        raise _fail(_R.MALFORMED, "protected header must be a byte string", "protected")
    _check_protected(protected)
    # Inside tag 18 cbor2 decodes maps as its immutable frozendict, hence Mapping, not dict.
    if not isinstance(unprotected, Mapping):
        raise _fail(_R.MALFORMED, "unprotected header must be a map", "unprotected")
    if unprotected:
        # Unsigned parameters can only mislead: the NSM always sends {} and we read none.
        raise _fail(_R.UNSUPPORTED, f"unprotected header must be empty, has {len(unprotected)} parameters", "unprotected")
    if payload is None:
        raise _fail(_R.UNSUPPORTED, "detached payload (nil) is not supported", "payload")
    if not isinstance(payload, bytes):
        raise _fail(_R.MALFORMED, "payload must be a byte string", "payload")
    if not isinstance(signature, bytes) or len(signature) != _SIGNATURE_LEN:
        got = f"{len(signature)} bytes" if isinstance(signature, bytes) else type(signature).__name__
        raise _fail(_R.MALFORMED, f"ES384 signature must be {_SIGNATURE_LEN} bytes (r‖s), is {got}", "signature")

    doc = _decode(payload, what="payload", field="payload", outer=False)
    if not isinstance(doc, Mapping):
        raise _fail(_R.MALFORMED, "attestation document is not a map", "payload")
    unknown = [k for k in doc if not isinstance(k, str) or k not in _REQUIRED_KEYS | _OPTIONAL_KEYS]
    if unknown:
        raise _fail(_R.MALFORMED, f"unknown keys {[_short(k) for k in unknown]}", "payload")
    missing = sorted(_REQUIRED_KEYS - doc.keys())
    if missing:
        raise _fail(_R.MALFORMED, f"missing keys {missing}", "payload")

    module_id = doc["module_id"]
    if not isinstance(module_id, str) or not module_id:
        raise _fail(_R.MALFORMED, "must be a non-empty text string", "module_id")
    digest = doc["digest"]
    if not isinstance(digest, str):
        raise _fail(_R.MALFORMED, "must be a text string", "digest")
    if digest != "SHA384":
        raise _fail(_R.UNSUPPORTED, f"digest {_short(digest)} is not SHA384", "digest")
    timestamp = doc["timestamp"]
    if not _is_int(timestamp) or not 0 < timestamp <= _MAX_TIMESTAMP_MS:
        raise _fail(_R.MALFORMED, f"{_short(timestamp)} is not a positive millisecond time", "timestamp")

    return NitroDocument(
        protected=protected,
        payload=payload,
        signature=signature,
        tagged=tagged,
        module_id=module_id,
        digest=digest,
        timestamp_ms=timestamp,
        pcrs=_parse_pcrs(doc["pcrs"]),
        certificate=_bstr(doc, "certificate", lo=1, hi=None),
        cabundle=_parse_cabundle(doc["cabundle"]),
        public_key=_optional_bstr(doc, "public_key", _MAX_PUBLIC_KEY),
        user_data=_optional_bstr(doc, "user_data", _MAX_USER_DATA),
        nonce=_optional_bstr(doc, "nonce", _MAX_NONCE),
    )


# Certificates already loaded and checked, by their exact DER (memo.py): a region's documents
# share their four CA certificates, and one enclave signs many documents with one leaf.
_CERTS = Memo(256)


def _load_cert(der: bytes, what: str) -> x509.Certificate:
    """Load a DER certificate and force every part the chain check reads (once per exact DER).

    cryptography parses the key, names, algorithms and extensions lazily, and the shared chain
    code reads some of them outside its own error handling: a bit flip there would escape as a
    bare exception. Reading them here names the certificate at fault. ``load_der`` catches only
    ValueError, and a bad version number raises InvalidVersion, which is not one.
    """
    return _CERTS.get(bytes(der), functools.partial(_load_cert_now, der, what))


def _load_cert_now(der: bytes, what: str) -> x509.Certificate:
    try:
        cert = load_der(der, platform=PLATFORM, what=what)
    except _CERT_ERRORS as e:
        raise _fail(_R.MALFORMED, f"{what}: {type(e).__name__}: {e}", what) from None
    try:
        # A damaged name (e.g. a 7-letter country) only warns; the chain check refuses it anyway.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cert.public_key()
            _ = (cert.signature_hash_algorithm, cert.subject, cert.issuer, cert.extensions)
            _ = (cert.not_valid_before_utc, cert.not_valid_after_utc)
    except UnsupportedAlgorithm as e:
        raise _fail(_R.UNSUPPORTED, f"{what}: {e}", what) from None
    except _CERT_ERRORS as e:
        raise _fail(_R.MALFORMED, f"{what}: {type(e).__name__}: {e}", what) from None
    return cert


def _verify_signature(doc: NitroDocument, leaf: x509.Certificate) -> None:
    """ES384 over the Sig_structure (RFC 9052 §4.4) with the leaf's key; ``r‖s`` → DER for OpenSSL."""
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        # ES384's 96-byte signature only fits P-384 (RFC 9053 §2.1); any other key is a misissued leaf.
        raise _fail(_R.UNSUPPORTED, "ES384 needs a P-384 leaf key", "certificate")
    r = int.from_bytes(doc.signature[:_COORD_LEN], "big")
    s = int.from_bytes(doc.signature[_COORD_LEN:], "big")
    check = functools.partial(key.verify, utils.encode_dss_signature(r, s), doc.to_be_signed(), ec.ECDSA(hashes.SHA384()))
    if not signature_holds(check):
        raise _fail(_R.BAD_SIGNATURE, "COSE_Sign1 signature does not verify with the leaf key", "signature")


def verify_nitro(
    document: bytes,
    *,
    roots: Mapping[bytes, str] = NITRO_ROOTS,
    simulated_roots: Mapping[bytes, str] = _NO_ROOTS,
) -> Verified:
    """Verify a raw (CBOR, not base64) Nitro attestation document, offline.

    ``roots`` and ``simulated_roots`` map SPKI SHA-256 → name. A document whose ``cabundle[0]``
    key is in ``simulated_roots`` verifies with ``simulated=True``, which the policy refuses unless
    ``allow_simulated`` (ARCHITECTURE §5). The chain is ``certificate → cabundle[N-1] → … →
    cabundle[0]`` (AWS §3.2.3) and is valid as of the document's timestamp, never the current
    time. Freshness, debug mode and PCR allow-lists are the policy's checks.
    """
    # Its five signature checks are proven together at the end, on two cores (sigbatch.py);
    # the outcome, and the first failure's reason, are those of checking each in place.
    return deferred(functools.partial(_verify, document, roots, simulated_roots))


def _verify(document: bytes, roots: Mapping[bytes, str], simulated_roots: Mapping[bytes, str]) -> Verified:
    doc = parse_document(document)
    leaf = _load_cert(doc.certificate, "certificate")
    bundle = [_load_cert(der, f"cabundle[{i}]") for i, der in enumerate(doc.cabundle)]
    chain = [leaf, *reversed(bundle)]
    names = ["certificate", *(f"cabundle[{i}]" for i in reversed(range(len(bundle))))]
    at = doc.timestamp
    try:
        # The DERs the certificates were loaded from (_load_cert): the link memo's keys.
        ders = [doc.certificate, *reversed(doc.cabundle)]
        root_name = verify_chain(chain, pinned={**roots, **simulated_roots}, at=at, platform=PLATFORM, names=names, ders=ders)
    except UnsupportedAlgorithm as e:  # safety net; _load_cert should have caught these already
        raise _fail(_R.UNSUPPORTED, f"certificate chain: {e}", "cabundle") from None
    except _CERT_ERRORS as e:
        raise _fail(_R.MALFORMED, f"certificate chain: {type(e).__name__}: {e}", "cabundle") from None
    _verify_signature(doc, leaf)

    root_key = spki_sha256(bundle[0])
    fields: dict[str, Any] = {
        "module_id": doc.module_id,
        "digest": doc.digest,
        "timestamp_ms": doc.timestamp_ms,
        "timestamp": at.isoformat(),
        "pcrs": {str(i): v.hex() for i, v in doc.pcrs.items()},
        "certificate_sha256": hashlib.sha256(doc.certificate).hexdigest(),
        "certificate_subject": leaf.subject.rfc4514_string(),
        "cabundle_size": len(doc.cabundle),
        "root": root_name,
        "root_spki_sha256": root_key.hex(),
        "chain_valid_from": max(c.not_valid_before_utc for c in chain).isoformat(),
        "chain_valid_until": min(c.not_valid_after_utc for c in chain).isoformat(),
        "cose_tagged": doc.tagged,
        "public_key": _hex(doc.public_key),
        "user_data": _hex(doc.user_data),
        "nonce": _hex(doc.nonce),
    }
    return Verified(
        platform=PLATFORM,
        measurements={f"pcr{i}": v.hex() for i, v in doc.pcrs.items()},
        tcb_status="n/a",
        debug=doc.debug,
        report_data=doc.user_data or b"",
        nonce=doc.nonce,
        public_key=doc.public_key,
        signing_time=at,
        simulated=root_key in simulated_roots,
        fields=fields,
    )
