"""Helpers several rules share."""

from __future__ import annotations

from kcompat.facts import ImageFacts


def glibc_of(facts: ImageFacts) -> tuple[str | None, str | None, str | None]:
    """(glibc version, its minimum kernel from ld.so/libc.so.6's ABI tag, evidence path)."""
    for c in facts.libc:
        if c.family == "glibc":
            f = facts.scan.files.get(c.path)
            tag = f.elf.abi_tag if f and f.elf else None
            return c.version, tag, c.path
    return None, None, None
