"""A DKLs23 key share: the Shamir share of the DKG plus the pairwise OT setup (DKLs23 spec §1).

Per other holder ``j`` a share keeps, for the OT extension where it is the *receiver* ("Bob"),
both messages of the 256 base OTs it sent to ``j``; for the one where it is the *sender*
("Alice"), its base-OT choice string ``Δ`` and the 256 chosen messages; and the pairwise
zero-share seed. Plus the BIP32 chain code, the id of the setup session, and the set of
counterparties banned after a failed check (cleared only by a refresh, which replaces all
pairwise state).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from shardguard.crypto.ot import BASE_OTS
from shardguard.crypto.ot.extension import EXTENDED
from shardguard.crypto.secp256k1 import SECP256K1
from shardguard.protocols.errors import UsageError
from shardguard.protocols.keys import KeyFileError, KeyShare, PublicKeyPackage

__all__ = ["EcdsaKeyShare", "PairwiseSetup", "gadget_vector"]

_SEEDS = BASE_OTS * 32


class PairwiseSetup:
    """Secret OT state towards one peer. Not picklable; repr redacted."""

    __slots__ = ("chosen", "delta", "seeds0", "seeds1", "zero_seed")

    def __init__(self, *, seeds0: bytes, seeds1: bytes, delta: bytes, chosen: bytes, zero_seed: bytes) -> None:
        for name, v, n in (("seeds0", seeds0, _SEEDS), ("seeds1", seeds1, _SEEDS), ("chosen", chosen, _SEEDS)):
            if type(v) is not bytes or len(v) != n:
                raise KeyFileError("wrong length", name)
        if type(delta) is not bytes or len(delta) != 32:
            raise KeyFileError("wrong length", "delta")
        if type(zero_seed) is not bytes or len(zero_seed) != 32:
            raise KeyFileError("wrong length", "zero_seed")
        self.seeds0 = seeds0
        self.seeds1 = seeds1
        self.delta = delta
        self.chosen = chosen
        self.zero_seed = zero_seed

    @staticmethod
    def split(blob: bytes) -> list[bytes]:
        return [blob[32 * i : 32 * (i + 1)] for i in range(BASE_OTS)]

    def to_dict(self) -> dict[str, str]:
        return {k: getattr(self, k).hex() for k in self.__slots__}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PairwiseSetup:
        try:
            return cls(**{k: bytes.fromhex(d[k]) for k in cls.__slots__})
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, KeyFileError):
                raise
            raise KeyFileError("missing or malformed pairwise OT state") from None

    def __repr__(self) -> str:
        return "PairwiseSetup(<redacted>)"

    def __reduce__(self) -> Any:
        raise TypeError("pairwise OT state is secret and cannot be pickled")


@functools.lru_cache(maxsize=64)
def gadget_vector(setup_id: bytes) -> tuple[int, ...]:
    """The public gadget ``g ∈ Z_q^ξ`` of a key's multiplications (DKLs23 spec §3), fixed per
    setup (as OC does): ``g_j = H_q(setup_id, j)`` with 48-byte wide reduction."""
    q = SECP256K1.order
    prefix = b"shardguard/dkls23/gadget/v1\x00" + setup_id
    return tuple(int.from_bytes(hashlib.shake_256(prefix + j.to_bytes(2, "big")).digest(48), "big") % q for j in range(EXTENDED))


class EcdsaKeyShare:
    """One holder's DKLs23 share. Immutable: a ban returns a new object to persist."""

    __slots__ = ("_pairs", "banned", "chain_code", "setup_id", "share")

    def __init__(
        self,
        *,
        share: KeyShare,
        chain_code: bytes,
        setup_id: bytes,
        pairs: Mapping[int, PairwiseSetup],
        banned: Iterable[int] = (),
    ) -> None:
        if share.suite.frost:
            raise UsageError("a DKLs23 share needs an ECDSA key")
        if type(chain_code) is not bytes or len(chain_code) != 32:
            raise KeyFileError("chain code must be 32 bytes", "chain_code")
        if type(setup_id) is not bytes or len(setup_id) != 32:
            raise KeyFileError("setup id must be 32 bytes", "setup_id")
        others = set(share.public.participants) - {share.identifier}
        if set(pairs) != others:
            raise KeyFileError("pairwise OT state must cover exactly the other holders", "pairs")
        bans = frozenset(banned)
        if not bans <= others:
            raise KeyFileError("a ban names a party that is not another holder", "banned")
        self.share = share
        self.chain_code = chain_code
        self.setup_id = setup_id
        self._pairs = MappingProxyType(dict(pairs))
        self.banned = bans

    @property
    def identifier(self) -> int:
        return self.share.identifier

    @property
    def public(self) -> PublicKeyPackage:
        return self.share.public

    def pair(self, peer: int) -> PairwiseSetup:
        return self._pairs[peer]

    def with_bans(self, parties: Iterable[int]) -> EcdsaKeyShare:
        """This share with ``parties`` added to its ban list (to be written back at once)."""
        return EcdsaKeyShare(
            share=self.share,
            chain_code=self.chain_code,
            setup_id=self.setup_id,
            pairs=self._pairs,
            banned=self.banned | set(parties),
        )

    def __repr__(self) -> str:
        return f"EcdsaKeyShare(identifier={self.identifier}, epoch={self.public.epoch}, banned={sorted(self.banned)}, <redacted>)"

    def __reduce__(self) -> Any:
        raise TypeError("EcdsaKeyShare holds secrets and cannot be pickled")

    def to_dict(self) -> dict[str, Any]:
        """Explicit export (contains the secret share and OT state)."""
        return {
            **self.share.to_dict(),
            "dkls23": {
                "chain_code": self.chain_code.hex(),
                "setup_id": self.setup_id.hex(),
                "banned": sorted(self.banned),
                "pairs": {str(j): p.to_dict() for j, p in sorted(self._pairs.items())},
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EcdsaKeyShare:
        share = KeyShare.from_dict(d)
        ext = d.get("dkls23")
        if not isinstance(ext, Mapping) or not isinstance(ext.get("pairs"), Mapping) or not isinstance(ext.get("banned"), list):
            raise KeyFileError("missing or malformed DKLs23 section", "dkls23")
        try:
            pairs = {int(j): PairwiseSetup.from_dict(p) for j, p in ext["pairs"].items()}
            return cls(
                share=share,
                chain_code=bytes.fromhex(ext["chain_code"]),
                setup_id=bytes.fromhex(ext["setup_id"]),
                pairs=pairs,
                banned=[int(b) for b in ext["banned"]],
            )
        except (KeyError, TypeError, ValueError, UsageError) as e:
            if isinstance(e, KeyFileError):
                raise
            raise KeyFileError("malformed DKLs23 section", "dkls23") from None
