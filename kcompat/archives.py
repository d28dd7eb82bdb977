"""Images in tar archives, read in place: `oci-archive:` (an OCI layout in a tar) and
`docker-archive:` (`docker save` output)."""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import IO, Any, cast

from kcompat.errors import BadImageError, KcompatError, NotFoundError, UsageError
from kcompat.image import (
    DOCKER_MANIFEST,
    Descriptor,
    ResolvedImage,
    check_digest,
    json_problem,
    parse_config,
    sha256_digest,
)
from kcompat.layers import VerifyingReader, reason_words
from kcompat.layout import BlobDir, LayoutSource
from kcompat.platform import Platform
from kcompat.reference import LocalRef, parse_docker_reference
from kcompat.source import Chooser, Source

DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"


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


class OCIArchiveSource(LayoutSource):
    def __init__(self, ref: LocalRef) -> None:
        self.ref = ref
        self.where = str(ref)
        self.archive = _Archive(Path(ref.path), self.where)
        self.blobs = BlobDir(self.archive.open, self.where)

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
