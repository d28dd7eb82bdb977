"""Scanning an image layer by layer: one streaming pass per layer, cached by its digest.

Each layer is scanned on its own, as a stream: its blob is read, hashed and inflated in
a thread (kcompat.layers.Prefetch; hashlib and ISA-L release the GIL), while the tar
headers are parsed (kcompat.tarstream) and each regular file is judged on its first
bytes: non-ELF data is skipped without a copy, ELF and the few other formats kcompat
reads are parsed (kcompat.scan.scan_file). Nothing is written to disk but the result.
Memory is the largest file examined plus a few chunks of 4 MiB.

A layer's result (`LayerScan`: every header, and what was found in its files) depends
only on the layer's bytes and the scanner's code. So it is cached under the layer's
digest and a key computed from the scanner's own source files (SCANNER_KEY): a layer
shared by many images is scanned once, a second `check` of an image reads only these
results, and any change to the scanner's code makes new keys. Results are written to a
temporary file and renamed into place, so concurrent runs never see a partial one.

A layer's uncompressed tar is hashed as it streams and the result records that
digest (`LayerScan.diff_id`); the image's config says which diff_id each layer must
have, and `verify_diff_ids` compares the two whether the result was scanned now or read
from the cache. The cache stays keyed by the compressed digest alone: the diff_id is a
fact about the blob's bytes, so recording it keeps one scan per blob, however many
configs name it, and an image whose config lies about a cached layer is still refused
(keying by (digest, diff_id) would rescan the same blob for each config, and only
refuse the lie when it came with a scan).

Layers not in the cache are scanned in parallel, one worker process each (forked, so
the already opened source is inherited), largest first, up to the machine's cores.
The image's `Scan` is then assembled from the layers' results by the same merge rules
as the streaming view (kcompat.merged.merge): whiteouts, opaque directories, hostile
entries.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from kcompat import formats
from kcompat.cache import ResultCache, code_key, gc_paused
from kcompat.elf import UnreadableError
from kcompat.filescan import KEEP_MAX, ScannedFile, keep_text, scan_file
from kcompat.formats import Format
from kcompat.layers import (
    HashThread,
    LayerIssue,
    Prefetch,
    VerifyingReader,
    check_diff_id,
    clean_path,
    corrupt,
    decompressed_chunks,
    diff_id_hash,
)
from kcompat.merged import Header, max_file_size, merge
from kcompat.scan import Scan, ScanBuilder
from kcompat.tarstream import FILE_TYPES, TarError, TarHeader, TarStream

# The modules whose code decides a LayerScan's content.
_SCANNER_MODULES = (
    "filescan", "scan", "elf", "elffile", "goinfo", "formats", "disasm", "disasm_isas", "tarstream",
    "layers", "layerscan", "families", "vsyscall",
)
_SCANNER_DATA = ("families.json",)  # the marker strings the scan looks for


_HERE = Path(__file__).resolve().parent


def _scanner_key() -> str:
    return code_key(
        [_HERE / f"{name}.py" for name in _SCANNER_MODULES]
        + [_HERE / "data" / name for name in _SCANNER_DATA]
    )


SCANNER_KEY = _scanner_key()


@dataclass
class LayerScan:
    """What one layer holds: every tar header in order, and, by header index, the files
    whose format kcompat reads, the small text files it keeps, and C library banners."""

    digest: str
    diff_id: str = ""  # the digest of the uncompressed tar, as the scan computed it
    headers: list[TarHeader] = field(default_factory=list)
    files: dict[int, ScannedFile] = field(default_factory=dict)
    texts: dict[int, str] = field(default_factory=dict)
    banners: dict[int, str] = field(default_factory=dict)
    limited: bool = False  # a file was skipped for KCOMPAT_MAX_FILE_SIZE: never cached


def scan_layer(reader: VerifyingReader, digest: str) -> LayerScan:
    """One streaming pass over a layer blob; raises BadImageError/IntegrityError for a
    corrupt or tampered blob."""
    what = f"layer {digest}"
    out = LayerScan(digest)
    limit = max_file_size()
    tar_hash = HashThread(diff_id_hash())  # inflating, hashing, parsing: three threads
    prefetch = Prefetch(decompressed_chunks(reader, what))

    def hashed() -> Iterator[bytes]:
        for chunk in prefetch:
            tar_hash.update(chunk)
            yield chunk

    chunks = hashed()
    tar = TarStream(chunks)
    try:
        for i, h in enumerate(tar):
            out.headers.append(h)
            if h.type not in FILE_TYPES:
                continue
            if h.size > limit:
                out.limited = True
                continue
            rel, _ = clean_path(h.name)
            if not rel:
                continue  # refused by the merge; its data is skipped
            path = "/" + rel
            head = tar.read(formats.HEAD_SIZE)
            if keep_text(path) and h.size <= KEEP_MAX:
                out.texts[i] = (head + tar.read()).decode("utf-8", "replace")
                continue
            whole = partial(_read_whole, tar, head, h.size)
            scanned, banner = scan_file(path, h.mode & 0o7777, h.size, head, tar.read, whole)
            if scanned.format is not Format.OTHER:
                out.files[i] = scanned
            if banner:
                out.banners[i] = banner
        for _ in chunks:  # to the blob's end: the digest is checked there
            pass
    except TarError as e:
        reader.after_error()
        raise corrupt(what, str(e)) from None
    finally:
        prefetch.close()
        tar_hash.close()
    out.diff_id = f"sha256:{tar_hash.hexdigest()}"
    return out


# A file is read whole (to parse it as ELF, PE, Mach-O) only up to this size: the largest
# real binaries are a few hundred MB, while a header (or a sparse map) can claim 64 GiB
# that a bomb of a few MB provides, and holding it would exhaust the machine.
WHOLE_MAX = 2 << 30


def _read_whole(tar: TarStream, head: bytes, size: int) -> bytes:
    if size > WHOLE_MAX:
        raise UnreadableError(f"{size} bytes: larger than the {WHOLE_MAX >> 20} MiB kcompat reads")
    try:
        return tar.read_whole(head)
    except MemoryError:
        raise UnreadableError(f"{size} bytes: not enough memory to read it") from None


def verify_diff_ids(scans: Sequence[LayerScan], diff_ids: Sequence[str | None]) -> None:
    """Each layer's computed diff_id against the config's (None: nothing to compare)."""
    for ls, expected in zip(scans, diff_ids):
        check_diff_id(ls.digest, ls.diff_id, expected)


# -- the cache ---------------------------------------------------------------------------


class LayerCache(ResultCache):
    """LayerScans by layer digest, under the scanner's code key."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, "scans", SCANNER_KEY)

    def load(self, digest: str) -> LayerScan | None:
        loaded = self.read(digest)
        if not isinstance(loaded, LayerScan) or loaded.digest != digest:
            return None
        return loaded

    def save(self, scan: LayerScan) -> bytes:
        if scan.limited:  # files left out by a KCOMPAT_MAX_FILE_SIZE: not for other runs
            return pickle.dumps(scan, protocol=pickle.HIGHEST_PROTOCOL)
        return self.write(scan.digest, scan)


