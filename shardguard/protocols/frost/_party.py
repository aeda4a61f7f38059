"""FROST signing party: two rounds, every signer also aggregates (RFC 9591 §5).

ShardGuard has no trusted coordinator (ARCHITECTURE §2), so round 1 and round 2 are
broadcasts between the signers; each signer checks every other signer's share (§5.4,
identifiable abort) and outputs the same signature.

Nonces are single-use by construction: they live only inside this object, are dropped as soon
as the share is computed, and the object cannot be pickled, copied out or restarted.
"""

from __future__ import annotations

from collections.abc import Sequence

from shardguard.crypto.frost import CheaterDetection, Commitment, SigningContext, prepare, sign_share
from shardguard.crypto.group import Rng
from shardguard.protocols.errors import AbortReason, UsageError
from shardguard.protocols.frost._messages import SignRound1, SignRound2, commitment_digest
from shardguard.protocols.keys import KeyShare
from shardguard.protocols.message import Message
from shardguard.protocols.party import Party

__all__ = ["FrostSigner", "signer_ids"]


def signer_ids(key_share: KeyShare, signers: Sequence[int]) -> tuple[int, ...]:
    """The signing set, checked (RFC 9591 §5: at least t distinct holders of the key, us among
    them), for a FROST key only."""
    public = key_share.public
    if not public.suite.frost:
        raise UsageError(f"{public.suite.scheme} keys sign with their own protocol, not FROST")
    ids = public.quorum(signers, "signer")
    if key_share.identifier not in ids:
        raise UsageError(f"party {key_share.identifier} is not among the signers")
    return tuple(ids)


class FrostSigner(Party[bytes]):
    """One signer of a FROST signature; ``result`` is the encoded signature."""

    PROTOCOL = "frost-sign"
    EXPECTS = {(1, SignRound1): True, (2, SignRound2): True}

    def __init__(
        self,
        key_share: KeyShare,
        *,
        signers: Sequence[int],
        message: bytes,
        instance: bytes,
        rng: Rng,
        cheater_detection: CheaterDetection = CheaterDetection.ALL_CHEATERS,
    ) -> None:
        public = key_share.public
        ids = signer_ids(key_share, signers)
        if type(message) is not bytes:
            raise UsageError("message must be bytes")
        sid = public.session_id(self.PROTOCOL, ids, instance, message=message)
        super().__init__(public.suite, key_share.identifier, [i for i in ids if i != key_share.identifier], sid)
        self.signers = ids
        self.message = message
        self._key = key_share
        self._rng = rng
        self._detection = cheater_detection
        self._nonces: tuple[int, int] | None = None
        self._own_commitment: Commitment | None = None
        self._context: SigningContext | None = None
        self._own_z = 0
        self._digests: tuple[tuple[int, bytes], ...] = ()

    def _start(self) -> list[Message]:
        """Round 1 (RFC 9591 §5.1 ``commit``)."""
        g = self.suite.group
        s = self._key.signing_share
        d = self.suite.nonce_generate(s, self._rng, self.session_id)
        e = self.suite.nonce_generate(s, self._rng, self.session_id)
        self._nonces = (d, e)
        hiding, binding = g.base_mul(d), g.base_mul(e)
        self._own_commitment = (self.me, hiding, binding)
        return [self._broadcast(SignRound1(suite=self.suite, hiding=hiding, binding=binding))]

    def _advance(self) -> list[Message]:
        out: list[Message] = []
        if self.round == 1 and self._have_all(1, SignRound1):
            out = self._round2()
        if self.round == 2 and self._have_all(2, SignRound2):
            self._aggregate()
        return out

    def _round2(self) -> list[Message]:
        """Round 2 (RFC 9591 §5.2 ``sign``): the nonces are consumed here, exactly once."""
        if self._nonces is None or self._own_commitment is None:  # pragma: no cover - state machine
            raise UsageError("nonces already used")
        commitments = [self._own_commitment]
        for sender, p in self._received(1, SignRound1).items():
            commitments.append((sender, p.hiding, p.binding))  # type: ignore[attr-defined]
        d, e = self._nonces
        self._nonces = None
        ctx = prepare(self.suite, self._key.public.group_key, commitments, self.message, own=(self.me, d, e))
        z = sign_share(
            self.suite,
            hiding=d,
            binding=e,
            rho=ctx.rho[self.me],
            lam=ctx.lambdas[self.me],
            signing_share=self._key.signing_share * ctx.key_factor,
            challenge=ctx.challenge,
            nonce_factor=ctx.nonce_factor,
        )
        self._context = ctx
        self._own_z = z
        self._digests = tuple((c[0], commitment_digest(self.suite, c)) for c in ctx.commitments)
        self.round = 2
        return [self._broadcast(SignRound2(suite=self.suite, share=z, commitment_digests=self._digests))]

    def _aggregate(self) -> None:
        """RFC 9591 §5.3 ``aggregate``; §5.4 share verification when the aggregate fails."""
        ctx = self._context
        if ctx is None:  # pragma: no cover - state machine
            raise UsageError("round 2 not reached")
        received = self._received(2, SignRound2)
        mine = dict(self._digests)
        equivocators: set[int] = set()
        for sender, p in received.items():
            theirs = dict(p.commitment_digests)  # type: ignore[attr-defined]
            if theirs.keys() != mine.keys():
                raise self._abort(AbortReason.MALFORMED_PAYLOAD, {sender}, field="commitment_digests")
            for i in mine:
                if theirs[i] != mine[i]:
                    equivocators |= self._echo_blame(sender, i)
        if equivocators:
            raise self._abort(AbortReason.EQUIVOCATION, equivocators, round=1)
        z_shares = {s: p.share for s, p in received.items()}  # type: ignore[attr-defined]
        z_shares[self.me] = self._own_z
        sig = ctx.signature(z_shares)
        # One check of the aggregate (as ZF frost ``aggregate``); the per-share checks of
        # RFC 9591 §5.4 run only when it fails, to name the culprits.
        if not self.suite.verify(self._key.public.group_key, self.message, sig):
            del z_shares[self.me]
            bad = ctx.invalid_shares(z_shares, self._key.public.verifying_shares, self._detection)
            if bad:
                raise self._abort(AbortReason.INVALID_SIGNATURE_SHARE, bad)
            raise self._abort(AbortReason.INVALID_SIGNATURE)
        self._finish(sig)
