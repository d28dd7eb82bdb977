from __future__ import annotations

import pytest

from kcompat.errors import NotFoundError, UsageError
from kcompat.image import Descriptor, Index, select_manifest
from kcompat.platform import Platform, parse_platform


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/arm64", Platform("linux", "arm64", "v8")),
        ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
        ("aarch64", Platform("linux", "arm64", "v8")),
        ("x86_64", Platform("linux", "amd64")),
        ("amd64", Platform("linux", "amd64")),
        ("armv7l", Platform("linux", "arm", "v7")),
        ("linux/arm/v6", Platform("linux", "arm", "v6")),
        ("i686", Platform("linux", "386")),
        ("ppc64el", Platform("linux", "ppc64le")),
        ("windows/amd64", Platform("windows", "amd64")),
        ("LINUX/S390X", Platform("linux", "s390x")),
    ],
)
def test_parse_platform(text: str, expected: Platform) -> None:
    assert parse_platform(text) == expected


@pytest.mark.parametrize("text", ["", "linux", "linux//arm", "sparc", "linux/arm/v7/x"])
def test_bad_platforms(text: str) -> None:
    with pytest.raises(UsageError):
        parse_platform(text)


def _index(*plats: tuple[str, str, str | None], attest: bool = False) -> Index:
    descs = [Descriptor("m", f"sha256:{i:064x}", 1, Platform(*p)) for i, p in enumerate(plats)]
    if attest:
        descs.append(
            Descriptor(
                "m",
                "sha256:" + "f" * 64,
                1,
                Platform("unknown", "unknown"),
                {"vnd.docker.reference.type": "attestation-manifest"},
            )
        )
    return Index("application/vnd.oci.image.index.v1+json", tuple(descs))


def test_select_arm64_with_or_without_variant() -> None:
    idx = _index(("linux", "amd64", None), ("linux", "arm64", None))
    assert select_manifest(idx, parse_platform("arm64"), "x").digest.endswith("1")
    idx2 = _index(("linux", "amd64", None), ("linux", "arm64", "v8"))
    assert select_manifest(idx2, Platform("linux", "arm64", None), "x").digest.endswith("1")


def test_select_arm_variant_exactly() -> None:
    idx = _index(("linux", "arm", "v6"), ("linux", "arm", "v7"))
    assert select_manifest(idx, parse_platform("armv7l"), "x").digest.endswith("1")


def test_no_match_lists_available_and_skips_attestations() -> None:
    idx = _index(("linux", "amd64", None), ("linux", "s390x", None), attest=True)
    with pytest.raises(NotFoundError) as err:
        select_manifest(idx, parse_platform("linux/arm64"), "docker.io/library/x:1")
    msg = str(err.value)
    assert msg.startswith(
        "no linux/arm64/v8 in docker.io/library/x:1; available: linux/amd64, linux/s390x"
    )
    assert "unknown" not in msg


def test_schema1_manifest_is_refused_with_the_fix() -> None:
    import json

    from kcompat.errors import ExitCode, UnsupportedError
    from kcompat.image import parse_document

    doc = json.dumps({"schemaVersion": 1, "name": "x", "tag": "1", "fsLayers": []}).encode()
    with pytest.raises(UnsupportedError) as err:
        parse_document(doc, "application/vnd.docker.distribution.manifest.v1+prettyjws", "r/x:1")
    assert "re-push" in str(err.value) and err.value.exit_code == ExitCode.UNSUPPORTED
