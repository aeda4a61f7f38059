"""The coordinator's look at a node's evidence: INFORMATIONAL ONLY.

The coordinator is untrusted, so its verdict protects nothing: every node verifies its peers'
evidence itself against its own policy before it sends them anything (ARCHITECTURE §6). The
summary only tells operators what a node presented. It proves the evidence with the platform's
verifier under a permissive inspection policy that also lets simulated evidence through (and
says so), and reports whether the report data is ``binding(card, evidence_nonce)``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import logging
from typing import Any

from shardguard.attestation.errors import AttestationError
from shardguard.attestation.policy import VerificationPolicy
from shardguard.attestation.verify import verify_evidence
from shardguard.channel.identity import MAX_NONCE_LEN, MIN_NONCE_LEN, PeerCard, binding

__all__ = ["INSPECTION_POLICY", "summarize"]

_log = logging.getLogger(__name__)

#: Proves signatures, chains and collateral; accepts any measurement, TCB status, debug flag,
#: age, TD SEPT_VE_DISABLE setting and bound service TD, and (unlike
#: ``permissive_for_inspection``) simulated evidence, flagged as such.
INSPECTION_POLICY = dataclasses.replace(VerificationPolicy.permissive_for_inspection(), allow_simulated=True)


def summarize(
    card: PeerCard,
    platform: str,
    evidence: bytes,
    *,
    collateral: bytes | None,
    evidence_nonce: bytes | None,
    now: dt.datetime,
) -> dict[str, Any]:
    """A JSON-safe summary: ``verdict`` is ``verified`` (the evidence is genuine for its
    platform, or signed by the development root when ``simulated``) or ``refused`` (with the
    attestation ``reason`` and ``detail``)."""
    base: dict[str, Any] = {"informational": True, "platform": platform, "checked_at": now.isoformat()}
    try:
        v = verify_evidence(platform, evidence, policy=INSPECTION_POLICY, collateral=collateral, at=now)
    except AttestationError as e:
        return {**base, "verdict": "refused", "reason": e.reason.name, "detail": e.detail or e.reason.value}
    except Exception as e:  # a verifier bug must not take registration down; report it
        _log.warning("evidence inspection failed unexpectedly: %r", e)
        return {**base, "verdict": "refused", "reason": "ERROR", "detail": type(e).__name__}
    bound: bool | None = None
    if evidence_nonce is not None and MIN_NONCE_LEN <= len(evidence_nonce) <= MAX_NONCE_LEN:
        bound = hmac.compare_digest(v.report_data, binding(card, evidence_nonce))
    return {
        **base,
        "verdict": "verified",
        "simulated": v.simulated,
        "debug": v.debug,
        "tcb_status": v.tcb_status,
        "measurements": v.measurements,
        "advisory_ids": list(v.advisory_ids),
        "signing_time": v.signing_time.isoformat() if v.signing_time else None,
        "bound_to_card": bound,
    }
