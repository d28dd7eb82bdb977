"""An image's analysis, what every `check` and `run` of it starts from: its Scan, each
executable's facts (kcompat.facts: loader, C library, library closure, missing
libraries, syscall needs) and the summary of its binaries. All depend only on the
image's layers, its environment and kcompat's code, so the result is cached by those
(ResultCache "images"); a warm `check` reads one file instead of merging the layers'
results and walking every executable's libraries again, and the rules only read it.
The layers' own results are cached too (kcompat.layerscan), so an image that shares
base layers with one checked before scans only its new layers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from kcompat.cache import ResultCache, analysis_key, gc_paused
from kcompat.layers import VerifyingReader
from kcompat.merged import max_file_size
from kcompat.pull import OpenImage
from kcompat.scan import Scan
from kcompat.store import BlobStore

if TYPE_CHECKING:
    from kcompat.facts import ExecFacts, ImageFacts

@dataclass
class Analysis:
    facts: ImageFacts  # the Scan and each executable's facts, drawn once
    summary: dict[str, Any]  # binaries.summary_json

    @classmethod
    def of(cls, scan: Scan) -> Analysis:
        from kcompat.binaries import summary_json  # the facts' imports only when drawing
        from kcompat.facts import ImageFacts

        facts = ImageFacts.of(scan)
        return cls(facts, summary_json(facts))

    @property
    def scan(self) -> Scan:
        return self.facts.scan

    def facts_of(self, path: str) -> ExecFacts | None:
        return self.facts.facts_of(path)


def analyse(opened: OpenImage, store: BlobStore | None = None) -> Analysis:
    store = store or BlobStore()
    img = opened.image
    if opened.source.rootfs_dir() is not None or not img.layers:  # a directory: no digests
        with gc_paused():
            return Analysis.of(scan_image(opened, store))
    # The config's diff_ids are part of the key: a hit means they were verified against
    # these very layers (kcompat.layerscan), not just that the same blobs were seen.
    what = json.dumps(  # and the size limit, which changes what the merged image holds
        [[d.digest for d in img.layers], list(img.config.env), list(img.config.diff_ids),
         max_file_size()]
    ).encode()  # fmt: skip
    key = "sha256:" + hashlib.sha256(what).hexdigest()
    cache_ = ResultCache(store.root, "images", analysis_key())
    with gc_paused():
        hit = cache_.read(key)
        if isinstance(hit, Analysis):
            return hit
        result = Analysis.of(scan_image(opened, store))
        cache_.write(key, result)
    return result


def scan_image(opened: OpenImage, store: BlobStore | None = None) -> Scan:
    """Every file of the image, each layer scanned in one streaming pass or read from the
    per-layer cache under `store`'s root (kcompat.layerscan)."""
    from kcompat.layerscan import LayerCache, assemble, scan_layers
    from kcompat.scan import scan_path  # the scanner's imports only when scanning

    env = dict(e.split("=", 1) for e in opened.image.config.env if "=" in e)
    own = opened.source.rootfs_dir()
    if own is not None:
        return scan_path(own, env)
    descs = {d.digest: d for d in opened.image.layers}

    store = store or BlobStore()

    def open_layer(digest: str) -> VerifyingReader:
        return opened.source.layer_to_scan(descs[digest], store)  # only layers not scanned before

    layers = [(d.digest, d.size) for d in opened.image.layers]
    scans = scan_layers(
        layers,
        open_layer,
        LayerCache(store.root),
        after_fork=opened.source.after_fork,
        diff_ids=[layer.diff_id for layer in opened.layer_inputs()],
    )
    scan, issues = assemble(scans, env)
    return replace(scan, issues=tuple(str(i) for i in issues))
