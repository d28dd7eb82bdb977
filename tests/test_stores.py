"""`docker-daemon:` and `containers-storage:` against a real dockerd and real podman
stores (tests/engines.py), with the fixture images loaded into them from their OCI
layouts: the verdicts must be those of the same images read from the layouts, the
errors one line with their exit codes, and the podman store unchanged by reading it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kcompat.analysis import scan_image
from kcompat.errors import ExitCode
from kcompat.pull import open_image
from tests import engines
from tests.conftest import Fixtures
from tests.engines import Dockerd, PodmanStore
from tests.registry_server import RealRegistry, free_port
from tests.test_check import check_json

pytestmark = pytest.mark.integration
dockerd = engines.dockerd  # the session fixtures, used here by name
podman_store = engines.podman_store
podman_vfs_store = engines.podman_vfs_store

IMAGES = ("busybox-amd64", "glibc-amd64", "busybox-arm64")
TARGET = ("--kernel", "3.10", "--arch", "amd64")  # a described host: no probe, findings


def kc(*args: str, env: dict[str, str] | None = None,
       timeout: float = 300) -> subprocess.CompletedProcess[str]:  # fmt: skip
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "kcompat", *args], capture_output=True,
                          text=True, env=full, timeout=timeout, check=False)  # fmt: skip


def one_line_error(r: subprocess.CompletedProcess[str], code: ExitCode, *words: str) -> str:
    """The run failed with `code` and one line `kcompat: error: ...` holding `words`."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kcompat: error: "), r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def comparable(rep: dict[str, Any]) -> dict[str, Any]:
    """A check report without what names the source (reference, manifest digest)."""
    rep = json.loads(json.dumps(rep))
    rep["image"].pop("reference")
    rep["image"].pop("digest")
    return rep


@pytest.fixture(scope="module")
def in_daemon(dockerd: Dockerd, images: Fixtures) -> dict[str, str]:
    """The fixture images loaded into dockerd as kc/NAME:1 (through docker-archives)."""
    return {name: dockerd.load_oci(images.oci(name), f"kc/{name}:1") for name in IMAGES}


@pytest.fixture(scope="module")
def in_podman(podman_store: PodmanStore, podman_vfs_store: PodmanStore,
              images: Fixtures) -> dict[str, str]:  # fmt: skip
    """The fixture images in the overlay store (podman load of a docker-archive: Docker
    v2s2 manifests) and the vfs store (skopeo copy from the layout: OCI manifests)."""
    ids = {}
    for name in IMAGES:
        ids[f"overlay/{name}"] = podman_store.load_oci(images.oci(name), f"kc/{name}:1")
        ids[f"vfs/{name}"] = podman_vfs_store.pull(images.oci(name), f"kc/{name}:1")
    return ids


def daemon_env(d: Dockerd) -> dict[str, str]:
    return {"DOCKER_HOST": d.host}


