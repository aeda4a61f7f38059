"""Pinned wire format (STYLE-ANCHORS 10): golden encodings of every payload type per suite,
compared byte for byte. Changing one needs a FORMAT_VERSION bump.

Regenerate (only with a version bump): ``SHARDGUARD_REGEN_WIRE=1 pytest tests/protocols/test_wire_golden.py``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from shardguard.crypto.suites import SUITES
from shardguard.protocols import wire
from shardguard.protocols.dkg import DkgConfirm, DkgEcho, DkgRound1, DkgSecretShare, RefreshRound1
from shardguard.protocols.frost import SignRound1, SignRound2
from shardguard.protocols.repair import RepairCommitments, RepairDelta, RepairSigma

WIRE = Path(__file__).resolve().parent.parent / "vectors" / "wire"
DESIGN = Path(__file__).resolve().parents[2] / "docs" / "DESIGN.md"


def _examples(suite):  # type: ignore[no-untyped-def]
    g = suite.group
    p = [g.base_mul(k) for k in (3, 5, 7)]
    return {
        "DkgRound1": DkgRound1(suite=suite, commitment=(p[0], p[1]), pok_r=p[2], pok_mu=11),
        "RefreshRound1": RefreshRound1(suite=suite, commitment=(p[1],)),
        "DkgEcho": DkgEcho(suite=suite, digests=(bytes(range(32)), bytes(32))),
        "DkgSecretShare": DkgSecretShare(suite=suite, share=12345),
        "SignRound1": SignRound1(suite=suite, hiding=p[0], binding=p[1]),
        "SignRound2": SignRound2(suite=suite, share=42, commitment_digests=((1, bytes(32)), (3, bytes(range(32))))),
        "DkgConfirm": DkgConfirm(suite=suite, package_digest=bytes(range(1, 33))),
        "RepairDelta": RepairDelta(suite=suite, delta=9, commitment=g.base_mul(9)),
        "RepairCommitments": RepairCommitments(suite=suite, commitments=((1, p[0]), (2, p[1]))),
        "RepairSigma": RepairSigma(suite=suite, sigma=8, received=((1, p[2]), (2, p[0]))),
    }


CASES = [(s, name) for s in SUITES for name in _examples(SUITES[s])]


@pytest.mark.parametrize(("scheme", "name"), CASES, ids=[f"{s}-{n}" for s, n in CASES])
def test_golden_encoding(scheme: str, name: str) -> None:
    suite = SUITES[scheme]
    payload = _examples(suite)[name]
    encoded = wire.encode_payload(payload)
    path = WIRE / f"{name}.{scheme}.hex"
    if os.environ.get("SHARDGUARD_REGEN_WIRE") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(encoded.hex() + "\n")
    assert path.read_text().strip() == encoded.hex(), f"wire format of {name} changed: bump FORMAT_VERSION"
    decoded = wire.decode_payload(suite, encoded, type(payload))
    assert wire.encode_payload(decoded) == encoded
    assert decoded == payload


def test_every_payload_type_is_pinned_and_documented() -> None:
    pinned = {name for _, name in CASES}
    subclasses = {c.__name__ for c in _all_subclasses(wire.Payload)}
    assert subclasses <= pinned, f"payload types without golden vectors: {subclasses - pinned}"
    documented = set(re.findall(r"`(\w+)`", DESIGN.read_text()))
    assert pinned <= documented, f"payload types missing from docs/DESIGN.md: {pinned - documented}"
    tags = [c.TAG for c in _all_subclasses(wire.Payload)]
    assert len(tags) == len(set(tags)), "two payload types share a tag"


def _all_subclasses(cls: type) -> set[type]:
    """Payload classes defined under shardguard/ (``dataclass(slots=True)`` leaves the
    pre-slots class object behind in ``__subclasses__``, so dedupe by qualified name)."""
    seen: dict[str, type] = {}
    stack = list(cls.__subclasses__())
    while stack:
        c = stack.pop()
        stack.extend(c.__subclasses__())
        if c.__module__.startswith("shardguard."):
            seen[f"{c.__module__}.{c.__qualname__}"] = c
    return set(seen.values())


def test_public_api_matches_all() -> None:
    """Each protocol package re-exports exactly what its ``__all__`` says (h11 style)."""
    import importlib
    import inspect

    for mod in ("dkg", "frost", "repair"):
        m = importlib.import_module(f"shardguard.protocols.{mod}")
        public = {n for n, v in vars(m).items() if not n.startswith("_") and not inspect.ismodule(v) and n != "annotations"}
        assert public == set(m.__all__), f"shardguard.protocols.{mod}: exports differ from __all__"
