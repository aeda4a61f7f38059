"""Shamir secret sharing, Feldman commitments and Lagrange coefficients.

.. danger:: hazmat. Polynomial arithmetic on Python ``int`` is not constant-time.

Participant identifiers are non-zero scalars (RFC 9591 §2, Appendix C).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from shardguard.crypto.group import Group, Point, Rng

__all__ = [
    "eval_commitment",
    "eval_polynomial",
    "feldman_commit",
    "interpolate",
    "lagrange_coefficient",
    "random_polynomial",
    "split_secret",
]


def random_polynomial(group: Group, constant: int, degree: int, rng: Rng) -> list[int]:
    """Coefficients ``[a_0 = constant, a_1, …, a_degree]`` with fresh random ``a_k``."""
    return [constant % group.order] + [group.random_scalar(rng) for _ in range(degree)]


def eval_polynomial(coefficients: Sequence[int], x: int, order: int) -> int:
    """Horner's rule (RFC 9591 Appendix C.1 ``polynomial_evaluate``)."""
    acc = 0
    for a in reversed(coefficients):
        acc = (acc * x + a) % order
    return acc


def split_secret(group: Group, secret: int, threshold: int, ids: Iterable[int], rng: Rng) -> tuple[list[int], dict[int, int]]:
    """Shamir-split ``secret`` (RFC 9591 Appendix C ``secret_share_shard``).

    Returns the polynomial coefficients (for Feldman commitments) and ``{id: f(id)}``.
    """
    coeffs = random_polynomial(group, secret, threshold - 1, rng)
    return coeffs, {i: eval_polynomial(coeffs, i, group.order) for i in ids}


def feldman_commit(group: Group, coefficients: Sequence[int]) -> list[Point]:
    """``[a_k·G]`` (RFC 9591 Appendix C.2 ``vss_commit``)."""
    return [group.base_mul(a) for a in coefficients]


def eval_commitment(group: Group, commitment: Sequence[Point], x: int) -> Point:
    """``Σ_k φ_k·x^k``: the public image ``f(x)·G`` of a committed polynomial."""
    powers = [1]
    for _ in range(len(commitment) - 1):
        powers.append(powers[-1] * x % group.order)
    return group.msm(powers, commitment)


def lagrange_coefficient(ids: Sequence[int], i: int, order: int, x: int = 0) -> int:
    """``λ_i(x)`` over the set ``ids`` (RFC 9591 §4.2 ``derive_interpolating_value`` at x = 0).

    Raises :class:`ValueError` on a repeated id, a zero id or ``i`` not in ``ids``.
    """
    if i not in ids:
        raise ValueError("identifier not in the set")
    if len(set(ids)) != len(ids) or any(j % order == 0 for j in ids):
        raise ValueError("identifiers must be distinct and non-zero")
    num, den = 1, 1
    for j in ids:
        if j == i:
            continue
        num = num * (x - j) % order
        den = den * (i - j) % order
    return num * pow(den, -1, order) % order


def interpolate(points: dict[int, int], order: int, x: int = 0) -> int:
    """``f(x)`` from ``{id: f(id)}`` by Lagrange interpolation."""
    ids = list(points)
    return sum(lagrange_coefficient(ids, i, order, x) * y for i, y in points.items()) % order
