"""A streaming tar reader for the scan: headers parsed straight from decompressed chunks,
file data handed out only when asked for, everything else skipped without a copy.

The standard library's `tarfile` in stream mode reads through four layers of Python
file objects a few KiB at a time; over a layer of 20,000 files that is most of the
scan's cost. This reader takes the decompressed bytes in large chunks (kcompat.layers
gives 4 MiB) and keeps one buffer.

It reads what container layers use: POSIX ustar (with its name prefix), GNU long names
and link names (`L`, `K`), and pax extended headers (`x` per member, `g` global) for
path, linkpath, size, uid and gid. Every header's checksum is verified. A header that
fails it, a number that is not one, or data cut short raises `TarError`: Go's
archive/tar (what docker and containerd unpack with) refuses these too. Like Go's
reader, the end of the stream right after the last member's data is accepted as the
end of the archive (umoci 0.4 writes layers so), but only when that data is all there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, cast

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_USTAR = b"ustar\x00"
# tar type flags, as tarfile spells them
REGTYPE, AREGTYPE, CONTTYPE = b"0", b"\x00", b"7"
LNKTYPE, SYMTYPE, DIRTYPE = b"1", b"2", b"5"
GNU_LONGNAME, GNU_LONGLINK, PAX_HEADER, PAX_GLOBAL = b"L", b"K", b"x", b"g"
FILE_TYPES = frozenset({REGTYPE, AREGTYPE, CONTTYPE})
_NO_DATA = frozenset({LNKTYPE, SYMTYPE, DIRTYPE, b"3", b"4", b"6"})
_META_MAX = 1 << 20  # a long name or pax header larger than this is not a real one


class TarError(Exception):
    """The tar stream is malformed or cut short; the message says where."""


class TarHeader(NamedTuple):
    """One member's header, with the attribute names of tarfile.TarInfo."""

    name: str
    type: bytes
    mode: int
    uid: int
    gid: int
    size: int
    linkname: str
    devmajor: int
    devminor: int


