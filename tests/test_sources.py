"""Local sources: OCI layout, oci-archive, docker-archive, dir."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from kcompat.errors import BadImageError, IntegrityError, NotFoundError, UsageError
from kcompat.layers import FileKind
from kcompat.platform import parse_platform
from kcompat.pull import open_image, unpack
from kcompat.sources import Options
from kcompat.store import BlobStore
from tests.conftest import Fixtures

pytestmark = pytest.mark.integration


def final_paths(ref: str, **kw: object) -> dict[str, FileKind]:
    with open_image(ref, Options(**kw)) as o:  # type: ignore[arg-type]
        return {item.entry.path: item.entry.kind for item in o.files()}


def test_all_local_forms_give_the_same_files(images: Fixtures) -> None:
    want = final_paths(images.oci("busybox-amd64"))
    assert want["bin/busybox"] is FileKind.FILE and want["bin/sh"] is FileKind.SYMLINK
    assert "bin/removed-later" not in want
    assert final_paths(f"oci-archive:{images.root}/busybox-amd64.oci.tar") == want
    assert final_paths(f"docker-archive:{images.root}/busybox-amd64.docker.tar") == want
    assert (
        final_paths(f"docker-archive:{images.root}/busybox-amd64.docker.tar:kcompat/busybox:amd64")
        == want
    )
    assert final_paths(f"docker-archive:{images.root}/busybox-amd64.docker.tar@0") == want


def test_oci_layout_index_platform_choice(images: Fixtures) -> None:
    with open_image(
        images.oci("busybox-multi"), Options(platform=parse_platform("linux/s390x"))
    ) as o:
        assert o.image.config.platform.architecture == "s390x"
        assert len(o.image.index_platforms) == 4


def test_oci_layout_needs_a_ref_when_it_holds_several(images: Fixtures) -> None:
    with pytest.raises(UsageError, match="name one"), open_image(f"oci:{images.layout}"):
        pass
    with (
        pytest.raises(NotFoundError, match="no image named 'nope'"),
        open_image(images.oci("nope")),
    ):
        pass


def test_dir_source_is_its_own_rootfs(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    with open_image(f"dir:{tmp_path}") as o:
        root, issues = unpack(o, BlobStore())
    assert root == tmp_path and issues == []


def test_missing_and_broken_inputs(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError), open_image(f"oci:{tmp_path}/none:x"):
        pass
    with pytest.raises(NotFoundError), open_image(f"docker-archive:{tmp_path}/none.tar"):
        pass
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar archive" * 10)
    with pytest.raises(BadImageError), open_image(f"oci-archive:{junk}"):
        pass
    with pytest.raises(NotFoundError), open_image(f"dir:{tmp_path}/nodir"):
        pass


def test_corrupted_oci_layout_blob_is_an_integrity_error(images: Fixtures, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    shutil.copytree(images.layout, layout)
    with open_image(f"oci:{layout}:busybox-arm64") as o:
        blob = layout / "blobs" / "sha256" / o.image.layers[-1].digest.split(":")[1]
    data = bytearray(blob.read_bytes())
    data[-5] ^= 0xFF
    blob.write_bytes(bytes(data))
    with (
        pytest.raises((IntegrityError, BadImageError)),
        open_image(f"oci:{layout}:busybox-arm64") as o,
    ):
        list(o.files())


def test_docker_archive_with_bad_manifest(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        data = json.dumps({"not": "a list"}).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        import io

        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(BadImageError, match="lists no images"), open_image(f"docker-archive:{bad}"):
        pass
