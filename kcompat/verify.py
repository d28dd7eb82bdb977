"""`check --verify`: run what was judged under the simulated target and compare.

The run is a real `kcompat run` in a child process (its own namespaces, the seccomp
simulation of the target's kernel, the faked release), so its exit status and stderr are
exactly what a user would see. Agreement: `incompatible` must fail, `native`/`emulated`
must run; `uncertain` agrees with either outcome and says which happened.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from kcompat.confine import DEFAULTS
from kcompat.errors import UsageError
from kcompat.execve import Command
from kcompat.knowledge import KNOWLEDGE
from kcompat.platform import host_platform
from kcompat.target import Target

VERIFY_TIMEOUT = 60.0
VM_VERIFY_TIMEOUT = 600.0  # a VM run boots a kernel first (TCG: tens of seconds)
_SETUP_CODES = (125,)


@dataclass(frozen=True)
class Observation:
    outcome: str  # runs | fails | not-run (could not run, or still running at the timeout)
    exit_code: int | None
    first_error: str | None
    command: tuple[str, ...]
    simulated: str  # what the run simulated, in words


@dataclass(frozen=True)
class Verification:
    predicted: str
    observed: Observation
    agreement: str  # agree | disagree | uncertain
    summary: str

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["observed"]["command"] = list(self.observed.command)
        return d


def require_host_arch(target: Target) -> None:
    """`--verify` runs the image on this host: a target of another arch cannot be it."""
    if target.platform.architecture != host_platform().architecture:
        raise UsageError(
            f"--verify runs the image on this host: the target's arch "
            f"({target.platform.architecture}) must be this host's"
        )


def verify_report(
    rep: dict[str, Any],
    reference: str,
    target: Target,
    command: Command,
    insecure_hosts: Sequence[str] = (),
    run_args: Sequence[str] = (),
) -> Verification:
    """`check --verify`: run what `rep` judged (the same image, platform and command)
    under the simulated target, compare, and record it in `rep`: its "verify", and an
    uncertain verdict the run decided (`settle`)."""
    extra = [f"--insecure-registry={h}" for h in insecure_hosts]
    if command.entrypoint is not None:
        extra.append(f"--entrypoint={command.entrypoint}")
    if command.user is not None:
        extra.append(f"--user={command.user}")
    if command.workdir is not None:
        extra.append(f"--workdir={command.workdir}")
    extra += run_args  # --vm-kernel K --vm-append A: run where it was judged
    platform = rep["image"]["platform"]
    obs = observe(reference, target, platform, list(command.args), extra)
    verification = compare(rep["verdict"], obs)
    emulated = any(f.get("rule") == "emulated" for f in rep.get("findings", ()))
    doubtful = False  # the failure may be the simulation's: it decides nothing
    if obs.outcome == "fails" and rep["verdict"] != "incompatible" and not emulated:
        alone = observe_without_faker(reference, target, platform, list(command.args), extra)
        if alone is not None and alone.outcome == "runs":
            doubtful = True
            verification = Verification(
                rep["verdict"], obs, "uncertain",
                f"it fails under the simulation of Linux {target.kernel}, but runs with the "
                "same ENOSYS answers and this host's release, without qemu-user: either it "
                "reads the release (a real Linux "
                f"{target.kernel} fails it too), or qemu-user, which fakes the release, "
                "answered a call as no kernel does (qemu-user 7.2: getrandom(NULL, 0) is "
                "EFAULT, not ENOSYS); the simulation cannot tell which",
            )  # fmt: skip
    rep["verify"] = verification.to_json()
    if not doubtful:
        settle(rep, verification)
    return verification


def first_error(stderr: str) -> str | None:
    for line in stderr.splitlines():
        line = line.strip()
        if line and not line.startswith("kcompat: warning:"):
            return line[:300]
    return None


def observe(
    reference: str,
    target: Target,
    platform: str | None,
    argv: list[str] | None,
    extra: list[str],
    timeout: float | None = None,
) -> Observation:
    """Run the image's entrypoint (or argv) the way `kcompat run` does, simulating the
    target's kernel when it is older than this host's, and an old runtime's seccomp
    profile (`--runtime docker:X`: the calls it answers EPERM) when the target names one."""
    cmd = [sys.executable, "-m", "kcompat", "run", "--force", *extra]
    simulated = "this host as it is"
    if target.source.startswith("vm:"):  # extra has --vm-kernel: the real kernel, booted
        simulated = f"a VM booting {target.source[3:]}"
    elif _simulates_kernel(target):
        assert target.kernel is not None
        cmd += ["--kernel", target.kernel]
        simulated = f"Linux {target.kernel} (seccomp ENOSYS for newer syscalls, faked release)"
    profile = _runtime_profile(target)
    if profile is not None:
        path, calls = profile
        cmd += ["--security-opt", f"seccomp={path}"]
        simulated += f"; {target.runtime}'s seccomp profile (EPERM for {', '.join(calls)})"
        if "--kernel" in cmd:
            # an old runtime's allow-list lacks every call newer than itself too: EPERM,
            # and no release faker (qemu-user -r would itself be hit by clone3's EPERM)
            cmd.append("--seccomp-eperm")
            simulated = simulated.replace("ENOSYS for newer syscalls, faked release",
                                          "EPERM for newer syscalls")
    if timeout is None:
        timeout = VM_VERIFY_TIMEOUT if target.source.startswith("vm:") else VERIFY_TIMEOUT
    try:
        return _observe(cmd, reference, platform, argv, timeout, simulated)
    finally:
        if profile is not None:
            os.unlink(profile[0])


def observe_without_faker(
    reference: str, target: Target, platform: str | None, argv: list[str] | None,
    extra: list[str],
) -> Observation | None:
    """The same run with the syscalls the target's kernel lacks answered ENOSYS through
    `--security-opt seccomp=` (kcompat's default profile with them first) and this
    host's release: no qemu-user as the first process. None where `observe` did not
    simulate a kernel with the release faked (a VM, this host, an old runtime)."""
    if not _simulates_kernel(target) or target.runtime:  # a runtime's run fakes no release
        return None
    from kcompat.seccomp import simulation
    from kcompat.syscalls import ABI_OF_ARCH

    abi = ABI_OF_ARCH.get(host_platform().architecture)
    if abi is None or target.kernel is None:
        return None
    path = _profile_file(simulation(abi, target.kernel).names, errno.ENOSYS, "enosys")
    cmd = [sys.executable, "-m", "kcompat", "run", "--force", *extra,
           "--security-opt", f"seccomp={path}"]  # fmt: skip
    simulated = f"Linux {target.kernel}'s ENOSYS answers with this host's release"
    try:
        return _observe(cmd, reference, platform, argv, VERIFY_TIMEOUT, simulated)
    finally:
        os.unlink(path)


def _runtime_profile(target: Target) -> tuple[str, tuple[str, ...]] | None:
    """kcompat's default profile with the old runtime's EPERM answers put first (the
    first matching rule decides), in a temporary file; None without such a runtime."""
    if not target.runtime:
        return None
    calls = tuple(dict.fromkeys(f.call for f in KNOWLEDGE.runtime_eperm(target.runtime)))
    if not calls:
        return None
    return _profile_file(calls, errno.EPERM, "runtime"), calls


def _simulates_kernel(target: Target) -> bool:
    """Whether `observe` runs `--kernel K` (seccomp answers, the release faked), not a
    VM's real kernel or this host as it is."""
    return not target.source.startswith("vm:") and target.source != "host" and bool(target.kernel)


def _profile_file(names: Sequence[str], answer: int, kind: str) -> str:
    """kcompat's default seccomp profile with `names` answered `answer` first (the first
    matching rule decides), in a temporary file the caller removes."""
    doc = dict(DEFAULTS.seccomp)
    doc["syscalls"] = [
        {"names": list(names), "action": "SCMP_ACT_ERRNO", "errnoRet": answer},
        *DEFAULTS.seccomp["syscalls"],
    ]
    fd, path = tempfile.mkstemp(prefix=f"kcompat-{kind}-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    return path


def _observe(
    cmd: list[str],
    reference: str,
    platform: str | None,
    argv: list[str] | None,
    timeout: float,
    simulated: str,
) -> Observation:
    if platform and not platform.endswith("/unknown"):  # a plain directory has no label
        cmd += ["--platform", platform]
    cmd.append(reference)
    if argv:
        cmd += ["--", *argv]
    try:
        r = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:  # a hang is no proof that it runs
        return Observation("not-run", None, f"undecided: still running after {timeout:.0f} s",
                           tuple(cmd[2:]), simulated)  # fmt: skip
    err = first_error(r.stderr)
    if r.returncode in _SETUP_CODES or (r.returncode != 0 and err and err.startswith("kcompat:")):
        return Observation("not-run", r.returncode, err, tuple(cmd[2:]), simulated)
    outcome = "runs" if r.returncode == 0 else "fails"
    return Observation(outcome, r.returncode, err, tuple(cmd[2:]), simulated)


def compare(verdict: str, obs: Observation) -> Verification:
    if obs.outcome == "not-run":
        return Verification(verdict, obs, "uncertain", f"could not run: {obs.first_error}")
    if verdict == "uncertain":
        return Verification(verdict, obs, "uncertain", f"predicted uncertain; it {obs.outcome}")
    expected = "fails" if verdict == "incompatible" else "runs"
    if obs.outcome == expected:
        return Verification(verdict, obs, "agree", f"predicted {verdict}; it {obs.outcome}")
    return Verification(
        verdict, obs, "disagree", f"predicted {verdict} but it {obs.outcome}"
        + (f" (exit {obs.exit_code}: {obs.first_error})" if obs.first_error else
           f" (exit {obs.exit_code})"),
    )  # fmt: skip


def settle(rep: dict[str, Any], verification: Verification) -> None:
    """An uncertain prediction that `--verify` decided becomes the observed verdict,
    labelled as such (`verdict_basis: observed`, `predicted_verdict: uncertain`)."""
    obs = verification.observed
    if verification.predicted != "uncertain" or obs.outcome not in ("runs", "fails"):
        return
    emulated = any(f.get("rule") == "emulated" for f in rep.get("findings", ()))
    rep["predicted_verdict"] = "uncertain"
    rep["verdict_basis"] = "observed"
    rep["verdict"] = (
        "incompatible" if obs.outcome == "fails" else ("emulated" if emulated else "native")
    )
