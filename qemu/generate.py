#!/usr/bin/env python3
"""Generate qemu/binfmt.json: the binfmt_misc entries kcompat registers for qemu-user.

Sources, recorded per row:
  - Debian's qemu-user-static ships one binfmt-support file per foreign arch in
    /usr/share/binfmts/qemu-<arch> (magic, mask, offset); read from this machine.
  - The arch native to the machine (here x86_64 and its i386) has no such file; those two
    rows are the values of QEMU's scripts/qemu-binfmt-conf.sh (i386_magic/mask,
    x86_64_magic/mask), written out below.
Flags: F (open the interpreter at registration, so it works inside any root: needs a
static interpreter) and P (preserve argv[0]), as Debian's files say (fix_binary, preserve).
Running it twice gives the same file. Run: python3 qemu/generate.py [BINFMTS_DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# OCI arch -> qemu-user name
ARCHES = {
    "amd64": "x86_64",
    "386": "i386",
    "arm64": "aarch64",
    "arm": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "mips64le": "mips64el",
    "loong64": "loongarch64",
}
ELF_MASK = r"\xff\xff\xff\xff\xff\xfe\xfe\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
QEMU_SCRIPT = {  # qemu scripts/qemu-binfmt-conf.sh
    "i386": (r"\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x03\x00", ELF_MASK),
    "x86_64": (
        r"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00",
        ELF_MASK,
    ),
}


def read_binfmts(path: Path) -> dict[str, str]:
    fields = {}
    for line in path.read_text().splitlines():
        if " " in line:
            key, value = line.split(" ", 1)
            fields[key] = value.strip()
    return fields


def generate(binfmts: Path) -> dict[str, object]:
    rows = {}
    for oci, qemu in ARCHES.items():
        f = binfmts / f"qemu-{qemu}"
        if f.is_file():
            fields = read_binfmts(f)
            magic, mask = fields["magic"], fields["mask"]
            assert fields.get("offset", "0") == "0", f
            source = f"Debian qemu-user-static {f}"
        elif qemu in QEMU_SCRIPT:
            magic, mask = QEMU_SCRIPT[qemu]
            source = "qemu scripts/qemu-binfmt-conf.sh"
        else:
            sys.exit(f"generate: no binfmt data for {qemu}: install qemu-user-static")
        rows[oci] = {"qemu": qemu, "magic": magic, "mask": mask, "flags": "FP", "source": source}
    return {"schema": 1, "entries": rows}


def main() -> None:
    binfmts = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/usr/share/binfmts")
    out = HERE / "binfmt.json"
    out.write_text(json.dumps(generate(binfmts), indent=1, sort_keys=True) + "\n")
    print(out)


if __name__ == "__main__":
    main()
