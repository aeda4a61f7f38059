"""RFC 9380 hash-to-curve for secp256k1 (``secp256k1_XMD:SHA-256_SSWU_RO_`` / ``_NU_``).

Vectors: RFC 9380 Appendix J.8.1 / J.8.2 (u values, Q0/Q1/Q and P). Properties: the fast map (square
roots in libsecp256k1) equals the RFC straight-line reference map, outputs are valid points, the
3-isogeny of Appendix E.1 sends E' onto secp256k1, and DST handling.
"""

from __future__ import annotations

from typing import Any

import pytest
from coincurve import PublicKey
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shardguard.crypto import hash_to_curve as h2c
from shardguard.crypto.group import Point
from shardguard.crypto.hash_to_curve import (
    encode_to_curve_secp256k1,
    hash_to_curve_secp256k1,
    iso_map_secp256k1,
    map_to_curve_secp256k1,
    map_to_curve_secp256k1_reference,
    map_to_curve_simple_swu_iso,
)
from shardguard.crypto.hashing import hash_to_field_sha256, hash_to_field_sha256_multi
from shardguard.crypto.secp256k1 import SECP256K1
from tests.helpers.vectors import VECTORS, h, load

P = 2**256 - 2**32 - 977
A_ISO = 0x3F8731ABDD661ADCA08A5558F0F5D272E953D363CB6F0E5D405447C01A444533  # A' (§8.7)
B_ISO = 1771  # B'
Z = P - 11

RO = load(VECTORS / "rfc9380-secp256k1-sha256-ro.json")
NU = load(VECTORS / "rfc9380-secp256k1-sha256-nu.json")
RO_IDS = [v["msg_ascii"][:8] or "empty" for v in RO["vectors"]]
NU_IDS = [v["msg_ascii"][:8] or "empty" for v in NU["vectors"]]

field = st.integers(min_value=0, max_value=P - 1)


def _xy(pt: Point) -> tuple[int, int]:
    raw = PublicKey(SECP256K1.encode(pt)).format(compressed=False)
    return int.from_bytes(raw[1:33], "big"), int.from_bytes(raw[33:], "big")


def _hex_xy(d: dict[str, str]) -> tuple[int, int]:
    return int(d["x"], 16), int(d["y"], 16)


