from __future__ import annotations

import pytest

from kcompat.knowledge import KNOWLEDGE as K


@pytest.mark.parametrize(
    ("glibc", "arch", "kernel"),
    [
        ("2.17", "amd64", "2.6.16"),
        ("2.23", "amd64", "2.6.32"),
        ("2.24", "amd64", "2.6.32"),  # x86 kept 2.6.32 until 2.26
        ("2.24", "s390x", "3.2.0"),
        ("2.31", "amd64", "3.2.0"),  # Debian 11: ABI tag 3.2.0
        ("2.31", "arm64", "3.7.0"),
        ("2.36", "riscv64", "4.15.0"),
    ],
)
def test_glibc_default_min_kernel(glibc: str, arch: str, kernel: str) -> None:
    assert K.glibc_default_min_kernel(glibc, arch) == kernel


def test_kernel_too_old_check_and_vsyscall() -> None:
    assert K.glibc_checks_kernel_version("2.35") and not K.glibc_checks_kernel_version("2.36")
    assert K.glibc_needs_vsyscall("2.12") and not K.glibc_needs_vsyscall("2.14")


def test_go_min_kernel() -> None:
    assert K.go_min_kernel("1.18") == "2.6.23"
    assert K.go_min_kernel("1.23.4") == "2.6.32"
    assert K.go_min_kernel("1.24") == "3.2"


def test_fallbacks() -> None:
    clone3 = K.fallback_for("clone3", "2.36")
    assert clone3 is not None and clone3.kernel == "5.3"
    assert K.fallback_for("clone3", "2.33") is None  # 2.33 does not call clone3 at all
    assert (
        K.fallback_for("copy_file_range", "2.36") is None
    )  # no fallback: ENOSYS reaches the program
    assert K.fallback_for("getrandom", "2.40") is None
