"""The binfmt_misc table for qemu-user (qemu/binfmt.json, made by qemu/generate.py from
Debian's qemu-user-static files and QEMU's qemu-binfmt-conf.sh), loaded and validated
at import, and the kernel's own match: ((first bytes ^ magic) & mask) == 0."""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class BinfmtSpec:
    arch: str  # OCI
    qemu: str  # qemu-user's name: qemu-<qemu>-static
    magic: bytes
    mask: bytes
    flags: str
    source: str

    def matches(self, head: bytes) -> bool:
        """What the kernel checks before handing a file to the interpreter
        (fs/binfmt_misc.c: the bits the mask keeps must equal the magic's)."""
        n = len(self.magic)
        return len(head) >= n and all(
            (head[i] ^ self.magic[i]) & self.mask[i] == 0 for i in range(n)
        )

    def register_line(self, interpreter: str, name: str | None = None) -> str:
        """The line written to binfmt_misc's `register` file."""
        esc = "".join(f"\\x{b:02x}" for b in self.magic)
        mask = "".join(f"\\x{b:02x}" for b in self.mask)
        return f":{name or 'qemu-' + self.qemu}:M::{esc}:{mask}:{interpreter}:{self.flags}"


def _unescape(text: str) -> bytes:
    decoded: bytes = codecs.escape_decode(text.encode())[0]
    return decoded


def _load() -> dict[str, BinfmtSpec]:
    raw = json.loads(resources.files("kcompat.qemu").joinpath("binfmt.json").read_text())
    if raw.get("schema") != 1:
        raise ValueError("qemu/binfmt.json: unknown schema")
    table = {}
    for arch, e in raw["entries"].items():
        spec = BinfmtSpec(arch, e["qemu"], _unescape(e["magic"]), _unescape(e["mask"]),
                          e["flags"], e["source"])  # fmt: skip
        if len(spec.magic) != len(spec.mask) or not spec.magic.startswith(b"\x7fELF"):
            raise ValueError(f"qemu/binfmt.json: bad magic or mask for {arch}")
        if "F" not in spec.flags:
            raise ValueError(f"qemu/binfmt.json: {arch} entry lacks flag F")
        table[arch] = spec
    return table


BINFMT = _load()
# qemu-user's name for each OCI arch kcompat emulates: qemu-<name>-static
QEMU_NAMES = {arch: spec.qemu for arch, spec in BINFMT.items()}
