"""A client for the distribution (OCI) registry API v2, on requests.

Handles: the anonymous or credentialed Bearer token flow from `WWW-Authenticate`
(as Docker Hub and ghcr.io use it), Basic auth, retries with exponential backoff on
429/5xx and connection errors (honouring Retry-After), and blob downloads that are
streamed, digest-checked while streaming, resumed with HTTP Range after an interruption,
and renamed into the blob store only once verified (kcompat.download: `download` for
`pull`, `stream` for a scan that reads the blob as it arrives).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time
from collections.abc import Callable, Iterable
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests

from kcompat import __version__
from kcompat.auth import Challenge, Credentials, parse_www_authenticate, stored_credentials
from kcompat.download import BlobDownload, drain, reason_of
from kcompat.errors import (
    AuthError,
    BadImageError,
    IntegrityError,
    NetworkError,
    NotFoundError,
    UsageError,
)
from kcompat.image import ACCEPT, Descriptor, check_digest, sha256_digest
from kcompat.progress import NoProgress, Progress
from kcompat.reference import RegistryRef
from kcompat.store import BlobStore

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # distribution's own limit for a manifest
# A longer Retry-After is not waited out: the error says when to come back instead.
MAX_RETRY_AFTER = 60.0
CHUNK = 1 << 20
USER_AGENT = f"kcompat/{__version__}"


def insecure_hosts_from_env() -> frozenset[str]:
    raw = os.environ.get("KCOMPAT_INSECURE_REGISTRIES", "")
    return frozenset(h.strip() for h in raw.split(",") if h.strip())


def uses_plain_http(host: str, insecure: Iterable[str] = ()) -> bool:
    """localhost and loopback registries speak plain HTTP; others only when named insecure."""
    if host in insecure:
        return True
    name = host
    if name.startswith("["):
        name = name[1 : name.index("]")]
    elif name.count(":") == 1:
        name = name.rsplit(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _env_number(name: str, default: float, *, positive: bool = False) -> float:
    """A number (>= 0, or > 0) from the environment; a typo is a usage error, not a crash."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw) if isinstance(default, float) else int(raw)
    except ValueError:
        value = -1
    if value < 0 or (positive and value == 0):
        raise UsageError(
            f"{name}={raw!r} is not a {'positive' if positive else 'non-negative'} number",
            hint=f"unset it or set e.g. {name}={default}",
        )
    return value


def _retry_after(response: requests.Response) -> float | None:
    """Seconds the registry asks us to wait (seconds or an HTTP date), uncapped."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(when - time.time(), 0.0)


def _error_codes(response: requests.Response) -> str:
    """The registry's `errors[].code` list, e.g. MANIFEST_UNKNOWN, for messages."""
    try:
        doc = response.json()
        codes = [str(e.get("code")) for e in doc.get("errors", []) if isinstance(e, dict)]
    except (ValueError, AttributeError):
        return ""
    return f" ({', '.join(codes)})" if codes else ""


