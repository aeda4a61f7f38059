"""Shared helpers for the attestation tests: the genuine fixtures in ../shared/fixtures/attestation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "attestation"


def fixture_bytes(rel: str) -> bytes:
    return (FIXTURES / rel).read_bytes()


def expected_fields() -> dict[str, Any]:
    return json.loads((FIXTURES / "expected_fields.json").read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def expected() -> dict[str, Any]:
    if not FIXTURES.is_dir():
        pytest.fail(f"attestation fixtures not found at {FIXTURES} (shared/ must sit beside the repository)")
    return expected_fields()
