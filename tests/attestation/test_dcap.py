"""Intel DCAP verifier (TDX v4/v5, SGX v3): the nine genuine quotes, their collateral and TCB
statuses (cross-checked with dcap-qvl in the same test), exact refusal reasons for tampering, a
forged Intel PKI for what genuine samples cannot show (pins, revocation, QE identity, TDX module),
and property tests that hostile bytes only ever raise AttestationError."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import re
import struct
from collections.abc import Callable
from typing import Any

import dcap_qvl  # type: ignore[import-untyped]
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardguard.attestation import dcap
from shardguard.attestation.dcap import (
    INTEL_ROOTS,
    Collateral,
    evaluate_tcb,
    load_collateral,
    load_pcs_collateral,
    parse_pck_extensions,
    parse_qe_identity,
    parse_quote,
    parse_tcb_info,
    verify_signed_json,
)
from shardguard.attestation.errors import AttestationError, AttestationReason
from shardguard.attestation.policy import VerificationPolicy
from shardguard.attestation.result import Verified
from shardguard.attestation.sgx import verify_sgx
from shardguard.attestation.tdx import verify_tdx
from shardguard.attestation.verify import verify_evidence
from shardguard.attestation.x509chain import load_der, load_pem_chain, spki_sha256

from .conftest import expected_fields, fixture_bytes

R = AttestationReason
UTC = dt.UTC
FUZZ = settings(max_examples=250, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

TDX10 = "tdx/dcapqvl_tdx10_v4_quote.bin"
TDX15 = "tdx/dcapqvl_tdx15_v5_quote_outdated.bin"
SPR = "tdx/gotdxguest_spr_e4_v4_quote_plus_trailer.dat"
DEBUG_TD = "tdx/trustee_tdx10_v4_quote_4.dat"
TRUSTEE6 = "tdx/trustee_tdx10_v4_quote_6.dat"
GCP = "tdx/gotdxguest_gcp_cos113_v4_quote_padded.dat"
SGX = "sgx/dcapqvl_sgx_v3_quote.bin"
OCCLUM = "sgx/trustee_occlum_sgx_v3_quote.dat"
TLSN = "sgx/teekit_tlsn_sgx_v3_quote.dat"
SAMPLES = [f"tdx/{n}" for n in sorted(expected_fields()["tdx"])] + [f"sgx/{n}" for n in sorted(expected_fields()["sgx"])]
SPR_QUOTE_LEN = 4935  # the quote proper; go-tdx-guest appended a 39-byte ASCII trailer

#: A time inside each sample's PCK chain and, where it has collateral, inside every piece's window.
AT = {
    TDX10: dt.datetime(2025, 7, 1, tzinfo=UTC),  # collateral 2025-06-19T10:32:27 .. 07-19T10:00:35
    TDX15: dt.datetime(2026, 3, 1, tzinfo=UTC),  # collateral 2026-02-18 .. 03-20; PCK from 2026-01-23
    SPR: dt.datetime(2026, 1, 1, tzinfo=UTC),
    DEBUG_TD: dt.datetime(2026, 1, 1, tzinfo=UTC),
    TRUSTEE6: dt.datetime(2025, 11, 10, tzinfo=UTC),  # tcbInfo 10-27 .. 11-26, QE identity 10-28 .. 11-27
    GCP: dt.datetime(2025, 10, 10, tzinfo=UTC),  # tcbInfo 2025-09-29 .. 10-29
    SGX: dt.datetime(2025, 7, 1, tzinfo=UTC),  # collateral 2025-06-19 .. 07-19
    OCCLUM: dt.datetime(2026, 1, 1, tzinfo=UTC),
    TLSN: dt.datetime(2025, 10, 10, tzinfo=UTC),  # tcbInfo 2025-09-28 .. 10-28
}

# Keys of expected_fields.json that describe the fixture or the collateral verdict in prose; the
# statuses are asserted by the collateral tests below.
META = {"check", "collateral", "platform_tcb_status", "qe_tcb_status", "collateral_fresh_window", "ccel_replay"}
EXTRA_FIELDS = {
    "header_svns",
    "user_data",
    "quote_size",
    "outer_cert_data_type",
    "qe_auth_data",
    "attestation_key",
    "pck_ca",
    "root",
    "fmspc",
    "pce_id",
    "tcb_status",
    "advisory_ids",
    "qe_tcb_status",
    "tcb",
    "collateral",
}
TDX_EXTRA_FIELDS = {"tee_tcb_svn", "sept_ve_disable", "service_td"}
EXTRA_REPORT = {"isv_ext_prod_id", "config_id", "config_svn", "isv_family_id"}  # SGX REPORTBODY fields beyond expected
EXTRA_QE_REPORT = EXTRA_REPORT | {"cpu_svn", "report_data"}


def quote_bytes(name: str) -> bytes:
    data = fixture_bytes(name)
    return data[:SPR_QUOTE_LEN] if name == SPR else data


def platform_of(name: str) -> str:
    return name.split("/")[0]


def verify(name: str, data: bytes | None = None, **kw: Any) -> Verified:
    kw.setdefault("at", AT[name])
    fn = verify_tdx if platform_of(name) == "tdx" else verify_sgx
    return fn(quote_bytes(name) if data is None else data, **kw)


def refused(reason: AttestationReason, fn: Any, *args: Any, **kw: Any) -> AttestationError:
    with pytest.raises(AttestationError) as ei:
        fn(*args, **kw)
    assert ei.value.reason is reason, f"expected {reason.name}, got {ei.value.reason.name}: {ei.value}"
    return ei.value


def flipped(data: bytes, *offsets: int, xor: int = 0xFF) -> bytes:
    b = bytearray(data)
    for off in offsets:
        b[off] ^= xor
    return bytes(b)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Offsets of a quote's parts (computed here independently of dcap.parse_quote)."""

    version: int
    body: tuple[int, int]
    sig_data: tuple[int, int]
    qe_report: int
    qe_sig: int
    auth: tuple[int, int]
    pem: tuple[int, int]


def layout(q: bytes) -> Layout:
    version = struct.unpack_from("<H", q, 0)[0]
    body_len = struct.unpack_from("<I", q, 50)[0] if version == 5 else 584 if version == 4 else 384
    body = (54, 54 + body_len) if version == 5 else (48, 48 + body_len)
    sig_len = struct.unpack_from("<I", q, body[1])[0]
    sd = body[1] + 4
    p = sd + 128 + (6 if version >= 4 else 0)
    auth_len = struct.unpack_from("<H", q, p + 448)[0]
    auth = (p + 450, p + 450 + auth_len)
    pem_len = struct.unpack_from("<I", q, auth[1] + 2)[0]
    return Layout(version, body, (sd, sd + sig_len), p, p + 384, auth, (auth[1] + 6, auth[1] + 6 + pem_len))


# Collateral ---------------------------------------------------------------------------------------
def dcapqvl_json(name: str) -> str:
    return fixture_bytes(name).decode()


DCAPQVL_COLLATERAL = {
    TDX10: "tdx/dcapqvl_tdx10_v4_collateral.json",
    TDX15: "tdx/dcapqvl_tdx15_v5_collateral_outdated.json",
    SGX: "sgx/dcapqvl_sgx_v3_collateral.json",
}
# PCS responses carry no TCB Signing chain (PCS sends it in an HTTP header). The dcap-qvl
# collateral has the current one (same key, notBefore 2025-05-06), and the root CA CRL
# 2025-03-20 .. 2026-04-03, which covers the 2025 PCS samples.
SIGNING_CHAIN = json.loads(dcapqvl_json(DCAPQVL_COLLATERAL[TDX10]))["tcb_info_issuer_chain"]
ROOT_CRL_2025 = bytes.fromhex(json.loads(dcapqvl_json(DCAPQVL_COLLATERAL[TDX10]))["root_ca_crl"])


def pcs_collateral(name: str) -> Collateral:
    if name == TRUSTEE6:
        return load_pcs_collateral(
            tcb_info=fixture_bytes("tdx/trustee_pcs_tcbinfo_tdx_00a06d080000.json"),
            qe_identity=fixture_bytes("tdx/trustee_pcs_qeidentity_td_qe.json"),
            tcb_signing_chain=SIGNING_CHAIN,
            root_crl=ROOT_CRL_2025,
        )
    if name == GCP:
        return load_pcs_collateral(
            tcb_info=fixture_bytes("tdx/teekit_pcs_tcbinfo_tdx_00806f050000.json"),
            tcb_signing_chain=SIGNING_CHAIN,
            root_crl=ROOT_CRL_2025,
        )
    if name == TLSN:
        return load_pcs_collateral(
            tcb_info=fixture_bytes("sgx/teekit_pcs_tcbinfo_sgx_00906ed50000.json"),
            tcb_signing_chain=SIGNING_CHAIN,
            root_crl=ROOT_CRL_2025,
        )
    assert name in (DEBUG_TD, SPR)
    return load_pcs_collateral(  # go-tdx-guest, 2023
        tcb_info=fixture_bytes("tdx/gotdxguest_pcs_tcbinfo_tdx_50806f000000.json"),
        qe_identity=fixture_bytes("tdx/gotdxguest_pcs_qeidentity_td_qe.json"),
        tcb_signing_chain=SIGNING_CHAIN,
        root_crl=fixture_bytes("tdx/gotdxguest_intel_root_ca.crl.der"),
        pck_crl=fixture_bytes("tdx/gotdxguest_pck_platform_ca.crl.der"),
    )


