"""A fault-injecting HTTP proxy in front of the real registry, for tests only.

`FaultyProxy` listens on a loopback address, forwards every request to the registry
(Debian's docker-registry from tests/registry_server.py) and, per the `Rules` a test
sets, misbehaves the way remote registries and the networks in between do: 429/503
with Retry-After, blobs cut short or with a byte flipped, connections reset after K
bytes, bodies dribbled slowly, blob GETs redirected to another loopback host (which
records whether the Authorization header came along), Basic auth in front of an open
registry, and manifests far larger than any real one.

Everything is bounded: only 127.0.0.0/8 addresses, every loop ends with its body, the
server thread stops in `stop()` (the `proxy()` context manager calls it).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.registry_server import free_port

CHUNK = 64 * 1024
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}
)


@dataclass
class Rules:
    """What to break. Blob faults apply to layer-sized blobs only (see `min_blob`)."""

    # (status, Retry-After or None) answered, in order, to the next matching requests
    fail: list[tuple[int, str | None]] = field(default_factory=list)
    fail_on: str = "/v2/"  # a substring of the paths `fail` applies to
    min_blob: int = 100_000  # blob faults skip smaller blobs (configs)
    truncate_to: int | None = None  # serve only this many bytes, as a complete response
    corrupt_at: int | None = None  # flip the byte at this offset of the blob
    reset_after: int | None = None  # send this many body bytes, then RST the connection
    reset_times: int = 1  # how many responses to reset (-1: all)
    delay: float = 0.0  # seconds to sleep after each 64 KiB of a blob body
    redirect_to: str | None = None  # "http://127.0.0.2:PORT": 307 blob GETs there
    basic_auth: tuple[str, str] | None = None  # require these credentials on /v2/
    huge_manifest: int | None = None  # answer manifest GETs by tag with this many bytes


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class FaultyProxy:
    def __init__(self, upstream: str, host: str = "127.0.0.1") -> None:
        if not host.startswith("127."):
            raise ValueError("the faulty proxy listens on loopback only")
        self.upstream = upstream  # "127.0.0.1:PORT" of the real registry
        self.port = _free_port(host)
        self.host = f"{host}:{self.port}"
        self.rules = Rules()
        self.seen: list[Seen] = []
        self.sent: dict[str, int] = {}  # path -> body bytes written (last response)
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer((host, self.port), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def ranges(self) -> list[str]:
        """The Range headers of the blob requests seen, in order."""
        return [s.headers["range"] for s in self.seen if "range" in s.headers]

    def blob_gets(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "GET" and "/blobs/" in s.path]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def _take_failure(self, path: str) -> tuple[int, str | None] | None:
        with self._lock:
            if self.rules.fail and self.rules.fail_on in path:
                return self.rules.fail.pop(0)
        return None

    def _take_reset(self) -> int | None:
        with self._lock:
            r = self.rules
            if r.reset_after is None or r.reset_times == 0:
                return None
            if r.reset_times > 0:
                r.reset_times -= 1
            return r.reset_after

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve()

            def do_GET(self) -> None:
                self._serve()

            def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _serve(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                proxy.seen.append(Seen(self.command, self.path, headers))
                rules = proxy.rules
                failure = proxy._take_failure(self.path)
                if failure is not None:
                    status, retry_after = failure
                    extra = {"Retry-After": retry_after} if retry_after is not None else {}
                    code = "TOOMANYREQUESTS" if status == 429 else "UNAVAILABLE"
                    self._reply(status, f'{{"errors":[{{"code":"{code}"}}]}}'.encode(), extra)
                    return
                if rules.basic_auth and self.path.startswith("/v2/"):
                    token = base64.b64encode(":".join(rules.basic_auth).encode()).decode()
                    if headers.get("authorization") != f"Basic {token}":
                        self._reply(
                            401,
                            b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                            {"WWW-Authenticate": 'Basic realm="faulty-proxy"'},
                        )
                        return
                is_blob = "/blobs/sha256:" in self.path
                if rules.redirect_to and is_blob and self.command == "GET":
                    self._reply(307, b"", {"Location": f"{rules.redirect_to}{self.path}?sig=x"})
                    return
                is_tag = "/manifests/" in self.path and "sha256:" not in self.path
                if rules.huge_manifest and is_tag and self.command == "GET":
                    self._huge_manifest(rules.huge_manifest)
                    return
                self._forward(headers, is_blob)

            def _huge_manifest(self, size: int) -> None:
                """A manifest that starts as JSON and goes on for `size` bytes, sent without
                a length so that only the client's own bound can stop it."""
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                head = b'{"schemaVersion":2,"annotations":{"pad":"'
                sent = 0
                with contextlib.suppress(OSError):
                    self.wfile.write(head)
                    sent = len(head)
                    filler = b"A" * CHUNK
                    while sent < size:
                        self.wfile.write(filler)
                        sent += len(filler)
                    self.wfile.write(b'"}}')
                proxy.sent[self.path] = sent

            def _forward(self, headers: dict[str, str], is_blob: bool) -> None:
                host, _, port = proxy.upstream.rpartition(":")
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                try:
                    fwd = {k: v for k, v in headers.items() if k not in HOP_BY_HOP}
                    conn.request(self.command, self.path.split("?")[0], headers=fwd)
                    up = conn.getresponse()
                    body_len = int(up.getheader("Content-Length") or 0)
                    rules = proxy.rules
                    faulty = is_blob and up.status in (200, 206) and body_len >= rules.min_blob
                    start = 0
                    if up.status == 206:  # "bytes START-END/TOTAL"
                        start = int((up.getheader("Content-Range") or "bytes 0-").split()[1]
                                    .split("-")[0])  # fmt: skip
                    length = body_len
                    if faulty and rules.truncate_to is not None:
                        length = max(0, min(body_len, rules.truncate_to - start))
                    self.send_response(up.status)
                    for k, v in up.getheaders():
                        if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(length))
                    self.end_headers()
                    if self.command == "HEAD":
                        return
                    self._relay(up, start, length, faulty)
                finally:
                    conn.close()

            def _relay(
                self, up: http.client.HTTPResponse, start: int, length: int, faulty: bool
            ) -> None:
                rules = proxy.rules
                reset = proxy._take_reset() if faulty else None
                offset = start  # of the blob, for corrupt_at
                sent = 0
                try:
                    while sent < length:
                        chunk = up.read(min(CHUNK, length - sent))
                        if not chunk:
                            break
                        if faulty and rules.corrupt_at is not None:
                            i = rules.corrupt_at - offset
                            if 0 <= i < len(chunk):
                                chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
                        if reset is not None and sent + len(chunk) >= reset:
                            self.wfile.write(chunk[: reset - sent])
                            self.wfile.flush()
                            sent = reset
                            self._reset()
                            return
                        self.wfile.write(chunk)
                        self.wfile.flush()
                        sent += len(chunk)
                        offset += len(chunk)
                        if faulty and rules.delay:
                            time.sleep(rules.delay)
                except OSError:  # the client went away (killed, or gave up)
                    self.close_connection = True
                finally:
                    proxy.sent[self.path] = sent

            def _reset(self) -> None:
                """Close with RST, not FIN: what a dying middlebox or peer does. First a
                pause, so the bytes sent reach the client (an RST discards what is still
                in our send buffer) and "after K bytes" means K bytes delivered."""
                self.close_connection = True
                time.sleep(0.2)
                with contextlib.suppress(OSError):
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.connection.close()

        return Handler


def _free_port(host: str) -> int:
    if host == "127.0.0.1":
        return free_port()
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def proxy(upstream: str, host: str = "127.0.0.1") -> Iterator[FaultyProxy]:
    p = FaultyProxy(upstream, host)
    try:
        yield p
    finally:
        p.stop()
