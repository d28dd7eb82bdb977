"""Where an image comes from: a registry, an OCI layout, an archive, or a directory.

Every source answers the same three questions: which single-platform image does this
reference name (`resolve`), how do I get its layers local (`fetch`), and how do I read
a layer's raw bytes (`open_layer`, digest-checked as it is read).
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from kcompat.auth import Credentials
from kcompat.errors import (
    BadImageError,
    IntegrityError,
    KcompatError,
    NotFoundError,
    UsageError,
)
from kcompat.image import (
    ANNOTATION_REF_NAME,
    DOCKER_MANIFEST,
    Descriptor,
    ImageConfig,
    Index,
    ResolvedImage,
    check_digest,
    json_problem,
    parse_config,
    parse_document,
    select_manifest,
    sha256_digest,
)
from kcompat.layers import VerifyingReader, reason_words
from kcompat.platform import Platform
from kcompat.progress import NoProgress, Progress
from kcompat.reference import (
    ImageReference,
    LocalRef,
    RegistryRef,
    Transport,
    parse_docker_reference,
)
from kcompat.store import BlobStore

MAX_NESTED_INDEXES = 4
MAX_SMALL_BLOB = 64 * 1024 * 1024
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"


Chooser = Callable[[tuple[Platform, ...]], "Platform | None"]


@dataclass(frozen=True)
class Options:
    platform: Platform | None = None  # None: `choose` picks from an index, else the host's
    creds: Credentials | None = None
    insecure_hosts: tuple[str, ...] = ()
    choose: Chooser | None = None  # the best index entry for a target (kcompat.check)


class Source:
    """Base: subclasses provide the root document and small blobs."""

    where: str

    def _root(self) -> tuple[bytes, str | None, str | None]:
        raise NotImplementedError

    def _manifest_blob(self, desc: Descriptor) -> bytes:
        return self._small_blob(desc)

    def _small_blob(self, desc: Descriptor) -> bytes:
        raise NotImplementedError

    def open_layer(self, desc: Descriptor) -> VerifyingReader:
        raise NotImplementedError

    def fetch(
        self,
        image: ResolvedImage,
        store: BlobStore,
        progress: Progress | None = None,
        jobs: int = 4,
    ) -> None:
        """Make every layer readable locally (a no-op for local sources)."""

    def fetch_layer(self, desc: Descriptor, store: BlobStore) -> None:
        """Make one layer readable locally (a no-op for local sources)."""

    def after_fork(self) -> None:
        """In a forked worker: drop what must not be shared with the parent."""

    def blob_size(self, desc: Descriptor) -> int | None:
        """The stored size of a layer blob of a local source (None: not local, or
        unknown); a missing blob raises NotFoundError naming it."""
        return None

    def check_present(self, image: ResolvedImage) -> None:
        """Every layer blob is where the source says, with the size its descriptor
        declares: cheap (no read), done on every check so that an image that is broken
        where it lives is never judged from the cache."""
        for d in image.layers:
            size = self.blob_size(d)
            if size is not None and d.size is not None and size != d.size:
                raise IntegrityError(
                    f"{self.where}: blob {d.digest} has {size} bytes, its descriptor "
                    f"declares {d.size}",
                    hint="the image is corrupt or was tampered with; copy it again",
                )

    def verify(self, image: ResolvedImage) -> None:
        """Read every layer of a local source to its end: digest and size checked, as
        `skopeo copy` does (a registry source verifies while it downloads)."""
        self.check_present(image)
        for d in image.layers:
            reader = self.open_layer(d)
            try:
                reader.finish()
            finally:
                reader.close()

    def close(self) -> None:
        pass

    def rootfs_dir(self) -> Path | None:
        """A directory that already is the image's root filesystem, if the source has one."""
        return None

    def resolve(
        self, want: Platform | None, default: Platform, choose: Chooser | None = None
    ) -> ResolvedImage:
        data, media_type, digest = self._root()
        raw_root = data
        doc = parse_document(data, media_type, self.where)
        index_digest: str | None = None
        platforms: tuple[Platform, ...] = ()
        depth = 0
        while isinstance(doc, Index):
            depth += 1
            if depth > MAX_NESTED_INDEXES:
                raise BadImageError(
                    f"{self.where}: indexes nested deeper than {MAX_NESTED_INDEXES}"
                )
            if index_digest is None:
                index_digest, platforms = digest, doc.platforms
            picked = want or (choose(doc.platforms) if choose else None) or default
            entry = self._pick(doc, picked)
            data = self._manifest_blob(entry)
            doc = parse_document(data, entry.media_type, self.where)
            digest = entry.digest
        config_bytes = self._small_blob(doc.config)
        config = parse_config(config_bytes, f"{self.where} config")
        if index_digest is None and want is not None and not want.matches(config.platform):
            raise NotFoundError(
                f"no {want} in {self.where}; "
                f"available: {config.platform} (a single-platform image)",
                hint="choose it with --platform or drop --platform",
            )
        return ResolvedImage(
            reference=self.where,
            manifest_digest=digest,
            manifest_media_type=doc.media_type,
            index_digest=index_digest,
            index_platforms=platforms,
            config_digest=doc.config.digest,
            config=config,
            layers=doc.layers,
            raw_root=raw_root,
            raw_config=config_bytes,
        )

    def _pick(self, index: Index, want: Platform) -> Descriptor:
        # An index entry without a platform (an OCI layout pointing at one manifest, or
        # at a nested index) is followed when it is the only candidate.
        real = [m for m in index.manifests if not m.is_attestation]
        if len(real) == 1 and real[0].platform is None:
            return real[0]
        return select_manifest(index, want, self.where)


