"""Random vector OLE: two-party multiplication (DKLs23 Functionality 3.5, Protocol 5.2).

Bob obtains a random ``b = Σ_j β_j·g_j``; Alice inputs ``a = (a_0, a_1)``; they end with
additive shares ``c_k + d_k = a_k·b``. ℓ = 2 inputs, ρ = 1 check column, ξ = 512 OTs of width
3 (the spec's profile P, with the paper's two index typos corrected: spec §3 / ToB app. F).

1. Bob: OT-extension receiver with choices β → message (:func:`bob_start`).
2. Alice: OT-extension sender (check, else ban Bob) → ``α0, α1``; ``c_k = −Σ g_j α0_{j,k}``;
   random ``â``; sends ``ã_{j,k} = α0 − α1 + a_k`` (k < 2), ``ã_{j,2} = α0 − α1 + â``,
   ``η = â + Σ θ_k a_k`` and ``μ = H([α0_{j,2} + Σ θ_k α0_{j,k}]_j)`` (:func:`alice_answer`).
3. Bob: ``ḋ_{j,k} = γ_{j,k} + β_j ã_{j,k}``; checks
   ``μ = H([ḋ_{j,2} + Σ θ_k ḋ_{j,k} − β_j η]_j)`` (else ban Alice); ``d_k = Σ g_j ḋ_{j,k}``
   (:func:`bob_finish`).

Scalar arithmetic is Python ``int`` (not constant-time; docs/SECURITY.md).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from shardguard.crypto.group import Rng
from shardguard.crypto.ot.extension import EXTENDED, ExtensionMessage, ReceiverExtension, extend_receive, extend_send
from shardguard.crypto.secp256k1 import SECP256K1

__all__ = ["WIDTH", "BobState", "MultiplicationCheckError", "alice_answer", "bob_finish", "bob_start"]

#: ℓ + ρ scalars per extended OT.
WIDTH = 3
_Q = SECP256K1.order


class MultiplicationCheckError(Exception):
    """Alice's answer fails the μ check (ban Alice)."""


class BobState:
    """Bob between his message and Alice's answer: the OT-extension state and ``b``."""

    __slots__ = ("_ext", "b")

    def __init__(self, ext: ReceiverExtension, b: int) -> None:
        self._ext = ext
        self.b = b

    def __repr__(self) -> str:
        return "BobState(<redacted>)"

    def __reduce__(self) -> str:
        raise TypeError("RVOLE state is secret and cannot be pickled")


def _theta(sid: bytes, a_tilde: bytes) -> tuple[int, int]:
    d = hashlib.shake_256(b"shardguard/rvole/theta/v1\x00" + sid + a_tilde).digest(96)
    return int.from_bytes(d[:48], "big") % _Q, int.from_bytes(d[48:], "big") % _Q


def _mu(sid: bytes, values: Sequence[int]) -> bytes:
    return hashlib.shake_256(b"shardguard/rvole/mu/v1\x00" + sid + b"".join(v.to_bytes(32, "big") for v in values)).digest(64)


def bob_start(
    ote_sid: bytes, seeds0: Sequence[bytes], seeds1: Sequence[bytes], gadget: Sequence[int], rng: Rng
) -> tuple[BobState, ExtensionMessage]:
    """Bob's first message; ``state.b`` is his random multiplier."""
    ext, msg = extend_receive(ote_sid, seeds0, seeds1, rng)
    b = sum(g for g, bit in zip(gadget, ext.choice_bits, strict=True) if bit) % _Q
    return BobState(ext, b), msg


def alice_answer(
    ote_sid: bytes,
    sid: bytes,
    delta: bytes,
    chosen: Sequence[bytes],
    msg: ExtensionMessage,
    inputs: tuple[int, int],
    gadget: Sequence[int],
    rng: Rng,
) -> tuple[tuple[int, int], bytes, int, bytes]:
    """Alice's answer ``(c, ã, η, μ)``. Raises :class:`~shardguard.crypto.ot.extension.OtConsistencyError`."""
    ext = extend_send(ote_sid, delta, chosen, msg)
    v0, v1 = ext.outputs(sid, WIDTH)
    a0, a1 = inputs
    a_hat = SECP256K1.random_scalar(rng)
    q = _Q
    rows = [
        ((x0[0] - x1[0] + a0) % q, (x0[1] - x1[1] + a1) % q, (x0[2] - x1[2] + a_hat) % q) for x0, x1 in zip(v0, v1, strict=True)
    ]
    a_tilde = b"".join(v.to_bytes(32, "big") for row in rows for v in row)
    th0, th1 = _theta(sid, a_tilde)
    eta = (a_hat + th0 * a0 + th1 * a1) % _Q
    mu = _mu(sid, [(x[2] + th0 * x[0] + th1 * x[1]) % _Q for x in v0])
    c0 = -sum(g * x[0] for g, x in zip(gadget, v0, strict=True)) % _Q
    c1 = -sum(g * x[1] for g, x in zip(gadget, v0, strict=True)) % _Q
    return (c0, c1), a_tilde, eta, mu


def bob_finish(state: BobState, sid: bytes, a_tilde: bytes, eta: int, mu: bytes, gadget: Sequence[int]) -> tuple[int, int]:
    """Bob's shares ``(d_0, d_1)``. Raises :class:`MultiplicationCheckError`."""
    if len(a_tilde) != EXTENDED * WIDTH * 32 or len(mu) != 64:
        raise MultiplicationCheckError("answer has the wrong size")
    gamma = state._ext.outputs(sid, WIDTH)
    bits = state._ext.choice_bits
    at = [int.from_bytes(a_tilde[32 * i : 32 * (i + 1)], "big") for i in range(EXTENDED * WIDTH)]
    if max(at) >= _Q:  # every row, whatever β: canonical scalars only (spec P10)
        raise MultiplicationCheckError("a row of the answer is not a canonical scalar")
    th0, th1 = _theta(sid, a_tilde)
    q = _Q
    d_dot = [
        ((gam[0] + at[3 * j]) % q, (gam[1] + at[3 * j + 1]) % q, (gam[2] + at[3 * j + 2]) % q) if bit else gam
        for j, (gam, bit) in enumerate(zip(gamma, bits, strict=True))
    ]
    check = _mu(sid, [(d[2] + th0 * d[0] + th1 * d[1] - bit * eta) % _Q for d, bit in zip(d_dot, bits, strict=True)])
    if not hmac.compare_digest(check, mu):
        raise MultiplicationCheckError("multiplication check failed")
    d0 = sum(g * d[0] for g, d in zip(gadget, d_dot, strict=True)) % _Q
    d1 = sum(g * d[1] for g, d in zip(gadget, d_dot, strict=True)) % _Q
    return d0, d1
