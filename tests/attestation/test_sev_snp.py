"""AMD SEV-SNP verifier: the five genuine reports, exact refusal reasons for every kind of
tampering, a forged AMD PKI (to prove the pins, the Turin TCB layout and the TCB/hwID checks),
and property tests that hostile bytes only ever raise AttestationError."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import struct
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardguard.attestation.errors import AttestationError, AttestationReason
from shardguard.attestation.policy import VerificationPolicy
from shardguard.attestation.sev_snp import (
    REPORT_SIZE,
    SIGNED_SIZE,
    SNP_ROOTS,
    decode_tcb,
    parse_report,
    verify_sev_snp,
)
from shardguard.attestation.verify import verify_evidence
from shardguard.attestation.x509chain import load_pem_chain, spki_sha256

from .conftest import expected_fields, fixture_bytes

R = AttestationReason
UTC = dt.UTC
SNP = "sev-snp/"
SAMPLES = sorted(expected_fields()["sev-snp"])
# A time inside each signer certificate's window (reports carry no timestamp). The AWS VLEK is
# valid for one year only (2024-12-10 .. 2025-12-10); every VCEK here is valid in mid-2026.
AT = {name: dt.datetime(2026, 6, 1, tzinfo=UTC) for name in SAMPLES}
AT["trustee_aws_milan_v3_vlek_report.bin"] = dt.datetime(2025, 6, 1, tzinfo=UTC)
GOSEV = "gosevguest_milan_v2_report.bin"
TRUSTEE = "trustee_milan_v2_report.bin"
VLEK = "trustee_aws_milan_v3_vlek_report.bin"
TEEKIT = "teekit_gcp_milan_v5_report.bin"
GENOA = "trustee_azure_genoa_v3_report.derived.bin"
# The P-384 group order (FIPS 186-4 D.1.2.4), for the signature-malleability test.
P384_N = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973",
    16,
)

# Keys of expected_fields.json that describe the fixture, not the report.
META = {"signer_cert", "chain", "report_sha256", "check"}
RENAMED = {"flags_0x48": "signer_info"}  # expected_fields.json's name -> our field name
EXTRA_FIELDS = {
    "author_key_en",
    "mask_chip_key",
    "migrate_ma",
    "platform_info_bits",
    "policy_abi_major",
    "policy_abi_minor",
    "policy_bits",
    "product",
    "root",
    "tcb",
}


def report(name: str) -> bytes:
    return fixture_bytes(SNP + name)


def signer(name: str) -> bytes:
    return fixture_bytes(SNP + expected_fields()["sev-snp"][name]["signer_cert"])


def verify(name: str, rep: bytes | None = None, **kw: Any) -> Any:
    kw.setdefault("signer_cert", signer(name))
    kw.setdefault("at", AT[name])
    return verify_sev_snp(report(name) if rep is None else rep, **kw)


def refused(reason: AttestationReason, fn: Any, *args: Any, **kw: Any) -> AttestationError:
    with pytest.raises(AttestationError) as ei:
        fn(*args, **kw)
    assert ei.value.reason is reason, f"expected {reason.name}, got {ei.value.reason.name}: {ei.value}"
    assert ei.value.platform == "sev-snp"
    return ei.value


def flipped(data: bytes, *offsets: int, xor: int = 0xFF) -> bytes:
    b = bytearray(data)
    for off in offsets:
        b[off] ^= xor
    return bytes(b)


# -- genuine samples -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLES)
def test_genuine_report_verifies_with_exactly_the_expected_fields(name: str, expected: dict[str, Any]) -> None:
    exp = expected["sev-snp"][name]
    v = verify(name)
    assert v.platform == "sev-snp" and v.tcb_status == "n/a" and not v.simulated
    for key, want in exp.items():
        if key in META:
            continue
        assert v.fields[RENAMED.get(key, key)] == want, key
    # Nothing unexpected either: every field is either in expected_fields.json or a decoded extra.
    v5 = {"launch_mit_vector", "current_mit_vector"} if exp["version"] >= 5 else set()
    assert set(v.fields) == {RENAMED.get(k, k) for k in exp if k not in META} | EXTRA_FIELDS | v5
    assert v.debug is exp["policy_debug_allowed"]
    assert v.fields["migrate_ma"] is False  # none of the samples allows a migration agent
    assert v.report_data == bytes.fromhex(exp["report_data"])
    assert v.measurements == {
        k: exp[k] for k in ("measurement", "host_data", "id_key_digest", "author_key_digest", "family_id", "image_id")
    } | {"vmpl": exp["vmpl"].to_bytes(4, "big").hex()}
    assert v.fields["product"] == exp["signer_cert_extensions"]["productName1"].split("-")[0]
    assert v.fields["root"] == f"ARK-{v.fields['product']}"
    assert hashlib.sha256(report(name)).hexdigest() == exp["report_sha256"]
    assert json.loads(json.dumps(v.to_dict()))["fields"] == v.fields  # JSON-safe as promised
    # The explicit fixture chain gives the same verdict as the bundled default.
    assert verify(name, chain=fixture_bytes(SNP + exp["chain"])) == v
    # The decoded TCBs agree with the certificate's SPL extensions (Milan/Genoa layout).
    ext = exp["signer_cert_extensions"]
    rt = v.fields["tcb"]["reported"]
    assert (rt["bootloader"], rt["tee"], rt["snp"], rt["microcode"]) == (
        ext["blSPL"],
        ext["teeSPL"],
        ext["snpSPL"],
        ext["ucodeSPL"],
    )


def test_v5_mitigation_vectors_and_v2_has_no_cpuid() -> None:
    f5 = verify(TEEKIT).fields
    assert (f5["launch_mit_vector"], f5["current_mit_vector"]) == ("0xb", "0xb")
    p2 = parse_report(report(GOSEV))
    assert p2.cpuid_fam_id is None and p2.launch_mit_vector is None and p2.cpuid_product is None
    assert parse_report(report(GENOA)).cpuid_product == "Genoa"
    assert parse_report(report(VLEK)).cpuid_product == "Milan"


def test_gosevguest_tcb_decodes_as_readme_says() -> None:
    t = decode_tcb(bytes.fromhex("0200000000000544"), "Milan")
    assert (t.bootloader, t.tee, t.snp, t.microcode, t.fmc) == (2, 0, 5, 0x44, None)
    assert verify(GOSEV).fields["tcb"]["current"] == {
        "raw": "0200000000000544",
        "bootloader": 2,
        "tee": 0,
        "snp": 5,
        "microcode": 0x44,
    }
    assert verify(TRUSTEE).fields["tcb"]["current"]["microcode"] == 0xCE  # current differs from reported (0x73)


def test_turin_tcb_layout_differs() -> None:
    raw = bytes([3, 9, 2, 11, 0, 0, 0, 72])
    t = decode_tcb(raw, "Turin")
    assert (t.fmc, t.bootloader, t.tee, t.snp, t.microcode) == (3, 9, 2, 11, 72)
    assert t.components() == {"blSPL": 9, "teeSPL": 2, "snpSPL": 11, "ucodeSPL": 72, "fmcSPL": 3}
    m = decode_tcb(raw, "Milan")
    assert (m.bootloader, m.tee, m.snp, m.microcode) == (3, 9, 0, 72)
    refused(R.UNSUPPORTED, decode_tcb, raw, "Venice")
    refused(R.MALFORMED, decode_tcb, raw[:7], "Milan")


def accepting(v: Any, **kw: Any) -> VerificationPolicy:
    """A policy that accepts ``v``'s code and platform: its measurement, its own SPLs as the
    floor, and no alias check (the samples' firmware predates it)."""
    tcbs = v.fields["tcb"]
    floor = {k: min(tcbs[w][k] for w in ("reported", "committed", "launch")) for k in ("bootloader", "tee", "snp", "microcode")}
    kw.setdefault("require_snp_alias_check", False)
    code = {"sev-snp": {"measurement": (v.measurements["measurement"],)}}
    return VerificationPolicy(measurements=code, min_snp_tcb={v.fields["product"]: floor}, **kw)


def test_debug_sample_refused_by_default_policy_and_accepted_with_allow_debug() -> None:
    v = verify(GOSEV)
    assert v.debug and v.fields["policy"] == "0xb0000" and v.fields["policy_bits"]["debug"]
    now = AT[GOSEV]
    refused(R.DEBUG, VerificationPolicy().check, v, now=now)
    allowed = accepting(v, allow_debug=True)
    allowed.check(v, now=now)
    # The same through the single entry point, with the VCEK as collateral.
    got = verify_evidence("sev-snp", report(GOSEV), policy=allowed, collateral=signer(GOSEV), at=now)
    assert got == v
    with pytest.raises(AttestationError) as ei:
        verify_evidence("sev-snp", report(GOSEV), policy=VerificationPolicy(), collateral=signer(GOSEV), at=now)
    assert ei.value.reason is R.DEBUG
    # A production sample passes once its measurement and platform are allowed.
    t = verify(TRUSTEE)
    assert not t.debug
    accepting(t).check(t, now=now)


def test_a_guest_that_allows_a_migration_agent_is_refused_unless_the_policy_allows_it() -> None:
    """Review finding: MIGRATE_MA (guest policy bit 18) lets a migration agent move or copy
    the VM's state, and the measurement does not cover the policy, so any host could start an
    approved image so. A copied node would sign twice with one nonce pair committed ahead or
    one pre-signature (docs/SECURITY.md); TDX's MIGRATABLE attribute is refused likewise."""
    pol = struct.unpack_from("<Q", report(TRUSTEE), 0x08)[0]
    assert not pol >> 18 & 1
    rep, vcek, pki = milan_forgery(patch={0x08: struct.pack("<Q", pol | 1 << 18)})
    v = verify_sev_snp(rep, signer_cert=vcek, chain=pki.chain_pem, at=FORGED_AT, roots=pki.roots)
    assert v.fields["migrate_ma"] is True and v.fields["policy_bits"]["migrate_ma"] is True
    err = refused(R.MIGRATION_AGENT, accepting(v).check, v, now=FORGED_AT)
    assert err.field == "policy"
    accepting(v, allow_migration_agent=True).check(v, now=FORGED_AT)
    VerificationPolicy.permissive_for_inspection().check(v, now=FORGED_AT)
    # Fail closed: an SEV-SNP result that does not say is refused too.
    bare = dataclasses.replace(v, fields={k: x for k, x in v.fields.items() if k != "migrate_ma"})
    refused(R.MIGRATION_AGENT, accepting(v).check, bare, now=FORGED_AT)
    assert VerificationPolicy.from_toml("allow_migration_agent = true\n").allow_migration_agent
    with pytest.raises(AttestationError):
        VerificationPolicy.from_toml("allow_migration_agent = 1\n")


@pytest.mark.parametrize(
    ("patch", "reason", "field"),
    [
        ({0x30: struct.pack("<I", 0xFFFFFFFF)}, R.UNSUPPORTED, "vmpl"),  # asked for by the hypervisor
        ({0x30: struct.pack("<I", 4)}, R.UNSUPPORTED, "vmpl"),
        ({0x08: struct.pack("<Q", 0x1001F)}, R.MALFORMED, "policy"),  # bit 17 (must be one) clear
        ({0x08: struct.pack("<Q", 0x3001F | 1 << 30)}, R.UNSUPPORTED, "policy"),  # a bit not yet defined
        ({0x08: struct.pack("<Q", 0x3001F | 1 << 63)}, R.UNSUPPORTED, "policy"),
        ({0x160: bytes(32)}, R.MIGRATION_AGENT, "report_id_ma"),  # a migration agent the policy does not allow
        ({0x48: struct.pack("<I", 1 << 9)}, R.MALFORMED, "signer_info"),  # a reserved bit
    ],
)
def test_what_no_policy_may_accept_of_a_guest_is_refused(patch: dict[int, bytes], reason: R, field: str) -> None:
    """Review finding: VMPL, unknown guest policy bits and REPORT_ID_MA were parsed, not judged."""
    rep, vcek, pki = milan_forgery(patch=patch)
    err = refused(reason, verify_sev_snp, rep, signer_cert=vcek, chain=pki.chain_pem, at=FORGED_AT, roots=pki.roots)
    assert err.field == field


def test_the_vmpl_can_be_pinned() -> None:
    rep, vcek, pki = milan_forgery(patch={0x30: struct.pack("<I", 1)})  # an OS under an SVSM at VMPL 0
    v = verify_sev_snp(rep, signer_cert=vcek, chain=pki.chain_pem, at=FORGED_AT, roots=pki.roots)
    assert v.measurements["vmpl"] == "00000001"
    accepting(v).check(v, now=FORGED_AT)
    pinned = dataclasses.replace(accepting(v), measurements={"sev-snp": {"measurement": (v.measurements["measurement"],),
                                                                         "vmpl": ("00000000",)}})  # fmt: skip
    err = refused(R.MEASUREMENT, pinned.check, v, now=FORGED_AT)
    assert err.field == "vmpl"


def test_the_platform_must_rule_out_memory_aliasing_and_meet_the_tcb_floor() -> None:
    """Review finding: SEV-SNP has no TCB status, so firmware with known flaws (CacheWarp,
    BadRAM) passed every policy. Now: ALIAS_CHECK_COMPLETE by default, and a floor per product
    on the reported, committed and launch TCBs, required for any product evidence comes from."""
    t, g = verify(TRUSTEE), verify(TEEKIT)  # Milan: alias check incomplete / complete
    assert (t.fields["platform_info_bits"]["alias_check_complete"], g.fields["platform_info_bits"]["alias_check_complete"]) \
        == (False, True)  # fmt: skip
    err = refused(R.TCB_STATUS, accepting(t, require_snp_alias_check=True).check, t, now=AT[TRUSTEE])
    assert err.field == "platform_info"
    accepting(g, require_snp_alias_check=True).check(g, now=AT[TEEKIT])
    # The floor: one step above the sample's microcode is refused, naming the TCB and component.
    higher = accepting(t)
    higher = dataclasses.replace(higher, min_snp_tcb={"Milan": dict(higher.min_snp_tcb["Milan"], microcode=116)})
    err = refused(R.TCB_STATUS, higher.check, t, now=AT[TRUSTEE])
    assert err.field == "tcb.reported.microcode"
    # No floor for the product the evidence comes from: refused unless require_snp_tcb is off.
    genoa_only = dataclasses.replace(accepting(t), min_snp_tcb={"Genoa": {"snp": 1}})
    assert refused(R.TCB_STATUS, genoa_only.check, t, now=AT[TRUSTEE]).field == "min_snp_tcb"
    dataclasses.replace(genoa_only, require_snp_tcb=False).check(t, now=AT[TRUSTEE])
    VerificationPolicy.permissive_for_inspection().check(t, now=AT[TRUSTEE])
    # From TOML, and what a floor may name.
    p = VerificationPolicy.from_toml("[min_snp_tcb.Milan]\nsnp = 8\nmicrocode = 115\n")
    assert p.min_snp_tcb == {"Milan": {"snp": 8, "microcode": 115}} and p.require_snp_alias_check and p.require_snp_tcb
    for bad, field in (
        ("[min_snp_tcb.Venice]\nsnp = 1", "min_snp_tcb"),
        ("[min_snp_tcb.Milan]\nspeed = 1", "min_snp_tcb.Milan.speed"),
        ("[min_snp_tcb.Milan]\nsnp = 256", "min_snp_tcb.Milan.snp"),
        ('[min_snp_tcb.Milan]\nsnp = "8"', "min_snp_tcb.Milan.snp"),
        ("[min_snp_tcb.Milan]\n", "min_snp_tcb.Milan"),
        ("min_snp_tcb = 3", "min_snp_tcb"),
    ):
        with pytest.raises(AttestationError) as ei:
            VerificationPolicy.from_toml(bad)
        assert ei.value.reason is R.POLICY and ei.value.field == field, (bad, ei.value)


def test_teekit_report_data_binds_nonce_and_x25519_key() -> None:
    inputs = dict(line.split("=", 1) for line in fixture_bytes(SNP + "teekit_gcp_milan_v5_report_inputs.txt").decode().split())
    binding = hashlib.sha512(bytes.fromhex(inputs["NONCE"]) + bytes.fromhex(inputs["X25519_KEY"])).digest()
    assert verify(TEEKIT).report_data == binding
    policy = dataclasses.replace(accepting(verify(TEEKIT)), require_measurements=False, measurements={})
    verify_evidence("sev-snp", report(TEEKIT), policy=policy, collateral=signer(TEEKIT), expected_report_data=binding)
    with pytest.raises(AttestationError) as ei:
        verify_evidence("sev-snp", report(TEEKIT), policy=policy, collateral=signer(TEEKIT), expected_report_data=bytes(64))
    assert ei.value.reason is R.NONCE


def test_default_time_is_now() -> None:
    # Checked on/after 2026-11: the VCEKs are valid until 2029+, the AWS VLEK expired 2025-12-10.
    assert verify_sev_snp(report(TEEKIT), signer_cert=signer(TEEKIT)).fields["product"] == "Milan"
    e = refused(R.CERT_EXPIRED, verify_sev_snp, report(VLEK), signer_cert=signer(VLEK))
    assert e.field == "VLEK"


# -- bundled data and pins -----------------------------------------------------------------------------


def test_bundled_chains_are_the_public_kds_chains_and_roots_are_pinned_by_key() -> None:
    from importlib import resources

    base = resources.files("shardguard.attestation") / "data" / "amd"
    readme_der = {
        "ARK-Milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
        "ARK-Genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
        "ARK-Turin": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
    }
    files = {
        "milan_ask_ark.pem": ("milan_vcek_ask_ark.pem", "SEV-Milan", "ARK-Milan"),
        "milan_asvk_ark.pem": ("milan_vlek_asvk_ark.pem", "SEV-VLEK-Milan", "ARK-Milan"),
        "genoa_ask_ark.pem": ("genoa_vcek_ask_ark.pem", "SEV-Genoa", "ARK-Genoa"),
        "turin_ask_ark.pem": ("turin_vcek_ask_ark.pem", "SEV-Turin", "ARK-Turin"),
    }
    for name, (fixture, inter, ark) in files.items():
        data = base.joinpath(name).read_bytes()
        assert data == fixture_bytes(SNP + "amd_chain/" + fixture)
        certs = load_pem_chain(data, platform="t", what=name)
        cns = [c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value for c in certs]
        assert cns == [inter, ark]  # intermediate then root; no VCEK/VLEK bundled
        assert SNP_ROOTS[spki_sha256(certs[1])] == ark
        assert hashlib.sha256(certs[1].public_bytes(serialization.Encoding.DER)).hexdigest() == readme_der[ark]
    assert sorted(SNP_ROOTS.values()) == sorted(readme_der)


# -- parsing: size, version, algorithm, reserved bytes ---------------------------------------------------


@pytest.mark.parametrize("length", [0, 3, 4, 100, SIGNED_SIZE, REPORT_SIZE - 1])
def test_truncated(length: int) -> None:
    refused(R.TRUNCATED, parse_report, report(TEEKIT)[:length])
    refused(R.TRUNCATED, verify, TEEKIT, report(TEEKIT)[:length])


@pytest.mark.parametrize("extra", [b"\x00", bytes(70), b"trailer\n"])
def test_trailing_data(extra: bytes) -> None:
    refused(R.TRAILING_DATA, verify, TEEKIT, report(TEEKIT) + extra)


@pytest.mark.parametrize("version", [0, 1, 4, 6, 0x100 | 2])
def test_unsupported_versions(version: int) -> None:
    b = bytearray(report(GENOA))
    b[0:4] = version.to_bytes(4, "little")
    assert refused(R.UNSUPPORTED, parse_report, bytes(b)).field == "version"
    assert refused(R.UNSUPPORTED, parse_report, bytes(b) + b"x").field == "version"


def test_algorithm_and_signing_key_fields() -> None:
    for algo in (0, 2, 0x101):
        b = bytearray(report(TRUSTEE))
        b[0x34:0x38] = algo.to_bytes(4, "little")
        assert refused(R.UNSUPPORTED, verify, TRUSTEE, bytes(b)).field == "signature_algo"
    for key_sel in range(2, 8):  # 7 = "no signature" (MASK_CHIP_KEY); 2-6 reserved
        b = bytearray(report(TRUSTEE))
        b[0x48] = key_sel << 2
        assert refused(R.UNSUPPORTED, verify, TRUSTEE, bytes(b)).field == "signing_key"
    # Flipping the VCEK report to claim a VLEK is caught as a kind mismatch before the signature.
    b = bytearray(report(TRUSTEE))
    b[0x48] = 1 << 2
    assert refused(R.CHAIN_INVALID, verify, TRUSTEE, bytes(b)).field == "signer_cert"


def mbz_ranges(version: int) -> list[tuple[int, int]]:
    """Reserved bytes the verifier must see as zero (enclave-backends.md §3.2)."""
    return [
        (0x04C, 0x050),
        (0x18B if version >= 3 else 0x188, 0x1A0),
        (0x1EB, 0x1EC),
        (0x1EF, 0x1F0),
        (0x208 if version >= 5 else 0x1F8, 0x2A0),
        (0x330, 0x4A0),
    ]


def expected_reason_for_flip(off: int, version: int) -> AttestationReason:
    """What XOR 0xFF of the byte at ``off`` must be refused for."""
    if off < 4 or 0x34 <= off < 0x38 or off == 0x48:  # version, signature_algo, SIGNING_KEY -> 6 or 7
        return R.UNSUPPORTED
    if any(a <= off < b for a, b in mbz_ranges(version)):
        return R.MALFORMED
    return R.BAD_SIGNATURE


@pytest.mark.parametrize("name", SAMPLES)
def test_every_16th_signed_byte_flipped_is_refused_precisely(name: str) -> None:
    genuine = report(name)
    version = parse_report(genuine).version
    seen = set()
    for off in range(0, SIGNED_SIZE, 16):
        want = expected_reason_for_flip(off, version)
        e = refused(want, verify, name, flipped(genuine, off))
        seen.add(want)
        if want is R.BAD_SIGNATURE:
            assert e.field == "signature"
    assert seen == {R.UNSUPPORTED, R.MALFORMED, R.BAD_SIGNATURE}


def test_every_byte_of_the_v5_report_flipped_is_refused_precisely() -> None:
    genuine = report(TEEKIT)
    for off in range(REPORT_SIZE):
        want = expected_reason_for_flip(off, 5) if off < SIGNED_SIZE or off >= 0x330 else R.BAD_SIGNATURE
        refused(want, verify, TEEKIT, flipped(genuine, off))


@pytest.mark.parametrize("name", SAMPLES)
def test_flipped_signature_bytes(name: str) -> None:
    genuine = report(name)
    for off in range(0x2A0, 0x330, 3):  # R at 0x2A0, S at 0x2E8 (72 bytes each, incl. the zero top bytes)
        refused(R.BAD_SIGNATURE, verify, name, flipped(genuine, off, xor=0x01))
    zero_sig = genuine[:0x2A0] + bytes(REPORT_SIZE - 0x2A0)
    refused(R.BAD_SIGNATURE, verify, name, zero_sig)


def test_ecdsa_signature_is_malleable_so_report_bytes_are_not_an_identifier() -> None:
    # (r, n - s) is the same ECDSA signature: the verifier accepts it and the signed fields are
    # identical. Identify reports by REPORT_ID or a hash of bytes [0, 0x2A0), never the raw bytes.
    genuine = report(TRUSTEE)
    s = int.from_bytes(genuine[0x2E8:0x330], "little")
    other = genuine[:0x2E8] + (P384_N - s).to_bytes(72, "little") + genuine[0x330:]
    assert other != genuine
    assert verify(TRUSTEE, other) == verify(TRUSTEE)


# -- signer, chain, time ------------------------------------------------------------------------------


def test_vcek_from_another_chip_is_a_bad_signature() -> None:
    for other in (TRUSTEE, TEEKIT):
        e = refused(R.BAD_SIGNATURE, verify, GOSEV, signer_cert=signer(other))
        assert e.field == "signature"
    refused(R.BAD_SIGNATURE, verify, TEEKIT, signer_cert=signer(GOSEV))


def test_genoa_chain_for_a_milan_vcek() -> None:
    genoa = fixture_bytes(SNP + "amd_chain/genoa_vcek_ask_ark.pem")
    e = refused(R.CHAIN_INVALID, verify, GOSEV, chain=genoa)
    assert e.field == "VCEK"  # its issuer (SEV-Milan) is not the chain's ASK (SEV-Genoa)
    milan = fixture_bytes(SNP + "amd_chain/milan_vcek_ask_ark.pem")
    refused(R.CHAIN_INVALID, verify, GENOA, chain=milan)


def test_milan_ask_with_genoa_ark_is_a_bad_signature() -> None:
    milan = fixture_bytes(SNP + "amd_chain/milan_vcek_ask_ark.pem")
    genoa = fixture_bytes(SNP + "amd_chain/genoa_vcek_ask_ark.pem")
    ask = milan.split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
    ark_genoa = b"-----BEGIN CERTIFICATE-----" + genoa.split(b"-----BEGIN CERTIFICATE-----")[2]
    # Names differ (ARK-Milan vs ARK-Genoa): a broken chain, reported as such.
    refused(R.CHAIN_INVALID, verify, GOSEV, chain=ask + ark_genoa)


def test_vlek_and_vcek_are_not_interchangeable() -> None:
    e = refused(R.CHAIN_INVALID, verify, GOSEV, signer_cert=signer(VLEK))
    assert "VCEK" in e.detail and e.field == "signer_cert"
    refused(R.CHAIN_INVALID, verify, VLEK, signer_cert=signer(TRUSTEE))
    # A VLEK checked against the VCEK chain (ASK instead of ASVK) fails on the issuer name.
    refused(R.CHAIN_INVALID, verify, VLEK, chain=fixture_bytes(SNP + "amd_chain/milan_vcek_ask_ark.pem"))


@pytest.mark.parametrize(
    ("name", "at", "reason"),
    [
        (GOSEV, dt.datetime(2022, 9, 23, tzinfo=UTC), R.CERT_NOT_YET_VALID),
        (GOSEV, dt.datetime(2029, 9, 25, tzinfo=UTC), R.CERT_EXPIRED),
        (VLEK, dt.datetime(2024, 12, 10, 22, 14, 20, tzinfo=UTC), R.CERT_NOT_YET_VALID),
        (VLEK, dt.datetime(2025, 12, 10, 22, 14, 22, tzinfo=UTC), R.CERT_EXPIRED),
        (GENOA, dt.datetime(2025, 1, 24, 2, 21, 47, tzinfo=UTC), R.CERT_NOT_YET_VALID),
        (TEEKIT, dt.datetime(2032, 12, 6, tzinfo=UTC), R.CERT_EXPIRED),
    ],
)
def test_signer_validity_window(name: str, at: dt.datetime, reason: AttestationReason) -> None:
    e = refused(reason, verify, name, at=at)
    assert e.field == expected_fields()["sev-snp"][name]["signing_key"]


def test_naive_time_is_utc() -> None:
    assert verify(GOSEV, at=dt.datetime(2026, 6, 1)).fields["product"] == "Milan"


def test_der_helpers() -> None:
    from shardguard.attestation.sev_snp import _der_tlv, _der_uint

    assert [_der_uint(v, "x") for v in (b"\x02\x01\x05", b"\x02\x02\x00\xd9", b"\x02\x81\x01\x07")] == [5, 0xD9, 7]
    assert _der_tlv(b"\x16\x05Milan", 0x16, "x") == b"Milan"
    for bad in (
        b"",
        b"\x02",
        b"\x03\x01\x00",
        b"\x02\x02\x00",
        b"\x02\x01\x00\x00",
        b"\x02\x80",
        b"\x02\x81",
        b"\x02\x00",
        b"\x02\x01\x80",
    ):
        refused(R.MALFORMED, _der_uint, bad, "x")


def test_bad_inputs() -> None:
    refused(R.MALFORMED, verify, GOSEV, signer_cert=b"not a certificate")
    refused(R.MALFORMED, verify, GOSEV, signer_cert=b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    two = fixture_bytes(SNP + "teekit_gcp_milan_v5_vcek.pem") * 2
    refused(R.MALFORMED, verify, TEEKIT, signer_cert=two)
    ark_only = fixture_bytes(SNP + "amd_chain/milan_vcek_ask_ark.pem").split(b"-----END CERTIFICATE-----\n", 1)[1]
    refused(R.CHAIN_INVALID, verify, GOSEV, chain=ark_only)
    refused(R.MALFORMED, verify, GOSEV, chain=b"garbage")
    refused(R.MALFORMED, parse_report, "not bytes")
    # The ARK alone is not a VCEK.
    refused(R.CHAIN_INVALID, verify, GOSEV, signer_cert=ark_only)
    # PEM signer with surrounding whitespace is accepted.
    assert verify(TEEKIT, signer_cert=b"\n  " + signer(TEEKIT)).fields["signing_key"] == "VCEK"


# -- a forged AMD PKI --------------------------------------------------------------------------------------

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
AMD_OID = "1.3.6.1.4.1.3704.1."


def amd_name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def der_int(v: int) -> bytes:
    body = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def der_ia5(s: str) -> bytes:
    return bytes([0x16, len(s)]) + s.encode()


NOT_BEFORE = dt.datetime(2024, 1, 1, tzinfo=UTC)
NOT_AFTER = dt.datetime(2031, 1, 1, tzinfo=UTC)
FORGED_AT = dt.datetime(2026, 6, 1, tzinfo=UTC)


def build_cert(
    subject: x509.Name, issuer: x509.Name, public: Any, signing_key: Any, *, ca: bool, exts: dict[str, bytes] | None = None
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(1)
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
    )
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    for oid, value in (exts or {}).items():
        b = b.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(AMD_OID + oid), value), critical=False)
    return b.sign(signing_key, hashes.SHA384(), rsa_padding=PSS)


