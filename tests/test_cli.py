"""The CLI as a user meets it: one-line errors and distinct exit codes."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kcompat.errors import ExitCode
from tests.conftest import Fixtures
from tests.registry_server import RealRegistry


def kcompat(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kcompat", *args], capture_output=True, text=True, timeout=120
    )


def _one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("kcompat: error: ")
    return lines[0]


def test_malformed_reference_exit_2() -> None:
    r = kcompat("inspect", "Bad/Name:")
    assert r.returncode == ExitCode.USAGE
    assert "'Bad/Name:'" in _one_line_error(r)


def test_bad_platform_exit_2(images: Fixtures) -> None:
    r = kcompat("inspect", "--platform", "sparc", images.oci("busybox-multi"))
    assert r.returncode == ExitCode.USAGE and "unknown architecture 'sparc'" in _one_line_error(r)


def test_unknown_option_is_usage() -> None:
    r = kcompat("inspect", "--nope", "x")
    assert r.returncode == ExitCode.USAGE


@pytest.mark.integration
def test_exit_codes_against_registry(registry: RealRegistry, auth_registry: RealRegistry) -> None:
    r = kcompat("inspect", f"{registry.host}/busybox:missing")
    assert r.returncode == ExitCode.NOT_FOUND and "not found" in _one_line_error(r)
    r = kcompat("inspect", f"{auth_registry.host}/private/busybox:1")
    assert r.returncode == ExitCode.AUTH and "--creds" in _one_line_error(r)
    r = kcompat("inspect", "127.0.0.1:9/x:1")
    assert r.returncode == ExitCode.NETWORK and "cannot reach" in _one_line_error(r)
    r = kcompat("inspect", "--platform", "riscv64", f"{registry.host}/busybox:multi")
    assert r.returncode == ExitCode.NOT_FOUND and "available:" in _one_line_error(r)
    r = kcompat("inspect", "--creds", "alice:wonderland", f"{auth_registry.host}/private/busybox:1")
    assert r.returncode == 0, r.stderr


@pytest.mark.integration
def test_inspect_json_and_text(registry: RealRegistry) -> None:
    r = kcompat(
        "inspect",
        "--format",
        "json",
        "--platform",
        "linux/arm64",
        f"docker://{registry.host}/busybox:multi",
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["architecture"] == "arm64" and len(doc["index"]["platforms"]) == 4
    assert doc["config"]["cmd"] == ["/bin/sh"]
    r = kcompat("inspect", f"{registry.host}/busybox:amd64")
    assert r.returncode == 0 and "Platform:     linux/amd64" in r.stdout


@pytest.mark.integration
def test_pull_unpack_prints_rootfs(registry: RealRegistry) -> None:
    r = kcompat("pull", "--unpack", "--platform", "s390x", f"{registry.host}/busybox:multi-docker")
    assert r.returncode == 0, r.stderr
    root = Path(r.stdout.splitlines()[-1].split(" ", 1)[1])
    assert (root / "bin" / "busybox").is_file()


@pytest.mark.integration
def test_integrity_failure_exit_code(images: Fixtures, tmp_path: Path) -> None:
    import shutil

    layout = tmp_path / "layout"
    shutil.copytree(images.layout, layout)
    index = json.loads((layout / "index.json").read_text())
    entry = next(
        m
        for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == "busybox-amd64"
    )
    manifest = layout / "blobs" / "sha256" / entry["digest"].split(":")[1]
    manifest.write_bytes(manifest.read_bytes() + b" ")
    r = kcompat("inspect", f"oci:{layout}:busybox-amd64")
    assert r.returncode == ExitCode.INTEGRITY and "digest" in _one_line_error(r)


@pytest.mark.parametrize("command", ["pull", "inspect", "scan", "check", "host", "run", "binfmt"])
def test_every_command_has_working_help(command: str) -> None:
    """Help texts hold brackets ("OS/ARCH[/VARIANT]") that rich markup would choke on."""
    from typer.testing import CliRunner

    from kcompat.cli import app

    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    if command in ("pull", "inspect", "check", "run"):
        assert "OS/ARCH[/VARIANT]" in result.output.replace("\n", "")


def test_shell_conventions(images: Fixtures, tmp_path: Path) -> None:
    """-h as --help for every command; $DOCKER_DEFAULT_PLATFORM as docker honours it;
    inspect shows the image's creation time and labels, as skopeo inspect does."""
    for cmd in ((), ("check",), ("run",), ("inspect",), ("pull",), ("scan",), ("host",),
                ("binfmt", "list")):  # fmt: skip
        r = kcompat(*cmd, "-h")
        assert r.returncode == 0 and "Usage:" in r.stdout, (cmd, r.stderr)
    env = {**__import__("os").environ, "DOCKER_DEFAULT_PLATFORM": "linux/arm64"}
    r = subprocess.run([sys.executable, "-m", "kcompat", "inspect", "--format", "json",
                        images.oci("busybox-multi")], capture_output=True, text=True,
                       env=env)  # fmt: skip
    assert json.loads(r.stdout)["architecture"] == "arm64", r.stderr
    img = images.relabelled(tmp_path, "--config.label", "org.example.team=infra")
    rep = json.loads(kcompat("inspect", "--format", "json", img).stdout)
    assert rep["labels"] == {"org.example.team": "infra"} and rep["created"]
    assert "org.example.team=infra" in kcompat("inspect", img).stdout


