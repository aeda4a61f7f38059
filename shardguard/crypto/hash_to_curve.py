"""RFC 9380 hashing to secp256k1: suites ``secp256k1_XMD:SHA-256_SSWU_RO_`` and ``_NU_`` (§8.7).

.. danger:: hazmat. The field arithmetic here runs on Python ``int`` and is **not constant-time**
   (timing depends on the values, and on which branch of the simplified SWU map is taken). That is
   acceptable only because, in ShardGuard's use, the hashed messages are public, or the caller
   treats the result as public (it computes both branches itself). Do not hash secrets with this.

The suite (RFC 9380 §8.7):

* ``hash_to_field`` (§5.2) with ``expand_message_xmd`` over SHA-256 (§5.3.1), m = 1, L = 48
  (k = 128). ``expand_message_xmd`` rejects DSTs longer than 255 bytes (§5.3.3 would hash them;
  we reject instead).
* ``map_to_curve``: simplified SWU for AB == 0 (§6.6.3): the simplified SWU map (§6.6.2) onto the
  curve ``E': y'^2 = g'(x') = x'^3 + A'·x' + B'`` with ``Z = -11``, followed by the 3-isogeny
  ``iso_map`` from E' to secp256k1 ``E: y^2 = x^3 + 7`` (Appendix E.1).
* ``clear_cofactor`` is the identity map (h_eff = 1, §7).
* ``hash_to_curve`` (RO, §3) maps two field elements and adds the points (in libsecp256k1);
  ``encode_to_curve`` (NU, §3) maps one.

Two implementations of ``map_to_curve`` give the same output:

* :func:`map_to_curve_secp256k1_reference`: the straight-line simplified SWU of Appendix F.2 with
  ``sqrt_ratio`` for q = 3 mod 4 (Appendix F.2.1.2), then ``iso_map``. It needs one 256-bit modular
  exponentiation per field element, which in CPython costs a few hundred µs.
* :func:`map_to_curve_secp256k1` (used by the hash functions): the same map, with the square root
  taken by libsecp256k1 instead. Write ``iso_map(x', y') = (X(x'), y'·Y(x'))`` with
  ``X = x_num / x_den`` and ``Y = y_num / y_den`` (Appendix E.1). Since ``iso_map`` sends E' onto E,
  ``X(x')^3 + 7 = Y(x')^2 · g'(x')`` holds as an identity of rational functions (the tests check it).
  So, where ``Y(x') != 0``: ``g'(x')`` is square ⇔ ``X(x')^3 + 7`` is square ⇔ libsecp256k1 accepts
  the SEC1 compressed encoding ``02 ‖ X(x')``. That decides between ``x1`` and ``x2`` (§6.6.2
  steps 7-8) without a square root in Python. The decoded point has some ``y_E`` with
  ``y_E^2 = X^3 + 7``; then ``y' = y_E / Y(x')`` is a square root of ``g'(x')``, the sign rule
  ``sgn0(y') == sgn0(u)`` (§6.6.2 step 9, §4.1) fixes which one, and the output is
  ``(X(x'), ±y_E)`` accordingly. All divisions share one field inversion (Montgomery's trick).
  If a denominator vanished, the input would go to the reference path, which returns the identity
  for iso_map's exceptional cases as §6.6.3 requires. For this suite that fallback is only
  defensive: ``x_den`` and ``y_den`` vanish only at the x of the isogeny's kernel, ``y_num`` has no
  root in the field, and neither candidate ``x1`` nor ``x2`` equals that x for any ``u`` (see
  ``tests/crypto/test_hash_to_curve.py``).

Cost: one field inversion, about 110 modular multiplications and three or four libsecp256k1 point
decodings per ``hash_to_curve`` call; the reference path is about 3-4 times slower.
"""

from __future__ import annotations

from collections.abc import Sequence

from coincurve import PublicKey

from shardguard.crypto.group import Point
from shardguard.crypto.hashing import hash_to_field_sha256_multi
from shardguard.crypto.secp256k1 import SECP256K1

__all__ = [
    "encode_to_curve_secp256k1",
    "hash_to_curve_secp256k1",
    "iso_map_secp256k1",
    "map_to_curve_secp256k1",
    "map_to_curve_secp256k1_reference",
    "map_to_curve_simple_swu_iso",
]

