"""DKLs23 pre-signatures: rounds 1–3 before the digest is known, one step after (spec §4.1, §8).

Nothing in DKLs23's first three rounds depends on the digest. :class:`DklsPresigner` runs
them (:class:`~._rounds.DklsRounds`, with a ``PROTOCOL`` of its own so no session id is shared
with a signing) and keeps, per signer, the single-use :class:`Presignature` ``(φ_i, u_i, v_i)``
with the public nonce point ``R`` and an id every signer derived alike (the session id fixed by
everyone's round-1 randomness). To sign a digest later each signer gives
:meth:`Presignature.share` — ``(u_i', w_i)`` — to whoever combines them
(:func:`presigned_signature`): one message each, no peer round.

**Single use** (spec P9): two digests signed with one pre-signature give two signatures with one
nonce, and the key follows. :meth:`Presignature.share` works once and wipes the secrets; the
node keeps pre-signatures in memory only (a restart, or a state directory restored from an old
copy, can never bring a used one back).

**Re-randomised** (Groth & Shoup, "On the security of ECDSA with additive key derivation and
presignatures", Eurocrypt 2022): a raw pre-signature fixes ``R`` before the message is chosen,
and signing a raw digest chosen with ``R`` known opens a forgery (their §1.1.2); their proof for
re-randomised ones needs the shift unpredictable when the request is made. So the nonce is
shifted at signing time by ``δ = H(id, PK, R, digest, seed, ρ)`` — ``R' = R + δ·G``, each signer
adding ``δ·φ_i`` to its ``u_i`` (``Σu' = (k + δ)·φ``) — where ``seed`` is 32 fresh random bytes
the combiner (the coordinator) draws when the signing starts, after the request is fixed, and
``ρ`` a hash of every signer's round-1 commitment salt, which only travels between the signers
sealed point to point: the combiner never learns it. So neither a client (it knows neither) nor
the coordinator (it lacks ``ρ``) can know ``R'`` when it picks a digest; only a coordinator and a
signer together can (then the protection is the hash's, not their theorem). The signers report
``R'`` with their shares. Pre-signatures are made for the key itself (path ``m``) only, so
additive BIP32 derivation never meets them (their attack on derivation); a signing with a path
runs the three rounds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from shardguard.crypto.ecdsa_combine import SEED_BYTES, rerandomizer
from shardguard.crypto.group import Point, Rng
from shardguard.crypto.secp256k1 import SECP256K1
from shardguard.protocols.dkls23._messages import SignCommit, SignMultiply, SignOtStart
from shardguard.protocols.dkls23._rounds import DklsRounds
from shardguard.protocols.dkls23.keys import EcdsaKeyShare
from shardguard.protocols.dkls23.signature import EcdsaSignature, assemble
from shardguard.protocols.errors import UsageError
from shardguard.protocols.message import Message

__all__ = ["SEED_BYTES", "DklsPresigner", "Presignature", "PresignedShare", "presigned_signature", "rerandomizer"]


def _delta(presignature_id: bytes, public_key: Point, big_r: Point, digest: bytes, seed: bytes, private: bytes) -> int:
    try:
        return rerandomizer(presignature_id, public_key, big_r, digest, seed, private)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _check_digest(digest: bytes) -> None:
    if type(digest) is not bytes or len(digest) != 32:
        raise UsageError("the digest to sign must be exactly 32 bytes (hash the message first, with the chain's own hash)")


@dataclasses.dataclass(frozen=True, slots=True)
class PresignedShare:
    """One signer's ``(u_i', w_i)`` for one digest — public (a round-3 broadcast of DKLs23) —
    and the re-randomised nonce point ``R'`` it signed with (the signature reveals it)."""

    u: int
    w: int
    big_r: Point


