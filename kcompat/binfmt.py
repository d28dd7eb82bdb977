"""The binfmt_misc table for qemu-user (qemu/binfmt.json, made by qemu/generate.py from
Debian's qemu-user-static files and QEMU's qemu-binfmt-conf.sh), loaded and validated
at import, and the kernel's own match: ((first bytes ^ magic) & mask) == 0."""

from __future__ import annotations

import codecs
import json
import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class BinfmtSpec:
    arch: str  # OCI
    qemu: str  # qemu-user's name: qemu-<qemu>-static
    magic: bytes
    mask: bytes
    flags: str
    source: str

    def matches(self, head: bytes) -> bool:
        """What the kernel checks before handing a file to the interpreter
        (fs/binfmt_misc.c: the bits the mask keeps must equal the magic's)."""
        n = len(self.magic)
        return len(head) >= n and all(
            (head[i] ^ self.magic[i]) & self.mask[i] == 0 for i in range(n)
        )

    def register_line(self, interpreter: str, name: str | None = None) -> str:
        """The line written to binfmt_misc's `register` file."""
        esc = "".join(f"\\x{b:02x}" for b in self.magic)
        mask = "".join(f"\\x{b:02x}" for b in self.mask)
        return f":{name or 'qemu-' + self.qemu}:M::{esc}:{mask}:{interpreter}:{self.flags}"


def _unescape(text: str) -> bytes:
    decoded: bytes = codecs.escape_decode(text.encode())[0]
    return decoded


def _load() -> dict[str, BinfmtSpec]:
    raw = json.loads(resources.files("kcompat.qemu").joinpath("binfmt.json").read_text())
    if raw.get("schema") != 1:
        raise ValueError("qemu/binfmt.json: unknown schema")
    table = {}
    for arch, e in raw["entries"].items():
        spec = BinfmtSpec(arch, e["qemu"], _unescape(e["magic"]), _unescape(e["mask"]),
                          e["flags"], e["source"])  # fmt: skip
        if len(spec.magic) != len(spec.mask) or not spec.magic.startswith(b"\x7fELF"):
            raise ValueError(f"qemu/binfmt.json: bad magic or mask for {arch}")
        if "F" not in spec.flags:
            raise ValueError(f"qemu/binfmt.json: {arch} entry lacks flag F")
        table[arch] = spec
    return table


BINFMT = _load()
# qemu-user's name for each OCI arch kcompat emulates: qemu-<name>-static
QEMU_NAMES = {arch: spec.qemu for arch, spec in BINFMT.items()}


# -- host-wide registration: only through `kcompat binfmt install/remove` (root) ----------

BINFMT_DIR = "/proc/sys/fs/binfmt_misc"
# binfmt_misc instances of a user namespace's own, since Linux 6.7 (compat-facts:
# binfmt_misc): a container can register qemu-user without touching the host's table
PRIVATE_BINFMT_SINCE = "6.7"


def private_binfmt_possible(kernel: str | None, userns: bool | None) -> bool:
    from kcompat.versions import version_key

    return bool(kernel) and version_key(kernel or "0") >= version_key(PRIVATE_BINFMT_SINCE) and (
        userns is not False
    )


def _ensure_mounted() -> None:
    import os

    from kcompat import linuxapi
    from kcompat.errors import LocalIOError

    if os.path.exists(f"{BINFMT_DIR}/register"):
        return
    try:
        linuxapi.mount("binfmt_misc", BINFMT_DIR, "binfmt_misc")
    except OSError as e:
        raise LocalIOError(
            f"cannot mount binfmt_misc on {BINFMT_DIR}: {e.strerror}",
            hint="host-wide registration needs root (or use kcompat run, which needs none "
            "on Linux 6.7+)",
        ) from None


def _write(path: str, text: str) -> None:
    from kcompat.errors import LocalIOError

    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise LocalIOError(
            f"cannot write {path}: {e.strerror}", hint="binfmt_misc changes need root"
        ) from None


def _arches(arches: list[str]) -> list[str]:
    from kcompat.errors import UsageError
    from kcompat.platform import normalize_arch

    out = []
    for a in arches:
        oci = normalize_arch(a)[0]
        if oci not in BINFMT:
            raise UsageError(f"no binfmt entry for {a!r}", hint=f"one of {', '.join(BINFMT)}")
        out.append(oci)
    return out


