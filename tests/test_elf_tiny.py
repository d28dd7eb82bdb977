"""kcompat's ELF decoder on tiny real files, whole, cut short and corrupted.

The files in tests/fixtures/tiny_elf/ were made by binutils' assemblers and linkers
(tests/fixtures/tiny_elf/make.sh, which says what each one holds): x86-64, i386 (32-bit),
aarch64 and s390x (big-endian), each a static executable, a shared library with version
definitions and a dynamic executable needing it, and an x86-64 static PIE. As in
pypa/packaging's tests of its ELF reader, real linker output is the base and every case
is a cut or a change of it, so each one is a single visible step from a file that
decodes.

Every prefix of every file and every targeted corruption (each header, table and chain
field set to values past the end, huge counts, bad string indices; tables laid over each
other) must either decode or raise `UnreadableError` with the decoder's own reason:
never another exception, never the catch-all's "struct.error: ..." (a bound the decoder
forgot to check), never a hang.
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from kcompat import elf, goinfo
from kcompat.elffile import (
    PT_INTERP,
    SHT_DYNAMIC,
    SHT_DYNSYM,
    SHT_GNU_VERDEF,
    SHT_GNU_VERNEED,
    SHT_GNU_VERSYM,
    Reader,
)
from tests.deadline import deadline

TINY = Path(__file__).resolve().parent / "fixtures" / "tiny_elf"
FILES = sorted(p.name for p in TINY.iterdir() if p.is_file() and p.name != "make.sh")

# What make.sh built each arch with: OCI arch, ELF class, byte order, the PT_INTERP it
# gave the dynamic executable, the ABI tag it wrote
ARCHES = {
    "x86_64": ("amd64", 64, "little", "/lib64/ld-linux-x86-64.so.2", "3.2.0"),
    "i386": ("386", 32, "little", "/lib/ld-linux.so.2", "3.2.0"),
    "aarch64": ("arm64", 64, "little", "/lib/ld-linux-aarch64.so.1", "3.7.0"),
    "s390x": ("s390x", 64, "big", "/lib/ld64.so.1", "3.2.0"),
}
# read_elf's last resort turns a Python error into UnreadableError("error: ...") (struct.error
# is named "error"), "IndexError: ..."
_FALLBACK = re.compile(r"^(error|ValueError|KeyError|IndexError|OverflowError): ")
# one decode of a file of a few KiB takes well under a millisecond of CPU: a count or size
# field that makes the decoder loop over gigabytes takes seconds. CPU time, and a bound
# far above the normal, so a loaded machine cannot fail it (not a speed test)
_SLOW = 5.0


def _data(name: str) -> bytes:
    return (TINY / name).read_bytes()


@pytest.fixture(autouse=True)
def _deadline() -> Iterator[None]:
    """A hang fails the test instead of stalling the suite."""
    with deadline(60.0, "the ELF decoder hangs"):
        yield


def _outcome(data: bytes, *, both: bool = True) -> elf.ElfInfo | None:
    """The decoded file (with its code, and the same without when `both`), or None when
    it is unreadable for the decoder's own reason; anything else fails the test."""
    start = time.process_time()
    try:
        info = elf.read_elf(data, with_code=True)
        plain = elf.read_elf(data) if both else replace(info, code=())
    except elf.UnreadableError as e:
        assert not _FALLBACK.match(str(e)), f"an unchecked bound: {e}"
        assert str(e), "an UnreadableError without a reason"
        return None
    finally:
        took = time.process_time() - start
        assert took < _SLOW, f"{took:.2f} s of CPU for a {len(data)}-byte file"
    assert replace(info, code=()) == plain  # the code is all that with_code adds
    return info


# -- the files themselves ------------------------------------------------------------


def test_the_fixture_set_is_whole() -> None:
    kinds = ("static", "dynamic", "libtiny.so.1")
    others = {"x86_64-static-pie", "x86_64-notes8"}
    assert {f"{a}-{k}" for a in ARCHES for k in kinds} | others == set(FILES)
    assert all(len(_data(n)) < 4096 for n in FILES)


