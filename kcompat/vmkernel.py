"""The kernel a VM run boots: fetched from Debian's or Ubuntu's archive, or the fleet's own files.

`--vm-kernel` takes:
- `ubuntu:SUITE[/ARCH]` (`ubuntu:jammy`, `ubuntu:noble-updates`): the same from Ubuntu's
  archive (archive.ubuntu.com; ports.ubuntu.com for arm64): `linux-image-generic` followed
  to `linux-image-REL-generic` and the `linux-modules-REL-generic` it depends on (Ubuntu
  ships the modules apart). Its InRelease is checked against Ubuntu's archive keyring,
  which kcompat takes from Debian's `ubuntu-keyring` package, fetched through
  Debian's own checked chain (so trust still starts at Debian's keyring);
- `debian:SUITE[/ARCH]` (`debian:bullseye`, `debian:bookworm/arm64`): the suite's
  `linux-image-ARCH` meta package is looked up in the suite's Packages index on
  deb.debian.org (the InRelease file checked with gpgv against Debian's archive keyring
  when both are installed, the index and the .deb against the SHA256 sums it lists),
  followed to the versioned package it depends on (`linux-image-5.10.0-35-amd64`), and
  that .deb is downloaded with urllib and unpacked in Python (ar, tar) into
  `$KCOMPAT_CACHE/kernels/`: the kernel image, its config file, `modules.builtin` and
  only the modules a VM run needs, with the modules they depend on (read from each
  module's `.modinfo`: a package ships no modules.dep, depmod makes it at install);
- a `.deb` file of a kernel package: the same, from that file;
- a directory laid out as the package installs it (`ROOT/boot/vmlinuz-REL`,
  `ROOT/lib/modules/REL`), or a kernel image file, whose modules and config are looked
  for beside it (`.../boot/vmlinuz-REL` -> `.../lib/modules/REL`, `.../boot/config-REL`).

The release (what `uname -r` prints in the guest) comes from the x86 boot header's
kernel_version string, else the `Linux version` banner in the image (gunzipped when it
is gzip, as Debian's arm64 images are), else the modules directory's or the file's name.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tarfile

from kcompat.errors import (
    BadImageError,
    IntegrityError,
    LocalIOError,
    NetworkError,
    NotFoundError,
    UnsupportedError,
    UsageError,
)

MIRROR = os.environ.get("KCOMPAT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
UBUNTU_MIRROR = os.environ.get("KCOMPAT_UBUNTU_MIRROR", "http://archive.ubuntu.com/ubuntu")
UBUNTU_PORTS = os.environ.get("KCOMPAT_UBUNTU_PORTS_MIRROR", "http://ports.ubuntu.com/ubuntu-ports")
# where Debian keeps Ubuntu's archive keyring (binary-all of main; trixie and later)
UBUNTU_KEYRING_SUITE = "stable"
UBUNTU_KEYRING_PACKAGE = "ubuntu-keyring"
UBUNTU_KEYRING_FILE = "usr/share/keyrings/ubuntu-archive-keyring.gpg"
INDEX_MAX_AGE = 24 * 3600.0  # a suite's resolved kernel package is looked up again after this
_TIMEOUT = 60.0
_DEBIAN_ARCH = {"amd64": "amd64", "arm64": "arm64"}  # OCI -> Debian (the VM arches supported)
# What a VM run needs of the guest kernel, by config symbol -> module name.
NEEDED = {
    "CONFIG_NET_9P": "9pnet",
    "CONFIG_NET_9P_VIRTIO": "9pnet_virtio",
    "CONFIG_9P_FS": "9p",
    "CONFIG_OVERLAY_FS": "overlay",
    "CONFIG_VIRTIO_CONSOLE": "virtio_console",
    "CONFIG_VIRTIO_PCI": "virtio_pci",
}
# Modules 9p may depend on, looked for in the first pass so one pass usually suffices.
_LIKELY_DEPS = ("fscache", "netfs", "virtio_ring", "virtio", "virtio_pci")
_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


@dataclass(frozen=True)
class Archive:
    """A distribution's package archive, as far as fetching its kernel goes."""

    name: str  # debian | ubuntu: the SPEC's prefix
    mirrors: dict[str, str]  # Debian arch -> mirror URL
    meta: str  # the meta package that follows the current kernel ({arch} filled in)
    image: str  # a regex: the versioned kernel package the meta package depends on
    extra: str | None  # a regex: packages of the versioned one's Depends unpacked with it

    def mirror(self, arch: str) -> str:
        return self.mirrors[arch]


