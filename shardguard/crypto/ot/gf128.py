"""GF(2^128) arithmetic on many field elements at once, for the OT-extension check.

.. danger:: hazmat.

Field ``GF(2)[x] / (x^128 + x^7 + x^2 + x + 1)`` (the SoftSpokenOT / KOS consistency-check
field, DKLs23 spec §2). Elements are 128-bit integers, bit ``i`` = coefficient of ``x^i``,
serialised as 16 little-endian bytes.

Vectorised without a Python loop per bit of data: ``rows`` elements are packed into one big
integer with a 256-bit slot each, so a carry-less product by a public multiplier is a 4-bit
window method over the *multiplier* (the Fiat–Shamir challenge, public): 14 whole-pack
shift/xor operations make the multiples ``pack·v`` for ``v < 16``, then one whole-pack shift
and one xor per nibble of the multiplier (Horner, most significant nibble first). A reduction
is a handful of whole-pack operations. Timing depends on the public multiplier only: the
table is indexed by the multiplier's nibbles, never by the packed (secret) data, and the
sequence of operations is the same for every packed value.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["ELEMENT_BYTES", "mul", "pack", "reduce", "unpack", "weighted_sum"]

ELEMENT_BYTES = 16
_SLOT_BYTES = 32
_MASKS: dict[int, int] = {}

U8 = npt.NDArray[np.uint8]


def _mask(rows: int) -> int:
    m = _MASKS.get(rows)
    if m is None:
        m = _MASKS[rows] = int.from_bytes((b"\xff" * 16 + b"\x00" * 16) * rows, "little")
    return m


def pack(elements: U8) -> int:
    """``(rows, 16)`` bytes → one integer with element ``ℓ`` in bits ``[256ℓ, 256ℓ+128)``."""
    rows = elements.shape[0]
    slots = np.zeros((rows, _SLOT_BYTES), dtype=np.uint8)
    slots[:, :ELEMENT_BYTES] = elements
    return int.from_bytes(slots.tobytes(), "little")


def unpack(packed: int, rows: int) -> U8:
    """Inverse of :func:`pack` for reduced values."""
    raw = np.frombuffer(packed.to_bytes(rows * _SLOT_BYTES, "little"), dtype=np.uint8).reshape(rows, _SLOT_BYTES)
    return raw[:, :ELEMENT_BYTES]


def _multiples(packed: int) -> list[int]:
    """``[packed·v for v in 0..15]`` (carry-less): 7 whole-pack shifts and 7 xors."""
    table = [0, packed]
    for v in range(2, 16):
        table.append(table[v >> 1] << 1 if v & 1 == 0 else table[v - 1] ^ packed)
    return table


def mul(packed: int, c: int) -> int:
    """Carry-less product of every packed element by ``c`` (unreduced, < 2^255 per slot for
    ``c < 2^128``). 4-bit window, Horner from the top nibble; the work depends on ``c`` only."""
    if c < 0:
        raise ValueError("the multiplier must be a non-negative integer")
    table = _multiples(packed)
    acc = 0
    for shift in range(((c.bit_length() + 3) & ~3) - 4, -4, -4):
        acc = (acc << 4) ^ table[(c >> shift) & 15]
    return acc


def reduce(packed: int, rows: int) -> int:
    """Reduce every slot modulo ``x^128 + x^7 + x^2 + x + 1`` (two folds of the high half)."""
    m = _mask(rows)
    for _ in range(2):
        hi = (packed >> 128) & m
        packed = (packed & m) ^ hi ^ (hi << 1) ^ (hi << 2) ^ (hi << 7)
    return packed


def weighted_sum(chunks: list[U8], weights: list[int]) -> U8:
    """``Σ_j weights[j]·chunks[j] + chunks[-1]`` per row, in GF(2^128) (``len(weights) ==
    len(chunks) − 1``; the last chunk is the random pad, weight 1)."""
    rows = chunks[0].shape[0]
    acc = pack(chunks[-1])
    for chunk, w in zip(chunks[:-1], weights, strict=True):
        acc ^= mul(pack(chunk), w)
    return unpack(reduce(acc, rows), rows)