# -- verdicts ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", IMAGES)
def test_daemon_verdict_is_the_layouts(
    name: str, dockerd: Dockerd, in_daemon: dict[str, str], images: Fixtures,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("DOCKER_HOST", dockerd.host)
    rc0, want = check_json(images.oci(name), *TARGET)
    rc1, by_name = check_json(f"docker-daemon:kc/{name}:1", *TARGET)
    image_id = dockerd.image_id(in_daemon[name])
    rc2, by_id = check_json(f"docker-daemon:{image_id}", *TARGET)
    rc3, by_short = check_json(f"docker-daemon:{image_id[len('sha256:'):][:12]}", *TARGET)
    assert rc0 == rc1 == rc2 == rc3
    assert comparable(by_name) == comparable(want)
    assert comparable(by_id) == comparable(want) == comparable(by_short)
    assert by_name["image"]["reference"] == f"docker-daemon:docker.io/kc/{name}:1"
    assert by_id["image"]["reference"] == f"docker-daemon:{image_id}"
    assert want["verdict"] in ("native", "emulated", "uncertain", "incompatible")


@pytest.mark.parametrize("driver", ["overlay", "vfs"])
@pytest.mark.parametrize("name", IMAGES)
def test_storage_verdict_is_the_layouts(
    name: str, driver: str, podman_store: PodmanStore, podman_vfs_store: PodmanStore,
    in_podman: dict[str, str], images: Fixtures,
) -> None:  # fmt: skip
    store = podman_store if driver == "overlay" else podman_vfs_store
    rc0, want = check_json(images.oci(name), *TARGET)
    rc1, by_name = check_json(store.ref(f"kc/{name}:1"), *TARGET)
    image_id = in_podman[f"{driver}/{name}"]
    rc2, by_id = check_json(store.ref(image_id), *TARGET)
    rc3, by_short = check_json(store.ref(image_id[:12]), *TARGET)
    assert rc0 == rc1 == rc2 == rc3
    assert comparable(by_name) == comparable(want) == comparable(by_id) == comparable(by_short)
    assert by_name["image"]["reference"] == store.ref(f"docker.io/kc/{name}:1")


@pytest.mark.parametrize("driver", ["overlay", "vfs"])
def test_storage_files_are_the_layouts(
    driver: str, podman_store: PodmanStore, podman_vfs_store: PodmanStore,
    in_podman: dict[str, str], images: Fixtures,
) -> None:  # fmt: skip
    """Every file, mode, owner and link of the merged image, whiteouts applied (the
    busybox layout's top layer deletes bin/removed-later), as from the layout."""
    store = podman_store if driver == "overlay" else podman_vfs_store

    def tree(reference: str) -> dict[str, Any]:
        with open_image(reference) as opened:
            opened.source.verify(opened.image)  # every layer replayed: digest = diff_id
            scan = scan_image(opened)
            return {p: (n.kind, n.linkname, n.mode, n.uid, n.gid)
                    for p, n in scan.tree.nodes.items()}  # fmt: skip

    want = tree(images.oci("busybox-amd64"))
    got = tree(store.ref("kc/busybox-amd64:1"))
    assert got == want
    assert "/bin/removed-later" not in got and "/bin/busybox" in got


def test_storage_store_conf_and_driver_detection(
    podman_store: PodmanStore, in_podman: dict[str, str], images: Fixtures,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """No store specifier: graphroot and driver from $CONTAINERS_STORAGE_CONF; only a
    root: the driver found from the store's <driver>-layers directory."""
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(podman_store.workdir / "storage.conf"))
    rc0, want = check_json(images.oci("glibc-amd64"), *TARGET)
    rc1, got = check_json("containers-storage:kc/glibc-amd64:1", *TARGET)
    assert (rc0, comparable(want)) == (rc1, comparable(got))
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(podman_store.workdir / "none.conf"))
    rc2, got = check_json(f"containers-storage:[{podman_store.root}]kc/glibc-amd64:1", *TARGET)
    assert (rc0, comparable(want)) == (rc2, comparable(got))


# -- inspect, pull, run -------------------------------------------------------------------


def test_daemon_inspect_digests(
    dockerd: Dockerd, in_daemon: dict[str, str], registry: RealRegistry
) -> None:
    """A loaded image has no registry digest; one pulled from a registry shows the
    manifest digest docker recorded (RepoDigests), the one the registry serves."""
    env = daemon_env(dockerd)
    r = kc("inspect", "--format", "json", "docker-daemon:kc/busybox-amd64:1", env=env)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["digest"] is None
    assert rep["config"]["digest"] == dockerd.image_id(in_daemon["busybox-amd64"])
    ids = dockerd.run_cli("image", "inspect", "--format", "{{json .RootFS.Layers}}",
                          in_daemon["busybox-amd64"]).stdout  # fmt: skip
    assert [layer["digest"] for layer in rep["layers"]] == json.loads(ids)

    pulled = f"{registry.host}/busybox:docker-amd64"
    dockerd.run_cli("pull", "-q", pulled)
    from_registry = kc("inspect", "--format", "json", f"docker://{pulled}")
    assert from_registry.returncode == 0, from_registry.stderr
    r = kc("inspect", "--format", "json", f"docker-daemon:{pulled}", env=env)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["digest"] == json.loads(from_registry.stdout)["digest"]
    assert rep["config"]["digest"] == json.loads(from_registry.stdout)["config"]["digest"]


