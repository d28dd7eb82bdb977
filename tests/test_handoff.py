"""`kcompat run --runtime docker|podman`: the engine's argv from kcompat's options (unit),
then real runs through Debian's dockerd (a private daemon, tests/engines.py) and podman
(a private store): exit status, stdio, options, the judged image is the one that ran."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcompat.errors import ExitCode, UnsupportedError, UsageError
from kcompat.handoff import (
    Engine,
    EngineImage,
    _loaded_id,
    _loopback,
    check_emulation,
    engine_argv,
    is_remote,
    refuse_unsupported,
    write_docker_archive,
)
from kcompat.platform import Platform
from kcompat.pull import open_image
from kcompat.runoptions import RunOptions, validate
from kcompat.store import BlobStore
from kcompat.target import BinfmtEntry, Target, probe_binfmt
from tests.conftest import Fixtures
from tests.engines import Dockerd, PodmanStore, dockerd, podman_store, run_conf  # noqa: F401
from tests.registry_server import RealRegistry

IMG = EngineImage("127.0.0.1:5000/busybox@sha256:" + "a" * 64, "linux/amd64", insecure=True)


def _argv(engine: Engine = Engine.docker, image: EngineImage = IMG, runtime_args: tuple[str, ...]
          = (), **kw: object) -> list[str]:  # fmt: skip
    opts = RunOptions(**kw)  # type: ignore[arg-type]
    return engine_argv(engine, opts, validate(opts), image, runtime_args)


# -- unit: the argv --------------------------------------------------------------------


def test_argv_defaults_are_kcompats_meaning() -> None:
    """kcompat discards the container, uses the host network and no_new_privs unless
    told otherwise; docker's defaults differ, so each is passed explicitly."""
    argv = _argv()
    assert argv[:2] == ["docker", "run"]
    assert "--rm" in argv and "--network=host" in argv
    assert "--security-opt=no-new-privileges" in argv
    assert "--platform=linux/amd64" in argv
    assert argv[-1] == IMG.ref
    assert "--tls-verify=false" not in argv  # docker treats 127.0.0.0/8 as insecure itself
    kept = _argv(keep=True, security_opts=("no-new-privileges=false",))
    assert "--rm" not in kept and not any("no-new-privileges" in a for a in kept)


def test_argv_options(tmp_path: Path) -> None:
    (tmp_path / "env").write_text("A=1\n")
    argv = _argv(
        command=("sh", "-c", "exit 3"), env=("B=2", "C"), env_files=(tmp_path / "env",),
        workdir="/tmp", user="1000:1000", volumes=(f"{tmp_path}/./:/data:ro",),
        entrypoint="", hostname="box", network="none", interactive=True, tty=True,
        read_only=True, memory="64m", cpus="0.5", pids_limit=-1, tmpfs=("/run:size=1m",),
        security_opts=("seccomp=unconfined",), cap_add=("NET_ADMIN",), cap_drop=("ALL",),
        privileged=True, init=True,
    )  # fmt: skip
    image_at = argv.index(IMG.ref)
    flags, command = argv[2:image_at], argv[image_at + 1 :]
    assert command == ["sh", "-c", "exit 3"]
    for flag in (f"--env-file={tmp_path / 'env'}", "--env=B=2", "--env=C", "--workdir=/tmp",
                 "--user=1000:1000", f"--volume={tmp_path}:/data:ro", "--entrypoint=",
                 "--hostname=box", "--network=none", "--interactive", "--tty", "--read-only",
                 f"--memory={64 << 20}", "--cpus=0.5", "--pids-limit=-1", "--tmpfs=/run:size=1m",
                 "--security-opt=seccomp=unconfined", "--cap-add=NET_ADMIN", "--cap-drop=ALL",
                 "--privileged", "--init"):  # fmt: skip
        assert flag in flags, flag
    # files before -e, as docker merges them: a later -e wins
    assert flags.index(f"--env-file={tmp_path / 'env'}") < flags.index("--env=B=2")


