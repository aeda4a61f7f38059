"""DKLs23 random vector OLE: correctness, its checks, and bit-exactness.

The hot path works on the OT extension's *unreduced* outputs (congruent mod q); these tests pin
it to the reduce-first formulation of the spec, and to a known answer recorded before that
optimisation.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

import pytest

from shardguard.crypto.ot import base
from shardguard.crypto.ot.extension import ExtensionMessage, extend_send
from shardguard.crypto.secp256k1 import SECP256K1
from shardguard.protocols.dkls23 import rvole
from shardguard.protocols.dkls23.keys import gadget_vector
from tests.helpers.rng import DeterministicRng

Q = SECP256K1.order
OTE_SID = bytes(range(32))
GADGET = gadget_vector(b"\x5a" * 32)
BaseOts = tuple[list[bytes], list[bytes], bytes, list[bytes]]
Answer = tuple[tuple[int, int], bytes, int, bytes]


@pytest.fixture(scope="module")
def ots() -> BaseOts:
    rng = DeterministicRng(4242)
    delta = rng(32)
    state, m1 = base.receiver_start(OTE_SID, delta, rng)
    s0, s1, m2 = base.sender_respond(OTE_SID, m1, rng)
    return s0, s1, delta, base.receiver_finish(state, OTE_SID, m2)


def _encode(values: Sequence[int]) -> bytes:
    return b"".join(v.to_bytes(32, "big") for v in values)


def _mu(sid: bytes, values: Sequence[int]) -> bytes:
    return hashlib.shake_256(b"shardguard/rvole/mu/v1\x00" + sid + _encode(values)).digest(64)


def _theta(sid: bytes, a_tilde: bytes) -> tuple[int, int]:
    d = hashlib.shake_256(b"shardguard/rvole/theta/v1\x00" + sid + a_tilde).digest(96)
    return int.from_bytes(d[:48], "big") % Q, int.from_bytes(d[48:], "big") % Q


def _reference_answer(
    ots: BaseOts, msg: ExtensionMessage, sid: bytes, inputs: tuple[int, int], seed: int
) -> Answer:
    """Alice, straight from the spec: every OT-extension output reduced mod q first."""
    _, _, delta, chosen = ots
    v0, v1 = extend_send(OTE_SID, delta, chosen, msg).outputs(sid, rvole.WIDTH)
    a0, a1 = inputs
    a_hat = SECP256K1.random_scalar(DeterministicRng(seed))
    assert all(0 <= x < Q for row in v0 + v1 for x in row)
    rows = [((x0[0] - x1[0] + a0) % Q, (x0[1] - x1[1] + a1) % Q, (x0[2] - x1[2] + a_hat) % Q) for x0, x1 in zip(v0, v1)]
    a_tilde = _encode([v for row in rows for v in row])
    th0, th1 = _theta(sid, a_tilde)
    mu = _mu(sid, [(x[2] + th0 * x[0] + th1 * x[1]) % Q for x in v0])
    c = (-sum(g * x[0] for g, x in zip(GADGET, v0)) % Q, -sum(g * x[1] for g, x in zip(GADGET, v0)) % Q)
    return c, a_tilde, (a_hat + th0 * a0 + th1 * a1) % Q, mu


def _reference_finish(bob: rvole.BobState, sid: bytes, a_tilde: bytes, eta: int, mu: bytes) -> tuple[int, int] | None:
    """Bob, straight from the spec (None where the real one raises)."""
    gamma = bob._ext.outputs(sid, rvole.WIDTH)
    choices = int.from_bytes(bob._ext._choices, "little")
    bits = [(choices >> j) & 1 for j in range(len(gamma))]
    at = [int.from_bytes(a_tilde[32 * i : 32 * i + 32], "big") for i in range(3 * len(gamma))]
    if max(at) >= Q:
        return None
    th0, th1 = _theta(sid, a_tilde)
    d = [tuple((gam[k] + bit * at[3 * j + k]) % Q for k in range(3)) for j, (gam, bit) in enumerate(zip(gamma, bits))]
    if not hmac.compare_digest(_mu(sid, [(x[2] + th0 * x[0] + th1 * x[1] - bit * eta) % Q for x, bit in zip(d, bits)]), mu):
        return None
    return sum(g * x[0] for g, x in zip(GADGET, d)) % Q, sum(g * x[1] for g, x in zip(GADGET, d)) % Q


def _run(ots: BaseOts, seed: int, inputs: tuple[int, int]) -> tuple[rvole.BobState, ExtensionMessage, Answer, tuple[int, int]]:
    s0, s1, delta, chosen = ots
    bob, msg = rvole.bob_start(OTE_SID, s0, s1, GADGET, DeterministicRng(seed))
    sid = b"rvole-%d" % seed
    answer = rvole.alice_answer(OTE_SID, sid, delta, chosen, msg, inputs, GADGET, DeterministicRng(seed + 1))
    _, a_tilde, eta, mu = answer
    return bob, msg, answer, rvole.bob_finish(bob, sid, a_tilde, eta, mu, GADGET)


INPUTS = [(1, 2), (0, Q - 1), (Q - 1, Q - 1), (0x1234 << 200, 7)]


@pytest.mark.parametrize("inputs", INPUTS)
def test_shares_add_up_to_the_products(ots: BaseOts, inputs: tuple[int, int]) -> None:
    bob, _, ((c0, c1), *_), (d0, d1) = _run(ots, 10, inputs)
    assert (c0 + d0) % Q == inputs[0] * bob.b % Q
    assert (c1 + d1) % Q == inputs[1] * bob.b % Q
    assert all(0 <= v < Q for v in (c0, c1, d0, d1))


@pytest.mark.parametrize(("seed", "inputs"), list(enumerate(INPUTS, start=20)))
def test_bit_identical_to_the_reduce_first_formulas(ots: BaseOts, seed: int, inputs: tuple[int, int]) -> None:
    bob, msg, answer, finish = _run(ots, seed, inputs)
    sid = b"rvole-%d" % seed
    assert answer == _reference_answer(ots, msg, sid, inputs, seed + 1)
    assert finish == _reference_finish(bob, sid, *answer[1:])


def test_known_answer(ots: BaseOts) -> None:
    """Recorded with the implementation that reduced every OT-extension output first."""
    h = hashlib.sha256()
    for seed, inputs in enumerate(INPUTS, start=30):
        bob, _, (c, a_tilde, eta, mu), d = _run(ots, seed, inputs)
        h.update(repr((bob.b, c, eta, d)).encode() + a_tilde + mu)
    assert h.hexdigest() == "342724a97f11be341b42498ff9e2ed4b1cecdbd7c96dc852ba4aa278b37deb68"


def test_a_tampered_answer_is_refused_like_the_reference(ots: BaseOts) -> None:
    bob, _, (_, a_tilde, eta, mu), _ = _run(ots, 40, (3, 4))
    sid = b"rvole-40"
    flipped = bytearray(a_tilde)
    flipped[100] ^= 1
    non_canonical = a_tilde[:64] + Q.to_bytes(32, "big") + a_tilde[96:]
    for at, e, m in ((bytes(flipped), eta, mu), (non_canonical, eta, mu), (a_tilde, eta + 1, mu), (a_tilde, eta + Q, mu)):
        want = _reference_finish(bob, sid, at, e, m)
        if want is None:
            with pytest.raises(rvole.MultiplicationCheckError):
                rvole.bob_finish(bob, sid, at, e, m, GADGET)
        else:
            assert rvole.bob_finish(bob, sid, at, e, m, GADGET) == want
    assert _reference_finish(bob, sid, a_tilde, eta + Q, mu) is not None  # η is only used mod q
