from __future__ import annotations

import pytest

from kcompat.errors import ExitCode, UsageError
from kcompat.reference import LocalRef, RegistryRef, Transport, parse_reference

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repo", "tag", "digest"),
    [
        ("centos:6", "docker.io", "library/centos", "6", None),
        ("docker://centos:6", "docker.io", "library/centos", "6", None),
        ("ubuntu", "docker.io", "library/ubuntu", "latest", None),
        ("user/repo", "docker.io", "user/repo", "latest", None),
        ("index.docker.io/library/debian:12", "docker.io", "library/debian", "12", None),
        ("ghcr.io/a/b/c:v1.2", "ghcr.io", "a/b/c", "v1.2", None),
        ("localhost/x", "localhost", "x", "latest", None),
        ("localhost:5000/a/b:tag", "localhost:5000", "a/b", "tag", None),
        ("127.0.0.1:5000/a:t", "127.0.0.1:5000", "a", "t", None),
        (f"name@{D}", "docker.io", "library/name", None, D),
        (f"name:tag@{D}", "docker.io", "library/name", "tag", D),
        ("a.b-c/e.f_g-h__i:T_1.x-y", "a.b-c", "e.f_g-h__i", "T_1.x-y", None),
        ("a_b/c", "docker.io", "a_b/c", "latest", None),
        ("[::1]:5000/img:1", "[::1]:5000", "img", "1", None),
    ],
)
def test_docker_references(
    text: str, registry: str, repo: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_reference(text)
    assert isinstance(ref, RegistryRef)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repo, tag, digest)


def test_docker_hub_uses_registry_1_for_the_api() -> None:
    ref = parse_reference("centos:6")
    assert isinstance(ref, RegistryRef)
    assert ref.api_host == "registry-1.docker.io"
    assert str(ref) == "docker.io/library/centos:6"
    assert ref.reference == "6"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("Ubuntu:1", "lower-case"),
        ("ubuntu:", "tag"),
        ("ubuntu:-bad", "tag"),
        ("ubuntu@sha256:abc", "digest"),
        ("a//b", "empty path component"),
        ("a/b/", "empty path component"),
        ("img name", "white space"),
        ("repo:" + "x" * 200, "tag"),
        ("a/-b", "invalid characters"),
        ("docker:foo", "docker://"),
        ("oci:", "needs a path"),
        ("dir:/x:y", "path only"),
        ("docker-archive:f.tar@x", "not a number"),
    ],
)
def test_malformed_references_say_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_reference(text)
    assert why in str(err.value)
    assert repr(text) in str(err.value)
    assert err.value.exit_code == ExitCode.USAGE
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("oci:/tmp/lay", LocalRef(Transport.OCI, "/tmp/lay")),
        ("oci:/tmp/lay:v1", LocalRef(Transport.OCI, "/tmp/lay", "v1")),
        ("oci-archive:img.tar:ref", LocalRef(Transport.OCI_ARCHIVE, "img.tar", "ref")),
        ("docker-archive:img.tar", LocalRef(Transport.DOCKER_ARCHIVE, "img.tar")),
        (
            "docker-archive:img.tar:busybox:1",
            LocalRef(Transport.DOCKER_ARCHIVE, "img.tar", "docker.io/library/busybox:1"),
        ),
        ("docker-archive:img.tar@2", LocalRef(Transport.DOCKER_ARCHIVE, "img.tar", None, 2)),
        ("dir:/srv/rootfs", LocalRef(Transport.DIR, "/srv/rootfs")),
    ],
)
def test_local_references(text: str, expected: LocalRef) -> None:
    assert parse_reference(text) == expected