class RegistrySource(Source):
    def __init__(self, ref: RegistryRef, options: Options) -> None:
        self.ref = ref
        self.where = str(ref)
        from kcompat.registry import RegistryClient  # requests only for registries

        self.client = RegistryClient(
            ref, creds=options.creds, insecure_hosts=options.insecure_hosts
        )
        self._store: BlobStore | None = None

    def _root(self) -> tuple[bytes, str | None, str | None]:
        return self.client.get_manifest(self.ref.reference)

    def _manifest_blob(self, desc: Descriptor) -> bytes:
        data, _, _ = self.client.get_manifest(desc.digest)
        return data

    def _small_blob(self, desc: Descriptor) -> bytes:
        return self.client.get_small_blob(desc, MAX_SMALL_BLOB)

    def fetch(
        self,
        image: ResolvedImage,
        store: BlobStore,
        progress: Progress | None = None,
        jobs: int = 4,
    ) -> None:
        self._store = store
        todo = [d for d in image.layers if not store.has(d.digest)]
        if not todo:
            return
        progress = progress or NoProgress()
        with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(todo)))) as pool:
            futures = [pool.submit(self.client.fetch_blob, d, store, progress) for d in todo]
            first_error: BaseException | None = None
            for f in futures:
                try:
                    f.result()
                except BaseException as e:  # keep the first; let the rest finish or fail
                    if first_error is None:
                        first_error = e
                        for other in futures:
                            other.cancel()
            if first_error is not None:
                raise first_error

    def fetch_layer(self, desc: Descriptor, store: BlobStore) -> None:
        self._store = store
        self.client.fetch_blob(desc, store)

    def verify(self, image: ResolvedImage) -> None:
        """Nothing more: every blob was digest- and size-checked while it streamed in."""

    def after_fork(self) -> None:
        # The parent's pooled connections must not be read by two processes at once.
        self.client.session = self.client.fresh_session()

    def open_layer(self, desc: Descriptor) -> VerifyingReader:
        store = self._store or BlobStore()
        path = store.path(desc.digest)
        if not path.is_file():
            raise NotFoundError(
                f"layer {desc.digest} of {self.where} is not in the cache",
                hint="run 'kcompat pull' first",
            )
        return VerifyingReader(open(path, "rb"), desc.digest, desc.size, f"layer {desc.digest}")


