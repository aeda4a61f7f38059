"""BIP32 public derivation: the BIP's own vectors, bip_utils as an independent implementation,
and the paths and keys we refuse."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from bip_utils import Base58Encoder, Bip32KeyData, Bip32Secp256k1
from hypothesis import given, settings
from hypothesis import strategies as st

from shardguard.crypto import bip32
from shardguard.crypto.bip32 import (
    HARDENED_OFFSET,
    DerivationError,
    DerivationReason,
    ExtendedKeyError,
    ExtendedKeyReason,
    derive_public,
    fingerprint,
    format_path,
    parse_path,
    xpub_decode,
    xpub_encode,
)
from shardguard.crypto.errors import DecodeError
from shardguard.crypto.secp256k1 import SECP256K1
from tests.helpers.vectors import VECTORS, load

N = SECP256K1.order
DATA = load(VECTORS / "bip32.json")
NODES = {(c["vector"], n["path"]): n for c in DATA["chains"] for n in c["nodes"]}


def _private_key(xprv: str) -> int:
    return int.from_bytes(Bip32Secp256k1.FromExtendedKey(xprv).PrivateKey().Raw().ToBytes(), "big")


# -- BIP32 test vectors 1, 2, 5 --------------------------------------------------------------------
def test_vector_file_covers_vectors_1_and_2() -> None:
    assert [c["vector"] for c in DATA["chains"]] == [1, 2]
    assert len(DATA["public_steps"]) == 7
    assert len(DATA["invalid_extended_keys"]) == 16


@pytest.mark.parametrize("key", sorted(NODES), ids=lambda k: f"v{k[0]}:{k[1]}")
def test_vector_xpub_round_trips(key: tuple[int, str]) -> None:
    node = NODES[key]
    x = xpub_decode(node["xpub"])
    assert x.depth == node["path"].count("/")
    assert x.public_key == SECP256K1.base_mul(_private_key(node["xprv"]))
    assert xpub_encode(x.public_key, x.chain_code, x.depth, x.parent_fingerprint, x.index) == node["xpub"]
    if x.depth:  # the parent fingerprint is that of the previous node of the chain
        parent = xpub_decode(NODES[(key[0], node["path"].rsplit("/", 1)[0])]["xpub"])
        assert x.parent_fingerprint == fingerprint(parent.public_key)


@pytest.mark.parametrize("step", DATA["public_steps"], ids=lambda s: f"v{s['vector']}:{s['parent']}->{s['child']}")
def test_vector_public_steps(step: dict[str, Any]) -> None:
    parent_node, child_node = NODES[(step["vector"], step["parent"])], NODES[(step["vector"], step["child"])]
    parent = xpub_decode(parent_node["xpub"])
    derived = derive_public(parent.public_key, parent.chain_code, step["indices"], depth=parent.depth)
    assert derived.xpub() == child_node["xpub"]
    assert derived.public_key == parent.public_key + SECP256K1.base_mul(derived.tweak)
    # The tweak is what a holder of the parent's secret adds to sign for the child.
    assert (_private_key(parent_node["xprv"]) + derived.tweak) % N == _private_key(child_node["xprv"])


_XPUB_REASONS = {
    "pubkey version / prvkey mismatch": ExtendedKeyReason.BAD_KEY,
    "invalid pubkey prefix 04": ExtendedKeyReason.BAD_KEY,
    "invalid pubkey prefix 01": ExtendedKeyReason.BAD_KEY,
    "zero depth with non-zero parent fingerprint": ExtendedKeyReason.BAD_ZERO_DEPTH,
    "zero depth with non-zero index": ExtendedKeyReason.BAD_ZERO_DEPTH,
    "unknown extended key version": ExtendedKeyReason.UNKNOWN_VERSION,
    "invalid pubkey 020000000000000000000000000000000000000000000000000000000000000007": ExtendedKeyReason.BAD_KEY,
}


@pytest.mark.parametrize("case", DATA["invalid_extended_keys"], ids=lambda c: c["comment"])
def test_vector_5_invalid_extended_keys(case: dict[str, str]) -> None:
    if case["comment"] == "invalid checksum":
        expected = ExtendedKeyReason.BAD_CHECKSUM
    elif case["key"].startswith("xprv"):
        expected = ExtendedKeyReason.PRIVATE_KEY
    else:
        expected = _XPUB_REASONS[case["comment"]]
    with pytest.raises(ExtendedKeyError) as err:
        xpub_decode(case["key"])
    assert err.value.reason is expected


def test_xpub_decode_refuses_malformed_strings() -> None:
    good = NODES[(1, "m")]["xpub"]
    for bad, reason in [
        ("", ExtendedKeyReason.BAD_BASE58),
        (good[:-1] + "0", ExtendedKeyReason.BAD_BASE58),  # '0' is not in the alphabet
        (good + "1" * 20, ExtendedKeyReason.BAD_BASE58),  # too long to be an xpub at all
        (good[:-1], ExtendedKeyReason.BAD_CHECKSUM),
        ("1111", ExtendedKeyReason.BAD_CHECKSUM),
        (Base58Encoder.CheckEncode(bytes.fromhex("0488b21e") + bytes(73)), ExtendedKeyReason.WRONG_LENGTH),
        (Base58Encoder.CheckEncode(bytes.fromhex("0488b21e") + bytes(75)), ExtendedKeyReason.WRONG_LENGTH),
    ]:
        with pytest.raises(ExtendedKeyError) as err:
            xpub_decode(bad)
        assert err.value.reason is reason, bad
    x = xpub_decode(good)
    tpub = xpub_encode(x.public_key, x.chain_code, 0, b"\0" * 4, 0, testnet=True)
    assert tpub.startswith("tpub")
    with pytest.raises(ExtendedKeyError) as err:
        xpub_decode(tpub)
    assert err.value.reason is ExtendedKeyReason.WRONG_NETWORK
    assert xpub_decode(tpub, testnet=True).testnet
    assert xpub_decode(tpub, testnet=None) == xpub_decode(tpub, testnet=True)
    with pytest.raises(ExtendedKeyError) as err:
        xpub_decode(good, testnet=True)
    assert err.value.reason is ExtendedKeyReason.WRONG_NETWORK


# -- bip_utils as an independent implementation ----------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    secret=st.integers(1, N - 1),
    chain_code=st.binary(min_size=32, max_size=32),
    depth=st.integers(0, 3),
    path=st.lists(st.integers(0, HARDENED_OFFSET - 1), max_size=5),
)
def test_matches_bip_utils(secret: int, chain_code: bytes, depth: int, path: list[int]) -> None:
    parent = SECP256K1.base_mul(secret)
    # A non-master parent gets some fingerprint and index so that bip_utils serialises it.
    fp, index = (b"\0" * 4, 0) if depth == 0 else (hashlib.sha256(chain_code).digest()[:4], 7)
    theirs = Bip32Secp256k1.FromPublicKey(
        parent.to_bytes(), Bip32KeyData(depth=depth, index=index, chain_code=chain_code, parent_fprint=fp)
    )
    for i in path:
        theirs = theirs.ChildKey(i)
    ours = derive_public(parent, chain_code, path, depth=depth)
    assert ours.public_key.to_bytes() == theirs.PublicKey().RawCompressed().ToBytes()
    assert ours.chain_code == theirs.ChainCode().ToBytes()
    assert ours.depth == theirs.Depth().ToInt()
    if path:
        assert ours.index == theirs.Index().ToInt()
        assert ours.parent_fingerprint == theirs.ParentFingerPrint().ToBytes()
        assert ours.xpub() == theirs.PublicKey().ToExtended()
    assert ours.public_key == parent + SECP256K1.base_mul(ours.tweak)
    assert fingerprint(ours.public_key) == theirs.FingerPrint().ToBytes()
    x = xpub_decode(theirs.PublicKey().ToExtended())
    assert (x.public_key, x.chain_code, x.depth) == (ours.public_key, ours.chain_code, ours.depth)


@settings(max_examples=25, deadline=None)
@given(
    secret=st.integers(1, N - 1),
    chain_code=st.binary(min_size=32, max_size=32),
    a=st.lists(st.integers(0, HARDENED_OFFSET - 1), max_size=3),
    b=st.lists(st.integers(0, HARDENED_OFFSET - 1), max_size=3),
)
def test_derivation_composes(secret: int, chain_code: bytes, a: list[int], b: list[int]) -> None:
    parent = SECP256K1.base_mul(secret)
    first = derive_public(parent, chain_code, a)
    second = derive_public(first.public_key, first.chain_code, b, depth=first.depth)
    whole = derive_public(parent, chain_code, a + b)
    assert whole.public_key == second.public_key
    assert whole.chain_code == second.chain_code
    assert whole.depth == second.depth
    assert whole.tweak == (first.tweak + second.tweak) % N
    if b:
        assert whole.parent_fingerprint == second.parent_fingerprint


def test_empty_path_is_the_parent() -> None:
    parent, code = SECP256K1.base_mul(5), bytes(range(32))
    d = derive_public(parent, code, ())
    assert (d.public_key, d.chain_code, d.tweak, d.parent_fingerprint, d.depth, d.index) == (parent, code, 0, b"\0" * 4, 0, 0)
    assert derive_public(parent, code, parse_path("m")) == d


# -- refusals of derive_public ---------------------------------------------------------------------
def test_derive_refuses_hardened_out_of_range_and_bad_inputs() -> None:
    parent, code = SECP256K1.base_mul(3), bytes(32)
    cases: list[tuple[list[int], DerivationReason, int | None]] = [
        ([0, HARDENED_OFFSET], DerivationReason.HARDENED, HARDENED_OFFSET),
        ([2**32 - 1], DerivationReason.HARDENED, 2**32 - 1),
        ([-1], DerivationReason.INDEX_OUT_OF_RANGE, -1),
        ([2**32], DerivationReason.INDEX_OUT_OF_RANGE, 2**32),
        ([0] * 256, DerivationReason.TOO_DEEP, None),
    ]
    for path, reason, index in cases:
        with pytest.raises(DerivationError) as err:
            derive_public(parent, code, path)
        assert (err.value.reason, err.value.index) == (reason, index)
        assert err.value.path.startswith("m")
    assert derive_public(parent, code, [0] * 255).depth == 255
    with pytest.raises(DerivationError) as err:
        derive_public(parent, code, [0], depth=255)
    assert err.value.reason is DerivationReason.TOO_DEEP
    for bad_code in (b"", bytes(31), bytes(33)):
        with pytest.raises(DerivationError) as err:
            derive_public(parent, bad_code, [1])
        assert err.value.reason is DerivationReason.BAD_CHAIN_CODE
    with pytest.raises(DecodeError):
        derive_public(SECP256K1.identity(), code, [1])
    with pytest.raises(TypeError, match="parse_path"):
        derive_public(parent, code, "m/0/1")  # type: ignore[arg-type]


@pytest.mark.parametrize("il", [N, N + 1, 2**256 - 1])
def test_il_not_below_n_is_an_invalid_child(monkeypatch: pytest.MonkeyPatch, il: int) -> None:
    monkeypatch.setattr(bip32.hmac, "digest", lambda key, msg, digest: il.to_bytes(32, "big") + bytes(32))
    with pytest.raises(DerivationError) as err:
        derive_public(SECP256K1.base_mul(9), bytes(32), [4, 5])
    assert (err.value.reason, err.value.index, err.value.path) == (DerivationReason.INVALID_CHILD, 4, "m/4/5")


def test_child_at_infinity_is_an_invalid_child_not_the_next_index(monkeypatch: pytest.MonkeyPatch) -> None:
    k = 0xC0FFEE
    # I_L = n - k, so K + I_L·G is the point at infinity; index 6 must not be tried instead.
    monkeypatch.setattr(bip32.hmac, "digest", lambda key, msg, digest: (N - k).to_bytes(32, "big") + bytes(32))
    with pytest.raises(DerivationError) as err:
        derive_public(SECP256K1.base_mul(k), bytes(32), [5])
    assert (err.value.reason, err.value.index) == (DerivationReason.INVALID_CHILD, 5)


# -- parse_path ------------------------------------------------------------------------------------
indices = st.integers(0, HARDENED_OFFSET - 1)


def test_parse_path_examples() -> None:
    assert parse_path("m") == ()
    assert parse_path("m/0/1/2") == (0, 1, 2)
    assert parse_path("m/2147483647") == (HARDENED_OFFSET - 1,)
    assert parse_path("/".join(["m"] + ["0"] * 255)) == (0,) * 255
    with pytest.raises(DerivationError) as err:
        parse_path("/".join(["m"] + ["0"] * 256))
    assert err.value.reason is DerivationReason.TOO_DEEP
    for path, reason, index in [
        ("m/0'", DerivationReason.HARDENED, 0),
        ("m/1/2h", DerivationReason.HARDENED, 2),
        ("m/44H", DerivationReason.HARDENED, 44),
        ("m/2147483648", DerivationReason.HARDENED, HARDENED_OFFSET),
        ("m/4294967295", DerivationReason.HARDENED, 2**32 - 1),
        ("m/4294967296", DerivationReason.INDEX_OUT_OF_RANGE, 2**32),
        ("m/99999999999", DerivationReason.INDEX_OUT_OF_RANGE, None),
        ("m/" + "9" * 5000, DerivationReason.INDEX_OUT_OF_RANGE, None),  # no int() of a huge string
    ]:
        with pytest.raises(DerivationError) as err:
            parse_path(path)
        assert (err.value.reason, err.value.index, err.value.path) == (reason, index, path)
    for path in [
        "", "M", "m/", "/0", "m//0", "m/0/", "m/01", "m/00", "m/+1", "m/-1", "m/ 1", "m/1 ", " m/1", "m /1",
        "m/0x1", "m/1e3", "m/1_000", "m/١", "m/'", "m/0''", "m/0h'", "n/0", "m\\0", "m/0/1/2/", "m/１",
    ]:  # fmt: skip
        with pytest.raises(DerivationError) as err:
            parse_path(path)
        assert err.value.reason is DerivationReason.BAD_SYNTAX, path
        assert err.value.index is None


@settings(max_examples=200, deadline=None)
@given(st.lists(indices, max_size=12))
def test_parse_path_round_trips(path: list[int]) -> None:
    assert parse_path(format_path(path)) == tuple(path)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("m/0123456789'hH +-M x\u0661\u00a0"), max_size=24))
def test_parse_path_accepts_only_canonical_strings(s: str) -> None:
    try:
        parsed = parse_path(s)
    except DerivationError:
        return
    assert format_path(parsed) == s  # anything accepted is the one canonical spelling of its indices


@settings(max_examples=150, deadline=None)
@given(st.lists(indices, min_size=1, max_size=6), st.data())
def test_parse_path_refuses_hardened_markers(path: list[int], data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(path) - 1))
    mark = data.draw(st.sampled_from(["'", "h", "H"]))
    parts = [str(i) for i in path]
    parts[pos] += mark
    with pytest.raises(DerivationError) as err:
        parse_path("/".join(["m", *parts]))
    assert (err.value.reason, err.value.index) == (DerivationReason.HARDENED, path[pos])


@settings(max_examples=150, deadline=None)
@given(st.lists(indices, min_size=1, max_size=6), st.data())
def test_parse_path_refuses_hardened_range_indices(path: list[int], data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(path) - 1))
    big = data.draw(st.integers(HARDENED_OFFSET, 2**32 - 1))
    parts = [str(i) for i in path]
    parts[pos] = str(big)
    with pytest.raises(DerivationError) as err:
        parse_path("/".join(["m", *parts]))
    assert (err.value.reason, err.value.index) == (DerivationReason.HARDENED, big)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(indices, min_size=1, max_size=6),
    st.data(),
    st.sampled_from(["leading_zero", "plus", "space", "empty", "non_decimal", "unicode_digit"]),
)
def test_parse_path_refuses_bad_syntax(path: list[int], data: st.DataObject, kind: str) -> None:
    pos = data.draw(st.integers(0, len(path) - 1))
    parts = [str(i) for i in path]
    space = data.draw(st.sampled_from([" ", "\t", "\u00a0"]))
    parts[pos] = {
        "leading_zero": "0" * data.draw(st.integers(1, 3)) + parts[pos],
        "plus": "+" + parts[pos],
        "space": data.draw(st.sampled_from([space + parts[pos], parts[pos] + space])),
        "empty": "",
        "non_decimal": parts[pos] + data.draw(st.sampled_from(["a", "x", ".", "e1", "_0", "-"])),
        "unicode_digit": parts[pos] + data.draw(st.sampled_from(["\u0661", "\uff11", "\u00b2"])),
    }[kind]
    with pytest.raises(DerivationError) as err:
        parse_path("/".join(["m", *parts]))
    assert err.value.reason is DerivationReason.BAD_SYNTAX
