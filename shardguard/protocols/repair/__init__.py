"""Share repair: rebuild a lost share from t helpers (RTS, ePrint 2017/1155)."""

from shardguard.protocols.repair._messages import RepairCommitments, RepairDelta, RepairSigma
from shardguard.protocols.repair._party import RepairHelper, RepairTarget

__all__ = ["RepairCommitments", "RepairDelta", "RepairHelper", "RepairSigma", "RepairTarget"]
