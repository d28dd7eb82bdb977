#!/usr/bin/env python3
"""The census: which real programs run on which older kernel, and which missing
syscalls decide it, observed with kcompat's own simulation.

For every program of bench/census_corpus.py (Debian packages of bullseye, bookworm and
trixie on amd64; a subset on arm64 and s390x/ppc64le under qemu-user), with its smoke
command (start-up and one typical code path):

  control    `kcompat run --force --no-predict IMAGE -- CMD` on this host as it is; a
             program that fails here is excluded (and listed)
  ladder     the same under `--kernel K` for 2.6.32 ... 6.1 (every syscall newer than K
             answers ENOSYS, the release is K), and under `--kernel K --seccomp-eperm`
             (EPERM, the release stays: an old runtime's seccomp profile)
  bisection  for a run that fails where the control runs, a minimal set S of the
             syscalls absent at K whose ENOSYS (EPERM) alone reproduces the failure:
             first with the real release, through `--security-opt seccomp=PROFILE`
             (kcompat's default profile with S answered ENOSYS/EPERM put first); when the
             real release hides the failure, with the release faked to K and only S
             denied (kcompat's simulation with a narrowed syscall list, see _simrun: the
             CLI has no option for that). Candidates come first from what the program
             tried (strace), then halving, then one-by-one removal (1-minimal).
  trace      which of the absent syscalls the program tried and survived: the host's
             strace -f around `kcompat run --security-opt seccomp=PROFILE` (all absent
             syscalls denied, the real release), at the lowest kernel where it runs
             (--trace all: at every kernel where it runs). Under qemu-user the calls are
             the host calls qemu makes for the guest (and its own). A traced run has half
             the timeout, and its timeout is kept (strace can keep a failing program alive)
  prediction `check`'s pipeline in-process: for enosys what `kcompat check --kernel K
             --arch A` says (a described target); for eperm what `kcompat run --kernel K
             --seccomp-eperm` predicts (this host with the newer syscalls EPERM'd)

Results, one row per (program, version, arch, kernel, mode): bench/census/<suite>-<arch>.tsv,
and bench/census/findings.md (per family and program: the lowest kernel it runs on, what
fails below it and why; the (syscall, family) pairs tried-and-survived versus fatal).

Images and every run are cached under .fixtures/census (KCOMPAT_FIXTURES): a run is
keyed by the image's manifest digest, the command, kernel, mode and the hash of
kcompat's run-path modules, so a re-run only re-evaluates what changed (predictions are
keyed by the hash of all of kcompat). --kcompat REV runs a snapshot of that commit (edits
made meanwhile do not disturb the runs); --reuse-runs REV counts the runs cached with an
earlier revision as made with this one (for a run path that only moved code; the
`observed_with` column says which revision observed each row); --report-only runs
nothing and writes the outputs from the cache (what is not there is `missing`).

Run: .venv/bin/python bench/census.py [--kcompat REV] [--suites bookworm]
       [--arches amd64,arm64] [--programs ls,python3] [--kernels 3.2,4.4]
       [--modes enosys,eperm] [--jobs 2] [--trace lowest|all|none] [--no-bisect]
       [--reuse-runs REV] [--report-only] [--out DIR]
Needs root (mmdebstrap, namespaces), mmdebstrap, umoci, arch-test, qemu-user-static,
strace, musl-tools, readelf (binutils), network to deb.debian.org and PyPI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# the kcompat that runs and predicts: the work tree, or a snapshot of a commit (--kcompat)
KC_TREE = Path(os.environ.get("CENSUS_KCOMPAT") or REPO)
sys.path.insert(0, str(KC_TREE))
sys.path.insert(0, str(REPO / "bench"))

from census_corpus import (  # noqa: E402
    ARCHES,
    PATH_ENV,
    RUFF,
    SUITES,
    Image,
    Program,
    build_image,
    programs_for,
)

KERNELS = ("2.6.32", "3.2", "3.10", "3.17", "4.4", "4.19", "5.4", "5.10", "6.1")
MODES = ("enosys", "eperm")
ERRNO = {"enosys": 38, "eperm": 1}
ERRNAME = {"enosys": "ENOSYS", "eperm": "EPERM"}
HARNESS = "census-2"  # bump when what a run means changes
TIMEOUT_NATIVE, TIMEOUT_QEMU = 60.0, 180.0
COLUMNS = ("program", "package", "version", "family", "command", "kernel", "mode", "outcome",
           "exit", "first_error", "deciding", "cause", "prediction", "prediction_rules",
           "uncertain_syscalls", "tried_survived", "observed_with")  # fmt: skip
OUT_DIR = REPO / "bench" / "census"
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def _hash_files(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _tables(tree: Path) -> Path:
    inner = tree / "kcompat" / "syscall_tables"
    return inner if inner.is_dir() else tree / "syscall_tables"


# the run path (runspec, mounts and pid1 were split out of container at 22ea1a4, runoptions
# out of run at 01314b6); a module a revision lacks does not change its hash
RUN_MODULES = ("run", "runoptions", "container", "runspec", "mounts", "pid1", "seccomp",
               "confine", "linuxapi", "syscalls", "execve", "cgroups", "binfmt")  # fmt: skip


def _hashes(tree: Path) -> tuple[str, str]:
    """(the run path's hash: what a run's outcome depends on; all of kcompat's)."""
    kc = tree / "kcompat"
    run = _hash_files(
        [kc / f"{m}.py" for m in RUN_MODULES if (kc / f"{m}.py").exists()]
        + [kc / "data" / "confinement.json"]
        + list((_tables(tree) / "data").glob("*.json"))
    )  # fmt: skip
    every = _hash_files(list(kc.glob("*.py")) + list((kc / "data").glob("*.json"))
                        + list((_tables(tree) / "data").glob("*.json")))  # fmt: skip
    return run, every


RUN_HASH, ALL_HASH = _hashes(KC_TREE)


def kcompat_tree(spec: str, root: Path) -> Path:
    """`worktree`: this repository as it is; else a git revision, exported with `git
    archive` (git's state is untouched) into root/kcompat/<commit>, laid out as the
    installed package (kcompat.syscall_tables and kcompat.qemu inside kcompat/), so
    that runs are not disturbed by edits made meanwhile."""
    if spec == "worktree":
        return REPO
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{spec}^{{commit}}"],
                         capture_output=True, text=True)  # fmt: skip
    if rev.returncode != 0:
        sys.exit(f"census: error: --kcompat {spec}: not a commit of {REPO}; give a revision "
                 "or 'worktree'")  # fmt: skip
    commit = rev.stdout.strip()
    dest = root / "kcompat" / commit[:12]
    if (dest / "kcompat" / "__init__.py").is_file():
        return dest
    import shutil
    import tempfile

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent))
    try:
        what = ["kcompat", "syscall_tables", "qemu"]
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, *what],
                                 capture_output=True, check=True)  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
        (tmp / "syscall_tables").rename(tmp / "kcompat" / "syscall_tables")
        (tmp / "qemu").rename(tmp / "kcompat" / "qemu")
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# -- the results cache ----------------------------------------------------------------


