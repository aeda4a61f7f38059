"""Suite-wide invariants.

Every signature any test produces through a FROST signer is verified again, at the moment it
is produced, by an implementation that is not ours (``shardguard.interop``: libsodium and
OpenSSL, libsecp256k1). A signature only ours accepts fails the test that made it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shardguard.interop import verify_independently
from shardguard.protocols.frost import FrostSigner

_produced = {"count": 0}


@pytest.fixture(autouse=True)
def _independently_verify_every_signature(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    original = FrostSigner._finish

    def finish(self: FrostSigner, sig: bytes) -> None:
        public = self._key.public
        assert verify_independently(public.suite.scheme, public.public_key_bytes, self.message, sig), (
            f"{public.suite.scheme} signature accepted by ShardGuard but not by an independent verifier"
        )
        _produced["count"] += 1
        original(self, sig)

    monkeypatch.setattr(FrostSigner, "_finish", finish)
    yield


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.write_line(f"signatures produced and independently verified: {_produced['count']}")
