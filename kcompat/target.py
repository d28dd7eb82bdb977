"""The host an image is judged against: this machine (probed), a saved profile, or one
described on the command line.

Every probe is total: one that cannot tell returns None ("unknown"), never raises.
A described target assumes what the version tables say; a probed one says what it saw.
"""

from __future__ import annotations

import json
import os
import platform as _platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from kcompat import binfmt as _binfmt
from kcompat.binfmt import BinfmtEntry, find_qemu, private_binfmt_possible
from kcompat.errors import UsageError
from kcompat.platform import Platform, host_platform, parse_platform
from kcompat.probe import cached_probe, remembered, tools_state
from kcompat.store import default_cache_dir
from kcompat.syscalls import ABI_OF_ARCH
from kcompat.versions import version_key

PROFILE_SCHEMA = 1
probe_binfmt = _binfmt.probe_binfmt  # its home is kcompat.binfmt; kept for old callers
# Native compat modes (compat-facts: i386 on x86_64 via IA32_EMULATION, AArch32 on some
# arm64 CPUs): which foreign arches a host of this arch may run without emulation.
_COMPAT_CANDIDATES = {"amd64": ("386",), "arm64": ("arm",)}
# arch-test's names (Debian architectures) -> OCI
_DEBIAN_ARCH = {"i386": "386", "armhf": "arm", "armel": "arm", "amd64": "amd64", "arm64": "arm64"}





@dataclass(frozen=True)
class Target:
    """What the judged host is. None everywhere means "unknown"."""

    source: str  # "host", "file:<path>", "described"
    kernel: str | None  # "6.18.0"
    platform: Platform
    compat_arches: tuple[str, ...] = ()  # OCI arches run natively besides the main one
    binfmt: tuple[BinfmtEntry, ...] = ()
    binfmt_assumed: bool = False  # described target: qemu handlers assumed for every arch
    private_binfmt: bool | None = None  # Linux 6.7+ binfmt_misc in a user namespace
    qemu: dict[str, str] = field(default_factory=dict)  # OCI arch -> interpreter path
    vsyscall: str | None = None  # "emulate" | "xonly" | "none"
    cgroup: str | None = None  # "v1" | "v2" | "hybrid"
    seccomp: str | None = None  # "disabled" | "strict" | "filter"
    userns: bool | None = None
    runtimes: dict[str, str] = field(default_factory=dict)  # name -> version
    runtime: str | None = None  # the runtime images will run under, "docker:20.10.7"
    absent_syscalls: tuple[str, ...] | None = None  # probed: ENOSYS
    blocked_syscalls: tuple[str, ...] | None = None  # probed: EPERM (seccomp)
    notes: tuple[str, ...] = ()

    def runs_natively(self, arch: str) -> bool:
        return arch == self.platform.architecture or arch in self.compat_arches

    def handler_for(self, arch: str) -> BinfmtEntry | None:
        return next((b for b in self.binfmt if b.arch == arch), None)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["schema"] = PROFILE_SCHEMA
        d["platform"] = str(self.platform)
        return d


# -- probes of this machine -------------------------------------------------------------


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def probe_kernel() -> str | None:
    release = _platform.release()
    m = re.match(r"(\d+\.\d+(?:\.\d+)?)", release)
    return m.group(1) if m else None


def probe_vsyscall() -> str | None:
    """From /proc/self/maps: r-xp emulate, --xp xonly, absent none (compat-facts)."""
    maps = _read("/proc/self/maps")
    if maps is None:
        return None
    for line in maps.splitlines():
        if line.endswith("[vsyscall]"):
            perms = line.split()[1]
            return "emulate" if perms.startswith("r") else "xonly"
    return "none"


def probe_cgroup() -> str | None:
    try:
        if Path("/sys/fs/cgroup/cgroup.controllers").exists():
            return "v2"
        if Path("/sys/fs/cgroup/unified").is_dir():
            return "hybrid"
        if Path("/sys/fs/cgroup").is_dir():
            return "v1"
    except OSError:
        pass
    return None


def probe_seccomp() -> str | None:
    status = _read("/proc/self/status")
    m = re.search(r"^Seccomp:\s+(\d)", status or "", re.M)
    return {"0": "disabled", "1": "strict", "2": "filter"}.get(m.group(1)) if m else None


def probe_userns() -> bool | None:
    v = _read("/proc/sys/kernel/unprivileged_userns_clone")
    if v is not None and v.strip() == "0" and os.geteuid() != 0:
        return False
    mx = _read("/proc/sys/user/max_user_namespaces")
    if mx is not None:
        return mx.strip() != "0"
    return None


