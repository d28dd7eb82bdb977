"""The inputs bench/fuzz.py found (and a few made by hand) that crashed or hung a
decoder, replayed: each must now end in the decoder's documented error, quickly.

The ELF cases are built here from a small valid file, so each one is a single visible
change from something that decodes; the hangs are sized so that the old code would take
seconds (quadratic loops) and the fixed code takes microseconds.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from kcompat import elf, formats
from tests.deadline import deadline

EM_ARM = elf.EM_ARM


@pytest.fixture(autouse=True)
def _deadline() -> Iterator[None]:
    """A hang fails the test instead of stalling the suite."""
    with deadline(60.0, "the decoder hangs again"):
        yield


def make_elf(
    *,
    machine: int = elf.EM_X86_64,
    interp: bytes | None = b"/lib64/ld-linux-x86-64.so.2\0",
    dynamic: list[tuple[int, int]] | None = None,
    sections: list[tuple[str, int, bytes, int, int]] = (),  # type: ignore[assignment]
    pad: int = 0,
) -> bytes:
    """A little-endian ELF64 ET_DYN file: one PT_LOAD over everything, PT_INTERP,
    PT_DYNAMIC (DT_STRTAB, DT_STRSZ, DT_NEEDED libc.so.6, DT_NULL unless `dynamic`
    replaces them) and, when `sections` (name, sh_type, content, sh_link, sh_info) are
    given, a section table after `pad` zero bytes."""
    strtab = b"\0libc.so.6\0"
    phnum = 3 if interp is not None else 2
    at = 64 + 56 * phnum
    interp_off, at = at, at + len(interp or b"")
    strtab_off, at = at, at + len(strtab)
    dyn_off = (at + 7) & ~7
    tags = dynamic if dynamic is not None else [(5, strtab_off), (10, len(strtab)), (1, 1), (0, 0)]
    dyn = b"".join(struct.pack("<qQ", t, v) for t, v in tags)
    body = bytearray(dyn_off + len(dyn) + pad)
    body[interp_off : interp_off + len(interp or b"")] = interp or b""
    body[strtab_off : strtab_off + len(strtab)] = strtab
    body[dyn_off : dyn_off + len(dyn)] = dyn
    shoff = shnum = shstrndx = 0
    if sections:
        names = b"\0" + b"".join(n.encode() + b"\0" for n, *_ in sections) + b".shstrtab\0"
        table = [(0, 0, 0, 0, 0, 0)]  # name, type, offset, size, link, info
        name_at = 1
        for name, sh_type, content, link, info in sections:
            table.append((name_at, sh_type, len(body), len(content), link, info))
            name_at += len(name) + 1
            body += content
        table.append((name_at, 3, len(body), len(names), 0, 0))
        body += names
        body += bytes(-len(body) % 8)
        shoff, shnum, shstrndx = len(body), len(table), len(table) - 1
        for n, t, o, s, link, info in table:
            entsize = 24 if t == elf.SHT_DYNSYM else 0
            body += struct.pack("<IIQQQQIIQQ", n, t, 0, o, o, s, link, info, 8, entsize)
    head = elf.ELF_MAGIC + bytes([2, 1, 1]) + bytes(9)
    head += struct.pack("<HHIQQQIHHHHHH", 3, machine, 1, 0x1000, 64, shoff, 0, 64, 56, phnum,
                        64, shnum, shstrndx)  # fmt: skip
    phdrs = struct.pack("<IIQQQQQQ", elf.PT_LOAD, 5, 0, 0, 0, len(body), len(body), 0x1000)
    if interp is not None:
        phdrs += struct.pack("<IIQQQQQQ", elf.PT_INTERP, 4, interp_off, interp_off, 0,
                             len(interp), len(interp), 1)  # fmt: skip
    phdrs += struct.pack("<IIQQQQQQ", elf.PT_DYNAMIC, 6, dyn_off, dyn_off, 0, len(dyn),
                         len(dyn), 8)  # fmt: skip
    body[: len(head) + len(phdrs)] = head + phdrs
    return bytes(body)


def test_the_base_file_decodes() -> None:
    info = elf.read_elf(make_elf(), with_code=True)
    assert info.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert info.needed == ("libc.so.6",)
    assert info.arch.platform.architecture == "amd64"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (make_elf()[:40], "truncated ELF header"),
        (make_elf(machine=0), "bad e_machine 0"),
        (make_elf(machine=0x7777), "bad e_machine 30583"),
        (make_elf(interp=b"/lib64/ld-linux-x86-64.so.2"), "unterminated PT_INTERP"),
        (make_elf(interp=b"\0"), "empty PT_INTERP"),
        (make_elf(interp=b""), "empty PT_INTERP"),
        (make_elf(interp=b"\0\0\0\0"), "empty PT_INTERP"),
        (make_elf(interp=b"/" * 5000 + b"\0"), "longer than PATH_MAX"),
        (make_elf(dynamic=[(5, 0x200), (10, 11), (1, 1)]), "no DT_NULL"),
        (make_elf(dynamic=[(1, 1), (0, 0)]), "no DT_STRTAB"),
        (make_elf(dynamic=[(5, 1 << 40), (10, 11), (1, 1), (0, 0)]), "in no PT_LOAD"),
        (make_elf(dynamic=[(5, 0x100), (10, 11), (1, 9999), (0, 0)]), "outside its string"),
    ],
)
def test_malformed_elf_is_unreadable(data: bytes, reason: str) -> None:
    with pytest.raises(elf.UnreadableError, match=reason):
        elf.read_elf(data)
    with pytest.raises(elf.UnreadableError, match=reason):
        elf.read_elf(data, with_code=True)


def test_dynamic_segment_past_the_end() -> None:
    data = bytearray(make_elf())
    struct.pack_into("<Q", data, 64 + 2 * 56 + 8, len(data) - 8)  # PT_DYNAMIC's p_offset
    with pytest.raises(elf.UnreadableError, match="PT_DYNAMIC lies outside the file"):
        elf.read_elf(bytes(data))


def test_valid_but_unknown_machine_is_still_read() -> None:
    """A number the gABI assigns (EM_PPC, 32-bit PowerPC) is an arch kcompat cannot
    judge, not a malformed file: the arch rule reports it."""
    info = elf.read_elf(make_elf(machine=20))
    assert info.arch.platform.architecture == "unknown-e_machine-20"


def _note(name: bytes, descsz: int, desc: bytes) -> bytes:
    return struct.pack("<III", len(name), descsz, 1) + name + desc


def test_garbage_note_is_unreadable() -> None:
    """A .note.ABI-tag whose description size runs past the section."""
    good = _note(b"GNU\0", 16, struct.pack("<IIII", 0, 3, 2, 0))
    assert elf.read_elf(make_elf(sections=[(".note.ABI-tag", 7, good, 0, 0)])).abi_tag == "3.2.0"
    bad = _note(b"GNU\0", 0x1000, struct.pack("<IIII", 0, 3, 2, 0))
    with pytest.raises(elf.UnreadableError, match="note at byte 0 runs past its end"):
        elf.read_elf(make_elf(sections=[(".note.ABI-tag", 7, bad, 0, 0)]))


def _verneed(count: int) -> list[tuple[str, int, bytes, int, int]]:
    """A .gnu.version_r of one entry that claims `count` entries and `count` names, each
    `next` 0: the old reader walked the one entry count x count times (it bounded the
    counts by the file's size, not the section's)."""
    strings = b"\0libc.so.6\0GLIBC_2.2.5\0"
    entry = struct.pack("<HHIII", 1, count, 1, 16, 0)
    aux = struct.pack("<IHHII", 0, 0, 2, 11, 0)
    return [(".dynstr", 3, strings, 0, 0), (".gnu.version_r", elf.SHT_GNU_VERNEED,
            entry + aux, 1, count)]  # fmt: skip


def test_version_chain_hang() -> None:
    # 64 KiB of file: the old bound (a count up to size / 8) allowed 8192 x 8192 steps
    assert elf.read_elf(make_elf(sections=_verneed(1))).version_needs == (
        elf.VersionNeed("libc.so.6", ("GLIBC_2.2.5",)),
    )
    with pytest.raises(elf.UnreadableError, match="claims more entries than the section"):
        elf.read_elf(make_elf(sections=_verneed(8000), pad=64_000))


def test_version_entry_outside_its_section() -> None:
    secs = _verneed(2)
    name, t, content, link, _ = secs[1]
    secs[1] = (name, t, content[:-4] + struct.pack("<I", 8), link, 2)  # an aux `next` of 8
    with pytest.raises(elf.UnreadableError, match="version_r has an entry outside its section"):
        elf.read_elf(make_elf(sections=secs))


def test_arm_attributes_hang() -> None:
    """A .ARM.attributes whose value is 400,000 LEB128 continuation bytes: the old reader
    built a 2.8-million-bit integer, one byte at a time."""
    blob = b"A" + struct.pack("<I", 0) + b"aeabi\0\x01" + struct.pack("<I", 0) + b"\x07"
    blob += b"\xff" * 400_000
    info = elf.read_elf(make_elf(machine=EM_ARM, sections=[(".ARM.attributes", 0x70000003,
                                                             blob, 0, 0)]))  # fmt: skip
    assert info.arch.platform.architecture == "arm"
    assert info.arch.platform.variant is None


# bench/fuzz.py's reproducers (.fixtures/fuzz/macho-crash-*.bin): a fat Mach-O magic with
# no slice count after it raised struct.error
@pytest.mark.parametrize("data", [b"\xca\xfe\xba\xbf", b"\xca\xfe\xba\xbe", b"\xca\xfe\xba\xbe\0"])
def test_macho_fat_magic_alone(data: bytes) -> None:
    with pytest.raises(formats.NotThisFormat, match="truncated Mach-O fat header"):
        formats.read_macho(data)


def test_macho_fat_slice_outside_the_file() -> None:
    fat = b"\xca\xfe\xba\xbe" + struct.pack(">I", 1) + struct.pack(">iiIII", 7, 3, 64, 4096, 12)
    with pytest.raises(formats.NotThisFormat, match="slice 0 lies outside the file"):
        formats.read_macho(fat.ljust(64, b"\0"))
