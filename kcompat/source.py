"""What every image source answers, wherever the image comes from (kcompat.sources).

Which single-platform image does this reference name (`resolve`: an index followed to
the entry `--platform`, the target's best choice or the host names), how do I get its
layers local (`fetch`), and how do I read a layer's raw bytes (`open_layer`,
digest-checked as it is read).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kcompat.auth import Credentials
from kcompat.errors import BadImageError, IntegrityError, NotFoundError
from kcompat.image import (
    Descriptor,
    Index,
    ResolvedImage,
    parse_config,
    parse_document,
    select_manifest,
)
from kcompat.layers import VerifyingReader
from kcompat.platform import Platform
from kcompat.progress import Progress
from kcompat.store import BlobStore

MAX_NESTED_INDEXES = 4
MAX_SMALL_BLOB = 64 * 1024 * 1024


Chooser = Callable[[tuple[Platform, ...]], "Platform | None"]


@dataclass(frozen=True)
class Options:
    platform: Platform | None = None  # None: `choose` picks from an index, else the host's
    creds: Credentials | None = None
    insecure_hosts: tuple[str, ...] = ()
    choose: Chooser | None = None  # the best index entry for a target (kcompat.check)


class Source:
    """Base: subclasses provide the root document and small blobs."""

    where: str

    def _root(self) -> tuple[bytes, str | None, str | None]:
        raise NotImplementedError

    def _manifest_blob(self, desc: Descriptor) -> bytes:
        return self._small_blob(desc)

    def _small_blob(self, desc: Descriptor) -> bytes:
        raise NotImplementedError

    def open_layer(self, desc: Descriptor) -> VerifyingReader:
        raise NotImplementedError

    def fetch(
        self,
        image: ResolvedImage,
        store: BlobStore,
        progress: Progress | None = None,
        jobs: int = 4,
    ) -> None:
        """Make every layer readable locally (a no-op for local sources)."""

    def layer_to_scan(self, desc: Descriptor, store: BlobStore) -> VerifyingReader:
        """One layer's blob for kcompat.layerscan to read once, from end to end (a
        registry's as it downloads into `store`)."""
        return self.open_layer(desc)

    def after_fork(self) -> None:
        """In a forked worker: drop what must not be shared with the parent."""

    def blob_size(self, desc: Descriptor) -> int | None:
        """The stored size of a layer blob of a local source (None: not local, or
        unknown); a missing blob raises NotFoundError naming it."""
        return None

    def check_present(self, image: ResolvedImage) -> None:
        """Every layer blob is where the source says, with the size its descriptor
        declares: cheap (no read), done on every check so that an image that is broken
        where it lives is never judged from the cache."""
        for d in image.layers:
            size = self.blob_size(d)
            if size is not None and d.size is not None and size != d.size:
                raise IntegrityError(
                    f"{self.where}: blob {d.digest} has {size} bytes, its descriptor "
                    f"declares {d.size}",
                    hint="the image is corrupt or was tampered with; copy it again",
                )

    def verify(self, image: ResolvedImage) -> None:
        """Read every layer of a local source to its end: digest and size checked, as
        `skopeo copy` does (a registry source verifies while it downloads)."""
        self.check_present(image)
        for d in image.layers:
            reader = self.open_layer(d)
            try:
                reader.finish()
            finally:
                reader.close()

    def close(self) -> None:
        pass

    def rootfs_dir(self) -> Path | None:
        """A directory that already is the image's root filesystem, if the source has one."""
        return None

    def resolve(
        self, want: Platform | None, default: Platform, choose: Chooser | None = None
    ) -> ResolvedImage:
        data, media_type, digest = self._root()
        raw_root = data
        doc = parse_document(data, media_type, self.where)
        index_digest: str | None = None
        platforms: tuple[Platform, ...] = ()
        depth = 0
        while isinstance(doc, Index):
            depth += 1
            if depth > MAX_NESTED_INDEXES:
                raise BadImageError(
                    f"{self.where}: indexes nested deeper than {MAX_NESTED_INDEXES}"
                )
            if index_digest is None:
                index_digest, platforms = digest, doc.platforms
            picked = want or (choose(doc.platforms) if choose else None) or default
            entry = self._pick(doc, picked)
            data = self._manifest_blob(entry)
            doc = parse_document(data, entry.media_type, self.where)
            digest = entry.digest
        config_bytes = self._small_blob(doc.config)
        config = parse_config(config_bytes, f"{self.where} config")
        if index_digest is None and want is not None and not want.matches(config.platform):
            raise NotFoundError(
                f"no {want} in {self.where}; "
                f"available: {config.platform} (a single-platform image)",
                hint="choose it with --platform or drop --platform",
            )
        return ResolvedImage(
            reference=self.where,
            manifest_digest=digest,
            manifest_media_type=doc.media_type,
            index_digest=index_digest,
            index_platforms=platforms,
            config_digest=doc.config.digest,
            config=config,
            layers=doc.layers,
            raw_root=raw_root,
            raw_config=config_bytes,
        )

    def _pick(self, index: Index, want: Platform) -> Descriptor:
        # An index entry without a platform (an OCI layout pointing at one manifest, or
        # at a nested index) is followed when it is the only candidate.
        real = [m for m in index.manifests if not m.is_attestation]
        if len(real) == 1 and real[0].platform is None:
            return real[0]
        return select_manifest(index, want, self.where)
