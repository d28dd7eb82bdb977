"""The fast scan path (issue 7): the streaming tar reader against tarfile, inflating
with its hostile inputs, per-layer scans and their cache, the parallel workers, and the
cached image analysis. Correctness only: bench/speed.py measures the speed."""

from __future__ import annotations

import gzip
import io
import multiprocessing
import os
import pickle
import tarfile
from pathlib import Path

import pytest
import zstandard

from kcompat import layerscan
from kcompat.errors import BadImageError, IntegrityError
from kcompat.layers import CHUNK, FileKind, LayerIssue, VerifyingReader, decompressed_chunks
from kcompat.layerscan import LayerCache, assemble, scan_layer, scan_layers
from kcompat.merged import LayerInput, MergedView
from kcompat.scan import Item, scan_items
from kcompat.tarstream import TarError, TarStream
from tests.conftest import Fixtures
from tests.layertools import E, layer, layers, tar_bytes

ELF_HOST = Path("/usr/bin/ls")


def _tarfile_headers(data: bytes) -> list[tuple[object, ...]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tf:
        for m in tf:
            body = tf.extractfile(m).read() if m.isreg() else None  # type: ignore[union-attr]
            out.append((m.name, m.type, m.mode, m.uid, m.gid, m.size, m.linkname, body))
    return out


def _stream_headers(data: bytes, chunk: int = 4096) -> list[tuple[object, ...]]:
    ts = TarStream(iter([data[i : i + chunk] for i in range(0, len(data), chunk)]))
    out = []
    for h in ts:
        body = ts.read() if h.type in (b"0", b"\0") else None
        out.append((h.name.rstrip("/"), h.type, h.mode, h.uid, h.gid, h.size, h.linkname, body))
    return out


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_reader_equals_tarfile(fmt: int) -> None:
    """Long names (ustar prefix, GNU L/K, pax path/linkpath), non-ASCII names, big ids,
    every entry type, data of odd sizes, read through chunks that split headers."""
    buf = io.BytesIO()
    deep = "/".join(["d" * 40] * 3) + "/file"  # 124 chars: needs a prefix or long name
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, kind, data, link in (
            ("etc", tarfile.DIRTYPE, b"", ""),
            ("etc/hostname", tarfile.REGTYPE, b"kcompat\n", ""),
            (deep, tarfile.REGTYPE, os.urandom(1000), ""),
            ("usr/bin/sh", tarfile.SYMTYPE, b"", "dash"),
            ("usr/bin/hard", tarfile.LNKTYPE, b"", "etc/hostname"),
            ("dev/null", tarfile.CHRTYPE, b"", ""),
            ("run/fifo", tarfile.FIFOTYPE, b"", ""),
            ("empty", tarfile.REGTYPE, b"", ""),
            ("odd", tarfile.REGTYPE, os.urandom(513), ""),
        ):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, link, len(data)
            info.uid = 1000
            tar.addfile(info, io.BytesIO(data) if data else None)
        if fmt != tarfile.USTAR_FORMAT:  # names ustar cannot hold
            for name in ("x" * 150, "usr/share/Ünïcode-ñame"):
                info = tarfile.TarInfo(name)
                info.size, info.uid = 3, 70000 if fmt == tarfile.PAX_FORMAT else 1
                tar.addfile(info, io.BytesIO(b"abc"))
            info = tarfile.TarInfo("longlink")
            info.type, info.linkname = tarfile.SYMTYPE, "t" * 150
            tar.addfile(info)
    data = buf.getvalue()
    want = _tarfile_headers(data)
    assert len(want) >= 9
    for chunk in (1, 511, 4096, len(data)):
        assert _stream_headers(data, chunk) == want, chunk


def test_tar_reader_refuses_what_go_refuses() -> None:
    data = bytearray(tar_bytes([E("a", data=b"x" * 600), E("b", data=b"y")]))
    bad = bytearray(data)
    bad[0] ^= 1  # the first header's name: its checksum no longer matches
    with pytest.raises(TarError, match="checksum"):
        list(TarStream(iter([bytes(bad)])))
    with pytest.raises(TarError, match="ends inside a member"):
        list(TarStream(iter([bytes(data[:700])])))  # cut inside a's data
    with pytest.raises(TarError, match="ends inside a header"):
        list(TarStream(iter([bytes(data[: 512 + 1024 + 100])])))


def test_tar_reader_accepts_a_layer_without_end_blocks() -> None:
    """umoci 0.4 ends a layer right after the last file's data (Go accepts it)."""
    data = tar_bytes([E("a", data=b"x" * 600)])
    for end in (512 + 600, 512 + 700):  # no padding, or part of it; no end-of-archive blocks
        ts = TarStream(iter([data[:end]]))
        assert [(h.name, ts.read()) for h in ts] == [("a", b"x" * 600)]
        assert not ts.end_seen
    ts = TarStream(iter([data]))
    assert [h.name for h in ts] == ["a"] and ts.end_seen


def _chunks(blob: bytes) -> list[bytes]:
    digest = layer(blob).digest
    reader = VerifyingReader(io.BytesIO(blob), digest, len(blob), "layer")
    return list(decompressed_chunks(reader, "layer x"))


def test_inflate_formats_members_padding_and_bombs() -> None:
    tar = tar_bytes([E("a", data=os.urandom(5000))])
    for blob in (
        gzip.compress(tar),
        zstandard.ZstdCompressor().compress(tar),
        tar,
        gzip.compress(tar[:3000]) + gzip.compress(tar[3000:]),  # two gzip members (pigz -i)
        gzip.compress(tar) + bytes(1024),  # zero padding after the stream
    ):
        assert b"".join(_chunks(blob)) == tar
    bomb = gzip.compress(bytes(64 << 20))  # 64 MiB of zeros in 64 KiB
    assert max(len(c) for c in _chunks(bomb)) <= CHUNK


def test_damaged_zstd_frames_are_one_corrupt_layer_error() -> None:
    """zstandard is imported only for a zstd layer; its errors still end as the one
    BadImageError of a damaged compressed stream, in words."""
    good = zstandard.ZstdCompressor().compress(tar_bytes([E("a", data=os.urandom(5000))]))
    for bad in (good[:4] + b"\xff\xff\xff" + good[7:], good[:6] + b"\xff" * 8 + good[14:]):
        with pytest.raises(BadImageError, match="the compressed data is damaged"):
            _chunks(bad)


@pytest.mark.parametrize(
    "damage,error",
    [
        (lambda b: b[: len(b) // 2], BadImageError),  # truncated
        (lambda b: b[:-8] + bytes(4) + b[-4:], BadImageError),  # CRC32 wrong
        (lambda b: b + b"garbage", BadImageError),  # data after the stream
        (lambda b: b[:100] + bytes([b[100] ^ 0xFF]) + b[101:], (BadImageError, IntegrityError)),
    ],
)
def test_inflate_damaged_blobs(damage: object, error: type[Exception]) -> None:
    good = gzip.compress(tar_bytes([E("a", data=os.urandom(5000))]))
    bad = damage(good)  # type: ignore[operator]
    with pytest.raises(error):
        _chunks(bad)


def test_digest_mismatch_is_an_integrity_error() -> None:
    blob = gzip.compress(tar_bytes([E("a", data=b"1")]))
    reader = VerifyingReader(io.BytesIO(blob), "sha256:" + "0" * 64, len(blob), "layer y")
    with pytest.raises(IntegrityError):
        scan_layer(reader, "sha256:" + "0" * 64)


# -- per-layer scans -----------------------------------------------------------------------

HOSTILE = [
    [E("bin", tarfile.DIRTYPE), E("bin/ls", data=ELF_HOST.read_bytes(), mode=0o755),
     E("etc/os-release", data=b"ID=test\n"), E("lib", tarfile.SYMTYPE, link="usr/lib")],
    [E("bin/.wh.ls"), E("etc/.wh..wh..opq"), E("etc/hostname", data=b"h\n"),
     E("usr/bin/true", data=ELF_HOST.read_bytes(), mode=0o755),
     E("usr/bin/t2", tarfile.LNKTYPE, link="usr/bin/true"),
     E("../escape", data=b"x"), E("/abs/ok", data=b"#!/bin/sh\n", mode=0o755),
     E("evil", tarfile.SYMTYPE, link="/etc"), E("evil/passwd", data=b"root"),
     E("dev/sda", tarfile.BLKTYPE, major=8)],
    [E("usr/bin/true", data=b"not elf any more", mode=0o755), E("lib/x", data=b"through")],
]  # fmt: skip


def _opener(inputs: list[LayerInput]) -> layerscan.Opener:
    by = {i.digest: i for i in inputs}
    return lambda d: by[d].open()


def _via_view(inputs: list[LayerInput]) -> tuple[object, list[LayerIssue]]:
    view = MergedView(inputs)
    scan = scan_items(Item(v.entry, v.open) for v in view)
    return scan, view.issues


@pytest.mark.parametrize("jobs", [1, 2])
def test_layer_scans_assemble_to_what_the_streaming_view_gives(tmp_path: Path, jobs: int) -> None:
    inputs = layers(*HOSTILE)
    scans = scan_layers(
        [(i.digest, 1) for i in inputs], _opener(inputs), LayerCache(tmp_path), jobs
    )
    scan, issues = assemble(scans, {})
    want, want_issues = _via_view(inputs)  # the same blobs (gzip stamps a time)
    assert scan.files == want.files  # type: ignore[attr-defined]
    assert scan.tree.nodes == want.tree.nodes  # type: ignore[attr-defined]
    assert scan.texts == want.texts  # type: ignore[attr-defined]
    assert sorted(map(str, issues)) == sorted(map(str, want_issues))
    assert "/bin/ls" not in scan.files  # whited out by the second layer
    assert scan.files["/abs/ok"].script is not None  # made relative, and kept
    assert "/usr/bin/true" not in scan.files  # the top layer's text replaced the ELF
    assert any("escape" in str(i) for i in issues) and any("evil/passwd" in str(i) for i in issues)
    assert scan.tree.nodes["/dev/sda"].kind is FileKind.BLOCK


def test_cache_hit_needs_no_blob_and_a_new_scanner_rescans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = layers(*HOSTILE)
    digests = [(i.digest, 1) for i in inputs]
    first = scan_layers(digests, _opener(inputs), LayerCache(tmp_path))

    def no_blob(digest: str) -> VerifyingReader:
        raise AssertionError(f"{digest} was read again")

    again = scan_layers(digests, no_blob, LayerCache(tmp_path))
    assert [s.files for s in again] == [s.files for s in first]
    old_dir = LayerCache(tmp_path).dir
    monkeypatch.setattr(layerscan, "SCANNER_KEY", "0123456789abcdef")
    with pytest.raises(AssertionError, match="read again"):
        scan_layers(digests, no_blob, LayerCache(tmp_path))
    scan_layers(digests, _opener(inputs), LayerCache(tmp_path))
    assert not old_dir.exists()  # the other scanner's results are pruned


def test_damaged_or_foreign_cache_entries_are_misses(tmp_path: Path) -> None:
    inputs = layers(HOSTILE[0])
    digests = [(inputs[0].digest, 1)]
    cache = LayerCache(tmp_path)
    scan_layers(digests, _opener(inputs), cache)
    path = cache.path(inputs[0].digest)
    path.write_bytes(path.read_bytes()[:100])  # truncated by hand
    assert cache.load(inputs[0].digest) is None and not path.exists()
    scan_layers(digests, _opener(inputs), cache)
    assert cache.load(inputs[0].digest) is not None
    if os.geteuid() == 0:
        os.chown(path, 4242, 4242)  # written by someone else: never unpickled
        assert cache.load(inputs[0].digest) is None


def _scan_in_child(root: str, digest: str, blob: bytes, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    def opener(d: str) -> VerifyingReader:
        return VerifyingReader(io.BytesIO(blob), d, len(blob), "layer")

    scans = scan_layers([(digest, len(blob))], opener, LayerCache(Path(root)))
    out.put(pickle.dumps(sorted(f.path for f in scans[0].files.values())))


def test_concurrent_scans_of_one_layer(tmp_path: Path) -> None:
    """Four processes scan the same layer into one cache at once: each gets the full
    result and the entry left behind is whole."""
    blob = gzip.compress(tar_bytes(HOSTILE[0] * 1))
    digest = layer(blob).digest
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_scan_in_child, args=(str(tmp_path), digest, blob, out))
             for _ in range(4)]  # fmt: skip
    for p in procs:
        p.start()
    results = [pickle.loads(out.get(timeout=60)) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert results == [["/bin/ls"]] * 4
    loaded = LayerCache(tmp_path).load(digest)
    assert loaded is not None and loaded.digest == digest
    entries = LayerCache(tmp_path).path(digest).parent.iterdir()
    assert [p.name for p in entries if p.name.startswith(".tmp")] == []


def test_a_worker_error_reaches_the_caller_whole(tmp_path: Path) -> None:
    good = layers(HOSTILE[0])[0]
    bad_blob = gzip.compress(tar_bytes([E("a", data=b"x" * 5000)]))[:-30]
    bad = layer(bad_blob)
    with pytest.raises(BadImageError) as err:
        scan_layers([(good.digest, 1), (bad.digest, 2)], _opener([good, bad]),
                    LayerCache(tmp_path), jobs=2)  # fmt: skip
    assert bad.digest in str(err.value) and err.value.hint
    assert LayerCache(tmp_path).load(bad.digest) is None


@pytest.mark.integration
def test_second_check_reads_the_cached_analysis(
    images: Fixtures, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kcompat import analysis
    from kcompat.check import run_check
    from kcompat.pull import open_image
    from kcompat.target import probe_host

    target = probe_host(syscalls=False, runtimes=False)
    with open_image(images.oci("busybox-amd64")) as opened:
        first = run_check(opened, target, ["ls"])

    def no_scan(*args: object) -> None:
        raise AssertionError("scanned again")

    monkeypatch.setattr(analysis, "scan_image", no_scan)
    with open_image(images.oci("busybox-amd64")) as opened:
        assert run_check(opened, target, ["ls"]) == first
    # the same layers with another environment (PATH decides what runs): analysed anew
    other = images.relabelled(tmp_path, "--config.env", "PATH=/nowhere")
    with open_image(other) as opened, pytest.raises(AssertionError, match="scanned again"):
        run_check(opened, target, ["ls"])