def test_runtime_args_come_before_the_image() -> None:
    argv = _argv(runtime_args=("-d", "--name", "web", "-p", "8080:80"), command=("httpd",))
    at = argv.index(IMG.ref)
    assert argv[at - 5 : at] == ["-d", "--name", "web", "-p", "8080:80"]
    assert argv[at + 1 :] == ["httpd"]


def test_podman_plain_http_registry_and_userns() -> None:
    """podman, unlike docker, does not treat a loopback registry as plain HTTP by itself
    (observed: 'http: server gave HTTP response to HTTPS client')."""
    argv = _argv(Engine.podman)
    assert argv[:2] == ["podman", "run"] and "--tls-verify=false" in argv
    secure = EngineImage("ghcr.io/a/b@sha256:" + "b" * 64, "linux/amd64")
    assert "--tls-verify=false" not in _argv(Engine.podman, secure)
    if os.geteuid() == 0:  # --userns auto is for root (kcompat.runoptions.validate)
        assert "--userns=auto" in _argv(Engine.podman, userns="auto")


def test_options_only_kcompats_runner_has() -> None:
    for kw, flag in (({"kernel": "3.10"}, "--kernel"), ({"rootfs_mode": "copy"}, "--rootfs-mode"),
                     ({"kernel": "3.10", "seccomp_eperm": True}, "--kernel")):  # fmt: skip
        with pytest.raises(UsageError, match=flag):
            refuse_unsupported(RunOptions(**kw), Engine.docker)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="userns-remap"):
        refuse_unsupported(RunOptions(userns="auto"), Engine.docker)
    refuse_unsupported(RunOptions(userns="auto"), Engine.podman)


def _target(binfmt: tuple[BinfmtEntry, ...] = (), qemu: dict[str, str] | None = None) -> Target:
    return Target("host", "6.18.0", Platform("linux", "amd64"), compat_arches=("386",),
                  binfmt=binfmt, private_binfmt=False, qemu=qemu or {})  # fmt: skip


def test_foreign_arch_needs_a_host_handler() -> None:
    """An engine has only the host's binfmt_misc: none is one error (exit 8, as kcompat's
    own runner with no way to emulate) that offers `kcompat binfmt install`."""
    with pytest.raises(UnsupportedError) as e:
        check_emulation("arm64", _target(qemu={"arm64": "/usr/bin/qemu-aarch64-static"}),
                        engine="docker")  # fmt: skip
    assert e.value.exit_code == ExitCode.UNSUPPORTED
    assert "kcompat binfmt install arm64" in str(e.value) and "docker" in str(e.value)
    with pytest.raises(UnsupportedError, match="apt-get install -y qemu-user-static"):
        check_emulation("arm64", _target())
    no_f = BinfmtEntry("qemu-aarch64", True, "/usr/bin/qemu-aarch64-static", "", None, None,
                       True, True)  # fmt: skip
    with pytest.raises(UnsupportedError, match="no flag F"):
        check_emulation("arm64", _target((no_f,)))
    usable = BinfmtEntry("qemu-aarch64", True, "/usr/bin/qemu-aarch64-static", "F", None, None,
                         True, True)  # fmt: skip
    check_emulation("arm64", _target((usable,)))
    check_emulation("386", _target())  # compat mode: native
    check_emulation("arm64", _target(), remote=True)  # another machine's: unknown here


def test_which_engine_hosts_are_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    for host in ("127.0.0.1:5000", "localhost:5000", "[::1]:5000", "localhost", "127.9.9.9"):
        assert _loopback(host), host
    for host in ("registry.example:5000", "10.0.0.5", "[2001:db8::1]:5000"):
        assert not _loopback(host), host
    for value, remote in (("", False), ("unix:///run/docker.sock", False),
                          ("tcp://127.0.0.1:2375", False), ("tcp://build-host:2376", True),
                          ("ssh://me@build-host", True)):  # fmt: skip
        monkeypatch.setenv("DOCKER_HOST", value)
        assert is_remote(Engine.docker) is remote, value
    monkeypatch.setenv("CONTAINER_HOST", "ssh://root@vm/run/podman/podman.sock")
    assert is_remote(Engine.podman)


