"""Fuzz kcompat's decoders: every byte of an image is someone else's, so no input may
crash or hang them.

    .venv/bin/python bench/fuzz.py [--seconds 30] [--seed 1] [--target elf ...] [--jobs N]

Targets: the ELF reader (kcompat.elf.read_elf with and without code, has_interpreter,
go_functions), PE and Mach-O (kcompat.formats), `#!` scripts, the layer scan's tar reader
(kcompat.tarstream, fed in chunks as kcompat.layers hands them out), manifests and
configs (kcompat.image) and target profiles (kcompat.target.load_profile, on a file).

A deterministic mutation loop (seeded: the same --seed finds the same cases) over seed
inputs from real files: small ELF files of this host, the PE and Mach-O fixtures, tar
layers made here with tarfile, the fixture images' JSON blobs, plus built-in seeds, so
it runs from a clean clone. Mutations know the formats' header fields (interesting
integers go where counts, offsets and sizes are; tar checksums are recomputed so a
mutated header gets past them). Each target runs in its own process, with its address
space bounded (RLIMIT_AS), and each case under a SIGALRM of --limit seconds.

A crash is any exception but the documented ones (elf.UnreadableError,
formats.NotThisFormat, formats.ShebangError, tarstream.TarError, KcompatError and its
subclasses); a hang is a case over the limit. Each distinct crash (exception type and
the kcompat line it came from) is shrunk and saved under .fixtures/fuzz/. Exit 1 if any.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kcompat import elf, formats, image, target, tarstream  # noqa: E402
from kcompat.errors import KcompatError  # noqa: E402

OUT = ROOT / ".fixtures" / "fuzz"
MEMORY_LIMIT = 3 << 30  # bytes of address space per worker: a decoder must not need more
GO_WANTED = frozenset({"syscall.Syscall", "syscall.RawSyscall", "runtime.exit"})


class Hang(BaseException):
    """Raised by SIGALRM inside a case: a BaseException, so no decoder's `except
    Exception` can swallow it."""


# -- targets --------------------------------------------------------------------------


def run_elf(data: bytes) -> None:
    elf.read_elf(data)
    elf.read_elf(data, with_code=True)
    elf.has_interpreter(data[:4096])
    elf.go_functions(data, GO_WANTED)


def run_pe(data: bytes) -> None:
    formats.detect(data[: formats.HEAD_SIZE])
    formats.read_pe(data)


def run_macho(data: bytes) -> None:
    formats.detect(data[: formats.HEAD_SIZE])
    formats.read_macho(data)


def run_script(data: bytes) -> None:
    formats.detect(data)
    formats.read_script(data)
    for bufsize, truncate in ((128, False), (128, True), (256, True)):
        with contextlib.suppress(formats.ShebangError):
            formats.parse_shebang(data, bufsize, truncate)
    formats.parse_shebang(data)


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def run_tar(data: bytes) -> None:
    """As kcompat.layerscan.scan_layer reads a layer: every header, the first bytes of
    each regular file, then all of it or none; in large chunks and in odd small ones."""
    for size in (4 << 20, 509):
        tar = tarstream.TarStream(_chunks(data, size))
        for n, h in enumerate(tar):
            if h.type in tarstream.FILE_TYPES and h.size <= 1 << 24:
                head = tar.read(formats.HEAD_SIZE)
                if n % 3 == 0:
                    tar.read_whole(head)
                elif n % 3 == 1:
                    tar.read()


def run_image(data: bytes) -> None:
    for call in (
        lambda: image.parse_document(data, None, "fuzz"),
        lambda: image.parse_document(data, image.DOCKER_MANIFEST, "fuzz"),
        lambda: image.parse_config(data, "fuzz"),
    ):
        with contextlib.suppress(KcompatError):
            call()


_PROFILE = Path(tempfile.gettempdir()) / f"kcompat-fuzz-{os.getpid()}.json"


def run_profile(data: bytes) -> None:
    _PROFILE.write_bytes(data)
    target.load_profile(_PROFILE)


# -- seeds ----------------------------------------------------------------------------


def _files(
    dirs: tuple[str, ...], pred: Callable[[bytes], bool], most: int, limit: int
) -> list[bytes]:
    out: list[bytes] = []
    for d in dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for name in names:
            p = os.path.join(d, name)
            try:
                if os.path.islink(p) or not os.path.isfile(p) or os.path.getsize(p) > limit:
                    continue
                data = Path(p).read_bytes()
            except OSError:
                continue
            if pred(data):
                out.append(data)
                if len(out) >= most:
                    return out
    return out


def tiny_elf(bits: int = 64, machine: int = elf.EM_X86_64, interp: bytes = b"/lib/ld.so\0",
             needed: bytes = b"libc.so.6\0") -> bytes:  # fmt: skip
    """A small dynamically linked ELF file: header, PT_LOAD, PT_INTERP, PT_DYNAMIC
    (DT_STRTAB, DT_STRSZ, DT_NEEDED, DT_NULL), no section headers: a seed that works
    without this host's files."""
    e = "<"
    ehsize, phentsize = (64, 56) if bits == 64 else (52, 32)
    phoff = ehsize
    phnum = 3
    interp_off = phoff + phnum * phentsize
    strtab_off = interp_off + len(interp)
    strtab = b"\0" + needed
    dyn_off = (strtab_off + len(strtab) + 7) & ~7
    dyn_fmt = e + ("qQ" if bits == 64 else "iI")
    dyn = b"".join(
        struct.pack(dyn_fmt, t, v)
        for t, v in (
            (elf.DT_STRTAB, strtab_off),
            (elf.DT_STRSZ, len(strtab)),
            (elf.DT_NEEDED, 1),
            (elf.DT_NULL, 0),
        )
    )
    total = dyn_off + len(dyn)
    ident = elf.ELF_MAGIC + bytes([2 if bits == 64 else 1, 1, 1]) + bytes(9)
    ehdr_fmt, phdr_fmt, _ = elf._LAYOUT[bits]
    ehdr = ident + struct.pack(
        e + ehdr_fmt, 3, machine, 1, 0x1000, phoff, 0, 0, ehsize, phentsize, phnum, 0, 0, 0
    )

    def phdr(ptype: int, flags: int, off: int, size: int) -> bytes:
        if bits == 64:  # type, flags, offset, vaddr, paddr, filesz, memsz, align
            return struct.pack(e + phdr_fmt, ptype, flags, off, off, off, size, size, 8)
        return struct.pack(e + phdr_fmt, ptype, off, off, off, size, size, flags, 4)

    phdrs = (
        phdr(elf.PT_LOAD, 5, 0, total)
        + phdr(elf.PT_INTERP, 4, interp_off, len(interp))
        + phdr(elf.PT_DYNAMIC, 6, dyn_off, len(dyn))
    )
    body = ehdr + phdrs + interp + strtab
    return body + bytes(dyn_off - len(body)) + dyn


def seeds_elf() -> list[bytes]:
    def small_elf(d: bytes) -> bool:
        return d.startswith(elf.ELF_MAGIC)

    out = [tiny_elf(), tiny_elf(32, elf.EM_386), tiny_elf(64, elf.EM_AARCH64, b"\0", b"\0")]
    out += _files(("/usr/bin",), small_elf, 12, 40_000)
    out += _files(("/usr/lib/x86_64-linux-gnu",), small_elf, 12, 60_000)
    out += _files((str(ROOT / ".fixtures/binaries/bin"),), small_elf, 4, 250_000)
    return out


def seeds_pe() -> list[bytes]:
    d = ROOT / ".fixtures/binaries/bin"
    out = [p.read_bytes() for p in (d / "cli-64.exe", d / "cli-arm64.exe") if p.is_file()]
    pe = bytearray(0x200)  # a built-in PE: DOS header, PE header, optional header
    pe[:2] = b"MZ"
    struct.pack_into("<I", pe, 0x3C, 0x80)
    pe[0x80:0x84] = b"PE\0\0"
    struct.pack_into("<HHIIIHH", pe, 0x84, 0x8664, 1, 0, 0, 0, 0xF0, 0x22)
    struct.pack_into("<H", pe, 0x98, 0x20B)
    struct.pack_into("<H", pe, 0x98 + 68, 3)
    return [*out, bytes(pe)]


def seeds_macho() -> list[bytes]:
    p = ROOT / ".fixtures/binaries/bin/fsevents.node"
    out = [p.read_bytes()] if p.is_file() else []
    thin = b"\xcf\xfa\xed\xfe" + struct.pack("<iiIIII", 0x0100000C, 0, 2, 0, 0, 0) + bytes(32)
    fat = b"\xca\xfe\xba\xbe" + struct.pack(">I", 2)
    fat += struct.pack(">iiIII", 0x01000007, 3, 64, len(thin), 12)
    fat += struct.pack(">iiIII", 0x0100000C, 0, 64 + len(thin), len(thin), 12)
    fat = fat.ljust(64, b"\0") + thin + thin
    return [*out, thin, fat, b"\xca\xfe\xba\xbf" + bytes(60)]


def seeds_script() -> list[bytes]:
    return [
        b"#!/bin/sh\nexit 0\n",
        b"#!/usr/bin/env python3 -u\nprint()\n",
        b"#! /bin/bash\r\n",
        b"#!" + b"/x" * 200,
        b"#!\t/bin/busybox  sh \t\n",
        b"#!/bin/sh\0-e\n",
    ]


def _tar(fmt: int, members: list[tuple[str, bytes, bytes]], *, end: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = 0o755
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
            else:
                info.linkname = data.decode()
                t.addfile(info)
    out = buf.getvalue()
    if not end:  # no end-of-archive blocks, as umoci 0.4 writes layers
        while out.endswith(bytes(512)):
            out = out[:-512]
    return out


def seeds_tar() -> list[bytes]:
    reg, sym, lnk, dir_ = tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE
    long = "usr/lib/" + "x" * 150 + "/libfoo.so.1"
    members = [
        ("usr/", dir_, b""),
        ("usr/bin/tool", reg, tiny_elf()),
        ("usr/bin/run", reg, b"#!/bin/sh\necho\n"),
        ("usr/bin/sh", sym, b"busybox"),
        ("usr/bin/hard", lnk, b"usr/bin/tool"),
        (long, reg, b"x" * 700),
        ("etc/.wh..wh..opq", reg, b""),
    ]
    return [
        _tar(tarfile.USTAR_FORMAT, members[:5]),
        _tar(tarfile.GNU_FORMAT, members),
        _tar(tarfile.PAX_FORMAT, members, end=False),
        _tar(tarfile.USTAR_FORMAT, []),
    ]


def seeds_json(kind: str) -> list[bytes]:
    out: list[bytes] = []
    blobs = ROOT / ".fixtures/images/layout/blobs/sha256"
    if blobs.is_dir():
        for p in sorted(blobs.iterdir()):
            if p.stat().st_size < 20_000 and p.read_bytes()[:1] == b"{":
                out.append(p.read_bytes())
    desc = {"mediaType": image.OCI_MANIFEST, "digest": "sha256:" + "0" * 64, "size": 10}
    arm64 = {"os": "linux", "architecture": "arm64", "variant": "v8"}
    config = {"Entrypoint": ["/bin/sh"], "Env": ["PATH=/bin"], "User": "1000"}
    docs: list[dict[str, Any]] = [
        {"schemaVersion": 2, "mediaType": image.OCI_INDEX,
         "manifests": [{**desc, "platform": arm64}]},
        {"schemaVersion": 2, "config": desc, "layers": [desc]},
        {"os": "linux", "architecture": "amd64", "config": config,
         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]}},
    ]  # fmt: skip
    out += [json.dumps(d).encode() for d in docs]
    return out


def seeds_profile() -> list[bytes]:
    t = target.described("3.10.0-1160.el7.x86_64", "amd64")
    d = t.to_json()
    d["absent_syscalls"], d["blocked_syscalls"] = ["clone3"], ["keyctl"]
    return [json.dumps(d).encode(), json.dumps(target.described("5.4", "arm64").to_json()).encode()]


# -- mutations ------------------------------------------------------------------------

INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, (1 << 63) - 1, 1 << 63,
               (1 << 64) - 1)  # fmt: skip


def fields_elf(d: bytes) -> list[tuple[int, int]]:
    """(offset, width) of the header, program header and section header fields of an
    ELF seed, and of its dynamic entries: where counts, offsets and sizes are."""
    if len(d) < 64 or not d.startswith(elf.ELF_MAGIC) or d[4] not in (1, 2):
        return []
    bits = 64 if d[4] == 2 else 32
    e = "<" if d[5] == 1 else ">"
    ehdr, phdr, shdr = elf._LAYOUT[bits]
    out: list[tuple[int, int]] = []

    def add(fmt: str, base: int) -> None:
        off = base
        for c in fmt:
            w = struct.calcsize(c)
            out.append((off, w))
            off += w

    add(ehdr, 16)
    f = struct.unpack_from(e + ehdr, d, 16)
    phoff, shoff, phentsize, phnum, shentsize, shnum = f[4], f[5], f[8], f[9], f[11], f[12]
    for i in range(min(phnum, 64)):
        if phoff + (i + 1) * phentsize <= len(d):
            add(phdr, phoff + i * phentsize)
            p = struct.unpack_from(e + phdr, d, phoff + i * phentsize)
            off, size = (p[2], p[5]) if bits == 64 else (p[1], p[4])
            if p[0] in (elf.PT_DYNAMIC, elf.PT_NOTE) and off + size <= len(d):
                add(
                    ("qQ" if bits == 64 else "iI") * min(size // (16 if bits == 64 else 8), 40), off
                )
    for i in range(min(shnum, 64)):
        if shoff + (i + 1) * shentsize <= len(d):
            add(shdr, shoff + i * shentsize)
            s = struct.unpack_from(e + shdr, d, shoff + i * shentsize)
            if s[1] not in (elf.SHT_NULL, elf.SHT_NOBITS) and s[4] + s[5] <= len(d):
                # the first words of its content: version entries, symbols, notes
                out += [(s[4] + j, w) for j in range(0, min(s[5], 96), 4) for w in (2, 4)]
    return out


_PAX_KEYS = ("path", "linkpath", "size", "uid", "gid", "mtime", "uname", "x.y")
_PAX_VALUES = ("-1", "abc", "1e9", "9" * 30, "", "0x10", " 12", "\udcff", "a\nb", "1" * 5000)


def mutate_tar(rng: random.Random, data: bytes) -> bytes | None:
    """A pax archive whose extended records carry hostile values, and whose record
    lengths are sometimes not numbers: parts of a header no byte mutation rebuilds."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for _ in range(rng.randint(1, 3)):
            info = tarfile.TarInfo("f" * rng.choice((1, 99, 100, 300)))
            info.pax_headers = {rng.choice(_PAX_KEYS): rng.choice(_PAX_VALUES)
                                for _ in range(rng.randint(1, 3))}  # fmt: skip
            payload = rng.choice((b"", b"#!/bin/sh\n", tiny_elf()))
            info.size = len(payload)
            t.addfile(info, io.BytesIO(payload))
    b = bytearray(buf.getvalue())
    if rng.random() < 0.5:  # spoil one record length inside a pax data block
        for off in range(0, len(b) - 1023, 512):
            if b[off + 156] == ord("x") and rng.random() < 0.7:
                b[off + 512] = rng.choice(b"a -+\0x")
                break
    return bytes(b)


def fields_tar(d: bytes) -> list[tuple[int, int]]:
    out = []
    for b in range(0, len(d) - 511, 512):
        if d[b + 257 : b + 262] == b"ustar":
            out += [(b + o, w) for o, w in ((100, 8), (108, 8), (124, 12), (148, 8), (156, 1),
                                             (329, 8), (337, 8), (345, 155), (0, 100))]  # fmt: skip
    return out


def fields_pe(d: bytes) -> list[tuple[int, int]]:
    if len(d) < 0x40:
        return []
    (lfanew,) = struct.unpack_from("<I", d, 0x3C)
    return [(0x3C, 4), (lfanew + 4, 2), (lfanew + 20, 2), (lfanew + 22, 2), (lfanew + 24 + 68, 2)]


def fields_macho(d: bytes) -> list[tuple[int, int]]:
    out = [(4, 4), (8, 4), (12, 4), (16, 4)]
    if d[:4] in (b"\xca\xfe\xba\xbe", b"\xca\xfe\xba\xbf"):
        entry = 32 if d[3] == 0xBF else 20
        out += [(8 + i * entry + j, 4) for i in range(4) for j in range(0, entry, 4)]
    return out


def fix_tar_checksums(b: bytearray) -> None:
    """Recompute the checksum of every block that looks like a ustar header, so that a
    mutated header reaches the code after the checksum test."""
    for off in range(0, len(b) - 511, 512):
        if b[off + 257 : off + 262] == b"ustar":
            b[off + 148 : off + 156] = b" " * 8
            b[off + 148 : off + 156] = b"%06o\0 " % sum(b[off : off + 512])


def _json_value(rng: random.Random) -> Any:
    return rng.choice([None, True, 0, -1, 1 << 70, 1.5e308, "", "x" * rng.randint(1, 300),
                       "linux/arm64", "sha256:abc", "../..", "\udcff", [], {}, [1, "a"],
                       {"a": None}, [[[[]]]]])  # fmt: skip


def mutate_json(rng: random.Random, data: bytes) -> bytes | None:
    """Change one value (or drop one key) of a JSON document: type confusions that byte
    mutations seldom reach."""
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    nodes: list[Any] = []

    def walk(v: Any) -> None:
        if isinstance(v, (dict, list)):
            nodes.append(v)
            for child in v.values() if isinstance(v, dict) else v:
                walk(child)

    walk(doc)
    if not nodes:
        return None
    node = rng.choice(nodes)
    if isinstance(node, dict) and node:
        key = rng.choice(sorted(node))
        if rng.random() < 0.2:
            del node[key]
        else:
            node[key] = _json_value(rng)
    elif isinstance(node, list) and node:
        node[rng.randrange(len(node))] = _json_value(rng)
    else:
        return None
    return json.dumps(doc).encode("utf-8", "surrogateescape")


@dataclass
class Target:
    run: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    allowed: tuple[type[BaseException], ...]
    fields: Callable[[bytes], list[tuple[int, int]]] = lambda d: []
    fixup: Callable[[bytearray], None] | None = None
    structured: Callable[[random.Random, bytes], bytes | None] | None = None


TARGETS = {
    "elf": Target(run_elf, seeds_elf, (elf.UnreadableError,), fields_elf),
    "pe": Target(run_pe, seeds_pe, (formats.NotThisFormat,), fields_pe),
    "macho": Target(run_macho, seeds_macho, (formats.NotThisFormat,), fields_macho),
    "script": Target(run_script, seeds_script, (formats.ShebangError,)),
    "tar": Target(
        run_tar, seeds_tar, (tarstream.TarError,), fields_tar, fix_tar_checksums, mutate_tar
    ),
    "image": Target(
        run_image, lambda: seeds_json("image"), (KcompatError,), structured=mutate_json
    ),
    "profile": Target(run_profile, seeds_profile, (KcompatError,), structured=mutate_json),
}


class Mutator:
    def __init__(self, rng: random.Random, t: Target, seeds: list[bytes]) -> None:
        self.rng, self.t, self.seeds = rng, t, seeds
        self.fields = [t.fields(s) for s in seeds]

    def __call__(self) -> bytes:
        rng = self.rng
        i = rng.randrange(len(self.seeds))
        seed = self.seeds[i]
        if self.t.structured and rng.random() < 0.5:
            out = self.t.structured(rng, seed)
            if out is not None:
                return out
        b = bytearray(seed)
        fields = self.fields[i]
        for _ in range(rng.choice((1, 1, 2, 3, 4, 8))):
            self.one(b, fields)
        if self.t.fixup and rng.random() < 0.8:
            self.t.fixup(b)
        return bytes(b)

    def one(self, b: bytearray, fields: list[tuple[int, int]]) -> None:
        rng = self.rng
        n = len(b)
        op = rng.choices(range(10), (4, 0, 2, 2, 1, 1, 0.5, 0.5, 0.5, 0.5))[0]
        near = rng.randrange(min(n, 256)) if n and rng.random() < 0.5 else rng.randrange(n or 1)
        if op <= 1 and fields:  # an interesting integer into a header field
            off, w = rng.choice(fields)
            if off + w <= n:
                v = rng.choice((*INTERESTING, n, n - 1, n + 1, off, rng.randrange(1 << 8 * w)))
                if w == 12 or (w == 8 and self.t is TARGETS["tar"]):  # tar: octal text
                    text = rng.choice(
                        (b"%o" % (v % 8**11), b"-1", b"9" * w, b"\x80" + bytes(w - 1))
                    )
                    b[off : off + w] = text[:w].ljust(w, b"\0")
                elif w <= 8:
                    order = (
                        "little" if not (n > 5 and b[:4] == elf.ELF_MAGIC and b[5] == 2) else "big"
                    )
                    b[off : off + w] = (v % (1 << 8 * w)).to_bytes(w, order)  # type: ignore[arg-type]
                else:
                    b[off : off + w] = bytes(rng.randrange(256) for _ in range(w))
        elif op == 2 and n:
            b[near] ^= 1 << rng.randrange(8)
        elif op == 3 and n:
            b[near] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif op == 4:
            b[near:near] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 5 and n:
            del b[near : near + rng.randint(1, 64)]
        elif op == 6 and n:
            del b[rng.choice((rng.randrange(n), rng.randrange(min(n, 600)))) :]
        elif op == 7:
            other = rng.choice(self.seeds)
            cut = rng.randrange(len(other) or 1)
            b[near:] = other[cut:]
        elif op == 8 and n:
            start = rng.randrange(n)
            b[near:near] = b[start : start + rng.randint(1, 512)]
        elif op == 9 and n:  # a long run of one byte: nesting, unterminated strings
            b[near:near] = b[near : near + 1] * rng.choice((100, 5000, 200_000))


# -- running --------------------------------------------------------------------------


@dataclass
class Finding:
    kind: str  # "crash" | "hang"
    error: str
    where: str
    data: bytes = field(repr=False)
    count: int = 1


def _alarm(signum: int, frame: object) -> None:
    raise Hang()


def outcome(t: Target, data: bytes, limit: float) -> tuple[str, str, str] | None:
    """None if the case ends well; else (kind, error, where) for a crash or a hang."""
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        t.run(data)
    except Hang:
        return "hang", f"over {limit} s", ""
    except t.allowed:
        pass
    except (Exception, RecursionError, MemoryError) as e:
        tb = traceback.extract_tb(e.__traceback__)
        ours = [f for f in tb if "/kcompat/" in f.filename] or tb[-1:]
        where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
        return "crash", f"{type(e).__name__}: {str(e)[:200]}", where
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return None


def shrink(t: Target, data: bytes, want: tuple[str, str], limit: float, budget: float) -> bytes:
    """A smaller input with the same failure (kind and place): cut chunks of halving size,
    then zero bytes, within `budget` seconds."""
    deadline = time.monotonic() + budget

    def same(d: bytes) -> bool:
        got = outcome(t, d, limit)
        return got is not None and (got[0], got[2]) == want

    chunk = max(1, len(data) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        i, cut = 0, False
        while i < len(data) and time.monotonic() < deadline:
            cand = data[:i] + data[i + chunk :]
            if same(cand):
                data, cut = cand, True
            else:
                i += chunk
        if not cut:
            chunk //= 2
    for i in range(len(data)):
        if time.monotonic() >= deadline:
            break
        if data[i] and same(cand := data[:i] + b"\0" + data[i + 1 :]):
            data = cand
    return data


def worker(name: str, seconds: float, seed: int, limit: float) -> dict[str, Any]:
    t = TARGETS[name]
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, hard))
    signal.signal(signal.SIGALRM, _alarm)
    rng = random.Random(f"{seed}:{name}")
    seeds = t.seeds()
    mutate = Mutator(rng, t, seeds)
    found: dict[tuple[str, str, str], Finding] = {}
    cases = 0
    deadline = time.monotonic() + seconds
    queue = list(seeds)  # the seeds themselves first: they must decode
    while time.monotonic() < deadline:
        data = queue.pop() if queue else mutate()
        cases += 1
        got = outcome(t, data, limit)
        if got is None:
            continue
        key = (got[0], got[1].split(":")[0], got[2])
        if key in found:
            found[key].count += 1
        else:
            found[key] = Finding(got[0], got[1], got[2], data)
    OUT.mkdir(parents=True, exist_ok=True)
    report = []
    for f in found.values():
        small = shrink(t, f.data, (f.kind, f.where), limit, 20.0 if f.kind == "crash" else 5.0)
        path = OUT / f"{name}-{f.kind}-{hashlib.sha256(small).hexdigest()[:12]}.bin"
        path.write_bytes(small)
        report.append({"kind": f.kind, "error": f.error, "where": f.where, "count": f.count,
                       "size": len(small), "path": str(path.relative_to(ROOT)),
                       "preview": small[:64].hex()})  # fmt: skip
    _PROFILE.unlink(missing_ok=True)
    return {"target": name, "cases": cases, "seeds": len(seeds), "findings": report}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="per target (default 30)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--limit", type=float, default=2.0, help="seconds per case (default 2)")
    ap.add_argument("--target", action="append", choices=sorted(TARGETS), help="repeatable")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.seconds, a.seed, a.limit)))
        return 0
    names = a.target or list(TARGETS)
    print(f"fuzzing {', '.join(names)}: {a.seconds:g} s each, seed {a.seed}, "
          f"{a.limit:g} s per case, {a.jobs} at a time", flush=True)  # fmt: skip
    pending = list(names)
    running: list[tuple[str, subprocess.Popen[str]]] = []
    results: list[dict[str, Any]] = []
    while pending or running:
        while pending and len(running) < a.jobs:
            name = pending.pop(0)
            cmd = [sys.executable, __file__, "--worker", name, "--seconds", str(a.seconds),
                   "--seed", str(a.seed), "--limit", str(a.limit)]  # fmt: skip
            running.append((name, subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)))
        name, proc = running.pop(0)
        try:  # a hang the alarm cannot break (one long C call) ends the worker here
            out, _ = proc.communicate(timeout=a.seconds + 120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        if proc.returncode == 0:
            results.append(json.loads(out))
        else:  # killed (a segfault, the memory limit): the seed reproduces it
            results.append({"target": name, "cases": 0, "seeds": 0, "findings": [{
                "kind": "crash", "error": f"worker died with status {proc.returncode}",
                "where": "", "count": 1, "size": 0, "path": "", "preview": ""}]})  # fmt: skip
    bad = 0
    print(f"{'target':8} {'seeds':>5} {'cases':>9} {'crashes':>7} {'hangs':>5}")
    for r in sorted(results, key=lambda r: names.index(r["target"])):
        crashes = [f for f in r["findings"] if f["kind"] == "crash"]
        hangs = [f for f in r["findings"] if f["kind"] == "hang"]
        bad += len(r["findings"])
        print(f"{r['target']:8} {r['seeds']:>5} {r['cases']:>9} {len(crashes):>7} {len(hangs):>5}")
    for r in results:
        for f in r["findings"]:
            print(f"\n{r['target']} {f['kind']} ({f['count']} cases) at {f['where']}: {f['error']}")
            print(f"  reproducer: {f['path']} ({f['size']} bytes) {f['preview']}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
