"""Certificate-chain checks shared by every verifier (pyca/cryptography, no network).

Roots are pinned by the SHA-256 of their SubjectPublicKeyInfo, never by name: Intel's test
roots carry the production root's exact subject.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import warnings
from collections.abc import Callable, Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from shardguard.attestation.errors import AttestationError, AttestationReason
from shardguard.attestation.memo import Memo
from shardguard.attestation.sigbatch import signature_holds

__all__ = ["check_validity", "load_der", "load_pem_chain", "spki_sha256", "verify_chain", "verify_issued_by"]


# cryptography parses names, extensions and algorithms lazily: a malformed certificate can
# raise any of these on first access. Every one of them means "malformed evidence".
_LAZY_PARSE_ERRORS = (ValueError, TypeError, x509.InvalidVersion, x509.DuplicateExtension, UnsupportedAlgorithm)

# Signatures already verified, keyed by the exact DER of the certificate and of its issuer
# (memo.py): a Nitro document's four CA certificates, or an SEV-SNP ARK and ASK, are checked
# once, not per evidence. A pinned root's self-signature is the trust store's own check, kept
# by ``clear_caches``; a root whose bytes differ in any way is a new key and checked again.
_LINKS = Memo(512, signed=True)
_ANCHORS = Memo(64, anchor=True, signed=True)


def load_der(data: bytes, *, platform: str, what: str) -> x509.Certificate:
    """Parse one DER certificate. AMD VCEK/VLEKs have serial number 0, which cryptography
    accepts with a deprecation warning; that warning is expected and silenced here only."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return x509.load_der_x509_certificate(bytes(data))
    except _LAZY_PARSE_ERRORS as e:
        raise AttestationError(
            AttestationReason.MALFORMED, f"{what}: not a DER certificate ({type(e).__name__}: {e})", platform=platform, field=what
        ) from None


def load_pem_chain(data: bytes, *, platform: str, what: str) -> list[x509.Certificate]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            certs = x509.load_pem_x509_certificates(bytes(data))
    except _LAZY_PARSE_ERRORS as e:
        raise AttestationError(
            AttestationReason.MALFORMED, f"{what}: not a PEM chain ({type(e).__name__}: {e})", platform=platform, field=what
        ) from None
    if not certs:
        raise AttestationError(AttestationReason.MALFORMED, f"{what}: empty chain", platform=platform, field=what)
    return certs


def spki_sha256(cert: x509.Certificate, *, platform: str = "") -> bytes:
    """SHA-256 of the certificate's SubjectPublicKeyInfo (how roots are pinned)."""
    try:
        spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    except _LAZY_PARSE_ERRORS as e:
        raise AttestationError(AttestationReason.MALFORMED, f"certificate key: {type(e).__name__}", platform=platform) from None
    return hashlib.sha256(spki).digest()


def _utc(at: dt.datetime) -> dt.datetime:
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)


def check_validity(cert: x509.Certificate, at: dt.datetime, *, platform: str, what: str) -> None:
    at = _utc(at)
    if at < cert.not_valid_before_utc:
        raise AttestationError(
            AttestationReason.CERT_NOT_YET_VALID,
            f"{what} valid from {cert.not_valid_before_utc.isoformat()}",
            platform=platform,
            field=what,
        )
    if at > cert.not_valid_after_utc:
        raise AttestationError(
            AttestationReason.CERT_EXPIRED,
            f"{what} expired {cert.not_valid_after_utc.isoformat()}",
            platform=platform,
            field=what,
        )


def verify_issued_by(cert: x509.Certificate, issuer: x509.Certificate, *, platform: str, what: str) -> None:
    """``cert``'s signature by ``issuer``'s key (ECDSA, RSA PKCS#1 v1.5 or RSA-PSS)."""
    try:
        _verify_issued_by(cert, issuer, platform=platform, what=what)
    except AttestationError:
        raise
    except _LAZY_PARSE_ERRORS as e:
        raise AttestationError(
            AttestationReason.MALFORMED, f"{what}: {type(e).__name__}", platform=platform, field=what
        ) from None