def test_daemon_over_tcp_pull_and_run(dockerd: Dockerd, in_daemon: dict[str, str]) -> None:
    assert dockerd.tcp_host is not None
    env = {"DOCKER_HOST": dockerd.tcp_host}
    r = kc("pull", "docker-daemon:kc/busybox-amd64:1", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("pulled docker-daemon:docker.io/kc/busybox-amd64:1 linux/amd64")
    r = kc("run", "docker-daemon:kc/busybox-amd64:1", "--", "/bin/echo", "from-daemon", env=env)
    assert (r.returncode, r.stdout) == (0, "from-daemon\n"), r.stderr
    spools = list((Path(os.environ["KCOMPAT_CACHE"]) / "tmp").glob("*"))
    assert spools == []  # the export's file is gone


def _saves(d: Dockerd, image_id: str, since: int, until: int) -> int:
    """How many times the daemon exported (`docker save`) the image from `since` to
    `until` (seconds): its own event log (an image "save" event names the image id)."""
    out = d.run_cli("events", "--since", str(since), "--until", str(until),
                    "--filter", "type=image", "--filter", "event=save",
                    "--format", "{{.Actor.ID}}").stdout  # fmt: skip
    return out.split().count(image_id)


def test_daemon_warm_check_needs_no_export(dockerd: Dockerd, in_daemon: dict[str, str]) -> None:
    """The first check exports the image (one `docker save`); once its layers are
    scanned, a check reads only the daemon's inspect; a run (its root filesystem not
    unpacked yet) and a pull read the layers, so they export it again."""
    env = daemon_env(dockerd)
    ref = "docker-daemon:kc/busybox-amd64:1"
    image_id = dockerd.image_id(in_daemon["busybox-amd64"])
    windows, outputs = [], []
    check = ("check", "--format", "json", *TARGET, ref)
    for args in (check, check, ("run", ref, "--", "/bin/echo", "ran"), ("pull", ref)):
        time.sleep(1.1)  # whole seconds between the steps: no window holds two steps' events
        start = time.time()
        r = kc(*args, env=env)
        assert r.returncode in (0, 1), r.stderr
        outputs.append(r.stdout)
        windows.append((math.floor(start), math.ceil(time.time())))
    assert outputs[0] == outputs[1] and outputs[2] == "ran\n"
    time.sleep(1.1)  # the daemon's events up to the last window's end are logged
    saves = [_saves(dockerd, image_id, a, b) for a, b in windows]
    assert saves == [1, 0, 1, 1]


def _store_state(root: Path) -> dict[str, Any]:
    """Every entry of the store: type, mode, owner, size, mtime, xattrs and content."""
    state: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            st = path.lstat()
            xattrs = {}
            with contextlib.suppress(OSError):
                for x in os.listxattr(path, follow_symlinks=False):
                    xattrs[x] = os.getxattr(path, x, follow_symlinks=False)
            entry: list[Any] = [st.st_mode, st.st_uid, st.st_gid, st.st_size,
                                st.st_mtime_ns, st.st_ctime_ns, sorted(xattrs.items())]  # fmt: skip
            if stat.S_ISREG(st.st_mode):
                entry.append(hashlib.sha256(path.read_bytes()).hexdigest())
            elif stat.S_ISLNK(st.st_mode):
                entry.append(os.readlink(path))
            state[str(path.relative_to(root))] = entry
    return state


@pytest.mark.parametrize("driver", ["overlay", "vfs"])
def test_storage_store_unchanged_and_run(
    driver: str, podman_store: PodmanStore, podman_vfs_store: PodmanStore,
    in_podman: dict[str, str],
) -> None:  # fmt: skip
    store = podman_store if driver == "overlay" else podman_vfs_store
    ref = store.ref("kc/busybox-amd64:1")
    before = _store_state(store.root), _store_state(store.runroot)
    for args in (("inspect", ref), ("inspect", "--raw", ref), ("check", *TARGET, ref),
                 ("pull", "--unpack", ref)):  # fmt: skip
        r = kc(*args)
        assert r.returncode == 0, (args, r.stderr)
    r = kc("run", ref, "--", "/bin/echo", "from-store")
    assert (r.returncode, r.stdout) == (0, "from-store\n"), r.stderr
    assert (_store_state(store.root), _store_state(store.runroot)) == before
    stored = (store.root / f"{driver}-images" / in_podman[f"{driver}/busybox-amd64"]
              / "manifest").read_bytes()  # fmt: skip
    r = kc("inspect", "--raw", ref)
    assert r.stdout.encode() in (stored, stored + b"\n")
    r = kc("inspect", "--format", "json", ref)
    assert json.loads(r.stdout)["digest"] == "sha256:" + hashlib.sha256(stored).hexdigest()


# -- errors ---------------------------------------------------------------------------


def test_daemon_not_running(tmp_path: Path) -> None:
    missing = tmp_path / "none.sock"
    r = kc("check", "docker-daemon:app:dev", env={"DOCKER_HOST": f"unix://{missing}"})
    one_line_error(r, ExitCode.NETWORK, "no Docker daemon answers", f"unix://{missing}",
                   "does not exist", "start it")  # fmt: skip
    dead = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(dead))  # a socket file nobody listens on: ECONNREFUSED
        r = kc("inspect", "docker-daemon:app:dev", env={"DOCKER_HOST": f"unix://{dead}"})
    one_line_error(r, ExitCode.NETWORK, "no Docker daemon answers", "connection refused")
    r = kc("inspect", "docker-daemon:app:dev",
           env={"DOCKER_HOST": f"tcp://127.0.0.1:{free_port()}"})  # fmt: skip
    one_line_error(r, ExitCode.NETWORK, "no Docker daemon answers", "connection refused")
    r = kc("inspect", "docker-daemon:app:dev", env={"DOCKER_HOST": "ssh://me@host"})
    one_line_error(r, ExitCode.UNSUPPORTED, "unix:// or tcp://")
    r = kc("inspect", "docker-daemon:app:dev", env={"DOCKER_HOST": "localhost:2375"})
    one_line_error(r, ExitCode.USAGE, "DOCKER_HOST='localhost:2375'")


