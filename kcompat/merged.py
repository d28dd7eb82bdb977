"""The merged view: an image's final files, in one streaming pass over its layers.

Layers are read from the top (newest) down. A file is final when no higher layer has
the same path, a whiteout for it or an ancestor (`.wh.NAME`), an opaque marker on an
ancestor (`.wh..wh..opq`), or a non-directory at an ancestor. These are the OCI image
spec's rules (layer.md, "Whiteouts"): reading top-down needs no extraction and no
second pass. Within one layer a path written twice is yielded twice; the later wins.

Hostile entries are refused or neutralised and recorded as LayerIssues:
`..` escaping the root, paths through a symlink or file of the same layer, a lower
layer's non-directory where a higher layer writes a directory, absurd sizes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Protocol, TypeVar

from kcompat.layers import (
    FileEntry,
    FileKind,
    LayerIssue,
    TarMember,
    VerifyingReader,
    clean_path,
    entry_kind,
    iter_tar,
)

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
DEFAULT_MAX_FILE_SIZE = 64 * 1024**3  # 64 GiB: no real image file is larger


def max_file_size() -> int:
    """KCOMPAT_MAX_FILE_SIZE: files larger are refused (and reported). It changes what
    an image is, so every cache of merged results keys on it."""
    text = os.environ.get("KCOMPAT_MAX_FILE_SIZE")
    if text is None:
        return DEFAULT_MAX_FILE_SIZE
    if not text.strip().isdigit() or int(text) <= 0:
        from kcompat.errors import UsageError

        raise UsageError(
            f"KCOMPAT_MAX_FILE_SIZE={text!r} is not a positive number of bytes",
            hint="e.g. KCOMPAT_MAX_FILE_SIZE=68719476736 (64 GiB, the default)",
        )
    return int(text)


@dataclass(frozen=True)
class LayerInput:
    """A layer: its blob's digest, how to open it, and the config's diff_id for it (the
    digest of its uncompressed tar, checked as it streams; None: nothing to check)."""

    digest: str
    open: Callable[[], VerifyingReader]
    diff_id: str | None = None


@dataclass
class ViewItem:
    """A final file; `open()` reads its bytes and is valid only until the next item."""

    entry: FileEntry
    member: TarMember | None = field(repr=False, default=None)

    def open(self) -> IO[bytes]:
        """The file's bytes, a sparse file's holes as zeros."""
        return self._member().open()

    def regions(self) -> Iterator[tuple[int, bytes]] | None:
        """A sparse file's stored data by offset, its holes not read (so a writer can
        leave them holes); None for a plain file: read it with `open()`."""
        member = self._member()
        return member.regions() if member.sparse() is not None else None

    def _member(self) -> TarMember:
        if self.member is None or self.entry.kind is not FileKind.FILE:
            raise ValueError(f"{self.entry.path} has no content to read")
        return self.member


def _ancestors(path: str) -> Iterator[str]:
    i = path.rfind("/")
    while i > 0:
        path = path[:i]
        yield path
        i = path.rfind("/")


class Header(Protocol):
    """What the merge reads of a tar header: tarfile.TarInfo and tarstream.TarHeader."""

    @property
    def name(self) -> str: ...
    @property
    def type(self) -> bytes: ...
    @property
    def mode(self) -> int: ...
    @property
    def uid(self) -> int: ...
    @property
    def gid(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def linkname(self) -> str: ...
    @property
    def devmajor(self) -> int: ...
    @property
    def devminor(self) -> int: ...


P = TypeVar("P")
# a layer for `merge`: its digest and a function giving its (header, payload) pairs in order
MergeLayer = tuple[str, Callable[[], Iterable[tuple[Header, P]]]]


class _Memo:
    """Answers by parent directory, for one layer (most entries share their parent with
    the entries before them): is it hidden by a higher layer's whiteout, opaque marker or
    non-directory (those sets do not change while a layer is read); is it written
    through a non-directory of this layer (forgotten if a non-directory appears at a
    directory already answered for: rare, and hostile)."""

    def __init__(self, masked: set[str], opaque: set[str], nondir_here: set[str]) -> None:
        self.masked, self.opaque, self.nondir_here = masked, opaque, nondir_here
        self._hidden: dict[str, bool] = {}
        self._through: dict[str, str | None] = {}

    # Both walk up to the nearest answered ancestor and record the answer for the whole
    # chain: a loop, not recursion, so 2000 levels of directories cost no stack.
    def hidden(self, parent: str) -> bool:
        chain: list[str] = []
        p = parent
        while True:
            h = self._hidden.get(p)
            if h is not None:
                break
            chain.append(p)
            if p in self.masked or p in self.opaque or "/" not in p:
                h = p in self.masked or p in self.opaque
                break
            p = p[: p.rfind("/")]
        for q in chain:
            self._hidden[q] = h
        return h

    def through(self, parent: str) -> str | None:
        chain: list[str] = []
        p = parent
        while True:
            if p in self._through:
                bad = self._through[p]
                break
            chain.append(p)
            if p in self.nondir_here or "/" not in p:
                bad = p if p in self.nondir_here else None
                break
            p = p[: p.rfind("/")]
        for q in chain:
            self._through[q] = bad
        return bad

    def new_nondir(self, path: str) -> None:
        if path in self._through:
            self._through.clear()


def merge(
    layers: Sequence[MergeLayer[P]],
    max_size: int,
    issues: list[LayerIssue],
) -> Iterator[tuple[FileEntry, P]]:
    """The final entries of layers given lowest first, read top-down (see the module's
    doc), each with the payload its layer paired with its header. Refused and
    neutralised entries are appended to `issues`."""
    seen: set[str] = set()  # exact paths final in a higher layer
    masked: set[str] = set()  # whiteouts and non-directories of higher layers
    opaque: set[str] = set()  # directories whose lower content is hidden
    implied_dirs: set[str] = set()  # ancestors of anything yielded so far
    for index in range(len(layers) - 1, -1, -1):
        digest, members = layers[index]

        def issue(path: str, action: str, reason: str, digest: str = digest) -> None:
            issues.append(LayerIssue(digest, path, action, reason))

        seen_here: set[str] = set()
        masked_here: set[str] = set()
        opaque_here: set[str] = set()
        nondir_here: set[str] = set()
        memo = _Memo(masked, opaque, nondir_here)
        for info, payload in members():
            path, note = clean_path(info.name)
            if path is None:
                issue(info.name, "refused", note or "bad path")
                continue
            if path == "":
                continue  # the root directory itself
            if note:
                issue(info.name, "neutralised", note)
            parent, _, base = path.rpartition("/")
            if base.startswith(WHITEOUT):
                if base == OPAQUE:
                    opaque_here.add(parent)
                elif not base.startswith(WHITEOUT + WHITEOUT):  # .wh..wh.plnk (aufs)
                    masked_here.add(f"{parent}/{base[4:]}" if parent else base[4:])
                continue
            # Hidden by a higher layer: normal layering, not an issue.
            if path in seen or path in masked or (parent and memo.hidden(parent)):
                continue
            kind = entry_kind(info.type)
            if kind is None:
                issue(path, "skipped", f"unsupported tar entry type {info.type!r}")
                continue
            bad_parent = memo.through(parent) if parent else None
            if bad_parent is not None:
                issue(
                    path,
                    "refused",
                    f"written through {bad_parent!r}, which this layer made a symlink or file",
                )
                continue
            if kind is not FileKind.DIR and path in implied_dirs:
                issue(
                    path,
                    "neutralised",
                    f"this {kind.value} is replaced by the directory that "
                    "a higher layer writes into",
                )
                continue
            if kind is FileKind.FILE and info.size > max_size:
                issue(
                    path,
                    "refused",
                    f"size {info.size} exceeds the limit {max_size} (KCOMPAT_MAX_FILE_SIZE)",
                )
                continue
            linkname = info.linkname
            if kind is FileKind.HARDLINK:
                target, _ = clean_path(linkname)
                if not target:
                    issue(
                        path, "refused", f"hard link to {linkname!r} points outside the image root"
                    )
                    continue
                linkname = target
            seen_here.add(path)
            if kind is not FileKind.DIR:
                nondir_here.add(path)
                memo.new_nondir(path)
            if parent and parent not in implied_dirs:  # else its ancestors are in too
                implied_dirs.update(_ancestors(path))
            entry = FileEntry(
                path=path,
                kind=kind,
                mode=info.mode & 0o7777,
                size=info.size if kind is FileKind.FILE else 0,
                linkname=linkname,
                uid=info.uid,
                gid=info.gid,
                devmajor=info.devmajor,
                devminor=info.devminor,
                layer=index,
            )
            yield entry, payload
        seen |= seen_here
        masked |= masked_here | nondir_here
        opaque |= opaque_here


class MergedView:
    def __init__(self, layers: Sequence[LayerInput], max_size: int | None = None) -> None:
        self.layers = list(layers)
        self.issues: list[LayerIssue] = []
        self.max_size = max_size if max_size is not None else max_file_size()

    def __iter__(self) -> Iterator[ViewItem]:
        def members(layer: LayerInput) -> Callable[[], Iterator[tuple[Header, TarMember]]]:
            what = f"layer {layer.digest}"
            return lambda: (
                (m.info, m) for m in iter_tar(layer.open(), what, layer.diff_id, layer.digest)
            )

        inputs = [(layer.digest, members(layer)) for layer in self.layers]
        for entry, member in merge(inputs, self.max_size, self.issues):
            yield ViewItem(entry, member if entry.kind is FileKind.FILE else None)