def test_scan_judges_a_root_only_when_asked(tmp_path: Path) -> None:
    (tmp_path / "tool").write_text("#!/usr/bin/python3\nprint()\n")
    (tmp_path / "tool").chmod(0o755)
    plain = json.loads(kcompat("scan", "--format", "json", str(tmp_path)).stdout)
    assert plain["summary"]["missing_interpreters"] == []
    assert plain["binaries"][0]["interpreter_found"] is None
    as_root = json.loads(kcompat("scan", "--root", "--format", "json", str(tmp_path)).stdout)
    assert as_root["summary"]["missing_interpreters"] == ["/tool"]


@pytest.mark.integration
def test_inspect_raw_and_config_match_skopeo(images: Fixtures) -> None:
    import shutil

    if shutil.which("skopeo") is None:
        pytest.skip("needs skopeo (installed by ci/setup)")
    for ref, flags in ((images.oci("busybox-multi"), ["--raw"]),
                       (images.oci("busybox-amd64"), ["--config", "--raw"])):  # fmt: skip
        theirs = subprocess.run(["skopeo", "inspect", *flags, ref], capture_output=True,
                                check=True).stdout  # fmt: skip
        ours = subprocess.run(
            [sys.executable, "-m", "kcompat", "inspect", "--config" if "--config" in flags
             else "--raw", ref], capture_output=True, check=True).stdout  # fmt: skip
        assert ours == theirs
    r = kcompat("inspect", "--raw", "--config", images.oci("busybox-amd64"))
    assert r.returncode == 2


@pytest.mark.integration
def test_quiet_drops_warnings_not_errors(images: Fixtures) -> None:
    import os

    env = {**os.environ, "KCOMPAT_MAX_FILE_SIZE": "1000"}  # refuses busybox: a warning
    img = images.oci("busybox-amd64")
    loud = subprocess.run([sys.executable, "-m", "kcompat", "pull", "--unpack", img],
                          capture_output=True, text=True, env=env)  # fmt: skip
    quiet = subprocess.run([sys.executable, "-m", "kcompat", "-q", "pull", "--unpack", img],
                           capture_output=True, text=True, env=env)  # fmt: skip
    assert "warning" in loud.stderr and quiet.stderr == "" and quiet.returncode == 0
    r = kcompat("-q", "inspect", "oci:/nonexistent")
    assert r.returncode == 3 and "kcompat: error:" in r.stderr


# -- the matrix: many images x many targets ------------------------------------------------

MATRIX_SCHEMA = json.loads(
    (Path(__file__).resolve().parents[1] / "kcompat" / "data" / "matrix.schema.json").read_text()
)
REPORT_SCHEMA = json.loads(
    (Path(__file__).resolve().parents[1] / "ci" / "report.schema.json").read_text()
)