class Cache:
    """JSON results by the hash of their key, one file each (atomic rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: Any) -> Path:
        h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return self.root / h[:2] / f"{h}.json"

    def get(self, key: Any) -> Any | None:
        try:
            return json.loads(self._path(key).read_text())["value"]
        except (OSError, ValueError, KeyError):
            return None

    def put(self, key: Any, value: Any) -> None:
        p = self._path(key)
        p.parent.mkdir(exist_ok=True)
        tmp = p.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"key": key, "value": value}))
        tmp.rename(p)


# -- running ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    outcome: str  # runs | fails | error (kcompat could not set the run up)
    exit_code: int | None
    first_error: str
    seconds: float
    tried: tuple[str, ...] | None = None  # traced runs: absent syscalls the program called
    observed_with: str = ""  # the kcompat revision the run was made with (not stored)

    def to_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "exit_code": self.exit_code,
                "first_error": self.first_error, "seconds": self.seconds,
                "tried": list(self.tried) if self.tried is not None else None}  # fmt: skip

    @classmethod
    def of(cls, d: dict[str, Any]) -> Result:
        return cls(d["outcome"], d["exit_code"], d["first_error"], d["seconds"],
                   tuple(d["tried"]) if d.get("tried") is not None else None)  # fmt: skip


_ERRORISH = re.compile(
    r"error|fail|fatal|not permitted|cannot|can't|unable|denied|exception|panic|abort|"
    r"killed|segmentation|not implemented|too old|insufficient", re.IGNORECASE)  # fmt: skip


def _first_error(stderr: str, stdout: str) -> str:
    """The line that says what went wrong: the last line of a Python traceback, else the
    first line of stderr (then stdout: the JVM logs there) that reads like an error, else
    stderr's first line, else stdout's last."""
    err = [ln.strip().lstrip("# ").strip() for ln in stderr.splitlines()
           if not ln.startswith("kcompat: warning:")]  # fmt: skip
    err = [ln for ln in err if ln]
    out = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    if any(ln.startswith("Traceback (most recent call last)") for ln in err):
        return err[-1][:300]
    for ln in err + out:
        if _ERRORISH.search(ln):
            return ln[:300]
    if err:
        return err[0][:300]
    return out[-1][:300] if out else ""


def _judge(prog: Program, rc: int | None, out: str, err: str, seconds: float,
           timeout: float) -> Result:  # fmt: skip
    if rc is None:
        return Result("fails", None, f"timed out after {timeout:.0f} s", seconds)
    first = _first_error(err, out)
    if rc == 125 or (rc != 0 and first.startswith(("kcompat: error", "census: error"))):
        return Result("error", rc, first, seconds)
    if rc == 0 and prog.expect and prog.expect not in out:
        return Result("fails", rc, f"expected output missing ({prog.expect!r}): {first}", seconds)
    return Result("runs" if rc == 0 else "fails", rc, "" if rc == 0 else first, seconds)


def _exec(cmd: list[str], timeout: float) -> tuple[int | None, str, str, float]:
    """Run `cmd` (with the census's kcompat first on the path) in a session of its own;
    at the timeout its whole process group is killed."""
    t0 = time.monotonic()
    env = dict(os.environ, CENSUS_KCOMPAT=str(KC_TREE), PYTHONPATH=str(KC_TREE))
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True, cwd=KC_TREE,
                         env=env)  # fmt: skip
    try:
        out, err = p.communicate(timeout=timeout)
        rc: int | None = p.returncode
    except subprocess.TimeoutExpired:
        import signal

        os.killpg(p.pid, signal.SIGKILL)  # the run's own process group, nothing else
        out, err = p.communicate()
        rc = None
    return rc, out.decode(errors="replace"), err.decode(errors="replace"), time.monotonic() - t0


def _tail(image: Image, prog: Program) -> list[str]:
    args: list[str] = []
    for e in prog.env:
        args += ["-e", e]
    if image.arch != HOST_ARCH:
        args += ["--platform", f"linux/{image.arch}"]
    return [*args, image.reference, "--", *prog.argv]


def _default_profile() -> dict[str, Any]:
    raw = json.loads((KC_TREE / "kcompat" / "data" / "confinement.json").read_text())["seccomp"]
    return {k: v for k, v in raw.items() if k != "comment"}


DEFAULT_PROFILE = _default_profile()


def profile_file(root: Path, names: Iterable[str], errno: int) -> Path:
    """kcompat's default seccomp profile (docker's) with `names` answering `errno` first
    (the first matching rule decides): what `--kernel` adds, narrowed to `names`."""
    names = sorted(set(names))
    prof = dict(DEFAULT_PROFILE)
    rules = [{"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": errno}] if names else []
    prof["syscalls"] = rules + list(DEFAULT_PROFILE["syscalls"])
    text = json.dumps(prof, sort_keys=True)
    path = root / "profiles" / f"{hashlib.sha256(text.encode()).hexdigest()[:20]}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(text)
        tmp.rename(path)
    return path


_STRACE_LINE = re.compile(r"^\d+\s+(?:<\.\.\. )?(\w+)(?:\(| resumed>).*=\s+-1\s+(E[A-Z0-9]+)\b")


def parse_strace(text: str, names: set[str], errname: str) -> tuple[str, ...]:
    """The calls of `names` that got `errname`: what the simulation refused the program."""
    seen = set()
    for line in text.splitlines():
        m = _STRACE_LINE.match(line)
        if m and m.group(1) in names and m.group(2) == errname:
            seen.add(m.group(1))
    return tuple(sorted(seen))


MISSING = "missing"  # --report-only: the run is not in the cache


class Runner:
    def __init__(self, root: Path, cache: Cache, host_release: str, log: Callable[[str], None],
                 label: str = "worktree", reuse: tuple[tuple[str, str], ...] = (),
                 offline: bool = False) -> None:  # fmt: skip
        self.root = root
        self.cache = cache
        self.host_release = host_release
        self.log = log
        self.label = label  # the kcompat revision the runs are made with
        self.reuse = reuse  # (revision, its run-path hash): runs of those count as ours
        self.offline = offline  # --report-only: nothing is run, misses are MISSING
        self.runs = 0  # runs actually made (not from the cache)
        self.lock = threading.Lock()
        self.observed: dict[str, int] = defaultdict(int)  # revision -> results used

    def _cached(self, key: list[Any], make: Callable[[], Result],
                keep_timeout: bool = False) -> Result:  # fmt: skip
        r = self._lookup(key)
        if r is not None:
            with self.lock:
                self.observed[r.observed_with] += 1
            return r
        if self.offline:
            return Result(MISSING, None, "not in the cache (--report-only)", 0.0)
        r = replace(make(), observed_with=self.label)
        # a setup failure or a timeout (a loaded machine?) is not kept: retried next time;
        # but a traced run's timeout is (its trace is only a hint, and strace can keep a
        # failing program alive: a SIGSEGV loop of node's handlers, 2 million lines a minute)
        if r.outcome != "error" and (r.exit_code is not None or keep_timeout):
            self.cache.put(key, r.to_json())
        with self.lock:
            self.runs += 1
            self.observed[self.label] += 1
        return r

    def _lookup(self, key: list[Any]) -> Result | None:
        """The cached result under our run path's hash, else under a --reuse-runs one's."""
        hit = self.cache.get(key)
        if hit is not None:
            return replace(Result.of(hit), observed_with=self.label)
        for rev, run_hash in self.reuse:
            hit = self.cache.get([key[0], run_hash, *key[2:]])
            if hit is not None:
                return replace(Result.of(hit), observed_with=rev)
        return None

    def _key(self, image: Image, prog: Program, kind: str, *rest: Any) -> list[Any]:
        return [HARNESS, RUN_HASH, image.digest, image.arch, list(prog.argv), list(prog.env),
                prog.expect, kind, *rest]  # fmt: skip

    def timeout(self, image: Image, kernel: str | None, mode: str | None) -> float:
        """qemu-user is in the run under emulation, and as the first process of a native
        run that fakes the release (--kernel without --seccomp-eperm)."""
        qemu = image.arch != HOST_ARCH or (kernel is not None and mode == "enosys")
        return TIMEOUT_QEMU if qemu else TIMEOUT_NATIVE

    def kcompat(self, image: Image, prog: Program, extra: list[str], timeout: float,
                strace: tuple[set[str], str] | None = None) -> Result:  # fmt: skip
        cmd = [sys.executable, "-m", "kcompat", "run", "--force", "--no-predict", *extra,
               *_tail(image, prog)]  # fmt: skip
        trace_out = None
        if strace is not None:
            names, _ = strace
            trace_out = self.root / "tmp" / f"strace-{os.getpid()}-{threading.get_ident()}.txt"
            trace_out.parent.mkdir(parents=True, exist_ok=True)
            # ?NAME: strace ignores a name it does not know
            cmd = ["strace", "-f", "-qq", "-o", str(trace_out), "-e",
                   "trace=" + ",".join(f"?{n}" for n in sorted(names)), "-e", "status=failed",
                   "-e", "signal=none", *cmd]  # fmt: skip
        rc, out, err, secs = _exec(cmd, timeout)
        r = _judge(prog, rc, out, err, secs, timeout)
        if strace is not None and trace_out is not None:
            try:
                text = trace_out.read_text(errors="replace")
            finally:
                trace_out.unlink(missing_ok=True)
            r = replace(r, tried=parse_strace(text, strace[0], strace[1]))
        return r

    def control(self, image: Image, prog: Program) -> Result:
        timeout = self.timeout(image, None, None)
        return self._cached(self._key(image, prog, "control"),
                            lambda: self.kcompat(image, prog, [], timeout))  # fmt: skip

    def ladder(self, image: Image, prog: Program, kernel: str, mode: str) -> Result:
        extra = ["--kernel", kernel] + (["--seccomp-eperm"] if mode == "eperm" else [])
        return self._cached(
            self._key(image, prog, "ladder", kernel, mode),
            lambda: self.kcompat(image, prog, extra, self.timeout(image, kernel, mode)),
        )

    def host_subset(self, image: Image, prog: Program, names: Iterable[str], mode: str,
                    trace: bool = False) -> Result:  # fmt: skip
        """Only `names` answer ENOSYS (EPERM), the release is the real one: through
        `--security-opt seccomp=PROFILE`."""
        names = sorted(set(names))
        prof = profile_file(self.root, names, ERRNO[mode])
        extra = ["--security-opt", f"seccomp={prof}"]
        strace = (set(names), ERRNAME[mode]) if trace else None
        return self._cached(
            self._key(image, prog, "trace" if trace else "host-subset", mode, names),
            lambda: self.kcompat(image, prog, extra, self.timeout(image, None, None)
                                 / (2 if trace else 1), strace),
            keep_timeout=trace,
        )

    def sim_subset(self, image: Image, prog: Program, kernel: str, names: Iterable[str],
                   release: str) -> Result:  # fmt: skip
        """Only `names` answer ENOSYS; the release is `kernel`'s (release="kernel") or the
        real one seen through qemu-user as under --kernel (release="host"): kcompat's
        simulation narrowed to `names` (_simrun)."""
        names = sorted(set(names))
        params = {"reference": image.reference, "argv": list(prog.argv), "env": list(prog.env),
                  "platform": f"linux/{image.arch}" if image.arch != HOST_ARCH else None,
                  "kernel": kernel, "names": names, "release": release}  # fmt: skip
        timeout = self.timeout(image, kernel, "enosys")

        def make() -> Result:
            cmd = [sys.executable, str(Path(__file__)), "--simrun", json.dumps(params)]
            rc, out, err, secs = _exec(cmd, timeout)
            return _judge(prog, rc, out, err, secs, timeout)

        return self._cached(self._key(image, prog, "sim-subset", kernel, names, release), make)


def _simrun(params: dict[str, Any]) -> None:
    """`kcompat run --force --no-predict --kernel K` (as kcompat/cli.py's run_cmd does it),
    with the simulation's filter narrowed to params["names"], and with
    release="host" the real release instead of K (still through qemu-user on a native
    run, so what qemu-user itself changes is kept). Exits with the container's status."""
    from kcompat.check import BestPlatform
    from kcompat.container import run as run_container
    from kcompat.errors import KcompatError
    from kcompat.platform import parse_platform
    from kcompat.pull import open_image
    from kcompat.run import host_target, prepare

    try:  # RunOptions and validate moved out of kcompat.run (the pinned tree may predate it)
        from kcompat.runoptions import RunOptions, validate
    except ImportError:
        from kcompat.run import RunOptions, validate  # type: ignore[attr-defined,no-redef]
    from kcompat.seccomp import Simulation, assemble, simulation
    from kcompat.sources import Options
    from kcompat.store import BlobStore
    from kcompat.syscalls import ABI_OF_ARCH

    try:
        opts = RunOptions(command=tuple(params["argv"]), env=tuple(params["env"]),
                          kernel=params["kernel"], predict=False, force=True)  # fmt: skip
        checked = validate(opts)
        target = host_target(None)
        best = BestPlatform(target)
        plat = parse_platform(params["platform"]) if params["platform"] else None
        with open_image(params["reference"], replace(Options(platform=plat), choose=best)) as o:
            prepared = prepare(o, opts, BlobStore(), target, None if plat else best.why, checked)
        spec = prepared.spec
        host_arch = target.platform.architecture
        abi = ABI_OF_ARCH[host_arch]  # native, or qemu's host calls under emulation
        full = simulation(abi, params["kernel"])
        wanted = set(params["names"])
        sim = Simulation(abi, full.kernel, tuple(d for d in full.denied if d[1] in wanted))
        spec = replace(spec, seccomp_program=assemble(sim))
        if params["release"] == "host":
            if spec.emulation is not None:
                spec = replace(spec, env=tuple(kv for kv in spec.env if kv[0] != "QEMU_UNAME"))
            elif spec.release_interpreter:
                spec = replace(spec, fake_release=os.uname().release)
        code = run_container(spec)
    except KcompatError as e:
        print(f"census: error: {e}", file=sys.stderr)
        sys.exit(125)
    sys.exit(code)


# -- bisection -------------------------------------------------------------------------


def minimize(fails: Callable[[frozenset[str]], bool], cands: frozenset[str],
             hints: Iterable[frozenset[str]] = ()) -> frozenset[str]:  # fmt: skip
    """A 1-minimal subset of `cands` (fails(cands) holds) for which `fails` still holds:
    try the hints first (what the program tried; sets found at other kernels), then
    halves, then drop one name at a time."""
    for h in hints:
        h = h & cands
        if h and h != cands and fails(h):
            cands = h
            break
    while len(cands) > 1:
        items = sorted(cands)
        a, b = frozenset(items[: len(items) // 2]), frozenset(items[len(items) // 2 :])
        if fails(a):
            cands = a
        elif fails(b):
            cands = b
        else:
            break
    for name in sorted(cands):
        if len(cands) > 1 and fails(cands - {name}):
            cands = cands - {name}
    return cands


@dataclass(frozen=True)
class Decision:
    cause: str  # syscalls | release | release+syscalls | release, syscalls | emulation |
    #              not-reproduced | not-bisected
    deciding: tuple[str, ...]
    tried: tuple[str, ...]  # what the program tried with every absent syscall denied


def absent_names(image: Image, kernel: str) -> frozenset[str]:
    """The syscalls the simulation of `kernel` denies: on the host's ABI (under emulation
    the filter sees qemu's host calls)."""
    from kcompat.seccomp import simulation
    from kcompat.syscalls import ABI_OF_ARCH

    return frozenset(simulation(ABI_OF_ARCH[HOST_ARCH], kernel).names)


class _Missing(Exception):
    """--report-only: a step of the bisection is not in the cache."""


def _fails(r: Result) -> bool:
    if r.outcome == MISSING:
        raise _Missing()
    return r.outcome == "fails"


# qemu-user's own failure (not the guest's, which qemu reports as "uncaught target signal")
_QEMU_OWN = re.compile(r"^qemu: (?!uncaught target signal)")


def bisect(runner: Runner, image: Image, prog: Program, kernel: str, mode: str,
           found: list[frozenset[str]], failed: Result) -> Decision:  # fmt: skip
    """Why the run at (kernel, mode) failed while the control ran."""
    if _QEMU_OWN.match(failed.first_error):
        # qemu-user itself failed, before the guest ran: under --seccomp-eperm its own
        # start-up thread (qemu_thread_create: glibc's clone3 answered EPERM); nothing
        # about the guest program to bisect
        return Decision("emulation", (), ())
    try:
        d = _bisect(runner, image, prog, kernel, mode, found)
    except _Missing:
        return Decision("not-bisected", (), ())
    if d.cause == "syscalls" and failed.first_error.startswith("FATAL: kernel too old"):
        # glibc's start-up check of the release (before 2.36) stopped the run first; the
        # set found alone, with the real release, fails too
        return replace(d, cause="release, syscalls")
    return d


def _bisect(runner: Runner, image: Image, prog: Program, kernel: str, mode: str,
            found: list[frozenset[str]]) -> Decision:  # fmt: skip
    absent = absent_names(image, kernel)
    traced = runner.host_subset(image, prog, absent, mode, trace=True)
    if traced.outcome == MISSING:
        raise _Missing()
    tried = frozenset(traced.tried or ())
    hints = [*found, tried]

    def host_fails(s: frozenset[str]) -> bool:
        return _fails(runner.host_subset(image, prog, s, mode))

    if host_fails(absent):
        s = minimize(host_fails, absent, hints)
        found.append(s)
        return Decision("syscalls", tuple(sorted(s)), tuple(sorted(tried)))
    if mode == "eperm":  # the release is the real one in this mode
        return Decision("not-reproduced", (), tuple(sorted(tried)))
    native = image.arch == HOST_ARCH
    if native and _fails(runner.sim_subset(image, prog, kernel, (), "host")):
        return Decision("emulation", (), tuple(sorted(tried)))  # qemu-user, not the kernel

    def sim_fails(s: frozenset[str]) -> bool:
        return _fails(runner.sim_subset(image, prog, kernel, s, "kernel"))

    if sim_fails(frozenset()):
        return Decision("release", (), tuple(sorted(tried)))
    if sim_fails(absent):
        s = minimize(sim_fails, absent, hints)
        found.append(s)
        return Decision("release+syscalls", tuple(sorted(s)), tuple(sorted(tried)))
    return Decision("not-reproduced", (), tuple(sorted(tried)))


# -- predictions -----------------------------------------------------------------------


_SYSCALL_RULES = ("syscalls-newer-than-kernel", "syscalls-absent", "syscalls-blocked")


def _summarise(rep: dict[str, Any]) -> dict[str, Any]:
    verdict = rep["verdict"]
    word = {"native": "compatible", "emulated": "compatible"}.get(verdict, verdict)
    rules = sorted({f["rule"] for f in rep["findings"] if f["severity"] in ("fatal", "uncertain")})
    names: set[str] = set()
    for f in rep["findings"]:
        if f["severity"] == "uncertain" and f["rule"] in _SYSCALL_RULES:
            for ev in f["evidence"]:
                names.add(re.split(r"[\s:]", ev, maxsplit=1)[0])
    return {"prediction": word, "rules": rules, "syscalls": sorted(names),
            "binary": (rep.get("entrypoint") or {}).get("binary")}  # fmt: skip


def predict(image: Image, progs: list[Program], kernels: list[str], modes: list[str],
            cache: Cache, offline: bool = False) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(program, kernel, mode) -> the prediction; kernel "host" is this host as it is
    (offline: from the cache only, a miss is MISSING)."""
    from kcompat.platform import parse_platform
    from kcompat.target import probe_host

    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    todo = []
    for p in progs:
        for k, m in [("host", "control"), *((k, m) for k in kernels for m in modes)]:
            key = [HARNESS, ALL_HASH, image.digest, image.arch, list(p.judged), k, m]
            hit = cache.get(key)
            if hit is not None:
                out[(p.name, k, m)] = hit
            else:
                todo.append((p, k, m, key))
    if offline:
        for p, k, m, _ in todo:
            out[(p.name, k, m)] = {"prediction": MISSING, "rules": [], "syscalls": [],
                                   "binary": None}  # fmt: skip
    if not todo or offline:
        return out
    host = probe_host(syscalls=False, runtimes=False)
    plat = parse_platform(f"linux/{image.arch}")
    import kcompat.analysis as kc_analysis

    # The image's analysis (its merged tree, a large pickle) is the same for every
    # target: loaded once here, as a long-running process would, not once per check
    # (check._judged imports analyse from kcompat.analysis when it is called).
    load = kc_analysis.analyse
    memo: list[Any] = []

    def analyse_once(opened: Any, store: Any = None) -> Any:
        if not memo:
            memo.append(load(opened, store))
        return memo[0]

    setattr(kc_analysis, "analyse", analyse_once)  # noqa: B010
    try:
        _predict_all(image, todo, host, plat, cache, out)
    finally:
        setattr(kc_analysis, "analyse", load)  # noqa: B010
    return out


def _predict_all(image: Image, todo: list[Any], host: Any, plat: Any, cache: Cache,
                 out: dict[tuple[str, str, str], dict[str, Any]]) -> None:  # fmt: skip
    from kcompat.check import BestPlatform, run_check
    from kcompat.execve import Command
    from kcompat.pull import open_image
    from kcompat.run import simulated_target
    from kcompat.seccomp import simulation
    from kcompat.sources import Options
    from kcompat.syscalls import ABI_OF_ARCH
    from kcompat.target import described

    # kcompat could not judge the image: said once, not retried; kept (the same kcompat
    # fails the same way; a changed one has another key), so --report-only shows it
    failed: str | None = None
    for p, k, m, key in todo:
        if failed:
            out[(p.name, k, m)] = {"prediction": "error", "rules": [failed], "syscalls": [],
                                   "binary": None}  # fmt: skip
            cache.put(key, out[(p.name, k, m)])
            continue
        if k == "host":
            target = host
        elif m == "enosys":
            target = described(k, image.arch)
        else:
            abi = ABI_OF_ARCH[HOST_ARCH if image.arch != HOST_ARCH else image.arch]
            target = simulated_target(host, simulation(abi, k, eperm=True))
        best = BestPlatform(target)
        try:
            with open_image(image.reference, replace(Options(platform=plat), choose=best)) as o:
                rep = run_check(o, target, Command(p.judged), best.why)
        except Exception as e:  # a kcompat bug must not stop the census: it is a finding
            failed = f"kcompat failed: {type(e).__name__}: {e}"
            print(f"census: {image.name}: the prediction failed ({failed}); recorded as "
                  "'error'", file=sys.stderr, flush=True)  # fmt: skip
            out[(p.name, k, m)] = {"prediction": "error", "rules": [failed], "syscalls": [],
                                   "binary": None}  # fmt: skip
            cache.put(key, out[(p.name, k, m)])
            continue
        s = _summarise(rep)
        cache.put(key, s)
        out[(p.name, k, m)] = s


def unpack_image(image: Image) -> Path:
    """The image's flattened rootfs in kcompat's cache (made once: the runs share it)."""
    from kcompat.platform import parse_platform
    from kcompat.pull import open_image, pull, unpack
    from kcompat.sources import Options
    from kcompat.store import BlobStore

    store = BlobStore()
    plat = parse_platform(f"linux/{image.arch}")
    with open_image(image.reference, Options(platform=plat)) as o:
        pull(o, store)
        rootfs, _ = unpack(o, store)
    return rootfs


def refine_family(image: Image, prog: Program, binary: str | None) -> str:
    """go -> go-cgo when the binary needs libc.so.6; rust -> rust-glibc or rust-musl (static,
    no PT_INTERP); others as listed."""
    if prog.family not in ("go", "rust"):
        return prog.family
    rootfs = unpack_image(image)
    if not binary:  # no prediction to say which file: the PATH lookup, in the image
        name = prog.judged[0]
        dirs = ["/"] if "/" in name else PATH_ENV.split("=", 1)[1].split(":")
        binary = next((f"{d}/{name}" for d in dirs
                       if (rootfs / d.lstrip("/") / name.lstrip("/")).exists()), None)  # fmt: skip
        if binary is None:
            return prog.family
    path = rootfs / binary.lstrip("/")
    for _ in range(10):  # the image's own symlinks, inside its root
        if not path.is_symlink():
            break
        link = os.readlink(path)
        path = (rootfs / link.lstrip("/")) if link.startswith("/") else (path.parent / link)
    r = subprocess.run(["readelf", "-dlW", str(path)], capture_output=True, text=True)
    needs_libc = "libc.so" in r.stdout
    interp = "Requesting program interpreter" in r.stdout
    if prog.family == "go":
        return "go-cgo" if needs_libc else "go"
    return "rust-glibc" if interp else "rust-musl"


# -- the census ------------------------------------------------------------------------


@dataclass
class Row:
    image: Image
    prog: Program
    family: str
    version: str
    kernel: str
    mode: str
    result: Result | None  # None: excluded
    decision: Decision | None = None
    prediction: dict[str, Any] | None = None
    tried: tuple[str, ...] | None = None

    @property
    def outcome(self) -> str:
        return "excluded" if self.result is None else self.result.outcome

    def cells(self) -> list[str]:
        r, d, pr = self.result, self.decision, self.prediction or {}
        cells = [self.prog.name, self.prog.package.removeprefix("pypi:"), self.version,
                 self.family, shlex.join(self.prog.argv), self.kernel, self.mode, self.outcome,
                 "" if r is None or r.exit_code is None else str(r.exit_code),
                 r.first_error if r else "", ",".join(d.deciding) if d else "",
                 d.cause if d else "", pr.get("prediction", ""), ",".join(pr.get("rules", ())),
                 ",".join(pr.get("syscalls", ())),
                 ",".join(self.tried) if self.tried is not None else "",
                 r.observed_with if r else ""]  # fmt: skip
        return [re.sub(r"[\t\r\n]+", " ", c) for c in cells]

    def source(self) -> str:
        cmd = shlex.join(self.prog.argv)[:120]
        return (f"census: {self.prog.package.removeprefix('pypi:')} {self.version}, {cmd} "
                f"({self.image.suite} {self.image.arch})")  # fmt: skip


def version_of(image: Image, prog: Program) -> str:
    if prog.package.startswith("pypi:"):
        return RUFF.split("==")[1]
    if prog.package == "built:musl":
        return "musl " + image.versions.get("musl", _host_musl())
    return image.versions.get(prog.package, "?")


def _host_musl() -> str:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "musl-dev"], capture_output=True,
                       text=True)  # fmt: skip
    return r.stdout.strip() or "?"


@dataclass
class Survey:
    """The census of one image after another: controls, ladder, bisections, traces."""

    runner: Runner
    pool: ThreadPoolExecutor
    cache: Cache
    root: Path
    kernels: list[str]
    modes: list[str]
    trace: str  # lowest | all | none
    bisect: bool
    host_kernel: str
    log: Callable[[str], None]

    def image(self, image: Image, progs: list[Program], rows: list[Row],
              excluded: list[Row]) -> None:  # fmt: skip
        runner, kernels, modes, log = self.runner, self.kernels, self.modes, self.log
        log(f"{image.name}: predicting {len(progs)} programs")
        preds = predict(image, progs, kernels, modes, self.cache, self.runner.offline)
        families = {p.name: refine_family(image, p, preds[(p.name, "host", "control")]["binary"])
                    for p in progs}  # fmt: skip
        versions = {p.name: version_of(image, p) for p in progs}
        log(f"{image.name}: {len(progs)} controls")
        controls = dict(zip([p.name for p in progs],
                            self.pool.map(lambda p: runner.control(image, p), progs)))  # fmt: skip
        ok = [p for p in progs if controls[p.name].outcome == "runs"]
        for p in progs:
            c = controls[p.name]
            row = Row(image, p, families[p.name], versions[p.name], self.host_kernel, "control",
                      c, prediction=preds[(p.name, "host", "control")])  # fmt: skip
            rows.append(row)
            if c.outcome != "runs":
                if c.outcome != MISSING:
                    excluded.append(row)
                for k in kernels:
                    for m in modes:
                        rows.append(Row(image, p, families[p.name], versions[p.name], k, m,
                                        c if c.outcome == MISSING else None,
                                        prediction=preds[(p.name, k, m)]))  # fmt: skip
        cases = [(p, k, m) for p in ok for k in kernels for m in modes]
        log(f"{image.name}: {len(cases)} ladder runs ({len(ok)} programs)")
        results = list(self.pool.map(lambda c: runner.ladder(image, *c), cases))
        by = {(p.name, k, m): r for (p, k, m), r in zip(cases, results)}
        image_rows = {}
        for (p, k, m), r in zip(cases, results):
            row = Row(image, p, families[p.name], versions[p.name], k, m, r,
                      prediction=preds[(p.name, k, m)])  # fmt: skip
            image_rows[(p.name, k, m)] = row
            rows.append(row)

        def explain(pm: tuple[Program, str]) -> None:
            p, m = pm
            found: list[frozenset[str]] = []
            failing = [k for k in kernels if by[(p.name, k, m)].outcome == "fails"]
            for k in sorted(failing, key=_vkey, reverse=True):  # the smallest absent set first
                image_rows[(p.name, k, m)].decision = bisect(runner, image, p, k, m, found,
                                                             by[(p.name, k, m)])  # fmt: skip

        def trace(pm: tuple[Program, str]) -> None:
            p, m = pm
            running = [k for k in kernels if by[(p.name, k, m)].outcome == "runs"]
            if self.trace == "lowest":
                running = sorted(running, key=_vkey)[:1]
            for k in running:
                t = runner.host_subset(image, p, absent_names(image, k), m, trace=True)
                if t.outcome == "runs":
                    image_rows[(p.name, k, m)].tried = t.tried or ()

        pairs = [(p, m) for p in ok for m in modes]
        if self.bisect:
            n = sum(1 for r in results if r.outcome == "fails")
            log(f"{image.name}: bisecting {n} failed runs")
            list(self.pool.map(explain, pairs))
        if self.trace != "none":
            log(f"{image.name}: tracing what the programs tried")
            list(self.pool.map(trace, pairs))
        log(f"{image.name}: done ({runner.runs} runs made so far)")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--simrun":
        _simrun(json.loads(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suites", default=",".join(SUITES))
    ap.add_argument("--arches", default="amd64,arm64,s390x",
                    help=f"of {', '.join(ARCHES)}")  # fmt: skip
    ap.add_argument("--programs", default="", help="names, comma-separated (default: all)")
    ap.add_argument("--kernels", default=",".join(KERNELS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--trace", choices=("lowest", "all", "none"), default="lowest")
    ap.add_argument("--no-bisect", action="store_true")
    ap.add_argument("--build-only", action="store_true", help="build (or check) the images only")
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--kcompat", default="worktree",
                    help="worktree (default), or a git revision to run a snapshot of")  # fmt: skip
    ap.add_argument("--reuse-runs", default="", metavar="REV[,REV]",
                    help="count runs cached with these kcompat revisions as made with --kcompat's "
                         "(when its run path only moved code, not what a run does); each row "
                         "says which revision observed it")  # fmt: skip
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: write the outputs from the cache (a miss is 'missing')")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("census: error: run as root (mmdebstrap and the runs need it)")
    root = Path(os.environ.get("KCOMPAT_FIXTURES", REPO / ".fixtures")).resolve() / "census"
    root.mkdir(parents=True, exist_ok=True)
    tree = kcompat_tree(args.kcompat, root)
    if tree != KC_TREE:  # start again with that kcompat first on the path
        env = dict(os.environ, CENSUS_KCOMPAT=str(tree))
        os.execve(sys.executable, [sys.executable, str(Path(__file__)), *sys.argv[1:]], env)
    os.environ.setdefault("KCOMPAT_CACHE", str(root / "cache"))
    kernels = [k for k in args.kernels.split(",") if k]
    modes = [m for m in args.modes.split(",") if m]
    wanted = {p for p in args.programs.split(",") if p}
    t_start = time.monotonic()
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"census [{time.monotonic() - t_start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    images = []
    for arch in [a for a in args.arches.split(",") if a]:
        for suite in [s for s in args.suites.split(",") if s]:
            if not programs_for(suite, arch):
                continue
            images.append(build_image(suite, arch, root))
            unpack_image(images[-1])  # before any timed run
            log(f"image {images[-1].name}: {images[-1].reference}")
    t_built = time.monotonic()
    if args.build_only:
        return
    cache = Cache(root / "results")
    label = "worktree" if KC_TREE == REPO else KC_TREE.name
    reuse = tuple((t.name, _hashes(t)[0]) for t in
                  (kcompat_tree(r, root) for r in args.reuse_runs.split(",") if r))  # fmt: skip
    runner = Runner(root, cache, os.uname().release, log, label, reuse, args.report_only)
    pool = ThreadPoolExecutor(max(1, args.jobs))
    host_kernel = os.uname().release.split("-")[0]

    survey = Survey(runner, pool, cache, root, kernels, modes, args.trace, not args.no_bisect,
                    host_kernel, log)  # fmt: skip
    rows: list[Row] = []
    excluded: list[Row] = []
    for image in images:
        progs = [p for p in image.programs if not wanted or p.name in wanted]
        if progs:
            survey.image(image, progs, rows, excluded)
    pool.shutdown()
    t_end = time.monotonic()
    write_outputs(args.out, rows, excluded, images, kernels, modes, {
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0)),
        "build_s": t_built - t_start, "total_s": t_end - t_start, "runs_made": runner.runs,
        "argv": " ".join(sys.argv[1:]), "host": os.uname().release,
        "label": label, "observed": dict(runner.observed), "report_only": args.report_only,
    })  # fmt: skip
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        counts[r.outcome] += 1
    log(f"{len(rows)} rows: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + f"; {runner.runs} runs made; {t_end - t_start:.0f} s")  # fmt: skip


def _vkey(k: str) -> tuple[int, ...]:
    return tuple(int(x) for x in k.split("."))


# -- outputs ---------------------------------------------------------------------------


def write_outputs(out: Path, rows: list[Row], excluded: list[Row], images: list[Image],
                  kernels: list[str], modes: list[str], info: dict[str, Any]) -> None:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    by_image: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_image[r.image.name].append(r)
    for name, rs in by_image.items():
        lines = ["\t".join(COLUMNS)] + ["\t".join(r.cells()) for r in rs]
        (out / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    (out / "findings.md").write_text(findings(rows, excluded, kernels, modes, info))


def _lowest(rs: list[Row], kernels: list[str]) -> str:
    """The lowest kernel from which every higher one runs too."""
    ok = {r.kernel for r in rs if r.outcome == "runs"}
    lowest = None
    for k in sorted(kernels, key=_vkey, reverse=True):
        if k not in ok:
            break
        lowest = k
    return lowest or "none of the ladder"


def _reproduce(argv: str) -> str:
    """The command that makes the data: the invocation without the options that only say
    where it goes or where cached runs may come from."""
    words, out, skip = shlex.split(argv), [], False
    for w in words:
        if skip:
            skip = False
        elif w in ("--report-only",):
            pass
        elif w in ("--out", "--reuse-runs"):
            skip = True
        elif not w.startswith(("--out=", "--reuse-runs=")):
            out.append(w)
    return shlex.join(["bench/census.py", *out])


def _port(arch: str) -> str:
    """The first Linux release with a port for `arch` (kcompat's syscall table)."""
    from kcompat.syscalls import ABI_OF_ARCH

    data = json.loads((_tables(KC_TREE) / "data" / f"{ABI_OF_ARCH[arch]}.json").read_text())
    return str(data["sources"]["port"])


def _no_port(r: Row) -> bool:
    """A ladder kernel older than the arch's port (arm64 before 3.7): no real target."""
    return r.mode in MODES and _vkey(r.kernel) < _vkey(_port(r.image.arch))


def _artefact(r: Row) -> bool:
    """A failure the bisection put on qemu-user, not on the kernel being simulated."""
    return r.outcome == "fails" and r.decision is not None and r.decision.cause == "emulation"


def _kernels_of(rs: list[Row]) -> str:
    return ", ".join(r.kernel for r in sorted(rs, key=lambda r: _vkey(r.kernel)))


def findings(rows: list[Row], excluded: list[Row], kernels: list[str], modes: list[str],
             info: dict[str, Any]) -> str:  # fmt: skip
    ladder = [r for r in rows if r.mode in modes]
    n_runs = sum(1 for r in ladder if r.result is not None and r.outcome != MISSING)
    observed = ", ".join(f"{n} with {rev}" for rev, n in sorted(info.get("observed", {}).items()))
    out = [
        "# Census findings",
        "",
        f"The data: `{_reproduce(info['argv'])}` (from a clean clone it builds the images and "
        "makes every run; its cache is .fixtures/census). Do not edit: re-run the script.",
        "",
        f"This file: `bench/census.py {info['argv']}` (started {info['started']}, host Linux "
        f"{info['host']}, kcompat {info.get('label', '?')}): {len(rows)} rows, {n_runs} ladder "
        f"runs; {info['runs_made']} runs made in this invocation, the rest from the cache"
        + (f" (results used, by the kcompat revision that observed them: {observed}; column "
           "`observed_with`)" if observed else "")
        + f"; images {info['build_s']:.0f} s, total {info['total_s']:.0f} s.",
        "",
        "Modes: `enosys` = `kcompat run --kernel K` (syscalls newer than K answer ENOSYS, the "
        "release is K); `eperm` = `--kernel K --seccomp-eperm` (EPERM, the real release: an "
        "old runtime's seccomp profile). Causes: `syscalls` (the listed set alone, with the "
        "real release, reproduces the failure), `release+syscalls` (only with the release "
        "faked to K as well), `release` (the release alone), `release, syscalls` (glibc's "
        "start-up check of the release stopped the run, 'FATAL: kernel too old'; the listed "
        "set alone, with the real release, fails too), `emulation` (a simulation "
        "artefact: qemu-user as the first process fails without any syscall denied, or "
        "qemu-user itself met the denied call, as its own threads under EPERM), "
        "`not-reproduced`, `not-bisected` (--report-only: a step is not in the cache).",
        "",
    ]
    counts: dict[str, int] = defaultdict(int)
    for r in ladder:
        counts[r.outcome] += 1
    artefacts = [r for r in ladder if _artefact(r)]
    out += ["Outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            + (f" ({len(artefacts)} of the failures are simulation artefacts (cause `emulation`): "
               "left out of the table below)" if artefacts else ""), ""]  # fmt: skip
    judged = [r for r in ladder if r.result is not None and r.result.outcome in ("runs", "fails")
              and r.prediction and not _artefact(r) and not _no_port(r)]  # fmt: skip
    no_port = [r for r in ladder if _no_port(r) and r.outcome in ("runs", "fails")]
    if no_port:
        by_arch: dict[str, set[str]] = defaultdict(set)
        for r in no_port:
            by_arch[r.image.arch].add(r.kernel)
        arches = [f"{a} (port {_port(a)}): {', '.join(sorted(ks, key=_vkey))}"
                  for a, ks in sorted(by_arch.items())]  # fmt: skip
        out += [f"Kernels older than the arch's port are no real target ({'; '.join(arches)}): "
                f"their {len(no_port)} rows are run (under qemu-user with the host's table) "
                "and listed, but left out of the table below; predictions there: "
                + ", ".join(f"{k} {v}" for k, v in sorted(_count(
                    (r.prediction or {}).get("prediction", "") for r in no_port).items()))
                + ".", ""]  # fmt: skip
    agree: dict[tuple[str, str], int] = defaultdict(int)
    for r in judged:
        assert r.result is not None and r.prediction is not None
        agree[(r.prediction["prediction"], r.result.outcome)] += 1
    out += ["| prediction \\ outcome | runs | fails |", "|---|---|---|"]
    for p in ("compatible", "incompatible", "uncertain", "error", MISSING):
        if p not in ("error", MISSING) or agree[(p, "runs")] + agree[(p, "fails")]:
            out.append(f"| {p} | {agree[(p, 'runs')]} | {agree[(p, 'fails')]} |")
    words = ("compatible", "incompatible", "uncertain")  # the predictions kcompat made
    n_made = sum(v for (p, o), v in agree.items() if p in words)
    n_fail = sum(v for (p, o), v in agree.items() if o == "fails" and p in words)
    n_unc = sum(v for (p, o), v in agree.items() if p == "uncertain")
    if n_made:
        out += ["", f"Of the {n_made} predictions made: uncertain {n_unc} "
                f"({100 * n_unc / n_made:.0f} %); "
                f"of the {n_fail} that fail, {agree[('incompatible', 'fails')]} predicted "
                f"incompatible ({100 * agree[('incompatible', 'fails')] / max(1, n_fail):.0f} %); "
                f"contradicted: {agree[('compatible', 'fails')]} false 'compatible', "
                f"{agree[('incompatible', 'runs')]} false 'incompatible'."]  # fmt: skip
    errors = sorted({f"{r.image.name}: {r.prediction['rules'][0]}" for r in ladder
                     if r.prediction and r.prediction["prediction"] == "error"})  # fmt: skip
    if errors:
        out += ["", "Predictions kcompat could not make (`error`): " + "; ".join(errors)]
    out.append("")
    contradicted = (("compatible", "fails"), ("incompatible", "runs"))
    wrong = [r for r in judged if r.result is not None and r.prediction
             and (r.prediction["prediction"], r.result.outcome) in contradicted]  # fmt: skip
    out += ["## Predictions the outcome contradicts", ""]
    if not wrong:
        out += ["None.", ""]
    for r in sorted(wrong, key=lambda r: (r.image.name, r.prog.name, r.mode, _vkey(r.kernel))):
        assert r.result is not None and r.prediction is not None
        why = (f"; {r.decision.cause} {{{', '.join(r.decision.deciding)}}}" if r.decision
               else "")  # fmt: skip
        out.append(f"- {r.prog.name} ({r.image.name}) at {r.kernel} {r.mode}: predicted "
                   f"{r.prediction['prediction']} ({', '.join(r.prediction['rules']) or '-'}), "
                   f"{r.result.outcome}"
                   f"{': ' + _err(r.result.first_error)[:140] if r.result.first_error else ''}"
                   f"{why}")  # fmt: skip
    out.append("")
    out += ["## Uncertain predictions", "",
            "Per program, image and mode: the kernels where `check` said uncertain, by the "
            "observed outcome (the deciding syscalls of the failures), the syscalls the "
            "uncertain findings named and the rules.", "",
            "| program | image | mode | uncertain, runs at | uncertain, fails at (deciding) | "
            "syscalls named | rules |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    unc: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for r in judged:
        if r.prediction and r.prediction["prediction"] == "uncertain":
            unc[(r.prog.name, r.image.name, r.mode)].append(r)
    for (name, img, mode), rs in sorted(unc.items()):
        runs = [r for r in rs if r.outcome == "runs"]
        fails = [r for r in rs if r.outcome == "fails"]
        decided = sorted({s for r in fails if r.decision for s in r.decision.deciding})
        why = f" ({', '.join(decided)})" if decided else ""
        names = sorted({s for r in rs for s in (r.prediction or {}).get("syscalls", ())})
        if len(names) > 12:
            names = [*names[:12], f"... {len(names) - 12} more"]
        rules = sorted({s for r in rs for s in (r.prediction or {}).get("rules", ())})
        out.append(f"| {name} | {img} | {mode} | {_kernels_of(runs) or '-'} | "
                   f"{_kernels_of(fails) or '-'}{why} | "
                   f"{', '.join(names) or '-'} | {', '.join(rules)} |")  # fmt: skip
    out.append("")
    if artefacts:
        out += ["## Simulation artefacts (cause `emulation`: qemu-user, not the kernel)", ""]
        art: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
        for r in artefacts:
            art[(r.prog.name, r.image.name, r.mode)].append(r)
        for (name, img, mode), rs in sorted(art.items()):
            first = rs[0].result.first_error if rs[0].result else ""
            decided = sorted({s for r in rs if r.decision for s in r.decision.deciding})
            by = f" (reproduced by denying {', '.join(decided)})" if decided else ""
            out.append(f"- {name} ({img}) {mode} at {_kernels_of(rs)}: {_err(first)[:140]}{by}")
        out.append("")
    missing = [r for r in ladder if r.outcome == MISSING]
    if missing:
        out += ["## Missing (not in the cache: not run yet)", ""]
        miss: dict[tuple[str, str], list[Row]] = defaultdict(list)
        for r in missing:
            miss[(r.image.name, r.mode)].append(r)
        for (img, mode), rs in sorted(miss.items()):
            absent = sorted({r.prog.name for r in rs})
            out.append(f"- {img} {mode}: {len(rs)} runs ({', '.join(absent)})")
        out.append("")
    nb = [r for r in ladder if r.decision and r.decision.cause == "not-bisected"]
    if nb:
        out += [f"Failed runs not bisected (a step not in the cache): {len(nb)}.", ""]
    out += ["## Per family: summary", "",
            "| family | mode | programs (image: runs from) | deciding syscalls (failed runs) |",
            "|---|---|---|---|"]  # fmt: skip
    for fam in sorted({r.family for r in ladder}):
        for mode in modes:
            rs = [r for r in ladder if r.family == fam and r.mode == mode and r.result is not None]
            if not rs:
                continue
            per: dict[tuple[str, str], list[Row]] = defaultdict(list)
            for r in rs:
                per[(r.prog.name, r.image.name)].append(r)
            progs = ", ".join(f"{n} ({img}: {_lowest(v, kernels)})"
                              for (n, img), v in sorted(per.items()))  # fmt: skip
            dec: dict[str, int] = defaultdict(int)
            for r in rs:
                if r.decision:
                    keys = (r.decision.deciding if r.decision.cause != "emulation" else ()) or (
                        f"({r.decision.cause})",)
                    for s in keys:
                        dec[s] += 1
            ds = ", ".join(f"{s} x{n}" for s, n in sorted(dec.items(), key=lambda x: -x[1]))
            out.append(f"| {fam} | {mode} | {progs} | {ds or '-'} |")
    out.append("")
    if excluded:
        out += ["## Excluded (the control failed on this host)", ""]
        for r in excluded:
            res = r.result
            assert res is not None
            out.append(f"- {r.prog.name} ({r.image.name}, {r.prog.package} {r.version}): "
                       f"{res.outcome}, exit {res.exit_code}: {res.first_error}")  # fmt: skip
        out.append("")
    fams: dict[str, list[Row]] = defaultdict(list)
    for r in ladder:
        fams[r.family].append(r)
    out += ["## Per family and program", ""]
    for fam in sorted(fams):
        out += [f"### {fam}", "", "| program | image | version | mode | runs from | fails below "
                "with (kernel: cause, deciding syscalls) | first error |",
                "|---|---|---|---|---|---|---|"]  # fmt: skip
        groups: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
        for r in fams[fam]:
            groups[(r.prog.name, r.image.name, r.mode)].append(r)
        for (name, img, mode), rs in sorted(groups.items()):
            if all(r.result is None for r in rs):
                continue
            low = _lowest(rs, kernels)
            fails = sorted((r for r in rs if r.outcome == "fails"), key=lambda r: _vkey(r.kernel))
            fl = "; ".join(
                f"{r.kernel}: {r.decision.cause if r.decision else '?'}"
                + (f" {{{', '.join(r.decision.deciding)}}}" if r.decision and r.decision.deciding
                   else "")
                for r in fails
            )  # fmt: skip
            err = next((r.result.first_error for r in reversed(fails) if r.result), "")
            out.append(f"| {name} | {img} | {rs[0].version} | {mode} | {low} | {fl or '-'} | "
                       f"{_err(err)[:160] or '-'} |")  # fmt: skip
        out.append("")
    out += ["## Syscalls: tried and survived versus fatal", "",
            "Tried and survived: the program called it, got the mode's errno (strace; the "
            "real release, every syscall absent at K denied) and still ran. Fatal: it is in "
            "the bisected minimal set of a failed run. Under qemu-user (the arm64, s390x and "
            "ppc64le images) both are the host calls qemu-user makes for the guest (and its "
            "own): the simulation filters those.", ""]  # fmt: skip
    for mode in modes:
        survived: dict[tuple[str, str], set[str]] = defaultdict(set)
        fatal: dict[tuple[str, str], set[str]] = defaultdict(set)
        for r in ladder:
            if r.mode != mode:
                continue
            for s in r.tried or ():
                survived[(s, r.family)].add(r.source() + f" at {r.kernel}")
            if r.decision and r.decision.deciding:
                for s in r.decision.deciding:
                    fatal[(s, r.family)].add(r.source() + f" at {r.kernel}: {r.decision.cause}")
        out += [f"### {ERRNAME[mode]} ({mode})", "", "| syscall | family | tried and survived "
                "| fatal |", "|---|---|---|---|"]  # fmt: skip
        for key in sorted(set(survived) | set(fatal)):
            s, fam = key
            surv, fat = sorted(survived.get(key, ())), sorted(fatal.get(key, ()))
            out.append(f"| {s} | {fam} | {'<br>'.join(_short(surv))} | "
                       f"{'<br>'.join(_short(fat))} |")  # fmt: skip
        out.append("")
    return "\n".join(out) + "\n"


def _count(items: Iterable[str]) -> dict[str, int]:
    n: dict[str, int] = defaultdict(int)
    for i in items:
        n[i] += 1
    return n


def _cell(text: str) -> str:
    return re.sub(r"\s+", " ", text).replace("|", "/")


def _err(text: str) -> str:
    """A first error line for the report: without the JVM's log uptime ([0.017s])."""
    return _cell(re.sub(r"^\[\d+\.\d+s\]", "", text))


def _short(sources: list[str], keep: int = 6) -> list[str]:
    """One line per program and image (the lowest kernel), at most `keep` of them."""
    first: dict[str, str] = {}
    for s in sources:
        head = s.split(" at ")[0]
        first.setdefault(head, s)
    items = sorted(_cell(v) for v in first.values())
    return items[:keep] + ([f"... {len(items) - keep} more"] if len(items) > keep else [])


if __name__ == "__main__":
    main()
