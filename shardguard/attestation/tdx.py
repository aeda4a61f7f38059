"""Intel TDX quotes (v4, and v5 with TDX 1.0 or 1.5 bodies), verified offline (ARCHITECTURE §5).

The quote, its PCK chain and the collateral are proven by :func:`.dcap.verify_quote` ([QVL]
4.1.2.4, see :mod:`.dcap` for the sources); this module only says what a TD quote means:

* measurements ([QL-TDX] "TD Quote Body"; offsets in specs/enclave-backends.md §4.2): ``mrtd``
  (the initial TD image), ``rtmr0``..``rtmr3`` (runtime-extended registers: firmware, OS loader,
  kernel/initrd, application), ``mrconfigid``/``mrowner``/``mrownerconfig`` (set by the host at
  launch), ``mrseam``/``mrsignerseam`` (the TDX module and its signer, zero for Intel's);
* ``debug`` is TD_ATTRIBUTES bit 0 (TUD.DEBUG): a debug TD's memory and registers are readable
  by the host. The other TUD bits, and every other reserved TD_ATTRIBUTES bit, are refused by
  :func:`.dcap.verify_quote` (TD_ATTRIBUTES) whatever the policy;
* ``fields["sept_ve_disable"]`` is TD_ATTRIBUTES bit 28 and ``fields["service_td"]`` says that
  MRSERVICETD (TDX 1.5 bodies only) is not zero: the policy judges both
  (``require_sept_ve_disable``, ``allow_service_td``), as it judges ``debug``;
* ``report_data`` is the 64 bytes the TD bound into the TDREPORT (nonce, keys).

The policy (:class:`~.policy.VerificationPolicy`) decides what is acceptable; this module only
proves and reports.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Final

from shardguard.attestation.dcap import INTEL_ROOTS, Collateral, TdReport, verify_quote
from shardguard.attestation.errors import AttestationError, AttestationReason
from shardguard.attestation.result import Verified

__all__ = ["verify_tdx"]

PLATFORM: Final = "tdx"


def verify_tdx(
    quote: bytes,
    *,
    collateral: Collateral | None = None,
    at: dt.datetime | None = None,
    roots: Mapping[bytes, str] = INTEL_ROOTS,
) -> Verified:
    """Verify a TDX quote and report what it proves.

    Args:
        quote: the raw quote (v4, or v5 with body type 2 or 3). Zero padding after it is allowed.
        collateral: TCB info, QE identity and CRLs (:func:`.dcap.load_collateral`,
            :func:`.dcap.load_pcs_collateral`). Without it the TCB status is "Unknown".
        at: when certificates and collateral must be valid (default: now). Quotes carry no time
            of their own.
        roots: pinned root keys (SHA-256 of the SPKI → name); Intel's production root by default.

    Returns:
        A :class:`Verified` with platform "tdx"; ``fields`` holds every parsed field.

    Raises:
        AttestationError: the first reason the quote is refused.
    """
    verdict = verify_quote(quote, platform=PLATFORM, collateral=collateral, at=at, roots=roots)
    body = verdict.quote.body
    if not isinstance(body, TdReport):  # cannot happen: verify_quote refuses an SGX quote for "tdx"
        raise AttestationError(AttestationReason.MALFORMED, "the quote body is not a TD report", platform=PLATFORM, field="body")
    fields = verdict.to_fields()
    h = fields["body"]  # the body's fields, already in hex: not rendered twice
    measurements = {
        "mrtd": h["mr_td"],
        "rtmr0": h["rtmr0"],
        "rtmr1": h["rtmr1"],
        "rtmr2": h["rtmr2"],
        "rtmr3": h["rtmr3"],
        "mrconfigid": h["mr_config_id"],
        "mrowner": h["mr_owner"],
        "mrownerconfig": h["mr_owner_config"],
        "mrseam": h["mr_seam"],
        "mrsignerseam": h["mr_signer_seam"],
        # Pinnable (review finding): the TD attributes the verifier accepts (TPA, PERFMON, …)
        # and the extended features, as in the report (little-endian).
        "td_attributes": h["td_attributes"],
        "xfam": h["xfam"],
    }
    fields["td_debug"] = body.debug
    fields["sept_ve_disable"] = body.sept_ve_disable
    fields["service_td"] = body.service_td
    fields["tee_tcb_svn"] = h["tee_tcb_svn"]
    return Verified(
        platform=PLATFORM,
        measurements=measurements,
        tcb_status=verdict.tcb_status,
        advisory_ids=verdict.advisory_ids,
        debug=body.debug,
        report_data=body.report_data,
        fields=fields,
    )