def test_daemon_from_docker_context(dockerd: Dockerd, in_daemon: dict[str, str],
                                    tmp_path: Path) -> None:  # fmt: skip
    """No DOCKER_HOST: the docker CLI's current context (made by `docker context`)."""
    if dockerd.cli is None:
        pytest.skip("needs the docker CLI")
    config = tmp_path / "docker-config"
    cli_env = {**os.environ, "DOCKER_CONFIG": str(config)}
    cli_env.pop("DOCKER_HOST", None)
    for args in (("context", "create", "kc", "--docker", f"host={dockerd.host}"),
                 ("context", "create", "gone", "--docker", f"host=unix://{tmp_path}/none.sock"),
                 ("context", "use", "kc")):  # fmt: skip
        subprocess.run([dockerd.cli, *args], env=cli_env, check=True, capture_output=True)
    env = {"DOCKER_CONFIG": str(config), "DOCKER_HOST": ""}
    r = kc("inspect", "--format", "json", "docker-daemon:kc/busybox-amd64:1", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["config"]["digest"] == dockerd.image_id(in_daemon["busybox-amd64"])
    r = kc("inspect", "docker-daemon:kc/busybox-amd64:1", env={**env, "DOCKER_CONTEXT": "gone"})
    one_line_error(r, ExitCode.NETWORK, "no Docker daemon answers", "docker context 'gone'")
    r = kc("inspect", "docker-daemon:kc/busybox-amd64:1", env={**env, "DOCKER_CONTEXT": "nope"})
    one_line_error(r, ExitCode.USAGE, "docker context 'nope'", "docker context ls")
    r = kc("inspect", "docker-daemon:kc/none:1",
           env={**env, "DOCKER_CONTEXT": "gone", "DOCKER_HOST": dockerd.host})  # fmt: skip
    one_line_error(r, ExitCode.NOT_FOUND, f"DOCKER_HOST={dockerd.host}")  # DOCKER_HOST wins


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_tls_certs(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as docker's
    "Protect the Docker daemon socket" guide makes them (openssl)."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=kc-ca",
             "-keyout", "ca-key.pem", "-out", "ca.pem", cwd=d)  # fmt: skip
    for who, ext in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                     ("client", "extendedKeyUsage=clientAuth")):  # fmt: skip
        (d / f"{who}.ext").write_text(ext + "\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}",
                 "-keyout", f"{who}-key.pem", "-out", f"{who}.csr", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{who}.ext",
                 "-out", f"{who}-cert.pem", cwd=d)  # fmt: skip


