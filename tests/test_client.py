"""The API client's transport settings (the API itself is exercised by tests/service)."""

from __future__ import annotations

import ssl

import pytest

from shardguard.client import Client, SignatureRejected, _query
from shardguard.client.connections import tls_context


def test_clients_share_one_verifying_tls_context() -> None:
    """Loading a CA bundle takes ~50 ms: the context is made once per process, shared by every
    client, and keeps certificate and host-name checks on."""
    tls_context.cache_clear()
    ctx = tls_context()
    assert tls_context() is ctx and isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


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


def test_queries_are_written_as_httpx_wrote_them() -> None:
    """The query a call's ``params`` make: httpx's spelling of booleans and None, a list as the
    name repeated, everything percent-encoded; no ``?`` without params."""
    assert _query(None) == _query({}) == ""
    assert _query({"wait": 25.0}) == "?wait=25.0"
    assert _query({"limit": 1, "flag": True, "off": False, "none": None}) == "?limit=1&flag=true&off=false&none="
    assert _query({"node": ["a", "b c"], "q": "x&y=z/é"}) == "?node=a&node=b+c&q=x%26y%3Dz%2F%C3%A9"


@pytest.mark.parametrize(
    "url",
    ["ftp://coordinator", "coordinator:8750", "http://", "http://h/?q=1", "http://h/#f", "http://user:pw@h/"],
)
def test_a_coordinator_url_the_client_cannot_use_is_refused_at_once(url: str) -> None:
    with pytest.raises(ValueError, match="coordinator URL"):
        Client(url, "t")


def test_the_key_is_pinned_at_creation_and_a_swap_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review finding: the key was pinned at the first signature, so a coordinator could show
    the real key at creation and then answer the first signing under a key of its own."""
    import hashlib
    from typing import Any

    import coincurve

    from tests.coordinator.conftest import dkg_result

    real = dkg_result("ecdsa")
    evil_sk = coincurve.PrivateKey(hashlib.sha256(b"the coordinator's own key").digest())
    evil = {"public_key": evil_sk.public_key.format().hex(), "chain_code": real["chain_code"]}
    digest = hashlib.sha256(b"pay bob").digest()
    sig = evil_sk.sign_recoverable(digest, hasher=None)
    shown = {"n": 0}

    def call(method: str, path: str, **_: Any) -> Any:
        if (method, path) == ("POST", "/v1/keys"):
            return {"key_id": "key_1", "request_id": "req_1"}
        if path == "/v1/requests/req_1":
            return {"request_id": "req_1", "status": "done"}
        if path == "/v1/keys/key_1":
            shown["n"] += 1
            pk = real if shown["n"] == 1 else evil  # the real key at creation, its own afterwards
            return {"key_id": "key_1", "scheme": "ecdsa", "public_key": pk["public_key"], "public_package": pk}
        if path == "/v1/keys/key_1/sign":
            result = {"scheme": "ecdsa", "public_key": evil["public_key"], "path": "m", "digest": digest.hex(),
                      "signature": sig[:64].hex(), "recovery_id": sig[64]}  # fmt: skip
            return {"request_id": "req_2", "status": "done", "result": result}
        raise AssertionError(path)

    with Client("http://127.0.0.1:1", "t") as c:
        monkeypatch.setattr(c, "_call", call)
        assert c.create_key("ecdsa", 2, ["a", "b", "c"])["public_key"] == real["public_key"]
        with pytest.raises(SignatureRejected):
            c.sign("key_1", digest=digest)  # checked under the key pinned at creation
        with pytest.raises(SignatureRejected):
            c.key("key_1")  # and the other key is refused where it is shown


def test_a_result_with_another_recovery_id_or_scheme_is_refused() -> None:
    """Review finding: a flipped recovery id (Ethereum's v: another address) and a wrong scheme
    label passed the check."""
    import hashlib

    from shardguard.coordinator.signatures import signature_problem
    from tests.coordinator.conftest import dkg_result, sign_result

    digest = hashlib.sha256(b"tx").digest()
    params = {"digest_hex": digest.hex()}
    res = sign_result({"scheme": "ecdsa", "params": params})
    key = dkg_result("ecdsa")
    assert signature_problem("ecdsa", key["public_key"], key, params, res) is None
    for bad in ({"recovery_id": res["recovery_id"] ^ 1}, {"recovery_id": 4}, {"recovery_id": "0"}, {"scheme": "bip340"}):
        assert signature_problem("ecdsa", key["public_key"], key, params, res | bad) is not None, bad


@pytest.mark.parametrize("key_id", ["../tokens", "..", "k?x=1", "a/b", "a%2fb", "", "k" * 65, "ké"])
def test_an_id_is_one_path_segment_of_id_characters(key_id: str) -> None:
    """Review finding: an id the caller passed went into the URL as it was ("?", "%", "/", "..")."""
    with Client("http://127.0.0.1:1", "t") as c, pytest.raises(ValueError, match="not an API path"):
        c.key(key_id)
