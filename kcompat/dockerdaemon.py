"""`docker-daemon:`: an image in a Docker Engine, read through `docker save`.

The Docker Engine API (kcompat.engine): `GET /images/{name}/json` tells whether the
image is there, its id and RepoDigests; `GET /images/{name}/get` is the `docker save`
tar, read by the docker-archive reader (kcompat.archives).
"""

from __future__ import annotations

import errno
import http.client
import re
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from kcompat.archives import DockerArchiveSource
from kcompat.cache import ResultCache, code_key
from kcompat.engine import EngineClient
from kcompat.errors import (
    BadImageError,
    IntegrityError,
    KcompatError,
    LocalIOError,
    NetworkError,
    NotFoundError,
)
from kcompat.image import Descriptor, ResolvedImage, sha256_digest
from kcompat.layers import READ_BUFFER, VerifyingReader
from kcompat.platform import Platform, platform_from_oci
from kcompat.reference import (
    DaemonRef,
    LocalRef,
    Transport,
    familiar_name,
    parse_docker_reference,
)
from kcompat.source import Chooser, Options, Source
from kcompat.store import default_cache_dir


class DockerDaemonSource(Source):
    """An image in a Docker Engine, read through `docker save` (ImageSave)."""

    def __init__(self, ref: DaemonRef, options: Options) -> None:
        self.ref = ref
        self.where = str(ref)
        self.client = EngineClient()
        self.client.ping()
        self.info = self.client.image_inspect(ref.query, what=familiar_name(ref.query))
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
        resp = self.client.image_export(name, what=familiar_name(name))
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
        here = Path(__file__).resolve().parent
        key = code_key([here / "dockerdaemon.py", here / "sources.py", here / "source.py",
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