@pytest.fixture(scope="module")
def tls_dockerd() -> Iterator[tuple[Dockerd, Path]]:
    """A second dockerd whose TCP port wants TLS client certificates; the client's
    certificates as the docker CLI finds them in DOCKER_CERT_PATH."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    work = Path(tempfile.mkdtemp(prefix="kc-dockerd-tls-"))
    try:
        certs = work / "certs"
        certs.mkdir()
        make_tls_certs(certs)
        client = work / "client"
        client.mkdir()
        for src, dst in (("ca.pem", "ca.pem"), ("client-cert.pem", "cert.pem"),
                         ("client-key.pem", "key.pem")):  # fmt: skip
            shutil.copy(certs / src, client / dst)
        d = engines.start_dockerd(work / "d", tcp=True, tls=certs)
        try:
            yield d, client
        finally:
            d.stop()
    finally:
        engines.unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)


def test_daemon_over_tls(tls_dockerd: tuple[Dockerd, Path], tmp_path: Path) -> None:
    d, client = tls_dockerd
    host = f"tcp://127.0.0.1:{d.tcp_port}"
    tls = {"DOCKER_HOST": host, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(client)}
    r = kc("inspect", "docker-daemon:kc/none:1", env=tls)  # TLS works: the daemon answers
    one_line_error(r, ExitCode.NOT_FOUND, "has no image 'kc/none:1'", host)
    r = kc("inspect", "docker-daemon:kc/none:1", env={**tls, "DOCKER_CERT_PATH": str(tmp_path)})
    one_line_error(r, ExitCode.AUTH, "client certificates", str(tmp_path), "DOCKER_CERT_PATH")
    r = kc("inspect", "docker-daemon:kc/none:1", env={"DOCKER_HOST": host})  # plain HTTP
    one_line_error(r, ExitCode.NETWORK, "is not a Docker daemon", "HTTP 400")


def test_not_a_daemon(registry: RealRegistry) -> None:
    """Another HTTP server at DOCKER_HOST (the registry): told apart by /_ping."""
    r = kc("inspect", "docker-daemon:busybox:amd64", env={"DOCKER_HOST": f"tcp://{registry.host}"})
    one_line_error(r, ExitCode.NETWORK, "is not a Docker daemon", "/_ping", "HTTP 404")


def test_daemon_image_missing(dockerd: Dockerd, in_daemon: dict[str, str]) -> None:
    env = daemon_env(dockerd)
    r = kc("check", "docker-daemon:app:dev", env=env)
    one_line_error(r, ExitCode.NOT_FOUND, "has no image 'app:dev'", "'docker images'",
                   "'docker pull app:dev'")  # fmt: skip
    r = kc("inspect", "docker-daemon:sha256:" + "0" * 64, env=env)
    one_line_error(r, ExitCode.NOT_FOUND, "has no image 'sha256:000", "docker images")
    r = kc("inspect", "--platform", "linux/arm64", "docker-daemon:kc/busybox-amd64:1", env=env)
    one_line_error(r, ExitCode.NOT_FOUND, "no linux/arm64/v8 in docker-daemon:", "linux/amd64")


def _as_nobody(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to run kcompat as another user")
    home = Path(tempfile.mkdtemp(prefix="kc-nobody-"))
    try:
        home.chmod(0o777)
        full = {"PATH": os.environ.get("PATH", ""), "HOME": str(home),
                "KCOMPAT_CACHE": str(home / "cache"), **env}  # fmt: skip
        probe = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534",
                                "--clear-groups", sys.executable, "-c", "import kcompat"],
                               capture_output=True, env=full, check=False)  # fmt: skip
        if probe.returncode != 0:
            pytest.skip(f"kcompat cannot run as uid 65534 here: {probe.stderr.decode()[-200:]}")
        return subprocess.run(
            ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
             sys.executable, "-m", "kcompat", *args],
            capture_output=True, text=True, env=full, timeout=120, check=False,
        )  # fmt: skip
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_daemon_socket_permission(dockerd: Dockerd, in_daemon: dict[str, str]) -> None:
    """The socket is srw-rw---- root:root (or :docker): another user is refused."""
    mode = dockerd.workdir.stat().st_mode
    dockerd.workdir.chmod(0o711)  # the directory passable, the socket as dockerd made it
    try:
        r = _as_nobody("check", "docker-daemon:kc/busybox-amd64:1", env=daemon_env(dockerd))
    finally:
        dockerd.workdir.chmod(stat.S_IMODE(mode))
    one_line_error(r, ExitCode.AUTH, "permission denied on", str(dockerd.socket),
                   "add yourself to the docker group", "run as root")  # fmt: skip


def test_daemon_export_fails(dockerd: Dockerd, tmp_path: Path) -> None:
    """A daemon whose layer data is damaged fails the export (its own error, mid-stream
    or before): one line, no traceback."""
    content = tmp_path / "content"
    content.mkdir()
    (content / "only-here").write_bytes(os.urandom(4096))  # a layer no other image has
    tar = tmp_path / "layer.tar"
    subprocess.run(["tar", "-C", str(content), "-cf", str(tar), "."], check=True)
    dockerd.run_cli("import", str(tar), "kc/damaged:1")
    driver = dockerd.run_cli("image", "inspect", "--format", "{{json .GraphDriver.Data}}",
                             "kc/damaged:1").stdout  # fmt: skip
    layer = json.loads(driver)
    diff = Path(layer["UpperDir"])
    (diff / "only-here").unlink()
    r = kc("check", "docker-daemon:kc/damaged:1", env=daemon_env(dockerd))
    # dockerd 20.10 fails before its first byte: HTTP 500 with its message
    one_line_error(r, ExitCode.NETWORK, "failed on 'kc/damaged:1'", "only-here", "HTTP 500",
                   "daemon's log")  # fmt: skip


def test_storage_errors(tmp_path: Path, podman_store: PodmanStore,
                        in_podman: dict[str, str]) -> None:  # fmt: skip
    r = kc("check", f"containers-storage:[overlay@{tmp_path}/nothing]busybox")
    one_line_error(r, ExitCode.NOT_FOUND, "no containers-storage store at", f"{tmp_path}/nothing",
                   "podman info")  # fmt: skip
    r = kc("check", podman_store.ref("app:dev"))
    one_line_error(r, ExitCode.NOT_FOUND, "no image 'app:dev'", str(podman_store.root),
                   "'podman images'")  # fmt: skip
    r = kc("check", podman_store.ref("f" * 12))
    one_line_error(r, ExitCode.NOT_FOUND, "no image", "'podman images'")
    r = kc("check", f"containers-storage:[btrfs@{podman_store.root}]busybox")
    one_line_error(r, ExitCode.UNSUPPORTED, "'btrfs'", "skopeo copy")
    r = kc("check", "containers-storage:[overlay@relative/path]busybox")
    one_line_error(r, ExitCode.USAGE, "not an absolute path")
    r = _as_nobody("check", podman_store.ref("kc/busybox-amd64:1"), env={})
    one_line_error(r, ExitCode.AUTH, "permission denied", "run as the store's owner")
    # rootless, no storage.conf of the user's: the per-user default store
    r = _as_nobody("check", "containers-storage:busybox", env={"XDG_DATA_HOME": "/nonexistent"})
    one_line_error(r, ExitCode.NOT_FOUND, "/nonexistent/containers/storage",
                   "the rootless default")  # fmt: skip


@pytest.fixture()
def store_copy(podman_store: PodmanStore, in_podman: dict[str, str],
               tmp_path: Path) -> Iterator[PodmanStore]:  # fmt: skip
    """A copy of the overlay store to damage (cp -a keeps whiteouts and xattrs)."""
    root = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(podman_store.root), str(root)], check=True)
    yield PodmanStore(tmp_path, root, tmp_path / "runroot", "overlay")


def _top_layer(store: PodmanStore, image_id: str) -> str:
    images = json.loads((store.root / "overlay-images" / "images.json").read_text())
    return next(str(i["layer"]) for i in images if i["id"] == image_id)


def test_storage_damaged_layers(store_copy: PodmanStore, in_podman: dict[str, str]) -> None:
    image_id = in_podman["overlay/glibc-amd64"]
    ref = store_copy.ref("kc/glibc-amd64:1")
    top = _top_layer(store_copy, image_id)
    layers = json.loads((store_copy.root / "overlay-layers" / "layers.json").read_text())
    chain, lid = [], top
    while lid:
        chain.append(lid)
        lid = next(layer.get("parent") for layer in layers if layer["id"] == lid)
    biggest = max(
        (p for lid in chain for p in (store_copy.root / "overlay" / lid / "diff").rglob("*")
         if p.is_file() and not p.is_symlink()),
        key=lambda p: p.stat().st_size,
    )  # fmt: skip
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.chmod(0o644)
    biggest.write_bytes(bytes(data))  # same size, one byte changed: the diff_id catches it
    r = kc("check", ref)
    one_line_error(r, ExitCode.INTEGRITY, "sha256:")
    biggest.write_bytes(bytes(data[:-1]))
    r = kc("pull", ref)
    one_line_error(r, ExitCode.INTEGRITY, "shorter than the layer recorded", biggest.name)
    (store_copy.root / "overlay-layers" / f"{chain[0]}.tar-split.gz").unlink()
    r = kc("check", ref)
    one_line_error(r, ExitCode.UNSUPPORTED, "has no tar-split", "skopeo copy")