@dataclasses.dataclass(frozen=True)
class FakeAmd:
    """An RSA-PSS ARK/ASK (or ASVK) pair with AMD's exact names but our own keys."""

    ark: x509.Certificate
    inter: x509.Certificate
    inter_key: rsa.RSAPrivateKey

    @property
    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.inter, self.ark))

    @property
    def roots(self) -> dict[bytes, str]:
        cn = self.ark.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        return {spki_sha256(self.ark): str(cn)}


@functools.cache
def fake_amd(product: str, inter_cn: str) -> FakeAmd:
    ark_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    inter_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ark_name = amd_name(f"ARK-{product}")
    ark = build_cert(ark_name, ark_name, ark_key.public_key(), ark_key, ca=True)
    inter = build_cert(amd_name(inter_cn), ark_name, inter_key.public_key(), ark_key, ca=True)
    return FakeAmd(ark, inter, inter_key)


@functools.cache
def signer_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def fake_signer(pki: FakeAmd, kind: str, spl: dict[str, int], *, hwid: bytes | None = None, product: str = "Milan") -> bytes:
    exts = {"1": der_int(0), "2": der_ia5(product)}
    names = {"blSPL": "3.1", "teeSPL": "3.2", "snpSPL": "3.3", "ucodeSPL": "3.8", "fmcSPL": "3.9"}
    exts.update({names[k]: der_int(v) for k, v in spl.items()})
    if hwid is not None:
        exts["4"] = hwid
    if kind == "VLEK":
        exts["5"] = der_ia5("CN=forged.example")
    cert = build_cert(amd_name(f"SEV-{kind}"), pki.inter.subject, signer_key().public_key(), pki.inter_key, ca=False, exts=exts)
    return cert.public_bytes(serialization.Encoding.DER)


