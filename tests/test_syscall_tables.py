"""syscall_tables/: reproducible, and checked against every source where that source is valid."""

from __future__ import annotations

import csv
import filecmp
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kcompat.syscalls import ABIS, table, version_key

REPO = Path(__file__).resolve().parents[1]
GENERATOR = REPO / "syscall_tables" / "generate.py"
DATA = REPO / "syscall_tables" / "data"
SOURCES = REPO.parent / "shared" / "data" / "kernel-syscalls"
needs_sources = pytest.mark.skipif(
    not SOURCES.is_dir(), reason=f"needs {SOURCES} (shared/ beside the repo)"
)

# ABI -> (mebeim file, libseccomp column, hrw file); read here independently of the generator.
SPECS = {
    "x86_64": ("x86-64-x64.tsv", "x86_64", "syscalls-x86_64"),
    "i386": ("x86-64-ia32.tsv", "x86", "syscalls-i386"),
    "arm64": ("arm64-64-aarch64.tsv", "aarch64", "syscalls-arm64"),
    "arm": ("arm-32-eabi.tsv", "arm", "syscalls-arm"),
    "ppc64le": ("powerpc-64-ppc64.tsv", "ppc64", "syscalls-powerpc64"),
    "s390x": ("s390-64-s390x.tsv", "s390x", "syscalls-s390x"),
    "riscv64": ("riscv-64-rv64.tsv", "riscv64", "syscalls-riscv64"),
    "mips64le": ("mips-64-n64.tsv", "mips64", "syscalls-mips64"),
    "loong64": (None, "loongarch64", "syscalls-loongarch64"),
}


def v(text: str) -> tuple[int, ...]:
    return version_key(text.lstrip("v"))


@needs_sources
def test_generator_is_reproducible(tmp_path: Path) -> None:
    for out in ("a", "b"):
        subprocess.run(
            [sys.executable, str(GENERATOR), str(SOURCES), str(tmp_path / out)],
            check=True,
            capture_output=True,
        )
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in DATA.iterdir())
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", names, shallow=False)
    assert mismatch == [] and errors == []
    _, stale, _ = filecmp.cmpfiles(tmp_path / "a", DATA, names, shallow=False)
    assert stale == [], "checked-in tables are stale: run syscall_tables/generate.py"


