"""Keep-alive HTTP/1.1 connections to one coordinator, for :class:`~shardguard.client.Client`.

The standard library's :mod:`http.client` under a small thread-safe pool. httpx did this job
before; its per-request machinery (request and response models, cookies, auth and redirect
hooks) cost about 0.5 ms of CPU and 0.7–1 ms of latency per signing call on the bench host,
as much as the coordinator's whole handling of the request (bench/README.md, "The client on
http.client"). What this module does, and no more:

- one base URL (``http`` or ``https``, with an optional path prefix); ``https`` verifies the
  certificate and the host name against the certifi roots, or against ``SSL_CERT_FILE`` /
  ``SSL_CERT_DIR`` when set (as httpx did);
- HTTP proxies as :func:`urllib.request.getproxies` finds them (``http_proxy``,
  ``https_proxy``, else ``all_proxy``, and ``no_proxy``; on Windows and macOS also the
  system settings): an ``http`` URL is asked of the proxy in absolute form, an ``https`` one
  through a ``CONNECT`` tunnel, so TLS still ends at the coordinator;
- connections kept alive and reused, LIFO, at most ``keep`` idle ones; one the server has
  closed while idle (it is readable: end of stream) is dropped before use, not written to;
- a timeout for each request, and no Nagle delay (``TCP_NODELAY``);
- an answer's body at most :data:`MAX_ANSWER` bytes (a hostile or broken server cannot make
  the client hold more); an interim (1xx) answer other than ``100 Continue`` is refused;
- the path percent-encoded where a URL needs it (ids with spaces or non-ASCII letters).

Every failure to get an answer is a :class:`TransportError`; retrying is the caller's decision
(the client retries only reads and writes under an ``Idempotency-Key``).
"""

from __future__ import annotations

import base64
import functools
import http.client
import os
import select
import socket
import ssl
import threading
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

import certifi

__all__ = ["MAX_ANSWER", "Answer", "Connections", "TransportError"]

#: The largest answer body read (64 MiB): far above any the API gives (audit pages, node lists).
MAX_ANSWER = 64 << 20
_CHUNK = 1 << 16


