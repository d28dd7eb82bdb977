from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.registry_server import RealRegistry

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "tests" / "fixtures" / "build_images.py"
BUILD_BINARIES = REPO / "tests" / "fixtures" / "build_binaries.py"


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (installed by ci/setup)")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own blob cache and no docker/podman login files."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("KCOMPAT_CACHE", str(cache))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("KCOMPAT_INSECURE_REGISTRIES", raising=False)
    monkeypatch.setenv("KCOMPAT_RETRIES", "2")
    return cache


@dataclass(frozen=True)
class Fixtures:
    root: Path

    @property
    def layout(self) -> Path:
        return self.root / "layout"

    def oci(self, ref: str) -> str:
        return f"oci:{self.layout}:{ref}"

    def relabelled(self, tmp_path: Path, *config: str) -> str:
        """A copy of busybox-amd64 with its config changed by `umoci config` options."""
        layout = tmp_path / "layout"
        shutil.copytree(self.layout, layout)
        subprocess.run(["umoci", "config", "--image", f"{layout}:busybox-amd64", *config],
                       check=True, capture_output=True)  # fmt: skip
        return f"oci:{layout}:busybox-amd64"


@pytest.fixture(scope="session")
def images() -> Fixtures:
    """Fixture images built from real Debian packages (cached across runs)."""
    _need("apt-get", "dpkg-deb", "umoci", "skopeo")
    out = subprocess.run([sys.executable, str(BUILD)], check=True, capture_output=True, text=True)
    return Fixtures(Path(out.stdout.strip().splitlines()[-1]))


@dataclass(frozen=True)
class Binaries:
    root: Path

    def bin(self, name: str) -> Path:
        return self.root / "bin" / name

    @property
    def bullseye(self) -> str:
        return f"oci:{self.root / 'layout'}:bullseye"


@pytest.fixture(scope="session")
def binaries() -> Binaries:
    """Real binaries from Debian, PyPI and npm packages, and a bullseye image (cached)."""
    _need("apt-get", "dpkg-deb", "umoci", "mmdebstrap", "npm", "tar", "musl-gcc")
    out = subprocess.run(
        [sys.executable, str(BUILD_BINARIES)], check=False, capture_output=True, text=True
    )
    if out.returncode != 0:
        pytest.fail(f"build_binaries.py failed: {out.stderr or out.stdout}")
    return Binaries(Path(out.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="session")
def registry(images: Fixtures, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealRegistry]:
    """Debian's docker-registry on 127.0.0.1 with the fixture images pushed by skopeo."""
    _need("docker-registry", "skopeo")
    reg = RealRegistry(tmp_path_factory.mktemp("registry"))
    try:
        # First, while the registry holds no gzip copy that skopeo would reuse instead.
        reg.push(images.oci("busybox-amd64"), "zstd/busybox:1", "--dest-compress-format", "zstd")
        for arch in ("amd64", "arm64", "armhf", "s390x"):
            reg.push(images.oci(f"busybox-{arch}"), f"busybox:{arch}")
        reg.push(images.oci("glibc-amd64"), "glibc:amd64")
        reg.push(images.oci("busybox-multi"), "busybox:multi", "--all")
        reg.push(images.oci("busybox-multi"), "busybox:multi-docker", "--all", "--format", "v2s2")
        reg.push(images.oci("busybox-amd64"), "busybox:docker-amd64", "--format", "v2s2")
        reg.push(images.oci("arm64-only"), "busybox:arm64-only", "--all")
        reg.push(images.oci("windows-only"), "windows:only", "--all")
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def auth_registry(
    images: Fixtures, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealRegistry]:
    """The same server behind htpasswd Basic auth (user alice, password wonderland)."""
    _need("docker-registry", "skopeo", "htpasswd")
    work = tmp_path_factory.mktemp("auth-registry")
    htpasswd = work / "htpasswd"
    line = subprocess.run(
        ["htpasswd", "-Bbn", "alice", "wonderland"], check=True, capture_output=True, text=True
    ).stdout.strip()
    htpasswd.write_text(line + "\n")
    reg = RealRegistry(work, htpasswd=htpasswd)
    try:
        reg.push(
            images.oci("busybox-amd64"), "private/busybox:1", "--dest-creds", "alice:wonderland"
        )
        yield reg
    finally:
        reg.stop()