def _seccomp(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        reader = csv.reader(f)
        header = ["syscall", *next(reader)[1:]]
        return [dict(zip(header, r)) for r in reader if r]


@needs_sources
@pytest.mark.parametrize("abi", ABIS)
def test_numbers_agree_with_libseccomp_and_hrw(abi: str) -> None:
    _, column, hrw_file = SPECS[abi]
    t = table(abi)
    expected: dict[str, int] = {}
    for r in _seccomp(SOURCES / "libseccomp" / "syscalls.csv"):
        if r[column].isdigit():  # libseccomp leaves out the MIPS n64 base, 5000
            expected[r["syscall"]] = int(r[column]) + (5000 if column == "mips64" else 0)
    for line in (SOURCES / "hrw-syscalls-table" / hrw_file).read_text().splitlines():
        name, _, nr = line.partition("\t")
        if nr.strip().isdigit():
            assert expected.get(name, int(nr)) == int(nr), f"libseccomp and hrw differ on {name}"
            expected[name] = int(nr)
    wrong = {
        n: nr
        for n, nr in expected.items()
        if t.by_nr.get(nr) is None or n not in (t.by_nr[nr].name, *t.by_nr[nr].aliases)
    }
    assert wrong == {}


def _mebeim(abi: str) -> dict[str, set[tuple[int, str]]]:
    releases: dict[str, set[tuple[int, str]]] = {}
    path = SOURCES / "mebeim-linux-syscalls" / str(SPECS[abi][0])
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            ver, nr, name = line.split("\t")[:3]
            releases.setdefault(ver.lstrip("v"), set()).add((int(nr), name))
    return releases


@needs_sources
@pytest.mark.parametrize("abi", [a for a in ABIS if SPECS[a][0]])
def test_agrees_with_mebeim_within_its_range(abi: str) -> None:
    """mebeim is valid from its floor to 6.17: every appearance after the floor is exact."""
    releases = _mebeim(abi)
    versions = sorted(releases, key=v)
    floor, newest = versions[0], versions[-1]
    t = table(abi)
    first: dict[tuple[int, str], str] = {}
    for ver in versions:
        for key in releases[ver]:
            first.setdefault(key, ver)
    problems = []
    for (nr, name), ver in first.items():
        row = t.by_nr.get(nr)
        if row is None or name not in (row.name, *row.aliases):
            problems.append(f"{name}={nr} missing")
            continue
        if (nr, name) in releases[newest] and not row.available_on(newest):
            problems.append(f"{name} not available on {newest}")
        if ver != floor and row.since is not None and v(row.since) > v(ver):
            problems.append(f"{name}: since {row.since}, mebeim saw it in {ver}")
        if ver == floor and row.since is not None and v(row.since) > v(floor):
            problems.append(f"{name}: since {row.since} but present at the floor {floor}")
        if ver != floor and row.name == name and row.exact and row.since != ver:
            problems.append(f"{name}: exact {row.since} != mebeim {ver}")
    for row in t.by_nr.values():  # nothing claims to be available before mebeim shows it
        if row.implemented and row.since and v(row.since) >= v(floor):
            shown = [first[(row.nr, n)] for n in (row.name, *row.aliases) if (row.nr, n) in first]
            if shown and v(min(shown, key=v)) != v(row.since) and min(shown, key=v) != floor:
                problems.append(f"{row.name}: since {row.since}, mebeim first {min(shown, key=v)}")
    assert problems == []


def _man() -> dict[str, str]:
    out = {}
    for line in (SOURCES / "man-pages" / "syscalls.2").read_text().splitlines():
        m = re.match(r"^\\fB([a-z0-9_]+)\\fP\(2\)\t([0-9][0-9.]*)", line)
        if m:
            out.setdefault(m.group(1), m.group(2).rstrip("."))
    return out


# Where our table and man-pages' generic version disagree, and why. Each entry is a
# syscall that a built kernel (mebeim) shows *earlier* than man-pages says.
MAN_PAGES_DISAGREEMENTS: dict[tuple[str, str], str] = {}


@needs_sources
@pytest.mark.parametrize("abi", ABIS)
def test_never_earlier_than_man_pages(abi: str) -> None:
    """man-pages gives a generic first version; no ABI can have a syscall before it."""
    man = _man()
    t = table(abi)
    found = {}
    for row in t.by_nr.values():
        if not row.implemented or row.since is None:
            continue
        mv = [man[n] for n in (row.name, *row.aliases) if n in man]
        if mv and v(row.since) < v(min(mv, key=v)) and v(min(mv, key=v)) > v("2.6.32"):
            found[(abi, row.name)] = f"{row.since} < man-pages {min(mv, key=v)} ({row.source})"
    assert set(found) == set(k for k in MAN_PAGES_DISAGREEMENTS if k[0] == abi), found


@needs_sources
@pytest.mark.parametrize(
    "abi", [a for a in ABIS if SPECS[a][1] not in ("aarch64", "loongarch64", "riscv64")]
)
def test_pr457_versions_disagree_only_for_a_reason(abi: str) -> None:
    """PR #457 dates header numbers from 3.0 on. Where it differs from us, either a built
    kernel (mebeim) showed otherwise, or a later lower bound (man-pages, port) decided."""
    column = SPECS[abi][1]
    t = table(abi)
    unexplained = []
    for r in _seccomp(SOURCES / "libseccomp" / "syscalls-pr457-kver.csv"):
        m = re.fullmatch(r"SCMP_KV_(\d+)_(\d+)", r.get(f"{column}_kver", ""))
        row = t.by_name.get(r["syscall"])
        if not m or (m.group(1), m.group(2)) == ("3", "0") or row is None or row.since is None:
            continue
        if (
            not r.get(column, "").isdigit()
            or int(r[column]) + (5000 if column == "mips64" else 0) != row.nr
        ):
            continue  # the same name in another slot (x86_64 "sendfile64" is 71, ours is 40)
        kv = f"{m.group(1)}.{m.group(2)}"
        if v(kv) == v(row.since):
            continue
        if row.source == "mebeim":
            continue  # an implemented syscall seen in a built kernel beats a header date
        if v(row.since) > v(kv) and row.source in ("man-pages", "port"):
            continue  # a later lower bound
        unexplained.append((r["syscall"], kv, row.since, row.source))
    assert unexplained == []


@pytest.mark.parametrize(
    ("abi", "name", "since"),
    [
        ("x86_64", "statx", "4.11"),
        ("x86_64", "getrandom", "3.17"),
        ("x86_64", "clone3", "5.3"),
        ("x86_64", "copy_file_range", "4.5"),
        ("x86_64", "faccessat2", "5.8"),
        ("x86_64", "close_range", "5.9"),
        ("x86_64", "rseq", "4.18"),
        ("x86_64", "fchmodat2", "6.6"),
        ("x86_64", "mseal", "6.10"),
        ("x86_64", "memfd_create", "3.17"),
        ("x86_64", "pidfd_open", "5.3"),
        ("x86_64", "epoll_pwait2", "5.11"),
        ("i386", "socket", "4.3"),
        ("arm64", "read", "3.7"),
        ("riscv64", "read", "4.15"),
        ("loong64", "clone3", "5.19"),
        ("loong64", "mseal", "6.10"),
        ("ppc64le", "read", "3.10"),
        ("arm", "membarrier", "4.3"),
    ],
)
def test_known_facts(abi: str, name: str, since: str) -> None:
    row = table(abi).lookup(name)
    assert row is not None and row.since == since
    major, minor = version_key(since)[:2]
    assert not row.available_on(f"{major}.{minor - 1}")  # every `since` above has minor > 0
    assert row.available_on(since)


@pytest.mark.parametrize("abi", ["x86_64", "i386", "s390x"])
def test_old_syscalls_are_on_old_kernels(abi: str) -> None:
    """Every syscall man-pages dates 2.6 or earlier, on an ABI that existed then, is on 2.6.32.

    Regression: x86_64 nr 40 (sendfile) was dated 3.10 from PR #457's "sendfile64" row,
    which on x86_64 names another slot."""
    t = table(abi)
    for name in ("sendfile", "read", "write", "openat", "clone", "mmap", "futex", "uname"):
        row = t.lookup(name)
        assert row is not None, name
        assert row.available_on("2.6.32"), (name, row.since, row.source)


def test_never_implemented_and_removed() -> None:
    tux = table("x86_64").lookup("tuxcall")
    assert tux is not None and not tux.implemented and not tux.available_on("6.17")
    sysctl = table("x86_64").lookup("_sysctl") or table("x86_64").lookup("sysctl")
    assert sysctl is not None and sysctl.removed == "5.9"
    assert sysctl.available_on("5.8") and not sysctl.available_on("5.9")


@pytest.mark.integration
def test_data_reaches_an_installed_wheel(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(wheels.glob("kcompat-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = (
        "import kcompat.syscalls as s, json; r = s.table('arm64').lookup('statx');"
        "from kcompat.knowledge import KNOWLEDGE as k;"
        "from kcompat.binfmt import BINFMT as b;"
        "import importlib.util as u; from kcompat.families import families as f;"
        "from importlib import resources as res; kc = res.files('kcompat');"
        "assert u.find_spec('kcompat.cli') and kc.joinpath('rules', 'syscalls.py').is_file();"
        "assert len(f()) > 10;"
        "print(json.dumps([s.__file__, r.nr, r.since, k.go_min_kernel('1.24'), b['arm64'].qemu]))"
    )
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout
    path, nr, since, go, qemu = json.loads(out)
    assert str(venv) in path and (nr, since, go, qemu) == (291, "4.11", "3.2", "aarch64")
