"""`containers-storage:`: an image in podman's, buildah's and skopeo's store.

Read in place from the store's own metadata, read-only (nothing is written, no podman
process is needed), as containers/storage and containers/image read it; the store is
found by kcompat.storageconf:
- `<root>/<driver>-images/images.json`: the images (id, names, digest, top layer) and
  their "big data" items, each a file in `<driver>-images/<id>/` named by
  `makeBigDataBaseName` (store.go): the key itself when it has only `[.0-9a-z]`
  characters, else "=" + base64(key). The manifest is the key `manifest` (or
  `manifest-<digest>`), the config the key `<config digest>` (containers/image
  storage/storage_src.go).
- `<root>/<driver>-layers/layers.json`: each layer's id, parent, diff-digest (the
  uncompressed digest, the config's diff_id) and diff-size.
- a layer's files: overlay `<root>/overlay/<id>/diff` (and the lower layers' diff
  directories, found through `overlay/<id>/lower` and the `overlay/l/` links, which
  the driver's DiffGetter also searches), vfs `<root>/vfs/dir/<id>`.
- `<root>/<driver>-layers/<id>.tar-split.gz`: the layer tar rebuilt byte for byte
  (kcompat.tarsplit), so its sha256 is the diff_id: the layer is verified like any
  other, and overlay's whiteouts (0/0 character devices, the opaque xattr) never need
  mapping back to `.wh.` entries: the original `.wh.` headers are in the tar-split.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, cast

from kcompat.archives import DOCKER_LAYER_TAR
from kcompat.errors import (
    AuthError,
    BadImageError,
    IntegrityError,
    KcompatError,
    LocalIOError,
    NotFoundError,
    UnsupportedError,
    UsageError,
)
from kcompat.image import OCI_MANIFEST, Descriptor, ResolvedImage, check_digest, sha256_digest
from kcompat.layers import READ_BUFFER, VerifyingReader
from kcompat.platform import Platform
from kcompat.reference import StorageRef, familiar_name, parse_docker_reference
from kcompat.source import MAX_SMALL_BLOB, Chooser, Options, Source
from kcompat.storageconf import locate_store
from kcompat.tarsplit import DAMAGED, TarSplitStream, replayed_size

OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MAX_METADATA = 256 * 1024 * 1024  # images.json / layers.json of a store with many images


def big_data_name(key: str) -> str:
    """containers/storage store.go makeBigDataBaseName: the file name of a big data item."""
    if key and all(c == "." or "0" <= c <= "9" or "a" <= c <= "z" for c in key):
        return key
    return "=" + base64.b64encode(key.encode("utf-8")).decode("ascii")


@contextlib.contextmanager
def _read_lock(path: Path) -> Iterator[None]:
    """A shared lock on one of the store's lock files, as containers/storage's readers
    take (pkg/lockfile: fcntl F_RDLCK on the whole file); absent or unreadable: none.
    Opened read-only: taking it changes nothing on disk."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.lockf(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


@dataclass(frozen=True)
class StoreLayer:
    id: str
    parent: str | None
    diff_digest: str | None
    diff_size: int | None
    incomplete: bool


