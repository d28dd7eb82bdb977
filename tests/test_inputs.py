"""Every input checked: one exit status per kind of failure (README "Exit codes"), a
one-line message naming the input and what to do, never a traceback; target profiles
validated against ci/profile.schema.json; local layouts verified where they live."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.conftest import Fixtures
from tests.layertools import append_cut_layer, append_layer
from tests.test_run import kc

REPO = Path(__file__).resolve().parents[1]
PROFILE_SCHEMA = json.loads((REPO / "ci" / "profile.schema.json").read_text())


def _one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in r.stderr.splitlines() if not line.startswith("kcompat: warning")]
    assert len(lines) == 1 and lines[0].startswith("kcompat: error: "), r.stderr
    assert "Traceback" not in r.stderr and "Errno" not in r.stderr
    return lines[0]


@pytest.mark.integration
def test_a_missing_input_is_exit_3_for_every_command(images: Fixtures, tmp_path: Path) -> None:
    img = images.oci("busybox-amd64")
    missing = str(tmp_path / "missing")
    commands = [
        ("scan", missing),
        ("check", "--target", f"{missing}.json", img),
        ("run", "--env-file", missing, img, "true"),
        ("run", "-v", f"{missing}:/x", img, "true"),
        ("run", "--security-opt", f"seccomp={missing}", img, "true"),
        ("run", "--profile", f"{missing}.json", img, "true"),
        ("inspect", f"oci:{missing}"),
        ("pull", f"oci:{missing}"),
        ("check", f"oci:{missing}"),
        ("check", f"dir:{missing}"),
        ("check", f"docker-archive:{missing}"),
        ("check", f"oci-archive:{missing}"),
        ("inspect", f"oci:{images.layout}:no-such-ref"),
    ]
    for args in commands:
        r = kc(*args)
        assert r.returncode == 3, (args, r.returncode, r.stderr)
        line = _one_line_error(r)
        assert missing in line or "no-such-ref" in line, (args, line)


def test_values_that_cannot_be_right_are_usage_errors() -> None:
    for args in (
        ("check", "--kernel", "0.0", "x"),
        ("check", "--kernel", "abc", "x"),
        ("inspect", "--platform", "", "x"),
        ("inspect", "--insecure-registry", "bad host", "x"),
        ("inspect", "localhost:99999/x"),
        ("scan", ""),
    ):
        r = kc(*args)
        assert r.returncode == 2, (args, r.stderr)
        _one_line_error(r)


def test_special_files_are_not_scanned(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    r = kc("scan", str(fifo))  # would block forever if opened
    assert r.returncode == 2 and "FIFO" in _one_line_error(r)


def test_a_huge_sparse_file_is_scanned_without_reading_it(tmp_path: Path) -> None:
    big = tmp_path / "core"
    with big.open("wb") as f:
        f.write(Path("/bin/true").read_bytes())
        f.truncate(2 << 30)  # 2 GiB, nearly all of it a hole
    # the scan's peak RSS, measured by a parent of its own (getrusage of its one child)
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], "
             "capture_output=True); print(r.returncode, "
             "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "kcompat", "scan",
                        "--format", "json", str(big)], capture_output=True, text=True)  # fmt: skip
    code, peak_kb = map(int, r.stdout.split())
    assert code == 0, r.stderr
    assert peak_kb < 512 * 1024, peak_kb  # far below the file's size


@pytest.mark.integration
def test_a_closed_pipe_ends_quietly(binaries: Any) -> None:
    # `true` closes the pipe at once: every write kcompat makes meets the closed end
    r = subprocess.run(
        f"{sys.executable} -m kcompat inspect --binaries --format json {binaries.bullseye}"
        " | true;"
        " echo status ${PIPESTATUS[0]}", shell=True, executable="/bin/bash",
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.stdout.splitlines()[-1] == "status 141" and r.stderr == ""


def _profile(tmp_path: Path, **changes: Any) -> Path:
    base: dict[str, Any] = {"schema": 1, "source": "host", "kernel": "5.10.0",
                            "platform": "linux/amd64", "vsyscall": "xonly"}  # fmt: skip
    base.update(changes)
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(base))
    return path


@pytest.mark.integration
def test_profiles_are_validated(images: Fixtures, tmp_path: Path) -> None:
    img = images.oci("busybox-amd64")
    cases = {
        "absent_syscalls": ("getrandom,clone3", "a list of syscall names"),
        "vsyscall": ("bogus", "one of"),
        "runtimes": ({"docker": "abc"}, "a version string"),
        "kernel": (310, "a kernel version string"),
    }
    for field, (value, expected) in cases.items():
        path = _profile(tmp_path, **{field: value})
        r = kc("check", "--target", str(path), img)
        line = _one_line_error(r)
        assert r.returncode == 2, (field, line)
        assert str(path) in line and field in line and expected in line, line
        assert "--kernel" not in line
    r = kc("check", "--target", str(_profile(tmp_path, kernel="abc")), img)
    assert r.returncode == 2 and "--kernel" not in r.stderr
    # a valid one passes, and what `host --save` writes is valid by the schema
    assert kc("check", "--target", str(_profile(tmp_path)), img).returncode == 0
    saved = tmp_path / "saved.json"
    assert kc("host", "--save", str(saved)).returncode == 0
    jsonschema.validate(json.loads(saved.read_text()), PROFILE_SCHEMA)


@pytest.mark.integration
def test_probed_absent_syscalls_are_said_as_observed(binaries: Any, tmp_path: Path) -> None:
    path = _profile(tmp_path, kernel="6.1.0", absent_syscalls=["getrandom", "clone3"])
    r = kc("check", "--format", "json", "--target", str(path), binaries.bullseye, "--",
           "apt-get", "--version")  # fmt: skip
    rep = json.loads(r.stdout)
    text = json.dumps([f for f in rep["findings"] if "getrandom" in json.dumps(f)])
    assert "absent on the target" in text and "newer than 6.1" not in text, text
    assert "the newest needed" not in text


def _layer_blob(layout: Path, ref: str) -> Path:
    index = json.loads((layout / "index.json").read_text())
    name = "org.opencontainers.image.ref.name"
    desc = next(m for m in index["manifests"] if m.get("annotations", {}).get(name) == ref)
    manifest = json.loads((layout / "blobs" / "sha256" / desc["digest"][7:]).read_text())
    return layout / "blobs" / "sha256" / manifest["layers"][0]["digest"][7:]


@pytest.mark.integration
def test_local_layouts_are_verified(images: Fixtures, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    shutil.copytree(images.layout, layout)
    img = f"oci:{layout}:busybox-amd64"
    assert kc("check", img).returncode == 0  # judged, and cached
    blob = _layer_blob(layout, "busybox-amd64")
    blob.chmod(stat.S_IMODE(blob.stat().st_mode) | 0o200)
    good = blob.read_bytes()
    with blob.open("r+b") as f:  # same size, other content
        f.seek(100)
        f.write(bytes([good[100] ^ 0xFF]))
    r = kc("pull", img)
    assert r.returncode == 6 and blob.name in _one_line_error(r)
    blob.write_bytes(good[:1000])  # truncated: check must not answer from its cache
    r = kc("check", img)
    assert r.returncode == 6 and "1000 bytes" in _one_line_error(r)
    blob.unlink()
    for cmd in ("check", "pull"):
        r = kc(cmd, img)
        assert r.returncode == 3 and "is missing" in _one_line_error(r), cmd


def test_host_save_on_a_read_only_file_system(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
    else:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)],
                           capture_output=True)  # fmt: skip
        if r.returncode != 0:
            pytest.skip("cannot mount a read-only tmpfs here")
    try:
        r = kc("host", "--save", str(ro / "p.json"))
        assert r.returncode == 9 and str(ro) in _one_line_error(r)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)], check=False)


@pytest.mark.integration
def test_archives_cut_short_are_bad_images(images: Fixtures, tmp_path: Path) -> None:
    for kind, name in (("docker-archive", "busybox-amd64.docker.tar"),
                       ("oci-archive", "busybox-amd64.oci.tar")):  # fmt: skip
        whole = (images.root / name).read_bytes()
        for cut in (0, 3000, len(whole) // 2):
            part = tmp_path / f"{cut}-{name}"
            part.write_bytes(whole[:cut])
            r = kc("check", f"{kind}:{part}")
            assert r.returncode == 7, (kind, cut, r.stderr)
            assert str(part) in _one_line_error(r)


@pytest.mark.integration
def test_an_interrupt_says_interrupted(binaries: Any, tmp_path: Path) -> None:
    import signal
    import time

    for delay in (0.2, 1.0):  # while importing, and while scanning
        env = dict(os.environ, KCOMPAT_CACHE=str(tmp_path / f"cache-{delay}"))
        p = subprocess.Popen(
            [sys.executable, "-m", "kcompat", "check", binaries.bullseye],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
        if p.returncode == 0:
            continue  # it finished first
        assert p.returncode == 130 and "Traceback" not in err, err
        assert err.strip().endswith("kcompat: interrupted"), err


@pytest.mark.integration
def test_a_size_limit_is_part_of_every_cache_key(images: Fixtures) -> None:
    img = images.oci("busybox-amd64")
    env = dict(os.environ, KCOMPAT_MAX_FILE_SIZE="1000")
    r = subprocess.run([sys.executable, "-m", "kcompat", "check", "--format", "json", img],
                       capture_output=True, text=True, env=env)  # fmt: skip
    rep = json.loads(r.stdout)
    fatal = next(f for f in rep["findings"] if f["severity"] == "fatal")
    assert "bin/busybox" in fatal["explanation"] and "KCOMPAT_MAX_FILE_SIZE" in fatal["explanation"]
    r = kc("check", "--format", "json", img)  # the same cache, the default limit
    assert json.loads(r.stdout)["verdict"] == "native"
    r = subprocess.run([sys.executable, "-m", "kcompat", "pull", "--unpack", img],
                       capture_output=True, text=True, env=env)  # fmt: skip
    limited = r.stdout.split()[-1]
    r = kc("pull", "--unpack", img)
    assert r.stdout.split()[-1] != limited
    assert (Path(r.stdout.split()[-1]) / "bin" / "busybox").is_file()
    bad = dict(os.environ, KCOMPAT_MAX_FILE_SIZE="abc")
    r = subprocess.run([sys.executable, "-m", "kcompat", "check", img], capture_output=True,
                       text=True, env=bad)  # fmt: skip
    assert r.returncode == 2 and "KCOMPAT_MAX_FILE_SIZE" in _one_line_error(r)


@pytest.mark.integration
def test_layer_faults_are_said_in_words(images: Fixtures, tmp_path: Path) -> None:
    import gzip
    import hashlib
    import io
    import tarfile

    layout = tmp_path / "layout"
    shutil.copytree(images.layout, layout)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hl2")
        info.type, info.linkname = tarfile.LNKTYPE, "shadow"  # a link to nothing
        tar.addfile(info)
    raw = buf.getvalue()
    dangling = append_layer(layout, "busybox-amd64", "dangling", gzip.compress(raw),
                           "sha256:" + hashlib.sha256(raw).hexdigest())  # fmt: skip
    cut, _ = append_cut_layer(layout, "busybox-amd64", "cut", 200_000)
    r = kc("pull", "--unpack", dangling)
    assert r.returncode == 0 and "no such file or directory" in r.stderr, r.stderr
    for cmd in ("check", "pull --unpack"):
        r = kc(*cmd.split(), cut)
        line = _one_line_error(r)
        assert r.returncode == 7 and "ends early" in line, line
        assert "Error" not in line.replace("kcompat: error", ""), line