def _valid_matrix(doc: dict[str, object]) -> None:
    """The matrix schema, with every cell's report checked by the report schema it
    refers to (by $id, as a validator with both files finds it)."""
    import jsonschema
    from referencing import Registry, Resource

    registry = Registry().with_resource(REPORT_SCHEMA["$id"], Resource.from_contents(REPORT_SCHEMA))
    jsonschema.Draft202012Validator(MATRIX_SCHEMA, registry=registry).validate(doc)


def _matrix(*args: str) -> tuple[int, dict[str, Any]]:
    r = kcompat("check", "--format", "json", *args)
    doc = json.loads(r.stdout)
    _valid_matrix(doc)
    return r.returncode, doc


@pytest.mark.integration
def test_matrix_each_image_on_each_target(images: Fixtures) -> None:
    """--image (repeated) x (--target FILE, --kernel K): one document, each cell the very
    report `check IMAGE` on that one target gives; the worst verdict sets the status."""
    import copy

    import jsonschema

    amd64, arm64 = images.oci("busybox-amd64"), images.oci("busybox-arm64")
    profile = str(Path(__file__).resolve().parents[1] / "ci" / "prod-host.json")
    targets = ["--target", profile, "--kernel", "6.1", "--no-binfmt"]
    code, doc = _matrix("--image", amd64, "--image", arm64, *targets)
    assert doc["images"] == [amd64, arm64] and len(doc["targets"]) == 2
    assert [(c["image"], c["target"]) for c in doc["cells"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for c in doc["cells"]:
        alone = ["--target", profile] if c["target"] == 0 else ["--kernel", "6.1", "--no-binfmt"]
        r = kcompat("check", "--format", "json", *alone, doc["images"][c["image"]])
        single = json.loads(r.stdout)
        assert c["verdict"] == single["verdict"] == c["report"]["verdict"]
        assert c["exit_code"] == r.returncode
        assert c["report"]["findings"] == single["findings"]
    arm = [c for c in doc["cells"] if c["image"] == 1]
    assert all(c["verdict"] == "incompatible" and "arm64" in c["reason"] for c in arm)
    assert doc["verdict"] == "incompatible" and code == doc["exit_code"] == 1
    broken = copy.deepcopy(doc)
    del broken["cells"][0]["report"]["verdict"]
    with pytest.raises(jsonschema.ValidationError):  # the reports are checked too
        _valid_matrix(broken)
    text = kcompat("check", "--image", amd64, "--image", arm64, *targets)
    assert text.returncode == 1
    lines = text.stdout.splitlines()
    assert lines[0].startswith("IMAGE") and "prod-host.json" in lines[0] and "6.1" in lines[0]
    row = next(line for line in lines if line.startswith(arm64))
    assert row.count("incompatible [") == 2
    assert any(line.startswith("[1] ") for line in lines) and "Worst: INCOMPATIBLE" in text.stdout


@pytest.mark.integration
def test_matrix_errors_are_cells_and_commands_apply_to_each(images: Fixtures) -> None:
    amd64, missing = images.oci("busybox-amd64"), images.oci("no-such-ref")
    code, doc = _matrix("--image", amd64, "--image", missing, "--kernel", "5.10",
                        "--kernel", "6.1", "--", "/bin/busybox", "true")  # fmt: skip
    assert code == ExitCode.NOT_FOUND == doc["exit_code"] and doc["verdict"] == "error"
    for c in doc["cells"]:
        if c["image"] == 1:
            assert c["verdict"] == "error" and "no-such-ref" in c["reason"]
        else:
            assert c["verdict"] == "native"
            assert c["report"]["entrypoint"]["argv"] == ["/bin/busybox", "true"]
    code, doc = _matrix("--image", amd64, "--target", "/nonexistent.json", "--kernel", "5.10")
    assert code == ExitCode.NOT_FOUND == doc["exit_code"] and doc["cells"] == [] and doc["error"]
    r = kcompat("check", "--verify", "--image", amd64, "--kernel", "5.10", "--kernel", "6.1")
    assert r.returncode == ExitCode.USAGE and "--verify" in r.stderr


@pytest.mark.integration
def test_single_image_meaning_is_unchanged(images: Fixtures) -> None:
    """`check IMAGE [CMD...]`: the words after IMAGE replace Cmd (docker's meaning),
    with or without `--`; one target gives one report, not a matrix."""
    img = images.oci("busybox-amd64")
    for words in (["/bin/busybox", "true"], ["--", "/bin/busybox", "true"]):
        r = kcompat("check", "--format", "json", img, *words)
        rep = json.loads(r.stdout)
        assert rep["entrypoint"]["argv"] == ["/bin/busybox", "true"] and "cells" not in rep
    r = kcompat("check", "--format", "json", "--image", img)  # one image, one target
    assert "cells" not in json.loads(r.stdout)


@pytest.mark.integration
def test_matrix_sarif_has_a_run_per_cell(images: Fixtures) -> None:
    import jsonschema

    schema = json.loads(
        (Path(__file__).resolve().parents[1] / "tests" / "data" / "sarif-2.1.0.schema.json")
        .read_text()
    )
    pair = ["--image", images.oci("busybox-amd64"), "--image", images.oci("busybox-arm64")]
    r = kcompat("check", "--format", "sarif", *pair, "--kernel", "6.1", "--no-binfmt")
    doc = json.loads(r.stdout)
    jsonschema.Draft4Validator(schema).validate(doc)
    assert len(doc["runs"]) == 2 and r.returncode == 1
    assert [run["properties"]["verdict"] for run in doc["runs"]] == ["native", "incompatible"]


# -- colour, progress, completion, version, help ----------------------------------------------

SGR = re.compile(rb"\x1b\[[0-9;]*m")  # a colour or style: what NO_COLOR forbids


def _on_a_tty(*args: str, env: dict[str, str] | None = None, stdout_tty: bool = True,
              ) -> tuple[int, bytes, bytes]:  # fmt: skip
    """Run kcompat with stderr (and stdout, unless told) on a pseudo-terminal."""
    import os
    import pty

    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "kcompat", *args], stdin=subprocess.DEVNULL,
                         stdout=slave if stdout_tty else subprocess.PIPE, stderr=slave,
                         env=env)  # fmt: skip
    os.close(slave)
    tty = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other end is closed
            break
        if not chunk:
            break
        tty += chunk
    out = p.stdout.read() if p.stdout else b""
    p.wait(timeout=120)
    os.close(master)
    return p.returncode, tty, out


