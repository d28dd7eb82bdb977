"""The merged view and flattening, on layers built in the test (hostile ones included)."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

import pytest

from kcompat.errors import BadImageError, IntegrityError
from kcompat.layers import FileKind
from kcompat.merged import LayerInput, MergedView
from kcompat.rootfs import flatten
from tests.layertools import E, compress, layer, layers, tar_bytes

DIR, SYM, LNK, CHR, FIFO = (
    tarfile.DIRTYPE,
    tarfile.SYMTYPE,
    tarfile.LNKTYPE,
    tarfile.CHRTYPE,
    tarfile.FIFOTYPE,
)


def view_files(ls: list[LayerInput]) -> tuple[dict[str, tuple[FileKind, bytes | str]], MergedView]:
    view = MergedView(ls)
    out: dict[str, tuple[FileKind, bytes | str]] = {}
    for item in view:
        e = item.entry
        out[e.path] = (e.kind, item.open().read() if e.kind is FileKind.FILE else e.linkname)
    return out, view


@pytest.mark.parametrize("how", ["gzip", "zstd", "none"])
def test_last_writer_wins_and_whiteouts(how: str) -> None:
    ls = layers(
        [
            E("etc", DIR),
            E("etc/a", data=b"old"),
            E("etc/gone", data=b"x"),
            E("opt", DIR),
            E("opt/lower", data=b"l"),
            E("d", DIR),
            E("d/child", data=b"c"),
        ],
        [
            E("etc/a", data=b"new"),
            E("etc/.wh.gone"),
            E("opt/.wh..wh..opq"),
            E("opt/upper", data=b"u"),
            E("d", SYM, link="/elsewhere"),
        ],
        how=how,
    )
    files, view = view_files(ls)
    assert files["etc/a"] == (FileKind.FILE, b"new")
    assert "etc/gone" not in files
    assert "opt/lower" not in files and files["opt/upper"] == (FileKind.FILE, b"u")
    assert files["d"] == (FileKind.SYMLINK, "/elsewhere")
    assert "d/child" not in files  # hidden by a non-directory in a higher layer
    assert not view.issues


def test_whiteout_of_directory_hides_its_subtree() -> None:
    ls = layers([E("a", DIR), E("a/b", DIR), E("a/b/c", data=b"1")], [E(".wh.a")])
    files, _ = view_files(ls)
    assert not any(p.startswith("a") for p in files)


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (E("../escape", data=b"x"), "climbs out"),
        (E("a/../../escape", data=b"x"), "climbs out"),
        (E("x", LNK, link="../../etc/passwd"), "outside the image root"),
    ],
)
def test_escaping_paths_are_refused(entry: E, reason: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    issues = flatten(layers([E("ok", data=b"fine"), entry]), root)
    assert any(reason in i.reason and i.action == "refused" for i in issues), issues
    assert sorted(os.listdir(tmp_path)) == ["root"]  # nothing written beside the root
    assert (root / "ok").read_bytes() == b"fine"


def test_absolute_paths_are_made_relative(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    issues = flatten(layers([E("/abs/file", data=b"x")]), root)
    assert (root / "abs" / "file").read_bytes() == b"x"
    assert [i.action for i in issues] == ["neutralised"]


def test_symlink_then_write_through_it_same_layer(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    ls = layers(
        [
            E("evil", SYM, link=str(outside)),
            E("evil/planted", data=b"pwn"),
            E("rel", SYM, link="../outside"),
            E("rel/planted2", data=b"pwn"),
        ]
    )
    issues = flatten(ls, root)
    assert os.listdir(outside) == []
    assert {i.path for i in issues if i.action == "refused"} == {"evil/planted", "rel/planted2"}
    assert os.readlink(root / "evil") == str(outside)  # the link itself is harmless data


def test_symlink_in_lower_layer_then_write_through_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    ls = layers([E("evil", SYM, link=str(outside))], [E("evil/planted", data=b"pwn")])
    issues = flatten(ls, root)
    assert os.listdir(outside) == []
    assert (root / "evil").is_dir() and not (root / "evil").is_symlink()
    assert (root / "evil" / "planted").read_bytes() == b"pwn"
    assert [(i.path, i.action) for i in issues] == [("evil", "neutralised")]


def test_planted_symlink_in_target_is_not_followed(tmp_path: Path) -> None:
    """Defence in depth: even a symlink already in the target dir is never followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "usr").symlink_to(outside)
    issues = flatten(layers([E("usr/bin/x", data=b"x")]), root)
    assert os.listdir(outside) == []
    assert issues and issues[0].action == "refused"


