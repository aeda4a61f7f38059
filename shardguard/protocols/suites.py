"""The schemes offered to callers above the protocol layer, and verification by scheme.

Layers above ``protocols`` (CLI, nodes, coordinator) use this instead of importing
:mod:`shardguard.crypto` directly.
"""

from __future__ import annotations

from shardguard.crypto.errors import DecodeError, UnsupportedSuite
from shardguard.crypto.suites import SUITES, suite_by_scheme
from shardguard.protocols.errors import UsageError
from shardguard.protocols.keys import PublicKeyPackage

__all__ = ["SCHEMES", "UnsupportedSuite", "decode_secret", "suite_by_scheme", "verify_signature"]

#: Scheme names, as the CLI takes them.
SCHEMES: tuple[str, ...] = tuple(SUITES)


def verify_signature(public: PublicKeyPackage, message: bytes, signature: bytes) -> bool:
    """Verify with the key's scheme (RFC 9591 §6 / BIP340). False for any malformed input."""
    return public.suite.verify(public.group_key, message, signature)


def decode_secret(scheme: str, data: bytes) -> int:
    """A 32-byte secret scalar in the scheme's own encoding, non-zero and below the order."""
    try:
        return suite_by_scheme(scheme).group.scalar_decode(data, field="secret", allow_zero=False)
    except DecodeError as e:
        raise UsageError(f"secret key: {e.reason.value}") from None
