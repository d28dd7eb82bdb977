"""Image shapes real images have: Entrypoint + arguments, scripts with CRLF endings or
without exec bits, nested interpreters, arm64-only and Windows-only indexes, skopeo's
`dir:` layout, static programs that use the vsyscall page, `uname -r` kernels.

The expected exit statuses and messages are docker's, as observed with Debian's docker.io
(runc 1.1.5) on these same shapes (kcompat/data/knowledge.json, "exec")."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from kcompat.execve import resolve, script_limits
from kcompat.formats import ShebangError, parse_shebang
from kcompat.layers import FileEntry, FileKind
from kcompat.scan import Item, Scan, scan_items
from kcompat.target import described, parse_release
from tests.conftest import Fixtures
from tests.layertools import append_layer
from tests.registry_server import RealRegistry
from tests.test_check import check_json
from tests.test_run import kc, needs_userns

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "ci" / "report.schema.json").read_text())


def fatal(rep: dict[str, Any]) -> dict[str, Any]:
    found = [f for f in rep["findings"] if f["severity"] == "fatal"]
    assert found, rep["findings"]
    return found[0]


# -- the kernel's #! parse (offline) ------------------------------------------------------


def test_shebang_is_parsed_as_the_kernel_does() -> None:
    assert parse_shebang(b"#!/bin/sh\r\necho") == ("/bin/sh\r", None)  # \r is no space
    assert parse_shebang(b"#! \t/usr/bin/env  python3 -u \t\n") == ("/usr/bin/env", "python3 -u")
    assert parse_shebang(b"#!/bin/sh") == ("/bin/sh", None)
    for bad in (b"#!\n", b"#!   \t\n", b"#!"):
        with pytest.raises(ShebangError):
            parse_shebang(bad)
    long_interp = b"#!/" + b"x" * 300 + b"\n"
    with pytest.raises(ShebangError):  # Linux 5.0+: the interpreter's name must fit
        parse_shebang(long_interp)
    assert parse_shebang(long_interp, 128, truncate=True)[0] == "/" + "x" * 124  # older: cut
    interp, arg = parse_shebang(b"#!/bin/echo " + b"A" * 300 + b"\n")  # the argument is cut
    assert interp == "/bin/echo" and arg == "A" * (256 - 1 - len(b"#!/bin/echo "))
    assert script_limits("4.19") == (128, True)
    assert script_limits("5.0") == (128, False)
    assert script_limits("5.1") == (256, False)
    assert script_limits(None) == (256, False)


def test_kernel_versions_as_users_paste_them() -> None:
    assert parse_release("3.10.0-1160.el7.x86_64") == ("3.10.0", "1160.el7.x86_64")
    assert parse_release("4.4.0-210-generic") == ("4.4.0", "210-generic")
    assert parse_release("5") == ("5.0", None)
    assert parse_release("6.1") == ("6.1", None)
    t = described("3.10.0-1160.el7.x86_64")
    assert t.kernel == "3.10.0" and any("backports" in n for n in t.notes)
    from kcompat.errors import UsageError

    for bad in ("abc", "", "0.0", "3.x", "-1"):
        with pytest.raises(UsageError):
            parse_release(bad)


# -- the execve model on an in-memory image (offline) -------------------------------------


def _scan(files: dict[str, tuple[int, int, bytes]], links: dict[str, str] | None = None) -> Scan:
    """A Scan of an image holding `files` (path: mode, uid, content), `links` (symlinks),
    /bin/sh and /bin/env as this host's real ELF files, and an /etc/passwd."""
    elf = Path("/bin/true").read_bytes()
    content = {
        "bin/sh": (0o755, 0, elf),
        "bin/env": (0o755, 0, elf),
        "etc/passwd": (0o644, 0, b"root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n"),
        **{k.lstrip("/"): v for k, v in files.items()},
    }
    items = [
        Item(
            FileEntry(path, FileKind.FILE, mode, len(data), "", uid, uid, 0, 0, 0),
            (lambda d=data: io.BytesIO(d)),
        )
        for path, (mode, uid, data) in content.items()
    ]
    for path, target in (links or {}).items():
        items.append(Item(FileEntry(path.lstrip("/"), FileKind.SYMLINK, 0o777, 0, target, 0, 0,
                                    0, 0, 0), lambda: io.BytesIO(b"")))  # fmt: skip
    return scan_items(items, {"PATH": "/bin:/app"})


