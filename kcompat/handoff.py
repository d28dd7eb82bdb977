"""`kcompat run --runtime docker|podman`: the judged image, run by an engine's CLI.

kcompat judges the image exactly as `run` does (kcompat.run: the same options checked
before anything is pulled, `check`'s pipeline, the same refusals and `--force`), then
hands it to the `docker` or `podman` command with the same options, so that the engine
runs the very image that was judged:
- a registry image by its manifest digest, NAME@sha256:... (the entry of an index that
  was judged; docker treats 127.0.0.0/8 registries as plain HTTP by itself, podman is
  told so with --tls-verify=false, as for every --insecure-registry host);
- an image the engine already holds (a `docker-daemon:` image run by docker, or one
  loaded before) by its image id, the digest of its config;
- any other local image loaded first: a docker-archive file with one image as it is,
  otherwise a docker-archive stream written here from the blobs kcompat read (each layer
  uncompressed, its diff_id checked), piped to `docker load` / `podman load`; a plain
  root file system (`dir:`) through `import`.
The engine's stdio are kcompat's, its exit status is kcompat's (128+N when signal N
ended it), and the signals kcompat gets are forwarded to it.

`engine_argv` is the pure part: RunOptions to the engine's `run` argv.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import IO

from kcompat.auth import Credentials
from kcompat.binfmt import BINFMT, QEMU_NAMES
from kcompat.errors import ContainerError, NotFoundError, UnsupportedError, UsageError
from kcompat.pull import OpenImage
from kcompat.reference import DOCKER_HUB, LocalRef, RegistryRef, Transport, parse_reference
from kcompat.run import Prediction, command_of, first_judgement, refuse
from kcompat.runoptions import Checked, RunOptions
from kcompat.sources import Options
from kcompat.store import BlobStore
from kcompat.target import Target


class Engine(str, Enum):
    docker = "docker"
    podman = "podman"


# The signals kcompat passes on to the engine's CLI, which passes them to the container
# (docker run's --sig-proxy, podman's too), as kcompat's own runner does.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
             signal.SIGUSR1, signal.SIGUSR2)  # fmt: skip
_KEYBOARD = (signal.SIGINT, signal.SIGQUIT)  # the terminal sends these to its whole group


@dataclass(frozen=True)
class EngineImage:
    """The judged image as the engine names it."""

    ref: str  # NAME@sha256:<manifest digest>, or an image id (sha256:<config digest>)
    platform: str | None = None  # the judged platform, given to the engine as --platform
    insecure: bool = False  # a registry reached over plain HTTP
    how: str = "pulled"  # pulled | present | loaded | imported


@dataclass(frozen=True)
class Handoff:
    """What `execute` runs: the argv, its environment, the notes for the user."""

    argv: tuple[str, ...]
    image: EngineImage
    prediction: Prediction
    env: tuple[tuple[str, str], ...] | None = None  # None: kcompat's own environment
    notes: tuple[str, ...] = ()
    scratch: Path | None = None  # removed after the run (an auth file for --creds)


# -- the pure part ------------------------------------------------------------------------


def engine_argv(
    engine: Engine,
    opts: RunOptions,
    checked: Checked,
    image: EngineImage,
    runtime_args: tuple[str, ...] = (),
    *,
    binary: str | None = None,
    authfile: Path | None = None,
) -> list[str]:
    """`docker run` / `podman run` with the meaning kcompat's `run` gives the options:
    the network is kcompat's default (host) unless given, no_new_privs is on unless
    `--security-opt no-new-privileges=false`, the container is removed unless --keep,
    volumes by their resolved host paths, limits as validated. `runtime_args` (the
    engine's own flags) come last before the image, so they may add what kcompat has no
    option for (-d, --name, -p)."""
    argv = [binary or engine.value, "run"]
    if not opts.keep:
        argv.append("--rm")
    if image.platform:
        argv.append(f"--platform={image.platform}")
    if engine is Engine.podman and image.insecure:
        argv.append("--tls-verify=false")
    if authfile is not None and engine is Engine.podman:
        argv.append(f"--authfile={authfile}")
    if opts.interactive:
        argv.append("--interactive")
    if opts.tty:
        argv.append("--tty")
    argv += [f"--env-file={f}" for f in opts.env_files]
    argv += [f"--env={e}" for e in opts.env]
    if opts.workdir is not None:
        argv.append(f"--workdir={opts.workdir}")
    if opts.user is not None:
        argv.append(f"--user={opts.user}")
    for v in checked.volumes:
        argv.append(f"--volume={v.host}:{v.container}{':ro' if v.readonly else ''}")
    if opts.entrypoint is not None:
        argv.append(f"--entrypoint={opts.entrypoint}")  # '' clears it, as docker's
    if opts.hostname is not None:
        argv.append(f"--hostname={opts.hostname}")
    argv.append(f"--network={opts.network}")
    if opts.read_only:
        argv.append("--read-only")
    limits = checked.limits
    if limits.memory is not None:
        argv.append(f"--memory={limits.memory}")  # bytes: no unit syntax to disagree on
    if limits.cpus is not None:
        argv.append(f"--cpus={limits.cpus:g}")
    if opts.pids_limit is not None:
        argv.append(f"--pids-limit={opts.pids_limit}")
    argv += [f"--tmpfs={t}" for t in opts.tmpfs]
    for opt in opts.security_opts:
        key = opt.replace(":", "=", 1).partition("=")[0]
        if key != "no-new-privileges":  # decided below, from the checked value
            argv.append(f"--security-opt={opt}")
    if checked.no_new_privs:
        argv.append("--security-opt=no-new-privileges")
    argv += [f"--cap-add={c}" for c in opts.cap_add]
    argv += [f"--cap-drop={c}" for c in opts.cap_drop]
    if opts.privileged:
        argv.append("--privileged")
    if opts.init:
        argv.append("--init")
    if opts.userns == "auto":
        argv.append("--userns=auto")
    argv += runtime_args
    argv.append(image.ref)
    argv += opts.command
    return argv


def refuse_unsupported(opts: RunOptions, engine: Engine) -> None:
    """The options only kcompat's own runner has: an error before anything is pulled."""
    own = [
        ("--kernel", opts.kernel is not None),
        ("--seccomp-eperm", opts.seccomp_eperm),
        ("--rootfs-mode", opts.rootfs_mode != "auto"),
    ]
    for flag, given in own:
        if given:
            raise UsageError(
                f"{flag} is kcompat's own runner's, not {engine.value}'s",
                hint=f"drop --runtime {engine.value}, or drop {flag}",
            )
    if opts.userns == "auto" and engine is Engine.docker:
        raise UsageError(
            "--userns auto: docker's user namespaces are a daemon setting (userns-remap)",
            hint="use --runtime podman, or drop --userns",
        )


def network_for_engine(network: str) -> str:
    """--network under an engine: kcompat's host and none, or one of the engine's own
    networks (bridge, a user-defined one), which the engine checks."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]*", network):
        raise UsageError(f"--network {network!r} is not a network name",
                         hint="host, none, bridge or a network of the engine")  # fmt: skip
    return network


# -- judging, as `kcompat run` judges ------------------------------------------------------


def engine_host(profile: Path | None) -> Target:
    """This host as the engine uses it (kcompat.run.host_target: a saved profile or a
    quick probe), without kcompat's private binfmt_misc: that lives in a user namespace
    of kcompat's own runs, and is no handler docker or podman can use."""
    from kcompat.run import host_target

    return replace(host_target(profile), private_binfmt=False)


def judge(
    opened: OpenImage,
    opts: RunOptions,
    target: Target,
    checked: Checked,
    chosen_because: str | None = None,
    remote: bool = False,
    engine: str = "the engine",
) -> tuple[Prediction, str]:
    """The prediction `run` makes (kcompat.run.prepare: the same Command, the same
    refusals, --force and --no-predict unchanged) and the arch the entrypoint runs as."""
    command = command_of(opened, opts, checked)
    report, arch = first_judgement(opened, opts, target, command, chosen_because)
    if arch in BINFMT:
        check_emulation(arch, target, remote, engine)
    if not opts.predict or report is None:
        prediction = Prediction("not judged (--no-predict)", ())
    else:
        prediction = Prediction.of(report)
    if prediction.verdict == "incompatible" and not opts.force:
        refuse(opened.image.reference, prediction)
    return prediction, arch


def check_emulation(arch: str, target: Target, remote: bool = False,
                    engine: str = "the engine") -> None:  # fmt: skip
    """A foreign arch runs under an engine only through a host binfmt_misc handler with
    flag F and a static interpreter: none is a one-line error (as kcompat's own runner
    gives when it has no way to emulate) that names `kcompat binfmt install`."""
    if remote or target.runs_natively(arch):
        return
    handler = target.handler_for(arch)
    if handler is not None and handler.usable_in_container():
        return
    qemu = QEMU_NAMES.get(arch, arch)
    why = "this host has no binfmt_misc handler for it"
    if handler is not None:
        why = f"this host's binfmt_misc entry {handler.name} is not usable in containers " + (
            "(disabled)" if not handler.enabled
            else "(no flag F)" if "F" not in handler.flags
            else "(its interpreter is not static)"
        )  # fmt: skip
    hint = (
        f"as root: kcompat binfmt install {arch} (registers {target.qemu[arch]} with flag F)"
        if arch in target.qemu
        else f"apt-get install -y qemu-user-static (gives qemu-{qemu}-static), then as root: "
        f"kcompat binfmt install {arch}"
    )
    raise UnsupportedError(f"the image is {arch} and {why}, which {engine} needs to run it",
                           hint=hint)  # fmt: skip


# -- the engine's image --------------------------------------------------------------------


def find_engine(engine: Engine) -> str:
    path = shutil.which(engine.value)
    if path is None:
        pkg = "docker.io" if engine is Engine.docker else "podman"
        raise NotFoundError(f"--runtime {engine.value}: no {engine.value} command in PATH",
                            hint=f"install it (Debian: apt-get install -y {pkg})")  # fmt: skip
    return path


def is_remote(engine: Engine) -> bool:
    """Whether the engine's daemon is another machine's ($DOCKER_HOST, $CONTAINER_HOST
    naming a host other than this one's loopback): then this host's binfmt_misc says
    nothing about it."""
    from urllib.parse import urlsplit

    var = "DOCKER_HOST" if engine is Engine.docker else "CONTAINER_HOST"
    value = os.environ.get(var, "")
    if not value or value.startswith("unix://"):
        return False
    try:
        host = urlsplit(value).hostname or ""
    except ValueError:
        return True
    return not _loopback(host)


def _engine_has(binary: str, image_id: str) -> bool:
    r = subprocess.run([binary, "image", "inspect", "--format", "{{.Id}}", image_id],
                       capture_output=True, text=True, check=False)  # fmt: skip
    return r.returncode == 0 and r.stdout.strip().removeprefix("sha256:") == image_id.split(":")[-1]


def _loopback(host: str) -> bool:
    """HOST[:PORT] (or a bare host name or address) names this machine's loopback."""
    if host.startswith("["):
        name = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        name = host.split(":", 1)[0]
    else:
        name = host  # a bare name, or an IPv6 address without a port
    return name == "localhost" or name == "::1" or name.startswith("127.")


def engine_image(
    opened: OpenImage,
    engine: Engine,
    binary: str,
    options: Options,
    store: BlobStore,
) -> EngineImage:
    """How the engine names the judged image, after loading it when it must."""
    img = opened.image
    ref = parse_reference(img.reference)
    platform = None if opened.source.rootfs_dir() is not None else str(img.config.platform)
    if isinstance(ref, RegistryRef):
        if img.manifest_digest is None:  # pragma: no cover - a registry always has one
            raise UnsupportedError(f"{img.reference}: no manifest digest to run it by")
        insecure = _loopback(ref.registry) or ref.registry in options.insecure_hosts
        return EngineImage(f"{ref.name}@{img.manifest_digest}", platform, insecure)
    image_id = img.config_digest
    if image_id is not None and _engine_has(binary, image_id):
        return EngineImage(image_id, platform, how="present")
    root = opened.source.rootfs_dir()
    if root is not None:
        return EngineImage(_import(binary, root), None, how="imported")
    loaded = _load(binary, opened, store)
    return EngineImage(image_id if image_id and _engine_has(binary, image_id) else loaded,
                       platform, how="loaded")  # fmt: skip


def _engine_error(binary: str, what: str, stderr: str) -> ContainerError:
    last = next((x for x in reversed(stderr.strip().splitlines()) if x.strip()), "no output")
    return ContainerError(f"{Path(binary).name} {what} failed: {last.strip()}",
                          hint=f"check that {Path(binary).name} works: "
                          f"{Path(binary).name} info")  # fmt: skip


def _loaded_id(output: str) -> str | None:
    """The image id `docker load` ("Loaded image ID: sha256:...") or `podman load`
    ("Loaded image: sha256:..." or "Loaded image(s): NAME") printed."""
    for line in output.splitlines():
        _, sep, value = line.partition(":")
        if sep and line.startswith("Loaded image"):
            value = value.strip()
            if value:
                return value.split(",")[0].strip()
    return None


def _single_image_archive(opened: OpenImage) -> Path | None:
    """A docker-archive file that holds only the judged image: the engine loads it as
    it is."""
    ref = parse_reference(opened.image.reference)
    if not isinstance(ref, LocalRef) or ref.transport is not Transport.DOCKER_ARCHIVE:
        return None
    try:
        with tarfile.open(ref.path, "r:") as tar:
            member = tar.extractfile("manifest.json")
            entries = json.loads(member.read()) if member else None
    except (OSError, tarfile.TarError, ValueError, KeyError):
        return None
    return Path(ref.path) if isinstance(entries, list) and len(entries) == 1 else None


def _load(binary: str, opened: OpenImage, store: BlobStore) -> str:
    archive = _single_image_archive(opened)
    if archive is not None:
        r = subprocess.run([binary, "load", "--input", str(archive)], capture_output=True,
                           text=True, check=False)  # fmt: skip
        if r.returncode != 0:
            raise _engine_error(binary, "load", r.stderr or r.stdout)
        loaded = _loaded_id(r.stdout)
    else:
        out, err = _feed([binary, "load"], lambda stdin: write_docker_archive(stdin, opened, store))
        if out is None:
            raise _engine_error(binary, "load", err)
        loaded = _loaded_id(out)
    if loaded is None:
        raise ContainerError(f"{Path(binary).name} load printed no image id")
    return loaded


def write_docker_archive(out: IO[bytes], opened: OpenImage, store: BlobStore) -> None:
    """The judged image as `docker save` writes it (manifest.json, the config, each
    layer an uncompressed tar named by its diff_id), streamed to `out`. Each layer is
    inflated to a temporary file first (a tar member's size comes before its bytes) and
    its diff_id checked against the config's."""
    from kcompat.layers import check_diff_id, decompressed_chunks, diff_id_hash

    img = opened.image
    config = img.raw_config
    if config is None or img.config_digest is None:  # pragma: no cover - dir: is imported
        raise UnsupportedError(f"{img.reference} has no image config to load")
    config_name = img.config_digest.split(":")[1] + ".json"
    layers = opened.layer_inputs()
    names = [f"{(li.diff_id or li.digest).split(':')[1]}/layer.tar" for li in layers]
    manifest = [{"Config": config_name, "RepoTags": None, "Layers": names}]
    tmp_root = store.root / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "manifest.json", json.dumps(manifest).encode())
        _add(tar, config_name, config)
        written: set[str] = set()
        for li, name in zip(layers, names):
            if name in written:  # the same layer twice: one member, listed twice
                continue
            written.add(name)
            with tempfile.TemporaryFile(dir=tmp_root) as tmp:
                h = diff_id_hash()
                for chunk in decompressed_chunks(li.open(), f"layer {li.digest}", h):
                    tmp.write(chunk)
                check_diff_id(li.digest, f"sha256:{h.hexdigest()}", li.diff_id)
                info = tarfile.TarInfo(name)
                info.size = tmp.tell()
                info.mode = 0o644
                tmp.seek(0)
                tar.addfile(info, tmp)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _import(binary: str, root: Path) -> str:
    """A plain root file system as an image of the engine (`import`, a tar on stdin)."""

    def write(stdin: IO[bytes]) -> None:
        with tarfile.open(fileobj=stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for entry in sorted(root.iterdir()):
                tar.add(entry, arcname=entry.name)  # symlinks as links, never followed

    out, err = _feed([binary, "import", "-"], write)
    if out is None:
        raise _engine_error(binary, "import", err)
    image_id = out.strip().splitlines()[-1:]
    if not image_id or not image_id[0]:
        raise ContainerError(f"{Path(binary).name} import printed no image id")
    return image_id[0]


def _feed(argv: list[str], write: Callable[[IO[bytes]], None]) -> tuple[str | None, str]:
    """Run `argv` with what `write` writes on its stdin; (stdout, stderr), stdout None
    when it failed. Its output goes to files, so that it can never block the writer."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=err)
        assert proc.stdin is not None
        try:
            try:
                write(proc.stdin)
            finally:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
        except BrokenPipeError:  # the engine stopped reading: its own words say why
            pass
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        code = proc.wait()
        out.seek(0)
        err.seek(0)
        text = out.read().decode(errors="replace")
        return (text if code == 0 else None), err.read().decode(errors="replace") or text


# -- credentials ---------------------------------------------------------------------------


def write_auth(engine: Engine, registry: str, creds: Credentials, where: Path) -> Path:
    """--creds for the engine: podman reads an auth file (--authfile), docker a config
    directory ($DOCKER_CONFIG): both with one `auths` entry, written 0600 in `where`."""
    key = "https://index.docker.io/v1/" if registry == DOCKER_HUB else registry
    token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    path = where / ("config.json" if engine is Engine.docker else "auth.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"auths": {key: {"auth": token}}}, f)
    return path


# -- the whole hand-off --------------------------------------------------------------------


def prepare_handoff(
    opened: OpenImage,
    opts: RunOptions,
    checked: Checked,
    engine: Engine,
    target: Target,
    options: Options,
    runtime_args: tuple[str, ...] = (),
    chosen_because: str | None = None,
    store: BlobStore | None = None,
    binary: str | None = None,
) -> Handoff:
    """Judge the image for this host as `run` does, refuse what `run` refuses, then make
    the engine hold exactly that image and build its argv."""
    binary = binary or find_engine(engine)
    remote = is_remote(engine)
    prediction, _arch = judge(opened, opts, target, checked, chosen_because, remote,
                              engine.value)
    notes: list[str] = []
    if remote:
        var = "DOCKER_HOST" if engine is Engine.docker else "CONTAINER_HOST"
        notes.append(f"${var} names another machine: the prediction and the binfmt_misc "
                     "check describe this one")  # fmt: skip
    store = store or BlobStore()
    image = engine_image(opened, engine, binary, options, store)
    if image.how == "loaded":
        notes.append(f"loaded {opened.image.reference} into {engine.value} as {image.ref}")
    elif image.how == "imported":
        notes.append(f"imported {opened.image.reference} into {engine.value} as {image.ref}")
    ref = parse_reference(opened.image.reference)
    if (engine is Engine.docker and isinstance(ref, RegistryRef) and image.insecure
            and not _loopback(ref.registry)):  # fmt: skip
        notes.append(f"docker pulls from {ref.registry} over plain HTTP only if its daemon "
                     "lists it in insecure-registries (daemon.json)")  # fmt: skip
    env = None
    scratch = None
    authfile = None
    if options.creds is not None and isinstance(ref, RegistryRef):
        scratch = Path(tempfile.mkdtemp(prefix="kcompat-auth-"))
        authfile = write_auth(engine, ref.registry, options.creds, scratch)
        if engine is Engine.docker:
            env = (*os.environ.items(), ("DOCKER_CONFIG", str(scratch)))
    argv = engine_argv(engine, opts, checked, image, runtime_args, binary=binary,
                       authfile=authfile)  # fmt: skip
    return Handoff(tuple(argv), image, prediction, env, tuple(notes), scratch)


@contextlib.contextmanager
def _forwarding(pid: int) -> Iterator[None]:
    """Signals to kcompat go on to the engine's CLI while it runs. ^C and ^\\ from the
    terminal reach it already (it is in kcompat's foreground process group), so those
    are passed on only when they cannot have come from the terminal."""

    def forward(sig: int, _frame: object) -> None:
        if sig in _KEYBOARD and _in_foreground():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    saved = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _in_foreground() -> bool:
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


def execute(h: Handoff) -> int:
    """Run the engine with kcompat's stdio; its exit status (128+N: signal N)."""
    try:
        try:
            proc = subprocess.Popen(list(h.argv), env=dict(h.env) if h.env is not None else None)
        except OSError as e:
            raise ContainerError(f"cannot start {h.argv[0]}: {e.strerror}") from None
        with _forwarding(proc.pid):
            while True:
                try:
                    code = proc.wait()
                    break
                except InterruptedError:  # pragma: no cover - PEP 475 retries waitpid
                    continue
        return 128 - code if code < 0 else code
    finally:
        if h.scratch is not None:
            shutil.rmtree(h.scratch, ignore_errors=True)
