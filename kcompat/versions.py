"""Kernel, glibc and Go version strings ("4.11", "2.6.32", "1.24") as comparable keys."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=4096)  # a handful of distinct strings, compared many thousand times
def version_key(version: str) -> tuple[int, ...]:
    """ "4.11" -> (4, 11, 0): missing parts are zero, so "3.2" == "3.2.0";
    raises ValueError on anything but dot-separated numbers."""
    parts = tuple(int(x) for x in version.split("."))
    return parts + (0,) * (3 - len(parts))