def _problem(scan: Scan, *argv: str, user: str | None = None, workdir: str = "/") -> Any:
    return resolve(scan, argv, workdir, user, "6.1").problem


def test_exec_model_matches_runc_and_the_kernel() -> None:
    script = b"#!/bin/sh\necho\n"
    scan = _scan(
        {
            "/app/ok": (0o755, 0, script),
            "/app/crlf": (0o755, 0, b"#!/bin/sh\r\necho\r\n"),
            "/app/env-crlf": (0o755, 0, b"#!/bin/env sh\r\n"),
            "/app/env-args": (0o755, 0, b"#!/bin/env sh -e\n"),
            "/app/env-split": (0o755, 0, b"#!/bin/env -S sh -e\n"),
            "/app/noexec": (0o644, 0, script),
            "/app/mine": (0o700, 1000, script),
            "/app/root-only": (0o744, 0, script),
            "/app/exec-only": (0o711, 0, script),
            "/app/text": (0o755, 0, b"hello\n"),
            "/app/rel": (0o755, 0, script),
            **{f"/app/c{n}": (0o755, 0, f"#!/app/c{n - 1}\n".encode()) for n in range(2, 8)},
            "/app/c1": (0o755, 0, script),
        },
        {"/app/loop": "loop"},
    )
    assert _problem(scan, "ok") is None and _problem(scan, "/app/ok") is None
    cases = {
        ("nosuch",): ("entrypoint-missing", 127, 'exec: "nosuch": executable file not found'),
        ("/nosuch",): ("entrypoint-missing", 127, 'exec: "/nosuch": stat /nosuch: no such'),
        ("/app/crlf",): ("script-interpreter-missing", 1, "exec /app/crlf: no such file"),
        ("/app/env-crlf",): ("script-interpreter-missing", 127, "env: 'sh\\r': No such file"),
        ("/app/env-args",): ("script-interpreter-missing", 127, "env: 'sh -e': No such file"),
        ("/app/noexec",): ("entrypoint-not-executable", 126, 'exec: "/app/noexec": permission'),
        ("noexec",): ("entrypoint-missing", 127, "executable file not found in $PATH"),
        ("/app/text",): ("exec-format", 1, "exec /app/text: exec format error"),
        ("/app",): ("entrypoint-not-executable", 126, 'exec: "/app": permission denied'),
        ("/app/loop",): ("entrypoint-unresolvable", 125, "too many levels of symbolic links"),
        ("/app/c6",): ("script-nesting", 1, "exec /app/c6: too many levels of symbolic links"),
    }
    for argv, (rule, code, message) in cases.items():
        p = _problem(scan, *argv)
        assert p is not None, argv
        assert (p.rule, p.exit_code) == (rule, code), (argv, p)
        assert message in p.message, (argv, p.message)
    assert _problem(scan, "/app/c5") is None  # five scripts deep is the kernel's limit
    assert _problem(scan, "/app/env-split") is None  # env -S splits the words
    assert _problem(scan, "./rel", workdir="/app") is None  # relative to WorkingDir
    # the exec bit for the container's user, as root has CAP_DAC_OVERRIDE
    assert _problem(scan, "/app/mine") is None
    assert _problem(scan, "/app/mine", user="app") is None
    p = _problem(scan, "/app/root-only", user="app")
    assert (p.rule, p.exit_code, p.message) == (
        "exec-permission",
        126,
        "exec /app/root-only: permission denied",
    )
    p = _problem(scan, "/app/exec-only", user="1000")
    assert (p.rule, p.exit_code) == ("script-unreadable", 2)
    p = _problem(scan, "/app/ok", user="nosuch")
    assert (p.rule, p.exit_code) == ("user-missing", 125)
    assert "unable to find user nosuch" in p.message


