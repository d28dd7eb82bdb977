"""The image model: descriptors, manifests, indexes, configs; parsing and platform choice.

Media types and fields are those of the OCI image spec (image-index.md, manifest.md,
config.md) and Docker's Image Manifest V2 Schema 2, which has the same shape.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from kcompat.errors import BadImageError, IntegrityError, NotFoundError, UnsupportedError
from kcompat.platform import Platform, format_platforms, platform_from_oci

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join((*INDEX_TYPES, *MANIFEST_TYPES))
# the PATH a container gets when its image sets none (docker, podman: oci/defaults.go)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
# buildkit's attestation manifests: platform unknown/unknown and this annotation.
ANNOTATION_REFERENCE_TYPE = "vnd.docker.reference.type"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(data: bytes, digest: str, what: str) -> None:
    algo, _, _ = digest.partition(":")
    if algo not in ("sha256", "sha512"):
        raise UnsupportedError(f"{what}: digest algorithm {algo!r} is not supported")
    got = f"{algo}:" + hashlib.new(algo, data).hexdigest()
    if got != digest:
        raise IntegrityError(
            f"{what}: content has digest {got}, expected {digest}",
            hint="the source is corrupt or was tampered with; re-push or re-pull it",
        )


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def is_attestation(self) -> bool:
        p = self.platform
        if p is not None and p.os == "unknown" and p.architecture == "unknown":
            return True
        return ANNOTATION_REFERENCE_TYPE in self.annotations


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]

    @property
    def platforms(self) -> tuple[Platform, ...]:
        return tuple(
            m.platform for m in self.manifests if m.platform is not None and not m.is_attestation
        )


@dataclass(frozen=True)
class ImageConfig:
    platform: Platform
    entrypoint: tuple[str, ...] | None
    cmd: tuple[str, ...] | None
    env: tuple[str, ...]
    workdir: str | None
    user: str | None
    diff_ids: tuple[str, ...]
    labels: tuple[tuple[str, str], ...] = ()
    created: str | None = None

    @property
    def foreign_os(self) -> bool:
        """An image for another kernel (windows, darwin...); "unknown" is a dir: rootfs."""
        return self.platform.os not in ("linux", "unknown")


@dataclass(frozen=True)
class ResolvedImage:
    """One single-platform image, with where it came from."""

    reference: str
    manifest_digest: str | None
    manifest_media_type: str | None
    index_digest: str | None
    index_platforms: tuple[Platform, ...]
    config_digest: str | None
    config: ImageConfig
    layers: tuple[Descriptor, ...]
    raw_root: bytes | None = None  # the top document as stored: the index, or the manifest
    raw_config: bytes | None = None


Document = Union[Index, Manifest]


def _obj(value: Any, what: str, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadImageError(f"{what}: field {key!r} is not a JSON object")
    return value


def _str(d: Mapping[str, Any], key: str, what: str, *, required: bool = True) -> str | None:
    v = d.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or (required and not v):
        raise BadImageError(f"{what}: field {key!r} is missing or not a string")
    return v


def _str_list(d: Mapping[str, Any], key: str, what: str) -> tuple[str, ...] | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise BadImageError(f"{what}: field {key!r} is not a list of strings")
    return tuple(v)


def parse_descriptor(d: Any, what: str) -> Descriptor:
    d = _obj(d, what, "descriptor")
    media_type = _str(d, "mediaType", what) or ""
    digest = _str(d, "digest", what) or ""
    size = d.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadImageError(f"{what}: descriptor {digest} has no valid size")
    if ":" not in digest:
        raise BadImageError(f"{what}: {digest!r} is not a digest")
    platform = None
    if "platform" in d:
        p = _obj(d["platform"], what, "platform")
        platform = platform_from_oci(
            _str(p, "os", what) or "",
            _str(p, "architecture", what) or "",
            _str(p, "variant", what, required=False),
        )
    ann = d.get("annotations") or {}
    if not isinstance(ann, dict):
        raise BadImageError(f"{what}: annotations are not a JSON object")
    return Descriptor(media_type, digest, size, platform, {str(k): str(v) for k, v in ann.items()})


def json_problem(e: ValueError) -> str:
    """What is wrong with a JSON document, in words (never a codec's name)."""
    if isinstance(e, UnicodeDecodeError):
        return f"not UTF-8 text (byte {e.start})"
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg.lower()} at line {e.lineno} column {e.colno}"
    if "digits" in str(e):
        return "a number with too many digits"
    return "not valid JSON"


