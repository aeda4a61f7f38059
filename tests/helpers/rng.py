"""A deterministic byte source for tests only (SHA-256 in counter mode)."""

from __future__ import annotations

import hashlib


class DeterministicRng:
    """``rng(n) -> n bytes``; the same seed gives the same stream. Never for production."""

    def __init__(self, seed: int | bytes = 0) -> None:
        self._seed = seed if isinstance(seed, bytes) else seed.to_bytes(16, "big")
        self._counter = 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
        return out[:n]
