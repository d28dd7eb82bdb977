from __future__ import annotations

import pytest

from kcompat.errors import ExitCode, UsageError
from kcompat.reference import (
    DaemonRef,
    LocalRef,
    RegistryRef,
    StorageRef,
    Transport,
    parse_reference,
)

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


# -- docker-daemon: and containers-storage: (containers-transports(5)) -------------------

H = "0123456789abcdef" * 4  # 64 hex digits: a full image id


@pytest.mark.parametrize(
    ("text", "expected", "shown"),
    [
        ("docker-daemon:app:dev", DaemonRef(RegistryRef("docker.io", "library/app", "dev", None)),
         "docker-daemon:docker.io/library/app:dev"),
        ("docker-daemon:busybox", DaemonRef(RegistryRef("docker.io", "library/busybox", "latest",
                                                        None)),
         "docker-daemon:docker.io/library/busybox:latest"),
        ("docker-daemon:localhost:5000/a/b:1",
         DaemonRef(RegistryRef("localhost:5000", "a/b", "1", None)),
         "docker-daemon:localhost:5000/a/b:1"),
        (f"docker-daemon:x@{D}", DaemonRef(RegistryRef("docker.io", "library/x", None, D)),
         f"docker-daemon:docker.io/library/x@{D}"),
        (f"docker-daemon:sha256:{H}", DaemonRef(None, f"sha256:{H}"), f"docker-daemon:sha256:{H}"),
        ("docker-daemon:sha256:0123ab", DaemonRef(None, "sha256:0123ab"),
         "docker-daemon:sha256:0123ab"),
        ("docker-daemon:8bcd7f1a4008", DaemonRef(None, "8bcd7f1a4008"),
         "docker-daemon:8bcd7f1a4008"),
    ],
)  # fmt: skip
def test_daemon_references(text: str, expected: DaemonRef, shown: str) -> None:
    ref = parse_reference(text)
    assert ref == expected
    assert str(ref) == shown
    assert parse_reference(shown) == ref
    assert ref.transport is Transport.DOCKER_DAEMON


def test_daemon_short_id_is_sent_as_given() -> None:
    """Bare hex may be a name or an id prefix: the daemon decides, as for `docker`."""
    ref = parse_reference("docker-daemon:cafe")
    assert isinstance(ref, DaemonRef)
    assert ref.query == "cafe"
    named = parse_reference("docker-daemon:kc/app:1")
    assert isinstance(named, DaemonRef)
    assert named.query == "docker.io/kc/app:1"


def S(name: RegistryRef | None, image_id: str | None = None, *, driver: str | None = None,
      root: str | None = None, runroot: str | None = None, options: tuple[str, ...] = (),
      maybe_name: bool = False) -> StorageRef:  # fmt: skip
    return StorageRef(driver, root, runroot, options, name, image_id, maybe_name)


BUSYBOX = RegistryRef("docker.io", "library/busybox", "latest", None)


@pytest.mark.parametrize(
    ("text", "expected", "shown"),
    [
        ("containers-storage:busybox", S(BUSYBOX),
         "containers-storage:docker.io/library/busybox:latest"),
        ("containers-storage:localhost/app:dev", S(RegistryRef("localhost", "app", "dev", None)),
         "containers-storage:localhost/app:dev"),
        ("containers-storage:[overlay@/var/lib/c+/run/c]busybox",
         S(BUSYBOX, driver="overlay", root="/var/lib/c", runroot="/run/c"),
         "containers-storage:[overlay@/var/lib/c+/run/c]docker.io/library/busybox:latest"),
        ("containers-storage:[/srv/store]busybox", S(BUSYBOX, root="/srv/store"),
         "containers-storage:[/srv/store]docker.io/library/busybox:latest"),
        ("containers-storage:[vfs@/s+/r:vfs.ignore_chown_errors=true,x]busybox",
         S(BUSYBOX, driver="vfs", root="/s", runroot="/r",
           options=("vfs.ignore_chown_errors=true", "x")),
         "containers-storage:[vfs@/s+/r:vfs.ignore_chown_errors=true,x]docker.io/library/busybox:latest"),
        (f"containers-storage:@{H}", S(None, H), f"containers-storage:@{H}"),
        (f"containers-storage:busybox@{H}", S(BUSYBOX, H),
         f"containers-storage:docker.io/library/busybox:latest@{H}"),
        ("containers-storage:busybox@0123ab", S(BUSYBOX, "0123ab"),
         "containers-storage:docker.io/library/busybox:latest@0123ab"),
        (f"containers-storage:busybox@{D}",
         S(RegistryRef("docker.io", "library/busybox", None, D)),
         f"containers-storage:docker.io/library/busybox@{D}"),
        (f"containers-storage:busybox:1@{D}@{H}",
         S(RegistryRef("docker.io", "library/busybox", "1", D), H),
         f"containers-storage:docker.io/library/busybox:1@{D}@{H}"),
        # bare hex of 3+ digits: an id prefix if the store has one, else the name
        ("containers-storage:0123ab",
         S(RegistryRef("docker.io", "library/0123ab", "latest", None), "0123ab", maybe_name=True),
         "containers-storage:0123ab"),
        ("containers-storage:ab", S(RegistryRef("docker.io", "library/ab", "latest", None)),
         "containers-storage:docker.io/library/ab:latest"),
    ],
)  # fmt: skip
def test_storage_references(text: str, expected: StorageRef, shown: str) -> None:
    ref = parse_reference(text)
    assert ref == expected
    assert str(ref) == shown
    assert parse_reference(shown) == ref
    assert ref.transport is Transport.CONTAINERS_STORAGE


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("docker-daemon:", "needs NAME"),
        (f"docker-daemon:a:1@{D}", "not both"),
        ("docker-daemon:sha256:xyz", "hex digits"),
        ("docker-daemon:App:1", "lower-case"),
        ("containers-storage:", "needs an image"),
        ("containers-storage:[overlay@/x", "closing ']'"),
        ("containers-storage:[]busybox", "empty"),
        ("containers-storage:[@/x]busybox", "[DRIVER@ROOT"),
        ("containers-storage:[overlay@]busybox", "[DRIVER@ROOT"),
        ("containers-storage:[overlay@var/lib]busybox", "not an absolute path"),
        ("containers-storage:[/s+run]busybox", "run root 'run'"),
        ("containers-storage:[/s]", "needs an image"),
        ("containers-storage:busybox@", "empty"),
        ("containers-storage:busybox@xyz", "does not look like an image ID"),
        ("containers-storage:busybox@ab", "does not look like an image ID"),
    ],
)
def test_malformed_store_references(text: str, why: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_reference(text)
    assert why in str(err.value)
    assert repr(text) in str(err.value)
    assert "\n" not in str(err.value)


def test_transport_prefix_wins_over_docker_hub_names() -> None:
    """As skopeo: the text before the first ':' names a transport when it can; so
    `docker-daemon:app` is never the Docker Hub repository docker-daemon tagged app,
    while `daemon:app` (no such transport) is."""
    assert isinstance(parse_reference("docker-daemon:app"), DaemonRef)
    assert isinstance(parse_reference("containers-storage:app"), StorageRef)
    hub = parse_reference("daemon:app")
    assert isinstance(hub, RegistryRef) and hub.repository == "library/daemon"
