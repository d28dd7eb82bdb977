"""Real container engines for the tests: a private dockerd and a private podman store.

`dockerd` (session fixture): Debian's docker.io daemon on a unix socket in a temp dir,
with `--bridge=none --iptables=false --ip6tables=false` (it touches no host network),
its own `--data-root`, `--exec-root`, `--pidfile` and an empty `--config-file` (the
host's /etc/docker/daemon.json is not read); it spawns its own containerd under the
exec root. The fixture waits until `GET /_ping` answers, and at the end of the session
stops the daemon (SIGTERM, then SIGKILL), kills a containerd it left behind, unmounts
whatever is still mounted below the temp dir and removes it. It skips, with the reason,
when dockerd is missing, when not root, or when the daemon does not come up.

`podman_store` / `podman_vfs_store` (session fixtures): a private containers-storage
root and runroot in a temp dir, used through `podman --root R --runroot RR
--storage-driver overlay|vfs` (never the host's store; podman runs only for the
command, no service). They skip, with the reason, when podman is missing or cannot
write an image into the store.

Containers started through them have no network but loopback (`--network none`, or
`host`): dockerd has no bridge, podman no network configuration of ours.

Both yield objects with `run_cli(*args)` (the engine's CLI pointed at the private
instance) and `load(archive)` (a docker-archive); `load_oci(oci_ref, name)` copies an
OCI layout image (tests/conftest.py `images`) in through skopeo, with no registry.

Use from a test module (fixtures bound to module names, which pytest collects, without
an unused import for ruff to flag):

    from tests import engines
    from tests.engines import Dockerd
    dockerd = engines.dockerd
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Debian's docker.io installs its CLI as /usr/bin/docker; a CLI elsewhere on PATH
# (e.g. /usr/local/bin) is another build and is used only when Debian's is absent.
DOCKER_CLI_PATHS = ("/usr/bin/docker",)
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def _docker_cli() -> str | None:
    for path in DOCKER_CLI_PATHS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("docker")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def ping(sock_path: Path, timeout: float = 2.0) -> bool:
    """True when a Docker Engine answers `GET /_ping` with OK on the unix socket."""
    conn = _UnixHTTPConnection(str(sock_path), timeout)
    try:
        conn.request("GET", "/_ping")
        resp = conn.getresponse()
        return resp.status == 200 and resp.read().strip() == b"OK"
    except OSError:
        return False
    finally:
        conn.close()


def _mounts_below(root: Path) -> list[str]:
    """Mount points at or below root, deepest first (from /proc/self/mountinfo)."""
    prefix = str(root.resolve())
    points: list[str] = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ").replace("\\011", "\t")
            point = point.replace("\\012", "\n").replace("\\134", "\\")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    return sorted(set(points), key=lambda p: (-p.count("/"), p))


def unmount_below(root: Path) -> None:
    """Detach every mount left below root (lazy: a busy one goes when its user does)."""
    for point in _mounts_below(root):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                found.extend(int(c) for c in text.split())
    return found


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def _run(
    argv: list[str], env: dict[str, str] | None, check: bool
) -> subprocess.CompletedProcess[str]:
    """Run argv capturing text; with check, a failure raises with the command's stderr."""
    proc = subprocess.run(argv, env=env, check=False, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout}"
        )
    return proc


def _skopeo_to_archive(source: str, archive: Path, name: str) -> None:
    if shutil.which("skopeo") is None:
        pytest.skip("needs skopeo (installed by ci/setup)")
    _run(["skopeo", "copy", "--quiet", source, f"docker-archive:{archive}:{name}"], None, True)


