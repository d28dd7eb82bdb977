"""Static syscall findings vs what real programs do under `strace -f -c`.

For each program: the syscalls kcompat's scanner says it needs (imports mapped through
the libc table plus glibc start-up for dynamic programs; machine code for static and Go
ones), the syscalls strace saw while running it, and recall = found / seen. `execve`
is left out of "seen": it is the exec that starts the program, made by strace.

Run: python -m tests.strace_recall [FIXTURES_BIN_DIR]   (prints the table)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kcompat.needs import needs_of
from kcompat.syscalls import table
from tests.hostscan import scan_programs

# (program, arguments): real programs from Debian packages on this (Debian 12) machine
HOST_PROGRAMS: list[tuple[str, list[str]]] = [
    ("/usr/bin/ls", ["-l", "/"]),
    ("/usr/bin/cat", ["/etc/os-release"]),
    ("/usr/bin/cp", ["/etc/hostname", "{tmp}/copy"]),
    ("/usr/bin/sort", ["/etc/passwd"]),
    ("/usr/bin/date", []),
    ("/usr/bin/grep", ["-r", "root", "/etc/passwd"]),
    ("/usr/bin/tar", ["cf", "{tmp}/t.tar", "/etc/hostname"]),
    ("/usr/bin/gzip", ["-c", "/etc/passwd"]),
    ("/usr/bin/sha256sum", ["/etc/passwd"]),
    ("/usr/bin/find", ["/etc", "-maxdepth", "1"]),
    ("/usr/bin/stat", ["/etc"]),
    ("/usr/bin/sed", ["s/a/b/", "/etc/hostname"]),
    ("/usr/bin/du", ["-s", "/etc/apt"]),
    ("/usr/bin/id", []),
    ("/usr/bin/touch", ["{tmp}/touched"]),
    ("/usr/bin/mkdir", ["-p", "{tmp}/a/b"]),
]
# fixture binaries (tests/fixtures/build_binaries.py): static C and Go
FIXTURE_PROGRAMS: list[tuple[str, list[str]]] = [
    ("busybox-amd64", ["ls", "-l", "/etc"]),
    ("busybox-amd64", ["sh", "-c", "echo hi; cat /etc/hostname"]),
    ("fzf-amd64", ["--version"]),
]


@dataclass(frozen=True)
class Row:
    program: str
    seen: frozenset[str]
    found: frozenset[str]
    unresolved_sites: int

    @property
    def recall(self) -> float:
        return len(self.seen & self.found) / len(self.seen) if self.seen else 1.0

    @property
    def missed(self) -> list[str]:
        return sorted(self.seen - self.found)


def _strace(argv: list[str], tmp: Path) -> frozenset[str]:
    out = tmp / "strace.txt"
    subprocess.run(
        ["strace", "-f", "-c", "-o", str(out), *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
        timeout=60,
    )
    t = table("x86_64")
    names = set()
    for line in out.read_text().splitlines():
        words = line.split()
        if len(words) < 5 or words[0] == "%" or not words[-1].isidentifier():
            continue  # the header, separators
        if words[-1] == "total":
            continue
        row = t.lookup(words[-1])
        names.add(row.name if row else words[-1])
    names.discard("execve")
    return frozenset(names)


def measure(fixture_bin: Path | None) -> list[Row]:
    programs = [(p, a) for p, a in HOST_PROGRAMS if Path(p).is_file()]
    if fixture_bin is not None:
        programs += [(str(fixture_bin / name), a) for name, a in FIXTURE_PROGRAMS]
    scan = scan_programs(sorted({p for p, _ in programs}))
    glibc = next((c.version for c in scan.libc() if c.family == "glibc"), None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for prog, args in programs:
            argv = [prog, *(a.replace("{tmp}", tmp) for a in args)]
            seen = _strace(argv, Path(tmp))
            needs = needs_of(scan, scan.files[prog], glibc)
            assert needs is not None, prog
            found = frozenset(s.name for s in needs.syscalls)
            label = " ".join([Path(prog).name, *args[:2]])
            rows.append(Row(label, seen, found, needs.unresolved_sites))
    return rows


def main() -> None:
    if shutil.which("strace") is None:
        sys.exit("strace_recall: needs strace")
    fixture_bin = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else None
    rows = measure(fixture_bin)
    print(f"{'program':32} {'seen':>5} {'found':>5} {'hit':>4} {'recall':>7}  missed")
    for r in rows:
        hit = len(r.seen & r.found)
        print(
            f"{r.program:32} {len(r.seen):5} {len(r.found):5} {hit:4} {r.recall:7.2f}  "
            + " ".join(r.missed)
        )
    total_seen = sum(len(r.seen) for r in rows)
    total_hit = sum(len(r.seen & r.found) for r in rows)
    print(f"overall recall {total_hit}/{total_seen} = {total_hit / total_seen:.3f}")


if __name__ == "__main__":
    main()
