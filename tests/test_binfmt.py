"""The qemu/ binfmt_misc table: it matches exactly the arch of real binaries, its
generator reproduces it, and it reaches an installed package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kcompat.binfmt import BINFMT
from kcompat.elf import read_elf
from tests.conftest import Binaries

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_each_entry_matches_its_own_arch_only(binaries: Binaries) -> None:
    samples = {
        "amd64": binaries.bin("busybox-amd64"),
        "arm64": binaries.bin("busybox-arm64"),
        "arm": binaries.bin("busybox-armhf"),
        "s390x": binaries.bin("busybox-s390x"),
    }
    for arch, path in samples.items():
        data = path.read_bytes()
        assert read_elf(data).arch.platform.architecture == arch
        matched = [a for a, spec in BINFMT.items() if spec.matches(data[:64])]
        assert matched == [arch], path
    pie = Path("/bin/ls").read_bytes()[:64]  # ET_DYN: the mask lets PIE through too
    assert [a for a, s in BINFMT.items() if s.matches(pie)] == ["amd64"]


def test_register_line_and_flags() -> None:
    spec = BINFMT["arm64"]
    line = spec.register_line("/usr/bin/qemu-aarch64-static")
    assert line.startswith(":qemu-aarch64:M::\\x7f\\x45\\x4c\\x46")
    assert line.endswith(":/usr/bin/qemu-aarch64-static:FP")
    assert set(BINFMT) >= {"amd64", "386", "arm64", "arm", "ppc64le", "s390x", "riscv64",
                           "mips64le", "loong64"}  # fmt: skip


def test_generator_reproduces_the_table(tmp_path: Path) -> None:
    binfmts = Path("/usr/share/binfmts")
    if not (binfmts / "qemu-aarch64").is_file():
        pytest.skip("needs Debian's qemu-user-static (installed by ci/setup)")
    gen = (REPO / "qemu" / "generate.py").read_text()
    (tmp_path / "generate.py").write_text(gen)
    subprocess.run([sys.executable, str(tmp_path / "generate.py")], check=True,
                   capture_output=True)  # fmt: skip
    assert (tmp_path / "binfmt.json").read_text() == (REPO / "qemu" / "binfmt.json").read_text()
