"""Test helpers: the real docker-registry, and a small scriptable registry.

`RealRegistry` runs Debian's docker-registry (distribution 2.8) on 127.0.0.1 with a
temporary storage directory, optionally behind htpasswd Basic auth.

`ScriptedRegistry` serves an OCI layout over the distribution API on 127.0.0.1 so the
tests can make it misbehave in ways the real server never does on demand: the Bearer
token flow (with the WWW-Authenticate header Docker Hub really sends, recorded in
jupyterhub/binderhub#993), 429/503 with Retry-After, a connection dropped halfway
through a blob, a slow blob for a kill test. It is a test double for a *remote*
registry's failures only; all ordinary behaviour is tested against RealRegistry.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

# Recorded from Docker Hub (jupyterhub/binderhub#993); the realm is pointed at our server.
DOCKER_HUB_CHALLENGE = (
    'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
    'scope="repository:library/nginx:pull"'
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


class RealRegistry:
    def __init__(self, workdir: Path, htpasswd: Path | None = None) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.storage = workdir / "storage"
        self.storage.mkdir(parents=True)
        auth = ""
        if htpasswd is not None:
            auth = f"auth:\n  htpasswd:\n    realm: kcompat-test\n    path: {htpasswd}\n"
        config = workdir / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n{auth}"
        )
        self.log = open(workdir / "registry.log", "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_for(f"http://{self.host}/v2/")

    def push(self, source: str, dest: str, *args: str) -> None:
        subprocess.run(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                *args,
                source,
                f"docker://{self.host}/{dest}",
            ],
            check=True,
        )

    def blob_path(self, digest: str) -> Path:
        hexpart = digest.split(":")[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class ScriptedRegistry:
    """Serves /v2/<repo>/manifests/<ref> and /blobs/<digest> from an OCI layout."""

    def __init__(self, layout: Path, repo: str = "test/busybox") -> None:
        self.layout = layout
        self.repo = repo
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.tags: dict[str, str] = {}
        index = json.loads((layout / "index.json").read_text())
        for m in index["manifests"]:
            name = m.get("annotations", {}).get("org.opencontainers.image.ref.name")
            if name:
                self.tags[name] = m["digest"]
        # knobs
        self.token: str | None = None  # require "Bearer <token>" when set
        self.token_requests: list[dict[str, str]] = []
        self.fail_next: list[tuple[int, dict[str, str]]] = []  # (status, headers) queue
        self.drop_blob_after: int | None = None  # bytes, once
        self.blob_delay: float = 0.0  # seconds per 64 KiB chunk
        self.range_requests: list[str] = []
        self.requests: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def blob(self, digest: str) -> bytes:
        return (self.layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        reg = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(
                self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                reg.requests.append(self.path)
                if self.path.startswith("/token"):
                    from urllib.parse import parse_qs, urlparse

                    q = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
                    reg.token_requests.append(q)
                    self._send(
                        200,
                        json.dumps({"token": reg.token}).encode(),
                        {"Content-Type": "application/json"},
                    )
                    return
                if reg.fail_next:
                    status, headers = reg.fail_next.pop(0)
                    self._send(status, b'{"errors":[{"code":"TOOMANYREQUESTS"}]}', headers)
                    return
                if reg.token and self.headers.get("Authorization") != f"Bearer {reg.token}":
                    challenge = DOCKER_HUB_CHALLENGE.replace(
                        "https://auth.docker.io/token", f"http://{reg.host}/token"
                    )
                    self._send(
                        401,
                        b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                        {"WWW-Authenticate": challenge},
                    )
                    return
                prefix = f"/v2/{reg.repo}/"
                if not self.path.startswith(prefix):
                    self._send(404, b'{"errors":[{"code":"NAME_UNKNOWN"}]}')
                    return
                kind, _, ref = self.path[len(prefix) :].partition("/")
                if kind == "manifests":
                    digest = reg.tags.get(ref, ref)
                    try:
                        body = reg.blob(digest)
                    except (OSError, IndexError):
                        self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
                        return
                    mt = json.loads(body).get(
                        "mediaType", "application/vnd.oci.image.manifest.v1+json"
                    )
                    self._send(200, body, {"Content-Type": mt, "Docker-Content-Digest": digest})
                    return
                if kind == "blobs":
                    try:
                        body = reg.blob(ref)
                    except (OSError, IndexError):
                        self._send(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
                        return
                    self._blob(body)
                    return
                self._send(404)

            def _blob(self, body: bytes) -> None:
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    reg.range_requests.append(rng)
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                part = body[start:]
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                drop = reg.drop_blob_after
                sent = 0
                for i in range(0, len(part), 65536):
                    chunk = part[i : i + 65536]
                    if drop is not None and sent + len(chunk) > drop:
                        reg.drop_blob_after = None
                        self.wfile.write(chunk[: drop - sent])
                        self.wfile.flush()
                        self.close_connection = True
                        with contextlib.suppress(OSError):
                            self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    if reg.blob_delay:
                        self.wfile.flush()
                        time.sleep(reg.blob_delay)

        return Handler

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def kcompat_env(cache: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["KCOMPAT_CACHE"] = str(cache)
    env.update(extra)
    return env


@contextlib.contextmanager
def scripted(layout: Path) -> Iterator[ScriptedRegistry]:
    reg = ScriptedRegistry(layout)
    try:
        yield reg
    finally:
        reg.stop()
