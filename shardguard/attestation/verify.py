"""One entry point for every platform: verify evidence, then apply a policy.

``verify_evidence`` proves the evidence (signatures, chains to pinned roots, collateral) with
the platform's verifier and then applies :class:`VerificationPolicy`. Evidence under the
development root of the simulated platform is marked ``simulated`` and refused by the policy
unless it says ``allow_simulated``.
"""

from __future__ import annotations

import datetime as dt

from shardguard.attestation.errors import AttestationError, AttestationReason
from shardguard.attestation.policy import PLATFORMS, VerificationPolicy
from shardguard.attestation.result import Verified

__all__ = ["verify_evidence"]


def verify_evidence(
    platform: str,
    evidence: bytes,
    *,
    policy: VerificationPolicy,
    collateral: bytes | None = None,
    at: dt.datetime | None = None,
    expected_report_data: bytes | None = None,
) -> Verified:
    """Verify ``evidence`` from ``platform`` and apply ``policy``.

    ``collateral``: SEV-SNP — the VCEK/VLEK certificate (DER or PEM, required); TDX/SGX — the
    collateral JSON (TCB info, QE identity, CRLs; optional: without it the TCB status is
    "Unknown"); Nitro — unused. ``at``: the verification time (default now): certificate and
    collateral validity for SEV-SNP/TDX/SGX, freshness for Nitro (whose chain is checked at the
    document's own timestamp). ``expected_report_data``: the 64 bytes the caller bound
    (nonce/keys); a mismatch is refused with NONCE.
    """
    now = at or dt.datetime.now(dt.UTC)
    if platform not in PLATFORMS:
        raise AttestationError(AttestationReason.PLATFORM, f"unknown platform {platform!r}")
    if platform == "nitro":
        from shardguard.attestation.dev_root import DEV_ROOTS
        from shardguard.attestation.nitro import verify_nitro

        # The development root is recognised (so the refusal says SIMULATED, not "unknown
        # root") but never trusted: the policy check below refuses simulated evidence unless
        # allow_simulated is set.
        verified = verify_nitro(evidence, simulated_roots=DEV_ROOTS)
    elif platform == "sev-snp":
        from shardguard.attestation.sev_snp import verify_sev_snp

        if collateral is None:
            raise AttestationError(
                AttestationReason.COLLATERAL_INVALID, "SEV-SNP needs the VCEK/VLEK certificate", platform=platform
            )
        verified = verify_sev_snp(evidence, signer_cert=collateral, at=now)
    else:
        from shardguard.attestation.dcap import load_collateral
        from shardguard.attestation.sgx import verify_sgx
        from shardguard.attestation.tdx import verify_tdx

        coll = load_collateral(collateral) if collateral is not None else None
        verify = verify_tdx if platform == "tdx" else verify_sgx
        verified = verify(evidence, collateral=coll, at=now)
    policy.check(verified, now=now)
    if expected_report_data is not None and verified.report_data != expected_report_data:
        raise AttestationError(AttestationReason.NONCE, "report data does not match the expected binding", platform=platform)
    return verified
