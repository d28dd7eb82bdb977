"""Which syscalls this kernel really has: each one is called in a child process with
arguments that must fail harmlessly (-1 everywhere: a bad fd, pointer, flag or pid),
and the errno tells: ENOSYS absent, EPERM blocked (seccomp or capabilities), anything
else present. That sees distribution backports (RHEL 7's 3.10) and a container's
seccomp profile, which a version number cannot.

Calls that would not return or would change the calling process in ways a probe must
not (exit, fork, exec, pause, sigreturn, vhangup...) are skipped and listed as such.
The child runs the whole batch; if it dies on one call, the probe notes that call and
goes on after it in a new child.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kcompat.syscalls import table

# never called: they do not return, block, replace or duplicate the process, or act on
# the terminal or machine even with bad arguments
SKIP = frozenset(
    {
        "exit", "exit_group", "pause", "rt_sigsuspend", "sigsuspend", "rt_sigreturn",
        "sigreturn", "fork", "vfork", "clone", "clone3", "execve", "execveat", "vhangup",
        "restart_syscall", "munlockall", "sync", "setsid", "sched_yield", "brk", "umask",
        "personality", "kexec_load", "kexec_file_load", "reboot", "rt_tgsigqueueinfo",
        "seccomp", "set_tid_address", "set_robust_list", "rseq", "arch_prctl",
        "set_thread_area", "iopl", "ioperm", "modify_ldt", "uselib", "idle", "vm86",
        "vm86old", "sys_debug_setcontext", "swapcontext", "switch_endian", "sigaltstack",
    }
)  # fmt: skip

# Calls that answer ENOSYS to an unknown sub-command get a valid, harmless one instead:
# futex(NULL, FUTEX_WAKE, 0) wakes nobody (EFAULT or 0).
ARGS = {"futex": (0, 1, 0, 0, 0, 0)}

_CHILD = r"""
import ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
args = json.loads(sys.argv[1])
for line in sys.stdin:
    nr = int(line)
    sys.stdout.write(f"{nr} start\n"); sys.stdout.flush()
    ctypes.set_errno(0)
    values = args.get(str(nr), [-1] * 6)
    r = libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(v) for v in values))
    err = ctypes.get_errno() if r == -1 else 0
    sys.stdout.write(f"{nr} {err}\n"); sys.stdout.flush()
"""

ENOSYS, EPERM = 38, 1


@dataclass(frozen=True)
class ProbeResult:
    abi: str
    absent: tuple[str, ...]  # ENOSYS
    blocked: tuple[str, ...]  # EPERM
    present: tuple[str, ...]
    skipped: tuple[str, ...]
    crashed: tuple[str, ...]  # the child died on these


def _state_key(abi: str) -> str | None:
    """What the probe's answer depends on: this boot (a new kernel, a changed sysctl or
    module needs a reboot or shows in boot_id), this process's seccomp state and
    capabilities (EPERM comes from them), and the probe's own code. None if unknown."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        status = Path("/proc/self/status").read_text().splitlines()
        release = os.uname().release
    except OSError:
        return None
    state = [line for line in status if line.startswith(("Seccomp", "CapEff", "NoNewPrivs"))]
    h = hashlib.sha256(json.dumps([boot, release, abi, state, os.geteuid()]).encode())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:24]


def tools_state(*names: str) -> list[list[object]]:
    """Which of these programs PATH finds, and their files' identity (a new version of
    one is a new file): what a cached answer about them depends on."""
    import shutil

    out: list[list[object]] = []
    for name in names:
        path = shutil.which(name)
        if path is None:
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue
        out.append([name, os.path.realpath(path), st.st_mtime_ns, st.st_size, st.st_ino])
    return out


