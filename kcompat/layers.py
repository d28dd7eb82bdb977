"""Reading one layer: verify its digest as it streams, decompress by magic, walk its tar.

Compression is told from the first bytes, never from the media type alone (registries
and tools mislabel): gzip `1f 8b`, zstd `28 b5 2f fd`, else an uncompressed tar.

The uncompressed bytes are hashed as they pass (no second read) and checked against the
config's diff_id, as containers/image and docker check them: the compressed digest
proves the blob is the one the manifest names, the diff_id that it is the layer the
config was built from.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import queue
import tarfile
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from types import ModuleType
from typing import IO, Any, cast

import zstandard

from kcompat.errors import BadImageError, IntegrityError
from kcompat.tarstream import Regions, TarError, sparse_regions

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
READ_BUFFER = 1 << 20
CHUNK = 4 << 20  # the most decompressed bytes held per chunk (a gzip/zstd bomb stays small)

# gzip: ISA-L's inflate when installed. On this project's corpus (bench/speed) it
# decompresses real layers 2.5x as fast as zlib, 1.3x as fast as zlib-ng, and faster
# than rapidgzip on 2 cores; zlib is the fallback.
_INFLATE: ModuleType
try:
    from isal import isal_zlib as _INFLATE

    GZIP_ENGINE = "isal"
    _INFLATE_ERRORS: tuple[type[BaseException], ...] = (_INFLATE.IsalError, zlib.error)
except ImportError:  # pragma: no cover - isal has wheels for every platform kcompat runs on
    _INFLATE = zlib
    GZIP_ENGINE = "zlib"
    _INFLATE_ERRORS = (zlib.error,)


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
    verifies; a mismatch raises IntegrityError naming the blob. `checked`: the blob's
    digest was computed by this process as it was downloaded into the store a moment
    ago, so only its size is checked again.
    """

    def __init__(
        self, raw: IO[bytes], digest: str, size: int | None, what: str, checked: bool = False
    ) -> None:
        super().__init__(raw)
        self.digest = digest
        self.size = size
        self.what = what
        self._hash = None if checked else hashlib.new(digest.split(":", 1)[0])
        self._count = 0

    def _seen(self, data: bytes) -> None:
        if self._hash is not None:
            self._hash.update(data)
        self._count += len(data)
        if self.size is not None and self._count > self.size:
            self.after_error()
            raise IntegrityError(
                f"{self.what} is longer than the {self.size} bytes declared",
                hint="the image is corrupt or hostile",
            )

    def after_error(self) -> None:
        """Reading the blob failed (its digest, its length here; its compression or tar,
        by the callers): nothing to do here; a reader of kcompat's own store checks
        whether its copy is damaged (kcompat.sources)."""

    def finish(self) -> None:
        buf = bytearray(READ_BUFFER)
        while self.readinto(buf):
            pass
        if self._hash is None:  # digest-checked as downloaded: its length is what is left
            if self.size is not None and self._count != self.size:
                self.after_error()
                raise IntegrityError(
                    f"{self.what} is {self._count} bytes, not the {self.size} declared",
                    hint="the image is corrupt or hostile; pull it again",
                )
            return
        got = f"{self.digest.split(':', 1)[0]}:{self._hash.hexdigest()}"
        if got != self.digest:
            self.after_error()
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


# Errors a corrupt compressed stream or tar raises, turned into one BadImageError.
CORRUPT_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    zlib.error,
    EOFError,
    gzip.BadGzipFile,
    zstandard.ZstdError,
    OSError,
    *_INFLATE_ERRORS,
)


# tarfile also raises a bare ValueError, e.g. on a pax sparse map that is not one
_TAR_ERRORS: tuple[type[BaseException], ...] = (*CORRUPT_ERRORS, ValueError)


def reason_words(e: BaseException) -> str:
    """What went wrong reading an image (a layer stream, an archive), in words: never
    Python's class names."""
    if isinstance(e, EOFError):
        return "the compressed stream ends early"
    if isinstance(e, zlib.error) or type(e).__name__ in ("IsalError", "ZstdError", "BadGzipFile"):
        return "the compressed data is damaged"
    text = getattr(e, "strerror", None) or str(e) or "unreadable data"
    return text[:1].lower() + text[1:]