class TransportError(Exception):
    """No answer: the connection was refused, reset or timed out, or the answer was not
    HTTP/1.1 (or too large). ``retry``: whether sending again may help (not for a certificate
    that failed verification)."""

    def __init__(self, method: str, target: str, reason: str, *, retry: bool = True) -> None:
        self.method = method
        self.target = target
        self.reason = reason
        self.retry = retry
        super().__init__(f"{method} {target}: {reason}")


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]  # names in lower case; a repeated header's values joined by ", "
    body: bytes


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The verifying TLS context, made once per process (loading a CA bundle takes ~50 ms) and
    shared: certificate and host name checks, against ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` if
    set, else the certifi roots."""
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if cafile or capath:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    return ssl.create_default_context(cafile=certifi.where())


@dataclass(frozen=True)
class _Route:
    """Where to connect, and what to put on the request line, for one base URL."""

    https: bool
    host: str
    port: int
    prefix: str  # the base URL's path, without its trailing slash
    proxy: tuple[str, int] | None
    proxy_headers: dict[str, str]  # Proxy-Authorization, from the proxy URL's user info

    @property
    def absolute(self) -> bool:
        """A plain-HTTP request through a proxy names the whole URL on its request line."""
        return self.proxy is not None and not self.https

    def target(self, path: str) -> str:
        if not self.absolute:
            return self.prefix + path
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.prefix}{path}"


def _route(url: str) -> _Route:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the coordinator URL must be http:// or https:// with a host, not {url!r}")
    if parts.query or parts.fragment or parts.username is not None:
        raise ValueError(f"the coordinator URL has no query, fragment or user: {url!r}")
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    proxy, proxy_headers = _proxy(parts.scheme, parts.hostname)
    return _Route(https, parts.hostname, port, parts.path.rstrip("/"), proxy, proxy_headers)


def _proxy(scheme: str, host: str) -> tuple[tuple[str, int] | None, dict[str, str]]:
    """The environment's proxy for ``scheme`` URLs to ``host`` (None: connect directly)."""
    proxies = urllib.request.getproxies()
    url = proxies.get(scheme) or proxies.get("all")
    if not url or urllib.request.proxy_bypass(host):
        return None, {}
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only http:// proxies are supported, not {url!r} (from the {scheme}_proxy variable)")
    headers = {}
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username) + ":" + urllib.parse.unquote(parts.password or "")
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()
    return (parts.hostname, parts.port or 80), headers


class Connections:
    """Keep-alive connections to the server at ``url``, safe to share between threads (each
    request has a connection to itself while it runs)."""

    def __init__(self, url: str, *, timeout: float, headers: Mapping[str, str], keep: int = 16) -> None:
        self._route = _route(url)
        self._timeout = timeout
        self._headers = dict(headers)
        self._keep = keep
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> Connections:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Answer:
        """Send one request (``path`` with its query, below the base URL's path) and read its
        whole answer."""
        target = self._route.target(_quoted(path))
        all_headers = self._headers | dict(headers or {})
        if self._route.absolute:
            all_headers |= self._route.proxy_headers
        conn = self._take(method, target, self._timeout if timeout is None else timeout)
        try:
            conn.request(method, target, body=body, headers=all_headers)
            response = conn.getresponse()
            if 100 <= response.status < 200:  # http.client skips 100 Continue only
                raise _Refused(f"an interim answer ({response.status}) where a final one was due")
            answer = Answer(response.status, _headers(response), _read(response))
        except _FAILURES as e:
            conn.close()
            raise _failure(method, target, e) from None
        if response.will_close:
            conn.close()
        else:
            self._give_back(conn)
        return answer

    def _take(self, method: str, target: str, timeout: float) -> http.client.HTTPConnection:
        """An idle connection the server has not closed, or a new one; ``timeout`` set."""
        while True:
            with self._lock:
                if self._closed:
                    raise TransportError(method, target, "the client is closed", retry=False)
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect(method, target, timeout)
            if conn.sock is not None and not _readable(conn.sock):
                conn.sock.settimeout(timeout)
                return conn
            conn.close()  # closed by the server while idle (or it sent something unasked)

    def _connect(self, method: str, target: str, timeout: float) -> http.client.HTTPConnection:
        route = self._route
        host, port = route.proxy or (route.host, route.port)
        conn: http.client.HTTPConnection
        if route.https:
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=tls_context())
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        if route.proxy is not None and route.https:
            conn.set_tunnel(route.host, route.port, headers=route.proxy_headers)
        try:
            conn.connect()  # an HTTPException here: a garbled answer to CONNECT
            if conn.sock is not None:  # always, once connected
                # Requests and answers are single small writes: no waiting for an ACK (Nagle).
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except _FAILURES as e:
            conn.close()
            raise _failure(method, target, e) from None
        return conn

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._keep:
                self._idle.append(conn)
                return
        conn.close()


class _Refused(Exception):
    """An answer not to be read (or retried): too large, or interim."""


#: What a request or a connection can fail with (a certificate's verification failure is an
#: OSError and a ValueError; http.client's InvalidURL is an HTTPException).
_FAILURES = (OSError, ValueError, http.client.HTTPException, _Refused)


def _failure(method: str, target: str, e: BaseException) -> TransportError:
    """``e`` as a :class:`TransportError`; not to be retried when sending again would change
    nothing: a certificate that failed verification, an answer too large or interim, a header
    value (CR/LF) or URL that http.client will not send."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return TransportError(method, target, f"certificate: {e.verify_message}", retry=False)
    final = isinstance(e, (_Refused, http.client.InvalidURL)) or (isinstance(e, ValueError) and not isinstance(e, OSError))
    return TransportError(method, target, _reason(e), retry=not final)


def _quoted(path: str) -> str:
    """``path?query`` with the path percent-encoded as a URL needs (what is already escaped,
    and the query, which the client encodes, are left as they are)."""
    path, sep, query = path.partition("?")
    return urllib.parse.quote(path, safe="/%:@!$&'()*+,;=-._~") + sep + query


def _read(response: http.client.HTTPResponse) -> bytes:
    if response.length is not None and response.length > MAX_ANSWER:
        raise _Refused(f"an answer of {response.length} bytes (at most {MAX_ANSWER})")
    if response.length is not None:
        return response.read()
    chunks, size = [], 0
    while chunk := response.read(_CHUNK):
        size += len(chunk)
        if size > MAX_ANSWER:
            raise _Refused(f"an answer of more than {MAX_ANSWER} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _headers(response: http.client.HTTPResponse) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in response.getheaders():
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def _readable(sock: socket.socket) -> bool:
    """True if reading would not block: an idle keep-alive connection the server closed (or
    wrote to unasked), never to be reused."""
    try:
        if not hasattr(select, "poll"):  # Windows
            return bool(select.select([sock], [], [], 0)[0])
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # closed under us
        return True


def _reason(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
