"""A kernel's files, read: its release and arch, config, modules, and how qemu boots it.

The release (what `uname -r` prints in the guest) comes from the x86 boot header's
kernel_version string, else the `Linux version` banner in the image (gunzipped when it
is gzip, as Debian's arm64 images are), else the modules directory's or the file's name.
A kernel's modules and config are looked for beside its image, as its package installs
them (`.../boot/vmlinuz-REL` -> `.../lib/modules/REL`, `.../boot/config-REL`).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import lzma
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from kcompat.elffile import Reader, UnreadableError
from kcompat.errors import BadImageError, LocalIOError, NotFoundError, UnsupportedError

DEBIAN_ARCH = {"amd64": "amd64", "arm64": "arm64"}  # OCI -> Debian (the VM arches supported)
# What a VM run needs of the guest kernel, by config symbol -> module name.
NEEDED = {
    "CONFIG_NET_9P": "9pnet",
    "CONFIG_NET_9P_VIRTIO": "9pnet_virtio",
    "CONFIG_9P_FS": "9p",
    "CONFIG_OVERLAY_FS": "overlay",
    "CONFIG_VIRTIO_CONSOLE": "virtio_console",
    "CONFIG_VIRTIO_PCI": "virtio_pci",
}
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


@dataclass(frozen=True)
class Kernel:
    image: Path  # the bzImage / Image file qemu boots
    release: str  # uname -r in the guest: "5.10.0-35-amd64"
    arch: str  # OCI arch: amd64 | arm64
    modules: Path | None  # lib/modules/RELEASE, when there is one
    config: Path | None  # the config-RELEASE file, when the package ships it
    source: str  # where it came from, in words

    def config_value(self, symbol: str) -> str | None:
        """`y`, `m`, a value, or None (not set, or no config file)."""
        return _config(self.config).get(symbol)

    def builtin(self) -> frozenset[str]:
        """Module names built into the image (modules.builtin), `-` written `_`."""
        if self.modules is None:
            return frozenset()
        try:
            text = (self.modules / "modules.builtin").read_text()
        except OSError:
            return frozenset()
        return frozenset(module_name(line.rsplit("/", 1)[-1]) for line in text.split())

    def module_file(self, name: str) -> Path | None:
        if self.modules is None:
            return None
        return module_index(self.modules).get(module_name(name))


def module_name(filename: str) -> str:
    name = filename
    for suffix in MODULE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


_INDEXES: dict[Path, dict[str, Path]] = {}


def forget_index(modules: Path) -> None:
    """Drop the index of `modules` (files were added there since it was made)."""
    _INDEXES.pop(modules, None)


def module_index(modules: Path) -> dict[str, Path]:
    """Module name -> file, for every module file under `modules`."""
    if modules not in _INDEXES:
        found: dict[str, Path] = {}
        for dirpath, _dirs, files in os.walk(modules):
            for f in files:
                if f.endswith(MODULE_SUFFIXES):
                    found.setdefault(module_name(f), Path(dirpath) / f)
        _INDEXES[modules] = found
    return _INDEXES[modules]


_CONFIGS: dict[Path, dict[str, str]] = {}


def _config(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    if path not in _CONFIGS:
        out = {}
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                k, sep, v = line.partition("=")
                if sep and k.startswith("CONFIG_"):
                    out[k] = v.strip('"')
        _CONFIGS[path] = out
    return _CONFIGS[path]


def decompress_module(path: Path) -> bytes:
    """A module's ELF bytes (finit_module wants them plain; xz and zstd are unpacked)."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        import zstandard

        return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))
    return data


def modinfo(data: bytes) -> dict[str, str]:
    """The `.modinfo` section of a module (key=value strings; the first of each key)."""
    try:
        r = Reader(data)
    except UnreadableError as e:
        raise BadImageError(f"a kernel module is not a readable ELF file: {e}") from None
    sec = r.named(".modinfo")
    out: dict[str, str] = {}
    if sec is None:
        return out
    for item in r.bytes_of(sec).split(b"\0"):
        k, sep, v = item.decode("utf-8", "replace").partition("=")
        if sep:
            out.setdefault(k, v)
    return out


