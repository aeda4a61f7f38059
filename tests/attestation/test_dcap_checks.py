"""Checks dcap-qvl performs that the DCAP verifier added (issue 5): unknown critical X.509 and CRL
extensions (and the key usages of the two that are processed), the Intel root on its own CRL,
TD_ATTRIBUTES (refused bits in the verifier; DEBUG, SEPT_VE_DISABLE in the policy), MRSERVICETD
(policy), a debug QE, and the QE identity of the other TEE. Each refusal is shown on a mutation
of a genuine quote re-signed under a test PKI with the genuine names (``FakePki``), next to the
unmutated quote that passes, and compared with dcap-qvl where it decides the same thing."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shardguard.attestation import dcap
from shardguard.attestation.dcap import Collateral, load_collateral
from shardguard.attestation.errors import AttestationReason
from shardguard.attestation.policy import VerificationPolicy
from shardguard.attestation.result import Verified
from shardguard.attestation.tdx import verify_tdx

from .conftest import expected_fields, fixture_bytes
from .test_dcap import (
    AT,
    DCAPQVL_COLLATERAL,
    DEBUG_TD,
    SAMPLES,
    SGX,
    SPR,
    T0,
    T1,
    TDX10,
    TDX10_QE,
    TDX10_TCB,
    TDX15,
    FakePki,
    dcap_qvl,
    dcap_qvl_verdict,
    dcapqvl_json,
    flipped,
    layout,
    pcs_collateral,
    pem,
    quote_bytes,
    refused,
    verify,
)

R = AttestationReason
TD_ATTRIBUTES_OFFSET = 48 + 0x78  # in a v4 quote: header, then TEE_TCB_SVN, MRSEAM, MRSIGNERSEAM, SEAMATTRIBUTES
UNKNOWN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.55555.1")


@pytest.fixture(scope="module")
def pki() -> FakePki:
    return FakePki(quote_bytes(TDX10))


def their_verdict(pki: FakePki, quote: bytes, coll: Collateral, at: dt.datetime) -> tuple[str, tuple[str, ...]]:
    """dcap-qvl on exactly our collateral (FakePki.dcap_qvl re-signs its own)."""
    assert coll.qe_identity is not None and coll.qe_identity_signature is not None and coll.qe_identity_issuer_chain
    assert coll.root_ca_crl is not None and coll.pck_crl is not None
    theirs = dcap_qvl.QuoteCollateralV3(
        pem(pki.ca, pki.root).decode(),
        coll.root_ca_crl,
        coll.pck_crl,
        coll.tcb_info_issuer_chain.decode(),
        coll.tcb_info,
        coll.tcb_info_signature,
        coll.qe_identity_issuer_chain.decode(),
        coll.qe_identity,
        coll.qe_identity_signature,
    )
    return dcap_qvl_verdict(quote, theirs, at, pki.root.public_bytes(serialization.Encoding.DER))


def reissue(
    cert: x509.Certificate,
    signer: ec.EllipticCurvePrivateKey,
    *,
    add: tuple[tuple[x509.ExtensionType, bool], ...] = (),
    drop: tuple[type[x509.ExtensionType], ...] = (),
    critical: tuple[type[x509.ExtensionType], ...] = (),
) -> x509.Certificate:
    """``cert`` again (same names, key, validity), signed by ``signer``: its extensions, minus the
    ``drop`` types, with the ``critical`` types made critical, plus ``add``."""
    b = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())  # type: ignore[arg-type]
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for ext in cert.extensions:
        if not isinstance(ext.value, drop):
            b = b.add_extension(ext.value, critical=ext.critical or isinstance(ext.value, critical))
    for value, crit in add:
        b = b.add_extension(value, critical=crit)
    return b.sign(signer, hashes.SHA256())


def key_usage(**set_: bool) -> x509.KeyUsage:
    names = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    )
    return x509.KeyUsage(**{n: set_.get(n, False) for n in names})


# -- 1. critical extensions ------------------------------------------------------------------------------
def test_genuine_intel_certificates_carry_only_basic_constraints_and_key_usage_as_critical() -> None:
    """What the verifier knows about Intel's certificates, checked on every genuine one: the PCK
    chains of all nine quotes, the TCB Signing and PCK CRL chains and the root; and that the
    genuine CRLs carry no critical extension at all."""
    seen: dict[str, set[str]] = {}
    certs: list[x509.Certificate] = []
    for name in SAMPLES:
        q = quote_bytes(name)
        certs += x509.load_pem_x509_certificates(q[slice(*layout(q).pem)].rstrip(b"\x00"))
    crls = [fixture_bytes("tdx/gotdxguest_intel_root_ca.crl.der"), fixture_bytes("tdx/gotdxguest_pck_platform_ca.crl.der")]
    for coll_file in DCAPQVL_COLLATERAL.values():
        doc = json.loads(dcapqvl_json(coll_file))
        for key in ("tcb_info_issuer_chain", "qe_identity_issuer_chain", "pck_crl_issuer_chain"):
            certs += x509.load_pem_x509_certificates(doc[key].encode())
        crls += [bytes.fromhex(doc["root_ca_crl"]), bytes.fromhex(doc["pck_crl"])]
    for cert in certs:
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        seen.setdefault(str(cn), set()).update(e.oid.dotted_string for e in cert.extensions if e.critical)
        sgx = [e for e in cert.extensions if e.oid.dotted_string == "1.2.840.113741.1.13.1"]
        assert all(not e.critical for e in sgx)
    assert seen == {
        cn: {"2.5.29.19", "2.5.29.15"}  # basicConstraints, keyUsage
        for cn in (
            "Intel SGX PCK Certificate",
            "Intel SGX PCK Platform CA",
            "Intel SGX PCK Processor CA",
            "Intel SGX TCB Signing",
            "Intel SGX Root CA",
        )
    }
    for der in crls:
        crl = x509.load_der_x509_crl(der)
        assert not any(e.critical for e in crl.extensions)
        assert not any(e.critical for entry in crl for e in entry.extensions)
        assert dcap._crl_critical_extension(crl) is None


@pytest.mark.parametrize(
    ("ext", "what"),
    [
        (x509.UnrecognizedExtension(UNKNOWN_OID, b"\x05\x00"), "unknown"),
        # Known to cryptography, but not processed by the verifier: refused alike.
        (x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CODE_SIGNING]), "eku"),
        (x509.NameConstraints(permitted_subtrees=[x509.DNSName("example.com")], excluded_subtrees=None), "name-constraints"),
    ],
)
@pytest.mark.parametrize("where", ["pck", "pck_ca", "intel_root", "tcb_signing"])
def test_a_critical_extension_the_verifier_does_not_process_is_chain_invalid(
    pki: FakePki, ext: x509.ExtensionType, what: str, where: str
) -> None:
    leaf, ca, root, tcb = pki.leaf, pki.ca, pki.root, pki.tcb
    coll = pki.collateral(TDX10_TCB, TDX10_QE)
    for critical in (False, True):
        add = ((ext, critical),)
        if where == "pck":
            leaf = reissue(pki.leaf, pki.ca_key, add=add)
        elif where == "pck_ca":
            ca = reissue(pki.ca, pki.root_key, add=add)
        elif where == "intel_root":
            root = reissue(pki.root, pki.root_key, add=add)  # same key: still the pinned root
        else:
            tcb = reissue(pki.tcb, pki.root_key, add=add)
        chain = pem(tcb, root)
        c = dataclasses.replace(coll, tcb_info_issuer_chain=chain, qe_identity_issuer_chain=chain)
        q = pki.quote(chain=pem(leaf, ca, root))
        dcap.clear_caches()
        if not critical:  # the same extension, not critical: ignored, as RFC 5280 allows
            assert verify(TDX10, q, collateral=c, roots=pki.roots).tcb_status == "UpToDate"
            continue
        err = refused(R.CHAIN_INVALID, verify, TDX10, q, collateral=c, roots=pki.roots)
        assert err.field == where and ext.oid.dotted_string in err.detail and "critical extension" in err.detail
        if where != "tcb_signing":  # without collateral too: the PCK chain alone
            assert refused(R.CHAIN_INVALID, verify, TDX10, q, roots=pki.roots).field == where
        if what == "unknown" and where in ("pck", "pck_ca"):
            # dcap-qvl (webpki) refuses it as well. (It takes the root as a trust anchor and does
            # not look at the root's extensions; nor, through TCB Signing, here.)
            verdict = their_verdict(pki, q, c, AT[TDX10])
            assert verdict[0] == "error" and "UnsupportedCriticalExtension" in verdict[1][0]


def test_the_sgx_extension_made_critical_is_refused(pki: FakePki) -> None:
    leaf = reissue(pki.leaf, pki.ca_key, critical=(x509.UnrecognizedExtension,))
    sgx = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.2.840.113741.1.13.1"))
    assert sgx.critical
    err = refused(R.CHAIN_INVALID, verify, TDX10, pki.quote(chain=pem(leaf, pki.ca, pki.root)), roots=pki.roots)
    assert err.field == "pck" and "1.2.840.113741.1.13.1" in err.detail


@pytest.mark.parametrize(
    ("where", "usage", "reason", "field"),
    [
        ("pck", key_usage(key_cert_sign=True, crl_sign=True), R.CHAIN_INVALID, "pck"),
        ("pck_ca", key_usage(crl_sign=True), R.CHAIN_INVALID, "pck_ca"),  # may not sign certificates
        ("intel_root", key_usage(crl_sign=True), R.CHAIN_INVALID, "intel_root"),
        ("tcb_signing", key_usage(key_cert_sign=True), R.CHAIN_INVALID, "tcb_signing"),
        ("pck_ca", key_usage(key_cert_sign=True), R.COLLATERAL_INVALID, "pck_crl"),  # may not sign its CRL
        ("intel_root", key_usage(key_cert_sign=True), R.COLLATERAL_INVALID, "root_ca_crl"),
    ],
)
def test_key_usage_is_processed_where_present(
    pki: FakePki, where: str, usage: x509.KeyUsage, reason: AttestationReason, field: str
) -> None:
    """keyUsage is accepted as a known critical extension because it is processed: issuers need
    keyCertSign, CRL issuers cRLSign, the leaves (which sign the QE report and the JSON)
    digitalSignature. Every genuine certificate has what its role needs."""
    add = ((usage, True),)
    leaf, ca, root, tcb = pki.leaf, pki.ca, pki.root, pki.tcb
    if where == "pck":
        leaf = reissue(pki.leaf, pki.ca_key, drop=(x509.KeyUsage,), add=add)
    elif where == "pck_ca":
        ca = reissue(pki.ca, pki.root_key, drop=(x509.KeyUsage,), add=add)
    elif where == "intel_root":
        root = reissue(pki.root, pki.root_key, drop=(x509.KeyUsage,), add=add)
    else:
        tcb = reissue(pki.tcb, pki.root_key, drop=(x509.KeyUsage,), add=add)
    coll = pki.collateral(TDX10_TCB, TDX10_QE)
    chain = pem(tcb, root)
    coll = dataclasses.replace(coll, tcb_info_issuer_chain=chain, qe_identity_issuer_chain=chain)
    dcap.clear_caches()
    err = refused(reason, verify, TDX10, pki.quote(chain=pem(leaf, ca, root)), collateral=coll, roots=pki.roots)
    assert err.field == field and "keyUsage" in err.detail


def _crl(
    pki: FakePki, *, ext: tuple[x509.ExtensionType, bool] | None = None, entry_ext: x509.ExtensionType | None = None
) -> bytes:
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.ca.subject)
        .last_update(T0)
        .next_update(T1)
        .add_extension(x509.CRLNumber(1), critical=False)
    )
    if ext is not None:
        b = b.add_extension(ext[0], critical=ext[1])
    revoked = x509.RevokedCertificateBuilder().serial_number(12345).revocation_date(T0)
    if entry_ext is not None:
        revoked = revoked.add_extension(entry_ext, critical=True)
    b = b.add_revoked_certificate(revoked.build())
    # A serial number whose encoding holds the bytes of a DER TRUE: the CRL is walked, and passes.
    b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(0x0101FF01).revocation_date(T0).build())
    return b.sign(pki.ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("kw", "oid"),
    [
        ({"ext": (x509.UnrecognizedExtension(UNKNOWN_OID, b"\x05\x00"), True)}, UNKNOWN_OID.dotted_string),
        (
            {"ext": (x509.IssuingDistributionPoint(None, None, True, False, None, False, False), True)},
            "2.5.29.28",  # issuingDistributionPoint: would narrow what the CRL covers
        ),
        ({"ext": (x509.DeltaCRLIndicator(1), True)}, "2.5.29.27"),  # a delta CRL is not a whole CRL
        ({"entry_ext": x509.UnrecognizedExtension(UNKNOWN_OID, b"\x05\x00")}, UNKNOWN_OID.dotted_string),
        ({"entry_ext": x509.CertificateIssuer([x509.DNSName("example.com")])}, "2.5.29.29"),  # indirect CRL
    ],
)
def test_a_crl_with_a_critical_extension_is_collateral_invalid(pki: FakePki, kw: dict[str, Any], oid: str) -> None:
    fq = pki.quote()
    good = _crl(pki)
    assert b"\x01\x01\xff" in good  # the cheap pre-check does not decide alone
    coll = dataclasses.replace(pki.collateral(TDX10_TCB, TDX10_QE), pck_crl=good)
    assert verify(TDX10, fq, collateral=coll, roots=pki.roots).tcb_status == "UpToDate"
    coll = dataclasses.replace(coll, pck_crl=_crl(pki, **kw))
    err = refused(R.COLLATERAL_INVALID, verify, TDX10, fq, collateral=coll, roots=pki.roots)
    assert err.field == "pck_crl" and oid in err.detail
    # Not critical, the same extension is ignored.
    if "ext" in kw:
        ext = (kw["ext"][0], False)
        ok = dataclasses.replace(coll, pck_crl=_crl(pki, ext=ext))
        assert verify(TDX10, fq, collateral=ok, roots=pki.roots).tcb_status == "UpToDate"


def test_der_true_is_only_ever_encoded_as_ff() -> None:
    """The CRL pre-check looks for 01 01 FF; cryptography must refuse any other TRUE encoding."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    b = x509.CertificateRevocationListBuilder().issuer_name(name).last_update(T0).next_update(T1)
    b = b.add_extension(x509.UnrecognizedExtension(UNKNOWN_OID, b"\x05\x00"), critical=True)
    der = b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    assert der.count(b"\x01\x01\xff") == 1
    for other in (b"\x01\x01\x01", b"\x01\x01\x80"):
        with pytest.raises(ValueError):
            _ = x509.load_der_x509_crl(der.replace(b"\x01\x01\xff", other)).extensions


