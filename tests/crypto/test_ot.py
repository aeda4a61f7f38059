"""Oblivious transfer: endemic base OT, OT extension with its check, GF(2^128) helpers."""

from __future__ import annotations

import hashlib
import secrets

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardguard.crypto.errors import DecodeError
from shardguard.crypto.ot import BASE_OTS, base, extension, gf128
from tests.helpers.rng import DeterministicRng

SID = bytes(range(32))


def slow_gf_mul(a: int, b: int) -> int:
    """Schoolbook GF(2^128) product, x^128 + x^7 + x^2 + x + 1 (reference for the tests)."""
    r = 0
    for i in range(128):
        if (b >> i) & 1:
            r ^= a << i
    for i in range(254, 127, -1):
        if (r >> i) & 1:
            r ^= 0x87 << (i - 128) | (1 << i)
    return r


@given(st.lists(st.integers(0, 2**128 - 1), min_size=1, max_size=8), st.integers(0, 2**128 - 1))
def test_packed_gf128_product_matches_schoolbook(values: list[int], c: int) -> None:
    rows = np.frombuffer(b"".join(v.to_bytes(16, "little") for v in values), dtype=np.uint8).reshape(len(values), 16)
    got = gf128.unpack(gf128.reduce(gf128.mul(gf128.pack(rows), c), len(values)), len(values))
    want = [slow_gf_mul(v, c) for v in values]
    assert [int.from_bytes(bytes(r), "little") for r in got] == want


def test_gf128_known_identities() -> None:
    assert slow_gf_mul(1 << 127, 2) == 0x87  # x^128 = x^7 + x^2 + x + 1


def shift_xor_mul(packed: int, c: int) -> int:
    """The plain carry-less product: one shift-and-xor of the whole pack per set bit of ``c``."""
    acc = 0
    for i in range(c.bit_length()):
        if (c >> i) & 1:
            acc ^= packed << i
    return acc


@given(st.lists(st.integers(0, 2**128 - 1), min_size=1, max_size=8), st.integers(0, 2**128 - 1))
def test_windowed_mul_equals_the_bitwise_product(values: list[int], c: int) -> None:
    rows = np.frombuffer(b"".join(v.to_bytes(16, "little") for v in values), dtype=np.uint8).reshape(len(values), 16)
    packed = gf128.pack(rows)
    assert gf128.mul(packed, c) == shift_xor_mul(packed, c)


@pytest.mark.parametrize("c", [0, 1, 2, 15, 16, 0x87, 1 << 127, 2**128 - 1, 0x1111 << 100, 2**200 + 5])
def test_windowed_mul_edge_multipliers_on_a_full_pack(c: int) -> None:
    rows = np.frombuffer(DeterministicRng(c.to_bytes(32, "big"))(BASE_OTS * 16), dtype=np.uint8).reshape(BASE_OTS, 16)
    packed = gf128.pack(rows)
    assert gf128.mul(packed, c) == shift_xor_mul(packed, c)
    assert gf128.mul(0, c) == 0


def test_mul_refuses_a_negative_multiplier() -> None:
    with pytest.raises(ValueError):
        gf128.mul(1, -1)


def _base_ots(seed: int) -> tuple[list[bytes], list[bytes], bytes, list[bytes]]:
    rng = DeterministicRng(seed)
    choices = rng(32)
    state, m1 = base.receiver_start(SID, choices, rng)
    s0, s1, m2 = base.sender_respond(SID, m1, rng)
    chosen = base.receiver_finish(state, SID, m2)
    return s0, s1, choices, chosen


def test_endemic_ot_delivers_the_chosen_message_only() -> None:
    s0, s1, choices, chosen = _base_ots(1)
    bits = base.choice_bits(choices)
    assert len(chosen) == BASE_OTS
    for i, b in enumerate(bits):
        assert chosen[i] == (s1[i] if b else s0[i])
        assert chosen[i] != (s0[i] if b else s1[i])
    assert len(set(s0) | set(s1)) == 2 * BASE_OTS


def test_endemic_ot_is_bound_to_its_session() -> None:
    rng = DeterministicRng(2)
    state, m1 = base.receiver_start(SID, rng(32), rng)
    s0, s1, m2 = base.sender_respond(b"other".ljust(32, b"\0"), m1, rng)
    chosen = base.receiver_finish(state, SID, m2)
    assert not set(chosen) & (set(s0) | set(s1))


@pytest.mark.parametrize("cut", [0, 1, base.MESSAGE_SIZE - 1, base.MESSAGE_SIZE + 1])
def test_endemic_ot_refuses_wrong_lengths(cut: int) -> None:
    with pytest.raises(DecodeError):
        base.sender_respond(SID, bytes(cut), secrets.token_bytes)


def test_endemic_ot_refuses_an_off_curve_or_identity_point() -> None:
    rng = DeterministicRng(3)
    _, m1 = base.receiver_start(SID, rng(32), rng)
    for bad in (b"\x02" + b"\xff" * 32, b"\x00" * 33, b"\x04" + b"\x01" * 32):
        with pytest.raises(DecodeError) as e:
            base.sender_respond(SID, bad + m1[33:], rng)
        assert e.value.field == "base_ot[0].r0"


@pytest.fixture(scope="module")
def setup() -> tuple[list[bytes], list[bytes], bytes, list[bytes]]:
    return _base_ots(7)


def test_extension_outputs_correlate(setup: tuple[list[bytes], list[bytes], bytes, list[bytes]]) -> None:
    s0, s1, delta, chosen = setup
    recv, msg = extension.extend_receive(SID, s0, s1, DeterministicRng(8))
    send = extension.extend_send(SID, delta, chosen, msg)
    v0, v1 = send.outputs(b"out", 3)
    got = recv.outputs(b"out", 3)
    for j, b in enumerate(recv.choice_bits):
        assert got[j] == (v1[j] if b else v0[j])
        assert v0[j] != v1[j]