ARCHIVES = {
    "debian": Archive("debian", {"amd64": MIRROR, "arm64": MIRROR}, "linux-image-{arch}",
                      r"linux-image-\d[\w.+-]*-{arch}(?:-unsigned)?", None),
    "ubuntu": Archive("ubuntu", {"amd64": UBUNTU_MIRROR, "arm64": UBUNTU_PORTS},
                      "linux-image-generic", r"linux-image-(?:unsigned-)?\d[\w.+-]*-generic",
                      r"linux-modules-\d[\w.+-]*-generic"),
}  # fmt: skip


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
        return frozenset(_modname(line.rsplit("/", 1)[-1]) for line in text.split())

    def module_file(self, name: str) -> Path | None:
        if self.modules is None:
            return None
        return _index(self.modules).get(_modname(name))


def _modname(filename: str) -> str:
    name = filename
    for suffix in _MODULE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


_INDEXES: dict[Path, dict[str, Path]] = {}


def _index(modules: Path) -> dict[str, Path]:
    """Module name -> file, for every module file under `modules`."""
    if modules not in _INDEXES:
        found: dict[str, Path] = {}
        for dirpath, _dirs, files in os.walk(modules):
            for f in files:
                if f.endswith(_MODULE_SUFFIXES):
                    found.setdefault(_modname(f), Path(dirpath) / f)
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
    from kcompat.elf import UnreadableError, _Reader

    try:
        r = _Reader(data)
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
            visit(_modname(dep), f"{name}'s dependency {dep}")
        order.append((name, path))

    for symbol, name in NEEDED.items():
        value = kernel.config_value(symbol)
        if value == "y" or _modname(name) in builtin:
            continue
        if value is None and kernel.config is not None:
            missing.append(f"{symbol} (not set in {kernel.config.name})")
            continue
        if value is None and kernel.module_file(name) is None:
            # no config file: perhaps built in; the guest's init says if a mount fails
            continue
        visit(_modname(name), symbol)
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


# -- the cache, the archive and the package --------------------------------------------------


def kernels_dir(cache: Path) -> Path:
    d = cache / "kernels"
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LocalIOError(f"cannot create {d}: {e.strerror}",
                           hint="set KCOMPAT_CACHE to a writable directory") from None  # fmt: skip
    return d


def _fetch(url: str, dest: Path | None = None) -> bytes:
    """GET `url` (into `dest` when given, atomically), with a few retries."""
    import urllib.error
    import urllib.request

    last: Exception | None = None
    for attempt in range(3):
        try:
            with urllib.request.urlopen(url, timeout=_TIMEOUT) as r:
                if dest is None:
                    return bytes(r.read())
                tmp = dest.with_name(dest.name + f".part-{os.getpid()}")
                with open(tmp, "wb") as out:
                    shutil.copyfileobj(r, out, 1 << 20)
                os.replace(tmp, dest)
                return b""
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise NotFoundError(f"{url}: not found (404)") from None
            last = e
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            last = e
        time.sleep(1 + 2 * attempt)
    raise NetworkError(f"cannot download {url}: {last}", hint="check the network, then retry")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified_release(
    suite: str, mirror: str = MIRROR, keyring: Path | None = KEYRING
) -> tuple[str, str]:
    """The suite's InRelease text, and how it was checked, in words."""
    raw = _fetch(f"{mirror}/dists/{suite}/InRelease")
    gpgv = shutil.which("gpgv")
    if gpgv and keyring is not None and keyring.is_file():
        r = subprocess.run([gpgv, "--keyring", str(keyring), "-"], input=raw,
                           capture_output=True, check=False)  # fmt: skip
        if r.returncode != 0:
            raise IntegrityError(
                f"{mirror}/dists/{suite}/InRelease: its signature does not verify against "
                f"{keyring}",
                hint="check the mirror (KCOMPAT_DEBIAN_MIRROR, KCOMPAT_UBUNTU_MIRROR) and "
                "retry")  # fmt: skip
        how = f"InRelease signature verified by gpgv with {keyring}"
    else:
        how = ("InRelease NOT signature-checked (gpgv or the archive keyring missing: "
               "gpgv and debian-archive-keyring)")  # fmt: skip
    return raw.decode("utf-8", "replace"), how


