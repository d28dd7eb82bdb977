"""Build layer tars in tests, hostile ones included."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass

import zstandard

from kcompat.layers import VerifyingReader
from kcompat.merged import LayerInput


@dataclass
class E:
    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    link: str = ""
    mode: int = 0o644
    major: int = 0
    minor: int = 0


def tar_bytes(entries: list[E]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.kind
            info.mode = e.mode if e.kind != tarfile.DIRTYPE or e.mode != 0o644 else 0o755
            info.linkname = e.link
            info.devmajor, info.devminor = e.major, e.minor
            if e.kind == tarfile.REGTYPE:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def compress(data: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(data)
    if how == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def layer(data: bytes) -> LayerInput:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return LayerInput(
        digest, lambda: VerifyingReader(io.BytesIO(data), digest, len(data), f"layer {digest}")
    )


def layers(*entry_lists: list[E], how: str = "gzip") -> list[LayerInput]:
    return [layer(compress(tar_bytes(es), how)) for es in entry_lists]