def test_loaded_id_from_both_engines() -> None:
    assert _loaded_id("Loaded image ID: sha256:" + "c" * 64 + "\n") == "sha256:" + "c" * 64
    assert _loaded_id("Getting image source signatures\nLoaded image: sha256:abc\n") == (
        "sha256:abc"
    )
    assert _loaded_id("Loaded image(s): localhost/a:1,localhost/b:2\n") == "localhost/a:1"
    assert _loaded_id("nothing\n") is None


@pytest.mark.integration
def test_docker_archive_stream_is_the_judged_image(images: Fixtures, tmp_path: Path) -> None:
    """The stream kcompat writes for `docker load` holds the image's config byte for
    byte and every layer uncompressed under its diff_id; skopeo reads it as the same
    image (same config digest)."""
    if shutil.which("skopeo") is None:
        pytest.skip("needs skopeo (installed by ci/setup)")
    archive = tmp_path / "image.tar"
    with open_image(images.oci("glibc-amd64")) as opened, open(archive, "wb") as out:
        write_docker_archive(out, opened, BlobStore())
        config_digest = opened.image.config_digest
        diff_ids = opened.image.config.diff_ids
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert manifest[0]["Layers"] == [f"{d.split(':')[1]}/layer.tar" for d in diff_ids]
        for name, diff_id in zip(manifest[0]["Layers"], diff_ids):
            data = tar.extractfile(name).read()  # type: ignore[union-attr]
            assert data[:2] != b"\x1f\x8b" and _sha256(data) == diff_id  # uncompressed
    raw = subprocess.run(["skopeo", "inspect", "--config", "--raw", f"docker-archive:{archive}"],
                         capture_output=True, check=True).stdout  # fmt: skip
    assert _sha256(raw) == config_digest


def _sha256(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- real engines ------------------------------------------------------------------------


def _config_digest(ref: str, env: dict[str, str] | None = None) -> str:
    r = kc("inspect", "--format", "json", ref, env=env)
    assert r.returncode == 0, r.stderr
    return str(json.loads(r.stdout)["config"]["digest"])


def kc(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
       ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run([sys.executable, "-m", "kcompat", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, check=False)  # fmt: skip


@pytest.fixture
def docker_env(dockerd: Dockerd) -> dict[str, str]:  # noqa: F811
    """kcompat's environment for the private daemon: $DOCKER_HOST, and the fixture's
    docker CLI (Debian's) first on PATH."""
    env = dockerd.env()
    if dockerd.cli is not None:
        env["PATH"] = f"{Path(dockerd.cli).parent}:{env.get('PATH', '')}"
    env["KCOMPAT_CACHE"] = os.environ["KCOMPAT_CACHE"]
    return env


@pytest.fixture(scope="session")
def podman_conf(podman_store: PodmanStore) -> Path:  # noqa: F811
    """containers.conf for the private store on this host (tests/engines.py run_conf)."""
    return run_conf(podman_store)


@pytest.fixture
def podman_env(podman_store: PodmanStore, podman_conf: Path) -> dict[str, str]:  # noqa: F811
    env = podman_store.env()
    env["CONTAINERS_CONF"] = str(podman_conf)
    env["KCOMPAT_CACHE"] = os.environ["KCOMPAT_CACHE"]
    return env


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, str], object]]:
    """Each engine test runs against docker and podman: (name, kcompat's env, the
    engine fixture with run_cli)."""
    name = request.param
    if name == "docker":
        yield name, request.getfixturevalue("docker_env"), request.getfixturevalue("dockerd")
    else:
        yield name, request.getfixturevalue("podman_env"), request.getfixturevalue("podman_store")