@dataclass
class Dockerd:
    """A running private dockerd; `host` is its DOCKER_HOST (unix:///.../docker.sock)."""

    workdir: Path
    socket: Path
    cli: str | None
    proc: subprocess.Popen[bytes]
    log_path: Path
    tcp_port: int | None = None
    _loaded: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def tcp_host(self) -> str | None:
        """tcp://127.0.0.1:PORT when the daemon also listens on loopback TCP."""
        return None if self.tcp_port is None else f"tcp://127.0.0.1:{self.tcp_port}"

    @property
    def data_root(self) -> Path:
        return self.workdir / "data"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["DOCKER_HOST"] = self.host
        env["DOCKER_CONFIG"] = str(self.workdir / "cli-config")
        return env

    def run_cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`docker ARGS` against this daemon (DOCKER_HOST set), output captured as text."""
        if self.cli is None:
            pytest.skip("needs the docker CLI (Debian's docker.io, installed by ci/setup)")
        return _run([self.cli, *args], self.env(), check)

    def load(self, archive: Path | str) -> list[str]:
        """`docker load -i ARCHIVE`; returns what the daemon says it loaded."""
        out = self.run_cli("load", "-i", str(archive)).stdout
        return [line.split(":", 1)[1].strip() for line in out.splitlines() if ":" in line]

    def load_oci(self, source: str, name: str) -> str:
        """Copy an image (e.g. `oci:LAYOUT:REF`) into the daemon as NAME (repo:tag), once
        per session; returns NAME."""
        if self._loaded.get(name) == source:
            return name
        with tempfile.TemporaryDirectory(dir=self.workdir) as tmp:
            archive = Path(tmp) / "image.tar"
            _skopeo_to_archive(source, archive, name)
            self.load(archive)
        self._loaded[name] = source
        return name

    def image_id(self, name: str) -> str:
        """The daemon's image id (sha256:...) of NAME."""
        out = self.run_cli("image", "inspect", "--format", "{{.Id}}", name).stdout
        return out.strip()

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        pid = self.proc.pid
        helpers = _children(pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for child in helpers:  # containerd, if dockerd did not take it down with it
            if not _wait_gone(child, 5.0):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
                _wait_gone(child, 5.0)
        unmount_below(self.workdir)


def start_dockerd(workdir: Path, tcp: bool = False, tls: Path | None = None) -> Dockerd:
    """Start a private dockerd in workdir; pytest.skip with the reason if it cannot.

    `tcp`: also on loopback TCP (port in `.tcp_port`); with `tls` (a directory holding
    ca.pem, server-cert.pem, server-key.pem) that port wants TLS client certificates
    (`--tlsverify`), as `dockerd` set up for remote use."""
    binary = shutil.which("dockerd") or (
        "/usr/sbin/dockerd" if os.access("/usr/sbin/dockerd", os.X_OK) else None
    )
    if binary is None:
        pytest.skip("needs dockerd (Debian's docker.io, installed by ci/setup)")
    if os.geteuid() != 0:
        pytest.skip("dockerd needs root (rootless dockerd is not set up by the tests)")
    for sub in ("data", "exec", "cli-config"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    sock = workdir / "docker.sock"
    if len(str(sock)) > 100:
        pytest.skip(f"temp dir path too long for a unix socket: {sock}")
    config = workdir / "daemon.json"
    config.write_text("{}\n")
    hosts = ["--host", f"unix://{sock}"]
    port = None
    if tcp:
        port = _free_port()
        hosts += ["--host", f"tcp://127.0.0.1:{port}"]
    if tls is not None:
        hosts += [
            "--tlsverify",
            f"--tlscacert={tls / 'ca.pem'}",
            f"--tlscert={tls / 'server-cert.pem'}",
            f"--tlskey={tls / 'server-key.pem'}",
        ]
    log_path = workdir / "dockerd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [binary, *hosts, "--config-file", str(config),
             "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
             "--data-root", str(workdir / "data"), "--exec-root", str(workdir / "exec"),
             "--pidfile", str(workdir / "docker.pid")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    d = Dockerd(workdir, sock, _docker_cli(), proc, log_path, port)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if sock.exists() and ping(sock):
            return d
        time.sleep(0.1)
    tail = d.log_tail()
    d.stop()
    pytest.skip(f"dockerd did not start (exit {proc.poll()}): {tail}")


def _remove_tree(path: Path) -> None:
    unmount_below(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    """A real dockerd on a private unix socket (and loopback TCP), stopped at session end."""
    workdir = Path(tempfile.mkdtemp(prefix="kc-dockerd-"))
    try:
        d = start_dockerd(workdir, tcp=True)
        try:
            yield d
        finally:
            d.stop()
    finally:
        _remove_tree(workdir)


@dataclass(frozen=True)
class PodmanStore:
    """A private containers-storage store: `root` (graphroot), `runroot`, `driver`."""

    workdir: Path
    root: Path
    runroot: Path
    driver: str

    def ref(self, image: str, explicit: bool = True) -> str:
        """`containers-storage:[DRIVER@ROOT+RUNROOT]IMAGE` (or without the bracket)."""
        if not explicit:
            return f"containers-storage:{image}"
        return f"containers-storage:[{self.driver}@{self.root}+{self.runroot}]{image}"

    def global_args(self) -> list[str]:
        return [
            "--root", str(self.root), "--runroot", str(self.runroot),
            "--storage-driver", self.driver, "--tmpdir", str(self.workdir / "libpod-tmp"),
            "--cgroup-manager", "cgroupfs", "--events-backend", "file",
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # No host containers.conf / registries.conf surprises: an empty config of our own.
        env["CONTAINERS_CONF"] = str(self.workdir / "containers.conf")
        env["CONTAINERS_REGISTRIES_CONF"] = str(self.workdir / "registries.conf")
        env["CONTAINERS_STORAGE_CONF"] = str(self.workdir / "storage.conf")
        env["REGISTRY_AUTH_FILE"] = str(self.workdir / "auth.json")
        return env

    def run_cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`podman --root R --runroot RR --storage-driver D ... ARGS`, output as text."""
        return _run(["podman", *self.global_args(), *args], self.env(), check)

    def load(self, archive: Path | str) -> list[str]:
        """`podman load -i ARCHIVE` (a docker-archive or oci-archive); the names loaded."""
        out = self.run_cli("load", "-i", str(archive)).stdout
        return [
            line.split(":", 1)[1].strip()
            for line in out.splitlines()
            if line.startswith("Loaded image")
        ]

    def pull(self, source: str, name: str) -> str:
        """Copy SOURCE (oci:DIR:REF, docker-archive:FILE, ...) into the store as NAME;
        returns the image id. `podman pull` for archives; an `oci:` layout through
        `skopeo copy ... containers-storage:[...]NAME` (podman 4.3 derives a name from
        the layout's path and refuses one like `.fixtures`)."""
        if source.startswith("oci:"):
            if shutil.which("skopeo") is None:
                pytest.skip("needs skopeo (installed by ci/setup)")
            _run(["skopeo", "copy", "--quiet", source, self.ref(name)], self.env(), True)
        else:
            image_id = self.run_cli("pull", "-q", source).stdout.strip().splitlines()[-1]
            named = self.run_cli("image", "inspect", "--format", "{{.Id}}", name, check=False)
            if named.stdout.strip() != image_id:
                self.run_cli("tag", image_id, name)
        return self.image_id(name)

    def load_oci(self, source: str, name: str) -> str:
        """Copy SOURCE (e.g. `oci:LAYOUT:REF`) into the store as NAME; returns the id.

        Through a docker-archive (as `podman load` of `docker save` output: the
        manifest stored is then a Docker v2s2 one, the common case)."""
        with tempfile.TemporaryDirectory(dir=self.workdir) as tmp:
            archive = Path(tmp) / "image.tar"
            _skopeo_to_archive(source, archive, name)
            return self.pull(f"docker-archive:{archive}", name)

    def image_id(self, name: str) -> str:
        return self.run_cli("image", "inspect", "--format", "{{.Id}}", name).stdout.strip()


def run_conf(store: PodmanStore) -> Path:
    """A containers.conf for running containers from `store` on this host (point
    CONTAINERS_CONF at it): cgroupfs and file events (no systemd), ulimits within this
    process's hard limits (podman as root asks for more, which runc is refused here
    without CAP_SYS_RESOURCE: 'error setting rlimit type 6: operation not permitted'; an
    nproc of 4096 is what was observed to work), and runc where the cgroup tree is hybrid
    (crun: 'cgroups in hybrid mode not supported')."""
    import resource

    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = min(4096, resource.getrlimit(resource.RLIMIT_NPROC)[1])
    lines = ["[containers]",
             f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]',
             "[engine]", 'cgroup_manager = "cgroupfs"', 'events_logger = "file"',
             f'tmp_dir = "{store.workdir / "libpod-tmp"}"']  # fmt: skip
    if Path("/sys/fs/cgroup/unified").is_dir() and shutil.which("runc"):
        lines.append('runtime = "runc"')
    conf = store.workdir / "kcompat-containers.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def make_podman_store(workdir: Path, driver: str) -> PodmanStore:
    """A fresh store in workdir; pytest.skip with the reason if podman cannot use it."""
    if shutil.which("podman") is None:
        pytest.skip("needs podman (installed by ci/setup)")
    root, runroot = workdir / "root", workdir / "runroot"
    for d in (root, runroot, workdir / "libpod-tmp"):
        d.mkdir(parents=True, exist_ok=True)
    (workdir / "containers.conf").write_text("")
    (workdir / "registries.conf").write_text("")
    (workdir / "auth.json").write_text('{"auths": {}}\n')
    (workdir / "storage.conf").write_text(
        f'[storage]\ndriver = "{driver}"\ngraphroot = "{root}"\nrunroot = "{runroot}"\n'
    )
    store = PodmanStore(workdir, root, runroot, driver)
    probe = store.run_cli("images", check=False)
    if probe.returncode != 0:
        pytest.skip(f"podman cannot use a {driver} store here: {probe.stderr.strip()}")
    return store


def _podman_store_fixture(driver: str) -> Iterator[PodmanStore]:
    workdir = Path(tempfile.mkdtemp(prefix=f"kc-podman-{driver}-"))
    try:
        yield make_podman_store(workdir, driver)
    finally:
        if shutil.which("podman") is not None and (workdir / "root").exists():
            # Unmount what podman may have mounted (containers, overlay), then delete.
            subprocess.run(
                ["podman", *PodmanStore(workdir, workdir / "root", workdir / "runroot",
                                        driver).global_args(), "unmount", "--all"],
                check=False, capture_output=True,
            )  # fmt: skip
        _remove_tree(workdir)


@pytest.fixture(scope="session")
def podman_store() -> Iterator[PodmanStore]:
    """A private podman store with the overlay driver (rootful, native overlay)."""
    yield from _podman_store_fixture("overlay")


@pytest.fixture(scope="session")
def podman_vfs_store() -> Iterator[PodmanStore]:
    """A private podman store with the vfs driver (each layer a full copy)."""
    yield from _podman_store_fixture("vfs")


__all__ = [
    "Dockerd",
    "PodmanStore",
    "dockerd",
    "make_podman_store",
    "ping",
    "podman_store",
    "podman_vfs_store",
    "start_dockerd",
    "unmount_below",
]
