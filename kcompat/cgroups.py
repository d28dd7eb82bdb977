"""Resource limits for a run through cgroups: v2 where the host has the unified
hierarchy with the controllers, v1 where the controllers are on v1 hierarchies.

A limit that cannot be applied is an error, never a silent unlimited run. Each run gets
its own `kcompat/<id>` cgroup, removed after the run; ones left by a kcompat that was
killed are removed by the next run (a cgroup with no processes is removed by rmdir).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from kcompat.errors import ContainerError, UsageError

CGROUP_ROOT = Path("/sys/fs/cgroup")
CPU_PERIOD = 100_000
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True)
class Limits:
    memory: int | None = None  # bytes
    cpus: float | None = None
    pids: int | None = None

    def any(self) -> bool:
        return self.memory is not None or self.cpus is not None or self.pids is not None


def parse_memory(text: str) -> int:
    """docker's --memory syntax: a number with an optional b, k, m or g unit."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([bkmgt]?)b?", text.strip().lower())
    if not m:
        raise UsageError(f"--memory {text!r} is not a size", hint="e.g. --memory 512m")
    value = int(float(m.group(1)) * _UNITS[m.group(2)])
    if value < 6 << 20:
        raise UsageError(f"--memory {text!r} is below the 6 MiB minimum docker also enforces")
    return value


def parse_cpus(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1
    have = os.cpu_count() or 1
    if not 0.01 <= value <= have:
        raise UsageError(
            f"--cpus {text!r}: range of CPUs is from 0.01 to {have:.2f}, as there are only "
            f"{have} CPUs available",
            hint="e.g. --cpus 1.5",
        )
    return value


def parse_pids(value: int | None) -> int | None:
    """docker's --pids-limit: a positive limit; 0 or -1 is unlimited."""
    if value is None or value in (0, -1):
        return None
    if value < 0:
        raise UsageError(f"--pids-limit {value}: give a positive limit, or -1 for unlimited")
    return value


def _v2() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").is_file()


def _write(path: Path, value: str) -> None:
    path.write_text(value)


@dataclass
class CgroupLimits:
    limits: Limits
    dirs: list[Path] = field(default_factory=list)

    @classmethod
    def create(cls, limits: Limits) -> CgroupLimits:
        self = cls(limits)
        if not limits.any():
            return self
        name = f"kcompat-{secrets.token_hex(6)}"
        try:
            if _v2():
                self._create_v2(name)
            else:
                self._create_v1(name)
        except OSError as e:
            self.remove()
            raise ContainerError(
                f"cannot apply the resource limits: {e.filename or ''}: {e.strerror}",
                hint="limits need root or a delegated cgroup; run without --memory/--cpus/"
                "--pids-limit to run unlimited",
            ) from None
        return self

    def _values(self) -> dict[str, dict[str, str]]:
        lim = self.limits
        v2: dict[str, str] = {}
        v1: dict[str, dict[str, str]] = {}
        if lim.memory is not None:
            v2["memory.max"] = str(lim.memory)
            v2["memory.swap.max"] = "0"
            v1["memory"] = {"memory.limit_in_bytes": str(lim.memory)}
        if lim.cpus is not None:
            quota = int(lim.cpus * CPU_PERIOD)
            v2["cpu.max"] = f"{quota} {CPU_PERIOD}"
            v1["cpu"] = {"cpu.cfs_period_us": str(CPU_PERIOD), "cpu.cfs_quota_us": str(quota)}
        if lim.pids is not None:
            v2["pids.max"] = str(lim.pids)
            v1["pids"] = {"pids.max": str(lim.pids)}
        return {"v2": v2, **{f"v1:{k}": v for k, v in v1.items()}}

    def _create_v2(self, name: str) -> None:
        values = self._values()["v2"]
        controllers = sorted({k.split(".")[0] for k in values})
        base = CGROUP_ROOT / "kcompat"
        _write(CGROUP_ROOT / "cgroup.subtree_control", " ".join(f"+{c}" for c in controllers))
        base.mkdir(exist_ok=True)
        _sweep(base)
        _write(base / "cgroup.subtree_control", " ".join(f"+{c}" for c in controllers))
        leaf = base / name
        leaf.mkdir()
        self.dirs.append(leaf)
        for key, value in values.items():
            if key == "memory.swap.max" and not (leaf / key).exists():
                continue  # no swap accounting: nothing to limit
            _write(leaf / key, value)

    def _create_v1(self, name: str) -> None:
        for key, values in self._values().items():
            if not key.startswith("v1:"):
                continue
            hierarchy = CGROUP_ROOT / key[3:]
            if not (hierarchy / "cgroup.procs").exists():
                raise OSError(2, "no cgroup v1 hierarchy for this controller", str(hierarchy))
            base = hierarchy / "kcompat"
            base.mkdir(exist_ok=True)
            _sweep(base)
            leaf = base / name
            leaf.mkdir()
            self.dirs.append(leaf)
            for file, value in values.items():
                _write(leaf / file, value)

    def attach(self, pid: int) -> None:
        try:
            for d in self.dirs:
                _write(d / "cgroup.procs", str(pid))
        except OSError as e:
            raise ContainerError(
                f"cannot move the container into {e.filename}: {e.strerror}"
            ) from None

    def remove(self) -> None:
        for d in self.dirs:
            _rmdir(d)
        self.dirs.clear()


def _rmdir(d: Path) -> None:
    # The last processes of the PID namespace may take a moment to leave.
    for _ in range(50):
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)


def _sweep(base: Path) -> None:
    """Remove cgroups of earlier runs that have no processes left (a killed kcompat)."""
    with contextlib.suppress(OSError):
        for d in base.iterdir():
            if d.is_dir() and d.name.startswith("kcompat-"):
                with contextlib.suppress(OSError):
                    if not (d / "cgroup.procs").read_text().strip():
                        os.rmdir(d)