def dcap_qvl_verdict(
    quote: bytes, collateral: Any, at: dt.datetime, root_der: bytes | None = None
) -> tuple[str, tuple[str, ...]]:
    """dcap-qvl's (status, advisory IDs); its "No matching TCB level found" error is our
    NoMatchingTcbLevel status, any other refusal is returned as ("error", message)."""
    try:
        if root_der is None:
            r = dcap_qvl.verify(quote, collateral, int(at.timestamp()))
        else:
            r = dcap_qvl.verify_with_root_ca(quote, collateral, root_der, int(at.timestamp()))
    except ValueError as e:
        if "No matching TCB level found" in str(e):
            return ("NoMatchingTcbLevel", ())
        return ("error", (str(e),))
    return (r.status, tuple(r.advisory_ids))


# -- trust anchor ---------------------------------------------------------------------------------------
def test_intel_root_is_pinned_by_key_and_matches_the_published_certificate() -> None:
    der = fixture_bytes("sgx/intel_sgx_root_ca.der")
    assert der == fixture_bytes("tdx/intel_sgx_root_ca.der")
    assert hashlib.sha256(der).hexdigest().upper() == "44A0196B2B99F889B8E149E95B807A350E7424964399E885A7CBB8CCFAB674D3"
    root = load_der(der, platform="sgx", what="root")
    assert dict(INTEL_ROOTS) == {spki_sha256(root): "intel-sgx-root-ca"}
    assert root.subject.rfc4514_string() == "C=US,ST=CA,L=Santa Clara,O=Intel Corporation,CN=Intel SGX Root CA"
    for name in SAMPLES:  # every genuine quote embeds exactly this root
        pem = quote_bytes(name)[slice(*layout(quote_bytes(name)).pem)]
        assert load_pem_chain(pem, platform="x", what="x")[-1].public_bytes(serialization.Encoding.DER) == der


# -- genuine quotes, no collateral -------------------------------------------------------------------------
@pytest.mark.parametrize("name", SAMPLES)
def test_genuine_quote_verifies_with_exactly_the_expected_fields(name: str, expected: dict[str, Any]) -> None:
    plat, file = name.split("/")
    exp = dict(expected[plat][file])
    if name == SPR:  # we verify the quote proper; the file's trailer is refused (test below)
        assert (exp["file_size"], exp["bytes_after_signature_data"]) == (4974, 39)
        exp["file_size"], exp["bytes_after_signature_data"] = SPR_QUOTE_LEN, 0
    v = verify(name)
    assert v.platform == plat and v.tcb_status == "Unknown" and v.advisory_ids == () and not v.simulated
    f = v.fields
    for key, want in exp.items():
        if key in META:
            continue
        if key == "body" and plat == "sgx":
            assert {k: f["body"][k] for k in want} == want
            assert set(f["body"]) == set(want) | EXTRA_REPORT
        elif key == "qe_report":
            assert {k: f["qe_report"][k] for k in want} == want
            assert set(f["qe_report"]) == set(want) | EXTRA_QE_REPORT
        else:
            assert f[key] == want, key
    assert set(f) == (set(exp) - META) | EXTRA_FIELDS | (TDX_EXTRA_FIELDS if plat == "tdx" else set())
    body = exp["body"]
    assert v.report_data == bytes.fromhex(body["report_data"])
    if plat == "tdx":
        assert v.debug is exp["td_debug"]
        assert v.measurements == {
            "mrtd": body["mr_td"],
            **{f"rtmr{i}": body[f"rtmr{i}"] for i in range(4)},
            "mrconfigid": body["mr_config_id"],
            "mrowner": body["mr_owner"],
            "mrownerconfig": body["mr_owner_config"],
            "mrseam": body["mr_seam"],
            "mrsignerseam": body["mr_signer_seam"],
            "td_attributes": body["td_attributes"],
            "xfam": body["xfam"],
        }
        assert f["tee_tcb_svn"] == body["tee_tcb_svn"]
        # TD_ATTRIBUTES bit 28, and MRSERVICETD (TDX 1.5 only, zero in the one sample) ≠ 0.
        assert f["sept_ve_disable"] is bool(int.from_bytes(bytes.fromhex(body["td_attributes"]), "little") & 1 << 28)
        assert f["sept_ve_disable"] is (name != SPR) and f["service_td"] is False
    else:
        assert v.debug is exp["enclave_debug"]
        assert v.measurements == {
            "mrenclave": body["mr_enclave"],
            "mrsigner": body["mr_signer"],
            "isv_prod_id": f"{body['isv_prod_id']:04x}",
            "isv_svn": f"{body['isv_svn']:04x}",
            "attributes": body["attributes"][:16],
            "xfrm": body["attributes"][16:],
            "misc_select": f"{int(body['misc_select'], 16):08x}",
            "config_id": f["body"]["config_id"],  # (not in expected_fields.json)
            "config_svn": f"{f['body']['config_svn']:04x}",
        }
    assert f["fmspc"] == exp["pck"]["FMSPC"] and f["root"] == "intel-sgx-root-ca"
    json.dumps(v.to_dict())  # JSON-safe


@pytest.mark.parametrize("name", SAMPLES)
def test_our_parse_agrees_with_dcap_qvl_parse(name: str) -> None:
    q = quote_bytes(name)
    ours = dcap.verify_quote(q, platform=platform_of(name), at=AT[name])
    theirs = dcap_qvl.parse_quote(q)
    assert theirs.header.version == ours.quote.version and theirs.header.tee_type == ours.quote.tee_type
    assert bytes(theirs.header.user_data) == ours.quote.user_data
    rep = theirs.report
    assert bytes(rep.report_data) == ours.quote.body.report_data
    if platform_of(name) == "tdx":
        assert isinstance(ours.quote.body, dcap.TdReport)
        assert bytes(rep.mr_td) == ours.quote.body.mr_td
        assert [bytes(r) for r in (rep.rt_mr0, rep.rt_mr1, rep.rt_mr2, rep.rt_mr3)] == list(ours.quote.body.rtmrs)
        assert bytes(rep.tee_tcb_svn) == ours.quote.body.tee_tcb_svn
    else:
        assert isinstance(ours.quote.body, dcap.EnclaveReport)
        assert (bytes(rep.mr_enclave), bytes(rep.mr_signer)) == (ours.quote.body.mr_enclave, ours.quote.body.mr_signer)
    ext = theirs.pck_extension()
    assert ext is not None
    assert (bytes(ext.fmspc), bytes(ext.pce_id), ext.pce_svn, bytes(ext.cpu_svn), ext.sgx_type) == (
        ours.pck.fmspc,
        ours.pck.pce_id,
        ours.pck.pcesvn,
        ours.pck.cpusvn,
        ours.pck.sgx_type,
    )
    assert bytes(ext.ppid) == ours.pck.ppid


def test_trailing_ascii_is_refused_and_the_quote_before_it_is_accepted() -> None:
    whole = fixture_bytes(SPR)
    err = refused(R.TRAILING_DATA, verify_tdx, whole, at=AT[SPR])
    assert err.field == "trailing" and "39 bytes after the 4935-byte quote" in err.detail
    assert whole[SPR_QUOTE_LEN:] == b"\nextra bytes(only for testing purpose)\n"
    v = verify_tdx(whole[:SPR_QUOTE_LEN], at=AT[SPR])
    assert v.fields["quote_size"] == SPR_QUOTE_LEN and v.fields["bytes_after_signature_data"] == 0


@pytest.mark.parametrize("name", [TDX10, GCP, TRUSTEE6])
def test_zero_padding_is_accepted_and_counted_any_other_trailing_byte_is_not(name: str) -> None:
    q = quote_bytes(name)
    size = layout(q).sig_data[1]
    assert q[size:] == bytes(len(q) - size) and len(q) > size
    assert verify(name, q[:size]).fields["bytes_after_signature_data"] == 0
    assert verify(name, q + bytes(5)).fields["bytes_after_signature_data"] == len(q) - size + 5
    for pos in (size, len(q) - 1):
        err = refused(R.TRAILING_DATA, verify, name, flipped(q, pos, xor=0x01))
        assert err.platform == "tdx"


@pytest.mark.parametrize("name", [DEBUG_TD, OCCLUM])
def test_debug_samples_are_refused_by_a_default_policy(name: str) -> None:
    v = verify(name)
    assert v.debug is True
    refused(R.DEBUG, VerificationPolicy().check, v, now=AT[name])
    refused(R.DEBUG, verify_evidence, platform_of(name), quote_bytes(name), policy=VerificationPolicy(), at=AT[name])
    # The permissive inspection policy shows them.
    VerificationPolicy.permissive_for_inspection().check(v, now=AT[name])


def test_verify_evidence_with_collateral_and_an_allow_list() -> None:
    q = quote_bytes(TDX10)
    body = expected_fields()["tdx"]["dcapqvl_tdx10_v4_quote.bin"]["body"]
    code = {"mrtd": [body["mr_td"]], "rtmr1": [body["rtmr1"]], "rtmr2": [body["rtmr2"]]}  # the TD's code identity
    policy = VerificationPolicy.from_dict({"measurements": {"tdx": code}})
    coll = fixture_bytes(DCAPQVL_COLLATERAL[TDX10])
    v = verify_evidence("tdx", q, policy=policy, collateral=coll, at=AT[TDX10], expected_report_data=q[0x238:0x278])
    assert v.tcb_status == "UpToDate"
    refused(R.TCB_STATUS, verify_evidence, "tdx", q, policy=policy, at=AT[TDX10])  # "Unknown" without collateral
    refused(R.NONCE, verify_evidence, "tdx", q, policy=policy, collateral=coll, at=AT[TDX10], expected_report_data=bytes(64))
    sgx_policy = VerificationPolicy.from_dict(
        {"min_tcb_status": "ConfigurationAndSWHardeningNeeded", "require_measurements": False}
    )
    v = verify_evidence("sgx", quote_bytes(SGX), policy=sgx_policy, collateral=fixture_bytes(DCAPQVL_COLLATERAL[SGX]), at=AT[SGX])
    assert v.advisory_ids == ("INTEL-SA-00289", "INTEL-SA-00615")