def _packages(suite: str, component_arch: str, mirror: str = MIRROR,
              keyring: Path | None = KEYRING) -> tuple[dict[str, dict[str, str]], str]:
    """The suite's Packages index for `main/binary-ARCH`, checked against its InRelease."""
    release, how = _verified_release(suite, mirror, keyring)
    name = f"main/binary-{component_arch}/Packages.xz"
    digest, size = _sha256_of(release, name)
    raw = _fetch(f"{mirror}/dists/{suite}/{name}")
    if len(raw) != size or hashlib.sha256(raw).hexdigest() != digest:
        raise IntegrityError(f"{mirror}/dists/{suite}/{name}: its SHA256 is not the one "
                             "InRelease lists", hint="retry; check the mirror")  # fmt: skip
    text = lzma.decompress(raw).decode("utf-8", "replace")
    return {s["Package"]: s for s in _stanzas(text) if "Package" in s}, how


def _fetch_checked(mirror: str, pkg: dict[str, str], dest: Path) -> None:
    """A package's .deb into `dest`, checked against the index's SHA256."""
    digest = pkg["SHA256"]
    if dest.is_file() and _sha256_file(dest) == digest:
        return
    _fetch(f"{mirror}/{pkg['Filename']}", dest)
    if _sha256_file(dest) != digest:
        dest.unlink(missing_ok=True)
        raise IntegrityError(f"{pkg['Filename']}: its SHA256 is not the index's",
                             hint="retry; check the mirror")  # fmt: skip


def ubuntu_keyring(cache: Path) -> Path | None:
    """Ubuntu's archive keyring, from Debian's ubuntu-keyring package (its index
    checked with Debian's keyring), cached; None when Debian's chain cannot be checked
    here (no gpgv or debian-archive-keyring: then Ubuntu's InRelease is not checked either,
    and the source says so)."""
    if shutil.which("gpgv") is None or not KEYRING.is_file():
        return None
    dest = kernels_dir(cache) / "ubuntu-archive-keyring.gpg"
    if dest.is_file():
        return dest
    packages, _ = _packages(UBUNTU_KEYRING_SUITE, "all")
    pkg = packages.get(UBUNTU_KEYRING_PACKAGE)
    if pkg is None:
        raise NotFoundError(f"debian:{UBUNTU_KEYRING_SUITE} has no {UBUNTU_KEYRING_PACKAGE}",
                            hint="set KCOMPAT_DEBIAN_MIRROR to a full Debian mirror")  # fmt: skip
    deb = dest.with_name(Path(pkg["Filename"]).name)
    _fetch_checked(MIRROR, pkg, deb)
    try:
        for tar, m in _tar_stream(deb):
            if m.isfile() and m.name.lstrip("./") == UBUNTU_KEYRING_FILE:
                src = tar.extractfile(m)
                if src is not None:
                    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
                    tmp.write_bytes(src.read())
                    os.replace(tmp, dest)
                    return dest
    finally:
        deb.unlink(missing_ok=True)
    raise BadImageError(f"{pkg['Filename']}: no {UBUNTU_KEYRING_FILE} in it")