def _verify_issued_by(cert: x509.Certificate, issuer: x509.Certificate, *, platform: str, what: str) -> None:
    if cert.issuer != issuer.subject:
        raise AttestationError(
            AttestationReason.CHAIN_INVALID, f"{what}: issuer name does not match", platform=platform, field=what
        )
    key = issuer.public_key()
    algo = cert.signature_hash_algorithm
    check: Callable[[], object]
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and algo is not None:
            check = functools.partial(key.verify, cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algo))
        elif isinstance(key, rsa.RSAPublicKey) and algo is not None:
            params = cert.signature_algorithm_parameters
            pad = params if isinstance(params, padding.PSS | padding.PKCS1v15) else padding.PKCS1v15()
            check = functools.partial(key.verify, cert.signature, cert.tbs_certificate_bytes, pad, algo)
        else:
            raise AttestationError(AttestationReason.UNSUPPORTED, f"{what}: signature algorithm", platform=platform, field=what)
        if not signature_holds(check):  # proven here, or with the verification's others (sigbatch.py)
            raise AttestationError(
                AttestationReason.BAD_SIGNATURE, f"{what}: certificate signature", platform=platform, field=what
            )
    except UnsupportedAlgorithm:
        raise AttestationError(
            AttestationReason.UNSUPPORTED, f"{what}: signature algorithm", platform=platform, field=what
        ) from None


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def verify_chain(
    chain: Sequence[x509.Certificate],
    *,
    pinned: Mapping[bytes, str],
    at: dt.datetime,
    platform: str,
    names: Sequence[str] | None = None,
    ders: Sequence[bytes] | None = None,
) -> str:
    """Check ``chain`` (leaf first, root last): root key pinned, root self-signed, each
    certificate signed by the next, CA flag on every issuer, all valid at ``at``.

    Signatures are verified once per exact pair of DER encodings (``_LINKS``); names, CA flags,
    path lengths and validity are checked on every call.

    Returns the pinned root's name. ``names`` label the certificates in error messages.
    ``ders``: the exact DER each certificate was loaded from, when the caller has it (else each
    is encoded again: about 6 µs a certificate here, on every call).
    """
    if not chain:
        raise AttestationError(AttestationReason.CHAIN_INVALID, "empty chain", platform=platform)
    if ders is not None and len(ders) != len(chain):
        raise ValueError("verify_chain: one DER per certificate")
    try:
        return _verify_chain(chain, pinned=pinned, at=at, platform=platform, names=names, ders=ders)
    except AttestationError:
        raise
    except _LAZY_PARSE_ERRORS as e:
        raise AttestationError(AttestationReason.MALFORMED, f"certificate: {type(e).__name__}", platform=platform) from None


def _verify_chain(
    chain: Sequence[x509.Certificate],
    *,
    pinned: Mapping[bytes, str],
    at: dt.datetime,
    platform: str,
    names: Sequence[str] | None,
    ders: Sequence[bytes] | None,
) -> str:
    labels = list(names) if names else [f"cert[{i}]" for i in range(len(chain))]
    root = chain[-1]
    root_name = pinned.get(spki_sha256(root))
    if root_name is None:
        raise AttestationError(
            AttestationReason.UNTRUSTED_ROOT,
            f"root key {spki_sha256(root).hex()[:16]}… is not pinned",
            platform=platform,
            field=labels[-1],
        )
    if ders is None:
        ders = [cert.public_bytes(serialization.Encoding.DER) for cert in chain]
    _ANCHORS.get(ders[-1], lambda: verify_issued_by(root, root, platform=platform, what=labels[-1]))
    for i, cert in enumerate(chain[:-1]):
        issuer = chain[i + 1]
        bc = _basic_constraints(issuer)
        if bc is None or not bc.ca:
            raise AttestationError(
                AttestationReason.CHAIN_INVALID, f"{labels[i + 1]} is not a CA", platform=platform, field=labels[i + 1]
            )
        # RFC 5280 §4.2.1.9: at most path_length CA certificates may follow this one.
        if bc.path_length is not None and i > bc.path_length:
            raise AttestationError(
                AttestationReason.CHAIN_INVALID,
                f"{labels[i + 1]} path length {bc.path_length} exceeded",
                platform=platform,
                field=labels[i + 1],
            )
        _LINKS.get((ders[i], ders[i + 1]), functools.partial(verify_issued_by, cert, issuer, platform=platform, what=labels[i]))
    for cert, label in zip(chain, labels, strict=True):
        check_validity(cert, at, platform=platform, what=label)
    return root_name
