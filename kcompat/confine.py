"""What confines a container by default, as docker does: masked and read-only paths, a
seccomp profile, capabilities; and docker's seccomp profile format, compiled to a
classic BPF program here (no libseccomp).

The facts, with their sources, are in kcompat/data/confinement.json. A profile is a
default action and rules: syscall names, an action, and optional argument conditions
(docker's `args`: index, value, valueTwo, op); `includes`/`excludes` by capability,
architecture or minimum kernel are resolved when the program is built for a container.
"""

from __future__ import annotations

import json
import re
import struct
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from kcompat.errors import UsageError
from kcompat.syscalls import table
from kcompat.versions import version_key

# linux/filter.h, linux/seccomp.h, linux/audit.h
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_AND_K = 0x54
_RET_K = 0x06
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
RET_KILL_PROCESS = 0x80000000
RET_TRAP = 0x00030000
RET_LOG = 0x7FFC0000
_ARGS_OFFSET = 16  # struct seccomp_data: nr, arch, instruction_pointer, args[6]
_X32_BIT = 0x40000000
AUDIT_ARCH = {
    "x86_64": 0xC000003E, "i386": 0x40000003, "arm64": 0xC00000B7, "arm": 0x40000028,
    "s390x": 0x80000016, "ppc64le": 0xC0000015, "riscv64": 0xC00000F3,
    "mips64le": 0xC0000008, "loong64": 0xC0000102,
}  # fmt: skip
# 32-bit ABIs a 64-bit kernel also runs natively (their calls are filtered too)
COMPAT_ABI = {"x86_64": "i386", "arm64": "arm"}
EPERM, ENOSYS = 1, 38

_ACTIONS = {
    "SCMP_ACT_ALLOW": RET_ALLOW,
    "SCMP_ACT_ERRNO": RET_ERRNO,
    "SCMP_ACT_KILL": RET_KILL_PROCESS,
    "SCMP_ACT_KILL_PROCESS": RET_KILL_PROCESS,
    "SCMP_ACT_KILL_THREAD": RET_KILL_PROCESS,
    "SCMP_ACT_TRAP": RET_TRAP,
    "SCMP_ACT_LOG": RET_LOG,
}
_OPS = ("SCMP_CMP_EQ", "SCMP_CMP_NE", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
        "SCMP_CMP_LT", "SCMP_CMP_LE")  # fmt: skip


@dataclass(frozen=True)
class Cond:
    index: int
    value: int
    value_two: int
    op: str


@dataclass(frozen=True)
class Rule:
    names: tuple[str, ...]
    action: int  # a RET_* value, the errno already in its low 16 bits
    conds: tuple[Cond, ...] = ()


@dataclass(frozen=True)
class Profile:
    name: str
    default: int
    rules: tuple[Rule, ...]


