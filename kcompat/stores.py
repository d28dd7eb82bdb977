"""Images in a container engine's own store: `docker-daemon:` and `containers-storage:`.

docker-daemon: the Docker Engine API (kcompat.engine). `GET /images/{name}/json` tells
whether the image is there, its id and RepoDigests; `GET /images/{name}/get` is the
`docker save` tar, read by the docker-archive reader (kcompat.archives).

containers-storage: podman's, buildah's and skopeo's store, read in place from its own
metadata, read-only (nothing is written, no podman process is needed), as
containers/storage and containers/image read it:
- `<root>/<driver>-images/images.json`: the images (id, names, digest, top layer) and
  their "big data" items, each a file in `<driver>-images/<id>/` named by
  `makeBigDataBaseName` (store.go): the key itself when it has only `[.0-9a-z]`
  characters, else "=" + base64(key). The manifest is the key `manifest` (or
  `manifest-<digest>`), the config the key `<config digest>` (containers/image
  storage/storage_src.go).
- `<root>/<driver>-layers/layers.json`: each layer's id, parent, diff-digest (the
  uncompressed digest, the config's diff_id) and diff-size.
- a layer's files: overlay `<root>/overlay/<id>/diff` (and the lower layers' diff
  directories, found through `overlay/<id>/lower` and the `overlay/l/` links, which
  the driver's DiffGetter also searches), vfs `<root>/vfs/dir/<id>`.
- `<root>/<driver>-layers/<id>.tar-split.gz`: the layer tar's headers and padding as
  recorded when it was applied (vbatts/tar-split: JSON lines, type 2 a raw segment,
  type 1 a file whose bytes are on disk). Replaying it with the files' bytes gives the
  original layer tar byte for byte (tar-split asm.WriteOutputTarStream, what
  containers/storage layerStore.Diff does), so its sha256 is the diff_id: the layer is
  verified like any other, and overlay's whiteouts (0/0 character devices, the opaque
  xattr) never need mapping back to `.wh.` entries: the original `.wh.` headers are in
  the tar-split.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import gzip
import http.client
import io
import json
import os
import posixpath
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, cast

from kcompat.archives import DOCKER_LAYER_TAR, DockerArchiveSource
from kcompat.engine import EngineClient
from kcompat.errors import (
    AuthError,
    BadImageError,
    IntegrityError,
    KcompatError,
    LocalIOError,
    NetworkError,
    NotFoundError,
    UnsupportedError,
    UsageError,
)
from kcompat.image import (
    OCI_MANIFEST,
    Descriptor,
    ResolvedImage,
    check_digest,
    sha256_digest,
)
from kcompat.layers import READ_BUFFER, VerifyingReader
from kcompat.platform import Platform, platform_from_oci
from kcompat.reference import (
    DOCKER_HUB,
    DaemonRef,
    LocalRef,
    StorageRef,
    Transport,
    parse_docker_reference,
)
from kcompat.source import MAX_SMALL_BLOB, Chooser, Options, Source
from kcompat.store import default_cache_dir

OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DAMAGED = "the store is damaged; remove the image and pull it again"
MAX_METADATA = 256 * 1024 * 1024  # images.json / layers.json of a store with many images


def open_store_source(ref: DaemonRef | StorageRef, options: Options) -> Source:
    if isinstance(ref, DaemonRef):
        return DockerDaemonSource(ref, options)
    return ContainersStorageSource(ref, options)


def _familiar(name: str) -> str:
    """`docker.io/library/busybox:1` as docker shows it: `busybox:1`."""
    if name.startswith(f"{DOCKER_HUB}/"):
        name = name[len(DOCKER_HUB) + 1 :]
        if name.startswith("library/") and name.count("/") == 1:
            name = name[len("library/") :]
    return name


# -- docker-daemon: -------------------------------------------------------------------


class DockerDaemonSource(Source):
    """An image in a Docker Engine, read through `docker save` (ImageSave)."""

    def __init__(self, ref: DaemonRef, options: Options) -> None:
        self.ref = ref
        self.where = str(ref)
        self.client = EngineClient()
        self.client.ping()
        self.info = self.client.image_inspect(ref.query, what=_familiar(ref.query))
        self.image_id: str = self.info["Id"]
        self._archive: DockerArchiveSource | None = None
        self._spool: IO[bytes] | None = None
        self._resolved: ResolvedImage | None = None

    def _platform(self) -> Platform | None:
        os_name, arch = self.info.get("Os"), self.info.get("Architecture")
        if not isinstance(os_name, str) or not isinstance(arch, str) or not arch:
            return None
        variant = self.info.get("Variant")
        return platform_from_oci(os_name, arch, variant if isinstance(variant, str) else None)

    def _repo_digest(self) -> str | None:
        """The registry manifest digest docker recorded for this reference's repository
        (RepoDigests, what `docker images --digests` shows); None for an image that
        came from no registry, or one named by id."""
        name = self.ref.name
        if name is None:
            return None
        for entry in self.info.get("RepoDigests") or []:
            repo, _, digest = str(entry).partition("@")
            try:
                named = parse_docker_reference(repo)
            except KcompatError:
                continue
            if named.name == name.name and (name.digest is None or name.digest == digest):
                return digest
        return None

    def _export(self) -> DockerArchiveSource:
        """`docker save` into an unnamed file in kcompat's cache directory.

        Why a file and not the stream: the docker-archive reader needs random access.
        `docker save` writes manifest.json, which names the config and the layers'
        order, after the layers (moby image/tarexport/save.go), and the layers are then
        read by offset, by several threads and forked scan workers at once. The file is
        unlinked from the start (O_TMPFILE, or created and removed at once by
        tempfile.TemporaryFile), so it disappears when kcompat closes it or dies, and is
        opened again through /proc/self/fd, which forked workers inherit.
        """
        tmp_dir = default_cache_dir() / "tmp"
        try:
            tmp_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            spool = tempfile.TemporaryFile(dir=tmp_dir, prefix="docker-save-")  # noqa: SIM115
        except OSError as e:
            raise LocalIOError(
                f"cannot create a file in {tmp_dir}: {e.strerror}",
                hint="set KCOMPAT_CACHE to a writable directory",
            ) from None
        self._spool = spool
        # By NAME:TAG as `docker save NAME:TAG` (its manifest.json then lists the tag),
        # else by the id; resolve() checks that what came is the image inspected.
        tagged = self.ref.name is not None and self.ref.name.tag is not None
        name = self.ref.query if tagged else self.image_id
        resp = self.client.image_export(name, what=_familiar(name))
        try:
            while True:
                chunk = resp.read(READ_BUFFER)
                if not chunk:
                    break
                spool.write(chunk)
            spool.flush()
        except (OSError, http.client.HTTPException) as e:
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise LocalIOError(
                    f"no space left in {tmp_dir} for the export of {self.where}",
                    hint="free space there or set KCOMPAT_CACHE to a larger disk",
                ) from None
            raise NetworkError(
                f"the Docker daemon's export of {self.where} ended early ({type(e).__name__})",
                hint="see the daemon's log (journalctl -u docker) and try again",
            ) from None
        finally:
            resp.close()
        path = f"/proc/self/fd/{spool.fileno()}"
        try:
            archive = DockerArchiveSource(LocalRef(Transport.DOCKER_ARCHIVE, path))
        except KcompatError as e:
            raise BadImageError(
                f"{self.where}: the daemon's export is not a docker-archive "
                f"({e.message.replace(str(LocalRef(Transport.DOCKER_ARCHIVE, path)), 'it')})",
                hint="check the daemon (docker save) and try again",
            ) from None
        archive.where = self.where
        return archive

    def _opened(self) -> DockerArchiveSource:
        if self._archive is None:
            archive = self._export()
            self._archive = archive
            if self._resolved is not None:  # resolved from the record: read the archive's
                exported = archive.resolve(None, self._resolved.config.platform)
                if exported.layers != self._resolved.layers:
                    raise IntegrityError(
                        f"{self.where}: the daemon exported other layers than those it "
                        f"recorded for image {self.image_id}",
                        hint="run the command again",
                    )
        return self._archive

    # A record of what the export of an image id held (config, layers), so that a check
    # whose layers were all scanned before needs no export: the id names content (the
    # config's digest in the classic store, the manifest's in the containerd store).
    def _records(self) -> Any:
        from kcompat.layerscan import ResultCache, code_key

        here = Path(__file__).resolve().parent
        key = code_key([here / "stores.py", here / "sources.py", here / "source.py",
                        here / "archives.py", here / "image.py"])
        return ResultCache(default_cache_dir(), "docker-daemon", key)

    def _recorded(self) -> ResolvedImage | None:
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", self.image_id):
            return None
        image = self._records().read(self.image_id)
        if not isinstance(image, ResolvedImage) or image.raw_config is None:
            return None
        if sha256_digest(image.raw_config) != image.config_digest:
            return None
        if not self._same_image(image):
            return None
        from kcompat.layerscan import LayerCache

        scans = LayerCache(default_cache_dir())
        if not all(scans.path(d.digest).is_file() for d in image.layers):
            return None  # layers to scan: export now, once, before any scan worker forks
        return image

    def _same_image(self, image: ResolvedImage) -> bool:
        """The export is of the image inspected: its config is the id (classic store),
        or its layers are the inspected RootFS.Layers (containerd store: the id is the
        manifest's digest)."""
        rootfs = self.info.get("RootFS")
        inspected = rootfs.get("Layers") if isinstance(rootfs, dict) else None
        return image.config_digest == self.image_id or inspected == list(image.config.diff_ids)

    def resolve(
        self, want: Platform | None, default: Platform, choose: Chooser | None = None
    ) -> ResolvedImage:
        have = self._platform()
        if want is not None and have is not None and not want.matches(have):
            raise NotFoundError(  # before the export: the daemon says what it holds
                f"no {want} in {self.where}; available: {have} (a single-platform image)",
                hint="choose it with --platform or drop --platform",
            )
        image = self._recorded()
        if image is None:
            image = self._opened().resolve(want, default, choose)
            if not self._same_image(image):
                raise IntegrityError(
                    f"{self.where}: the daemon exported {image.config_digest}, not the "
                    f"image {self.image_id} it showed (retagged meanwhile?)",
                    hint="run the command again",
                )
            if re.fullmatch(r"sha256:[0-9a-f]{64}", self.image_id):
                self._records().write(self.image_id, replace(image, reference=""))
        elif want is not None and not want.matches(image.config.platform):
            raise NotFoundError(
                f"no {want} in {self.where}; available: {image.config.platform}",
                hint="choose it with --platform or drop --platform",
            )
        self._resolved = image
        return replace(image, reference=self.where, manifest_digest=self._repo_digest())

    def open_layer(self, desc: Descriptor) -> VerifyingReader:
        return self._opened().open_layer(desc)

    def close(self) -> None:
        if self._archive is not None:
            self._archive.close()
            self._archive = None
        if self._spool is not None:
            self._spool.close()
            self._spool = None


# -- containers-storage: --------------------------------------------------------------

SUPPORTED_DRIVERS = ("overlay", "vfs")
# containers/storage drivers/driver_linux.go Priority; a store whose storage.conf names
# no driver has the one whose <root>/<driver> directory exists (ScanPriorDrivers).
DRIVER_PRIORITY = ("overlay", "aufs", "btrfs", "zfs", "vfs")


def _toml_storage_table(text: str) -> dict[str, Any]:
    """The [storage] table of a storage.conf: tomllib where Python has it (3.11+), else
    the simple form containers-storage.conf(5) shows (`key = "string"` lines)."""
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.9/3.10
        table: dict[str, Any] = {}
        section = ""
        for raw in text.splitlines():
            line = raw.split("#", 1)[0].strip()
            if line.startswith("["):
                section = line.strip("[] ")
            elif "=" in line and section == "storage":
                key, _, value = line.partition("=")
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                    table[key.strip()] = value[1:-1]
        return table
    doc = tomllib.loads(text)
    storage = doc.get("storage")
    return storage if isinstance(storage, dict) else {}


def _rootless() -> bool:
    return os.geteuid() != 0


def _user_config_dir() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")


def storage_conf_path() -> Path | None:
    """The storage.conf containers/storage reads (types/options.go DefaultConfigFile):
    $CONTAINERS_STORAGE_CONF; as root /etc/containers/storage.conf, else
    /usr/share/containers/storage.conf; rootless the user's own
    ($XDG_CONFIG_HOME or ~/.config)/containers/storage.conf."""
    env = os.environ.get("CONTAINERS_STORAGE_CONF")
    if env:
        return Path(env)
    if _rootless():
        user = _user_config_dir() / "containers" / "storage.conf"
        return user if user.is_file() else None
    for path in (Path("/etc/containers/storage.conf"), Path("/usr/share/containers/storage.conf")):
        if path.is_file():
            return path
    return None


def _expand(path: str) -> str:
    """containers/storage expandEnvPath: $HOME, $UID and other variables, ~."""
    path = path.replace("$UID", str(os.geteuid())).replace("${UID}", str(os.geteuid()))
    return os.path.expanduser(os.path.expandvars(path))


def _read_conf() -> tuple[dict[str, Any], Path | None]:
    path = storage_conf_path()
    if path is None:
        return {}, None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, path
    except OSError as e:
        raise LocalIOError(
            f"cannot read {path}: {e.strerror}",
            hint="fix its permissions or set CONTAINERS_STORAGE_CONF",
        ) from None
    try:
        return _toml_storage_table(text), path
    except ValueError as e:
        raise UsageError(
            f"{path} is not valid TOML ({e})",
            hint="fix it, or name the store: containers-storage:[DRIVER@ROOT]NAME",
        ) from None


@dataclass(frozen=True)
class StoreLocation:
    driver: str
    root: Path
    how: str  # where the root came from, for messages


def locate_store(ref: StorageRef) -> StoreLocation:
    """The store's graph root and driver: the reference's [DRIVER@ROOT], else
    storage.conf's driver and graphroot (rootless: its rootless_storage_path or
    ~/.local/share/containers/storage), else the defaults."""
    conf: dict[str, Any] = {}
    conf_path: Path | None = None
    if ref.root is None or ref.driver is None:
        conf, conf_path = _read_conf()
    if ref.root is not None:
        root, how = Path(ref.root), "given"
    else:
        graphroot = conf.get("graphroot")
        rootless_path = conf.get("rootless_storage_path")
        own_conf = conf_path is not None and (
            os.environ.get("CONTAINERS_STORAGE_CONF") or not _rootless()
        )
        if isinstance(graphroot, str) and graphroot and (own_conf or _rootless()):
            root, how = Path(_expand(graphroot)), f"graphroot in {conf_path}"
        elif _rootless() and isinstance(rootless_path, str) and rootless_path:
            root, how = Path(_expand(rootless_path)), f"rootless_storage_path in {conf_path}"
        elif _rootless():
            data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
            root, how = Path(data) / "containers" / "storage", "the rootless default"
        else:
            root, how = Path("/var/lib/containers/storage"), "the default"
    driver = ref.driver or (conf.get("driver") if isinstance(conf.get("driver"), str) else None)
    if not driver:
        found = [d for d in DRIVER_PRIORITY if (root / d).is_dir()]
        if not found:
            raise NotFoundError(
                f"no containers-storage store at {root} ({how}): it has no directory of a "
                f"storage driver ({', '.join(DRIVER_PRIORITY)})",
                hint="name the store as containers-storage:[overlay@GRAPHROOT]NAME "
                "('podman info --format {{.Store.GraphRoot}}' shows it)",
            )
        if len(found) > 1:  # containers/storage refuses to guess too
            raise UsageError(
                f"the containers-storage store at {root} holds data of several drivers "
                f"({', '.join(found)})",
                hint=f"name one: containers-storage:[{found[0]}@{root}]NAME",
            )
        driver = found[0]
    if driver == "overlay2":  # containers/storage's alias
        driver = "overlay"
    if driver not in SUPPORTED_DRIVERS:
        raise UnsupportedError(
            f"containers-storage driver {driver!r} (store {root}) is not supported; "
            f"kcompat reads {' and '.join(SUPPORTED_DRIVERS)}",
            hint="copy the image out: skopeo copy containers-storage:NAME oci:DIR, "
            "then check oci:DIR",
        )
    return StoreLocation(driver, root, how)


def big_data_name(key: str) -> str:
    """containers/storage store.go makeBigDataBaseName: the file name of a big data item."""
    if key and all(c == "." or "0" <= c <= "9" or "a" <= c <= "z" for c in key):
        return key
    return "=" + base64.b64encode(key.encode("utf-8")).decode("ascii")


@contextlib.contextmanager
def _read_lock(path: Path) -> Iterator[None]:
    """A shared lock on one of the store's lock files, as containers/storage's readers
    take (pkg/lockfile: fcntl F_RDLCK on the whole file); absent or unreadable: none.
    Opened read-only: taking it changes nothing on disk."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.lockf(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


@dataclass(frozen=True)
class StoreLayer:
    id: str
    parent: str | None
    diff_digest: str | None
    diff_size: int | None
    incomplete: bool


class _TarSplitStream(io.RawIOBase):
    """A layer's tar, replayed from its tar-split and the files in the store, as
    tar-split's asm.WriteOutputTarStream does: segments are copied, a file entry with a
    size is read from the first diff directory that has it."""

    def __init__(self, tar_split: Path, dirs: list[bytes], what: str) -> None:
        super().__init__()
        self._what = what
        self._dirs = dirs
        self._real = [os.path.realpath(d) for d in dirs]
        try:
            self._meta = gzip.GzipFile(tar_split, "rb")
        except OSError as e:
            raise NotFoundError(
                f"{what}: cannot open {tar_split} ({e.strerror})", hint=DAMAGED
            ) from None
        self._pending = memoryview(b"")
        self._file: io.BufferedReader | None = None
        self._file_name = ""
        self._left = 0

    def readable(self) -> bool:
        return True

    def _open_member(self, raw_name: bytes) -> io.BufferedReader:
        rel = posixpath.normpath(b"/" + raw_name).lstrip(b"/")
        for top, real_top in zip(self._dirs, self._real):
            path = os.path.join(top, rel)
            real = os.path.realpath(path)
            if real != real_top and not real.startswith(real_top + b"/"):
                raise BadImageError(
                    f"{self._what}: {os.fsdecode(rel)} leads out of the layer's directory",
                    hint="the store holds a hostile layer; remove the image (podman rmi)",
                )
            try:
                return open(real, "rb")
            except FileNotFoundError:
                continue
            except OSError as e:
                raise LocalIOError(f"{self._what}: cannot read {os.fsdecode(path)} "
                                   f"({e.strerror})",
                                   hint="run as the store's owner") from None  # fmt: skip
        raise NotFoundError(
            f"{self._what}: {os.fsdecode(rel)} is missing from the store",
            hint=DAMAGED,
        )

    def _next_entry(self) -> bool:
        try:
            line = self._meta.readline()
        except (OSError, EOFError) as e:
            raise BadImageError(
                f"{self._what}: its tar-split is corrupt ({type(e).__name__})", hint=DAMAGED
            ) from None
        if not line.strip():
            return bool(line)  # a blank line: go on; nothing: the end
        try:
            entry = json.loads(line)
            kind = entry["type"]
            payload = base64.b64decode(entry.get("payload") or b"")
            raw = entry.get("name_raw")
            name = base64.b64decode(raw) if raw else str(entry.get("name") or "").encode()
            size = int(entry.get("size") or 0)
        except (ValueError, KeyError, TypeError) as e:
            raise BadImageError(
                f"{self._what}: its tar-split has a bad entry ({e})", hint=DAMAGED
            ) from None
        if kind == 2:
            self._pending = memoryview(payload)
        elif kind == 1 and size > 0:
            self._file = self._open_member(name)
            self._file_name = os.fsdecode(name)
            self._left = size
        return True

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        while True:
            if self._pending:
                n = min(len(out), len(self._pending))
                out[:n] = self._pending[:n]
                self._pending = self._pending[n:]
                return n
            if self._file is not None:
                if self._left == 0:
                    extra = self._file.read(1)
                    self._file.close()
                    self._file = None
                    if extra:
                        raise IntegrityError(
                            f"{self._what}: {self._file_name} in the store is longer than "
                            "the layer recorded",
                            hint="the image's files were changed in the store; pull it again",
                        )
                    continue
                n = self._file.readinto(out[: min(len(out), self._left)])
                if not n:
                    raise IntegrityError(
                        f"{self._what}: {self._file_name} in the store is shorter than the "
                        "layer recorded",
                        hint="the image's files were changed in the store; pull it again",
                    )
                self._left -= n
                return int(n)
            if not self._next_entry():
                return 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._meta.close()
        super().close()


class ContainersStorageSource(Source):
    """An image in a containers-storage store, read-only from its own files."""

    def __init__(self, ref: StorageRef, options: Options) -> None:
        self.ref = ref
        self.where = str(ref)
        self.loc = locate_store(ref)
        self.root = self.loc.root
        self.driver = self.loc.driver
        self._images_dir = self.root / f"{self.driver}-images"
        self._layers_dir = self.root / f"{self.driver}-layers"
        with _read_lock(self._images_dir / "images.lock"):
            images = self._load_json(self._images_dir / "images.json", "images")
        self.image = self._find(images)
        self.image_id = str(self.image["id"])
        with _read_lock(self._layers_dir / "layers.lock"):
            layers = self._load_json(self._layers_dir / "layers.json", "layers")
        self._layers = self._parse_layers(layers)
        self._by_digest: dict[str, StoreLayer] = {}

    # -- metadata

    def _store_words(self) -> str:
        return f"the containers-storage store at {self.root} ({self.driver})"

    def _load_json(self, path: Path, what: str) -> list[dict[str, Any]]:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_METADATA + 1)
        except FileNotFoundError:
            if what == "layers" or not self.root.is_dir():
                raise NotFoundError(
                    f"no containers-storage store at {self.root} ({self.loc.how}): "
                    f"{path} does not exist",
                    hint="name the store as containers-storage:[overlay@GRAPHROOT]NAME "
                    "('podman info --format {{.Store.GraphRoot}}' shows it)",
                ) from None
            data = b"[]"  # a store whose driver directory exists but holds no image yet
        except PermissionError:
            raise AuthError(
                f"permission denied reading {path}, in {self._store_words()}",
                hint="run as the store's owner (root for /var/lib/containers/storage), "
                "or name your own store",
            ) from None
        except OSError as e:
            raise LocalIOError(f"cannot read {path}: {e.strerror}") from None
        if len(data) > MAX_METADATA:
            raise BadImageError(f"{path} is over {MAX_METADATA} bytes")
        try:
            doc = json.loads(data.decode("utf-8")) if data.strip() else []
        except ValueError as e:
            raise BadImageError(
                f"{path} is not valid JSON ({e})", hint="the store is damaged; see podman's log"
            ) from None
        if not isinstance(doc, list) or not all(isinstance(x, dict) for x in doc):
            raise BadImageError(f"{path} is not a list of {what}")
        return doc

    def _find(self, images: list[dict[str, Any]]) -> dict[str, Any]:
        """The image the reference names, as containers/image storage_reference.go
        resolveImage finds it: by id (or an unambiguous id prefix), else by name (the
        store's names are normalised: docker.io/library/busybox:latest,
        localhost/app:dev), else by a digest of an image with that repository."""
        ref = self.ref
        named = ref.name
        if ref.image_id is not None:
            hits = [i for i in images if str(i.get("id", "")).startswith(ref.image_id)]
            if len(hits) == 1:
                image = hits[0]
                if named is not None and not ref.maybe_name and not self._has_repo(image):
                    raise NotFoundError(
                        f"{self.where}: image {ref.image_id} is not named {named.name}",
                        hint="'podman images' lists the store's images and their names",
                    )
                return image
            if len(hits) > 1 and not ref.maybe_name:
                raise UsageError(f"{self.where}: {len(hits)} images have ids starting "
                                 f"{ref.image_id}", hint="give more of the id")  # fmt: skip
            if not ref.maybe_name:
                raise self._not_found(ref.image_id)
        assert named is not None
        want = str(named)
        for image in images:
            if want in (image.get("names") or []):
                return image
        if named.digest is not None:
            for image in images:
                digests = [*(image.get("digests") or []), image.get("digest")]
                if named.digest in digests and self._has_repo(image):
                    return image
        raise self._not_found(_familiar(want))

    def _has_repo(self, image: dict[str, Any]) -> bool:
        assert self.ref.name is not None
        repo = self.ref.name.name
        for name in image.get("names") or []:
            try:
                if parse_docker_reference(str(name)).name == repo:
                    return True
            except KcompatError:
                continue
        return False

    def _not_found(self, what: str) -> NotFoundError:
        return NotFoundError(
            f"no image {what!r} in {self._store_words()}",
            hint="'podman images' lists the store's images (their names are full, e.g. "
            "localhost/NAME:TAG or docker.io/library/NAME:TAG)",
        )

    @staticmethod
    def _parse_layers(layers: list[dict[str, Any]]) -> dict[str, StoreLayer]:
        out: dict[str, StoreLayer] = {}
        for layer in layers:
            lid = layer.get("id")
            if not isinstance(lid, str):
                continue
            size = layer.get("diff-size")
            flags = layer.get("flags") or {}
            out[lid] = StoreLayer(
                lid,
                layer.get("parent") if isinstance(layer.get("parent"), str) else None,
                layer.get("diff-digest") if isinstance(layer.get("diff-digest"), str) else None,
                size if isinstance(size, int) and size >= 0 else None,
                isinstance(flags, dict) and bool(flags.get("incomplete")),
            )
        return out

    def _chain(self) -> list[StoreLayer]:
        """The image's layers, lowest first, from its top layer through the parents."""
        chain: list[StoreLayer] = []
        lid = self.image.get("layer")
        while isinstance(lid, str) and lid:
            layer = self._layers.get(lid)
            if layer is None:
                raise NotFoundError(
                    f"{self.where}: layer {lid} is missing from {self._store_words()}",
                    hint=DAMAGED,
                )
            if layer.incomplete:
                raise BadImageError(
                    f"{self.where}: layer {lid} is incomplete (an interrupted pull)",
                    hint="pull the image again (podman pull)",
                )
            chain.append(layer)
            if len(chain) > len(self._layers):
                raise BadImageError(f"{self.where}: the layers' parents form a loop")
            lid = layer.parent
        return chain[::-1]

    def _big_data(self, key: str) -> bytes | None:
        names = self.image.get("big-data-names") or []
        if key not in names:
            return None
        path = self._images_dir / self.image_id / big_data_name(key)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_SMALL_BLOB + 1)
        except FileNotFoundError:
            raise NotFoundError(f"{self.where}: {key} is missing ({path})", hint=DAMAGED) from None
        except PermissionError:
            raise AuthError(f"permission denied reading {path}",
                            hint="run as the store's owner") from None  # fmt: skip
        if len(data) > MAX_SMALL_BLOB:
            raise BadImageError(f"{self.where}: {key} is over {MAX_SMALL_BLOB} bytes")
        return data

    # -- Source

    def _root(self) -> tuple[bytes, str | None, str | None]:
        data = None
        digest = self.ref.name.digest if self.ref.name is not None else None
        if digest is not None and not self.ref.maybe_name:
            data = self._big_data(f"manifest-{digest}")
        if data is None:
            data = self._big_data("manifest")
        if data is None:
            raise BadImageError(
                f"{self.where}: the store holds no manifest for image {self.image_id}",
                hint="copy it with skopeo copy containers-storage:... oci:DIR and check that",
            )
        return data, None, sha256_digest(data)

    def _manifest_blob(self, desc: Descriptor) -> bytes:
        data = self._big_data(f"manifest-{desc.digest}")
        if data is None:
            raise NotFoundError(
                f"{self.where}: the store holds no manifest {desc.digest} for this image",
                hint="'podman images --digests' lists the store's images; check one by id",
            )
        check_digest(data, desc.digest, f"{self.where}: manifest {desc.digest}")
        return data

    def _small_blob(self, desc: Descriptor) -> bytes:
        data = self._big_data(desc.digest)
        if data is None:
            raise NotFoundError(f"{self.where}: config {desc.digest} is not in the store",
                                hint=DAMAGED)  # fmt: skip
        check_digest(data, desc.digest, f"{self.where}: config {desc.digest}")
        return data

    def resolve(
        self, want: Platform | None, default: Platform, choose: Chooser | None = None
    ) -> ResolvedImage:
        image = super().resolve(want, default, choose)
        chain = self._chain()
        diff_ids = image.config.diff_ids
        if len(chain) != len(diff_ids):
            raise BadImageError(
                f"{self.where}: the store has {len(chain)} layers for the image, its config "
                f"lists {len(diff_ids)} diff_ids",
                hint=DAMAGED,
            )
        media = OCI_LAYER_TAR if image.manifest_media_type == OCI_MANIFEST else DOCKER_LAYER_TAR
        descs = []
        for layer, diff_id in zip(chain, diff_ids):
            if layer.diff_digest is not None and layer.diff_digest != diff_id:
                raise IntegrityError(
                    f"{self.where}: layer {layer.id} has diff-digest {layer.diff_digest} in "
                    f"the store, the config says {diff_id}",
                    hint=DAMAGED,
                )
            size = layer.diff_size if layer.diff_size is not None else self._tar_size(layer)
            self._by_digest[diff_id] = layer
            descs.append(Descriptor(media, diff_id, size))
        # The layers as the store holds them: uncompressed, named by their diff_ids (the
        # registry's compressed blobs are not kept); the manifest is the stored one.
        return replace(image, layers=tuple(descs))

    def _tar_split(self, layer: StoreLayer) -> Path:
        return self._layers_dir / f"{layer.id}.tar-split.gz"

    def _diff_dirs(self, layer: StoreLayer) -> list[bytes]:
        """Where the layer's files are, in the order the driver's file getter looks."""
        if self.driver == "vfs":  # vfs/dir/<id>: the layer applied over a copy of its parent
            return [os.fsencode(self.root / "vfs" / "dir" / layer.id)]
        top = self.root / "overlay" / layer.id
        if (top / "composefs-data").exists():
            raise UnsupportedError(
                f"{self.where}: layer {layer.id} is stored as composefs, which kcompat "
                "cannot read without mounting it",
                hint="copy the image out: skopeo copy containers-storage:... oci:DIR",
            )
        dirs = [os.fsencode(top / "diff")]
        try:
            lower = (top / "lower").read_text().strip()
        except FileNotFoundError:
            lower = ""
        except OSError as e:
            raise LocalIOError(f"cannot read {top / 'lower'}: {e.strerror}") from None
        for link in filter(None, lower.split(":")):
            # drivers/overlay getLowerDirs: "l/SHORT" is a symlink to "../<id>/diff"
            path = self.root / "overlay" / link
            try:
                target = os.readlink(path)
            except OSError:
                continue
            dirs.append(os.fsencode(os.path.normpath(path.parent / target)))
        return dirs

    def _layer_words(self, layer: StoreLayer) -> str:
        return f"{self.where}: layer {layer.id}"

    def _present(self, layer: StoreLayer) -> None:
        if not self._tar_split(layer).is_file():
            raise UnsupportedError(
                f"{self._layer_words(layer)} has no tar-split in the store "
                f"({self._tar_split(layer).name}), so its tar cannot be rebuilt exactly",
                hint="copy the image out: skopeo copy containers-storage:... oci:DIR, "
                "then check oci:DIR",
            )
        main = self._diff_dirs(layer)[0]
        if not os.path.isdir(main):
            raise NotFoundError(
                f"{self._layer_words(layer)}: {os.fsdecode(main)} is missing", hint=DAMAGED
            )

    def _open(self, layer: StoreLayer) -> _TarSplitStream:
        self._present(layer)
        return _TarSplitStream(self._tar_split(layer), self._diff_dirs(layer),
                               self._layer_words(layer))  # fmt: skip

    def _tar_size(self, layer: StoreLayer) -> int:
        """The layer tar's length when layers.json does not record it: the replayed
        stream's, counted without reading the files (segments + recorded sizes)."""
        self._present(layer)
        total = 0
        with gzip.open(self._tar_split(layer), "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                entry = json.loads(line)
                if entry.get("type") == 2:
                    total += len(base64.b64decode(entry.get("payload") or b""))
                else:
                    total += int(entry.get("size") or 0)
        return total

    def check_present(self, image: ResolvedImage) -> None:
        for d in image.layers:
            layer = self._by_digest.get(d.digest)
            if layer is None:
                raise NotFoundError(f"{self.where}: layer {d.digest} is not in the store")
            self._present(layer)

    def open_layer(self, desc: Descriptor) -> VerifyingReader:
        layer = self._by_digest.get(desc.digest)
        if layer is None:
            raise NotFoundError(f"{self.where}: layer {desc.digest} is not in the store",
                                hint="resolve the image first")  # fmt: skip
        raw = cast(IO[bytes], io.BufferedReader(self._open(layer), READ_BUFFER))
        return VerifyingReader(
            raw, desc.digest, desc.size, f"layer {desc.digest} ({layer.id} in the store)"
        )


__all__ = [
    "ContainersStorageSource",
    "DockerDaemonSource",
    "StoreLocation",
    "big_data_name",
    "locate_store",
    "open_store_source",
    "storage_conf_path",
]