@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_static(arch: str) -> None:
    oci, bits, endian, _, abi_tag = ARCHES[arch]
    info = elf.read_elf(_data(f"{arch}-static"), with_code=True)
    assert (info.arch.platform.architecture, info.arch.bits, info.arch.endian) == (
        oci,
        bits,
        endian,
    )
    assert info.type is elf.ElfType.EXEC
    assert info.linkage is elf.Linkage.STATIC
    assert info.interpreter is None
    assert info.needed == info.version_defs == ()
    assert info.version_needs == ()
    assert info.undefined == ()
    assert info.abi_tag == abi_tag
    assert info.go_version is None
    # the entry point (_start) is inside the executable code read for the disassembler
    assert any(c.vaddr <= info.entry < c.vaddr + len(c.data) for c in info.code)


@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_dynamic(arch: str) -> None:
    oci, bits, endian, interp, abi_tag = ARCHES[arch]
    data = _data(f"{arch}-dynamic")
    info = elf.read_elf(data)
    assert (info.arch.platform.architecture, info.arch.bits, info.arch.endian) == (
        oci,
        bits,
        endian,
    )
    assert info.type is elf.ElfType.EXEC
    assert info.linkage is elf.Linkage.DYNAMIC
    assert info.interpreter == interp
    assert info.needed == ("libtiny.so.1",)
    assert info.soname is None
    assert info.abi_tag == abi_tag
    assert info.version_needs == (elf.VersionNeed("libtiny.so.1", ("TINY_1.0", "TINY_2.0")),)
    assert sorted(info.undefined) == [
        elf.Symbol("tiny_new", "TINY_2.0"),
        elf.Symbol("tiny_old", "TINY_1.0"),
    ]
    assert elf.has_interpreter(data[:4096]) is True
    assert elf.has_interpreter(_data(f"{arch}-static")[:4096]) is False


@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_library(arch: str) -> None:
    info = elf.read_elf(_data(f"{arch}-libtiny.so.1"))
    assert info.arch.platform.architecture == ARCHES[arch][0]
    assert info.type is elf.ElfType.SHARED
    assert info.linkage is elf.Linkage.NONE
    assert info.soname == "libtiny.so.1"
    assert info.interpreter is None
    assert info.version_defs == ("TINY_1.0", "TINY_2.0")  # the base entry names the file
    assert info.undefined == ()
    assert info.abi_tag is None


def test_static_pie() -> None:
    info = elf.read_elf(_data("x86_64-static-pie"))
    assert info.type is elf.ElfType.PIE
    assert info.linkage is elf.Linkage.STATIC_PIE
    assert info.interpreter is None
    assert info.abi_tag == "3.2.0"


def test_notes_aligned_to_8() -> None:
    """A PT_NOTE of p_align 8 pads each note's name and description to 8 bytes (glibc's
    open_verify and readelf walk it so): the ABI tag after a note with a 4-byte
    description is found, not read 8 bytes early as garbage that runs past the end."""
    info = elf.read_elf(_data("x86_64-notes8"))
    assert info.abi_tag == "3.2.0"
    assert info.linkage is elf.Linkage.STATIC


# -- truncation ----------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_every_prefix(name: str) -> None:
    """ld writes the section header table last, so every proper prefix cuts a table the
    decoder checks against the file's size: all of them are unreadable, none decodes as
    something smaller."""
    data = _data(name)
    assert _outcome(data) is not None
    decoded = [n for n in range(len(data)) if _outcome(data[:n]) is not None]
    assert decoded == []
    full = elf.has_interpreter(data)
    for n in range(len(data)):
        assert elf.has_interpreter(data[:n]) in (None, full)
        assert goinfo.go_functions(data[:n], frozenset({"main.main"})) == {}


# -- corruption ----------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    what: str
    offset: int
    size: int  # bytes: 1, 2, 4 or 8


_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


