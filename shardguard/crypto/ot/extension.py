"""Random OT extension with the corrected KOS consistency check (DKLs23 spec §2).

.. danger:: hazmat.

SoftSpokenOT with k = 1 (ePrint 2022/192 §4–5), i.e. KOS (ePrint 2015/546) with the repaired
Fiat–Shamir check, as the DKLs23 spec allows. Roles, for one ordered pair:

* the **receiver** (DKLs23 "Bob") holds both messages ``(m0_ℓ, m1_ℓ)`` of the 256 base OTs in
  which it was the *sender*, and picks ``ξ = 512`` choice bits ``β`` per extension;
* the **sender** ("Alice") holds the base-OT choice string ``Δ`` (256 bits) and ``m_{Δ_ℓ}``.

Receiver: ``β' = β ‖ 128 random pad bits`` (640 columns); ``T_ℓ = PRG(m0_ℓ)``,
``U_ℓ = T_ℓ ⊕ PRG(m1_ℓ) ⊕ β'``. Challenge ``χ_0..χ_3 = H(sid, U)`` in GF(2^128); it sends
``U``, ``x̃ = Σ χ_j·β̂_j + β̂_4`` and ``t̃_ℓ = Σ χ_j·T̂_ℓ,j + T̂_ℓ,4`` (hats: 128-bit chunks).
Sender: ``Q_ℓ = PRG(m_{Δ_ℓ}) ⊕ Δ_ℓ·U_ℓ = T_ℓ ⊕ Δ_ℓ·β'``; it aborts unless
``q̃_ℓ = t̃_ℓ ⊕ Δ_ℓ·x̃`` for every ℓ (the caller must then ban the receiver: pitfall P3).
Column ``j`` of ``Q`` is ``ζ_j = ψ_j ⊕ β_j·Δ`` where ``ψ_j`` is column ``j`` of ``T``; the
outputs are ``v0_j = XOF(ζ_j)``, ``v1_j = XOF(ζ_j ⊕ Δ)`` and the receiver's ``XOF(ψ_j) =
v{β_j}_j``. Every output is ``width`` scalars mod q from 48 bytes each (bias < 2^-128);
``unreduced_outputs`` gives the same values as the 384-bit integers before that reduction.

The PRG is keyed by a per-extension session id, so base OTs are reused safely across sessions
as long as ``sid`` never repeats for one pair. In DKLs23 (``protocols/dkls23/_rounds.py``) that
id carries the receiver's (Bob's) fresh nonce only; the outputs are hashed again under a session
id that binds every party's round-1 commitment, the sender's (Alice's) own fresh nonce too, so a
Bob who repeats his nonce cannot make her pads repeat (review note: keep that second key if this
changes).
All bit-matrix work is numpy and big-integer bulk operations; no Python loop runs per bit.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from itertools import repeat
from typing import Literal

import numpy as np

from shardguard.crypto.errors import DecodeError, DecodeReason
from shardguard.crypto.group import Rng
from shardguard.crypto.ot import BASE_OTS, gf128
from shardguard.crypto.secp256k1 import SECP256K1

__all__ = [
    "CHECK_SIZE",
    "EXTENDED",
    "U_SIZE",
    "ExtensionMessage",
    "OtConsistencyError",
    "ReceiverExtension",
    "SenderExtension",
    "extend_receive",
    "extend_send",
]

#: Extended OTs per run: ξ = κ + 2·λ_s = 256 + 2·128.
EXTENDED = 512
_PAD = 128
_COLS = EXTENDED + _PAD
_ROW = _COLS // 8  # bytes per base-OT row
_CHUNKS = _COLS // 128  # 4 challenge-weighted chunks + the pad chunk
U_SIZE = BASE_OTS * _ROW
CHECK_SIZE = BASE_OTS * gf128.ELEMENT_BYTES
_Q = SECP256K1.order
_OUT_BYTES = 48  # hash bytes per output scalar, before its reduction mod q (bias < 2^-128)
_OUT_MASK = (1 << 8 * _OUT_BYTES) - 1
_BIG: Literal["big"] = "big"  # for map(int.from_bytes, …, repeat(_BIG))
#: ``j.to_bytes(2, "big")``: the row / column index in the PRG and output hash inputs.
_INDEX = tuple(j.to_bytes(2, "big") for j in range(max(BASE_OTS, EXTENDED)))
_INDEX_BYTES = np.frombuffer(b"".join(_INDEX), dtype=np.uint8).reshape(len(_INDEX), 2)


class OtConsistencyError(Exception):
    """The receiver's extension message failed the consistency check (ban the receiver)."""


