"""verify_evidence: platform dispatch, the simulated root, the policy and the report-data binding."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from shardguard.attestation import AttestationError, AttestationReason
from shardguard.attestation.policy import VerificationPolicy
from shardguard.attestation.verify import verify_evidence
from shardguard.enclave.simulated import SimulatedPlatform
from tests.attestation.conftest import fixture_bytes

INSPECT = VerificationPolicy.permissive_for_inspection()


def _reason(**kw: object) -> AttestationReason:
    with pytest.raises(AttestationError) as e:
        verify_evidence(**kw)  # type: ignore[arg-type]
    return e.value.reason


def test_simulated_evidence_needs_allow_simulated(tmp_path: Path) -> None:
    doc = SimulatedPlatform(state_dir=tmp_path).attest(b"\x07" * 64).blob
    assert _reason(platform="nitro", evidence=doc, policy=INSPECT) is AttestationReason.SIMULATED
    dev = VerificationPolicy(allow_simulated=True, require_measurements=False)
    v = verify_evidence("nitro", doc, policy=dev, expected_report_data=b"\x07" * 64)
    assert v.simulated and v.report_data == b"\x07" * 64
    assert _reason(platform="nitro", evidence=doc, policy=dev, expected_report_data=b"\x08" * 64) is AttestationReason.NONCE


def test_dispatch_and_required_collateral() -> None:
    report = fixture_bytes("sev-snp/gosevguest_milan_v2_report.bin")
    assert _reason(platform="sev-snp", evidence=report, policy=INSPECT) is AttestationReason.COLLATERAL_INVALID
    v = verify_evidence("sev-snp", report, policy=INSPECT, collateral=fixture_bytes("sev-snp/gosevguest_milan_v2_vcek.der"))
    assert v.platform == "sev-snp" and v.debug
    assert _reason(platform="arm-cca", evidence=report, policy=INSPECT) is AttestationReason.PLATFORM
    quote = fixture_bytes("tdx/dcapqvl_tdx10_v4_quote.bin")
    v = verify_evidence(
        "tdx",
        quote,
        policy=VerificationPolicy(require_measurements=False),
        collateral=fixture_bytes("tdx/dcapqvl_tdx10_v4_collateral.json"),
        at=dt.datetime(2025, 7, 1, tzinfo=dt.UTC),
    )
    assert v.tcb_status == "UpToDate"
    # Without collateral the status is Unknown, which a default policy refuses.
    assert (
        _reason(platform="tdx", evidence=quote, policy=VerificationPolicy(require_measurements=False))
        is AttestationReason.TCB_STATUS
    )
    # A platform outside the allow-list is refused even with valid evidence.
    only_nitro = VerificationPolicy(allowed_platforms=("nitro",), require_measurements=False, min_tcb_status="Unknown")
    assert _reason(platform="tdx", evidence=quote, policy=only_nitro) is AttestationReason.PLATFORM


def test_policy_file_validation(tmp_path: Path) -> None:
    for text, field in (
        ('allowed_platforms = ["nitro", "x"]', "allowed_platforms"),
        ('min_tcb_status = "Great"', "min_tcb_status"),
        ("max_age_seconds = -1", "max_age_seconds"),
        ("allow_debug = 1", "allow_debug"),
        ('[measurements.nitro]\npcr0 = ["zz"]', "measurements.nitro.pcr0"),
    ):
        with pytest.raises(AttestationError) as e:
            VerificationPolicy.from_toml(text)
        assert e.value.reason is AttestationReason.POLICY and e.value.field == field
    with pytest.raises(AttestationError):
        VerificationPolicy.from_toml("surprise = true")
    with pytest.raises(AttestationError):
        VerificationPolicy.from_toml("not = [toml")
    p = VerificationPolicy.from_toml('[measurements.sgx]\nmrenclave = ["AB" ]')
    assert p.measurements["sgx"]["mrenclave"] == ("ab",)


@pytest.mark.parametrize(
    ("table", "field", "empty"),
    [
        ("[measurements.tdx]\nmrtd = ['aa']", "measurements.tdx", False),  # the TD firmware only: any kernel
        ("[measurements.tdx]\nmrtd = ['aa']\nrtmr1 = ['bb']", "measurements.tdx", False),
        ("require_snp_tcb = false\n[measurements.sev-snp]\nhost_data = ['aa']", "measurements.sev-snp", False),  # host's
        ("require_snp_tcb = false\n[measurements.sev-snp]\nid_key_digest = ['aa']", "measurements.sev-snp", False),
        ("require_snp_tcb = false\n[measurements.sev-snp]\nmeasurement = ['00']", "measurements.sev-snp.measurement", True),
        ("require_snp_tcb = false\n[measurements.sev-snp]\nid_key_digest = ['000000']\nimage_id = ['aa']",
         "measurements.sev-snp.id_key_digest", True),  # no ID block: any code (review finding)
        ("[measurements.sev-snp]\nmeasurement = ['aa']", "min_snp_tcb", True),  # would refuse every SNP peer
        ("[measurements.nitro]\npcr3 = ['aa']", "measurements.nitro", False),  # the parent's IAM role
        ("[measurements.sgx]\nmrsigner = ['aa']", "measurements.sgx", False),  # any enclave of that signer
        ("[measurements.sgx]\nisv_svn = ['0001']", "measurements.sgx", False),
        ("require_snp_tcb = false\n[measurements.sev-snp]\n", "measurements.sev-snp", True),  # pins nothing at all
        ("[measurements.tdx]\nmrtd = []\nrtmr1 = ['bb']\nrtmr2 = ['cc']", "measurements.tdx", True),
    ],
)
def test_a_measurement_table_must_pin_the_code(table: str, field: str, empty: bool) -> None:
    """Review finding: every listed name is checked, so a table pinning only what does not
    identify the code (or nothing) accepted any code on that platform."""
    with pytest.raises(AttestationError) as e:
        VerificationPolicy.from_toml(table)
    assert e.value.reason is AttestationReason.POLICY and e.value.field == field, e.value
    lax = "require_code_identity = false\n" + table  # the operator's explicit choice ...
    if empty:  # (or refused whatever: empty, all-zero, no SNP floor)
        with pytest.raises(AttestationError):  # ... but an empty allow-list is refused regardless
            VerificationPolicy.from_toml(lax)
    else:
        VerificationPolicy.from_toml(lax)


@pytest.mark.parametrize(
    "table",
    [
        "[measurements.tdx]\nmrtd = ['aa']\nrtmr1 = ['bb']\nrtmr2 = ['cc']\nrtmr3 = ['dd']",
        "[min_snp_tcb.Milan]\nsnp = 1\n[measurements.sev-snp]\nmeasurement = ['aa']\nhost_data = ['bb']",
        "require_snp_tcb = false\n[measurements.sev-snp]\nid_key_digest = ['aa']\nimage_id = ['bb']",
        "[min_snp_tcb.Turin]\nfmc = 1\n[measurements.sev-snp]\nmeasurement = ['aa']",
        "[measurements.nitro]\npcr0 = ['aa']\npcr8 = ['bb']",
        "[measurements.sgx]\nmrsigner = ['aa']\nisv_prod_id = ['0001']",
        "[measurements.sgx]\nmrenclave = ['aa']",
        "[measurements.simulated]\npcr0 = ['aa']",
    ],
)
def test_tables_that_pin_the_code_are_taken(table: str) -> None:
    VerificationPolicy.from_toml(table)


def test_fmc_is_a_turin_component_only() -> None:
    """Review finding: a Milan floor naming fmc loaded, then refused every Milan report."""
    with pytest.raises(AttestationError) as e:
        VerificationPolicy.from_toml("[min_snp_tcb.Milan]\nfmc = 0\n")
    assert e.value.field == "min_snp_tcb.Milan.fmc"