def _sha256_of(release: str, name: str) -> tuple[str, int]:
    in_sha = False
    for line in release.splitlines():
        if line.startswith("SHA256:"):
            in_sha = True
            continue
        if in_sha and not line.startswith(" "):
            in_sha = False
        if in_sha:
            parts = line.split()
            if len(parts) == 3 and parts[2] == name:
                return parts[0], int(parts[1])
    raise BadImageError(f"the suite's InRelease lists no {name}")


def _stanzas(text: str) -> Iterator[dict[str, str]]:
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, v = line.partition(":")
                fields[key] = v.strip()
        if fields:
            yield fields


def _kernel_package(
    archive: Archive, suite: str, arch: str, cache: Path
) -> tuple[list[dict[str, str]], str]:
    """The versioned kernel package the suite's meta package depends on (first) and the
    packages to unpack with it (Ubuntu's modules), and how the index was checked."""
    keyring = KEYRING if archive.name == "debian" else ubuntu_keyring(cache)
    packages, how = _packages(suite, arch, archive.mirror(arch), keyring)
    spec, meta_name = f"{archive.name}:{suite}/{arch}", archive.meta.format(arch=arch)
    meta = packages.get(meta_name)
    if meta is None:
        raise NotFoundError(f"{spec}: the suite has no {meta_name}")
    pattern = re.compile(archive.image.format(arch=re.escape(arch)))
    for dep in re.split(r"[,|]", meta.get("Depends", "")):
        m = pattern.match(dep.strip())
        if m and m.group(0) in packages:
            image = packages[m.group(0)]
            out = [image]
            if archive.extra is not None:
                extra = re.compile(archive.extra)
                for d in re.split(r"[,|]", image.get("Depends", "")):
                    name = d.strip().split(" ", 1)[0]
                    if extra.fullmatch(name) and name in packages:
                        out.append(packages[name])
            return out, how
    raise NotFoundError(f"{spec}: {meta_name} depends on no kernel package in the index "
                        f"({meta.get('Depends')!r})")  # fmt: skip


def parse_spec(spec: str) -> tuple[Archive, str, str] | None:
    """`debian:SUITE[/ARCH]` or `ubuntu:SUITE[/ARCH]` -> (archive, suite, Debian arch);
    None for a path."""
    prefix, colon, rest = spec.partition(":")
    if not colon or prefix not in ARCHIVES:
        return None
    suite, _, arch = rest.partition("/")
    if not re.fullmatch(r"[a-z][a-z0-9-]*", suite):
        raise UsageError(f"--vm-kernel {spec!r}: not {prefix}:SUITE[/ARCH]",
                         hint="e.g. debian:bullseye, debian:bookworm/arm64, "
                         "ubuntu:jammy")  # fmt: skip
    if not arch:
        from kcompat.platform import host_platform

        arch = host_platform().architecture
    if arch not in _DEBIAN_ARCH:
        raise UnsupportedError(f"--vm-kernel {spec!r}: VM runs support the arches "
                               f"{', '.join(_DEBIAN_ARCH)}, not {arch}")  # fmt: skip
    return ARCHIVES[prefix], suite, _DEBIAN_ARCH[arch]


def _archived(archive: Archive, suite: str, arch: str, cache: Path) -> Kernel:
    from kcompat.store import BlobStore

    with BlobStore(cache).lock(f"kernel-{archive.name}-{suite}-{arch}"):  # one at a time
        return _archived_locked(archive, suite, arch, cache)


