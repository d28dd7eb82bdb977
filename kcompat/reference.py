"""Image references, in skopeo's transport syntax plus docker's short names.

``centos:6`` means ``docker://docker.io/library/centos:6``. The grammar of the docker
part follows the distribution project's reference grammar (``reference/regexp.go``):
name components are lower-case alphanumerics joined by ``.``, ``_``, ``__`` or dashes,
the first component is a registry host when it contains ``.`` or ``:`` or is
``localhost``, tags are ``[\\w][\\w.-]{0,127}``.

Local sources: ``oci:DIR[:REF]``, ``oci-archive:FILE[:REF]``,
``docker-archive:FILE[:NAME:TAG|@INDEX]`` and ``dir:PATH`` (a plain root filesystem).
As in skopeo, the path ends at the first ``:``.

Engines' stores (containers-transports(5)): ``docker-daemon:NAME[:TAG]``,
``docker-daemon:NAME@DIGEST`` or ``docker-daemon:ID`` (``sha256:HEX``, or a short id
that the daemon resolves as docker does: a name first, then an id prefix), and
``containers-storage:[[DRIVER@]ROOT[+RUNROOT][:OPTIONS]]{ID|NAME[@ID]}`` (podman's,
buildah's and skopeo's store; an ID may be truncated to 3 or more hex digits).

Order, as skopeo's (containers/image transports/alltransports ParseImageName): the
text before the first ``:`` is looked up as a transport name; only when it names none
is the whole text a docker reference (``centos:6``, on Docker Hub). So
``docker-daemon:app:dev`` is the daemon's ``app:dev``, never a Docker Hub repository
``docker-daemon`` tagged ``app:dev``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Union

from kcompat.errors import UsageError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_COMPONENT_RE = re.compile(rf"^{_COMPONENT}$")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$"
)
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$|^sha512:[a-f0-9]{128}$")
_MAX_NAME = 255


class Transport(str, Enum):
    DOCKER = "docker"
    OCI = "oci"
    OCI_ARCHIVE = "oci-archive"
    DOCKER_ARCHIVE = "docker-archive"
    DIR = "dir"
    DOCKER_DAEMON = "docker-daemon"
    CONTAINERS_STORAGE = "containers-storage"


@dataclass(frozen=True)
class RegistryRef:
    """An image in a distribution registry."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    transport = Transport.DOCKER

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        s = self.name
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


@dataclass(frozen=True)
class LocalRef:
    """An image on local disk: an OCI layout, an archive, or a root filesystem."""

    transport: Transport
    path: str
    ref: str | None = None  # oci ref name, or docker-archive NAME:TAG
    index: int | None = None  # docker-archive @N

    def __str__(self) -> str:
        s = f"{self.transport.value}:{self.path}"
        if self.ref is not None:
            s += f":{self.ref}"
        if self.index is not None:
            s += f"@{self.index}"
        return s


@dataclass(frozen=True)
class DaemonRef:
    """An image in a Docker Engine's store: by name (a tag or a digest), or by id.

    `image_id` is ``sha256:HEX`` (full, or a prefix) or bare hex; bare hex is sent to the
    daemon as given, which looks it up as docker does (moby daemon/images GetImage: a
    name with ``:latest`` first, then an image id prefix)."""

    name: RegistryRef | None
    image_id: str | None = None

    transport = Transport.DOCKER_DAEMON

    @property
    def query(self) -> str:
        """What the Engine API is asked for (`/images/{query}/json`)."""
        if self.image_id is not None:
            return self.image_id
        assert self.name is not None
        return str(self.name)

    def __str__(self) -> str:
        return f"{self.transport.value}:{self.query}"


@dataclass(frozen=True)
class StorageRef:
    """An image in a containers-storage store (podman, buildah, CRI-O, skopeo).

    The store specifier's parts are None when not given (the defaults of
    containers-storage.conf(5) apply). `image_id` is a full id or a prefix of at least
    3 hex digits; `maybe_name` marks bare hex that may instead be a name: as in
    containers/image (storage_transport.go ParseStoreReference), an image whose id
    starts with it wins, else it is the name."""

    driver: str | None
    root: str | None
    runroot: str | None
    options: tuple[str, ...]
    name: RegistryRef | None
    image_id: str | None = None
    maybe_name: bool = False

    transport = Transport.CONTAINERS_STORAGE

    @property
    def has_spec(self) -> bool:
        return any((self.driver, self.root, self.runroot, self.options))

    def spec(self) -> str:
        """The ``[DRIVER@ROOT+RUNROOT:OPTIONS]`` part as given ('' when none was)."""
        if not self.has_spec:
            return ""
        s = f"{self.driver}@" if self.driver else ""
        s += self.root or ""
        if self.runroot:
            s += f"+{self.runroot}"
        if self.options:
            s += ":" + ",".join(self.options)
        return f"[{s}]"

    def __str__(self) -> str:
        if self.maybe_name:
            body = self.image_id or ""
        else:  # as containers/image's StringWithinTransport: NAME, NAME@ID or @ID
            body = str(self.name) if self.name is not None else ""
            if self.image_id is not None:
                body += f"@{self.image_id}"
        return f"{self.transport.value}:{self.spec()}{body}"