def install(arches: list[str]) -> list[tuple[str, str]]:
    """Register static qemu-user interpreters host-wide with flag F; by default every
    arch that is foreign to this host and has one installed."""
    import os

    from kcompat.errors import UnsupportedError
    from kcompat.platform import host_platform

    qemu = find_qemu()
    native = host_platform().architecture
    wanted = _arches(arches) or [a for a in BINFMT if a in qemu and a != native]
    if not wanted:
        raise UnsupportedError(
            "no static qemu-user interpreter found",
            hint="apt-get install -y qemu-user-static (Debian package qemu-user-static)",
        )
    _ensure_mounted()
    done = []
    for arch in wanted:
        spec = BINFMT[arch]
        interp = qemu.get(arch)
        if interp is None:
            raise UnsupportedError(
                f"no static qemu-{spec.qemu} for {arch}",
                hint="apt-get install -y qemu-user-static (Debian package qemu-user-static)",
            )
        name = f"qemu-{spec.qemu}"
        if os.path.exists(f"{BINFMT_DIR}/{name}"):
            _write(f"{BINFMT_DIR}/{name}", "-1")
        _write(f"{BINFMT_DIR}/register", spec.register_line(os.path.realpath(interp), name))
        done.append((name, interp))
    return done


def remove(arches: list[str]) -> list[str]:
    """Remove the qemu-<arch> entries for these arches (all of the table's if none)."""
    import os

    names = [f"qemu-{BINFMT[a].qemu}" for a in (_arches(arches) or list(BINFMT))]
    removed = []
    for name in names:
        if os.path.exists(f"{BINFMT_DIR}/{name}"):
            _write(f"{BINFMT_DIR}/{name}", "-1")
            removed.append(name)
    return removed

# -- this host's binfmt_misc entries and static qemu-user interpreters -------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


@dataclass(frozen=True)
class BinfmtEntry:
    name: str
    enabled: bool
    interpreter: str
    flags: str
    magic: str | None
    mask: str | None
    interpreter_exists: bool
    interpreter_static: bool | None

    @property
    def arch(self) -> str | None:
        """The OCI arch this entry emulates, from its qemu-<arch> name."""
        base = self.name.removeprefix("qemu-")
        for oci, qemu in QEMU_NAMES.items():
            if base == qemu:
                return oci
        return None

    def usable_in_container(self) -> bool:
        """Enabled, flag F (opened at registration) and a static interpreter (compat-facts)."""
        return self.enabled and "F" in self.flags and self.interpreter_static is not False


def _is_static(path: str) -> bool | None:
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return None
    from kcompat.elffile import has_interpreter

    dynamic = has_interpreter(head)
    return None if dynamic is None else not dynamic


def probe_binfmt() -> tuple[BinfmtEntry, ...]:
    entries = []
    try:
        names = sorted(
            p.name for p in Path(BINFMT_DIR).iterdir() if p.name not in ("register", "status")
        )
    except OSError:
        return ()
    for name in names:
        text = _read(Path(BINFMT_DIR) / name)
        if text is None:
            continue
        fields: dict[str, str] = {}
        for line in text.splitlines():
            if line in ("enabled", "disabled"):
                fields["state"] = line
            elif " " in line:
                k, v = line.split(" ", 1)
                fields[k.rstrip(":")] = v.strip()
        interp = fields.get("interpreter", "")
        entries.append(
            BinfmtEntry(
                name=name,
                enabled=fields.get("state") == "enabled",
                interpreter=interp,
                flags=fields.get("flags", ""),
                magic=fields.get("magic"),
                mask=fields.get("mask"),
                interpreter_exists=bool(interp) and os.path.exists(interp),
                interpreter_static=_is_static(interp) if interp else None,
            )
        )
    return tuple(entries)


def find_qemu() -> dict[str, str]:
    """Static qemu-user interpreters on PATH: qemu-<arch>-static, or a static qemu-<arch>."""
    found = {}
    for oci, q in QEMU_NAMES.items():
        for name in (f"qemu-{q}-static", f"qemu-{q}"):
            path = shutil.which(name)
            if path and _is_static(os.path.realpath(path)):
                found[oci] = path
                break
    return found