class _BlobDir:
    """Blobs in an OCI layout: blobs/<algo>/<hex>, found on disk or in an archive."""

    def __init__(self, opener: Callable[[str], IO[bytes] | None], where: str) -> None:
        self._open = opener
        self.where = where

    def open(self, desc: Descriptor) -> IO[bytes]:
        algo, _, hexpart = desc.digest.partition(":")
        if not re.fullmatch(r"[a-f0-9]{64}|[a-f0-9]{128}", hexpart):
            raise BadImageError(f"{self.where}: {desc.digest!r} is not a valid digest")
        f = self._open(f"blobs/{algo}/{hexpart}")
        if f is None:
            raise NotFoundError(
                f"{self.where}: blob {desc.digest} is missing",
                hint="the layout is incomplete; copy the image again",
            )
        return f

    def size(self, desc: Descriptor) -> int | None:
        with self.open(desc) as f:
            known = getattr(f, "size", None)  # an archive member's
            if isinstance(known, int):
                return known
            try:
                return os.fstat(f.fileno()).st_size
            except (OSError, io.UnsupportedOperation):
                return None

    def read_small(self, desc: Descriptor) -> bytes:
        if desc.size > MAX_SMALL_BLOB:
            raise BadImageError(f"{self.where}: {desc.digest} claims {desc.size} bytes")
        with self.open(desc) as f:
            data = f.read(MAX_SMALL_BLOB + 1)
        check_digest(data, desc.digest, f"{self.where}: blob {desc.digest}")
        return data


def _choose_from_layout_index(index_bytes: bytes, ref: str | None, where: str) -> Descriptor:
    doc = parse_document(index_bytes, None, f"{where}/index.json")
    if not isinstance(doc, Index):
        raise BadImageError(f"{where}: index.json is not an image index")
    if ref is not None:
        named = [m for m in doc.manifests if m.annotations.get(ANNOTATION_REF_NAME) == ref]
        if not named:
            raise NotFoundError(f"{where}: no image named {ref!r}; available: {_ref_names(doc)}")
        return named[0]
    if len(doc.manifests) == 1:
        return doc.manifests[0]
    raise UsageError(
        f"{where} holds {len(doc.manifests)} images; name one as {where}:REF",
        hint=f"available: {_ref_names(doc)}",
    )


def _ref_names(doc: Index) -> str:
    names = [m.annotations.get(ANNOTATION_REF_NAME, m.digest) for m in doc.manifests]
    return ", ".join(names) or "none"


class _LayoutSource(Source):
    """An OCI image layout, on disk or inside an archive: index.json names the image."""

    ref: LocalRef
    blobs: _BlobDir

    def _index_bytes(self) -> bytes:
        raise NotImplementedError

    def _root(self) -> tuple[bytes, str | None, str | None]:
        desc = _choose_from_layout_index(self._index_bytes(), self.ref.ref, self.where)
        return self.blobs.read_small(desc), desc.media_type, desc.digest

    def _small_blob(self, desc: Descriptor) -> bytes:
        return self.blobs.read_small(desc)

    def blob_size(self, desc: Descriptor) -> int | None:
        return self.blobs.size(desc)

    def open_layer(self, desc: Descriptor) -> VerifyingReader:
        return VerifyingReader(
            self.blobs.open(desc), desc.digest, desc.size, f"layer {desc.digest}"
        )


class OCILayoutSource(_LayoutSource):
    def __init__(self, ref: LocalRef) -> None:
        self.path = Path(ref.path)
        self.ref = ref
        self.where = str(ref)
        if not (self.path / "index.json").is_file():
            raise NotFoundError(
                f"{self.path} is not an OCI image layout (no index.json)",
                hint="give the directory that holds oci-layout and index.json",
            )
        self.blobs = _BlobDir(self._open_file, self.where)
        self._root_desc: Descriptor | None = None

    def _open_file(self, rel: str) -> IO[bytes] | None:
        try:
            return open(self.path / rel, "rb")
        except FileNotFoundError:
            return None

    def _index_bytes(self) -> bytes:
        return (self.path / "index.json").read_bytes()


