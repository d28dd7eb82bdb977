"""Flatten an image to a root filesystem directory, safely, cached per chain of layers.

The merged view already decided which files are final and refused hostile paths; this
module writes them. Every write goes through directory file descriptors opened with
O_NOFOLLOW from the target root down, so no symlink (from the image or planted in the
cache) is ever followed and nothing is written outside the target, whatever the view
let through. Files are written top layer first; hard links and directory modes are
applied at the end (a read-only directory must not stop its children being written).

Device nodes are created only when running as root; otherwise they are skipped and
reported. Ownership is applied only as root.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO

from kcompat.errors import BadImageError, LocalIOError
from kcompat.layers import FileEntry, FileKind, LayerIssue
from kcompat.merged import DEFAULT_MAX_FILE_SIZE, LayerInput, MergedView, max_file_size
from kcompat.store import BlobStore

COPY_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Refused(Exception):
    pass


def chain_id(layer_digests: Sequence[str]) -> str:
    """A key for a stack of layers (the digest of the digests, bottom first)."""
    return hashlib.sha256("\n".join(layer_digests).encode()).hexdigest()


class _Writer:
    def __init__(self, root: Path) -> None:
        self.root_fd = os.open(root, _DIR_FLAGS)
        self.as_root = os.geteuid() == 0
        self.dir_meta: dict[str, FileEntry] = {}
        self.hardlinks: list[FileEntry] = []

    def close(self) -> None:
        os.close(self.root_fd)

    def _open_dir(self, parts: Sequence[str], create: bool) -> int:
        fd = os.dup(self.root_fd)
        try:
            for i, comp in enumerate(parts):
                try:
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise _Refused(f"{'/'.join(parts[: i + 1])} does not exist") from None
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise _Refused(
                            f"{'/'.join(parts[: i + 1])} is a symlink or file, not a directory"
                        ) from None
                    raise
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _remove(self, name: str, pfd: int) -> None:
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise _Refused("a directory is in the way")
        os.unlink(name, dir_fd=pfd)

    def write(
        self,
        entry: FileEntry,
        data: IO[bytes] | None,
        regions: Iterable[tuple[int, bytes]] | None = None,
    ) -> str | None:
        """Write one entry (a file from `data`, or a sparse one from its `regions`, with
        holes where it has them and its real size); return a reason if it was skipped."""
        parts = entry.path.split("/")
        if entry.kind is FileKind.DIR:
            fd = self._open_dir(parts, create=True)
            os.close(fd)
            self.dir_meta.setdefault(entry.path, entry)
            return None
        if entry.kind is FileKind.HARDLINK:
            self.hardlinks.append(entry)
            return None
        pfd = self._open_dir(parts[:-1], create=True)
        name = parts[-1]
        try:
            self._remove(name, pfd)
            if entry.kind is FileKind.FILE:
                fd = os.open(
                    name,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                    dir_fd=pfd,
                )
                try:
                    if regions is not None:  # sparse: only the data, the holes left holes
                        for offset, chunk in regions:
                            os.pwrite(fd, chunk, offset)
                        os.ftruncate(fd, entry.size)
                    elif data is not None:
                        with os.fdopen(fd, "wb", closefd=False) as out:
                            shutil.copyfileobj(data, out, COPY_CHUNK)
                    if self.as_root:
                        os.fchown(fd, entry.uid, entry.gid)
                    os.fchmod(fd, entry.mode)
                finally:
                    os.close(fd)
            elif entry.kind is FileKind.SYMLINK:
                os.symlink(entry.linkname, name, dir_fd=pfd)
                if self.as_root:
                    os.chown(name, entry.uid, entry.gid, dir_fd=pfd, follow_symlinks=False)
            elif entry.kind is FileKind.FIFO:
                os.mkfifo(name, entry.mode, dir_fd=pfd)
            elif entry.kind in (FileKind.CHAR, FileKind.BLOCK):
                if not self.as_root:
                    return "device node not created (needs root)"
                kind = stat.S_IFCHR if entry.kind is FileKind.CHAR else stat.S_IFBLK
                os.mknod(
                    name, kind | entry.mode, os.makedev(entry.devmajor, entry.devminor), dir_fd=pfd
                )
            if self.as_root and entry.kind in (FileKind.FIFO, FileKind.CHAR, FileKind.BLOCK):
                os.chown(name, entry.uid, entry.gid, dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(pfd)
        return None

    def finish(self, issue: Callable[[FileEntry, str], None]) -> None:
        for entry in self.hardlinks:
            src = entry.linkname.split("/")
            dst = entry.path.split("/")
            try:
                sfd = self._open_dir(src[:-1], create=False)
                try:
                    dfd = self._open_dir(dst[:-1], create=True)
                    try:
                        self._remove(dst[-1], dfd)
                        os.link(
                            src[-1], dst[-1], src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False
                        )
                    finally:
                        os.close(dfd)
                finally:
                    os.close(sfd)
            except (_Refused, FileNotFoundError) as e:
                why = (e.strerror or "unusable").lower() if isinstance(e, OSError) else str(e)
                issue(entry, f"hard link target {entry.linkname!r} unusable: {why}")
            except OSError as e:  # a directory (EPERM), another file system's (EXDEV)...
                issue(entry, f"hard link to {entry.linkname!r} not made: {e.strerror}")
        # Deepest first, so a parent's mode is set after its children's.
        for path in sorted(self.dir_meta, key=lambda p: p.count("/"), reverse=True):
            entry = self.dir_meta[path]
            fd = self._open_dir(path.split("/"), create=True)
            try:
                if self.as_root:
                    os.fchown(fd, entry.uid, entry.gid)
                os.fchmod(fd, entry.mode)
            finally:
                os.close(fd)


def flatten(layers: Sequence[LayerInput], dest: Path) -> list[LayerIssue]:
    """Write the image's final files into the existing, empty directory `dest`."""
    view = MergedView(layers)
    writer = _Writer(dest)
    layer_digest = {i: layer.digest for i, layer in enumerate(layers)}

    def issue(entry: FileEntry, reason: str) -> None:
        view.issues.append(LayerIssue(layer_digest[entry.layer], entry.path, "refused", reason))

    try:
        for item in view:
            data = regions = None
            if item.entry.kind is FileKind.FILE:
                regions = item.regions()
                data = item.open() if regions is None else None
            try:
                skipped = writer.write(item.entry, data, regions)
            except _Refused as e:
                issue(item.entry, str(e))
                continue
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise LocalIOError(
                        f"no space left writing the rootfs under {dest}",
                        hint="free disk space or set KCOMPAT_CACHE elsewhere",
                    ) from None
                raise BadImageError(f"cannot write {item.entry.path!r}: {e.strerror}") from None
            if skipped:
                view.issues.append(
                    LayerIssue(layer_digest[item.entry.layer], item.entry.path, "skipped", skipped)
                )
        writer.finish(issue)
    finally:
        writer.close()
    return view.issues