# -- 4. the root on its own CRL -----------------------------------------------------------------------------
def test_the_root_listed_on_the_root_ca_crl_is_cert_revoked(pki: FakePki) -> None:
    fq = pki.quote()
    coll = pki.collateral(TDX10_TCB, TDX10_QE, root_revoked=(pki.root.serial_number,))
    err = refused(R.CERT_REVOKED, verify, TDX10, fq, collateral=coll, roots=pki.roots)
    assert err.field == "intel_root" and "root CA CRL" in err.detail
    verdict = their_verdict(pki, fq, coll, AT[TDX10])
    assert verdict[0] == "error" and "CertRevoked" in verdict[1][0]
    # A TCB Signing chain whose root is another certificate for the same key is checked too.
    other_root = reissue(pki.root, pki.root_key)
    other_root = x509.CertificateBuilder(
        issuer_name=other_root.issuer,
        subject_name=other_root.subject,
        public_key=pki.root_key.public_key(),
        serial_number=other_root.serial_number + 1,
        not_valid_before=T0,
        not_valid_after=T1,
        extensions=list(other_root.extensions),
    ).sign(pki.root_key, hashes.SHA256())
    chain = pem(pki.tcb, other_root)
    coll = pki.collateral(TDX10_TCB, TDX10_QE, root_revoked=(other_root.serial_number,))
    coll = dataclasses.replace(coll, tcb_info_issuer_chain=chain, qe_identity_issuer_chain=chain)
    assert refused(R.CERT_REVOKED, verify, TDX10, fq, collateral=coll, roots=pki.roots).field == "tcb_signing_root"