class ExtensionMessage:
    """Receiver → sender: ``U`` (256 × 80 B), ``x̃`` (16 B), ``t̃`` (256 × 16 B)."""

    __slots__ = ("t_check", "u", "x_check")

    def __init__(self, u: bytes, x_check: bytes, t_check: bytes) -> None:
        if len(u) != U_SIZE:
            raise DecodeError(DecodeReason.WRONG_LENGTH, field="ote.u", suite=SECP256K1.name)
        if len(x_check) != gf128.ELEMENT_BYTES:
            raise DecodeError(DecodeReason.WRONG_LENGTH, field="ote.x_check", suite=SECP256K1.name)
        if len(t_check) != CHECK_SIZE:
            raise DecodeError(DecodeReason.WRONG_LENGTH, field="ote.t_check", suite=SECP256K1.name)
        self.u = u
        self.x_check = x_check
        self.t_check = t_check


def _prg(sid: bytes, seeds: Sequence[bytes]) -> np.ndarray:
    prefix, shake = b"shardguard/ote/prg/v1\x00" + sid, hashlib.shake_256
    rows = b"".join([shake(prefix + i + s).digest(_ROW) for i, s in zip(_INDEX[:BASE_OTS], seeds, strict=True)])
    return np.frombuffer(rows, dtype=np.uint8).reshape(BASE_OTS, _ROW)


def _challenge(sid: bytes, u: bytes) -> list[int]:
    d = hashlib.shake_256(b"shardguard/ote/chi/v1\x00" + sid + u).digest(16 * (_CHUNKS - 1))
    return [int.from_bytes(d[16 * j : 16 * (j + 1)], "little") for j in range(_CHUNKS - 1)]


def _chunks(m: np.ndarray) -> list[np.ndarray]:
    return [m[:, 16 * j : 16 * (j + 1)] for j in range(_CHUNKS)]


def _columns(m: np.ndarray) -> np.ndarray:
    """Transpose the 256 × 640 bit matrix: row ``j`` of the result is column ``j`` (32 B)."""
    bits = np.unpackbits(m, axis=1, bitorder="little")[:, :EXTENDED]
    return np.packbits(np.ascontiguousarray(bits.T), axis=1, bitorder="little")


def _unreduced_outputs(sid: bytes, cols: np.ndarray, width: int) -> list[tuple[int, ...]]:
    """Row ``j``: the ``width`` 48-byte big-endian chunks of ``XOF(prefix ‖ j ‖ column j)`` as
    integers < 2^384, *not* reduced mod q (see :meth:`ReceiverExtension.unreduced_outputs`)."""
    prefix = b"shardguard/ote/out/v1\x00" + sid
    p, n = len(prefix), cols.shape[0]
    size = p + 2 + cols.shape[1]
    inputs = np.empty((n, size), dtype=np.uint8)  # every hash input, one per row, in one buffer
    inputs[:, :p] = np.frombuffer(prefix, dtype=np.uint8)
    inputs[:, p : p + 2] = _INDEX_BYTES[:n]
    inputs[:, p + 2 :] = cols
    raw, shake, m = inputs.tobytes(), hashlib.shake_256, _OUT_MASK
    digests = [shake(raw[k : k + size]).digest(_OUT_BYTES * width) for k in range(0, n * size, size)]
    ints = map(int.from_bytes, digests, repeat(_BIG))  # one conversion per digest, then split
    if width == 3:  # the RVOLE's width: unrolled, this is the signing hot path
        return [(x >> 768, (x >> 384) & m, x & m) for x in ints]
    shifts = range(8 * _OUT_BYTES * (width - 1), -1, -8 * _OUT_BYTES)
    return [tuple((x >> k) & m for k in shifts) for x in ints]


def _outputs(sid: bytes, cols: np.ndarray, width: int) -> list[tuple[int, ...]]:
    q = _Q
    return [tuple(x % q for x in row) for row in _unreduced_outputs(sid, cols, width)]