def module_closure(kernel: Kernel) -> tuple[list[tuple[str, Path]], list[str]]:
    """The modules to load, dependencies first, for what NEEDED lists that the kernel
    does not build in; and the needs it can meet neither way (by config symbol)."""
    builtin = kernel.builtin()
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()
    missing: list[str] = []

    def visit(name: str, why: str) -> None:
        if name in seen or name in builtin:
            return
        seen.add(name)
        path = kernel.module_file(name)
        if path is None:
            missing.append(why)
            return
        for dep in filter(None, modinfo(decompress_module(path)).get("depends", "").split(",")):
            visit(module_name(dep), f"{name}'s dependency {dep}")
        order.append((name, path))

    for symbol, name in NEEDED.items():
        value = kernel.config_value(symbol)
        if value == "y" or module_name(name) in builtin:
            continue
        if value is None and kernel.config is not None:
            missing.append(f"{symbol} (not set in {kernel.config.name})")
            continue
        if value is None and kernel.module_file(name) is None:
            # no config file: perhaps built in; the guest's init says if a mount fails
            continue
        visit(module_name(name), symbol)
    return order, missing


# -- the release and arch of a kernel image ----------------------------------------------

_BANNER = re.compile(rb"Linux version (\S+) \(")


def image_facts(path: Path) -> tuple[str | None, str | None]:
    """(release, OCI arch) from a kernel image file, each None when it cannot tell."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
            f.seek(0)
            whole = f.read(128 << 20)
    except OSError as e:
        raise NotFoundError(f"--vm-kernel {path}: {e.strerror}",
                            hint="give a kernel image") from None  # fmt: skip
    if len(head) > 0x240 and head[0x202:0x206] == b"HdrS":  # x86 boot protocol
        release = None
        (version,) = struct.unpack_from("<H", head, 0x206)
        (ptr,) = struct.unpack_from("<H", head, 0x20E)
        if ptr and ptr + 0x200 < len(head):
            raw = head[ptr + 0x200 : ptr + 0x200 + 256].split(b"\0", 1)[0]
            release = raw.decode("ascii", "replace").split(" ", 1)[0] or None
        xload = struct.unpack_from("<H", head, 0x236)[0] if version >= 0x20C else 1
        return release, ("amd64" if xload & 1 else "386")
    data = whole
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, lzma.LZMAError):
            data = b""
    arch = "arm64" if data[0x38:0x3C] == b"ARM\x64" else None
    m = _BANNER.search(data)
    return (m.group(1).decode("ascii", "replace") if m else None), arch


def kernels_dir(cache: Path) -> Path:
    d = cache / "kernels"
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LocalIOError(f"cannot create {d}: {e.strerror}",
                           hint="set KCOMPAT_CACHE to a writable directory") from None  # fmt: skip
    return d

def from_root(root: Path, source: str) -> Kernel:
    """A kernel laid out as its package installs it: ROOT/boot/vmlinuz-REL and
    ROOT/lib/modules/REL (or ROOT/usr/lib/modules/REL)."""
    boot = root / "boot"
    images = sorted(p for p in boot.glob("vmlinuz-*")) if boot.is_dir() else []
    if not images:
        raise NotFoundError(f"--vm-kernel {root}: no boot/vmlinuz-* in it",
                            hint="give a kernel image, a kernel .deb, debian:SUITE or "
                            "ubuntu:SUITE")  # fmt: skip
    return from_image(images[-1], source)


def from_image(image: Path, source: str) -> Kernel:
    release, arch = image_facts(image)
    name_release = image.name.split("-", 1)[1] if image.name.startswith("vmlinuz-") else None
    candidates = [r for r in (release, name_release) if r]
    modules = None
    root = image.parent.parent if image.parent.name == "boot" else None
    if root is not None:
        for rel in candidates:
            for base in ("lib/modules", "usr/lib/modules"):
                if (root / base / rel).is_dir():
                    modules = root / base / rel
                    break
            if modules:
                break
    release = release or name_release or (modules.name if modules else None)
    if release is None:
        raise UnsupportedError(
            f"--vm-kernel {image}: cannot tell its release (no x86 boot header, no Linux "
            "version banner, no vmlinuz-RELEASE name)",
            hint="name the file vmlinuz-RELEASE, as the package installs it",
        )
    if arch is None:
        arch = "arm64" if release.endswith("arm64") else "amd64" if "amd64" in release else None
    if arch not in DEBIAN_ARCH:
        raise UnsupportedError(f"--vm-kernel {image}: a {arch or 'unknown-arch'} kernel; VM runs "
                               f"support {', '.join(DEBIAN_ARCH)}")  # fmt: skip
    config = None
    for rel in candidates:
        if (image.parent / f"config-{rel}").is_file():
            config = image.parent / f"config-{rel}"
            break
    return Kernel(image, release, arch, modules, config, source)


# -- a faster boot: the uncompressed vmlinux through PVH -------------------------------

_XEN_ELFNOTE_PHYS32_ENTRY = 18


def _payload(image: bytes) -> bytes | None:
    """The compressed kernel inside an x86 bzImage, decompressed (xz, lzma, gzip, bzip2,
    zstd; None for lzo/lz4, which Python cannot read without another library)."""
    if len(image) < 0x250 or image[0x202:0x206] != b"HdrS":
        return None
    setup_sects = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + offset
    blob = image[start : start + length]
    try:
        if blob.startswith(b"\xfd7zXZ\x00"):
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(blob)
        if blob.startswith(b"\x5d\x00\x00"):
            return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(blob)
        if blob.startswith(b"\x1f\x8b"):
            return gzip.GzipFile(fileobj=__import__("io").BytesIO(blob)).read()
        if blob.startswith(b"BZh"):
            import bz2

            return bz2.BZ2Decompressor().decompress(blob)
        if blob.startswith(b"\x28\xb5\x2f\xfd"):
            import zstandard

            return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(blob))
    except (lzma.LZMAError, OSError, EOFError, ValueError):
        return None
    return None


def _has_pvh_note(elf: bytes) -> bool:
    try:
        r = Reader(elf)
    except UnreadableError:
        return False
    for seg in r.segments:
        if seg.type != 4:  # PT_NOTE
            continue
        note = elf[seg.offset : seg.offset + seg.filesz]
        pos = 0
        while pos + 12 <= len(note):
            namesz, descsz, ntype = struct.unpack_from("<III", note, pos)
            name = note[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == _XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


def boot_image(kernel: Kernel, cache: Path) -> tuple[Path, str]:
    """What qemu boots, and how, in words: for an x86-64 kernel built with CONFIG_PVH,
    its vmlinux (decompressed here, once, cached beside the kernel's files) entered
    through PVH, which skips the firmware and the decompressor (seconds under TCG);
    otherwise the image itself."""
    if kernel.arch != "amd64" or kernel.config_value("CONFIG_PVH") not in ("y", None):
        return kernel.image, "bzImage"
    digest = hashlib.sha256(f"{kernel.image.resolve()}\0{kernel.image.stat().st_size}\0"
                            f"{kernel.image.stat().st_mtime_ns}".encode()).hexdigest()[:24]
    out = kernels_dir(cache) / "pvh" / f"vmlinux-{kernel.release}-{digest}"
    if out.is_file():
        return out, "vmlinux through PVH"
    none = out.with_suffix(".none")
    if none.is_file():
        return kernel.image, "bzImage (no PVH entry)"
    elf = _payload(kernel.image.read_bytes())
    out.parent.mkdir(parents=True, exist_ok=True)
    if elf is None or not elf.startswith(b"\x7fELF") or not _has_pvh_note(elf):
        none.touch()
        return kernel.image, "bzImage (no PVH entry)"
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    tmp.write_bytes(elf)
    os.replace(tmp, out)
    return out, "vmlinux through PVH"