def remembered(cache: Path | None, name: str, depends: object, compute: Callable[[], Any]) -> Any:
    """compute()'s JSON answer, remembered under `cache`/probe for this boot, seccomp
    state and user and `depends`: the syscall probe (cached_probe) and the host probe's
    other parts (arch-test, the runtimes' versions) cost seconds or a few subprocesses on
    every `check --host`. A None answer is not remembered."""
    key = _state_key(name) if cache is not None else None
    if cache is None or key is None:
        return compute()
    digest = hashlib.sha256(json.dumps([key, depends], default=str).encode()).hexdigest()[:24]
    path = cache / "probe" / f"{name}-{digest}.json"
    try:
        return json.loads(path.read_text())["value"]
    except (OSError, ValueError, TypeError, KeyError):
        pass
    value = compute()
    if value is None:
        return None  # nothing learned (the probe could not run): try again next time
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".partial")
        with os.fdopen(fd, "w") as f:
            json.dump({"value": value}, f)
        os.replace(tmp, path)
    except (OSError, TypeError):
        pass  # a read-only cache, or an answer JSON cannot hold: computed again next time
    return value


def cached_probe(abi: str, cache: Path | None) -> ProbeResult | None:
    """`probe_syscalls`, remembered per boot and per seccomp state under `cache`/probe:
    a second `check --host` on the same boot does not probe again (about 2 s)."""

    def probe() -> dict[str, Any] | None:
        result = probe_syscalls(abi)
        return asdict(result) if result is not None else None

    raw = remembered(cache, abi, [], probe)
    if raw is None:
        return None
    try:
        return ProbeResult(
            str(raw["abi"]), *(tuple(map(str, raw[k])) for k in
                               ("absent", "blocked", "present", "skipped", "crashed")),
        )  # fmt: skip
    except (TypeError, KeyError):  # a well-formed file of another shape: probe again
        return probe_syscalls(abi)


def probe_syscalls(abi: str, timeout: float = 60.0) -> ProbeResult | None:
    """Probe every implemented syscall of the host ABI; None if it cannot be run here."""
    try:
        t = table(abi)
    except Exception:
        return None
    todo = sorted(nr for nr, s in t.by_nr.items() if s.implemented and s.name not in SKIP)
    skipped = tuple(sorted(s.name for s in t.by_nr.values() if s.name in SKIP))
    overrides = {str(t.by_name[n].nr): list(v) for n, v in ARGS.items() if n in t.by_name}
    results: dict[int, int] = {}
    crashed: list[int] = []
    while todo:
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-c", _CHILD, json.dumps(overrides)],
                input="".join(f"{nr}\n" for nr in todo),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            out = proc.stdout
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        except OSError:
            return None
        last_started = None
        for line in out.splitlines():
            nr_text, what = line.split(" ", 1)
            if what == "start":
                last_started = int(nr_text)
            else:
                results[int(nr_text)] = int(what)
                last_started = None
        done = set(results)
        if last_started is not None:
            crashed.append(last_started)
            done.add(last_started)
        remaining = [nr for nr in todo if nr not in done]
        if remaining == todo:  # no progress at all: give up rather than loop
            crashed.extend(remaining)
            break
        todo = remaining

    def names(pred: object) -> tuple[str, ...]:
        return tuple(sorted(t.by_nr[nr].name for nr, err in results.items() if pred(err)))  # type: ignore[operator]

    return ProbeResult(
        abi,
        absent=names(lambda e: e == ENOSYS),
        blocked=names(lambda e: e == EPERM),
        # a call that killed the child exists: an absent one returns ENOSYS
        present=tuple(
            sorted(
                {*names(lambda e: e not in (ENOSYS, EPERM)), *(t.by_nr[nr].name for nr in crashed)}
            )
        ),
        skipped=skipped,
        crashed=tuple(sorted(t.by_nr[nr].name for nr in crashed)),
    )


def main() -> None:  # python -m kcompat.probe ABI: the raw result, for debugging
    r = probe_syscalls(sys.argv[1] if len(sys.argv) > 1 else "x86_64")
    print(json.dumps(r.__dict__ if r else None, indent=1))


if __name__ == "__main__":
    main()