@pytest.mark.integration
def test_colour_only_on_a_terminal_and_never_with_no_color(images: Fixtures) -> None:
    import os

    img = images.oci("busybox-arm64")
    args = ("check", "--kernel", "6.1", "--no-binfmt", img)
    code, tty, _ = _on_a_tty(*args)
    assert code == 1 and SGR.search(tty) and b"INCOMPATIBLE" in tty
    for env in ({**os.environ, "NO_COLOR": "1"}, {**os.environ, "TERM": "dumb"}):
        code, tty, _ = _on_a_tty(*args, env=env)
        assert code == 1 and not SGR.search(tty) and b"INCOMPATIBLE" in tty
    code, tty, _ = _on_a_tty("--no-color", *args)
    assert not SGR.search(tty) and b"INCOMPATIBLE" in tty
    code, tty, _ = _on_a_tty(*args, env={**os.environ, "NO_COLOR": ""})  # empty: not set
    assert SGR.search(tty)
    piped = kcompat(*args)
    assert b"\x1b" not in piped.stdout.encode() and b"\x1b" not in piped.stderr.encode()
    code, tty, _ = _on_a_tty("-q", "check", "--format", "json", "--kernel", "6.1", img)
    assert b"\x1b" not in tty and json.loads(tty)["verdict"]  # JSON is never coloured
    code, tty, _ = _on_a_tty("inspect", "oci:/nonexistent:x")
    assert code == 3 and SGR.search(tty) and b"kcompat: error:" in tty