def probe_compat(arch: str) -> tuple[str, ...] | None:
    """Foreign arches this CPU and kernel run natively, by executing a tiny program of
    each (Debian's arch-test does exactly that); None without arch-test."""
    if shutil.which("arch-test") is None:
        return None
    out = []
    for candidate in _COMPAT_CANDIDATES.get(arch, ()):
        debian = next(d for d, o in _DEBIAN_ARCH.items() if o == candidate)
        try:
            r = subprocess.run(
                ["arch-test", "-n", debian], capture_output=True, text=True, timeout=20
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if r.returncode == 0 and "ok" in r.stdout:
            out.append(candidate)
    return tuple(out)


def _version_of(cmd: list[str], pattern: str) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(pattern, r.stdout + r.stderr)
    return m.group(1) if m else None


def probe_runtimes() -> dict[str, str]:
    found = {}
    for name, cmd, pattern in (
        ("docker", ["docker", "--version"], r"version (\d+\.\d+\.\d+)"),
        ("podman", ["podman", "--version"], r"version (\d+\.\d+\.\d+)"),
        ("crun", ["crun", "--version"], r"version (\d+\.\d+(?:\.\d+)?)"),
        ("runc", ["runc", "--version"], r"version (\d+\.\d+\.\d+)"),
    ):
        v = _version_of(cmd, pattern)
        if v:
            found[name] = v
    for lib in Path("/usr/lib").glob("*/libseccomp.so.2.*"):
        m = re.search(r"libseccomp\.so\.(\d+\.\d+\.\d+)", lib.name)
        if m:
            found["libseccomp"] = m.group(1)
    return found


def _runtimes(cache: Path) -> dict[str, str]:
    """probe_runtimes, remembered until one of the runtimes or libseccomp changes."""
    seccomp = sorted(str(p) for p in Path("/usr/lib").glob("*/libseccomp.so.2.*"))
    engines = tools_state("docker", "podman", "crun", "runc")
    found = remembered(cache, "runtimes", [engines, seccomp], probe_runtimes)
    return {str(k): str(v) for k, v in dict(found).items()}


def probe_host(*, syscalls: bool = True, runtimes: bool = True) -> Target:
    """This machine as a target. `run` leaves out the slow parts it does not need: the
    per-syscall probe (the tables stand in) and the container runtimes' versions."""
    cache = default_cache_dir()
    engines = None
    if runtimes:  # processes to wait for: asked beside the syscall probe, not after it
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(1)
        engines = pool.submit(_runtimes, cache)
        pool.shutdown(wait=False)
    kernel = probe_kernel()
    plat = host_platform()
    found = remembered(cache, "compat", [plat.architecture, tools_state("arch-test")],
                       lambda: probe_compat(plat.architecture))  # fmt: skip
    compat = tuple(found) if found is not None else None
    notes = []
    if compat is None:
        notes.append("native compat modes unknown: arch-test is not installed")
    private = None
    if kernel is not None:
        userns = probe_userns()
        private = private_binfmt_possible(kernel, userns)
    absent = blocked = None
    abi = ABI_OF_ARCH.get(plat.architecture)
    probed = cached_probe(abi, cache) if abi and syscalls else None
    if probed is not None:
        absent, blocked = probed.absent, probed.blocked
        notes.append(
            f"syscalls probed: {len(probed.present)} present, {len(absent)} absent (ENOSYS), "
            f"{len(blocked)} blocked (EPERM); {len(probed.skipped)} not called because they "
            "cannot be called harmlessly"
        )
    else:
        notes.append("syscalls not probed: the kernel version tables are used")
    return Target(
        source="host",
        kernel=kernel,
        platform=plat,
        compat_arches=compat or (),
        binfmt=probe_binfmt(),
        private_binfmt=private,
        qemu=find_qemu(),
        vsyscall=probe_vsyscall() if plat.architecture == "amd64" else None,
        cgroup=probe_cgroup(),
        seccomp=probe_seccomp(),
        userns=probe_userns(),
        runtimes=engines.result() if engines is not None else {},
        absent_syscalls=absent,
        blocked_syscalls=blocked,
        notes=tuple(notes),
    )


# -- described and saved targets ---------------------------------------------------------


_RELEASE = re.compile(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?([-+_~][\w.+~-]*)?")


def parse_release(text: str) -> tuple[str, str | None]:
    """A kernel version from what users paste: `3.10`, `5`, or a whole `uname -r`
    (`3.10.0-1160.el7.x86_64`, `4.4.0-210-generic`). Returns the version part and the
    distribution suffix (None when there is none)."""
    m = _RELEASE.fullmatch(text.strip())
    if m is None or int(m.group(1)) == 0:
        raise UsageError(
            f"--kernel {text!r} is not a kernel version",
            hint="e.g. --kernel 3.10, --kernel 5, or what uname -r prints",
        )
    major, minor, patch, suffix = m.groups()
    version = f"{int(major)}.{int(minor or 0)}" + (f".{int(patch)}" if patch else "")
    return version, (suffix.lstrip("-+_~") or None) if suffix else None


def _newest_known() -> str:
    """The newest kernel release the syscall tables date anything to."""
    from kcompat.syscalls import table

    dated = [r.since for r in table("x86_64").by_nr.values() if r.since]
    return max(dated, key=version_key)


def described(
    kernel: str,
    arch: str | None = None,
    vsyscall: str | None = None,
    cgroup: str | None = None,
    runtime: str | None = None,
    binfmt: bool = True,
) -> Target:
    plat = parse_platform(arch) if arch else host_platform()
    if vsyscall not in (None, "emulate", "xonly", "none"):
        raise UsageError(f"--vsyscall {vsyscall!r}", hint="one of: emulate, xonly, none")
    if cgroup not in (None, "v1", "v2", "hybrid"):
        raise UsageError(f"--cgroup {cgroup!r}", hint="one of: v1, v2, hybrid")
    if runtime is not None and not re.fullmatch(r"[a-z]+:\d+\.\d+(\.\d+)?", runtime):
        raise UsageError(f"--runtime {runtime!r}", hint="NAME:VERSION, e.g. docker:20.10.7")
    k, suffix = parse_release(kernel)
    notes = ["described target: syscalls judged by the kernel version tables"]
    if suffix:
        notes.append(
            f"judged as Linux {k} (from {kernel!r}): a distribution kernel ({suffix}) carries "
            "backports the version tables cannot know; a profile probed on that host "
            "(kcompat host --save FILE, then --target FILE) is the precise answer"
        )
    newest = _newest_known()
    if version_key(k) > version_key(newest):
        notes.append(
            f"Linux {k} is newer than the syscall tables know ({newest}): it is judged as "
            f"{newest} with everything since assumed present"
        )
    if vsyscall is None and plat.architecture == "amd64":
        # the kernel default: emulate before 5.3, xonly from 5.3 (compat-facts)
        vsyscall = "xonly" if version_key(k) >= (5, 3) else "emulate"
    return Target(
        source="described",
        kernel=k,
        platform=plat,
        # IA32_EMULATION is on in the usual amd64 kernels; AArch32 on arm64 is CPU-dependent
        compat_arches=("386",) if plat.architecture == "amd64" else (),
        binfmt_assumed=binfmt,
        private_binfmt=False,
        vsyscall=vsyscall,
        cgroup=cgroup,
        runtime=runtime,
        notes=tuple(notes),
    )


def _expected(err: Any) -> str:
    """What a profile field should be, in words, from a jsonschema error."""
    kind, want = err.validator, err.validator_value
    if kind == "type":
        return f"expected {' or '.join(want) if isinstance(want, list) else want}"
    if kind == "enum":
        return "expected one of " + ", ".join(json.dumps(w) for w in want)
    if kind == "const":
        return f"expected {json.dumps(want)}"
    if kind in ("pattern", "oneOf") and err.schema.get("x-expected"):
        return f"expected {err.schema['x-expected']}"
    if kind == "required":
        return str(err.message)
    return str(err.message)


def _expected_words(e: Exception) -> str:
    if isinstance(e, KeyError):
        return f"field {e.args[0]} is missing"
    return str(e).split("\n")[0]


def validate_profile(raw: Any, path: Path) -> None:
    """Check a profile against ci/profile.schema.json; the error names the file, the
    field and what it should be (exit 2)."""
    import jsonschema

    schema = json.loads(resources.files("kcompat").joinpath("data", "profile.schema.json")
                        .read_text())  # fmt: skip
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(raw),
        key=lambda e: [str(p) for p in e.absolute_path],
    )
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path) or "(the document)"
        got = json.dumps(e.instance)
        raise UsageError(
            f"target profile {path}: field {where}: {_expected(e)}, got "
            f"{got if len(got) <= 60 else got[:57] + '...'}",
            hint="fix the file, or write one with: kcompat host --save FILE",
        )


