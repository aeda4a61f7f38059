"""AWS Nitro attestation documents (shardguard.attestation.nitro).

Genuine documents from real enclaves must verify with exactly the fields recorded in
expected_fields.json; every change to them must be refused with its exact reason; a test PKI
built here covers what genuine documents cannot show (expiry edges, a look-alike root, a
simulated root, broken CA flags, oversized fields).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import functools
import hashlib
import io
import json
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardguard.attestation import memo, nitro, x509chain
from shardguard.attestation.errors import AttestationError
from shardguard.attestation.errors import AttestationReason as R
from shardguard.attestation.nitro import MAX_DOCUMENT_SIZE, NITRO_ROOTS, parse_document, verify_nitro
from shardguard.attestation.policy import VerificationPolicy
from shardguard.attestation.result import Verified
from shardguard.attestation.x509chain import spki_sha256

from .conftest import fixture_bytes

SAMPLES = [
    "evervault_prod_2022-10-13.cbor",
    "evervault_debug_2023-09-18.b64",
    "anjuna_prod_pubkey_2021-03-24.cbor",
    "anjuna_prod_userdata_2023-09-21.cbor",
    "anjuna_debug_full_2024-01-24.cbor",
]
PROD = "evervault_prod_2022-10-13.cbor"
FULL = "anjuna_debug_full_2024-01-24.cbor"  # public_key, user_data and nonce all set
DEBUG_SAMPLES = {"evervault_debug_2023-09-18.b64", "anjuna_debug_full_2024-01-24.cbor"}

FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def sample(name: str) -> bytes:
    """The raw CBOR of a fixture; the .b64 file is base64 text of it (decoding is the caller's job)."""
    raw = fixture_bytes(f"nitro/{name}")
    return base64.b64decode(b"".join(raw.split()), validate=True) if name.endswith(".b64") else raw


@functools.cache
def aws_root() -> x509.Certificate:
    return x509.load_pem_x509_certificate(fixture_bytes("nitro/aws_nitro_enclaves_root_g1.pem"))


def refusal(document: bytes, **kwargs: Any) -> AttestationError:
    with pytest.raises(AttestationError) as info:
        verify_nitro(document, **kwargs)
    assert info.value.platform == "nitro"
    return info.value


def cose(document: bytes) -> list[Any]:
    outer = cbor2.loads(document)
    return list(outer.value if isinstance(outer, cbor2.CBORTag) else outer)


def rebuild(document: bytes, *, payload: dict[str, Any] | None = None, protected: bytes | None = None) -> bytes:
    """The genuine document with a re-encoded payload or protected header and its original signature."""
    prot, unprot, body, sig = cose(document)
    if payload is not None:
        body = cbor2.dumps(payload)
    return cbor2.dumps([prot if protected is None else protected, unprot, body, sig])


# -- genuine samples --------------------------------------------------------------------------------
def test_pinned_root_is_the_aws_g1_key() -> None:
    root = aws_root()
    assert hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest().upper() == (
        "641A0321A3E244EFE456463195D606317ED7CDCC3C1756E09893F3C68F79BB5B"
    )
    assert dict(NITRO_ROOTS) == {spki_sha256(root): "aws-nitro-enclaves-root-g1"}


@pytest.mark.parametrize("name", SAMPLES)
def test_genuine_sample_verifies_with_recorded_fields(name: str, expected: dict[str, Any]) -> None:
    exp = expected["nitro"][name]
    data = sample(name)
    assert hashlib.sha256(data).hexdigest() == exp["cose_sha256_of_decoded_bytes"]

    v = verify_nitro(data)  # every sample is long expired: only "as of the document time" accepts it

    def opt(hex_or_none: str | None) -> bytes | None:
        return None if hex_or_none is None else bytes.fromhex(hex_or_none)

    assert (v.platform, v.tcb_status, v.simulated, v.advisory_ids) == ("nitro", "n/a", False, ())
    assert v.debug is exp["debug_mode"]
    assert v.measurements == {f"pcr{i}": value for i, value in exp["pcrs"].items()}
    assert v.signing_time == dt.datetime.fromisoformat(exp["timestamp_utc"])
    assert v.report_data == (opt(exp["user_data"]) or b"")
    assert v.nonce == opt(exp["nonce"])
    assert v.public_key == opt(exp["public_key"])
    f = v.fields
    assert f["module_id"] == exp["module_id"]
    assert f["digest"] == exp["digest"]
    assert f["timestamp_ms"] == exp["timestamp_ms"]
    assert f["timestamp"] == exp["timestamp_utc"]
    assert f["pcrs"] == exp["pcrs"]
    assert (f["user_data"], f["nonce"], f["public_key"]) == (exp["user_data"], exp["nonce"], exp["public_key"])
    assert f["certificate_subject"] == exp["leaf_subject"]
    assert f["cabundle_size"] == exp["cabundle_len"]
    assert f["cose_tagged"] is exp["cose_tagged"]
    assert (f["chain_valid_from"], f["chain_valid_until"]) == (exp["chain_valid_from"], exp["chain_valid_until"])
    assert f["root"] == "aws-nitro-enclaves-root-g1"
    assert f["certificate_sha256"] == hashlib.sha256(cbor2.loads(cose(data)[2])["certificate"]).hexdigest()
    json.dumps(v.to_dict())  # JSON-safe for the CLI


def test_exactly_the_two_debug_samples_are_debug() -> None:
    assert {name for name in SAMPLES if verify_nitro(sample(name)).debug} == DEBUG_SAMPLES


def test_parse_document_reads_without_verifying() -> None:
    doc = parse_document(sample(FULL))
    assert doc.module_id == "i-0e4fe5de7ee5abe78-enc018d3cadd7d66279"
    assert (doc.user_data, doc.nonce) == (b"Hello World!\n", b"Nonce\n")
    assert doc.public_key is not None and len(doc.public_key) == 294
    assert sorted(doc.pcrs) == list(range(16)) and doc.debug and not doc.tagged and len(doc.cabundle) == 4
    assert doc.to_be_signed() == cbor2.dumps(["Signature1", doc.protected, b"", doc.payload])


def test_tag_18_is_accepted_and_other_tags_are_not() -> None:
    v = verify_nitro(b"\xd2" + sample(PROD))  # RFC 9052 §2: COSE_Sign1_Tagged
    assert v.fields["cose_tagged"] is True and v.measurements == verify_nitro(sample(PROD)).measurements
    assert refusal(b"\xd8\x62" + sample(PROD)).reason is R.UNSUPPORTED  # 98 = COSE_Sign
    assert refusal(b"\xd2\xd2" + sample(PROD)).reason is R.MALFORMED  # tag in a tag


def test_genuine_documents_need_the_pinned_root() -> None:
    assert refusal(sample(PROD), roots={}).reason is R.UNTRUSTED_ROOT
    v = verify_nitro(sample(PROD), roots={}, simulated_roots=NITRO_ROOTS)
    assert v.simulated is True


# -- mutations of genuine documents -----------------------------------------------------------------
def _strict_loads(data: bytes) -> Any:
    fp = io.BytesIO(data)
    obj = cbor2.CBORDecoder(fp, allow_indefinite=False, allow_duplicate_keys=False).decode()
    if fp.tell() != len(data):
        raise ValueError("trailing bytes")
    return obj


CERT_CHANGED = {R.MALFORMED, R.UNSUPPORTED, R.CHAIN_INVALID, R.BAD_SIGNATURE}
UNPARSEABLE = {R.MALFORMED, R.TRAILING_DATA}


def _valid_pcrs(pcrs: Any) -> bool:
    return (
        isinstance(pcrs, dict)
        and all(type(i) is int and 0 <= i < 32 and isinstance(v, bytes) and len(v) == 48 for i, v in pcrs.items())
        and {0, 1, 2} <= set(pcrs)
    )


def reasons_for_signed_change(original: bytes, mutated: bytes) -> set[R]:
    """The reasons a change inside the protected header or payload may give, judged here by
    decoding the changed bytes independently of the verifier. A change in any value the signature
    covers must be BAD_SIGNATURE; a change in a certificate may break the chain first."""
    o_prot, _, o_body, _ = cose(original)
    m_prot, _, m_body, _ = cose(mutated)  # the outer framing is untouched
    if m_prot != o_prot:
        return {R.UNSUPPORTED} | UNPARSEABLE
    try:
        new = _strict_loads(m_body)
    except Exception:
        return UNPARSEABLE
    old = cbor2.loads(o_body)
    if not isinstance(new, dict) or set(new) != set(old):
        return {R.MALFORMED}
    reasons: set[R] = set()
    for key in [k for k in old if type(new[k]) is not type(old[k]) or new[k] != old[k]]:
        value = new[key]
        if type(value) is not type(old[key]):
            reasons |= {R.MALFORMED}
        elif key == "digest":
            reasons |= {R.UNSUPPORTED}
        elif key == "timestamp":  # moves the verification time: out of the chain's window, or beyond
            reasons |= {R.BAD_SIGNATURE, R.CERT_EXPIRED, R.CERT_NOT_YET_VALID, R.MALFORMED}
        elif key == "certificate":
            reasons |= CERT_CHANGED
        elif key == "cabundle":
            if len(value) != len(old[key]) or not all(isinstance(c, bytes) for c in value):
                reasons |= {R.MALFORMED}
            else:
                reasons |= CERT_CHANGED | ({R.UNTRUSTED_ROOT} if value[0] != old[key][0] else set())
        elif key == "pcrs":
            reasons |= {R.BAD_SIGNATURE} if _valid_pcrs(value) else {R.MALFORMED}
        elif key == "module_id":
            reasons |= {R.BAD_SIGNATURE} if value else {R.MALFORMED}
        else:  # public_key, user_data, nonce: same type and length, other content
            reasons |= {R.BAD_SIGNATURE}
    if not reasons:
        # The bytes changed but every value still compares equal in Python (a PCR index turned
        # into the CBOR simple value 8 equals the integer 8): the verifier's strict types refuse
        # it as malformed, or the signature check does.
        reasons = {R.MALFORMED, R.BAD_SIGNATURE}
    return reasons


def signed_positions(document: bytes) -> list[int]:
    """Offsets of the protected-header and payload bytes (the signed region) in ``document``."""
    prot, _, body, _ = cose(document)
    p0, b0 = document.index(prot), document.index(body)
    return [*range(p0, p0 + len(prot)), *range(b0, b0 + len(body))]


def flip(document: bytes, pos: int, mask: int) -> bytes:
    data = bytearray(document)
    data[pos] ^= mask
    return bytes(data)


@pytest.mark.parametrize("name", [PROD, FULL])
def test_every_37th_signed_byte_flipped_is_refused_for_the_right_reason(name: str) -> None:
    original = sample(name)
    seen: dict[R, int] = {}
    for pos in signed_positions(original)[::37]:
        mutated = flip(original, pos, 0x01)
        allowed = reasons_for_signed_change(original, mutated)
        reason = refusal(mutated).reason
        assert reason in allowed, f"byte {pos}: {reason.name} not in {sorted(r.name for r in allowed)}"
        seen[reason] = seen.get(reason, 0) + 1
    # Most signed bytes are PCRs, nonces and certificate contents: the signature itself must bite.
    assert max(seen, key=lambda r: seen[r]) is R.BAD_SIGNATURE, seen


@FUZZ
@given(st.sampled_from([PROD, FULL, "anjuna_prod_pubkey_2021-03-24.cbor"]), st.data(), st.integers(1, 255))
def test_signed_byte_flips_chosen_by_hypothesis(name: str, data: st.DataObject, mask: int) -> None:
    original = sample(name)
    pos = data.draw(st.sampled_from(signed_positions(original)))
    mutated = flip(original, pos, mask)
    allowed = reasons_for_signed_change(original, mutated)
    assert refusal(mutated).reason in allowed


def test_every_flipped_signature_byte_is_bad_signature() -> None:
    original = sample(PROD)
    sig_start = len(original) - 96  # the signature is the last item: 58 60 <96 bytes>
    assert original[sig_start - 2 : sig_start] == b"\x58\x60"
    for pos in range(sig_start, len(original)):
        for mask in (0x01, 0x80):
            err = refusal(flip(original, pos, mask))
            assert (err.reason, err.field) == (R.BAD_SIGNATURE, "signature"), pos


@pytest.mark.parametrize("name", SAMPLES)
def test_truncation_at_any_length_is_truncated(name: str) -> None:
    original = sample(name)
    step = 1 if name == PROD else 11
    for length in range(0, len(original), step):
        assert refusal(original[:length]).reason is R.TRUNCATED, length


@pytest.mark.parametrize("tail", [b"\x00", b"\xff", b"\xa0", b"\x00" * 70, "copy"])
def test_trailing_bytes_are_refused(tail: bytes | str) -> None:
    original = sample(PROD)
    extra = original if tail == "copy" else tail
    assert isinstance(extra, bytes)
    assert refusal(original + extra).reason is R.TRAILING_DATA


@pytest.mark.parametrize(
    ("protected", "reason"),
    [
        (cbor2.dumps({1: -7}), R.UNSUPPORTED),  # ES256
        (cbor2.dumps({1: -36}), R.UNSUPPORTED),  # ES512
        (cbor2.dumps({1: -37}), R.UNSUPPORTED),  # PS256
        (cbor2.dumps({1: "ES384"}), R.UNSUPPORTED),
        (cbor2.dumps({1: -35.0}), R.UNSUPPORTED),
        (cbor2.dumps({True: -35}), R.UNSUPPORTED),  # true == 1 in Python, not in CBOR
        (cbor2.dumps({1: -35, 2: [1]}), R.UNSUPPORTED),  # crit: we would have to understand it
        (cbor2.dumps({1: -35, 4: b"kid"}), R.UNSUPPORTED),
        (cbor2.dumps({}), R.UNSUPPORTED),
        (b"", R.UNSUPPORTED),  # RFC 9052 §3: empty bstr = empty map = no alg
        (cbor2.dumps([1, -35]), R.MALFORMED),
        (b"\xa1\x01", R.MALFORMED),
        (cbor2.dumps({1: -35}) + b"\x00", R.TRAILING_DATA),
    ],
)
def test_protected_header_must_be_es384_only(protected: bytes, reason: R) -> None:
    err = refusal(rebuild(sample(PROD), protected=protected))
    assert (err.reason, err.field) == (reason, "protected")


def test_wrong_alg_in_place_is_unsupported() -> None:
    original = sample(PROD)
    assert original[2:6] == bytes.fromhex("a1013822")
    for alg_byte in (0x23, 0x26):  # -36 ES512, -39 PS512: same length, so the framing stands
        assert refusal(original[:5] + bytes([alg_byte]) + original[6:]).reason is R.UNSUPPORTED


def _amd_ark_der() -> bytes:
    certs = x509.load_pem_x509_certificates(fixture_bytes("sev-snp/amd_chain/milan_vcek_ask_ark.pem"))
    return certs[1].public_bytes(serialization.Encoding.DER)


def _payload(name: str) -> dict[str, Any]:
    result: dict[str, Any] = cbor2.loads(cose(sample(name))[2])
    return result


def test_another_platforms_root_in_cabundle_0_is_untrusted() -> None:
    payload = _payload(PROD)
    payload["cabundle"] = [_amd_ark_der(), *payload["cabundle"][1:]]
    err = refusal(rebuild(sample(PROD), payload=payload))
    assert (err.reason, err.field) == (R.UNTRUSTED_ROOT, "cabundle[0]")


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda b: b[::-1], R.UNTRUSTED_ROOT),  # leaf-first order: the AWS bundle is root first
        (lambda b: b[1:], R.UNTRUSTED_ROOT),  # no root
        (lambda b: b[:-1], R.CHAIN_INVALID),  # leaf not issued by the new last entry
        (lambda b: [b[0], b[1], b[3], b[2]], R.CHAIN_INVALID),
    ],
)
def test_cabundle_order_is_enforced(edit: Callable[[list[bytes]], list[bytes]], reason: R) -> None:
    payload = _payload(PROD)
    payload["cabundle"] = edit(payload["cabundle"])
    assert refusal(rebuild(sample(PROD), payload=payload)).reason is reason