@pytest.mark.integration
def test_progress_on_a_terminal_only(registry: RealRegistry) -> None:
    """check's downloads (made while it scans, in worker processes) and its scan show on
    a terminal's stderr; nothing with -q or in a pipe."""
    ref = f"{registry.host}/busybox:multi"
    layers = json.loads(kcompat("inspect", "--format", "json", ref).stdout)["layers"]
    code, tty, out = _on_a_tty("check", ref, stdout_tty=False)
    assert code == 0 and b"Verdict:" in out, tty
    assert b"checking " + ref.encode() in tty
    assert any(layer["digest"].split(":")[1][:12].encode() in tty for layer in layers), tty
    import os

    fresh = {**os.environ, "KCOMPAT_CACHE": os.environ["KCOMPAT_CACHE"] + "-2"}
    code, tty, out = _on_a_tty("-q", "check", ref, stdout_tty=False, env=fresh)
    assert code == 0 and tty == b""
    assert kcompat("check", ref).stderr == ""


def test_version() -> None:
    from kcompat import __version__

    for args in (["--version"], ["--version", "check"]):
        r = kcompat(*args)
        assert r.returncode == 0 and r.stdout == f"{__version__}\n", (args, r.stderr)


def test_shell_completion(tmp_path: Path) -> None:
    """typer's completion: a script for the shell, and answers for a partial line."""
    import os

    # typer (with shellingham installed) takes the shell from the parent process, not from
    # an argument: so bash runs it, and stays its parent (the `; exit` keeps bash from exec)
    shown = f"{shlex.quote(sys.executable)} -m kcompat --show-completion; exit $?"
    r = subprocess.run(["bash", "-c", shown], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "_KCOMPAT_COMPLETE=complete_bash" in r.stdout, r.stderr
    assert "complete -o default -F _kcompat_completion kcompat" in r.stdout

    def complete(line: str) -> list[str]:
        words = line.split(" ")
        env = {**os.environ, "_KCOMPAT_COMPLETE": "complete_bash", "COMP_WORDS": line,
               "COMP_CWORD": str(len(words) - 1)}  # fmt: skip
        out = subprocess.run([sys.executable, "-m", "kcompat"], env=env, capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
        return out.split()

    assert complete("kcompat ch") == ["check"]
    assert complete("kcompat check --format ") == ["text", "json", "sarif"]
    assert complete("kcompat run --runtime ") == ["docker", "podman"]
    env = {**os.environ, "HOME": str(tmp_path), "SHELL": "/bin/bash"}
    r = subprocess.run([sys.executable, "-m", "kcompat", "--install-completion", "bash"],
                       env=env, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "kcompat" in (tmp_path / ".bashrc").read_text()


def _all_commands() -> list[tuple[list[str], Any]]:
    import typer.main

    from kcompat.cli import app

    root = typer.main.get_command(app)
    found: list[tuple[list[str], Any]] = [([], root)]
    for name, cmd in root.commands.items():  # type: ignore[attr-defined]
        found.append(([name], cmd))
        for sub, subcmd in getattr(cmd, "commands", {}).items():
            found.append(([name, sub], subcmd))
    return found


def test_help_explains_every_option_without_metavar_noise() -> None:
    """Every option and argument of every command has a help text, and `--help` shows
    names (IMAGE, FILE, text|json), never the parser's types (<str>, <list[str]>) or
    braces ({image})."""
    from typer.testing import CliRunner

    from kcompat.cli import app

    noise = re.compile(r"<[^>\n]*>|\{[^}\n]*\}")
    for path, cmd in _all_commands():
        for param in cmd.params:
            assert (param.help or "").strip(), (path, param.name, "has no help text")
        out = CliRunner().invoke(app, [*path, "--help"]).output
        assert "Usage: " in out and not noise.search(out), (path, noise.findall(out))
        if path[:1] in (["check"], ["run"]):
            assert "IMAGE" in out.splitlines()[0]
