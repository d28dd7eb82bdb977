"""A streaming tar reader for the scan: headers parsed straight from decompressed chunks,
file data handed out only when asked for, everything else skipped without a copy.

The standard library's `tarfile` in stream mode reads through four layers of Python
file objects a few KiB at a time; over a layer of 20,000 files that is most of the
scan's cost. This reader takes the decompressed bytes in large chunks (kcompat.layers
gives 4 MiB) and keeps one buffer.

It reads what container layers use: POSIX ustar (with its name prefix), GNU long names
and link names (`L`, `K`), pax extended headers (`x` per member, `g` global) for
path, linkpath, size, uid and gid, and sparse files (`tar -S`): GNU's old `S` entries
with their extension blocks, and pax sparse formats 0.0, 0.1 and 1.0 (GNU.sparse.*
keywords; 1.0 keeps the map at the start of the data). A sparse member's header has
its real size and its data reads with the holes as zeros, so the scan judges the file
that will exist, not the stored fragments. Every header's checksum is verified. A header that
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
REGTYPE, AREGTYPE, CONTTYPE, GNU_SPARSE = b"0", b"\x00", b"7", b"S"
LNKTYPE, SYMTYPE, DIRTYPE = b"1", b"2", b"5"
GNU_LONGNAME, GNU_LONGLINK, PAX_HEADER, PAX_GLOBAL = b"L", b"K", b"x", b"g"
FILE_TYPES = frozenset({REGTYPE, AREGTYPE, CONTTYPE, GNU_SPARSE})
_NO_DATA = frozenset({LNKTYPE, SYMTYPE, DIRTYPE, b"3", b"4", b"6"})
_META_MAX = 1 << 20  # a long name or pax header larger than this is not a real one
_SPARSE_MAX = 1 << 16  # more data regions than this in one file is not a real sparse map


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
    # a sparse file's data regions (offset, length) in the file; None for a plain file
    sparse: tuple[tuple[int, int], ...] | None = None


Regions = tuple[tuple[int, int], ...]


def sparse_regions(numbers: list[int], real_size: int, stored: int, name: str) -> Regions:
    """A sparse map (offset, length pairs, flattened) checked as Go's archive/tar checks
    it: in order, not overlapping, inside the file, and adding up to the stored data.
    Empty regions (GNU tar ends its maps with one at the file's end) are dropped."""
    if len(numbers) % 2 or len(numbers) > 2 * _SPARSE_MAX:
        raise TarError(f"{name}: bad sparse map ({len(numbers)} numbers)")
    out: list[tuple[int, int]] = []
    end = total = 0
    for i in range(0, len(numbers), 2):
        offset, length = numbers[i], numbers[i + 1]
        if offset < 0 or length < 0 or offset + length > real_size:
            raise TarError(f"{name}: bad sparse map (region {offset}+{length})")
        if not length:
            continue
        if offset < end:
            raise TarError(f"{name}: bad sparse map (region {offset} overlaps the one before)")
        out.append((offset, length))
        end = offset + length
        total += length
    if total != stored:
        raise TarError(f"{name}: sparse map holds {total} bytes, the archive {stored}")
    return tuple(out)


def _decimal(text: str, what: str) -> int:
    if not text.isdigit() or len(text) > 20:
        raise TarError(f"{what} is not a number")
    return int(text)


def _number(field: bytes, what: str) -> int:
    if field[:1] in (b"\x80", b"\xff"):  # GNU base-256
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * (len(field) - 1))) if field[0] == 0xFF else value
    text = field.split(b"\x00", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:  # the bytes are not shown: they are binary garbage, as a rule
        raise TarError(f"{what} is not an octal number (not a tar header)") from None


def _text(field: bytes) -> str:
    return field.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


_SPARSE_00 = " sparse 0.0 map"  # where _pax gathers format 0.0's pairs (no real key has a space)


def _pax(data: bytes) -> dict[str, str]:
    """pax records, "LEN key=value\\n" each (POSIX.1-2001, pax Extended Header)."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + 24)
        if space < 0:
            raise TarError("bad pax header record")
        digits = data[pos:space]
        if not digits.isdigit():
            raise TarError("bad pax header record (its length is not a number)")
        length = int(digits)
        record = data[space + 1 : pos + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise TarError("bad pax header record")
        key, _, value = record[:-1].partition(b"=")
        k, v = key.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")
        if k in ("GNU.sparse.offset", "GNU.sparse.numbytes"):  # format 0.0: repeated keys,
            k, v = _SPARSE_00, f"{out[_SPARSE_00]},{v}" if _SPARSE_00 in out else v  # in order
        out[k] = v
        pos += length
    return out


class TarStream:
    """Iterate to get each member's header; between two headers, `read` and `skip` give
    or pass over that member's data (whatever is left unread is skipped)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""
        self._pos = 0
        self._left = 0  # unread data bytes of the current member (as stored)
        self._pad = 0  # its padding to the next block
        # a sparse member: its regions, the next one's index, the position in the file
        # and the file's real size (holes read as zeros)
        self._sparse: Regions | None = None
        self._region = self._at = self._size = 0
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
        if self._sparse is not None:
            return self._sparse_read(n)
        n = self._left if n < 0 else min(n, self._left)
        out = self._take(n)
        self._left -= n
        return out

    def _sparse_read(self, n: int) -> bytes:
        regions = cast(Regions, self._sparse)
        n = self._size - self._at if n < 0 else min(n, self._size - self._at)
        parts: list[bytes] = []
        while n:
            offset, length = regions[self._region] if self._region < len(regions) else (
                self._size, 0)  # fmt: skip
            if self._at < offset:  # in a hole
                k = min(n, offset - self._at)
                parts.append(bytes(k))
            else:
                k = min(n, offset + length - self._at)
                parts.append(self._take(k))
                self._left -= k
                if self._at + k == offset + length:
                    self._region += 1
            self._at += k
            n -= k
        return b"".join(parts)

    def _copy_into(self, out: bytearray, at: int, n: int) -> None:
        """The next `n` stored bytes into `out` at `at`, chunk by chunk (no join)."""
        self._left -= n
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

    def read_whole(self, head: bytes) -> bytes:
        """`head` (what was read of the member so far) and the rest of its data, copied
        once into one buffer: a file of 100 MB costs 100 MB, not three times that.
        A sparse file's holes are the buffer's zeros."""
        if self._sparse is None:
            out = bytearray(len(head) + self._left)
            out[: len(head)] = head
            self._copy_into(out, len(head), self._left)
        else:
            out = bytearray(self._size)
            out[: len(head)] = head
            for offset, length in self._sparse[self._region :]:
                start = max(offset, self._at)
                self._copy_into(out, start, offset + length - start)
            self._region, self._at = len(self._sparse), self._size
        # A bytearray: kcompat's readers of file data (struct, re, slicing, find) take it
        # as they take bytes, and handing it out spares a copy of the whole file.
        return cast(bytes, out)

    def skip(self) -> None:
        missing = self._drop(self._left + self._pad)
        if missing > self._pad:
            raise TarError(f"the archive ends inside a member ({missing - self._pad} bytes "
                           "missing)")  # fmt: skip
        self._left = self._pad = 0
        self._sparse = None

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
                uid=_decimal(fields["uid"], "pax uid")
                if "uid" in fields
                else _number(block[108:116], "uid"),
                gid=_decimal(fields["gid"], "pax gid")
                if "gid" in fields
                else _number(block[116:124], "gid"),
                size=_decimal(fields["size"], "pax size") if "size" in fields else size,
                linkname=fields.get(
                    "linkpath", long_link if long_link is not None else _text(block[157:257])
                ),
                devmajor=_number(block[329:337], "devmajor"),
                devminor=_number(block[337:345], "devminor"),
            )
            if header.size < 0:
                raise TarError(f"{header.name}: negative size")
            # links, directories, devices and fifos carry no data whatever their size
            # field says (as tarfile and Go's archive/tar read them)
            data = 0 if type_ in _NO_DATA else header.size
            self._left, self._pad = data, -data % BLOCK
            if type_ == GNU_SPARSE:
                header = self._gnu_sparse(header, block)
            elif type_ in FILE_TYPES and ("GNU.sparse.major" in pax or "GNU.sparse.size" in pax):
                header = self._pax_sparse(header, pax)
            pax, long_name, long_link = {}, None, None
            yield header

    # -- sparse files -----------------------------------------------------------------
    def _sparse_start(self, header: TarHeader, numbers: list[int], real: int) -> TarHeader:
        regions = sparse_regions(numbers, real, self._left, header.name)
        self._sparse, self._region, self._at, self._size = regions, 0, 0, real
        return header._replace(size=real, sparse=regions)

    def _gnu_sparse(self, header: TarHeader, block: bytes) -> TarHeader:
        """Old GNU `S`: four (offset, length) slots of 12+12 octal digits in the header,
        then 21 in each extension block while the "is extended" byte is set."""
        numbers: list[int] = []

        def slots(area: bytes) -> None:
            for at in range(0, len(area), 24):
                if area[at] == 0:  # an unused slot ends the list
                    return
                numbers.append(_number(area[at : at + 12], "sparse offset"))
                numbers.append(_number(area[at + 12 : at + 24], "sparse length"))

        slots(block[386:482])
        extended = block[482]
        while extended:
            if len(numbers) > 2 * _SPARSE_MAX:
                raise TarError(f"{header.name}: sparse map of more than {_SPARSE_MAX} regions")
            ext = self._take(BLOCK)
            slots(ext[:504])
            extended = ext[504]
        return self._sparse_start(header, numbers, _number(block[483:495], "sparse size"))

    def _pax_sparse(self, header: TarHeader, pax: dict[str, str]) -> TarHeader:
        """pax sparse formats: 0.0 (GNU.sparse.offset/numbytes pairs), 0.1
        (GNU.sparse.map), 1.0 (the map at the start of the data, GNU.sparse.realsize);
        the real name in GNU.sparse.name when given. Other versions: a plain file, as
        Go's archive/tar reads them."""
        name = pax.get("GNU.sparse.name", header.name)
        header = header._replace(name=name)
        version = (pax.get("GNU.sparse.major"), pax.get("GNU.sparse.minor"))
        if version == ("1", "0"):
            real = _decimal(pax.get("GNU.sparse.realsize", ""), f"{name}: sparse size")
            return self._sparse_start(header, self._map_10(name), real)
        listed = pax.get("GNU.sparse.map", pax.get(_SPARSE_00))
        if version not in ((None, None), ("0", "0"), ("0", "1")) or listed is None:
            return header
        real = _decimal(pax.get("GNU.sparse.size", ""), f"{name}: sparse size")
        numbers = [_decimal(v, f"{name}: sparse map") for v in listed.split(",")] if listed else []
        count = pax.get("GNU.sparse.numblocks")
        if count is not None and _decimal(count, f"{name}: sparse count") * 2 != len(numbers):
            raise TarError(f"{name}: sparse map does not have GNU.sparse.numblocks regions")
        return self._sparse_start(header, numbers, real)

    def _map_10(self, name: str) -> list[int]:
        """Format 1.0's map, read from the data: decimal numbers one a line (the count of
        regions, then each one's offset and length), in whole blocks."""
        text = b""
        lines, needed = 0, -1
        while needed < 0 or lines < needed:
            if self._left < BLOCK or len(text) >= _META_MAX:
                raise TarError(f"{name}: bad sparse map")
            block = self._take(BLOCK)
            self._left -= BLOCK
            text += block
            lines += block.count(b"\n")
            if needed < 0 and lines:
                count = _decimal(text[: text.index(b"\n")].decode("latin-1"), f"{name}: sparse")
                if count > _SPARSE_MAX:
                    raise TarError(f"{name}: sparse map of more than {_SPARSE_MAX} regions")
                needed = 1 + 2 * count
        words = text.split(b"\n")[1:needed]
        return [_decimal(w.decode("latin-1"), f"{name}: sparse map") for w in words]