def test_collateral_older_than_the_policys_tcb_evaluation_is_refused() -> None:
    """Review finding: collateral comes from the peer, and an older TCB info still within its
    validity (from before an Intel TCB recovery) kept the platform UpToDate."""
    q, coll = quote_bytes(TDX10), fixture_bytes(DCAPQVL_COLLATERAL[TDX10])
    base = {"require_measurements": False}
    v = verify_evidence("tdx", q, policy=VerificationPolicy.from_dict(base), collateral=coll, at=AT[TDX10])
    assert (v.fields["collateral"]["tcb_evaluation_data_number"], v.fields["collateral"]["qe_identity_evaluation_data_number"]) \
        == (17, 17)  # fmt: skip
    at_17 = VerificationPolicy.from_dict(base | {"min_tcb_evaluation_data_number": 17})
    verify_evidence("tdx", q, policy=at_17, collateral=coll, at=AT[TDX10])
    at_18 = VerificationPolicy.from_dict(base | {"min_tcb_evaluation_data_number": 18})
    err = refused(R.COLLATERAL_INVALID, verify_evidence, "tdx", q, policy=at_18, collateral=coll, at=AT[TDX10])
    assert err.field == "tcb_evaluation_data_number"
    lax = VerificationPolicy.from_dict(base | {"min_tcb_evaluation_data_number": 1, "min_tcb_status": "Unknown"})
    refused(R.COLLATERAL_INVALID, verify_evidence, "tdx", q, policy=lax, at=AT[TDX10])  # none: below any floor
    for bad in ({"min_tcb_evaluation_data_number": -1}, {"min_tcb_evaluation_data_number": "18"}):
        refused(R.POLICY, VerificationPolicy.from_dict, bad)


# -- genuine collateral ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "status", "advisories"),
    [
        (TDX10, "UpToDate", ()),
        (TDX15, "NoMatchingTcbLevel", ()),
        (SGX, "ConfigurationAndSWHardeningNeeded", ("INTEL-SA-00289", "INTEL-SA-00615")),
    ],
)
def test_dcapqvl_samples_match_the_readme_and_dcap_qvl(name: str, status: str, advisories: tuple[str, ...]) -> None:
    text = dcapqvl_json(DCAPQVL_COLLATERAL[name])
    v = verify(name, collateral=load_collateral(text))
    assert (v.tcb_status, v.advisory_ids) == (status, advisories)
    assert v.fields["tcb"]["qe_tcb_status"] == "UpToDate"
    assert v.fields["collateral"]["revocation_checked"] == {"root_ca_crl": True, "pck_crl": True}
    assert v.fields["collateral"]["qe_identity_checked"] is True
    # The independent implementation, on the same quote, collateral and time.
    assert dcap_qvl_verdict(quote_bytes(name), dcap_qvl.QuoteCollateralV3.from_json(text), AT[name]) == (status, advisories)
    if name == TDX15:
        # README: PCK SGX component 8 has SVN 3, below every level.
        assert v.fields["pck"]["TCB"]["sgx_tcb_comp_svn"][7] == 3
        assert all(lv.sgx_svns[7] > 3 for lv in parse_tcb_info(json.loads(text)["tcb_info"]).levels)


@pytest.mark.parametrize("when", ["2025-06-19T10:20:00", "2025-07-19T10:05:00", "2025-07-19T10:30:00", "2025-08-01T00:00:00"])
def test_collateral_outside_its_window_is_refused_like_dcap_qvl_does(when: str) -> None:
    at = dt.datetime.fromisoformat(when).replace(tzinfo=UTC)
    text = dcapqvl_json(DCAPQVL_COLLATERAL[TDX10])
    err = refused(R.COLLATERAL_INVALID, verify, TDX10, collateral=load_collateral(text), at=at)
    assert err.field in {"tcb_info", "qe_identity", "pck_crl", "root_ca_crl"}
    assert dcap_qvl_verdict(quote_bytes(TDX10), dcap_qvl.QuoteCollateralV3.from_json(text), at)[0] == "error"


@pytest.mark.parametrize(
    ("name", "status", "advisories", "qe"),
    [
        (TRUSTEE6, "OutOfDate", (), "UpToDate"),  # README: PCK pcesvn 11 < 13
        (TLSN, "SWHardeningNeeded", ("INTEL-SA-00334", "INTEL-SA-00615"), None),  # no QE identity in the sample
        # README says OutOfDate [INTEL-SA-00960, -00982, -00986]; see the next test for why it is UpToDate.
        (GCP, "UpToDate", (), None),
    ],
)
def test_pcs_format_collateral(name: str, status: str, advisories: tuple[str, ...], qe: str | None) -> None:
    v = verify(name, collateral=pcs_collateral(name))
    assert (v.tcb_status, v.advisory_ids, v.fields["qe_tcb_status"]) == (status, advisories, qe)
    assert v.fields["collateral"]["revocation_checked"] == {"root_ca_crl": True, "pck_crl": False}
    if name == TRUSTEE6:
        assert v.fields["pck"]["TCB"]["pcesvn"] == 11 and v.fields["tcb"]["tcb_date"] == "2018-01-04T00:00:00Z"


def test_gcp_status_honours_the_tdx_module_version_unlike_the_readme() -> None:
    """TEE_TCB_SVN = 04 01 07 …: byte 1 (= 1) is the TDX module's major version, so bytes 0-1 are
    judged by identity TDX_01 (isvsvn 4 ≥ 4: UpToDate) and the TCB levels from byte 2 on ([PCS]
    "Get TCB Info", [QVL] isTdxTcbHigherOrEqual). The README's checker compared bytes 0-1 too
    (4 < 5 in the first level) and landed on the 2023-08-09 OutOfDate level. dcap-qvl, given the
    same TCB info under a test PKI (the genuine files lack a 2025-10 PCK CRL), agrees with us."""
    q = quote_bytes(GCP)
    parsed = parse_quote(q, platform="tdx")
    assert isinstance(parsed.body, dcap.TdReport) and parsed.body.tee_tcb_svn[:3] == b"\x04\x01\x07"
    raw = dcap._raw_members(fixture_bytes("tdx/teekit_pcs_tcbinfo_tdx_00806f050000.json").decode(), "t")["tcbInfo"]
    info = parse_tcb_info(raw)
    assert info.levels[0].tdx_svns is not None and info.levels[0].tdx_svns[:3] == (5, 0, 7)
    assert info.levels[1].status == "OutOfDate"
    assert info.levels[1].advisory_ids == ("INTEL-SA-00960", "INTEL-SA-00982", "INTEL-SA-00986")
    module = next(m for m in info.tdx_module_identities if m.id == "TDX_01")
    assert module.levels[0].isvsvn == 4 and module.levels[0].status == "UpToDate"

    pki = FakePki(q)
    qe = pki.redate(dcap._raw_members(fixture_bytes("tdx/trustee_pcs_qeidentity_td_qe.json").decode(), "q")["enclaveIdentity"])
    at = AT[GCP]
    ours = verify_tdx(pki.quote(), collateral=pki.collateral(raw, qe), at=at, roots=pki.roots)
    assert (ours.tcb_status, ours.advisory_ids) == ("UpToDate", ())
    assert pki.dcap_qvl(raw, qe, at) == ("UpToDate", ())


