"""The API client's transport settings (the API itself is exercised by tests/service)."""

from __future__ import annotations

import ssl

import pytest

from shardguard.client import Client, SignatureRejected


def test_clients_share_one_verifying_tls_context() -> None:
    """httpx builds a TLS context (loading the CA bundle, ~50 ms) for every client unless given
    one: ours is made once per process and keeps certificate and host-name checks on."""
    with Client("https://coordinator.invalid", "t") as a, Client("http://127.0.0.1:1", "t") as b:
        ctx_a = a._http._transport._pool._ssl_context  # type: ignore[attr-defined]
        ctx_b = b._http._transport._pool._ssl_context  # type: ignore[attr-defined]
    assert ctx_a is ctx_b
    assert isinstance(ctx_a, ssl.SSLContext)
    assert ctx_a.verify_mode == ssl.CERT_REQUIRED and ctx_a.check_hostname


@pytest.mark.parametrize("scheme", ["ed25519", "bip340", "ecdsa"])
def test_a_done_request_is_returned_only_with_a_valid_signature_of_this_call(
    scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coordinator is not trusted with results: the client verifies the signature under the
    key as it first saw it, over the digest or message *it* sent."""
    from tests.coordinator.conftest import dkg_result, sign_result

    made = dkg_result(scheme)
    key = {"key_id": "key_1", "scheme": scheme, "public_key": made["public_key"], "public_package": made}
    body = {"digest_hex": "ab" * 32, "path": "m/3"} if scheme == "ecdsa" else {"message_hex": "6869"}
    good = sign_result({"scheme": scheme, "params": body})
    other = sign_result({"scheme": scheme, "params": {**body, "digest_hex": "cd" * 32, "message_hex": "00"}})
    with Client("http://127.0.0.1:1", "t") as c:
        asked: list[str] = []
        monkeypatch.setattr(c, "key", lambda key_id: asked.append(key_id) or dict(key))
        c._check_signature("key_1", body, {"request_id": "r1", "result": good})
        for forged in ({**good, "signature": "00" * 64}, {**good, "signature": other["signature"]}, {}):
            with pytest.raises(SignatureRejected) as e:
                c._check_signature("key_1", body, {"request_id": "r2", "result": forged})
            assert e.value.request_id == "r2" and e.value.problem
        # The key is pinned at first sight: a coordinator that later shows another key changes nothing.
        key["public_key"] = dkg_result("ed25519" if scheme != "ed25519" else "bip340")["public_key"]
        c._check_signature("key_1", body, {"request_id": "r3", "result": good})
        assert asked == ["key_1"]


def test_urls_are_built_as_httpx_builds_them_and_kept() -> None:
    """The client keeps the absolute URL of each (path, params): the same URL httpx builds from
    the base URL (a path prefix kept, the query encoded), made once, bounded."""
    with Client("https://coordinator.invalid/prefix/", "t") as c:
        for path, params in [("/v1/keys/k1/sign", {"wait": 25.0}), ("/v1/health", None), ("/v1/audit", {"node": "a b"})]:
            want = c._http.build_request("GET", path, params=params).url
            got = c._url(path, params)
            assert got == want and c._url(path, params) is got
        assert str(c._url("/v1/keys/k1/sign", {"wait": 25.0})) == "https://coordinator.invalid/prefix/v1/keys/k1/sign?wait=25.0"
        listed = {"node": ["a", "b"]}  # unhashable: built, not kept
        assert c._url("/v1/audit", listed) == c._http.build_request("GET", "/v1/audit", params=listed).url
        # Equal values of other types are other URLs (review finding: True and 1 were one).
        assert str(c._url("/v1/audit", {"limit": True})).endswith("?limit=true")
        assert str(c._url("/v1/audit", {"limit": 1})).endswith("?limit=1")
        assert str(c._url("/v1/audit", {"limit": 1.0})).endswith("?limit=1.0")
        # Bounded, least recently used out: a URL in use survives one-off ones.
        sign = c._url("/v1/keys/k1/sign", {"wait": 25.0})
        for i in range(300):
            c._url(f"/v1/requests/r{i}", {"wait": i / 7})
            assert c._url("/v1/keys/k1/sign", {"wait": 25.0}) is sign
        assert len(c._urls) <= 64
