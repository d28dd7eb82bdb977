"""A containers-storage layer's tar, rebuilt byte for byte from its tar-split.

`<root>/<driver>-layers/<id>.tar-split.gz` holds the layer tar's headers and padding
as recorded when it was applied (vbatts/tar-split: JSON lines, type 2 a raw segment,
type 1 a file whose bytes are on disk). Replaying it with the files' bytes gives the
original layer tar (tar-split asm.WriteOutputTarStream, what containers/storage
layerStore.Diff does), so its sha256 is the diff_id.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import posixpath
from pathlib import Path
from typing import Any

from kcompat.errors import BadImageError, IntegrityError, LocalIOError, NotFoundError

DAMAGED = "the store is damaged; remove the image and pull it again"


class TarSplitStream(io.RawIOBase):
    """A layer's tar, replayed from its tar-split and the files in the store, as
    tar-split's asm.WriteOutputTarStream does: segments are copied, a file entry with a
    size is read from the first diff directory that has it."""

    def __init__(self, tar_split: Path, dirs: list[bytes], what: str) -> None:
        super().__init__()
        self._what = what
        self._dirs = dirs
        self._real = [os.path.realpath(d) for d in dirs]
        try:
            self._meta = gzip.GzipFile(tar_split, "rb")
        except OSError as e:
            raise NotFoundError(
                f"{what}: cannot open {tar_split} ({e.strerror})", hint=DAMAGED
            ) from None
        self._pending = memoryview(b"")
        self._file: io.BufferedReader | None = None
        self._file_name = ""
        self._left = 0

    def readable(self) -> bool:
        return True

    def _open_member(self, raw_name: bytes) -> io.BufferedReader:
        rel = posixpath.normpath(b"/" + raw_name).lstrip(b"/")
        for top, real_top in zip(self._dirs, self._real):
            path = os.path.join(top, rel)
            real = os.path.realpath(path)
            if real != real_top and not real.startswith(real_top + b"/"):
                raise BadImageError(
                    f"{self._what}: {os.fsdecode(rel)} leads out of the layer's directory",
                    hint="the store holds a hostile layer; remove the image (podman rmi)",
                )
            try:
                return open(real, "rb")
            except FileNotFoundError:
                continue
            except OSError as e:
                raise LocalIOError(f"{self._what}: cannot read {os.fsdecode(path)} "
                                   f"({e.strerror})",
                                   hint="run as the store's owner") from None  # fmt: skip
        raise NotFoundError(
            f"{self._what}: {os.fsdecode(rel)} is missing from the store",
            hint=DAMAGED,
        )

    def _next_entry(self) -> bool:
        try:
            line = self._meta.readline()
        except (OSError, EOFError) as e:
            raise BadImageError(
                f"{self._what}: its tar-split is corrupt ({type(e).__name__})", hint=DAMAGED
            ) from None
        if not line.strip():
            return bool(line)  # a blank line: go on; nothing: the end
        try:
            entry = json.loads(line)
            kind = entry["type"]
            payload = base64.b64decode(entry.get("payload") or b"")
            raw = entry.get("name_raw")
            name = base64.b64decode(raw) if raw else str(entry.get("name") or "").encode()
            size = int(entry.get("size") or 0)
        except (ValueError, KeyError, TypeError) as e:
            raise BadImageError(
                f"{self._what}: its tar-split has a bad entry ({e})", hint=DAMAGED
            ) from None
        if kind == 2:
            self._pending = memoryview(payload)
        elif kind == 1 and size > 0:
            self._file = self._open_member(name)
            self._file_name = os.fsdecode(name)
            self._left = size
        return True

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        while True:
            if self._pending:
                n = min(len(out), len(self._pending))
                out[:n] = self._pending[:n]
                self._pending = self._pending[n:]
                return n
            if self._file is not None:
                if self._left == 0:
                    extra = self._file.read(1)
                    self._file.close()
                    self._file = None
                    if extra:
                        raise IntegrityError(
                            f"{self._what}: {self._file_name} in the store is longer than "
                            "the layer recorded",
                            hint="the image's files were changed in the store; pull it again",
                        )
                    continue
                n = self._file.readinto(out[: min(len(out), self._left)])
                if not n:
                    raise IntegrityError(
                        f"{self._what}: {self._file_name} in the store is shorter than the "
                        "layer recorded",
                        hint="the image's files were changed in the store; pull it again",
                    )
                self._left -= n
                return int(n)
            if not self._next_entry():
                return 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._meta.close()
        super().close()


def replayed_size(tar_split: Path) -> int:
    """The length of the tar a tar-split replays, counted without reading the files
    (its segments plus the files' recorded sizes)."""
    total = 0
    with gzip.open(tar_split, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            entry = json.loads(line)
            if entry.get("type") == 2:
                total += len(base64.b64decode(entry.get("payload") or b""))
            else:
                total += int(entry.get("size") or 0)
    return total
