#!/usr/bin/env python3
"""Generate kcompat's per-ABI syscall tables from the sources in shared/data/kernel-syscalls.

Run:  python3 syscall_tables/generate.py [SOURCE_DIR] [OUT_DIR]
      (defaults: ../shared/data/kernel-syscalls next to the repository; syscall_tables/data)

Each row: number, name, aliases, the first kernel version that has it on that ABI
(`since`), whether that version is exact or a bound, the version it was removed in
(if any), and `source`, the source that decided `since`. Output is deterministic
(sorted, no timestamps): running it twice gives identical files.

How the sources are combined (see the sources' README for their holes):
1. mebeim/linux-syscalls (implemented syscalls read out of built kernels, one block per
   release from a floor: 4.0 for x86 and s390, 4.15 riscv64, 5.0 the rest). If a syscall
   first appears *after* the floor, that release is exact (source "mebeim").
2. If it is already there at the floor, it is at least that old: the man-pages version
   (generic) is used, raised to the architecture's own port version, and capped at the
   floor (source "man-pages", or "port" where the port decides).
3. Numbers present now (libseccomp main at 7.1-rc4, hrw at 7.2-rc1) but absent from
   mebeim's newest release (6.17) are newer than 6.17: since = "6.18", not exact
   (source "after-mebeim").
4. loong64 has no mebeim data: man-pages raised to the port (5.19).
Removed: the first mebeim release where a syscall that was there is gone, else a
man-pages "Removed in X" note.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCES = HERE.parent.parent / "shared" / "data" / "kernel-syscalls"
DEFAULT_OUT = HERE / "data"
GENERATOR_VERSION = 1

# Provenance of the inputs, from the sources' README.
PROVENANCE = {
    "mebeim": "mebeim/linux-syscalls @ a02d05a4 (db/*/table.json, v4.0-v6.17)",
    "libseccomp": "seccomp/libseccomp @ 90d3f7dd syscalls.csv (Linux 7.1-rc4)",
    "libseccomp-pr457": "seccomp/libseccomp refs/pull/457 @ 9990a280 (kver columns, 6.16)",
    "hrw": "hrw/syscalls-table @ 2d39b256 (Linux 7.2-rc1)",
    "man-pages": "Debian bookworm manpages-dev 6.03-2 syscalls(2)",
}


@dataclass(frozen=True)
class AbiSpec:
    name: str  # kcompat's ABI name (OCI architecture, plus ABI where needed)
    mebeim: str | None
    seccomp: str
    hrw: str
    port: str  # first kernel with this port (or the floor we judge from)


# i386 is taken from the x86_64 kernel's ia32 compat table: that is what runs a 386
# image on an amd64 host, kcompat's case.
ABIS = (
    AbiSpec("x86_64", "x86-64-x64.tsv", "x86_64", "syscalls-x86_64", "2.6.32"),
    AbiSpec("i386", "x86-64-ia32.tsv", "x86", "syscalls-i386", "2.6.32"),
    AbiSpec("arm64", "arm64-64-aarch64.tsv", "aarch64", "syscalls-arm64", "3.7"),
    AbiSpec("arm", "arm-32-eabi.tsv", "arm", "syscalls-arm", "2.6.32"),
    AbiSpec("ppc64le", "powerpc-64-ppc64.tsv", "ppc64", "syscalls-powerpc64", "3.10"),
    AbiSpec("s390x", "s390-64-s390x.tsv", "s390x", "syscalls-s390x", "2.6.32"),
    AbiSpec("riscv64", "riscv-64-rv64.tsv", "riscv64", "syscalls-riscv64", "4.15"),
    AbiSpec("mips64le", "mips-64-n64.tsv", "mips64", "syscalls-mips64", "2.6.32"),
    AbiSpec("loong64", None, "loongarch64", "syscalls-loongarch64", "5.19"),
)
# ppc64le: the little-endian ppc64 ABI is the same table; its first kernel was 3.10
# (glibc's minimum for ppc64le is 3.10.0 too).
AFTER_MEBEIM = "6.18"


def vkey(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.lstrip("v").split("."))


def vstr(v: str) -> str:
    return v.lstrip("v")


@dataclass
class Row:
    nr: int
    name: str
    aliases: set[str] = field(default_factory=set)
    since: str | None = None
    exact: bool = False
    removed: str | None = None
    source: str = ""
    kconfig: str = ""
    implemented: bool = True


def read_mebeim(
    path: Path,
) -> tuple[
    list[str],
    dict[str, set[tuple[int, str]]],
    dict[tuple[int, str], str],
    dict[tuple[int, str], str],
]:
    releases: dict[str, set[tuple[int, str]]] = {}
    orignames: dict[tuple[int, str], str] = {}
    kconfigs: dict[tuple[int, str], str] = {}
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        ver, nr, name, orig, *rest = line.split("\t")
        key = (int(nr), name)
        releases.setdefault(vstr(ver), set()).add(key)
        if orig and orig != name:
            orignames[key] = orig
        if rest and rest[0]:
            kconfigs[key] = rest[0]
    versions = sorted(releases, key=vkey)
    return versions, releases, orignames, kconfigs


def read_seccomp(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open() as f:
        reader = csv.reader(f)
        header = next(reader)
        header[0] = "syscall"
        rows = [dict(zip(header, r)) for r in reader if r]
    return header, rows


def read_hrw(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and parts[1].strip():
            out[parts[0]] = int(parts[1])
    return out


_MAN_ROW = re.compile(r"^\\fB([a-z0-9_]+)\\fP\(2\)\t([0-9][0-9.]*)(?:\t(.*))?$")
_REMOVED = re.compile(r"Removed in ([0-9][0-9.]*[0-9])")


def read_man(path: Path) -> dict[str, tuple[str, str | None]]:
    """name -> (version, removed-in or None)."""
    out: dict[str, tuple[str, str | None]] = {}
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        m = _MAN_ROW.match(line)
        if not m:
            continue
        notes = m.group(3) or ""
        if notes.startswith("T{"):  # multi-line note block
            j = i + 1
            block = []
            while j < len(lines) and not lines[j].startswith("T}"):
                block.append(lines[j])
                j += 1
            notes = " ".join(block)
        removed = _REMOVED.search(notes)
        version = m.group(2).rstrip(".")
        out.setdefault(m.group(1), (version, removed.group(1) if removed else None))
    return out


# libseccomp keeps MIPS numbers without the ABI's base (arch-mips64.c: __SCMP_NR_BASE).
SECCOMP_BASE = {"mips64": 5000, "mips64n32": 6000, "mips": 4000}

# The sources' README: these columns say 3.0 for nearly everything (the ports are younger).
PR457_UNRELIABLE = frozenset({"aarch64", "loongarch64", "riscv64"})


def _kver(text: str) -> str | None:
    """SCMP_KV_4_3 -> "4.3". 3.0 is PR #457's floor ("3.0 or older"), so no bound."""
    m = re.fullmatch(r"SCMP_KV_(\d+)_(\d+)", text)
    if m is None or (m.group(1), m.group(2)) == ("3", "0"):
        return None
    return f"{m.group(1)}.{m.group(2)}"


