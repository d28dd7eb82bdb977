"""The registry client against Debian's real docker-registry, pushed to by skopeo."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kcompat.errors import AuthError, IntegrityError, NetworkError, NotFoundError
from kcompat.layers import VerifyingReader
from kcompat.platform import parse_platform
from kcompat.pull import inspect_report, open_image, pull, unpack
from kcompat.sources import Options
from kcompat.store import BlobStore
from tests.conftest import Fixtures
from tests.registry_server import RealRegistry, kcompat_env, scripted

pytestmark = pytest.mark.integration


def skopeo_inspect(ref: str, *args: str) -> dict[str, object]:
    out = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", *args, ref],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


@pytest.mark.parametrize(
    ("tag", "platform", "skopeo_args"),
    [
        ("amd64", None, []),
        ("docker-amd64", None, []),
        ("s390x", None, []),
        ("multi", "linux/arm64", ["--override-arch", "arm64"]),
        ("multi", "linux/arm/v7", ["--override-arch", "arm", "--override-variant", "v7"]),
        ("multi-docker", "linux/s390x", ["--override-arch", "s390x"]),
    ],
)
def test_inspect_agrees_with_skopeo(
    registry: RealRegistry, tag: str, platform: str | None, skopeo_args: list[str]
) -> None:
    ref = f"{registry.host}/busybox:{tag}"
    theirs = skopeo_inspect(f"docker://{ref}", *skopeo_args)
    with open_image(ref, Options(platform=parse_platform(platform) if platform else None)) as o:
        ours = inspect_report(o.image)
    # skopeo's Digest is that of what the tag names: the index for a multi-arch image.
    assert (ours["index"]["digest"] if ours["index"] else ours["digest"]) == theirs["Digest"]
    assert ours["architecture"] == theirs["Architecture"]
    assert ours["os"] == theirs["Os"]
    assert [layer["digest"] for layer in ours["layers"]] == theirs["Layers"]


def test_multi_arch_lists_platforms(registry: RealRegistry) -> None:
    with open_image(
        f"{registry.host}/busybox:multi-docker", Options(platform=parse_platform("arm64"))
    ) as o:
        assert [str(p) for p in o.image.index_platforms] == [
            "linux/amd64",
            "linux/arm64/v8",
            "linux/arm/v7",
            "linux/s390x",
        ]
        assert str(o.image.config.platform) == "linux/arm64"


def test_missing_platform_lists_available(registry: RealRegistry) -> None:
    with (
        pytest.raises(NotFoundError) as err,
        open_image(f"{registry.host}/busybox:multi", Options(platform=parse_platform("riscv64"))),
    ):
        pass
    assert "available: linux/amd64, linux/arm64/v8, linux/arm/v7, linux/s390x" in str(err.value)


def test_pull_and_unpack_arm64(registry: RealRegistry, _private_cache: Path) -> None:
    store = BlobStore()
    with open_image(
        f"{registry.host}/busybox:multi", Options(platform=parse_platform("arm64"))
    ) as o:
        pull(o, store)
        for d in o.image.layers:
            data = store.path(d.digest).read_bytes()
            assert "sha256:" + hashlib.sha256(data).hexdigest() == d.digest
        root, issues = unpack(o, store)
    assert issues == []
    head = (root / "bin" / "busybox").read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
    assert not (root / "bin" / "removed-later").exists()  # whited out by the third layer
    assert os.readlink(root / "bin" / "sh") == "busybox"


def test_zstd_layers_give_the_same_files_as_gzip(registry: RealRegistry) -> None:
    store = BlobStore()
    roots = []
    for name in ("busybox:amd64", "zstd/busybox:1"):
        with open_image(f"{registry.host}/{name}") as o:
            if name.startswith("zstd"):
                assert any(d.media_type.endswith("+zstd") for d in o.image.layers)
            pull(o, store)
            roots.append(unpack(o, store)[0])
    listings = [sorted(str(p.relative_to(r)) for p in r.rglob("*")) for r in roots]
    assert listings[0] == listings[1] and "bin/busybox" in listings[0]
    assert (roots[0] / "bin/busybox").read_bytes() == (roots[1] / "bin/busybox").read_bytes()


def test_unknown_tag_and_repo_are_not_found(registry: RealRegistry) -> None:
    for ref in (f"{registry.host}/busybox:nope", f"{registry.host}/nothing/here:1"):
        with pytest.raises(NotFoundError), open_image(ref):
            pass


def test_unreachable_registry_is_a_network_error() -> None:
    with pytest.raises(NetworkError, match="connection refused"), open_image("127.0.0.1:9/x:1"):
        pass


def test_tampered_blob_fails_and_leaves_nothing(
    registry: RealRegistry, images: Fixtures, tmp_path: Path
) -> None:
    # A repository of its own, so the tampering does not touch the other tests' blobs.
    registry.push(images.oci("busybox-s390x"), "tamper/busybox:1")
    with open_image(f"{registry.host}/tamper/busybox:1") as o:
        target = o.image.layers[0]
        blob = registry.blob_path(target.digest)
        original = blob.read_bytes()
        blob.write_bytes(original[:-10] + b"0123456789")
        try:
            store = BlobStore()
            with pytest.raises(IntegrityError, match=target.digest):
                pull(o, store)
            assert not store.has(target.digest)
            assert not store.partial_path(target.digest).exists()
        finally:
            blob.write_bytes(original)


def _read_through(reader: VerifyingReader) -> None:
    with reader:
        while reader.read(1 << 20):
            pass
        reader.finish()


def test_a_stored_blob_is_checked_again_unless_this_process_just_checked_it(
    registry: RealRegistry, images: Fixtures, tmp_path: Path
) -> None:
    """A layer downloaded by this process had its digest computed as it streamed in, so
    scanning it checks only its length; one found in the store (from an earlier run) is
    digest-checked as it is read."""
    registry.push(images.oci("busybox-s390x"), "stored/busybox:1")
    ref = f"{registry.host}/stored/busybox:1"
    store = BlobStore(tmp_path / "cache")
    with open_image(ref) as o:
        desc = o.image.layers[0]
        o.source.fetch_layer(desc, store)
        _read_through(o.source.open_layer(desc))  # just downloaded and checked
        stored = store.path(desc.digest)
        original = stored.read_bytes()
        stored.chmod(0o600)
        stored.write_bytes(original[:-1])
        with pytest.raises(IntegrityError, match="bytes, not the"):
            _read_through(o.source.open_layer(desc))
        stored.write_bytes(original[:-10] + b"0123456789")
    with open_image(ref) as o:  # a later run finds it in the store: read and digest-checked
        o.source.fetch_layer(desc, store)
        with pytest.raises(IntegrityError, match="content has digest"):
            _read_through(o.source.open_layer(desc))
        assert not store.has(desc.digest)  # removed: pulling again downloads it
    with open_image(ref) as o:
        o.source.fetch_layer(desc, store)
        assert stored.read_bytes() == original
        _read_through(o.source.open_layer(desc))


def test_basic_auth(auth_registry: RealRegistry) -> None:
    ref = f"{auth_registry.host}/private/busybox:1"
    with pytest.raises(AuthError, match="user name and password"), open_image(ref):
        pass
    with (
        pytest.raises(AuthError, match="access denied with the given credentials"),
        open_image(
            ref, Options(creds=__import__("kcompat.auth").auth.Credentials("alice", "wrong"))
        ),
    ):
        pass
    from kcompat.auth import Credentials

    with open_image(ref, Options(creds=Credentials("alice", "wonderland"))) as o:
        pull(o, BlobStore())
        assert o.image.config.platform.architecture == "amd64"


def test_basic_auth_from_docker_config(
    auth_registry: RealRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64

    conf = tmp_path / "docker"
    conf.mkdir()
    (conf / "config.json").write_text(
        json.dumps(
            {
                "auths": {
                    auth_registry.host: {"auth": base64.b64encode(b"alice:wonderland").decode()}
                }
            }
        )
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(conf))
    with open_image(f"{auth_registry.host}/private/busybox:1") as o:
        assert o.image.layers


# --- the scripted registry: failures on demand -----------------------------------------


def test_bearer_token_flow(images: Fixtures) -> None:
    with scripted(images.layout) as reg:
        reg.token = "t0ken"
        with open_image(f"{reg.host}/test/busybox:busybox-amd64") as o:
            pull(o, BlobStore())
        assert reg.token_requests[0] == {
            "service": "registry.docker.io",
            "scope": "repository:library/nginx:pull",
        }
        assert len(reg.token_requests) == 1  # the token is reused for later requests


def test_retries_429_and_503_honouring_retry_after(images: Fixtures) -> None:
    with scripted(images.layout) as reg:
        reg.fail_next = [(429, {"Retry-After": "1"}), (503, {})]
        start = time.monotonic()
        with open_image(f"{reg.host}/test/busybox:busybox-amd64") as o:
            assert o.image.layers
        assert time.monotonic() - start >= 1.0  # waited as told
        assert not reg.fail_next


def test_gives_up_after_retries(images: Fixtures, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KCOMPAT_RETRIES", "1")
    with scripted(images.layout) as reg:
        reg.fail_next = [(503, {}), (503, {}), (503, {})]
        with (
            pytest.raises(NetworkError, match="HTTP 503"),
            open_image(f"{reg.host}/test/busybox:busybox-amd64"),
        ):
            pass


def test_dropped_connection_resumes_with_range(images: Fixtures) -> None:
    with scripted(images.layout) as reg:
        with open_image(f"{reg.host}/test/busybox:busybox-amd64") as o:
            big = max(o.image.layers, key=lambda d: d.size)
            reg.drop_blob_after = big.size // 2
            store = BlobStore()
            pull(o, store, jobs=1)
            assert store.path(big.digest).read_bytes() == reg.blob(big.digest)
        assert reg.range_requests and reg.range_requests[0].startswith("bytes=")
        assert int(reg.range_requests[0][6:-1]) > 0


def _kcompat(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "kcompat", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_pull_killed_halfway_then_rerun(images: Fixtures, tmp_path: Path) -> None:
    cache = tmp_path / "killcache"
    env = kcompat_env(cache)
    with scripted(images.layout) as reg:
        reg.blob_delay = 0.05  # ~1.3 MB/s: the big layer takes a while
        ref = f"{reg.host}/test/busybox:busybox-amd64"
        proc = _kcompat("pull", ref, env=env)
        blobs = cache / "blobs" / "sha256"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            partials = (
                [p for p in blobs.glob("*.partial") if p.stat().st_size > 100_000]
                if blobs.exists()
                else []
            )
            if partials:
                break
            time.sleep(0.05)
        else:
            proc.kill()
            pytest.fail("no partial download appeared")
        proc.kill()
        proc.wait()
        # nothing half-written under a blob's own name
        for p in blobs.iterdir():
            if p.suffix != ".partial":
                assert "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest() == f"sha256:{p.name}"
        reg.blob_delay = 0
        rerun = _kcompat("pull", ref, env=env)
        _, err = rerun.communicate(timeout=60)
        assert rerun.returncode == 0, err
        assert reg.range_requests  # resumed, not restarted
        assert not list(blobs.glob("*.partial"))


def test_two_concurrent_pulls_both_succeed(images: Fixtures, tmp_path: Path) -> None:
    env = kcompat_env(tmp_path / "shared")
    with scripted(images.layout) as reg:
        reg.blob_delay = 0.005
        ref = f"{reg.host}/test/busybox:busybox-arm64"
        procs = [_kcompat("pull", "--unpack", ref, env=env) for _ in range(2)]
        results = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], results
        roots = {
            line
            for out, _ in results
            for line in out.decode().splitlines()
            if line.startswith("rootfs ")
        }
        assert len(roots) == 1
