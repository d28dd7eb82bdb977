"""Image references, in skopeo's transport syntax plus docker's short names.

``centos:6`` means ``docker://docker.io/library/centos:6``. The grammar of the docker
part follows the distribution project's reference grammar (``reference/regexp.go``):
name components are lower-case alphanumerics joined by ``.``, ``_``, ``__`` or dashes,
the first component is a registry host when it contains ``.`` or ``:`` or is
``localhost``, tags are ``[\\w][\\w.-]{0,127}``.

Local sources: ``oci:DIR[:REF]``, ``oci-archive:FILE[:REF]``,
``docker-archive:FILE[:NAME:TAG|@INDEX]`` and ``dir:PATH`` (a plain root filesystem).
As in skopeo, the path ends at the first ``:``.
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

    def with_digest(self, digest: str) -> RegistryRef:
        return RegistryRef(self.registry, self.repository, self.tag, digest)

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


ImageReference = Union[RegistryRef, LocalRef]


def _bad(text: str, why: str) -> UsageError:
    return UsageError(
        f"invalid image reference {text!r}: {why}",
        hint="expected e.g. 'debian:12', 'docker://host:5000/repo:tag' or 'oci:DIR:REF'",
    )


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
        if transport is not None:
            return _parse_local(text, transport, rest)
    return parse_docker_reference(text)


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