def _archived_locked(archive: Archive, suite: str, arch: str, cache: Path) -> Kernel:
    base = kernels_dir(cache)
    pointer = base / f"{archive.name}-{suite}-{arch}.json"
    info = None
    with contextlib.suppress(OSError, ValueError, KeyError):
        raw = json.loads(pointer.read_text())
        if time.time() - float(raw["fetched"]) < INDEX_MAX_AGE and (base / raw["key"]).is_dir():
            info = raw
    if info is None:
        try:
            pkgs, how = _kernel_package(archive, suite, arch, cache)
        except NetworkError:
            with contextlib.suppress(OSError, ValueError, KeyError):
                stale = json.loads(pointer.read_text())
                if (base / stale["key"]).is_dir():  # offline: the last one resolved
                    return _from_root(base / stale["key"], stale["source"] + " (stale)")
            raise
        pkg = pkgs[0]
        digest = pkg["SHA256"]
        key = f"deb-{digest[:24]}"
        source = (f"{archive.name}:{suite}/{arch} "
                  + ", ".join(f"{p['Package']} {p['Version']}" for p in pkgs)
                  + f" ({how})")  # fmt: skip
        if not (base / key).is_dir():
            debs = [base / Path(p["Filename"]).name for p in pkgs]
            for p, deb in zip(pkgs, debs):
                _fetch_checked(archive.mirror(arch), p, deb)
            _unpack_deb(debs, base / key)
            for deb in debs:
                deb.unlink(missing_ok=True)  # what a run needs is unpacked
        info = {"fetched": time.time(), "key": key, "source": source}
        tmp = pointer.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, pointer)
    return _from_root(base / info["key"], str(info["source"]))


# -- .deb files --------------------------------------------------------------------------