def _rmtree(path: Path) -> None:
    """Remove a tree that may hold read-only directories (made writable on the way).

    A loop over directory descriptors, not shutil.rmtree: a hostile image's tree can be
    deeper than Python's recursion limit and its paths longer than PATH_MAX."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    os.chmod(path, 0o700)
    stack: list[tuple[int, str]] = [(os.open(path, _DIR_FLAGS), "")]
    try:
        while stack:
            fd = stack[-1][0]
            with os.scandir(fd) as it:
                entries = list(it)
            sub = None
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    sub = entry.name
                else:
                    os.unlink(entry.name, dir_fd=fd)
            if sub is not None:  # down into it; it is removed once empty
                os.chmod(sub, 0o700, dir_fd=fd)
                stack.append((os.open(sub, _DIR_FLAGS, dir_fd=fd), sub))
                continue
            done, name = stack.pop()
            os.close(done)
            if stack:
                os.rmdir(name, dir_fd=stack[-1][0])
        os.rmdir(path)
    finally:
        for fd, _ in stack:
            os.close(fd)


def cached_rootfs(layers: Sequence[LayerInput], store: BlobStore) -> tuple[Path, list[LayerIssue]]:
    """The flattened rootfs for these layers, built once per chain and reused.

    Built in a temporary directory next to its final place and renamed when complete,
    so a crash or kill leaves no half-written rootfs under the final name; leftovers
    are removed by the next build of the same chain.

    The chain is of (digest, diff_id) pairs: a rootfs exists only once its layers were
    verified against those diff_ids, so an image whose config names other diff_ids for
    the same blobs builds (and fails) its own instead of reusing a verified one. (The
    per-layer scan cache records the computed diff_id instead, kcompat.layerscan: a
    rootfs has no such record to compare, and rebuilding one is rare.)
    """
    key = chain_id([f"{x.digest} {x.diff_id}" if x.diff_id else x.digest for x in layers])
    if max_file_size() != DEFAULT_MAX_FILE_SIZE:  # another limit flattens another tree
        key = chain_id([key, f"max-file-size {max_file_size()}"])
    base = store.root / "rootfs"
    final = base / key
    issues_file = base / f"{key}.issues.json"
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LocalIOError(
            f"cannot create {base}: {e.strerror}", hint="set KCOMPAT_CACHE to a writable directory"
        ) from None
    with store.lock(f"rootfs-{key}"):
        if final.is_dir() and issues_file.is_file():
            raw = json.loads(issues_file.read_text())
            return final, [LayerIssue(**d) for d in raw]
        for stale in base.glob(f".tmp-{key}-*"):
            _rmtree(stale)
        tmp = base / f".tmp-{key}-{os.getpid()}"
        tmp.mkdir(mode=0o755)
        try:
            issues = flatten(layers, tmp)
            os.chmod(tmp, 0o755)
            _rmtree(final)
            os.rename(tmp, final)
            tmp_issues = issues_file.with_suffix(".tmp")
            tmp_issues.write_text(json.dumps([asdict(i) for i in issues]))
            os.replace(tmp_issues, issues_file)
        except BaseException:
            with contextlib.suppress(OSError):  # the first error is the one to report
                _rmtree(tmp)
            raise
        return final, issues
