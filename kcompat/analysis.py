"""An image's analysis, what every `check` of it starts from: its Scan and the summary
of its binaries. Both depend only on the image's layers, its environment and kcompat's
code, so the result is cached by those (ResultCache "images"); a warm `check` reads
one file instead of merging the layers' results and walking every executable's
libraries again. The layers' own results are cached too (kcompat.layerscan), so an
image that shares base layers with one checked before scans only its new layers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from kcompat.layerscan import ResultCache, code_key
from kcompat.merged import max_file_size
from kcompat.pull import OpenImage, scan_image
from kcompat.scan import Scan
from kcompat.store import BlobStore

_PACKAGE = Path(__file__).resolve().parent


@cache
def analysis_key() -> str:
    """Every module and data file of kcompat: any change to them is a new key."""
    files = sorted(_PACKAGE.rglob("*.py")) + sorted(_PACKAGE.rglob("*.json"))
    tables = _PACKAGE.parent / "syscall_tables" / "data"  # a source checkout's layout
    if tables.is_dir():
        files += sorted(tables.glob("*.json"))
    return code_key(files)


@dataclass
class Analysis:
    scan: Scan
    summary: dict[str, Any]  # binaries.summary_json


def analyse(opened: OpenImage, store: BlobStore | None = None) -> Analysis:
    from kcompat.binaries import binaries_report

    store = store or BlobStore()
    img = opened.image
    if opened.source.rootfs_dir() is not None or not img.layers:  # a directory: no digests
        scan = scan_image(opened, store)
        return Analysis(scan, binaries_report(scan)["summary"])
    # The config's diff_ids are part of the key: a hit means they were verified against
    # these very layers (kcompat.layerscan), not just that the same blobs were seen.
    what = json.dumps(  # and the size limit, which changes what the merged image holds
        [[d.digest for d in img.layers], list(img.config.env), list(img.config.diff_ids),
         max_file_size()]
    ).encode()  # fmt: skip
    key = "sha256:" + hashlib.sha256(what).hexdigest()
    cache_ = ResultCache(store.root, "images", analysis_key())
    hit = cache_.read(key)
    if isinstance(hit, Analysis):
        return hit
    scan = scan_image(opened, store)
    result = Analysis(scan, binaries_report(scan)["summary"])
    cache_.write(key, result)
    return result
