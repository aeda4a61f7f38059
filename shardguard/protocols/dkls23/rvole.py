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

Scalar arithmetic is Python ``int`` (not constant-time; docs/SECURITY.md). The OT-extension
outputs are taken *unreduced* (< 2^384, congruent mod q to the spec's scalars): every value
derived from them is reduced mod q before it is encoded, hashed, compared or returned, so
the results are exactly those of reducing first.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from itertools import repeat
from typing import Literal

from shardguard.crypto.group import Rng
from shardguard.crypto.ot.extension import EXTENDED, ExtensionMessage, ReceiverExtension, extend_receive, extend_send
from shardguard.crypto.secp256k1 import SECP256K1

__all__ = ["WIDTH", "BobState", "MultiplicationCheckError", "alice_answer", "bob_finish", "bob_start"]

#: ℓ + ρ scalars per extended OT.
WIDTH = 3
_Q = SECP256K1.order
_BIG: Literal["big"] = "big"  # for map(int.from_bytes, …, repeat(_BIG))


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
    """``values`` must be reduced mod q."""
    return hashlib.shake_256(b"shardguard/rvole/mu/v1\x00" + sid + b"".join([v.to_bytes(32, "big") for v in values])).digest(64)


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
    v0, v1 = ext.unreduced_outputs(sid, WIDTH)  # < 2^384: reduce mod q before any use below
    a0, a1 = inputs
    a_hat = SECP256K1.random_scalar(rng)
    q = _Q
    rows = [
        v.to_bytes(32, "big")
        for (x0, y0, z0), (x1, y1, z1) in zip(v0, v1, strict=True)
        for v in ((x0 - x1 + a0) % q, (y0 - y1 + a1) % q, (z0 - z1 + a_hat) % q)
    ]
    a_tilde = b"".join(rows)
    th0, th1 = _theta(sid, a_tilde)
    eta = (a_hat + th0 * a0 + th1 * a1) % q
    mu = _mu(sid, [(z + th0 * x + th1 * y) % q for x, y, z in v0])
    c0 = -sum([g * x[0] for g, x in zip(gadget, v0, strict=True)]) % q
    c1 = -sum([g * x[1] for g, x in zip(gadget, v0, strict=True)]) % q
    return (c0, c1), a_tilde, eta, mu


def bob_finish(state: BobState, sid: bytes, a_tilde: bytes, eta: int, mu: bytes, gadget: Sequence[int]) -> tuple[int, int]:
    """Bob's shares ``(d_0, d_1)``. Raises :class:`MultiplicationCheckError`."""
    if len(a_tilde) != EXTENDED * WIDTH * 32 or len(mu) != 64:
        raise MultiplicationCheckError("answer has the wrong size")
    gamma = state._ext.unreduced_outputs(sid, WIDTH)  # < 2^384: reduce mod q before any use below
    bits = state._ext.choice_bits
    at = list(map(int.from_bytes, [a_tilde[k : k + 32] for k in range(0, len(a_tilde), 32)], repeat(_BIG)))
    if max(at) >= _Q:  # every row, whatever β: canonical scalars only (spec P10)
        raise MultiplicationCheckError("a row of the answer is not a canonical scalar")
    th0, th1 = _theta(sid, a_tilde)
    q = _Q
    d_dot = [  # unreduced too: ḋ_j ≡ γ_j + β_j·ã_j (mod q)
        (gam[0] + x, gam[1] + y, gam[2] + z) if bit else gam
        for gam, bit, x, y, z in zip(gamma, bits, at[0::3], at[1::3], at[2::3], strict=True)
    ]
    check = _mu(sid, [(z + th0 * x + th1 * y - bit * eta) % q for (x, y, z), bit in zip(d_dot, bits, strict=True)])
    if not hmac.compare_digest(check, mu):
        raise MultiplicationCheckError("multiplication check failed")
    d0 = sum([g * d[0] for g, d in zip(gadget, d_dot, strict=True)]) % q
    d1 = sum([g * d[1] for g, d in zip(gadget, d_dot, strict=True)]) % q
    return d0, d1