def test_2023_go_tdx_guest_collateral_is_genuine_but_cannot_be_checked_as_of_2023() -> None:
    """README pitfall: the PCS files carry no TCB Signing chain; the only one we have (from the
    dcap-qvl collateral) was re-issued with notBefore 2025-05-06. Exactly what is true:

    * as of 2023 (inside the collateral's window) the signing certificate is not yet valid;
    * as of 2025 the signing certificate is valid but the collateral is stale;
    * the signatures over the exact JSON text are genuine (checked at a time the certificate is
      valid), the 2023 CRLs are genuinely Intel's and revoke neither chain, and the TCB
      evaluation gives the README's statuses: UpToDate (debug TD), NoMatchingTcbLevel (SPR E4),
      both with the QE UpToDate. dcap-qvl agrees on the evaluation under a test PKI."""
    in_window = dt.datetime(2023, 6, 20, tzinfo=UTC)  # 2023-06-18T08:42:58 .. 07-08T07:24:59
    signing_valid = dt.datetime(2025, 6, 1, tzinfo=UTC)
    tcb_raw = dcap._raw_members(fixture_bytes("tdx/gotdxguest_pcs_tcbinfo_tdx_50806f000000.json").decode(), "t")["tcbInfo"]
    qe_raw = dcap._raw_members(fixture_bytes("tdx/gotdxguest_pcs_qeidentity_td_qe.json").decode(), "q")["enclaveIdentity"]
    for name, status in ((DEBUG_TD, "UpToDate"), (SPR, "NoMatchingTcbLevel")):
        coll = pcs_collateral(name)
        err = refused(R.CERT_NOT_YET_VALID, verify, name, collateral=coll, at=in_window)
        assert err.field == "tcb_signing"
        err = refused(R.COLLATERAL_INVALID, verify, name, collateral=coll, at=signing_valid)
        assert err.field in {"tcb_info", "qe_identity", "pck_crl", "root_ca_crl"}

        for text, sig in ((coll.tcb_info, coll.tcb_info_signature), (coll.qe_identity, coll.qe_identity_signature)):
            assert text is not None and sig is not None
            verify_signed_json(
                text, sig, coll.tcb_info_issuer_chain, roots=INTEL_ROOTS, at=signing_valid, platform="tdx", what="x"
            )
        chain = load_pem_chain(quote_bytes(name)[slice(*layout(quote_bytes(name)).pem)], platform="tdx", what="pck")
        for crl_file, issuer, revoked in (
            ("tdx/gotdxguest_intel_root_ca.crl.der", chain[2], chain[1]),
            ("tdx/gotdxguest_pck_platform_ca.crl.der", chain[1], chain[0]),
        ):
            crl = x509.load_der_x509_crl(fixture_bytes(crl_file))
            assert crl.issuer == issuer.subject and crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
            assert crl.last_update_utc <= in_window <= crl.next_update_utc  # type: ignore[operator]
            assert crl.get_revoked_certificate_by_serial_number(revoked.serial_number) is None

        parsed = parse_quote(quote_bytes(name), platform="tdx")
        verdict = evaluate_tcb(
            parsed,
            parse_pck_extensions(chain[0], platform="tdx"),
            parse_tcb_info(tcb_raw),
            parse_qe_identity(qe_raw),
            platform="tdx",
        )
        assert (verdict.status, verdict.advisory_ids, verdict.qe_status) == (status, (), "UpToDate")

        # Independent evaluation: the same TCB info / QE identity under a test PKI. dcap-qvl
        # refuses debug TDs outright, so the debug bit is cleared in a re-signed copy.
        pki = FakePki(quote_bytes(name))
        body = pki.signed
        if name == DEBUG_TD:
            body = flipped(body, 48 + 0x78, xor=0x01)
        fq = pki.quote(signed=body)
        assert verify_tdx(fq, collateral=pki.collateral(tcb_raw, qe_raw), at=in_window, roots=pki.roots).tcb_status == status
        assert pki.dcap_qvl(tcb_raw, qe_raw, in_window, quote=fq) == (status, ())


def test_pcs_samples_agree_with_dcap_qvl_under_a_test_pki() -> None:
    """The PCS-format samples lack a PCK CRL for their dates, which dcap-qvl requires; re-signed
    under a test root (same TCB data, same quote contents) both implementations must agree."""
    trustee_qe = dcap._raw_members(fixture_bytes("tdx/trustee_pcs_qeidentity_td_qe.json").decode(), "q")["enclaveIdentity"]
    sgx_qe = json.loads(dcapqvl_json(DCAPQVL_COLLATERAL[SGX]))["qe_identity"]
    cases = [
        (TRUSTEE6, "tdx/trustee_pcs_tcbinfo_tdx_00a06d080000.json", trustee_qe, ("OutOfDate", ())),
        (
            TLSN,
            "sgx/teekit_pcs_tcbinfo_sgx_00906ed50000.json",
            sgx_qe,
            ("SWHardeningNeeded", ("INTEL-SA-00334", "INTEL-SA-00615")),
        ),
    ]
    for name, tcb_file, qe, want in cases:
        raw = dcap._raw_members(fixture_bytes(tcb_file).decode(), "t")["tcbInfo"]
        pki = FakePki(quote_bytes(name))
        qe = pki.redate(qe)
        v = verify(name, pki.quote(), collateral=pki.collateral(raw, qe), roots=pki.roots)
        assert (v.tcb_status, v.advisory_ids) == want
        assert pki.dcap_qvl(raw, qe, AT[name]) == want


# -- tampering ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SAMPLES)
def test_flipped_header_and_body_bytes_are_bad_signature(name: str) -> None:
    q = quote_bytes(name)
    lay = layout(q)
    # Header bytes that carry no structure (reserved/SVNs and user data); the rest is checked
    # for what it is (version, key type, TEE type, vendor) below.
    offsets = [*range(8, 12), *range(28, 48), *range(lay.body[0], lay.body[1], 5), lay.body[1] - 1]
    for off in offsets:
        err = refused(R.BAD_SIGNATURE, verify, name, flipped(q, off, xor=0x01))
        assert err.field == "signature", off


@pytest.mark.parametrize("name", SAMPLES)
def test_flipped_qe_report_and_signature_data_are_bad_signature(name: str) -> None:
    q = quote_bytes(name)
    lay = layout(q)
    sd = lay.sig_data[0]
    cases = {
        "signature": [sd, sd + 63],
        "qe_report_signature": [*range(lay.qe_report, lay.qe_sig, 11), lay.qe_sig, lay.qe_sig + 63],
        "qe_report.report_data": [sd + 64, sd + 127, lay.auth[0], lay.auth[1] - 1],  # attestation key, auth data
    }
    for field, offsets in cases.items():
        for off in offsets:
            err = refused(R.BAD_SIGNATURE, verify, name, flipped(q, off, xor=0x01))
            assert err.field == field, (field, off)


@pytest.mark.parametrize("name", SAMPLES)
def test_truncations_are_truncated(name: str) -> None:
    q = quote_bytes(name)
    lay = layout(q)
    cuts = {0, 1, 2, 47, 48, lay.body[0] + 1, lay.body[1] - 1, lay.body[1], lay.body[1] + 3, lay.body[1] + 4}
    cuts |= {lay.qe_report, lay.pem[0], lay.pem[1] - 1, lay.sig_data[1] - 1} | set(range(5, lay.sig_data[1], 97))
    for cut in sorted(cuts):
        refused(R.TRUNCATED, verify, name, q[:cut])


def test_inconsistent_inner_lengths_are_malformed() -> None:
    q = quote_bytes(TDX10)  # has 70 zero bytes of padding, so a longer declared length still fits
    lay = layout(q)
    sd_len = lay.body[1]
    for delta, reason in ((+1, R.MALFORMED), (-1, R.MALFORMED)):
        b = bytearray(q)
        struct.pack_into("<I", b, sd_len, lay.sig_data[1] - lay.sig_data[0] + delta)
        refused(reason, verify, TDX10, bytes(b))
    outer = lay.sig_data[0] + 128  # type-6 entry: u16 type, u32 size
    for delta in (+1, -1, +10_000):
        b = bytearray(q)
        struct.pack_into("<I", b, outer + 2, struct.unpack_from("<I", q, outer + 2)[0] + delta)
        refused(R.MALFORMED, verify, TDX10, bytes(b))
    b = bytearray(q)
    struct.pack_into("<H", b, lay.qe_sig + 64, 0xFFFF)  # QE auth data longer than its container
    refused(R.MALFORMED, verify, TDX10, bytes(b))
    refused(R.MALFORMED, verify, TDX10, q + bytes(dcap.MAX_QUOTE_SIZE))


def test_unsupported_formats() -> None:
    q = quote_bytes(TDX10)
    lay = layout(q)
    cases = [
        (struct.pack("<H", 3), 2, "header.att_key_type"),  # ECDSA-384 is type 3; only 2 is defined for DCAP
        (struct.pack("<H", 0), 2, "header.att_key_type"),
        (struct.pack("<H", 6), 0, "header.version"),
        (struct.pack("<I", 0), 4, "header.tee_type"),  # SGX body in a v4 quote
        (b"\x00", 12, "header.qe_vendor_id"),
        (struct.pack("<H", 1), lay.sig_data[0] + 128, "cert_data.type"),
        (struct.pack("<H", 4), lay.auth[1], "pck_cert_data.type"),
    ]
    for patch, off, field in cases:
        b = bytearray(q)
        b[off : off + len(patch)] = patch
        assert refused(R.UNSUPPORTED, verify, TDX10, bytes(b)).field == field
    v5 = bytearray(quote_bytes(TDX15))
    v5[48:50] = struct.pack("<H", 4)  # TDX 1.5 "ex" body
    assert refused(R.UNSUPPORTED, verify, TDX15, bytes(v5)).field == "body.type"
    v5[48:50] = struct.pack("<H", 2)  # TDX 1.0 type with the TDX 1.5 size
    assert refused(R.MALFORMED, verify, TDX15, bytes(v5)).field == "body.size"
    assert refused(R.UNSUPPORTED, verify_sgx, q, at=AT[TDX10]).detail == "this is a TDX quote"
    assert refused(R.UNSUPPORTED, verify_tdx, quote_bytes(SGX), at=AT[SGX]).detail == "this is a SGX quote"
    sgx = bytearray(quote_bytes(SGX))
    sgx[4:8] = struct.pack("<I", 0x81)
    assert refused(R.UNSUPPORTED, verify_sgx, bytes(sgx), at=AT[SGX]).field == "header"


def test_certificate_validity_is_rechecked_after_a_memoised_success() -> None:
    q = quote_bytes(TDX10)
    verify_tdx(q, at=AT[TDX10])  # chain signatures now memoised
    assert refused(R.CERT_EXPIRED, verify_tdx, q, at=dt.datetime(2032, 3, 1, tzinfo=UTC)).field == "pck"
    assert refused(R.CERT_NOT_YET_VALID, verify_tdx, q, at=dt.datetime(2025, 2, 1, tzinfo=UTC)).field == "pck"
    dcap.clear_caches()
    assert refused(R.CERT_EXPIRED, verify_tdx, q, at=dt.datetime(2032, 3, 1, tzinfo=UTC)).field == "pck"
    assert verify_tdx(q, at=AT[TDX10]) == verify_tdx(q, at=AT[TDX10])