# -- images built from Debian packages ---------------------------------------------------


@pytest.mark.integration
def test_args_replace_cmd_in_check_and_run(images: Fixtures) -> None:
    """Entrypoint /bin/echo: `check IMG -- --version` judges `echo --version` (docker's
    meaning), as `run` runs it; --entrypoint replaces, --entrypoint '' clears it."""
    img = images.oci("entry-echo")
    code, rep = check_json(img, "--", "--version")
    assert code == 0 and rep["verdict"] == "native", rep["findings"]
    assert rep["entrypoint"]["argv"] == ["/bin/echo", "--version"]
    _, rep = check_json(img)
    assert rep["entrypoint"]["argv"] == ["/bin/echo", "hello"]
    _, rep = check_json("--entrypoint", "/bin/true", img)
    assert rep["entrypoint"]["argv"] == ["/bin/true"]
    code, rep = check_json("--entrypoint", "", img, "--", "nosuch")
    assert code == 1 and fatal(rep)["rule"] == "entrypoint-missing"


@pytest.mark.integration
@needs_userns
def test_check_run_and_verify_agree_on_entrypoint_args(images: Fixtures) -> None:
    img = images.oci("entry-echo")
    r = kc("run", img, "--version")
    assert r.returncode == 0 and r.stdout.strip() == "--version", r.stderr
    code, rep = check_json("--verify", img, "--", "--version")
    assert rep["verify"]["agreement"] == "agree", rep["verify"]
    assert rep["verify"]["observed"]["command"][-2:] == ["--", "--version"]
    assert code == 0


SHAPES = {  # command: (rule, docker's exit status) as observed with docker and runc
    "/shapes/crlf.sh": ("script-interpreter-missing", 1),
    "/shapes/env-crlf.sh": ("script-interpreter-missing", 127),
    "/shapes/noexec.sh": ("entrypoint-not-executable", 126),
    "noexec.sh": ("entrypoint-missing", 127),
    "/shapes/text": ("exec-format", 1),
    "/shapes/missing-interp.sh": ("script-interpreter-missing", 1),
    "/shapes/empty-shebang": ("shebang-invalid", 1),
    "/shapes/long-interp.sh": ("shebang-invalid", 1),
    "/shapes/c6": ("script-nesting", 1),
    "/shapes/a-directory": ("entrypoint-not-executable", 126),
    "/shapes/loop": ("entrypoint-unresolvable", 125),
}


@pytest.mark.integration
def test_exec_failures_are_predicted(images: Fixtures) -> None:
    img = images.oci("shapes-amd64")
    for cmd, (rule, status) in SHAPES.items():
        code, rep = check_json(img, "--", cmd)
        f = fatal(rep)
        assert (code, rep["verdict"], f["rule"], f["exit_code"]) == (
            1, "incompatible", rule, status), (cmd, f)  # fmt: skip
        assert "docker run exits" in f["explanation"] and f["fix"]
    for ok in ("/shapes/ok.sh", "ok.sh", "/shapes/c5", "/shapes/owner-only.sh"):
        code, rep = check_json(img, "--", ok)
        assert (code, rep["verdict"]) == (0, "native"), (ok, rep["findings"])
    code, rep = check_json("-u", "nobody", img, "--", "/shapes/owner-only.sh")
    assert (code, fatal(rep)["rule"], fatal(rep)["exit_code"]) == (1, "exec-permission", 126)
    code, rep = check_json("-u", "nosuchuser", img, "--", "/shapes/ok.sh")
    assert fatal(rep)["rule"] == "user-missing" and fatal(rep)["exit_code"] == 125


