"""Shamir / Feldman / Lagrange identities (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardguard.crypto.ed25519 import ED25519
from shardguard.crypto.secp256k1 import SECP256K1
from shardguard.crypto.shamir import (
    eval_commitment,
    eval_polynomial,
    feldman_commit,
    interpolate,
    lagrange_coefficient,
    split_secret,
)
from tests.helpers.rng import DeterministicRng

N = SECP256K1.order


@st.composite
def sharing(draw: st.DrawFn) -> tuple[int, int, list[int], int]:
    n = draw(st.integers(1, 12))
    t = draw(st.integers(1, n))
    ids = draw(st.lists(st.integers(1, 255), min_size=n, max_size=n, unique=True))
    secret = draw(st.integers(0, N - 1))
    return t, n, ids, secret


@settings(max_examples=150, deadline=None)
@given(sharing(), st.integers(0, 2**32), st.randoms())
def test_any_t_subset_recovers_the_secret(params: tuple[int, int, list[int], int], seed: int, rnd: object) -> None:
    t, _, ids, secret = params
    _, shares = split_secret(SECP256K1, secret, t, ids, DeterministicRng(seed))
    subset = ids[:]
    rnd.shuffle(subset)  # type: ignore[attr-defined]
    assert interpolate({i: shares[i] for i in subset[:t]}, N) == secret
    if t > 1:  # t-1 shares interpolate (with overwhelming probability) to something else
        assert interpolate({i: shares[i] for i in subset[: t - 1]}, N) != secret or secret == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 255), min_size=1, max_size=20, unique=True), st.integers(0, N - 1))
def test_lagrange_coefficients_sum_to_one_and_interpolate_x(ids: list[int], x: int) -> None:
    assert sum(lagrange_coefficient(ids, i, N) for i in ids) % N == 1
    # Interpolating the identity polynomial f(X) = X at any x gives x back (degree 1 ≤ |ids|-1).
    if len(ids) >= 2:
        assert sum(lagrange_coefficient(ids, i, N, x) * i for i in ids) % N == x % N


@pytest.mark.parametrize("g", [ED25519, SECP256K1], ids=["ed25519", "secp256k1"])
def test_feldman_commitment_matches_shares(g) -> None:  # type: ignore[no-untyped-def]
    coeffs, shares = split_secret(g, 12345, 3, [1, 2, 7], DeterministicRng(1))
    comm = feldman_commit(g, coeffs)
    for i, s in shares.items():
        assert eval_commitment(g, comm, i) == g.base_mul(s)
        assert eval_polynomial(coeffs, i, g.order) == s
    assert eval_commitment(g, comm, 3) != g.base_mul(shares[7])


def test_lagrange_rejects_bad_sets() -> None:
    for ids, i in (([1, 1, 2], 1), ([1, 2], 3), ([0, 2], 2), ([N, 2], 2)):
        with pytest.raises(ValueError):
            lagrange_coefficient(ids, i, N)
