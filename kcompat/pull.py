"""Turn a reference into a resolved image with its layers local: what `pull` and
`inspect` do, and what later commands build on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from kcompat.errors import BadImageError
from kcompat.image import ResolvedImage
from kcompat.layers import LayerIssue
from kcompat.merged import LayerInput, MergedView
from kcompat.platform import host_platform
from kcompat.progress import Progress
from kcompat.reference import parse_reference
from kcompat.rootfs import cached_rootfs
from kcompat.sources import Options, Source, open_source
from kcompat.store import BlobStore


@dataclass
class OpenImage:
    source: Source
    image: ResolvedImage

    def layer_inputs(self) -> list[LayerInput]:
        """Each layer with the config's diff_id for it, checked as the layer streams. A
        config without diff_ids (a `dir:` rootfs) has nothing to check; one that lists
        a different number than the manifest's layers is refused, as docker refuses it."""
        layers, ids = self.image.layers, self.image.config.diff_ids
        if ids and len(ids) != len(layers):
            raise BadImageError(
                f"{self.image.reference}: {len(layers)} layers but {len(ids)} diff_ids "
                "in the image config",
                hint="the image is corrupt: rebuild or re-push it",
            )
        diff_ids: list[str | None] = list(ids) if ids else [None] * len(layers)
        return [
            LayerInput(d.digest, partial(self.source.open_layer, d), diff_id)
            for d, diff_id in zip(layers, diff_ids)
        ]

    def files(self) -> MergedView:
        return MergedView(self.layer_inputs())


@contextlib.contextmanager
def open_image(reference: str, options: Options | None = None) -> Iterator[OpenImage]:
    options = options or Options()
    ref = parse_reference(reference)
    source = open_source(ref, options)
    try:
        image = source.resolve(options.platform, host_platform(), options.choose)
        yield OpenImage(source, image)
    finally:
        source.close()


def pull(
    opened: OpenImage, store: BlobStore, progress: Progress | None = None, jobs: int = 4
) -> None:
    opened.source.fetch(opened.image, store, progress, jobs)


def unpack(opened: OpenImage, store: BlobStore) -> tuple[Path, list[LayerIssue]]:
    """The image's root filesystem directory (a `dir:` source is its own rootfs)."""
    own = opened.source.rootfs_dir()
    if own is not None:
        return own, []
    return cached_rootfs(opened.layer_inputs(), store)


def inspect_report(image: ResolvedImage) -> dict[str, Any]:
    """The JSON-able description `kcompat inspect` shows."""
    cfg = image.config
    return {
        "reference": image.reference,
        "digest": image.manifest_digest,
        "mediaType": image.manifest_media_type,
        "created": cfg.created,
        "labels": dict(cfg.labels),
        "index": (
            {"digest": image.index_digest, "platforms": [str(p) for p in image.index_platforms]}
            if image.index_digest
            else None
        ),
        "os": cfg.platform.os,
        "architecture": cfg.platform.architecture,
        "variant": cfg.platform.variant,
        "config": {
            "digest": image.config_digest,
            "entrypoint": list(cfg.entrypoint) if cfg.entrypoint is not None else None,
            "cmd": list(cfg.cmd) if cfg.cmd is not None else None,
            "env": list(cfg.env),
            "workdir": cfg.workdir,
            "user": cfg.user,
            "labels": dict(cfg.labels),
            "created": cfg.created,
        },
        "layers": [
            {"digest": d.digest, "mediaType": d.media_type, "size": d.size} for d in image.layers
        ],
    }
