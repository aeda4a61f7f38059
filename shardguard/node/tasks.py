"""What a node does for each kind of task: build the protocol parties, drive them, keep the
results (ARCHITECTURE §7).

A task names the job, its kind (``keygen``, ``sign``, ``presign``, ``refresh``), the scheme, the
participants as ``protocol index -> node id``, our own index, a coordinator-chosen 32-byte
``instance`` and the parameters (for signing: the digest or message, path, signer indices).
The coordinator is untrusted: every value is validated here, and the protocols bind all of
them into their session ids, so a coordinator that tells nodes different things only gets an
aborted session.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from shardguard.channel import AdmittedPeer, NodeKeys, PeerCard
from shardguard.crypto.errors import CryptoError
from shardguard.node.engine import Inbox, Relay, drive
from shardguard.protocols.dkg import Dkg
from shardguard.protocols.dkls23 import DklsPresigner, DklsSigner, EcdsaKeyShare, OtSetup, Presignature, parse_path
from shardguard.protocols.errors import ProtocolAbort, UsageError
from shardguard.protocols.frost import COMMITMENT_ID_BYTES, FrostBatchSigner, FrostSigner, PrecommittedItem, signer_ids
from shardguard.protocols.keys import KeyShare
from shardguard.protocols.refresh import Refresh
from shardguard.protocols.suites import SCHEMES, suite_by_scheme

__all__ = [
    "KINDS", "ShareStore", "Task", "TaskError", "check_wire", "clocked_rng", "deadline_at", "precommitted_items", "run_task",
    "session_instance", "share_scheme",
]  # fmt: skip

KINDS = ("keygen", "sign", "presign", "refresh", "repair", "witness")
_COMMITMENT_FIELDS = frozenset({"index", "id", "hiding", "binding", "signature"})
Share = KeyShare | EcdsaKeyShare
Rng = Callable[[int], bytes]


class TaskError(ValueError):
    """The task itself is malformed (bad kind, scheme, ids, parameters)."""

    def __init__(self, what: str, field: str = "") -> None:
        self.what = what
        self.field = field
        super().__init__(f"{what}{f' ({field})' if field else ''}")


class OneStepUnavailable(TaskError):
    """A one-step signing this node cannot take: it holds no such pre-signature (used,
    dropped, expired, or made by an earlier process), or its peers have not yet confirmed its
    state since it started. Nothing was released; the coordinator runs the request again in
    rounds (API.md §1.13, §1.15)."""


_MAX_PARTIES = 255
_NAME_CHARS = 128
_LOWER_HEX_DIGITS = frozenset("0123456789abcdef")


def _need(ok: bool, what: str, field: str) -> None:
    if not ok:
        raise TaskError(what, field)


def _is_int(value: Any, lo: int, hi: int) -> bool:
    return type(value) is int and lo <= value <= hi  # not a bool, not a float


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _NAME_CHARS


def check_wire(raw: Mapping[str, Any]) -> None:
    """The shape of a task as it comes off the wire (API.md §1.3), checked before any field is
    used: each field of the right type and range, else :class:`TaskError` naming it. The
    values themselves (kind, scheme, who takes part, parameters by kind) are checked where
    they are used; this only makes sure that using them cannot fail for a wrong type."""
    _need(_is_name(raw.get("kind")), "the task kind must be a string of 1 to 128 characters", "kind")
    _need(_is_name(raw.get("key_id")), "key_id must be a string of 1 to 128 characters", "key_id")
    _need(_is_name(raw.get("scheme")), "scheme must be a string of 1 to 128 characters", "scheme")
    _need(_is_int(raw.get("threshold"), 1, _MAX_PARTIES), f"threshold must be an integer in 1..{_MAX_PARTIES}", "threshold")
    epoch = raw.get("epoch")
    _need(epoch is None or _is_int(epoch, 0, 2**63 - 1), "epoch must be a non-negative integer", "epoch")
    instance = raw.get("instance")
    _need(
        isinstance(instance, str) and len(instance) == 64 and set(instance) <= _LOWER_HEX_DIGITS,
        "instance must be 64 lower-case hex digits",
        "instance",
    )
    you = raw.get("you")
    _need(isinstance(you, dict) and _is_int(you.get("index"), 1, _MAX_PARTIES), "you.index must be a party index", "you")
    parts = raw.get("participants")
    if not (isinstance(parts, list) and 0 < len(parts) <= _MAX_PARTIES):
        raise TaskError(f"participants must list 1 to {_MAX_PARTIES}", "participants")
    for i, p in enumerate(parts):
        _need(isinstance(p, dict), "each participant is an object", f"participants[{i}]")
        _need(_is_int(p.get("index"), 1, _MAX_PARTIES), "a participant's index must be a party index", f"participants[{i}].index")
        _need(_is_name(p.get("node_id")), "a participant's node_id must be a string of 1 to 128 characters",
              f"participants[{i}].node_id")  # fmt: skip
    committee = raw.get("committee")
    if committee is not None:
        _need(isinstance(committee, list) and len(committee) <= _MAX_PARTIES, "committee must be a list", "committee")
        for i, c in enumerate(committee):
            _need(isinstance(c, dict) and _is_int(c.get("index"), 1, _MAX_PARTIES) and _is_name(c.get("node_id")),
                  "a committee entry names a node_id and its index", f"committee[{i}]")  # fmt: skip
    _need(raw.get("params") is None or isinstance(raw.get("params"), dict), "params must be an object", "params")
    public_key = raw.get("public_key")
    _need(public_key is None or isinstance(public_key, str), "public_key must be a hex string or null", "public_key")
    deadline_at(raw)


def deadline_at(raw: Mapping[str, Any]) -> int:
    """The task's ``deadline`` (required: the session is bound to it, :func:`session_instance`)
    as whole POSIX seconds, rounded down, else :class:`TaskError`. Whole seconds everywhere:
    two deadlines in one second are one session, so the node must hold them for one."""
    deadline = raw.get("deadline")
    try:
        when = dt.datetime.fromisoformat(deadline) if isinstance(deadline, str) and len(deadline) <= 64 else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise TaskError("deadline must be an ISO 8601 time with its offset", "deadline")
    try:
        return math.floor(when.timestamp())
    except (OverflowError, ValueError):  # e.g. year 1 with a positive offset
        raise TaskError("deadline is out of range", "deadline") from None


def session_instance(instance: bytes, deadline: int) -> bytes:
    """The instance a task's sessions run under: the coordinator's ``instance`` bound to the
    job's deadline (:func:`deadline_at`; the same for every participant, API.md §1.3). A node runs a
    session instance once while its deadline is within reach and refuses deadlines past that,
    so a relay cannot run a finished session again and replay its peers' envelopes in it
    (docs/NODE.md, "Each session once")."""
    return hashlib.sha256(
        b"shardguard/node/session/v1\x00" + instance + deadline.to_bytes(8, "big", signed=True)
    ).digest()


class ShareStore(Protocol):
    """Where a node keeps its shares (the sealed keystore; a dict in tests)."""

    def load(self, key_id: str) -> Share: ...

    def stage(self, key_id: str, share: Share) -> None:
        """Keep a new epoch beside the current one, not yet used."""

    def commit(self, key_id: str, epoch: int) -> None:
        """Make a staged epoch current (all holders confirmed it)."""

    def add_bans(self, key_id: str, setup_id: bytes, parties: frozenset[int]) -> None:
        """Atomically add ``parties`` to the ban list of the *current* share of ``key_id`` if
        its setup id is still ``setup_id`` (a refresh since then already replaced every
        pairwise secret, so the ban is moot and the newer share must not be overwritten)."""


@dataclasses.dataclass(frozen=True)
class Task:
    job: str
    kind: str
    scheme: str
    threshold: int
    participants: Mapping[int, str]
    me: int
    instance: bytes
    key_id: str = ""
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TaskError(f"unknown task kind {self.kind!r}", "kind")
        if self.scheme not in (*SCHEMES, "ecdsa"):
            raise TaskError(f"unknown scheme {self.scheme!r}", "scheme")
        if type(self.instance) is not bytes or len(self.instance) != 32:
            raise TaskError("instance must be 32 bytes", "instance")
        if self.me not in self.participants:
            raise TaskError("our index is not among the participants", "me")
        if len(set(self.participants.values())) != len(self.participants):
            raise TaskError("a node appears twice among the participants", "participants")


def _phase_instance(instance: bytes, phase: bytes) -> bytes:
    return hashlib.sha256(b"shardguard/node/phase/v1\x00" + phase + b"\x00" + instance).digest()


def run_task(
    task: Task,
    *,
    store: ShareStore,
    me: NodeKeys,
    card: PeerCard,
    peers: Mapping[int, AdmittedPeer],
    relay: Relay,
    deadline: float,
    rng: Rng = secrets.token_bytes,
    inbox: Inbox | None = None,
    release: tuple[Callable[[], None], Callable[[], None]] | None = None,
    idle: Callable[[], bool] | None = None,
    keep: Callable[[Presignature], None] | None = None,
) -> dict[str, Any]:
    """Run one task; return its public result (what the coordinator may see).

    Raises :class:`TaskError`, :class:`~shardguard.protocols.errors.UsageError` (e.g. a banned
    peer), :class:`~shardguard.protocols.errors.ProtocolAbort` (bans already persisted) or
    :class:`~shardguard.node.engine.EngineTimeout`.

    ``release`` (signing only) is ``(at_start, gate)`` for :func:`~shardguard.node.engine.drive`:
    the first is called just before the first round is posted, the second before anything later is, and
    nothing that helps make a signature leaves the node until it has returned. ``idle``: see
    :func:`~shardguard.node.engine.drive`. ``keep`` (``presign`` only) takes the pre-signature
    made: it never leaves the node, the result names it.
    """
    inbox = inbox if inbox is not None else Inbox()
    rng = clocked_rng(rng)

    def go(party: Any, release: tuple[Callable[[], None], Callable[[], None]] | None = None) -> Any:
        at_start, gate = release or (None, None)
        return drive(party, job=task.job, me=me, card=card, peers=peers, relay=relay, inbox=inbox, deadline=deadline,
                     at_start=at_start, gate=gate, idle=idle)  # fmt: skip

    if task.kind == "keygen":
        return _keygen(task, store, go, rng)
    if task.kind == "sign":
        return _sign(task, store, go, rng, release)
    if task.kind == "presign":
        if keep is None:
            raise TaskError("this node keeps no pre-signatures", "kind")
        return _presign(task, store, go, rng, keep)
    if task.kind == "refresh":
        return _refresh(task, store, go, rng)
    raise TaskError(f"{task.kind} runs in the node service (no protocol party of its own)", "kind")


def _keygen(task: Task, store: ShareStore, go: Callable[[Any], Any], rng: Rng) -> dict[str, Any]:
    suite = suite_by_scheme(task.scheme)
    ids = sorted(task.participants)
    base: KeyShare = go(
        Dkg(suite, identifier=task.me, participants=ids, threshold=task.threshold, instance=task.instance, rng=rng)
    )
    share: Share = base
    if task.scheme == "ecdsa":
        share = go(OtSetup(base, instance=_phase_instance(task.instance, b"setup"), rng=rng))
    key_id = task.key_id or share.public.key_id.hex()
    store.stage(key_id, share)
    return _public(share)


def share_scheme(share: Share) -> str:
    return "ecdsa" if isinstance(share, EcdsaKeyShare) else share.public.suite.scheme


def _sign(
    task: Task, store: ShareStore, go: Callable[..., Any], rng: Rng, release: tuple[Callable[[], None], Callable[[], None]] | None
) -> dict[str, Any]:
    share = store.load(task.key_id)
    if share_scheme(share) != task.scheme:  # what the audit entry names is what is signed with
        raise TaskError(f"the key is {share_scheme(share)}, the task says {task.scheme}", "scheme")
    signers = _signer_indices(task)
    if isinstance(share, EcdsaKeyShare):
        if "messages" in task.params:
            raise TaskError("ecdsa keys sign one digest per task, never a bundle", "messages")
        try:
            digest = bytes.fromhex(str(task.params.get("digest", "")))
            path = parse_path(str(task.params.get("path", "m")))
        except ValueError as e:
            raise TaskError(str(e), "digest/path") from None
        party = DklsSigner(share, signers=signers, digest=digest, instance=task.instance, rng=rng, path=path)
        sig = _banning(task, store, share, go, party, release)
        return dict(sig.to_dict())
    if str(task.params.get("path", "m")) != "m":
        # FROST signs with the key itself; signing for a child key would need the tweak applied.
        raise TaskError(f"{share.suite.scheme} signing takes no BIP32 path", "path")
    if "messages" in task.params:  # a bundle: every message in one session
        try:
            messages = [bytes.fromhex(m) for m in task.params["messages"]]
        except (TypeError, ValueError):
            raise TaskError("messages must be hex", "messages") from None
        batch = FrostBatchSigner(share, signers=signers, messages=messages, instance=task.instance, rng=rng)
        signatures: tuple[bytes, ...] = go(batch, release)
        return {
            "scheme": share.suite.scheme,
            "public_key": share.public.public_key_bytes.hex(),
            "signatures": [sig.hex() for sig in signatures],
        }
    if not isinstance(task.params.get("message"), str):
        raise TaskError("a FROST signing names its message (hex)", "message")  # never b"" by default
    try:
        message = bytes.fromhex(task.params["message"])
    except ValueError:
        raise TaskError("message must be hex", "message") from None
    signature: bytes = go(FrostSigner(share, signers=signers, message=message, instance=task.instance, rng=rng), release)
    return {"scheme": share.suite.scheme, "public_key": share.public.public_key_bytes.hex(), "signature": signature.hex()}


def _signer_indices(task: Task) -> list[int]:
    signers = task.params.get("signers")
    if not isinstance(signers, list) or not all(type(i) is int for i in signers):
        raise TaskError("signers must be a list of party indices", "signers")
    return signers


def _banning(task: Task, store: ShareStore, share: EcdsaKeyShare, go: Callable[..., Any], party: Any, release: Any = None) -> Any:
    """Drive a DKLs23 party; a failed pairwise check's ban is persisted before the abort is
    reported (spec P3)."""
    try:
        return go(party, release)
    except ProtocolAbort as e:
        if e.reason.bans and e.culprits:
            store.add_bans(task.key_id, share.setup_id, e.culprits)
        raise


def clocked_rng(rng: Rng) -> Rng:
    """``rng`` with the wall clock mixed in, for every session a task runs. A snapshot of this
    process restored with its RNG stream and handed a session it ran before (its register of
    sessions, sessions.py, is memory only) would otherwise draw the same nonces again: with a
    co-signer that changes its own, two DKLs23 signatures of one digest give the key away, and
    a pre-signing's session binds no digest at all (review findings). With the clock, it draws
    others unless the clock repeats too (docs/SECURITY.md)."""

    def draw(n: int) -> bytes:
        return hashlib.shake_256(b"shardguard/node/task-rng/v1\x00" + rng(n) + time.time_ns().to_bytes(8, "big")).digest(n)

    return draw


def _presign(
    task: Task, store: ShareStore, go: Callable[..., Any], rng: Rng, keep: Callable[[Presignature], None]
) -> dict[str, Any]:
    """DKLs23 rounds 1–3 with the job's signers (spec §4.1): the pre-signature stays here
    (``keep``); the result names it — its id and nonce point, the same at every signer — and
    the epoch of the share it was made with."""
    share = store.load(task.key_id)
    if not isinstance(share, EcdsaKeyShare) or task.scheme != "ecdsa":
        raise TaskError("pre-signatures are for ecdsa (DKLs23) keys", "scheme")
    party = DklsPresigner(share, signers=_signer_indices(task), instance=task.instance, rng=rng)
    made: Presignature = _banning(task, store, share, go, party)
    keep(made)
    return {
        "presignature": made.presignature_id.hex(),
        "R": share.public.suite.group.encode(made.big_r).hex(),
        "epoch": made.epoch,
    }


def _refresh(task: Task, store: ShareStore, go: Callable[[Any], Any], rng: Rng) -> dict[str, Any]:
    share = store.load(task.key_id)
    base = share.share if isinstance(share, EcdsaKeyShare) else share
    ids = sorted(task.participants)
    if set(ids) != set(base.public.participants):
        raise UsageError("a refresh must include every holder of the key")
    refreshed: KeyShare = go(Refresh(base, participants=ids, instance=task.instance, rng=rng))
    new: Share = refreshed
    if isinstance(share, EcdsaKeyShare):
        new = go(OtSetup(refreshed, instance=_phase_instance(task.instance, b"setup"), rng=rng, chain_code=share.chain_code))
    store.stage(task.key_id, new)
    return _public(new)


def _public(share: Share) -> dict[str, Any]:
    out: dict[str, Any] = {
        "public_key": share.public.public_key_bytes.hex(),
        "epoch": share.public.epoch,
        "public": share.public.to_dict(),
        "key_id": share.public.key_id.hex(),
    }
    if isinstance(share, EcdsaKeyShare):
        out["chain_code"] = share.chain_code.hex()
    return out


def precommitted_items(
    share: Share,
    me: int,
    participants: Mapping[int, str],
    messages: list[bytes],
    lists: object,
    signed_by: Callable[[int, bytes, bytes, bytes, bytes], bool],
) -> list[PrecommittedItem]:
    """A precommitted signing's messages with the coordinator's commitment lists (API.md §1.13:
    ``[[{"index", "id", "hiding", "binding", "signature"}, …one per signer], …one per message]``),
    checked and decoded: each list names exactly the participants, once each, with points of the
    key's group (neither identity nor off the curve), and every other signer's commitment
    carries that signer's signature (``signed_by(index, id, hiding, binding, signature)``: made
    by the node at that index). TaskError otherwise, before any nonce is used."""
    if not isinstance(share, KeyShare):
        raise TaskError("only FROST keys sign with commitments made ahead", "commitments")
    try:
        signer_ids(share, sorted(participants))  # at least t holders, us among them
    except UsageError as e:
        raise TaskError(str(e), "participants") from None
    g = share.public.suite.group
    if not isinstance(lists, list) or len(lists) != len(messages):
        raise TaskError("one commitment list per message", "commitments")
    items = []
    for k, entries in enumerate(lists):
        if not isinstance(entries, list) or len(entries) != len(participants):
            raise TaskError("one commitment per signer", f"commitments[{k}]")
        commitments = []
        own: bytes | None = None
        for j, c in enumerate(entries):
            where = f"commitments[{k}][{j}]"
            if not isinstance(c, dict) or set(c) != _COMMITMENT_FIELDS or type(c["index"]) is not int:
                raise TaskError('must be {"index", "id", "hiding", "binding", "signature"}', where)
            try:
                cid = bytes.fromhex(str(c["id"]))
                raw_hiding, raw_binding = bytes.fromhex(str(c["hiding"])), bytes.fromhex(str(c["binding"]))
                signature = bytes.fromhex(str(c["signature"]))
                hiding = g.decode(raw_hiding, field=f"{where}.hiding")
                binding = g.decode(raw_binding, field=f"{where}.binding")
            except (ValueError, CryptoError) as e:
                raise TaskError(f"not a commitment of this key's group: {e}", where) from None
            if len(cid) != COMMITMENT_ID_BYTES:
                raise TaskError(f"a commitment id is {COMMITMENT_ID_BYTES} bytes", f"{where}.id")
            if c["index"] == me:
                own = cid
            elif c["index"] not in participants or not signed_by(c["index"], cid, raw_hiding, raw_binding, signature):
                raise TaskError(f"not a commitment signer {c['index']} made (its signature does not verify)", where)
            commitments.append((c["index"], hiding, binding))
        if sorted(i for i, _, _ in commitments) != sorted(participants):
            raise TaskError("the list must name exactly the signers, once each", f"commitments[{k}]")
        if own is None:  # pragma: no cover - we are a participant, so the check above found us
            raise TaskError("our own commitment is missing", f"commitments[{k}]")
        items.append(PrecommittedItem(messages[k], tuple(sorted(commitments, key=lambda c: c[0])), own))
    if len({item.commitment_id for item in items}) != len(items):
        raise TaskError("one commitment of ours is named for two messages", "commitments")
    return items
