"""Run n protocol parties in one process, messages passed in memory.

For the CLI's local mode, the demo, tests and benchmarks. Each message is routed exactly as a
transport would route it: broadcasts to every other party, point-to-point to its recipient.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from shardguard.protocols.dealer import trusted_dealer_keygen
from shardguard.protocols.dkg import Dkg
from shardguard.protocols.dkls23 import DklsPresigner, DklsSigner, EcdsaKeyShare, EcdsaSignature, OtSetup, Presignature
from shardguard.protocols.frost import FrostSigner
from shardguard.protocols.keys import KeyShare, PublicKeyPackage
from shardguard.protocols.message import Message
from shardguard.protocols.party import Party
from shardguard.protocols.refresh import Refresh
from shardguard.protocols.repair import RepairHelper, RepairTarget
from shardguard.protocols.suites import decode_secret, suite_by_scheme

__all__ = [
    "decode_secret",
    "ecdsa_keygen",
    "ecdsa_presign",
    "ecdsa_refresh",
    "ecdsa_setup",
    "ecdsa_sign",
    "keygen",
    "refresh",
    "repair",
    "run",
    "sign",
    "split",
]

R = TypeVar("R")
Rng = Callable[[int], bytes]


def run(parties: Mapping[int, Party[R]]) -> dict[int, R]:
    """Drive every party to completion; return ``{id: result}``.

    A :class:`~shardguard.protocols.errors.ProtocolAbort` from any party propagates.
    """
    queue: deque[Message] = deque()
    for p in parties.values():
        queue.extend(p.start())
    while queue:
        m = queue.popleft()
        targets = [i for i in parties if i != m.sender] if m.is_broadcast else [m.recipient]
        for i in targets:
            queue.extend(parties[i].receive(m))
    return {i: p.result for i, p in parties.items()}


def keygen(
    scheme: str, threshold: int, parties: int, *, rng: Rng = secrets.token_bytes, allow_single: bool = False
) -> list[KeyShare]:
    """Pedersen DKG among parties ``1..parties``."""
    suite = suite_by_scheme(scheme)
    ids = list(range(1, parties + 1))
    instance = rng(32)
    dkg = {
        i: Dkg(suite, identifier=i, participants=ids, threshold=threshold, instance=instance, rng=rng, allow_single=allow_single)
        for i in ids
    }
    out = run(dkg)
    return [out[i] for i in ids]


def split(scheme: str, secret: int | None, threshold: int, parties: int, *, rng: Rng = secrets.token_bytes) -> list[KeyShare]:
    """Trusted-dealer split of ``secret`` (or a fresh key) among ``1..parties``."""
    return trusted_dealer_keygen(suite_by_scheme(scheme), secret, threshold, list(range(1, parties + 1)), rng=rng)


def sign(shares: Sequence[KeyShare], message: bytes, *, rng: Rng = secrets.token_bytes) -> bytes:
    """FROST-sign ``message`` with exactly the given shares as signers."""
    signers = [s.identifier for s in shares]
    instance = rng(32)
    parties = {s.identifier: FrostSigner(s, signers=signers, message=message, instance=instance, rng=rng) for s in shares}
    sigs = set(run(parties).values())
    if len(sigs) != 1:  # pragma: no cover - every honest signer aggregates the same signature
        raise RuntimeError("signers disagree on the signature")
    return sigs.pop()


def refresh(shares: Sequence[KeyShare], *, rng: Rng = secrets.token_bytes) -> list[KeyShare]:
    """Proactive refresh among the given holders (those left out are removed)."""
    ids = [s.identifier for s in shares]
    instance = rng(32)
    parties = {s.identifier: Refresh(s, participants=ids, instance=instance, rng=rng) for s in shares}
    out = run(parties)
    return [out[i] for i in ids]


def repair(helpers: Sequence[KeyShare], lost: int, public: PublicKeyPackage, *, rng: Rng = secrets.token_bytes) -> KeyShare:
    """Rebuild party ``lost``'s share from ``helpers`` (at least t holders)."""
    ids = [h.identifier for h in helpers]
    instance = rng(32)
    parties: dict[int, Party[object]] = {
        h.identifier: RepairHelper(h, helpers=ids, lost=lost, instance=instance, rng=rng) for h in helpers
    }
    parties[lost] = RepairTarget(public, identifier=lost, helpers=ids, instance=instance)
    result = run(parties)[lost]
    if not isinstance(result, KeyShare):  # pragma: no cover - RepairTarget yields a KeyShare
        raise RuntimeError("repair produced no share")
    return result


# -- threshold ECDSA (DKLs23) -------------------------------------------------------------------


def ecdsa_setup(
    shares: Sequence[KeyShare], *, chain_code: bytes | None = None, rng: Rng = secrets.token_bytes
) -> list[EcdsaKeyShare]:
    """Pairwise OT setup among all holders of an ``ecdsa`` key (after DKG, dealer or refresh)."""
    instance = rng(32)
    out = run({s.identifier: OtSetup(s, instance=instance, rng=rng, chain_code=chain_code) for s in shares})
    return [out[s.identifier] for s in shares]


def ecdsa_keygen(threshold: int, parties: int, *, rng: Rng = secrets.token_bytes) -> list[EcdsaKeyShare]:
    """DKG and OT setup among parties ``1..parties``; the key gets a jointly drawn chain code."""
    return ecdsa_setup(keygen("ecdsa", threshold, parties, rng=rng), rng=rng)


def ecdsa_sign(
    shares: Sequence[EcdsaKeyShare], digest: bytes, *, path: Sequence[int] = (), rng: Rng = secrets.token_bytes
) -> EcdsaSignature:
    """DKLs23-sign the 32-byte ``digest`` with exactly the given shares (key derived by the
    non-hardened BIP32 ``path``, e.g. ``(0, 1)`` for ``m/0/1``)."""
    signers = [s.identifier for s in shares]
    instance = rng(32)
    parties = {s.identifier: DklsSigner(s, signers=signers, digest=digest, instance=instance, rng=rng, path=path) for s in shares}
    sigs = set(run(parties).values())
    if len(sigs) != 1:  # pragma: no cover - every honest signer combines the same signature
        raise RuntimeError("signers disagree on the signature")
    return sigs.pop()


def ecdsa_presign(shares: Sequence[EcdsaKeyShare], *, rng: Rng = secrets.token_bytes) -> list[Presignature]:
    """One DKLs23 pre-signature of the key (path ``m``) by exactly the given shares, one part
    per share in their order: each part signs one digest (``Presignature.share``) and the
    parts combine with ``presigned_signature``."""
    signers = [s.identifier for s in shares]
    instance = rng(32)
    out = run({s.identifier: DklsPresigner(s, signers=signers, instance=instance, rng=rng) for s in shares})
    return [out[s.identifier] for s in shares]


def ecdsa_refresh(shares: Sequence[EcdsaKeyShare], *, rng: Rng = secrets.token_bytes) -> list[EcdsaKeyShare]:
    """New Shamir shares of the same key, then fresh OT state and zero seeds (bans cleared)."""
    chain_codes = {s.chain_code for s in shares}
    if len(chain_codes) != 1:
        raise ValueError("the shares disagree on the chain code")
    new = refresh([s.share for s in shares], rng=rng)
    return ecdsa_setup(new, chain_code=chain_codes.pop(), rng=rng)