class Presignature:
    """One signer's pre-signature: secret, single use. Not picklable; repr redacted."""

    __slots__ = (
        "_private", "_secrets", "big_r", "epoch", "identifier", "key_id", "presignature_id", "public_key", "setup_id", "signers",
    )  # fmt: skip

    def __init__(
        self,
        *,
        key_id: bytes,
        epoch: int,
        setup_id: bytes,
        identifier: int,
        signers: tuple[int, ...],
        presignature_id: bytes,
        public_key: Point,
        big_r: Point,
        phi: int,
        u: int,
        v: int,
        private_nonce: bytes,
    ) -> None:
        self.key_id = key_id
        self.epoch = epoch
        self.setup_id = setup_id
        self.identifier = identifier
        self.signers = signers
        self.presignature_id = presignature_id
        self.public_key = public_key
        self.big_r = big_r
        self._secrets: tuple[int, int, int] | None = (phi, u, v)
        self._private = private_nonce  # known to the signers only: the combiner cannot predict δ

    @property
    def used(self) -> bool:
        return self._secrets is None

    def share(self, digest: bytes, seed: bytes) -> PresignedShare:
        """``(u_i + δ·φ_i, m·φ_i + r'·v_i)`` with ``R' = R + δ·G``, ``r' = x(R') mod q``. Once:
        the secrets are gone afterwards (even if this call refuses its inputs), and a second
        call raises :class:`UsageError`."""
        held, self._secrets = self._secrets, None
        private, self._private = self._private, b""
        if held is None:
            raise UsageError("this pre-signature was used before: each signs one digest only")
        _check_digest(digest)
        phi, u, v = held
        q = SECP256K1.order
        delta = _delta(self.presignature_id, self.public_key, self.big_r, digest, seed, private)
        big_r = self.big_r + SECP256K1.base_mul(delta)
        if big_r.is_identity:  # δ = −k: probability 2^-256, and then no signature can be made
            raise UsageError("the re-randomised nonce is the identity")
        r = int.from_bytes(SECP256K1.encode(big_r)[1:], "big") % q
        w = (int.from_bytes(digest, "big") % q * phi + r * v) % q
        return PresignedShare(u=(u + delta * phi) % q, w=w, big_r=big_r)

    def __repr__(self) -> str:
        state = "used" if self.used else "unused"
        return f"Presignature(epoch={self.epoch}, id={self.presignature_id.hex()[:16]}…, {state})"

    def __reduce__(self) -> str:
        raise TypeError("a pre-signature is secret and single-use: it cannot be pickled")


def presigned_signature(public_key: Point, digest: bytes, shares: Sequence[PresignedShare]) -> EcdsaSignature | None:
    """The signature the signers' :meth:`Presignature.share` answers make (spec §4 "Output"),
    with the re-randomised nonce point they all report; None if they report different points
    or make no valid signature (a wrong share cannot be told from the others, spec P12).
    Public inputs only: the coordinator combines."""
    _check_digest(digest)
    points = {SECP256K1.encode(s.big_r) for s in shares}
    if len(points) != 1:
        return None
    return assemble(public_key, shares[0].big_r, ((s.u, s.w) for s in shares), digest, "m")


class DklsPresigner(DklsRounds[Presignature]):
    """One signer of a pre-signing session (key itself, path ``m``); ``result`` is its
    :class:`Presignature`. Two message rounds; the checks of round 3 end it."""

    PROTOCOL = "dkls23-presign"
    EXPECTS = {(1, SignCommit): True, (1, SignOtStart): False, (2, SignMultiply): False}

    def __init__(self, key: EcdsaKeyShare, *, signers: Sequence[int], instance: bytes, rng: Rng) -> None:
        super().__init__(key, signers=signers, instance=instance, rng=rng)

    def _advance(self) -> list[Message]:
        # Chained, as DklsSigner._advance (review finding).
        out: list[Message] = []
        with self._sending_on_abort(out):
            if self.round == 1 and self._have_all(1, SignCommit) and self._have_all(1, SignOtStart):
                out += self._round2()
            if self.round == 2 and self._have_all(2, SignMultiply):
                self._complete()
        return out

    def _complete(self) -> None:
        """Round 2's checks and multiplication: the pre-signature (DKLs23 spec §4.1)."""
        u, v, phi = self._multiplied()
        public = self._key.public
        self._finish(
            Presignature(
                key_id=public.key_id, epoch=public.epoch, setup_id=self._key.setup_id, identifier=self.me,
                signers=tuple(self.signers), presignature_id=self._final_sid, public_key=self.public_key,
                big_r=self._big_r_sum, phi=phi, u=u, v=v, private_nonce=self._private_nonce,
            )
        )  # fmt: skip
