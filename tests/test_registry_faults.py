"""`kcompat pull` against the real registry behind a misbehaving proxy (tests/faulty_proxy.py).

Every fault must end as a success (when retrying should win) or as one line
`kcompat: error: ...` with README's exit code, and never leave the cache holding a blob
that does not hash to its name.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import requests

from tests.conftest import Fixtures
from tests.faulty_proxy import FaultyProxy, proxy
from tests.layertools import append_cut_layer
from tests.registry_server import RealRegistry

pytestmark = pytest.mark.integration

IMAGE = "busybox:amd64"  # layers of about 1 MB, 213 and 88 bytes; faults hit the big one
BIG = "glibc:amd64"  # 6.4 MB of layers: more than the small disk holds


@pytest.fixture
def faulty(registry: RealRegistry) -> Iterator[FaultyProxy]:
    with proxy(registry.host) as p:
        yield p


def kcompat(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kcompat", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def pull(
    p: FaultyProxy, *args: str, image: str = IMAGE, env: dict[str, str] | None = None,
    verb: str = "pull",
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """`kcompat pull` (downloads, then stores), or `check` (each layer scanned as it
    downloads, kcompat.download, stored once its digest matched): both must meet a fault
    the same way."""
    return kcompat(verb, *args, f"docker://{p.host}/{image}", env=env)


# the blob faults, for both ways a layer comes in
VERBS = pytest.mark.parametrize("verb", ["pull", "check"])


def assert_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """Exit `code`, one line on stderr in kcompat's error form naming `words`."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("kcompat: error: "), result.stderr
    assert "; " in lines[0], "the message says what to do"
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def assert_cache_sound(
    cache: Path, registry: RealRegistry, *, complete: Sequence[str] = (), partial_ok: bool = False
) -> list[Path]:
    """Walk the cache: every blob hashes to its name, partials are true prefixes (and only
    allowed after an interruption), no stray temporary files. Returns the partials."""
    partials: list[Path] = []
    blobs = cache / "blobs" / "sha256"
    for path in cache.rglob("*"):
        if path.is_dir():
            continue
        rel = path.relative_to(cache)
        if rel.parts[0] not in ("blobs", "locks"):
            continue  # check's scans, analyses and reports (kcompat.cache)
        if rel.parts[0] == "locks":
            assert path.suffix == ".lock" and path.stat().st_size == 0, rel
            continue
        assert path.parent == blobs, f"unexpected file {rel}"
        if path.name.endswith(".partial"):
            assert partial_ok, f"a half-written {rel} was left"
            real = registry.blob_path("sha256:" + path.name[: -len(".partial")]).read_bytes()
            data = path.read_bytes()
            assert real.startswith(data), f"{rel} is not a prefix of its blob"
            partials.append(path)
            continue
        assert len(path.name) == 64, f"unexpected file {rel}"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, f"{rel} is corrupt"
    for digest in complete:
        assert (blobs / digest.split(":")[1]).is_file(), f"{digest} missing"
    return partials


@functools.cache
def _manifest_layers(host: str, image: str) -> tuple[tuple[str, int], ...]:
    """(digest, size) of each layer, asked of the registry itself (not the proxy)."""
    name, _, tag = image.partition(":")
    accept = "application/vnd.oci.image.manifest.v1+json"
    doc = requests.get(f"http://{host}/v2/{name}/manifests/{tag}", headers={"Accept": accept},
                       timeout=10).json()  # fmt: skip
    return tuple((layer["digest"], int(layer["size"])) for layer in doc["layers"])


def layers(registry: RealRegistry, image: str = IMAGE) -> list[str]:
    """The image's layer digests, asked of the registry itself (not through the proxy)."""
    return [digest for digest, _ in _manifest_layers(registry.host, image)]


def big_layer(registry: RealRegistry) -> str:
    return layers(registry)[0]


def big_layer_size(registry: RealRegistry) -> int:
    """The big layer's size as the manifest declares it (fixtures are rebuilt, so the
    bytes, and the size, differ between machines)."""
    return _manifest_layers(registry.host, IMAGE)[0][1]


# -- retries ---------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["/manifests/", "/blobs/"])
def test_429_and_503_with_retry_after_are_waited_out(
    faulty: FaultyProxy, registry: RealRegistry, _private_cache: Path, where: str
) -> None:
    faulty.rules.fail = [(429, "1"), (503, "0")]  # KCOMPAT_RETRIES=2 (conftest): just enough
    faulty.rules.fail_on = where
    start = time.monotonic()
    result = pull(faulty)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - start >= 1.0, "Retry-After was not honoured"
    assert not faulty.rules.fail
    assert_cache_sound(_private_cache, registry, complete=layers(registry))


def test_503_beyond_the_retries_is_a_network_error(
    faulty: FaultyProxy, registry: RealRegistry, _private_cache: Path
) -> None:
    faulty.rules.fail = [(503, "0")] * 3
    result = pull(faulty)
    assert_error(result, 5, "manifest", "busybox:amd64", "HTTP 503", "try again")
    assert_cache_sound(_private_cache, registry)


