"""DKLs23 payloads: OT setup (DKG) and the three signing rounds (DKLs23 spec §1.2, §4).

Every field is fixed-size or a point/scalar; ``SPEC`` lists them in wire order and drives
encoding, decoding and validation, so no payload can skip a check.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from shardguard.crypto.ciphersuite import Ciphersuite
from shardguard.crypto.group import Point
from shardguard.crypto.ot.base import MESSAGE_SIZE as BASE_OT_SIZE
from shardguard.crypto.ot.extension import CHECK_SIZE, EXTENDED, U_SIZE
from shardguard.protocols import wire as w

__all__ = [
    "A_TILDE_SIZE",
    "SetupCommit",
    "SetupConfirm",
    "SetupOtAnswer",
    "SetupOtStart",
    "SetupReveal",
    "SignCommit",
    "SignMultiply",
    "SignOtStart",
    "SignShare",
]

#: ``ã``: ξ rows of ℓ + ρ = 3 scalars.
A_TILDE_SIZE = EXTENDED * 3 * 32
_DIGEST = 32
POINT = "point"
SCALAR = "scalar"
ECHO = "echo"  # tuple of 32-byte digests, one per participant


class _Fixed(w.Payload):
    """A payload whose fields are described by ``SPEC``: ``(name, size in bytes | POINT |
    SCALAR | ECHO)``."""

    __slots__ = ()
    SPEC: ClassVar[tuple[tuple[str, int | str], ...]]

    def __post_init__(self) -> None:
        for name, kind in self.SPEC:
            v = getattr(self, name)
            if kind == POINT:
                w.check_point(self.suite, v, name)
            elif kind == SCALAR:
                w.check_scalar(self.suite, v, name)
            elif kind == ECHO:
                if type(v) is not tuple or not 1 <= len(v) <= 255 or not all(type(d) is bytes and len(d) == _DIGEST for d in v):
                    raise w.WireError(w.WireReason.BAD_FIELD, name)
            elif type(v) is not bytes or len(v) != kind:
                raise w.WireError(w.WireReason.BAD_FIELD, name)

    def _fields(self) -> list[Any]:
        g = self.suite.group
        out: list[Any] = []
        for name, kind in self.SPEC:
            v = getattr(self, name)
            out.append(g.encode(v) if kind == POINT else g.scalar_encode(v) if kind == SCALAR else list(v) if kind == ECHO else v)
        return out

    @classmethod
    def _from_fields(cls, suite: Ciphersuite, fields: list[Any]) -> w.Payload:
        w.expect_len(fields, len(cls.SPEC))
        values: dict[str, Any] = {}
        for (name, kind), raw in zip(cls.SPEC, fields, strict=True):
            if kind == POINT:
                values[name] = w.point(suite, raw, name)
            elif kind == SCALAR:
                values[name] = w.scalar(suite, raw, name)
            elif kind == ECHO:
                values[name] = tuple(w.as_list(raw, name))
            else:
                values[name] = w.as_bytes(raw, name)
        return cls(suite=suite, **values)  # type: ignore[call-arg]  # subclasses are dataclasses


# -- OT setup (after the DKG, and again after every refresh) -----------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class SetupCommit(_Fixed):
    """Round 1 broadcast: commitment to the sender's chain-code contribution."""

    TAG = 40
    SPEC = (("commitment", _DIGEST),)
    suite: Ciphersuite
    commitment: bytes


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class SetupOtStart(_Fixed):
    """Round 1 point-to-point: endemic-OT receiver message (the sender of this message will be
    the OT-extension *sender*, "Alice", towards the recipient) and, from the lower id of the
    pair, the pairwise zero-share seed (32 zero bytes from the higher id). Secret."""

    TAG = 41
    SECRET = True
    SPEC = (("base_ot", BASE_OT_SIZE), ("zero_seed", 32))
    suite: Ciphersuite
    base_ot: bytes
    zero_seed: bytes


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class SetupReveal(_Fixed):
    """Round 2 broadcast: chain-code contribution and salt, and the echo of every round-1
    broadcast as the sender saw it."""

    TAG = 42
    SPEC = (("contribution", 32), ("salt", 32), ("echo", ECHO))
    suite: Ciphersuite
    contribution: bytes
    salt: bytes
    echo: tuple[bytes, ...]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class SetupOtAnswer(_Fixed):
    """Round 2 point-to-point: endemic-OT sender answer."""

    TAG = 43
    SPEC = (("base_ot", BASE_OT_SIZE),)
    suite: Ciphersuite
    base_ot: bytes


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class SetupConfirm(_Fixed):
    """Round 3 broadcast: digest of the setup the sender will store (key package, chain code,
    every broadcast). Nobody keeps the result before all confirmations agree."""

    TAG = 44
    SPEC = (("digest", _DIGEST),)
    suite: Ciphersuite
    digest: bytes


# -- signing (DKLs23 Protocol 3.6, three rounds) ----------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class SignCommit(_Fixed):
    """Round 1 broadcast: fresh session randomness and the commitment to ``R_i``."""

    TAG = 45
    SPEC = (("nonce", 32), ("commitment", _DIGEST))
    suite: Ciphersuite
    nonce: bytes
    commitment: bytes


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class SignOtStart(_Fixed):
    """Round 1 point-to-point: the sender, as RVOLE receiver ("Bob"), starts the OT extension;
    ``nonce`` (its fresh session randomness) keys the extension's PRG."""

    TAG = 46
    SPEC = (("nonce", 32), ("u", U_SIZE), ("x_check", 16), ("t_check", CHECK_SIZE))
    suite: Ciphersuite
    nonce: bytes
    u: bytes
    x_check: bytes
    t_check: bytes


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class SignMultiply(_Fixed):
    """Round 2 point-to-point: echo of round 1, the opening of ``R_i``, the sender's RVOLE
    answer as "Alice" (``ã``, ``η``, ``μ``), ``Γ^u``, ``Γ^v``, ``ψ`` and ``pk_i``."""

    TAG = 47
    SPEC = (
        ("echo", ECHO),
        ("big_r", POINT),
        ("salt", 32),
        ("a_tilde", A_TILDE_SIZE),
        ("eta", SCALAR),
        ("mu", 64),
        ("gamma_u", POINT),
        ("gamma_v", POINT),
        ("psi", SCALAR),
        ("pk", POINT),
    )
    suite: Ciphersuite
    echo: tuple[bytes, ...]
    big_r: Point
    salt: bytes
    a_tilde: bytes
    eta: int
    mu: bytes
    gamma_u: Point
    gamma_v: Point
    psi: int
    pk: Point


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class SignShare(_Fixed):
    """Round 3 broadcast: ``(u_i, w_i)``; the signature is ``Σw / Σu``."""

    TAG = 48
    SPEC = (("u", SCALAR), ("w", SCALAR))
    suite: Ciphersuite
    u: int
    w: int
