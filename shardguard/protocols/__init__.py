"""Sans-I/O protocol state machines (ARCHITECTURE §4). Imports only :mod:`shardguard.crypto`."""

from shardguard.protocols.errors import AbortReason, MessageRejected, ProtocolAbort, ProtocolError, UsageError
from shardguard.protocols.keys import KeyFileError, KeyShare, PublicKeyPackage
from shardguard.protocols.message import BROADCAST, Message

__all__ = [
    "BROADCAST",
    "AbortReason",
    "KeyFileError",
    "KeyShare",
    "Message",
    "MessageRejected",
    "ProtocolAbort",
    "ProtocolError",
    "PublicKeyPackage",
    "UsageError",
]
