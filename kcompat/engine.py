"""A Docker Engine API client: plain HTTP/1.1 over the daemon's unix socket or TCP.

No docker SDK: `http.client` with a connection class that dials a unix socket. Where
the daemon is, as the docker CLI finds it: `$DOCKER_HOST` (`unix:///path`,
`tcp://host[:port]`), default `unix:///var/run/docker.sock`; with `$DOCKER_TLS_VERIFY`
set, TCP is TLS with `$DOCKER_CERT_PATH` (default `~/.docker`) `ca.pem`, `cert.pem`,
`key.pem`, as docker's client does (docker/cli opts/hosts.go, docker/docker client
FromEnv). Paths are the unversioned Engine API (the daemon's own version answers):
`GET /_ping`, `GET /images/{name}/json` (ImageInspect), `GET /images/{name}/get`
(ImageSave: the `docker save` tar).

Failures are one-line KcompatErrors naming DOCKER_HOST and what to do: nothing
listening (NetworkError), the socket's permissions (AuthError), an image the daemon
does not have (NotFoundError), any other answer of the daemon (its own message).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kcompat.errors import (
    AuthError,
    KcompatError,
    NetworkError,
    NotFoundError,
    UnsupportedError,
    UsageError,
)

DEFAULT_HOST = "unix:///var/run/docker.sock"
DEFAULT_TCP_PORT = 2375  # docker/cli opts/hosts.go DefaultHTTPPort
DEFAULT_TLS_PORT = 2376  # DefaultTLSHTTPPort
MAX_JSON = 64 * 1024 * 1024
USER_AGENT = "kcompat"


def _timeout() -> float:
    """KCOMPAT_TIMEOUT (seconds between bytes; default 60), as the registry client."""
    raw = os.environ.get("KCOMPAT_TIMEOUT", "").strip()
    if not raw:
        return 60.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise UsageError(f"KCOMPAT_TIMEOUT={raw!r} is not a positive number",
                         hint="unset it or set e.g. KCOMPAT_TIMEOUT=60")  # fmt: skip
    return value


@dataclass(frozen=True)
class EngineHost:
    """Where the daemon listens: a unix socket `path`, or TCP `host`:`port`; `origin`
    says where that came from, for messages."""

    url: str
    path: str | None = None
    host: str | None = None
    port: int | None = None
    tls: bool = False
    cert_dir: str | None = None
    origin: str = "DOCKER_HOST"

    def __str__(self) -> str:
        return self.url

    @property
    def shown(self) -> str:
        """`DOCKER_HOST=URL`, `URL (docker context NAME)` or `URL (the default)`."""
        return f"DOCKER_HOST={self.url}" if self.origin == "DOCKER_HOST" else (
            f"{self.url} ({self.origin})"
        )


def _docker_config_dir(env: dict[str, str]) -> Path:
    return Path(env.get("DOCKER_CONFIG") or Path.home() / ".docker")


def _context_host(env: dict[str, str]) -> tuple[str, str, str | None] | None:
    """The endpoint of the docker CLI's current context, when one other than "default"
    is chosen (docker/cli cli/command/cli.go resolveContextName: DOCKER_CONTEXT, else
    config.json's currentContext; DOCKER_HOST wins over both): (host, context name, its
    TLS directory if it has one). The context store: contexts/meta/<sha256 of the
    name>/meta.json, contexts/tls/<sha256>/docker/ (docker/cli cli/context/store)."""
    config = _docker_config_dir(env)
    name = env.get("DOCKER_CONTEXT", "").strip()
    if not name:
        try:
            doc = json.loads((config / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        current = doc.get("currentContext") if isinstance(doc, dict) else None
        name = current if isinstance(current, str) else ""
    if not name or name == "default":
        return None
    key = hashlib.sha256(name.encode()).hexdigest()
    meta = config / "contexts" / "meta" / key / "meta.json"
    try:
        doc = json.loads(meta.read_text(encoding="utf-8"))
        host = doc["Endpoints"]["docker"]["Host"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(
            f"the docker context {name!r} (DOCKER_CONTEXT or {config / 'config.json'}) has no "
            f"readable endpoint in {meta}",
            hint="'docker context ls' lists the contexts; or set DOCKER_HOST",
        ) from None
    tls = config / "contexts" / "tls" / key / "docker"
    return str(host), name, str(tls) if tls.is_dir() else None


def engine_host(env: dict[str, str] | None = None) -> EngineHost:
    """The daemon's address as the docker CLI finds it: DOCKER_HOST (with
    DOCKER_TLS_VERIFY and DOCKER_CERT_PATH), else the current docker context's
    endpoint, else unix:///var/run/docker.sock."""
    env = dict(os.environ) if env is None else env
    url = env.get("DOCKER_HOST", "").strip()
    origin, cert_dir = "DOCKER_HOST", env.get("DOCKER_CERT_PATH") or None
    tls = bool(env.get("DOCKER_TLS_VERIFY", ""))
    if not url:
        context = _context_host(env)
        if context is not None:
            url, name, cert_dir = context
            origin, tls = f"docker context {name!r}", cert_dir is not None
        else:
            url, origin = DEFAULT_HOST, "the default"
    scheme, sep, rest = url.partition("://")
    named = f"DOCKER_HOST={url!r}" if origin == "DOCKER_HOST" else f"{origin}: {url!r}"
    bad = UsageError(
        f"{named} is not unix:///PATH or tcp://HOST:PORT",
        hint="set DOCKER_HOST as for the docker CLI, e.g. unix:///var/run/docker.sock",
    )
    if not sep:
        raise bad
    if scheme == "unix":
        if not rest.startswith("/"):
            raise bad
        return EngineHost(url, path=rest, origin=origin)
    if scheme in ("tcp", "http", "https"):
        tls = tls or scheme == "https"
        parsed = urllib.parse.urlsplit(f"//{rest}")
        try:
            port = parsed.port
        except ValueError:
            raise bad from None
        if not parsed.hostname:
            raise bad
        cert_dir = cert_dir or str(_docker_config_dir(env))
        return EngineHost(url, host=parsed.hostname,
                          port=port or (DEFAULT_TLS_PORT if tls else DEFAULT_TCP_PORT),
                          tls=tls, cert_dir=cert_dir if tls else None, origin=origin)  # fmt: skip
    raise UnsupportedError(
        f"{named}: kcompat speaks to the daemon over unix:// or tcp:// only",
        hint="for ssh://, forward the socket (ssh -L /tmp/d.sock:/var/run/docker.sock) "
        "and set DOCKER_HOST=unix:///tmp/d.sock",
    )


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _daemon_message(body: bytes) -> str:
    """The daemon's error text: its JSON {"message": ...}, else the body's first line."""
    try:
        doc = json.loads(body.decode("utf-8", "replace"))
        if isinstance(doc, dict) and isinstance(doc.get("message"), str):
            return " ".join(doc["message"].split())
    except ValueError:
        pass
    text = body.decode("utf-8", "replace").strip().splitlines()
    return text[0][:300] if text else "no message"


