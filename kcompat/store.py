"""A content-addressed blob store on local disk, safe under concurrent use.

Layout (under the cache root):
  blobs/sha256/<hex>          verified blobs, only ever created by an atomic rename
  blobs/sha256/<hex>.partial  an interrupted download, kept for an HTTP Range resume
  locks/<hex>.lock            flock(2) files: one writer per digest at a time

A blob is renamed into place only after its digest checked out, so the store never
holds a corrupt blob under its name. Two processes fetching the same digest take the
same lock; the second finds the blob present when it gets the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import platformdirs

from kcompat.errors import LocalIOError, UnsupportedError


def default_cache_dir() -> Path:
    env = os.environ.get("KCOMPAT_CACHE")
    if env:
        return Path(env)
    return Path(platformdirs.user_cache_dir("kcompat"))


def _split(digest: str) -> tuple[str, str]:
    algo, _, hexpart = digest.partition(":")
    if (
        algo not in ("sha256", "sha512")
        or not hexpart
        or not all(c in "0123456789abcdef" for c in hexpart)
    ):
        raise UnsupportedError(f"digest {digest!r} is not a sha256/sha512 digest")
    return algo, hexpart


class BlobStore:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else default_cache_dir()

    def path(self, digest: str) -> Path:
        algo, hexpart = _split(digest)
        return self.root / "blobs" / algo / hexpart

    def partial_path(self, digest: str) -> Path:
        p = self.path(digest)
        return p.with_name(p.name + ".partial")

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def ensure_dirs(self, digest: str) -> None:
        try:
            self.path(digest).parent.mkdir(parents=True, exist_ok=True)
            (self.root / "locks").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LocalIOError(
                f"cannot create the cache under {self.root}: {e.strerror}",
                hint="set KCOMPAT_CACHE to a writable directory",
            ) from None

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """An exclusive lock on `name` (a digest or any key), held across processes."""
        key = name.replace(":", "-").replace("/", "_")
        lock_dir = self.root / "locks"
        try:
            lock_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_dir / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise LocalIOError(
                f"cannot lock {name} in {lock_dir}: {e.strerror}",
                hint="set KCOMPAT_CACHE to a writable directory",
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def commit_partial(self, digest: str) -> Path:
        """Rename a verified partial file into place (atomic: the name appears whole)."""
        final = self.path(digest)
        try:
            os.replace(self.partial_path(digest), final)
        except OSError as e:
            raise LocalIOError(
                f"cannot store blob {digest} in {final.parent}: {e.strerror}",
                hint="check that KCOMPAT_CACHE is writable",
            ) from None
        return final


def hash_file(hasher: Any, path: Path) -> None:
    """Feed the file at `path` to `hasher` (a hashlib object), 1 MiB at a time."""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