ImageReference = Union[RegistryRef, LocalRef, DaemonRef, StorageRef]


def _bad(text: str, why: str) -> UsageError:
    if text.startswith(f"{Transport.DOCKER_DAEMON.value}:"):
        hint = "expected e.g. 'docker-daemon:app:dev' or 'docker-daemon:sha256:ID'"
    elif text.startswith(f"{Transport.CONTAINERS_STORAGE.value}:"):
        hint = ("expected e.g. 'containers-storage:localhost/app:dev' or "
                "'containers-storage:[overlay@/var/lib/containers/storage]ID'")  # fmt: skip
    else:
        hint = "expected e.g. 'debian:12', 'docker://host:5000/repo:tag' or 'oci:DIR:REF'"
    return UsageError(f"invalid image reference {text!r}: {why}", hint=hint)


def parse_docker_reference(text: str, *, original: str | None = None) -> RegistryRef:
    """Parse ``[domain/]path[:tag][@digest]`` with docker's normalisation."""
    shown = original if original is not None else text
    if not text:
        raise _bad(shown, "it is empty")
    if any(c.isspace() for c in text):
        raise _bad(shown, "it contains white space")
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST_RE.match(digest):
            raise _bad(shown, f"digest {digest!r} is not 'sha256:' and 64 lower-case hex digits")
    tag = None
    # A ':' after the last '/' starts the tag; one before it is a registry port.
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise _bad(shown, f"tag {tag!r} must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")
    if not rest:
        raise _bad(shown, "the repository name is empty")
    parts = rest.split("/")
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, parts[1:]
        if not _DOMAIN_RE.match(registry):
            raise _bad(shown, f"registry host {registry!r} is not a valid host[:port]")
        port = registry.rpartition(":")[2] if not registry.endswith("]") else ""
        if ":" in registry and port.isdigit() and not 1 <= int(port) <= 65535:
            raise _bad(shown, f"port {port} of {registry!r} is not in 1-65535")
    else:
        registry, path = DOCKER_HUB, parts
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and len(path) == 1:
        path = ["library", *path]
    for comp in path:
        if not comp:
            raise _bad(shown, "it has an empty path component ('//' or a trailing '/')")
        if not _COMPONENT_RE.match(comp):
            if comp.lower() != comp:
                raise _bad(shown, f"repository name {comp!r} must be lower-case")
            raise _bad(shown, f"repository name component {comp!r} has invalid characters")
    repository = "/".join(path)
    if len(registry) + 1 + len(repository) > _MAX_NAME:
        raise _bad(shown, f"the name is longer than {_MAX_NAME} characters")
    if tag is None and digest is None:
        tag = "latest"
    return RegistryRef(registry, repository, tag, digest)


def check_registry_host(host: str) -> str:
    """A registry HOST[:PORT] as --insecure-registry and KCOMPAT_INSECURE_REGISTRIES
    take it; UsageError naming what is wrong."""
    if not _DOMAIN_RE.match(host):
        raise UsageError(f"--insecure-registry {host!r} is not a valid HOST[:PORT]",
                         hint="e.g. --insecure-registry 10.0.0.5:5000")  # fmt: skip
    port = host.rpartition(":")[2]
    if ":" in host and not host.endswith("]") and port.isdigit() and not 1 <= int(port) <= 65535:
        raise UsageError(f"--insecure-registry {host!r}: port {port} is not in 1-65535")
    return host


def familiar_name(name: str) -> str:
    """`docker.io/library/busybox:1` as docker shows it: `busybox:1`."""
    if name.startswith(f"{DOCKER_HUB}/"):
        name = name[len(DOCKER_HUB) + 1 :]
        if name.startswith("library/") and name.count("/") == 1:
            name = name[len("library/") :]
    return name


def parse_reference(text: str) -> ImageReference:
    """Parse any reference kcompat accepts; raise UsageError naming what is wrong."""
    if text.startswith("docker://"):
        return parse_docker_reference(text[len("docker://") :], original=text)
    head, sep, rest = text.partition(":")
    if sep:
        try:
            transport = Transport(head)
        except ValueError:
            transport = None
        if transport is Transport.DOCKER:
            raise _bad(text, "the docker transport is written 'docker://'")
        if transport is Transport.DOCKER_DAEMON:
            return _parse_daemon(text, rest)
        if transport is Transport.CONTAINERS_STORAGE:
            return _parse_storage(text, rest)
        if transport is not None:
            return _parse_local(text, transport, rest)
    return parse_docker_reference(text)