class RegistryClient:
    def __init__(
        self,
        ref: RegistryRef,
        *,
        creds: Credentials | None = None,
        insecure_hosts: Iterable[str] = (),
        retries: int | None = None,
        backoff: float = 0.5,
        timeout: float | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.ref = ref
        host = ref.api_host
        insecure = frozenset(insecure_hosts) | insecure_hosts_from_env()
        self.plain_http = uses_plain_http(host, insecure) or uses_plain_http(ref.registry, insecure)
        scheme = "http" if self.plain_http else "https"
        self.base = f"{scheme}://{host}/v2/{ref.repository}"
        self.creds = creds
        self._creds_loaded = creds is not None
        self.retries = retries if retries is not None else int(_env_number("KCOMPAT_RETRIES", 4))
        self.backoff = backoff
        # A read timeout, between bytes rather than for a whole body: a slow blob is
        # fine, a stalled one is retried (KCOMPAT_TIMEOUT seconds, for slow links).
        self.timeout = (
            timeout if timeout is not None else _env_number("KCOMPAT_TIMEOUT", 60.0, positive=True)
        )
        self.session = session or self.fresh_session()
        self.session.headers["User-Agent"] = USER_AGENT
        self.sleep = sleep
        self._auth_header: str | None = None

    @staticmethod
    def fresh_session() -> requests.Session:
        session = requests.Session()
        session.headers["User-Agent"] = USER_AGENT
        return session

    # -- transport -------------------------------------------------------------------
    def _credentials(self) -> Credentials | None:
        if not self._creds_loaded:
            self.creds = stored_credentials(self.ref.registry)
            self._creds_loaded = True
        return self.creds

    def _once(
        self, method: str, url: str, headers: dict[str, str], stream: bool, auth: Any = None
    ) -> requests.Response:
        """One request, retried on connection errors, 429 and 5xx."""
        for attempt in range(self.retries + 1):
            try:
                response = self.session.request(
                    method,
                    url,
                    headers=headers,
                    stream=stream,
                    auth=auth,
                    timeout=(10.0, self.timeout),
                )
            except requests.exceptions.SSLError as e:
                raise NetworkError(
                    f"TLS with {url.split('/')[2]} failed: {e.__class__.__name__}",
                    hint="if it serves plain HTTP, pass --insecure-registry HOST",
                ) from None
            except (requests.ConnectionError, requests.Timeout) as e:
                if attempt < self.retries:
                    self.sleep(self.backoff * (2**attempt))
                    continue
                raise NetworkError(
                    f"cannot reach registry {url.split('/')[2]}: {reason_of(e)}",
                    hint="check the address, the port and that the registry is running",
                ) from None
            if response.status_code in RETRY_STATUSES and attempt < self.retries:
                delay = _retry_after(response)
                if delay is not None and delay > MAX_RETRY_AFTER:
                    return response  # not worth blocking on: refuse says when to retry
                response.close()
                self.sleep(delay if delay is not None else self.backoff * (2**attempt))
                continue
            return response
        raise AssertionError("unreachable")

    def request(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, stream: bool = False
    ) -> requests.Response:
        """A request to the repository's API, answering one auth challenge if asked."""
        url = f"{self.base}/{path}"
        hdrs = dict(headers or {})
        if self._auth_header:
            hdrs["Authorization"] = self._auth_header
        response = self._once(method, url, hdrs, stream)
        if response.status_code == 401:
            challenge = parse_www_authenticate(response.headers.get("WWW-Authenticate", ""))
            response.close()
            if challenge is None:
                raise AuthError(
                    f"{self.ref}: the registry refused access without saying how to log in"
                )
            self._answer(challenge)
            hdrs["Authorization"] = self._auth_header or ""
            response = self._once(method, url, hdrs, stream)
            if response.status_code == 401:
                response.close()
                who = "with the given credentials" if self.creds else "anonymously"
                raise AuthError(
                    f"{self.ref}: access denied {who}",
                    hint="the repository may be private or not exist; pass --creds USER:PASSWORD",
                )
        if response.status_code == 403:
            codes = _error_codes(response)
            response.close()
            raise AuthError(
                f"{self.ref}: access forbidden{codes}",
                hint="check that these credentials may pull this repository",
            )
        return response

    def _answer(self, challenge: Challenge) -> None:
        creds = self._credentials()
        if challenge.scheme == "basic":
            if creds is None:
                raise AuthError(
                    f"{self.ref}: the registry needs a user name and password",
                    hint="pass --creds USER:PASSWORD or log in with docker/podman",
                )
            self._auth_header = requests.auth._basic_auth_str(creds.username, creds.password)
            return
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            raise AuthError(f"{self.ref}: unsupported auth challenge {challenge.scheme!r}")
        params = {
            "scope": challenge.params.get("scope") or f"repository:{self.ref.repository}:pull"
        }
        if "service" in challenge.params:
            params["service"] = challenge.params["service"]
        realm = challenge.params["realm"]
        auth = (creds.username, creds.password) if creds else None
        query = urlencode(params, safe=":/,")
        response = self._once("GET", f"{realm}?{query}", {}, False, auth=auth)
        if response.status_code in (401, 403):
            raise AuthError(
                f"{self.ref}: the token service {realm} refused the credentials",
                hint="check --creds or the stored login",
            )
        if response.status_code != 200:
            raise AuthError(
                f"{self.ref}: the token service {realm} answered {response.status_code}"
            )
        try:
            doc = response.json()
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise AuthError(f"{self.ref}: the token service {realm} sent no token")
        self._auth_header = f"Bearer {token}"

    def refuse(self, response: requests.Response, what: str) -> None:
        """Raise the error an unexpected answer to a request for `what` means."""
        code = response.status_code
        codes = _error_codes(response)
        wait = _retry_after(response)
        response.close()
        if code == 404:
            raise NotFoundError(
                f"{what} not found{codes}", hint="check the repository name and tag"
            )
        hint = None
        if code >= 500 or code == 429:
            hint = f"try again in {wait:.0f} s" if wait else "try again later"
        raise NetworkError(f"{what}: registry answered HTTP {code}{codes}", hint=hint)

    def _get_bounded(
        self, path: str, headers: dict[str, str], limit: int, what: str
    ) -> tuple[bytes, requests.Response]:
        """GET a small document whole, at most `limit` bytes, retrying a body that broke
        off mid-read as `_once` retries a failed request."""
        for attempt in range(self.retries + 1):
            response = self.request("GET", path, headers=headers, stream=True)
            if response.status_code != 200:
                self.refuse(response, what)
            try:
                return _read_limited(response, limit, what), response
            except NetworkError:
                if attempt >= self.retries:
                    raise
                self.sleep(self.backoff * (2**attempt))
        raise AssertionError("unreachable")

    # -- manifests and small blobs ---------------------------------------------------
    def get_manifest(self, reference: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest or index, digest checked."""
        what = (
            f"{self.ref.name}@{reference}" if ":" in reference else f"{self.ref.name}:{reference}"
        )
        data, response = self._get_bounded(
            f"manifests/{reference}", {"Accept": ACCEPT}, MAX_MANIFEST_BYTES, f"manifest {what}"
        )
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        digest = sha256_digest(data)
        if reference.startswith("sha256:"):
            check_digest(data, reference, f"manifest {what}")
        header = response.headers.get("Docker-Content-Digest")
        if header and header.startswith("sha256:") and header != digest:
            raise IntegrityError(
                f"manifest {what}: content has digest {digest}, the registry says {header}",
                hint="the registry or a proxy altered the manifest",
            )
        return data, media_type, digest

    def get_small_blob(self, desc: Descriptor, limit: int = 64 * 1024 * 1024) -> bytes:
        what = f"blob {desc.digest} of {self.ref.name}"
        data, _ = self._get_bounded(f"blobs/{desc.digest}", {}, limit, what)
        check_digest(data, desc.digest, what)
        return data

    # -- layers ----------------------------------------------------------------------
    def download(
        self,
        desc: Descriptor,
        store: BlobStore,
        progress: Progress | None = None,
        durable: bool = True,
    ) -> tuple[Path, bool]:
        """Download a blob into the store (resuming a partial file): its path, and
        whether this call downloaded (and digest-checked) it, False when it was in the
        store already (another process may have put it there meanwhile). `durable`:
        flushed to the disk before it is renamed into place; without, the caller syncs
        it (kcompat.sources: while the layer is scanned)."""
        progress = progress or NoProgress()
        store.ensure_dirs(desc.digest)
        with store.lock(desc.digest):
            if store.has(desc.digest):
                return store.path(desc.digest), False
            key = desc.digest
            progress.start(key, desc.digest.split(":")[1][:12], desc.size)
            try:
                download = BlobDownload(self, desc, store, progress)
                try:
                    drain(download)
                    return download.commit(durable), True
                finally:
                    download.close()
            finally:
                progress.finish(key)

    def stream(self, desc: Descriptor, store: BlobStore) -> BlobDownload | None:
        """The blob's download, to be read as it arrives (kcompat.download), holding the
        blob's store lock until it is closed; None when the store has the blob or a
        partial file of it (`download` resumes that, whole, before it is read)."""
        store.ensure_dirs(desc.digest)
        held = contextlib.ExitStack()
        held.enter_context(store.lock(desc.digest))
        try:
            if store.has(desc.digest) or store.partial_path(desc.digest).exists():
                held.close()
                return None
            progress = NoProgress()  # the CLI's bars, through the workers' relay
            progress.start(desc.digest, desc.digest.split(":")[1][:12], desc.size)
            held.callback(progress.finish, desc.digest)
            return BlobDownload(self, desc, store, progress, on_close=held.close)
        except BaseException:
            held.close()
            raise




def _read_limited(response: requests.Response, limit: int, what: str) -> bytes:
    """The whole body, or BadImageError as soon as it is known to exceed `limit`: a
    hostile registry cannot make kcompat read (or hold) more than that."""
    parts: list[bytes] = []
    total = 0
    too_big = BadImageError(
        f"{what} is larger than {limit} bytes; refusing it",
        hint="no real manifest or config is that big: the registry or a proxy is broken",
    )
    try:
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > limit:
            raise too_big
        for chunk in response.iter_content(CHUNK):
            total += len(chunk)
            if total > limit:
                raise too_big
            parts.append(chunk)
    except (
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
    ) as e:
        raise NetworkError(
            f"{what}: connection failed while reading: {reason_of(e)}", hint="try again"
        ) from None
    finally:
        response.close()
    return b"".join(parts)
