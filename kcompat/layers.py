"""Reading one layer: verify its digest as it streams, decompress by magic, walk its tar.

Compression is told from the first bytes, never from the media type alone (registries
and tools mislabel): gzip `1f 8b`, zstd `28 b5 2f fd`, else an uncompressed tar.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import IO, Any, cast

import zstandard

from kcompat.errors import BadImageError, IntegrityError

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
READ_BUFFER = 1 << 20


class _Wrapper(io.RawIOBase):
    """A raw stream over `read(n)` of another; subclasses see each chunk in `_seen`."""

    def __init__(self, inner: IO[bytes]) -> None:
        super().__init__()
        self._inner = inner

    def readable(self) -> bool:
        return True

    def _read(self, n: int) -> bytes:
        return self._inner.read(n)

    def _seen(self, data: bytes) -> None:
        pass

    def readinto(self, buffer: Any) -> int:
        data = self._read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self._seen(data)
        return n


class VerifyingReader(_Wrapper):
    """Reads a blob and checks its digest and size once it has been read to the end.

    `finish()` drains what the consumer left unread (tar padding, trailing zeros) and
    verifies; a mismatch raises IntegrityError naming the blob.
    """

    def __init__(self, raw: IO[bytes], digest: str, size: int | None, what: str) -> None:
        super().__init__(raw)
        self.digest = digest
        self.size = size
        self.what = what
        self._hash = hashlib.new(digest.split(":", 1)[0])
        self._count = 0

    def _seen(self, data: bytes) -> None:
        self._hash.update(data)
        self._count += len(data)
        if self.size is not None and self._count > self.size:
            raise IntegrityError(
                f"{self.what} is longer than the {self.size} bytes declared",
                hint="the image is corrupt or hostile",
            )

    def finish(self) -> None:
        buf = bytearray(READ_BUFFER)
        while self.readinto(buf):
            pass
        got = f"{self.digest.split(':', 1)[0]}:{self._hash.hexdigest()}"
        if got != self.digest:
            raise IntegrityError(
                f"{self.what}: content has digest {got}, expected {self.digest}",
                hint="the image is corrupt or was tampered with; pull it again",
            )

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            super().close()


class Compression(str, Enum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


def detect_compression(head: bytes) -> Compression:
    if head.startswith(GZIP_MAGIC):
        return Compression.GZIP
    if head.startswith(ZSTD_MAGIC):
        return Compression.ZSTD
    return Compression.NONE


def decompressed(raw: io.RawIOBase) -> tuple[IO[bytes], Compression]:
    """A stream of the tar bytes inside `raw`, whatever its compression."""
    buffered = io.BufferedReader(raw, READ_BUFFER)
    kind = detect_compression(buffered.peek(4)[:4])
    if kind is Compression.GZIP:
        return cast(IO[bytes], gzip.GzipFile(fileobj=buffered, mode="rb")), kind
    if kind is Compression.ZSTD:
        dctx = zstandard.ZstdDecompressor()
        stream: IO[bytes] = dctx.stream_reader(buffered, read_across_frames=True)
        return stream, kind
    return buffered, kind


# Errors a corrupt compressed stream or tar raises, turned into one BadImageError.
CORRUPT_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    zlib.error,
    EOFError,
    gzip.BadGzipFile,
    zstandard.ZstdError,
    OSError,
)


class FileKind(str, Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"


_KINDS = {
    tarfile.REGTYPE: FileKind.FILE,
    tarfile.AREGTYPE: FileKind.FILE,
    tarfile.CONTTYPE: FileKind.FILE,
    tarfile.DIRTYPE: FileKind.DIR,
    tarfile.SYMTYPE: FileKind.SYMLINK,
    tarfile.LNKTYPE: FileKind.HARDLINK,
    tarfile.CHRTYPE: FileKind.CHAR,
    tarfile.BLKTYPE: FileKind.BLOCK,
    tarfile.FIFOTYPE: FileKind.FIFO,
}


@dataclass(frozen=True)
class FileEntry:
    """One file of an image, as the merged view reports it."""

    path: str  # relative, normalised, no leading '/': "usr/bin/env"
    kind: FileKind
    mode: int  # permission bits, 0o7777
    size: int
    linkname: str  # symlink target as written; hardlink target as a normalised path
    uid: int
    gid: int
    devmajor: int
    devminor: int
    layer: int  # index of the layer it comes from, 0 = lowest


@dataclass(frozen=True)
class LayerIssue:
    """Something in a layer that was refused or neutralised, for the report."""

    layer: str  # layer digest
    path: str
    action: str  # "refused" | "neutralised" | "skipped"
    reason: str

    def __str__(self) -> str:
        return f"{self.action} {self.path!r} in layer {self.layer[:19]}: {self.reason}"


def clean_path(name: str) -> tuple[str | None, str | None]:
    """Normalise a tar member name; (path, note). path None = refuse; '' = the root itself."""
    note = None
    if name.startswith("/"):
        note = "absolute path made relative to the image root"
    parts: list[str] = []
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                return None, "path climbs out of the image root with '..'"
            parts.pop()
            note = note or "'..' resolved inside the path"
            continue
        parts.append(comp)
    return "/".join(parts), note


class _MemberReader(_Wrapper):
    """A member's bytes; a corrupt stream under it becomes one BadImageError."""

    def __init__(self, inner: IO[bytes], what: str) -> None:
        super().__init__(inner)
        self._what = what

    def _read(self, n: int) -> bytes:
        try:
            return self._inner.read(n)
        except CORRUPT_ERRORS as e:
            raise BadImageError(
                f"{self._what} is truncated or corrupt: {e.__class__.__name__}: {e}",
                hint="pull the image again; if it persists the image itself is broken",
            ) from None