class Layout:
    """The fields of one valid ELF file, found by this test's own reading of the gABI
    structures (not kcompat's), to be corrupted one at a time."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.bits = 64 if data[4] == 2 else 32
        self.e = "<" if data[5] == 1 else ">"
        self.word = 8 if self.bits == 64 else 4
        self.fields: list[Field] = [Field("EI_CLASS", 4, 1), Field("EI_DATA", 5, 1)]
        w = self.word
        # e_type .. e_shstrndx, after e_ident
        names = [
            "e_type",
            "e_machine",
            "e_version",
            "e_entry",
            "e_phoff",
            "e_shoff",
            "e_flags",
            "e_ehsize",
            "e_phentsize",
            "e_phnum",
            "e_shentsize",
            "e_shnum",
            "e_shstrndx",
        ]
        self.header = self._struct("", 16, names, [2, 2, 4, w, w, w, 4, 2, 2, 2, 2, 2, 2])
        h = {f.what: self.get(f) for f in self.header}
        self.phdrs = []
        for i in range(h["e_phnum"]):
            at = h["e_phoff"] + i * h["e_phentsize"]
            if self.bits == 64:
                names = ["type", "flags", "offset", "vaddr", "paddr", "filesz", "memsz", "align"]
                sizes = [4, 4, 8, 8, 8, 8, 8, 8]
            else:
                names = ["type", "offset", "vaddr", "paddr", "filesz", "memsz", "flags", "align"]
                sizes = [4] * 8
            self.phdrs.append(self._named(f"phdr[{i}].p_", at, names, sizes))
        self.shdrs = []
        for i in range(h["e_shnum"]):
            at = h["e_shoff"] + i * h["e_shentsize"]
            names = [
                "name",
                "type",
                "flags",
                "addr",
                "offset",
                "size",
                "link",
                "info",
                "addralign",
                "entsize",
            ]
            sizes = [4, 4, w, w, w, w, 4, 4, w, w]
            self.shdrs.append(self._named(f"shdr[{i}].sh_", at, names, sizes))
        for i, sh in enumerate(self.shdrs):
            self._contents(i, {k: self.get(f) for k, f in sh.items()})
        for i, ph in enumerate(self.phdrs):
            if self.get(ph["type"]) == PT_INTERP:  # the path's first and last byte
                off, size = self.get(ph["offset"]), self.get(ph["filesz"])
                self.fields += [
                    Field(f"phdr[{i}] interp[0]", off, 1),
                    Field(f"phdr[{i}] interp[-1]", off + size - 1, 1),
                ]

    def get(self, f: Field) -> int:
        (v,) = struct.unpack_from(self.e + _CODES[f.size], self.data, f.offset)
        return int(v)

    def _struct(self, prefix: str, at: int, names: list[str], sizes: list[int]) -> list[Field]:
        out = []
        for name, size in zip(names, sizes):
            out.append(Field(prefix + name, at, size))
            at += size
        self.fields += out
        return out

    def _named(self, prefix: str, at: int, names: list[str], sizes: list[int]) -> dict[str, Field]:
        return {f.what[len(prefix) :]: f for f in self._struct(prefix, at, names, sizes)}

    def _contents(self, i: int, sh: dict[str, int]) -> None:
        off, size, w, where = sh["offset"], sh["size"], self.word, f"section {i}"
        if sh["type"] == SHT_DYNAMIC:
            for k in range(size // (2 * w)):
                self._struct(f"{where} dyn[{k}].", off + 2 * w * k, ["d_tag", "d_val"], [w, w])
        elif sh["type"] == SHT_DYNSYM:
            if self.bits == 64:
                names, sizes = (
                    ["name", "info", "other", "shndx", "value", "size"],
                    [4, 1, 1, 2, 8, 8],
                )
            else:
                names, sizes = (
                    ["name", "value", "size", "info", "other", "shndx"],
                    [4, 4, 4, 1, 1, 2],
                )
            for k in range(size // sum(sizes)):
                self._struct(f"{where} sym[{k}].st_", off + k * sum(sizes), names, sizes)
        elif sh["type"] == SHT_GNU_VERSYM:
            for k in range(size // 2):
                self.fields.append(Field(f"{where} versym[{k}]", off + 2 * k, 2))
        elif sh["type"] == SHT_GNU_VERNEED:
            self._chain(
                where,
                off,
                sh["info"],
                ["vn_version", "vn_cnt", "vn_file", "vn_aux", "vn_next"],
                [2, 2, 4, 4, 4],
                ["vna_hash", "vna_flags", "vna_other", "vna_name", "vna_next"],
                [4, 2, 2, 4, 4],
            )
        elif sh["type"] == SHT_GNU_VERDEF:
            self._chain(
                where,
                off,
                sh["info"],
                ["vd_version", "vd_flags", "vd_ndx", "vd_cnt", "vd_hash", "vd_aux", "vd_next"],
                [2, 2, 2, 2, 4, 4, 4],
                ["vda_name", "vda_next"],
                [4, 4],
            )
        elif sh["type"] == 7:  # SHT_NOTE: fields padded to 8 bytes in an 8-aligned one
            at, pad = off, 8 if sh["addralign"] == 8 else 4
            while at + 12 <= off + size:
                f = self._struct(
                    f"{where} note@{at - off}.", at, ["n_namesz", "n_descsz", "n_type"], [4, 4, 4]
                )
                namesz, descsz = self.get(f[0]), self.get(f[1])
                at += -(-(12 + namesz) // pad) * pad + -(-descsz // pad) * pad

    def _chain(
        self,
        where: str,
        at: int,
        count: int,
        names: list[str],
        sizes: list[int],
        aux_names: list[str],
        aux_sizes: list[int],
    ) -> None:
        """A version chain: `count` entries, each with its count (2nd half-word, or the
        4th for verdef), auxiliary offset and `next` (the last two fields)."""
        for k in range(count):
            f = self._struct(f"{where} {names[0][:2]}[{k}].", at, names, sizes)
            cnt = self.get(f[1] if len(f) == 5 else f[3])
            aux_at = at + self.get(f[-2])
            for j in range(cnt):
                a = self._struct(
                    f"{where} {names[0][:2]}[{k}].aux[{j}].", aux_at, aux_names, aux_sizes
                )
                aux_at += self.get(a[-1])
            step = self.get(f[-1])
            if not step:
                break
            at += step

    def set(self, data: bytearray, f: Field, value: int) -> None:
        struct.pack_into(self.e + _CODES[f.size], data, f.offset, value % (1 << 8 * f.size))


def _values(f: Field, original: int, size: int) -> set[int]:
    """Zero, one off, the high bit flipped, all ones (a huge count or offset), and just
    inside, at and past the end of the file."""
    top = (1 << 8 * f.size) - 1
    vals = {0, 1, top, original + 1, original - 1, original ^ (1 << (8 * f.size - 1))}
    if f.size >= 2:
        vals |= {size - 1, size, size + 1}
    if f.size >= 4:
        vals |= {0x7FFFFFFF, size << 12}
    return {v % (top + 1) for v in vals} - {original}


@pytest.mark.parametrize("name", FILES)
def test_every_field_corrupted(name: str) -> None:
    """Each header, table and chain field of the file, one at a time, set to each value of
    `_values`; the counts say how many cases ran and that some still decode (a change of a
    field kcompat does not read) while others are refused."""
    data = _data(name)
    layout = Layout(data)
    assert len(layout.fields) > 30  # the layout was read: this file has those tables
    decoded = refused = 0
    for f in layout.fields:
        original = layout.get(f)
        for v in sorted(_values(f, original, len(data))):
            bad = bytearray(data)
            layout.set(bad, f, v)
            if _outcome(bytes(bad), both=False) is None:
                refused += 1
            else:
                decoded += 1
    assert decoded and refused


@pytest.mark.parametrize("name", FILES)
def test_tables_laid_over_each_other(name: str) -> None:
    """Every section given another's offset and size (and, separately, its type too: two
    tables of one kind), every segment another's bytes, and the two header tables over
    each other: overlapping, duplicated and mistyped tables."""
    data = _data(name)
    layout = Layout(data)
    cases = 0
    for tables, keys in (
        (layout.shdrs, ("offset", "size")),
        (layout.shdrs, ("offset", "size", "type", "entsize", "link", "info")),
        (layout.phdrs, ("offset", "filesz")),
        (layout.phdrs, ("type",)),
    ):
        for i, a in enumerate(tables):
            for j, b in enumerate(tables):
                if i == j:
                    continue
                bad = bytearray(data)
                for k in keys:
                    layout.set(bad, a[k], layout.get(b[k]))
                _outcome(bytes(bad))
                cases += 1
    header = {f.what: f for f in layout.header}
    for dst, src in (("e_shoff", "e_phoff"), ("e_phoff", "e_shoff"), ("e_shstrndx", "e_shnum")):
        bad = bytearray(data)
        layout.set(bad, header[dst], layout.get(header[src]))
        _outcome(bytes(bad))
        cases += 1
    assert cases > 20


@pytest.mark.parametrize("name", FILES)
def test_no_section_headers(name: str) -> None:
    """A file whose section headers are gone (e_shnum 0, as sstrip leaves it) is read from
    its program headers: the dynamic segment and DT_STRTAB."""
    data = _data(name)
    layout = Layout(data)
    header = {f.what: f for f in layout.header}
    bad = bytearray(data)
    layout.set(bad, header["e_shnum"], 0)
    info, full = _outcome(bytes(bad)), elf.read_elf(data)
    assert info is not None
    assert (info.interpreter, info.needed, info.soname) == (
        full.interpreter,
        full.needed,
        full.soname,
    )


@pytest.mark.parametrize("name", FILES)
def test_reader_alone(name: str) -> None:
    """kcompat.vmkernel reads kernel images through the bare Reader: its bounds hold by
    themselves, not only under read_elf's last resort."""
    data = _data(name)
    assert Reader(data).arch.machine == elf.read_elf(data).arch.machine
    layout = Layout(data)
    for f in layout.header:
        for v in sorted(_values(f, layout.get(f), len(data))):
            bad = bytearray(data)
            layout.set(bad, f, v)
            try:
                Reader(bytes(bad))
            except elf.UnreadableError as e:
                assert not _FALLBACK.match(str(e))


