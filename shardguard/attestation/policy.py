"""Verification policy: which evidence a node accepts (ARCHITECTURE §5), loaded from TOML.

```toml
allowed_platforms = ["nitro", "sev-snp", "tdx", "sgx"]
allow_simulated = false          # simulated evidence is for development only
allow_debug = false              # debug enclaves/VMs expose their memory
require_sept_ve_disable = true   # TDX: TD_ATTRIBUTES.SEPT_VE_DISABLE must be set
allow_service_td = false         # TDX 1.5: MRSERVICETD must be zero (no bound service TD)
allow_migration_agent = false    # SEV-SNP: guest policy MIGRATE_MA (bit 18) must be clear
require_snp_alias_check = true   # SEV-SNP: PLATFORM_INFO ALIAS_CHECK_COMPLETE (BadRAM mitigated)
require_snp_tcb = true           # SEV-SNP: evidence of a product without a floor below is refused
min_tcb_status = "UpToDate"      # worst acceptable TCB status (see result.TCB_ORDER)
max_age_seconds = 600            # evidence with its own timestamp (Nitro) must be this fresh

[min_snp_tcb.Milan]              # lowest SPLs (reported, committed and launch TCB); placeholders:
bootloader = 4                   # take the current minimums from AMD's security bulletins
snp = 24
microcode = 217

[measurements.nitro]             # every listed key must match one of its values
pcr0 = ["f4d48b81…"]
[measurements.tdx]               # the TD firmware, and the kernel and its command line / initrd
mrtd = ["91eb2b44…"]
rtmr1 = ["…"]
rtmr2 = ["…"]
```
A platform with no ``[measurements.<platform>]`` table accepts any measurement only when
``require_measurements = false`` (default true: an empty allow-list accepts nothing). A table
must pin what identifies the code on its platform (:data:`CODE_IDENTITY`) unless
``require_code_identity = false``, and an empty table is refused.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shardguard.attestation.errors import AttestationError, AttestationReason
from shardguard.attestation.result import TCB_ORDER, Verified

__all__ = ["CODE_IDENTITY", "PLATFORMS", "VerificationPolicy"]

PLATFORMS = ("nitro", "sev-snp", "tdx", "sgx")
#: Per platform, the sets of measurements that identify the code a node runs; a measurement
#: table pins one of them whole (review finding: TDX MRTD measures only the TD firmware — the
#: kernel and initrd go to RTMR1/RTMR2 — and SEV-SNP HOST_DATA, Nitro PCR3/PCR4, TDX MROWNER or
#: SGX ISVSVN are chosen by the host or say nothing of the code). SEV-SNP ID_KEY_DIGEST with
#: IMAGE_ID: the firmware launches only an image whose ID block that key signed, of that image
#: line. SGX MRSIGNER with ISVPRODID: the signer's enclaves of that product. An all-zero SEV-SNP
#: ID_KEY_DIGEST (or MEASUREMENT) is refused: a guest launched without an ID block reports an
#: all-zero ID_KEY_DIGEST (the AWS and GCP samples), so pinning it accepted any code (review
#: finding).
#: TDX RTMR0 (TD HOB, UEFI variables, the host's ACPI tables) varies with the VM's shape, so it
#: is not required; pin it per shape where the host must not choose ACPI tables.
CODE_IDENTITY: Mapping[str, tuple[frozenset[str], ...]] = {
    "nitro": (frozenset({"pcr0"}),),
    "sev-snp": (frozenset({"measurement"}), frozenset({"id_key_digest", "image_id"})),
    "tdx": (frozenset({"mrtd", "rtmr1", "rtmr2"}),),
    "sgx": (frozenset({"mrenclave"}), frozenset({"mrsigner", "isv_prod_id"})),
    "simulated": (frozenset({"pcr0"}),),
}
_KEYS = {
    "allowed_platforms",
    "allow_simulated",
    "allow_debug",
    "min_tcb_status",
    "max_age_seconds",
    "measurements",
    "require_measurements",
    "require_sept_ve_disable",
    "allow_service_td",
    "allow_migration_agent",
    "require_code_identity",
    "min_tcb_evaluation_data_number",
    "require_snp_alias_check",
    "require_snp_tcb",
    "min_snp_tcb",
}
#: SEV-SNP products and the TCB components a floor may name (``fields["tcb"]``).
SNP_PRODUCTS = ("Milan", "Genoa", "Turin")
SNP_TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode", "fmc")


@dataclasses.dataclass(frozen=True, kw_only=True)
class VerificationPolicy:
    allowed_platforms: tuple[str, ...] = PLATFORMS
    allow_simulated: bool = False
    allow_debug: bool = False
    min_tcb_status: str = "UpToDate"
    max_age_seconds: int | None = 600
    require_measurements: bool = True
    #: TDX: refuse a TD whose TD_ATTRIBUTES.SEPT_VE_DISABLE (bit 28) is clear. The host can then
    #: inject a #VE at almost any instruction by unmapping a private page; Linux guests refuse to
    #: run so unless they are debug TDs, and dcap-qvl always refuses it. A policy decision, not
    #: the verifier's: the TD is genuine, and a guest OS may handle those #VEs safely.
    require_sept_ve_disable: bool = True
    #: TDX 1.5: accept a TD with a bound service TD (MRSERVICETD ≠ 0, e.g. a migration TD, which
    #: can reach the TD's state). Off by default, as in dcap-qvl (``allow_service_td``).
    allow_service_td: bool = False
    #: SEV-SNP: accept a guest whose launch policy sets MIGRATE_MA (bit 18), so that a
    #: migration agent can be bound to it and move — or copy — its state. The measurement does
    #: not cover the policy, so an approved image can be started so by any host. Off by
    #: default: a node's nonces committed ahead and pre-signatures are single-use only while its
    #: memory cannot be copied (docs/SECURITY.md), as TDX's MIGRATABLE attribute is refused.
    allow_migration_agent: bool = False
    #: Refuse a measurement table that does not pin one of the platform's :data:`CODE_IDENTITY`
    #: sets whole (at construction: ``POLICY``).
    require_code_identity: bool = True
    #: TDX/SGX: the oldest Intel TCB evaluation (``tcbEvaluationDataNumber`` of the TCB info and
    #: the QE identity) accepted; 0 = any. Collateral comes from the peer, so without a floor an
    #: older TCB info still inside its ~30-day validity — from before a TCB recovery — keeps a
    #: platform "UpToDate" (review finding). Raise it with each Intel TCB recovery.
    min_tcb_evaluation_data_number: int = 0
    #: SEV-SNP: refuse a platform whose PLATFORM_INFO lacks ALIAS_CHECK_COMPLETE (bit 5): its
    #: firmware has not checked the DIMMs for aliased addresses, the BadRAM attack
    #: (CVE-2024-21944) on SNP memory integrity (review finding).
    require_snp_alias_check: bool = True
    #: SEV-SNP has no TCB status (AMD publishes none), so the floor is the policy's: per product,
    #: the lowest SPL of each component, checked on the reported (certificate-bound), committed
    #: and launch TCBs. ``require_snp_tcb`` refuses evidence of a product with no floor here,
    #: as ``require_measurements`` does for measurements (review finding: without it, SNP
    #: firmware with known flaws — CacheWarp, BadRAM — passed).
    require_snp_tcb: bool = True
    min_snp_tcb: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)
    measurements: Mapping[str, Mapping[str, tuple[str, ...]]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for p in self.allowed_platforms:
            if p not in PLATFORMS:
                raise AttestationError(AttestationReason.POLICY, f"unknown platform {p!r}", field="allowed_platforms")
        if self.min_tcb_status not in TCB_ORDER:
            raise AttestationError(
                AttestationReason.POLICY, f"unknown TCB status {self.min_tcb_status!r}", field="min_tcb_status"
            )
        for product, floor in self.min_snp_tcb.items():
            if product not in SNP_PRODUCTS:
                raise AttestationError(AttestationReason.POLICY, f"unknown SEV-SNP product {product!r}", field="min_snp_tcb")
            if not isinstance(floor, Mapping) or not floor:
                where = f"min_snp_tcb.{product}"
                raise AttestationError(AttestationReason.POLICY, "a table naming at least one component", field=where)
            components = SNP_TCB_COMPONENTS if product == "Turin" else SNP_TCB_COMPONENTS[:4]  # FMC: Turin's only
            for name, value in floor.items():
                if name not in components or type(value) is not int or not 0 <= value <= 255:
                    raise AttestationError(
                        AttestationReason.POLICY, f"a TCB component ({', '.join(components)}) = 0..255",
                        field=f"min_snp_tcb.{product}.{name}",
                    )
        if self.require_snp_tcb and "sev-snp" in self.measurements and not self.min_snp_tcb:
            # It would load, then refuse every SEV-SNP peer (review finding): say so now.
            raise AttestationError(
                AttestationReason.POLICY, "SEV-SNP measurements but no [min_snp_tcb.<product>] (or require_snp_tcb = false)",
                field="min_snp_tcb",
            )  # fmt: skip
        if type(self.min_tcb_evaluation_data_number) is not int or self.min_tcb_evaluation_data_number < 0:
            raise AttestationError(
                AttestationReason.POLICY, "must be a non-negative integer", field="min_tcb_evaluation_data_number"
            )
        if self.max_age_seconds is not None and self.max_age_seconds <= 0:
            raise AttestationError(AttestationReason.POLICY, "must be positive", field="max_age_seconds")
        for plat, table in self.measurements.items():
            if plat not in (*PLATFORMS, "simulated"):
                raise AttestationError(AttestationReason.POLICY, f"unknown platform {plat!r}", field="measurements")
            if not table or any(not values for values in table.values()):
                # It would pin nothing: every listed name is checked, and none is listed.
                raise AttestationError(AttestationReason.POLICY, "an empty allow-list", field=f"measurements.{plat}")
            for name, values in table.items():
                if plat == "sev-snp" and name in ("measurement", "id_key_digest") and any(set(v) == {"0"} for v in values):
                    raise AttestationError(
                        AttestationReason.POLICY, "an all-zero value pins nothing (a guest without an ID block reports it)",
                        field=f"measurements.{plat}.{name}",
                    )  # fmt: skip
            if self.require_code_identity and not any(need <= set(table) for need in CODE_IDENTITY[plat]):
                sets = " or ".join("{" + ", ".join(sorted(need)) + "}" for need in CODE_IDENTITY[plat])
                raise AttestationError(
                    AttestationReason.POLICY,
                    f"pins no code identity: list {sets} (or set require_code_identity = false)",
                    field=f"measurements.{plat}",
                )

    @classmethod
    def permissive_for_inspection(cls) -> VerificationPolicy:
        """For ``attest verify`` without ``--policy``: proves the evidence (signatures,
        chains, collateral) and reports its fields, but allows any measurement, TCB status,
        debug flag, SEPT_VE_DISABLE, service TD, migration agent, SEV-SNP alias check and TCB floor.
        Simulated evidence is still refused."""
        return cls(
            allow_debug=True,
            min_tcb_status="Unknown",
            max_age_seconds=None,
            require_measurements=False,
            require_sept_ve_disable=False,
            allow_service_td=True,
            allow_migration_agent=True,
            require_snp_alias_check=False,
            require_snp_tcb=False,
        )

    @classmethod
    def from_toml(cls, text: str) -> VerificationPolicy:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise AttestationError(AttestationReason.POLICY, f"not TOML: {e}") from None
        return cls.from_dict(doc)

    @classmethod
    def from_file(cls, path: Path | str) -> VerificationPolicy:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise AttestationError(AttestationReason.POLICY, f"cannot read {path}: {e}") from None
        return cls.from_toml(text)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> VerificationPolicy:
        unknown = set(doc) - _KEYS
        if unknown:
            raise AttestationError(AttestationReason.POLICY, f"unknown keys {sorted(unknown)}")

        def typed(key: str, typ: type | tuple[type, ...], default: Any) -> Any:
            v = doc.get(key, default)
            if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
                raise AttestationError(AttestationReason.POLICY, "wrong type", field=key)
            return v

        meas: dict[str, dict[str, tuple[str, ...]]] = {}
        for plat, table in typed("measurements", dict, {}).items():
            if not isinstance(table, dict):
                raise AttestationError(AttestationReason.POLICY, "must be a table", field=f"measurements.{plat}")
            meas[plat] = {}
            for name, values in table.items():
                if not isinstance(values, list) or not all(isinstance(x, str) for x in values):
                    raise AttestationError(
                        AttestationReason.POLICY, "must be a list of hex strings", field=f"measurements.{plat}.{name}"
                    )
                try:
                    meas[plat][name] = tuple(bytes.fromhex(x).hex() for x in values)
                except ValueError:
                    raise AttestationError(AttestationReason.POLICY, "not hex", field=f"measurements.{plat}.{name}") from None
        max_age = doc.get("max_age_seconds", 600)
        if max_age is not None and (not isinstance(max_age, int) or isinstance(max_age, bool)):
            raise AttestationError(AttestationReason.POLICY, "wrong type", field="max_age_seconds")
        platforms = typed("allowed_platforms", list, list(PLATFORMS))
        return cls(
            allowed_platforms=tuple(platforms),
            allow_simulated=typed("allow_simulated", bool, False),
            allow_debug=typed("allow_debug", bool, False),
            min_tcb_status=typed("min_tcb_status", str, "UpToDate"),
            max_age_seconds=max_age,
            require_measurements=typed("require_measurements", bool, True),
            require_sept_ve_disable=typed("require_sept_ve_disable", bool, True),
            allow_service_td=typed("allow_service_td", bool, False),
            allow_migration_agent=typed("allow_migration_agent", bool, False),
            require_code_identity=typed("require_code_identity", bool, True),
            min_tcb_evaluation_data_number=typed("min_tcb_evaluation_data_number", int, 0),
            require_snp_alias_check=typed("require_snp_alias_check", bool, True),
            require_snp_tcb=typed("require_snp_tcb", bool, True),
            min_snp_tcb={str(k): dict(t) if isinstance(t, dict) else t for k, t in typed("min_snp_tcb", dict, {}).items()},
            measurements=meas,
        )

    def _check_snp_platform(self, v: Verified) -> None:
        """MIGRATE_MA, ALIAS_CHECK_COMPLETE and the TCB floor (fail closed, as for TDX: a result
        without the fields, not made by verify_sev_snp, is refused)."""
        plat = v.platform
        if not self.allow_migration_agent and v.fields.get("migrate_ma") is not False:
            raise AttestationError(
                AttestationReason.MIGRATION_AGENT,
                "guest policy bit 18 (MIGRATE_MA) is set (allow_migration_agent is off)",
                platform=plat,
                field="policy",
            )
        if self.require_snp_alias_check and (v.fields.get("platform_info_bits") or {}).get("alias_check_complete") is not True:
            raise AttestationError(
                AttestationReason.TCB_STATUS,
                "PLATFORM_INFO.ALIAS_CHECK_COMPLETE is clear: memory aliasing (BadRAM) not ruled out (require_snp_alias_check)",
                platform=plat,
                field="platform_info",
            )
        product = v.fields.get("product")
        floor = self.min_snp_tcb.get(product) if isinstance(product, str) else None
        if floor is None:
            if self.require_snp_tcb and not (self.require_measurements and "sev-snp" not in self.measurements):
                # (With no SEV-SNP measurements at all, MEASUREMENT says why, after.)
                raise AttestationError(
                    AttestationReason.TCB_STATUS,
                    f"the policy sets no min_snp_tcb for {product} (require_snp_tcb)",
                    platform=plat,
                    field="min_snp_tcb",
                )
            return
        tcbs = v.fields.get("tcb") or {}
        for which in ("reported", "committed", "launch"):
            for name, least in floor.items():
                got = (tcbs.get(which) or {}).get(name)
                if not isinstance(got, int) or got < least:
                    raise AttestationError(
                        AttestationReason.TCB_STATUS, f"{which} TCB {name} = {got}, below min_snp_tcb.{product}.{name} = {least}",
                        platform=plat, field=f"tcb.{which}.{name}",
                    )

    def check(self, v: Verified, *, now: dt.datetime) -> None:
        """Apply the policy to verified evidence; raise the first reason it is refused."""
        plat = v.platform
        if v.simulated and not self.allow_simulated:
            raise AttestationError(AttestationReason.SIMULATED, "evidence is signed by the development root", platform=plat)
        if not v.simulated and plat not in self.allowed_platforms:
            raise AttestationError(AttestationReason.PLATFORM, f"{plat} not in {list(self.allowed_platforms)}", platform=plat)
        if v.debug and not self.allow_debug:
            raise AttestationError(AttestationReason.DEBUG, "evidence comes from a debug enclave/VM", platform=plat)
        if plat == "tdx" and not v.simulated:
            # Fail closed: a TDX result without these fields (not made by verify_tdx) is refused.
            if self.require_sept_ve_disable and v.fields.get("sept_ve_disable") is not True:
                raise AttestationError(
                    AttestationReason.TD_ATTRIBUTES,
                    "TD_ATTRIBUTES.SEPT_VE_DISABLE is clear (require_sept_ve_disable)",
                    platform=plat,
                    field="sept_ve_disable",
                )
            if not self.allow_service_td and v.fields.get("service_td") is not False:
                raise AttestationError(
                    AttestationReason.SERVICE_TD,
                    "MRSERVICETD is not zero (allow_service_td is off)",
                    platform=plat,
                    field="mr_servicetd",
                )
        if plat == "sev-snp" and not v.simulated:
            self._check_snp_platform(v)
        if self.min_tcb_evaluation_data_number and plat in ("tdx", "sgx") and not v.simulated:
            # Fail closed: no collateral, or a number missing, is below any floor.
            coll = v.fields.get("collateral") or {}
            for name in ("tcb_evaluation_data_number", "qe_identity_evaluation_data_number"):
                got = coll.get(name)
                if not isinstance(got, int) or got < self.min_tcb_evaluation_data_number:
                    raise AttestationError(
                        AttestationReason.COLLATERAL_INVALID,
                        f"{name} is {got}, below min_tcb_evaluation_data_number {self.min_tcb_evaluation_data_number}",
                        platform=plat,
                        field=name,
                    )
        if v.tcb_status != "n/a" and TCB_ORDER.index(v.tcb_status) > TCB_ORDER.index(self.min_tcb_status):
            raise AttestationError(
                AttestationReason.TCB_STATUS, f"{v.tcb_status} is worse than {self.min_tcb_status}", platform=plat
            )
        if self.max_age_seconds is not None and v.signing_time is not None:
            age = (now - v.signing_time).total_seconds()
            if age > self.max_age_seconds or age < -60:
                raise AttestationError(
                    AttestationReason.STALE, f"evidence time {v.signing_time.isoformat()} vs now {now.isoformat()}", platform=plat
                )
        allowed = self.measurements.get("simulated" if v.simulated else plat)
        if allowed is None:
            if self.require_measurements:
                raise AttestationError(
                    AttestationReason.MEASUREMENT, "the policy allows no measurement for this platform", platform=plat
                )
            return
        for name, values in allowed.items():
            got = v.measurements.get(name)
            if got is None or got not in values:
                raise AttestationError(AttestationReason.MEASUREMENT, f"{name} = {got} not allowed", platform=plat, field=name)