class _Slice(io.RawIOBase):
    """`size` bytes of a file from `offset`, read through its own file handle."""

    def __init__(self, path: Path, offset: int, size: int) -> None:
        super().__init__()
        self._f = open(path, "rb")  # noqa: SIM115 (closed by close())
        self._f.seek(offset)
        self._left = size
        self.size = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._f.readinto(memoryview(buffer)[: min(len(buffer), self._left)])
        self._left -= n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


class _Archive:
    """A tar archive read in place (no extraction), members looked up by name."""

    def __init__(self, path: Path, where: str) -> None:
        self.path = path
        try:
            self.tar = tarfile.open(path, "r:")  # noqa: SIM115 (kept open; closed by close())
        except FileNotFoundError:
            raise NotFoundError(f"{where}: no such file", hint="check the path") from None
        except (tarfile.TarError, OSError) as e:
            raise BadImageError(
                f"{where}: not a readable tar archive ({reason_words(e)})",
                hint="give a file written by docker save or skopeo copy",
            ) from None
        self.members: dict[str, tarfile.TarInfo] = {}
        try:
            members = self.tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as e:
            self.tar.close()
            raise BadImageError(
                f"{where}: the archive is cut short or corrupt ({reason_words(e)})",
                hint="write it again (docker save, skopeo copy)",
            ) from None
        end = os.path.getsize(path)
        for m in members:
            name = os.path.normpath(m.name.lstrip("/"))
            if m.isfile():
                if m.offset_data + m.size > end:
                    self.tar.close()
                    raise BadImageError(
                        f"{where}: the archive is cut short: {m.name} needs "
                        f"{m.offset_data + m.size} bytes, the file has {end}",
                        hint="write it again (docker save, skopeo copy)",
                    )
                self.members[name] = m

    def open(self, name: str) -> IO[bytes] | None:
        """A member's bytes through a file handle of its own, so that readers in several
        threads or forked processes never share a file offset."""
        m = self.members.get(os.path.normpath(name))
        if m is None:
            return None
        if m.sparse is not None:  # pragma: no cover - no image tool writes sparse members
            return self.tar.extractfile(m)
        return cast(IO[bytes], io.BufferedReader(_Slice(self.path, m.offset_data, m.size)))

    def close(self) -> None:
        self.tar.close()


class OCIArchiveSource(_LayoutSource):
    def __init__(self, ref: LocalRef) -> None:
        self.ref = ref
        self.where = str(ref)
        self.archive = _Archive(Path(ref.path), self.where)
        self.blobs = _BlobDir(self.archive.open, self.where)

    def _index_bytes(self) -> bytes:
        f = self.archive.open("index.json")
        if f is None:
            raise BadImageError(f"{self.where}: no index.json; not an OCI archive")
        return f.read()

    def close(self) -> None:
        self.archive.close()