def test_code_view_reads_as_the_bytes_it_stands_for() -> None:
    """A CodeView (an executable segment read in place) answers find, len, an index and
    a slice as the copied-out bytes would, bounds and negative positions included."""
    data = bytearray(b"\x0f\x05xx\x60\xffab\x0f\x05" * 7 + b"tail")
    for start, size in ((0, len(data)), (3, 40), (10, 0), (len(data) - 5, 50)):
        view = elf.CodeView(data, start, size)
        want = bytes(data[start : start + size])
        assert len(view) == len(want) and view.materialized() == want
        for sub in (b"\x0f\x05", b"\x60\xff", b"a", b"zz", b""):
            for lo in (0, 1, 5, -3, -100, 200):
                for hi in (None, 0, 7, -2, 500):
                    assert view.find(sub, lo, hi) == want.find(sub, lo, hi), (start, sub, lo, hi)
        for i in (0, 1, len(want) - 1, -1, -len(want)) if want else ():
            assert view[i] == want[i]
        for sl in (slice(2, 9), slice(-4, None), slice(None, 3), slice(5, 2), slice(0, 99, 3)):
            assert view[sl] == want[sl]
        with pytest.raises(IndexError):
            view[len(want)]


def test_code_ranges_are_read_in_place() -> None:
    """read_elf(with_code=True) copies no segment: vsyscall reads every x86-64 file's."""
    data = _data(FILES[0])
    info = elf.read_elf(data, with_code=True)
    assert info.code and all(isinstance(c.data, elf.CodeView) for c in info.code)
