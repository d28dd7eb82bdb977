"""The CLI as a user meets it: one-line errors and distinct exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