class DockerArchiveSource(Source):
    """`docker save` output: manifest.json lists Config and Layers paths in the tar.

    There is no registry manifest, so kcompat builds the equivalent Docker v2 manifest:
    the legacy layers are uncompressed tars whose digests are the config's diff_ids
    (and newer archives name their blobs by digest). No manifest digest is reported.
    """

    def __init__(self, ref: LocalRef) -> None:
        self.ref = ref
        self.where = str(ref)
        self.archive = _Archive(Path(ref.path), self.where)
        self._entries: list[dict[str, Any]] = []
        self._layer_paths: dict[str, str] = {}

    def _entry(self) -> dict[str, Any]:
        f = self.archive.open("manifest.json")
        if f is None:
            raise BadImageError(f"{self.where}: no manifest.json; not a docker-archive")
        try:
            raw = json.loads(f.read().decode("utf-8"))
        except ValueError as e:
            raise BadImageError(
                f"{self.where}: manifest.json is not valid JSON ({json_problem(e)})",
                hint="write the archive again (docker save, skopeo copy)",
            ) from None
        if not isinstance(raw, list) or not raw or not all(isinstance(x, dict) for x in raw):
            raise BadImageError(f"{self.where}: manifest.json lists no images")
        entries: list[dict[str, Any]] = raw
        if self.ref.index is not None:
            if self.ref.index >= len(entries):
                raise NotFoundError(f"{self.where}: the archive has {len(entries)} images")
            return entries[self.ref.index]
        if self.ref.ref is not None:
            want = self.ref.ref
            for entry in entries:
                tags = entry.get("RepoTags") or []
                if want in tags or any(_normal_tag(str(t)) == want for t in tags):
                    return entry
            raise NotFoundError(f"{self.where}: no image tagged {want!r}")
        if len(entries) > 1:
            raise UsageError(
                f"{self.where} holds {len(entries)} images; name one",
                hint="use docker-archive:FILE:NAME:TAG or docker-archive:FILE@N",
            )
        return entries[0]

    def resolve(
        self, want: Platform | None, default: Platform, choose: Chooser | None = None
    ) -> ResolvedImage:
        entry = self._entry()
        config_path = entry.get("Config")
        layers = entry.get("Layers")
        if not isinstance(config_path, str) or not isinstance(layers, list):
            raise BadImageError(f"{self.where}: manifest.json entry lacks Config or Layers")
        f = self.archive.open(config_path)
        if f is None:
            raise BadImageError(f"{self.where}: config {config_path} is missing")
        config_bytes = f.read()
        config_digest = _digest_from_path(config_path)
        if config_digest:
            check_digest(config_bytes, config_digest, f"{self.where}: config")
        config = parse_config(config_bytes, f"{self.where} config")
        if len(config.diff_ids) != len(layers):
            raise BadImageError(
                f"{self.where}: {len(layers)} layers but {len(config.diff_ids)} diff_ids"
            )
        descs = []
        for path, diff_id in zip(layers, config.diff_ids):
            member = self.archive.members.get(os.path.normpath(str(path)))
            if member is None:
                raise BadImageError(f"{self.where}: layer {path} is missing")
            digest = _digest_from_path(str(path)) or diff_id
            self._layer_paths[digest] = str(path)
            descs.append(Descriptor(DOCKER_LAYER_TAR, digest, member.size))
        if want is not None and not want.matches(config.platform):
            raise NotFoundError(
                f"no {want} in {self.where}; available: {config.platform}",
                hint="choose it with --platform or drop --platform",
            )
        return ResolvedImage(
            self.where,
            None,
            DOCKER_MANIFEST,
            None,
            (),
            config_digest or sha256_digest(config_bytes),
            config,
            tuple(descs),
            raw_root=json.dumps([entry]).encode(),  # its manifest.json entry: no registry manifest
            raw_config=config_bytes,
        )

    def open_layer(self, desc: Descriptor) -> VerifyingReader:
        f = self.archive.open(self._layer_paths.get(desc.digest, ""))
        if f is None:
            raise BadImageError(f"{self.where}: layer {desc.digest} is missing")
        return VerifyingReader(f, desc.digest, desc.size, f"layer {desc.digest}")

    def close(self) -> None:
        self.archive.close()


def _normal_tag(tag: str) -> str:
    try:
        return str(parse_docker_reference(tag))
    except KcompatError:
        return tag


def _digest_from_path(path: str) -> str | None:
    m = re.search(r"(?:^|/)blobs/(sha256)/([a-f0-9]{64})$", path) or re.match(
        r"^([a-f0-9]{64})\.json$", path
    )
    if m is None:
        return None
    if m.lastindex == 2:
        return f"{m.group(1)}:{m.group(2)}"
    return f"sha256:{m.group(1)}"


SKOPEO_DIR_VERSION = "Directory Transport Version:"


def is_skopeo_dir(path: Path) -> bool:
    """Whether `path` holds an image as `skopeo copy ... dir:PATH` writes it: a `version`
    file ("Directory Transport Version: 1.1"), `manifest.json`, and blobs named by their
    sha256 hex (containers/image directory transport)."""
    try:
        version = (path / "version").read_text(errors="replace")[:64]
    except OSError:
        return False
    return version.startswith(SKOPEO_DIR_VERSION) and (path / "manifest.json").is_file()


