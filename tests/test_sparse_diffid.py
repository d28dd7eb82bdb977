"""Every input checked, nothing trusted: sparse files as GNU tar writes them (old GNU
`S` entries and pax sparse 0.0, 0.1, 1.0) are seen, merged and flattened with their
real size and holes; a layer whose uncompressed bytes are not the config's diff_id is
refused (exit 6), whether its scan is fresh or cached under another image's config."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kcompat.errors import IntegrityError
from kcompat.formats import Format
from kcompat.layers import VerifyingReader
from kcompat.layerscan import LayerCache, assemble, scan_layers
from kcompat.merged import LayerInput, MergedView
from kcompat.rootfs import flatten
from tests.conftest import Fixtures
from tests.layertools import E, compress, gnu_tar, layer, sparse_file, tar_bytes

HOLE = 3 << 20
FORMATS = {
    "gnu-S": ["--format=gnu", "-S"],
    "pax-0.0": ["--format=posix", "--sparse", "--sparse-version=0.0"],
    "pax-0.1": ["--format=posix", "--sparse", "--sparse-version=0.1"],
    "pax-1.0": ["--format=posix", "--sparse", "--sparse-version=1.0"],
}


def _static_elf(tmp: Path) -> bytes:
    """A small static program (musl-gcc, else gcc -static), or skip."""
    src = tmp / "hello.c"
    src.write_text("int main(void) { return 0; }\n")
    for cc in (["musl-gcc", "-static"], ["gcc", "-static"]):
        if shutil.which(cc[0]) is None:
            continue
        r = subprocess.run([*cc, "-O2", "-o", str(tmp / "hello"), str(src)], capture_output=True)
        if r.returncode == 0:
            return (tmp / "hello").read_bytes()
    pytest.skip("needs musl-gcc or gcc with static libc (ci/setup installs them)")


@pytest.fixture(params=list(FORMATS))
def sparse_layer(
    request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[LayerInput, dict[str, bytes]]:
    """A gzip layer of GNU tar's sparse form: a static ELF with a hole after it and a
    script with a hole inside; and the files' whole contents."""
    if shutil.which("tar") is None:
        pytest.skip("needs GNU tar")
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    want = {
        "bin/hello": sparse_file(src / "bin" / "hello", _static_elf(tmp_path), HOLE),
        "bin/run.sh": sparse_file(
            src / "bin" / "run.sh", b"#!/bin/sh\nexec /bin/hello\n", HOLE, b"# the end\n"
        ),
    }
    for name in want:
        os.chmod(src / name, 0o755)
    tar = gnu_tar(src, *FORMATS[request.param])
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:  # really sparse, as GNU tar means it
        members = [m for m in tf if m.isreg()]
    assert all(m.sparse for m in members) and len(members) == 2
    assert all(m.type == tarfile.GNUTYPE_SPARSE for m in members) or b"GNU.sparse" in tar
    assert len(tar) < HOLE
    return layer(compress(tar, "gzip")), want


def test_the_scan_sees_sparse_files_with_their_real_size_and_head(
    sparse_layer: tuple[LayerInput, dict[str, bytes]], tmp_path: Path
) -> None:
    lay, want = sparse_layer
    scans = scan_layers([(lay.digest, 1)], lambda d: lay.open(), LayerCache(tmp_path))
    scan, issues = assemble(scans, {})
    assert issues == []
    elf = scan.files["/bin/hello"]
    assert elf.format is Format.ELF and elf.unreadable is None and elf.elf is not None
    assert elf.size == len(want["bin/hello"])
    script = scan.files["/bin/run.sh"]
    assert script.format is Format.SCRIPT and script.size == len(want["bin/run.sh"])
    assert script.script is not None and script.script.interpreter == "/bin/sh"


def test_the_merged_view_lists_them_and_flattening_leaves_holes(
    sparse_layer: tuple[LayerInput, dict[str, bytes]], tmp_path: Path
) -> None:
    lay, want = sparse_layer
    view = MergedView([lay])
    seen = {v.entry.path: (v.entry.size, v.open().read()) for v in view if v.entry.size}
    assert seen == {name: (len(data), data) for name, data in want.items()}
    assert view.issues == []
    dest = tmp_path / "rootfs"
    dest.mkdir()
    assert flatten([lay], dest) == []
    for name, data in want.items():
        st = os.stat(dest / name)
        assert st.st_size == len(data) and (dest / name).read_bytes() == data
        assert st.st_blocks * 512 < HOLE  # the hole is a hole, not 3 MiB of zeros
        assert st.st_mode & 0o777 == 0o755


def test_gnu_tar_reads_back_what_was_flattened(
    sparse_layer: tuple[LayerInput, dict[str, bytes]], tmp_path: Path
) -> None:
    """The same bytes as GNU tar's own extraction of the layer."""
    lay, want = sparse_layer
    out = tmp_path / "by-tar"
    out.mkdir()
    reader = lay.open()
    blob = reader.read()
    subprocess.run(["tar", "-xzf", "-", "-C", str(out)], input=blob, check=True)
    assert {n: (out / n).read_bytes() for n in want} == want


