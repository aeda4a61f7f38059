"""The FROST ciphersuite interface (RFC 9591 §6) with the hooks a BIP340 suite overrides.

.. danger:: hazmat.

A suite is a *binding*, never protocol code: hashes H1–H5 and HDKG, encodings, and a few
hooks whose defaults are RFC 9591 behaviour (compare ZF frost-core ``Ciphersuite``):

* :meth:`key_sign_factor` — ±1 applied to key material before signing (BIP340 even-Y key);
* :meth:`nonce_sign_factor` — ±1 applied to nonces once R is known (BIP340 even-Y R);
* :meth:`challenge` — RFC 9591 §4.6, or the BIP340 tagged challenge;
* :meth:`post_keygen_tweak` — a public tweak added to every share after key generation
  (BIP341 key-path-only TapTweak);
* :meth:`encode_signature` / :meth:`verify`.
"""

from __future__ import annotations

import abc

from shardguard.crypto.errors import DecodeError, DecodeReason
from shardguard.crypto.group import Group, Point, Rng

__all__ = ["Ciphersuite"]


class Ciphersuite(abc.ABC):
    #: RFC 9591 ``contextString``; also our wire id of the suite.
    context: str
    #: Short name used by the CLI and the key files.
    scheme: str
    group: Group
    signature_size: int
    #: False for suites that share the DKG but sign with another protocol (ECDSA/DKLs23).
    frost: bool = True

    @property
    def context_bytes(self) -> bytes:
        return self.context.encode()

    # -- RFC 9591 §6 hash functions ---------------------------------------------------------
    @abc.abstractmethod
    def h1(self, m: bytes) -> int:
        """Binding factor hash ("rho")."""

    @abc.abstractmethod
    def h2(self, m: bytes) -> int:
        """Challenge hash ("chal")."""

    @abc.abstractmethod
    def h3(self, m: bytes) -> int:
        """Nonce hash ("nonce")."""

    @abc.abstractmethod
    def h4(self, m: bytes) -> bytes:
        """Message hash ("msg")."""

    @abc.abstractmethod
    def h5(self, m: bytes) -> bytes:
        """Commitment-list hash ("com")."""

    @abc.abstractmethod
    def hdkg(self, m: bytes) -> int:
        """DKG proof-of-knowledge challenge ("dkg", as ZF frost)."""

    # -- helpers ----------------------------------------------------------------------------
    def nonce_generate(self, secret: int, rng: Rng, extra: bytes = b"") -> int:
        """RFC 9591 §4.1: ``H3(random_bytes(32) ‖ SerializeScalar(secret))``.

        ``extra`` (ShardGuard hedging; empty gives the RFC value) is appended to the hash
        input: the signer passes its session id, so a repeated RNG stream (a restored VM
        snapshot) still gives different nonces for a different message or signer set.
        """
        return self.h3(rng(32) + self.group.scalar_encode(secret) + extra)

    # -- hooks ------------------------------------------------------------------------------
    def key_sign_factor(self, group_key: Point) -> int:
        """Factor (1 or order−1) applied to shares, verifying shares and group key before
        signing. RFC 9591: always 1."""
        return 1

    def nonce_sign_factor(self, group_commitment: Point) -> int:
        """Factor applied to the nonces (and commitment shares) once R is known."""
        return 1

    def challenge(self, group_commitment: Point, group_key: Point, msg: bytes) -> int:
        """RFC 9591 §4.6 ``compute_challenge``: ``H2(ser(R) ‖ ser(PK) ‖ msg)``."""
        g = self.group
        return self.h2(g.encode(group_commitment) + g.encode(group_key) + msg)

    def post_keygen_tweak(self, group_key: Point) -> tuple[int, int]:
        """``(factor, tweak)``: after key generation every share becomes
        ``factor·s_i + tweak`` (and the key ``factor·P + tweak·G``). RFC 9591: ``(1, 0)``."""
        return 1, 0

    def encode_signature(self, group_commitment: Point, z: int) -> bytes:
        """RFC 9591 §6: ``SerializeElement(R) ‖ SerializeScalar(z)``."""
        return self.group.encode(group_commitment) + self.group.scalar_encode(z)

    def decode_signature(self, sig: bytes) -> tuple[Point, int]:
        g = self.group
        if len(sig) != self.signature_size:
            raise DecodeError(DecodeReason.WRONG_LENGTH, field="signature", suite=g.name)
        r = g.decode(sig[: g.element_size], field="signature.R")
        z = g.scalar_decode(sig[g.element_size :], field="signature.z")
        return r, z

    def encode_public_key(self, group_key: Point) -> bytes:
        """The public key as users see it (CLI ``public_key``)."""
        return self.group.encode(group_key)

    def verify(self, group_key: Point, msg: bytes, sig: bytes) -> bool:
        """RFC 9591 §6 ``verify_signature`` (prime-order group: ``z·G == R + c·PK``).

        Returns False for any malformed or invalid signature.
        """
        try:
            r, z = self.decode_signature(sig)
        except DecodeError:
            return False
        c = self.challenge(r, group_key, msg)
        g = self.group
        return g.base_mul(z) == r + g.mul(group_key, c)

    def __repr__(self) -> str:
        return f"<Ciphersuite {self.context}>"