def reference_outputs(sid: bytes, cols: np.ndarray, width: int) -> list[tuple[int, ...]]:
    """The outputs as the module docstring defines them, one hash and reduction at a time."""
    q = extension._Q
    out = []
    for j in range(extension.EXTENDED):
        d = hashlib.shake_256(b"shardguard/ote/out/v1\x00" + sid + j.to_bytes(2, "big") + cols[j].tobytes()).digest(48 * width)
        out.append(tuple(int.from_bytes(d[48 * k : 48 * k + 48], "big") % q for k in range(width)))
    return out


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_unreduced_outputs_are_congruent_to_the_scalars(
    setup: tuple[list[bytes], list[bytes], bytes, list[bytes]], width: int
) -> None:
    s0, s1, delta, chosen = setup
    recv, msg = extension.extend_receive(SID, s0, s1, DeterministicRng(13))
    send = extension.extend_send(SID, delta, chosen, msg)
    q = extension._Q
    flipped = send._cols ^ np.frombuffer(delta, dtype=np.uint8)
    pairs = [
        (recv.outputs(b"w", width), recv.unreduced_outputs(b"w", width), recv._cols),
        (send.outputs(b"w", width)[0], send.unreduced_outputs(b"w", width)[0], send._cols),
        (send.outputs(b"w", width)[1], send.unreduced_outputs(b"w", width)[1], flipped),
    ]
    for reduced, unreduced, cols in pairs:
        assert reduced == reference_outputs(b"w", cols, width)
        assert [tuple(x % q for x in row) for row in unreduced] == reduced
        assert all(len(row) == width and all(0 <= x < 2**384 for x in row) for row in unreduced)
        assert any(x >= q for row in unreduced for x in row)  # really unreduced


def test_choice_bits_are_the_choice_string_little_endian(setup: tuple[list[bytes], list[bytes], bytes, list[bytes]]) -> None:
    s0, s1, _, _ = setup
    recv, _ = extension.extend_receive(SID, s0, s1, DeterministicRng(14))
    c = int.from_bytes(recv._choices, "little")
    assert recv.choice_bits == [(c >> j) & 1 for j in range(extension.EXTENDED)]
    assert all(type(b) is int for b in recv.choice_bits)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["u", "x_check", "t_check"]), st.data())
def test_any_single_bit_change_fails_the_check(
    setup: tuple[list[bytes], list[bytes], bytes, list[bytes]], field: str, data: st.DataObject
) -> None:
    s0, s1, delta, chosen = setup
    _, msg = extension.extend_receive(SID, s0, s1, DeterministicRng(9))
    raw = bytearray(getattr(msg, field))
    pos = data.draw(st.integers(0, len(raw) * 8 - 1))
    raw[pos // 8] ^= 1 << (pos % 8)
    parts = {"u": msg.u, "x_check": msg.x_check, "t_check": msg.t_check, field: bytes(raw)}
    with pytest.raises(extension.OtConsistencyError):
        extension.extend_send(SID, delta, chosen, extension.ExtensionMessage(**parts))


def test_wrong_session_fails_the_check(setup: tuple[list[bytes], list[bytes], bytes, list[bytes]]) -> None:
    s0, s1, delta, chosen = setup
    _, msg = extension.extend_receive(SID, s0, s1, DeterministicRng(10))
    with pytest.raises(extension.OtConsistencyError):
        extension.extend_send(bytes(32), delta, chosen, msg)


def test_inconsistent_choice_columns_are_caught(setup: tuple[list[bytes], list[bytes], bytes, list[bytes]]) -> None:
    """A receiver that uses different choice bits in different rows (the KOS attack that
    probes Δ) and recomputes its check values honestly for them is still caught."""
    s0, s1, delta, chosen = setup
    _, msg = extension.extend_receive(SID, s0, s1, DeterministicRng(11))
    u = bytearray(msg.u)
    u[3 * 80 + 5] ^= 0x01  # row 3 now encodes another β' than the rest
    t_rows = np.frombuffer(b"".join(extension._prg(SID, s0).tobytes() for _ in [0]), dtype=np.uint8).reshape(256, 80)
    chi = extension._challenge(SID, bytes(u))
    t_check = gf128.weighted_sum(extension._chunks(t_rows), chi).tobytes()
    with pytest.raises(extension.OtConsistencyError):
        extension.extend_send(SID, delta, chosen, extension.ExtensionMessage(bytes(u), msg.x_check, t_check))


@pytest.mark.parametrize(("field", "size"), [("u", 5), ("x_check", 15), ("t_check", 17)])
def test_extension_message_lengths(field: str, size: int) -> None:
    parts = {"u": bytes(extension.U_SIZE), "x_check": bytes(16), "t_check": bytes(extension.CHECK_SIZE), field: bytes(size)}
    with pytest.raises(DecodeError) as e:
        extension.ExtensionMessage(**parts)
    assert e.value.field == f"ote.{field}"


def test_states_are_not_picklable(setup: tuple[list[bytes], list[bytes], bytes, list[bytes]]) -> None:
    import pickle

    s0, s1, delta, chosen = setup
    recv, msg = extension.extend_receive(SID, s0, s1, DeterministicRng(12))
    send = extension.extend_send(SID, delta, chosen, msg)
    state, _ = base.receiver_start(SID, bytes(32), DeterministicRng(1))
    for obj in (recv, send, state):
        assert "redacted" in repr(obj)
        with pytest.raises(TypeError):
            pickle.dumps(obj)
