"""A layer read from kcompat's own blob store (kcompat.sources._StoredLayer): when
reading it fails, the copy is hashed again from the disk and removed only if its digest
no longer matches, so running again downloads it; a good copy stays."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from kcompat.errors import BadImageError, IntegrityError
from kcompat.layers import decompressed_chunks
from kcompat.sources import _StoredLayer
from kcompat.store import BlobStore


def _layer() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for i in range(40):
            data = hashlib.sha256(str(i).encode()).digest() * 2000  # incompressible-ish
            info = tarfile.TarInfo(f"f{i}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


def _stored(tmp_path: Path, blob: bytes, digest: str) -> tuple[BlobStore, Path]:
    store = BlobStore(tmp_path / "cache")
    store.ensure_dirs(digest)
    path = store.path(digest)
    path.write_bytes(blob)
    return store, path


def _read(store: BlobStore, digest: str, size: int, checked: bool = False) -> None:
    with open(store.path(digest), "rb") as raw:
        reader = _StoredLayer(raw, digest, size, "layer", checked=checked, store=store, sync=None)
        for _ in decompressed_chunks(reader, "layer"):
            pass


def test_a_copy_that_no_longer_inflates_is_removed(tmp_path: Path) -> None:
    good = _layer()
    digest = "sha256:" + hashlib.sha256(good).hexdigest()
    half = len(good) // 2
    store, path = _stored(tmp_path, good[:half] + bytes(len(good) - half), digest)
    with pytest.raises(BadImageError):
        _read(store, digest, len(good))
    assert not path.exists()


def test_a_copy_with_the_wrong_digest_is_removed(tmp_path: Path) -> None:
    good = _layer()
    digest = "sha256:" + hashlib.sha256(good).hexdigest()
    store, path = _stored(tmp_path, good[:-8] + b"\0" * 8, digest)  # the gzip trailer
    with pytest.raises((IntegrityError, BadImageError)):
        _read(store, digest, len(good))
    assert not path.exists()


def test_a_good_copy_stays_when_the_manifest_lies_about_its_size(tmp_path: Path) -> None:
    good = _layer()
    digest = "sha256:" + hashlib.sha256(good).hexdigest()
    store, path = _stored(tmp_path, good, digest)
    with pytest.raises(IntegrityError, match="longer than"):
        _read(store, digest, len(good) - 100)
    assert path.read_bytes() == good  # another image's manifest may name it rightly
    _read(store, digest, len(good))


def test_a_just_downloaded_copy_is_checked_by_length_only(tmp_path: Path) -> None:
    good = _layer()
    digest = "sha256:" + hashlib.sha256(good).hexdigest()
    store, path = _stored(tmp_path, good, digest)
    _read(store, digest, len(good), checked=True)
    path.write_bytes(good[:-1])
    with pytest.raises((IntegrityError, BadImageError)):  # the gzip stream ends early
        _read(store, digest, len(good), checked=True)
    assert not path.exists()  # and a copy damaged since the download goes