# -- many layers ----------------------------------------------------------------------

Opener = Callable[[str], VerifyingReader]  # digest -> the layer blob's reader
_JOB: tuple[Opener, LayerCache] | None = None  # inherited by forked workers


def _scan_and_save(digest: str) -> tuple[LayerScan, bytes]:
    assert _JOB is not None
    opener, cache = _JOB
    with gc_paused():
        scan = scan_layer(opener(digest), digest)
        return scan, cache.save(scan)


def _worker(digest: str) -> bytes:
    """In a worker process: the result goes back to the parent pickled."""
    return _scan_and_save(digest)[1]


def scan_layers(
    layers: Sequence[tuple[str, int]],
    opener: Opener,
    cache: LayerCache,
    jobs: int | None = None,
    after_fork: Callable[[], None] | None = None,
    diff_ids: Sequence[str | None] = (),
) -> list[LayerScan]:
    """The LayerScan of each (digest, size), from the cache or scanned now: in parallel
    worker processes when more than one layer is missing and there is more than one core
    (`after_fork` runs first in each). `opener` is called only for layers scanned now.
    `diff_ids` (the config's, in layer order) are checked against every result."""
    global _JOB
    found: dict[str, LayerScan | None] = {d: cache.load(d) for d, _ in layers}
    todo = sorted({(s, d) for d, s in layers if found[d] is None}, reverse=True)
    workers = min(len(todo), jobs or os.cpu_count() or 1)
    _JOB = (opener, cache)
    try:
        if workers <= 1:
            for _, d in todo:
                found[d] = _scan_and_save(d)[0]  # in this process: no round trip
        else:
            ctx = multiprocessing.get_context("fork")
            start = partial(_worker_start, os.getpid(), after_fork)
            with ProcessPoolExecutor(workers, ctx, initializer=start) as pool:
                futures = {d: pool.submit(_worker, d) for _, d in todo}
                try:
                    for d, fut in futures.items():
                        found[d] = pickle.loads(fut.result())
                except BaseException:
                    for fut in futures.values():
                        fut.cancel()
                    raise
    finally:
        _JOB = None
    scans: list[LayerScan] = [found[d] for d, _ in layers]  # type: ignore[misc]
    verify_diff_ids(scans, diff_ids)
    return scans


def _worker_start(parent: int, after_fork: Callable[[], None] | None) -> None:
    """A scan worker ends with kcompat: an interrupted kcompat leaves at once
    (os._exit), and a worker it left behind would keep the caller's stdout and stderr
    open, waiting for work that never comes."""
    import signal

    from kcompat.linuxapi import set_pdeathsig

    set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent:  # kcompat ended before the line above
        os._exit(1)
    if after_fork is not None:
        after_fork()


def assemble(scans: Sequence[LayerScan], env: dict[str, str]) -> tuple[Scan, list[LayerIssue]]:
    """The image's Scan from its layers' results, lowest layer first."""
    issues: list[LayerIssue] = []

    def members(ls: LayerScan) -> Callable[[], Iterator[tuple[Header, int]]]:
        return lambda: ((h, i) for i, h in enumerate(ls.headers))

    build = ScanBuilder()
    inputs = [(ls.digest, members(ls)) for ls in scans]
    for entry, index in merge(inputs, max_file_size(), issues):
        path = build.add(entry)
        if path is not None:
            ls = scans[entry.layer]
            build.content(path, ls.files.get(index), ls.texts.get(index), ls.banners.get(index))
    return build.scan(env), issues
