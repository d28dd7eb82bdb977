"""systemd inside the image on a cgroup v2-only host."""

from __future__ import annotations

import re

from kcompat.rules.findings import Entrypoint, Finding, Severity
from kcompat.scan import Scan
from kcompat.target import Target


def cgroup_rule(scan: Scan, entry: Entrypoint, target: Target) -> list[Finding]:
    if target.cgroup != "v2" or entry.binary is None or entry.binary.elf is None:
        return []
    b = entry.binary
    if not any("systemd" in p for p in (*entry.chain, b.path)):
        return []
    version = None
    for lib in b.elf.needed if b.elf else ():
        m = re.match(r"libsystemd-shared-(\d+)", lib)
        if m:
            version = int(m.group(1))
    if version is not None and version >= 230:
        return []
    known = f"systemd {version}" if version else "a systemd without libsystemd-shared (< 231)"
    return [
        Finding(
            "cgroup-v2-systemd",
            Severity.FATAL if version else Severity.UNCERTAIN,
            f"{known} on a cgroup v2-only host",
            "systemd before 230 cannot run on cgroup v2: 'Failed to mount cgroup at "
            "/sys/fs/cgroup/systemd: Operation not permitted' (containers/podman#6183).",
            (f"{b.path}", "target cgroup: v2"),
            "boot the host with systemd.unified_cgroup_hierarchy=0, or use a newer base image",
            b.path,
        )
    ]