def test_hardlinks_inside_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    flatten(
        layers([E("bin", DIR), E("bin/a", data=b"A", mode=0o755)], [E("bin/b", LNK, link="bin/a")]),
        root,
    )
    assert os.stat(root / "bin/a").st_ino == os.stat(root / "bin/b").st_ino
    assert stat.S_IMODE(os.stat(root / "bin/a").st_mode) == 0o755


def test_hardlink_to_a_symlink_links_the_symlink_itself(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    flatten(layers([E("s", SYM, link="/etc/shadow"), E("h", LNK, link="s")]), root)
    assert os.readlink(root / "h") == "/etc/shadow"


def test_device_nodes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    issues = flatten(
        layers(
            [
                E("dev", DIR),
                E("dev/sda", tarfile.BLKTYPE, major=8, minor=0),
                E("dev/null", CHR, major=1, minor=3),
                E("fifo", FIFO),
            ]
        ),
        root,
    )
    assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode)
    if os.geteuid() == 0:
        assert stat.S_ISCHR(os.lstat(root / "dev/null").st_mode)
    else:
        assert not (root / "dev/null").exists()
        assert {i.path for i in issues if i.action == "skipped"} == {"dev/sda", "dev/null"}


def test_absurd_size_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KCOMPAT_MAX_FILE_SIZE", "10")
    root = tmp_path / "root"
    root.mkdir()
    issues = flatten(layers([E("big", data=b"x" * 11), E("small", data=b"y")]), root)
    assert not (root / "big").exists() and (root / "small").exists()
    assert "exceeds the limit" in issues[0].reason


def test_absurd_size_header_is_a_corrupt_layer() -> None:
    raw = bytearray(tar_bytes([E("f", data=b"abc")]))
    raw[124:136] = b"77777777777\0"  # size field: 8 GiB, with 3 bytes behind it
    import tarfile as tf

    raw[148:156] = b"        "
    raw[148:155] = (b"%06o\0" % tf.calc_chksums(bytes(raw[:512]))[0])[:7]
    with pytest.raises(BadImageError, match="truncated or corrupt"):
        view_files([layer(compress(bytes(raw), "gzip"))])


def test_truncated_gzip_is_corrupt() -> None:
    data = compress(tar_bytes([E("f", data=os.urandom(100_000))]), "gzip")
    cut = data[: len(data) // 2]
    import hashlib
    import io

    from kcompat.layers import VerifyingReader

    d = "sha256:" + hashlib.sha256(cut).hexdigest()
    with pytest.raises(BadImageError, match="truncated or corrupt"):
        view_files([LayerInput(d, lambda: VerifyingReader(io.BytesIO(cut), d, len(cut), "l"))])


def test_digest_mismatch_is_integrity_error() -> None:
    good = layer(compress(tar_bytes([E("f", data=b"x")]), "gzip"))
    import io

    from kcompat.layers import VerifyingReader

    other = compress(tar_bytes([E("f", data=b"y")]), "gzip")
    bad = LayerInput(
        good.digest, lambda: VerifyingReader(io.BytesIO(other), good.digest, len(other), "l")
    )
    with pytest.raises(IntegrityError):
        view_files([bad])


def test_directory_modes_applied_last(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    flatten(layers([E("ro", DIR, mode=0o555), E("ro/f", data=b"x")]), root)
    assert stat.S_IMODE(os.stat(root / "ro").st_mode) == 0o555
    assert (root / "ro/f").read_bytes() == b"x"