def test_a_long_retry_after_is_reported_not_slept(
    faulty: FaultyProxy, registry: RealRegistry, _private_cache: Path
) -> None:
    faulty.rules.fail = [(429, "3600")]
    start = time.monotonic()
    result = pull(faulty)
    assert time.monotonic() - start < 15
    assert_error(result, 5, "HTTP 429", "try again in 3600 s")


# -- broken blobs ----------------------------------------------------------------------


@VERBS
def test_truncated_blob_is_an_integrity_error(
    faulty: FaultyProxy, registry: RealRegistry, _private_cache: Path, verb: str
) -> None:
    faulty.rules.truncate_to = 500_000  # a complete response, of too few bytes
    result = pull(faulty, verb=verb)
    assert_error(result, 6, big_layer(registry), "500000 bytes", str(big_layer_size(registry)))
    assert_cache_sound(_private_cache, registry)
    assert not (_private_cache / "blobs" / "sha256" / big_layer(registry)[7:]).exists()


@VERBS
def test_wrong_digest_blob_is_an_integrity_error(
    faulty: FaultyProxy, registry: RealRegistry, _private_cache: Path, verb: str
) -> None:
    faulty.rules.corrupt_at = 700_000
    result = pull(faulty, verb=verb)
    assert_error(result, 6, big_layer(registry), "digest", "deleted")
    assert_cache_sound(_private_cache, registry)


@VERBS
def test_reset_mid_blob_resumes_with_range(
    faulty: FaultyProxy, registry: RealRegistry, _private_cache: Path, verb: str
) -> None:
    faulty.rules.reset_after = 400_000
    result = pull(faulty, verb=verb)
    assert result.returncode == 0, result.stderr
    assert faulty.ranges and int(faulty.ranges[0][6:-1]) > 0, faulty.ranges
    assert_cache_sound(_private_cache, registry, complete=layers(registry))


@VERBS
def test_resets_beyond_the_retries_fail_resumably(
    faulty: FaultyProxy, registry: RealRegistry, _private_cache: Path, verb: str
) -> None:
    # Every response breaks off; each attempt keeps its whole 256 KiB reads (NET_CHUNK),
    # so the 2 attempts of KCOMPAT_RETRIES=1 bring 512 KiB of the ~1 MB.
    faulty.rules.reset_after = 300_000
    faulty.rules.reset_times = -1
    result = pull(faulty, verb=verb, env=dict(os.environ, KCOMPAT_RETRIES="1"))
    assert_error(result, 5, big_layer(registry), "kept failing", "resumes")
    assert assert_cache_sound(_private_cache, registry, partial_ok=True)
    faulty.rules.reset_after = None
    faulty.seen.clear()
    again = pull(faulty, verb=verb)
    assert again.returncode == 0, again.stderr
    assert faulty.ranges and int(faulty.ranges[0][6:-1]) > 0  # resumed, not restarted
    assert_cache_sound(_private_cache, registry, complete=layers(registry))


def test_reset_while_reading_the_config_is_retried(
    faulty: FaultyProxy, registry: RealRegistry, _private_cache: Path
) -> None:
    faulty.rules.min_blob = 0  # the first blob read is the config
    faulty.rules.reset_after = 100
    result = pull(faulty)
    assert result.returncode == 0, result.stderr
    assert_cache_sound(_private_cache, registry, complete=layers(registry))


def test_slow_body_succeeds_and_a_stalled_one_times_out(
    faulty: FaultyProxy, registry: RealRegistry, _private_cache: Path
) -> None:
    env = dict(os.environ, KCOMPAT_TIMEOUT="1")
    faulty.rules.delay = 0.1  # 17 chunks: 1.7 s in all, far more than the timeout
    result = pull(faulty, env=env)
    assert result.returncode == 0, result.stderr
    assert_cache_sound(_private_cache, registry, complete=layers(registry))

    cache = _private_cache.with_name("stalled")
    faulty.rules.delay = 2.5  # each attempt stalls after its first 64 KiB
    result = pull(faulty, env=dict(env, KCOMPAT_CACHE=str(cache), KCOMPAT_RETRIES="1"))
    assert_error(result, 5, big_layer(registry), "timed out", "resumes")
    assert_cache_sound(cache, registry, partial_ok=True)


# -- interrupted and concurrent pulls --------------------------------------------------