def read_json_file(path: Path, what: str, hint: str) -> Any:
    """A JSON file a user gave: NotFoundError when it is missing, LocalIOError when it
    cannot be read, UsageError (with the problem in words) when it is not JSON."""
    from kcompat.errors import LocalIOError, NotFoundError, UsageError

    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise NotFoundError(f"{what} {path}: no such file", hint=hint) from None
    except OSError as e:
        raise LocalIOError(f"cannot read {what} {path}: {e.strerror}") from None
    except RecursionError:
        raise UsageError(f"{what} {path} is not JSON (nested too deeply)", hint=hint) from None
    except ValueError as e:
        raise UsageError(f"{what} {path} is not JSON ({json_problem(e)})", hint=hint) from None


def load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data.decode("utf-8"))  # JSON in images is UTF-8 (no guessing)
    except RecursionError:
        raise BadImageError(f"{what}: JSON nested too deeply",
                            hint="the image is corrupt or hostile") from None  # fmt: skip
    except ValueError as e:
        raise BadImageError(
            f"{what}: not valid JSON ({json_problem(e)})",
            hint="the image is corrupt; pull or build it again",
        ) from None
    if not isinstance(doc, dict):
        raise BadImageError(f"{what}: not a JSON object")
    return doc


def parse_document(data: bytes, media_type: str | None, what: str) -> Document:
    """Parse an index or a manifest; the document's own mediaType wins over the header's."""
    doc = load_json(data, what)
    mt = doc.get("mediaType") or media_type or ""
    if mt in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise UnsupportedError(
            f"{what}: Docker image manifest schema 1 is not supported",
            hint="re-push the image with a current docker, podman or skopeo (schema 2 or OCI)",
        )
    if not mt:
        # OCI allows mediaType to be absent; tell the two apart by shape.
        mt = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if mt in INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise BadImageError(f"{what}: index has no 'manifests' list")
        return Index(mt, tuple(parse_descriptor(m, what) for m in entries))
    if mt in MANIFEST_TYPES:
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise BadImageError(f"{what}: manifest has no 'layers' list")
        return Manifest(
            mt,
            parse_descriptor(doc.get("config"), what),
            tuple(parse_descriptor(layer, what) for layer in layers),
        )
    raise UnsupportedError(f"{what}: media type {mt!r} is not an image index or manifest")


def parse_config(data: bytes, what: str) -> ImageConfig:
    doc = load_json(data, what)
    os_name = _str(doc, "os", what) or ""
    arch = _str(doc, "architecture", what) or ""
    variant = _str(doc, "variant", what, required=False)
    cfg = doc.get("config") or {}
    cfg = _obj(cfg, what, "config")
    rootfs = _obj(doc.get("rootfs") or {}, what, "rootfs")
    diff_ids = _str_list(rootfs, "diff_ids", what) or ()
    return ImageConfig(
        platform=platform_from_oci(os_name, arch, variant),
        entrypoint=_str_list(cfg, "Entrypoint", what),
        cmd=_str_list(cfg, "Cmd", what),
        env=_str_list(cfg, "Env", what) or (),
        workdir=_str(cfg, "WorkingDir", what, required=False) or None,
        user=_str(cfg, "User", what, required=False) or None,
        diff_ids=diff_ids,
        labels=tuple(
            (str(k), str(v))
            for k, v in sorted(_obj(cfg.get("Labels") or {}, what, "Labels").items())
        ),
        created=doc["created"] if isinstance(doc.get("created"), str) else None,
    )


def select_manifest(index: Index, want: Platform, where: str) -> Descriptor:
    """Pick the index entry for `want`; the error lists what is available."""
    candidates = [m for m in index.manifests if m.platform is not None and not m.is_attestation]
    for m in candidates:
        assert m.platform is not None
        if want.matches(m.platform):
            return m
    raise NotFoundError(
        f"no {want} in {where}; available: {format_platforms(index.platforms)}",
        hint="choose one with --platform",
    )