both = pytest.mark.parametrize("engine", ["docker", "podman"], indirect=True)


@pytest.mark.integration
@both
def test_exit_status_and_stdio_pass_through(engine: tuple[str, dict[str, str], object],
                                            images: Fixtures) -> None:  # fmt: skip
    name, env, _ = engine
    img = images.oci("busybox-amd64")
    r = kc("run", "--runtime", name, img, "sh", "-c", "exit 3", env=env)
    assert r.returncode == 3, r.stderr
    r = kc("-q", "run", "--runtime", name, img, "sh", "-c", "echo out; echo err >&2", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "out\n" and r.stderr.strip().splitlines()[-1] == "err"


@pytest.mark.integration
def test_signals_reach_the_container(docker_env: dict[str, str], images: Fixtures) -> None:
    """SIGTERM to kcompat goes to docker's CLI, which passes it to the container (its
    --sig-proxy): the command dies of it and the status says so (128+15, through
    --init, whose PID 1 forwards it: a PID 1 ignores signals it has no handler for)."""
    import signal
    import time

    p = subprocess.Popen([sys.executable, "-m", "kcompat", "-q", "run", "--runtime", "docker",
                          "--init", images.oci("busybox-amd64"), "sh", "-c",
                          "echo started; exec sleep 60"], env=docker_env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert p.stdout is not None
        assert p.stdout.readline() == "started\n"
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 128 + signal.SIGTERM, p.stderr.read() if p.stderr else ""
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.integration
@both
def test_options_reach_the_engine(engine: tuple[str, dict[str, str], object], images: Fixtures,
                                  tmp_path: Path) -> None:  # fmt: skip
    name, env, _ = engine
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "f").write_text("from the host\n")
    script = 'echo "A=$A"; pwd; id -u; id -g; cat /data/f; touch /data/x 2>/dev/null || echo ro'
    r = kc("run", "--runtime", name, "-e", "A=1", "-w", "/bin", "-u", "1000:1001",
           "-v", f"{vol}:/data:ro", images.oci("busybox-amd64"), "sh", "-c", script,
           env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["A=1", "/bin", "1000", "1001", "from the host", "ro"]
    assert not (vol / "x").exists()


@pytest.mark.integration
@both
def test_oci_layout_loaded_by_config_digest_and_named(
    engine: tuple[str, dict[str, str], object], images: Fixtures
) -> None:
    """An oci: image is loaded into the engine (a docker-archive stream written from the
    layout's blobs) and run by its image id, the config's digest; --runtime-arg passes
    the engine's own flags (--name)."""
    name, env, fixture = engine
    ref = images.oci("glibc-amd64")
    config = _config_digest(ref, env)
    cname = f"kc-handoff-{name}"
    fixture.run_cli("rmi", "-f", config, check=False)  # type: ignore[attr-defined]
    r = kc("run", "--runtime", name, "--keep", "--runtime-arg", "--name",
           "--runtime-arg", cname, ref, "/bin/true", env=env)  # fmt: skip
    try:
        assert r.returncode == 0, r.stderr
        assert f"as {config}" in r.stderr  # "loaded ... into ENGINE as sha256:..."
        ran = fixture.run_cli("inspect", "--format", "{{.Image}}", cname).stdout.strip()  # type: ignore[attr-defined]
        assert ran.removeprefix("sha256:") == config.removeprefix("sha256:")
    finally:
        fixture.run_cli("rm", "-f", cname, check=False)  # type: ignore[attr-defined]
    r = kc("run", "--runtime", name, ref, "/bin/true", env=env)  # now present: no reload
    assert r.returncode == 0 and "loaded" not in r.stderr, r.stderr


@pytest.mark.integration
@both
def test_registry_image_runs_by_the_judged_digest(
    engine: tuple[str, dict[str, str], object], registry: RealRegistry
) -> None:
    """From a multi-platform index the entry kcompat judged is what the engine pulls and
    runs: NAME@<that manifest's digest>, inspected on the container."""
    name, env, fixture = engine
    ref = f"{registry.host}/busybox:multi"
    rep = json.loads(kc("check", "--format", "json", ref, env=env).stdout)
    digest = rep["image"]["digest"]
    assert rep["image"]["platform"] == "linux/amd64" and digest
    cname = f"kc-digest-{name}"
    r = kc("run", "--runtime", name, "--keep", f"--runtime-arg=--name={cname}", ref,
           "uname", "-m", env=env)  # fmt: skip
    try:
        assert r.returncode == 0, r.stderr
        assert r.stdout == "x86_64\n"
        fmt = "{{.Config.Image}}" if name == "docker" else "{{.ImageName}}"
        ran = fixture.run_cli("inspect", "--format", fmt, cname).stdout.strip()  # type: ignore[attr-defined]
        assert ran == f"{registry.host}/busybox@{digest}"
    finally:
        fixture.run_cli("rm", "-f", cname, check=False)  # type: ignore[attr-defined]


@pytest.mark.integration
def test_docker_daemon_image_runs_by_its_id(
    docker_env: dict[str, str], dockerd: Dockerd, images: Fixtures  # noqa: F811
) -> None:
    """A docker-daemon: image is judged from the daemon's own copy and docker runs it
    by that image id: nothing is loaded or pulled."""
    name = dockerd.load_oci(images.oci("busybox-amd64"), "kc/handoff:amd64")
    image_id = dockerd.image_id(name)
    r = kc("run", "--runtime", "docker", "--keep", "--runtime-arg=--name=kc-daemon",
           f"docker-daemon:{name}", "echo", "ran", env=docker_env)  # fmt: skip
    try:
        assert r.returncode == 0 and r.stdout == "ran\n", r.stderr
        assert "loaded" not in r.stderr and "Pulling" not in r.stderr
        ran = dockerd.run_cli("inspect", "--format", "{{.Image}}", "kc-daemon").stdout.strip()
        assert ran == image_id
    finally:
        dockerd.run_cli("rm", "-f", "kc-daemon", check=False)


@pytest.mark.integration
@both
def test_foreign_arch_without_binfmt_is_refused(
    engine: tuple[str, dict[str, str], object], images: Fixtures
) -> None:
    name, env, _ = engine
    usable = [e for e in probe_binfmt() if e.arch == "arm64" and e.usable_in_container()]
    if usable:
        pytest.skip(f"this host has a binfmt_misc handler for arm64 ({usable[0].name})")
    r = kc("run", "--runtime", name, images.oci("busybox-arm64"), "uname", "-m", env=env)
    assert r.returncode == ExitCode.UNSUPPORTED, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kcompat: error: the image is arm64")
    assert "kcompat binfmt install" in lines[0] and r.stdout == ""


@pytest.mark.integration
def test_refusals_before_anything_runs(images: Fixtures, tmp_path: Path) -> None:
    """What cannot be handed over is refused first: one line, exit 2 (or 3 for a
    missing engine), nothing pulled."""
    img = images.oci("busybox-amd64")
    r = kc("run", "--runtime-arg=-d", img)
    assert r.returncode == ExitCode.USAGE and "--runtime-arg" in r.stderr
    r = kc("run", "--runtime", "docker", "--kernel", "3.10", img)
    assert r.returncode == ExitCode.USAGE and "--kernel" in r.stderr
    r = kc("run", "--runtime", "lxc", img)
    assert r.returncode == ExitCode.USAGE
    env = {**os.environ, "PATH": str(tmp_path)}
    r = kc("run", "--runtime", "podman", img, env=env)
    assert r.returncode == ExitCode.NOT_FOUND and "no podman command" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
