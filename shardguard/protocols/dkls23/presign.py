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
and signing a raw digest chosen with ``R`` known opens a forgery (their §1.1.2). So the nonce
is shifted at signing time by ``δ = H(id, PK, R, digest, seed)`` — ``R' = R + δ·G``, each signer
adding ``δ·φ_i`` to its ``u_i`` (``Σu' = (k + δ)·φ``) — where ``seed`` is 32 fresh random bytes
the combiner (the coordinator) draws when the signing starts, after the request is fixed: a
client cannot know ``R'`` when it picks its digest, as their proof requires (δ unpredictable at
request time). A coordinator that chooses its seeds itself can predict ``δ``; against it the
protection is the hash (a 2^-256 event per try), not their theorem. Pre-signatures are made for
the key itself (path ``m``) only, so additive BIP32 derivation never meets them (their attack
on derivation); a signing with a path runs the three rounds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

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


def _delta(presignature_id: bytes, public_key: Point, big_r: Point, digest: bytes, seed: bytes) -> int:
    try:
        return rerandomizer(presignature_id, public_key, big_r, digest, seed)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _check_digest(digest: bytes) -> None:
    if type(digest) is not bytes or len(digest) != 32:
        raise UsageError("the digest to sign must be exactly 32 bytes (hash the message first, with the chain's own hash)")


@dataclasses.dataclass(frozen=True, slots=True)
class PresignedShare:
    """One signer's ``(u_i', w_i)`` for one digest: public (a round-3 broadcast of DKLs23)."""

    u: int
    w: int


class Presignature:
    """One signer's pre-signature: secret, single use. Not picklable; repr redacted."""

    __slots__ = ("_secrets", "big_r", "epoch", "identifier", "key_id", "presignature_id", "public_key", "setup_id", "signers")

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

    @property
    def used(self) -> bool:
        return self._secrets is None

    def share(self, digest: bytes, seed: bytes) -> PresignedShare:
        """``(u_i + δ·φ_i, m·φ_i + r'·v_i)`` with ``R' = R + δ·G``, ``r' = x(R') mod q``. Once:
        the secrets are gone afterwards (even if this call refuses its inputs), and a second
        call raises :class:`UsageError`."""
        held, self._secrets = self._secrets, None
        if held is None:
            raise UsageError("this pre-signature was used before: each signs one digest only")
        _check_digest(digest)
        phi, u, v = held
        q = SECP256K1.order
        delta = _delta(self.presignature_id, self.public_key, self.big_r, digest, seed)
        big_r = self.big_r + SECP256K1.base_mul(delta)
        if big_r.is_identity:  # δ = −k: probability 2^-256, and then no signature can be made
            raise UsageError("the re-randomised nonce is the identity")
        r = int.from_bytes(SECP256K1.encode(big_r)[1:], "big") % q
        return PresignedShare(u=(u + delta * phi) % q, w=(int.from_bytes(digest, "big") % q * phi + r * v) % q)

    def __repr__(self) -> str:
        state = "used" if self.used else "unused"
        return f"Presignature(epoch={self.epoch}, id={self.presignature_id.hex()[:16]}…, {state})"

    def __reduce__(self) -> str:
        raise TypeError("a pre-signature is secret and single-use: it cannot be pickled")


def presigned_signature(
    public_key: Point, big_r: Point, presignature_id: bytes, digest: bytes, seed: bytes, shares: Iterable[PresignedShare]
) -> EcdsaSignature | None:
    """The signature the signers' :meth:`Presignature.share` answers make (spec §4 "Output",
    with the nonce point re-randomised as they did); None if it is no valid signature (a wrong
    share cannot be told from the others, spec P12). Public inputs only: the coordinator
    combines."""
    _check_digest(digest)
    delta = _delta(presignature_id, public_key, big_r, digest, seed)
    return assemble(public_key, big_r + SECP256K1.base_mul(delta), ((s.u, s.w) for s in shares), digest, "m")


class DklsPresigner(DklsRounds[Presignature]):
    """One signer of a pre-signing session (key itself, path ``m``); ``result`` is its
    :class:`Presignature`. Two message rounds; the checks of round 3 end it."""

    PROTOCOL = "dkls23-presign"
    EXPECTS = {(1, SignCommit): True, (1, SignOtStart): False, (2, SignMultiply): False}

    def __init__(self, key: EcdsaKeyShare, *, signers: Sequence[int], instance: bytes, rng: Rng) -> None:
        super().__init__(key, signers=signers, instance=instance, rng=rng)

    def _advance(self) -> list[Message]:
        if self.round == 1 and self._have_all(1, SignCommit) and self._have_all(1, SignOtStart):
            return self._round2()
        if self.round == 2 and self._have_all(2, SignMultiply):
            u, v, phi = self._multiplied()
            public = self._key.public
            self._finish(
                Presignature(
                    key_id=public.key_id, epoch=public.epoch, setup_id=self._key.setup_id, identifier=self.me,
                    signers=tuple(self.signers), presignature_id=self._final_sid, public_key=self.public_key,
                    big_r=self._big_r_sum, phi=phi, u=u, v=v,
                )
            )  # fmt: skip
        return []
