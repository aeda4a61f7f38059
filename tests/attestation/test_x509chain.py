"""Shared chain checks: pinning by key (not name), CA flag, path length, validity, signatures."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shardguard.attestation import AttestationError, AttestationReason
from shardguard.attestation.memo import clear_caches
from shardguard.attestation.x509chain import spki_sha256, verify_chain

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    ca: bool,
    path_len: int | None = None,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    iname, ikey = issuer if issuer else (name, key)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, iname)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T0)
        .not_valid_after(T0 + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_len if ca else None), critical=True)
    )
    return b.sign(ikey, hashes.SHA384())


def _pki(root_path_len: int | None):  # type: ignore[no-untyped-def]
    keys = [ec.generate_private_key(ec.SECP384R1()) for _ in range(4)]
    root = _cert("root", keys[0], None, True, root_path_len)
    ca1 = _cert("ca1", keys[1], ("root", keys[0]), True)
    ca2 = _cert("ca2", keys[2], ("ca1", keys[1]), True)
    leaf = _cert("leaf", keys[3], ("ca2", keys[2]), False)
    return [leaf, ca2, ca1, root]


def _reason(chain, pins, at=T0 + dt.timedelta(days=1)) -> AttestationReason:  # type: ignore[no-untyped-def]
    with pytest.raises(AttestationError) as e:
        verify_chain(chain, pinned=pins, at=at, platform="test")
    return e.value.reason


def test_path_length_and_pinning() -> None:
    chain = _pki(None)
    pins = {spki_sha256(chain[-1]): "test-root"}
    assert verify_chain(chain, pinned=pins, at=T0 + dt.timedelta(days=1), platform="test") == "test-root"
    assert _reason(chain, {}) is AttestationReason.UNTRUSTED_ROOT
    assert _reason(chain, pins, at=T0 - dt.timedelta(days=1)) is AttestationReason.CERT_NOT_YET_VALID
    assert _reason(chain, pins, at=T0 + dt.timedelta(days=31)) is AttestationReason.CERT_EXPIRED
    short = _pki(1)  # root allows one CA below it, the chain has two
    assert _reason(short, {spki_sha256(short[-1]): "r"}) is AttestationReason.CHAIN_INVALID
    ok = _pki(2)
    assert verify_chain(ok, pinned={spki_sha256(ok[-1]): "r"}, at=T0 + dt.timedelta(days=1), platform="test") == "r"
    mixed = [chain[0], chain[1], _pki(None)[2], chain[3]]  # a CA from another PKI with the same name
    assert _reason(mixed, pins) is AttestationReason.BAD_SIGNATURE


def test_given_ders_are_the_memo_keys_and_must_match_the_chain() -> None:
    chain = _pki(None)
    pins = {spki_sha256(chain[-1]): "test-root"}
    at = T0 + dt.timedelta(days=1)
    ders = [c.public_bytes(serialization.Encoding.DER) for c in chain]
    clear_caches()
    assert verify_chain(chain, pinned=pins, at=at, platform="test", ders=ders) == "test-root"
    # Same verdicts with and without them, refusals included.
    mixed = [chain[0], chain[1], _pki(None)[2], chain[3]]
    mixed_ders = [c.public_bytes(serialization.Encoding.DER) for c in mixed]
    with pytest.raises(AttestationError) as e:
        verify_chain(mixed, pinned=pins, at=at, platform="test", ders=mixed_ders)
    assert e.value.reason is AttestationReason.BAD_SIGNATURE
    with pytest.raises(ValueError, match="one DER per certificate"):
        verify_chain(chain, pinned=pins, at=at, platform="test", ders=ders[:-1])