def test_undecodable_certificate_in_the_chain_is_malformed() -> None:
    # Found by the property test: this bit lands in the PCK leaf's public key, which cryptography
    # decodes only when asked for it.
    q = quote_bytes(TDX10)
    assert layout(q).pem[0] < 1736 < layout(q).pem[1]
    assert refused(R.MALFORMED, verify, TDX10, flipped(q, 1736, xor=0x01)).field == "pck_chain"


# -- tampered collateral ----------------------------------------------------------------------------------
def _edit_collateral(name: str, key: str, edit: Any) -> Collateral:
    doc = json.loads(dcapqvl_json(DCAPQVL_COLLATERAL[name]))
    doc[key] = edit(doc[key])
    return load_collateral(json.dumps(doc))


@pytest.mark.parametrize(
    ("key", "edit", "reason", "field"),
    [
        ("tcb_info", lambda s: s.replace('"pcesvn":11', '"pcesvn":10', 1), R.BAD_SIGNATURE, "tcb_info"),
        ("tcb_info", lambda s: s.replace('"UpToDate"', '"UpToDate" ', 1), R.BAD_SIGNATURE, "tcb_info"),  # whitespace counts
        ("tcb_info_signature", lambda s: ("0" if s[0] != "0" else "1") + s[1:], R.BAD_SIGNATURE, "tcb_info"),
        ("qe_identity", lambda s: s.replace('"isvprodid":2', '"isvprodid":3'), R.BAD_SIGNATURE, "qe_identity"),
        ("root_ca_crl", lambda s: s[:-2] + ("00" if s[-2:] != "00" else "01"), R.BAD_SIGNATURE, "root_ca_crl"),
        ("pck_crl", lambda s: s[:-2] + ("00" if s[-2:] != "00" else "01"), R.BAD_SIGNATURE, "pck_crl"),
        ("pck_crl", lambda s: s[:40], R.COLLATERAL_INVALID, "pck_crl"),
        (
            "tcb_info_issuer_chain",
            lambda s: s.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n",
            R.CHAIN_INVALID,
            "",
        ),
    ],
)
def test_tampered_collateral_is_refused(key: str, edit: Any, reason: AttestationReason, field: str) -> None:
    coll = _edit_collateral(TDX10, key, edit)
    err = refused(reason, verify, TDX10, collateral=coll)
    assert err.field == (field or "tcb_info_issuer_chain")


def test_undecodable_crl_is_collateral_invalid() -> None:
    # Found by the property test: cryptography parses a CRL's issuer lazily (byte 33), and an
    # invalid version (byte 9) raises InvalidVersion, which is not a ValueError.
    for pos in (9, 33):
        coll = _edit_collateral(TDX10, "root_ca_crl", lambda h, pos=pos: flipped(bytes.fromhex(h), pos, xor=0x01).hex())
        assert refused(R.COLLATERAL_INVALID, verify, TDX10, collateral=coll).field == "root_ca_crl"


def test_collateral_for_another_platform_is_collateral_invalid() -> None:
    gcp_with_tdx10 = refused(
        R.COLLATERAL_INVALID, verify, GCP, collateral=load_collateral(dcapqvl_json(DCAPQVL_COLLATERAL[TDX10])), at=AT[TDX10]
    )
    assert gcp_with_tdx10.field == "tcb_info.fmspc" and "b0c06f000000" in gcp_with_tdx10.detail
    # Another FMSPC, with no CRLs in the way: the trustee TCB info (00A06D080000) for the dcap-qvl quote.
    trustee_info = load_pcs_collateral(
        tcb_info=fixture_bytes("tdx/trustee_pcs_tcbinfo_tdx_00a06d080000.json"), tcb_signing_chain=SIGNING_CHAIN
    )
    assert refused(R.COLLATERAL_INVALID, verify, TDX10, collateral=trustee_info, at=AT[TRUSTEE6]).field == "tcb_info.fmspc"
    # TDX collateral for an SGX quote: the TDX PCK CRL is the Platform CA's, this quote's CA is the Processor CA.
    sgx_with_tdx = refused(R.COLLATERAL_INVALID, verify, SGX, collateral=load_collateral(dcapqvl_json(DCAPQVL_COLLATERAL[TDX10])))
    assert sgx_with_tdx.field == "pck_crl"
    sgx_tcb_only = load_pcs_collateral(
        tcb_info=fixture_bytes("tdx/teekit_pcs_tcbinfo_tdx_00806f050000.json"), tcb_signing_chain=SIGNING_CHAIN
    )
    assert refused(R.COLLATERAL_INVALID, verify, TLSN, collateral=sgx_tcb_only).field == "tcb_info.id"


def test_collateral_loaders_refuse_garbage() -> None:
    good = json.loads(dcapqvl_json(DCAPQVL_COLLATERAL[TDX10]))
    for bad in (
        "",
        "[]",
        "{",
        json.dumps({k: v for k, v in good.items() if k != "pck_crl"}),
        json.dumps({**good, "pck_crl": "zz"}),
    ):
        refused(R.COLLATERAL_INVALID, load_collateral, bad)
    refused(R.COLLATERAL_INVALID, load_collateral, json.dumps({**good, "tcb_info_signature": "00" * 63}))
    refused(R.COLLATERAL_INVALID, load_collateral, b"\xff{}")
    refused(R.COLLATERAL_INVALID, load_pcs_collateral, tcb_info=b"\xff{}", tcb_signing_chain=SIGNING_CHAIN)
    tcb = fixture_bytes("tdx/teekit_pcs_tcbinfo_tdx_00806f050000.json").decode()
    for bad in (
        tcb.replace('"tcbInfo"', '"tcbinfo"'),
        tcb.rstrip() + "x",
        tcb.replace('{"tcbInfo"', '{"signature":"00","tcbInfo"'),  # duplicate key
        tcb.replace('"signature":"', '"signature":"zz'),
    ):
        refused(R.COLLATERAL_INVALID, load_pcs_collateral, tcb_info=bad, tcb_signing_chain=SIGNING_CHAIN)
    # The PCS body's exact member text is what is signed; surrounding whitespace is not.
    spaced = load_pcs_collateral(
        tcb_info="\n " + tcb.replace('{"tcbInfo":', '{ "tcbInfo" :\n') + " \n", tcb_signing_chain=SIGNING_CHAIN
    )
    assert verify(GCP, collateral=spaced).tcb_status == "UpToDate"
    for old, new in (
        ('"version":3', '"version":2'),
        ('"tcbType":0', '"tcbType":1'),
        ('"fmspc":"00806f050000"', '"fmspc":"0080"'),
    ):
        broken = tcb.replace(old, new, 1)
        assert broken != tcb
        coll = load_pcs_collateral(tcb_info=broken, tcb_signing_chain=SIGNING_CHAIN)
        refused(R.BAD_SIGNATURE, verify, GCP, collateral=coll)  # authentication comes before parsing
        with pytest.raises(AttestationError) as ei:
            parse_tcb_info(coll.tcb_info)
        assert ei.value.reason is R.COLLATERAL_INVALID


# -- a forged Intel PKI, for what genuine samples cannot show -------------------------------------------------
T0 = dt.datetime(2000, 1, 1, tzinfo=UTC)
T1 = dt.datetime(2099, 1, 1, tzinfo=UTC)


def raw_sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def make_cert(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    extra: tuple[x509.ExtensionType, ...] = (),
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(T0)
        .not_valid_after(T1)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
    )
    for ext in extra:
        b = b.add_extension(ext, critical=False)
    return b.sign(signer, hashes.SHA256())


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


