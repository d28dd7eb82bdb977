"""What happens when a runtime starts a container's command: runc's PATH lookup, then
the kernel's execve, hop by hop through `#!` interpreters, for the container's user.

The steps and their errors, in order (each with the words a user sees):
- runc looks argv[0] up as Go's exec.LookPath does (os/exec/lp_unix.go) in the
  container's PATH: a name with a '/' is taken as a path (relative to the working
  directory) and must exist and have an exec bit; a bare name is the first PATH entry
  that is a non-directory with an exec bit. These fail before the process starts.
- the kernel's execve (fs/exec.c, fs/binfmt_script.c, fs/binfmt_elf.c): the file must
  be a regular file the user may execute (EACCES); a `#!` line names an interpreter
  that must exist (ENOENT, reported against the script), be executable and, if it is a
  script itself, stay within the kernel's nesting limit (ELOOP); a file that is neither
  ELF nor `#!` (nor a registered binfmt_misc format) is ENOEXEC, "exec format error".
- `#!/usr/bin/env PROG`: env then looks PROG up itself (execvp) and fails with its own
  message, exit 127.
Exit statuses are docker's (cli/command/container/run.go maps "not found" / "no such
file" to 127 and "permission denied" to 126); see KNOWLEDGE for the observed messages.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kcompat.formats import Format, ShebangError, parse_shebang
from kcompat.image import DEFAULT_PATH
from kcompat.users import UnknownUser, User, resolve_user
from kcompat.versions import version_key

if TYPE_CHECKING:  # the exec model reads a scan; `run` needs only Command and its argv
    from kcompat.filescan import ScannedFile
    from kcompat.scan import Scan


def _exec_facts() -> dict[str, Any]:
    from kcompat.knowledge import KNOWLEDGE  # its data is read only when a rule runs

    return KNOWLEDGE.exec_facts

_STRERROR = {
    "ENOENT": "no such file or directory",
    "EACCES": "permission denied",
    "ENOEXEC": "exec format error",
    "ELOOP": "too many levels of symbolic links",
    "ENOTDIR": "not a directory",
}


@dataclass(frozen=True)
class ExecProblem:
    """Why the runtime cannot start the command: a certain failure."""

    rule: str
    title: str
    explanation: str
    message: str  # what the runtime prints
    exit_code: int  # what `docker run` returns
    evidence: tuple[str, ...]
    fix: str
    path: str | None = None


@dataclass(frozen=True)
class Resolved:
    argv: tuple[str, ...]
    chain: tuple[str, ...]  # argv[0] as found, then each interpreter, in exec order
    binary: ScannedFile | None  # the ELF file the kernel finally maps
    problem: ExecProblem | None = None
    user: User | None = None
    via_env: str | None = None  # `#!/usr/bin/env PROG`: the PROG env looked up


@dataclass(frozen=True)
class Command:
    """What the user asked to run, in docker's terms: the arguments after the image
    (they replace Cmd), `--entrypoint`, `-u`, `-w`."""

    args: tuple[str, ...] = ()
    entrypoint: str | None = None
    user: str | None = None
    workdir: str | None = None
    path: str | None = None  # PATH as the container will have it (-e / --env-file)
    volumes: tuple[str, ...] = ()  # container paths of -v mounts: not in the image


def container_argv(
    entrypoint: tuple[str, ...] | None,
    cmd: tuple[str, ...] | None,
    args: tuple[str, ...] = (),
    entrypoint_override: str | None = None,
) -> tuple[str, ...]:
    """docker's rule for what a container runs: `--entrypoint X` replaces the image's
    Entrypoint and drops its Cmd (`--entrypoint ''` clears it); the arguments after the
    image replace Cmd."""
    if entrypoint_override is not None:
        entry: tuple[str, ...] = (entrypoint_override,) if entrypoint_override else ()
        return (*entry, *args)
    return (*(entrypoint or ()), *(args or cmd or ()))


def script_limits(kernel: str | None) -> tuple[int, bool]:
    """(the kernel's `#!` buffer size, whether it truncates an overlong line silently)."""
    facts = _exec_facts()
    k = version_key(kernel) if kernel else None
    size = facts["binprm_buf_size"]
    small = k is not None and k < version_key(size["256_since"])
    truncate = k is not None and k < version_key(facts["shebang_enoexec_since"])
    return (128 if small else 256), truncate


def _may(node_mode: int, uid: int, gid: int, user: User, bit: int) -> bool:
    """The kernel's permission check on a regular file, `bit` 1 for exec, 4 for read.
    Container root has CAP_DAC_OVERRIDE (docker's default capabilities): it may read
    anything and execute what has any exec bit."""
    if user.uid == 0:
        return bool(node_mode & 0o111) if bit == 1 else True
    if user.uid == uid:
        return bool(node_mode & (bit << 6))
    if gid in user.groups or gid == user.gid:
        return bool(node_mode & (bit << 3))
    return bool(node_mode & bit)


class _Exec:
    def __init__(
        self,
        scan: Scan,
        workdir: str,
        user: User,
        kernel: str | None,
        path: str | None = None,
        volumes: tuple[str, ...] = (),
    ) -> None:
        self.scan = scan
        self.workdir = workdir or "/"
        self.user = user
        self.kernel = kernel
        self.path_env = path if path is not None else scan.env.get("PATH", DEFAULT_PATH)
        self.volumes = volumes

    def on_volume(self, path: str) -> bool:
        """Whether `path` lies on a -v mount: its files are not the image's to judge."""
        p = posixpath.normpath(self.absolute(path))
        return any(p == v or p.startswith(v.rstrip("/") + "/") for v in self.volumes)

    def absolute(self, path: str) -> str:
        return path if path.startswith("/") else posixpath.join(self.workdir, path)

    def node(self, final: str) -> tuple[int, int, int] | None:
        n = self.scan.tree.nodes.get(final)
        return (n.mode, n.uid, n.gid) if n is not None else None

    def look_path(self, name: str) -> tuple[str | None, ExecProblem | None]:
        """runc's exec.LookPath(argv[0]): the path found, or the failure."""
        tree = self.scan.tree
        if "/" in name:
            final, err = tree.lookup(self.absolute(name))
            if err is not None:
                words = _STRERROR[err]
                return None, self.fail(
                    "entrypoint-missing" if err == "ENOENT" else "entrypoint-unresolvable",
                    f"{name}: {words}",
                    f'exec: "{name}": stat {name}: {words}',
                    f"{name} {'does not exist in the image' if err == 'ENOENT' else words} "
                    f"(resolved from the working directory {self.workdir}).",
                    "lookpath_" + err,
                    (f"{name}: {err}",),
                    "fix the image's Entrypoint/Cmd or install the program",
                    name,
                )
            assert final is not None
            if tree.is_dir(final) or not ((self.node(final) or (0, 0, 0))[0] & 0o111):
                what = "a directory" if tree.is_dir(final) else "a file without an exec bit"
                return None, self.fail(
                    "entrypoint-not-executable",
                    f"{name}: {what}",
                    f'exec: "{name}": permission denied',
                    f"{final} is {what}; the runtime looks for a file with an exec bit.",
                    "lookpath_EACCES",
                    (f"{final}: mode {(self.node(final) or (0, 0, 0))[0]:04o}",),
                    f"chmod +x {final} in the image (RUN chmod +x), or fix the Entrypoint",
                    final,
                )
            return final, None
        skipped = []
        for d in self.path_env.split(":"):
            cand = posixpath.join(self.absolute(d or "."), name)
            final, err = tree.lookup(cand)
            if final is None:
                continue
            node = self.node(final)
            if tree.is_dir(final) or node is None or not node[0] & 0o111:
                skipped.append(f"{cand}: {'a directory' if tree.is_dir(final) else 'no exec bit'}")
                continue
            return cand, None
        return None, self.fail(
            "entrypoint-missing",
            f"{name}: not found in the image's PATH",
            f'exec: "{name}": executable file not found in $PATH',
            f"No directory of PATH={self.path_env} holds an executable {name}"
            + (f" ({'; '.join(skipped)})" if skipped else "")
            + ".",
            "lookpath_notfound",
            (f"PATH={self.path_env}", *skipped),
            "fix the image's Entrypoint/Cmd, install the program, or chmod +x it",
            name,
        )

    def fail(
        self,
        rule: str,
        title: str,
        message: str,
        explanation: str,
        kind: str,
        evidence: tuple[str, ...],
        fix: str,
        path: str | None,
    ) -> ExecProblem:
        code = _exec_facts()["exit_codes"][kind]
        said = (
            f"The container starts and the runtime's exec fails: {message} (docker run "
            f"exits {code} with runc 1.0/1.1, "
            f"{_exec_facts()['late_exit_runc_1_2']} with runc 1.2+)."
            if kind.startswith("execve_")
            else f"The runtime fails with: {message} (docker run exits {code})."
        )
        return ExecProblem(
            rule,
            title,
            f"{said} {explanation}",
            message,
            code,
            evidence,
            fix,
            path,
        )

    def who(self) -> str:
        return f"uid {self.user.uid}" + (f" ({self.user.name})" if self.user.name else "")

    def execve_fail(
        self, top: str, err: str, rule: str, title: str, why: str, fix: str, where: str
    ) -> ExecProblem:
        message = f"exec {top}: {_STRERROR[err]}"
        return self.fail(rule, title, message, why, "execve_" + err, (f"{where}: {err}",), fix,
                         where)  # fmt: skip

    def run(self, argv: tuple[str, ...]) -> Resolved:
        name = argv[0]
        if ("/" in name and self.on_volume(name)) or (
            "/" not in name and any(self.on_volume(d or ".") for d in self.path_env.split(":"))
        ):
            found, problem = self.look_path(name)
            if problem is not None:  # it may be on the volume: not judged from the image
                return Resolved(argv, (), None, None, self.user)
            assert found is not None
            return self.execve(argv, found)
        found, problem = self.look_path(argv[0])
        if problem is not None or found is None:
            return Resolved(argv, (), None, problem, self.user)
        return self.execve(argv, found)

    def execve(self, argv: tuple[str, ...], top: str) -> Resolved:
        bufsize, truncate = script_limits(self.kernel)
        limit = _exec_facts()["max_interpreter_depth"]
        chain = [top]
        current = top
        tree = self.scan.tree
        via_env: str | None = None
        pending_env: tuple[str, str] | None = None
        hops = 0
        for _ in range(4 * limit + 8):
            final, err = tree.lookup(self.absolute(current))
            if err is not None or final is None:
                err = err or "ENOENT"
                prev = chain[-2] if len(chain) > 1 else top
                return Resolved(argv, tuple(chain), None, self.execve_fail(
                    top, err, "script-interpreter-missing" if err == "ENOENT"
                    else "script-interpreter-unresolvable",
                    f"{prev}: interpreter {current!r} "
                    + ("is missing" if err == "ENOENT" else _STRERROR[err]),
                    f"{prev} starts with #!{current!r}; {current!r} is not in the image, so "
                    "execve fails with ENOENT, reported against the script, not the "
                    "interpreter." + (" The interpreter's name ends in a carriage return: the "
                                      "script has Windows (CRLF) line endings."
                                      if current.endswith("\r") else ""),
                    "convert the script to Unix line endings (dos2unix, or "
                    "sed -i 's/\\r$//')" if current.endswith("\r")
                    else f"install {posixpath.basename(current)} in the image or fix the #! line",
                    prev,
                ), self.user)  # fmt: skip
            node = self.node(final)
            if tree.is_dir(final) or node is None:
                return Resolved(argv, tuple(chain), None, self.execve_fail(
                    top, "EACCES", "exec-not-regular", f"{final} is a directory",
                    f"{final} is not a regular file: execve fails with EACCES.",
                    "point the Entrypoint (or the #! line) at a program", final,
                ), self.user)  # fmt: skip
            if not _may(node[0], node[1], node[2], self.user, 0o1):
                who = self.who()
                why = (
                    f"{final} has mode {node[0]:04o}, owner {node[1]}:{node[2]}; {who} "
                    f"(groups {','.join(map(str, self.user.groups))}) may not execute it"
                )
                fix = f"chmod +x {final} in the image, or run as a user who may execute it"
                if len(chain) == 1:  # runc checks the command itself before it starts
                    return Resolved(
                        argv,
                        tuple(chain),
                        None,
                        self.fail(
                            "exec-permission",
                            f"{final}: not executable by {who}",
                            f"exec {top}: permission denied",
                            why + ".",
                            "eaccess",
                            (f"{final}: mode {node[0]:04o} {node[1]}:{node[2]}",),
                            fix,
                            final,
                        ),
                        self.user,
                    )
                return Resolved(argv, tuple(chain), None, self.execve_fail(
                    top, "EACCES", "exec-permission", f"{final}: not executable by {who}",
                    why + ", so execve fails with EACCES.", fix, final,
                ), self.user)  # fmt: skip
            f = self.scan.files.get(final)
            if f is not None and f.format is Format.ELF:
                if pending_env is None:
                    return Resolved(argv, tuple(chain), f, None, self.user, via_env)
                # env (an ELF) now runs and looks its program up itself (execvp)
                prog, script = pending_env
                pending_env = None
                via_env = prog
                found = self._env_lookup(prog)
                if found is None:
                    return Resolved(argv, tuple(chain), None, self.fail(
                        "script-interpreter-missing",
                        f"{script}: env cannot find {prog!r}",
                        f"{posixpath.basename(current)}: {prog!r}: No such file or directory",
                        f"{script}'s #! line runs env, which looks {prog!r} up in "
                        f"PATH={self.path_env} and finds nothing"
                        + (" (the name ends in a carriage return: the script has Windows "
                           "(CRLF) line endings)" if prog.endswith("\r") else
                           " (without -S, env takes the whole rest of the #! line as one "
                           "name)" if " " in prog else "") + ".",
                        "env_notfound", (f"{script}: #! ... env {prog}",),
                        "convert the script to Unix line endings (dos2unix)"
                        if prog.endswith("\r") else f"install {prog.split()[0]} in the image",
                        script,
                    ), self.user, via_env)  # fmt: skip
                chain.append(found)
                current = found
                hops = 0  # env's execvp is a new execve
                continue
            if f is None or f.script is None:
                kind = f.format.value if f is not None else "neither ELF nor a #! script"
                if f is not None and f.format in (Format.PE, Format.MACHO):
                    return Resolved(argv, tuple(chain), f, None, self.user)  # the OS rule
                return Resolved(argv, tuple(chain), None, self.execve_fail(
                    top, "ENOEXEC", "exec-format", f"{final}: not a program Linux can run",
                    f"{final} is {kind}: no ELF header and no #! line, so execve fails "
                    "with ENOEXEC. (A shell would run it as a script; a runtime does not.)",
                    f"add a #! line (e.g. #!/bin/sh) to {final}, or fix the Entrypoint",
                    final,
                ), self.user)  # fmt: skip
            if hops >= limit:
                return Resolved(argv, tuple(chain), None, self.execve_fail(
                    top, "ELOOP", "script-nesting",
                    f"{top}: interpreters nested deeper than the kernel allows",
                    f"{' -> '.join(chain)}: each #! interpreter is itself a script; the kernel "
                    f"follows at most {limit} of them (ELOOP).",
                    "point the #! line at the final ELF interpreter", final,
                ), self.user)  # fmt: skip
            try:
                interp, arg = parse_shebang(f.script.head, bufsize, truncate)
            except ShebangError as e:
                return Resolved(argv, tuple(chain), None, self.execve_fail(
                    top, "ENOEXEC", "shebang-invalid", f"{final}: the #! line is refused",
                    f"{e}: execve fails with ENOEXEC ({bufsize}-byte buffer on this kernel).",
                    "shorten or fix the #! line", final,
                ), self.user)  # fmt: skip
            if not _may(node[0], node[1], node[2], self.user, 0o4):
                return Resolved(argv, tuple(chain), None, ExecProblem(
                    "script-unreadable", f"{final}: not readable by {self.who()}",
                    f"The kernel starts {interp} for {final} (exec needs only the exec bit), "
                    f"but the interpreter must read the script and cannot: e.g. \"/bin/sh: "
                    f"can't open '{final}': Permission denied\" (exit 2 from sh, dash or "
                    f"python, 126 from bash). {final} has mode {node[0]:04o}, owner "
                    f"{node[1]}:{node[2]}.",
                    f"{interp}: can't open '{final}': Permission denied", 2,
                    (f"{final}: mode {node[0]:04o} {node[1]}:{node[2]}",),
                    f"chmod a+r {final} in the image", final,
                ), self.user)  # fmt: skip
            if posixpath.basename(interp) == "env" and arg:
                prog_ = _env_program(arg)
                if prog_ is not None:
                    pending_env = (prog_, final)
            hops += 1
            chain.append(interp)
            current = interp
        return Resolved(argv, tuple(chain), None, None, self.user, via_env)  # env loops

    def _env_lookup(self, prog: str) -> str | None:
        if "/" in prog:
            return prog if self.scan.exists(self.absolute(prog)) else None
        for d in self.path_env.split(":"):
            cand = posixpath.join(self.absolute(d or "."), prog)
            final = self.scan.tree.resolve(cand)
            if final is not None and not self.scan.tree.is_dir(final):
                node = self.node(final)
                if node is not None and node[0] & 0o111:
                    return cand
        return None


def _env_program(arg: str) -> str | None:
    """The program `env ARG` runs: the whole argument (the kernel passes one), or with
    -S the first word; None for other options (not modelled)."""
    if arg.startswith("-S"):
        words = [w for w in arg[2:].replace("\t", " ").split(" ") if w]
        words = [w for w in words if "=" not in w or w.startswith("/")]
        return words[0] if words else None
    if arg.startswith("-"):
        return None
    return arg


def resolve(
    scan: Scan,
    argv: tuple[str, ...],
    workdir: str | None,
    user: str | None,
    kernel: str | None,
    path: str | None = None,
    volumes: tuple[str, ...] = (),
) -> Resolved:
    """What the runtime and the kernel do with `argv` in this image."""
    try:
        who = resolve_user(user, scan.texts.get("/etc/passwd"), scan.texts.get("/etc/group"))
    except UnknownUser as e:
        code = _exec_facts()["exit_codes"]["user_unknown"]
        return Resolved(argv, (), None, ExecProblem(
            "user-missing", f"user {user!r} is not in the image",
            f"The runtime fails with: {e} (docker run exits {code}). The image's (or -u) "
            "user is looked up in the image's /etc/passwd and /etc/group.",
            str(e), code, (f"USER {user}",),
            "add the user to the image (useradd), or give a numeric UID[:GID]",
        ))  # fmt: skip
    return _Exec(scan, workdir or "/", who, kernel, path, volumes).run(argv)