def corrupt(what: str, reason: str) -> BadImageError:
    """The one error for a layer whose compressed stream or tar is damaged."""
    return BadImageError(
        f"{what} is truncated or corrupt: {reason}",
        hint="pull the image again; if it persists the image itself is broken",
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
    tarfile.GNUTYPE_SPARSE: FileKind.FILE,
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


def diff_id_hash() -> Any:
    """The hash of a layer's uncompressed tar (diff_ids are sha256 in every image tool;
    any other algorithm in a config therefore fails the comparison, naming both)."""
    return hashlib.sha256()


def check_diff_id(digest: str, computed: str, expected: str | None) -> None:
    """Refuse a layer whose uncompressed bytes are not the ones the config names."""
    if expected is not None and computed != expected:
        raise IntegrityError(
            f"layer {digest} uncompressed to {computed}, "
            f"but the image config says diff_id {expected}",
            hint="the image is corrupt or was tampered with: rebuild or re-push it",
        )


class _MemberReader(_Wrapper):
    """A member's bytes; a corrupt stream under it becomes one BadImageError."""

    def __init__(self, inner: IO[bytes], what: str) -> None:
        super().__init__(inner)
        self._what = what

    def _read(self, n: int) -> bytes:
        try:
            return self._inner.read(n)
        except CORRUPT_ERRORS as e:
            raise corrupt(self._what, reason_words(e)) from None


@dataclass
class TarMember:
    info: tarfile.TarInfo
    tar: tarfile.TarFile
    what: str = "layer"

    def open(self) -> IO[bytes]:
        """The file's bytes (a sparse file's holes read as zeros)."""
        f = self.tar.extractfile(self.info)
        if f is None:
            raise BadImageError(f"{self.info.name}: not a regular file")
        return io.BufferedReader(_MemberReader(f, f"{self.what} ({self.info.name})"), READ_BUFFER)

    def sparse(self) -> Regions | None:
        """A sparse file's data regions (offset, length), checked to be in order and
        inside the file; None for a plain file."""
        found = cast("list[tuple[int, int]] | None", getattr(self.info, "sparse", None))
        if found is None:
            return None
        numbers = [n for region in found for n in region]
        stored = sum(length for _, length in found)  # tarfile keeps no stored size
        try:
            return sparse_regions(numbers, self.info.size, stored, self.info.name)
        except TarError as e:
            raise corrupt(self.what, str(e)) from None

    def regions(self) -> Iterator[tuple[int, bytes]]:
        """A sparse file's stored data as (offset in the file, bytes), the holes passed
        over unread, so that flattening can leave them holes."""
        f = self.tar.extractfile(self.info)
        if f is None:
            raise BadImageError(f"{self.info.name}: not a regular file")
        # tarfile's own file object under the buffer: seeking it only moves its position
        raw = cast(io.BufferedReader, f).raw
        what = f"{self.what} ({self.info.name})"
        for offset, length in self.sparse() or ():
            try:
                raw.seek(offset, io.SEEK_SET)
                while length:
                    chunk = raw.read(min(length, READ_BUFFER))
                    if not chunk:
                        raise EOFError("the archive ends inside a sparse file")
                    yield offset, chunk
                    offset += len(chunk)
                    length -= len(chunk)
            except CORRUPT_ERRORS as e:
                raise corrupt(what, reason_words(e)) from None


class _ChunkReader(io.RawIOBase):
    """A raw stream over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


class _Counting(_Wrapper):
    """Counts the tar bytes handed to tarfile and whether their end was reached."""

    def __init__(self, inner: IO[bytes]) -> None:
        super().__init__(inner)
        self.count = 0
        self.eof = 0  # how many reads found the end (true once it was reached)

    def _seen(self, data: bytes) -> None:
        self.count += len(data)
        if not data:
            if self.eof > 8:
                # tarfile skips a member's data by reading it, and at the end of the stream
                # keeps reading nothing: a header claiming 2**62 bytes would never end
                raise EOFError("the archive ends inside a member")
            self.eof += 1


def iter_tar(
    reader: VerifyingReader, what: str, diff_id: str | None = None, digest: str = ""
) -> Iterator[TarMember]:
    """The members of one layer in order, then the layer's digest check and, when the
    config gives one, its diff_id's (`digest` names the layer in that error)."""
    tar_hash = diff_id_hash()
    prefetch = Prefetch(decompressed_chunks(reader, what, tar_hash))  # the scan's pipeline
    try:
        counted = _Counting(cast(IO[bytes], _ChunkReader(iter(prefetch))))
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
        # Drain the decompressor to its end (so gzip checks its CRC, every byte of the
        # tar is hashed and the blob's digest is checked at its EOF).
        while counted.read(READ_BUFFER):
            pass
        check_diff_id(digest or what, f"sha256:{tar_hash.hexdigest()}", diff_id)
    except _TAR_ERRORS as e:
        reader.after_error()
        raise corrupt(what, reason_words(e)) from None
    finally:
        prefetch.close()
        reader.close()


def entry_kind(type_flag: bytes) -> FileKind | None:
    """The kind of a tar member from its type flag (b"0", b"5", ...); None if unsupported."""
    return _KINDS.get(type_flag)


def _gunzip(first: bytes, reader: io.RawIOBase) -> Iterator[bytes]:
    """Inflate a gzip stream of one or more members; zero padding after the last member is
    allowed (as Python's gzip and GNU gzip allow it), anything else after it is not."""
    d = _INFLATE.decompressobj(31)
    pending = first
    while True:
        if not pending:
            pending = reader.read(READ_BUFFER)
            if not pending:
                break
        if d.eof:  # a member ended: what follows is another member or zero padding
            if not pending.strip(b"\0"):
                pending = b""
                continue
            if not pending.lstrip(b"\0").startswith(GZIP_MAGIC[:1]):
                raise EOFError("data after the end of the gzip stream")
            pending = pending.lstrip(b"\0")
            d = _INFLATE.decompressobj(31)
        out = d.decompress(pending, CHUNK)
        if out:
            yield out
        pending = d.unused_data if d.eof else d.unconsumed_tail
        while not d.eof and not pending and len(out) == CHUNK:  # output held back
            out = d.decompress(b"", CHUNK)
            if out:
                yield out
    if not d.eof:
        raise EOFError("the gzip stream ends early")


class _Prefixed(io.RawIOBase):
    def __init__(self, first: bytes, rest: io.RawIOBase) -> None:
        super().__init__()
        self._first, self._rest = first, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._first[: len(buffer)] if self._first else self._rest.read(len(buffer))
        self._first = self._first[len(data) :]
        buffer[: len(data)] = data
        return len(data)


def decompressed_chunks(
    reader: VerifyingReader, what: str, tar_hash: Any | None = None
) -> Iterator[bytes]:
    """A layer blob's tar bytes in chunks of at most CHUNK bytes, however it is compressed;
    then its digest is checked. Each chunk also goes into `tar_hash` (in the thread
    that inflates, when run under Prefetch). Errors name `what`."""

    def chunks() -> Iterator[bytes]:
        first = reader.read(READ_BUFFER) or b""
        kind = detect_compression(first[:4])
        if kind is Compression.GZIP:
            yield from _gunzip(first, reader)
        elif kind is Compression.ZSTD:
            source = _Prefixed(first, reader)
            stream = zstandard.ZstdDecompressor().stream_reader(
                cast(IO[bytes], source), read_size=READ_BUFFER, read_across_frames=True
            )
            while out := stream.read(CHUNK):
                yield out
        else:
            if first:
                yield first
            while more := reader.read(READ_BUFFER):
                yield more

    try:
        for chunk in chunks():
            if tar_hash is not None:
                tar_hash.update(chunk)
            yield chunk
        reader.finish()
    except CORRUPT_ERRORS as e:
        reader.after_error()
        raise corrupt(what, reason_words(e)) from None
    finally:
        reader.close()


_DONE = object()


class Prefetch:
    """Runs an iterator in a thread of its own, `depth` items ahead of the consumer, so
    reading, hashing and inflating (which release the GIL) overlap with parsing.
    The producer's exception is raised in the consumer; `close()` stops the producer."""

    def __init__(self, items: Iterator[bytes], depth: int = 4) -> None:
        self._items = items
        self._queue: queue.Queue[object] = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as e:  # handed to the consumer
            self._put(e)
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[bytes]:
        try:
            while True:
                item = self._queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield cast(bytes, item)
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class HashThread:
    """A hash updated in a thread of its own, `depth` chunks behind the caller (hashlib
    releases the GIL for large updates): a layer's diff_id is hashed beside the thread
    that inflates it and the one that parses it, not after either."""

    def __init__(self, h: Any, depth: int = 4) -> None:
        self._hash = h
        self._queue: queue.Queue[bytes | None] = queue.Queue(depth)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._hash.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def hexdigest(self) -> str:
        """The digest of every chunk given (the thread is ended first)."""
        self.close()
        return str(self._hash.hexdigest())
