"""Fixtures shared by the node's keystore tests (a module may define its own, which wins)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shardguard.enclave.simulated import SimulatedPlatform
from shardguard.node.keystore import Keystore


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimulatedPlatform:
    return SimulatedPlatform(state_dir=tmp_path_factory.mktemp("platform"))


@pytest.fixture
def store(tmp_path: Path, platform: SimulatedPlatform) -> Iterator[Keystore]:
    s = Keystore.open(tmp_path / "ks", platform)
    yield s
    s.close()