# -- diff_ids ----------------------------------------------------------------------------


def _diff_id(entries: list[E]) -> str:
    return "sha256:" + hashlib.sha256(tar_bytes(entries)).hexdigest()


ENTRIES = [E("bin", tarfile.DIRTYPE), E("bin/sh", data=b"#!/bin/busybox\n", mode=0o755)]
WRONG = "sha256:" + "c" * 64


@pytest.mark.parametrize("how", ["gzip", "zstd", "none"])
def test_a_layer_is_checked_against_its_diff_id_as_it_streams(how: str, tmp_path: Path) -> None:
    blob = compress(tar_bytes(ENTRIES), how)
    right = _diff_id(ENTRIES)
    assert [v.entry.path for v in MergedView([layer(blob, right)])] == ["bin", "bin/sh"]
    bad = layer(blob, WRONG)
    with pytest.raises(IntegrityError) as e:
        list(MergedView([bad]))
    for digest in (bad.digest, right, WRONG):
        assert digest in str(e.value)
    assert "tampered" in str(e.value)
    with pytest.raises(IntegrityError, match=WRONG):
        flatten([bad], tmp_path)
    scans = scan_layers([(bad.digest, 1)], lambda d: bad.open(), LayerCache(tmp_path / "c"),
                        diff_ids=[right])  # fmt: skip
    assert scans[0].diff_id == right


def test_a_cached_scan_is_checked_against_another_config_s_diff_id(tmp_path: Path) -> None:
    """The cache is keyed by the blob's digest; the computed diff_id it records is
    compared with each config's, so a lying config is refused without a rescan."""
    blob = compress(tar_bytes(ENTRIES), "gzip")
    lay = layer(blob)
    cache = LayerCache(tmp_path)
    scan_layers([(lay.digest, 1)], lambda d: lay.open(), cache, diff_ids=[_diff_id(ENTRIES)])

    def no_blob(digest: str) -> VerifyingReader:
        raise AssertionError(f"{digest} was read again")

    with pytest.raises(IntegrityError) as e:
        scan_layers([(lay.digest, 1)], no_blob, cache, diff_ids=[WRONG])
    assert lay.digest in str(e.value) and _diff_id(ENTRIES) in str(e.value)
    assert WRONG in str(e.value)
    scan_layers([(lay.digest, 1)], no_blob, cache, diff_ids=[None])  # no diff_id: no check


def kc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kcompat", *args], capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip


def _edit_config(layout: Path, ref: str, new_ref: str, edit: Callable[[Any], None]) -> None:
    """Add `new_ref` to an OCI layout: image `ref` with its config changed by `edit` (a
    new config blob, so a new manifest naming it, and an index entry for that)."""

    def blob(digest: str) -> Path:
        return layout / "blobs" / "sha256" / digest.split(":", 1)[1]

    def put(data: bytes) -> tuple[str, int]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blob(digest).write_bytes(data)
        return digest, len(data)

    index = json.loads((layout / "index.json").read_text())
    desc = next(m for m in index["manifests"]
                if m["annotations"]["org.opencontainers.image.ref.name"] == ref)  # fmt: skip
    manifest = json.loads(blob(desc["digest"]).read_bytes())
    config = json.loads(blob(manifest["config"]["digest"]).read_bytes())
    edit(config)
    digest, size = put(json.dumps(config).encode())
    manifest["config"] = {**manifest["config"], "digest": digest, "size": size}
    digest, size = put(json.dumps(manifest).encode())
    names = {"org.opencontainers.image.ref.name": new_ref}
    index["manifests"].append({**desc, "digest": digest, "size": size, "annotations": names})
    (layout / "index.json").write_text(json.dumps(index))


@pytest.mark.integration
def test_check_and_unpack_refuse_a_wrong_diff_id(images: Fixtures, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    shutil.copytree(images.layout, layout)
    told: list[str] = []

    def lie(config: Any) -> None:
        told.append(config["rootfs"]["diff_ids"][0])
        config["rootfs"]["diff_ids"][0] = WRONG

    _edit_config(layout, "busybox-amd64", "wrong-diff-id", lie)
    good, bad = f"oci:{layout}:busybox-amd64", f"oci:{layout}:wrong-diff-id"
    # the correct image first: its layer's scan and rootfs are cached, and the lying
    # config names the same blob
    r = kc("check", good, "--kernel", "6.1", "--arch", "amd64")
    assert r.returncode == 0, r.stderr
    r = kc("pull", "--unpack", good)
    assert r.returncode == 0, r.stderr
    for args in (["check", bad, "--kernel", "6.1", "--arch", "amd64"], ["pull", "--unpack", bad]):
        r = kc(*args)
        assert r.returncode == 6, (args, r.stdout, r.stderr)
        assert told[0] in r.stderr and WRONG in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    cache = Path(os.environ["KCOMPAT_CACHE"])
    shutil.rmtree(cache)  # and cold, with nothing cached
    for args in (["check", bad, "--kernel", "6.1", "--arch", "amd64"], ["pull", "--unpack", bad]):
        r = kc(*args)
        assert r.returncode == 6 and WRONG in r.stderr, r.stderr