def _number(field: bytes, what: str) -> int:
    if field[:1] in (b"\x80", b"\xff"):  # GNU base-256
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * (len(field) - 1))) if field[0] == 0xFF else value
    text = field.split(b"\x00", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarError(f"{what} is not a number: {text[:20]!r}") from None


def _text(field: bytes) -> str:
    return field.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _pax(data: bytes) -> dict[str, str]:
    """pax records, "LEN key=value\\n" each (POSIX.1-2001, pax Extended Header)."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + 24)
        if space < 0:
            raise TarError("bad pax header record")
        length = int(data[pos:space] or b"0")
        record = data[space + 1 : pos + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise TarError("bad pax header record")
        key, _, value = record[:-1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


class TarStream:
    """Iterate to get each member's header; between two headers, `read` and `skip` give
    or pass over that member's data (whatever is left unread is skipped)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""
        self._pos = 0
        self._left = 0  # unread data bytes of the current member
        self._pad = 0  # its padding to the next block
        self.end_seen = False

    # -- the buffer -------------------------------------------------------------------
    def _available(self) -> int:
        return len(self._buf) - self._pos

    def _fill(self, n: int) -> bool:
        """At least `n` bytes buffered; False if the stream ends first."""
        have = self._available()
        if have >= n:
            return True
        parts = [self._buf[self._pos :]]
        for chunk in self._chunks:
            parts.append(chunk)
            have += len(chunk)
            if have >= n:
                break
        self._buf = b"".join(parts)
        self._pos = 0
        return have >= n

    def _take(self, n: int) -> bytes:
        if not self._fill(n):
            raise TarError(f"the archive ends inside a member ({n - self._available()} "
                           "bytes missing)")  # fmt: skip
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    def _drop(self, n: int) -> int:
        """Pass over `n` bytes; how many of them the stream did not have."""
        have = self._available()
        if n <= have:
            self._pos += n
            return 0
        n -= have
        self._buf, self._pos = b"", 0
        for chunk in self._chunks:
            if n < len(chunk):
                self._buf, self._pos = chunk, n
                return 0
            n -= len(chunk)
        return n

    # -- the current member's data ----------------------------------------------------
    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        out = self._take(n)
        self._left -= n
        return out

    def read_whole(self, head: bytes) -> bytes:
        """`head` (what was read of the member so far) and the rest of its data, copied
        once into one buffer: a file of 100 MB costs 100 MB, not three times that."""
        n = self._left
        out = bytearray(len(head) + n)
        out[: len(head)] = head
        at = len(head)
        while n:
            if self._available() == 0:
                chunk = next(self._chunks, None)
                if chunk is None:
                    raise TarError(f"the archive ends inside a member ({n} bytes missing)")
                self._buf, self._pos = chunk, 0
            take = min(n, self._available())
            out[at : at + take] = memoryview(self._buf)[self._pos : self._pos + take]
            self._pos += take
            at += take
            n -= take
        self._left = 0
        # A bytearray: kcompat's readers of file data (struct, re, slicing, find) take it
        # as they take bytes, and handing it out spares a copy of the whole file.
        return cast(bytes, out)

    def skip(self) -> None:
        missing = self._drop(self._left + self._pad)
        if missing > self._pad:
            raise TarError(f"the archive ends inside a member ({missing - self._pad} bytes "
                           "missing)")  # fmt: skip
        self._left = self._pad = 0

    # -- headers ----------------------------------------------------------------------
    def _meta(self, size: int, what: str) -> bytes:
        if size > _META_MAX:
            raise TarError(f"{what} of {size} bytes")
        data = self._take(size)
        if self._drop(-size % BLOCK):
            raise TarError(f"the archive ends after a {what}")
        return data

    def __iter__(self) -> Iterator[TarHeader]:
        pax_global: dict[str, str] = {}
        pax: dict[str, str] = {}
        long_name = long_link = None
        while True:
            self.skip()
            if not self._fill(BLOCK):
                if self._available() == 0 and not pax and long_name is None:
                    return  # no end-of-archive blocks: accepted when nothing is cut off
                raise TarError("the archive ends inside a header")
            block = self._buf[self._pos : self._pos + BLOCK]
            self._pos += BLOCK
            if block == _ZERO_BLOCK:
                self.end_seen = True
                return
            stored = _number(block[148:156], "header checksum")
            unsigned = sum(block) - sum(block[148:156]) + 8 * 32
            if stored != unsigned:
                raise TarError(f"bad header checksum (stored {stored}, computed {unsigned})")
            type_ = block[156:157]
            size = _number(block[124:136], "size")
            if type_ == GNU_LONGNAME:
                long_name = _text(self._meta(size, "GNU long name"))
                continue
            if type_ == GNU_LONGLINK:
                long_link = _text(self._meta(size, "GNU long link name"))
                continue
            if type_ == PAX_HEADER:
                pax.update(_pax(self._meta(size, "pax header")))
                continue
            if type_ == PAX_GLOBAL:
                pax_global.update(_pax(self._meta(size, "pax global header")))
                continue
            name = _text(block[0:100])
            if block[257:263] == _USTAR and block[345] != 0:
                name = _text(block[345:500]) + "/" + name
            fields = {**pax_global, **pax}
            if type_ == AREGTYPE and name.endswith("/"):
                type_ = DIRTYPE
            header = TarHeader(
                name=fields.get("path", long_name if long_name is not None else name),
                type=type_,
                mode=_number(block[100:108], "mode"),
                uid=int(fields["uid"]) if "uid" in fields else _number(block[108:116], "uid"),
                gid=int(fields["gid"]) if "gid" in fields else _number(block[116:124], "gid"),
                size=int(fields["size"]) if "size" in fields else size,
                linkname=fields.get(
                    "linkpath", long_link if long_link is not None else _text(block[157:257])
                ),
                devmajor=_number(block[329:337], "devmajor"),
                devminor=_number(block[337:345], "devminor"),
            )
            if header.size < 0:
                raise TarError(f"{header.name}: negative size")
            pax, long_name, long_link = {}, None, None
            # links, directories, devices and fifos carry no data whatever their size
            # field says (as tarfile and Go's archive/tar read them)
            data = 0 if type_ in _NO_DATA else header.size
            self._left, self._pad = data, -data % BLOCK
            yield header