def _ar_members(f: IO[bytes]) -> Iterator[tuple[str, int, int]]:
    """(name, offset, size) of each member of an ar archive (a .deb)."""
    if f.read(8) != b"!<arch>\n":
        raise BadImageError("not a .deb (ar) file")
    while True:
        hdr = f.read(60)
        if len(hdr) < 60:
            return
        name = hdr[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(hdr[48:58].decode().strip() or 0)
        offset = f.tell()
        yield name, offset, size
        f.seek(offset + size + (size & 1))


def _data_tar(deb: Path) -> tuple[str, int, int]:
    with open(deb, "rb") as f:
        for name, offset, size in _ar_members(f):
            if name.startswith("data.tar"):
                return name, offset, size
    raise BadImageError(f"{deb}: a .deb without data.tar")


def _tar_stream(deb: Path) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    import tarfile

    name, offset, size = _data_tar(deb)
    modes = {"data.tar.xz": "r|xz", "data.tar.gz": "r|gz", "data.tar.bz2": "r|bz2",
             "data.tar": "r|", "data.tar.zst": "r|"}  # fmt: skip
    if name not in modes:
        raise UnsupportedError(f"{deb}: {name} is not xz, gzip, bzip2, zstd or plain tar")
    with open(deb, "rb") as f:
        f.seek(offset)
        raw: Any = _Bounded(f, size)
        if name.endswith(".zst"):
            import zstandard

            raw = zstandard.ZstdDecompressor().stream_reader(raw)
        with tarfile.open(fileobj=raw, mode=modes[name]) as tar:  # type: ignore[call-overload]
            for member in tar:
                yield tar, member


class _Bounded:
    """A file object reading at most `size` bytes from where `f` is."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self.f, self.left = f, size

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.left:
            n = self.left
        data = self.f.read(n)
        self.left -= len(data)
        return data

    def readable(self) -> bool:
        return True


def _wanted(path: str, names: set[str]) -> bool:
    parts = path.split("/")
    if parts[:1] == ["boot"] and len(parts) == 2:
        return parts[1].startswith(("vmlinuz-", "vmlinux-", "config-", "Image-"))
    if len(parts) >= 4 and parts[0] in ("lib", "usr") and "modules" in parts[:3]:
        leaf = parts[-1]
        if leaf.startswith("modules.builtin") or leaf == "modules.order":
            return True
        return leaf.endswith(_MODULE_SUFFIXES) and _modname(leaf) in names
    return False


def _extract(deb: Path, dest: Path, names: set[str]) -> None:
    for tar, m in _tar_stream(deb):
        path = m.name.lstrip("./")
        if not (m.isfile() and _wanted(path, names)) or ".." in path.split("/"):
            continue
        out = dest / path
        out.parent.mkdir(parents=True, exist_ok=True)
        src = tar.extractfile(m)
        if src is None:
            continue
        with open(out, "wb") as w:
            shutil.copyfileobj(src, w, 1 << 20)


def _unpack_deb(debs: Path | list[Path], dest: Path) -> None:
    """The kernel image, config, modules.builtin and the modules a VM run needs (and
    what they depend on), into `dest` as the packages lay them out (Ubuntu's kernel
    comes as an image package and a modules package)."""
    debs = [debs] if isinstance(debs, Path) else debs
    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        names = {_modname(n) for n in (*NEEDED.values(), *_LIKELY_DEPS)}
        for _ in range(6):  # each pass adds the dependencies the last one revealed
            for deb in debs:
                _extract(deb, tmp, names)
            kernel = _from_root(tmp, str(debs[0]))
            if kernel.modules is not None:
                _INDEXES.pop(kernel.modules, None)  # this pass may have added files
            want = set(names)
            for path in _index(kernel.modules).values() if kernel.modules else ():
                deps = modinfo(decompress_module(path)).get("depends", "")
                want |= {_modname(d) for d in deps.split(",") if d}
            if want <= names:
                break
            names = want
        if kernel.modules is not None:
            _INDEXES.pop(kernel.modules, None)
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _from_root(root: Path, source: str) -> Kernel:
    """A kernel laid out as its package installs it: ROOT/boot/vmlinuz-REL and
    ROOT/lib/modules/REL (or ROOT/usr/lib/modules/REL)."""
    boot = root / "boot"
    images = sorted(p for p in boot.glob("vmlinuz-*")) if boot.is_dir() else []
    if not images:
        raise NotFoundError(f"--vm-kernel {root}: no boot/vmlinuz-* in it",
                            hint="give a kernel image, a kernel .deb, debian:SUITE or "
                            "ubuntu:SUITE")  # fmt: skip
    return _from_image(images[-1], source)


def _from_image(image: Path, source: str) -> Kernel:
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
    if arch not in _DEBIAN_ARCH:
        raise UnsupportedError(f"--vm-kernel {image}: a {arch or 'unknown-arch'} kernel; VM runs "
                               f"support {', '.join(_DEBIAN_ARCH)}")  # fmt: skip
    config = None
    for rel in candidates:
        if (image.parent / f"config-{rel}").is_file():
            config = image.parent / f"config-{rel}"
            break
    return Kernel(image, release, arch, modules, config, source)


def resolve(spec: str, cache: Path) -> Kernel:
    """The kernel `--vm-kernel SPEC` names (fetched and cached when it is debian:...)."""
    named = parse_spec(spec)
    if named is not None:
        return _archived(*named, cache)
    path = Path(spec)
    if not path.exists():
        raise NotFoundError(f"--vm-kernel {spec}: no such file",
                            hint="give a kernel image, a kernel .deb, a directory or "
                            "debian:SUITE[/ARCH] or ubuntu:SUITE[/ARCH]")  # fmt: skip
    if path.is_dir():
        return _from_root(path, f"{path} (directory)")
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic == b"!<arch>\n":
        from kcompat.store import BlobStore

        digest = _sha256_file(path)
        dest = kernels_dir(cache) / f"deb-{digest[:24]}"
        with BlobStore(cache).lock(f"kernel-{dest.name}"):
            if not dest.is_dir():
                _unpack_deb(path, dest)
        return _from_root(dest, f"{path} (.deb)")
    return _from_image(path.resolve(), str(path))


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
    from kcompat.elf import UnreadableError, _Reader

    try:
        r = _Reader(elf)
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