def _ret(action: str, errno_ret: int | None, where: str) -> int:
    if action not in _ACTIONS:
        raise UsageError(f"{where}: action {action!r} is not supported",
                         hint=f"use one of {', '.join(_ACTIONS)}")  # fmt: skip
    ret = _ACTIONS[action]
    if ret == RET_ERRNO:
        ret |= (EPERM if errno_ret is None else errno_ret) & 0xFFFF
    return ret


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _filters(entry: dict[str, Any], at: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """An entry's includes and excludes, checked: caps and arches lists of strings,
    minKernel a version string."""
    out = []
    for key in ("includes", "excludes"):
        f = entry.get(key) or {}
        if not isinstance(f, dict):
            raise UsageError(f"{at}: {key} must be an object")
        for k in ("caps", "arches"):
            if k in f and not (isinstance(f[k], list) and all(isinstance(x, str) for x in f[k])):
                raise UsageError(f"{at}: {key}.{k} must be a list of strings")
        if "minKernel" in f:
            mk = f["minKernel"]
            if not isinstance(mk, str) or not re.fullmatch(r"\d+\.\d+(\.\d+)?", mk):
                raise UsageError(f'{at}: {key}.minKernel must be a version such as "4.8"')
        out.append(f)
    return out[0], out[1]


def _applies(entry: dict[str, Any], caps: frozenset[str], arch: str, kernel: str | None,
             at: str = "seccomp profile") -> bool:  # fmt: skip
    """docker's includes/excludes: caps, arches, minKernel."""
    inc, exc = _filters(entry, at)
    if inc.get("caps") and not set(inc["caps"]) <= caps:
        return False
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if inc.get("minKernel") and kernel and version_key(kernel) < version_key(inc["minKernel"]):
        return False
    if exc.get("caps") and set(exc["caps"]) & caps:
        return False
    if exc.get("arches") and arch in exc["arches"]:
        return False
    return not (exc.get("minKernel") and kernel and version_key(kernel) >= version_key(
        exc["minKernel"]))  # fmt: skip


def parse_profile(
    raw: Any, where: str, caps: frozenset[str], arch: str, kernel: str | None
) -> Profile:
    """A profile in docker's seccomp JSON format, for a container with `caps` (names
    without CAP_) on `arch` (a syscall ABI) and `kernel`."""
    if not isinstance(raw, dict) or not isinstance(raw.get("defaultAction"), str):
        raise UsageError(
            f"{where}: not a seccomp profile (no defaultAction)",
            hint="give a profile in docker's format, e.g. its default.json",
        )
    default = _ret(raw["defaultAction"], raw.get("defaultErrnoRet"), where)
    rules: list[Rule] = []
    for i, entry in enumerate(raw.get("syscalls") or []):
        at = f"{where}: syscalls[{i}]"
        if not isinstance(entry, dict):
            raise UsageError(f"{at} is not an object")
        names = entry.get("names") or ([entry["name"]] if entry.get("name") else [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise UsageError(f"{at}: names must be a list of syscall names")
        if not _applies(entry, frozenset(c.removeprefix("CAP_") for c in caps), arch, kernel, at):
            continue
        conds = []
        args = entry.get("args") or []
        if not isinstance(args, list):
            raise UsageError(f"{at}: args must be a list of conditions")
        for j, a in enumerate(args):
            where_a = f"{at}.args[{j}]"
            if not isinstance(a, dict) or a.get("op") not in _OPS:
                raise UsageError(f"{where_a}: not a condition with a known op",
                                 hint=f"op must be one of {', '.join(_OPS)}")  # fmt: skip
            index = a.get("index")
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= 5:
                raise UsageError(f"{where_a}: index must be an argument number, 0 to 5")
            for key in ("value", "valueTwo"):
                v = a.get(key, 0)
                if not _is_int(v) or not 0 <= v < 1 << 64:
                    raise UsageError(f"{where_a}: {key} must be an integer from 0 to 2^64-1")
            conds.append(Cond(index, a.get("value", 0), a.get("valueTwo", 0), a["op"]))
        errno_ret = entry.get("errnoRet")
        if errno_ret is not None and (not _is_int(errno_ret) or not 0 <= errno_ret <= 4095):
            raise UsageError(f"{at}: errnoRet must be an errno number, 0 to 4095")
        action = entry.get("action", "")
        if not isinstance(action, str):
            raise UsageError(f"{at}: action must be a string such as SCMP_ACT_ERRNO")
        rules.append(Rule(tuple(names), _ret(action, errno_ret, at), tuple(conds)))
    return Profile(where, default, tuple(rules))


def load_profile_file(path: Path, caps: frozenset[str], arch: str, kernel: str | None) -> Profile:
    from kcompat.image import read_json_file

    raw = read_json_file(
        path,
        "seccomp profile",
        "give a profile in docker's JSON format: --security-opt seccomp=FILE",
    )
    return parse_profile(raw, f"seccomp profile {path}", caps, arch, kernel)


# -- the BPF program ------------------------------------------------------------------


class _Asm:
    """A classic BPF program with symbolic jump targets, resolved at the end (the
    conditional jumps reach 255 instructions, `ja` any distance)."""

    def __init__(self) -> None:
        self.code: list[tuple[int, str | None, str | None, int]] = []
        self.labels: dict[str, int] = {}
        self._n = 0

    def new(self) -> str:
        self._n += 1
        return f"L{self._n}"

    def emit(self, code: int, k: int = 0, jt: str | None = None, jf: str | None = None) -> None:
        self.code.append((code, jt, jf, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def _rel(self, name: str | None, at: int) -> int:
        if name is None:
            return 0
        off = self.labels[name] - at - 1
        if off < 0:
            raise ValueError("backward jump")
        return off

    def assemble(self) -> bytes:
        out = []
        for i, (code, jt, jf, k) in enumerate(self.code):
            if code == _JA:
                k, t, f = self._rel(jt, i), 0, 0
            else:
                t, f = self._rel(jt, i), self._rel(jf, i)
                if t > 255 or f > 255:
                    raise UsageError("a seccomp rule is too long for classic BPF jumps")
            out.append(struct.pack("=HBBI", code, t, f, k & 0xFFFFFFFF))
        if len(out) > 4096:
            raise UsageError("seccomp program longer than the kernel's 4096 instructions")
        return b"".join(out)


_JA = 0x05


def _cond(asm: _Asm, c: Cond, skip: str) -> None:
    """Fall through when condition `c` holds on the call's argument, else jump to `skip`
    (64-bit compares as two 32-bit words)."""
    base = _ARGS_OFFSET + 8 * c.index  # args are u64 in the host's byte order
    lo, hi = (base + 4, base) if sys.byteorder == "big" else (base, base + 4)
    if c.op == "SCMP_CMP_MASKED_EQ":  # docker: value is the mask, valueTwo the result
        m, w = c.value, c.value_two
        for off, shift in ((hi, 32), (lo, 0)):
            nxt = asm.new()
            asm.emit(_LD_W_ABS, off)
            asm.emit(_AND_K, m >> shift & 0xFFFFFFFF)
            asm.emit(_JEQ_K, w >> shift & 0xFFFFFFFF, nxt, skip)
            asm.label(nxt)
    elif c.op == "SCMP_CMP_EQ":
        for off, shift in ((hi, 32), (lo, 0)):
            nxt = asm.new()
            asm.emit(_LD_W_ABS, off)
            asm.emit(_JEQ_K, c.value >> shift & 0xFFFFFFFF, nxt, skip)
            asm.label(nxt)
    elif c.op == "SCMP_CMP_NE":
        holds, check_lo = asm.new(), asm.new()
        asm.emit(_LD_W_ABS, hi)
        asm.emit(_JEQ_K, c.value >> 32 & 0xFFFFFFFF, check_lo, holds)
        asm.label(check_lo)
        asm.emit(_LD_W_ABS, lo)
        asm.emit(_JEQ_K, c.value & 0xFFFFFFFF, skip, holds)
        asm.label(holds)
    else:
        raise UsageError(f"seccomp: {c.op} on argument {c.index} is not supported by kcompat",
                         hint="use SCMP_CMP_EQ, SCMP_CMP_NE or SCMP_CMP_MASKED_EQ")  # fmt: skip


def _section(asm: _Asm, profile: Profile, abi: str) -> None:
    t = table(abi)
    asm.emit(_LD_W_ABS, 0)  # seccomp_data.nr
    if abi == "x86_64":  # x32 calls (nr | 0x40000000): as a kernel without x32 answers
        native = asm.new()
        asm.emit(_JGE_K, _X32_BIT, None, native)
        asm.emit(_RET_K, RET_ERRNO | ENOSYS)
        asm.label(native)
    for rule in profile.rules:
        for name in rule.names:
            row = t.lookup(name)
            if row is None or not row.implemented:
                continue  # not on this ABI
            skip, body = asm.new(), asm.new()
            asm.emit(_JEQ_K, row.nr, body, skip)
            asm.label(body)
            for c in rule.conds:
                _cond(asm, c, skip)
            asm.emit(_RET_K, rule.action)
            asm.label(skip)
            if rule.conds:
                asm.emit(_LD_W_ABS, 0)  # the arguments replaced the number
    asm.emit(_RET_K, profile.default)


def assemble(profile: Profile, abi: str) -> bytes:
    """The BPF program for `profile` on `abi` and, where the kernel runs one, its 32-bit
    compat ABI; a call of any other ABI kills the process."""
    arches = [abi] + ([COMPAT_ABI[abi]] if abi in COMPAT_ABI else [])
    asm = _Asm()
    asm.emit(_LD_W_ABS, 4)  # seccomp_data.arch
    starts = {a: asm.new() for a in arches}
    for a in arches:
        nxt, go = asm.new(), asm.new()
        asm.emit(_JEQ_K, AUDIT_ARCH[a], go, nxt)
        asm.label(go)
        asm.emit(_JA, 0, starts[a])
        asm.label(nxt)
    asm.emit(_RET_K, RET_KILL_PROCESS)  # a call of another ABI: libseccomp's bad-arch action
    for a in arches:
        asm.label(starts[a])
        _section(asm, profile, a)
    return asm.assemble()


# -- docker's defaults ------------------------------------------------------------------


@dataclass(frozen=True)
class Defaults:
    masked_paths: tuple[str, ...]
    readonly_paths: tuple[str, ...]
    seccomp: dict[str, Any]


def _load() -> Defaults:
    raw = json.loads(resources.files("kcompat").joinpath("data", "confinement.json").read_text())
    if raw.get("schema") != 1:
        raise ValueError("kcompat/data/confinement.json: unknown schema")
    return Defaults(tuple(raw["masked_paths"]["paths"]), tuple(raw["readonly_paths"]["paths"]),
                    raw["seccomp"])  # fmt: skip


DEFAULTS = _load()


def default_profile(caps: frozenset[str], abi: str, kernel: str | None) -> Profile:
    return parse_profile(DEFAULTS.seccomp, "kcompat's default seccomp profile", caps, abi,
                         kernel)  # fmt: skip