def load_profile(path: Path) -> Target:
    from kcompat.image import read_json_file

    raw = read_json_file(path, "target profile", "write one with: kcompat host --save FILE")
    validate_profile(raw, path)
    try:
        binfmt = tuple(BinfmtEntry(**b) for b in raw.get("binfmt", ()))
        t = Target(
            source=f"file:{path}",
            kernel=raw.get("kernel"),
            platform=parse_platform(raw["platform"]),
            compat_arches=tuple(raw.get("compat_arches", ())),
            binfmt=binfmt,
            binfmt_assumed=bool(raw.get("binfmt_assumed", False)),
            private_binfmt=raw.get("private_binfmt"),
            qemu=dict(raw.get("qemu", {})),
            vsyscall=raw.get("vsyscall"),
            cgroup=raw.get("cgroup"),
            seccomp=raw.get("seccomp"),
            userns=raw.get("userns"),
            runtimes=dict(raw.get("runtimes", {})),
            runtime=raw.get("runtime"),
            absent_syscalls=tuple(raw["absent_syscalls"])
            if raw.get("absent_syscalls") is not None
            else None,
            blocked_syscalls=tuple(raw["blocked_syscalls"])
            if raw.get("blocked_syscalls") is not None
            else None,
            notes=tuple(raw.get("notes", ())),
        )
    except (KeyError, TypeError, ValueError) as e:  # the schema passed: a value it allows
        raise UsageError(
            f"target profile {path}: a value kcompat cannot use ({_expected_words(e)})",
            hint="write one with: kcompat host --save FILE",
        ) from None
    return t