# -- suite constants (RFC 9380 §8.7) ---------------------------------------------------------------
_P = 2**256 - 2**32 - 2**9 - 2**8 - 2**7 - 2**6 - 2**4 - 1
if SECP256K1.field_prime != _P:  # at import: a broken constant, never input
    raise RuntimeError("hash_to_curve: secp256k1 field prime mismatch")
# E': y'^2 = x'^3 + A'·x' + B'
_A = 0x3F8731ABDD661ADCA08A5558F0F5D272E953D363CB6F0E5D405447C01A444533
_B = 1771
_Z = _P - 11  # Z = -11

# sqrt_ratio_3mod4 constants (Appendix F.2.1.2): c1 = (q - 3) / 4, c2 = sqrt(-Z).
_SQRT_C1 = (_P - 3) // 4
_SQRT_C2 = pow(11, (_P + 1) // 4, _P)
if _SQRT_C2 * _SQRT_C2 % _P != 11:
    raise RuntimeError("hash_to_curve: sqrt(-Z) constant is wrong")

# 3-isogeny constants k_(i,j) (Appendix E.1).
_K10 = 0x8E38E38E38E38E38E38E38E38E38E38E38E38E38E38E38E38E38E38DAAAAA8C7
_K11 = 0x07D3D4C80BC321D5B9F315CEA7FD44C5D595D2FC0BF63B92DFFF1044F17C6581
_K12 = 0x534C328D23F234E6E2A413DECA25CAECE4506144037C40314ECBD0B53D9DD262
_K13 = 0x8E38E38E38E38E38E38E38E38E38E38E38E38E38E38E38E38E38E38DAAAAA88C
_K20 = 0xD35771193D94918A9CA34CCBB7B640DD86CD409542F8487D9FE6B745781EB49B
_K21 = 0xEDADC6F64383DC1DF7C4B2D51B54225406D36B641F5E41BBC52A56612A8C6D14
_K30 = 0x4BDA12F684BDA12F684BDA12F684BDA12F684BDA12F684BDA12F684B8E38E23C
_K31 = 0xC75E0C32D5CB7C0FA9D0A54B12A0A6D5647AB046D686DA6FDFFC90FC201D71A3
_K32 = 0x29A6194691F91A73715209EF6512E576722830A201BE2018A765E85A9ECEE931
_K33 = 0x2F684BDA12F684BDA12F684BDA12F684BDA12F684BDA12F684BDA12F38E38D84
_K40 = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFF93B
_K41 = 0x7A06534BB8BDB49FD5E9E6632722C2989467C1BFC8E8D978DFB425D2685C2573
_K42 = 0x6484AA716545CA2CF3A70C3FA8FE337E0A3D21162F0D6299A7BF8192BFD2A76F

_AZ = _A * _Z % _P
_B_OVER_A = _B * pow(_A, -1, _P) % _P


def _affine_to_point(xy: tuple[int, int] | None) -> Point:
    """An affine point of E (``None`` = identity) as a group element, via its SEC1 uncompressed encoding."""
    if xy is None:
        return SECP256K1.identity()
    return Point(SECP256K1, PublicKey(b"\x04" + xy[0].to_bytes(32, "big") + xy[1].to_bytes(32, "big")))


# -- reference map_to_curve ------------------------------------------------------------------------
def _sqrt_ratio_3mod4(u: int, v: int) -> tuple[bool, int]:
    """RFC 9380 Appendix F.2.1.2 ``sqrt_ratio_3mod4(u, v)`` (v != 0), branching instead of CMOV.

    Returns ``(True, sqrt(u / v))`` if ``u / v`` is square, else ``(False, sqrt(Z · u / v))``.
    """
    p = _P
    tv1 = v * v % p
    tv2 = u * v % p
    tv1 = tv1 * tv2 % p
    y1 = pow(tv1, _SQRT_C1, p) * tv2 % p
    tv3 = y1 * y1 % p * v % p
    if tv3 == u % p:
        return True, y1
    return False, y1 * _SQRT_C2 % p


def map_to_curve_simple_swu_iso(u: int) -> tuple[int, int]:
    """RFC 9380 §6.6.2 simplified SWU onto E' (straight-line form, Appendix F.2), Z = -11.

    Returns the affine point ``(x', y')`` of ``E': y'^2 = x'^3 + A'·x' + B'`` (§8.7 constants).
    """
    p = _P
    u %= p
    tv1 = _Z * u % p * u % p  # 1-2.  tv1 = Z·u^2
    tv2 = (tv1 * tv1 + tv1) % p  # 3-4.  tv2 = tv1^2 + tv1
    tv3 = _B * (tv2 + 1) % p  # 5-6.  tv3 = B·(tv2 + 1)
    tv4 = _A * (p - tv2) % p if tv2 else _AZ  # 7-8.  tv4 = A·CMOV(Z, -tv2, tv2 != 0)
    tv6 = tv4 * tv4 % p  # 10
    tv2 = (tv3 * tv3 + _A * tv6) % p * tv3 % p  # 9, 11-13
    tv6 = tv6 * tv4 % p  # 14
    tv2 = (tv2 + _B * tv6) % p  # 15-16
    is_gx1_square, y1 = _sqrt_ratio_3mod4(tv2, tv6)  # 18
    if is_gx1_square:  # 17, 19-22
        x, y = tv3, y1
    else:
        x, y = tv1 * tv3 % p, tv1 * u % p * y1 % p
    if (u & 1) != (y & 1):  # 23-24: sgn0(u) == sgn0(y) (§4.1, m = 1)
        y = p - y
    return x * pow(tv4, -1, p) % p, y  # 25.  x = x / tv4


def iso_map_secp256k1(x: int, y: int) -> tuple[int, int] | None:
    """RFC 9380 Appendix E.1: the 3-isogeny from E' to secp256k1.

    Returns ``(x_num / x_den, y · y_num / y_den)``, or ``None`` (the identity of E) where a
    denominator vanishes (§6.6.3 "Exceptions").
    """
    p = _P
    x_num = ((_K13 * x + _K12) % p * x + _K11) % p * x + _K10
    x_den = ((x + _K21) * x + _K20) % p
    y_num = ((_K33 * x + _K32) % p * x + _K31) % p * x + _K30
    y_den = ((x + _K42) * x + _K41) % p * x + _K40
    y_den %= p
    if x_den == 0 or y_den == 0:
        return None
    inv = pow(x_den * y_den, -1, p)
    return x_num * y_den % p * inv % p, y * y_num % p * x_den % p * inv % p


def map_to_curve_secp256k1_reference(u: int) -> tuple[int, int] | None:
    """RFC 9380 §6.6.3 ``map_to_curve`` for secp256k1 (slow reference): SSWU to E', then iso_map.

    Returns the affine point of secp256k1, or ``None`` for the identity.
    """
    return iso_map_secp256k1(*map_to_curve_simple_swu_iso(u))


# -- fast map_to_curve -----------------------------------------------------------------------------
def _map_fast(us: Sequence[int]) -> list[object] | None:
    """``map_to_curve`` (§6.6.3) of each ``u`` in ``[0, p)`` as a libsecp256k1 point; square roots in C.

    See the module docstring for why this equals the reference map. Returns ``None`` if any input
    hits a vanishing denominator (the caller then uses the reference path).
    """
    p = _P
    # Per u, simplified SWU steps 1-8 (Appendix F.2) give the candidates x1 = n1 / d and x2 = n2 / d on E'.
    # For x' = n / d, the Appendix E.1 polynomials homogenised by d^3 are XN = x_num·d^3, XD = x_den·d^3,
    # YN = y_num·d^3 and YD = y_den·d^3, so X(x') = XN / XD and Y(x') = YN / YD.
    cands: list[tuple[int, int, int, int]] = []  # (n, XN, XD, YN) for u0.x1, u0.x2, u1.x1, ...
    dens: list[tuple[int, int, int]] = []  # (d, d^2, d^3) per u
    for u in us:
        tv1 = _Z * u % p * u % p  # Z·u^2
        tv2 = (tv1 * tv1 + tv1) % p
        # x1 = B'·(tv2 + 1) / (A'·CMOV(Z, -tv2, tv2 != 0)); numerator and denominator both divided by A'.
        n1 = _B_OVER_A * (tv2 + 1) % p
        d = p - tv2 if tv2 else _Z
        d2 = d * d % p
        d3 = d2 * d % p
        dens.append((d, d2, d3))
        a12, a11, a10 = _K12 * d % p, _K11 * d2 % p, _K10 * d3 % p
        b21, b20 = _K21 * d % p, _K20 * d2 % p
        c32, c31, c30 = _K32 * d % p, _K31 * d2 % p, _K30 * d3 % p
        for n in (n1, tv1 * n1 % p):  # x1 = n1 / d, x2 = Z·u^2·x1
            xn = ((_K13 * n + a12) * n + a11) % p * n + a10
            xd = ((n + b21) * n + b20) % p * d % p
            yn = (((_K33 * n + c32) * n + c31) % p * n + c30) % p
            cands.append((n, xn, xd, yn))
    # One inversion for all W = XD·YN (Montgomery's trick).
    ws = [xd * yn % p for _, _, xd, yn in cands]
    prefix = [1]
    for w in ws:
        prefix.append(prefix[-1] * w % p)
    if prefix[-1] == 0:
        return None
    inv = pow(prefix[-1], -1, p)
    inv_ws = [0] * len(ws)
    for i in range(len(ws) - 1, -1, -1):
        inv_ws[i] = inv * prefix[i] % p
        inv = inv * ws[i] % p

    out: list[object] = []
    for j, u in enumerate(us):
        d, d2, d3 = dens[j]
        for k in (2 * j, 2 * j + 1):
            n, xn, xd, yn = cands[k]
            x_bytes = (xn % p * yn % p * inv_ws[k] % p).to_bytes(32, "big")  # X = XN / XD = XN·YN / W
            try:  # §6.6.2 steps 7-8: x1 if g'(x1) is square, else x2
                pk = PublicKey(b"\x02" + x_bytes)  # decodes ⇔ X^3 + 7 square ⇔ g'(x') square
            except ValueError:
                continue
            break
        else:
            return None  # unreachable when every W != 0; defer to the reference path anyway
        yd = (((n + _K42 * d) % p * n + _K41 * d2) % p * n + _K40 * d3) % p
        if yd == 0:
            return None
        y_e = int.from_bytes(pk.format(compressed=False)[33:], "big")
        y_iso = y_e * yd % p * xd % p * inv_ws[k] % p  # y' = y_E / Y(x') = y_E·YD / YN = y_E·YD·XD / W
        if (y_iso & 1) != (u & 1):  # §6.6.2 step 9: sgn0(y') == sgn0(u); flips y' and y_E together
            pk = PublicKey(b"\x04" + x_bytes + (p - y_e).to_bytes(32, "big"))
        out.append(pk)
    return out


def map_to_curve_secp256k1(u: int) -> Point:
    """RFC 9380 §6.6.3 ``map_to_curve`` for secp256k1 (SSWU to E' then the Appendix E.1 isogeny)."""
    u %= _P
    raws = _map_fast([u])
    if raws is None:
        return _affine_to_point(map_to_curve_secp256k1_reference(u))
    return Point(SECP256K1, raws[0])


# -- encodings -------------------------------------------------------------------------------------
def hash_to_curve_secp256k1(msg: bytes, dst: bytes) -> Point:
    """RFC 9380 §3 ``hash_to_curve`` for suite ``secp256k1_XMD:SHA-256_SSWU_RO_`` (§8.7).

    ``u = hash_to_field(msg, 2)`` (§5.2); ``Q0, Q1 = map_to_curve(u[0]), map_to_curve(u[1])``;
    returns ``Q0 + Q1`` (clear_cofactor is the identity, h_eff = 1). Raises ``ValueError`` if
    ``dst`` is longer than 255 bytes.
    """
    us = hash_to_field_sha256_multi(msg, dst, 2, _P)
    raws = _map_fast(us)
    if raws is None:
        q0, q1 = (_affine_to_point(map_to_curve_secp256k1_reference(u)) for u in us)
    else:
        q0, q1 = Point(SECP256K1, raws[0]), Point(SECP256K1, raws[1])
    return q0 + q1


def encode_to_curve_secp256k1(msg: bytes, dst: bytes) -> Point:
    """RFC 9380 §3 ``encode_to_curve`` for suite ``secp256k1_XMD:SHA-256_SSWU_NU_`` (§8.7).

    Nonuniform (§10.4): use :func:`hash_to_curve_secp256k1` unless the protocol asks for NU.
    Raises ``ValueError`` if ``dst`` is longer than 255 bytes.
    """
    (u,) = hash_to_field_sha256_multi(msg, dst, 1, _P)
    return map_to_curve_secp256k1(u)
