"""Build layer tars in tests, hostile ones included."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import zstandard

from kcompat.layers import VerifyingReader
from kcompat.merged import LayerInput


@dataclass
class E:
    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    link: str = ""
    mode: int = 0o644
    major: int = 0
    minor: int = 0


def tar_bytes(entries: list[E]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.kind
            info.mode = e.mode if e.kind != tarfile.DIRTYPE or e.mode != 0o644 else 0o755
            info.linkname = e.link
            info.devmajor, info.devminor = e.major, e.minor
            if e.kind == tarfile.REGTYPE:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def compress(data: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(data)
    if how == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def layer(data: bytes, diff_id: str | None = None) -> LayerInput:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return LayerInput(
        digest,
        lambda: VerifyingReader(io.BytesIO(data), digest, len(data), f"layer {digest}"),
        diff_id,
    )


def layers(*entry_lists: list[E], how: str = "gzip") -> list[LayerInput]:
    return [layer(compress(tar_bytes(es), how)) for es in entry_lists]


def gnu_tar(src: Path, *options: str) -> bytes:
    """A tar of directory `src` made by GNU tar itself (e.g. `-S`, or `--format=posix
    --sparse --sparse-version=1.0`): the sparse forms real layers carry, not our idea
    of them."""
    return subprocess.run(
        ["tar", "-C", str(src), *options, "-cf", "-", "."], check=True, capture_output=True
    ).stdout


def sparse_file(path: Path, head: bytes, hole: int, tail: bytes = b"") -> bytes:
    """Write `head`, a hole of `hole` bytes (made by truncate, so the file system has no
    blocks there), then `tail`; return the file's whole content."""
    path.write_bytes(head)
    os.truncate(path, len(head) + hole)
    with path.open("ab") as f:
        f.write(tail)
    return head + bytes(hole) + tail


GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def append_layer(
    layout: Path, ref: str, new_ref: str, blob: bytes, diff_id: str, media_type: str = GZIP_LAYER
) -> str:
    """Image `ref` of an OCI layout copied as `new_ref` with `blob` as one more layer
    (its config names `diff_id`); returns the `oci:` reference."""

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (layout / "blobs" / "sha256" / digest).write_bytes(data)
        return f"sha256:{digest}"

    def blob_json(digest: str) -> dict:  # type: ignore[type-arg]
        return json.loads((layout / "blobs" / "sha256" / digest[7:]).read_bytes())  # type: ignore[no-any-return]

    index = json.loads((layout / "index.json").read_text())
    key = "org.opencontainers.image.ref.name"
    desc = next(m for m in index["manifests"] if m.get("annotations", {}).get(key) == ref)
    manifest = blob_json(desc["digest"])
    config = blob_json(manifest["config"]["digest"])
    config["rootfs"]["diff_ids"].append(diff_id)
    config_bytes = json.dumps(config).encode()
    manifest["config"] = {**manifest["config"], "digest": put(config_bytes),
                          "size": len(config_bytes)}  # fmt: skip
    manifest["layers"].append({"mediaType": media_type, "digest": put(blob), "size": len(blob)})
    manifest_bytes = json.dumps(manifest).encode()
    index["manifests"].append({**desc, "digest": put(manifest_bytes), "size": len(manifest_bytes),
                               "annotations": {key: new_ref}})  # fmt: skip
    (layout / "index.json").write_text(json.dumps(index))
    return f"oci:{layout}:{new_ref}"


def append_cut_layer(layout: Path, ref: str, new_ref: str, size: int) -> tuple[str, bytes]:
    """`ref` with one more gzip layer cut in half (a file of `size` random bytes whose
    compressed stream ends early; its config names the whole tar's diff_id): the `oci:`
    reference and the cut blob."""
    raw = tar_bytes([E("f", data=os.urandom(size))])
    whole = gzip.compress(raw)
    cut = whole[: len(whole) // 2]
    return append_layer(layout, ref, new_ref, cut, "sha256:" + hashlib.sha256(raw).hexdigest()), cut