@dataclass
class TarMember:
    info: tarfile.TarInfo
    tar: tarfile.TarFile
    what: str = "layer"

    def open(self) -> IO[bytes]:
        f = self.tar.extractfile(self.info)
        if f is None:
            raise BadImageError(f"{self.info.name}: not a regular file")
        return io.BufferedReader(_MemberReader(f, f"{self.what} ({self.info.name})"), READ_BUFFER)


class _Counting(_Wrapper):
    """Counts the tar bytes handed to tarfile and whether their end was reached."""

    def __init__(self, inner: IO[bytes]) -> None:
        super().__init__(inner)
        self.count = 0
        self.eof = False

    def _seen(self, data: bytes) -> None:
        self.count += len(data)
        if not data:
            self.eof = True


def iter_tar(reader: VerifyingReader, what: str) -> Iterator[TarMember]:
    """The members of one layer in order, then the layer's digest check."""
    try:
        stream, _ = decompressed(reader)
        counted = _Counting(stream)
        with tarfile.open(fileobj=cast(IO[bytes], counted), mode="r|", errorlevel=1) as tar:
            last: tarfile.TarInfo | None = None
            while True:
                try:
                    info = tar.next()
                except tarfile.ReadError:
                    # Some writers (umoci 0.4) end a layer right after the last file's
                    # data, with no padding and no end-of-archive blocks. Go's archive/tar
                    # accepts that; so do we, but only when that data is all there.
                    if (
                        last is not None
                        and counted.eof
                        and counted.count >= last.offset_data + last.size
                    ):
                        break
                    raise
                if info is None:
                    break
                last = info
                yield TarMember(info, tar, what)
        # Drain the decompressor to its end (so gzip checks its CRC) and the blob to EOF.
        while stream.read(READ_BUFFER):
            pass
        reader.finish()
    except CORRUPT_ERRORS as e:
        raise BadImageError(
            f"{what} is truncated or corrupt: {e.__class__.__name__}: {e}",
            hint="pull the image again; if it persists the image itself is broken",
        ) from None
    finally:
        reader.close()


def entry_kind(info: tarfile.TarInfo) -> FileKind | None:
    return _KINDS.get(info.type)
