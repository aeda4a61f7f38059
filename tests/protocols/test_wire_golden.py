"""Pinned wire format (STYLE-ANCHORS 10): golden encodings of every payload type per suite,
compared byte for byte. Changing one needs a FORMAT_VERSION bump.

Regenerate (only with a version bump): ``SHARDGUARD_REGEN_WIRE=1 pytest tests/protocols/test_wire_golden.py``.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from shardguard.crypto.suites import ALL_SUITES, SUITES
from shardguard.protocols import wire
from shardguard.protocols.dkg import DkgConfirm, DkgEcho, DkgRound1, DkgSecretShare, RefreshRound1
from shardguard.protocols.dkls23 import _messages as dk
from shardguard.protocols.frost import SignBatchRound1, SignBatchRound2, SignRound1, SignRound2
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
        "SignBatchRound1": SignBatchRound1(
            suite=suite,
            items=(
                wire.encode_payload(SignRound1(suite=suite, hiding=p[0], binding=p[1])),
                wire.encode_payload(SignRound1(suite=suite, hiding=p[2], binding=p[0])),
            ),
        ),
        "SignBatchRound2": SignBatchRound2(
            suite=suite,
            items=(
                wire.encode_payload(
                    SignRound2(suite=suite, share=42, commitment_digests=((1, bytes(32)), (3, bytes(range(32)))))
                ),
                wire.encode_payload(SignRound2(suite=suite, share=43, commitment_digests=((1, bytes(32)), (3, bytes(32))))),
            ),
        ),
        "DkgConfirm": DkgConfirm(suite=suite, package_digest=bytes(range(1, 33))),
        "RepairDelta": RepairDelta(suite=suite, delta=9, commitment=g.base_mul(9)),
        "RepairCommitments": RepairCommitments(suite=suite, commitments=((1, p[0]), (2, p[1]))),
        "RepairSigma": RepairSigma(suite=suite, sigma=8, received=((1, p[2]), (2, p[0]))),
    }


def _ecdsa_examples(suite):  # type: ignore[no-untyped-def]
    """DKLs23 payloads (``ecdsa`` suite only); patterned bytes for the large fields."""
    g = suite.group
    p = [g.base_mul(k) for k in (3, 5, 7, 11)]

    def blob(n: int, seed: int) -> bytes:
        return bytes((seed + i * 7) % 256 for i in range(n))

    return {
        "SetupCommit": dk.SetupCommit(suite=suite, commitment=blob(32, 1)),
        "SetupOtStart": dk.SetupOtStart(suite=suite, base_ot=blob(dk.BASE_OT_SIZE, 2), zero_seed=blob(32, 3)),
        "SetupReveal": dk.SetupReveal(suite=suite, contribution=blob(32, 4), salt=blob(32, 5), echo=(blob(32, 6), blob(32, 7))),
        "SetupOtAnswer": dk.SetupOtAnswer(suite=suite, base_ot=blob(dk.BASE_OT_SIZE, 8)),
        "SetupConfirm": dk.SetupConfirm(suite=suite, digest=blob(32, 9)),
        "SignCommit": dk.SignCommit(suite=suite, nonce=blob(32, 10), commitment=blob(32, 11)),
        "SignOtStart": dk.SignOtStart(
            suite=suite, nonce=blob(32, 20), u=blob(dk.U_SIZE, 12), x_check=blob(16, 13), t_check=blob(dk.CHECK_SIZE, 14)
        ),
        "SignMultiply": dk.SignMultiply(
            suite=suite,
            echo=(blob(32, 15), blob(32, 16)),
            big_r=p[0],
            salt=blob(32, 17),
            a_tilde=blob(dk.A_TILDE_SIZE, 18),
            eta=12345,
            mu=blob(64, 19),
            gamma_u=p[1],
            gamma_v=p[2],
            psi=777,
            pk=p[3],
        ),
        "SignShare": dk.SignShare(suite=suite, u=99, w=100),
    }


CASES = [(s, name) for s in SUITES for name in _examples(SUITES[s])] + [
    ("ecdsa", name) for name in _ecdsa_examples(ALL_SUITES["ecdsa"])
]


@pytest.mark.parametrize(("scheme", "name"), CASES, ids=[f"{s}-{n}" for s, n in CASES])
def test_golden_encoding(scheme: str, name: str) -> None:
    suite = ALL_SUITES[scheme]
    payload = (_ecdsa_examples(suite) if scheme == "ecdsa" else _examples(suite))[name]
    encoded = wire.encode_payload(payload)
    # Payloads over 4 KiB are pinned by their SHA-256 (the OT messages are 20–50 KB).
    pinned = encoded.hex() if len(encoded) <= 4096 else "sha256:" + hashlib.sha256(encoded).hexdigest()
    path = WIRE / f"{name}.{scheme}.hex"
    if os.environ.get("SHARDGUARD_REGEN_WIRE") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(pinned + "\n")
    assert path.read_text().strip() == pinned, f"wire format of {name} changed: bump FORMAT_VERSION"
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
        if c.__module__.startswith("shardguard.") and hasattr(c, "TAG"):  # skip abstract bases
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