class ContainersStorageSource(Source):
    """An image in a containers-storage store, read-only from its own files."""

    def __init__(self, ref: StorageRef, options: Options) -> None:
        self.ref = ref
        self.where = str(ref)
        self.loc = locate_store(ref)
        self.root = self.loc.root
        self.driver = self.loc.driver
        self._images_dir = self.root / f"{self.driver}-images"
        self._layers_dir = self.root / f"{self.driver}-layers"
        with _read_lock(self._images_dir / "images.lock"):
            images = self._load_json(self._images_dir / "images.json", "images")
        self.image = self._find(images)
        self.image_id = str(self.image["id"])
        with _read_lock(self._layers_dir / "layers.lock"):
            layers = self._load_json(self._layers_dir / "layers.json", "layers")
        self._layers = self._parse_layers(layers)
        self._by_digest: dict[str, StoreLayer] = {}

    # -- metadata

    def _store_words(self) -> str:
        return f"the containers-storage store at {self.root} ({self.driver})"

    def _load_json(self, path: Path, what: str) -> list[dict[str, Any]]:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_METADATA + 1)
        except FileNotFoundError:
            if what == "layers" or not self.root.is_dir():
                raise NotFoundError(
                    f"no containers-storage store at {self.root} ({self.loc.how}): "
                    f"{path} does not exist",
                    hint="name the store as containers-storage:[overlay@GRAPHROOT]NAME "
                    "('podman info --format {{.Store.GraphRoot}}' shows it)",
                ) from None
            data = b"[]"  # a store whose driver directory exists but holds no image yet
        except PermissionError:
            raise AuthError(
                f"permission denied reading {path}, in {self._store_words()}",
                hint="run as the store's owner (root for /var/lib/containers/storage), "
                "or name your own store",
            ) from None
        except OSError as e:
            raise LocalIOError(f"cannot read {path}: {e.strerror}") from None
        if len(data) > MAX_METADATA:
            raise BadImageError(f"{path} is over {MAX_METADATA} bytes")
        try:
            doc = json.loads(data.decode("utf-8")) if data.strip() else []
        except ValueError as e:
            raise BadImageError(
                f"{path} is not valid JSON ({e})", hint="the store is damaged; see podman's log"
            ) from None
        if not isinstance(doc, list) or not all(isinstance(x, dict) for x in doc):
            raise BadImageError(f"{path} is not a list of {what}")
        return doc

    def _find(self, images: list[dict[str, Any]]) -> dict[str, Any]:
        """The image the reference names, as containers/image storage_reference.go
        resolveImage finds it: by id (or an unambiguous id prefix), else by name (the
        store's names are normalised: docker.io/library/busybox:latest,
        localhost/app:dev), else by a digest of an image with that repository."""
        ref = self.ref
        named = ref.name
        if ref.image_id is not None:
            hits = [i for i in images if str(i.get("id", "")).startswith(ref.image_id)]
            if len(hits) == 1:
                image = hits[0]
                if named is not None and not ref.maybe_name and not self._has_repo(image):
                    raise NotFoundError(
                        f"{self.where}: image {ref.image_id} is not named {named.name}",
                        hint="'podman images' lists the store's images and their names",
                    )
                return image
            if len(hits) > 1 and not ref.maybe_name:
                raise UsageError(f"{self.where}: {len(hits)} images have ids starting "
                                 f"{ref.image_id}", hint="give more of the id")  # fmt: skip
            if not ref.maybe_name:
                raise self._not_found(ref.image_id)
        assert named is not None
        want = str(named)
        for image in images:
            if want in (image.get("names") or []):
                return image
        if named.digest is not None:
            for image in images:
                digests = [*(image.get("digests") or []), image.get("digest")]
                if named.digest in digests and self._has_repo(image):
                    return image
        raise self._not_found(familiar_name(want))

    def _has_repo(self, image: dict[str, Any]) -> bool:
        assert self.ref.name is not None
        repo = self.ref.name.name
        for name in image.get("names") or []:
            try:
                if parse_docker_reference(str(name)).name == repo:
                    return True
            except KcompatError:
                continue
        return False

    def _not_found(self, what: str) -> NotFoundError:
        return NotFoundError(
            f"no image {what!r} in {self._store_words()}",
            hint="'podman images' lists the store's images (their names are full, e.g. "
            "localhost/NAME:TAG or docker.io/library/NAME:TAG)",
        )

    @staticmethod
    def _parse_layers(layers: list[dict[str, Any]]) -> dict[str, StoreLayer]:
        out: dict[str, StoreLayer] = {}
        for layer in layers:
            lid = layer.get("id")
            if not isinstance(lid, str):
                continue
            size = layer.get("diff-size")
            flags = layer.get("flags") or {}
            out[lid] = StoreLayer(
                lid,
                layer.get("parent") if isinstance(layer.get("parent"), str) else None,
                layer.get("diff-digest") if isinstance(layer.get("diff-digest"), str) else None,
                size if isinstance(size, int) and size >= 0 else None,
                isinstance(flags, dict) and bool(flags.get("incomplete")),
            )
        return out

    def _chain(self) -> list[StoreLayer]:
        """The image's layers, lowest first, from its top layer through the parents."""
        chain: list[StoreLayer] = []
        lid = self.image.get("layer")
        while isinstance(lid, str) and lid:
            layer = self._layers.get(lid)
            if layer is None:
                raise NotFoundError(
                    f"{self.where}: layer {lid} is missing from {self._store_words()}",
                    hint=DAMAGED,
                )
            if layer.incomplete:
                raise BadImageError(
                    f"{self.where}: layer {lid} is incomplete (an interrupted pull)",
                    hint="pull the image again (podman pull)",
                )
            chain.append(layer)
            if len(chain) > len(self._layers):
                raise BadImageError(f"{self.where}: the layers' parents form a loop")
            lid = layer.parent
        return chain[::-1]

    def _big_data(self, key: str) -> bytes | None:
        names = self.image.get("big-data-names") or []
        if key not in names:
            return None
        path = self._images_dir / self.image_id / big_data_name(key)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_SMALL_BLOB + 1)
        except FileNotFoundError:
            raise NotFoundError(f"{self.where}: {key} is missing ({path})", hint=DAMAGED) from None
        except PermissionError:
            raise AuthError(f"permission denied reading {path}",
                            hint="run as the store's owner") from None  # fmt: skip
        if len(data) > MAX_SMALL_BLOB:
            raise BadImageError(f"{self.where}: {key} is over {MAX_SMALL_BLOB} bytes")
        return data

    # -- Source

    def _root(self) -> tuple[bytes, str | None, str | None]:
        data = None
        digest = self.ref.name.digest if self.ref.name is not None else None
        if digest is not None and not self.ref.maybe_name:
            data = self._big_data(f"manifest-{digest}")
        if data is None:
            data = self._big_data("manifest")
        if data is None:
            raise BadImageError(
                f"{self.where}: the store holds no manifest for image {self.image_id}",
                hint="copy it with skopeo copy containers-storage:... oci:DIR and check that",
            )
        return data, None, sha256_digest(data)

    def _manifest_blob(self, desc: Descriptor) -> bytes:
        data = self._big_data(f"manifest-{desc.digest}")
        if data is None:
            raise NotFoundError(
                f"{self.where}: the store holds no manifest {desc.digest} for this image",
                hint="'podman images --digests' lists the store's images; check one by id",
            )
        check_digest(data, desc.digest, f"{self.where}: manifest {desc.digest}")
        return data

    def _small_blob(self, desc: Descriptor) -> bytes:
        data = self._big_data(desc.digest)
        if data is None:
            raise NotFoundError(f"{self.where}: config {desc.digest} is not in the store",
                                hint=DAMAGED)  # fmt: skip
        check_digest(data, desc.digest, f"{self.where}: config {desc.digest}")
        return data

    def resolve(
        self, want: Platform | None, default: Platform, choose: Chooser | None = None
    ) -> ResolvedImage:
        image = super().resolve(want, default, choose)
        chain = self._chain()
        diff_ids = image.config.diff_ids
        if len(chain) != len(diff_ids):
            raise BadImageError(
                f"{self.where}: the store has {len(chain)} layers for the image, its config "
                f"lists {len(diff_ids)} diff_ids",
                hint=DAMAGED,
            )
        media = OCI_LAYER_TAR if image.manifest_media_type == OCI_MANIFEST else DOCKER_LAYER_TAR
        descs = []
        for layer, diff_id in zip(chain, diff_ids):
            if layer.diff_digest is not None and layer.diff_digest != diff_id:
                raise IntegrityError(
                    f"{self.where}: layer {layer.id} has diff-digest {layer.diff_digest} in "
                    f"the store, the config says {diff_id}",
                    hint=DAMAGED,
                )
            size = layer.diff_size if layer.diff_size is not None else self._tar_size(layer)
            self._by_digest[diff_id] = layer
            descs.append(Descriptor(media, diff_id, size))
        # The layers as the store holds them: uncompressed, named by their diff_ids (the
        # registry's compressed blobs are not kept); the manifest is the stored one.
        return replace(image, layers=tuple(descs))

    def _tar_split(self, layer: StoreLayer) -> Path:
        return self._layers_dir / f"{layer.id}.tar-split.gz"

    def _diff_dirs(self, layer: StoreLayer) -> list[bytes]:
        """Where the layer's files are, in the order the driver's file getter looks."""
        if self.driver == "vfs":  # vfs/dir/<id>: the layer applied over a copy of its parent
            return [os.fsencode(self.root / "vfs" / "dir" / layer.id)]
        top = self.root / "overlay" / layer.id
        if (top / "composefs-data").exists():
            raise UnsupportedError(
                f"{self.where}: layer {layer.id} is stored as composefs, which kcompat "
                "cannot read without mounting it",
                hint="copy the image out: skopeo copy containers-storage:... oci:DIR",
            )
        dirs = [os.fsencode(top / "diff")]
        try:
            lower = (top / "lower").read_text().strip()
        except FileNotFoundError:
            lower = ""
        except OSError as e:
            raise LocalIOError(f"cannot read {top / 'lower'}: {e.strerror}") from None
        for link in filter(None, lower.split(":")):
            # drivers/overlay getLowerDirs: "l/SHORT" is a symlink to "../<id>/diff"
            path = self.root / "overlay" / link
            try:
                target = os.readlink(path)
            except OSError:
                continue
            dirs.append(os.fsencode(os.path.normpath(path.parent / target)))
        return dirs

    def _layer_words(self, layer: StoreLayer) -> str:
        return f"{self.where}: layer {layer.id}"

    def _present(self, layer: StoreLayer) -> None:
        if not self._tar_split(layer).is_file():
            raise UnsupportedError(
                f"{self._layer_words(layer)} has no tar-split in the store "
                f"({self._tar_split(layer).name}), so its tar cannot be rebuilt exactly",
                hint="copy the image out: skopeo copy containers-storage:... oci:DIR, "
                "then check oci:DIR",
            )
        main = self._diff_dirs(layer)[0]
        if not os.path.isdir(main):
            raise NotFoundError(
                f"{self._layer_words(layer)}: {os.fsdecode(main)} is missing", hint=DAMAGED
            )

    def _open(self, layer: StoreLayer) -> TarSplitStream:
        self._present(layer)
        return TarSplitStream(self._tar_split(layer), self._diff_dirs(layer),
                               self._layer_words(layer))  # fmt: skip

    def _tar_size(self, layer: StoreLayer) -> int:
        """The layer tar's length when layers.json does not record it: the replayed
        stream's, counted without reading the files (segments + recorded sizes)."""
        self._present(layer)
        return replayed_size(self._tar_split(layer))

    def check_present(self, image: ResolvedImage) -> None:
        for d in image.layers:
            layer = self._by_digest.get(d.digest)
            if layer is None:
                raise NotFoundError(f"{self.where}: layer {d.digest} is not in the store")
            self._present(layer)

    def open_layer(self, desc: Descriptor) -> VerifyingReader:
        layer = self._by_digest.get(desc.digest)
        if layer is None:
            raise NotFoundError(f"{self.where}: layer {desc.digest} is not in the store",
                                hint="resolve the image first")  # fmt: skip
        raw = cast(IO[bytes], io.BufferedReader(self._open(layer), READ_BUFFER))
        return VerifyingReader(
            raw, desc.digest, desc.size, f"layer {desc.digest} ({layer.id} in the store)"
        )
