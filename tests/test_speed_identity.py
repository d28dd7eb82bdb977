"""What makes a check fast changes nothing it says (issue "Speed", its acceptance).

The speed-ups are the layer results cache (a warm check reads results, not layers), the
layers scanned in parallel worker processes, and the lower layers shared with an image
checked before. Each must give the very report a cold, serial scan gives: the same JSON
for the same image and target. Real fixture images (tests/fixtures/build_images.py) and,
when it has been built, the speed corpus's smallest image (bench/speed_corpus.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kcompat.layers import VerifyingReader
from kcompat.layerscan import LayerCache, assemble, scan_layers
from kcompat.pull import open_image
from tests.conftest import Fixtures

REPO = Path(__file__).resolve().parents[1]
IMAGES = ("glibc-amd64", "shapes-amd64")
TARGET = ("--kernel", "3.10")


def _check(ref: str, cache: Path, *target: str) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-m", "kcompat", "check", ref, *target, "--format", "json"],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "KCOMPAT_CACHE": str(cache)})  # fmt: skip
    assert r.returncode in (0, 1), r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


@pytest.mark.integration
def test_warm_and_shared_checks_say_what_a_cold_one_says(images: Fixtures, tmp_path: Path) -> None:
    ref = images.oci("glibc-amd64")
    cold = _check(ref, tmp_path / "cache", *TARGET)
    assert cold["verdict"]  # a report, not an error document
    assert _check(ref, tmp_path / "cache", *TARGET) == cold  # warm: every layer from the cache
    # a cache that holds another image's layers (shapes-amd64's): only the new ones scanned
    shared = tmp_path / "shared"
    _check(images.oci("shapes-amd64"), shared, *TARGET)
    assert _check(ref, shared, *TARGET) == cold


@pytest.mark.integration
@pytest.mark.parametrize("name", IMAGES)
def test_parallel_layer_scans_equal_serial_ones(
    images: Fixtures, name: str, tmp_path: Path
) -> None:
    with open_image(images.oci(name)) as opened:
        descs = {d.digest: d for d in opened.image.layers}
        layers = [(d.digest, d.size) for d in opened.image.layers]

        def open_layer(digest: str) -> VerifyingReader:
            return opened.source.open_layer(descs[digest])

        results = []
        for jobs in (1, 2):
            cache = LayerCache(tmp_path / f"jobs{jobs}")
            scans = scan_layers(layers, open_layer, cache, jobs=jobs,
                                after_fork=opened.source.after_fork)  # fmt: skip
            results.append((scans, assemble(scans, {})[0]))
    (serial, serial_tree), (parallel, parallel_tree) = results
    assert serial == parallel  # every header, file, kept text and banner
    assert serial_tree.files == parallel_tree.files
    assert any(f.elf is not None for f in serial_tree.files.values())  # ELF files were read


@pytest.mark.integration
def test_speed_corpus_image_when_built(tmp_path: Path) -> None:
    layout = Path(os.environ.get("KCOMPAT_FIXTURES", REPO / ".fixtures")) / "speed" / "layout"
    if not (layout / "index.json").is_file():
        pytest.skip("the speed corpus is not built here (bench/speed_corpus.py builds it, "
                    "about 1 GB from Debian packages; bench/speed.py --compare REV is its "
                    "before/after comparison)")  # fmt: skip
    ref = f"oci:{layout}:1"
    cold = _check(ref, tmp_path / "a", *TARGET)
    assert _check(ref, tmp_path / "a", *TARGET) == cold