def test_leaf_must_be_issued_by_the_last_cabundle_entry() -> None:
    payload = _payload(PROD)
    payload["certificate"] = _payload("anjuna_prod_pubkey_2021-03-24.cbor")["certificate"]
    err = refusal(rebuild(sample(PROD), payload=payload))
    assert (err.reason, err.field) == (R.CHAIN_INVALID, "certificate")


@pytest.mark.parametrize(
    ("where", "old", "new", "error"),
    [
        ("certificate", b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x05", "InvalidVersion"),  # X.509 "v6"
        (
            "cabundle[1]",
            b"\x06\x03\x55\x1d\x0f",
            b"\x06\x03\x55\x1d\x13",
            "DuplicateExtension",
        ),  # keyUsage → 2nd basicConstraints
        ("certificate", b"\x0c\x03AWS", b"\x03\x03\x00WS", "TypeError"),  # OU=AWS as a BIT STRING
        ("cabundle[2]", b"\x0c\x03AWS", b"\x03\x03\x00WS", "TypeError"),
    ],
)
def test_damaged_certificates_are_malformed_not_crashes(where: str, old: bytes, new: bytes, error: str) -> None:
    """Found by fuzzing: cryptography raises these outside ValueError, past the shared load_der."""
    payload = _payload(PROD)
    if where == "certificate":
        payload["certificate"] = payload["certificate"].replace(old, new, 1)
    else:
        i = int(where[-2])
        payload["cabundle"][i] = payload["cabundle"][i].replace(old, new, 1)
    err = refusal(rebuild(sample(PROD), payload=payload))
    assert (err.reason, err.field) == (R.MALFORMED, where) and error in err.detail


def test_chain_check_exceptions_are_contained(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: Any, **kwargs: Any) -> str:
        raise ValueError("lazily parsed field")

    monkeypatch.setattr(nitro, "verify_chain", explode)
    assert refusal(sample(PROD)).reason is R.MALFORMED


def test_changed_payload_under_the_original_signature_is_bad_signature() -> None:
    payload = _payload(PROD)
    payload["nonce"] = b"\x00" * 256
    err = refusal(rebuild(sample(PROD), payload=payload))
    assert (err.reason, err.field) == (R.BAD_SIGNATURE, "signature")


# -- hostile bytes ----------------------------------------------------------------------------------
def only_attestation_errors(data: bytes, **kwargs: Any) -> Verified | None:
    try:
        return verify_nitro(data, **kwargs)
    except AttestationError:
        return None


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_raise_only_attestation_errors(data: bytes) -> None:
    assert only_attestation_errors(data) is None
    assert only_attestation_errors(b"\x84" + data) is None


def _mutations(size: int) -> st.SearchStrategy[list[tuple[str, int, int]]]:
    op = st.tuples(st.sampled_from(["flip", "delete", "insert"]), st.integers(0, size - 1), st.integers(1, 255))
    return st.lists(op, min_size=1, max_size=4)


@FUZZ
@given(st.sampled_from(SAMPLES), st.data())
def test_random_mutations_of_genuine_documents_raise_only_attestation_errors(name: str, data: st.DataObject) -> None:
    original = sample(name)
    doc = bytearray(original)
    for kind, pos, value in data.draw(_mutations(len(original))):
        pos %= len(doc) or 1
        if kind == "flip" and doc:
            doc[pos] ^= value
        elif kind == "delete":
            del doc[pos : pos + value % 8 + 1]
        else:
            doc[pos:pos] = bytes([value]) * (value % 4 + 1)
    if bytes(doc) != original:
        assert only_attestation_errors(bytes(doc)) is None


_cbor_leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.binary(max_size=64) | st.text(max_size=12)
_cbor_values = st.recursive(
    _cbor_leaf | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.integers(-3, 40) | st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
_PAYLOAD_KEYS = ["module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle", "public_key", "user_data", "nonce"]


@FUZZ
@given(st.dictionaries(st.sampled_from(_PAYLOAD_KEYS), _cbor_values), _cbor_values, st.binary(min_size=96, max_size=96))
def test_structured_garbage_raises_only_attestation_errors(payload: dict[str, Any], unprot: Any, sig: bytes) -> None:
    real = _payload(PROD)
    merged = {**real, **payload}
    prot = cbor2.dumps({1: -35})
    for doc in ([prot, {}, cbor2.dumps(merged), sig], [prot, unprot, cbor2.dumps(payload), sig], unprot):
        assert only_attestation_errors(cbor2.dumps(doc)) is None


# -- a test PKI for what genuine documents cannot show ----------------------------------------------
T0 = dt.datetime(2031, 3, 1, 12, 0, tzinfo=dt.UTC)  # fixed: nothing here depends on the clock
T_DOC = T0 + dt.timedelta(hours=1)
AWS_ROOT_NAME = x509.Name(
    [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Amazon"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "AWS"),
        x509.NameAttribute(NameOID.COMMON_NAME, "aws.nitro-enclaves"),
    ]
)
DROP = object()
ES384_HEADER = cbor2.dumps({1: -35})


def ms(at: dt.datetime) -> int:
    return (at - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(milliseconds=1)


def _cert(
    subject: x509.Name,
    issuer: x509.Name,
    public: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    valid: tuple[dt.datetime, dt.datetime],
    ca: bool | None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    return builder.sign(signer, hashes.SHA384())


@dataclasses.dataclass(frozen=True)
class Pki:
    root: x509.Certificate
    intermediate: x509.Certificate
    leaf: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey
    intermediate_key: ec.EllipticCurvePrivateKey

    @property
    def cabundle(self) -> list[bytes]:  # root first, as AWS orders it
        return [c.public_bytes(serialization.Encoding.DER) for c in (self.root, self.intermediate)]

    @property
    def pin(self) -> dict[bytes, str]:
        return {spki_sha256(self.root): "test-root"}


def make_pki(
    *, root_name: x509.Name = AWS_ROOT_NAME, intermediate_ca: bool | None = True, leaf_curve: ec.EllipticCurve | None = None
) -> Pki:
    """P-384 root → intermediate → leaf; the leaf lives three hours from T0, like a Nitro leaf."""
    root_key, inter_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    leaf_key = ec.generate_private_key(leaf_curve or ec.SECP384R1())
    inter_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-zone.nitro-enclaves")])
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "i-0123456789abcdef0-enc0123456789abcdef")])
    day = dt.timedelta(days=1)
    root = _cert(root_name, root_name, root_key.public_key(), root_key, (T0 - 365 * day, T0 + 3650 * day), True)
    inter = _cert(inter_name, root_name, inter_key.public_key(), root_key, (T0 - day, T0 + 20 * day), intermediate_ca)
    leaf = _cert(leaf_name, inter_name, leaf_key.public_key(), inter_key, (T0, T0 + dt.timedelta(hours=3)), False)
    return Pki(root, inter, leaf, leaf_key, inter_key)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def make_payload(pki: Pki, *, at: dt.datetime = T_DOC, **overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "module_id": "i-0123456789abcdef0-enc0123456789abcdef",
        "digest": "SHA384",
        "timestamp": ms(at),
        "pcrs": {i: bytes([i + 1]) * 48 for i in range(16)},
        "certificate": pki.leaf.public_bytes(serialization.Encoding.DER),
        "cabundle": pki.cabundle,
        "public_key": None,
        "user_data": None,
        "nonce": None,
    }
    for key, value in overrides.items():
        if value is DROP:
            del payload[key]
        else:
            payload[key] = value
    return payload


def make_document(
    pki: Pki,
    payload: dict[str, Any] | bytes | None = None,
    *,
    protected: bytes = ES384_HEADER,
    unprotected: Any = None,
    tagged: bool = False,
    key: ec.EllipticCurvePrivateKey | None = None,
    signature: Any = None,
    at: dt.datetime = T_DOC,
    **overrides: Any,
) -> bytes:
    """A COSE_Sign1 document (RFC 9052 §4.2) signed ES384 by ``key`` (default: the PKI's leaf)."""
    body = payload if isinstance(payload, bytes) else cbor2.dumps(payload or make_payload(pki, at=at, **overrides))
    if signature is None:
        der = (key or pki.leaf_key).sign(cbor2.dumps(["Signature1", protected, b"", body]), ec.ECDSA(hashes.SHA384()))
        r, s = utils.decode_dss_signature(der)
        signature = r.to_bytes(48, "big") + s.to_bytes(48, "big")
    message = [protected, {} if unprotected is None else unprotected, body, signature]
    return cbor2.dumps(cbor2.CBORTag(18, message) if tagged else message)


def test_test_pki_root_carries_the_exact_aws_name() -> None:
    assert aws_root().subject == AWS_ROOT_NAME
    assert AWS_ROOT_NAME.rfc4514_string() == "CN=aws.nitro-enclaves,OU=AWS,O=Amazon,C=US"


def test_look_alike_root_with_the_aws_name_is_untrusted(pki: Pki) -> None:
    err = refusal(make_document(pki))
    assert (err.reason, err.field) == (R.UNTRUSTED_ROOT, "cabundle[0]")


def test_own_root_passed_as_a_root_is_real(pki: Pki) -> None:
    v = verify_nitro(make_document(pki, user_data=b"u" * 64, nonce=b"n" * 32, public_key=b"k" * 91), roots=pki.pin)
    assert (v.simulated, v.debug, v.fields["root"], v.fields["cabundle_size"]) == (False, False, "test-root", 2)
    assert (v.report_data, v.nonce, v.public_key) == (b"u" * 64, b"n" * 32, b"k" * 91)
    assert v.signing_time == T_DOC and v.fields["timestamp_ms"] == ms(T_DOC)
    assert v.measurements["pcr15"] == "10" * 48 and len(v.measurements) == 16


def test_own_root_passed_as_simulated_is_simulated(pki: Pki) -> None:
    v = verify_nitro(make_document(pki), simulated_roots=pki.pin)
    assert v.simulated is True and v.fields["root"] == "test-root"
    assert verify_nitro(make_document(pki, tagged=True), simulated_roots=pki.pin).fields["cose_tagged"] is True


@pytest.mark.parametrize(
    ("at", "reason"),
    [
        (T0 + dt.timedelta(hours=3, milliseconds=1), R.CERT_EXPIRED),
        (T0 + dt.timedelta(days=2), R.CERT_EXPIRED),
        (T0 - dt.timedelta(milliseconds=1), R.CERT_NOT_YET_VALID),
        (T0 - dt.timedelta(minutes=5), R.CERT_NOT_YET_VALID),
    ],
)
def test_leaf_validity_is_checked_at_the_document_time(pki: Pki, at: dt.datetime, reason: R) -> None:
    err = refusal(make_document(pki, at=at), roots=pki.pin)
    assert (err.reason, err.field) == (reason, "certificate")


@pytest.mark.parametrize("at", [T0, T0 + dt.timedelta(hours=3)])
def test_leaf_validity_edges_are_inclusive(pki: Pki, at: dt.datetime) -> None:
    assert verify_nitro(make_document(pki, at=at), roots=pki.pin).signing_time == at


@pytest.mark.parametrize("intermediate_ca", [None, False])
def test_intermediate_without_ca_basic_constraints_breaks_the_chain(intermediate_ca: bool | None) -> None:
    bad = make_pki(intermediate_ca=intermediate_ca)
    err = refusal(make_document(bad), roots=bad.pin)
    assert (err.reason, err.field) == (R.CHAIN_INVALID, "cabundle[1]")


def test_p256_leaf_cannot_sign_es384() -> None:
    bad = make_pki(leaf_curve=ec.SECP256R1())
    err = refusal(make_document(bad), roots=bad.pin)
    assert (err.reason, err.field) == (R.UNSUPPORTED, "certificate")


def test_document_signed_by_another_key_is_bad_signature(pki: Pki) -> None:
    err = refusal(make_document(pki, key=pki.intermediate_key), roots=pki.pin)
    assert (err.reason, err.field) == (R.BAD_SIGNATURE, "signature")


@pytest.mark.parametrize(("field", "limit"), [("user_data", 512), ("nonce", 512), ("public_key", 1024)])
def test_optional_field_size_limits(pki: Pki, field: str, limit: int) -> None:
    at_limit: dict[str, Any] = {field: b"x" * limit}
    over: dict[str, Any] = {field: b"x" * (limit + 1)}
    assert verify_nitro(make_document(pki, **at_limit), roots=pki.pin).fields[field] == "78" * limit
    err = refusal(make_document(pki, **over), roots=pki.pin)
    assert (err.reason, err.field) == (R.MALFORMED, field)


@pytest.mark.parametrize("absent", [None, DROP])
def test_null_optional_fields_mean_absent(pki: Pki, absent: object) -> None:
    v = verify_nitro(make_document(pki, user_data=absent, nonce=absent, public_key=absent), roots=pki.pin)
    assert (v.report_data, v.nonce, v.public_key) == (b"", None, None)
    assert (v.fields["user_data"], v.fields["nonce"], v.fields["public_key"]) == (None, None, None)


def test_zero_pcr0_to_2_is_debug(pki: Pki) -> None:
    pcrs = {i: (b"\x00" if i < 3 else b"\x01") * 48 for i in range(16)}
    assert verify_nitro(make_document(pki, pcrs=pcrs), roots=pki.pin).debug is True
    pcrs[2] = b"\x00" * 47 + b"\x01"
    assert verify_nitro(make_document(pki, pcrs=pcrs), roots=pki.pin).debug is False


def _pcrs(**changes: Any) -> dict[Any, Any]:
    pcrs: dict[Any, Any] = {i: b"\x07" * 48 for i in range(16)}
    for k, v in changes.items():
        index = int(k.removeprefix("p"))
        if v is DROP:
            del pcrs[index]
        else:
            pcrs[index] = v
    return pcrs


@pytest.mark.parametrize(
    ("overrides", "reason", "field"),
    [
        ({"extra": 1}, R.MALFORMED, "payload"),
        ({"module_id": DROP}, R.MALFORMED, "payload"),
        ({"cabundle": DROP}, R.MALFORMED, "payload"),
        ({"module_id": ""}, R.MALFORMED, "module_id"),
        ({"module_id": b"i-0"}, R.MALFORMED, "module_id"),
        ({"digest": "SHA256"}, R.UNSUPPORTED, "digest"),
        ({"digest": b"SHA384"}, R.MALFORMED, "digest"),
        ({"timestamp": 0}, R.MALFORMED, "timestamp"),
        ({"timestamp": -1}, R.MALFORMED, "timestamp"),
        ({"timestamp": True}, R.MALFORMED, "timestamp"),
        ({"timestamp": 1.9e12}, R.MALFORMED, "timestamp"),
        ({"timestamp": "1900000000000"}, R.MALFORMED, "timestamp"),
        ({"timestamp": 2**64 - 1}, R.MALFORMED, "timestamp"),  # beyond what datetime holds
        ({"pcrs": {}}, R.MALFORMED, "pcrs"),
        ({"pcrs": [b"\x00" * 48] * 3}, R.MALFORMED, "pcrs"),
        ({"pcrs": _pcrs(p2=DROP)}, R.MALFORMED, "pcrs"),
        ({"pcrs": _pcrs(p32=b"\x00" * 48)}, R.MALFORMED, "pcrs"),
        ({"pcrs": {**_pcrs(), -1: b"\x00" * 48}}, R.MALFORMED, "pcrs"),
        ({"pcrs": {**_pcrs(), "3": b"\x00" * 48}}, R.MALFORMED, "pcrs"),
        ({"pcrs": {0: b"\x00" * 48, True: b"\x00" * 48, 2: b"\x00" * 48}}, R.MALFORMED, "pcrs"),
        ({"pcrs": _pcrs(p4=b"\x00" * 32)}, R.MALFORMED, "pcrs.4"),
        ({"pcrs": _pcrs(p0="00" * 48)}, R.MALFORMED, "pcrs.0"),
        ({"certificate": b""}, R.MALFORMED, "certificate"),
        ({"certificate": "MIIC"}, R.MALFORMED, "certificate"),
        ({"certificate": b"\x30\x03abc"}, R.MALFORMED, "certificate"),
        ({"cabundle": []}, R.MALFORMED, "cabundle"),
        ({"cabundle": b"\x30"}, R.MALFORMED, "cabundle"),
        ({"cabundle": [b""]}, R.MALFORMED, "cabundle[0]"),
        ({"cabundle": [b"\x30\x00"] * 17}, R.MALFORMED, "cabundle"),
        ({"user_data": "text"}, R.MALFORMED, "user_data"),
        ({"nonce": 5}, R.MALFORMED, "nonce"),
    ],
)
def test_malformed_payload_fields(pki: Pki, overrides: dict[str, Any], reason: R, field: str) -> None:
    err = refusal(make_document(pki, **overrides), roots=pki.pin)
    assert (err.reason, err.field) == (reason, field), err


def test_payload_encodings_the_nsm_never_uses(pki: Pki) -> None:
    body = cbor2.dumps(make_payload(pki))
    assert body[0] == 0xA9  # a map of 9
    duplicate = b"\xaa" + body[1:] + cbor2.dumps("nonce") + cbor2.dumps(b"n")
    indefinite = b"\xbf" + body[1:] + b"\xff"
    for payload, reason in [
        (duplicate, R.MALFORMED),
        (indefinite, R.MALFORMED),
        (body + b"\x00", R.TRAILING_DATA),
        (body[:-1], R.MALFORMED),  # an inner item cut short: the document itself is whole
        (cbor2.dumps([1, 2]), R.MALFORMED),
        (b"", R.MALFORMED),
    ]:
        err = refusal(make_document(pki, payload), roots=pki.pin)
        assert (err.reason, err.field) == (reason, "payload"), payload[:8]


@pytest.mark.parametrize(
    ("build", "reason", "field"),
    [
        (lambda p: make_document(p, unprotected={4: b"kid"}), R.UNSUPPORTED, "unprotected"),
        (lambda p: make_document(p, unprotected=[]), R.MALFORMED, "unprotected"),
        (lambda p: make_document(p, signature=b"\x01" * 95), R.MALFORMED, "signature"),
        (lambda p: make_document(p, signature=b"\x01" * 97), R.MALFORMED, "signature"),
        (lambda p: make_document(p, signature="sig"), R.MALFORMED, "signature"),
        (lambda p: make_document(p, signature=b"\x00" * 96), R.BAD_SIGNATURE, "signature"),
        (lambda p: make_document(p, signature=b"\xff" * 96), R.BAD_SIGNATURE, "signature"),
        (lambda p: cbor2.dumps([ES384_HEADER, {}, None, b"\x00" * 96]), R.UNSUPPORTED, "payload"),
        (lambda p: cbor2.dumps([ES384_HEADER, {}, "text", b"\x00" * 96]), R.MALFORMED, "payload"),
        (lambda p: cbor2.dumps([{1: -35}, {}, b"", b"\x00" * 96]), R.MALFORMED, "protected"),
        (lambda p: cbor2.dumps(cose(make_document(p))[:3]), R.MALFORMED, "document"),
        (lambda p: cbor2.dumps([*cose(make_document(p)), b""]), R.MALFORMED, "document"),
        (lambda p: cbor2.dumps({"payload": b""}), R.MALFORMED, "document"),
        (lambda p: b"", R.TRUNCATED, "document"),
        (lambda p: b"\x81" * 100 + b"\x00", R.MALFORMED, "document"),
        (lambda p: b"\x84" + b"\x00" * MAX_DOCUMENT_SIZE, R.MALFORMED, "document"),
    ],
)
def test_cose_structure(pki: Pki, build: Callable[[Pki], bytes], reason: R, field: str) -> None:
    err = refusal(build(pki), roots=pki.pin)
    assert (err.reason, err.field) == (reason, field), err


# -- policy interplay -------------------------------------------------------------------------------
def signed_at(v: Verified) -> dt.datetime:
    assert v.signing_time is not None  # Nitro documents carry their own time
    return v.signing_time


def _allow(name: str) -> dict[str, dict[str, tuple[str, ...]]]:
    return {"nitro": {"pcr0": (verify_nitro(sample(name)).measurements["pcr0"],)}}


def test_debug_sample_is_refused_by_the_default_policy() -> None:
    v = verify_nitro(sample("evervault_debug_2023-09-18.b64"))
    policy = VerificationPolicy(measurements=_allow("evervault_debug_2023-09-18.b64"))
    assert policy.allow_debug is False
    with pytest.raises(AttestationError) as info:
        policy.check(v, now=signed_at(v) + dt.timedelta(seconds=1))
    assert info.value.reason is R.DEBUG


def test_pcr0_outside_the_allow_list_is_refused() -> None:
    v = verify_nitro(sample(PROD))
    now = signed_at(v) + dt.timedelta(seconds=5)
    VerificationPolicy(measurements=_allow(PROD)).check(v, now=now)  # the genuine PCR0 passes
    policy = VerificationPolicy(measurements={"nitro": {"pcr0": (_allow(FULL)["nitro"]["pcr0"][0],)}})
    with pytest.raises(AttestationError) as info:
        policy.check(v, now=now)
    assert (info.value.reason, info.value.field) == (R.MEASUREMENT, "pcr0")


def test_document_older_than_max_age_is_stale() -> None:
    v = verify_nitro(sample(PROD))
    policy = VerificationPolicy(max_age_seconds=600, measurements=_allow(PROD))
    policy.check(v, now=signed_at(v) + dt.timedelta(seconds=600))
    with pytest.raises(AttestationError) as info:
        policy.check(v, now=signed_at(v) + dt.timedelta(seconds=601))
    assert info.value.reason is R.STALE


def test_simulated_document_needs_allow_simulated(pki: Pki) -> None:
    v = verify_nitro(make_document(pki), simulated_roots=pki.pin)
    with pytest.raises(AttestationError) as info:
        VerificationPolicy(require_measurements=False).check(v, now=T_DOC)
    assert info.value.reason is R.SIMULATED
    VerificationPolicy(allow_simulated=True, require_measurements=False).check(v, now=T_DOC)


# -- memoised checks (memo.py) ----------------------------------------------------------------------
def _signature_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every certificate signature the chain code verifies (by the label it gives)."""
    calls: list[str] = []
    real = x509chain.verify_issued_by

    def counting(cert: x509.Certificate, issuer: x509.Certificate, *, platform: str, what: str) -> None:
        calls.append(what)
        real(cert, issuer, platform=platform, what=what)

    monkeypatch.setattr(x509chain, "verify_issued_by", counting)
    return calls


LINKS = ["certificate", "cabundle[3]", "cabundle[2]", "cabundle[1]"]  # each signed by the next


def test_ca_signatures_are_verified_once_per_exact_certificate(monkeypatch: pytest.MonkeyPatch) -> None:
    memo.clear_caches()
    calls = _signature_checks(monkeypatch)
    first = verify_nitro(sample(PROD))
    assert [c for c in calls if c != "cabundle[0]"] == LINKS  # the root's own check: once per process

    calls.clear()
    assert verify_nitro(sample(PROD)) == first
    assert calls == []

    # Cold again: every link is verified anew, the pinned root's self-signature is not (trust store).
    memo.clear_caches()
    assert verify_nitro(sample(PROD)) == first
    assert calls == LINKS


@pytest.mark.parametrize("where", ["cabundle[0]", "cabundle[2]", "certificate"])
def test_a_certificate_differing_in_one_byte_is_verified_again(where: str) -> None:
    """The memos are keyed by exact DER: a serial-number byte flipped after the genuine chain was
    verified (the root's key, hence its pin, unchanged) is refused by that certificate's signature."""
    verify_nitro(sample(PROD))
    payload = _payload(PROD)
    der = bytearray(payload["certificate"] if where == "certificate" else payload["cabundle"][int(where[-2])])
    serial = der.index(b"\xa0\x03\x02\x01\x02") + 7  # [0] version v3, then INTEGER tag, length, value
    der[serial + 1] ^= 0x01
    if where == "certificate":
        payload["certificate"] = bytes(der)
    else:
        payload["cabundle"][int(where[-2])] = bytes(der)
    err = refusal(rebuild(sample(PROD), payload=payload))
    assert (err.reason, err.field) == (R.BAD_SIGNATURE, where)


@pytest.mark.parametrize("name", SAMPLES)
def test_certificates_are_keyed_by_the_bytes_they_were_loaded_from(name: str) -> None:
    """verify_nitro hands verify_chain the DERs as the document carries them; cryptography
    gives back exactly those bytes, so the link memo's keys are what they always were."""
    doc = parse_document(sample(name))
    for der in (doc.certificate, *doc.cabundle):
        assert x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.DER) == der
