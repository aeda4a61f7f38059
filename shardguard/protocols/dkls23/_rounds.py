"""The rounds DKLs23 signing and pre-signing share (DKLs23 Protocol 3.6; spec §4, §4.1).

Signing set ``S`` (any ≥ t holders). Party ``i`` turns its Shamir share into an additive one,
``sk_i = λ_i·(p(i) + δ) + ζ_i`` (``δ``: BIP32 tweak of the path, ``ζ_i``: zero share), then:

1. samples ``r_i``, ``φ_i``; broadcasts fresh session randomness and ``Com(R_i)``; to every
   ``j`` starts the multiplication where it is "Bob" (random ``χ_ij``);
2. once round 1 is complete (session id now fixed by everyone's randomness): to every ``j``
   the echo of round 1, the opening of ``R_i``, its "Alice" answer with inputs
   ``(r_i, sk_i)``, ``Γ^u = c^u·G``, ``Γ^v = c^v·G``, ``ψ_ij = φ_i − χ_ij`` and ``pk_i``;
3. checks every ``j`` (echo, opening, multiplication check, ``χ_ij·R_j = Γ^u_ji + d^u·G``,
   ``χ_ij·pk_j = Γ^v_ji + d^v·G``, ``Σ pk = PK``) and computes
   ``u_i = r_i(φ_i + Σψ_ji) + Σ(c^u + d^u)`` and ``v_i = sk_i(φ_i + Σψ_ji) + Σ(c^v + d^v)``:
   ``Σu = k·φ`` and ``Σv = sk·φ`` with ``k = Σr_i``, ``φ = Σφ_i``.

Nothing of this depends on the digest (spec §4.1): :class:`~.sign.DklsSigner` broadcasts
``(u_i, w_i = m·φ_i + r·v_i)`` at once, :class:`~.presign.DklsPresigner` keeps ``(φ_i, u_i,
v_i, R)`` as a single-use pre-signature. A failed OT-extension, multiplication or pairwise check
aborts with the counterparty as culprit and ``reason.bans``: the caller persists the ban (spec
P3); a banned peer cannot be in a new session until a refresh.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Any, TypeVar

from shardguard.crypto.bip32 import DerivationError, derive_public, format_path
from shardguard.crypto.group import Point, Rng
from shardguard.crypto.ot.extension import ExtensionMessage, OtConsistencyError
from shardguard.crypto.shamir import lagrange_coefficient
from shardguard.crypto.transcript import Transcript
from shardguard.protocols.dkls23 import rvole
from shardguard.protocols.dkls23._messages import SignCommit, SignMultiply, SignOtStart
from shardguard.protocols.dkls23.bans import REGISTRY
from shardguard.protocols.dkls23.keys import EcdsaKeyShare, PairwiseSetup, gadget_vector
from shardguard.protocols.dkls23.setup import pair_session
from shardguard.protocols.errors import AbortReason, PeerBanned, ProtocolAbort, UsageError
from shardguard.protocols.message import Message
from shardguard.protocols.party import Party
from shardguard.protocols.wire import encode_payload

__all__ = ["DklsRounds"]

R = TypeVar("R")


def _commit(sid: bytes, me: int, big_r: bytes, salt: bytes) -> bytes:
    t = Transcript(b"shardguard/dkls23/nonce-commit").append(b"sid", sid).append_int(b"party", me)
    return t.append(b"R", big_r).append(b"salt", salt).digest()


class _HedgedStream:
    """SHAKE-256 in counter mode over ``seed ‖ share ‖ session id``: an ``Rng``."""

    __slots__ = ("_counter", "_key")

    def __init__(self, seed: bytes, share: bytes, session_id: bytes) -> None:
        self._key = hashlib.sha256(b"shardguard/dkls23/session-rng/v1\x00" + seed + share + session_id).digest()
        self._counter = 0

    def __call__(self, n: int) -> bytes:
        self._counter += 1
        return hashlib.shake_256(self._key + self._counter.to_bytes(8, "big")).digest(n)

    def __reduce__(self) -> str:
        raise TypeError("a session RNG is secret and cannot be pickled")


class DklsRounds(Party[R]):
    """Rounds 1 and 2 of one signer, and the checks of round 3 (:meth:`_multiplied`).
    ``message`` is bound into the session id: the digest when signing, nothing when
    pre-signing (which has a ``PROTOCOL`` of its own)."""

    def __init__(
        self,
        key: EcdsaKeyShare,
        *,
        signers: Sequence[int],
        instance: bytes,
        rng: Rng,
        path: Sequence[int] = (),
        message: bytes = b"",
    ) -> None:
        public = key.public
        ids = public.quorum(signers, "signer")
        if key.identifier not in ids:
            raise UsageError(f"party {key.identifier} is not among the signers")
        banned = REGISTRY.among(key.setup_id, key.identifier, key.banned, ids)
        if banned:
            raise PeerBanned(banned)
        g = public.group
        try:
            derived = derive_public(public.group_key, key.chain_code, path)
        except DerivationError as e:
            raise UsageError(f"derivation path: {e}") from None
        self.path = format_path(path)
        extra = key.setup_id + self.path.encode()
        sid = public.session_id(self.PROTOCOL, ids, instance, message=message, extra=extra)
        super().__init__(public.suite, key.identifier, [i for i in ids if i != key.identifier], sid)
        self.signers = ids
        self.public_key: Point = derived.public_key
        self._tweak = derived.tweak
        self._key = key
        # Every draw of this session (r, φ, β, â, nonce, salt) comes from one stream hedged
        # with the share and the session id: a replayed RNG (a restored VM snapshot) still
        # gives fresh values for another digest, path, signer set or instance (spec P9).
        self._rng: Rng = _HedgedStream(rng(32), public.suite.group.scalar_encode(key.share.signing_share), sid)
        self._gadget = gadget_vector(key.setup_id)
        self._q: int = g.order
        self._r, self._phi = g.random_scalar(self._rng), g.random_scalar(self._rng)
        self._big_r = g.base_mul(self._r)
        self._nonce = b""
        self._salt = b""
        self._own_commit = b""
        self._bobs: dict[int, rvole.BobState] = {}
        self._echo: tuple[bytes, ...] = ()
        self._final_sid = b""
        self._sk = 0
        self._pk: Point = g.identity()
        self._c: dict[int, tuple[int, int]] = {}
        self._big_r_sum: Point = g.identity()
        self._private_nonce = b""

    def _refuse_if_banned(self, j: int) -> None:
        """A concurrent session may have banned ``j`` since we started (spec P3)."""
        if j in REGISTRY.banned(self._key.setup_id, self.me):
            raise self._abort(AbortReason.PEER_BANNED, {j})

    def _ban(self, j: int, reason: AbortReason, field: str) -> ProtocolAbort:
        """Record the ban for every session of this process before anyone can run another
        check against ``j``; the caller persists it with the share."""
        REGISTRY.add(self._key.setup_id, self.me, {j})
        return self._abort(reason, {j}, field=field)

    # -- round 1 ----------------------------------------------------------------------------
    def _start(self) -> list[Message]:
        self._nonce, self._salt = self._rng(32), self._rng(32)
        enc_r = self.suite.group.encode(self._big_r)
        commit = SignCommit(suite=self.suite, nonce=self._nonce, commitment=_commit(self.session_id, self.me, enc_r, self._salt))
        self._own_commit = hashlib.sha256(encode_payload(commit)).digest()
        out = [self._broadcast(commit)]
        for j in self.peers:
            pair = self._key.pair(j)
            ote_sid = pair_session(self.session_id, b"ote", self.me, j, self._nonce)
            bob, msg = rvole.bob_start(
                ote_sid, PairwiseSetup.split(pair.seeds0), PairwiseSetup.split(pair.seeds1), self._gadget, self._rng
            )
            self._bobs[j] = bob
            start = SignOtStart(suite=self.suite, nonce=self._nonce, u=msg.u, x_check=msg.x_check, t_check=msg.t_check)
            out.append(self._send(j, start))
        return out

    # -- round 2 ----------------------------------------------------------------------------
    def _zeta(self, final_sid: bytes) -> int:
        """Zero share (spec §1.3): ``Σ_{j<i} H(σ_ij, Z) − Σ_{j>i} H(σ_ij, Z)``."""
        z = 0
        for j in self.peers:
            h = hashlib.shake_256(b"shardguard/dkls23/zero/v1\x00" + self._key.pair(j).zero_seed + final_sid).digest(48)
            v = int.from_bytes(h, "big")
            z += v if j < self.me else -v
        return z % self._q

    def _round2(self) -> list[Message]:
        self.round = 2
        g, q = self.suite.group, self._q
        starts: dict[int, Any] = self._received(1, SignOtStart)
        self._echo = tuple(self._own_commit if i == self.me else self._payload_digest(1, SignCommit, i) for i in self.signers)
        final_sid = (
            Transcript(b"shardguard/dkls23/final-sid")
            .append(b"sid", self.session_id)
            .append(b"echo", b"".join(self._echo))
            .digest()
        )
        self._final_sid = final_sid
        lam = lagrange_coefficient(self.signers, self.me, q)
        self._sk = (lam * (self._key.share.signing_share + self._tweak) + self._zeta(final_sid)) % q
        self._pk = g.base_mul(self._sk)
        out = []
        for j in self.peers:
            pair = self._key.pair(j)
            # Bob's own nonce, from his authenticated point-to-point message: a relay or a third
            # party cannot make this check fail for an honest Bob (spec P4).
            ote_sid = pair_session(self.session_id, b"ote", j, self.me, starts[j].nonce)
            msg = ExtensionMessage(starts[j].u, starts[j].x_check, starts[j].t_check)
            with REGISTRY.checking(self._key.setup_id, self.me, j):
                self._refuse_if_banned(j)
                try:
                    c, a_tilde, eta, mu = rvole.alice_answer(
                        ote_sid,
                        pair_session(final_sid, b"rvole", j, self.me),
                        pair.delta,
                        PairwiseSetup.split(pair.chosen),
                        msg,
                        (self._r, self._sk),
                        self._gadget,
                        self._rng,
                    )
                except OtConsistencyError:
                    raise self._ban(j, AbortReason.OT_CONSISTENCY, "u") from None
            self._c[j] = c
            out.append(
                self._send(
                    j,
                    SignMultiply(
                        suite=self.suite,
                        echo=self._echo,
                        big_r=self._big_r,
                        salt=self._salt,
                        a_tilde=a_tilde,
                        eta=eta,
                        mu=mu,
                        gamma_u=g.base_mul(c[0]),
                        gamma_v=g.base_mul(c[1]),
                        psi=(self._phi - self._bobs[j].b) % q,
                        pk=self._pk,
                    ),
                )
            )
        return out

    # -- round 3: the checks ------------------------------------------------------------------
    def _multiplied(self) -> tuple[int, int, int]:
        """Round 3's checks of every peer's round 2; returns ``(u_i, v_i, φ_i)`` and keeps
        ``R`` (``_big_r_sum``) and a value every signer derives alike but no one outside the
        session learns (``_private_nonce``: a hash of every signer's commitment salt, which
        only travels point to point, sealed, and is bound by the echoed commitments). Every
        secret of the session but ``φ_i`` is dropped."""
        self.round = 3
        g, q = self.suite.group, self._q
        commits: dict[int, Any] = self._received(1, SignCommit)
        mults: dict[int, Any] = self._received(2, SignMultiply)
        self._check_echoes(self._echo, {j: mults[j].echo for j in self.peers}, self.signers)
        u_sum = self._r * self._phi
        v_sum = self._sk * self._phi
        psi_sum = 0
        for j in self.peers:
            m = mults[j]
            if not hmac.compare_digest(_commit(self.session_id, j, g.encode(m.big_r), m.salt), commits[j].commitment):
                raise self._abort(AbortReason.INVALID_COMMITMENT, {j}, field="big_r")
            with REGISTRY.checking(self._key.setup_id, self.me, j):
                self._refuse_if_banned(j)
                try:
                    d_u, d_v = rvole.bob_finish(
                        self._bobs[j], pair_session(self._final_sid, b"rvole", self.me, j), m.a_tilde, m.eta, m.mu, self._gadget
                    )
                except rvole.MultiplicationCheckError:
                    raise self._ban(j, AbortReason.MULTIPLICATION_CHECK, "a_tilde") from None
                chi = self._bobs[j].b
                if g.mul(m.big_r, chi) != m.gamma_u + g.base_mul(d_u):
                    raise self._ban(j, AbortReason.PAIRWISE_CONSISTENCY, "gamma_u")
                if g.mul(m.pk, chi) != m.gamma_v + g.base_mul(d_v):
                    raise self._ban(j, AbortReason.PAIRWISE_CONSISTENCY, "gamma_v")
            c_u, c_v = self._c[j]
            u_sum += c_u + d_u
            v_sum += c_v + d_v
            psi_sum += m.psi
        if g.sum([self._pk, *(mults[j].pk for j in self.peers)]) != self.public_key:
            raise self._abort(AbortReason.INCONSISTENT_KEY, field="pk")
        big_r = g.sum([self._big_r, *(mults[j].big_r for j in self.peers)])
        if big_r.is_identity:
            raise self._abort(AbortReason.INVALID_SIGNATURE, field="R")
        self._big_r_sum = big_r
        salts = Transcript(b"shardguard/dkls23/session-private-nonce").append(b"sid", self._final_sid)
        for i in self.signers:
            salts.append(b"salt", self._salt if i == self.me else mults[i].salt)
        self._private_nonce = salts.digest()
        u = (u_sum + self._r * psi_sum) % q
        v = (v_sum + self._sk * psi_sum) % q
        phi = self._phi
        # Secrets of this session are not needed any more.
        self._r = self._phi = self._sk = 0
        self._bobs.clear()
        self._c.clear()
        return u, v, phi