def _size(path: Path) -> int:
    """A partial download's size; 0 once it is gone (completed and renamed since the
    glob listed it: the test failed once on that FileNotFoundError)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def test_kill_9_mid_pull_then_resume(
    faulty: FaultyProxy, registry: RealRegistry, _private_cache: Path
) -> None:
    faulty.rules.delay = 0.05  # ~1.3 MB/s
    proc = subprocess.Popen(
        [sys.executable, "-m", "kcompat", "pull", f"docker://{faulty.host}/{IMAGE}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    blobs = _private_cache / "blobs" / "sha256"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if any(_size(p) > 200_000 for p in blobs.glob("*.partial")):
                break
            time.sleep(0.05)
        else:
            pytest.fail("no partial download appeared")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert assert_cache_sound(_private_cache, registry, partial_ok=True)
    faulty.rules.delay = 0
    faulty.seen.clear()
    result = pull(faulty)
    assert result.returncode == 0, result.stderr
    assert faulty.ranges and int(faulty.ranges[0][6:-1]) > 200_000, faulty.ranges
    assert_cache_sound(_private_cache, registry, complete=layers(registry))


def test_eight_concurrent_pulls_share_one_copy(
    faulty: FaultyProxy, registry: RealRegistry, _private_cache: Path
) -> None:
    faulty.rules.delay = 0.03  # the big layer takes 0.5 s: the others start meanwhile
    ref = f"docker://{faulty.host}/{IMAGE}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "kcompat", "pull", ref],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, results
    want = layers(registry)
    assert_cache_sound(_private_cache, registry, complete=want)
    assert len(list((_private_cache / "blobs" / "sha256").iterdir())) == len(want)
    for digest in want:  # the lock made the other seven wait, not download again
        gets = [s for s in faulty.blob_gets() if s.path.endswith(digest)]
        assert len(gets) == 1, (digest, len(gets))


# -- redirects and credentials ---------------------------------------------------------


@pytest.mark.parametrize("target_host", ["127.0.0.2", "127.0.0.1"])
def test_redirect_to_another_host_carries_no_credentials(
    faulty: FaultyProxy, registry: RealRegistry, _private_cache: Path, target_host: str
) -> None:
    try:
        other = FaultyProxy(registry.host, target_host)  # 127.0.0.1: another port
    except OSError as e:
        pytest.skip(f"cannot listen on {target_host}: {e}")
    try:
        faulty.rules.basic_auth = ("alice", "wonderland")
        faulty.rules.redirect_to = f"http://{other.host}"
        result = pull(faulty, "--creds", "alice:wonderland")
        assert result.returncode == 0, result.stderr
        assert other.blob_gets(), "the blobs came through the redirect"
        assert all(s.headers.get("authorization") for s in faulty.blob_gets())
        leaked = [s.path for s in other.seen if "authorization" in s.headers]
        assert not leaked, f"credentials followed the redirect to {other.host}: {leaked}"
    finally:
        other.stop()
    assert_cache_sound(_private_cache, registry, complete=layers(registry))


# -- hostile sizes and a full disk -----------------------------------------------------


def test_huge_manifest_is_refused_with_a_bounded_read(
    faulty: FaultyProxy, registry: RealRegistry, _private_cache: Path
) -> None:
    faulty.rules.huge_manifest = 1 << 30  # 1 GiB, sent without a length
    result = pull(faulty)
    assert_error(result, 7, "manifest", "busybox:amd64", "larger than 4194304 bytes")
    path = next(s.path for s in faulty.seen if "/manifests/" in s.path)
    deadline = time.monotonic() + 5
    while path not in faulty.sent and time.monotonic() < deadline:
        time.sleep(0.05)
    assert faulty.sent[path] < 64 << 20, "kcompat read far past its limit"
    assert_cache_sound(_private_cache, registry)


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs: {mounted.stderr.strip() or 'not root'}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@VERBS
def test_full_disk_is_a_local_io_error(
    faulty: FaultyProxy, registry: RealRegistry, tmp_path: Path, verb: str
) -> None:
    with small_disk(tmp_path / "small", "2m") as cache:
        result = pull(faulty, verb=verb, image=BIG,
                      env=dict(os.environ, KCOMPAT_CACHE=str(cache)))  # fmt: skip
        assert_error(result, 9, "No space left on device", "free space", "KCOMPAT_CACHE")
        assert_cache_sound(cache, registry)


def test_a_faithfully_served_broken_layer_is_the_images_fault(
    faulty: FaultyProxy, registry: RealRegistry, images: Fixtures, tmp_path: Path
) -> None:
    """`check` inflates a layer as it downloads: a layer that stops inflating may be a
    damaged download or a broken image. The rest is read to tell them apart: here the
    digest matches (the registry serves what was pushed), so it is the image's fault
    (exit 7), and the blob, the registry's own content, is kept in the store."""
    import shutil

    layout = tmp_path / "layout"
    shutil.copytree(images.layout, layout)
    ref, cut = append_cut_layer(layout, "busybox-amd64", "cut", 600_000)
    registry.push(ref, "broken:cut")
    cache = tmp_path / "cache"
    result = pull(faulty, image="broken:cut", env=dict(os.environ, KCOMPAT_CACHE=str(cache)),
                  verb="check")  # fmt: skip
    assert_error(result, 7, "ends early")
    assert_cache_sound(cache, registry)
    kept = cache / "blobs" / "sha256" / hashlib.sha256(cut).hexdigest()
    assert kept.is_file(), "the registry's own copy of the broken layer stays"
