"""The typed result of a successful evidence verification."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

__all__ = ["TCB_ORDER", "Verified"]

#: Intel/AMD TCB statuses from best to worst; "n/a" for platforms without one (Nitro).
TCB_ORDER = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
    "NoMatchingTcbLevel",
    "Unknown",  # no collateral given: signatures and chains proven, TCB status not assessed
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Verified:
    """What a verifier proved about a piece of evidence.

    ``measurements`` are lower-case hex, keyed per platform: Nitro ``pcr0``..``pcr15``,
    SEV-SNP ``measurement`` (and ``host_data``, ``id_key_digest``), TDX ``mrtd``, ``rtmr0``..3
    (and ``mrconfigid``…), SGX ``mrenclave``, ``mrsigner``. ``report_data`` is the 64 bytes a
    guest binds (Nitro: ``user_data``). ``signing_time`` is the evidence's own time when it has
    one (Nitro), else None. ``fields`` holds every parsed field for display (JSON-safe).
    """

    platform: str
    measurements: dict[str, str]
    tcb_status: str
    debug: bool
    report_data: bytes
    nonce: bytes | None = None
    public_key: bytes | None = None
    signing_time: dt.datetime | None = None
    advisory_ids: tuple[str, ...] = ()
    simulated: bool = False
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "simulated": self.simulated,
            "measurements": self.measurements,
            "tcb_status": self.tcb_status,
            "advisory_ids": list(self.advisory_ids),
            "debug": self.debug,
            "report_data": self.report_data.hex(),
            "nonce": self.nonce.hex() if self.nonce is not None else None,
            "public_key": self.public_key.hex() if self.public_key is not None else None,
            "signing_time": self.signing_time.isoformat() if self.signing_time else None,
            "fields": self.fields,
        }