def sign(rep: bytearray | bytes, key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    b = bytearray(rep)
    r, s = decode_dss_signature((key or signer_key()).sign(bytes(b[:SIGNED_SIZE]), ec.ECDSA(hashes.SHA384())))
    b[0x2A0:0x2E8] = r.to_bytes(72, "little")
    b[0x2E8:0x330] = s.to_bytes(72, "little")
    return bytes(b)


def milan_forgery(**kw: Any) -> tuple[bytes, bytes, FakeAmd]:
    """The genuine trustee report re-signed by our key, with a matching forged VCEK."""
    pki = fake_amd("Milan", "SEV-Milan")
    p = parse_report(report(TRUSTEE))
    t = decode_tcb(p.reported_tcb, "Milan")
    spl = {"blSPL": t.bootloader, "teeSPL": t.tee, "snpSPL": t.snp, "ucodeSPL": t.microcode} | kw.pop("spl", {})
    vcek = fake_signer(pki, "VCEK", spl, hwid=kw.pop("hwid", p.chip_id))
    rep = bytearray(report(TRUSTEE))
    for off, value in kw.pop("patch", {}).items():
        rep[off : off + len(value)] = value
    return sign(rep), vcek, pki


def test_forged_amd_chain_is_an_untrusted_root() -> None:
    rep, vcek, pki = milan_forgery()
    # Control: the forgery is well-formed — it verifies once its own root is pinned.
    assert verify_sev_snp(rep, signer_cert=vcek, chain=pki.chain_pem, at=FORGED_AT, roots=pki.roots).fields["root"] == "ARK-Milan"
    e = refused(R.UNTRUSTED_ROOT, verify_sev_snp, rep, signer_cert=vcek, chain=pki.chain_pem, at=FORGED_AT)
    assert e.field == "ARK"
    # Without a chain the bundled SEV-Milan ASK is picked by name, and its signature check fails.
    e = refused(R.BAD_SIGNATURE, verify_sev_snp, rep, signer_cert=vcek, at=FORGED_AT)
    assert e.field == "VCEK"
    # The genuine VCEK under the forged chain: the report signature holds, the root does not.
    refused(R.UNTRUSTED_ROOT, verify, TRUSTEE, chain=pki.chain_pem)
    # A pinned root whose name is no known product cannot pick a TCB layout.
    venice = {k: "ARK-Venice" for k in pki.roots}
    refused(R.UNSUPPORTED, verify_sev_snp, rep, signer_cert=vcek, chain=pki.chain_pem, at=FORGED_AT, roots=venice)


def test_unknown_issuer_without_chain() -> None:
    pki = fake_amd("Milan", "SEV-Bogus")
    p = parse_report(report(TRUSTEE))
    t = decode_tcb(p.reported_tcb, "Milan")
    vcek = fake_signer(
        pki, "VCEK", {"blSPL": t.bootloader, "teeSPL": t.tee, "snpSPL": t.snp, "ucodeSPL": t.microcode}, hwid=p.chip_id
    )
    e = refused(R.CHAIN_INVALID, verify_sev_snp, sign(report(TRUSTEE)), signer_cert=vcek, at=FORGED_AT)
    assert e.field == "chain"


@pytest.mark.parametrize("spl", [{"blSPL": 4}, {"teeSPL": 1}, {"snpSPL": 9}, {"ucodeSPL": 0x72}])
def test_tcb_mismatch(spl: dict[str, int]) -> None:
    rep, vcek, pki = milan_forgery(spl=spl)
    e = refused(R.TCB_MISMATCH, verify_sev_snp, rep, signer_cert=vcek, chain=pki.chain_pem, at=FORGED_AT, roots=pki.roots)
    assert e.field == "reported_tcb" and next(iter(spl)) in e.detail


def test_hwid_mismatch_and_masked_chip_id_with_a_vcek() -> None:
    rep, vcek, pki = milan_forgery(hwid=bytes(range(64)))
    e = refused(R.TCB_MISMATCH, verify_sev_snp, rep, signer_cert=vcek, chain=pki.chain_pem, at=FORGED_AT, roots=pki.roots)
    assert e.field == "chip_id"
    # chip_id masked to zero is only skipped for VLEKs: a VCEK-signed report must name its chip.
    rep, vcek, pki = milan_forgery(patch={0x1A0: bytes(64)})
    e = refused(R.TCB_MISMATCH, verify_sev_snp, rep, signer_cert=vcek, chain=pki.chain_pem, at=FORGED_AT, roots=pki.roots)
    assert "masked" in e.detail
    # A VCEK without hwID at all.
    rep, vcek, pki = milan_forgery(hwid=None)
    refused(R.TCB_MISMATCH, verify_sev_snp, rep, signer_cert=vcek, chain=pki.chain_pem, at=FORGED_AT, roots=pki.roots)


def test_cpuid_must_name_the_roots_product() -> None:
    # The v3 Genoa report's CPUID (19h/11h) under a Milan root.
    pki = fake_amd("Milan", "SEV-Milan")
    p = parse_report(report(GENOA))
    t = decode_tcb(p.reported_tcb, "Genoa")
    vcek = fake_signer(
        pki, "VCEK", {"blSPL": t.bootloader, "teeSPL": t.tee, "snpSPL": t.snp, "ucodeSPL": t.microcode}, hwid=p.chip_id
    )
    rep = sign(report(GENOA))
    e = refused(R.CHAIN_INVALID, verify_sev_snp, rep, signer_cert=vcek, chain=pki.chain_pem, at=FORGED_AT, roots=pki.roots)
    assert e.field == "cpuid"
    # An unknown CPU (family 1Bh) is refused too, whatever the root.
    b = bytearray(report(GENOA))
    b[0x188] = 0x1B
    refused(R.CHAIN_INVALID, verify_sev_snp, sign(b), signer_cert=vcek, chain=pki.chain_pem, at=FORGED_AT, roots=pki.roots)


def test_vlek_needs_an_asvk() -> None:
    p = parse_report(report(VLEK))
    t = decode_tcb(p.reported_tcb, "Milan")
    spl = {"blSPL": t.bootloader, "teeSPL": t.tee, "snpSPL": t.snp, "ucodeSPL": t.microcode}
    rep = sign(report(VLEK))
    good = fake_amd("Milan", "SEV-VLEK-Milan")
    v = verify_sev_snp(rep, signer_cert=fake_signer(good, "VLEK", spl), chain=good.chain_pem, at=FORGED_AT, roots=good.roots)
    assert v.fields["signing_key"] == "VLEK" and v.fields["signer_cert_extensions"]["csp_id"] == "CN=forged.example"
    wrong = fake_amd("Milan", "SEV-Milan")  # an ASK issuing a VLEK
    e = refused(
        R.CHAIN_INVALID,
        verify_sev_snp,
        rep,
        signer_cert=fake_signer(wrong, "VLEK", spl),
        chain=wrong.chain_pem,
        at=FORGED_AT,
        roots=wrong.roots,
    )
    assert e.field == "chain"


def turin_forgery(*, fmc_cert: int | None = 3, hwid_len: int = 8) -> tuple[bytes, bytes, FakeAmd, bytes]:
    pki = fake_amd("Turin", "SEV-Turin")
    chip = hashlib.sha512(b"turin chip").digest()
    b = bytearray(report(GENOA))  # v3 layout; make it a Turin (family 1Ah model 02h) report
    b[0x188:0x18B] = bytes([0x1A, 0x02, 0x00])
    tcb = bytes([3, 9, 2, 11, 0, 0, 0, 72])  # FMC 3, BL 9, TEE 2, SNP 11, ucode 72
    for off in (0x38, 0x180, 0x1E0, 0x1F0):
        b[off : off + 8] = tcb
    b[0x1A0:0x1E0] = chip
    spl = {"blSPL": 9, "teeSPL": 2, "snpSPL": 11, "ucodeSPL": 72}
    if fmc_cert is not None:
        spl["fmcSPL"] = fmc_cert
    vcek = fake_signer(pki, "VCEK", spl, hwid=chip[:hwid_len], product="Turin")
    return sign(b), vcek, pki, chip


def test_turin_report_uses_the_turin_layout_fmc_and_8_byte_hwid() -> None:
    rep, vcek, pki, chip = turin_forgery()
    v = verify_sev_snp(rep, signer_cert=vcek, chain=pki.chain_pem, at=FORGED_AT, roots=pki.roots)
    assert v.fields["product"] == "Turin"
    assert v.fields["tcb"]["reported"] == {
        "raw": "0309020b00000048",
        "fmc": 3,
        "bootloader": 9,
        "tee": 2,
        "snp": 11,
        "microcode": 72,
    }
    assert v.fields["signer_cert_extensions"]["hwID"] == chip[:8].hex()
    # fmcSPL is checked on Turin: a different or missing value is a mismatch.
    for fmc in (4, None):
        rep, vcek, pki, _ = turin_forgery(fmc_cert=fmc)
        e = refused(R.TCB_MISMATCH, verify_sev_snp, rep, signer_cert=vcek, chain=pki.chain_pem, at=FORGED_AT, roots=pki.roots)
        assert "fmcSPL" in e.detail
    # A full 64-byte hwID also matches; a 16-byte one is not an AMD hwID.
    rep, vcek, pki, _ = turin_forgery(hwid_len=64)
    verify_sev_snp(rep, signer_cert=vcek, chain=pki.chain_pem, at=FORGED_AT, roots=pki.roots)
    rep, vcek, pki, _ = turin_forgery(hwid_len=16)
    refused(R.TCB_MISMATCH, verify_sev_snp, rep, signer_cert=vcek, chain=pki.chain_pem, at=FORGED_AT, roots=pki.roots)


# -- property tests --------------------------------------------------------------------------------

FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
GENUINE = {name: (report(name), signer(name)) for name in SAMPLES}


def plausible_reports() -> st.SearchStrategy[bytes]:
    """Random 1184-byte blobs, half with a valid version/algorithm/key header so they reach the
    reserved-byte and signature checks."""

    def patch(blob: bytes, version: int, key: int, clean: bool) -> bytes:
        b = bytearray(blob)
        b[0:4] = version.to_bytes(4, "little")
        b[0x34:0x38] = (1).to_bytes(4, "little")
        b[0x48:0x4C] = (key << 2).to_bytes(4, "little")
        if clean:
            for a, e in mbz_ranges(version):
                b[a:e] = bytes(e - a)
        return bytes(b)

    blobs = st.binary(min_size=REPORT_SIZE, max_size=REPORT_SIZE)
    return st.one_of(
        blobs,
        st.builds(patch, blobs, st.sampled_from([2, 3, 5]), st.sampled_from([0, 1]), st.booleans()),
        st.binary(max_size=REPORT_SIZE + 64),
    )


@FUZZ
@given(blob=plausible_reports(), name=st.sampled_from(SAMPLES))
def test_random_blobs_raise_only_attestation_error(blob: bytes, name: str) -> None:
    with pytest.raises(AttestationError):
        verify_sev_snp(blob, signer_cert=GENUINE[name][1], at=AT[name])


@FUZZ
@given(
    name=st.sampled_from(SAMPLES),
    edits=st.lists(
        st.tuples(st.integers(0, REPORT_SIZE - 1), st.integers(1, 255)), min_size=1, max_size=4, unique_by=lambda e: e[0]
    ),
)
def test_random_mutations_are_refused(name: str, edits: list[tuple[int, int]]) -> None:
    b = bytearray(GENUINE[name][0])
    for off, xor in edits:
        b[off] ^= xor
    with pytest.raises(AttestationError):
        verify_sev_snp(bytes(b), signer_cert=GENUINE[name][1], at=AT[name])


@FUZZ
@given(cert=st.one_of(st.binary(max_size=2000), st.binary(max_size=1500).map(lambda b: GENUINE[TEEKIT][1][:200] + b)))
def test_random_signer_certificates_raise_only_attestation_error(cert: bytes) -> None:
    with pytest.raises(AttestationError):
        verify_sev_snp(GENUINE[TEEKIT][0], signer_cert=cert, at=AT[TEEKIT])


@FUZZ
@given(off=st.integers(0, 1359), xor=st.integers(1, 255))
def test_mutated_der_signer_certificates_are_refused_unless_only_unsigned_encoding_changed(off: int, xor: int) -> None:
    der = bytearray(GENUINE[GOSEV][1])
    der[off] ^= xor
    try:
        verify_sev_snp(GENUINE[GOSEV][0], signer_cert=bytes(der), at=AT[GOSEV])
    except AttestationError:
        return
    # pyca/cryptography ignores the outer signatureAlgorithm's trailerField (byte 842 here),
    # which no signature covers. Accepted only if what is signed, and the signature, are intact.
    genuine = x509.load_der_x509_certificate(GENUINE[GOSEV][1])
    mutated = x509.load_der_x509_certificate(bytes(der))
    assert (mutated.tbs_certificate_bytes, mutated.signature) == (genuine.tbs_certificate_bytes, genuine.signature)
    assert off == 842


def test_trailer_field_leniency_is_known() -> None:
    der = bytearray(GENUINE[GOSEV][1])
    der[842] ^= 0x02  # outer AlgorithmIdentifier trailerField 1 -> 3: unsigned, ignored by cryptography
    assert verify_sev_snp(GENUINE[GOSEV][0], signer_cert=bytes(der), at=AT[GOSEV]) == verify(GOSEV)


def test_a_memoised_chain_is_still_checked_for_validity() -> None:
    """Signatures are memoised by exact bytes (memo.py); validity windows are checked every time."""
    verify(GOSEV)
    verify(GOSEV)
    refused(R.CERT_EXPIRED, verify, GOSEV, at=dt.datetime(2029, 9, 25, tzinfo=UTC))
    refused(R.CERT_NOT_YET_VALID, verify, GOSEV, at=dt.datetime(2022, 9, 23, tzinfo=UTC))