class EngineClient:
    """One daemon, one connection per request (the daemon closes nothing we rely on)."""

    def __init__(self, host: EngineHost | None = None, timeout: float | None = None) -> None:
        self.host = host or engine_host()
        self.timeout = timeout if timeout is not None else _timeout()

    def _connection(self) -> http.client.HTTPConnection:
        h = self.host
        if h.path is not None:
            return _UnixConnection(h.path, self.timeout)
        assert h.host is not None and h.port is not None
        if not h.tls:
            return http.client.HTTPConnection(h.host, h.port, timeout=self.timeout)
        return http.client.HTTPSConnection(h.host, h.port, timeout=self.timeout,
                                           context=self._tls_context())  # fmt: skip

    def _tls_context(self) -> ssl.SSLContext:
        certs = Path(self.host.cert_dir or ".")
        try:
            ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
            ctx.load_cert_chain(str(certs / "cert.pem"), str(certs / "key.pem"))
        except (OSError, ssl.SSLError) as e:
            raise AuthError(
                f"TLS to {self.host.shown}: the client certificates in {certs} cannot be "
                f"used ({getattr(e, 'strerror', None) or e})",
                hint="set DOCKER_CERT_PATH to the directory with ca.pem, cert.pem and key.pem",
            ) from None
        return ctx

    def _where(self) -> str:
        return f"the Docker daemon at {self.host.shown}"

    def _transport_error(self, e: BaseException) -> KcompatError:
        h = self.host
        if isinstance(e, PermissionError):
            return AuthError(
                f"permission denied on {h.path or h.url}, the Docker daemon's socket "
                f"({h.shown})",
                hint="add yourself to the docker group (then log in again) or run as root",
            )
        if isinstance(e, (socket.timeout, TimeoutError)):
            return NetworkError(f"{self._where()} did not answer within {self.timeout:g} s",
                                hint="check that dockerd is healthy (docker info), or raise "
                                "KCOMPAT_TIMEOUT")  # fmt: skip
        if isinstance(e, ssl.SSLError):
            return AuthError(f"TLS with {self._where()} failed ({e.reason or e})",
                             hint="check DOCKER_CERT_PATH and DOCKER_TLS_VERIFY")  # fmt: skip
        if isinstance(e, (http.client.HTTPException, ValueError)):
            return NetworkError(f"{self._where()} does not speak the Docker Engine API "
                                f"({type(e).__name__})",
                                hint="point DOCKER_HOST at dockerd's socket")  # fmt: skip
        if isinstance(e, FileNotFoundError):
            why = f"{h.path} does not exist"
        elif isinstance(e, ConnectionRefusedError):
            why = "connection refused"
        else:
            why = getattr(e, "strerror", None) or type(e).__name__
        return NetworkError(
            f"no Docker daemon answers at {h.shown} ({why})",
            hint="start it (systemctl start docker) or set DOCKER_HOST to where it listens",
        )

    def request(self, path: str) -> http.client.HTTPResponse:
        """GET `path`; the open response (status not checked; read or close it)."""
        conn = self._connection()
        try:
            conn.request("GET", path, headers={"User-Agent": USER_AGENT})
            return conn.getresponse()
        except (OSError, http.client.HTTPException, ValueError) as e:
            conn.close()
            raise self._transport_error(e) from None

    def read(self, resp: http.client.HTTPResponse, limit: int = MAX_JSON) -> bytes:
        try:
            data = resp.read(limit + 1)
        except (OSError, http.client.HTTPException) as e:
            raise self._transport_error(e) from None
        finally:
            resp.close()
        if len(data) > limit:
            raise NetworkError(f"{self._where()} sent an answer over {limit} bytes")
        return data

    def _json(self, path: str, what: str) -> Any:
        resp = self.request(path)
        body = self.read(resp)
        if resp.status != 200:
            raise self.status_error(resp.status, body, what)
        try:
            return json.loads(body)
        except ValueError:
            raise NetworkError(f"{self._where()} answered {path} with no JSON") from None

    def status_error(self, status: int, body: bytes, what: str) -> KcompatError:
        """The daemon's refusal of `what` (an image's name as given, or a path)."""
        message = _daemon_message(body)
        if status == 404:
            by_id = re.fullmatch(r"(sha256:)?[0-9a-f]{1,64}", what) is not None
            return NotFoundError(
                f"{self._where()} has no image {what!r}",
                hint="'docker images --no-trunc' lists its images and their ids"
                if by_id
                else f"'docker images' lists its images; 'docker pull {what}' fetches it",
            )
        if 400 <= status < 500:
            return UsageError(
                f"{self._where()} refused {what!r}: {message} (HTTP {status})",
                hint="check the name or id ('docker images')",
            )
        return NetworkError(
            f"{self._where()} failed on {what!r}: {message} (HTTP {status})",
            hint="see the daemon's log (journalctl -u docker)",
        )

    def ping(self) -> str:
        """`GET /_ping`: the daemon's API version. Anything else at DOCKER_HOST (another
        HTTP server) is told apart here, before an image lookup could read its 404 as
        "no such image"."""
        resp = self.request("/_ping")
        body = self.read(resp, 4096)
        version = resp.getheader("Api-Version")
        if resp.status != 200 or not version:
            raise NetworkError(
                f"{self.host.shown} is not a Docker daemon: GET /_ping answered "
                f"HTTP {resp.status} {_daemon_message(body)!r}"
                + ("" if version else " without an Api-Version header"),
                hint="point DOCKER_HOST at dockerd's socket (unix:///var/run/docker.sock)",
            )
        return version

    @staticmethod
    def image_path(name: str, tail: str) -> str:
        # moby's router takes the name as the rest of the path ({name:.*}); escape only
        # what is not a reference character.
        return f"/images/{urllib.parse.quote(name, safe='/:@')}/{tail}"

    def image_inspect(self, name: str, what: str | None = None) -> dict[str, Any]:
        """`docker image inspect NAME`: Id, RepoTags, RepoDigests, Os, Architecture,
        RootFS.Layers... NotFoundError when the daemon has no such image."""
        doc = self._json(self.image_path(name, "json"), what or name)
        if not isinstance(doc, dict) or not isinstance(doc.get("Id"), str):
            raise NetworkError(f"{self._where()} answered the inspect of {name!r} with no Id")
        return doc

    def image_export(self, name: str, what: str | None = None) -> http.client.HTTPResponse:
        """`docker save NAME` as a stream (a tar); the caller reads and closes it."""
        resp = self.request(self.image_path(name, "get"))
        if resp.status != 200:
            raise self.status_error(resp.status, self.read(resp), what or name)
        return resp
