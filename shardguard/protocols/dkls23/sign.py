"""DKLs23 threshold ECDSA signing in three rounds (DKLs23 Protocol 3.6; spec §4).

Rounds 1 and 2 and round 3's checks are :class:`~._rounds.DklsRounds`; here round 3 broadcasts
``u_i`` and ``w_i = m·φ_i + r·v_i`` (``r = x(R)``, ``m`` the digest) and every signer combines
``s = Σw / Σu``, normalises to low-s (flipping the recovery id's parity) and releases the
signature only if it verifies (spec P10). A wrong ``u``/``w``/``ψ`` shows up only as an
invalid signature, with no culprit (spec P12).

The digest is an input of exactly 32 bytes: nothing is hashed for the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shardguard.crypto.group import Rng
from shardguard.protocols.dkls23._messages import SignCommit, SignMultiply, SignOtStart, SignShare
from shardguard.protocols.dkls23._rounds import DklsRounds
from shardguard.protocols.dkls23.keys import EcdsaKeyShare
from shardguard.protocols.dkls23.signature import EcdsaSignature, assemble
from shardguard.protocols.errors import AbortReason, UsageError
from shardguard.protocols.message import Message

__all__ = ["DklsSigner"]


class DklsSigner(DklsRounds[EcdsaSignature]):
    """One signer; ``result`` is the verified :class:`EcdsaSignature`."""

    PROTOCOL = "dkls23-sign"
    EXPECTS = {(1, SignCommit): True, (1, SignOtStart): False, (2, SignMultiply): False, (3, SignShare): True}

    def __init__(
        self,
        key: EcdsaKeyShare,
        *,
        signers: Sequence[int],
        digest: bytes,
        instance: bytes,
        rng: Rng,
        path: Sequence[int] = (),
    ) -> None:
        if type(digest) is not bytes or len(digest) != 32:
            raise UsageError("the digest to sign must be exactly 32 bytes (hash the message first, with the chain's own hash)")
        super().__init__(key, signers=signers, instance=instance, rng=rng, path=path, message=digest)
        self.digest = digest
        self._share: SignShare | None = None

    def _advance(self) -> list[Message]:
        # Chained: one delivery may complete several rounds, since a peer's later-round message
        # can come before another peer's earlier one (review finding: one step per delivery
        # left a party waiting with every input in).
        out: list[Message] = []
        with self._sending_on_abort(out):
            if self.round == 1 and self._have_all(1, SignCommit) and self._have_all(1, SignOtStart):
                out += self._round2()
            if self.round == 2 and self._have_all(2, SignMultiply):
                out += self._round3()
            if self.round == 3 and self._have_all(3, SignShare):
                self._combine()
        return out

    # -- round 3 ----------------------------------------------------------------------------
    def _round3(self) -> list[Message]:
        u, v, phi = self._multiplied()
        q = self._q
        r = int.from_bytes(self.suite.group.encode(self._big_r_sum)[1:], "big") % q
        w = (int.from_bytes(self.digest, "big") % q * phi + r * v) % q
        self._share = SignShare(suite=self.suite, u=u, w=w)
        return [self._broadcast(self._share)]

    # -- output -----------------------------------------------------------------------------
    def _combine(self) -> None:
        if self._share is None:  # round 3 always follows our own round-3 share
            raise UsageError("signing combined before our own share was made")
        shares: list[Any] = [self._share, *self._received(3, SignShare).values()]
        sig = assemble(self.public_key, self._big_r_sum, ((x.u, x.w) for x in shares), self.digest, self.path)
        if sig is None:
            raise self._abort(AbortReason.INVALID_SIGNATURE)
        self._finish(sig)