def _number(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def build_abi(
    spec: AbiSpec,
    src: Path,
    man: dict[str, tuple[str, str | None]],
    seccomp_rows: list[dict[str, str]],
    pr457_numbers: dict[str, int | None],
    pr457_kver: dict[str, str],
    generic: dict[tuple[int, str], Row] | None = None,
) -> dict[int, Row]:
    rows: dict[int, Row] = {}
    current: dict[str, int] = {}
    for r in seccomp_rows:
        nr = _number(r.get(spec.seccomp, "PNR"))
        if nr is not None:
            current[r["syscall"]] = nr + SECCOMP_BASE.get(spec.seccomp, 0)
    hrw = read_hrw(src / "hrw-syscalls-table" / spec.hrw)
    for name, nr in {**current, **hrw}.items():
        rows.setdefault(nr, Row(nr, name))
        rows[nr].aliases.add(name)

    pr457 = pr457_numbers

    def man_since(names: set[str]) -> tuple[str | None, str | None]:
        found = [man[n] for n in sorted(names) if n in man]
        if not found:
            return None, None
        return min((f[0] for f in found), key=vkey), next((f[1] for f in found if f[1]), None)

    if spec.mebeim is not None:
        versions, releases, orignames, kconfigs = read_mebeim(
            src / "mebeim-linux-syscalls" / spec.mebeim
        )
        floor, newest = versions[0], versions[-1]
        first: dict[int, str] = {}
        last: dict[int, str] = {}
        names_by_nr: dict[int, list[tuple[str, str]]] = {}
        for v in versions:
            for nr, name in releases[v]:
                first.setdefault(nr, v)
                last[nr] = v
                names_by_nr.setdefault(nr, []).append((v, name))
        for nr, history in names_by_nr.items():
            latest_name = history[-1][1]
            row = rows.setdefault(nr, Row(nr, latest_name))
            row.name = latest_name
            row.aliases.update(n for _, n in history)
            row.aliases.update(orignames[(nr, n)] for _, n in history if (nr, n) in orignames)
            row.kconfig = kconfigs.get((nr, latest_name), "")
            if first[nr] != floor:
                row.since, row.exact, row.source = first[nr], True, "mebeim"
            else:
                # Older than the floor: the latest of the lower bounds we have: the
                # generic man-pages version, PR #457's per-arch version (catches late
                # per-arch wiring and man-pages' own slips, e.g. membarrier: 4.3, not
                # 3.17) and the port; capped at the floor, where mebeim saw it.
                ms, _ = man_since(row.aliases)
                bounds = [(spec.port, "port")]
                if ms is not None:
                    bounds.append((ms, "man-pages"))
                # only a PR #457 row with this very number on this ABI dates it: its
                # x86_64 "sendfile64" row (3.10) is another slot than nr 40 (sendfile)
                base = SECCOMP_BASE.get(spec.seccomp, 0)
                kv = next(
                    (
                        pr457_kver[n]
                        for n in sorted(row.aliases)
                        if n in pr457_kver and pr457.get(n) is not None
                        and pr457[n] + base == nr  # type: ignore[operator]
                    ),
                    None,
                )
                if kv is not None:
                    bounds.append((kv, "libseccomp-pr457"))
                cand, row.source = max(bounds, key=lambda b: vkey(b[0]))
                if vkey(cand) > vkey(floor):
                    cand, row.source = floor, "mebeim-floor"
                row.since, row.exact = cand, False
            if last[nr] != newest:
                later = [v for v in versions if vkey(v) > vkey(last[nr])]
                row.removed = later[0]
        for row in rows.values():
            if row.since is not None:
                continue
            # A number in today's headers that no built kernel up to 6.17 implemented:
            # either it was already in the headers then (a reserved or config-less slot,
            # e.g. x86_64 tuxcall, 32-bit arm mseal), or it is newer than 6.17.
            ms, _ = man_since(row.aliases)
            in_616 = any(pr457.get(n) is not None for n in row.aliases)
            if in_616 or (ms is not None and vkey(ms) <= vkey(newest)):
                row.implemented, row.source = False, "header-only"
            else:
                row.since, row.exact, row.source = AFTER_MEBEIM, False, "after-mebeim"
    else:
        for row in rows.values():
            ms, removed = man_since(row.aliases)
            ref = (generic or {}).get((row.nr, row.name))
            if ref is not None and not ref.implemented:
                row.implemented, row.source = False, "asm-generic (header-only on arm64)"
            elif ref is not None and ref.since is not None:
                # Same number and name in the asm-generic table: dated as there.
                row.since = max(ref.since, spec.port, key=vkey)
                row.source = (
                    "port" if row.since == spec.port else f"asm-generic ({ref.source} on arm64)"
                )
                row.removed = ref.removed
            elif ms is None:
                row.since, row.source = spec.port, "port"
            else:
                row.since = max(ms, spec.port, key=vkey)
                row.source = (
                    "port" if row.since == spec.port and vkey(ms) < vkey(spec.port) else "man-pages"
                )
            row.removed = removed
            row.exact = False
    for row in rows.values():
        if row.removed is None:
            _, removed = man_since(row.aliases)
            if removed and row.since and vkey(removed) > vkey(row.since):
                row.removed = removed
        row.aliases.discard(row.name)
    return rows


def table_doc(spec: AbiSpec, rows: dict[int, Row]) -> dict[str, object]:
    return {
        "abi": spec.name,
        "generator_version": GENERATOR_VERSION,
        "sources": {
            "mebeim": spec.mebeim,
            "libseccomp_column": spec.seccomp,
            "hrw": spec.hrw,
            "port": spec.port,
        },
        "syscalls": [
            {
                "nr": r.nr,
                "name": r.name,
                "aliases": sorted(r.aliases),
                "since": r.since,
                "exact": r.exact,
                "removed": r.removed,
                "source": r.source,
                "kconfig": r.kconfig,
                "implemented": r.implemented,
            }
            for r in sorted(rows.values(), key=lambda r: r.nr)
        ],
    }


def generate(src: Path, out: Path) -> list[Path]:
    man = read_man(src / "man-pages" / "syscalls.2")
    _, seccomp_rows = read_seccomp(src / "libseccomp" / "syscalls.csv")
    _, pr457_rows = read_seccomp(src / "libseccomp" / "syscalls-pr457-kver.csv")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    generic: dict[tuple[int, str], Row] = {}
    for spec in ABIS:  # arm64 comes before loong64, which borrows its dates
        pr457 = {r["syscall"]: _number(r.get(spec.seccomp, "PNR")) for r in pr457_rows}
        kvers = {}
        if spec.seccomp not in PR457_UNRELIABLE:
            for r in pr457_rows:
                kv = _kver(r.get(f"{spec.seccomp}_kver", ""))
                if kv is not None:
                    kvers[r["syscall"]] = kv
        rows = build_abi(spec, src, man, seccomp_rows, pr457, kvers, generic)
        if spec.name == "arm64":
            generic = {(r.nr, r.name): r for r in rows.values()}
        path = out / f"{spec.name}.json"
        path.write_text(json.dumps(table_doc(spec, rows), indent=1, sort_keys=True) + "\n")
        written.append(path)
    (out / "PROVENANCE.json").write_text(
        json.dumps(
            {"generator_version": GENERATOR_VERSION, "inputs": PROVENANCE}, indent=1, sort_keys=True
        )
        + "\n"
    )
    return written


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCES
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_OUT
    if not (src / "man-pages" / "syscalls.2").is_file():
        sys.exit(f"generate: {src} does not hold the kernel-syscalls sources")
    for p in generate(src, out):
        print(p)


if __name__ == "__main__":
    main()
