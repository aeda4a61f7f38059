"""The client's HTTP/1.1 connections (shardguard/client/connections.py), against real local
servers: keep-alive and its races, timeouts, malformed and oversized answers, TLS with
verification, proxies from the environment, retries and threads."""

from __future__ import annotations

import contextlib
import datetime
import http.server
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shardguard.client import RETRIES, ApiError, Client
from shardguard.client import connections as conns
from shardguard.client.connections import Connections, TransportError, tls_context


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _answer(self, status: int, obj: Any, **headers: str) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:
            self.server.seen.append((self.command, self.path, dict(self.headers), body))
        if self.path.startswith("/slow"):
            time.sleep(1.5)
        if self.path.startswith("/fail"):
            self._answer(409, {"error": {"code": "conflict", "message": "no", "field": "key_id"}})
        elif self.path.startswith("/text"):
            self.send_response(502)
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"bad")
        elif self.path.startswith("/chunked"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(8):
                self.wfile.write(b"400\r\n" + b"x" * 0x400 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            self._answer(200, {"method": self.command, "path": self.path, "body": body.decode()})
        if self.path.startswith("/close-after"):
            self.close_connection = True  # closes without saying so (no "Connection: close")

    do_GET = do_POST = _any


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.connections = 0
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.shutdown()
    s.server_close()


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def _raw_server(answer: Callable[[socket.socket, bytes], None]) -> tuple[int, list[bytes], socket.socket]:
    """A one-thread TCP server: each connection's first ``recv`` is recorded, then ``answer``."""
    listener = socket.create_server(("127.0.0.1", 0))
    first: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                data = conn.recv(1 << 16)
                first.append(data)
                answer(conn, data)

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], first, listener


def test_connections_are_kept_alive_and_reused(server: _Server) -> None:
    with Client(f"http://127.0.0.1:{server.port}", "tok") as c:
        for i in range(5):
            assert c._call("POST", "/echo", json={"i": i})["body"] == json.dumps({"i": i}, separators=(",", ":"))
        assert c._call("GET", "/v1/health", params={"wait": 2.5}) == {"method": "GET", "path": "/v1/health?wait=2.5", "body": ""}
    assert server.connections == 1
    headers = server.seen[0][2]
    assert headers["Authorization"] == "Bearer tok" and headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("shardguard-client/") and headers["Accept"] == "application/json"


def test_a_path_prefix_is_kept(server: _Server) -> None:
    with Client(f"http://127.0.0.1:{server.port}/shardguard/", "tok") as c:
        assert c._call("GET", "/v1/keys")["path"] == "/shardguard/v1/keys"


def test_a_connection_the_server_closed_while_idle_is_not_written_to(server: _Server) -> None:
    """A keep-alive connection the server closed after its answer (idle timeout, restart) is
    seen closed and replaced before use: the next call, a POST without an idempotency key,
    which is never retried, goes through."""
    with Client(f"http://127.0.0.1:{server.port}", "tok") as c:
        c._call("GET", "/close-after")
        time.sleep(0.05)  # the server's FIN arrives
        assert c._call("POST", "/echo", json={"a": 1})["body"] == '{"a":1}'
    assert server.connections == 2


def test_the_request_is_framed_as_http_1_1() -> None:
    """What goes on the wire: the request line, the client's and the call's headers, the
    body's length and the compact JSON body."""
    got: list[bytes] = []
    want = json.dumps({"message_hex": "ab" * 32}, separators=(",", ":")).encode()

    def answer(conn: socket.socket, data: bytes) -> None:
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < len(want):
            data += conn.recv(1 << 16)
        got.append(data)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")

    port, _first, listener = _raw_server(answer)
    try:
        with Client(f"http://127.0.0.1:{port}", "tok", timeout=5) as c:
            assert c._call("POST", "/v1/keys/k/sign", json={"message_hex": "ab" * 32}) == {}
    finally:
        listener.close()
    head, _, body = got[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/keys/k/sign HTTP/1.1"
    assert {b"Content-Length: %d" % len(want), b"Authorization: Bearer tok", f"Host: 127.0.0.1:{port}".encode()} <= set(lines)
    assert body == want


@pytest.mark.parametrize(
    "reply",
    [b"SSH-2.0-OpenSSH_9.6\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", b""],
    ids=["not-http", "truncated", "closed"],
)
def test_an_answer_that_is_not_http_is_a_transport_error(reply: bytes) -> None:
    def answer(conn: socket.socket, data: bytes) -> None:
        conn.sendall(reply)

    port, first, listener = _raw_server(answer)
    try:
        with Client(f"http://127.0.0.1:{port}", "tok") as c, pytest.raises(TransportError) as e:
            c._call("POST", "/v1/tokens", json={})
    finally:
        listener.close()
    assert e.value.method == "POST" and e.value.target == "/v1/tokens" and e.value.retry
    assert len(first) == 1  # a POST without an idempotency key: sent once


def test_a_request_times_out(server: _Server) -> None:
    with Client(f"http://127.0.0.1:{server.port}", "tok", timeout=0.3) as c:
        t0 = time.monotonic()
        with pytest.raises(TransportError, match="timed out"):
            c._call("POST", "/slow")
        assert time.monotonic() - t0 < 1.2
        # The call's own timeout wins over the client's.
        assert c._call("POST", "/slow", timeout=5)["path"] == "/slow"


def test_reads_and_idempotent_writes_are_retried_others_are_not() -> None:
    """Connection refused: a GET and a POST under an idempotency key are sent RETRIES times,
    a plain POST once."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    sleeps: list[float] = []
    with Client(f"http://127.0.0.1:{port}", "tok") as c:
        c_sleep = time.sleep
        try:
            time.sleep = sleeps.append  # type: ignore[assignment]
            for method, key, tries in (("GET", None, RETRIES), ("POST", "k", RETRIES), ("POST", None, 1)):
                sleeps.clear()
                with pytest.raises(TransportError, match="ConnectionRefused"):
                    c._call(method, "/v1/x", idempotency_key=key)
                assert len(sleeps) == tries - 1
        finally:
            time.sleep = c_sleep  # type: ignore[assignment]


def test_api_errors_are_typed(server: _Server) -> None:
    with Client(f"http://127.0.0.1:{server.port}", "tok") as c:
        with pytest.raises(ApiError) as e:
            c._call("GET", "/fail")
        assert (e.value.status, e.value.code, e.value.message, e.value.field) == (409, "conflict", "no", "key_id")
        with pytest.raises(ApiError) as e:
            c._call("GET", "/text")
        assert (e.value.status, e.value.code, e.value.message) == (502, "http_error", "bad")


def test_an_oversized_answer_is_refused(server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """At most MAX_ANSWER bytes are read, whether the length is said (Content-Length) or not
    (chunked); under the limit both are read whole."""
    monkeypatch.setattr(conns, "MAX_ANSWER", 4096)
    big = json.dumps({"x": "y" * 5000}).encode()
    with Connections(f"http://127.0.0.1:{server.port}", timeout=5, headers={}) as pool:
        with pytest.raises(TransportError, match="more than 4096 bytes"):
            pool.request("GET", "/chunked")
        with pytest.raises(TransportError, match="at most 4096"):
            pool.request("POST", "/echo", body=big)
        monkeypatch.setattr(conns, "MAX_ANSWER", 1 << 20)
        assert pool.request("GET", "/chunked").body == b"x" * 8192
        assert len(pool.request("POST", "/echo", body=big).body) > 5000


def test_an_answer_that_is_not_json_is_an_api_error(server: _Server) -> None:
    with Client(f"http://127.0.0.1:{server.port}", "tok") as c, pytest.raises(ApiError) as e:
        c._call("GET", "/chunked")
    assert (e.value.status, e.value.code) == (200, "malformed_answer")


def test_one_client_serves_many_threads(server: _Server) -> None:
    errors: list[BaseException] = []
    with Client(f"http://127.0.0.1:{server.port}", "tok") as c:

        def work(k: int) -> None:
            try:
                for i in range(15):
                    assert c._call("POST", f"/echo/{k}", json={"i": i})["path"] == f"/echo/{k}"
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == [] and len(server.seen) == 120
    assert server.connections <= 8  # each thread's connection, reused


def test_a_closed_client_sends_nothing(server: _Server) -> None:
    c = Client(f"http://127.0.0.1:{server.port}", "tok")
    c._call("GET", "/echo")
    c.close()
    with pytest.raises(TransportError, match="closed") as e:
        c._call("GET", "/echo")
    assert not e.value.retry


# -- TLS and proxies ---------------------------------------------------------------------------


def _certificate(tmp: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / f"{name}.pem", tmp / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    key_file.write_bytes(pem)
    return cert_file, key_file


@pytest.fixture
def tls_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[_Server, Path]]:
    cert, key = _certificate(tmp_path, "coordinator")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    s = _Server(tls=ctx)
    tls_context.cache_clear()
    yield s, cert
    tls_context.cache_clear()
    s.shutdown()
    s.server_close()


def test_https_verifies_the_coordinator_certificate(tls_server: tuple[_Server, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Trusted through SSL_CERT_FILE it answers; under the default roots the self-signed
    certificate is refused, once (a failed verification is not retried)."""
    server, cert = tls_server
    with Client(f"https://127.0.0.1:{server.port}", "tok") as c:
        with pytest.raises(TransportError, match="certificate") as e:
            c._call("GET", "/echo")
        assert not e.value.retry
    assert server.seen == []
    tls_context.cache_clear()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    with Client(f"https://localhost:{server.port}", "tok") as c:
        assert c._call("POST", "/echo", json={"a": 1})["body"] == '{"a":1}'
        assert c._call("GET", "/echo")["method"] == "GET"
    assert server.connections == 1


class _Proxy:
    """An HTTP proxy: CONNECT tunnels to the named port on loopback; a request in absolute form
    is recorded and answered here."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lines: list[tuple[str, str]] = []  # (request line, Proxy-Authorization)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(4096)
        head = data.split(b"\r\n\r\n")[0].decode().split("\r\n")
        auth = next((h.split(":", 1)[1].strip() for h in head[1:] if h.lower().startswith("proxy-authorization:")), "")
        self.lines.append((head[0], auth))
        if head[0].startswith("CONNECT "):
            port = int(head[0].split()[1].rsplit(":", 1)[1])
            upstream = socket.create_connection(("127.0.0.1", port))
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            threading.Thread(target=_pipe, args=(upstream, conn), daemon=True).start()
            _pipe(conn, upstream)
        else:
            body = json.dumps({"proxied": head[0]}).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            conn.close()

    def close(self) -> None:
        self.listener.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(1 << 16):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def test_proxies_from_the_environment(tls_server: tuple[_Server, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """http:// through the proxy in absolute form (with the proxy's credentials); https://
    through a CONNECT tunnel, TLS ending at the coordinator; no_proxy bypasses it."""
    server, cert = tls_server
    proxy = _Proxy()
    try:
        monkeypatch.setenv("http_proxy", f"http://us%40r:p%3Ass@127.0.0.1:{proxy.port}")
        monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        with Client("http://coordinator.example:8750/sg", "tok") as c:
            assert c._call("GET", "/v1/health") == {"proxied": "GET http://coordinator.example:8750/sg/v1/health HTTP/1.1"}
        assert proxy.lines[-1][1] == "Basic dXNAcjpwOnNz"  # us@r:p:ss
        with Client(f"https://localhost:{server.port}", "tok") as c:
            assert c._call("POST", "/echo", json={"b": 2})["body"] == '{"b":2}'
        assert proxy.lines[-1] == (f"CONNECT localhost:{server.port} HTTP/1.0", "")
        assert server.seen[-1][:2] == ("POST", "/echo")
        monkeypatch.setenv("no_proxy", "localhost")
        n = len(proxy.lines)
        with Client(f"https://localhost:{server.port}", "tok") as c:
            assert c._call("GET", "/echo")["method"] == "GET"
        assert len(proxy.lines) == n
        monkeypatch.delenv("http_proxy")
        monkeypatch.setenv("all_proxy", f"http://127.0.0.1:{proxy.port}")  # for every scheme not named
        with Client("http://coordinator.example:8750", "tok") as c:
            assert c._call("GET", "/v1/health") == {"proxied": "GET http://coordinator.example:8750/v1/health HTTP/1.1"}
        monkeypatch.setenv("https_proxy", "socks5://127.0.0.1:1080")
        monkeypatch.delenv("no_proxy")
        with pytest.raises(ValueError, match="only http:// proxies"):
            Client(f"https://localhost:{server.port}", "tok")
    finally:
        proxy.close()


def test_connections_need_no_client(server: _Server) -> None:
    """The pool on its own: answers with lower-cased headers and the raw body."""
    with Connections(f"http://127.0.0.1:{server.port}", timeout=5, headers={"X-A": "1"}) as pool:
        answer = pool.request("POST", "/echo", body=b"raw", headers={"Content-Type": "text/plain"})
    assert answer.status == 200 and answer.headers["content-type"] == "application/json"
    assert json.loads(answer.body)["body"] == "raw" and server.seen[0][2]["X-A"] == "1"


# -- review findings ---------------------------------------------------------------------------


def test_what_cannot_change_on_a_retry_is_not_retried(server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """An oversized answer, or a header value http.client refuses (CR/LF), fails at once: a
    GET is not sent again."""
    monkeypatch.setattr(conns, "MAX_ANSWER", 4096)
    with Client(f"http://127.0.0.1:{server.port}", "tok") as c:
        with pytest.raises(TransportError, match="more than 4096") as e:
            c._call("GET", "/chunked")
        assert not e.value.retry and len(server.seen) == 1
        with pytest.raises(TransportError) as e:
            c._call("POST", "/echo", json={}, idempotency_key="a\r\nX-Evil: 1")
        assert not e.value.retry and len(server.seen) == 1


def test_paths_are_percent_encoded(server: _Server) -> None:
    with Client(f"http://127.0.0.1:{server.port}", "tok") as c:
        assert c._call("GET", "/v1/keys/a b/é", params={"q": "x y"})["path"] == "/v1/keys/a%20b/%C3%A9?q=x+y"
        assert c._call("GET", "/v1/keys/a%2Fb")["path"] == "/v1/keys/a%2Fb"  # escaped already: kept


def test_an_interim_answer_is_refused_and_its_connection_dropped() -> None:
    def answer(conn: socket.socket, data: bytes) -> None:
        conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    port, first, listener = _raw_server(answer)
    try:
        with Client(f"http://127.0.0.1:{port}", "tok") as c:
            with pytest.raises(TransportError, match="interim answer") as e:
                c._call("GET", "/v1/health")
            assert not e.value.retry and c._connections._idle == []
    finally:
        listener.close()
    assert len(first) == 1


def test_a_garbled_answer_to_connect_is_a_transport_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def answer(conn: socket.socket, data: bytes) -> None:
        conn.sendall(b"garbage\r\n\r\n")

    port, _first, listener = _raw_server(answer)
    try:
        monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
        with Client("https://coordinator.example", "tok") as c, pytest.raises(TransportError):
            c._call("POST", "/v1/tokens", json={})
    finally:
        listener.close()
