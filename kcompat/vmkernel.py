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

What the files say (release, arch, config, modules) is read by kcompat.kernelimage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import lzma
import os
import re
import shutil
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
    KcompatError,
    NetworkError,
    NotFoundError,
    UnsupportedError,
    UsageError,
)
from kcompat.kernelimage import (
    DEBIAN_ARCH,
    MODULE_SUFFIXES,
    NEEDED,
    Kernel,
    decompress_module,
    forget_index,
    from_image,
    from_root,
    kernels_dir,
    modinfo,
    module_index,
    module_name,
)

MIRROR = os.environ.get("KCOMPAT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
UBUNTU_MIRROR = os.environ.get("KCOMPAT_UBUNTU_MIRROR", "http://archive.ubuntu.com/ubuntu")
UBUNTU_PORTS = os.environ.get("KCOMPAT_UBUNTU_PORTS_MIRROR", "http://ports.ubuntu.com/ubuntu-ports")
# where Debian keeps Ubuntu's archive keyring (binary-all of main; trixie and later)
# Debian suites that carry ubuntu-keyring, in order: a later one is asked only when the one
# before cannot be read consistently (a mirror mid-sync: its Packages not the InRelease's).
UBUNTU_KEYRING_SUITES = ("stable", "testing", "unstable")
UBUNTU_KEYRING_PACKAGE = "ubuntu-keyring"
UBUNTU_KEYRING_FILE = "usr/share/keyrings/ubuntu-archive-keyring.gpg"
INDEX_MAX_AGE = 24 * 3600.0  # a suite's resolved kernel package is looked up again after this
_ATTEMPTS = 3
_RETRY_PAUSE = 1.0  # seconds before the 2nd attempt; 3x that before the 3rd
_TIMEOUT = 60.0
# Modules 9p may depend on, looked for in the first pass so one pass usually suffices.
_LIKELY_DEPS = ("fscache", "netfs", "virtio_ring", "virtio", "virtio_pci")


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


def _fetch(url: str, dest: Path | None = None) -> bytes:
    """GET `url` (into `dest` when given, atomically), with a few retries. A body cut
    short of its Content-Length is a failed attempt: never returned, never renamed into
    `dest` (its partial file is removed)."""
    import http.client
    import urllib.error
    import urllib.request

    last: Exception | None = None
    for attempt in range(_ATTEMPTS):
        if attempt:
            time.sleep(_RETRY_PAUSE * (2 * attempt - 1))
        tmp = None if dest is None else dest.with_name(dest.name + f".part-{os.getpid()}")
        try:
            with urllib.request.urlopen(url, timeout=_TIMEOUT) as r:
                if tmp is None:
                    return bytes(r.read())  # raises IncompleteRead when cut short
                with open(tmp, "wb") as out:
                    shutil.copyfileobj(r, out, 1 << 20)
                    size = out.tell()
                length = r.headers.get("Content-Length")
                if length is not None and length.isdigit() and size != int(length):
                    raise http.client.IncompleteRead(b"", int(length) - size)
                assert dest is not None
                os.replace(tmp, dest)
                return b""
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise NotFoundError(f"{url}: not found (404)") from None
            last = e
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as e:
            last = e
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
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
    """The suite's Packages index for `main/binary-ARCH`, checked against its InRelease.

    Fetched by its digest (`by-hash/SHA256/...`) when the InRelease offers it, as apt does:
    a mirror that is mid-sync then still serves the file that InRelease names. A mismatch
    (a mirror without by-hash, updated between the two requests) is retried once from a
    fresh InRelease."""
    name = f"main/binary-{component_arch}/Packages.xz"
    for _attempt in range(2):
        release, how = _verified_release(suite, mirror, keyring)
        digest, size = _sha256_of(release, name)
        raw = b""
        if re.search(r"^Acquire-By-Hash:\s*yes\s*$", release, re.M | re.I):
            try:
                raw = _fetch(f"{mirror}/dists/{suite}/main/binary-{component_arch}"
                             f"/by-hash/SHA256/{digest}")  # fmt: skip
            except NotFoundError:
                raw = b""
        if not raw:
            raw = _fetch(f"{mirror}/dists/{suite}/{name}")
        if len(raw) == size and hashlib.sha256(raw).hexdigest() == digest:
            break
    else:
        raise IntegrityError(f"{mirror}/dists/{suite}/{name}: its SHA256 is not the one "
                             "InRelease lists", hint="retry; check the mirror")  # fmt: skip
    text = lzma.decompress(raw).decode("utf-8", "replace")
    return {s["Package"]: s for s in _stanzas(text) if "Package" in s}, how


def _fetch_checked(mirror: str, pkg: dict[str, str], dest: Path) -> None:
    """A package's .deb into `dest`, checked against the index's SHA256 (fetched a second
    time when it does not match: a pool file never changes, so a mismatch is the transfer's
    or a proxy's, and a file that fails twice is removed and named)."""
    digest = pkg["SHA256"]
    if dest.is_file() and _sha256_file(dest) == digest:
        return
    for _attempt in range(2):
        _fetch(f"{mirror}/{pkg['Filename']}", dest)
        if _sha256_file(dest) == digest:
            return
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
    pkg = _keyring_package()
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


def _keyring_package(mirror: str = MIRROR, keyring: Path | None = KEYRING) -> dict[str, str]:
    """ubuntu-keyring's stanza from the first of UBUNTU_KEYRING_SUITES that reads."""
    first: KcompatError | None = None
    for suite in UBUNTU_KEYRING_SUITES:
        try:
            packages, _ = _packages(suite, "all", mirror, keyring)
        except (IntegrityError, NotFoundError) as e:
            first = first or e
            continue
        pkg = packages.get(UBUNTU_KEYRING_PACKAGE)
        if pkg is not None:
            return pkg
        first = first or NotFoundError(
            f"debian:{suite} has no {UBUNTU_KEYRING_PACKAGE}",
            hint="set KCOMPAT_DEBIAN_MIRROR to a full Debian mirror")  # fmt: skip
    assert first is not None
    raise first


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
    if arch not in DEBIAN_ARCH:
        raise UnsupportedError(f"--vm-kernel {spec!r}: VM runs support the arches "
                               f"{', '.join(DEBIAN_ARCH)}, not {arch}")  # fmt: skip
    return ARCHIVES[prefix], suite, DEBIAN_ARCH[arch]


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
                    return from_root(base / stale["key"], stale["source"] + " (stale)")
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
    return from_root(base / info["key"], str(info["source"]))


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
        return leaf.endswith(MODULE_SUFFIXES) and module_name(leaf) in names
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
        names = {module_name(n) for n in (*NEEDED.values(), *_LIKELY_DEPS)}
        for _ in range(6):  # each pass adds the dependencies the last one revealed
            for deb in debs:
                _extract(deb, tmp, names)
            kernel = from_root(tmp, str(debs[0]))
            if kernel.modules is not None:
                forget_index(kernel.modules)  # this pass may have added files
            want = set(names)
            for path in module_index(kernel.modules).values() if kernel.modules else ():
                deps = modinfo(decompress_module(path)).get("depends", "")
                want |= {module_name(d) for d in deps.split(",") if d}
            if want <= names:
                break
            names = want
        if kernel.modules is not None:
            forget_index(kernel.modules)
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

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
        return from_root(path, f"{path} (directory)")
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic == b"!<arch>\n":
        from kcompat.store import BlobStore

        digest = _sha256_file(path)
        dest = kernels_dir(cache) / f"deb-{digest[:24]}"
        with BlobStore(cache).lock(f"kernel-{dest.name}"):
            if not dest.is_dir():
                _unpack_deb(path, dest)
        return from_root(dest, f"{path} (.deb)")
    return from_image(path.resolve(), str(path))
