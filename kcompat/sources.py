"""Where an image comes from: a registry, an OCI layout, an archive, or a directory.

Every source answers the same three questions (kcompat.source): which single-platform
image does this reference name (`resolve`), how do I get its layers local (`fetch`),
and how do I read a layer's raw bytes (`open_layer`, digest-checked as it is read).
`open_source` opens the one a reference names: a registry or a local directory here,
an OCI layout (kcompat.layout), an archive (kcompat.archives), or an engine's store
(kcompat.dockerdaemon, kcompat.containerstorage).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from kcompat.archives import DOCKER_LAYER_TAR, DockerArchiveSource, OCIArchiveSource
from kcompat.errors import BadImageError, LocalIOError, NotFoundError
from kcompat.image import Descriptor, ImageConfig, ResolvedImage, check_digest, sha256_digest
from kcompat.layers import VerifyingReader
from kcompat.layout import OCILayoutSource
from kcompat.platform import Platform
from kcompat.progress import NoProgress, Progress
from kcompat.reference import DaemonRef, ImageReference, LocalRef, RegistryRef, Transport
from kcompat.source import MAX_SMALL_BLOB, Chooser, Options, Source
from kcompat.store import BlobStore, hash_file

if TYPE_CHECKING:
    from kcompat.download import BlobDownload

# Also read from here (kcompat.pull, the engines' stores, the CLI): the names of the interface
# every source implements (kcompat.source) and of the docker-archive reader.
__all__ = [
    "DOCKER_LAYER_TAR",
    "MAX_SMALL_BLOB",
    "SKOPEO_DIR_VERSION",
    "Chooser",
    "DirSource",
    "DockerArchiveSource",
    "OCIArchiveSource",
    "OCILayoutSource",
    "Options",
    "RegistrySource",
    "SkopeoDirSource",
    "Source",
    "is_skopeo_dir",
    "open_source",
]


class RegistrySource(Source):
    def __init__(self, ref: RegistryRef, options: Options) -> None:
        self.ref = ref
        self.where = str(ref)
        from kcompat.registry import RegistryClient  # requests only for registries

        self.client = RegistryClient(
            ref, creds=options.creds, insecure_hosts=options.insecure_hosts
        )
        self._store: BlobStore | None = None
        # blobs this process downloaded, digest-checked as they streamed in: read once
        # more to be scanned, their digest is not computed a second time
        self._checked: set[str] = set()
        self._syncing: dict[str, threading.Thread] = {}

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
            futures = [pool.submit(self.client.download, d, store, progress) for d in todo]
            first_error: BaseException | None = None
            for d, f in zip(todo, futures):
                try:
                    if f.result()[1]:
                        self._checked.add(d.digest)
                except BaseException as e:  # keep the first; let the rest finish or fail
                    if first_error is None:
                        first_error = e
                        for other in futures:
                            other.cancel()
            if first_error is not None:
                raise first_error

    def fetch_layer(self, desc: Descriptor, store: BlobStore) -> None:
        """The layer into the store, to be scanned: flushed to the disk in a thread while
        the scan reads it (the flush of a 260 MB blob took 0.3-0.5 s here, before any
        scanning). Until it is on the disk only this process trusts it: a later run
        digest-checks what it finds in the store (open_layer)."""
        self._store = store
        if not store.has(desc.digest):
            path, downloaded = self.client.download(desc, store, durable=False)
            if downloaded:
                self._checked.add(desc.digest)
                sync = threading.Thread(target=_flush, args=(path,), daemon=False)
                sync.start()
                self._syncing[desc.digest] = sync

    def layer_to_scan(self, desc: Descriptor, store: BlobStore) -> VerifyingReader:
        """A layer not in the store is scanned as it downloads: the scan reads each
        chunk as it is written to the partial file and hashed (kcompat.download), and
        the blob is renamed into the store once its digest matched, so the inflating
        and scanning overlap the transfer instead of waiting for it. A layer with a
        partial file is first resumed whole (fetch_layer), then read from the store."""
        self._store = store
        if not store.has(desc.digest):
            download = self.client.stream(desc, store)
            if download is not None:
                return _DownloadingLayer(download)
        self.fetch_layer(desc, store)
        return self.open_layer(desc)

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
        return _StoredLayer(open(path, "rb"), desc.digest, desc.size, f"layer {desc.digest}",
                            checked=desc.digest in self._checked, store=store,
                            sync=self._syncing.pop(desc.digest, None))  # fmt: skip


def _flush(path: Path) -> None:
    """No error if it fails: this process has the blob's checked bytes already, and a
    later run digest-checks what it finds in the store (and removes a damaged copy)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _StoredLayer(VerifyingReader):
    """A layer blob read from kcompat's own store. When reading it fails (its digest or
    length, its compression, its tar), the file is hashed again from the disk, and a
    copy whose digest does not match is removed, so that running again downloads it
    (the store holds only what was checked when it came in: a damaged copy, after a
    crash before the flush or a disk error, would otherwise be found again and again).
    A copy that matches is the registry's own content, and stays. Closing waits for the
    flush of a blob just downloaded."""

    def __init__(
        self,
        raw: IO[bytes],
        digest: str,
        size: int | None,
        what: str,
        checked: bool,
        store: BlobStore,
        sync: threading.Thread | None,
    ) -> None:
        super().__init__(raw, digest, size, what, checked=checked)
        st = os.fstat(raw.fileno())
        self._identity = (st.st_dev, st.st_ino)  # the copy read, whatever the path holds later
        self._store, self._sync = store, sync

    def after_error(self) -> None:
        store, digest = self._store, self.digest
        path = store.path(digest)
        with contextlib.suppress(OSError, LocalIOError), store.lock(digest):
            there = os.stat(path)
            if (there.st_dev, there.st_ino) != self._identity:
                return  # replaced meanwhile by another process's good copy
            algo = digest.split(":", 1)[0]
            copy = hashlib.new(algo)
            hash_file(copy, path)
            if f"{algo}:{copy.hexdigest()}" != digest:
                path.unlink()

    def close(self) -> None:
        super().close()
        if self._sync is not None:
            self._sync.join()
            self._sync = None


