"""Offline verification of enclave evidence: Nitro, SEV-SNP, TDX, SGX (ARCHITECTURE §5).

No network access: signature chains end in keys pinned in :mod:`.roots`, certificates are
checked at the evidence's own time, and the verdict is a typed :class:`Verified` or an
:class:`AttestationError` with the exact reason.
"""

from shardguard.attestation.errors import AttestationError, AttestationReason
from shardguard.attestation.result import Verified

__all__ = ["AttestationError", "AttestationReason", "Verified"]