class ReceiverExtension:
    """The receiver's side after sending: its choice bits and the columns ``ψ_j``. Secret."""

    __slots__ = ("_choices", "_cols")

    def __init__(self, choices: bytes, cols: np.ndarray) -> None:
        self._choices = choices
        self._cols = cols

    @property
    def choice_bits(self) -> list[int]:
        bits: list[int] = np.unpackbits(np.frombuffer(self._choices, dtype=np.uint8), bitorder="little").tolist()
        return bits

    def outputs(self, sid: bytes, width: int) -> list[tuple[int, ...]]:
        """``v{β_j}_j`` for every j: ``width`` scalars mod q each."""
        return _outputs(sid, self._cols, width)

    def unreduced_outputs(self, sid: bytes, width: int) -> list[tuple[int, ...]]:
        """:meth:`outputs` *before* the reduction: integers < 2^384, each only congruent mod q
        to the scalar it stands for. Reduce every value mod q (or only use it in a sum or
        product that is) before it is encoded, compared, hashed or returned."""
        return _unreduced_outputs(sid, self._cols, width)

    def __repr__(self) -> str:
        return "ReceiverExtension(<redacted>)"

    def __reduce__(self) -> str:
        raise TypeError("OT extension state is secret and cannot be pickled")


class SenderExtension:
    """The sender's side after a passing check: columns ``ζ_j`` and ``Δ``. Secret."""

    __slots__ = ("_cols", "_delta")

    def __init__(self, cols: np.ndarray, delta: bytes) -> None:
        self._cols = cols
        self._delta = delta

    def outputs(self, sid: bytes, width: int) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
        """``(v0, v1)``: both messages of every extended OT, ``width`` scalars mod q each."""
        flipped = self._cols ^ np.frombuffer(self._delta, dtype=np.uint8)
        return _outputs(sid, self._cols, width), _outputs(sid, flipped, width)

    def unreduced_outputs(self, sid: bytes, width: int) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
        """:meth:`outputs` *before* the reduction mod q; the same caveat as
        :meth:`ReceiverExtension.unreduced_outputs`."""
        flipped = self._cols ^ np.frombuffer(self._delta, dtype=np.uint8)
        return _unreduced_outputs(sid, self._cols, width), _unreduced_outputs(sid, flipped, width)

    def __repr__(self) -> str:
        return "SenderExtension(<redacted>)"

    def __reduce__(self) -> str:
        raise TypeError("OT extension state is secret and cannot be pickled")


def extend_receive(
    sid: bytes, seeds0: Sequence[bytes], seeds1: Sequence[bytes], rng: Rng
) -> tuple[ReceiverExtension, ExtensionMessage]:
    """Receiver: draw ``β`` (512 bits) and the pad; return the state and the message."""
    if len(seeds0) != BASE_OTS or len(seeds1) != BASE_OTS:
        raise ValueError("need 256 base-OT message pairs")
    choices = rng(_COLS // 8)
    beta = np.frombuffer(choices, dtype=np.uint8)
    t = _prg(sid, seeds0)
    u = t ^ _prg(sid, seeds1) ^ beta
    u_bytes = u.tobytes()
    chi = _challenge(sid, u_bytes)
    x_check = gf128.weighted_sum(_chunks(beta.reshape(1, _ROW)), chi)
    t_check = gf128.weighted_sum(_chunks(t), chi)
    state = ReceiverExtension(choices[: EXTENDED // 8], _columns(t))
    return state, ExtensionMessage(u_bytes, x_check.tobytes(), t_check.tobytes())


def extend_send(sid: bytes, delta: bytes, seeds: Sequence[bytes], msg: ExtensionMessage) -> SenderExtension:
    """Sender: check the receiver's message; raise :class:`OtConsistencyError` if it fails."""
    if len(seeds) != BASE_OTS or len(delta) != BASE_OTS // 8:
        raise ValueError("need the 256-bit base-OT choice string and 256 chosen messages")
    delta_bits = np.unpackbits(np.frombuffer(delta, dtype=np.uint8), bitorder="little")
    u = np.frombuffer(msg.u, dtype=np.uint8).reshape(BASE_OTS, _ROW)
    q = _prg(sid, seeds) ^ (u * delta_bits[:, None])
    chi = _challenge(sid, msg.u)
    q_check = gf128.weighted_sum(_chunks(q), chi)
    x = np.frombuffer(msg.x_check, dtype=np.uint8)
    expected = np.frombuffer(msg.t_check, dtype=np.uint8).reshape(BASE_OTS, 16) ^ (x * delta_bits[:, None])
    if not hmac.compare_digest(q_check.tobytes(), expected.tobytes()):
        raise OtConsistencyError("OT extension consistency check failed")
    return SenderExtension(_columns(q), delta)
