"""Which node holds which share index of a key: recorded when the key is made, checked on
every later task.

A task's ``index → node id`` map comes from the untrusted coordinator, and the protocols bind
indices, not node ids, into their sessions. Without a record of our own, the coordinator could
relabel nodes: name a corrupt node as the holder of an honest node's index, and a share repair
"for" that index would rebuild the honest node's share at the corrupt one (which, with its own
share, then signs alone), or a DKLs23 abort would ban the honest index. So a node records the
committee of every key it helps make (keygen: the participants are every holder) and refuses a
sign, refresh or repair task whose participants disagree with it, or that puts this node at
another index.

Limits (docs/SECURITY.md): node ids are names. A corrupt enclave that registers under an honest
holder's node id, with a coordinator's help, is not told apart by this record. A node that lost
its state takes the committee from its helpers (all must send the same), not from the task.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from shardguard.node.keystore import Keystore
from shardguard.node.tasks import TaskError

__all__ = ["check", "from_helpers", "record", "recorded", "refuse_existing"]

_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")  # a keystore name once prefixed


def _name(key_id: str) -> str:
    if not _KEY_ID.fullmatch(key_id):
        raise TaskError("a key id is 1 to 100 letters, digits, '_' or '-'", "key_id")
    return f"committee-{key_id}"


def recorded(keystore: Keystore, key_id: str) -> dict[int, str] | None:
    """The committee recorded for ``key_id`` (index → node id), or None."""
    raw = keystore.get_state(_name(key_id))
    if raw is None:
        return None
    return {int(i): str(n) for i, n in raw.items()}


def record(keystore: Keystore, key_id: str, committee: Mapping[int, str], *, replace: bool = False) -> None:
    """Record the committee of a key being made (keygen) or re-provisioned here (repair). A key
    whose share this node holds is refused, and so is a key id already on record unless
    ``replace`` (a repair after a failed one): a coordinator must not redefine a key's holders
    by sending another keygen — not even while the first one still runs (review finding)."""
    refuse_existing(keystore, key_id, replace=replace)
    keystore.put_state(_name(key_id), {str(i): n for i, n in sorted(committee.items())})


def refuse_existing(keystore: Keystore, key_id: str, *, replace: bool = False) -> None:
    """What :func:`record` refuses, checked without writing (a keygen, before its admissions)."""
    if keystore.find_key(key_id) is not None or (not replace and keystore.get_state(_name(key_id)) is not None):
        raise TaskError(f"key {key_id} already exists on this node", "key_id")


def check(
    keystore: Keystore, key_id: str, participants: Mapping[int, str], me: int, node_id: str, *, lost: str | None = None
) -> None:
    """Refuse a task whose participants are not, index for index, holders on record, or that
    puts this node anywhere but at its own index. ``lost`` (repair helpers): the node being
    re-provisioned must be the recorded holder of the index it is repaired at."""
    committee = recorded(keystore, key_id)
    if committee is None:
        raise TaskError(f"no committee on record for key {key_id} (this node did not help make it)", "key_id")
    for index, node in sorted(participants.items()):
        holder = committee.get(index)
        if holder != node:
            raise TaskError(f"index {index} of key {key_id} is held by {holder!r}, not {node!r}", "participants")
    if committee.get(me) != node_id:
        raise TaskError(f"this node holds index {_index_of(committee, node_id)} of key {key_id}, not {me}", "you")
    if lost is not None and lost not in participants.values():
        raise TaskError("the lost node is not among the participants", "lost")


def from_helpers(
    holders: Mapping[int, str], me: int, node_id: str, participants: Mapping[int, str], indices: set[int]
) -> dict[int, str]:
    """The committee a node being re-provisioned by repair records (it has none of its own):
    the one its helpers sent, all alike — every index of the key (``indices``) once, the
    repair's participants as named, and this node at its own index."""
    out = dict(holders)
    if (
        set(out) != indices
        or out.get(me) != node_id
        or any(out.get(i) != n for i, n in participants.items())
        or len(set(out.values())) != len(out)
    ):
        raise TaskError("the helpers' committee does not agree with the key or the participants", "committee")
    return out


def _index_of(committee: Mapping[int, str], node_id: str) -> int | None:
    return next((i for i, n in committee.items() if n == node_id), None)