class FakePki:
    """An "Intel" PKI of our own: every certificate has the genuine subject ("Intel SGX Root CA",
    …) and the genuine PCK SGX extensions, but fresh keys. A genuine quote is re-signed under it
    (PCK chain and QE report signature; optionally a new attestation key for a changed body)."""

    def __init__(self, quote: bytes) -> None:
        lay = layout(quote)
        self.lay, self.orig = lay, quote
        self.signed = quote[: lay.body[1]]
        real = load_pem_chain(quote[slice(*lay.pem)], platform="x", what="x")
        keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(4)]
        self.root_key, self.ca_key, self.leaf_key, self.tcb_key = keys
        root_name, ca_name = real[2].subject, real[1].subject
        self.root = make_cert(root_name, root_name, self.root_key.public_key(), self.root_key, ca=True)
        self.ca = make_cert(ca_name, root_name, self.ca_key.public_key(), self.root_key, ca=True)
        sgx_ext = real[0].extensions.get_extension_for_oid(x509.ObjectIdentifier("1.2.840.113741.1.13.1")).value
        self.leaf = make_cert(real[0].subject, ca_name, self.leaf_key.public_key(), self.ca_key, ca=False, extra=(sgx_ext,))
        tcb_name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "Intel SGX TCB Signing"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Intel Corporation"),
                x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            ]
        )
        self.tcb = make_cert(tcb_name, root_name, self.tcb_key.public_key(), self.root_key, ca=False)
        self.roots = {spki_sha256(self.root): "fake-intel-root"}

    def quote(
        self,
        *,
        signed: bytes | None = None,
        chain: bytes | None = None,
        bogus_key: bytes | None = None,
        qe_edit: Callable[[bytes], bytes] | None = None,
    ) -> bytes:
        """The quote under this PKI; ``qe_edit`` changes the QE report before the PCK key signs it."""
        q, lay = self.orig, self.lay
        sig, att, qe = (
            q[lay.sig_data[0] : lay.sig_data[0] + 64],
            q[lay.sig_data[0] + 64 : lay.sig_data[0] + 128],
            q[lay.qe_report : lay.qe_sig],
        )
        auth = q[slice(*lay.auth)]
        if signed is not None:  # a new attestation key, certified by a re-signed QE report
            att_key = ec.generate_private_key(ec.SECP256R1())
            nums = att_key.public_key().public_numbers()
            att = nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")
            qe = qe[:0x140] + hashlib.sha256(att + auth).digest() + bytes(32)
            sig = raw_sign(att_key, signed)
        else:
            signed = self.signed
        if bogus_key is not None:  # certified by the QE report, but not a key at all
            att = bogus_key
            qe = qe[:0x140] + hashlib.sha256(att + auth).digest() + bytes(32)
        if qe_edit is not None:
            qe = qe_edit(qe)
        chain_pem = pem(self.leaf, self.ca, self.root) + b"\x00" if chain is None else chain
        inner = (
            qe
            + raw_sign(self.leaf_key, qe)
            + struct.pack("<H", len(auth))
            + auth
            + struct.pack("<HI", 5, len(chain_pem))
            + chain_pem
        )
        cert_data = struct.pack("<HI", 6, len(inner)) + inner if lay.version >= 4 else inner
        sig_data = sig + att + cert_data
        return signed + struct.pack("<I", len(sig_data)) + sig_data

    def crl(self, issuer: x509.Certificate, key: ec.EllipticCurvePrivateKey, revoked: tuple[int, ...] = ()) -> bytes:
        b = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.subject)
            .last_update(T0)
            .next_update(T1)
            .add_extension(x509.CRLNumber(1), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        )
        for serial in revoked:
            b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(T0).build())
        return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    @staticmethod
    def redate(body: str) -> str:
        """A window around 2023-2026 (for identities taken from other samples)."""
        body = re.sub(r'"issueDate":"[^"]*"', '"issueDate":"2023-01-01T00:00:00Z"', body)
        return re.sub(r'"nextUpdate":"[^"]*"', '"nextUpdate":"2026-12-31T00:00:00Z"', body)

    def collateral(
        self, tcb_info: str, qe_identity: str | None, *, root_revoked: tuple[int, ...] = (), pck_revoked: tuple[int, ...] = ()
    ) -> Collateral:
        chain = pem(self.tcb, self.root)
        return Collateral(
            tcb_info=tcb_info,
            tcb_info_signature=raw_sign(self.tcb_key, tcb_info.encode()),
            tcb_info_issuer_chain=chain,
            qe_identity=qe_identity,
            qe_identity_signature=raw_sign(self.tcb_key, qe_identity.encode()) if qe_identity is not None else None,
            qe_identity_issuer_chain=chain if qe_identity is not None else None,
            root_ca_crl=self.crl(self.root, self.root_key, root_revoked),
            pck_crl=self.crl(self.ca, self.ca_key, pck_revoked),
        )

    def dcap_qvl(
        self, tcb_info: str, qe_identity: str, at: dt.datetime, *, quote: bytes | None = None
    ) -> tuple[str, tuple[str, ...]]:
        ours = self.collateral(tcb_info, qe_identity)
        assert ours.qe_identity_signature is not None and ours.root_ca_crl is not None and ours.pck_crl is not None
        theirs = dcap_qvl.QuoteCollateralV3(
            pem(self.ca, self.root).decode(),
            ours.root_ca_crl,
            ours.pck_crl,
            ours.tcb_info_issuer_chain.decode(),
            tcb_info,
            ours.tcb_info_signature,
            ours.tcb_info_issuer_chain.decode(),
            qe_identity,
            ours.qe_identity_signature,
        )
        root_der = self.root.public_bytes(serialization.Encoding.DER)
        return dcap_qvl_verdict(self.quote() if quote is None else quote, theirs, at, root_der)


TDX10_TCB = json.loads(dcapqvl_json(DCAPQVL_COLLATERAL[TDX10]))["tcb_info"]
TDX10_QE = json.loads(dcapqvl_json(DCAPQVL_COLLATERAL[TDX10]))["qe_identity"]


@pytest.fixture(scope="module")
def pki() -> FakePki:
    return FakePki(quote_bytes(TDX10))


def test_forged_root_named_intel_sgx_root_ca_is_untrusted(pki: FakePki) -> None:
    fq = pki.quote()
    assert pki.root.subject.rfc4514_string().endswith("CN=Intel SGX Root CA")
    err = refused(R.UNTRUSTED_ROOT, verify, TDX10, fq)
    assert err.field == "intel_root"
    # Nothing else is wrong with it: pinned, it verifies, with the genuine quote's contents.
    v = verify(TDX10, fq, roots=pki.roots)
    assert v.measurements == verify(TDX10).measurements and v.fields["root"] == "fake-intel-root"
    # Collateral signed under the forged root is refused for a genuine quote, even when the
    # forged root is also pinned: collateral must come from the quote's own root.
    coll = pki.collateral(TDX10_TCB, TDX10_QE)
    assert refused(R.UNTRUSTED_ROOT, verify, TDX10, collateral=coll).field == "tcb_signing_root"
    both = {**INTEL_ROOTS, **pki.roots}
    refused(R.COLLATERAL_INVALID, verify, TDX10, collateral=coll, roots=both)
    assert verify(TDX10, fq, collateral=coll, roots=pki.roots).tcb_status == "UpToDate"


def test_revocation(pki: FakePki) -> None:
    fq = pki.quote()
    assert verify(TDX10, fq, collateral=pki.collateral(TDX10_TCB, TDX10_QE), roots=pki.roots).tcb_status == "UpToDate"
    cases = [
        ({"pck_revoked": (pki.leaf.serial_number,)}, "pck"),
        ({"root_revoked": (pki.ca.serial_number,)}, "pck_ca"),
        ({"root_revoked": (pki.tcb.serial_number,)}, "tcb_signing"),
    ]
    for kw, field in cases:
        coll = pki.collateral(TDX10_TCB, TDX10_QE, **kw)
        assert refused(R.CERT_REVOKED, verify, TDX10, fq, collateral=coll, roots=pki.roots).field == field
    # A CRL from the wrong issuer is not evidence of anything.
    coll = dataclasses.replace(pki.collateral(TDX10_TCB, TDX10_QE), pck_crl=pki.crl(pki.root, pki.root_key))
    assert refused(R.COLLATERAL_INVALID, verify, TDX10, fq, collateral=coll, roots=pki.roots).field == "pck_crl"


def test_certificate_with_an_invalid_version_is_malformed(pki: FakePki) -> None:
    der = bytearray(pki.leaf.public_bytes(serialization.Encoding.DER))
    at = der.find(b"\xa0\x03\x02\x01\x02")  # [0] EXPLICIT INTEGER 2 (v3)
    der[at + 4] = 5
    block = base64.encodebytes(bytes(der)).decode().replace("\n", "")
    lines = "\n".join(block[i : i + 64] for i in range(0, len(block), 64))
    leaf = f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n".encode()
    fq = pki.quote(chain=leaf + pem(pki.ca, pki.root))
    assert refused(R.MALFORMED, verify, TDX10, fq, roots=pki.roots).field == "pck_chain"


def test_chain_shape_and_pem_filler(pki: FakePki) -> None:
    leaf_ca_root = pem(pki.leaf, pki.ca, pki.root)
    assert verify(TDX10, pki.quote(chain=leaf_ca_root), roots=pki.roots)  # no NUL terminator: fine
    assert verify(TDX10, pki.quote(chain=leaf_ca_root.replace(b"\n", b"\r\n") + b"\n\x00\x00"), roots=pki.roots)
    junk = leaf_ca_root.replace(b"-----END CERTIFICATE-----\n", b"-----END CERTIFICATE-----\nnot signed by anyone\n", 1)
    assert refused(R.MALFORMED, verify, TDX10, pki.quote(chain=junk), roots=pki.roots).field == "pck_chain"
    assert refused(R.CHAIN_INVALID, verify, TDX10, pki.quote(chain=pem(pki.leaf, pki.root)), roots=pki.roots).field == "pck_chain"
    swapped = pem(pki.ca, pki.leaf, pki.root)
    assert refused(R.CHAIN_INVALID, verify, TDX10, pki.quote(chain=swapped), roots=pki.roots).field == "pck_chain"
    refused(R.MALFORMED, verify, TDX10, pki.quote(chain=b"\x00"), roots=pki.roots)


def _qe_identity_with(**changes: Any) -> str:
    doc = json.loads(TDX10_QE)
    doc.update(changes)
    return json.dumps(doc, separators=(",", ":"))


def test_qe_identity_mismatch_and_qe_status_convergence(pki: FakePki) -> None:
    fq = pki.quote()
    for key, value in (("mrsigner", "00" * 32), ("isvprodid", 1), ("miscselect", "01000000"), ("attributes", "10" + "0" * 30)):
        coll = pki.collateral(TDX10_TCB, _qe_identity_with(**{key: value}))
        assert refused(R.QE_IDENTITY, verify, TDX10, fq, collateral=coll, roots=pki.roots).field == f"qe_report.{key}"
    sgx_qe = json.loads(dcapqvl_json(DCAPQVL_COLLATERAL[SGX]))["qe_identity"]
    err = refused(R.COLLATERAL_INVALID, verify, TDX10, fq, collateral=pki.collateral(TDX10_TCB, sgx_qe), roots=pki.roots)
    assert err.field == "qe_identity.id" and "'QE'" in err.detail
    # QE ISVSVN 6 below the current level (7) but at an OutOfDate one: an UpToDate platform becomes OutOfDate.
    levels = [
        {"tcb": {"isvsvn": 7}, "tcbDate": "2025-01-01T00:00:00Z", "tcbStatus": "UpToDate"},
        {"tcb": {"isvsvn": 6}, "tcbDate": "2024-01-01T00:00:00Z", "tcbStatus": "OutOfDate", "advisoryIDs": ["INTEL-SA-99999"]},
    ]
    qe = _qe_identity_with(tcbLevels=levels)
    v = verify(TDX10, fq, collateral=pki.collateral(TDX10_TCB, qe), roots=pki.roots)
    assert (v.tcb_status, v.advisory_ids, v.fields["tcb"]["platform_tcb_status"], v.fields["qe_tcb_status"]) == (
        "OutOfDate",
        ("INTEL-SA-99999",),
        "UpToDate",
        "OutOfDate",
    )
    assert pki.dcap_qvl(TDX10_TCB, qe, AT[TDX10]) == ("OutOfDate", ("INTEL-SA-99999",))
    qe = _qe_identity_with(tcbLevels=[{**levels[0], "tcbStatus": "Revoked"}, {**levels[1], "tcbStatus": "Revoked"}])
    assert verify(TDX10, fq, collateral=pki.collateral(TDX10_TCB, qe), roots=pki.roots).tcb_status == "Revoked"
    qe = _qe_identity_with(tcbLevels=levels[:1])  # no level low enough
    assert verify(TDX10, fq, collateral=pki.collateral(TDX10_TCB, qe), roots=pki.roots).tcb_status == "NoMatchingTcbLevel"


