"""kcompat's result caches: pickled results on disk, keyed by what they were computed
from and by the code that computed them.

Every cache of results (the layers' scans, the images' analyses, the docker-daemon
export records) is a `ResultCache`: `<root>/<kind>/<code key>/<algo>/<hex>`, one file
per result, written to a temporary file and renamed into place (concurrent runs never
see a partial one), read only if this user wrote it (a pickle runs code when loaded).
The code key (`code_key`) hashes kcompat's version, the Python version and the source
files that decide the result, so a result made by other code is never read, and the
first write under a new key removes the other keys' results.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import pickle
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path

from kcompat import __version__
from kcompat.errors import BadImageError

_PACKAGE = Path(__file__).resolve().parent


@cache
def analysis_key() -> str:
    """Every module and data file of kcompat: any change to them is a new key (of the
    images' analyses and of the reports made from them)."""
    files = sorted(_PACKAGE.rglob("*.py")) + sorted(_PACKAGE.rglob("*.json"))
    tables = _PACKAGE.parent / "syscall_tables" / "data"  # a source checkout's layout
    if tables.is_dir():
        files += sorted(tables.glob("*.json"))
    return code_key(files)


def code_key(files: Sequence[Path]) -> str:
    """A short hash of kcompat's version, the Python version and the given files' bytes:
    a cache entry made under another key was made by other code and is never read."""
    h = hashlib.sha256(f"{__version__} {sys.version_info[:2]} {pickle.HIGHEST_PROTOCOL}".encode())
    for path in files:
        try:
            h.update(path.read_bytes())
        except OSError:  # pragma: no cover - an install without sources: the version only
            h.update(path.name.encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a large result is built, pickled or
    unpickled: a layer's scan or an image's analysis is ~100,000 long-lived objects and
    next to no garbage, and every collection would walk them all again (on the 1.13 GB
    speed corpus image: the analysis drawn and written in 1.4 s instead of 2.2 s)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


class ResultCache:
    """Pickled results on disk under <root>/<kind>/<code key>/, private to the user:
    written to a temporary file and renamed into place, read only if this user wrote it."""

    def __init__(self, root: Path, kind: str, key: str) -> None:
        self.dir = root / kind / key
        self.key = key

    def path(self, digest: str) -> Path:
        algo, _, hexpart = digest.partition(":")
        if not hexpart.isalnum() or not algo.isalnum():
            raise BadImageError(f"{digest!r} is not a digest")
        return self.dir / algo / hexpart

    def read(self, digest: str) -> object | None:
        """The cached object, or None (missing, another user's, or unreadable: removed)."""
        path = self.path(digest)
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_uid != os.geteuid():
                    return None  # never unpickle what another user could have written
                loaded: object = pickle.load(f)
                return loaded
        except FileNotFoundError:
            return None
        except Exception:  # a damaged entry is a miss; it is rewritten after the scan
            with contextlib.suppress(OSError):
                path.unlink()
            return None

    def write(self, digest: str, obj: object) -> bytes:
        """Write atomically (best effort: a cache that cannot be written is no error);
        return the pickled bytes."""
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        path = self.path(digest)
        try:
            if not path.parent.is_dir():
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._prune()
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError:
            pass
        return data

    def _prune(self) -> None:
        """Results of other code versions are never read again: remove them."""
        for other in self.dir.parent.iterdir():
            if other.name != self.key and other.is_dir():
                shutil.rmtree(other, ignore_errors=True)