def _sqrt(a: int) -> int | None:
    r = pow(a, (P + 1) // 4, P)
    return r if r * r % P == a % P else None


def _inv(a: int) -> int:
    return pow(a, -1, P)


def _g_iso(x: int) -> int:
    return (x * x * x + A_ISO * x + B_ISO) % P


# -- RFC 9380 Appendix J.8 vectors -----------------------------------------------------------------
def test_vector_files_are_the_expected_suites() -> None:
    assert RO["suite"] == "secp256k1_XMD:SHA-256_SSWU_RO_" and NU["suite"] == "secp256k1_XMD:SHA-256_SSWU_NU_"
    assert h(RO["dst"]) == b"QUUX-V01-CS02-with-secp256k1_XMD:SHA-256_SSWU_RO_" == RO["dst_ascii"].encode()
    assert h(NU["dst"]) == b"QUUX-V01-CS02-with-secp256k1_XMD:SHA-256_SSWU_NU_" == NU["dst_ascii"].encode()
    for doc in (RO, NU):
        assert [len(v["msg_ascii"]) for v in doc["vectors"]] == [0, 3, 16, 133, 517]
        assert all(h(v["msg"]) == v["msg_ascii"].encode() for v in doc["vectors"])


@pytest.mark.parametrize("v", RO["vectors"], ids=RO_IDS)
def test_ro_vectors(v: dict[str, Any]) -> None:
    msg, dst = h(v["msg"]), h(RO["dst"])
    us = hash_to_field_sha256_multi(msg, dst, 2, P)
    assert [f"{u:064x}" for u in us] == v["u"]
    for u, q in zip(us, (v["q0"], v["q1"])):
        expected = _hex_xy(q)
        assert map_to_curve_secp256k1_reference(u) == expected
        assert _xy(map_to_curve_secp256k1(u)) == expected
    assert _xy(hash_to_curve_secp256k1(msg, dst)) == _hex_xy(v["p"])


@pytest.mark.parametrize("v", NU["vectors"], ids=NU_IDS)
def test_nu_vectors(v: dict[str, Any]) -> None:
    msg, dst = h(v["msg"]), h(NU["dst"])
    (u,) = hash_to_field_sha256_multi(msg, dst, 1, P)
    assert [f"{u:064x}"] == v["u"]
    assert map_to_curve_secp256k1_reference(u) == _hex_xy(v["q"])
    assert _xy(encode_to_curve_secp256k1(msg, dst)) == _hex_xy(v["p"]) == _hex_xy(v["q"])


def test_reference_fallback_path_gives_the_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the fast map declines (vanishing denominator), the reference path takes over."""
    monkeypatch.setattr(h2c, "_map_fast", lambda us: None)
    for v in RO["vectors"]:
        assert _xy(hash_to_curve_secp256k1(h(v["msg"]), h(RO["dst"]))) == _hex_xy(v["p"])
    for v in NU["vectors"]:
        assert _xy(encode_to_curve_secp256k1(h(v["msg"]), h(NU["dst"]))) == _hex_xy(v["p"])


def test_hash_to_field_multi_matches_single() -> None:
    for msg in (b"", b"abc", b"x" * 300):
        assert hash_to_field_sha256_multi(msg, b"D", 1, P) == [hash_to_field_sha256(msg, b"D", P)]
    with pytest.raises(ValueError):
        hash_to_field_sha256_multi(b"", b"D", 0, P)


# -- properties ------------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(field)
@example(0)
@example(1)
@example(P - 1)
@example(P - 11)  # Z
def test_fast_map_equals_reference(u: int) -> None:
    ref = map_to_curve_secp256k1_reference(u)
    assert ref is not None
    x, y = ref
    assert (y * y - x * x * x - 7) % P == 0
    assert _xy(map_to_curve_secp256k1(u)) == ref
    assert map_to_curve_secp256k1(u + P) == map_to_curve_secp256k1(u)  # u is reduced mod p


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200), st.binary(min_size=1, max_size=255))
def test_outputs_are_valid_deterministic_points(msg: bytes, dst: bytes) -> None:
    for f in (hash_to_curve_secp256k1, encode_to_curve_secp256k1):
        pt = f(msg, dst)
        assert pt.group is SECP256K1 and not pt.is_identity
        enc = SECP256K1.encode(pt)
        assert SECP256K1.decode(enc) == pt
        assert f(msg, dst) == pt
    # RO = map(u0) + map(u1), NU = map(u0) (§3), with the hash_to_field outputs of each.
    u0, u1 = hash_to_field_sha256_multi(msg, dst, 2, P)
    assert hash_to_curve_secp256k1(msg, dst) == map_to_curve_secp256k1(u0) + map_to_curve_secp256k1(u1)
    (u,) = hash_to_field_sha256_multi(msg, dst, 1, P)
    assert encode_to_curve_secp256k1(msg, dst) == map_to_curve_secp256k1(u)


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=64), st.binary(min_size=1, max_size=64), st.binary(min_size=1, max_size=64))
def test_different_dsts_give_different_points(msg: bytes, dst1: bytes, dst2: bytes) -> None:
    if dst1 == dst2:
        return
    assert hash_to_curve_secp256k1(msg, dst1) != hash_to_curve_secp256k1(msg, dst2)
    assert encode_to_curve_secp256k1(msg, dst1) != encode_to_curve_secp256k1(msg, dst2)


def test_different_messages_and_suites_give_different_points() -> None:
    dst = b"SHARDGUARD-TEST-V1"
    pts = {hash_to_curve_secp256k1(m, dst) for m in (b"", b"a", b"b", b"ab", b"\x00")}
    assert len(pts) == 5
    assert hash_to_curve_secp256k1(b"a", dst) != encode_to_curve_secp256k1(b"a", dst)


def test_dst_longer_than_255_bytes_is_rejected() -> None:
    hash_to_curve_secp256k1(b"m", b"d" * 255)
    encode_to_curve_secp256k1(b"m", b"d" * 255)
    for f in (hash_to_curve_secp256k1, encode_to_curve_secp256k1):
        with pytest.raises(ValueError, match="DST"):
            f(b"m", b"d" * 256)


# -- the simplified SWU map and the 3-isogeny (§6.6.2, §6.6.3, Appendix E.1) -----------------------
@settings(max_examples=60, deadline=None)
@given(field)
def test_sswu_lands_on_the_isogenous_curve_with_the_sign_of_u(u: int) -> None:
    x, y = map_to_curve_simple_swu_iso(u)
    assert y * y % P == _g_iso(x)
    assert y & 1 == u & 1  # sgn0(y) == sgn0(u), §6.6.2


def _iso_curve_point(seed: int) -> tuple[int, int]:
    x = seed % P
    while (y := _sqrt(_g_iso(x))) is None:
        x = (x + 1) % P
    return x, y


def _iso_add(p1: tuple[int, int], p2: tuple[int, int]) -> tuple[int, int]:
    """Affine addition on E' (distinct x); only for this test."""
    (x1, y1), (x2, y2) = p1, p2
    lam = (y2 - y1) * pow(x2 - x1, -1, P) % P
    x3 = (lam * lam - x1 - x2) % P
    return x3, (lam * (x1 - x3) - y1) % P


@settings(max_examples=25, deadline=None)
@given(field, field)
def test_isogeny_maps_iso_curve_onto_secp256k1(s1: int, s2: int) -> None:
    q1, q2 = _iso_curve_point(s1), _iso_curve_point(s2)
    e1, e2 = iso_map_secp256k1(*q1), iso_map_secp256k1(*q2)
    assert e1 is not None and e2 is not None
    for x, y in (e1, e2):
        assert (y * y - x * x * x - 7) % P == 0
        PublicKey(b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big"))  # libsecp256k1 accepts it
    # iso_map is a group homomorphism (§6.6.3): iso(Q1 + Q2) = iso(Q1) + iso(Q2).
    if q1[0] != q2[0]:
        e3 = iso_map_secp256k1(*_iso_add(q1, q2))
        assert e3 is not None

        def pt(xy: tuple[int, int]) -> Point:
            return Point(SECP256K1, PublicKey(b"\x04" + xy[0].to_bytes(32, "big") + xy[1].to_bytes(32, "big")))

        assert pt(e3) == pt(e1) + pt(e2)


@settings(max_examples=40, deadline=None)
@given(field)
def test_isogeny_identity_used_by_the_fast_map(x: int) -> None:
    """X(x')^3 + 7 == Y(x')^2 · g'(x') for every x' off the kernel (module docstring)."""
    x_num = ((h2c._K13 * x + h2c._K12) * x + h2c._K11) * x + h2c._K10
    x_den = (x + h2c._K21) * x + h2c._K20
    y_num = ((h2c._K33 * x + h2c._K32) * x + h2c._K31) * x + h2c._K30
    y_den = ((x + h2c._K42) * x + h2c._K41) * x + h2c._K40
    if x_den % P == 0 or y_den % P == 0:
        return
    big_x = x_num * pow(x_den, -1, P) % P
    big_y = y_num * pow(y_den, -1, P) % P
    assert (big_x**3 + 7) % P == big_y * big_y * _g_iso(x) % P


def test_isogeny_kernel_is_never_reached() -> None:
    """Both denominators vanish only at x_T = -k_(2,1)/2 (the x of the kernel), where g'(x_T) is not
    square; and neither SWU candidate x1 nor x2 equals x_T for any u. So iso_map's exceptional case
    (§6.6.3) never happens for this suite, and the fast map's fallback is only defensive."""
    x_t = -h2c._K21 * _inv(2) % P
    assert ((x_t + h2c._K21) * x_t + h2c._K20) % P == 0
    assert (((x_t + h2c._K42) * x_t + h2c._K41) * x_t + h2c._K40) % P == 0
    assert _sqrt(_g_iso(x_t)) is None
    assert iso_map_secp256k1(x_t, 1) is None  # the exceptional case returns the identity
    c = -x_t * A_ISO * _inv(B_ISO) % P  # x_T = -(B'/A')·c
    # u = 0: x1 = B'/(Z·A'), x2 = 0.
    assert x_t not in (B_ISO * _inv(Z * A_ISO) % P, 0)
    # x1 = -(B'/A')(1 + 1/t) with t = Z^2·u^4 + Z·u^2 != 0: t = 1/(c - 1), a quadratic in w = u^2.
    t = _inv(c - 1)
    s = _sqrt((Z * Z + 4 * Z * Z * t) % P)
    assert s is None or all(_sqrt((-Z + r) * _inv(2 * Z * Z) % P) is None for r in (s, -s))
    # x2 = Z·u^2·x1 = -(B'/A')(v + 1/(v + 1)) with v = Z·u^2: v^2 + (1 - c)·v + (1 - c) = 0.
    b = (1 - c) % P
    s = _sqrt((b * b - 4 * b) % P)
    assert s is None or all(_sqrt((-b + r) * _inv(2) % P * _inv(Z) % P) is None for r in (s, -s))


def _trim(a: list[int]) -> list[int]:
    while a and a[-1] == 0:
        a = a[:-1]
    return a


def _poly_mod(a: list[int], b: list[int]) -> list[int]:
    """``a mod b`` over F_p; coefficients low to high, ``b`` trimmed and non-zero."""
    a = _trim([c % P for c in a])
    while len(a) >= len(b):
        q, s = a[-1] * _inv(b[-1]) % P, len(a) - len(b)
        a = _trim([(c - q * b[i - s]) % P if i >= s else c for i, c in enumerate(a)])
    return a


def _poly_mul(a: list[int], b: list[int]) -> list[int]:
    r = [0] * (len(a) + len(b) - 1)
    for i, ai in enumerate(a):
        for j, bj in enumerate(b):
            r[i + j] += ai * bj
    return r


def _has_root(f: list[int]) -> bool:
    """Whether the polynomial ``f`` (low to high) has a root in F_p: ``gcd(f, x^p - x) != 1``."""
    xp, base, e = [1], [0, 1], P  # x^p mod f by square-and-multiply
    while e:
        if e & 1:
            xp = _poly_mod(_poly_mul(xp, base), f)
        base, e = _poly_mod(_poly_mul(base, base), f), e >> 1
    xp = [*xp, 0, 0, 0]
    a, b = f, _trim([xp[0], (xp[1] - 1) % P, *xp[2:]])
    while b:  # Euclid
        a, b = b, _poly_mod(a, b)
    return len(a) > 1


def test_isogeny_denominators_vanish_only_on_the_kernel_and_y_num_never() -> None:
    """x_den = (x - x_T)^2, y_den = (x - x_T)^3, and y_num has no root in F_p, so the fast map's
    W = XD·YN vanishes only at x' = x_T."""
    x_t = -h2c._K21 * _inv(2) % P
    assert (-2 * x_t % P, x_t * x_t % P) == (h2c._K21, h2c._K20)
    assert (-3 * x_t % P, 3 * x_t * x_t % P, -pow(x_t, 3, P) % P) == (h2c._K42, h2c._K41, h2c._K40)
    assert _has_root([h2c._K40, h2c._K41, h2c._K42, 1])  # the check itself finds x_T
    assert not _has_root([h2c._K30, h2c._K31, h2c._K32, h2c._K33])
