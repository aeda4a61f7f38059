"""Property tests of the wire decoder: it refuses hostile bytes with WireError and nothing
else, valid payloads round-trip, and each payload has exactly one accepted encoding."""

from __future__ import annotations

import copy
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardguard.protocols.dkg import DkgConfirm, DkgEcho, DkgRound1, DkgSecretShare, RefreshRound1
from shardguard.protocols.frost import SignRound1, SignRound2
from shardguard.protocols.repair import RepairCommitments, RepairDelta, RepairSigma
from shardguard.protocols.wire import WireError, WireReason, decode_payload, encode_payload

from .conftest import SUITE_LIST, bad_points

PAYLOAD_TYPES: list[type[Any]] = [
    DkgRound1,
    RefreshRound1,
    DkgEcho,
    DkgSecretShare,
    DkgConfirm,
    SignRound1,
    SignRound2,
    RepairDelta,
    RepairCommitments,
    RepairSigma,
]
CASES = [(s, t) for s in SUITE_LIST for t in PAYLOAD_TYPES]
CASE_IDS = [f"{s.scheme}-{t.__name__}" for s, t in CASES]

FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
VALID = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
FLIPS_PER_EXAMPLE = 4


# -- strategies -----------------------------------------------------------------------------------
def scalars(suite: Any) -> st.SearchStrategy[int]:
    n = suite.group.order
    return st.one_of(st.integers(0, n - 1), st.sampled_from([0, 1, n - 1, n // 2]))


def points(suite: Any) -> st.SearchStrategy[Any]:
    g = suite.group
    return st.one_of(st.integers(1, g.order - 1), st.sampled_from([1, 2, g.order - 1])).map(g.base_mul)


def id_sets(min_size: int = 1, max_size: int = 4) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(1, 255), min_size=min_size, max_size=max_size, unique=True).map(sorted)


def payloads(suite: Any, typ: type[Any]) -> st.SearchStrategy[Any]:
    sc, pt = scalars(suite), points(suite)
    digests = st.binary(min_size=32, max_size=32)
    if typ is DkgRound1:
        return st.builds(
            lambda c, r, mu: DkgRound1(suite=suite, commitment=tuple(c), pok_r=r, pok_mu=mu),
            st.lists(pt, min_size=1, max_size=4),
            pt,
            sc,
        )
    if typ is RefreshRound1:
        return st.lists(pt, max_size=4).map(lambda c: RefreshRound1(suite=suite, commitment=tuple(c)))
    if typ is DkgEcho:
        return st.lists(digests, min_size=1, max_size=4).map(lambda d: DkgEcho(suite=suite, digests=tuple(d)))
    if typ is DkgSecretShare:
        return sc.map(lambda k: DkgSecretShare(suite=suite, share=k))
    if typ is DkgConfirm:
        return digests.map(lambda d: DkgConfirm(suite=suite, package_digest=d))
    if typ is SignRound1:
        return st.builds(lambda d, e: SignRound1(suite=suite, hiding=d, binding=e), pt, pt)
    if typ is SignRound2:

        @st.composite
        def sr2(draw: Any) -> SignRound2:
            ids = draw(id_sets())
            return SignRound2(suite=suite, share=draw(sc), commitment_digests=tuple((i, draw(digests)) for i in ids))

        return sr2()
    if typ is RepairDelta:
        return st.builds(lambda k, p: RepairDelta(suite=suite, delta=k, commitment=p), sc, pt)

    @st.composite
    def point_list(draw: Any) -> tuple[tuple[int, Any], ...]:
        return tuple((i, draw(pt)) for i in draw(id_sets()))

    if typ is RepairCommitments:
        return point_list().map(lambda c: RepairCommitments(suite=suite, commitments=c))
    if typ is RepairSigma:
        return st.builds(lambda k, c: RepairSigma(suite=suite, sigma=k, received=c), sc, point_list())
    raise AssertionError(typ)


def cbor_values(suite: Any) -> st.SearchStrategy[Any]:
    """CBOR-ish field values (two levels deep), biased towards the suite's own valid and
    invalid encodings."""
    g = suite.group
    atoms = st.one_of(
        st.integers(-(2**70), 2**70),
        st.integers(0, 300),
        st.binary(max_size=70),
        st.binary(min_size=31, max_size=33),  # digest fields (DkgEcho, DkgConfirm, SignRound2)
        st.text(max_size=6),
        points(suite).map(g.encode),
        scalars(suite).map(g.scalar_encode),
        st.sampled_from(list(bad_points(suite).values())),
        st.sampled_from([g.order.to_bytes(32, "big"), g.order.to_bytes(32, "little"), b"\xff" * 32, b""]),
    )
    rare = st.sampled_from([None, True, False, 1.5, -1, 2**64])
    inner = st.one_of(atoms, st.lists(atoms, max_size=4), rare)
    return st.one_of(inner, st.lists(inner, max_size=4))


def _mutate_at(obj: list[Any], path: list[int], action: str, value: Any) -> None:
    """Apply one edit to the list reached by ``path`` (indices into nested lists)."""
    target = obj
    for k in path[:-1]:
        nxt = target[k % len(target)] if target else None
        if not isinstance(nxt, list):
            break
        target = nxt
    if action == "insert" or not target:
        target.insert(path[-1] % (len(target) + 1), value)
        return
    k = path[-1] % len(target)
    if action == "replace":
        target[k] = value
    elif action == "delete":
        del target[k]
    elif action == "duplicate":
        target.insert(k, copy.deepcopy(target[k]))
    elif action == "swap":
        target[0], target[k] = target[k], target[0]


@st.composite
def structured(draw: Any, suite: Any) -> bytes:
    """A valid payload of a random type, decoded to CBOR values, then its fields edited one
    to three times (replace / delete / insert / duplicate / swap, at any depth; one time in
    ten the header too) and re-encoded canonically: input that gets past the CBOR and header
    checks into the payload's own field decoders."""
    typ = draw(st.sampled_from(PAYLOAD_TYPES))
    obj = cbor2.loads(encode_payload(draw(payloads(suite, typ))))
    header, fields = obj[:3], obj[3:]
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.lists(st.integers(0, 8), min_size=1, max_size=3))
        action = draw(st.sampled_from(["replace", "replace", "delete", "insert", "duplicate", "swap"]))
        _mutate_at(fields, path, action, draw(cbor_values(suite)))
    if draw(st.integers(0, 9)) == 0:
        header[draw(st.integers(0, 2))] = draw(cbor_values(suite))
    return cbor2.dumps([*header, *fields], canonical=True)


def _decode_or_wire_error(suite: Any, data: bytes, typ: type[Any]) -> Any:
    """Decode; the only acceptable failure is WireError. A success must be the one canonical
    encoding of what it decoded to."""
    try:
        p = decode_payload(suite, data, typ)
    except WireError as e:
        assert type(e) is WireError and isinstance(e.reason, WireReason)
        return None
    assert type(p) is typ and p.suite is suite
    assert encode_payload(p) == data
    return p


# -- properties -----------------------------------------------------------------------------------
SUITE_IDS = [s.scheme for s in SUITE_LIST]


@pytest.mark.parametrize(("suite", "typ"), CASES, ids=CASE_IDS)
@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_raise_only_wire_error(suite: Any, typ: type[Any], data: bytes) -> None:
    _decode_or_wire_error(suite, data, typ)


@pytest.mark.parametrize("suite", SUITE_LIST, ids=SUITE_IDS)
@FUZZ
@given(data=st.data())
def test_structured_garbage_raises_only_wire_error(suite: Any, data: st.DataObject) -> None:
    """Well-formed canonical CBOR reaching the field decoders; tried as every payload type."""
    raw = data.draw(structured(suite))
    for typ in PAYLOAD_TYPES:
        _decode_or_wire_error(suite, raw, typ)


@pytest.mark.parametrize(("suite", "typ"), CASES, ids=CASE_IDS)
@VALID
@given(data=st.data())
def test_valid_payloads(suite: Any, typ: type[Any], data: st.DataObject) -> None:
    """For a valid payload built from random scalars and points:

    * encode -> decode is the identity (and re-encoding gives the same bytes);
    * flipping any single byte is refused with WireError or decodes to a *different* payload
      whose canonical encoding is exactly the flipped bytes (never a crash);
    * every strict prefix, and any extension, is refused;
    * it is refused as any other payload type (WRONG_TYPE) or under another suite (WRONG_SUITE).
    """
    p = data.draw(payloads(suite, typ))
    raw = encode_payload(p)
    q = decode_payload(suite, raw, typ)
    assert q == p
    assert encode_payload(q) == raw

    for _ in range(FLIPS_PER_EXAMPLE):
        pos = data.draw(st.integers(0, len(raw) - 1))
        x = data.draw(st.integers(1, 255))
        flipped = raw[:pos] + bytes([raw[pos] ^ x]) + raw[pos + 1 :]
        other = _decode_or_wire_error(suite, flipped, typ)
        if other is not None:
            assert other != p

    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(WireError):
        decode_payload(suite, raw[:cut], typ)
    tail = data.draw(st.binary(min_size=1, max_size=8))
    with pytest.raises(WireError) as ei:
        decode_payload(suite, raw + tail, typ)
    assert ei.value.reason in (WireReason.NOT_CANONICAL, WireReason.NOT_CBOR)

    for other_typ in PAYLOAD_TYPES:
        if other_typ is not typ:
            with pytest.raises(WireError) as ei:
                decode_payload(suite, raw, other_typ)
            assert ei.value.reason is WireReason.WRONG_TYPE
    for s in SUITE_LIST:
        if s is not suite:
            with pytest.raises(WireError) as ei:
                decode_payload(s, raw, typ)
            assert ei.value.reason is WireReason.WRONG_SUITE


@pytest.mark.parametrize(("suite", "typ"), CASES, ids=CASE_IDS)
def test_every_single_byte_flip_of_one_payload(suite: Any, typ: type[Any]) -> None:
    """Exhaustive over positions (one fixed xor each, plus bit flips) for one valid payload."""
    g = suite.group
    ex = {
        DkgRound1: lambda: DkgRound1(suite=suite, commitment=(g.base_mul(3), g.base_mul(5)), pok_r=g.base_mul(7), pok_mu=11),
        RefreshRound1: lambda: RefreshRound1(suite=suite, commitment=(g.base_mul(3),)),
        DkgEcho: lambda: DkgEcho(suite=suite, digests=(b"\x01" * 32, b"\x02" * 32)),
        DkgSecretShare: lambda: DkgSecretShare(suite=suite, share=g.order - 2),
        SignRound1: lambda: SignRound1(suite=suite, hiding=g.base_mul(3), binding=g.base_mul(4)),
        DkgConfirm: lambda: DkgConfirm(suite=suite, package_digest=bytes(range(32))),
        SignRound2: lambda: SignRound2(suite=suite, share=9, commitment_digests=((1, b"\x03" * 32), (7, bytes(range(32))))),
        RepairDelta: lambda: RepairDelta(suite=suite, delta=13, commitment=g.base_mul(13)),
        RepairCommitments: lambda: RepairCommitments(suite=suite, commitments=((2, g.base_mul(3)), (4, g.base_mul(5)))),
        RepairSigma: lambda: RepairSigma(suite=suite, sigma=17, received=((2, g.base_mul(3)), (4, g.base_mul(5)))),
    }
    p = ex[typ]()
    raw = encode_payload(p)
    for pos in range(len(raw)):
        for x in (0x01, 0x80, 0xFF, 0x20):
            flipped = raw[:pos] + bytes([raw[pos] ^ x]) + raw[pos + 1 :]
            other = _decode_or_wire_error(suite, flipped, typ)
            if other is not None:
                assert other != p


@pytest.mark.parametrize("suite", SUITE_LIST, ids=SUITE_IDS)
def test_hostile_cbor_items_raise_only_wire_error(suite: Any) -> None:
    """Semantic tags with bad contents (dates, bignums, decimals, regexes, MIME, UUIDs, IP
    addresses, sets, shared references, string references), deep nesting and huge lengths."""
    items = [
        b"\xc0" + cbor2.dumps("not a date"),
        b"\xc1\xfb\x7f\xef\xff\xff\xff\xff\xff\xff",  # epoch 1.8e308
        b"\xc1\xf9\x7e\x00",  # epoch NaN
        b"\xc1\x1b\x7f\xff\xff\xff\xff\xff\xff\xff",
        b"\xc2" + cbor2.dumps("x"),
        b"\xc2\x40",
        b"\xc3" + cbor2.dumps(b"\xff" * 40),
        b"\xc4" + cbor2.dumps([1]),
        b"\xc5" + cbor2.dumps([2**62, 1]),
        b"\xd8\x1e" + cbor2.dumps([1, 0]),
        b"\xd8\x23" + cbor2.dumps("("),
        b"\xd8\x24" + cbor2.dumps("\x00\xff"),
        b"\xd8\x25" + cbor2.dumps(b"x"),
        b"\xd9\x01\x02" + cbor2.dumps([[1]]),
        b"\xd9\x01\x04" + cbor2.dumps(b"xyz"),
        b"\xd9\x01\x05" + cbor2.dumps({b"1": 99}),
        b"\xd8\x1d\x05",
        b"\xd8\x1c\x81\xd8\x1d\x00",  # a list containing itself
        b"\xd8\x19\x00",
        b"\xd9\x01\x00" + cbor2.dumps(["aaaa", b"\xd8\x19\x00"]),
        b"\xa1\x81\x01\x01",
        b"\xf8\x18",
        b"\xdb\xff\xff\xff\xff\xff\xff\xff\xff\x01",
        b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff",
        b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff",
        b"\x81" * 5000,
        b"\x9f" * 5000,
        b"\xc2\x5a\x00\x00\xff\x00" + b"\xff" * 0xFF00,
    ]
    for typ in PAYLOAD_TYPES:
        for item in items:
            for data in (item, b"\x84\x01" + cbor2.dumps(suite.context) + cbor2.dumps(typ.TAG) + item):
                _decode_or_wire_error(suite, data, typ)