@pytest.mark.integration
@needs_userns
def test_run_fails_as_docker_does(images: Fixtures) -> None:
    """`run` stops before starting with docker's status and runc's words; --force runs
    it and the kernel says the same."""
    img = images.oci("shapes-amd64")
    r = kc("run", img, "/shapes/noexec.sh")
    assert r.returncode == 126 and 'exec: "/shapes/noexec.sh": permission denied' in r.stderr
    r = kc("run", img, "/shapes/crlf.sh")
    assert r.returncode == 1 and "exec /shapes/crlf.sh: no such file or directory" in r.stderr
    r = kc("run", "--force", img, "/shapes/crlf.sh")
    assert r.returncode != 0
    r = kc("run", img, "/shapes/c5")
    assert r.returncode == 0 and r.stdout.strip() == "chain", r.stderr


@pytest.mark.integration
def test_run_validates_options_before_pulling() -> None:
    """Nothing listens on 127.0.0.1:9: a bad option must fail first (exit 2, not 5)."""
    for bad in (["--network", "bridge"], ["-w", "relative"], ["--rootfs-mode", "x"],
                ["-e", "BAD KEY=1"], ["--kernel", "abc"], ["-u", "a b"]):  # fmt: skip
        r = kc("run", *bad, "docker://127.0.0.1:9/nothing:1", "true", timeout=60)
        assert r.returncode == 2, (bad, r.stderr)


@pytest.mark.integration
def test_arm64_only_index_is_judged_emulated(registry: RealRegistry) -> None:
    if shutil.which("qemu-aarch64-static") is None:
        pytest.skip("needs qemu-user-static")
    ref = f"docker://{registry.host}/busybox:arm64-only"
    code, rep = check_json(ref, "--kernel", "6.1", "--arch", "amd64")
    assert code == 0 and rep["verdict"] == "emulated", rep["findings"]
    assert rep["image"]["platform"].startswith("linux/arm64")
    assert "emulated" in rep["image"]["chosen_because"]
    code, rep = check_json(ref, "--kernel", "6.1", "--arch", "amd64", "--no-binfmt")
    assert code == 1 and fatal(rep)["rule"] == "arch"
    code, rep = check_json("--host", ref)
    assert rep["verdict"] in ("emulated", "incompatible") and rep["image"]["chosen_because"]


@pytest.mark.integration
def test_windows_only_index_is_incompatible(registry: RealRegistry, tmp_path: Path) -> None:
    ref = f"docker://{registry.host}/windows:only"
    code, rep = check_json(ref)
    assert code == 1 and rep["verdict"] == "incompatible"
    first = rep["findings"][0]
    assert first["rule"] == "os" and "Windows" in first["explanation"] + first["fix"]
    assert "shares the host's kernel" in first["explanation"]
    assert not any(f["rule"].startswith("entrypoint") for f in rep["findings"])
    r = kc("check", "--format", "sarif", ref)
    sarif = json.loads(r.stdout)
    assert sarif["runs"][0]["results"][0]["ruleId"] == "os" and r.returncode == 1
    r = kc("run", ref, timeout=120)
    assert r.returncode == 10 and 'image operating system "windows"' in r.stderr
    r = kc("run", "--force", ref, timeout=120)
    assert r.returncode == 10
    # a platform the index lacks: still a valid report, with the error's exit status
    code, rep = check_json("--platform", "linux/s390x", ref)
    assert code == 3 and rep["verdict"] == "error" and rep["error"]["exit_code"] == 3


@pytest.mark.integration
def test_inspect_binaries_lists_pe_files_whatever_their_mode(tmp_path: Path) -> None:
    exe = REPO / ".fixtures" / "binaries" / "bin" / "cli-64.exe"
    if not exe.exists():
        pytest.skip("needs the binaries fixture (tests/fixtures/build_binaries.py)")
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(exe, root / "tool.exe")
    (root / "tool.exe").chmod(0o644)
    r = kc("scan", "--format", "json", str(root))
    paths = {b["path"]: b for b in json.loads(r.stdout)["binaries"]}
    assert paths["/tool.exe"]["format"] == "pe", r.stdout