def _tcb_with(edit: Any) -> str:
    doc = json.loads(TDX10_TCB)
    edit(doc)
    return json.dumps(doc, separators=(",", ":"))


def test_tdx_module_identity(pki: FakePki) -> None:
    fq = pki.quote()  # TEE_TCB_SVN 06 01 03…: module TDX_01, isvsvn 6

    def module(doc: dict[str, Any]) -> dict[str, Any]:
        found: dict[str, Any] = next(m for m in doc["tdxModuleIdentities"] if m["id"] == "TDX_01")
        return found

    def drop(doc: dict[str, Any]) -> None:
        doc["tdxModuleIdentities"] = [m for m in doc["tdxModuleIdentities"] if m["id"] != "TDX_01"]

    def signer(doc: dict[str, Any]) -> None:
        module(doc)["mrsigner"] = "11" * 48

    def outdated(doc: dict[str, Any]) -> None:
        module(doc)["tcbLevels"] = [
            {"tcb": {"isvsvn": 7}, "tcbDate": "2025-01-01T00:00:00Z", "tcbStatus": "UpToDate"},
            {"tcb": {"isvsvn": 6}, "tcbDate": "2024-01-01T00:00:00Z", "tcbStatus": "OutOfDate"},
        ]

    for edit, field in ((drop, "tee_tcb_svn"), (signer, "mr_signer_seam")):
        coll = pki.collateral(_tcb_with(edit), TDX10_QE)
        assert refused(R.TCB_MISMATCH, verify, TDX10, fq, collateral=coll, roots=pki.roots).field == field
    tcb = _tcb_with(outdated)
    v = verify(TDX10, fq, collateral=pki.collateral(tcb, TDX10_QE), roots=pki.roots)
    assert (v.tcb_status, v.fields["tcb"]["tdx_module_tcb_status"]) == ("OutOfDate", "OutOfDate")
    assert pki.dcap_qvl(tcb, TDX10_QE, AT[TDX10])[0] == "OutOfDate"


def test_tdx_components_are_compared_once_the_sgx_ones_match(pki: FakePki) -> None:
    fq = pki.quote()

    def raise_first_level(doc: dict[str, Any]) -> None:
        doc["tcbLevels"][0]["tcb"]["tdxtcbcomponents"][2]["svn"] = 99  # TEE_TCB_SVN[2] is 3

    tcb = _tcb_with(raise_first_level)
    v = verify(TDX10, fq, collateral=pki.collateral(tcb, TDX10_QE), roots=pki.roots)
    want = ("OutOfDate", tuple(json.loads(TDX10_TCB)["tcbLevels"][1]["advisoryIDs"]))
    assert (v.tcb_status, v.advisory_ids) == want and v.fields["tcb"]["tcb_date"] == "2018-01-04T00:00:00Z"
    assert pki.dcap_qvl(tcb, TDX10_QE, AT[TDX10]) == want


def test_tdx_module_version_zero_uses_tdx_module_and_all_sixteen_components(pki: FakePki) -> None:
    body = bytearray(pki.signed)
    body[48 + 1] = 0  # TEE_TCB_SVN[1]: module major version 0
    fq = pki.quote(signed=bytes(body))
    v = verify(TDX10, fq, collateral=pki.collateral(TDX10_TCB, TDX10_QE), roots=pki.roots)
    assert (v.tcb_status, v.fields["tcb"]["tdx_module_tcb_status"]) == ("UpToDate", None)
    assert pki.dcap_qvl(TDX10_TCB, TDX10_QE, AT[TDX10], quote=fq) == ("UpToDate", ())

    def no_module(doc: dict[str, Any]) -> None:
        del doc["tdxModule"]

    coll = pki.collateral(_tcb_with(no_module), TDX10_QE)
    assert refused(R.COLLATERAL_INVALID, verify, TDX10, fq, collateral=coll, roots=pki.roots).field == "tcb_info.tdxModule"
    body[48 + 0x70] = 1  # SEAMATTRIBUTES must match the module's (masked) attributes
    fq = pki.quote(signed=bytes(body))
    coll = pki.collateral(TDX10_TCB, TDX10_QE)
    assert refused(R.TCB_MISMATCH, verify, TDX10, fq, collateral=coll, roots=pki.roots).field == "seam_attributes"
    body[48 + 0x70] = 0
    body[48 + 2] = 1  # now TEE_TCB_SVN[2] (1) is below every level's (2): no TDX level matches
    fq = pki.quote(signed=bytes(body))
    assert verify(TDX10, fq, collateral=coll, roots=pki.roots).tcb_status == "NoMatchingTcbLevel"
    assert pki.dcap_qvl(TDX10_TCB, TDX10_QE, AT[TDX10], quote=fq) == ("NoMatchingTcbLevel", ())


def test_configuration_needed_platform_with_an_outdated_qe_is_outofdate_configuration_needed() -> None:
    pki = FakePki(quote_bytes(SGX))
    doc = json.loads(dcapqvl_json(DCAPQVL_COLLATERAL[SGX]))
    tcb = doc["tcb_info"]
    qe = json.loads(doc["qe_identity"])
    isvsvn = expected_fields()["sgx"]["dcapqvl_sgx_v3_quote.bin"]["qe_report"]["isv_svn"]
    qe["tcbLevels"] = [
        {"tcb": {"isvsvn": isvsvn + 1}, "tcbDate": "2025-01-01T00:00:00Z", "tcbStatus": "UpToDate"},
        {"tcb": {"isvsvn": isvsvn}, "tcbDate": "2024-01-01T00:00:00Z", "tcbStatus": "OutOfDate"},
    ]
    qe_text = json.dumps(qe, separators=(",", ":"))
    v = verify(SGX, pki.quote(), collateral=pki.collateral(tcb, qe_text), roots=pki.roots)
    want = ("OutOfDateConfigurationNeeded", ("INTEL-SA-00289", "INTEL-SA-00615"))
    assert (v.tcb_status, v.advisory_ids) == want
    assert pki.dcap_qvl(tcb, qe_text, AT[SGX]) == want


def test_pce_id_must_match(pki: FakePki) -> None:
    tcb = TDX10_TCB.replace('"pceId":"0000"', '"pceId":"0001"')
    coll = pki.collateral(tcb, TDX10_QE)
    assert refused(R.COLLATERAL_INVALID, verify, TDX10, pki.quote(), collateral=coll, roots=pki.roots).field == "tcb_info.pceId"


def test_attestation_key_that_is_not_a_point_is_malformed(pki: FakePki) -> None:
    fq = pki.quote(bogus_key=bytes(64))
    assert refused(R.MALFORMED, verify, TDX10, fq, roots=pki.roots).field == "attestation_key"


def test_pck_without_valid_sgx_extensions_is_malformed(pki: FakePki) -> None:
    real = pki.leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.2.840.113741.1.13.1")).value
    assert isinstance(real, x509.UnrecognizedExtension)
    for value in (b"", b"\x30\x00", real.value[:-1], real.value + b"\x00", real.value.replace(b"\x04\x06", b"\x04\x07", 1)):
        ext = x509.UnrecognizedExtension(real.oid, value)
        leaf = make_cert(pki.leaf.subject, pki.ca.subject, pki.leaf_key.public_key(), pki.ca_key, ca=False, extra=(ext,))
        fq = pki.quote(chain=pem(leaf, pki.ca, pki.root))
        assert refused(R.MALFORMED, verify, TDX10, fq, roots=pki.roots).field == "pck.sgx_extensions"
    bare = make_cert(pki.leaf.subject, pki.ca.subject, pki.leaf_key.public_key(), pki.ca_key, ca=False)
    refused(R.MALFORMED, verify, TDX10, pki.quote(chain=pem(bare, pki.ca, pki.root)), roots=pki.roots)


@FUZZ
@given(st.sampled_from(SAMPLES), st.integers(0, 10**6), st.integers(1, 255), st.booleans())
def test_sgx_extension_decoder_raises_only_value_error(name: str, pos: int, xor: int, cut: bool) -> None:
    leaf = load_pem_chain(quote_bytes(name)[slice(*layout(quote_bytes(name)).pem)], platform="x", what="x")[0]
    value = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.2.840.113741.1.13.1")).value.value  # type: ignore[attr-defined]
    data = value[: pos % len(value)] if cut else flipped(value, pos % len(value), xor=xor)
    with contextlib.suppress(ValueError):  # ValueError is the decoder's only refusal
        dcap._decode_sgx_extension(data)


