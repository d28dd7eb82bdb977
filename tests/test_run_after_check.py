"""`run` after `check` of the same image adds no analysis of its own to the cache (issue
19): `check` leaves the image's analysis (ResultCache "images") and its layers' scans
("scans"); `run` judges the image with the same pipeline, finds both there, and adds
only what running needs (the image's blobs, its flattened rootfs, their locks) and its
verdict for its own target (a report: the judgement's result, not analysis)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Fixtures
from tests.registry_server import RealRegistry

pytestmark = pytest.mark.integration

ANALYSIS = ("images", "scans")  # the ResultCache kinds an image's judgement writes
# what a run adds: content, the flattened tree, and the report of its own prediction
# (kcompat.check caches reports under "reports"; run's target is not check's)
RUNNING = ("blobs", "rootfs", "locks", "reports")


def _userns_ok() -> bool:
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "--user", "--map-root-user", "true"], capture_output=True)
    return r.returncode == 0


def kc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kcompat", *args], capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip


def entries(cache: Path) -> dict[str, int]:
    """Every file in the cache, by path relative to it, with its mtime (ns)."""
    out = {}
    for dirpath, _dirs, files in os.walk(cache):
        for name in files:
            path = Path(dirpath) / name
            out[str(path.relative_to(cache))] = path.stat().st_mtime_ns
    return out


def _kind(rel: str) -> str:
    return rel.split(os.sep, 1)[0]


def check_then_run(ref: str, cache: Path, *run_args: str) -> None:
    r = kc("check", ref)
    assert r.returncode == 0, r.stderr
    checked = entries(cache)
    made = {k: sum(_kind(p) == k for p in checked) for k in ANALYSIS}
    assert all(made.values()), f"check left no analysis in {cache}: {made}"

    r = kc("run", *run_args, ref, "--", "true")
    assert r.returncode == 0, r.stderr
    ran = entries(cache)
    added = sorted(p for p in ran.keys() - checked.keys() if _kind(p) not in RUNNING)
    assert not added, f"run added to the cache: {added}"
    rewritten = sorted(p for p in checked.keys() & ran.keys()
                       if _kind(p) in ANALYSIS and ran[p] != checked[p])  # fmt: skip
    assert not rewritten, f"run rewrote: {rewritten}"
    assert any(_kind(p) == "rootfs" for p in ran.keys() - checked.keys())  # it did run


needs_userns = pytest.mark.skipif(not _userns_ok(), reason="user namespaces are not available")


@needs_userns
@pytest.mark.parametrize(
    ("image", "args"),
    [
        ("busybox-amd64", ()),
        ("glibc-amd64", ()),  # a dynamic program: library closures in the analysis
        ("busybox-arm64", ()),  # under qemu-user
        ("glibc-amd64", ("--kernel", "4.19")),  # judged again for the simulated kernel
    ],
)
def test_run_after_check_adds_no_analysis(
    images: Fixtures, _private_cache: Path, image: str, args: tuple[str, ...]
) -> None:
    if image.endswith("arm64") and shutil.which("qemu-aarch64-static") is None:
        pytest.skip("needs qemu-user-static (installed by ci/setup)")
    check_then_run(images.oci(image), _private_cache, *args)


@needs_userns
def test_run_after_check_from_a_registry_index(
    registry: RealRegistry, _private_cache: Path
) -> None:
    """From a registry: check streams the layers, run pulls them; the host's entry of
    the index is the one both judge."""
    check_then_run(f"{registry.host}/busybox:multi", _private_cache)


# What a warm `check` or `run` (its report cached) must not import: the scanner, the ELF
# decoder, the disassembler, the analysis and the rules (bench/speed.py's start-up
# figures depend on it; the modules are named, not timed).
HEAVY = ("kcompat.elf", "kcompat.scan", "kcompat.filescan", "kcompat.disasm",
         "kcompat.analysis", "kcompat.rules", "kcompat.knowledge", "capstone")  # fmt: skip


def _imported(*args: str) -> set[str]:
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "kcompat", *args],
                       capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}  # fmt: skip


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules
                  if m in HEAVY or m.startswith(("kcompat.rules.", "capstone.")))  # fmt: skip


@needs_userns
def test_a_warm_check_and_run_import_no_scanner(images: Fixtures, _private_cache: Path) -> None:
    """A control first: the cold check imports them. Then the warm check, and the second
    `run` (the first judges for run's own target from the cached analysis, whose
    unpickling imports its classes), import none of them."""
    ref = images.oci("busybox-amd64")
    assert {"kcompat.elf", "kcompat.analysis"} <= set(_heavy(_imported("check", ref)))
    assert _heavy(_imported("check", ref)) == []
    _imported("run", ref, "true")
    assert _heavy(_imported("run", ref, "true")) == []
