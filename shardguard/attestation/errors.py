"""Typed attestation failures: every rejection says exactly why, never just "invalid"."""

from __future__ import annotations

import enum

__all__ = ["AttestationError", "AttestationReason"]


class AttestationReason(enum.Enum):
    MALFORMED = "evidence does not parse"
    TRUNCATED = "evidence is truncated"
    TRAILING_DATA = "unexpected bytes after the evidence"
    UNSUPPORTED = "unsupported format, version or algorithm"
    BAD_SIGNATURE = "signature does not verify"
    CHAIN_INVALID = "certificate chain is broken"
    UNTRUSTED_ROOT = "chain does not end in a pinned root key"
    CERT_NOT_YET_VALID = "a certificate is not yet valid at the evidence time"
    CERT_EXPIRED = "a certificate has expired at the evidence time"
    CERT_REVOKED = "a certificate is revoked"
    COLLATERAL_INVALID = "collateral (TCB info, QE identity, CRL) is invalid or does not match"
    TCB_MISMATCH = "reported TCB does not match the certificate"
    TCB_STATUS = "TCB status is below the policy minimum"
    QE_IDENTITY = "quoting enclave does not match its identity"
    TD_ATTRIBUTES = "TD attributes are not acceptable"
    SERVICE_TD = "a service TD is bound to the TD (MRSERVICETD is not zero)"
    MIGRATION_AGENT = "the guest policy lets a migration agent be bound to the VM (SEV-SNP MIGRATE_MA)"
    DEBUG = "debug mode is not allowed"
    MEASUREMENT = "measurement is not in the policy allow-list"
    PLATFORM = "platform is not allowed by the policy"
    STALE = "evidence is older than the policy allows"
    NONCE = "evidence does not carry the expected nonce / report data"
    SIMULATED = "simulated evidence is refused (allow_simulated is off)"
    POLICY = "verification policy is invalid"


class AttestationError(Exception):
    """Evidence refused. ``reason`` is machine-readable; ``detail`` says what exactly."""

    def __init__(self, reason: AttestationReason, detail: str = "", *, platform: str = "", field: str = "") -> None:
        self.reason = reason
        self.detail = detail
        self.platform = platform
        self.field = field
        where = f" [{field}]" if field else ""
        plat = f"{platform}: " if platform else ""
        super().__init__(f"{plat}{reason.value}{where}{': ' + detail if detail else ''}")

    def to_dict(self) -> dict[str, str]:
        return {
            "reason": self.reason.name,
            "message": self.reason.value,
            "detail": self.detail,
            "platform": self.platform,
            "field": self.field,
        }
