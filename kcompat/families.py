"""Program families: how a library or a language runtime reacts when a syscall answers
ENOSYS (a kernel too old) or EPERM (an old runtime's seccomp profile), and how to tell
from a binary that it belongs to one.

The facts are data (kcompat/data/families.json), each with its source: an upstream code
link, or "census: PACKAGE VERSION, command" when observed by bench/census.py. A family
is recognised from what the scan already has: a library's soname, an executable's name
or DT_NEEDED, Go build info, and marker strings found in the file (kcompat.scan keeps
the markers named here).

What a fact says about one call:
- fallback: the family catches the error and does the job another way;
- start-up: the call is made unconditionally while the program starts, and the error
  ends it (the verdict is "fails at start");
- path: only a named feature makes the call (and fails); when the fact names the
  imports or the applets that lead to it, a program without them never reaches it;
- error: the error goes back to the caller, whose own family decides.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from fnmatch import fnmatch
from functools import cache
from importlib import resources
from typing import Any

from kcompat.syscalls import ABIS
from kcompat.versions import version_key


class OnError(str, Enum):
    FALLBACK = "fallback"
    STARTUP = "start-up"
    PATH = "path"
    ERROR = "error"


@dataclass(frozen=True)
class CallFact:
    family: str
    syscall: str
    on_enosys: OnError
    on_eperm: OnError
    note: str
    source: str
    path: str | None = None
    reached_if_imports: frozenset[str] = frozenset()
    reached_if_applets: frozenset[str] = frozenset()
    since: str | None = None
    until: str | None = None
    # the family's program makes the call itself at start-up through whichever library
    # reaches it (node checks OpenSSL's CSPRNG, the JVM starts its threads): the fact
    # decides every path of a program of this family, not only the paths from its file
    program: bool = False
    # the syscall ABIs the fact holds on (empty: all): a library that chooses its way by
    # target architecture at build time (the getrandom crate's /dev/urandom fallback)
    abis: frozenset[str] = frozenset()

    def holds_for(self, version: str | None, abi: str | None = None) -> bool:
        """Whether the fact holds for this family version (and, for a fact bounded to
        some ABIs, on `abi`: an unknown ABI does not place it). With the version
        unknown, a fact bounded only below still holds: `since` is the release from
        which the family makes the call that way, so a program that reaches the call is
        at least that release; one bounded above cannot be placed and does not hold."""
        if self.abis and abi not in self.abis:
            return False
        if self.since is None and self.until is None:
            return True
        if version is None:
            return self.until is None
        try:
            k = version_key(version)
            if self.since and k < version_key(self.since):
                return False
            return not (self.until and k >= version_key(self.until))
        except ValueError:
            return False


@dataclass(frozen=True)
class Family:
    id: str
    name: str
    sonames: frozenset[str]
    programs: tuple[str, ...]
    needed: tuple[str, ...]
    go: bool
    markers: tuple[str, ...]
    calls: Mapping[str, tuple[CallFact, ...]]

    def facts(
        self, syscall: str, version: str | None, abi: str | None = None
    ) -> tuple[CallFact, ...]:
        return tuple(f for f in self.calls.get(syscall, ()) if f.holds_for(version, abi))


def _strings(raw: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    v = raw.get(key, [])
    if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
        raise ValueError(f"{where}: {key} must be a list of strings")
    return tuple(v)


def _fact(family: str, raw: Mapping[str, Any], where: str) -> CallFact:
    for key in ("syscall", "on_enosys", "note", "source"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ValueError(f"{where}: {key} is required")
    on_enosys = OnError(raw["on_enosys"])
    on_eperm = OnError(raw.get("on_eperm") or "error")
    path = raw.get("path")
    if OnError.PATH in (on_enosys, on_eperm) and not path:
        raise ValueError(f"{where}: a 'path' fact names its path")
    for v in (raw.get("since"), raw.get("until")):
        if v is not None:
            version_key(str(v))
    abis = frozenset(_strings(raw, "abis", where))
    if not abis <= set(ABIS):
        raise ValueError(f"{where}: unknown ABI in {sorted(abis - set(ABIS))}")
    return CallFact(
        family,
        raw["syscall"],
        on_enosys,
        on_eperm,
        raw["note"],
        raw["source"],
        path,
        frozenset(_strings(raw, "reached_if_imports", where)),
        frozenset(_strings(raw, "reached_if_applets", where)),
        raw.get("since"),
        raw.get("until"),
        _flag(raw, "program", where),
        abis,
    )


def _flag(raw: Mapping[str, Any], key: str, where: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{where}: {key} is true or false")
    return value


def load_families(doc: Mapping[str, Any], where: str = "families.json") -> tuple[Family, ...]:
    """Validate and build the families of a families.json document."""
    if doc.get("schema") != 1:
        raise ValueError(f"{where}: unknown schema {doc.get('schema')!r}")
    out = []
    seen: set[str] = set()
    for i, fam in enumerate(doc.get("families", ())):
        fid = fam.get("id")
        if not isinstance(fid, str) or not fid or fid in seen:
            raise ValueError(f"{where}: families[{i}] needs a unique id")
        seen.add(fid)
        rec = fam.get("recognise", {})
        calls: dict[str, list[CallFact]] = {}
        for j, c in enumerate(fam.get("calls", ())):
            fact = _fact(fid, c, f"{where}: {fid}.calls[{j}]")
            calls.setdefault(fact.syscall, []).append(fact)
        out.append(
            Family(
                fid,
                str(fam.get("name") or fid),
                frozenset(_strings(rec, "sonames", f"{where}: {fid}")),
                _strings(rec, "programs", f"{where}: {fid}"),
                _strings(rec, "needed", f"{where}: {fid}"),
                bool(rec.get("go", False)),
                _strings(rec, "markers", f"{where}: {fid}"),
                {k: tuple(v) for k, v in calls.items()},
            )
        )
    return tuple(out)


@cache
def families() -> tuple[Family, ...]:
    res = resources.files("kcompat").joinpath("data", "families.json")
    if not res.is_file():
        return ()
    return load_families(json.loads(res.read_text()))


# strings the rules read besides the families' own: a static glibc before 2.36 carries
# its kernel-version check and this message (knowledge.json glibc.kernel_too_old_*)
KERNEL_TOO_OLD = "FATAL: kernel too old"
SCAN_MARKERS = (KERNEL_TOO_OLD,)


@cache
def markers() -> tuple[bytes, ...]:
    """The marker strings the scan looks for in programs (sorted, unique)."""
    names = {m for f in families() for m in f.markers} | set(SCAN_MARKERS)
    return tuple(sorted(m.encode() for m in names))


@dataclass(frozen=True)
class Member:
    """Facts a file's families give, for one file."""

    path: str
    families: tuple[Family, ...]


def recognise(
    path: str,
    soname: str | None,
    needed: Iterable[str],
    go: bool,
    found_markers: Iterable[str],
    program_names: Iterable[str] = (),
    table: tuple[Family, ...] | None = None,
) -> tuple[Family, ...]:
    """The families a file belongs to. `program_names`: the names it runs as (its own
    basename, and for a multi-call binary the name it was started by)."""
    table = families() if table is None else table
    names = tuple(n.rsplit("/", 1)[-1] for n in program_names) or (path.rsplit("/", 1)[-1],)
    needed = tuple(needed)
    marks = set(found_markers)
    out = []
    for fam in table:
        if (
            (soname is not None and soname in fam.sonames)
            or (fam.go and go)
            or any(fnmatch(n, p) for n in names for p in fam.programs)
            or any(fnmatch(n, p) for n in needed for p in fam.needed)
            or any(m in marks for m in fam.markers)
        ):
            out.append(fam)
    return tuple(out)
