"""OCI image layouts (index.json, blobs/<algo>/<hex>): a directory (`oci:DIR[:REF]`),
and what an `oci-archive:` (kcompat.archives) shares with it."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO

from kcompat.errors import BadImageError, NotFoundError, UsageError
from kcompat.image import ANNOTATION_REF_NAME, Descriptor, Index, check_digest, parse_document
from kcompat.layers import VerifyingReader
from kcompat.reference import LocalRef
from kcompat.source import MAX_SMALL_BLOB, Source


class BlobDir:
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


def choose_from_layout_index(index_bytes: bytes, ref: str | None, where: str) -> Descriptor:
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


class LayoutSource(Source):
    """An OCI image layout, on disk or inside an archive: index.json names the image."""

    ref: LocalRef
    blobs: BlobDir

    def _index_bytes(self) -> bytes:
        raise NotImplementedError

    def _root(self) -> tuple[bytes, str | None, str | None]:
        desc = choose_from_layout_index(self._index_bytes(), self.ref.ref, self.where)
        return self.blobs.read_small(desc), desc.media_type, desc.digest

    def _small_blob(self, desc: Descriptor) -> bytes:
        return self.blobs.read_small(desc)

    def blob_size(self, desc: Descriptor) -> int | None:
        return self.blobs.size(desc)

    def open_layer(self, desc: Descriptor) -> VerifyingReader:
        return VerifyingReader(
            self.blobs.open(desc), desc.digest, desc.size, f"layer {desc.digest}"
        )


class OCILayoutSource(LayoutSource):
    def __init__(self, ref: LocalRef) -> None:
        self.path = Path(ref.path)
        self.ref = ref
        self.where = str(ref)
        if not (self.path / "index.json").is_file():
            raise NotFoundError(
                f"{self.path} is not an OCI image layout (no index.json)",
                hint="give the directory that holds oci-layout and index.json",
            )
        self.blobs = BlobDir(self._open_file, self.where)

    def _open_file(self, rel: str) -> IO[bytes] | None:
        try:
            return open(self.path / rel, "rb")
        except FileNotFoundError:
            return None

    def _index_bytes(self) -> bytes:
        return (self.path / "index.json").read_bytes()