class SkopeoDirSource(Source):
    """skopeo's `dir:` layout: manifest.json (an image manifest, or with --all an index
    whose instances are <hex>.manifest.json), the config and layers as <hex> files."""

    def __init__(self, ref: LocalRef) -> None:
        self.ref = ref
        self.path = Path(ref.path)
        self.where = str(ref)

    def _file(self, digest: str, suffix: str = "") -> IO[bytes]:
        algo, _, hexpart = digest.partition(":")
        if not re.fullmatch(r"[a-f0-9]{64}", hexpart) or algo != "sha256":
            raise BadImageError(f"{self.where}: {digest!r} is not a sha256 digest")
        try:
            return open(self.path / f"{hexpart}{suffix}", "rb")
        except FileNotFoundError:
            raise NotFoundError(
                f"{self.where}: blob {digest} is missing ({hexpart}{suffix})",
                hint="the directory is incomplete; copy the image again with skopeo",
            ) from None

    def _read(self, desc: Descriptor, suffix: str = "") -> bytes:
        if desc.size > MAX_SMALL_BLOB:
            raise BadImageError(f"{self.where}: {desc.digest} claims {desc.size} bytes")
        with self._file(desc.digest, suffix) as f:
            data = f.read(MAX_SMALL_BLOB + 1)
        check_digest(data, desc.digest, f"{self.where}: blob {desc.digest}")
        return data

    def _root(self) -> tuple[bytes, str | None, str | None]:
        data = (self.path / "manifest.json").read_bytes()
        return data, None, sha256_digest(data)

    def _manifest_blob(self, desc: Descriptor) -> bytes:
        try:
            return self._read(desc, ".manifest.json")
        except NotFoundError:
            return self._read(desc)

    def _small_blob(self, desc: Descriptor) -> bytes:
        return self._read(desc)

    def blob_size(self, desc: Descriptor) -> int | None:
        with self._file(desc.digest) as f:
            return os.fstat(f.fileno()).st_size

    def open_layer(self, desc: Descriptor) -> VerifyingReader:
        return VerifyingReader(
            self._file(desc.digest), desc.digest, desc.size, f"layer {desc.digest}"
        )


class DirSource(Source):
    """A plain root filesystem: no manifest, no config; its binaries say what it is."""

    def __init__(self, ref: LocalRef) -> None:
        self.ref = ref
        self.path = Path(ref.path)
        self.where = str(ref)
        if not self.path.is_dir():
            raise NotFoundError(f"{self.where}: no such directory", hint="check the path")

    def rootfs_dir(self) -> Path | None:
        return self.path

    def resolve(
        self, want: Platform | None, default: Platform, choose: Chooser | None = None
    ) -> ResolvedImage:
        config = ImageConfig(
            platform=want or Platform("linux", "unknown"),
            entrypoint=None,
            cmd=None,
            env=(),
            workdir=None,
            user=None,
            diff_ids=(),
        )
        return ResolvedImage(self.where, None, None, None, (), None, config, ())


def open_source(ref: ImageReference, options: Options | None = None) -> Source:
    options = options or Options()
    if isinstance(ref, RegistryRef):
        return RegistrySource(ref, options)
    if not isinstance(ref, LocalRef):  # docker-daemon:, containers-storage:
        from kcompat.stores import open_store_source

        return open_store_source(ref, options)
    classes: dict[Transport, type[Source]] = {
        Transport.OCI: OCILayoutSource,
        Transport.OCI_ARCHIVE: OCIArchiveSource,
        Transport.DOCKER_ARCHIVE: DockerArchiveSource,
        Transport.DIR: DirSource,
    }
    if ref.transport is Transport.DIR and is_skopeo_dir(Path(ref.path)):
        classes[Transport.DIR] = SkopeoDirSource
    cls: Any = classes[ref.transport]
    source: Source = cls(ref)
    return source
