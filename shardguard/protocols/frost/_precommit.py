"""FROST signing with nonces committed ahead: one step per signer, no round between signers.

RFC 9591 §5.1 (``commit``) does not depend on the message, so a signer may run it before any
message is known and publish the commitments; RFC 9591 §5 has the Coordinator pick, per
signature, one commitment of every signer, and each signer then computes its share (§5.2) from
the message and that commitment list alone. The Coordinator aggregates (§5.3). This module is
the signer's side of that: a :class:`NoncePool` of committed nonce pairs and
:func:`sign_precommitted`. It is sans-I/O like the rest of ``protocols`` (no clock: the caller
passes the time; no randomness but the injected RNG).

What keeps it safe (RFC 9591 §7.1, §7.3, §7.4):

* **Every nonce pair is used at most once.** :meth:`NoncePool.take` removes it before any share
  is computed from it, and a share is computed only after every check of the request passed. The
  pool lives in memory only — never written, pickled or copied — so a restarted signer, or one
  whose state was restored from an old copy, has no nonce that could be used again: its
  published commitments simply become unknown (refused, :class:`NonceError`).
* **The signer signs only over a list that holds its own commitment as it made it** under that
  id (both points compared) and exactly the signing set, each signer once. The binding factors
  (§4.4) bind each share to the whole list and the message, so a Coordinator choosing lists
  for many signatures at once gains nothing from combining them (the ROS attack on two-round
  Schnorr multi-signatures that FROST's binding factor defeats).
* **Hedged nonces** (§4.1): ``H3(random ‖ secret ‖ extra)``. The RFC's ``secret`` is the signing
  share; here the key is not known yet when the nonce is made, so the pool draws its own secret
  scalar, and ``extra`` is a pool tag, a counter and the caller's ``hedge`` of each
  :meth:`NoncePool.commit` (the node passes the wall-clock time): a repeated RNG stream still
  gives distinct nonces within a pool, and a copy of the process made by a memory snapshot
  (which the enclave platforms do not allow) draws other pairs than the original unless its
  clock repeats as well.

What a Coordinator can still do: give signers different lists (the signature does not verify:
a failed request, no key material), or never use a commitment (the pool drops it when it
expires). Nothing here aggregates: the Coordinator does (§5.3), and anyone can verify the result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NoReturn

from shardguard.crypto.ciphersuite import Ciphersuite
from shardguard.crypto.frost import Commitment, prepare, sign_share
from shardguard.crypto.group import Point, Rng
from shardguard.protocols.errors import UsageError
from shardguard.protocols.frost._party import signer_ids
from shardguard.protocols.keys import KeyShare

__all__ = [
    "COMMITMENT_ID_BYTES",
    "NonceError",
    "NoncePool",
    "PrecommittedItem",
    "PrecommittedShare",
    "PublishedCommitment",
    "sign_precommitted",
]

#: Length of a commitment's id (random, chosen by the pool).
COMMITMENT_ID_BYTES = 16


class NonceError(UsageError):
    """A request names a commitment this pool cannot sign with: ``reason`` is ``unknown`` (never
    made here, used already, expired, or made by an earlier process) or ``mismatch`` (another
    hiding or binding point than the pool made under that id). Fields only, no secret."""

    def __init__(self, reason: str, commitment: bytes) -> None:
        self.reason = reason
        self.commitment = commitment.hex()
        super().__init__(f"commitment {self.commitment}: {reason}")


@dataclasses.dataclass(frozen=True, slots=True)
class PublishedCommitment:
    """What a signer publishes of one nonce pair: its id and ``(D, E) = (d·G, e·G)`` (§5.1)."""

    id: bytes
    hiding: Point
    binding: Point


class NoncePool:
    """One signer's nonce pairs committed ahead, for one suite: in memory only, each used once.

    ``capacity`` bounds what it holds (a Coordinator that never uses commitments makes the
    signer hold them only until :meth:`expire`).
    """

    __slots__ = ("_count", "_entries", "_rng", "_secret", "_tag", "capacity", "suite")

    def __init__(self, suite: Ciphersuite, rng: Rng, *, capacity: int = 4096) -> None:
        if capacity < 1:
            raise UsageError("a nonce pool holds at least one pair")
        self.suite = suite
        self.capacity = capacity
        self._rng = rng
        self._secret = suite.group.random_scalar(rng)
        self._tag = rng(16)
        self._count = 0
        # id -> (d, e, D, E, made at)
        self._entries: dict[bytes, tuple[int, int, Point, Point, float]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<NoncePool {self.suite.scheme}: {len(self._entries)} unused>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("nonces are never pickled")

    def __copy__(self) -> NoReturn:
        raise TypeError("nonces are never copied")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError("nonces are never copied")

    def commit(self, count: int, *, now: float, hedge: bytes = b"") -> list[PublishedCommitment]:
        """RFC 9591 §5.1 ``commit``, ``count`` times: fresh nonce pairs, kept here; their public
        commitments, to publish. ``hedge`` is mixed into every nonce (module docstring)."""
        if type(count) is not int or count < 1:
            raise UsageError("commit at least one nonce pair")
        if len(self._entries) + count > self.capacity:
            raise UsageError(f"the pool holds at most {self.capacity} unused pairs ({len(self._entries)} now)")
        g = self.suite.group
        out = []
        for _ in range(count):
            pair = []
            for _ in range(2):
                self._count += 1
                extra = self._tag + self._count.to_bytes(8, "big") + hedge
                pair.append(self.suite.nonce_generate(self._secret, self._rng, extra))
            d, e = pair
            cid = self._rng(COMMITMENT_ID_BYTES)
            while cid in self._entries:  # pragma: no cover - 128 random bits
                cid = self._rng(COMMITMENT_ID_BYTES)
            hiding, binding = g.base_mul(d), g.base_mul(e)
            self._entries[cid] = (d, e, hiding, binding, now)
            out.append(PublishedCommitment(cid, hiding, binding))
        return out

    def check(self, commitment_id: bytes, hiding: Point, binding: Point) -> None:
        """Raise :class:`NonceError` unless the pool holds ``commitment_id`` with these points."""
        entry = self._entries.get(commitment_id)
        if entry is None:
            raise NonceError("unknown", commitment_id)
        if entry[2] != hiding or entry[3] != binding:
            raise NonceError("mismatch", commitment_id)

    def take(self, commitment_id: bytes, hiding: Point, binding: Point) -> tuple[int, int]:
        """The nonce pair committed as ``(hiding, binding)`` under ``commitment_id``, removed: it
        can never be taken again, whatever happens next."""
        self.check(commitment_id, hiding, binding)
        d, e, _, _, _ = self._entries.pop(commitment_id)
        return d, e

    def discard(self, commitment_ids: Sequence[bytes]) -> int:
        """Drop these pairs unused (their commitments were never published); how many."""
        return sum(self._entries.pop(cid, None) is not None for cid in commitment_ids)

    def expire(self, made_before: float) -> int:
        """Drop the pairs made before ``made_before``; how many. Pairs are kept in the order they
        were made, so only the expired ones are looked at (``now`` passed to :meth:`commit` must
        not go backwards: a monotonic clock)."""
        old = []
        for cid, entry in self._entries.items():  # oldest first: made in time order
            if entry[4] >= made_before:
                break
            old.append(cid)
        for cid in old:
            del self._entries[cid]
        return len(old)


@dataclasses.dataclass(frozen=True, slots=True)
class PrecommittedItem:
    """One signature of a request: the message, the Coordinator's commitment list (one
    ``(identifier, D, E)`` per signer) and the id of this signer's commitment in it."""

    message: bytes
    commitments: tuple[Commitment, ...]
    commitment_id: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class PrecommittedShare:
    """A signer's contribution to one signature (public): the group commitment R it derived
    (``SerializeElement``, after the suite's parity rule: every honest signer of the same list
    derives the same bytes) and its signature share ``z_i`` (§5.2). The Coordinator checks that
    every R agrees and sums the shares (§5.3)."""

    group_commitment: bytes
    share: int


