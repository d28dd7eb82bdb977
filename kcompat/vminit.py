"""kcompat's init and the initramfs a VM run boots with (kcompat.vm starts qemu).

The initramfs is a newc cpio written in Python: kcompat's own init
(kcompat/data/vminit/init.c, built static with gcc and cached), the kernel's own
modules that the run needs when they are modules (kcompat.kernelimage.module_closure:
9p, 9pnet_virtio, overlay, virtio_console, virtio_pci and what they depend on), the
directories init mounts on, and the run's configuration (/kcompat.conf: records of
fixed arity, read by init.c).
"""

from __future__ import annotations

import hashlib
import os
import platform as _platform
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from kcompat.errors import UnsupportedError, UsageError
from kcompat.kernelimage import NEEDED, Kernel, decompress_module, module_closure

if TYPE_CHECKING:
    from kcompat.runspec import RunSpec

HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}  # uname -m -> OCI, the VM arches
_GCC = {"amd64": ("x86_64-linux-gnu-gcc", "gcc"), "arm64": ("aarch64-linux-gnu-gcc",)}
_GCC_PACKAGE = {"amd64": "gcc libc6-dev", "arm64": "gcc-aarch64-linux-gnu libc6-dev-arm64-cross"}
_ARITY = {"vol": 3, "tmpfs": 3}  # values per record key; every other key has one (init.c)


def _init_source() -> bytes:
    return resources.files("kcompat").joinpath("data", "vminit", "init.c").read_bytes()


def build_init(arch: str, cache: Path) -> Path:
    """kcompat's init for `arch`, built static from its checked-in source, cached by the
    source's and the compiler's identity."""
    compiler = next((shutil.which(c) for c in _GCC[arch] if shutil.which(c)), None)
    if arch == "amd64" and HOST_ARCH.get(_platform.machine()) != "amd64":
        compiler = shutil.which("x86_64-linux-gnu-gcc")
    if compiler is None:
        raise UnsupportedError(
            f"building kcompat's VM init for {arch} needs {' or '.join(_GCC[arch])}",
            hint=f"apt-get install -y {_GCC_PACKAGE[arch]}",
        )
    src = _init_source()
    key = hashlib.sha256(src + compiler.encode() + arch.encode()).hexdigest()[:24]
    out = cache / "vminit" / f"init-{arch}-{key}"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        c = Path(tmp) / "init.c"
        c.write_bytes(src)
        binary = Path(tmp) / "init"
        r = subprocess.run([compiler, "-static", "-Os", "-s", "-Wno-format-truncation",
                            "-o", str(binary), str(c)], capture_output=True, text=True,
                           check=False)  # fmt: skip
        if r.returncode != 0:
            first = (r.stderr.strip().splitlines() or ["failed"])[-1]
            raise UnsupportedError(f"cannot build kcompat's VM init with {compiler}: {first}",
                                   hint=f"apt-get install -y {_GCC_PACKAGE[arch]}")  # fmt: skip
        os.replace(binary, out)
    return out


def _cpio_entry(name: str, mode: int, data: bytes = b"", ino: int = 0) -> bytes:
    """One newc entry (the format the kernel's initramfs unpacker reads)."""
    raw = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0)
    hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = hdr + raw
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def cpio(files: list[tuple[str, int, bytes]]) -> bytes:
    """A newc archive of (path, mode, data) entries: directories (S_IFDIR) and files,
    parents first; padded to 512 bytes so another archive may follow."""
    out = b"".join(_cpio_entry(n, m, d, i + 1) for i, (n, m, d) in enumerate(files))
    out += _cpio_entry("TRAILER!!!", 0)
    return out + b"\0" * (-len(out) % 512)


def _modules_archive(kernel: Kernel) -> tuple[list[tuple[str, int, bytes]], list[str]]:
    order, missing = module_closure(kernel)
    if missing:
        raise UnsupportedError(
            f"the kernel {kernel.release} lacks what a VM run needs: {'; '.join(missing)}",
            hint="give a kernel with 9p (virtio), overlayfs and virtio-console, built in or "
            "as modules beside it (lib/modules/RELEASE)",
        )
    files: list[tuple[str, int, bytes]] = [("lib", 0o40755, b""), ("lib/kcompat", 0o40755, b"")]
    paths = []
    for name, path in order:
        inside = f"lib/kcompat/{name}.ko"
        files.append((inside, 0o100644, decompress_module(path)))
        paths.append("/" + inside)
    return files, paths


def base_initramfs(kernel: Kernel, cache: Path) -> tuple[Path, list[str]]:
    """init and the modules for this kernel, as a cpio cached per kernel and init."""
    init = build_init(kernel.arch, cache)
    key = hashlib.sha256(f"{kernel.image.resolve()}\0{kernel.release}\0{init.name}\0"
                         f"{sorted(NEEDED.items())}".encode())
    out = cache / "vminit" / f"base-{key.hexdigest()[:24]}.cpio"
    listing = out.with_suffix(".modules")
    if out.is_file() and listing.is_file():
        return out, listing.read_text().split("\n") if listing.read_text() else []
    mods, paths = _modules_archive(kernel)
    files = [("init", 0o100755, init.read_bytes()), *mods]
    for d in ("dev", "proc", "sys", "lower", "rw", "newroot"):
        files.append((d, 0o40755, b""))
    for path, data in ((listing, "\n".join(paths).encode()), (out, cpio(files))):
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        tmp.write_bytes(data)  # the listing first: a cpio in place has its listing
        os.replace(tmp, path)
    return out, paths


def _records(items: list[tuple[str, ...]]) -> bytes:
    out = b""
    for key, *values in items:
        assert len(values) == _ARITY.get(key, 1), key
        for v in (key, *values):
            b = v.encode("utf-8", "surrogateescape")
            if b"\0" in b:
                raise UsageError(f"a NUL byte in {key} {v!r} cannot reach the VM")
            out += b + b"\0"
    return out


def run_config(spec: RunSpec, modules: list[str], cgroup: str, verbose: bool) -> bytes:
    """/kcompat.conf for init.c: records of fixed arity (see _ARITY)."""
    items: list[tuple[str, ...]] = [("mod", m) for m in modules]
    items += [("arg", a) for a in spec.argv]
    items += [("env", f"{k}={v}") for k, v in spec.env]
    items += [("uid", str(spec.uid)), ("gid", str(spec.gid))]
    items += [("group", str(g)) for g in spec.groups]
    items += [("workdir", spec.workdir), ("hostname", spec.hostname), ("cgroup", cgroup),
              ("readonly", "1" if spec.read_only else "0"),
              ("verbose", "1" if verbose else "0")]  # fmt: skip
    for i, vol in enumerate(spec.volumes):
        items.append(("vol", f"kcvol{i}", vol.container, "ro" if vol.readonly else "rw"))
    for point, flags, opts in spec.tmpfs:
        items.append(("tmpfs", point, str(flags), opts))
    return _records(items)
