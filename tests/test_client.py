"""The API client's transport settings (the API itself is exercised by tests/service)."""

from __future__ import annotations

import ssl

from shardguard.client import Client


def test_clients_share_one_verifying_tls_context() -> None:
    """httpx builds a TLS context (loading the CA bundle, ~50 ms) for every client unless given
    one: ours is made once per process and keeps certificate and host-name checks on."""
    with Client("https://coordinator.invalid", "t") as a, Client("http://127.0.0.1:1", "t") as b:
        ctx_a = a._http._transport._pool._ssl_context  # type: ignore[attr-defined]
        ctx_b = b._http._transport._pool._ssl_context  # type: ignore[attr-defined]
    assert ctx_a is ctx_b
    assert isinstance(ctx_a, ssl.SSLContext)
    assert ctx_a.verify_mode == ssl.CERT_REQUIRED and ctx_a.check_hostname