def sign_precommitted(
    key_share: KeyShare, *, signers: Sequence[int], items: Sequence[PrecommittedItem], pool: NoncePool
) -> list[PrecommittedShare]:
    """RFC 9591 §5.2 ``sign`` for each item, with nonces committed ahead (module docstring).

    Every item is checked before any nonce is taken: the signing set (at least t holders, us
    among them), each list holding exactly that set, once each, and our own commitment as the
    pool made it. Then every item's nonces are taken (consumed for good) and its share computed.
    So a request refused is refused whole, and no nonce is used for a share that is not made.

    Raises:
        UsageError: a malformed request (``NonceError`` for our own commitment).
    """
    public = key_share.public
    suite = public.suite
    if pool.suite is not suite:
        raise UsageError(f"the pool is for {pool.suite.scheme}, the key is {suite.scheme}")
    ids = signer_ids(key_share, signers)
    me = key_share.identifier
    if not items:
        raise UsageError("sign at least one message")
    g = suite.group
    own: list[tuple[Point, Point]] = []
    for k, item in enumerate(items):
        if type(item.message) is not bytes:
            raise UsageError(f"items[{k}]: the message must be bytes")
        for c in item.commitments:
            for p in c[1:]:
                if not isinstance(p, Point) or p.group is not g or p.is_identity:
                    raise UsageError(f"items[{k}]: signer {c[0]}'s commitment is not a point of {suite.scheme}")
        listed = [c[0] for c in item.commitments]
        if sorted(listed) != list(ids) or len(set(listed)) != len(listed):
            raise UsageError(f"items[{k}]: the commitment list must hold exactly the signers {list(ids)}, once each")
        mine = next(c for c in item.commitments if c[0] == me)
        pool.check(item.commitment_id, mine[1], mine[2])
        own.append((mine[1], mine[2]))
    if len({item.commitment_id for item in items}) != len(items):
        raise UsageError("one commitment of ours is named by two items")
    nonces = [pool.take(item.commitment_id, d, e) for item, (d, e) in zip(items, own, strict=True)]
    out = []
    for item, (d, e) in zip(items, nonces, strict=True):
        ctx = prepare(suite, public.group_key, item.commitments, item.message, own=(me, d, e))
        if ctx.group_commitment.is_identity:  # needs a hash preimage; refused (the nonces are spent)
            raise UsageError("the commitment list gives the identity as group commitment")
        z = sign_share(
            suite,
            hiding=d,
            binding=e,
            rho=ctx.rho[me],
            lam=ctx.lambdas[me],
            signing_share=key_share.signing_share * ctx.key_factor,
            challenge=ctx.challenge,
            nonce_factor=ctx.nonce_factor,
        )
        out.append(PrecommittedShare(g.encode(ctx.group_commitment), z))
    return out
