"""Intel SGX ECDSA quotes (v3, as Gramine's ``/dev/attestation/quote`` returns them), verified
offline (ARCHITECTURE §5; specs/enclave-backends.md §5).

The quote, its PCK chain and the collateral are proven by :func:`.dcap.verify_quote` ([QVL]
4.1.2.4, see :mod:`.dcap` for the sources); this module only says what an enclave report means
([QL-SGX] "ISV Enclave Report Body"; offsets in specs §5.3):

* measurements: ``mrenclave`` (the enclave's code and initial data), ``mrsigner`` (the hash of
  the key that signed its SIGSTRUCT), ``isv_prod_id`` and ``isv_svn`` (product and security
  version the signer assigned). The two numbers are hex of the 16-bit value, big-endian
  (``isv_prod_id`` 7 → ``"0007"``), so a policy can list them like any other measurement;
* also pinnable: ``attributes`` (ATTRIBUTES.FLAGS), ``xfrm``, ``misc_select``, ``config_id`` and
  ``config_svn`` (fixed-width hex). MRENCLAVE covers none of them: whoever signs a SIGSTRUCT
  for the same code chooses them (review finding);
* refused whatever the policy: ATTRIBUTES.FLAGS bits the SDM reserves, a 32-bit enclave
  (MODE64BIT clear), and PROVISIONKEY or EINITTOKEN_KEY (Intel's provisioning and launch
  enclaves' keys: no signer enclave has a use for them);
* ``debug`` is ATTRIBUTES.FLAGS bit 1 (DEBUG): a debug enclave's memory is readable by its host;
* ``report_data`` is the 64 bytes the enclave bound into its report (Gramine's
  ``user_report_data``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Final

from shardguard.attestation.dcap import INTEL_ROOTS, Collateral, EnclaveReport, verify_quote
from shardguard.attestation.errors import AttestationError, AttestationReason
from shardguard.attestation.result import Verified

__all__ = ["verify_sgx"]

PLATFORM: Final = "sgx"
#: ATTRIBUTES.FLAGS ([SDM] vol. 3D §38.7.1): INIT 0, DEBUG 1, MODE64BIT 2, PROVISIONKEY 4,
#: EINITTOKEN_KEY 5, CET 6, KSS 7, AEXNOTIFY 10; the rest is reserved.
_MODE64BIT: Final = 1 << 2
_KEYS_REFUSED: Final = {4: "PROVISIONKEY", 5: "EINITTOKEN_KEY"}
_FLAGS_KNOWN: Final = sum(1 << b for b in (0, 1, 2, 4, 5, 6, 7, 10))


def verify_sgx(
    quote: bytes,
    *,
    collateral: Collateral | None = None,
    at: dt.datetime | None = None,
    roots: Mapping[bytes, str] = INTEL_ROOTS,
) -> Verified:
    """Verify an SGX quote (v3) and report what it proves.

    Args:
        quote: the raw quote. Zero padding after it is allowed.
        collateral: TCB info, QE identity and CRLs (:func:`.dcap.load_collateral`,
            :func:`.dcap.load_pcs_collateral`). Without it the TCB status is "Unknown".
        at: when certificates and collateral must be valid (default: now).
        roots: pinned root keys (SHA-256 of the SPKI → name); Intel's production root by default.

    Returns:
        A :class:`Verified` with platform "sgx"; ``fields`` holds every parsed field.

    Raises:
        AttestationError: the first reason the quote is refused.
    """
    verdict = verify_quote(quote, platform=PLATFORM, collateral=collateral, at=at, roots=roots)
    body = verdict.quote.body
    if not isinstance(body, EnclaveReport):  # cannot happen: verify_quote refuses a TDX quote for "sgx"
        raise AttestationError(
            AttestationReason.MALFORMED, "the quote body is not an enclave report", platform=PLATFORM, field="body"
        )
    fields = verdict.to_fields()
    h = fields["body"]  # the body's fields, already in hex: not rendered twice
    flags = int.from_bytes(body.attributes[:8], "little")
    if flags & ~_FLAGS_KNOWN:
        raise AttestationError(
            AttestationReason.UNSUPPORTED, f"ATTRIBUTES.FLAGS sets reserved bits {flags & ~_FLAGS_KNOWN:#x}",
            platform=PLATFORM, field="attributes",
        )  # fmt: skip
    if not flags & _MODE64BIT:
        raise AttestationError(
            AttestationReason.UNSUPPORTED, "a 32-bit enclave (MODE64BIT clear)", platform=PLATFORM, field="attributes"
        )
    for bit, name in _KEYS_REFUSED.items():
        if flags >> bit & 1:
            raise AttestationError(
                AttestationReason.UNSUPPORTED, f"ATTRIBUTES.{name} is set: a key only Intel's own enclaves may use",
                platform=PLATFORM, field="attributes",
            )  # fmt: skip
    measurements = {
        "mrenclave": h["mr_enclave"],
        "mrsigner": h["mr_signer"],
        "isv_prod_id": body.isv_prod_id.to_bytes(2, "big").hex(),
        "isv_svn": body.isv_svn.to_bytes(2, "big").hex(),
        "attributes": body.attributes[:8].hex(),
        "xfrm": body.attributes[8:16].hex(),
        "misc_select": body.misc_select.to_bytes(4, "big").hex(),
        "config_id": body.config_id.hex(),
        "config_svn": body.config_svn.to_bytes(2, "big").hex(),
    }
    fields["enclave_debug"] = body.debug
    return Verified(
        platform=PLATFORM,
        measurements=measurements,
        tcb_status=verdict.tcb_status,
        advisory_ids=verdict.advisory_ids,
        debug=body.debug,
        report_data=body.report_data,
        fields=fields,
    )