def test_collateral_json_is_validated_field_by_field() -> None:
    base = json.loads(TDX10_TCB)
    edits: list[Callable[[dict[str, Any]], object]] = [
        lambda d: d.update(id="XYZ"),
        lambda d: d.update(issueDate="2025-06-19T10:16:03"),  # no time zone
        lambda d: d.update(issueDate="yesterday"),
        lambda d: d.update(tcbEvaluationDataNumber=True),
        lambda d: d.update(fmspc="B0C06F00000"),
        lambda d: d["tcbLevels"][0].update(tcbStatus="Fine"),
        lambda d: d["tcbLevels"][0].update(advisoryIDs=[1]),
        lambda d: d["tcbLevels"][0]["tcb"]["sgxtcbcomponents"].pop(),
        lambda d: d["tcbLevels"][0]["tcb"].update(pcesvn=-1),
        lambda d: d.update(tcbLevels={}),
        lambda d: d["tdxModuleIdentities"][0].update(mrsigner="00"),
    ]
    for edit in edits:
        doc = json.loads(json.dumps(base))
        edit(doc)
        refused(R.COLLATERAL_INVALID, parse_tcb_info, json.dumps(doc))
    refused(R.COLLATERAL_INVALID, parse_tcb_info, "[]")
    refused(R.COLLATERAL_INVALID, parse_tcb_info, "{")
    qe = json.loads(TDX10_QE)
    changes: list[dict[str, Any]] = [{"version": 1}, {"miscselect": "00"}, {"isvprodid": 70000}, {"tcbLevels": [{"tcb": {}}]}]
    for change in changes:
        refused(R.COLLATERAL_INVALID, parse_qe_identity, json.dumps({**qe, **change}))
    # CRLs may come as PEM (PCS serves both).
    crl = x509.load_der_x509_crl(ROOT_CRL_2025).public_bytes(serialization.Encoding.PEM)
    tcb = fixture_bytes("tdx/teekit_pcs_tcbinfo_tdx_00806f050000.json")
    coll = load_pcs_collateral(tcb_info=tcb, tcb_signing_chain=SIGNING_CHAIN.encode(), root_crl=crl)
    assert coll.root_ca_crl == ROOT_CRL_2025 and verify(GCP, collateral=coll).tcb_status == "UpToDate"
    refused(
        R.COLLATERAL_INVALID,
        load_pcs_collateral,
        tcb_info=tcb,
        tcb_signing_chain=SIGNING_CHAIN,
        root_crl=b"-----BEGIN X509 CRL-----",
    )
    refused(
        R.COLLATERAL_INVALID, Collateral, tcb_info="{}", tcb_info_signature=bytes(64), tcb_info_issuer_chain=b"", qe_identity="{}"
    )


# -- hostile bytes -------------------------------------------------------------------------------------------
def only_attestation_errors(data: bytes, platform: str = "tdx", **kw: Any) -> Verified | None:
    kw.setdefault("at", AT[TDX10])
    try:
        return (verify_tdx if platform == "tdx" else verify_sgx)(data, **kw)
    except AttestationError:
        return None


@FUZZ
@given(st.binary(max_size=6000), st.sampled_from([b"", b"\x04\x00\x02\x00\x81\x00\x00\x00", b"\x03\x00\x02\x00\x00\x00\x00\x00"]))
def test_random_bytes_raise_only_attestation_errors(data: bytes, prefix: bytes) -> None:
    head = prefix + bytes(4) + dcap.INTEL_QE_VENDOR_ID if prefix else b""
    for plat in ("tdx", "sgx"):
        assert only_attestation_errors(head + data, plat) is None


@FUZZ
@given(st.sampled_from(SAMPLES), st.data())
def test_random_mutations_raise_only_attestation_errors(name: str, data: st.DataObject) -> None:
    original = quote_bytes(name)
    doc = bytearray(original)
    ops = st.lists(
        st.tuples(st.sampled_from(["flip", "delete", "insert"]), st.integers(0, len(original) - 1), st.integers(1, 255)),
        min_size=1,
        max_size=3,
    )
    for kind, pos, value in data.draw(ops):
        pos %= len(doc) or 1
        if kind == "flip" and doc:
            doc[pos] ^= value
        elif kind == "delete":
            del doc[pos : pos + value % 8 + 1]
        else:
            doc[pos:pos] = bytes([value]) * (value % 4 + 1)
    got = only_attestation_errors(bytes(doc), platform_of(name), at=AT[name])
    if got is not None:  # only bytes that carry nothing may change (padding, PEM line breaks…)
        want = verify(name)
        assert (got.measurements, got.report_data, got.fields["pck"]) == (want.measurements, want.report_data, want.fields["pck"])


@FUZZ
@given(st.sampled_from(["tcb_info", "qe_identity", "root_ca_crl", "pck_crl"]), st.integers(0, 10**6), st.integers(1, 255))
def test_random_collateral_mutations_raise_only_attestation_errors(key: str, pos: int, xor: int) -> None:
    doc = json.loads(dcapqvl_json(DCAPQVL_COLLATERAL[TDX10]))
    value = doc[key]
    if key.endswith("crl"):
        raw = bytearray(bytes.fromhex(value))
        raw[pos % len(raw)] ^= xor
        doc[key] = raw.hex()
    else:
        chars = list(value)
        chars[pos % len(chars)] = chr((ord(chars[pos % len(chars)]) ^ xor) % 0x7F or 0x20)
        doc[key] = "".join(chars)
    try:
        coll = load_collateral(json.dumps(doc))
    except AttestationError:
        return
    assert (
        only_attestation_errors(quote_bytes(TDX10), collateral=coll) is None
        or doc[key] == json.loads(dcapqvl_json(DCAPQVL_COLLATERAL[TDX10]))[key]
    )


@FUZZ
@given(st.integers(0, 10**6), st.text(max_size=8), st.integers(0, 3))
def test_random_pcs_text_raises_only_attestation_errors(pos: int, insert: str, cut: int) -> None:
    text = fixture_bytes("tdx/teekit_pcs_tcbinfo_tdx_00806f050000.json").decode()
    pos %= len(text)
    mutated = text[:pos] + insert + text[pos + cut :]
    try:
        coll = load_pcs_collateral(tcb_info=mutated, tcb_signing_chain=SIGNING_CHAIN)
        parse_tcb_info(coll.tcb_info)
    except AttestationError as e:
        assert e.reason is R.COLLATERAL_INVALID


# -- SGX ATTRIBUTES (review finding: only DEBUG was judged) --------------------------------------------
_SGX_FLAGS = 0x30 + 0x30  # the report body starts after the 48-byte header; ATTRIBUTES.FLAGS at 0x30


def _sgx_with(edit: Any) -> tuple[bytes, dict[bytes, str]]:
    """The genuine SGX quote with ``edit`` applied to its signed bytes, re-signed under FakePki."""
    pki = FakePki(quote_bytes(SGX))
    signed = bytearray(pki.signed)
    edit(signed)
    return pki.quote(signed=bytes(signed)), pki.roots


@pytest.mark.parametrize(
    ("edit", "what"),
    [
        (lambda b: b.__setitem__(_SGX_FLAGS, b[_SGX_FLAGS] & ~0x04), "MODE64BIT"),
        (lambda b: b.__setitem__(_SGX_FLAGS, b[_SGX_FLAGS] | 0x10), "PROVISIONKEY"),
        (lambda b: b.__setitem__(_SGX_FLAGS, b[_SGX_FLAGS] | 0x20), "EINITTOKEN_KEY"),
        (lambda b: b.__setitem__(_SGX_FLAGS, b[_SGX_FLAGS] | 0x08), "reserved"),
        (lambda b: b.__setitem__(_SGX_FLAGS + 1, 0x03), "reserved"),
        (lambda b: b.__setitem__(_SGX_FLAGS + 7, 0x80), "reserved"),
    ],
)
def test_sgx_attributes_no_signer_enclave_has_are_refused(edit: Any, what: str) -> None:
    quote, roots = _sgx_with(edit)
    err = refused(R.UNSUPPORTED, verify_sgx, quote, at=AT[SGX], roots=roots)
    assert err.field == "attributes" and what in err.detail, err


def test_sgx_attributes_mrenclave_does_not_cover_can_be_pinned() -> None:
    """KSS with a CONFIGID the loader chose, a MISCSELECT: same MRENCLAVE, other measurements."""

    def kss(b: bytearray) -> None:
        b[_SGX_FLAGS] |= 0x80
        b[0x30 + 0xC0 : 0x30 + 0x100] = b"\x41" * 64
        b[0x30 + 0x104 : 0x30 + 0x106] = b"\x07\x00"
        b[0x30 + 0x10 : 0x30 + 0x14] = b"\x01\x00\x00\x00"

    quote, roots = _sgx_with(kss)
    v = verify_sgx(quote, at=AT[SGX], roots=roots)
    genuine = verify_sgx(quote_bytes(SGX), at=AT[SGX])
    assert v.measurements["mrenclave"] == genuine.measurements["mrenclave"]
    got = [v.measurements[k] for k in ("attributes", "config_id", "config_svn", "misc_select")]
    assert got == ["8500000000000000", "41" * 64, "0007", "00000001"]
    pinned = VerificationPolicy(
        min_tcb_status="Unknown",
        measurements={"sgx": {k: (genuine.measurements[k],) for k in ("mrenclave", "attributes", "config_id", "misc_select")}},
    )
    pinned.check(genuine, now=AT[SGX])
    assert refused(R.MEASUREMENT, pinned.check, v, now=AT[SGX]).field == "attributes"
