"""One loader for every JSON vector file under ``tests/vectors/`` (see SOURCES.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parent.parent / "vectors"


def vector_files(kind: str) -> list[Path]:
    """All ``tests/vectors/<kind>/**/*.json`` files, sorted."""
    return sorted((VECTORS / kind).rglob("*.json"))


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def vector_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def h(x: str) -> bytes:
    return bytes.fromhex(x)
