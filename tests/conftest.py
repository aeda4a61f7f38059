"""Suite-wide invariants.

Every signature any test produces through a FROST or DKLs23 signer is verified again, at the moment it
is produced, by an implementation that is not ours (``shardguard.interop``: libsodium and
OpenSSL, libsecp256k1). A signature only ours accepts fails the test that made it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from coincurve import PublicKey
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

from shardguard.interop import verify_independently
from shardguard.protocols.dkls23 import DklsSigner, EcdsaSignature
from shardguard.protocols.dkls23 import presign as presign_module
from shardguard.protocols.frost import FrostSigner

_produced = {"count": 0}


@pytest.fixture(autouse=True)
def _independently_verify_every_signature(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    original = FrostSigner._finish

    def finish(self: FrostSigner, sig: bytes) -> None:
        public = self._key.public
        assert verify_independently(public.suite.scheme, public.public_key_bytes, self.message, sig), (
            f"{public.suite.scheme} signature accepted by ShardGuard but not by an independent verifier"
        )
        _produced["count"] += 1
        original(self, sig)

    monkeypatch.setattr(FrostSigner, "_finish", finish)
    original_ecdsa = DklsSigner._finish

    def finish_ecdsa(self: DklsSigner, sig: EcdsaSignature) -> None:
        check_ecdsa_independently(sig)
        _produced["count"] += 1
        original_ecdsa(self, sig)

    monkeypatch.setattr(DklsSigner, "_finish", finish_ecdsa)
    original_assemble = presign_module.assemble

    def assemble_presigned(*args: Any, **kwargs: Any) -> EcdsaSignature | None:
        sig = original_assemble(*args, **kwargs)
        if sig is not None:  # a pre-signed signature (None: refused, nothing released)
            check_ecdsa_independently(sig)
            _produced["count"] += 1
        return sig

    monkeypatch.setattr(presign_module, "assemble", assemble_presigned)
    yield


_HALF_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141 // 2


def check_ecdsa_independently(sig: EcdsaSignature) -> None:
    """OpenSSL (prehashed) and libsecp256k1 accept it, it is low-s, and the recovery id
    recovers the signing key."""
    assert 0 < sig.s <= _HALF_ORDER, "ECDSA signature is not low-s"
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), sig.public_key)
    try:
        key.verify(encode_dss_signature(sig.r, sig.s), sig.digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except InvalidSignature:
        raise AssertionError("ECDSA signature accepted by ShardGuard but refused by OpenSSL") from None
    recovered = PublicKey.from_signature_and_message(sig.to_bytes() + bytes([sig.recovery_id]), sig.digest, hasher=None)
    assert recovered.format() == sig.public_key, "recovery id does not recover the signing key"
    assert recovered.verify(_der(sig), sig.digest, hasher=None), "libsecp256k1 refuses the ECDSA signature"


def _der(sig: EcdsaSignature) -> bytes:
    return encode_dss_signature(sig.r, sig.s)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.write_line(f"signatures produced and independently verified: {_produced['count']}")
