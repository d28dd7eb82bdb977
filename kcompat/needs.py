"""Which syscalls a binary needs, each with its first kernel and the evidence for it.

- Static executables (and Go's raw syscalls): the numbers recovered from the machine
  code by kcompat.disasm.
- Dynamic executables: the libc functions the program and its libraries import, mapped
  to the syscalls behind them (kcompat/data/libc_syscalls.json, with sources), plus what
  glibc's own start-up calls in every program.
- glibc's ENOSYS fallbacks (kcompat/data/knowledge.json) are attached to each call, so
  the rules can tell "missing and fatal" from "missing and handled".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple

from kcompat import disasm
from kcompat.elf import Linkage
from kcompat.filescan import ScannedFile
from kcompat.knowledge import KNOWLEDGE
from kcompat.scan import Scan
from kcompat.syscalls import ABIS, SyscallTable, table
from kcompat.versions import version_key


@dataclass(frozen=True)
class _Rule:
    symbols: frozenset[str]
    syscalls: tuple[str, ...]  # "a|b": the first of them the ABI has
    glibc_since: str | None
    glibc_until: str | None
    abis: frozenset[str] | None
    source: str
    fallback: str | None = None  # what glibc does on ENOSYS on this path, when it has a way

    def applies(self, abi: str, glibc: str | None) -> bool:
        if self.abis is not None and abi not in self.abis:
            return False
        if glibc is None:
            return self.glibc_until is None  # unknown version: assume a current glibc
        if self.glibc_since and version_key(glibc) < version_key(self.glibc_since):
            return False
        return not (self.glibc_until and version_key(glibc) >= version_key(self.glibc_until))


def _load() -> tuple[tuple[_Rule, ...], tuple[_Rule, ...]]:
    text = resources.files("kcompat").joinpath("data", "libc_syscalls.json").read_text()
    raw: dict[str, Any] = json.loads(text)
    if raw.get("schema") != 1:
        raise ValueError("kcompat/data/libc_syscalls.json: unknown schema")

    def rule(r: dict[str, Any]) -> _Rule:
        for v in (r.get("glibc_since"), r.get("glibc_until")):
            if v is not None:
                version_key(v)
        abis = r.get("abis")
        if abis is not None and not set(abis) <= set(ABIS):
            raise ValueError(f"libc_syscalls.json: unknown ABI in {abis}")
        return _Rule(
            frozenset(r.get("symbols", ())),
            tuple(r["syscalls"]),
            r.get("glibc_since"),
            r.get("glibc_until"),
            frozenset(abis) if abis is not None else None,
            str(r["source"]),
            r.get("fallback"),
        )

    return tuple(rule(r) for r in raw["startup"]), tuple(rule(r) for r in raw["wrappers"])


STARTUP, WRAPPERS = _load()
_BY_SYMBOL: dict[str, list[_Rule]] = {}
for _r in WRAPPERS:
    for _s in _r.symbols:
        _BY_SYMBOL.setdefault(_s, []).append(_r)


class NeedPath(NamedTuple):
    """One way the program reaches a syscall. A tuple, as elf.Symbol: an image's
    executables reach ~100,000 of them, hashed while they are merged and pickled with
    the analysis (a frozen dataclass's hash is a Python call each time)."""

    kind: str  # "start-up" (glibc's own start-up), "import" (a libc function), "code"
    obj: str  # the file whose start-up, import or machine code it is
    symbol: str | None = None  # the imported function, for "import"
    fallback: str | None = None  # the libc wrapper's own ENOSYS fallback on this path


@dataclass(frozen=True)
class SyscallNeed:
    name: str  # as the ABI's table names it
    nr: int
    since: str | None  # first kernel with it on this ABI
    via: tuple[str, ...]  # evidence, e.g. "imports getrandom@GLIBC_2.25", "machine code"
    fallback: str | None  # glibc's ENOSYS fallback, if this glibc has one
    paths: tuple[NeedPath, ...] = ()  # every way it is reached (deduplicated)


@dataclass(frozen=True)
class BinaryNeeds:
    abi: str
    syscalls: tuple[SyscallNeed, ...]
    unresolved_sites: int  # syscall instructions whose number was not recovered
    raw_syscall_import: bool  # imports syscall(): numbers chosen at run time
    method: str
    floor: str  # the oldest kernel the ABI's table knows: syscalls at it are never news
    complete: bool  # False when the syscalls could not be read at all (say why in method)

    def newest(self) -> SyscallNeed | None:
        dated = [s for s in self.syscalls if s.since]
        return max(dated, key=lambda s: version_key(s.since or "0")) if dated else None


_PICKED: dict[tuple[str, str], str | None] = {}


def _pick(t: SyscallTable, spec: str) -> str | None:
    key = (t.abi, spec)
    if key not in _PICKED:
        _PICKED[key] = next(
            (r.name for n in spec.split("|") if (r := t.lookup(n)) is not None and r.implemented),
            None,
        )
    return _PICKED[key]


# What one object's imports add, by (path, abi, glibc): (syscall spec, label, fallback)
# triples and whether it imports syscall(). A library shared by hundreds of executables
# is looked at once per image.
Imports = tuple[tuple[tuple[str, str, "str | None"], ...], bool]
# The same resolved for one image, by syscall in the order first reached: (syscall, how
# it is reached, the paths), and whether it imports syscall(); by (path, abi, glibc,
# whether it is the executable itself). Grouped by syscall, an executable merges a
# library's few dozen syscalls, not its hundreds of (import, syscall) pairs.
Resolved = tuple[tuple[tuple[str, tuple[str, ...], tuple["NeedPath", ...]], ...], bool]
Memo = dict[tuple[str, str, "str | None", bool], Resolved]


def _imports(obj: ScannedFile, abi: str, glibc: str | None) -> Imports:
    assert obj.elf is not None
    out: list[tuple[str, str, str | None]] = []
    raw_import = False
    for sym in obj.elf.undefined:
        if sym.name == "syscall":
            raw_import = True
        for r in _BY_SYMBOL.get(sym.name, ()):
            if r.applies(abi, glibc):
                label = sym.name + (f"@{sym.version}" if sym.version else "")
                out.extend((spec, label, r.fallback) for spec in r.syscalls)
    return tuple(out), raw_import


def _resolved(t: SyscallTable, obj: ScannedFile, glibc: str | None, own: bool) -> Resolved:
    """What `obj`'s imports add, grouped by syscall: its ways of reaching each and every
    path, in order (an executable keeps the first four ways, needs_of)."""
    adds, raw = _imports(obj, t.abi, glibc)
    who = "" if own else f" (in {obj.path})"
    hows: dict[str, dict[str, None]] = {}
    reached: dict[str, dict[NeedPath, None]] = {}
    for spec, label, fallback in adds:
        name = _pick(t, spec)
        if name is None:
            continue
        hows.setdefault(name, {})[f"imports {label}{who}"] = None
        reached.setdefault(name, {})[
            NeedPath("import", obj.path, label.split("@", 1)[0], fallback)
        ] = None
    return tuple((n, tuple(hows[n]), tuple(reached[n])) for n in hows), raw


def needs_of(
    scan: Scan,
    f: ScannedFile,
    glibc: str | None,
    libraries: list[ScannedFile] | None = None,
    memo: Memo | None = None,
) -> BinaryNeeds | None:
    """The syscalls `f` needs; None for files that are not Linux executables kcompat can
    judge (no ELF, or an ABI without a syscall table). `libraries`: what Scan.load found
    for `f`, when the caller has it already (kcompat.facts); `memo`: shared by calls for
    one image."""
    e = f.elf
    if e is None or e.arch.abi is None or e.linkage is Linkage.NONE:
        return None
    t = table(e.arch.abi)
    found: dict[str, list[str]] = {}
    # per syscall, every path that reaches it, with its own ENOSYS fallback (or None)
    paths: dict[str, dict[NeedPath, None]] = {}

    def add(spec: str, via: str, path: NeedPath) -> None:
        name = _pick(t, spec)
        if name is not None:
            vias = found.setdefault(name, [])
            paths.setdefault(name, {})[path] = None
            if via not in vias and len(vias) < 4:
                vias.append(via)

    unresolved = 0
    methods = []
    complete = True
    if f.syscalls is None and e.linkage is not Linkage.DYNAMIC:
        complete = False
        methods.append(f"{disasm.unsupported_reason(t.abi)}: syscalls unknown")
    if f.syscalls is not None:
        for nr in f.syscalls.numbers:
            row = t.lookup(nr)
            if row is not None:
                add(row.name, "machine code", NeedPath("code", f.path))
        unresolved = f.syscalls.unresolved
        methods.append(f.syscalls.method)
    raw_import = False
    if e.linkage is Linkage.DYNAMIC:
        glibc_linked = e.libc == "glibc"
        if glibc_linked:
            for r in STARTUP:
                if r.applies(t.abi, glibc):
                    for spec in r.syscalls:
                        add(
                            spec,
                            f"glibc {glibc or ''} start-up".replace("  ", " "),
                            NeedPath("start-up", f.path, None, r.fallback),
                        )
        if libraries is None:
            libraries = scan.load(f)[0]
        memo = {} if memo is None else memo
        version = glibc if glibc_linked else None
        for obj in [f, *libraries]:
            if obj.elf is None or obj.elf.soname in ("libc.so.6", "libc.musl-x86_64.so.1"):
                continue
            key = (obj.path, t.abi, version, obj is f)
            if key not in memo:  # once per image for a library hundreds of programs load
                memo[key] = _resolved(t, obj, version, obj is f)
            resolved, raw = memo[key]
            raw_import = raw_import or raw
            for name, hows, reached in resolved:
                vias = found.setdefault(name, [])
                paths.setdefault(name, {}).update(dict.fromkeys(reached))
                for how in hows:
                    if len(vias) >= 4:
                        break
                    if how not in vias:
                        vias.append(how)
        methods.append("imported libc functions (kcompat/data/libc_syscalls.json)")
    needs = []
    glibc_facts = glibc if glibc and e.libc == "glibc" else None  # libc: a property, once
    for name, via in sorted(found.items()):
        row = t.lookup(name)
        assert row is not None
        fb = KNOWLEDGE.fallback_for(name, glibc_facts) if glibc_facts else None
        note = f"glibc: {fb.note}" if fb else None
        reached = tuple(paths[name])
        if note is None and all(p.fallback for p in reached):  # every path falls back
            note = "glibc: " + "; ".join(sorted({p.fallback for p in reached if p.fallback}))
        needs.append(SyscallNeed(name, row.nr, row.since, tuple(via), note, reached))
    return BinaryNeeds(
        t.abi, tuple(needs), unresolved, raw_import, "; ".join(methods), t.floor, complete
    )
