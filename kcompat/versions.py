"""Kernel, glibc and Go version strings ("4.11", "2.6.32", "1.24") as comparable keys."""

from __future__ import annotations


def version_key(version: str) -> tuple[int, ...]:
    """ "4.11" -> (4, 11); raises ValueError on anything but dot-separated numbers."""
    return tuple(int(x) for x in version.split("."))