def test_the_genuine_root_is_not_on_the_genuine_root_ca_crls() -> None:
    root = x509.load_der_x509_certificate(fixture_bytes("tdx/intel_sgx_root_ca.der"))
    for der in [fixture_bytes("tdx/gotdxguest_intel_root_ca.crl.der")] + [
        bytes.fromhex(json.loads(dcapqvl_json(f))["root_ca_crl"]) for f in DCAPQVL_COLLATERAL.values()
    ]:
        assert x509.load_der_x509_crl(der).get_revoked_certificate_by_serial_number(root.serial_number) is None


# -- 2. TD_ATTRIBUTES ----------------------------------------------------------------------------------------
def test_every_td_attributes_bit_is_judged_as_dcap_qvl_judges_it(pki: FakePki) -> None:
    """All 64 bits, one at a time, on the re-signed TDX 1.0 quote with full collateral. The
    verifier refuses (TD_ATTRIBUTES) exactly the bits dcap-qvl refuses except DEBUG and
    SEPT_VE_DISABLE, which the policy judges: a default policy then refuses those two as well."""
    coll = pki.collateral(TDX10_TCB, TDX10_QE)
    at = AT[TDX10]
    base = pki.signed
    assert int.from_bytes(base[TD_ATTRIBUTES_OFFSET : TD_ATTRIBUTES_OFFSET + 8], "little") == 1 << 28
    policy = VerificationPolicy(require_measurements=False)
    refused_bits, policy_bits = [], []
    for bit in range(64):
        q = pki.quote(signed=flipped(base, TD_ATTRIBUTES_OFFSET + bit // 8, xor=1 << bit % 8))
        theirs = their_verdict(pki, q, coll, at)
        try:
            v = verify_tdx(q, collateral=coll, at=at, roots=pki.roots)
        except dcap.AttestationError as e:
            assert e.reason is R.TD_ATTRIBUTES and e.field == "td_attributes", bit
            assert theirs[0] == "error", bit
            refused_bits.append(bit)
            continue
        assert v.tcb_status == "UpToDate"
        if theirs[0] == "error":
            policy_bits.append(bit)
            with pytest.raises(dcap.AttestationError) as ei:
                policy.check(v, now=at)
            assert ei.value.reason is (R.DEBUG if bit == 0 else R.TD_ATTRIBUTES), bit
        else:
            assert theirs == ("UpToDate", ()), bit
            policy.check(v, now=at)
    assert policy_bits == [0, 28]
    assert refused_bits == [*range(1, 16), 17, *range(23, 27), 29, *range(32, 62)]


def test_refused_td_attributes_name_the_bits() -> None:
    q = quote_bytes(TDX10)
    parsed = dcap.parse_quote(q, platform="tdx")
    assert isinstance(parsed.body, dcap.TdReport) and parsed.body.refused_attributes == 0
    pki = FakePki(q)
    fq = pki.quote(signed=flipped(pki.signed, TD_ATTRIBUTES_OFFSET, TD_ATTRIBUTES_OFFSET + 3, xor=0x20))  # bits 5, 29
    err = refused(R.TD_ATTRIBUTES, verify, TDX10, fq, roots=pki.roots)
    assert "PERF_PROF, MIGRATABLE" in err.detail
    fq = pki.quote(signed=flipped(pki.signed, TD_ATTRIBUTES_OFFSET + 1, xor=0x01))
    assert "reserved bit 8" in refused(R.TD_ATTRIBUTES, verify, TDX10, fq, roots=pki.roots).detail
    # Refused before any policy: allow_debug does not open the other TUD bits.
    fq = pki.quote(signed=flipped(pki.signed, TD_ATTRIBUTES_OFFSET, xor=0x03))
    refused(R.TD_ATTRIBUTES, verify, TDX10, fq, roots=pki.roots)


def test_genuine_samples_pass_the_td_attribute_checks_and_spr_lacks_sept_ve_disable(expected: dict[str, Any]) -> None:
    """Every genuine TDX quote is accepted by the verifier with exactly its expected fields (the
    field test in test_dcap.py); the SPR E4 sample (go-tdx-guest, 2022) is the one without
    SEPT_VE_DISABLE, so the default policy refuses it and a policy that does not require the bit
    accepts it. The debug TD has SEPT_VE_DISABLE: it is refused for being a debug TD."""
    for file, exp in expected["tdx"].items():
        attrs = int.from_bytes(bytes.fromhex(exp["body"]["td_attributes"]), "little")
        assert attrs & dcap._TDA_REFUSED == 0
        assert bool(attrs & 1 << 28) is (f"tdx/{file}" != SPR)
    v = verify(SPR)
    assert v.fields["sept_ve_disable"] is False and not v.debug
    strict = VerificationPolicy(require_measurements=False, min_tcb_status="Unknown")
    err = refused(R.TD_ATTRIBUTES, strict.check, v, now=AT[SPR])
    assert err.field == "sept_ve_disable" and err.platform == "tdx"
    dataclasses.replace(strict, require_sept_ve_disable=False).check(v, now=AT[SPR])
    VerificationPolicy.permissive_for_inspection().check(v, now=AT[SPR])
    # With its (2023) collateral the status is NoMatchingTcbLevel, as before; the policy order
    # puts the TD attributes before the TCB status.
    debug = verify(DEBUG_TD)
    assert debug.fields["sept_ve_disable"] is True
    refused(R.DEBUG, strict.check, debug, now=AT[DEBUG_TD])
    dataclasses.replace(strict, allow_debug=True).check(debug, now=AT[DEBUG_TD])


def test_policy_keys_for_td_attributes_and_service_td() -> None:
    p = VerificationPolicy.from_toml("require_sept_ve_disable = false\nallow_service_td = true\n")
    assert (p.require_sept_ve_disable, p.allow_service_td) == (False, True)
    default = VerificationPolicy.from_toml("")
    assert (default.require_sept_ve_disable, default.allow_service_td) == (True, False)
    for bad in ('require_sept_ve_disable = "no"', "allow_service_td = 1"):
        refused(R.POLICY, VerificationPolicy.from_toml, bad)
    # Fail closed: a TDX result that does not say (not made by verify_tdx) is refused.
    bare = Verified(platform="tdx", measurements={}, tcb_status="UpToDate", debug=False, report_data=bytes(64))
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    lax = VerificationPolicy(require_measurements=False)
    assert refused(R.TD_ATTRIBUTES, lax.check, bare, now=now).field == "sept_ve_disable"
    lax = dataclasses.replace(lax, require_sept_ve_disable=False)
    assert refused(R.SERVICE_TD, lax.check, bare, now=now).field == "mr_servicetd"
    dataclasses.replace(lax, allow_service_td=True).check(bare, now=now)
    # Other platforms have no such fields and are not asked.
    sgx = dataclasses.replace(bare, platform="sgx")
    VerificationPolicy(require_measurements=False).check(sgx, now=now)


# -- 3. MRSERVICETD ---------------------------------------------------------------------------------------
def test_a_bound_service_td_is_refused_by_the_default_policy() -> None:
    """MRSERVICETD exists only in TDX 1.5 bodies (v5, body type 3). Zero in the genuine sample; set
    in a re-signed copy, the quote is genuine (the verifier accepts it and says so) and the
    default policy refuses it, as dcap-qvl does unless allow_service_td."""
    q = quote_bytes(TDX15)
    lay = layout(q)
    assert lay.version == 5 and lay.body[1] - lay.body[0] == 648
    off = lay.body[0] + 584 + 16  # after the TDX 1.0 fields and TEE_TCB_SVN2
    assert q[off : off + 48] == bytes(48)
    assert verify(TDX15).fields["service_td"] is False
    for name in (TDX10, SPR):  # TDX 1.0 bodies have no MRSERVICETD
        assert verify(name).fields["service_td"] is False and "mr_servicetd" not in verify(name).fields["body"]

    pki = FakePki(q)
    signed = pki.signed[:off] + b"\x5a" * 48 + pki.signed[off + 48 :]
    fq = pki.quote(signed=signed)
    # The genuine TCB info matches no level for this platform (README); dcap-qvl stops there, so
    # the comparison uses a copy whose last level every platform reaches.
    doc = json.loads(dcapqvl_json(DCAPQVL_COLLATERAL[TDX15]))
    tcb = json.loads(doc["tcb_info"])
    last = tcb["tcbLevels"][-1]["tcb"]
    for comp in (*last["sgxtcbcomponents"], *last["tdxtcbcomponents"]):
        comp["svn"] = 0
    last["pcesvn"] = 0
    coll = pki.collateral(json.dumps(tcb, separators=(",", ":")), doc["qe_identity"])
    at = AT[TDX15]
    v = verify_tdx(fq, collateral=coll, at=at, roots=pki.roots)
    assert v.fields["service_td"] is True and v.fields["body"]["mr_servicetd"] == "5a" * 48
    policy = VerificationPolicy(require_measurements=False, min_tcb_status="NoMatchingTcbLevel")
    assert refused(R.SERVICE_TD, policy.check, v, now=at).field == "mr_servicetd"
    dataclasses.replace(policy, allow_service_td=True).check(v, now=at)
    theirs = their_verdict(pki, fq, coll, at)
    assert theirs[0] == "error" and "Invalid MR service TD" in theirs[1][0]
    genuine_body = their_verdict(pki, pki.quote(signed=pki.signed), coll, at)
    assert genuine_body[0] == v.tcb_status  # the same status once MRSERVICETD is zero
    policy.check(verify_tdx(pki.quote(signed=pki.signed), collateral=coll, at=at, roots=pki.roots), now=at)


# -- the QE: debug, and the identity of the other TEE --------------------------------------------------------
def test_a_debug_qe_is_refused_with_or_without_collateral(pki: FakePki) -> None:
    def debug_qe(qe: bytes) -> bytes:
        return qe[:48] + bytes([qe[48] | 0x02]) + qe[49:]  # ATTRIBUTES.FLAGS.DEBUG (REPORTBODY offset 48)

    fq = pki.quote(qe_edit=debug_qe)
    err = refused(R.QE_IDENTITY, verify, TDX10, fq, roots=pki.roots)
    assert err.field == "qe_report.attributes" and "debug" in err.detail
    coll = pki.collateral(TDX10_TCB, TDX10_QE)
    assert refused(R.QE_IDENTITY, verify, TDX10, fq, collateral=coll, roots=pki.roots).field == "qe_report.attributes"
    assert their_verdict(pki, fq, coll, AT[TDX10])[0] == "error"
    # The verifier refuses it, so no policy (allow_debug is about the workload) can accept it;
    # every genuine QE is a production enclave.
    for name in SAMPLES:
        assert int(verify(name).fields["qe_report"]["attributes"][:2], 16) & 0x02 == 0


def test_the_qe_identity_must_be_for_the_quotes_tee() -> None:
    """[QVL] 4.1.2.4.14: a TDX quote needs the TD_QE identity, an SGX quote the QE one
    (enclaveIdentity v2 both); the other TEE's genuine identity is COLLATERAL_INVALID."""
    sgx_doc = json.loads(dcapqvl_json(DCAPQVL_COLLATERAL[SGX]))
    assert json.loads(sgx_doc["qe_identity"])["id"] == "QE" and json.loads(TDX10_QE)["id"] == "TD_QE"
    assert json.loads(TDX10_QE)["version"] == json.loads(sgx_doc["qe_identity"])["version"] == 2
    pki = FakePki(quote_bytes(SGX))
    fq = pki.quote()
    ok = pki.collateral(sgx_doc["tcb_info"], sgx_doc["qe_identity"])
    assert verify(SGX, fq, collateral=ok, roots=pki.roots).tcb_status == "ConfigurationAndSWHardeningNeeded"
    td_qe = pki.redate(TDX10_QE)
    err = refused(R.COLLATERAL_INVALID, verify, SGX, fq, collateral=pki.collateral(sgx_doc["tcb_info"], td_qe), roots=pki.roots)
    assert err.field == "qe_identity.id" and "'TD_QE'" in err.detail and "'QE'" in err.detail
    their = their_verdict(pki, fq, pki.collateral(sgx_doc["tcb_info"], td_qe), AT[SGX])
    assert their[0] == "error"
    # Another structure version of the right identity is refused too (parsed after its signature).
    v3 = json.dumps({**json.loads(TDX10_QE), "version": 3}, separators=(",", ":"))
    tdx = FakePki(quote_bytes(TDX10))
    err = refused(R.COLLATERAL_INVALID, verify, TDX10, tdx.quote(), collateral=tdx.collateral(TDX10_TCB, v3), roots=tdx.roots)
    assert err.field == "qe_identity.version"


# -- every genuine sample still passes, with collateral where it has some ----------------------------------------
@pytest.mark.parametrize("name", SAMPLES)
def test_genuine_samples_still_verify_with_their_collateral(name: str) -> None:
    statuses = {
        "tdx/dcapqvl_tdx10_v4_quote.bin": "UpToDate",
        "tdx/dcapqvl_tdx15_v5_quote_outdated.bin": "NoMatchingTcbLevel",
        "sgx/dcapqvl_sgx_v3_quote.bin": "ConfigurationAndSWHardeningNeeded",
        "tdx/trustee_tdx10_v4_quote_6.dat": "OutOfDate",
        "tdx/gotdxguest_gcp_cos113_v4_quote_padded.dat": "UpToDate",
        "sgx/teekit_tlsn_sgx_v3_quote.dat": "SWHardeningNeeded",
    }
    dcap.clear_caches()
    v = verify(name)
    assert v.tcb_status == "Unknown"
    if name in statuses:
        coll = load_collateral(dcapqvl_json(DCAPQVL_COLLATERAL[name])) if name in DCAPQVL_COLLATERAL else pcs_collateral(name)
        assert verify(name, collateral=coll).tcb_status == statuses[name]
    plat = name.split("/")[0]
    assert v.fields["body"] == expected_fields()[plat][name.split("/")[1]]["body"] | (
        {k: v.fields["body"][k] for k in ("isv_ext_prod_id", "config_id", "config_svn", "isv_family_id")} if plat == "sgx" else {}
    )
