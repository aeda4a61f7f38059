"""Group encodings and every decoding rejection (ISSUE: non-canonical, off-curve, identity,
small-order Ed25519, scalars ≥ order), plus algebraic properties (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardguard.crypto.ed25519 import ED25519
from shardguard.crypto.errors import DecodeError, DecodeReason
from shardguard.crypto.group import Group
from shardguard.crypto.secp256k1 import SECP256K1

GROUPS = [ED25519, SECP256K1]
ids = [g.name for g in GROUPS]

# The 8 small-order points of edwards25519 in canonical encoding (RFC 8032 torsion subgroup).
ED25519_SMALL_ORDER = [
    "0100000000000000000000000000000000000000000000000000000000000000",  # identity (order 1)
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2: (0, -1)
    "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
    "0000000000000000000000000000000000000000000000000000000000000080",  # order 4 (x<0)
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",  # order 8
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",  # order 8
]

scalars = st.integers(min_value=1, max_value=2**252)


def _reason(g: Group, data: bytes) -> DecodeReason:
    with pytest.raises(DecodeError) as e:
        g.decode(data, field="f")
    assert e.value.field == "f" and e.value.suite == g.name
    return e.value.reason


@pytest.mark.parametrize("hexpt", ED25519_SMALL_ORDER)
def test_ed25519_rejects_small_order(hexpt: str) -> None:
    assert _reason(ED25519, bytes.fromhex(hexpt)) in (DecodeReason.SMALL_ORDER, DecodeReason.IDENTITY, DecodeReason.NOT_CANONICAL)


def test_ed25519_rejects_mixed_order_point() -> None:
    # B + T (T of order 8): on the curve, not in the prime-order subgroup.
    from nacl import bindings

    mixed = bindings.crypto_core_ed25519_add(ED25519.generator().to_bytes(), bytes.fromhex(ED25519_SMALL_ORDER[4]))
    assert _reason(ED25519, mixed) is DecodeReason.SMALL_ORDER


def test_ed25519_rejects_non_canonical_and_off_curve() -> None:
    p = 2**255 - 19
    assert _reason(ED25519, (p + 1).to_bytes(32, "little")) is DecodeReason.NOT_CANONICAL  # y = 1 + p
    assert _reason(ED25519, (2).to_bytes(32, "little")) is DecodeReason.NOT_ON_CURVE  # y = 2: x² not a square
    assert _reason(ED25519, b"\x00" * 31) is DecodeReason.WRONG_LENGTH
    assert _reason(ED25519, ED25519.identity().raw) is DecodeReason.IDENTITY  # type: ignore[arg-type]


def test_secp256k1_rejections() -> None:
    g = SECP256K1
    gen = g.generator().to_bytes()
    assert _reason(g, gen[:-1]) is DecodeReason.WRONG_LENGTH
    assert _reason(g, b"\x04" + gen[1:]) is DecodeReason.NOT_CANONICAL  # wrong prefix
    assert _reason(g, bytes(33)) is DecodeReason.IDENTITY
    assert _reason(g, b"\x02" + g.field_prime.to_bytes(32, "big")) is DecodeReason.NOT_CANONICAL  # x = p
    assert _reason(g, b"\x02" + (5).to_bytes(32, "big")) is DecodeReason.NOT_ON_CURVE  # x³+7 non-residue at x=5
    uncompressed = g.generator().raw.format(compressed=False)  # type: ignore[attr-defined]
    assert _reason(g, uncompressed) is DecodeReason.WRONG_LENGTH


@pytest.mark.parametrize("g", GROUPS, ids=ids)
def test_scalar_rejections(g: Group) -> None:
    for bad, reason in (
        (g.scalar_encode(g.order - 1)[:-1], DecodeReason.WRONG_LENGTH),
        (g.order.to_bytes(32, "little" if g is ED25519 else "big"), DecodeReason.SCALAR_OUT_OF_RANGE),
        (b"\xff" * 32, DecodeReason.SCALAR_OUT_OF_RANGE),
    ):
        with pytest.raises(DecodeError) as e:
            g.scalar_decode(bad, field="s")
        assert e.value.reason is reason
    with pytest.raises(DecodeError) as e:
        g.scalar_decode(bytes(32), allow_zero=False)
    assert e.value.reason is DecodeReason.ZERO_SCALAR
    assert g.scalar_decode(bytes(32)) == 0


@pytest.mark.parametrize("g", GROUPS, ids=ids)
def test_identity_handling(g: Group) -> None:
    o, gen = g.identity(), g.generator()
    assert o.is_identity and gen + o == gen and o + gen == gen
    assert gen - gen == o and g.mul(gen, 0) == o and g.base_mul(0) == o and g.mul(o, 5) == o
    assert g.sum([]) == o and g.sum([gen, -gen]) == o and -o == o
    with pytest.raises(DecodeError):
        o.to_bytes()


@pytest.mark.parametrize("g", GROUPS, ids=ids)
@settings(max_examples=40, deadline=None)
@given(a=scalars, b=scalars)
def test_group_laws(g: Group, a: int, b: int) -> None:
    pa, pb = g.base_mul(a), g.base_mul(b)
    assert pa + pb == g.base_mul(a + b) == pb + pa
    assert g.mul(pa, b) == g.mul(pb, a) == g.base_mul(a * b)
    assert -pa == g.base_mul(-a) and pa - pb == g.base_mul(a - b)
    assert g.decode(pa.to_bytes()) == pa
    assert g.scalar_decode(g.scalar_encode(a % g.order)) == a % g.order
    assert g.msm([a, b], [pb, pa]) == g.base_mul(2 * a * b)
    assert hash(pa) == hash(g.decode(pa.to_bytes()))


@pytest.mark.parametrize("g", GROUPS, ids=ids)
@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=0, max_size=40))
def test_decode_random_bytes_is_typed(g: Group, data: bytes) -> None:
    """Arbitrary bytes either decode to a valid point or raise DecodeError, nothing else."""
    try:
        p = g.decode(data)
    except DecodeError:
        return
    assert not p.is_identity and p.to_bytes() == data