class _DownloadingLayer(VerifyingReader):
    """A layer blob read as it downloads (kcompat.download hashes and checks it; this
    reader counts its length). At the end it goes into the store, flushed to the disk
    in a thread of its own (a later run digest-checks what it reads from the store, so
    a copy a crash damaged before the flush is found and removed). A failed read
    reads the blob to its end to tell a damaged download from a broken image; an
    interrupted one keeps what came for the next run to resume."""

    def __init__(self, download: BlobDownload) -> None:
        desc = download.desc
        super().__init__(cast(IO[bytes], io.BytesIO()), desc.digest, desc.size,
                         f"layer {desc.digest}", checked=True)  # fmt: skip
        self._download = download
        self._pending = memoryview(b"")

    def _read(self, n: int) -> bytes:
        if not self._pending:
            chunk = self._download.read_chunk()
            if len(chunk) <= n:
                return chunk
            self._pending = memoryview(chunk)
        out, self._pending = self._pending[:n], self._pending[n:]
        return bytes(out)

    def finish(self) -> None:
        super().finish()  # to the end: the download checked the digest there
        path = self._download.commit(durable=False)
        threading.Thread(target=_flush, args=(path,), daemon=False).start()

    def after_error(self) -> None:
        """The layer would not inflate or parse: whether its bytes are the registry's
        is known only at the blob's end, so the rest is read first. Another digest is
        the download's IntegrityError (and the download is deleted); the same digest
        means the image itself is broken: the blob is kept, and the caller says so. A
        connection that keeps failing meanwhile is the download's NetworkError, and
        what came is kept for the next run to resume."""
        from kcompat.download import drain  # imported already: a download is under way

        drain(self._download)
        self._download.commit(durable=False)

    def close(self) -> None:
        try:
            self._download.close()  # and the blob's lock
        finally:
            super().close()


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
        if isinstance(ref, DaemonRef):
            from kcompat.dockerdaemon import DockerDaemonSource

            return DockerDaemonSource(ref, options)
        from kcompat.containerstorage import ContainersStorageSource

        return ContainersStorageSource(ref, options)
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