@pytest.mark.integration
def test_skopeo_dir_layout_is_an_image(images: Fixtures, tmp_path: Path) -> None:
    dest = tmp_path / "copy"
    subprocess.run(["skopeo", "copy", "--quiet", images.oci("entry-echo"), f"dir:{dest}"],
                   check=True)  # fmt: skip
    code, rep = check_json(f"dir:{dest}")
    assert code == 0 and rep["entrypoint"]["argv"] == ["/bin/echo", "hello"]
    assert rep["image"]["digest"] and rep["verdict"] == "native"
    r = kc("inspect", "--format", "json", f"dir:{dest}")
    assert json.loads(r.stdout)["config"]["entrypoint"] == ["/bin/echo"]
    # a plain root filesystem stays one
    (tmp_path / "root" / "bin").mkdir(parents=True)
    shutil.copy("/bin/true", tmp_path / "root" / "bin" / "true")
    _, rep = check_json(f"dir:{tmp_path / 'root'}", "--", "/bin/true")
    assert rep["entrypoint"]["binary"] == "/bin/true"
    (dest / next(p.name for p in dest.iterdir() if len(p.name) == 64)).unlink()
    code, rep = check_json(f"dir:{dest}")
    assert code in (3, 6) and rep["verdict"] == "error"


def _static(tmp_path: Path, name: str, body: str) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc with static glibc (ci/setup installs gcc, libc6-dev)")
    src = tmp_path / f"{name}.c"
    src.write_text(body)
    out = tmp_path / "root" / "bin" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(src)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"gcc -static failed: {r.stderr.decode()[:200]}")
    return out


@pytest.mark.integration
def test_static_vsyscall_callers_and_readers(tmp_path: Path) -> None:
    _static(tmp_path, "vcall", "typedef long (*f)(long *);\n"
            "int main(void) { return ((f)0xffffffffff600400UL)(0) > 0 ? 0 : 1; }\n")  # fmt: skip
    _static(tmp_path, "vread", "int main(void) { return "
            "*(volatile unsigned char *)0xffffffffff600000UL == 0x48 ? 0 : 2; }\n")  # fmt: skip
    _static(tmp_path, "plain", "int main(void) { return 0; }\n")
    root = f"dir:{tmp_path / 'root'}"
    expected = {  # (program, mode): verdict  -- a call needs emulate or xonly, a read emulate
        ("vcall", "none"): "incompatible", ("vcall", "xonly"): "native",
        ("vcall", "emulate"): "native", ("vread", "none"): "incompatible",
        ("vread", "xonly"): "incompatible", ("vread", "emulate"): "native",
        ("plain", "none"): "native",
    }  # fmt: skip
    for (prog, mode), verdict in expected.items():
        _, rep = check_json(root, "--kernel", "6.1", "--arch", "amd64", "--vsyscall", mode,
                            "--", f"/bin/{prog}")  # fmt: skip
        assert rep["verdict"] == verdict, (prog, mode, rep["findings"])
        if verdict == "incompatible":
            f = fatal(rep)
            assert f["rule"] == "vsyscall" and f["exit_code"] == 139
            assert "0xffffffffff600" in " ".join(f["evidence"])
    # observed on this host: its mode decides (compat-facts: a read faults under xonly)
    from kcompat.target import probe_vsyscall

    mode = probe_vsyscall()
    r = subprocess.run([str(tmp_path / "root" / "bin" / "vread")], check=False)
    assert (r.returncode == -11) == (mode in ("xonly", "none"))


def _tar(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.integration
@needs_userns
def test_layer_warnings_are_shown_by_check_and_run(images: Fixtures, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    shutil.copytree(images.layout, layout)
    blob = _tar([("../escape", b"x"), ("ok", b"y")])
    img = append_layer(layout, "busybox-amd64", "hostile", blob,
                       "sha256:" + hashlib.sha256(blob).hexdigest(),
                       "application/vnd.oci.image.layer.v1.tar")  # fmt: skip
    code, rep = check_json(img, "--", "true")
    warn = next(f for f in rep["findings"] if f["rule"] == "layer-entries")
    assert warn["severity"] == "warning" and "escape" in " ".join(warn["evidence"])
    assert code == 0 and rep["verdict"] == "native"
    r = kc("run", img, "true")
    assert r.returncode == 0 and "escape" in r.stderr, r.stderr
    assert not (tmp_path / "escape").exists()