_HEX_RE = re.compile(r"^[a-f0-9]{1,64}$")
_ID_PREFIX_RE = re.compile(r"^(?:sha256:)?[a-f0-9]{1,64}$")
MIN_STORAGE_ID_PREFIX = 3  # containers/image storage_transport.go minimumTruncatedIDLength


def _parse_daemon(text: str, rest: str) -> DaemonRef:
    """containers/image docker/daemon ParseReference, with docker's own conveniences: a
    name without a tag means ``:latest`` and a short (bare hex) id is accepted."""
    if not rest:
        raise _bad(text, "docker-daemon: needs NAME[:TAG], NAME@DIGEST or an image ID")
    if _ID_PREFIX_RE.match(rest):
        return DaemonRef(None, rest)
    if rest.startswith("sha256:"):
        raise _bad(text, "an image ID is 'sha256:' and hex digits (as 'docker images -q' shows)")
    named = parse_docker_reference(rest, original=text)
    if named.tag and named.digest:
        # As containers/image: the daemon's reference store has no tag+digest lookup.
        raise _bad(text, "docker-daemon: takes NAME:TAG or NAME@DIGEST, not both")
    return DaemonRef(named)


def _parse_storage(text: str, rest: str) -> StorageRef:
    """containers/image storage ParseReference and ParseStoreReference, except that a
    truncated id is checked against the store only when the store is opened."""
    driver = root = runroot = None
    options: tuple[str, ...] = ()
    if rest.startswith("["):
        close = rest.find("]")
        if close < 1:
            raise _bad(text, "the store specifier '[...' has no closing ']'")
        spec, rest = rest[1:close], rest[close + 1 :]
        head, has_driver, tail = spec.partition("@")
        if has_driver:
            if not head or not tail:
                raise _bad(text, "the store specifier is [DRIVER@ROOT+RUNROOT:OPTIONS]")
            driver, spec = head, tail
        elif not spec:
            raise _bad(text, "the store specifier '[]' is empty")
        spec, colon, opts = spec.partition(":")
        if colon:
            options = tuple(opts.split(","))
        spec, _, run = spec.partition("+")
        root, runroot = spec or None, run or None
        for what, path in (("root", root), ("run root", runroot)):
            if path is not None and not path.startswith("/"):
                raise _bad(text, f"the store's {what} {path!r} is not an absolute path")
    if not rest:
        raise _bad(text, "containers-storage: needs an image NAME[:TAG] or ID")
    image_id: str | None = None
    at = rest.rfind("@")
    if at != -1:
        possible = rest[at + 1 :]
        if not possible:
            raise _bad(text, "the ID or digest after '@' is empty")
        if ":" not in possible:  # not a digest: an image id, full or truncated
            if not _HEX_RE.match(possible) or len(possible) < MIN_STORAGE_ID_PREFIX:
                raise _bad(text, f"{possible!r} does not look like an image ID or digest")
            image_id, rest = possible, rest[:at]
    if image_id is None and _HEX_RE.match(rest) and len(rest) >= MIN_STORAGE_ID_PREFIX:
        # A truncated (or full) id, or a one-word name: the store decides.
        return StorageRef(driver, root, runroot, options, parse_docker_reference(rest), rest,
                          maybe_name=True)  # fmt: skip
    named = parse_docker_reference(rest, original=text) if rest else None
    return StorageRef(driver, root, runroot, options, named, image_id)


def _parse_local(text: str, transport: Transport, rest: str) -> LocalRef:
    path, sep, ref = rest.partition(":")
    if not path:
        raise _bad(text, f"{transport.value}: needs a path")
    if transport is Transport.DIR:
        if sep:
            raise _bad(text, "dir: takes a path only")
        return LocalRef(transport, path)
    if transport is Transport.DOCKER_ARCHIVE:
        if "@" in path and not sep:
            path, _, idx = path.rpartition("@")
            if not idx.isdigit():
                raise _bad(text, f"source index {idx!r} is not a number")
            return LocalRef(transport, path, None, int(idx))
        if sep:
            named = parse_docker_reference(ref, original=text)
            if named.digest:
                raise _bad(text, "docker-archive: takes NAME:TAG, not a digest")
            return LocalRef(transport, path, str(named))
        return LocalRef(transport, path)
    if sep and not ref:
        raise _bad(text, "the image reference after ':' is empty")
    return LocalRef(transport, path, ref or None)
