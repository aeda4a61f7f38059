"""Endemic base OT, a batch of 256 (Masny–Rindal, ePrint 2019/706 Fig. 8; DKLs23 spec §1.2).

.. danger:: hazmat.

The receiver, choice bit ``c``, sends ``(r_0, r_1)`` with ``r_{1−c} = Y`` random and
``r_c = t·G − H(c, r_{1−c})``; the sender computes ``M_b = r_b + H(b, r_{1−b})``, answers
``E_b = e_b·G`` and outputs ``m_b = KDF(e_b·M_b)``; the receiver outputs
``m_c = KDF(t·E_c)``. ``H`` is RFC 9380 hash-to-curve, so no one knows the discrete log of
its output (pitfall P1 of the DKLs23 spec: a hash *to a scalar* times ``G`` leaks every
choice bit). The receiver computes both ``H(0, ·)`` and ``H(1, ·)`` so that its work does not
depend on ``c``; Python integer code is otherwise not constant-time (docs/SECURITY.md).

Messages are flat byte strings: 256 × 2 compressed points each.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from shardguard.crypto.errors import DecodeError, DecodeReason
from shardguard.crypto.group import Point, Rng
from shardguard.crypto.hash_to_curve import hash_to_curve_secp256k1
from shardguard.crypto.ot import BASE_OTS
from shardguard.crypto.secp256k1 import SECP256K1

__all__ = ["BASE_OTS", "MESSAGE_SIZE", "ReceiverState", "choice_bits", "receiver_finish", "receiver_start", "sender_respond"]

_PT = 33
#: Size of either message of the batch.
MESSAGE_SIZE = BASE_OTS * 2 * _PT
_DST = b"SHARDGUARD-V01-CS01-with-secp256k1_XMD:SHA-256_SSWU_RO_endemic-ot"
_G = SECP256K1


def _h(sid: bytes, idx: int, b: int, other: bytes) -> Point:
    return hash_to_curve_secp256k1(sid + idx.to_bytes(2, "big") + bytes([b]) + other, _DST)


def _kdf(sid: bytes, idx: int, p: Point) -> bytes:
    return hashlib.sha256(b"shardguard/endemic-ot/out/v1\x00" + sid + idx.to_bytes(2, "big") + _G.encode_any(p)).digest()


def _bits(choices: bytes) -> list[int]:
    if len(choices) != BASE_OTS // 8:
        raise ValueError("choices must be 32 bytes (256 bits)")
    return [(choices[i >> 3] >> (i & 7)) & 1 for i in range(BASE_OTS)]


class ReceiverState:
    """The receiver's secrets between its message and the sender's answer. Not picklable."""

    __slots__ = ("_choices", "_t")

    def __init__(self, choices: list[int], t: list[int]) -> None:
        self._choices = choices
        self._t = t

    def __repr__(self) -> str:
        return "ReceiverState(<redacted>)"

    def __reduce__(self) -> str:
        raise TypeError("OT receiver state is secret and cannot be pickled")


def receiver_start(sid: bytes, choices: bytes, rng: Rng) -> tuple[ReceiverState, bytes]:
    """Receiver's message for 256 OTs with the given choice bits (bit ``i`` = ``choices[i//8]
    >> (i%8) & 1``)."""
    bits = _bits(choices)
    ts: list[int] = []
    out = bytearray()
    for idx, c in enumerate(bits):
        t = _G.random_scalar(rng)
        y = _G.encode(_G.base_mul(_G.random_scalar(rng)))
        # Both hashes are computed whatever c is; only one is used.
        h = (_h(sid, idx, 0, y), _h(sid, idx, 1, y))
        r_c = _G.encode_any(_G.base_mul(t) - h[c])
        if r_c == b"\x00" * _PT:  # t·G == H(c, Y): probability 2^-256
            raise ValueError("degenerate base OT draw")
        out += (r_c + y) if c == 0 else (y + r_c)
        ts.append(t)
    return ReceiverState(bits, ts), bytes(out)


def sender_respond(sid: bytes, msg1: bytes, rng: Rng) -> tuple[list[bytes], list[bytes], bytes]:
    """Sender's answer: ``(m_0 list, m_1 list, message)``. Raises :class:`DecodeError`."""
    if len(msg1) != MESSAGE_SIZE:
        raise DecodeError(DecodeReason.WRONG_LENGTH, field="base_ot", suite=_G.name)
    m0: list[bytes] = []
    m1: list[bytes] = []
    out = bytearray()
    for idx in range(BASE_OTS):
        raw0 = msg1[2 * _PT * idx : 2 * _PT * idx + _PT]
        raw1 = msg1[2 * _PT * idx + _PT : 2 * _PT * (idx + 1)]
        r0 = _G.decode(raw0, field=f"base_ot[{idx}].r0")
        r1 = _G.decode(raw1, field=f"base_ot[{idx}].r1")
        big_m0 = r0 + _h(sid, idx, 0, raw1)
        big_m1 = r1 + _h(sid, idx, 1, raw0)
        e0, e1 = _G.random_scalar(rng), _G.random_scalar(rng)
        out += _G.encode(_G.base_mul(e0)) + _G.encode(_G.base_mul(e1))
        m0.append(_kdf(sid, idx, big_m0 * e0))
        m1.append(_kdf(sid, idx, big_m1 * e1))
    return m0, m1, bytes(out)


def receiver_finish(state: ReceiverState, sid: bytes, msg2: bytes) -> list[bytes]:
    """The chosen messages ``m_c``. Raises :class:`DecodeError` for a malformed answer."""
    if len(msg2) != MESSAGE_SIZE:
        raise DecodeError(DecodeReason.WRONG_LENGTH, field="base_ot", suite=_G.name)
    out: list[bytes] = []
    for idx, (c, t) in enumerate(zip(state._choices, state._t, strict=True)):
        pair = (
            msg2[2 * _PT * idx : 2 * _PT * idx + _PT],
            msg2[2 * _PT * idx + _PT : 2 * _PT * (idx + 1)],
        )
        e = (_G.decode(pair[0], field=f"base_ot[{idx}].e0"), _G.decode(pair[1], field=f"base_ot[{idx}].e1"))
        out.append(_kdf(sid, idx, e[c] * t))
    return out


def choice_bits(choices: bytes) -> Sequence[int]:
    """The 256 choice bits of a 32-byte choice string, in OT order."""
    return _bits(choices)
