"""Enclave platforms: the one interface the node uses to attest and seal (ARCHITECTURE §5).

Backends (``specs/enclave-backends.md``): ``nitro`` (/dev/nsm, §1), ``tsm`` (Linux configfs-tsm
for TDX and SEV-SNP guests, §2–4), ``gramine`` (Intel SGX under Gramine, §5) and ``simulated``
(anywhere, no protection, refused by verifiers unless ``allow_simulated``). :func:`open_platform`
picks the backend the machine offers and never falls back to ``simulated``.
"""

from shardguard.enclave.platform import (
    DetectionError,
    DeviceError,
    EnclaveError,
    Evidence,
    NotSupported,
    Platform,
    SealingError,
    SealingReason,
    UsageError,
    detect,
    open_platform,
)

__all__ = [
    "DetectionError",
    "DeviceError",
    "EnclaveError",
    "Evidence",
    "NotSupported",
    "Platform",
    "SealingError",
    "SealingReason",
    "UsageError",
    "detect",
    "open_platform",
]
